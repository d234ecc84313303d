//! Concurrent Sends share Redis calls.
//!
//! Each unary Send used to cost one Redis call of its own, so Redis' per-call
//! work was paid per message. Now at most [`IN_FLIGHT`] send calls are
//! outstanding. A Send that finds a free slot and nobody waiting makes its
//! own call at once, from its own task (no hop). Sends that find every slot
//! busy wait in a queue, and a coalescing task sends all that waited, one
//! call per queue, atomic as a whole (a MULTI/EXEC for plain messages, else
//! `send.lua`), when a slot frees up. Each caller still gets its own result:
//! if a shared call fails for a reason other than Redis being unavailable,
//! nothing was written (the call is all-or-nothing), and each message is
//! retried alone so one bad message can't fail its neighbours.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Broker, Outgoing, Sent};
use crate::error::{Error, Result};
use crate::shutdown::Drain;

/// Shared calls outstanding at once; more Sends wait and join the next one.
const IN_FLIGHT: usize = 8;
/// Most messages in one shared call.
const MAX_SHARED: usize = 256;
/// Sends waiting for a call; beyond this, callers wait (backpressure).
const QUEUE: usize = 8192;

/// One waiting Send.
struct Job {
    msg: Outgoing,
    done: oneshot::Sender<Result<Sent>>,
}

/// The queue of waiting Sends and the call slots.
pub struct Coalescer {
    broker: Arc<Broker>,
    tx: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
}

impl Coalescer {
    /// Start the coalescing task; it ends on drain, or when the coalescer
    /// is dropped (it holds the only sender).
    pub fn start(broker: Arc<Broker>, drain: &Drain) -> Coalescer {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        drain.spawn(gather(broker.clone(), rx, slots.clone(), drain.clone()));
        Coalescer { broker, tx, slots }
    }

    /// Append one message, sharing a call with concurrent Sends.
    pub async fn send(&self, msg: Outgoing) -> Result<Sent> {
        // A free slot and nobody waiting: call now. (The permit is released
        // even if this future is dropped mid-call.)
        if self.tx.capacity() == self.tx.max_capacity() {
            if let Ok(_permit) = self.slots.clone().try_acquire_owned() {
                return self.broker.send_alone(&msg).await;
            }
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { msg, done })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await
            .map_err(|_| Error::Unavailable("the send was dropped before Redis answered".into()))?
    }
}

/// Take waiting Sends as call slots free up, up to [`MAX_SHARED`] a call.
async fn gather(broker: Arc<Broker>, rx: mpsc::Receiver<Job>, slots: Arc<Semaphore>, drain: Drain) {
    // On drain, Sends already waiting are still sent (their callers wait);
    // then the task ends, and later Sends get UNAVAILABLE.
    let call = move |jobs| {
        let broker = broker.clone();
        async move { run(&broker, jobs).await }
    };
    gather_calls(rx, slots, drain, MAX_SHARED, |_: &Job| 1, call).await;
}

