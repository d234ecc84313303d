//! Metrics, exported for Prometheus on `--metrics-listen` (a separate HTTP
//! port). Without that flag no recorder is installed and every call here is
//! a no-op.
//!
//! Names follow Prometheus conventions (`_total` counters, base units in
//! the name); the RPC histogram is the gRPC ecosystem's server metric
//! (`grpc_server_handling_seconds` with `grpc_service`, `grpc_method`,
//! `grpc_type`, `grpc_code`), so stock gRPC dashboards and alerts work on
//! it. `docs/operations.md` lists every metric with its labels; keep it,
//! `deploy/grafana` and `deploy/prometheus/alerts.yml` in step with this
//! file (`make test-deploy` checks that they only name metrics made here).
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `leanmq_messages_sent_total` | queue | appended (or scheduled) by Send/SendBatch/Publish |
//! | `leanmq_deliveries_total` | queue, group | deliveries made |
//! | `leanmq_redeliveries_total` | queue, group | deliveries with attempt > 1 |
//! | `leanmq_acks_total` | queue, group | receipts acked |
//! | `leanmq_nacks_total` | queue, group | nacks scheduled for retry |
//! | `leanmq_dead_lettered_total` | queue, group, reason | moved to the DLQ (`consumer`, `max_attempts`, `lease_expired`, `expired`) |
//! | `leanmq_expired_total` | queue, group | TTL passed before delivery |
//! | `leanmq_queue_depth`, `_pending`, `_oldest_unacked_seconds`, `_dead_letters`, `_scheduled` | queue | sampled every 15 s |
//! | `leanmq_group_lag` | queue, group | entries not yet delivered to the group, sampled every 15 s |
//! | `grpc_server_handling_seconds` | grpc_service, grpc_method, grpc_type, grpc_code | gRPC handling time (to response headers for streams) |
//! | `leanmq_redis_duration_seconds` | | Redis round trips of the shared lanes |
//! | `leanmq_redis_errors_total` | kind (`unavailable`, `nogroup`, `other`) | Redis failures |
//! | `leanmq_serving` | | 1 while health says SERVING, 0 while Redis is unreachable |
//! | `leanmq_load_shed_total` | | unary calls refused by `--max-concurrent-rpcs` |
//! | `leanmq_open_streams` | | Subscribe streams open on this replica |
//! | `leanmq_push_requests_total` | subscription, class (`2xx`, `3xx`, `4xx`, `5xx`, `error`) | push POSTs made, by answer |
//! | `leanmq_push_duration_seconds` | subscription | push POST time, to the end of the (capped) body |
//! | `leanmq_push_backlog` | subscription | entries of a path subscription's group not yet acked (lag + pending), sampled every 15 s |
//! | `leanmq_push_consumers` | | push subscriptions this replica runs |
//! | `leanmq_http_request_duration_seconds` | route (`/v1/send/{path}`, `/v1/send-batch`, `other`), status | HTTP ingress requests, by route template and status |
//! | `leanmq_connections_refused_total` | limit (`--max-connections`, `--max-connections-per-source`, `--handshake-timeout`) | client connections closed by a connection limit |
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

/// Most distinct queue names, and (queue, group) pairs, that label a
/// series. Names come from clients (paths, group names), so past these the
/// label reads [`OTHER`]: `/metrics` and leanmqd's memory stay bounded
/// whatever a client sends. Series are only made for queues and groups that
/// exist (a call that settled nothing labels nothing).
const MAX_QUEUE_LABELS: usize = 2_000;
const MAX_GROUP_LABELS: usize = 10_000;
/// The label of names past the caps.
pub const OTHER: &str = "_other";

type Seen<K> = std::sync::LazyLock<std::sync::RwLock<std::collections::HashSet<K>>>;
static QUEUE_LABELS: Seen<String> = std::sync::LazyLock::new(Default::default);
static GROUP_LABELS: Seen<(String, String)> = std::sync::LazyLock::new(Default::default);

/// Whether `key` may label a series: it is one of the first `cap` seen.
fn admit<K: std::hash::Hash + Eq>(
    seen: &std::sync::RwLock<std::collections::HashSet<K>>,
    key: K,
    cap: usize,
) -> bool {
    if seen.read().is_ok_and(|s| s.contains(&key)) {
        return true;
    }
    match seen.write() {
        Ok(mut s) if s.len() < cap => {
            s.insert(key);
            true
        }
        Ok(s) => s.contains(&key),
        Err(_) => false,
    }
}

/// The `queue` label for `queue`.
fn queue_label(queue: &str) -> String {
    if admit(&QUEUE_LABELS, queue.to_string(), MAX_QUEUE_LABELS) {
        queue.to_string()
    } else {
        OTHER.to_string()
    }
}

