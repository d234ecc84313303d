//! Assembles leanmqd: Redis connection layer → broker → domain façade
//! ([`Queues`]) → gRPC services (Broker, Admin, Health, Reflection) behind
//! one tower stack, and the drain that stops it all and waits for every task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::Auth;
use crate::broker::receipt::KeySource;
use crate::broker::{self, Broker};
use crate::config::Config;
use crate::layers::UnaryBudget;
use crate::proto::admin_server::AdminServer;
use crate::proto::broker_server::BrokerServer;
use crate::queues::Queues;
use crate::rpc::admin::AdminService;
use crate::rpc::prefixes::{MultiAdmin, MultiBroker, Served};
use crate::rpc::{BrokerService, EdgeSettings};
use crate::shutdown::Drain;
use crate::tls::Tls;

/// Name under which health reports the broker (and "" for the server).
const BROKER_SERVICE: &str = "leanmq.v1.Broker";
const ADMIN_SERVICE: &str = "leanmq.v1.Admin";

/// Largest request metadata (all HTTP/2 headers of a call) accepted; more
/// is refused by HTTP/2 itself (status 431) before any gRPC handling.
pub const MAX_METADATA_BYTES: u32 = 64 << 10;

/// What the gRPC server future is, once built.
type ServeFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
>;

/// A running leanmqd.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// Where `--health-listen` bound, when set.
    pub health_addr: Option<SocketAddr>,
    /// Where `--console-listen` bound, when set.
    pub console_addr: Option<SocketAddr>,
    /// Where `--http-listen` bound, when set.
    pub http_addr: Option<SocketAddr>,
    drain: Drain,
    task: tokio::task::JoinHandle<Result<(), String>>,
    /// How long the drain may take, server and tasks together.
    grace: Duration,
    /// TLS files and tokens, re-read by [`Running::reload`] (SIGHUP).
    tls: Option<Arc<Tls>>,
    auth: Arc<Auth>,
}

impl Running {
    /// Re-read the TLS certificate, key and client CA and the tokens file.
    /// Connections and streams already open are untouched; on any error
    /// what is in force stays in force.
    pub fn reload(&self) -> Result<(), String> {
        let tls = self.tls.as_ref().map(|t| t.reload()).unwrap_or(Ok(()));
        let auth = self.auth.reload();
        match (tls, auth) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        }
    }

    /// Start the drain without waiting for it.
    pub fn drain(&self) {
        self.drain.trigger();
    }

    /// Drain and wait until the server and every task have stopped.
    pub async fn stop(self) -> Result<(), String> {
        self.drain.trigger();
        self.wait().await
    }

    /// Wait until the server stops (after a drain), then for every tracked
    /// task, all within `--shutdown-grace` of the drain's start.
    pub async fn wait(self) -> Result<(), String> {
        let served = self.task.await.map_err(|e| format!("server task: {e}"))?;
        self.drain.wait(self.grace).await;
        served
    }
}

/// Bind `cfg.listen` and serve, with Redis at `redis_url`.
pub async fn start(cfg: &Config, redis_url: &str) -> Result<Running, String> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    serve(cfg, redis_url, listener).await
}

