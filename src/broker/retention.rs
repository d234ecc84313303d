//! The retention pass over one queue, and the reads of the registry that
//! the sweep (in `background`), ListQueues and pattern discovery share.
//!
//! A pass costs Redis time linear in the queue's groups, and no single call
//! of it grows past a few milliseconds: the groups are read with one
//! `XINFO GROUPS` (about half a microsecond per group inside Redis, where a
//! script turning the same reply into Lua values costs several), then each
//! group that needs a closer look gets a small command of its own, sent in
//! pipelines of [`GROUPS_PER_PIPELINE`], and the trim is one short script
//! that refuses to act when a group was created meanwhile.

use std::time::Duration;

use redis::Value;

use super::admin::fields;
use super::limits::GROUPS_PER_PIPELINE;
use super::scripts::{self, as_array, as_i64, as_string};
use super::Broker;
use crate::error::Result;
use crate::routing::{self, QueueKeys};

/// What the retention sweep applies to each queue.
#[derive(Debug, Clone)]
pub struct RetainPolicy {
    /// Acked entries are kept this long.
    pub max_age: Duration,
    /// Opt-in cap on length; loses data.
    pub max_len: Option<u64>,
    /// An empty group idle this long is destroyed; zero: never.
    pub group_idle_expiry: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retained {
    pub trimmed: i64,
    /// Dropped by `--max-len`.
    pub dropped: i64,
    /// Idle empty groups destroyed.
    pub expired: usize,
}

/// One group as `XINFO GROUPS` shows it.
struct GroupRow {
    name: String,
    pending: i64,
    /// Its last-delivered id, parsed.
    last: (u64, u64),
}

/// A stream id, parsed; `None` when it is not one.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn groups_of(reply: &Value) -> Vec<GroupRow> {
    as_array(reply)
        .unwrap_or_default()
        .iter()
        .filter_map(|g| {
            let f = fields(g);
            Some(GroupRow {
                name: f.get("name").and_then(as_string)?,
                pending: f.get("pending").and_then(as_i64).unwrap_or(0),
                last: f
                    .get("last-delivered-id")
                    .and_then(as_string)
                    .and_then(|id| parse_id(&id))?,
            })
        })
        .collect()
}

/// Have all consumers in an `XINFO CONSUMERS` reply been idle for `idle_ms`?
/// (None at all: not known, so no.)
fn all_idle(reply: &Value, idle_ms: u64) -> bool {
    let consumers = as_array(reply).unwrap_or_default();
    !consumers.is_empty()
        && consumers.iter().all(|c| {
            fields(c)
                .get("idle")
                .and_then(as_i64)
                .is_some_and(|i| i >= 0 && i as u64 >= idle_ms)
        })
}

impl Broker {
    /// One retention pass over a queue: expire its idle empty groups, then
    /// trim what every remaining group has acked.
    pub async fn retain(&self, queue: &str, policy: &RetainPolicy) -> Result<Retained> {
        let k = self.keys(queue);
        // Read before the groups: a group created after this moves it.
        let (exists, generation): (bool, Option<String>) = self
            .query_pipe(
                ::redis::pipe()
                    .cmd("EXISTS")
                    .arg(&k.stream)
                    .cmd("HGET")
                    .arg(&k.stats)
                    .arg("groups_created"),
            )
            .await?;
        if !exists {
            return Ok(Retained::default());
        }
        let reply: Value = self
            .query(::redis::cmd("XINFO").arg("GROUPS").arg(&k.stream))
            .await?;
        let mut groups = groups_of(&reply);
        let mut done = Retained::default();
        if !policy.group_idle_expiry.is_zero() {
            let gone = self
                .expire_idle(&k, &groups, policy.group_idle_expiry)
                .await?;
            done.expired = gone.len();
            groups.retain(|g| !gone.contains(&g.name));
        }
        let threshold = self.threshold(&k, &groups).await?;
        let t = self
            .run(scripts::Retain {
                keys: &k,
                max_age_ms: policy.max_age.as_millis() as u64,
                max_len: policy.max_len.unwrap_or(0),
                threshold: threshold.as_deref(),
                generation: generation.as_deref().unwrap_or("0"),
            })
            .await?;
        if t.groups_changed {
            tracing::debug!(
                queue,
                "retention: a group was created during the pass; trimming at the next sweep"
            );
        }
        done.trimmed = t.trimmed;
        done.dropped = t.dropped;
        Ok(done)
    }

