//! The credit ledger of one (queue, group) reader: which local subscriber
//! holds which delivery, how much credit each has left, and who is stalled.
//!
//! Pure bookkeeping: no Redis, no tasks, no clock of its own (every call is
//! given `now`), so each rule is unit-tested below.
//!
//! A subscriber has `max_in_flight` credit. Each delivery it gets takes one;
//! an Ack or Nack on this replica, or the end of the delivery's lease, gives
//! it back. A subscriber whose last [`STALL_AFTER`] deliveries all ran out
//! their lease, with nothing settled or extended in between, is treated as
//! stalled (its connection may be dead but not yet closed). While a healthy
//! subscriber shares the reader, a stalled one gets one probe delivery per
//! lease until it settles something, so it cannot burn the attempts of
//! messages the healthy one would handle. When every subscriber is stalled
//! they keep their credit, so attempts climb and messages reach the DLQ at
//! max_attempts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use super::budget::{Budget, StreamBytes};
use crate::broker::receipt::Receipt;
use crate::broker::Delivery;
use crate::error::Result;

/// What a subscription's channel carries. Boxed: tokio's channel allocates
/// its slots 32 at a time when it is made, so every idle Subscribe stream
/// holds 32 slots; a 200-byte `Delivery` in each cost 6.4 KiB per stream,
/// a third of an idle stream's memory.
pub type Item = Result<Box<Delivery>>;

/// Lease expiries in a row after which a subscriber counts as stalled.
pub const STALL_AFTER: u32 = 3;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the ledger inconsistent in
    // a way that matters more than stopping delivery; recover the guard.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A subscription's `max_in_flight`, counted across all its readers (a
/// pattern subscription draws on one credit from many readers).
pub struct Credit {
    max: u32,
    in_flight: AtomicU32,
    /// Bytes handed to the subscription's channel and not yet taken out.
    bytes: StreamBytes,
    /// Readers drawing on this credit, woken when some comes back.
    wakers: Mutex<Vec<Weak<Notify>>>,
}

impl Credit {
    pub fn new(max: u32, budget: &Budget) -> Arc<Self> {
        Arc::new(Credit {
            max,
            in_flight: AtomicU32::new(0),
            bytes: StreamBytes::new(budget),
            wakers: Mutex::new(Vec::new()),
        })
    }

    /// Wake `reader` when credit comes back.
    pub fn wake_on_give(&self, reader: &Arc<Notify>) {
        lock(&self.wakers).push(Arc::downgrade(reader));
    }

    pub fn available(&self) -> u32 {
        if self.bytes.room().is_none() {
            return 0;
        }
        self.max
            .saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    /// How many entries of about `entry` bytes the byte budget lets this
    /// subscription be handed now (at least one while it has any room).
    fn by_bytes(&self, entry: usize) -> u32 {
        match self.bytes.room() {
            None => 0,
            Some(room) => (room / entry.max(1)).clamp(1, u32::MAX as usize) as u32,
        }
    }

    /// The transport took a delivery of `n` bytes from the channel; wake
    /// the readers if that made room where there was none.
    pub fn taken(&self, n: usize) {
        let blocked = self.bytes.room().is_none();
        self.bytes.taken(n);
        if blocked && self.bytes.room().is_some() {
            self.wake();
        }
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
        self.wake();
    }

    fn wake(&self) {
        for n in lock(&self.wakers).iter().filter_map(Weak::upgrade) {
            n.notify_one();
        }
    }
}

/// One local subscriber of the reader.
struct Sub {
    id: u64,
    tx: mpsc::Sender<Item>,
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

    /// It settled or extended something here: it is alive.
    fn proven_alive(&mut self) {
        self.expired_streak = 0;
        self.probe_at = None;
    }
}

/// What a reader may fetch now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Deliveries the subscribers can take.
    pub credit: u32,
    /// The shortest lease among subscribers with credit.
    pub lease: Option<Duration>,
    /// When something changes by itself: a lease's credit comes back or a
    /// stalled subscriber may be probed.
    pub wake_at: Option<Instant>,
}

/// What a hand-out could not finish by itself.
#[derive(Debug, Default)]
pub struct HandedOut {
    /// Deliveries nobody could take: (entry id, attempt), to release.
    pub leftover: Vec<(String, u32)>,
    /// Leases to lengthen for subscribers whose ack_deadline exceeds the
    /// one fetched with.
    pub bumps: Vec<(Receipt, Duration)>,
}

