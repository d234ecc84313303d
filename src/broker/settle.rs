//! Settling deliveries: ack, nack (retry or dead-letter), extend, release,
//! and dead-lettering what ran out of attempts or time.

use std::time::Duration;

use redis::Value;

use super::envelope;
use super::receipt::Receipt;
use super::scripts::{self, as_array, data_field, Held, Relet, DLQ_HOLD, HOLDER};
use super::{by_subscription, AckOutcome, Broker, Exhausted, NackOutcome, Target};
use crate::error::Result;

/// Where an entry goes to the DLQ from: who holds it, with which count.
struct ToDlq<'a> {
    queue: &'a str,
    group: &'a str,
    id: &'a str,
    holder: &'a str,
    count: u32,
}

/// What an Ack did.
#[derive(Debug)]
pub struct Acked {
    /// One per receipt, in order.
    pub outcomes: Vec<AckOutcome>,
    /// Per (queue, group), in [`super::by_subscription`] order: an ordering
    /// key's next entry fell due, so that group's reader should look now.
    pub woke: Vec<bool>,
}

impl Broker {
    /// Ack receipts; one outcome per receipt, in order. Receipts of one
    /// (queue, group) go to Redis in one script call.
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<Acked> {
        let mut out = vec![AckOutcome::NotPending; receipts.len()];
        let mut woke = Vec::new();
        let groups = by_subscription(receipts);
        let keys: Vec<_> = groups
            .iter()
            .map(|((queue, _), _)| self.keys(queue))
            .collect();
        let calls = groups.iter().zip(&keys).map(|(((_, group), idx), k)| {
            let call = scripts::Ack {
                stream: &k.stream,
                leases: k.leases(group),
                group,
                receipts: idx
                    .iter()
                    .map(|&i| {
                        let r = &receipts[i];
                        (r.id.as_str(), r.attempt, r.ordering_key.as_deref())
                    })
                    .collect(),
            };
            self.run(call)
        });
        let results = futures::future::join_all(calls).await;
        for ((_, idx), held) in groups.iter().zip(results) {
            let scripts::AckReply { held, woke: w } = held?;
            woke.push(w);
            let acked = held.iter().filter(|h| **h == Held::Held).count() as u64;
            if let Some(&first) = idx.first() {
                crate::observe::acked(&receipts[first].queue, &receipts[first].group, acked);
            }
            for (&i, h) in idx.iter().zip(held) {
                out[i] = match h {
                    Held::Held => AckOutcome::Acked,
                    Held::Stale => AckOutcome::Stale,
                    Held::NotPending => AckOutcome::NotPending,
                };
            }
        }
        Ok(Acked {
            outcomes: out,
            woke,
        })
    }

