//! Fetching deliveries: a full round through `fetch.lua`, or, when nothing
//! is due, a plain read of new entries that `lease.lua` then leases.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::envelope;
use super::scripts::{
    self, as_array, as_i64, as_string, bad_reply, data_field, ordering_field, Taken,
};
use super::{Broker, Delivery, Exhausted, Fetched, Round, Target};
use crate::error::Result;
use crate::routing::QueueKeys;

/// Milliseconds part of a stream id, as seconds.
fn id_secs(id: &str) -> f64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| ms as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// What the new-entries MULTI read: Redis' clock, the earliest lease, the
/// stream's last id, and the entries taken.
struct NewRead {
    now_ms: u64,
    next_due_ms: Option<u64>,
    last_id: String,
    /// (id, data, ordering key) of each entry taken.
    taken: Vec<(String, Option<Vec<u8>>, Option<String>)>,
}

/// `[TIME, ZRANGE 0 0 WITHSCORES, XREADGROUP, XREVRANGE COUNT 1]`.
fn parse_new_read(v: &[Value]) -> Option<NewRead> {
    let [time, first, read, last] = v else {
        return None;
    };
    let time = as_array(time).filter(|t| t.len() == 2)?;
    let secs = u64::try_from(as_i64(&time[0])?).ok()?;
    let micros = u64::try_from(as_i64(&time[1])?).ok()?;
    let next_due_ms = as_array(first)
        .and_then(|f| f.get(1))
        .and_then(as_string)
        .and_then(|s| s.parse::<f64>().ok())
        .map(|d| d as u64);
    let last_id = as_array(last)
        .and_then(|l| l.first())
        .and_then(as_array)
        .and_then(|e| e.first())
        .and_then(as_string)
        .unwrap_or_else(|| "0-0".into());
    // nil when nothing is new, else [[stream, [[id, fields], …]]].
    let entries: &[Value] = match read {
        Value::Nil => &[],
        v => as_array(v)
            .and_then(|s| s.first())
            .and_then(as_array)
            .and_then(|s| s.get(1))
            .and_then(as_array)?,
    };
    let mut taken = Vec::with_capacity(entries.len());
    for e in entries {
        let e = as_array(e).filter(|e| e.len() == 2)?;
        taken.push((as_string(&e[0])?, data_field(&e[1]), ordering_field(&e[1])));
    }
    Some(NewRead {
        now_ms: secs * 1000 + micros / 1000,
        next_due_ms,
        last_id,
        taken,
    })
}

impl Broker {
    /// One fetch round (see `lua/fetch.lua`). When the group has vanished
    /// (NOGROUP: Redis restarted empty, or the key was deleted) it is
    /// recreated at `recover_at` — the last stream id this caller had seen,
    /// so entries appended since (ids are time-based) are still delivered —
    /// and the round is tried once more. At most `new_max` of the `count`
    /// are new entries (the reader's read-ahead).
    pub async fn fetch(
        &self,
        target: &Target,
        count: u32,
        new_max: u32,
        lease: Duration,
        round: &Round,
        recover_at: &str,
    ) -> Result<Fetched> {
        let new_max = new_max.max(1); // XREADGROUP's COUNT 0 means no limit
        let once = || async {
            match round {
                Round::NewOnly if !self.redis.is_cluster() => {
                    self.fetch_new(target, count.min(new_max), lease).await
                }
                Round::NewOnly => {
                    let count = count.min(new_max);
                    self.fetch_once(target, (count, count), lease, false, None)
                        .await
                }
                Round::Full {
                    scan_orphans,
                    unleased_from,
                } => {
                    let from = unleased_from.as_deref();
                    let counts = (count, new_max);
                    self.fetch_once(target, counts, lease, *scan_orphans, from)
                        .await
                }
            }
        };
        match once().await {
            Err(e) if e.is_nogroup() => {
                tracing::error!(
                    queue = %target.route.queue, group = %target.group, recover_at,
                    "consumer group missing (NOGROUP): Redis lost its data or the key was deleted; recreating the group"
                );
                self.ensure(target, recover_at, None, None).await?;
                once().await
            }
            other => other,
        }
    }

