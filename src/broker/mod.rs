//! The broker: the only code that speaks Redis.
//!
//! Every change that touches more than one key, or that must check state
//! before changing it, is one Lua script (`lua/`), so it is atomic and any
//! replica can run it. Two hot paths skip the script where a MULTI/EXEC
//! does the same work for less Redis CPU: plain appends to an existing queue
//! (`append_plain`), and reading new entries when nothing is due
//! (`fetch_new`, which leases what it read with a second, scripted call; an
//! entry left unleased between the two is handed out again, see [`Round`]).
//! What a delivery *is* lives in Redis:
//! - the entry's pending record in its group (holder consumer and delivery
//!   count: the `attempt`);
//! - its due time in `{stream}:leases:{group}`: the end of its lease while
//!   a subscriber holds it, or its retry time after a Nack.
//!
//! A reader that finds an entry due re-claims it (the count goes up) and
//! delivers it again. Nothing about a delivery is kept only in memory;
//! [`dispatch`] keeps just flow-control credit, which is rebuilt by itself.

pub mod admin;
pub mod background;
pub mod coalesce;
pub mod dispatch;
pub mod envelope;
pub mod limits;
pub mod receipt;
pub mod redis;

use std::time::Duration;

use ::redis::{Script, Value};
use bytes::Bytes;
use rand::Rng;

use crate::error::{Error, Result};
use crate::routing::{QueueKeys, Route};
use receipt::Receipt;

/// Consumer name of deliveries made by leanmq-grpc (see `lua/common.lua`).
pub const HOLDER: &str = "leanmq-grpc";
/// Consumer name of entries whose lease ran out on their last attempt,
/// parked while a replica moves them to the DLQ.
pub const DLQ_HOLD: &str = "leanmq-grpc-dlq";

/// Broker settings, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Key prefix (`webhook:`).
    pub prefix: String,
    /// Deliveries per message before the DLQ.
    pub max_attempts: u32,
    /// Retry backoff bounds for a Nack without delay.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Idle time after which a pending entry nobody leases is reclaimed.
    pub orphan_timeout: Duration,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
}

/// A validated message to append.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub route: Route,
    pub payload: Bytes,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    /// Time to live, from the send.
    pub ttl: Option<Duration>,
    /// Invisible until this much later.
    pub delay: Option<Duration>,
    /// Deduplication key within the queue.
    pub idempotency_key: Option<String>,
}

impl Outgoing {
    /// Nothing but an append: no TTL, delay or idempotency key.
    fn is_plain(&self) -> bool {
        self.ttl.is_none()
            && self.delay.is_none_or(|d| d.is_zero())
            && self.idempotency_key.is_none()
    }
}

/// What one appended (or deduplicated) message got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Stream entry id; empty for a delayed message.
    pub message_id: String,
    /// Schedule id of a delayed message; empty otherwise.
    pub schedule_id: String,
    /// An earlier message had the same idempotency key.
    pub duplicate: bool,
}

/// A queue and one of its groups: what a subscription or Receive reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub route: Route,
    /// Resolved group name (never empty).
    pub group: String,
}

/// One delivery, in domain terms (the RPC edge turns it into protobuf).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receipt: String,
    pub message_id: String,
    pub path: String,
    pub payload: Bytes,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub attempt: u32,
    /// Seconds since the epoch.
    pub published_at: f64,
    pub group: String,
    /// Milliseconds since the epoch, Redis clock.
    pub lease_expires_ms: u64,
}

/// An entry that used its last attempt and waits to be dead-lettered.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub id: String,
    pub count: u32,
    pub data: Option<Vec<u8>>,
    /// Its TTL passed (rather than its attempts running out).
    pub expired: bool,
}

/// What a fetch round looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Due leases and retries first, then new entries (`lua/fetch.lua`).
    Full {
        /// Also take anyone's pending entries idle past `--orphan-timeout`
        /// without a lease (a crashed LeanMQ Python worker's).
        scan_orphans: bool,
        /// Also take entries read by a `NewOnly` round that never got their
        /// lease (its leanmqd or Redis died in between), looking at 100 of
        /// ours from this id on (`-`: from the start).
        unleased_from: Option<String>,
    },
    /// New entries only, without a script: for when nothing is due.
    NewOnly,
}

