//! Concurrent Acks share Redis calls, as concurrent Sends do
//! (`broker::coalesce`).
//!
//! Each Ack call used to run `ack.lua` once per (queue, group) it named, so
//! subscribers acking small batches at once (ordered delivery keeps at most
//! one message per key in flight, so its acks are small) paid the script's
//! fixed cost per call. Now at most [`IN_FLIGHT`] shared calls are
//! outstanding. An Ack that finds a free slot and nobody waiting makes its
//! own call at once, from its own task (no hop). Acks that find every slot
//! busy wait in a queue, and a gathering task settles all that waited in one
//! call when a slot frees up. Each caller still gets its own outcomes, in its
//! own order. An ack is idempotent (a receipt settles once; a repeat reads
//! NOT_PENDING), so a shared call that fails for a reason other than Redis
//! being unavailable is retried caller by caller, and one bad batch can't
//! fail its neighbours.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::Settle;
use crate::broker::coalesce::gather_calls;
use crate::broker::limits::MAX_ACK_RECEIPTS;
use crate::broker::receipt::Receipt;
use crate::broker::AckOutcome;
use crate::error::{Error, Result};
use crate::shutdown::Drain;

/// Shared calls outstanding at once; more Acks wait and join the next one.
const IN_FLIGHT: usize = 2;
/// Most receipts in one shared call (callers are gathered until this would
/// be passed; one caller alone may bring up to [`MAX_ACK_RECEIPTS`]).
const MAX_SHARED: usize = 4 * MAX_ACK_RECEIPTS;
/// Acks waiting for a call; beyond this, callers wait (backpressure).
const QUEUE: usize = 256;

/// One waiting Ack.
struct Job {
    receipts: Vec<Receipt>,
    done: oneshot::Sender<Result<Vec<AckOutcome>>>,
}

/// The queue of waiting Acks and the call slots.
pub struct Batcher {
    settle: Settle,
    tx: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
}

impl Batcher {
    /// Start the gathering task; it ends on drain, or when the batcher is
    /// dropped (it holds the only sender).
    pub fn start(settle: Settle, drain: &Drain) -> Batcher {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        drain.spawn(gather(settle.clone(), rx, slots.clone(), drain.clone()));
        Batcher { settle, tx, slots }
    }

    /// Settle `receipts`, sharing a call with concurrent Acks.
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        // A free slot and nobody waiting: call now. (The permit is released
        // even if this future is dropped mid-call.)
        if self.tx.capacity() == self.tx.max_capacity() {
            if let Ok(_permit) = self.slots.clone().try_acquire_owned() {
                return self.settle.ack(receipts).await;
            }
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job {
                receipts: receipts.to_vec(),
                done,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await
            .map_err(|_| Error::Unavailable("the ack was dropped before Redis answered".into()))?
    }
}

/// Take waiting Acks as call slots free up, up to [`MAX_SHARED`] receipts a
/// call (a first job bigger than that still goes, alone).
async fn gather(settle: Settle, rx: mpsc::Receiver<Job>, slots: Arc<Semaphore>, drain: Drain) {
    // On drain, Acks already waiting are still settled (their callers wait);
    // then the task ends, and later Acks get UNAVAILABLE.
    let call = move |jobs| {
        let settle = settle.clone();
        async move { shared(&settle, jobs).await }
    };
    gather_calls(
        rx,
        slots,
        drain,
        MAX_SHARED,
        |j: &Job| j.receipts.len(),
        call,
    )
    .await;
}

/// One call for every job's receipts, its outcomes handed back by position.
async fn shared(settle: &Settle, jobs: Vec<Job>) {
    if let [_] = jobs.as_slice() {
        for j in jobs {
            let _ = j.done.send(settle.ack(&j.receipts).await);
        }
        return;
    }
    let sizes: Vec<usize> = jobs.iter().map(|j| j.receipts.len()).collect();
    let all: Vec<Receipt> = jobs
        .iter()
        .flat_map(|j| j.receipts.iter().cloned())
        .collect();
    match settle.ack(&all).await {
        Ok(outcomes) => {
            for (j, mine) in jobs.into_iter().zip(split(outcomes, &sizes)) {
                let _ = j.done.send(Ok(mine));
            }
        }
        Err(e) if e.is_transient() => {
            for j in jobs {
                let _ = j.done.send(Err(e.clone()));
            }
        }
        Err(_) => {
            for j in jobs {
                let _ = j.done.send(settle.ack(&j.receipts).await);
            }
        }
    }
}

/// `outcomes` cut into consecutive runs of `sizes`.
fn split(outcomes: Vec<AckOutcome>, sizes: &[usize]) -> Vec<Vec<AckOutcome>> {
    let mut it = outcomes.into_iter();
    sizes
        .iter()
        .map(|&n| it.by_ref().take(n).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_cut_in_the_callers_order_and_sizes() {
        use AckOutcome::{Acked, NotPending, Stale};
        let cut = split(vec![Acked, NotPending, Stale, Acked, Acked], &[1, 3, 0, 1]);
        assert_eq!(
            cut,
            vec![
                vec![Acked],
                vec![NotPending, Stale, Acked],
                vec![],
                vec![Acked]
            ]
        );
    }
}
