//! The domain façade: every operation a client can ask for goes through
//! one method of [`Queues`]. An RPC handler converts its request, makes one
//! call here, and converts the answer; coordinating the Redis side
//! ([`Broker`]), the local fan-out ([`Dispatcher`]) and Send coalescing
//! happens here and nowhere else: ensuring a queue on first use, and giving
//! credit back (and waking readers) when a delivery is settled.

mod acks;

use std::sync::Arc;
use std::time::Duration;

use crate::broker::admin::{DeadLetter, QueueInfo, QueueSummary, Selector};
use crate::broker::coalesce::Coalescer;
use crate::broker::dispatch::{Budget, Dispatcher, Subscription};
use crate::broker::receipt::Receipt;
use crate::broker::{
    by_subscription, AckOutcome, Broker, Creator, Delivery, NackOutcome, Outgoing, Sent, Target,
};
use crate::error::Result;
use crate::routing::{Pattern, Route};
use crate::shutdown::Drain;

/// What a subscription reads.
pub enum Source {
    /// One path's queue, in one group.
    Path(Target),
    /// Every queue whose path matches, now and as queues appear; `group`
    /// `None` means each queue's default group.
    Pattern {
        pattern: Pattern,
        group: Option<String>,
    },
}

/// How a pull (Receive) reads.
pub struct Pull {
    pub max: u32,
    pub lease: Duration,
    /// How long to wait for the first delivery.
    pub wait: Duration,
    /// Where a new group starts (a stream id or `$`).
    pub start: String,
    /// Most bytes of deliveries in one reply (always at least one delivery).
    pub max_bytes: usize,
}

/// The façade.
pub struct Queues {
    broker: Arc<Broker>,
    dispatcher: Arc<Dispatcher>,
    coalescer: Coalescer,
    /// Concurrent Acks share calls (see `acks`).
    acks: acks::Batcher,
    drain: Drain,
}

/// What settling needs: Redis, and the readers whose credit comes back.
#[derive(Clone)]
struct Settle {
    broker: Arc<Broker>,
    dispatcher: Arc<Dispatcher>,
}

impl Queues {
    /// The façade over `broker`, its fan-out held to `budget` of unread
    /// bytes, its tasks tracked by `drain`.
    pub fn new(broker: Arc<Broker>, budget: Budget, drain: &Drain) -> Arc<Queues> {
        let dispatcher = Dispatcher::new(broker.clone(), budget, drain.clone());
        let settle = Settle {
            broker: broker.clone(),
            dispatcher: dispatcher.clone(),
        };
        Arc::new(Queues {
            dispatcher,
            coalescer: Coalescer::start(broker.clone(), drain),
            acks: acks::Batcher::start(settle, drain),
            broker,
            drain: drain.clone(),
        })
    }

    /// The path that owns `queue`, if recorded (see `broker::owners`).
    pub async fn owner(&self, queue: &str) -> Result<Option<String>> {
        self.broker.owner(queue).await
    }

    /// May `grant` `action` `queue`? Checked on its owner's path when it has
    /// one (looked up only for a grant that limits paths, and not with
    /// `--allow-colliding-paths`).
    pub async fn check_queue(
        &self,
        grant: &crate::auth::Grant,
        action: crate::auth::Action,
        queue: &str,
    ) -> Result<()> {
        if !grant.restricted() {
            return Ok(());
        }
        // Every spelling may use the queue, so every spelling's grant may
        // settle what it received: LeanMQ's word matching.
        if self.broker.settings.allow_colliding_paths {
            return grant.check_queue(action, queue);
        }
        let owner = self.owner(queue).await?;
        grant.check_owned(action, queue, owner.as_deref())
    }

    /// May `grant` `action` `route`? A path as itself (the scripts refuse a
    /// spelling that is not the owner's); a queue addressed by name as
    /// [`Queues::check_queue`], on its owner's path.
    pub async fn check_route(
        &self,
        grant: &crate::auth::Grant,
        action: crate::auth::Action,
        route: &crate::routing::Route,
    ) -> Result<()> {
        if route.path.is_empty() {
            self.check_queue(grant, action, &route.queue).await
        } else {
            grant.check(action, route)
        }
    }

    /// Append one message, sharing a Redis call with concurrent Sends.
    pub async fn send(&self, msg: Outgoing) -> Result<Sent> {
        self.coalescer.send(msg).await
    }

    /// The drain, for streams that must end when it starts (Publish).
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// Append messages atomically, all or none.
    pub async fn send_batch(&self, msgs: &[Outgoing]) -> Result<Vec<Sent>> {
        self.broker.send(msgs).await
    }

