//! The delayed-message schedule (driven by the scheduler in `background`).

use super::scripts::{self, Due};
use super::Broker;
use crate::error::Result;

/// Most queues one look at the schedule returns.
const DUE_QUEUES_PER_LOOK: u32 = 100;
/// Most delayed messages one promote appends.
const PROMOTE_PER_CALL: u32 = 1000;

impl Broker {
    /// Queues with due delayed messages.
    pub async fn due_queues(&self) -> Result<Due> {
        let schedule = format!("{}schedule", self.settings.prefix);
        self.run(scripts::DueQueues {
            schedule: &schedule,
            limit: DUE_QUEUES_PER_LOOK,
        })
        .await
    }

    /// How many queues one [`Broker::due_queues`] returns at most.
    pub fn due_queues_per_look(&self) -> usize {
        DUE_QUEUES_PER_LOOK as usize
    }

    /// Append a queue's due delayed messages; returns how many.
    pub async fn promote(&self, queue: &str) -> Result<i64> {
        let k = self.keys(queue);
        let (n, first) = self
            .run(scripts::Promote {
                schedule: self.global(&k, &k.schedule),
                keys: &k,
                limit: PROMOTE_PER_CALL,
            })
            .await?;
        if self.redis.is_cluster() {
            // The schedule is in another slot. A send racing this may have
            // set an earlier due that this overwrites; the retention sweep's
            // schedule repair restores it.
            let cmd = match first {
                Some(first) => ::redis::cmd("ZADD")
                    .arg(&k.schedule)
                    .arg(first)
                    .arg(queue)
                    .clone(),
                None => ::redis::cmd("ZREM").arg(&k.schedule).arg(queue).clone(),
            };
            let _: i64 = self.query(&cmd).await?;
        }
        Ok(n)
    }

    /// Redis Cluster only: make sure the schedule knows a queue's earliest
    /// delayed message (repairs what a crash between two commands, or a
    /// race in `promote`, left behind). No-op on a single Redis, where the
    /// scripts keep the schedule exact.
    pub async fn repair_schedule(&self, queue: &str) -> Result<()> {
        if !self.redis.is_cluster() {
            return Ok(());
        }
        let k = self.keys(queue);
        let first: Vec<(String, i64)> = self
            .query(
                ::redis::cmd("ZRANGE")
                    .arg(&k.delayed)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES"),
            )
            .await?;
        if let Some((_, due)) = first.first() {
            let _: i64 = self
                .query(
                    ::redis::cmd("ZADD")
                        .arg(&k.schedule)
                        .arg("LT")
                        .arg(*due)
                        .arg(queue),
                )
                .await?;
        }
        Ok(())
    }
}