/// The `queue` and `group` labels for a (queue, group).
fn group_labels(queue: &str, group: &str) -> (String, String) {
    let q = queue_label(queue);
    if q != OTHER
        && admit(
            &GROUP_LABELS,
            (q.clone(), group.to_string()),
            MAX_GROUP_LABELS,
        )
    {
        (q, group.to_string())
    } else {
        (q, OTHER.to_string())
    }
}

pub fn sent(queue: &str, n: u64) {
    if n > 0 {
        tally::add(queue, tally::Kind::Sent, n);
        counter!("leanmq_messages_sent_total", "queue" => queue_label(queue)).increment(n);
    }
}

/// `n` deliveries from one fetch, `redelivered` of them not the first.
pub fn delivered(queue: &str, group: &str, n: u64, redelivered: u64) {
    if n == 0 {
        return;
    }
    let (q, g) = group_labels(queue, group);
    if redelivered > 0 {
        counter!("leanmq_redeliveries_total", "queue" => q.clone(), "group" => g.clone())
            .increment(redelivered);
    }
    counter!("leanmq_deliveries_total", "queue" => q, "group" => g).increment(n);
}

/// `n` receipts acked; nothing is labelled when none was (forged or stale
/// receipts name queues and groups that may not exist).
pub fn acked(queue: &str, group: &str, n: u64) {
    if n > 0 {
        tally::add(queue, tally::Kind::Acked, n);
        let (q, g) = group_labels(queue, group);
        counter!("leanmq_acks_total", "queue" => q, "group" => g).increment(n);
    }
}

pub fn nacked(queue: &str, group: &str) {
    let (q, g) = group_labels(queue, group);
    counter!("leanmq_nacks_total", "queue" => q, "group" => g).increment(1);
}

pub fn dead_lettered(queue: &str, group: &str, reason: &'static str) {
    tally::add(queue, tally::Kind::DeadLettered, 1);
    let (q, g) = group_labels(queue, group);
    if reason == "expired" {
        counter!("leanmq_expired_total", "queue" => q.clone(), "group" => g.clone()).increment(1);
    }
    counter!("leanmq_dead_lettered_total", "queue" => q, "group" => g, "reason" => reason)
        .increment(1);
}

pub fn queue_gauges(
    queue: &str,
    depth: i64,
    pending: i64,
    oldest: Option<Duration>,
    dead: i64,
    scheduled: i64,
) {
    let q = queue_label(queue);
    gauge!("leanmq_queue_depth", "queue" => q.clone()).set(depth as f64);
    gauge!("leanmq_queue_pending", "queue" => q.clone()).set(pending as f64);
    gauge!("leanmq_queue_oldest_unacked_seconds", "queue" => q.clone())
        .set(oldest.map(|d| d.as_secs_f64()).unwrap_or(0.0));
    gauge!("leanmq_queue_dead_letters", "queue" => q.clone()).set(dead as f64);
    gauge!("leanmq_queue_scheduled", "queue" => q).set(scheduled as f64);
}

/// A group's lag (entries not yet delivered to it); Redis reports none
/// (negative here) after deletions it can't account for, and then the last
/// known value stays.
pub fn group_lag(queue: &str, group: &str, lag: i64) {
    if lag >= 0 {
        let (q, g) = group_labels(queue, group);
        gauge!("leanmq_group_lag", "queue" => q, "group" => g).set(lag as f64);
    }
}

/// Health as a gauge, so an alert can fire on NOT_SERVING.
pub fn serving(ok: bool) {
    gauge!("leanmq_serving").set(if ok { 1.0 } else { 0.0 });
}

/// The gRPC labels of a call: service, method and type (`unary`,
/// `server_stream`, `bidi_stream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcLabels {
    pub service: &'static str,
    pub method: &'static str,
    pub kind: &'static str,
}