    /// How long an entry parked for dead-lettering stays held for the
    /// replica that parked it before another may move it instead.
    pub(crate) fn dead_letter_hold(&self) -> Duration {
        self.redis.timeout() * 6
    }

    /// How long an entry read by a `NewOnly` round may stay pending without
    /// a lease before a full round takes it: by then the reader's lease call
    /// has long succeeded or failed (each waits at most `--redis-timeout`).
    pub fn unleased_idle(&self) -> Duration {
        self.redis.timeout() * 2
    }

    /// A round of new entries only, for when nothing is due: one MULTI/EXEC
    /// reads them with a plain XREADGROUP (their data never passes through
    /// Lua, which costs Redis more than the read itself), along with the
    /// clock, the earliest lease and the stream's last id; then `lease.lua`
    /// leases them (or parks those whose TTL has passed) before anyone sees
    /// them. Should leanmqd or Redis die between the two, the entries are
    /// pending without a lease, and a full round hands them out again once
    /// they have been idle for [`Broker::unleased_idle`].
    async fn fetch_new(&self, target: &Target, count: u32, lease: Duration) -> Result<Fetched> {
        let k = self.keys(&target.route.queue);
        let leases = k.leases(&target.group);
        let read = self.read_new(&k, &leases, &target.group, count).await?;
        let mut out = Fetched {
            now_ms: read.now_ms,
            next_due_ms: read.next_due_ms,
            last_id: read.last_id,
            ..Default::default()
        };
        if read.taken.is_empty() {
            return Ok(out);
        }
        let hold_ms = self.dead_letter_hold().as_millis() as u64;
        let leased = self
            .run(scripts::Lease {
                keys: &k,
                leases: &leases,
                group: &target.group,
                lease_ms: lease.as_millis() as u64,
                hold_ms,
                ids: read
                    .taken
                    .iter()
                    .map(|(id, _, key)| (id.as_str(), key.as_deref().unwrap_or("")))
                    .collect(),
            })
            .await?;
        let lease_end = leased.now_ms + lease.as_millis() as u64;
        let queue: Arc<str> = Arc::from(target.route.queue.as_str());
        let mut soonest = lease_end;
        if !leased.parked.is_empty() {
            soonest = soonest.min(leased.now_ms + hold_ms);
        }
        out.now_ms = leased.now_ms;
        out.next_due_ms = Some(read.next_due_ms.map_or(soonest, |d| d.min(soonest)));
        out.read = read.taken.len() as u32;
        out.full = out.read >= count;
        out.waited = leased.waiting.len() as u32;
        for (id, data, ordering_key) in read.taken {
            if leased.waiting.contains(&id) {
                continue; // an earlier entry of its ordering key is unsettled
            }
            if leased.parked.contains(&id) {
                out.exhausted.push(Exhausted {
                    id,
                    count: 1,
                    data,
                    expired: true,
                });
            } else {
                let taken = Taken {
                    id,
                    attempt: 1,
                    data,
                    ordering_key,
                };
                out.deliveries
                    .push(Self::delivery(target, &queue, taken, lease_end));
            }
        }
        crate::observe::delivered(
            &target.route.queue,
            &target.group,
            out.deliveries.len() as u64,
            0,
        );
        Ok(out)
    }

    /// The MULTI of [`Broker::fetch_new`].
    async fn read_new(
        &self,
        k: &QueueKeys,
        leases: &str,
        group: &str,
        count: u32,
    ) -> Result<NewRead> {
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(leases)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(scripts::HOLDER)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&k.stream)
            .arg(">")
            .cmd("XREVRANGE")
            .arg(&k.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let v: Vec<Value> = self.query_pipe(&p).await?;
        parse_new_read(&v).ok_or_else(|| bad_reply("fetch"))
    }

