//! # leanmq-grpc
//!
//! LeanMQ's webhook pattern (send to a path, one handler per path, a
//! dead-letter queue for failures) as a language-agnostic gRPC service on
//! Redis Streams, wire-compatible with LeanMQ 0.2.0.
//!
//! ## Map
//! A request enters at the edge (`rpc`, one file per RPC), makes one call
//! into the domain façade (`queues`), which drives the Redis side
//! (`broker`) and the local fan-out (`broker::dispatch`).
//!
//! - [`main`](../leanmqd/index.html) — the `leanmqd` binary: clap flags and subcommands, logging, embedded Redis, signals.
//! - `src/bin/leanmq/` — the `leanmq` operator CLI (send, tail, queues, dlq, health), a
//!   client of [`proto`] like any SDK; see docs/cli.md.
//! - [`config`] — flags with `LEANMQ_*` env twins, validated before binding (bad config exits 64).
//! - [`server`] — assembles the services (Broker, Admin, Health, Reflection) behind one tower stack.
//! - [`shutdown`] — SIGINT/SIGTERM, and the drain: one cancellation token and one task tracker for every task.
//! - [`embedded`] — the supervised `redis-server` child used when no Redis URL is given.
//! - [`rpc`] — the gRPC edge: convert → one call into [`queues`] → convert (`rpc::convert`); Admin in `rpc::admin`;
//!   `rpc::publish` — the Publish stream: a bounded pump running each message as a Send;
//!   `rpc::prefixes` picks the served key prefix (one broker and façade each) for every request.
//! - [`queues`] — the domain façade: one method per operation; ensure-on-first-use and credit release live here.
//! - [`routing`] — path → queue name → Redis keys, exactly as LeanMQ maps them.
//! - [`broker`] — the only code that speaks Redis:
//!   - `broker::types` — what is sent, delivered and settled;
//!   - `broker::send`, `fetch`, `settle`, `admin`, `schedule` — one `impl Broker` each;
//!   - `broker::scripts` — one typed wrapper per Lua script, and the names and codes Rust and Lua share;
//!   - `broker/lua/` — every multi-step change as one atomic script (plain
//!     appends and plain reads of new entries use MULTI/EXEC instead; see `broker`);
//!   - `broker::coalesce` — concurrent unary Sends sharing one Redis call;
//!   - `broker::dispatch` — fan-out by credit: `ledger` (pure), `reader` (plan, fetch, deliver, block), `subscription`;
//!   - `broker::redis` — pooled, pipelined connections, and `Waiter`, the blocking wait for appends;
//!   - `broker::background` — the scheduler, retention and gauge tasks;
//!   - `broker::envelope` — LeanMQ's `data` JSON envelope; `broker::receipt` — signed delivery receipts and the keys they are signed with.
//! - [`auth`] — bearer tokens (hashes in a file) and the one place that decides per-path permissions.
//! - [`listen`] — the listener's connections: handshake timeout, caps in all and per source.
//! - [`tls`] — rustls for the listener, reloadable on SIGHUP.
//! - [`telemetry`] — logs and optional OTLP trace export (`otlp` feature).
//! - [`error`] — the one error enum and its one mapping to `tonic::Status`.
//! - [`console`] — the web console (`--console-listen`): server-rendered pages
//!   over the Admin service, called in-process with the caller's grant.
//! - [`http`] — the HTTP JSON ingress (`--http-listen`): `POST /v1/send/<path>` and
//!   `/v1/send-batch` into the same Send/SendBatch handlers, RFC 9457 problems,
//!   Standard Webhooks signed routes (docs/http.md).
//! - [`observe`] — Prometheus metrics; [`layers`] — tower layers (RPC metrics, load shedding, auth).
//! - [`backoff`] — retry delays, in one place.
//! - [`push`] — push delivery: subscriptions stored in Redis, a runner per
//!   replica POSTing each delivery signed per Standard Webhooks (docs/push.md).

pub mod auth;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod console;
pub mod embedded;
pub mod error;
pub mod http;
pub mod layers;
pub mod listen;
pub mod observe;
pub mod push;
pub mod queues;
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
