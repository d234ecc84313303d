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
//! | `leanmq_messages_sent_total` | queue | appended (or scheduled) by Send/SendBatch |
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
//! | `leanmq_connections_refused_total` | limit (`--max-connections`, `--max-connections-per-source`, `--handshake-timeout`) | client connections closed by a connection limit |

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
    counter!("leanmq_acks_total", "queue" => queue.to_string(), "group" => group.to_string())
        .increment(n);
}

pub fn nacked(queue: &str, group: &str) {
    counter!("leanmq_nacks_total", "queue" => queue.to_string(), "group" => group.to_string())
        .increment(1);
}

pub fn dead_lettered(queue: &str, group: &str, reason: &'static str) {
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

/// A group's lag (entries not yet delivered to it); Redis reports none
/// (negative here) after deletions it can't account for, and then the last
/// known value stays.
pub fn group_lag(queue: &str, group: &str, lag: i64) {
    if lag >= 0 {
        gauge!("leanmq_group_lag", "queue" => queue.to_string(), "group" => group.to_string())
            .set(lag as f64);
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

/// A call refused by load shedding (`--max-concurrent-rpcs`).
pub fn shed() {
    counter!("leanmq_load_shed_total").increment(1);
}

/// A client connection closed by a limit of `listen` (the flag's name).
pub fn connection_refused(limit: &'static str) {
    counter!("leanmq_connections_refused_total", "limit" => limit).increment(1);
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
