//! Fan-out: one reader per (queue, group) on this replica, feeding every
//! local subscriber of that group by credit.
//!
//! - `ledger` — the pure credit ledger: who holds what, who is stalled;
//! - `reader` — the loop of one (queue, group): plan, fetch, deliver, block;
//! - `subscription` — a subscriber's end, which gives back on drop;
//! - `discovery` — the replica's one search for queues a pattern may match;
//! - `budget` — the byte budget of deliveries handed out but not yet read.
//!
//! The reader fetches only as much as the subscribers can take, so a slow
//! subscriber never makes leanmqd buffer without bound. When no entry is
//! ready it waits on a [`Waiter`](crate::broker::redis::Waiter) until one is
//! appended or the next lease or retry falls due. Every reader's wait shares
//! one blocked Redis client per replica (one per reader on a Redis Cluster),
//! so neither idle subscribers nor the groups clients choose add Redis
//! connections. Nothing here sends a Redis command: the broker and its
//! connection layer do.
//!
//! Credit is the only state kept here, and it heals by itself: a delivery
//! acked on another replica frees its credit when its lease would have ended.

mod budget;
mod discovery;
mod ledger;
mod reader;
mod subscription;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Broker, Delivery, Round, Target};
use crate::error::Result;
use crate::routing::Pattern;
use crate::shutdown::Drain;
pub use budget::{Budget, Unread};
use discovery::{Discovery, Known};
use ledger::{lock, Credit, Item};
use reader::Reader;
pub use subscription::Subscription;
use subscription::{RegList, Registrations};

/// How often a pattern subscription checks that it is still wanted.
const PATTERN_ALIVE: Duration = Duration::from_secs(1);

/// All readers of this replica.
pub struct Dispatcher {
    broker: Arc<Broker>,
    readers: Mutex<HashMap<(String, String), Arc<Reader>>>,
    /// Started by the first pattern subscription.
    discovery: OnceLock<Arc<Discovery>>,
    /// Bytes a subscription may hold unread, and the replica's count.
    budget: Budget,
    drain: Drain,
}

impl Dispatcher {
    pub fn new(broker: Arc<Broker>, budget: Budget, drain: Drain) -> Arc<Self> {
        let watch = broker.clone();
        let stop = drain.draining();
        drain.spawn(async move { watch.redis.run_watch(stop).await });
        Arc::new(Dispatcher {
            broker,
            readers: Mutex::new(HashMap::new()),
            discovery: OnceLock::new(),
            budget,
            drain,
        })
    }

    /// Register a local subscriber of `target`. The caller has ensured the
    /// queue and group exist.
    pub fn subscribe(
        self: &Arc<Self>,
        target: &Target,
        max_in_flight: u32,
        lease: Duration,
    ) -> Subscription {
        // One spare slot so the channel never refuses a delivery the credit allows.
        let (tx, rx) = mpsc::channel(max_in_flight as usize + 1);
        let credit = Credit::new(max_in_flight, &self.budget);
        let reg = self.register(target, tx, credit.clone(), lease);
        self.subscription(rx, Arc::new(Mutex::new(vec![reg])), credit)
    }

    fn subscription(
        &self,
        rx: mpsc::Receiver<Item>,
        regs: Registrations,
        credit: Arc<Credit>,
    ) -> Subscription {
        Subscription {
            rx,
            regs,
            credit,
            broker: self.broker.clone(),
            drain: self.drain.clone(),
            done: false,
        }
    }

    /// Subscribe to every queue whose path matches `pattern`, now and as
    /// queues appear (the replica's discovery looks every second), sharing
    /// one credit.
    pub fn subscribe_pattern(
        self: &Arc<Self>,
        pattern: Pattern,
        group: Option<String>,
        start: String,
        max_in_flight: u32,
        lease: Duration,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(max_in_flight as usize + 1);
        let credit = Credit::new(max_in_flight, &self.budget);
        let regs: Registrations = Arc::new(Mutex::new(Vec::new()));
        let discovery = self
            .discovery
            .get_or_init(|| Discovery::start(self.broker.clone(), &self.drain));
        let watch = PatternWatch {
            known: discovery.watch(),
            dispatcher: self.clone(),
            pattern,
            group,
            start,
            lease,
            tx,
            credit: credit.clone(),
            regs: Arc::downgrade(&regs),
        };
        self.drain.spawn(watch.run(self.drain.clone()));
        self.subscription(rx, regs, credit)
    }

    fn register(
        self: &Arc<Self>,
        target: &Target,
        tx: mpsc::Sender<Item>,
        credit: Arc<Credit>,
        lease: Duration,
    ) -> (Arc<Reader>, u64) {
        let mut readers = lock(&self.readers);
        let key = (target.route.queue.clone(), target.group.clone());
        let reader = readers
            .entry(key.clone())
            .or_insert_with(|| {
                let r = Reader::new(target.clone(), &self.budget);
                let this = self.clone();
                let retire = move |r: &Reader| {
                    let mut readers = lock(&this.readers);
                    let idle = r.idle();
                    if idle {
                        readers.remove(&key);
                    }
                    idle
                };
                let run = r
                    .clone()
                    .run(self.broker.clone(), self.drain.clone(), retire);
                self.drain.spawn(run);
                r
            })
            .clone();
        let id = reader.join(tx, credit, lease);
        (reader, id)
    }

