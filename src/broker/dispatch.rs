//! Fan-out: one Redis reader per (queue, group) on this replica, feeding
//! every local subscriber of that group by credit.
//!
//! A subscriber has `max_in_flight` credit. Each delivery it gets takes one;
//! an Ack or Nack on this replica, or the end of the delivery's lease, gives
//! it back. The reader fetches only as much as the subscribers can take, so
//! a slow subscriber never makes leanmqd buffer without bound. When no entry
//! is ready the reader blocks in `XREAD` on its own connection until one is
//! appended or the next lease or retry falls due, so 10,000 idle
//! subscribers cost one blocked Redis client, not 10,000.
//!
//! Credit is the only state kept here, and it heals by itself: a delivery
//! acked on another replica frees its credit when its lease would have ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::limits::FETCH_BATCH;
use super::receipt::Receipt;
use super::{Broker, Delivery, Round, Target};
use crate::error::{Error, Result};
use crate::routing::Pattern;

/// What a subscription's channel carries. Boxed: tokio's channel allocates
/// its slots 32 at a time when it is made, so every idle Subscribe stream
/// holds 32 slots; a 200-byte `Delivery` in each cost 6.4 KiB per stream,
/// a third of an idle stream's memory.
type Item = Result<Box<Delivery>>;

/// Longest single XREAD block, so a reader re-checks its state now and then.
const MAX_BLOCK: Duration = Duration::from_secs(5);

/// How often, and how long apart, a woken reader asks Redis to release its
/// blocked read before it just waits the read out (see the XREAD select).
const UNBLOCK_TRIES: u32 = 50;
const UNBLOCK_RETRY: Duration = Duration::from_millis(2);

/// A subscriber whose last this-many deliveries all ran out their lease,
/// with nothing settled or extended in between, is treated as stalled (its
/// connection may be dead but not yet closed). While a healthy subscriber
/// shares its reader, it gets one probe delivery per lease until it settles
/// something, so it cannot burn the attempts of messages the healthy one
/// would handle. When every subscriber is stalled they keep their credit,
/// so attempts climb and messages reach the DLQ at max_attempts.
const STALL_AFTER: u32 = 3;

/// All readers of this replica.
pub struct Dispatcher {
    broker: Arc<Broker>,
    readers: Mutex<HashMap<(String, String), Arc<Reader>>>,
    shutdown: watch::Receiver<bool>,
}

/// One (queue, group) reader and its subscribers.
struct Reader {
    target: Target,
    state: Mutex<State>,
    /// Subscribers or credit changed.
    credit: Notify,
    /// Something may have become due earlier than the reader thinks.
    due: Notify,
    /// Redis client id of the reader's blocking connection (0: none), for
    /// `CLIENT UNBLOCK` when `due` fires mid-block.
    client_id: AtomicI64,
}

#[derive(Default)]
struct State {
    subs: Vec<Sub>,
    next_id: u64,
    /// Round-robin start for the next delivery.
    rr: usize,
    /// Deliveries holding credit: entry id → (subscriber id, when the
    /// credit comes back by itself).
    owners: HashMap<String, (u64, Instant)>,
    /// Earliest instant in `owners`.
    earliest: Option<Instant>,
}

struct Sub {
    id: u64,
    tx: mpsc::Sender<Item>,
    /// The stream's credit; shared by every reader a pattern subscription uses.
    credit: Arc<Credit>,
    lease: Duration,
    /// Consecutive deliveries whose lease ran out unsettled.
    expired_streak: u32,
    /// While stalled: when the next probe delivery may go.
    probe_at: Option<Instant>,
}

impl Sub {
    fn stalled(&self) -> bool {
        self.probe_at.is_some()
    }

    /// How many deliveries this subscriber may take now; `healthy_peer`:
    /// some other subscriber of this reader is not stalled.
    fn usable(&self, now: Instant, healthy_peer: bool) -> u32 {
        if self.tx.is_closed() {
            return 0;
        }
        match self.probe_at {
            Some(t) if healthy_peer && t > now => 0,
            Some(_) if healthy_peer => self.credit.available().min(1),
            _ => self.credit.available(),
        }
    }
}