/// The labels of a request path: the known methods as static strings (no
/// allocation per call); anything else is "other", so a client can't grow
/// the label set with made-up paths.
pub fn method_label(path: &str) -> RpcLabels {
    const UNARY: &str = "unary";
    const KNOWN: &[(&str, &str, &str)] = &[
        ("leanmq.v1.Broker", "Send", UNARY),
        ("leanmq.v1.Broker", "SendBatch", UNARY),
        ("leanmq.v1.Broker", "Publish", "bidi_stream"),
        ("leanmq.v1.Broker", "Subscribe", "server_stream"),
        ("leanmq.v1.Broker", "Receive", UNARY),
        ("leanmq.v1.Broker", "Ack", UNARY),
        ("leanmq.v1.Broker", "Nack", UNARY),
        ("leanmq.v1.Broker", "Extend", UNARY),
        ("leanmq.v1.Admin", "ListQueues", UNARY),
        ("leanmq.v1.Admin", "GetQueue", UNARY),
        ("leanmq.v1.Admin", "ListDeadLetters", UNARY),
        ("leanmq.v1.Admin", "RequeueDeadLetters", UNARY),
        ("leanmq.v1.Admin", "DeleteDeadLetters", UNARY),
        ("leanmq.v1.Admin", "PurgeDeadLetters", UNARY),
        ("leanmq.v1.Admin", "PurgeQueue", UNARY),
        ("leanmq.v1.Admin", "DeleteQueue", UNARY),
        ("leanmq.v1.Admin", "CreateQueue", UNARY),
        ("leanmq.v1.Admin", "CreatePushSubscription", UNARY),
        ("leanmq.v1.Admin", "GetPushSubscription", UNARY),
        ("leanmq.v1.Admin", "ListPushSubscriptions", UNARY),
        ("leanmq.v1.Admin", "UpdatePushSubscription", UNARY),
        ("leanmq.v1.Admin", "DeletePushSubscription", UNARY),
        ("grpc.health.v1.Health", "Check", UNARY),
        ("grpc.health.v1.Health", "Watch", "server_stream"),
        (
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
        (
            "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
            "bidi_stream",
        ),
    ];
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    KNOWN
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|&(service, method, kind)| RpcLabels {
            service,
            method,
            kind,
        })
        .unwrap_or(RpcLabels {
            service: "other",
            method: "other",
            kind: "other",
        })
}

pub fn rpc(labels: RpcLabels, code: &'static str, took: Duration) {
    histogram!(
        "grpc_server_handling_seconds",
        "grpc_service" => labels.service,
        "grpc_method" => labels.method,
        "grpc_type" => labels.kind,
        "grpc_code" => code
    )
    .record(took.as_secs_f64());
}

pub fn redis_call(took: Duration) {
    histogram!("leanmq_redis_duration_seconds").record(took.as_secs_f64());
}

pub fn redis_error(kind: &'static str) {
    counter!("leanmq_redis_errors_total", "kind" => kind).increment(1);
}

/// A `WAIT` that saw fewer replicas acknowledge than `--wait-replicas`.
pub fn wait_timeout() {
    counter!("leanmq_wait_timeouts_total").increment(1);
}

/// A call refused by load shedding (`--max-concurrent-rpcs`).
pub fn shed() {
    counter!("leanmq_load_shed_total").increment(1);
}

/// One HTTP ingress request (`crate::http`), labelled by its route's
/// template (never the raw path) and its status.
pub fn http(route: &'static str, status: u16, took: Duration) {
    histogram!(
        "leanmq_http_request_duration_seconds",
        "route" => route,
        "status" => status.to_string()
    )
    .record(took.as_secs_f64());
}

/// A client connection closed by a limit of `listen` (the flag's name).
pub fn connection_refused(limit: &'static str) {
    counter!("leanmq_connections_refused_total", "limit" => limit).increment(1);
}

/// One push POST to `subscription`'s endpoint (names are operator-made and
/// at most `push::MAX_SUBSCRIPTIONS` per prefix, so labels stay bounded).
pub fn pushed(subscription: &str, class: &'static str, took: Duration) {
    let s = subscription.to_string();
    counter!("leanmq_push_requests_total", "subscription" => s.clone(), "class" => class)
        .increment(1);
    histogram!("leanmq_push_duration_seconds", "subscription" => s).record(took.as_secs_f64());
}

pub fn push_backlog(subscription: &str, backlog: i64) {
    gauge!("leanmq_push_backlog", "subscription" => subscription.to_string())
        .set(backlog.max(0) as f64);
}

pub fn push_running(n: usize) {
    gauge!("leanmq_push_consumers").set(n as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths_split_into_grpc_labels_and_the_rest_are_other() {
        assert_eq!(
            method_label("/leanmq.v1.Broker/Send"),
            RpcLabels {
                service: "leanmq.v1.Broker",
                method: "Send",
                kind: "unary"
            }
        );
        assert_eq!(
            method_label("/leanmq.v1.Broker/Subscribe").kind,
            "server_stream"
        );
        assert_eq!(
            method_label("/leanmq.v1.Admin/CreatePushSubscription").method,
            "CreatePushSubscription"
        );
        assert_eq!(
            method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            "bidi_stream"
        );
        for made_up in [
            "/leanmq.v1.Broker/Nope",
            "/x/Send",
            "",
            "/",
            "Send",
            "/leanmq.v1.Broker/Send/x",
        ] {
            assert_eq!(method_label(made_up).service, "other", "{made_up}");
            assert_eq!(method_label(made_up).method, "other", "{made_up}");
        }
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn label_sets_are_capped_and_known_names_keep_their_label() {
        let seen: std::sync::RwLock<std::collections::HashSet<u32>> = Default::default();
        assert!((0..3).all(|i| admit(&seen, i, 3)));
        assert!(!admit(&seen, 99, 3), "past the cap");
        assert!(admit(&seen, 1, 3), "a name seen before keeps its label");
        assert_eq!(seen.read().map(|s| s.len()).unwrap_or(0), 3);
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
