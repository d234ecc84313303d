//! The web console (`--console-listen`): queues, consumers and dead letters
//! in the browser, server-rendered, with every asset compiled in.
//!
//! The console is a thin edge over the Admin gRPC service: it never touches
//! the broker. Each page builds `tonic::Request`s carrying the caller's
//! [`crate::auth::Grant`] (as the auth layer does for gRPC) and calls the
//! Admin implementation in-process through its generated trait, so what a
//! token may see and do is decided by the same code as over gRPC.
//!
//! ## Map
//! - [`routes`] — the axum router: one handler per page or action, the
//!   session gate and the security headers (CSP) on every response.
//! - [`api`] — the in-process Admin client: requests with the grant in their
//!   extensions; proto → [`view`] models at this edge.
//! - [`view`] — what the pages render (no prost types beyond `api`).
//! - [`pages`] — maud templates (escaped by default): layout, queues, a
//!   queue, dead letters, login, error; [`chart`] — the inline SVG chart.
//! - [`rates`] — the in-process sampler behind send/ack rates and the
//!   15-minute throughput chart (totals from [`crate::observe::tally`]).
//! - [`session`] — the HMAC-signed session cookie and CSRF tokens.
//! - [`error`] — the one mapping from a gRPC status (or a console check) to
//!   an HTTP status and page.
//! - [`assets`] — CSS and the small script, `include_str!`-ed.
//! - [`listen`] — plaintext or TLS (the gRPC listener's certificate), and
//!   the drain.

pub mod api;
pub mod assets;
pub mod chart;
pub mod error;
pub mod listen;
pub mod pages;
pub mod push;
pub mod rates;
pub mod routes;
pub mod session;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Auth;
use crate::proto::admin_server::Admin;
use crate::tls::Tls;

/// What the console runs on: the Admin implementation it calls in-process,
/// the auth that turns a session into a grant, and the listener settings.
pub struct Console {
    /// Where to listen (`--console-listen`).
    pub listen: SocketAddr,
    /// The Admin service, called through its trait (never the broker).
    pub admin: Arc<dyn Admin>,
    /// Tokens: with auth on, the console asks for one and uses its grant.
    pub auth: Arc<Auth>,
    /// The gRPC listener's TLS, when on: the console then serves HTTPS with
    /// the same certificate (and reloads with it on SIGHUP).
    pub tls: Option<Arc<Tls>>,
}

/// Shared state of the handlers.
pub(crate) struct Inner {
    pub admin: Arc<dyn Admin>,
    pub auth: Arc<Auth>,
    pub keys: session::Keys,
    /// Set the cookie's `Secure` attribute (console served over TLS).
    pub secure: bool,
    pub rates: Arc<rates::Rates>,
}

pub(crate) type State = Arc<Inner>;

/// Bind and serve until the drain; returns the bound address.
pub async fn start(console: Console, drain: &crate::shutdown::Drain) -> Result<SocketAddr, String> {
    crate::observe::tally::enable();
    let rates = Arc::new(rates::Rates::new());
    rates.clone().spawn(drain);
    let state: State = Arc::new(Inner {
        admin: console.admin,
        auth: console.auth.clone(),
        keys: session::Keys::random(),
        secure: console.tls.is_some(),
        rates,
    });
    let app = routes::router(state);
    let addr = listen::serve(console.listen, console.tls, app, drain).await?;
    if !console.auth.enabled() {
        tracing::warn!(%addr, "web console without --auth-tokens: anyone reaching it may requeue, delete and purge");
    }
    Ok(addr)
}