/// A subscription's `max_in_flight`, counted across all its readers.
struct Credit {
    max: u32,
    in_flight: AtomicU32,
    /// Readers drawing on this credit, woken when some comes back.
    readers: Mutex<Vec<Weak<Reader>>>,
}

impl Credit {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Credit {
            max,
            in_flight: AtomicU32::new(0),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn available(&self) -> u32 {
        self.max
            .saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    fn take(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Return one unit without waking anyone (it was never used).
    fn untake(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Return one unit and wake the readers that can use it.
    fn give(&self) {
        self.untake();
        for r in lock(&self.readers).iter().filter_map(Weak::upgrade) {
            r.credit.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave State inconsistent in a way
    // that matters more than stopping delivery; recover the guard.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Give a delivery's credit back. `settled`: the subscriber acked,
    /// nacked or extended it here, which also proves it alive.
    fn free(&mut self, id: &str, settled: bool) -> bool {
        match self.owners.remove(id) {
            Some((sub, _)) => {
                if let Some(s) = self.subs.iter_mut().find(|s| s.id == sub) {
                    s.credit.give();
                    if settled {
                        s.expired_streak = 0;
                        s.probe_at = None;
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Return credit of deliveries whose lease has run out, and mark a
    /// subscriber stalled after [`STALL_AFTER`] such expiries in a row.
    fn expire(&mut self, now: Instant) {
        if self.earliest.is_none_or(|e| e > now) {
            return;
        }
        let expired: Vec<(String, u64)> = self
            .owners
            .iter()
            .filter(|(_, (_, t))| *t <= now)
            .map(|(id, (sub, _))| (id.clone(), *sub))
            .collect();
        for (id, sub) in expired {
            self.free(&id, false);
            if let Some(s) = self.subs.iter_mut().find(|s| s.id == sub) {
                s.expired_streak += 1;
                if s.expired_streak >= STALL_AFTER {
                    if s.probe_at.is_none() {
                        tracing::warn!(
                            streak = s.expired_streak,
                            "a subscriber let its leases expire; sending it one probe per lease until it settles one"
                        );
                    }
                    s.probe_at = Some(now + s.lease);
                }
            }
        }
        self.earliest = self.owners.values().map(|(_, t)| *t).min();
    }

    /// Is some open subscriber not stalled? (Stalled ones are then held to probes.)
    fn has_healthy(&self) -> bool {
        self.subs.iter().any(|s| !s.stalled() && !s.tx.is_closed())
    }

    /// Credit available now, the shortest lease among subscribers with
    /// credit, and the next probe time of a stalled subscriber.
    fn credit(&self, now: Instant) -> (u32, Option<Duration>, Option<Instant>) {
        let mut credit = 0u32;
        let mut lease: Option<Duration> = None;
        let mut probe: Option<Instant> = None;
        let healthy = self.has_healthy();
        for s in &self.subs {
            let c = s.usable(now, healthy);
            if c > 0 {
                credit = credit.saturating_add(c);
                lease = Some(lease.map_or(s.lease, |l: Duration| l.min(s.lease)));
            } else if let Some(t) = s.probe_at.filter(|t| *t > now) {
                probe = Some(probe.map_or(t, |p: Instant| p.min(t)));
            }
        }
        (credit, lease, probe)
    }
}

/// Where a subscription is registered: (reader, subscriber id) pairs.
type Registrations = Arc<Mutex<Vec<(Arc<Reader>, u64)>>>;

/// A local subscriber's end: deliveries arrive here. Dropping it
/// unsubscribes and gives back what it never received.
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    /// Where this subscription is registered: (reader, subscriber id). One
    /// for a path; one per matching queue for a pattern (grows as queues appear).
    regs: Registrations,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    done: bool,
}

impl Subscription {
    /// The next delivery; `Err(ShuttingDown)` once when leanmqd drains, then `None`.
    pub async fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|s| *s) => None,
            item = self.rx.recv() => item,
        };
        match item {
            Some(Ok(d)) => Some(Ok(d)),
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                Some(Err(Error::ShuttingDown))
            }
        }
    }

    /// Stop receiving, and return what had already arrived (for Receive).
    fn close(&mut self) -> Vec<Delivery> {
        for (reader, id) in lock(&self.regs).iter() {
            lock(&reader.state).subs.retain(|s| s.id != *id);
            reader.credit.notify_one();
        }
        self.rx.close();
        let mut out = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item {
                out.push(*d);
            }
        }
        self.done = true;
        out
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let undelivered = self.close();
        let regs: Vec<(Arc<Reader>, u64)> = std::mem::take(&mut *lock(&self.regs));
        for (reader, id) in &regs {
            lock(&reader.state).owners.retain(|_, (sub, _)| sub != id);
        }
        if undelivered.is_empty() {
            return;
        }
        let broker = self.broker.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (reader, _) in regs {
                    let pairs: Vec<(String, u32)> = undelivered
                        .iter()
                        .filter(|d| Receipt::decode(&d.receipt).is_ok_and(|r| r.queue == reader.target.route.queue))
                        .map(|d| (d.message_id.clone(), d.attempt))
                        .collect();
                    if pairs.is_empty() {
                        continue;
                    }
                    if let Err(e) = broker.release(&reader.target, &pairs).await {
                        tracing::warn!(error = %e, n = pairs.len(), "could not release undelivered messages; they are redelivered when their lease ends");
                    }
                    reader.due.notify_one();
                }
            });
        }
    }
}

impl Dispatcher {
    pub fn new(broker: Arc<Broker>, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Dispatcher {
            broker,
            readers: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
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
        let credit = Credit::new(max_in_flight);
        let reg = self.register(target, tx, credit, lease);
        Subscription {
            rx,
            regs: Arc::new(Mutex::new(vec![reg])),
            broker: self.broker.clone(),
            shutdown: self.shutdown.clone(),
            done: false,
        }
    }

    /// Subscribe to every queue whose path matches `pattern`, now and as
    /// queues appear (checked every second), sharing one credit.
    pub fn subscribe_pattern(
        self: &Arc<Self>,
        pattern: Pattern,
        group: Option<String>,
        start: String,
        max_in_flight: u32,
        lease: Duration,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(max_in_flight as usize + 1);
        let credit = Credit::new(max_in_flight);
        let regs = Arc::new(Mutex::new(Vec::new()));
        let weak = Arc::downgrade(&regs);
        let this = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut attached: std::collections::HashSet<String> = std::collections::HashSet::new();
            loop {
                let Some(regs) = weak.upgrade() else { return };
                match this.broker.matching_queues(&pattern).await {
                    Ok(routes) => {
                        for route in routes {
                            if attached.contains(&route.queue) {
                                continue;
                            }
                            let group = group
                                .clone()
                                .unwrap_or_else(|| crate::routing::default_group(&route.queue));
                            let target = Target { route, group };
                            if let Err(e) = this.broker.ensure(&target, &start, None).await {
                                tracing::warn!(error = %e, queue = %target.route.queue, "pattern: cannot attach queue");
                                continue;
                            }
                            attached.insert(target.route.queue.clone());
                            let reg = this.register(&target, tx.clone(), credit.clone(), lease);
                            lock(&regs).push(reg);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "pattern: cannot list queues"),
                }
                drop(regs);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        Subscription {
            rx,
            regs,
            broker: self.broker.clone(),
            shutdown: self.shutdown.clone(),
            done: false,
        }
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
            .entry(key)
            .or_insert_with(|| {
                let r = Arc::new(Reader {
                    target: target.clone(),
                    state: Mutex::new(State::default()),
                    credit: Notify::new(),
                    due: Notify::new(),
                    client_id: AtomicI64::new(0),
                });
                tokio::spawn(self.clone().run(r.clone()));
                r
            })
            .clone();
        lock(&credit.readers).push(Arc::downgrade(&reader));
        let id = {
            let mut st = lock(&reader.state);
            st.next_id += 1;
            let id = st.next_id;
            st.subs.push(Sub {
                id,
                tx,
                credit,
                lease,
                expired_streak: 0,
                probe_at: None,
            });
            id
        };
        drop(readers);
        reader.credit.notify_one();
        (reader, id)
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
        self.dead_letter_exhausted(target, fetched.exhausted);
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

    /// Deliveries settled on this replica give their credit back now.
    pub fn settled(&self, queue: &str, group: &str, ids: &[&str], due_changed: bool) {
        let reader = lock(&self.readers)
            .get(&(queue.to_string(), group.to_string()))
            .cloned();
        if let Some(r) = reader {
            let freed = {
                let mut st = lock(&r.state);
                ids.iter().fold(false, |acc, id| st.free(id, true) | acc)
            };
            if freed {
                r.credit.notify_one();
            }
            if due_changed {
                r.wake_due();
            }
        }
    }

    /// A lease extended on this replica keeps its credit that much longer.
    pub fn extended(&self, queue: &str, group: &str, id: &str, by: Duration) {
        let reader = lock(&self.readers)
            .get(&(queue.to_string(), group.to_string()))
            .cloned();
        if let Some(r) = reader {
            let mut st = lock(&r.state);
            let until = Instant::now() + by;
            if let Some(owner) = st.owners.get_mut(id) {
                owner.1 = until;
                let sub = owner.0;
                if let Some(s) = st.subs.iter_mut().find(|s| s.id == sub) {
                    s.expired_streak = 0;
                    s.probe_at = None;
                }
            }
            st.earliest = st.owners.values().map(|(_, t)| *t).min();
        }
    }

    fn dead_letter_exhausted(&self, target: &Target, exhausted: Vec<super::Exhausted>) {
        for e in exhausted {
            let broker = self.broker.clone();
            let target = target.clone();
            tokio::spawn(async move {
                if let Err(err) = broker.dead_letter_exhausted(&target, &e).await {
                    tracing::warn!(error = %err, id = %e.id, "dead-lettering an exhausted message failed; another round retries it");
                }
            });
        }
    }

    /// The reader loop of one (queue, group).
    async fn run(self: Arc<Self>, reader: Arc<Reader>) {
        let mut shutdown = self.shutdown.clone();
        let mut conn: Option<super::redis::Conn> = None;
        let stream = self.broker.keys(&reader.target.route.queue).stream.clone();
        let mut backoff = Duration::from_millis(100);
        let scan_every = (self.broker.settings.orphan_timeout / 4).max(Duration::from_secs(1));
        let mut last_scan: Option<Instant> = None;
        // Entries our NewOnly rounds read but never leased are looked for
        // every --redis-timeout, 100 at a time, from this cursor.
        let unleased_every = self.broker.redis.timeout().max(Duration::from_secs(1));
        let mut last_unleased = Instant::now();
        let mut unleased_from = String::from("-");
        // The last stream id this reader has seen: where a lost group is
        // recreated. "0" before the first round (the group was just ensured).
        let mut seen = String::from("0");
        // When the earliest lease this reader knows of falls due. Until then
        // a round needs only new entries (the cheaper `Round::NewOnly`);
        // None: unknown, or something may have fallen due sooner.
        let mut due_at: Option<Instant> = None;
        tracing::debug!(queue = %reader.target.route.queue, group = %reader.target.group, "reader started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let (credit, lease, earliest) = {
                let readers = lock(&self.readers);
                let mut st = lock(&reader.state);
                st.subs.retain(|s| !s.tx.is_closed());
                if st.subs.is_empty() {
                    drop(st);
                    let mut readers = readers;
                    readers.remove(&(
                        reader.target.route.queue.clone(),
                        reader.target.group.clone(),
                    ));
                    break;
                }
                drop(readers);
                let now = Instant::now();
                st.expire(now);
                let (c, l, probe) = st.credit(now);
                let wake = match (st.earliest, probe) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (c, l, wake)
            };
            let Some(lease) = lease.filter(|_| credit > 0) else {
                let until = earliest.unwrap_or_else(|| Instant::now() + MAX_BLOCK);
                tokio::select! {
                    _ = reader.credit.notified() => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let count = credit.min(FETCH_BATCH);
            let scan = last_scan.is_none_or(|t| t.elapsed() >= scan_every);
            let started = Instant::now();
            let unleased = started.duration_since(last_unleased) >= unleased_every;
            let round = if !scan && !unleased && due_at.is_some_and(|t| started < t) {
                Round::NewOnly
            } else {
                Round::Full {
                    scan_orphans: scan,
                    unleased_from: unleased.then(|| unleased_from.clone()),
                }
            };
            let fetched = match self
                .broker
                .fetch(&reader.target, count, lease, &round, &seen)
                .await
            {
                Ok(f) => {
                    backoff = Duration::from_millis(100);
                    if scan {
                        last_scan = Some(Instant::now());
                    }
                    if unleased {
                        last_unleased = Instant::now();
                        if let Some(next) = &f.unleased_next {
                            unleased_from.clone_from(next);
                        }
                    }
                    let until_due = f.next_due_ms.map_or(MAX_BLOCK, |d| {
                        Duration::from_millis(d.saturating_sub(f.now_ms))
                    });
                    due_at = Some(started + until_due);
                    f
                }
                Err(e) => {
                    tracing::warn!(error = %e, queue = %reader.target.route.queue, retry_in = ?backoff, "fetch failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // Parked (expired or exhausted) entries count: a round that
            // took a full batch may have left more behind.
            let got = (fetched.deliveries.len() + fetched.exhausted.len()) as u32;
            seen.clone_from(&fetched.last_id);
            self.dead_letter_exhausted(&reader.target, fetched.exhausted);
            let Dispatched { leftover, bumps } = reader.dispatch(fetched.deliveries, lease);
            if !leftover.is_empty() {
                if let Err(e) = self.broker.release(&reader.target, &leftover).await {
                    tracing::warn!(error = %e, "release failed; leases will expire instead");
                }
            }
            for (receipt, by) in bumps {
                if let Err(e) = self.broker.extend(&receipt, by).await {
                    tracing::debug!(error = %e, "lease bump failed");
                }
            }
            if got >= count {
                continue;
            }
            // Nothing more ready: block until an append, a due time, or a wake-up.
            let block = match fetched.next_due_ms {
                Some(due) => {
                    Duration::from_millis(due.saturating_sub(fetched.now_ms).max(1)).min(MAX_BLOCK)
                }
                None => MAX_BLOCK,
            }
            .min(unleased_every);
            if conn.is_none() {
                match self.broker.redis.blocking().await {
                    Ok(mut c) => {
                        // The id of the connection on the node that holds the stream.
                        let id = c
                            .on_node_of(&stream, redis::cmd("CLIENT").arg("ID"))
                            .await
                            .ok()
                            .and_then(|v| redis::from_redis_value::<i64>(v).ok());
                        reader.client_id.store(id.unwrap_or(0), Ordering::Relaxed);
                        conn = Some(c);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no blocking connection; polling");
                        tokio::time::sleep(backoff.min(block)).await;
                        continue;
                    }
                }
            }
            let Some(mut c) = conn.take() else { continue };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&fetched.last_id);
            let limit = block + self.broker.redis.timeout();
            let result = {
                let xread = tokio::time::timeout(limit, cmd.query_async::<redis::Value>(&mut c));
                tokio::pin!(xread);
                tokio::select! {
                    r = &mut xread => r,
                    _ = reader.due.notified() => {
                        // Something fell due sooner: cut the block short,
                        // and look at due leases in the next round.
                        due_at = None;
                        let id = reader.client_id.load(Ordering::Relaxed);
                        // CLIENT UNBLOCK goes on another connection, so it
                        // can reach Redis before the XREAD does, find
                        // nothing blocked, and leave the read to block its
                        // whole length (seconds, with a retry due in 1 ms).
                        // Until it finds the read blocked, or the read
                        // returns, it goes again.
                        let mut tries = 0;
                        loop {
                            tries += 1;
                            if self.unblock(&stream, id).await || tries >= UNBLOCK_TRIES {
                                break xread.await;
                            }
                            if let Ok(r) = tokio::time::timeout(UNBLOCK_RETRY, &mut xread).await {
                                break r;
                            }
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            };
            match result {
                Ok(Ok(_)) => conn = Some(c),
                Ok(Err(e)) => tracing::warn!(error = %e, "blocking read failed; reconnecting"),
                Err(_) => tracing::warn!("blocking read timed out; reconnecting"),
            }
        }
        tracing::debug!(queue = %reader.target.route.queue, group = %reader.target.group, "reader stopped");
    }
}

/// What a dispatch round could not finish by itself.
struct Dispatched {
    /// Deliveries nobody could take: (entry id, attempt), to release.
    leftover: Vec<(String, u32)>,
    /// Leases to lengthen for subscribers whose ack_deadline exceeds the one fetched with.
    bumps: Vec<(super::Receipt, Duration)>,
}

impl Dispatcher {
    /// `CLIENT UNBLOCK` a reader's blocked XREAD (it returns as if timed out).
    /// `stream` picks the node (in a cluster) the reader's connection is on.
    /// True when the read was blocked and is now released; false when it
    /// was not blocked (not arrived yet, or already returned), the reader's
    /// connection is unknown, or Redis could not be asked.
    async fn unblock(&self, stream: &str, client_id: i64) -> bool {
        if client_id == 0 {
            return false;
        }
        let Ok(mut lane) = self.broker.redis.lane().await else {
            return false;
        };
        let r = lane
            .conn
            .on_node_of(stream, redis::cmd("CLIENT").arg("UNBLOCK").arg(client_id))
            .await;
        matches!(
            self.broker.redis.settle(&lane, r).await,
            Ok(redis::Value::Int(1))
        )
    }
}

impl Reader {
    /// Hand deliveries to subscribers with credit, round robin. Returns the
    /// ones nobody could take (to release) and the leases to lengthen for
    /// subscribers whose ack_deadline exceeds the one fetched with.
    fn dispatch(&self, deliveries: Vec<Delivery>, fetched_lease: Duration) -> Dispatched {
        let mut leftover = Vec::new();
        let mut bumps = Vec::new();
        let mut st = lock(&self.state);
        let now = Instant::now();
        let healthy = st.has_healthy();
        'next: for mut d in deliveries {
            let n = st.subs.len();
            // Healthy subscribers first; a stalled one only gets what no
            // healthy one can take (so a message whose lease ran out on a
            // stalled stream is not handed straight back to it).
            let order = (0..n)
                .map(|k| (st.rr + k) % n)
                .filter(|&i| !st.subs[i].stalled())
                .chain(
                    (0..n)
                        .map(|k| (st.rr + k) % n)
                        .filter(|&i| st.subs[i].stalled()),
                )
                .collect::<Vec<_>>();
            for i in order {
                let s = &mut st.subs[i];
                if s.usable(now, healthy) == 0 || !s.credit.take() {
                    continue;
                }
                if healthy && s.stalled() {
                    // A stalled subscriber's one probe; the next after a lease.
                    s.probe_at = Some(now + s.lease);
                }
                let lease = s.lease;
                if lease > fetched_lease {
                    d.lease_expires_ms += (lease - fetched_lease).as_millis() as u64;
                }
                let id = d.message_id.clone();
                let receipt = d.receipt.clone();
                match s.tx.try_send(Ok(Box::new(d))) {
                    Ok(()) => {
                        let sub = s.id;
                        st.free(&id, false);
                        let until = now + lease;
                        st.owners.insert(id, (sub, until));
                        st.earliest = Some(st.earliest.map_or(until, |e| e.min(until)));
                        st.rr = i + 1;
                        if lease > fetched_lease {
                            if let Ok(r) = super::Receipt::decode(&receipt) {
                                bumps.push((r, lease));
                            }
                        }
                        continue 'next;
                    }
                    Err(
                        mpsc::error::TrySendError::Full(Ok(back))
                        | mpsc::error::TrySendError::Closed(Ok(back)),
                    ) => {
                        d = *back;
                        if lease > fetched_lease {
                            d.lease_expires_ms -= (lease - fetched_lease).as_millis() as u64;
                        }
                    }
                    Err(_) => {
                        s.credit.untake();
                        continue 'next;
                    }
                }
            }
            leftover.push((d.message_id, d.attempt));
        }
        Dispatched { leftover, bumps }
    }

    fn wake_due(&self) {
        self.due.notify_one();
    }
}
