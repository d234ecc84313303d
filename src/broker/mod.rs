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
//!
//! ## Files
//! - `types` — what is sent, delivered and settled (no Redis types);
//! - `send`, `fetch`, `settle`, `admin`, `schedule` — one `impl Broker`
//!   block each: appends; fetch rounds; ack, nack, extend, release and
//!   dead-lettering; queue and dead-letter administration; the delayed
//!   schedule and retention;
//! - `scripts` — one typed wrapper per Lua script in `lua/`, and the names
//!   and codes Rust and Lua share;
//! - `coalesce` — concurrent unary Sends sharing a Redis call;
//! - `dispatch` — the fan-out to local subscribers (credit ledger and
//!   readers; it sends no Redis command of its own);
//! - `background` — the scheduler, retention and gauge tasks; `retention`
//!   — one queue's retention pass and the registry walk;
//! - `redis` — the connection layer, including the blocking waits;
//! - `envelope`, `receipt`, `limits` — LeanMQ's envelope, signed delivery
//!   receipts (and the shared key in Redis), request limits.

pub mod admin;
pub mod background;
pub mod coalesce;
pub mod dispatch;
pub mod durability;
pub mod envelope;
mod fetch;
pub mod limits;
pub mod owners;
pub mod push;
pub mod receipt;
pub mod redis;
mod retention;
mod schedule;
pub mod scripts;
mod send;
mod settle;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::routing::QueueKeys;
use receipt::Receipt;
pub use retention::{RetainPolicy, Retained};
pub use scripts::{DLQ_HOLD, HOLDER};
pub use settle::Acked;
pub use types::*;

/// The Redis side of leanmqd.
pub struct Broker {
    pub settings: Settings,
    pub redis: redis::Redis,
    scripts: scripts::Scripts,
    /// Queue name → its key strings, so the hot path does not rebuild them.
    key_cache: RwLock<HashMap<String, Arc<QueueKeys>>>,
    /// The owners of queues, as last seen (`owners`).
    owners: owners::Owners,
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

impl Broker {
    pub fn new(settings: Settings, redis: redis::Redis) -> Self {
        Broker {
            settings,
            redis,
            key_cache: Default::default(),
            owners: Default::default(),
            scripts: scripts::Scripts::load(),
        }
    }

    /// The keys of a queue, built once per queue and shared.
    pub fn keys(&self, queue: &str) -> Arc<QueueKeys> {
        if let Some(k) = self
            .key_cache
            .read()
            .ok()
            .and_then(|c| c.get(queue).cloned())
        {
            return k;
        }
        let k = Arc::new(QueueKeys::new(
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
    /// which scripts cannot reach there, after checking `--max-queues` and
    /// the creator's quota (not atomic with other replicas' creations, so a
    /// burst of concurrent creations may pass a cap by as many as run at
    /// once). Idempotent; done before the script, so a queue with data is
    /// never missing from the registry.
    async fn register(&self, k: &QueueKeys, creator: Option<&Creator>) -> Result<()> {
        if !self.redis.is_cluster() {
            return Ok(());
        }
        let (known, members): (bool, u64) = self
            .query_pipe(
                ::redis::pipe()
                    .cmd("SISMEMBER")
                    .arg(&k.registry)
                    .arg(&k.stream)
                    .cmd("SCARD")
                    .arg(&k.registry),
            )
            .await?;
        if known {
            return Ok(());
        }
        let max = self.settings.max_queues;
        if max > 0 && members + 2 > 2 * max {
            return Err(Error::ResourceExhausted(format!(
                "leanmqd holds at most {max} queues (--max-queues); refused to create {}",
                k.queue
            )));
        }
        if let Some(c) = creator {
            let key = self.owner_key(c);
            let had: u64 = self.query(::redis::cmd("SCARD").arg(&key)).await?;
            if had >= c.max_queues {
                return Err(Error::ResourceExhausted(format!(
                    "token {:?} may create at most {} queues (max_queues in the tokens file) and has created {had}; refused to create {}",
                    c.name, c.max_queues, k.queue
                )));
            }
            let _: i64 = self
                .query(::redis::cmd("SADD").arg(&key).arg(&k.queue))
                .await?;
            let _: i64 = self
                .query(
                    ::redis::cmd("HSET")
                        .arg(&k.meta)
                        .arg("created_by")
                        .arg(&*c.name),
                )
                .await?;
        }
        let _: i64 = self
            .query(
                ::redis::cmd("SADD")
                    .arg(&k.registry)
                    .arg(&k.stream)
                    .arg(&k.dlq),
            )
            .await?;
        Ok(())
    }

    /// The set of queues a token has created under this prefix (its
    /// `max_queues` quota). No queue's keys start with
    /// [`crate::routing::OWNER_MARK`]: path-made names hold only letters,
    /// digits and `_`, and `routing::check_queue_name` refuses it.
    pub(crate) fn owner_key(&self, c: &Creator) -> String {
        self.owner_key_of(&c.name)
    }

    pub(crate) fn owner_key_of(&self, token: &str) -> String {
        format!(
            "{}{}{token}",
            self.settings.prefix,
            crate::routing::OWNER_MARK
        )
    }

    /// What creating a queue must fit in, for a script (nothing in Redis
    /// Cluster, where [`Broker::register`] checks).
    pub(crate) fn admission<'a>(
        &self,
        creator: Option<&'a Creator>,
        owner_key: &'a str,
    ) -> scripts::Admission<'a> {
        if self.redis.is_cluster() {
            return scripts::Admission::default();
        }
        scripts::Admission {
            max_registry: 2 * self.settings.max_queues,
            owner: creator.map(|c| (owner_key, c.max_queues, &*c.name)),
        }
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

    /// One pipeline (or MULTI/EXEC) that appends to `key`'s queue, then
    /// [`Broker::confirm`] on the same connection.
    pub(crate) async fn query_pipe_durable<T: ::redis::FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
        key: &str,
        replicas: u32,
    ) -> Result<T> {
        let mut lane = self.redis.lane().await?;
        let r = pipe.query_async(&mut lane.conn).await;
        let out = self.redis.settle(&lane, r).await?;
        self.confirm(&mut lane, key, replicas).await?;
        Ok(out)
    }

    /// One typed script call that appends to `key`'s queue, then
    /// [`Broker::confirm`] on the same connection.
    pub(crate) async fn run_durable<C: scripts::Call>(
        &self,
        call: C,
        key: &str,
        replicas: u32,
    ) -> Result<C::Reply> {
        let mut inv = call.script(&self.scripts).prepare_invoke();
        call.build(&mut inv);
        let mut lane = self.redis.lane().await?;
        let r = inv.invoke_async(&mut lane.conn).await;
        let raw: C::Raw = self.redis.settle(&lane, r).await?;
        self.confirm(&mut lane, key, replicas).await?;
        C::reply(raw)
    }

    /// `--wait-replicas`: Redis `WAIT` on the connection the write just went
    /// through (a multiplexed connection keeps its commands in order, so the
    /// WAIT covers the write), on the node that holds `key` in a Cluster.
    /// Fewer replicas by `--wait-timeout` is UNAVAILABLE: the write stays on
    /// the primary, and a retry with the same idempotency key stores nothing
    /// new but waits again.
    async fn confirm(&self, lane: &mut redis::LaneConn, key: &str, n: u32) -> Result<()> {
        let aof = self.settings.wait_aof;
        if n == 0 && !aof {
            return Ok(());
        }
        let t = self.settings.wait_timeout;
        let ms = t.as_millis() as u64;
        let mut cmd = ::redis::cmd(if aof { "WAITAOF" } else { "WAIT" });
        if aof {
            cmd.arg(1);
        }
        cmd.arg(n).arg(ms);
        let r = lane.conn.on_node_of(key, &cmd).await.and_then(|v| {
            if aof {
                let (local, replicas): (i64, i64) = ::redis::from_redis_value(v)?;
                Ok((local, replicas))
            } else {
                Ok((1, ::redis::from_redis_value::<i64>(v)?))
            }
        });
        let (local, acked) = self.redis.settle(lane, r).await?;
        if local >= 1 && acked >= i64::from(n) {
            return Ok(());
        }
        crate::observe::wait_timeout();
        let fsync = match (aof, local >= 1) {
            (false, _) => "",
            (true, true) => ", fsynced on the primary",
            (true, false) => ", not fsynced on the primary",
        };
        Err(Error::Unavailable(format!(
            "stored on the primary, not confirmed on {n} replicas ({acked} acknowledged within {t:?}{fsync})"
        )))
    }

    /// `--wait-aof` needs `WAITAOF`, new in Redis 7.2: refuse to start on
    /// an older server rather than answer every Send with an error.
    pub async fn check_waitaof(&self) -> Result<()> {
        let info: String = self.query(::redis::cmd("INFO").arg("server")).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (7, 2) {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "--wait-aof needs WAITAOF, which needs Redis 7.2 or later; this server runs Redis {version}, where it is unavailable (drop --wait-aof to confirm with WAIT)"
        )))
    }