/// What one fetch round returned.
#[derive(Debug, Default)]
pub struct Fetched {
    pub deliveries: Vec<Delivery>,
    pub exhausted: Vec<Exhausted>,
    /// Redis clock at fetch time, ms.
    pub now_ms: u64,
    /// Earliest due time of any managed pending entry, ms.
    pub next_due_ms: Option<u64>,
    /// Last entry id in the stream: new entries come after it.
    pub last_id: String,
    /// Where the next look for unleased entries goes on (see [`Round`]).
    pub unleased_next: Option<String>,
}

/// Outcome of acking one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Acked,
    NotPending,
    Stale,
}

/// Outcome of a Nack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackOutcome {
    /// Redelivered at this time (ms since the epoch, Redis clock).
    Retry { at_ms: u64 },
    /// Moved to the DLQ under this entry id.
    DeadLettered { dlq_id: String },
}

struct Scripts {
    ensure: Script,
    send: Script,
    fetch: Script,
    lease: Script,
    ack: Script,
    retry: Script,
    extend: Script,
    dead_letter: Script,
    release: Script,
    due_queues: Script,
    promote: Script,
    retention: Script,
    requeue: Script,
    delete_dead: Script,
    purge_dlq: Script,
    purge_queue: Script,
    delete_queue: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/common.lua"), include_str!($file)))
    };
}

/// The Redis side of leanmqd.
pub struct Broker {
    pub settings: Settings,
    pub redis: redis::Redis,
    scripts: Scripts,
    /// Queue name → its key strings, so the hot path does not rebuild them.
    key_cache: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<QueueKeys>>>,
    /// Where unary Sends wait to share a script call (started on first use).
    coalescer: std::sync::OnceLock<coalesce::Coalescer>,
}

fn lease_error(code: i64, group: &str) -> Error {
    if code == 2 {
        Error::LeaseLost(format!(
            "the message is no longer pending in group {group:?}: it was already acked or dead-lettered"
        ))
    } else {
        Error::LeaseLost(
            "the receipt is stale: its lease expired or it was nacked, and the message was (or will be) redelivered under a new receipt"
                .to_string(),
        )
    }
}

pub(crate) fn bad_reply(what: &str) -> Error {
    Error::Internal(format!("unexpected Redis reply to {what}"))
}

/// Receipts grouped by (queue, group), each group the indexes of its
/// receipts in order: what one ack call, or one credit release, covers. A
/// batch is nearly always one subscription's, so a scan beats a map.
pub fn by_subscription(receipts: &[Receipt]) -> Vec<((&str, &str), Vec<usize>)> {
    let mut groups: Vec<((&str, &str), Vec<usize>)> = Vec::new();
    for (i, r) in receipts.iter().enumerate() {
        let key = (r.queue.as_str(), r.group.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    groups
}

pub(crate) fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(crate) fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// The `data` field of an entry's field list.
pub(crate) fn data_field(fields: &Value) -> Option<Vec<u8>> {
    let f = as_array(fields)?;
    f.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), Value::BulkString(v)] if k == b"data" => Some(v.clone()),
        _ => None,
    })
}

/// Milliseconds part of a stream id, as seconds.
fn id_secs(id: &str) -> f64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| ms as f64 / 1000.0)
        .unwrap_or(0.0)
}

impl Broker {
    pub fn new(settings: Settings, redis: redis::Redis) -> Self {
        Broker {
            settings,
            redis,
            key_cache: Default::default(),
            coalescer: Default::default(),
            scripts: Scripts {
                ensure: script!("lua/ensure.lua"),
                send: script!("lua/send.lua"),
                fetch: script!("lua/fetch.lua"),
                lease: script!("lua/lease.lua"),
                ack: script!("lua/ack.lua"),
                retry: script!("lua/retry.lua"),
                extend: script!("lua/extend.lua"),
                dead_letter: script!("lua/dead_letter.lua"),
                release: script!("lua/release.lua"),
                due_queues: script!("lua/due_queues.lua"),
                promote: script!("lua/promote.lua"),
                retention: script!("lua/retention.lua"),
                requeue: script!("lua/requeue.lua"),
                delete_dead: script!("lua/delete_dead.lua"),
                purge_dlq: script!("lua/purge_dlq.lua"),
                purge_queue: script!("lua/purge_queue.lua"),
                delete_queue: script!("lua/delete_queue.lua"),
            },
        }
    }

