//! Assembles leanmqd: Redis connection layer → broker → dispatcher → gRPC
//! services (Broker, Health, Reflection) behind one tower stack, and the
//! drain that stops it all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::auth::Auth;
use crate::broker::dispatch::Dispatcher;
use crate::broker::{self, Broker};
use crate::config::Config;
use crate::proto::admin_server::AdminServer;
use crate::proto::broker_server::BrokerServer;
use crate::rpc::admin::AdminService;
use crate::rpc::{BrokerService, EdgeSettings};
use crate::shutdown::Drain;
use crate::tls::Tls;

/// Name under which health reports the broker (and "" for the server).
const BROKER_SERVICE: &str = "leanmq.v1.Broker";
const ADMIN_SERVICE: &str = "leanmq.v1.Admin";

/// A running leanmqd.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// Where `--health-listen` bound, when set.
    pub health_addr: Option<SocketAddr>,
    /// Where `--console-listen` bound, when set.
    pub console_addr: Option<SocketAddr>,
    drain: Drain,
    task: tokio::task::JoinHandle<Result<(), String>>,
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

    /// Drain and wait until the server has stopped.
    pub async fn stop(self) -> Result<(), String> {
        self.drain.trigger();
        self.wait().await
    }

    /// Wait until the server stops (after a drain).
    pub async fn wait(self) -> Result<(), String> {
        self.task.await.map_err(|e| format!("server task: {e}"))?
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
    let auth = Arc::new(match &cfg.auth_tokens {
        Some(path) => Auth::from_file(path)?,
        None => {
            tracing::warn!("auth is OFF: any client may send, subscribe and administer every path; set --auth-tokens for a shared deployment");
            Auth::off()
        }
    });
    let redis_ca = match &cfg.redis_tls_ca {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| format!("cannot read --redis-tls-ca {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let redis = broker::redis::Redis::new(redis_url, cfg.redis_lanes, cfg.redis_timeout, redis_ca)
        .map_err(|e| e.to_string())?;
    let broker = Arc::new(Broker::new(
        broker::Settings {
            prefix: cfg.prefix.clone(),
            max_attempts: cfg.max_attempts,
            retry_min: cfg.retry_min,
            retry_max: cfg.retry_max,
            orphan_timeout: cfg.orphan_timeout,
            dedup_window: cfg.dedup_window,
        },
        redis,
    ));
    let (drain, drain_rx) = Drain::new();
    broker::background::spawn(
        broker.clone(),
        broker::background::Retention {
            max_age: cfg.retention_max_age,
            interval: cfg.retention_interval,
            max_len: cfg.max_len,
            sample_gauges: cfg.metrics_listen.is_some(),
        },
        drain.subscribe(),
    );
    let admin_svc = AdminServer::new(AdminService::new(broker.clone()));
    let dispatcher = Dispatcher::new(broker.clone(), drain_rx);
    let service = BrokerService::new(
        dispatcher,
        EdgeSettings {
            max_payload_bytes: cfg.max_payload_bytes,
            max_headers_bytes: cfg.max_headers_bytes,
            max_streams_per_connection: cfg.max_streams_per_connection,
            max_subscriptions: cfg.max_subscriptions,
            max_batch: cfg.max_batch,
            default_lease: cfg.ack_deadline,
        },
    );
    let max_request = (cfg.max_payload_bytes + (1 << 20)).max(32 << 20);
    let broker_svc = BrokerServer::new(service)
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_request);

    let (reporter, health_svc) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(BROKER_SERVICE, ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    tokio::spawn(watch_redis(
        broker.clone(),
        reporter.clone(),
        drain.subscribe(),
    ));

    let health_addr = match cfg.health_listen {
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .map_err(|e| format!("cannot listen on {at} (--health-listen): {e}"))?;
            let bound = l.local_addr().map_err(|e| e.to_string())?;
            let mut on_drain = drain.subscribe();
            let health_only = tonic::transport::Server::builder()
                .add_service(health_svc.clone())
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(l),
                    async move {
                        let _ = on_drain.wait_for(|d| *d).await;
                    },
                );
            tokio::spawn(async move {
                if let Err(e) = health_only.await {
                    tracing::error!("health listener: {e}");
                }
            });
            tracing::info!(addr = %bound, "gRPC health (plaintext) listening");
            Some(bound)
        }
        None => None,
    };

    let console_addr = match cfg.console_listen {
        Some(listen) => Some(
            crate::console::start(
                crate::console::Console {
                    listen,
                    admin: Arc::new(AdminService::new(broker.clone())),
                    auth: auth.clone(),
                    tls: tls.clone(),
                },
                drain.subscribe(),
            )
            .await?,
        ),
        None => None,
    };

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| e.to_string())?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| e.to_string())?;

    let mut on_drain = drain.subscribe();
    let drain_reporter = reporter.clone();
    let signal = async move {
        let _ = on_drain.wait_for(|d| *d).await;
        drain_reporter
            .set_service_status(BROKER_SERVICE, ServingStatus::NotServing)
            .await;
        drain_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        tracing::info!("draining: health NOT_SERVING, streams ending");
    };
    let router = tonic::transport::Server::builder()
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::layers::RpcMetricsLayer)
                .layer(crate::layers::ShedLayer::new(cfg.max_concurrent_rpcs))
                .layer(crate::layers::AuthLayer { auth: auth.clone() }),
        )
        .tcp_nodelay(true)
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
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(broker_svc)
        .add_service(admin_svc);
    // Options on the builder apply only to listeners tonic binds itself; on
    // ours, TCP_NODELAY must be set here, or small trailing writes wait ~40 ms
    // for the client's delayed ACK.
    type ServeFuture = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>,
    >;
    let serve: ServeFuture = match &tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)));
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(tls.clone().incoming(listener), signal))
        }
    };

    let grace = cfg.shutdown_grace;
    let mut grace_rx = drain.subscribe();
    let task = tokio::spawn(async move {
        tokio::select! {
            r = serve => r.map_err(|e| format!("grpc server: {e}")),
            _ = async {
                let _ = grace_rx.wait_for(|d| *d).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "drain grace period over; exiting with connections still open");
                Ok(())
            }
        }
    });
    tracing::info!(%addr, tls = tls.is_some(), auth = auth.enabled(), "leanmqd listening");
    Ok(Running {
        addr,
        health_addr,
        console_addr,
        drain,
        task,
        tls,
        auth,
    })
}

/// Health follows Redis: NOT_SERVING while it is unreachable, SERVING again after.
async fn watch_redis(
    broker: Arc<Broker>,
    reporter: tonic_health::server::HealthReporter,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = drain.wait_for(|d| *d) => return,
        }
        let ok = broker.redis.ping().await.is_ok();
        if ok != serving && !*drain.borrow() {
            serving = ok;
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if ok {
                tracing::info!("redis reachable again: SERVING");
            } else {
                tracing::error!("redis unreachable: NOT_SERVING");
            }
            for name in ["", BROKER_SERVICE, ADMIN_SERVICE] {
                reporter.set_service_status(name, status).await;
            }
        }
    }
}