    /// The replicas a Send of `msgs` must reach: the most any of their
    /// paths asks.
    pub(crate) fn replicas_for_send(&self, msgs: &[Outgoing]) -> u32 {
        let s = &self.settings;
        msgs.iter()
            .map(|m| {
                durability::replicas_for(&s.wait_rules, s.wait_replicas, &s.prefix, &m.route.path)
            })
            .max()
            .unwrap_or(s.wait_replicas)
    }

    /// The replicas a move between a queue's streams must reach.
    pub(crate) fn replicas_for_moves(&self) -> u32 {
        let s = &self.settings;
        durability::replicas_for_moves(&s.wait_rules, s.wait_replicas, &s.prefix)
    }

    pub(crate) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        inv: ::redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut lane = self.redis.lane().await?;
        let r = inv.invoke_async(&mut lane.conn).await;
        self.redis.settle(&lane, r).await
    }

    /// Run one typed script call (see [`scripts::Call`]).
    pub(crate) async fn run<C: scripts::Call>(&self, call: C) -> Result<C::Reply> {
        let mut inv = call.script(&self.scripts).prepare_invoke();
        call.build(&mut inv);
        let raw: C::Raw = self.invoke(inv).await?;
        C::reply(raw)
    }

    /// Create the queue pair, LeanMQ's groups, metadata and registry entry,
    /// and `target.group` (at `start`, a stream id or `$`, when new), and
    /// record `path`. Idempotent. A new queue counts against `--max-queues`
    /// and `creator`'s quota, a new group against `--max-groups-per-queue`:
    /// past them, RESOURCE_EXHAUSTED and nothing is created.
    pub async fn ensure(
        &self,
        target: &Target,
        start: &str,
        path: Option<&str>,
        creator: Option<&Creator>,
    ) -> Result<()> {
        let k = self.keys(&target.route.queue);
        self.register(&k, creator).await?;
        let owner_key = creator.map(|c| self.owner_key(c)).unwrap_or_default();
        self.run(scripts::Ensure {
            keys: &k,
            registry: self.global(&k, &k.registry),
            created_at: envelope::now_secs().to_string(),
            group: &target.group,
            start,
            path: path.unwrap_or(""),
            max_groups: self.settings.max_groups_per_queue,
            admission: self.admission(creator, &owner_key),
            allow_colliding: self.settings.allow_colliding_paths,
        })
        .await
    }
}