    /// The keys of a queue, built once per queue and shared.
    pub fn keys(&self, queue: &str) -> std::sync::Arc<QueueKeys> {
        if let Some(k) = self
            .key_cache
            .read()
            .ok()
            .and_then(|c| c.get(queue).cloned())
        {
            return k;
        }
        let k = std::sync::Arc::new(QueueKeys::new(
            &self.settings.prefix,
            queue,
            self.redis.is_cluster(),
        ));
        if let Ok(mut c) = self.key_cache.write() {
            // Bounded: a flood of distinct paths must not grow memory forever.
            if c.len() >= 100_000 {
                c.clear();
            }
            c.insert(queue.to_string(), k.clone());
        }
        k
    }

    /// The key to pass a script for a global key (registry, schedule): the
    /// key itself on a single Redis; in a cluster, where it lives in another
    /// slot, the queue's stream, which tells the script to leave it to us.
    pub(crate) fn global<'a>(&self, k: &'a QueueKeys, key: &'a str) -> &'a str {
        if self.redis.is_cluster() {
            &k.stream
        } else {
            key
        }
    }

    /// Redis Cluster only: record a queue (and its DLQ) in the registry,
    /// which scripts cannot reach there. Idempotent; done before the
    /// script, so a queue with data is never missing from the registry.
    async fn register(&self, k: &QueueKeys) -> Result<()> {
        if self.redis.is_cluster() {
            let _: i64 = self
                .query(
                    ::redis::cmd("SADD")
                        .arg(&k.registry)
                        .arg(&k.stream)
                        .arg(&k.dlq),
                )
                .await?;
        }
        Ok(())
    }

    /// One command on a lane.
    pub(crate) async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T> {
        let mut lane = self.redis.lane().await?;
        let r = cmd.query_async(&mut lane.conn).await;
        self.redis.settle(&lane, r).await
    }

