//! Metrics, exported for Prometheus on `--metrics-listen` (a separate HTTP
//! port). Without that flag no recorder is installed and every call here is
//! a no-op.
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `leanmq_messages_sent_total` | queue | appended (or scheduled) by Send/SendBatch |
//! | `leanmq_deliveries_total` | queue, group | deliveries made |
//! | `leanmq_redeliveries_total` | queue, group | deliveries with attempt > 1 |
//! | `leanmq_acks_total` | queue, group | receipts acked |
//! | `leanmq_nacks_total` | queue, group | nacks scheduled for retry |
//! | `leanmq_dead_lettered_total` | queue, group, reason | moved to the DLQ (`consumer`, `max_attempts`, `lease_expired`, `expired`) |
//! | `leanmq_expired_total` | queue, group | TTL passed before delivery |
//! | `leanmq_queue_depth`, `_pending`, `_oldest_unacked_seconds`, `_dead_letters`, `_scheduled` | queue | sampled every 15 s |
//! | `leanmq_rpc_duration_seconds` | method, code | gRPC handling time (to response headers for streams) |
//! | `leanmq_redis_duration_seconds` | | Redis round trips of the shared lanes |
//! | `leanmq_redis_errors_total` | kind (`unavailable`, `nogroup`, `other`) | Redis failures |
//! | `leanmq_open_streams` | | Subscribe streams open on this replica |
//!
//! Apart from Prometheus, [`tally`] keeps per-queue running totals of sends,
//! acks and dead letters in the process, for the web console's rates and
//! throughput chart. It is off (one atomic load per call) until
//! [`tally::enable`] is called.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Install the Prometheus recorder and its HTTP listener.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0,
        ])
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

pub fn sent(queue: &str, n: u64) {
    tally::add(queue, tally::Kind::Sent, n);
    counter!("leanmq_messages_sent_total", "queue" => queue.to_string()).increment(n);
}

/// `n` deliveries from one fetch, `redelivered` of them not the first.
pub fn delivered(queue: &str, group: &str, n: u64, redelivered: u64) {
    if n > 0 {
        counter!("leanmq_deliveries_total", "queue" => queue.to_string(), "group" => group.to_string())
            .increment(n);
    }
    if redelivered > 0 {
        counter!("leanmq_redeliveries_total", "queue" => queue.to_string(), "group" => group.to_string()).increment(redelivered);
    }
}

pub fn acked(queue: &str, group: &str, n: u64) {
    tally::add(queue, tally::Kind::Acked, n);
    counter!("leanmq_acks_total", "queue" => queue.to_string(), "group" => group.to_string())
        .increment(n);
}

pub fn nacked(queue: &str, group: &str) {
    counter!("leanmq_nacks_total", "queue" => queue.to_string(), "group" => group.to_string())
        .increment(1);
}

pub fn dead_lettered(queue: &str, group: &str, reason: &'static str) {
    tally::add(queue, tally::Kind::DeadLettered, 1);
    counter!("leanmq_dead_lettered_total", "queue" => queue.to_string(), "group" => group.to_string(), "reason" => reason)
        .increment(1);
    if reason == "expired" {
        counter!("leanmq_expired_total", "queue" => queue.to_string(), "group" => group.to_string()).increment(1);
    }
}

pub fn queue_gauges(
    queue: &str,
    depth: i64,
    pending: i64,
    oldest: Option<Duration>,
    dead: i64,
    scheduled: i64,
) {
    let q = queue.to_string();
    gauge!("leanmq_queue_depth", "queue" => q.clone()).set(depth as f64);
    gauge!("leanmq_queue_pending", "queue" => q.clone()).set(pending as f64);
    gauge!("leanmq_queue_oldest_unacked_seconds", "queue" => q.clone())
        .set(oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0));
    gauge!("leanmq_queue_dead_letters", "queue" => q.clone()).set(dead as f64);
    gauge!("leanmq_queue_scheduled", "queue" => q).set(scheduled as f64);
}

