//! One (queue, group) reader: fetch what its subscribers can take, hand it
//! out, and wait for more.
//!
//! The loop is four named steps: [`Reader::plan`] chooses the round from the
//! ledger, [`Reader::fetch`] runs it, [`Reader::deliver`] hands the result to
//! the ledger and settles what nobody took, and [`Reader::block`] waits for
//! an append, a due time or a wake-up. Every Redis command goes through the
//! broker or its [`Waiter`]; none is built here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use super::budget::{Budget, Unread};
use super::ledger::{lock, Credit, Item, Ledger};
use crate::backoff::Pause;
use crate::broker::limits::FETCH_BATCH;
use crate::broker::redis::{Waited, Waiter};
use crate::broker::{Broker, Delivery, Fetched, Round, Target};
use crate::shutdown::Drain;

/// Longest single wait, so a reader re-checks its state now and then.
const MAX_BLOCK: Duration = Duration::from_secs(5);
/// The least read-ahead (see `Round_::read_ahead`).
const MIN_READ_AHEAD: u32 = 16;
/// How long a reader whose new entries mostly wait for their ordering
/// key's turn waits for a settle before reading on anyway (with twice the
/// read-ahead), so that a key stuck in front of other traffic holds it back
/// for a few such waits at most.
const TURN_WAIT: Duration = Duration::from_millis(2);

/// One reader and its subscribers.
pub struct Reader {
    pub target: Target,
    ledger: Mutex<Ledger>,
    /// Subscribers or credit changed.
    credit: Arc<Notify>,
    /// Something may have become due earlier than the reader thinks.
    due: Notify,
    /// The replica's unread bytes: a full budget holds every reader back.
    unread: Arc<Unread>,
    /// The size a first fetch assumes of every entry (the largest possible).
    largest: usize,
}

impl Reader {
    pub fn new(target: Target, budget: &Budget) -> Arc<Reader> {
        Arc::new(Reader {
            target,
            ledger: Mutex::new(Ledger::default()),
            credit: Arc::new(Notify::new()),
            due: Notify::new(),
            unread: budget.replica.clone(),
            largest: budget.largest,
        })
    }

    /// Add a subscriber; returns its id in this reader.
    pub fn join(&self, tx: mpsc::Sender<Item>, credit: Arc<Credit>, lease: Duration) -> u64 {
        credit.wake_on_give(&self.credit);
        let id = lock(&self.ledger).join(tx, credit, lease);
        self.credit.notify_one();
        id
    }

    pub fn leave(&self, sub: u64) {
        lock(&self.ledger).leave(sub);
        self.credit.notify_one();
    }

    /// Credit of deliveries settled here comes back now.
    pub fn settled(&self, ids: &[&str], due_changed: bool) {
        let freed = {
            let mut l = lock(&self.ledger);
            ids.iter().fold(false, |acc, id| l.free(id, true) | acc)
        };
        if freed {
            self.credit.notify_one();
        }
        if due_changed {
            self.wake_due();
        }
    }

    /// A lease extended here keeps its credit that much longer.
    pub fn extended(&self, id: &str, by: Duration) {
        lock(&self.ledger).extended(id, Instant::now() + by);
    }

    pub fn wake_due(&self) {
        self.due.notify_one();
    }

    /// Was this delivery fetched by this reader?
    pub fn holds_delivery(&self, d: &Delivery) -> bool {
        *d.queue == *self.target.route.queue
    }

    /// Forget closed streams; true when no subscriber is left.
    pub fn idle(&self) -> bool {
        lock(&self.ledger).prune()
    }

    /// The reader loop; ends when leanmqd drains or `retire` says so (it
    /// is asked before each round, and retires the reader once it is idle).
    pub async fn run(
        self: Arc<Self>,
        broker: Arc<Broker>,
        drain: Drain,
        retire: impl Fn(&Reader) -> bool,
    ) {
        let mut r = Round_::new(&broker, self.largest);
        tracing::debug!(queue = %self.target.route.queue, group = %self.target.group, "reader started");
        while !drain.is_draining() && !retire(&self) {
            let Some((count, lease)) = self.plan(&drain, r.entry_bytes).await else {
                continue;
            };
            let Some(fetched) = self.fetch(&broker, &mut r, count, lease, &drain).await else {
                continue;
            };
            let got = (fetched.deliveries.len() + fetched.exhausted.len()) as u32;
            let (now_ms, next_due_ms) = (fetched.now_ms, fetched.next_due_ms);
            let last_id = fetched.last_id.clone();
            let (full, waiting) = (fetched.full, r.read_ahead_after(&fetched));
            r.sized(&fetched.deliveries);
            self.deliver(&broker, &drain, fetched, lease).await;
            if full && waiting {
                self.wait_for_turn(&mut r, &drain).await;
            } else if got < count && !full {
                self.block(&broker, &mut r, &drain, &last_id, now_ms, next_due_ms)
                    .await;
            }
        }
        tracing::debug!(queue = %self.target.route.queue, group = %self.target.group, "reader stopped");
    }

