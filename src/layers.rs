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
