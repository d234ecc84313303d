//! Queue and dead-letter administration: inspect, requeue, delete, purge.
//! Works on every queue in the registry, LeanMQ's included; every change is
//! one script, atomic per message.

use std::collections::HashMap;

use redis::Value;

use super::envelope::{self, Decoded, FailureRecord};
use super::limits::REGISTRY_SCAN_STEP;
use super::receipt::is_entry_id;
use super::scripts::{self, as_array, as_i64, as_string, bad_reply, data_field, RETRY_HOLD};
use super::{Broker, Target};
use crate::error::{Error, Result};
use crate::routing::{self, Route};

/// Most dead letters one "all"/"since" requeue moves.
const MAX_REQUEUE: usize = 100_000;

#[derive(Debug, Clone)]
pub struct QueueSummary {
    pub queue: String,
    pub stream: String,
    pub length: i64,
    pub dead_letters: i64,
    pub paths: Vec<String>,
    /// The path that owns the queue (`{q}:owner`), if one is recorded:
    /// what a grant is checked on before the queue is listed.
    pub owner: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub name: String,
    pub pending: i64,
    pub consumers: i64,
    pub lag: i64,
    pub oldest_unacked_age_ms: Option<u64>,
    pub retrying: i64,
    pub last_delivered_id: String,
}

#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub queue: String,
    pub stream: String,
    pub length: i64,
    pub groups: Vec<GroupInfo>,
    pub dead_letters: i64,
    pub delayed: i64,
    pub expired: i64,
    pub dropped: i64,
    pub created_at: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub decoded: Decoded,
    pub failures: Vec<FailureRecord>,
}

/// Which dead letters to requeue.
#[derive(Debug, Clone)]
pub enum Selector {
    Ids(Vec<String>),
    All,
    /// Dead-lettered at or after this time (ms since the epoch).
    Since(u64),
}

/// A path ("/order/status") or a bare queue name ("order_status").
pub fn resolve(path_or_queue: &str) -> Result<Route> {
    if routing::is_queue_name(path_or_queue) {
        routing::check_not_reserved(path_or_queue, path_or_queue)?;
        return Ok(Route {
            path: format!("/{path_or_queue}"),
            queue: path_or_queue.to_string(),
        });
    }
    routing::route(path_or_queue)
}

/// A RESP2 field/value array as a map.
pub(crate) fn fields(v: &Value) -> HashMap<String, Value> {
    let mut m = HashMap::new();
    if let Some(a) = as_array(v) {
        for kv in a.chunks(2) {
            if let [k, v] = kv {
                if let Some(k) = as_string(k) {
                    m.insert(k, v.clone());
                }
            }
        }
    }
    m
}