    /// Step 1: how much to fetch, with which lease; `None` after waiting
    /// for credit or for the replica's byte budget to free.
    async fn plan(&self, drain: &Drain, entry_bytes: usize) -> Option<(u32, Duration)> {
        let freed = self.unread.freed().notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let plan = lock(&self.ledger).plan(Instant::now(), entry_bytes);
        match plan.lease.filter(|_| plan.credit > 0) {
            Some(lease) => Some((plan.credit.min(FETCH_BATCH), lease)),
            None => {
                let until = plan.wake_at.unwrap_or_else(|| Instant::now() + MAX_BLOCK);
                tokio::select! {
                    _ = self.credit.notified() => {}
                    _ = freed => {}
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = drain.draining() => {}
                }
                None
            }
        }
    }

    /// Step 4 when a full read of new entries mostly waits for their keys'
    /// turns: more are unread, but reading them now would mostly park them
    /// too. Wait for a settle here (an ack frees credit) or a wake-up, or
    /// for [`TURN_WAIT`], after which the read-ahead doubles.
    async fn wait_for_turn(&self, r: &mut Round_, drain: &Drain) {
        tokio::select! {
            _ = self.credit.notified() => {}
            _ = self.due.notified() => r.due_at = None,
            _ = tokio::time::sleep(TURN_WAIT) => r.widen(),
            _ = drain.draining() => {}
        }
    }

    /// Step 2: one round; `None` after a failure (and its pause).
    async fn fetch(
        &self,
        broker: &Broker,
        r: &mut Round_,
        count: u32,
        lease: Duration,
        drain: &Drain,
    ) -> Option<Fetched> {
        let started = Instant::now();
        let round = r.choose(started);
        match broker
            .fetch(&self.target, count, r.read_ahead, lease, &round, &r.seen)
            .await
        {
            Ok(f) => {
                r.fetched(&round, &f, started);
                Some(f)
            }
            Err(e) => {
                let pause = r.pause.failed();
                tracing::warn!(error = %e, queue = %self.target.route.queue, retry_in = ?pause, "fetch failed");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = drain.draining() => {}
                }
                None
            }
        }
    }

    /// Step 3: hand out, dead-letter what ran out, release what nobody
    /// took, lengthen leases for longer ack deadlines.
    async fn deliver(&self, broker: &Arc<Broker>, drain: &Drain, f: Fetched, lease: Duration) {
        for e in f.exhausted {
            let broker = broker.clone();
            let target = self.target.clone();
            drain.spawn(async move {
                if let Err(err) = broker.dead_letter_exhausted(&target, &e).await {
                    tracing::warn!(error = %err, id = %e.id, "dead-lettering an exhausted message failed; another round retries it");
                }
            });
        }
        let out = lock(&self.ledger).hand_out(f.deliveries, lease, Instant::now());
        if !out.leftover.is_empty() {
            if let Err(e) = broker.release(&self.target, &out.leftover).await {
                tracing::warn!(error = %e, "release failed; leases will expire instead");
            }
        }
        for (receipt, by) in out.bumps {
            if let Err(e) = broker.extend(&receipt, by).await {
                tracing::debug!(error = %e, "lease bump failed");
            }
        }
    }

    /// Step 4: nothing more ready; wait for an append, a due time or a wake-up.
    async fn block(
        &self,
        broker: &Broker,
        r: &mut Round_,
        drain: &Drain,
        last_id: &str,
        now_ms: u64,
        next_due_ms: Option<u64>,
    ) {
        let block = next_due_ms
            .map_or(MAX_BLOCK, |due| {
                Duration::from_millis(due.saturating_sub(now_ms).max(1)).min(MAX_BLOCK)
            })
            .min(r.unleased_every);
        let stream = broker.keys(&self.target.route.queue).stream.clone();
        let waited = broker
            .redis
            .wait_for_append(
                &mut r.waiter,
                &stream,
                last_id,
                block,
                &self.due,
                drain.draining(),
            )
            .await;
        match waited {
            // Something fell due sooner: look at due leases next round.
            Waited::Cut => r.due_at = None,
            Waited::NoConnection => {
                tokio::select! {
                    _ = tokio::time::sleep(r.pause.current().min(block)) => {}
                    _ = drain.draining() => {}
                }
            }
            Waited::Returned | Waited::Stopped | Waited::Failed => {}
        }
    }
}