    fn reader(&self, queue: &str, group: &str) -> Option<Arc<Reader>> {
        lock(&self.readers)
            .get(&(queue.to_string(), group.to_string()))
            .cloned()
    }

    /// Pull up to `max` deliveries, waiting up to `wait` for the first.
    pub async fn receive(
        self: &Arc<Self>,
        target: &Target,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let fetched = self
            .broker
            .fetch(
                target,
                max,
                max,
                lease,
                // Pull consumers also hand out entries a subscription's
                // reader read but never leased (see `Round`).
                &Round::Full {
                    scan_orphans: false,
                    unleased_from: Some("-".into()),
                },
                "0",
            )
            .await?;
        for e in fetched.exhausted {
            let broker = self.broker.clone();
            let target = target.clone();
            self.drain.spawn(async move {
                if let Err(err) = broker.dead_letter_exhausted(&target, &e).await {
                    tracing::warn!(error = %err, id = %e.id, "dead-lettering an exhausted message failed; another round retries it");
                }
            });
        }
        if !fetched.deliveries.is_empty() || wait.is_zero() {
            return Ok(fetched.deliveries);
        }
        let mut sub = self.subscribe(target, max, lease);
        let first = tokio::time::timeout(wait, sub.next()).await;
        let mut out = Vec::new();
        match first {
            Ok(Some(Ok(d))) => out.push(*d),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => {}
        }
        out.extend(sub.close());
        Ok(out)
    }

    /// Deliveries settled on this replica give their credit back now;
    /// `due_changed`: one was made due again (a retry), so its reader looks.
    pub fn settled(&self, queue: &str, group: &str, ids: &[&str], due_changed: bool) {
        if let Some(r) = self.reader(queue, group) {
            r.settled(ids, due_changed);
        }
    }

    /// Deliveries of `target` were given back: its reader, if any, looks again.
    pub fn woken(&self, target: &Target) {
        if let Some(r) = self.reader(&target.route.queue, &target.group) {
            r.wake_due();
        }
    }

    /// A lease extended on this replica keeps its credit that much longer.
    pub fn extended(&self, queue: &str, group: &str, id: &str, by: Duration) {
        if let Some(r) = self.reader(queue, group) {
            r.extended(id, by);
        }
    }
}

/// A pattern subscription's search for matching queues, in what the
/// replica's discovery found.
struct PatternWatch {
    dispatcher: Arc<Dispatcher>,
    known: tokio::sync::watch::Receiver<Arc<Known>>,
    pattern: Pattern,
    group: Option<String>,
    start: String,
    lease: Duration,
    tx: mpsc::Sender<Item>,
    credit: Arc<Credit>,
    /// The subscription's registrations; gone when it is dropped.
    regs: Weak<RegList>,
}

impl PatternWatch {
    async fn run(mut self, drain: Drain) {
        let mut attached: HashSet<String> = HashSet::new();
        // How far into the known queues of which epoch this one has looked.
        let mut seen: (u64, usize) = (0, 0);
        loop {
            let Some(regs) = self.regs.upgrade() else {
                return;
            };
            let known = self.known.borrow_and_update().clone();
            if known.epoch != seen.0 {
                seen = (known.epoch, 0);
            }
            let from = seen.1.min(known.queues.len());
            // One that could not be attached (Redis trouble) is tried again.
            if self
                .attach_new(&regs, &known.queues[from..], &mut attached)
                .await
            {
                seen.1 = known.queues.len();
            }
            drop(regs);
            tokio::select! {
                r = self.known.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(PATTERN_ALIVE) => {}
                _ = drain.draining() => return,
            }
        }
    }

    async fn attach_new(
        &self,
        regs: &Mutex<Vec<(Arc<Reader>, u64)>>,
        found: &[discovery::Found],
        attached: &mut HashSet<String>,
    ) -> bool {
        let broker = &self.dispatcher.broker;
        let mut all = true;
        for route in found.iter().filter_map(|f| f.route(&self.pattern)) {
            if attached.contains(&route.queue) {
                continue;
            }
            let group = self
                .group
                .clone()
                .unwrap_or_else(|| crate::routing::default_group(&route.queue));
            let target = Target { route, group };
            if let Err(e) = broker.ensure(&target, &self.start, None, None).await {
                tracing::warn!(error = %e, queue = %target.route.queue, "pattern: cannot attach queue");
                all = false;
                continue;
            }
            attached.insert(target.route.queue.clone());
            let reg =
                self.dispatcher
                    .register(&target, self.tx.clone(), self.credit.clone(), self.lease);
            lock(regs).push(reg);
        }
        all
    }
}
