//! Cross-cutting tower layers, stacked in one `ServiceBuilder` in `server`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

use crate::observe;

/// Records `grpc_server_handling_seconds{grpc_service, grpc_method,
/// grpc_type, grpc_code}` for every call.
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = observe::method_label(req.uri().path());
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // Errors travel as "trailers-only" responses: grpc-status in the headers.
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(observe::code_name)
                    .unwrap_or("OK"),
                Err(_) => "INTERNAL",
            };
            observe::rpc(method, code, start.elapsed());
            r
        })
    }
}

/// gRPC health stays open to everyone: load balancers and Kubernetes probes
/// carry no token.
fn is_health(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// A Subscribe stream lives as long as its subscriber, so it is bounded by
/// stream limits, not by the in-flight call limit.
fn is_long_lived(path: &str) -> bool {
    path == "/leanmq.v1.Broker/Subscribe"
        || path == "/leanmq.v1.Broker/Publish"
        || path == "/grpc.health.v1.Health/Watch"
}

/// Receive is a unary call or a long poll depending on its `wait`, which
/// only the decoded request tells: its edge takes a [`UnaryBudget`] place
/// or a long-poll place itself (`rpc::long_poll`).
fn counted_by_its_edge(path: &str) -> bool {
    path == "/leanmq.v1.Broker/Receive"
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Answer a call with `status` without calling the service behind.
fn refuse<RB: Default + Send + 'static, E: Send + 'static>(
    status: tonic::Status,
) -> BoxFuture<http::Response<RB>, E> {
    Box::pin(async move { Ok(status.into_http()) })
}

/// HTTP/1.1 on the gRPC port is for gRPC-Web only: any other HTTP/1.x
/// request (a stray `GET /`, a scanner) is answered 415 with
/// `connection: close`, so it cannot keep a connection open idle. HTTP/2
/// passes untouched.
#[derive(Clone, Copy, Default)]
pub struct GrpcWebOnlyOnHttp1Layer;

impl<S> tower::Layer<S> for GrpcWebOnlyOnHttp1Layer {
    type Service = GrpcWebOnlyOnHttp1<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOnlyOnHttp1 { inner }
    }
}

#[derive(Clone)]
pub struct GrpcWebOnlyOnHttp1<S> {
    inner: S,
}

/// Is this a gRPC-Web request (or its CORS preflight)?
fn is_grpc_web<B>(req: &http::Request<B>) -> bool {
    let web = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"));
    web || req.method() == http::Method::OPTIONS
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcWebOnlyOnHttp1<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.version() < http::Version::HTTP_2 && !is_grpc_web(&req) {
            let mut resp = http::Response::new(RB::default());
            *resp.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return Box::pin(async move { Ok(resp) });
        }
        Box::pin(self.inner.call(req))
    }
}

/// Is `o` a web origin as browsers send it (`https://host[:port]`, no
/// path), or `*`?
pub fn is_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && o.len() <= 256
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// CORS for gRPC-Web from `origins` (`--grpc-web-allow-origin`; none: no
/// CORS layer, same-origin pages only). Preflights are answered here,
/// before auth; the headers a gRPC-Web client sends and reads are allowed.
pub fn grpc_web_cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    let h = http::HeaderName::from_static;
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([http::Method::POST, http::Method::OPTIONS])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::AUTHORIZATION,
                h("x-grpc-web"),
                h("x-user-agent"),
                h("grpc-timeout"),
                h("traceparent"),
            ])
            .expose_headers([
                h("grpc-status"),
                h("grpc-message"),
                h("grpc-status-details-bin"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Authenticates every call but health: a missing or unknown bearer token
/// is UNAUTHENTICATED, a token over its rate RESOURCE_EXHAUSTED. The
/// caller's [`crate::auth::Grant`] goes into the request extensions, where
/// the RPC edge asks it about paths.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: std::sync::Arc<crate::auth::Auth>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: std::sync::Arc<crate::auth::Auth>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !is_health(req.uri().path()) {
            let grant = self
                .auth
                .authenticate(req.headers().get("authorization").map(|v| v.as_bytes()))
                .and_then(|g| g.take().map(|()| g));
            match grant {
                Ok(g) => {
                    req.extensions_mut().insert(g);
                }
                Err(e) => return refuse(e.into()),
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// The places of `--max-concurrent-rpcs`: one semaphore shared by every
/// connection, taken by [`ShedLayer`] for most calls and by the Receive
/// edge for a Receive that does not wait.
#[derive(Clone, Debug)]
pub struct UnaryBudget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// As configured, for the refusal message.
    limit: usize,
}

impl UnaryBudget {
    pub fn new(limit: usize) -> Self {
        UnaryBudget {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// A place for one call, held until the permit drops; `None` (counted
    /// as shed) when every place is taken.
    pub fn try_take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = self.permits.clone().try_acquire_owned().ok();
        if p.is_none() {
            observe::shed();
        }
        p
    }

    /// What a shed call is told.
    pub fn refusal(&self) -> String {
        format!(
            "leanmqd is at its limit of {} calls in flight (--max-concurrent-rpcs); retry with backoff",
            self.limit
        )
    }
}

/// Load shedding: at most `limit` unary calls in flight on this replica;
/// one more is answered RESOURCE_EXHAUSTED at once instead of queueing, so
/// an overloaded replica stays responsive and clients back off or go to
/// another replica. Long-lived streams (Subscribe, Publish, health Watch) are
/// bounded separately and pass by, and so does Receive, whose edge counts
/// it (see `counted_by_its_edge`).
///
/// The limit is tower's: each limited call goes through
/// `LoadShed<ConcurrencyLimit<_>>` over the [`UnaryBudget`]'s semaphore.
/// `ConcurrencyLimit` takes its permit when polled ready and
/// `LoadShed` turns "not ready" into an immediate `Overloaded`, which this
/// layer answers as a gRPC status (tower would surface it as an error).
#[derive(Clone)]
pub struct ShedLayer {
    budget: UnaryBudget,
}

impl ShedLayer {
    pub fn new(budget: UnaryBudget) -> Self {
        ShedLayer { budget }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_long_lived(req.uri().path()) || counted_by_its_edge(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The service polled ready is the one that serves; a clone stays.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let limited =
            tower::load_shed::LoadShed::new(tower::limit::ConcurrencyLimit::with_semaphore(
                ready,
                self.layer.budget.permits.clone(),
            ));
        let budget = self.layer.budget.clone();
        Box::pin(async move {
            match tower::ServiceExt::oneshot(limited, req).await {
                Ok(resp) => Ok(resp),
                Err(e) if e.is::<tower::load_shed::error::Overloaded>() => {
                    observe::shed();
                    Ok(tonic::Status::resource_exhausted(budget.refusal()).into_http())
                }
                // LoadShed boxes the inner error; give back its own type.
                Err(e) => match e.downcast::<S::Error>() {
                    Ok(inner) => Err(*inner),
                    Err(other) => Ok(tonic::Status::internal(other.to_string()).into_http()),
                },
            }
        })
    }
}