    /// Open a subscription; a path's queue and group are created first.
    pub async fn subscribe(
        &self,
        source: Source,
        start: String,
        max_in_flight: u32,
        lease: Duration,
        creator: Option<&Creator>,
    ) -> Result<Subscription> {
        Ok(match source {
            Source::Path(target) => {
                self.broker
                    .ensure(&target, &start, Some(&target.route.path), creator)
                    .await?;
                self.dispatcher.subscribe(&target, max_in_flight, lease)
            }
            Source::Pattern { pattern, group } => {
                self.dispatcher
                    .subscribe_pattern(pattern, group, start, max_in_flight, lease)
            }
        })
    }

    /// Pull deliveries; the queue and group are created first (a new queue
    /// counting against `creator`'s quota). What would not fit in one reply
    /// (`max_bytes`) is given back at once, uncounted, rather than left
    /// leased to nobody.
    pub async fn receive(
        &self,
        target: &Target,
        pull: Pull,
        creator: Option<&Creator>,
    ) -> Result<Vec<Delivery>> {
        self.broker
            .ensure(target, &pull.start, Some(&target.route.path), creator)
            .await?;
        let mut got = self
            .dispatcher
            .receive(target, pull.max, pull.lease, pull.wait)
            .await?;
        let fit = fitting(&got, pull.max_bytes);
        let over: Vec<(String, u32)> = got
            .drain(fit..)
            .map(|d| (d.message_id, d.attempt))
            .collect();
        if !over.is_empty() {
            self.broker.release(target, &over).await?;
            self.dispatcher.woken(target);
        }
        Ok(got)
    }

    /// Settle receipts; what was settled gives its credit back here. A
    /// receipt given more than once in one call is settled and counted
    /// once, and every copy reports that one outcome (so a retried batch
    /// that repeats itself reads the same as one that does not).
    /// Concurrent calls share Redis calls (see `acks`).
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        self.acks.ack(receipts).await
    }

    /// Retry later, or dead-letter now.
    pub async fn nack(
        &self,
        r: &Receipt,
        delay: Option<Duration>,
        dead_letter: bool,
        reason: &str,
    ) -> Result<NackOutcome> {
        let outcome = self.broker.nack(r, delay, dead_letter, reason).await?;
        // A retry falls due, and a dead letter may release its ordering
        // key's next entry: either way the reader looks again.
        self.dispatcher
            .settled(&r.queue, &r.group, &[r.id.as_str()], true);
        Ok(outcome)
    }

    /// Give a delivery back at once, its attempt uncounted (a push whose
    /// endpoint is gone: the message stays, for when it resumes).
    pub async fn release(&self, r: &Receipt) -> Result<()> {
        let target = Target {
            route: crate::routing::address("", &r.queue)?,
            group: r.group.clone(),
        };
        self.broker
            .release(&target, &[(r.id.clone(), r.attempt)])
            .await?;
        self.dispatcher
            .settled(&r.queue, &r.group, &[r.id.as_str()], true);
        Ok(())
    }

    /// Create `target`'s queue and group (at `start`) unless they exist.
    pub async fn ensure(
        &self,
        target: &Target,
        start: &str,
        creator: Option<&Creator>,
    ) -> Result<()> {
        self.broker
            .ensure(target, start, Some(&target.route.path), creator)
            .await
    }

    /// The broker, for what is stored beside the queues (push
    /// subscriptions, `push::store`) and `--max-attempts`.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Push a lease out to now + `by`; returns its new end (ms, Redis clock).
    pub async fn extend(&self, r: &Receipt, by: Duration) -> Result<u64> {
        let end = self.broker.extend(r, by).await?;
        self.dispatcher.extended(&r.queue, &r.group, &r.id, by);
        Ok(end)
    }

    /// Create a queue pair and its default group without sending anything
    /// (LeanMQ's `create_queue_pair`); its keys. A new queue counts against
    /// `creator`'s quota, as one a Send creates.
    pub async fn create_queue(
        &self,
        target: &Target,
        path: Option<&str>,
        creator: Option<&Creator>,
    ) -> Result<Arc<crate::routing::QueueKeys>> {
        self.broker.ensure(target, "$", path, creator).await?;
        Ok(self.broker.keys(&target.route.queue))
    }

    /// A page of the queues `visible` admits, in name order, after `after`;
    /// and the last name when more may follow.
    /// A page of the queues `grant` may administer. A name that some path
    /// of the grant maps to is a candidate; an owned queue is then listed
    /// only when the grant covers its owner's path (as every Admin call on
    /// it is checked), so a page may hold fewer than `page` queues while
    /// the next token is set, as Pub/Sub's and Kubernetes' list pages may.
    pub async fn list_queues(
        &self,
        grant: &crate::auth::Grant,
        page: usize,
        after: Option<&str>,
    ) -> Result<(Vec<QueueSummary>, Option<String>)> {
        let visible = |q: &str| grant.sees_queue(q);
        let (mut queues, next) = self.broker.list_queues_page(page, after, &visible).await?;
        if grant.restricted() && !self.broker.settings.allow_colliding_paths {
            queues.retain(|q| {
                grant
                    .check_owned(crate::auth::Action::Admin, &q.queue, q.owner.as_deref())
                    .is_ok()
            });
        }
        Ok((queues, next))
    }

    pub async fn get_queue(&self, queue: &str) -> Result<QueueInfo> {
        self.broker.get_queue(queue).await
    }

    /// A page of dead letters after `after`, and the next page's token.
    pub async fn list_dead_letters(
        &self,
        queue: &str,
        page: usize,
        after: &str,
    ) -> Result<(Vec<DeadLetter>, String)> {
        self.broker.list_dead_letters(queue, page, after).await
    }

    /// Requeue dead letters: (dlq id, new id) pairs, and the ids not found.
    pub async fn requeue_dead_letters(
        &self,
        route: &Route,
        selector: Selector,
    ) -> Result<(Vec<(String, String)>, Vec<String>)> {
        self.broker.requeue(route, selector).await
    }

    pub async fn delete_dead_letters(&self, queue: &str, ids: &[String]) -> Result<i64> {
        self.broker.delete_dead_letters(queue, ids).await
    }

    pub async fn purge_dead_letters(&self, queue: &str) -> Result<i64> {
        self.broker.purge_dead_letters(queue).await
    }

    pub async fn purge_queue(&self, queue: &str) -> Result<i64> {
        self.broker.purge_queue(queue).await
    }

    pub async fn delete_queue(&self, queue: &str, with_dlq: bool) -> Result<i64> {
        self.broker.delete_queue(queue, with_dlq).await
    }
}