/// The ledger.
#[derive(Default)]
pub struct Ledger {
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

impl Ledger {
    /// Add a subscriber; returns its id.
    pub fn join(&mut self, tx: mpsc::Sender<Item>, credit: Arc<Credit>, lease: Duration) -> u64 {
        self.next_id += 1;
        self.subs.push(Sub {
            id: self.next_id,
            tx,
            credit,
            lease,
            expired_streak: 0,
            probe_at: None,
        });
        self.next_id
    }

    /// Remove a subscriber; what it held keeps counting against nobody.
    pub fn leave(&mut self, sub: u64) {
        self.subs.retain(|s| s.id != sub);
        self.owners.retain(|_, (s, _)| *s != sub);
    }

    /// Forget subscribers whose stream has closed; true when none is left.
    pub fn prune(&mut self) -> bool {
        self.subs.retain(|s| !s.tx.is_closed());
        self.subs.is_empty()
    }

    /// Give a delivery's credit back. `settled`: the subscriber acked,
    /// nacked or extended it here, which also proves it alive.
    pub fn free(&mut self, id: &str, settled: bool) -> bool {
        let Some((sub, _)) = self.owners.remove(id) else {
            return false;
        };
        if let Some(s) = self.subs.iter_mut().find(|s| s.id == sub) {
            s.credit.give();
            if settled {
                s.proven_alive();
            }
        }
        true
    }

    /// A lease extended here keeps its credit until `until`.
    pub fn extended(&mut self, id: &str, until: Instant) {
        if let Some(owner) = self.owners.get_mut(id) {
            owner.1 = until;
            let sub = owner.0;
            if let Some(s) = self.subs.iter_mut().find(|s| s.id == sub) {
                s.proven_alive();
            }
        }
        self.earliest = self.owners.values().map(|(_, t)| *t).min();
    }