    /// The lowest id some group still needs: the one after its last
    /// delivered, or its oldest pending entry. `None` without groups.
    async fn threshold(&self, k: &QueueKeys, groups: &[GroupRow]) -> Result<Option<String>> {
        let mut low = groups.iter().map(|g| (g.last.0, g.last.1 + 1)).min();
        let pending: Vec<&GroupRow> = groups.iter().filter(|g| g.pending > 0).collect();
        for chunk in pending.chunks(GROUPS_PER_PIPELINE) {
            let mut p = ::redis::pipe();
            for g in chunk {
                p.cmd("XPENDING")
                    .arg(&k.stream)
                    .arg(&g.name)
                    .arg("-")
                    .arg("+")
                    .arg(1);
            }
            let firsts: Vec<Value> = self.query_pipe(&p).await?;
            for first in &firsts {
                let id = as_array(first)
                    .and_then(|a| a.first())
                    .and_then(as_array)
                    .and_then(|e| e.first())
                    .and_then(as_string)
                    .and_then(|id| parse_id(&id));
                if let Some(id) = id {
                    low = Some(low.map_or(id, |l| l.min(id)));
                }
            }
        }
        Ok(low.map(|(ms, seq)| format!("{ms}-{seq}")))
    }

    /// Destroy the groups with nothing pending whose consumers have all
    /// been idle for `idle`, never the queue's LeanMQ group. Returns their
    /// names.
    async fn expire_idle(
        &self,
        k: &QueueKeys,
        groups: &[GroupRow],
        idle: Duration,
    ) -> Result<Vec<String>> {
        let default = routing::default_group(&k.queue);
        let idle_ms = idle.as_millis() as u64;
        let candidates: Vec<&GroupRow> = groups
            .iter()
            .filter(|g| g.pending == 0 && g.name != default)
            .collect();
        let mut gone = Vec::new();
        for chunk in candidates.chunks(GROUPS_PER_PIPELINE) {
            let mut p = ::redis::pipe();
            for g in chunk {
                p.cmd("XINFO").arg("CONSUMERS").arg(&k.stream).arg(&g.name);
            }
            let consumers: Vec<Value> = self.query_pipe(&p).await?;
            for (g, c) in chunk.iter().zip(&consumers) {
                if !all_idle(c, idle_ms) {
                    continue;
                }
                let destroyed = self
                    .run(scripts::ExpireGroup {
                        keys: k,
                        group: &g.name,
                        idle_ms,
                    })
                    .await?;
                if destroyed {
                    gone.push(g.name.clone());
                }
            }
        }
        Ok(gone)
    }

    /// A step of a walk over the registry: up to about `count` queue names
    /// (queues, not DLQs; a name may come twice while Redis rehashes) and
    /// the cursor of the next step (0: the walk is done).
    pub async fn scan_registry(&self, cursor: u64, count: u32) -> Result<(u64, Vec<String>)> {
        let registry = format!("{}registry", self.settings.prefix);
        let (next, members): (u64, Vec<String>) = self
            .query(
                ::redis::cmd("SSCAN")
                    .arg(&registry)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let cluster = self.redis.is_cluster();
        let queues = members
            .iter()
            .filter_map(|m| routing::queue_of_key(&self.settings.prefix, m, cluster))
            .map(str::to_string)
            .collect();
        Ok((next, queues))
    }

    /// Members of the registry (two per queue: it and its DLQ).
    pub async fn registry_size(&self) -> Result<u64> {
        let registry = format!("{}registry", self.settings.prefix);
        self.query(::redis::cmd("SCARD").arg(&registry)).await
    }

    /// The paths recorded for each of `queues` (sorted), in one pipeline.
    pub async fn recorded_paths(&self, queues: &[String]) -> Result<Vec<Vec<String>>> {
        let mut p = ::redis::pipe();
        for q in queues {
            p.cmd("SMEMBERS").arg(&self.keys(q).paths);
        }
        let mut all: Vec<Vec<String>> = self.query_pipe(&p).await?;
        all.iter_mut().for_each(|p| p.sort());
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::scripts::tests::bulk;

    fn consumer(idle: i64) -> Value {
        Value::Array(vec![
            bulk("name"),
            bulk("c"),
            bulk("idle"),
            Value::Int(idle),
        ])
    }

    #[test]
    fn a_group_is_idle_only_when_every_consumer_is() {
        let two = |a, b| Value::Array(vec![consumer(a), consumer(b)]);
        assert!(all_idle(&two(5000, 7000), 5000));
        assert!(!all_idle(&two(5000, 10), 5000));
        assert!(
            !all_idle(&Value::Array(vec![]), 5000),
            "no consumers: unknown"
        );
    }

    #[test]
    fn group_rows_carry_name_pending_and_last_delivered() {
        let g = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("17-3"),
        ])]);
        let rows = groups_of(&g);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].name.as_str(), rows[0].pending, rows[0].last),
            ("g", 2, (17, 3))
        );
        assert_eq!(parse_id("x-1"), None);
    }
}