    /// Exponential backoff with equal jitter for the n-th failed attempt.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::jittered(self.settings.retry_min, self.settings.retry_max, attempt)
    }

    /// Nack: retry after `delay` (or the backoff), or dead-letter now when
    /// asked or when this was the last allowed attempt.
    pub async fn nack(
        &self,
        r: &Receipt,
        delay: Option<Duration>,
        dead_letter: bool,
        reason: &str,
    ) -> Result<NackOutcome> {
        if dead_letter || r.attempt >= self.settings.max_attempts {
            let reason = self.nack_reason(r, dead_letter, reason);
            let k = self.keys(&r.queue);
            let data = self.read_data(&k.stream, &r.id).await?;
            let dlq_id = self
                .move_to_dlq(
                    ToDlq {
                        queue: &r.queue,
                        group: &r.group,
                        id: &r.id,
                        holder: HOLDER,
                        count: r.attempt,
                    },
                    data.as_deref(),
                    &reason,
                )
                .await?;
            let why = if dead_letter {
                "consumer"
            } else {
                "max_attempts"
            };
            crate::observe::dead_lettered(&r.queue, &r.group, why);
            return Ok(NackOutcome::DeadLettered { dlq_id });
        }
        let delay = delay.unwrap_or_else(|| self.backoff(r.attempt));
        let at_ms = self.retime(Relet::Retry, r, delay).await?;
        crate::observe::nacked(&r.queue, &r.group);
        Ok(NackOutcome::Retry { at_ms })
    }

    /// The failure reason a dead-lettering Nack records.
    fn nack_reason(&self, r: &Receipt, dead_letter: bool, reason: &str) -> String {
        if dead_letter {
            if reason.is_empty() {
                "dead-lettered by the consumer".to_string()
            } else {
                reason.to_string()
            }
        } else {
            let why = if reason.is_empty() { "nacked" } else { reason };
            format!(
                "{why} (attempt {} of max_attempts {})",
                r.attempt, self.settings.max_attempts
            )
        }
    }

    /// Extend a lease to now + `by`; returns the new end (ms, Redis clock).
    pub async fn extend(&self, r: &Receipt, by: Duration) -> Result<u64> {
        self.retime(Relet::Extend, r, by).await
    }

    /// Re-time a held delivery (park it for a retry, or keep it leased)
    /// and return its new due time; a receipt that no longer holds the
    /// lease is LeaseLost.
    async fn retime(&self, how: Relet, r: &Receipt, after: Duration) -> Result<u64> {
        let k = self.keys(&r.queue);
        self.run(scripts::Retime {
            how,
            stream: &k.stream,
            leases: k.leases(&r.group),
            group: &r.group,
            id: &r.id,
            attempt: r.attempt,
            after_ms: after.as_millis() as u64,
        })
        .await?
        .map_err(|held| held.lease_lost(&r.group))
    }

    /// Dead-letter an entry whose lease expired on its last attempt, or
    /// whose TTL passed before delivery (reason "expired").
    pub async fn dead_letter_exhausted(&self, target: &Target, e: &Exhausted) -> Result<String> {
        let reason = if e.expired {
            "expired".to_string()
        } else {
            format!(
                "lease expired without ack on attempt {} (max_attempts {})",
                e.count, self.settings.max_attempts
            )
        };
        let from = ToDlq {
            queue: &target.route.queue,
            group: &target.group,
            id: &e.id,
            holder: DLQ_HOLD,
            count: e.count,
        };
        let dlq_id = self.move_to_dlq(from, e.data.as_deref(), &reason).await?;
        let why = if e.expired {
            "expired"
        } else {
            "lease_expired"
        };
        crate::observe::dead_lettered(&target.route.queue, &target.group, why);
        Ok(dlq_id)
    }

    async fn move_to_dlq(
        &self,
        from: ToDlq<'_>,
        data: Option<&[u8]>,
        reason: &str,
    ) -> Result<String> {
        let k = self.keys(from.queue);
        let dlq_data = envelope::dead_letter_data(
            data,
            &envelope::Failure {
                reason,
                attempts: from.count,
                group: from.group,
                message_id: from.id,
                now: envelope::now_secs(),
            },
        );
        let dlq_id = self
            .run_durable(
                scripts::DeadLetter {
                    keys: &k,
                    leases: k.leases(from.group),
                    group: from.group,
                    id: from.id,
                    holder: from.holder,
                    count: from.count,
                    data: dlq_data,
                },
                &k.stream,
                self.replicas_for_moves(),
            )
            .await?
            .map_err(|held| held.lease_lost(from.group))?;
        let (queue, group, id) = (from.queue, from.group, from.id);
        tracing::info!(queue, group, id, dlq_id = %dlq_id, reason, "message dead-lettered");
        Ok(dlq_id)
    }

    pub(crate) async fn read_data(&self, stream: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let v: Value = self
            .query(::redis::cmd("XRANGE").arg(stream).arg(id).arg(id))
            .await?;
        Ok(as_array(&v)
            .and_then(|a| a.first())
            .and_then(as_array)
            .and_then(|e| e.get(1))
            .and_then(data_field))
    }

    /// Give back deliveries no subscriber received: due now, uncounted.
    pub async fn release(&self, target: &Target, deliveries: &[(String, u32)]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let k = self.keys(&target.route.queue);
        self.run(scripts::Release {
            stream: &k.stream,
            leases: k.leases(&target.group),
            group: &target.group,
            deliveries,
        })
        .await
    }
}
