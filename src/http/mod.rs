//! The HTTP JSON ingress (`--http-listen`; docs/http.md): a thin edge for
//! senders that speak plain HTTP — webhooks from third parties, `curl`,
//! serverless functions — beside the gRPC listener.
//!
//! `POST /v1/send/<path>` appends the body to that path's queue and
//! `POST /v1/send-batch` a JSON array atomically. Each request is turned
//! into the gRPC `SendRequest`s (`extract`) and makes one call into the
//! same Send/SendBatch handler the gRPC edge runs
//! ([`MultiBroker::send_as`]), so validation, grants, prefixes and the
//! [`crate::queues`] façade are the same code. Errors are RFC 9457
//! problems (`problem`), their status from [`crate::error::Error::http_status`].
//!
//! Same TLS certificate, tokens, load shedding (`--max-concurrent-rpcs`)
//! and connection caps as gRPC. A route given `--http-signed-route` takes
//! only Standard Webhooks signed requests ([`crate::push::signature::verify`]),
//! their `webhook-id` as the idempotency key.
//!
//! ## Map
//! - [`routes`] — the axum router and the two handlers; metrics by route template.
//! - [`extract`] — query string, `X-Leanmq-Header-*` and batch JSON → `SendRequest`.
//! - [`problem`] — `application/problem+json`, with `Retry-After` on 429/503.

pub mod extract;
pub mod problem;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::layers::UnaryBudget;
use crate::push::signature::Key;
use crate::rpc::prefixes::MultiBroker;
use crate::shutdown::Drain;
use crate::tls::Tls;

/// What the ingress runs on.
pub struct Ingress {
    /// Where to listen (`--http-listen`).
    pub listen: SocketAddr,
    /// The Broker service over every prefix, shared with the gRPC listener.
    pub broker: Arc<MultiBroker>,
    pub auth: Arc<Auth>,
    /// The gRPC listener's TLS, when on.
    pub tls: Option<Arc<Tls>>,
    /// Connection caps and the time a connection has to start (`listen`).
    pub limits: crate::listen::Limits,
    /// `--max-concurrent-rpcs`, shared with gRPC's load shedding.
    pub unary: UnaryBudget,
    /// `--max-payload-bytes`: the body of a single send.
    pub max_payload_bytes: usize,
    /// The body of a batch: the gRPC message limit.
    pub max_batch_body_bytes: usize,
    /// `--max-batch`.
    pub max_batch: usize,
    /// `--http-request-timeout`: the body's upload.
    pub request_timeout: Duration,
    /// `--http-signed-route`: normalized path → its key.
    pub signed: Vec<(String, Key)>,
}

/// Bind and serve until the drain; returns the bound address.
pub async fn start(ingress: Ingress, drain: &Drain) -> Result<SocketAddr, String> {
    let at = ingress.listen;
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| format!("cannot listen on {at} (--http-listen): {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let limits = ingress.limits;
    let tls = ingress.tls.clone();
    let app = routes::router(Arc::new(ingress));
    let stop = drain.draining();
    let task = match tls.clone() {
        None => {
            let incoming = crate::listen::http_plaintext(listener, limits, drain);
            drain.spawn(async move {
                axum::serve(crate::listen::Accepted::new(incoming, addr), app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
        Some(tls) => {
            let incoming = crate::listen::http_tls(listener, limits, tls, drain);
            drain.spawn(async move {
                axum::serve(crate::listen::Accepted::new(incoming, addr), app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
    };
    drain.spawn(async move {
        match task.await {
            Ok(Ok(())) => tracing::info!("HTTP ingress stopped"),
            Ok(Err(e)) => tracing::error!("HTTP ingress: {e}"),
            Err(e) => tracing::error!("HTTP ingress task: {e}"),
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{addr}/v1/send/"), "HTTP ingress listening");
    Ok(addr)
}