/// Serve on an already-bound listener.
pub async fn serve(
    cfg: &Config,
    redis_url: &str,
    listener: TcpListener,
) -> Result<Running, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    crate::tls::install_crypto();
    let tls = match cfg.tls_files() {
        Some(files) => Some(Arc::new(Tls::load(files)?)),
        None => None,
    };
    let auth = Arc::new(load_auth(cfg)?);
    let drain = Drain::new();
    // One broker (its own Redis lanes, readers and background tasks) and
    // façade per served prefix, the default first; `rpc::prefixes` picks
    // one per request.
    let mut prefixed: Vec<(String, Arc<Queues>)> = Vec::with_capacity(cfg.prefix.len());
    let mut default_broker = None;
    // The replica's unread bytes are counted once, across every prefix.
    let budget = broker::dispatch::Budget {
        per_stream: cfg.max_unread_bytes_per_stream,
        replica: broker::dispatch::Unread::new(cfg.max_unread_bytes),
        largest: cfg.max_payload_bytes + cfg.max_headers_bytes,
    };
    for prefix in &cfg.prefix {
        let broker = Arc::new(build_broker(cfg, redis_url, prefix)?);
        if cfg.wait_aof && default_broker.is_none() {
            broker.check_waitaof().await.map_err(|e| e.to_string())?;
        }
        broker::background::spawn(broker.clone(), retention(cfg), &drain);
        let queues = Queues::new(broker.clone(), budget.clone(), &drain);
        prefixed.push((prefix.clone(), queues));
        default_broker.get_or_insert(broker);
    }
    let broker = default_broker.ok_or("no --prefix to serve")?;
    let push_policy = Arc::new(cfg.push_policy());
    start_push(cfg, &prefixed, &push_policy, &drain);
    let (reporter, health_svc) = tonic_health::server::health_reporter();
    for name in ["", BROKER_SERVICE] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    drain.spawn(watch_redis(broker.clone(), reporter.clone(), drain.clone()));
    let health_addr = serve_health_only(cfg, Routes::new(health_svc.clone()), &drain).await?;
    // One receipt key for every prefix, kept in the default prefix's Redis.
    let receipts = Arc::new(KeySource::new(
        cfg.receipt_keys()?,
        broker.clone(),
        cfg.accept_unsigned_receipts,
    ));
    drain.spawn(receipts.clone().keep_shared(drain.clone()));
    if cfg.accept_unsigned_receipts {
        tracing::warn!("--accept-unsigned-receipts: receipts anyone can forge are taken; turn it off once every replica signs");
    }
    let console_addr = match cfg.console_listen {
        Some(listen) => {
            Some(start_console(listen, &prefixed, &push_policy, &auth, &tls, &drain).await?)
        }
        None => None,
    };
    let unary = UnaryBudget::new(cfg.max_concurrent_rpcs);
    let (routes, multi) = services(cfg, prefixed, receipts, &push_policy, &unary)?;
    let routes = routes.add_service(health_svc);
    let http_addr = start_http(cfg, multi, &auth, &tls, &unary, &drain).await?;
    let shed = crate::layers::ShedLayer::new(unary);
    let serving = serving(
        cfg,
        &auth,
        shed,
        routes,
        listener,
        tls.clone(),
        reporter,
        &drain,
    );
    let task = tokio::spawn(until_drained(serving, drain.clone(), cfg.shutdown_grace));
    tracing::info!(%addr, tls = tls.is_some(), auth = auth.enabled(), "leanmqd listening");
    Ok(Running {
        addr,
        health_addr,
        console_addr,
        http_addr,
        drain,
        task,
        grace: cfg.shutdown_grace,
        tls,
        auth,
    })
}

/// Each prefix's push runner (`push::worker`), tracked by the drain.
fn start_push(
    cfg: &Config,
    prefixed: &[(String, Arc<Queues>)],
    policy: &Arc<crate::push::ssrf::Policy>,
    drain: &Drain,
) {
    if policy.allow_private {
        tracing::warn!("--push-allow-private: push subscriptions may reach loopback, private and metadata addresses");
    }
    for (_, queues) in prefixed {
        let runner = crate::push::worker::Runner {
            queues: queues.clone(),
            policy: policy.clone(),
            poll: cfg.push_poll_interval,
            drain: drain.clone(),
        };
        drain.spawn(runner.run());
    }
}

/// `--console-listen`: the web console, over the default prefix's Admin.
async fn start_console(
    listen: SocketAddr,
    prefixed: &[(String, Arc<Queues>)],
    push_policy: &Arc<crate::push::ssrf::Policy>,
    auth: &Arc<Auth>,
    tls: &Option<Arc<Tls>>,
    drain: &Drain,
) -> Result<SocketAddr, String> {
    let (_, queues) = prefixed.first().ok_or("no --prefix to serve")?;
    crate::console::start(
        crate::console::Console {
            listen,
            admin: Arc::new(AdminService::new(queues.clone(), push_policy.clone())),
            auth: auth.clone(),
            tls: tls.clone(),
        },
        drain,
    )
    .await
}