impl Settle {
    /// Settle receipts; what was settled gives its credit back here. A
    /// receipt given more than once in one call is settled and counted
    /// once, and every copy reports that one outcome (so a retried batch
    /// that repeats itself reads the same as one that does not).
    async fn ack(&self, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        let (first, repeats) = first_copies(receipts);
        if !repeats {
            return self.ack_distinct(receipts).await;
        }
        // The distinct receipts, and where each first copy lands among them.
        let mut unique = Vec::new();
        let mut at = vec![0; receipts.len()];
        for (i, &f) in first.iter().enumerate() {
            if f == i {
                at[i] = unique.len();
                unique.push(receipts[i].clone());
            }
        }
        let outcomes = self.ack_distinct(&unique).await?;
        Ok(first.iter().map(|&f| outcomes[at[f]]).collect())
    }

    async fn ack_distinct(&self, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        let acked = self.broker.ack(receipts).await?;
        let outcomes = acked.outcomes;
        // One credit release per (queue, group).
        for (((queue, group), idx), woke) in by_subscription(receipts).into_iter().zip(acked.woke) {
            let ids: Vec<&str> = idx
                .into_iter()
                .filter(|&i| outcomes[i] != AckOutcome::Stale)
                .map(|i| receipts[i].id.as_str())
                .collect();
            if !ids.is_empty() {
                self.dispatcher.settled(queue, group, &ids, woke);
            }
        }
        Ok(outcomes)
    }
}

/// For each of `all`, the index of its first copy; and whether any
/// receipt repeats.
fn first_copies(all: &[Receipt]) -> (Vec<usize>, bool) {
    let mut first = std::collections::HashMap::with_capacity(all.len());
    let slots: Vec<usize> = all
        .iter()
        .enumerate()
        .map(|(i, r)| *first.entry(r).or_insert(i))
        .collect();
    let repeats = first.len() < all.len();
    (slots, repeats)
}

/// How many of `deliveries`, from the first, fit in `max_bytes` (at least one).
fn fitting(deliveries: &[Delivery], max_bytes: usize) -> usize {
    let mut total = 0usize;
    deliveries
        .iter()
        .position(|d| {
            total = total.saturating_add(d.wire_size());
            total > max_bytes
        })
        .map_or(deliveries.len(), |i| i.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(n: usize) -> Delivery {
        Delivery {
            queue: Arc::from("q"),
            message_id: "1-0".into(),
            path: "/q".into(),
            payload: bytes::Bytes::from(vec![0u8; n]),
            content_type: String::new(),
            headers: Vec::new(),
            attempt: 1,
            published_at: 0.0,
            group: "g".into(),
            lease_expires_ms: 0,
            ordering_key: None,
        }
    }

    #[test]
    fn a_reply_takes_what_fits_and_always_one() {
        let ds: Vec<Delivery> = (0..5).map(|_| sized(1000)).collect();
        let one = ds[0].wire_size();
        assert_eq!(fitting(&ds, one * 5), 5);
        assert_eq!(fitting(&ds, one * 3), 3);
        assert_eq!(fitting(&ds, one * 3 - 1), 2);
        assert_eq!(
            fitting(&ds, 10),
            1,
            "one delivery even when it alone is over"
        );
        assert_eq!(fitting(&[], 10), 0);
    }
}