/// The `method` label of a request path: the known methods as static
/// strings (no allocation per call); anything else is "other", so a client
/// can't grow the label set with made-up paths.
pub fn method_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/leanmq.v1.Broker/Send",
        "/leanmq.v1.Broker/SendBatch",
        "/leanmq.v1.Broker/Subscribe",
        "/leanmq.v1.Broker/Receive",
        "/leanmq.v1.Broker/Ack",
        "/leanmq.v1.Broker/Nack",
        "/leanmq.v1.Broker/Extend",
        "/leanmq.v1.Admin/ListQueues",
        "/leanmq.v1.Admin/GetQueue",
        "/leanmq.v1.Admin/ListDeadLetters",
        "/leanmq.v1.Admin/RequeueDeadLetters",
        "/leanmq.v1.Admin/DeleteDeadLetters",
        "/leanmq.v1.Admin/PurgeDeadLetters",
        "/leanmq.v1.Admin/PurgeQueue",
        "/leanmq.v1.Admin/DeleteQueue",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    KNOWN
        .iter()
        .copied()
        .find(|k| *k == path)
        .unwrap_or("other")
}

pub fn rpc(method: &'static str, code: &'static str, took: Duration) {
    histogram!("leanmq_rpc_duration_seconds", "method" => method, "code" => code)
        .record(took.as_secs_f64());
}

pub fn redis_call(took: Duration) {
    histogram!("leanmq_redis_duration_seconds").record(took.as_secs_f64());
}

pub fn redis_error(kind: &'static str) {
    counter!("leanmq_redis_errors_total", "kind" => kind).increment(1);
}

/// A call refused by load shedding (`--max-concurrent-rpcs`).
pub fn shed() {
    counter!("leanmq_load_shed_total").increment(1);
}

pub fn stream_opened() {
    gauge!("leanmq_open_streams").increment(1.0);
}

pub fn stream_closed() {
    gauge!("leanmq_open_streams").decrement(1.0);
}

/// gRPC status code names, for the `code` label.
pub fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Per-queue running totals kept in the process (not Prometheus), read by
/// the web console's sampler. Bounded: at most [`tally::MAX_QUEUES`] queues
/// are counted; traffic on more is not tallied (the console then shows no
/// rate for them).
pub mod tally {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock, RwLock};

    /// Most queues tallied, so made-up queue names can't grow memory.
    pub const MAX_QUEUES: usize = 10_000;

    #[derive(Debug, Clone, Copy)]
    pub enum Kind {
        Sent,
        Acked,
        DeadLettered,
    }

    /// One queue's totals since the tally was enabled.
    #[derive(Debug, Default)]
    struct Counts {
        sent: AtomicU64,
        acked: AtomicU64,
        dead: AtomicU64,
    }

    /// A copy of one queue's totals.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Totals {
        pub sent: u64,
        pub acked: u64,
        pub dead_lettered: u64,
    }

    type Table = RwLock<HashMap<String, Arc<Counts>>>;

    static TALLY: OnceLock<Table> = OnceLock::new();

    /// Start counting (idempotent).
    pub fn enable() {
        let _ = TALLY.get_or_init(Default::default);
    }

    pub(super) fn add(queue: &str, kind: Kind, n: u64) {
        let Some(table) = TALLY.get() else {
            return;
        };
        let found = table.read().ok().and_then(|t| t.get(queue).cloned());
        let counts = match found {
            Some(c) => c,
            None => {
                let Ok(mut t) = table.write() else {
                    return;
                };
                if t.len() >= MAX_QUEUES && !t.contains_key(queue) {
                    return;
                }
                t.entry(queue.to_string()).or_default().clone()
            }
        };
        let field = match kind {
            Kind::Sent => &counts.sent,
            Kind::Acked => &counts.acked,
            Kind::DeadLettered => &counts.dead,
        };
        field.fetch_add(n, Ordering::Relaxed);
    }

    /// Every tallied queue's totals (empty while the tally is off).
    pub fn snapshot() -> HashMap<String, Totals> {
        let Some(Ok(t)) = TALLY.get().map(|t| t.read()) else {
            return HashMap::new();
        };
        t.iter()
            .map(|(q, c)| {
                (
                    q.clone(),
                    Totals {
                        sent: c.sent.load(Ordering::Relaxed),
                        acked: c.acked.load(Ordering::Relaxed),
                        dead_lettered: c.dead.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}