    /// Return credit of deliveries whose lease has run out, and mark a
    /// subscriber stalled after [`STALL_AFTER`] such expiries in a row.
    pub fn expire(&mut self, now: Instant) {
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

    /// Expire what ran out, then say what may be fetched now, if entries
    /// are about `entry` bytes each (the byte budget's share of the count).
    pub fn plan(&mut self, now: Instant, entry: usize) -> Plan {
        self.expire(now);
        let mut credit = 0u32;
        let mut lease: Option<Duration> = None;
        let mut probe: Option<Instant> = None;
        let healthy = self.has_healthy();
        for s in &self.subs {
            let c = s.usable(now, healthy).min(s.credit.by_bytes(entry));
            if c > 0 {
                credit = credit.saturating_add(c);
                lease = Some(lease.map_or(s.lease, |l| l.min(s.lease)));
            } else if let Some(t) = s.probe_at.filter(|t| *t > now) {
                probe = Some(probe.map_or(t, |p| p.min(t)));
            }
        }
        let wake_at = match (self.earliest, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Plan {
            credit,
            lease,
            wake_at,
        }
    }

    /// Subscribers in the order the next delivery tries them: round robin,
    /// healthy ones first; a stalled one only gets what no healthy one can
    /// take (so a message whose lease ran out on a stalled stream is not
    /// handed straight back to it).
    fn order(&self) -> Vec<usize> {
        let n = self.subs.len();
        let ring = (0..n).map(move |k| (self.rr + k) % n);
        ring.clone()
            .filter(|&i| !self.subs[i].stalled())
            .chain(ring.filter(|&i| self.subs[i].stalled()))
            .collect()
    }

    /// Hand deliveries to subscribers with credit, round robin.
    pub fn hand_out(
        &mut self,
        deliveries: Vec<Delivery>,
        fetched: Duration,
        now: Instant,
    ) -> HandedOut {
        let mut out = HandedOut::default();
        let healthy = self.has_healthy();
        for d in deliveries {
            if let Some(d) = self.hand_one(d, fetched, now, healthy, &mut out) {
                out.leftover.push((d.message_id, d.attempt));
            }
        }
        out
    }

    /// Give one delivery to the first subscriber that takes it; `Some` when
    /// nobody did.
    fn hand_one(
        &mut self,
        mut d: Delivery,
        fetched: Duration,
        now: Instant,
        healthy: bool,
        out: &mut HandedOut,
    ) -> Option<Delivery> {
        for i in self.order() {
            let s = &mut self.subs[i];
            if s.usable(now, healthy) == 0 || !s.credit.take() {
                continue;
            }
            let lease = s.lease;
            let extra = lease.saturating_sub(fetched).as_millis() as u64;
            d.lease_expires_ms += extra;
            let id = d.message_id.clone();
            let bump = (extra > 0).then(|| d.receipt());
            let size = d.wire_size();
            match s.tx.try_send(Ok(Box::new(d))) {
                Ok(()) => {
                    s.credit.bytes.handed(size);
                    if healthy && s.stalled() {
                        // A stalled subscriber's one probe; the next after a lease.
                        s.probe_at = Some(now + lease);
                    }
                    let sub = s.id;
                    self.free(&id, false);
                    let until = now + lease;
                    self.owners.insert(id, (sub, until));
                    self.earliest = Some(self.earliest.map_or(until, |e| e.min(until)));
                    self.rr = i + 1;
                    if let Some(r) = bump {
                        out.bumps.push((r, lease));
                    }
                    return None;
                }
                Err(
                    mpsc::error::TrySendError::Full(Ok(back))
                    | mpsc::error::TrySendError::Closed(Ok(back)),
                ) => {
                    s.credit.untake();
                    d = *back;
                    d.lease_expires_ms -= extra;
                }
                Err(_) => {
                    s.credit.untake();
                    return None;
                }
            }
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const LEASE: Duration = Duration::from_secs(30);

    fn delivery(id: &str) -> Delivery {
        Delivery {
            queue: Arc::from("q"),
            message_id: id.to_string(),
            path: "/q".into(),
            payload: Bytes::new(),
            content_type: String::new(),
            headers: Vec::new(),
            attempt: 1,
            published_at: 0.0,
            group: "g".into(),
            lease_expires_ms: 1_000,
            ordering_key: None,
        }
    }

    fn many(n: usize) -> Vec<Delivery> {
        (0..n).map(|i| delivery(&format!("1-{i}"))).collect()
    }

    struct Member {
        id: u64,
        rx: mpsc::Receiver<Item>,
        credit: Arc<Credit>,
    }

    fn join(l: &mut Ledger, max: u32, lease: Duration) -> Member {
        let (tx, rx) = mpsc::channel(max as usize + 1);
        let credit = Credit::new(max, &Budget::unbounded());
        let id = l.join(tx, credit.clone(), lease);
        Member { id, rx, credit }
    }

    fn ids(m: &mut Member) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Ok(d)) = m.rx.try_recv() {
            out.push(d.message_id);
        }
        out
    }

    #[test]
    fn deliveries_go_round_robin_and_the_rest_is_left_over() {
        let mut l = Ledger::default();
        let mut a = join(&mut l, 2, LEASE);
        let mut b = join(&mut l, 2, LEASE);
        let now = Instant::now();
        assert_eq!(l.plan(now, 1).credit, 4);
        let out = l.hand_out(many(5), LEASE, now);
        assert_eq!(ids(&mut a), ["1-0", "1-2"]);
        assert_eq!(ids(&mut b), ["1-1", "1-3"]);
        assert_eq!(out.leftover, vec![("1-4".to_string(), 1)]);
        assert_eq!(l.plan(now, 1).credit, 0);
    }

    #[test]
    fn settling_gives_credit_back_once() {
        let mut l = Ledger::default();
        let a = join(&mut l, 1, LEASE);
        let now = Instant::now();
        l.hand_out(many(1), LEASE, now);
        assert_eq!(a.credit.available(), 0);
        assert!(l.free("1-0", true));
        assert!(!l.free("1-0", true), "a second settle frees nothing");
        assert_eq!(a.credit.available(), 1);
        assert_eq!(l.plan(now, 1).credit, 1);
    }

    #[test]
    fn an_expired_lease_gives_credit_back_and_the_plan_wakes_for_it() {
        let mut l = Ledger::default();
        let a = join(&mut l, 1, LEASE);
        let now = Instant::now();
        l.hand_out(many(1), LEASE, now);
        let plan = l.plan(now, 1);
        assert_eq!((plan.credit, plan.wake_at), (0, Some(now + LEASE)));
        assert_eq!(l.plan(now + LEASE, 1).credit, 1);
        assert_eq!(a.credit.available(), 1);
    }

    /// Let `STALL_AFTER` deliveries in a row run out on the only
    /// subscriber; returns the time after the last expiry.
    fn stall(l: &mut Ledger, m: &mut Member, mut now: Instant) -> Instant {
        for round in 0..STALL_AFTER {
            l.hand_out(vec![delivery(&format!("9-{round}"))], LEASE, now);
            now += LEASE;
            l.plan(now, 1);
        }
        assert_eq!(ids(m).len(), STALL_AFTER as usize);
        now
    }

    #[test]
    fn a_stalled_subscriber_gets_one_probe_per_lease_beside_a_healthy_one() {
        let mut l = Ledger::default();
        let mut stalled = join(&mut l, 10, LEASE);
        let now = stall(&mut l, &mut stalled, Instant::now());
        let mut healthy = join(&mut l, 2, LEASE);
        // Until its probe time the stalled one takes nothing.
        assert_eq!(l.plan(now, 1).credit, 2);
        l.hand_out(many(3), LEASE, now);
        assert_eq!(ids(&mut stalled).len(), 0);
        assert_eq!(ids(&mut healthy).len(), 2);
        // At its probe time, one delivery, and only what the healthy one can't take.
        let later = now + LEASE;
        let plan = l.plan(later, 1);
        assert_eq!(plan.credit, 2 + 1);
        l.hand_out(
            vec![
                delivery("3-0"),
                delivery("3-1"),
                delivery("3-2"),
                delivery("3-3"),
            ],
            LEASE,
            later,
        );
        assert_eq!(ids(&mut healthy).len(), 2);
        assert_eq!(ids(&mut stalled).len(), 1, "one probe per lease");
    }

    #[test]
    fn when_every_subscriber_is_stalled_they_keep_their_credit() {
        let mut l = Ledger::default();
        let mut only = join(&mut l, 5, LEASE);
        let now = stall(&mut l, &mut only, Instant::now());
        assert_eq!(l.plan(now, 1).credit, 5);
        l.hand_out(many(3), LEASE, now);
        assert_eq!(ids(&mut only).len(), 3);
    }

    #[test]
    fn settling_its_probe_proves_a_stalled_subscriber_alive() {
        let mut l = Ledger::default();
        let mut a = join(&mut l, 5, LEASE);
        let now = stall(&mut l, &mut a, Instant::now()) + LEASE;
        let mut b = join(&mut l, 1, LEASE);
        assert_eq!(l.plan(now, 1).credit, 1 + 1);
        l.hand_out(many(3), LEASE, now);
        let probe = ids(&mut a);
        assert_eq!(
            probe.len(),
            1,
            "the healthy one took one, the stalled one its probe"
        );
        assert_eq!(ids(&mut b).len(), 1);
        l.free(&probe[0], true);
        // Proven alive: its full credit counts again.
        assert_eq!(l.plan(now, 1).credit, 5);
    }

    #[test]
    fn a_longer_ack_deadline_bumps_the_lease_it_was_fetched_with() {
        let mut l = Ledger::default();
        let mut a = join(&mut l, 1, LEASE * 2);
        let now = Instant::now();
        let out = l.hand_out(many(1), LEASE, now);
        assert_eq!(out.bumps.len(), 1);
        assert_eq!(out.bumps[0].1, LEASE * 2);
        let d = a.rx.try_recv().expect("delivered").expect("ok");
        assert_eq!(d.lease_expires_ms, 1_000 + LEASE.as_millis() as u64);
    }

    #[test]
    fn extending_postpones_the_credit_coming_back() {
        let mut l = Ledger::default();
        let _a = join(&mut l, 1, LEASE);
        let now = Instant::now();
        l.hand_out(many(1), LEASE, now);
        l.extended("1-0", now + LEASE * 3);
        assert_eq!(l.plan(now + LEASE, 1).credit, 0);
        assert_eq!(l.plan(now + LEASE * 3, 1).credit, 1);
    }

    #[test]
    fn a_closed_stream_takes_nothing_and_is_pruned() {
        let mut l = Ledger::default();
        let a = join(&mut l, 3, LEASE);
        let mut b = join(&mut l, 3, LEASE);
        drop(a.rx);
        let now = Instant::now();
        assert_eq!(l.plan(now, 1).credit, 3);
        l.hand_out(many(2), LEASE, now);
        assert_eq!(ids(&mut b).len(), 2);
        assert_eq!(
            a.credit.available(),
            3,
            "no credit taken by a closed stream"
        );
        assert!(!l.prune());
        l.leave(b.id);
        assert!(l.prune());
    }

    #[test]
    fn the_byte_budget_holds_back_a_stream_that_does_not_read() {
        let mut l = Ledger::default();
        let (tx, mut rx) = mpsc::channel(101);
        let per = delivery("1-0").wire_size();
        let budget = Budget {
            per_stream: per * 3,
            ..Budget::unbounded()
        };
        let credit = Credit::new(100, &budget);
        l.join(tx, credit.clone(), LEASE);
        let now = Instant::now();
        assert_eq!(l.plan(now, per).credit, 3, "three fit the budget");
        let out = l.hand_out(many(5), LEASE, now);
        assert_eq!(out.leftover.len(), 2, "the rest is given back, not held");
        assert_eq!(l.plan(now, per).credit, 0, "nothing more until it reads");
        let d = rx.try_recv().expect("delivered").expect("ok");
        credit.taken(d.wire_size());
        assert_eq!(l.plan(now, per).credit, 1);
    }
}
