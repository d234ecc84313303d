//! The byte budget of unread deliveries: what the fan-out has handed to a
//! subscription's channel that its transport has not taken yet.
//!
//! Credit (`max_in_flight`) bounds how many deliveries a subscriber holds;
//! this bounds how many bytes wait for a slow or stalled one, per stream
//! (`--max-unread-bytes-per-stream`) and across the replica
//! (`--max-unread-bytes`). A stream with nothing unread may always take one
//! delivery, however large and however full the replica's budget, so no
//! subscriber is starved by others' stalled streams: a full replica budget
//! slows every stream to one unread delivery at a time, and memory stays
//! within the budget plus one message per open stream (themselves capped by
//! `--max-subscriptions`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The replica-wide count, shared by every prefix's dispatcher.
#[derive(Debug)]
pub struct Unread {
    bytes: AtomicUsize,
    max: usize,
    /// Readers held back by a full budget wait here.
    freed: Notify,
}

impl Unread {
    pub fn new(max: usize) -> Arc<Unread> {
        Arc::new(Unread {
            bytes: AtomicUsize::new(0),
            max,
            freed: Notify::new(),
        })
    }

    /// Bytes unread across the replica now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// What is left of the budget (0 when full).
    fn room(&self) -> usize {
        self.max.saturating_sub(self.bytes())
    }

    /// Waits until unread bytes drop below the budget after being at it.
    pub fn freed(&self) -> &Notify {
        &self.freed
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        let before = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            })
            .unwrap_or(0);
        if before >= self.max && before.saturating_sub(n) < self.max {
            self.freed.notify_waiters();
        }
    }
}

/// What a dispatcher is given: the per-stream budget, the replica's count,
/// and the size to assume of an entry before any has been seen.
#[derive(Debug, Clone)]
pub struct Budget {
    pub per_stream: usize,
    pub replica: Arc<Unread>,
    /// The largest a delivery can be (`--max-payload-bytes` plus headers):
    /// a new reader's first fetch assumes every entry is this big.
    pub largest: usize,
}

impl Budget {
    /// A budget that never binds, for tests of other things.
    #[cfg(test)]
    pub fn unbounded() -> Budget {
        Budget {
            per_stream: usize::MAX,
            replica: Unread::new(usize::MAX),
            largest: 1,
        }
    }
}

/// One subscription's unread bytes, drawn against the replica's.
#[derive(Debug)]
pub struct StreamBytes {
    unread: AtomicUsize,
    max: usize,
    replica: Arc<Unread>,
}

impl StreamBytes {
    pub fn new(budget: &Budget) -> StreamBytes {
        StreamBytes {
            unread: AtomicUsize::new(0),
            max: budget.per_stream,
            replica: budget.replica.clone(),
        }
    }

    fn unread(&self) -> usize {
        self.unread.load(Ordering::Acquire)
    }

    /// Bytes this stream may still be handed: its own room and the
    /// replica's, except that an empty stream may always take one delivery
    /// (`Some(0)` then means "one, of any size"). `None`: nothing now.
    pub fn room(&self) -> Option<usize> {
        let unread = self.unread();
        let room = self.max.saturating_sub(unread).min(self.replica.room());
        if unread == 0 {
            Some(room)
        } else {
            (room > 0).then_some(room)
        }
    }

    /// A delivery of `n` bytes went into the channel.
    pub fn handed(&self, n: usize) {
        self.unread.fetch_add(n, Ordering::AcqRel);
        self.replica.add(n);
    }

    /// The transport took a delivery of `n` bytes out of the channel.
    pub fn taken(&self, n: usize) {
        let _ = self
            .unread
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
        self.replica.sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_stream: usize, replica: usize) -> Budget {
        Budget {
            per_stream,
            replica: Unread::new(replica),
            largest: 1,
        }
    }

    #[test]
    fn a_stream_takes_until_its_budget_is_spent() {
        let b = budget(100, 1000);
        let s = StreamBytes::new(&b);
        assert_eq!(s.room(), Some(100));
        s.handed(60);
        assert_eq!(s.room(), Some(40));
        s.handed(60);
        assert_eq!(s.room(), None);
        s.taken(60);
        assert_eq!(s.room(), Some(40));
        assert_eq!(b.replica.bytes(), 60);
    }

    #[test]
    fn an_empty_stream_always_takes_one_even_when_the_replica_is_full() {
        let b = budget(100, 150);
        let (a, c) = (StreamBytes::new(&b), StreamBytes::new(&b));
        a.handed(90);
        c.handed(90);
        assert_eq!(b.replica.bytes(), 180);
        assert_eq!(a.room(), None, "the replica's budget is spent");
        let empty = StreamBytes::new(&b);
        assert_eq!(empty.room(), Some(0), "one delivery, of any size");
        a.taken(90);
        assert_eq!(c.room(), Some(10));
    }

    #[test]
    fn draining_below_the_replica_budget_wakes_waiters() {
        let b = budget(1000, 100);
        let s = StreamBytes::new(&b);
        s.handed(150);
        let waiter = b.replica.freed().notified();
        tokio::pin!(waiter);
        waiter.as_mut().enable();
        s.taken(100);
        assert!(
            futures::FutureExt::now_or_never(waiter).is_some(),
            "crossing below the budget notifies"
        );
    }
}