/// `--http-listen`: the HTTP JSON ingress, over the same Broker service.
async fn start_http(
    cfg: &Config,
    broker: Arc<MultiBroker>,
    auth: &Arc<Auth>,
    tls: &Option<Arc<Tls>>,
    unary: &UnaryBudget,
    drain: &Drain,
) -> Result<Option<SocketAddr>, String> {
    let Some(listen) = cfg.http_listen else {
        return Ok(None);
    };
    crate::http::start(
        crate::http::Ingress {
            listen,
            broker,
            auth: auth.clone(),
            tls: tls.clone(),
            limits: listen_limits(cfg),
            unary: unary.clone(),
            max_payload_bytes: cfg.max_payload_bytes,
            max_batch_body_bytes: max_message_bytes(cfg),
            max_batch: cfg.max_batch,
            request_timeout: cfg.http_request_timeout,
            signed: cfg.signed_routes()?,
        },
        drain,
    )
    .await
    .map(Some)
}

/// Handshake timeout and connection caps, for each listener.
fn listen_limits(cfg: &Config) -> crate::listen::Limits {
    crate::listen::Limits::fitted(
        cfg.handshake_timeout,
        cfg.max_connections,
        cfg.max_connections_per_source,
        crate::listen::soft_nofile(),
    )
}

fn load_auth(cfg: &Config) -> Result<Auth, String> {
    match &cfg.auth_tokens {
        Some(path) => Auth::from_file(path),
        None => {
            tracing::warn!("auth is OFF: any client may send, subscribe and administer every path; set --auth-tokens for a shared deployment");
            Ok(Auth::off())
        }
    }
}

fn retention(cfg: &Config) -> broker::background::Retention {
    broker::background::Retention {
        max_age: cfg.retention_max_age,
        interval: cfg.retention_interval,
        max_len: cfg.max_len,
        group_idle_expiry: cfg.group_idle_expiry,
        sample_gauges: cfg.metrics_listen.is_some(),
    }
}

fn build_broker(cfg: &Config, redis_url: &str, prefix: &str) -> Result<Broker, String> {
    let redis_ca = match &cfg.redis_tls_ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| format!("cannot read --redis-tls-ca {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let redis = broker::redis::Redis::new(redis_url, cfg.redis_lanes, cfg.redis_timeout, redis_ca)
        .map_err(|e| e.to_string())?;
    Ok(Broker::new(
        broker::Settings {
            prefix: prefix.to_string(),
            max_attempts: cfg.max_attempts,
            retry_min: cfg.retry_min,
            retry_max: cfg.retry_max,
            orphan_timeout: cfg.orphan_timeout,
            dedup_window: cfg.dedup_window,
            max_queues: cfg.max_queues,
            max_groups_per_queue: cfg.max_groups_per_queue,
            allow_colliding_paths: cfg.allow_colliding_paths,
            wait_replicas: cfg.wait_replicas,
            wait_timeout: cfg.wait_timeout,
            wait_rules: cfg.wait_rules().map_err(|e| e.to_string())?,
            wait_aof: cfg.wait_aof,
        },
        redis,
    ))
}

/// `--health-listen`: gRPC health alone, in plaintext, for probes.
async fn serve_health_only(
    cfg: &Config,
    health: Routes,
    drain: &Drain,
) -> Result<Option<SocketAddr>, String> {
    let Some(at) = cfg.health_listen else {
        return Ok(None);
    };
    let l = TcpListener::bind(at)
        .await
        .map_err(|e| format!("cannot listen on {at} (--health-listen): {e}"))?;
    let bound = l.local_addr().map_err(|e| e.to_string())?;
    let health_only = tonic::transport::Server::builder()
        .add_routes(health)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(l),
            drain.draining(),
        );
    drain.spawn(async move {
        if let Err(e) = health_only.await {
            tracing::error!("health listener: {e}");
        }
    });
    tracing::info!(addr = %bound, "gRPC health (plaintext) listening");
    Ok(Some(bound))
}