/// What a reader remembers between rounds to choose the next one.
struct Round_ {
    waiter: Waiter,
    pause: Pause,
    /// How often a full round also scans for orphans.
    scan_every: Duration,
    last_scan: Option<Instant>,
    /// Entries our NewOnly rounds read but never leased are looked for
    /// every --redis-timeout, 100 at a time, from this cursor.
    unleased_every: Duration,
    last_unleased: Instant,
    unleased_from: String,
    /// The last stream id this reader has seen: where a lost group is
    /// recreated. "0" before the first round (the group was just ensured).
    seen: String,
    /// When the earliest lease this reader knows of falls due. Until then
    /// a round needs only new entries (the cheaper `Round::NewOnly`);
    /// None: unknown, or something may have fallen due sooner.
    due_at: Option<Instant>,
    /// The size the byte budget assumes of the next entries: the largest
    /// possible at first, then the largest of recent fetches (decaying, so
    /// one fetch of small entries does not open the gate to a burst of
    /// large ones at once).
    entry_bytes: usize,
    /// Most new entries a round reads. A keyed entry read before its turn
    /// waits parked, and costs Redis a park, a wake and a second claim
    /// (about twice the work of one read at its turn). So while reads come
    /// back mostly waiting (every key in flight), the read-ahead halves
    /// each round, down to [`MIN_READ_AHEAD`], and the reader waits for a
    /// settle before reading on; it doubles again on reads that wait for
    /// nothing, or when no settle comes. Unordered reads never wait, so for
    /// them it stays at [`FETCH_BATCH`].
    read_ahead: u32,
}

impl Round_ {
    fn new(broker: &Broker, largest: usize) -> Round_ {
        Round_ {
            waiter: Waiter::default(),
            pause: Pause::new(Duration::from_millis(100), Duration::from_secs(5)),
            scan_every: (broker.settings.orphan_timeout / 4).max(Duration::from_secs(1)),
            last_scan: None,
            unleased_every: broker.redis.timeout().max(Duration::from_secs(1)),
            last_unleased: Instant::now(),
            unleased_from: String::from("-"),
            seen: String::from("0"),
            due_at: None,
            entry_bytes: largest,
            read_ahead: FETCH_BATCH,
        }
    }

    /// Follow a round's new entries (see `read_ahead`); true when most of
    /// them wait for their key's turn.
    fn read_ahead_after(&mut self, f: &Fetched) -> bool {
        let waiting = f.waited > 0 && f.waited * 2 >= f.read;
        if waiting {
            self.read_ahead = (self.read_ahead / 2).max(MIN_READ_AHEAD);
        } else if f.waited == 0 {
            self.widen();
        }
        waiting
    }

    fn widen(&mut self) {
        self.read_ahead = (self.read_ahead * 2).min(FETCH_BATCH);
    }

    /// Learn the entry size from what a round fetched.
    fn sized(&mut self, got: &[Delivery]) {
        if let Some(max) = got.iter().map(Delivery::wire_size).max() {
            self.entry_bytes = max.max(self.entry_bytes - self.entry_bytes / 4).max(1);
        }
    }

    fn scan_due(&self) -> bool {
        self.last_scan
            .is_none_or(|t| t.elapsed() >= self.scan_every)
    }

    fn unleased_due(&self, now: Instant) -> bool {
        now.duration_since(self.last_unleased) >= self.unleased_every
    }

    /// The cheap new-entries round while nothing can be due, else a full one.
    fn choose(&self, now: Instant) -> Round {
        let scan = self.scan_due();
        let unleased = self.unleased_due(now);
        if !scan && !unleased && self.due_at.is_some_and(|t| now < t) {
            Round::NewOnly
        } else {
            Round::Full {
                scan_orphans: scan,
                unleased_from: unleased.then(|| self.unleased_from.clone()),
            }
        }
    }

    /// Remember what a successful round tells about the next.
    fn fetched(&mut self, round: &Round, f: &Fetched, started: Instant) {
        self.pause.succeeded();
        if let Round::Full {
            scan_orphans,
            unleased_from,
        } = round
        {
            if *scan_orphans {
                self.last_scan = Some(Instant::now());
            }
            if unleased_from.is_some() {
                self.last_unleased = Instant::now();
                if let Some(next) = &f.unleased_next {
                    self.unleased_from.clone_from(next);
                }
            }
        }
        let until_due = f.next_due_ms.map_or(MAX_BLOCK, |d| {
            Duration::from_millis(d.saturating_sub(f.now_ms))
        });
        self.due_at = Some(started + until_due);
        self.seen.clone_from(&f.last_id);
    }
}