/// The gathering loop of every sharer (this one, and concurrent Acks in
/// `queues::acks`): take jobs waiting on `rx` as call slots free up, up to
/// `max` of their `weight` a call (a first job heavier than that still goes,
/// alone), and run `call` on each gathered list in a drain-tracked task that
/// holds its slot until done. On drain, jobs already waiting are still
/// taken; then the loop ends.
pub(crate) async fn gather_calls<J, W, C, F>(
    mut rx: mpsc::Receiver<J>,
    slots: Arc<Semaphore>,
    drain: Drain,
    max: usize,
    weight: W,
    call: C,
) where
    J: Send + 'static,
    W: Fn(&J) -> usize,
    C: Fn(Vec<J>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut next: Option<J> = None;
    loop {
        let first = match next.take() {
            Some(j) => Some(j),
            None => tokio::select! {
                biased;
                j = rx.recv() => j,
                _ = drain.draining() => rx.try_recv().ok(),
            },
        };
        let Some(first) = first else {
            break;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut size = weight(&first);
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            if size + weight(&j) > max {
                next = Some(j);
                break;
            }
            size += weight(&j);
            jobs.push(j);
        }
        let task = call(jobs);
        drain.spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// One call per queue: a call within one queue can skip the script when its
/// messages are plain (see `Broker::append_plain`), and in Redis Cluster a
/// call must stay within one queue's slot anyway.
async fn run(broker: &Broker, jobs: Vec<Job>) {
    futures::future::join_all(by_queue(jobs).into_iter().map(|g| shared(broker, g))).await;
}

/// Jobs grouped by queue, each group in arrival order, groups in order of
/// their first job.
fn by_queue(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for j in jobs {
        match groups
            .iter_mut()
            .find(|g| g[0].msg.route.queue == j.msg.route.queue)
        {
            Some(g) => g.push(j),
            None => groups.push(vec![j]),
        }
    }
    groups
}

async fn shared(broker: &Broker, jobs: Vec<Job>) {
    let (msgs, dones): (Vec<Outgoing>, Vec<_>) = jobs.into_iter().map(|j| (j.msg, j.done)).unzip();
    match broker.send(&msgs).await {
        Ok(sent) => {
            for (done, s) in dones.into_iter().zip(sent) {
                let _ = done.send(Ok(s));
            }
        }
        Err(e) if msgs.len() == 1 || e.is_transient() => {
            for done in dones {
                let _ = done.send(Err(e.clone()));
            }
        }
        Err(_) => {
            // Nothing was written; find out whose message it was.
            for (m, done) in msgs.iter().zip(dones) {
                let _ = done.send(broker.send_alone(m).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::route;

    fn job(path: &str, n: u8) -> (Job, oneshot::Receiver<Result<Sent>>) {
        let (done, rx) = oneshot::channel();
        let msg = Outgoing {
            route: route(path).expect("path"),
            payload: bytes::Bytes::from(vec![n]),
            content_type: String::new(),
            headers: Vec::new(),
            ttl: None,
            delay: None,
            idempotency_key: None,
            ordering_key: None,
            creator: None,
        };
        (Job { msg, done }, rx)
    }

    #[test]
    fn shared_calls_group_jobs_by_queue_keeping_arrival_order() {
        let jobs = vec![
            job("/a", 1).0,
            job("/b", 2).0,
            job("/a", 3).0,
            job("/c/", 4).0,
            job("/b", 5).0,
        ];
        let groups = by_queue(jobs);
        let shape: Vec<(String, Vec<u8>)> = groups
            .iter()
            .map(|g| {
                (
                    g[0].msg.route.queue.clone(),
                    g.iter().map(|j| j.msg.payload[0]).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2, 5]),
                ("c".to_string(), vec![4]),
            ]
        );
    }

    #[test]
    fn paths_that_share_a_queue_share_a_call() {
        // LeanMQ maps both spellings to one queue, so they are one atomic call.
        let groups = by_queue(vec![job("/order/status", 1).0, job("/order-status", 2).0]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len(), 2);
    }

    #[test]
    fn each_caller_keeps_its_own_answer_channel() {
        let (a, mut ra) = job("/a", 1);
        let (b, mut rb) = job("/a", 2);
        let mut groups = by_queue(vec![a, b]);
        let g = groups.remove(0);
        for (i, j) in g.into_iter().enumerate() {
            let _ = j.done.send(Ok(Sent {
                message_id: format!("{i}-0"),
                ..Sent::default()
            }));
        }
        assert_eq!(
            ra.try_recv()
                .ok()
                .and_then(|r| r.ok())
                .map(|s| s.message_id),
            Some("0-0".into())
        );
        assert_eq!(
            rb.try_recv()
                .ok()
                .and_then(|r| r.ok())
                .map(|s| s.message_id),
            Some("1-0".into())
        );
    }
}