/// Broker, Admin and reflection, each prefix's façade behind one service.
fn services(
    cfg: &Config,
    prefixed: Vec<(String, Arc<Queues>)>,
    receipts: Arc<KeySource>,
    push_policy: &Arc<crate::push::ssrf::Policy>,
    unary: &UnaryBudget,
) -> Result<(Routes, Arc<MultiBroker>), String> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| e.to_string())?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| e.to_string())?;
    let max_request = max_message_bytes(cfg);
    let (default_prefix, default_queues) =
        prefixed.first().cloned().ok_or("no --prefix to serve")?;
    let first = BrokerService::new(default_queues, edge_settings(cfg, unary), receipts);
    let mut brokers = Vec::with_capacity(prefixed.len());
    let mut admins = Vec::with_capacity(prefixed.len());
    for (prefix, queues) in &prefixed {
        admins.push((
            prefix.clone(),
            AdminService::new(queues.clone(), push_policy.clone()),
        ));
        if *prefix != default_prefix {
            brokers.push((prefix.clone(), first.sibling(queues.clone())));
        }
    }
    brokers.insert(0, (default_prefix, first));
    let multi = Arc::new(MultiBroker::new(Served::new(brokers)));
    let broker_svc = BrokerServer::from_arc(multi.clone())
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_request);
    let routes = Routes::new(broker_svc)
        .add_service(AdminServer::new(MultiAdmin::new(Served::new(admins))))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((routes, multi))
}

/// The gRPC message limit, both ways: room for the largest payload.
fn max_message_bytes(cfg: &Config) -> usize {
    (cfg.max_payload_bytes + (1 << 20)).max(32 << 20)
}

fn edge_settings(cfg: &Config, unary: &UnaryBudget) -> EdgeSettings {
    EdgeSettings {
        max_payload_bytes: cfg.max_payload_bytes,
        max_headers_bytes: cfg.max_headers_bytes,
        max_streams_per_connection: cfg.max_streams_per_connection,
        max_subscriptions: cfg.max_subscriptions,
        max_batch: cfg.max_batch,
        publish_window: cfg.publish_window,
        default_lease: cfg.ack_deadline,
        // Leave room for the reply's framing beyond the deliveries' own bytes.
        max_reply_bytes: max_message_bytes(cfg) - (256 << 10),
        max_long_polls_per_connection: cfg.max_long_polls_per_connection,
        max_long_polls_per_token: cfg.max_long_polls_per_token,
        unary: unary.clone(),
    }
}

/// The services behind one tower stack, served on `listener` until the
/// drain starts (health then turns NOT_SERVING) and in-flight calls end.
#[allow(clippy::too_many_arguments)]
fn serving(
    cfg: &Config,
    auth: &Arc<Auth>,
    shed: crate::layers::ShedLayer,
    routes: Routes,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    reporter: HealthReporter,
    drain: &Drain,
) -> ServeFuture {
    let on_drain = drain.draining();
    let signal = async move {
        on_drain.await;
        for name in ["", BROKER_SERVICE] {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!("draining: health NOT_SERVING, streams ending");
    };
    let router = tonic::transport::Server::builder()
        // gRPC-Web (HTTP/1.1 and HTTP/2), so a browser can call Broker and
        // Admin: translated to gRPC before metrics, shedding and auth.
        .accept_http1(true)
        .layer(
            tower::ServiceBuilder::new()
                .option_layer(crate::layers::grpc_web_cors(&cfg.grpc_web_allow_origin))
                .layer(crate::layers::GrpcWebOnlyOnHttp1Layer)
                .layer(tonic_web::GrpcWebLayer::new())
                .layer(crate::layers::RpcMetricsLayer)
                .layer(shed)
                .layer(crate::layers::AuthLayer { auth: auth.clone() }),
        )
        .tcp_nodelay(true)
        // Room for metadata past hyper's 16 KiB default, so an oversized
        // bearer token reaches auth and gets a clear UNAUTHENTICATED
        // instead of a bare HTTP 431.
        .http2_max_header_list_size(MAX_METADATA_BYTES)
        // Subscribe streams per connection are counted (and refused with a
        // clear status) by the Subscribe edge; this HTTP/2 cap leaves room
        // above it for unary calls on the same connection.
        .max_concurrent_streams(Some(
            u32::try_from(cfg.max_streams_per_connection + 1024).unwrap_or(u32::MAX),
        ))
        // A subscriber whose connection died without a close is noticed
        // within interval + timeout (~15 s by default); its streams end and
        // its leases run out for others.
        .http2_keepalive_interval(Some(cfg.keepalive_interval))
        .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .add_routes(routes);
    // Handshake timeout and connection caps (`listen`), which also sets
    // TCP_NODELAY: builder options apply only to listeners tonic binds.
    let limits = listen_limits(cfg);
    match tls {
        None => Box::pin(router.serve_with_incoming_shutdown(
            crate::listen::plaintext(listener, limits, drain),
            signal,
        )),
        Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
            crate::listen::tls(listener, limits, tls, drain),
            signal,
        )),
    }
}