    /// A full round of up to `count` deliveries, at most `new_max` of them new.
    async fn fetch_once(
        &self,
        target: &Target,
        (count, new_max): (u32, u32),
        lease: Duration,
        scan_orphans: bool,
        unleased_from: Option<&str>,
    ) -> Result<Fetched> {
        let k = self.keys(&target.route.queue);
        let leases = k.leases(&target.group);
        let r = self
            .run(scripts::Fetch {
                keys: &k,
                leases: &leases,
                group: &target.group,
                count,
                lease_ms: lease.as_millis() as u64,
                max_attempts: self.settings.max_attempts,
                orphan_idle_ms: if scan_orphans {
                    self.settings.orphan_timeout.as_millis() as u64
                } else {
                    0
                },
                hold_ms: self.dead_letter_hold().as_millis() as u64,
                unleased_idle_ms: if unleased_from.is_some() {
                    self.unleased_idle().as_millis() as u64
                } else {
                    0
                },
                unleased_from: unleased_from.unwrap_or("-"),
                new_max,
            })
            .await?;
        let lease_end = r.now_ms + lease.as_millis() as u64;
        let queue: Arc<str> = Arc::from(target.route.queue.as_str());
        let deliveries: Vec<Delivery> = r
            .taken
            .into_iter()
            .map(|t| Self::delivery(target, &queue, t, lease_end))
            .collect();
        crate::observe::delivered(
            &target.route.queue,
            &target.group,
            deliveries.len() as u64,
            deliveries.iter().filter(|d| d.attempt > 1).count() as u64,
        );
        Ok(Fetched {
            deliveries,
            exhausted: r
                .parked
                .into_iter()
                .map(|p| Exhausted {
                    id: p.id,
                    count: p.count,
                    data: p.data,
                    expired: p.expired,
                })
                .collect(),
            now_ms: r.now_ms,
            next_due_ms: r.next_due_ms,
            last_id: r.last_id,
            unleased_next: unleased_from.and(r.unleased_next),
            full: r.want > 0 && r.read >= r.want,
            read: r.read,
            waited: r.waited,
        })
    }

    fn delivery(target: &Target, queue: &Arc<str>, t: Taken, lease_end: u64) -> Delivery {
        let d = envelope::decode(t.data.as_deref());
        Delivery {
            queue: queue.clone(),
            published_at: d.published_at.unwrap_or_else(|| id_secs(&t.id)),
            message_id: t.id,
            path: d.path.unwrap_or_else(|| target.route.path.clone()),
            payload: d.payload,
            content_type: d.content_type,
            headers: d.headers,
            attempt: t.attempt,
            group: target.group.clone(),
            lease_expires_ms: lease_end,
            ordering_key: t.ordering_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scripts::tests::bulk;
    use super::*;

    #[test]
    fn a_new_entries_read_parses_clock_lease_entries_and_last_id() {
        let v = vec![
            Value::Array(vec![bulk("10"), bulk("2500")]),
            Value::Array(vec![bulk("1-0"), bulk("12.5")]),
            Value::Array(vec![Value::Array(vec![
                bulk("webhook:q"),
                Value::Array(vec![Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk("data"), bulk("x")]),
                ])]),
            ])]),
            Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Array(vec![])])]),
        ];
        let r = parse_new_read(&v).expect("parses");
        assert_eq!(r.now_ms, 10_002);
        assert_eq!(r.next_due_ms, Some(12));
        assert_eq!(r.last_id, "3-0");
        assert_eq!(
            r.taken,
            vec![("3-0".to_string(), Some(b"x".to_vec()), None)]
        );
        let nothing = vec![
            Value::Array(vec![bulk("10"), bulk("0")]),
            Value::Array(vec![]),
            Value::Nil,
            Value::Array(vec![]),
        ];
        let r = parse_new_read(&nothing).expect("parses");
        assert!(r.taken.is_empty());
        assert_eq!(r.last_id, "0-0");
        assert!(parse_new_read(&nothing[..3]).is_none());
    }

    #[test]
    fn stream_ids_give_their_time() {
        assert_eq!(id_secs("1500-3"), 1.5);
        assert_eq!(id_secs("junk"), 0.0);
    }
}