    /// One pipeline (or MULTI/EXEC) on a lane.
    pub(crate) async fn query_pipe<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
    ) -> Result<T> {
        let mut lane = self.redis.lane().await?;
        let r = pipe.query_async(&mut lane.conn).await;
        self.redis.settle(&lane, r).await
    }

    pub(crate) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        inv: ::redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut lane = self.redis.lane().await?;
        let r = inv.invoke_async(&mut lane.conn).await;
        self.redis.settle(&lane, r).await
    }

    /// Create the queue pair, LeanMQ's groups, metadata and registry entry,
    /// and `target.group` (at `start`, a stream id or `$`, when new), and
    /// record `path`. Idempotent.
    pub async fn ensure(&self, target: &Target, start: &str, path: Option<&str>) -> Result<()> {
        let k = self.keys(&target.route.queue);
        self.register(&k).await?;
        let mut inv = self.scripts.ensure.prepare_invoke();
        inv.key(&k.stream)
            .key(&k.dlq)
            .key(&k.meta)
            .key(&k.dlq_meta)
            .key(self.global(&k, &k.registry))
            .key(&k.paths)
            .arg(&k.queue)
            .arg(envelope::now_secs().to_string())
            .arg(&target.group)
            .arg(start)
            .arg(path.unwrap_or(""));
        let _: i64 = self.invoke(inv).await?;
        Ok(())
    }

    /// The common case without a script: plain messages (no TTL, delay or
    /// idempotency key) to one queue whose stream exists. The XADDs run in
    /// one MULTI/EXEC, so they are all-or-none like the script, at well under
    /// half its Redis CPU per message. `NOMKSTREAM` makes every XADD a no-op
    /// when the stream is missing: then `None`, and nothing was written.
    async fn append_plain(
        &self,
        k: &QueueKeys,
        msgs: &[Outgoing],
        per_msg: &[(usize, String)],
    ) -> Result<Option<Vec<Sent>>> {
        let mut p = ::redis::pipe();
        p.atomic();
        for (_, data) in per_msg {
            p.cmd("XADD")
                .arg(&k.stream)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("data")
                .arg(data);
        }
        let sadd = p.cmd("SADD").arg(&k.paths);
        let mut paths: Vec<&str> = Vec::new();
        for m in msgs {
            if !paths.contains(&m.route.path.as_str()) {
                paths.push(&m.route.path);
                sadd.arg(&m.route.path);
            }
        }
        sadd.ignore();
        let ids: Vec<Option<String>> = self.query_pipe(&p).await?;
        if ids.len() != msgs.len() {
            return Err(bad_reply("send"));
        }
        let ids: Option<Vec<String>> = ids.into_iter().collect();
        let Some(ids) = ids else {
            return Ok(None);
        };
        crate::observe::sent(&k.queue, ids.len() as u64);
        Ok(Some(
            ids.into_iter()
                .map(|message_id| Sent {
                    message_id,
                    ..Sent::default()
                })
                .collect(),
        ))
    }

    /// Append messages atomically (all or none), honouring TTL, delay and
    /// idempotency keys; one result per message, in order.
    pub async fn send(&self, msgs: &[Outgoing]) -> Result<Vec<Sent>> {
        let now = envelope::timestamp_text(envelope::now_secs());
        let mut queues: Vec<&str> = Vec::new();
        let mut per_msg: Vec<(usize, String)> = Vec::with_capacity(msgs.len());
        for m in msgs {
            let qi = match queues.iter().position(|q| *q == m.route.queue) {
                Some(i) => i,
                None => {
                    queues.push(&m.route.queue);
                    queues.len() - 1
                }
            };
            let ttl_secs = m.ttl.map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0));
            let data = envelope::encode_at(
                &m.route.path,
                &m.payload,
                &m.content_type,
                &m.headers,
                ttl_secs,
                &now,
            )?;
            per_msg.push((qi + 1, data));
        }
        let cluster = self.redis.is_cluster();
        if cluster && queues.len() > 1 {
            return Err(Error::FailedPrecondition(
                "with Redis Cluster a SendBatch is atomic within one queue only, and this one spans several paths' queues; send one batch per path".into(),
            ));
        }
        let first = self.keys(queues.first().copied().unwrap_or_default());
        if cluster {
            self.register(&first).await?;
        } else if queues.len() == 1 && msgs.iter().all(Outgoing::is_plain) {
            match self.append_plain(&first, msgs, &per_msg).await {
                Ok(Some(sent)) => return Ok(sent),
                // The queue doesn't exist yet: the script creates it.
                Ok(None) => {}
                Err(e) if e.is_transient() => return Err(e),
                // Nothing was written (say, the key is not a stream): the
                // script checks and reports it precisely.
                Err(_) => {}
            }
        }
        let mut inv = self.scripts.send.prepare_invoke();
        inv.key(self.global(&first, &first.registry))
            .key(self.global(&first, &first.schedule));
        for q in &queues {
            let k = self.keys(q);
            inv.key(&k.stream)
                .key(&k.dlq)
                .key(&k.meta)
                .key(&k.dlq_meta)
                .key(&k.expiry)
                .key(&k.delayed)
                .key(&k.delayed_data)
                .key(&k.paths);
        }
        inv.arg(&now)
            .arg(queues.len())
            .arg(self.settings.dedup_window.as_millis() as u64);
        for q in &queues {
            inv.arg(*q);
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis().to_string()).unwrap_or_default();
        for (m, (qi, data)) in msgs.iter().zip(&per_msg) {
            inv.arg(*qi)
                .arg(data)
                .arg(ms(m.ttl))
                .arg(ms(m.delay.filter(|d| !d.is_zero())))
                .arg(m.idempotency_key.as_deref().unwrap_or(""))
                .arg(&m.route.path);
        }
        let flat: Vec<(String, i64)> = self.invoke(inv).await?;
        if flat.len() != msgs.len() {
            return Err(bad_reply("send"));
        }
        if cluster {
            // Schedule the earliest delayed message. Our clock may run ahead
            // of Redis': aim a second early; a promote that finds nothing due
            // yet sets the exact time.
            if let Some(d) = msgs
                .iter()
                .filter_map(|m| m.delay)
                .filter(|d| !d.is_zero())
                .min()
            {
                let due = ((envelope::now_secs() * 1000.0) as u64)
                    .saturating_add(d.as_millis() as u64)
                    .saturating_sub(1000);
                let _: i64 = self
                    .query(
                        ::redis::cmd("ZADD")
                            .arg(&first.schedule)
                            .arg("LT")
                            .arg(due)
                            .arg(&first.queue),
                    )
                    .await?;
            }
        }
        for (qi, q) in queues.iter().enumerate() {
            let n = per_msg
                .iter()
                .zip(&flat)
                .filter(|((i, _), (_, dup))| *i == qi + 1 && *dup == 0)
                .count();
            crate::observe::sent(q, n as u64);
        }
        Ok(flat
            .into_iter()
            .map(|(v, dup)| {
                let (message_id, schedule_id) = match v.split_once(':') {
                    Some(("s", sid)) => (String::new(), sid.to_string()),
                    Some((_, id)) => (id.to_string(), String::new()),
                    None => (v, String::new()),
                };
                Sent {
                    message_id,
                    schedule_id,
                    duplicate: dup == 1,
                }
            })
            .collect())
    }

    /// One fetch round (see `lua/fetch.lua`). When the group has vanished
    /// (NOGROUP: Redis restarted empty, or the key was deleted) it is
    /// recreated at `recover_at` — the last stream id this caller had seen,
    /// so entries appended since (ids are time-based) are still delivered —
    /// and the round is tried once more.
    pub async fn fetch(
        &self,
        target: &Target,
        count: u32,
        lease: Duration,
        round: &Round,
        recover_at: &str,
    ) -> Result<Fetched> {
        let once = || async {
            match round {
                Round::NewOnly if !self.redis.is_cluster() => {
                    self.fetch_new(target, count, lease).await
                }
                Round::NewOnly => self.fetch_once(target, count, lease, false, None).await,
                Round::Full {
                    scan_orphans,
                    unleased_from,
                } => {
                    let from = unleased_from.as_deref();
                    self.fetch_once(target, count, lease, *scan_orphans, from)
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
                self.ensure(target, recover_at, None).await?;
                once().await
            }
            other => other,
        }
    }

    /// How long an entry parked for dead-lettering stays held for the
    /// replica that parked it before another may move it instead.
    fn dead_letter_hold(&self) -> Duration {
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
        let mut p = ::redis::pipe();
        p.atomic()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(&leases)
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&target.group)
            .arg(HOLDER)
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
        let [time, first, read, last] = &v[..] else {
            return Err(bad_reply("fetch"));
        };
        let time = as_array(time)
            .filter(|t| t.len() == 2)
            .ok_or_else(|| bad_reply("fetch"))?;
        let secs = as_i64(&time[0]).ok_or_else(|| bad_reply("fetch"))?;
        let micros = as_i64(&time[1]).ok_or_else(|| bad_reply("fetch"))?;
        let now_ms = (secs * 1000 + micros / 1000) as u64;
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
                .and_then(as_array)
                .ok_or_else(|| bad_reply("fetch"))?,
        };
        let mut out = Fetched {
            now_ms,
            next_due_ms,
            last_id,
            ..Default::default()
        };
        if entries.is_empty() {
            return Ok(out);
        }
        let mut taken = Vec::with_capacity(entries.len());
        for e in entries {
            let e = as_array(e)
                .filter(|e| e.len() == 2)
                .ok_or_else(|| bad_reply("fetch"))?;
            let id = as_string(&e[0]).ok_or_else(|| bad_reply("fetch"))?;
            taken.push((id, data_field(&e[1])));
        }
        let hold_ms = self.dead_letter_hold().as_millis() as u64;
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(&k.stream)
            .key(&leases)
            .key(&k.expiry)
            .key(&k.stats)
            .arg(&target.group)
            .arg(lease.as_millis() as u64)
            .arg(hold_ms);
        for (id, _) in &taken {
            inv.arg(id);
        }
        let (now_ms, parked): (u64, Vec<String>) = self.invoke(inv).await?;
        let lease_end = now_ms + lease.as_millis() as u64;
        let mut soonest = lease_end;
        if !parked.is_empty() {
            soonest = soonest.min(now_ms + hold_ms);
        }
        out.now_ms = now_ms;
        out.next_due_ms = Some(next_due_ms.map_or(soonest, |d| d.min(soonest)));
        for (id, data) in taken {
            if parked.contains(&id) {
                out.exhausted.push(Exhausted {
                    id,
                    count: 1,
                    data,
                    expired: true,
                });
            } else {
                out.deliveries
                    .push(self.delivery(target, id, 1, data.as_deref(), lease_end));
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

    async fn fetch_once(
        &self,
        target: &Target,
        count: u32,
        lease: Duration,
        scan_orphans: bool,
        unleased_from: Option<&str>,
    ) -> Result<Fetched> {
        let k = self.keys(&target.route.queue);
        let orphan_ms = if scan_orphans {
            self.settings.orphan_timeout.as_millis() as u64
        } else {
            0
        };
        let unleased_ms = if unleased_from.is_some() {
            self.unleased_idle().as_millis() as u64
        } else {
            0
        };
        let mut inv = self.scripts.fetch.prepare_invoke();
        inv.key(&k.stream)
            .key(k.leases(&target.group))
            .key(&k.expiry)
            .key(&k.stats)
            .arg(&target.group)
            .arg(count)
            .arg(lease.as_millis() as u64)
            .arg(self.settings.max_attempts)
            .arg(orphan_ms)
            .arg(self.dead_letter_hold().as_millis() as u64)
            .arg(unleased_ms)
            .arg(unleased_from.unwrap_or("-"));
        let v: Value = self.invoke(inv).await?;
        let top = as_array(&v)
            .filter(|a| a.len() == 6)
            .ok_or_else(|| bad_reply("fetch"))?;
        let now_ms = as_i64(&top[0]).ok_or_else(|| bad_reply("fetch"))? as u64;
        let lease_end = now_ms + lease.as_millis() as u64;
        let mut out = Fetched {
            now_ms,
            next_due_ms: as_i64(&top[3]).filter(|d| *d >= 0).map(|d| d as u64),
            last_id: as_string(&top[4]).unwrap_or_else(|| "0-0".into()),
            unleased_next: unleased_from.and(as_string(&top[5])),
            ..Default::default()
        };
        for e in as_array(&top[1]).ok_or_else(|| bad_reply("fetch"))? {
            let e = as_array(e)
                .filter(|e| e.len() == 3)
                .ok_or_else(|| bad_reply("fetch"))?;
            let id = as_string(&e[0]).ok_or_else(|| bad_reply("fetch"))?;
            let attempt = as_i64(&e[1]).ok_or_else(|| bad_reply("fetch"))? as u32;
            let data = data_field(&e[2]);
            out.deliveries
                .push(self.delivery(target, id, attempt, data.as_deref(), lease_end));
        }
        crate::observe::delivered(
            &target.route.queue,
            &target.group,
            out.deliveries.len() as u64,
            out.deliveries.iter().filter(|d| d.attempt > 1).count() as u64,
        );
        for e in as_array(&top[2]).ok_or_else(|| bad_reply("fetch"))? {
            let e = as_array(e)
                .filter(|e| e.len() == 4)
                .ok_or_else(|| bad_reply("fetch"))?;
            out.exhausted.push(Exhausted {
                id: as_string(&e[0]).ok_or_else(|| bad_reply("fetch"))?,
                count: as_i64(&e[1]).ok_or_else(|| bad_reply("fetch"))? as u32,
                data: data_field(&e[2]),
                expired: as_string(&e[3]).as_deref() == Some("expired"),
            });
        }
        Ok(out)
    }

    fn delivery(
        &self,
        target: &Target,
        id: String,
        attempt: u32,
        data: Option<&[u8]>,
        lease_end: u64,
    ) -> Delivery {
        let d = envelope::decode(data);
        let receipt = Receipt::encode_parts(&target.route.queue, &target.group, &id, attempt);
        Delivery {
            receipt,
            published_at: d.published_at.unwrap_or_else(|| id_secs(&id)),
            message_id: id,
            path: d.path.unwrap_or_else(|| target.route.path.clone()),
            payload: d.payload,
            content_type: d.content_type,
            headers: d.headers,
            attempt,
            group: target.group.clone(),
            lease_expires_ms: lease_end,
        }
    }

    /// Ack receipts; one outcome per receipt, in order. Receipts of one
    /// (queue, group) go to Redis in one script call.
    pub async fn ack(&self, receipts: &[Receipt]) -> Result<Vec<AckOutcome>> {
        let mut out = vec![AckOutcome::NotPending; receipts.len()];
        let groups = by_subscription(receipts);
        let calls = groups.iter().map(|((queue, group), idx)| {
            let k = self.keys(queue);
            let mut inv = self.scripts.ack.prepare_invoke();
            inv.key(&k.stream).key(k.leases(group)).arg(*group);
            for &i in idx {
                inv.arg(&receipts[i].id).arg(receipts[i].attempt);
            }
            async move { self.invoke::<Vec<i64>>(inv).await }
        });
        let results = futures::future::join_all(calls).await;
        for ((_, idx), codes) in groups.iter().zip(results) {
            let codes = codes?;
            let acked = codes.iter().filter(|c| **c == 1).count() as u64;
            if let Some(&first) = idx.first() {
                crate::observe::acked(&receipts[first].queue, &receipts[first].group, acked);
            }
            for (&i, c) in idx.iter().zip(codes) {
                out[i] = match c {
                    1 => AckOutcome::Acked,
                    3 => AckOutcome::Stale,
                    _ => AckOutcome::NotPending,
                };
            }
        }
        Ok(out)
    }

    /// Exponential backoff with equal jitter for the n-th failed attempt.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let min = self.settings.retry_min.as_millis() as u64;
        let max = self.settings.retry_max.as_millis() as u64;
        let exp = min
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(max);
        let half = exp / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=exp - half))
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
        let k = self.keys(&r.queue);
        if dead_letter || r.attempt >= self.settings.max_attempts {
            let reason = if dead_letter {
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
            };
            let data = self.read_data(&k.stream, &r.id).await?;
            let dlq_id = self
                .move_to_dlq(
                    &r.queue,
                    &r.group,
                    &r.id,
                    HOLDER,
                    r.attempt,
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
        let at_ms = self.relet(&self.scripts.retry, r, delay).await?;
        crate::observe::nacked(&r.queue, &r.group);
        Ok(NackOutcome::Retry { at_ms })
    }

    /// Extend a lease to now + `by`; returns the new end (ms, Redis clock).
    pub async fn extend(&self, r: &Receipt, by: Duration) -> Result<u64> {
        self.relet(&self.scripts.extend, r, by).await
    }

    /// Run a script that re-times a held delivery (`retry.lua` parks it for
    /// a retry, `extend.lua` keeps it leased) and return its new due time;
    /// a receipt that no longer holds the lease is LeaseLost.
    async fn relet(&self, script: &Script, r: &Receipt, after: Duration) -> Result<u64> {
        let k = self.keys(&r.queue);
        let mut inv = script.prepare_invoke();
        inv.key(&k.stream)
            .key(k.leases(&r.group))
            .arg(&r.group)
            .arg(&r.id)
            .arg(r.attempt)
            .arg(after.as_millis() as u64);
        let (code, due): (i64, i64) = self.invoke(inv).await?;
        if code != 1 {
            return Err(lease_error(code, &r.group));
        }
        Ok(due as u64)
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
        self.move_to_dlq(
            &target.route.queue,
            &target.group,
            &e.id,
            DLQ_HOLD,
            e.count,
            e.data.as_deref(),
            &reason,
        )
        .await
        .inspect(|_| {
            let why = if e.expired {
                "expired"
            } else {
                "lease_expired"
            };
            crate::observe::dead_lettered(&target.route.queue, &target.group, why);
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn move_to_dlq(
        &self,
        queue: &str,
        group: &str,
        id: &str,
        holder: &str,
        count: u32,
        data: Option<&[u8]>,
        reason: &str,
    ) -> Result<String> {
        let k = self.keys(queue);
        let dlq_data = envelope::dead_letter_data(
            data,
            &envelope::Failure {
                reason,
                attempts: count,
                group,
                message_id: id,
                now: envelope::now_secs(),
            },
        );
        let mut inv = self.scripts.dead_letter.prepare_invoke();
        inv.key(&k.stream)
            .key(k.leases(group))
            .key(&k.dlq)
            .arg(group)
            .arg(id)
            .arg(holder)
            .arg(count)
            .arg(dlq_data);
        let (code, dlq_id): (i64, String) = self.invoke(inv).await?;
        if code != 1 {
            return Err(lease_error(code, group));
        }
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
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&k.stream)
            .key(k.leases(&target.group))
            .arg(&target.group);
        for (id, n) in deliveries {
            inv.arg(id).arg(*n);
        }
        let _: i64 = self.invoke(inv).await?;
        Ok(())
    }
}
