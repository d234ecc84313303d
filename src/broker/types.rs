//! The broker's domain types: what is sent, what is delivered, and the
//! outcomes of settling. No Redis or protobuf types appear here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::receipt::{Keys, Receipt};
use crate::routing::Route;

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
    /// Most queues (`--max-queues`); creating one more is RESOURCE_EXHAUSTED.
    pub max_queues: u64,
    /// Most consumer groups per queue besides LeanMQ's default one
    /// (`--max-groups-per-queue`): each costs retention work and memory.
    pub max_groups_per_queue: u32,
    /// `--allow-colliding-paths`: every spelling of a queue name may use
    /// the queue, as in LeanMQ (its owner is still recorded).
    pub allow_colliding_paths: bool,
    /// Replicas that must acknowledge an append before it is answered OK
    /// (`--wait-replicas`, Redis `WAIT`); 0: no wait.
    pub wait_replicas: u32,
    /// How long `WAIT` may take (`--wait-timeout`); fewer acks by then is
    /// UNAVAILABLE, with the message stored on the primary.
    pub wait_timeout: Duration,
    /// `--wait-replicas-for`: per path pattern or key prefix.
    pub wait_rules: Vec<super::durability::WaitRule>,
    /// `--wait-aof`: `WAITAOF 1 N` (fsynced) instead of `WAIT N`.
    pub wait_aof: bool,
}

/// The token that would create a queue, for its `max_queues` quota
/// (counted in Redis, so across replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creator {
    /// The token's name, recorded as the queue's `created_by`.
    pub name: Arc<str>,
    /// How many queues it may have created at once.
    pub max_queues: u64,
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
    /// Delivered one at a time, in send order, among messages with the
    /// same key, within each group (see `lua/common.lua`).
    pub ordering_key: Option<String>,
    /// Whose quota a queue this message creates counts against (`None`:
    /// no per-token quota).
    pub creator: Option<Creator>,
}

impl Outgoing {
    /// Nothing but an append: no TTL, delay, idempotency or ordering key.
    pub(crate) fn is_plain(&self) -> bool {
        self.ttl.is_none()
            && self.delay.is_none_or(|d| d.is_zero())
            && self.idempotency_key.is_none()
            && self.ordering_key.is_none()
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
    /// The queue it came from: with `group`, `message_id` and `attempt`,
    /// what its receipt names (encoded only at the edge, see [`Delivery::receipt`]).
    pub queue: Arc<str>,
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
    /// Its ordering key (`None`: unordered).
    pub ordering_key: Option<String>,
}

impl Delivery {
    /// The receipt that settles this delivery.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            queue: self.queue.to_string(),
            group: self.group.clone(),
            id: self.message_id.clone(),
            attempt: self.attempt,
            ordering_key: self.ordering_key.clone(),
        }
    }

    /// About how many bytes this delivery takes in a reply: its payload,
    /// headers and names, plus the receipt and framing.
    pub fn wire_size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        let names = self.queue.len() + self.group.len() + self.message_id.len();
        let key = self.ordering_key.as_ref().map_or(0, String::len);
        self.payload.len()
            + headers
            + self.content_type.len()
            + self.path.len()
            + names * 3
            + key
            + 96
    }

    /// Its receipt, signed and encoded for the client, without building a
    /// [`Receipt`].
    pub fn receipt_token(&self, keys: &Keys) -> String {
        Receipt::encode_parts(
            keys,
            &self.queue,
            &self.group,
            &self.message_id,
            self.attempt,
            self.ordering_key.as_deref(),
        )
    }
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
    /// The new-entries read came back full (more may be unread), and how
    /// many of the entries it read wait for their ordering key's turn
    /// (the reader's read-ahead follows these).
    pub full: bool,
    pub read: u32,
    pub waited: u32,
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
