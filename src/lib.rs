//! # leanmq-grpc
//!
//! LeanMQ's webhook pattern (send to a path, one handler per path, a
//! dead-letter queue for failures) as a language-agnostic gRPC service on
//! Redis Streams, wire-compatible with LeanMQ 0.2.0.
//!
//! ## Map
//! - [`main`](../leanmqd/index.html) — the `leanmqd` binary: flags, logging, embedded Redis, signals.
//! - `src/bin/leanmq/` — the `leanmq` operator CLI (send, tail, queues, dlq, health), a
//!   client of [`proto`] like any SDK; see docs/cli.md.
//! - [`config`] — flags with `LEANMQ_*` env twins, validated before binding (bad config exits 64).
//! - [`server`] — assembles the services (Broker, Health, Reflection) and the drain.
//! - [`shutdown`] — SIGINT/SIGTERM and the drain broadcast.
//! - [`embedded`] — the supervised `redis-server` child used when no Redis URL is given.
//! - [`rpc`] — the gRPC edge: one file per RPC, proto ↔ domain conversion in `rpc::convert`.
//! - [`routing`] — path → queue name → Redis keys, exactly as LeanMQ maps them.
//! - [`broker`] — the only code that speaks Redis:
//!   - `broker::redis` — pooled, pipelined connections;
//!   - `broker::envelope` — LeanMQ's `data` JSON envelope;
//!   - `broker::receipt` — self-contained delivery receipts;
//!   - `broker::dispatch` — one reader per (queue, group), fan-out by credit;
//!   - `broker/lua/` — every multi-step change as one atomic script (plain
//!     appends and plain reads of new entries use MULTI/EXEC instead; see `broker`).
//! - [`auth`] — bearer tokens (hashes in a file) and the one place that decides per-path permissions.
//! - [`tls`] — rustls for the listener, reloadable on SIGHUP.
//! - [`telemetry`] — logs and optional OTLP trace export (`otlp` feature).
//! - [`error`] — the one error enum and its one mapping to `tonic::Status`.
//! - [`observe`] — Prometheus metrics; [`layers`] — tower layers (RPC metrics, load shedding, auth).

pub mod auth;
pub mod broker;
pub mod config;
pub mod embedded;
pub mod error;
pub mod layers;
pub mod observe;
pub mod routing;
pub mod rpc;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Generated protobuf and gRPC code for `leanmq.v1`.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("leanmq.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("leanmq_descriptor");
}