/// Serve until done, or until the grace period after the drain's start runs out.
async fn until_drained(serving: ServeFuture, drain: Drain, grace: Duration) -> Result<(), String> {
    tokio::select! {
        r = serving => r.map_err(|e| format!("grpc server: {e}")),
        _ = async { drain.draining().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "drain grace period over; exiting with connections still open");
            Ok(())
        }
    }
}

/// How often health pings Redis, at most: a `--redis-timeout` under twice
/// this pings every half timeout instead, so the next ping always starts
/// before the last answer's deadline has passed (else health would flip to
/// NOT_SERVING for a moment every round while Redis answers fine).
const PING_EVERY: Duration = Duration::from_secs(1);

/// Health follows Redis: NOT_SERVING once no PING has been answered for
/// `--redis-timeout`, SERVING again at the first answer after.
///
/// The deadline runs from the last answer, not from each ping's start: a
/// ping that hangs (Redis paused, a dead peer whose socket stays open, a
/// reconnect that waits on the pool) would otherwise add its own wait to
/// the cadence, and a reconnect can wait the timeout twice (pool, then
/// handshake). A refused connection flips at once.
async fn watch_redis(broker: Arc<Broker>, reporter: HealthReporter, drain: Drain) {
    let timeout = broker.redis.timeout();
    let every = PING_EVERY.min(timeout / 2);
    let mut serving = true;
    let mut answered = tokio::time::Instant::now();
    crate::observe::serving(serving);
    loop {
        let ping = tokio::time::timeout(timeout, broker.redis.ping());
        tokio::pin!(ping);
        let ok = loop {
            tokio::select! {
                r = &mut ping => break matches!(r, Ok(Ok(()))),
                _ = tokio::time::sleep_until(answered + timeout), if serving => {
                    set_health(&reporter, &drain, &mut serving, false).await;
                }
                _ = drain.draining() => return,
            }
        };
        if ok {
            answered = tokio::time::Instant::now();
        }
        set_health(&reporter, &drain, &mut serving, ok).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = drain.draining() => return,
        }
    }
}

/// Report `ok` as health (and the `leanmq_serving` gauge) when it changes.
async fn set_health(reporter: &HealthReporter, drain: &Drain, serving: &mut bool, ok: bool) {
    crate::observe::serving(ok);
    if ok == *serving || drain.is_draining() {
        return;
    }
    *serving = ok;
    let status = if ok {
        tracing::info!("redis reachable again: SERVING");
        ServingStatus::Serving
    } else {
        tracing::error!("redis unreachable: NOT_SERVING");
        ServingStatus::NotServing
    };
    for name in ["", BROKER_SERVICE, ADMIN_SERVICE] {
        reporter.set_service_status(name, status).await;
    }
}
