//! Request limits and defaults, shared by validation at the RPC edge and by
//! the configuration checks. The proto documents each one.

use std::time::Duration;

/// Shortest and longest lease (`ack_deadline`, `Extend.extension`).
pub const LEASE_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(12 * 3600));
/// Longest Receive wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest Nack delay.
pub const MAX_NACK_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default and largest `max_in_flight` of a Subscribe stream.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Default and largest `max_messages` of a Receive.
pub const DEFAULT_MAX_MESSAGES: u32 = 10;
pub const MAX_MESSAGES: u32 = 1000;
/// Largest `--publish-window`: unanswered messages on one Publish stream.
pub const MAX_PUBLISH_WINDOW: usize = 10_000;
/// Most receipts in one Ack.
pub const MAX_ACK_RECEIPTS: usize = 1000;
/// Most headers on a message, and their total size (keys plus values).
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest Nack reason kept (longer is truncated).
pub const MAX_REASON_BYTES: usize = 4096;
/// Most entries one fetch round takes from Redis.
pub const FETCH_BATCH: u32 = 256;
/// Longest TTL or delay.
pub const MAX_SCHEDULE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Longest ordering key (as Pub/Sub's ordering keys).
pub const MAX_ORDERING_KEY_BYTES: usize = 256;
/// Default and largest ListDeadLetters page.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;
/// Groups the retention pass looks at in one pipeline (see
/// `broker::retention`); each a command of a few microseconds.
pub const GROUPS_PER_PIPELINE: usize = 100;
/// Default and largest `--max-groups-per-queue` (groups besides LeanMQ's
/// default one): a new group costs one XINFO GROUPS over them all.
pub const DEFAULT_MAX_GROUPS_PER_QUEUE: u32 = 1000;
pub const MAX_GROUPS_PER_QUEUE: u32 = 10_000;
/// Default `--max-queues`.
pub const DEFAULT_MAX_QUEUES: u64 = 10_000;
/// Registry members one step of a walk over it asks for (SSCAN COUNT).
pub const REGISTRY_SCAN_STEP: u32 = 500;
/// Default and largest ListQueues page. A page walks the whole registry
/// (in SSCAN steps), so a larger page means fewer walks for a full listing.
pub const DEFAULT_QUEUE_PAGE: u32 = 100;
pub const MAX_QUEUE_PAGE: u32 = 1000;