fn id_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl Broker {
    /// Redis' clock, ms.
    async fn redis_now_ms(&self) -> Result<u64> {
        let (s, us): (u64, u64) = self.query(&redis::cmd("TIME")).await?;
        Ok(s * 1000 + us / 1000)
    }

    /// A page of queues in name order: the first `page` names after
    /// `after` (exclusive; `None` from the start) that `visible` admits, and
    /// the last name when more may follow. The registry is walked in SSCAN
    /// steps keeping only the best `page + 1` names, so a page costs Redis
    /// work linear in the registry but no long call and memory for one page.
    pub async fn list_queues_page(
        &self,
        page: usize,
        after: Option<&str>,
        visible: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<QueueSummary>, Option<String>)> {
        let mut best = std::collections::BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (next, names) = self.scan_registry(cursor, REGISTRY_SCAN_STEP).await?;
            for q in names {
                if after.is_none_or(|a| q.as_str() > a) && !best.contains(&q) && visible(&q) {
                    best.insert(q);
                    if best.len() > page + 1 {
                        best.pop_last();
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let more = best.len() > page;
        let queues: Vec<String> = best.into_iter().take(page).collect();
        let next = if more { queues.last().cloned() } else { None };
        Ok((self.summaries(queues).await?, next))
    }

    /// Length, dead letters and paths of each queue.
    async fn summaries(&self, queues: Vec<String>) -> Result<Vec<QueueSummary>> {
        // One pipeline per queue (a queue's keys share a slot in a cluster;
        // different queues may not), all in flight at once on the lanes.
        type Row = (i64, i64, Vec<String>, Option<String>);
        let rows: Vec<Row> = futures::future::try_join_all(queues.iter().map(|q| async move {
            let k = self.keys(q);
            // XLEN of a missing key is 0.
            let row: Row = self
                .query_pipe(
                    redis::pipe()
                        .cmd("XLEN")
                        .arg(&k.stream)
                        .cmd("XLEN")
                        .arg(&k.dlq)
                        .cmd("SMEMBERS")
                        .arg(&k.paths)
                        .cmd("GET")
                        .arg(&k.owner),
                )
                .await?;
            Ok::<_, Error>(row)
        }))
        .await?;
        Ok(queues
            .into_iter()
            .zip(rows)
            .map(|(queue, (length, dead_letters, mut paths, owner))| {
                paths.sort();
                QueueSummary {
                    stream: self.keys(&queue).stream.clone(),
                    queue,
                    length,
                    dead_letters,
                    paths,
                    owner,
                }
            })
            .collect())
    }

    pub async fn get_queue(&self, queue: &str) -> Result<QueueInfo> {
        let k = self.keys(queue);
        let (exists, meta_exists): (bool, bool) = self
            .query_pipe(
                redis::pipe()
                    .cmd("EXISTS")
                    .arg(&k.stream)
                    .cmd("EXISTS")
                    .arg(&k.meta),
            )
            .await?;
        if !exists && !meta_exists {
            return Err(Error::NotFound(format!(
                "no queue {queue:?} ({})",
                k.stream
            )));
        }
        let now = self.redis_now_ms().await?;
        let mut groups = Vec::new();
        let mut length = 0;
        if exists {
            length = self.query(redis::cmd("XLEN").arg(&k.stream)).await?;
            let infos: Value = self
                .query(redis::cmd("XINFO").arg("GROUPS").arg(&k.stream))
                .await?;
            for g in as_array(&infos).unwrap_or_default() {
                groups.push(self.group_info(&k.stream, &fields(g), now).await?);
            }
        }
        let (dead_letters, delayed, stats, created): (
            i64,
            i64,
            HashMap<String, i64>,
            Option<String>,
        ) = self
            .query_pipe(
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&k.dlq)
                    .cmd("ZCARD")
                    .arg(&k.delayed)
                    .cmd("HGETALL")
                    .arg(&k.stats)
                    .cmd("HGET")
                    .arg(&k.meta)
                    .arg("created_at"),
            )
            .await?;
        Ok(QueueInfo {
            queue: queue.to_string(),
            stream: k.stream.clone(),
            length,
            groups,
            dead_letters,
            delayed,
            expired: stats.get("expired").copied().unwrap_or(0),
            dropped: stats.get("dropped").copied().unwrap_or(0),
            created_at: created.and_then(|c| c.parse().ok()),
        })
    }

    /// One group of `XINFO GROUPS`, with its pending summary.
    async fn group_info(
        &self,
        stream: &str,
        f: &HashMap<String, Value>,
        now: u64,
    ) -> Result<GroupInfo> {
        let name = f.get("name").and_then(as_string).unwrap_or_default();
        let summary: Value = self
            .query(redis::cmd("XPENDING").arg(stream).arg(&name))
            .await?;
        let s = as_array(&summary).unwrap_or_default();
        let oldest = s.get(1).and_then(as_string).and_then(|id| id_ms(&id));
        let retrying = s
            .get(3)
            .and_then(as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(as_array)
                    .filter(|c| c.first().and_then(as_string).as_deref() == Some(RETRY_HOLD))
                    .filter_map(|c| c.get(1).and_then(as_i64))
                    .sum()
            })
            .unwrap_or(0);
        Ok(GroupInfo {
            pending: f.get("pending").and_then(as_i64).unwrap_or(0),
            consumers: f.get("consumers").and_then(as_i64).unwrap_or(0),
            lag: f.get("lag").and_then(as_i64).unwrap_or(-1),
            oldest_unacked_age_ms: oldest.map(|ms| now.saturating_sub(ms)),
            retrying,
            last_delivered_id: f
                .get("last-delivered-id")
                .and_then(as_string)
                .unwrap_or_default(),
            name,
        })
    }

    /// A page of dead letters after `after` (exclusive), oldest first; the
    /// next page token when more may follow.
    pub async fn list_dead_letters(
        &self,
        queue: &str,
        page: usize,
        after: &str,
    ) -> Result<(Vec<DeadLetter>, String)> {
        if !after.is_empty() && !is_entry_id(after) {
            return Err(Error::invalid("page_token is not one this server issued"));
        }
        let k = self.keys(queue);
        let start = if after.is_empty() {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let v: Value = self
            .query(
                redis::cmd("XRANGE")
                    .arg(&k.dlq)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(page + 1),
            )
            .await?;
        let mut out = Vec::new();
        for e in as_array(&v).unwrap_or_default().iter().take(page) {
            let e = as_array(e).ok_or_else(|| bad_reply("xrange"))?;
            let id = e
                .first()
                .and_then(as_string)
                .ok_or_else(|| bad_reply("xrange"))?;
            let data = e.get(1).and_then(data_field);
            out.push(DeadLetter {
                id,
                decoded: envelope::decode(data.as_deref()),
                failures: envelope::failures(data.as_deref()),
            });
        }
        let more = as_array(&v).map(|a| a.len() > page).unwrap_or(false);
        let next = if more {
            out.last().map(|d| d.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((out, next))
    }

    /// Requeue dead letters; returns (dlq id, new id) pairs and the ids not found.
    pub async fn requeue(
        &self,
        route: &Route,
        selector: Selector,
    ) -> Result<(Vec<(String, String)>, Vec<String>)> {
        let k = self.keys(&route.queue);
        let target = Target {
            route: route.clone(),
            group: routing::default_group(&route.queue),
        };
        self.ensure(&target, "$", None, None).await?;
        let ids: Vec<String> = match selector {
            Selector::Ids(ids) => {
                if let Some(bad) = ids.iter().find(|i| !is_entry_id(i)) {
                    return Err(Error::invalid(format!("{bad:?} is not a stream entry id")));
                }
                ids
            }
            Selector::All | Selector::Since(_) => {
                let start = match selector {
                    Selector::Since(ms) => format!("{ms}-0"),
                    _ => "-".to_string(),
                };
                let v: Value = self
                    .query(
                        redis::cmd("XRANGE")
                            .arg(&k.dlq)
                            .arg(&start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(MAX_REQUEUE),
                    )
                    .await?;
                as_array(&v)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| as_array(e).and_then(|e| e.first()).and_then(as_string))
                    .collect()
            }
        };
        let dlq_group = format!("{}-dlq", routing::default_group(&route.queue));
        let mut done = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            let entry: Value = self
                .query(redis::cmd("XRANGE").arg(&k.dlq).arg(&id).arg(&id))
                .await?;
            let Some(fields) = as_array(&entry)
                .and_then(|a| a.first())
                .and_then(as_array)
                .and_then(|e| e.get(1))
            else {
                missing.push(id);
                continue;
            };
            let data = data_field(fields);
            let new =
                envelope::requeue_data(data.as_deref(), &k.dlq, &k.stream, envelope::now_secs());
            let moved = self
                .run_durable(
                    scripts::Requeue {
                        keys: &k,
                        dlq_group: &dlq_group,
                        id: &id,
                        data: new,
                    },
                    &k.stream,
                    self.replicas_for_moves(),
                )
                .await?;
            match moved {
                None => missing.push(id),
                Some(new_id) => {
                    tracing::info!(queue = %route.queue, dead_letter = %id, message_id = %new_id, "requeued");
                    done.push((id, new_id));
                }
            }
        }
        Ok((done, missing))
    }

    pub async fn delete_dead_letters(&self, queue: &str, ids: &[String]) -> Result<i64> {
        if let Some(bad) = ids.iter().find(|i| !is_entry_id(i)) {
            return Err(Error::invalid(format!("{bad:?} is not a stream entry id")));
        }
        let k = self.keys(queue);
        self.run(scripts::DeleteDead {
            dlq: &k.dlq,
            dlq_group: format!("{}-dlq", routing::default_group(queue)),
            ids,
        })
        .await
    }

    pub async fn purge_dead_letters(&self, queue: &str) -> Result<i64> {
        let k = self.keys(queue);
        self.run(scripts::PurgeDlq {
            dlq: &k.dlq,
            dlq_group: format!("{}-dlq", routing::default_group(queue)),
        })
        .await
    }

    pub async fn purge_queue(&self, queue: &str) -> Result<i64> {
        let k = self.keys(queue);
        let n = self
            .run(scripts::PurgeQueue {
                keys: &k,
                schedule: self.global(&k, &k.schedule),
            })
            .await?;
        if self.redis.is_cluster() {
            let _: i64 = self
                .query(redis::cmd("ZREM").arg(&k.schedule).arg(queue))
                .await?;
        }
        tracing::warn!(queue, purged = n, "queue purged");
        Ok(n)
    }

    pub async fn delete_queue(&self, queue: &str, with_dlq: bool) -> Result<i64> {
        let k = self.keys(queue);
        // The token that created it gets its place back (after the delete:
        // a crash in between leaves it counted, never a queue uncounted).
        let owner: Option<String> = self
            .query(redis::cmd("HGET").arg(&k.meta).arg("created_by"))
            .await?;
        let n = self
            .run(scripts::DeleteQueue {
                keys: &k,
                schedule: self.global(&k, &k.schedule),
                registry: self.global(&k, &k.registry),
                with_dlq,
            })
            .await?;
        self.owners.forget(queue);
        if self.redis.is_cluster() {
            let mut srem = redis::cmd("SREM");
            srem.arg(&k.registry).arg(&k.stream);
            if with_dlq {
                srem.arg(&k.dlq);
            }
            let _: i64 = self.query(&srem).await?;
            let _: i64 = self
                .query(redis::cmd("ZREM").arg(&k.schedule).arg(queue))
                .await?;
        }
        if let Some(owner) = owner {
            let _: i64 = self
                .query(redis::cmd("SREM").arg(self.owner_key_of(&owner)).arg(queue))
                .await?;
        }
        tracing::warn!(queue, with_dlq, deleted = n, "queue deleted");
        Ok(n)
    }
}
