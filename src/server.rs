//! Assembles leanmqd: Redis connection layer → broker → dispatcher → gRPC
//! services (Broker, Health, Reflection) behind one tower stack, and the
//! drain that stops it all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::broker::dispatch::Dispatcher;
use crate::broker::{self, Broker};
use crate::config::Config;
use crate::proto::admin_server::AdminServer;
use crate::proto::broker_server::BrokerServer;
use crate::rpc::admin::AdminService;
use crate::rpc::{BrokerService, EdgeSettings};
use crate::shutdown::Drain;

/// Name under which health reports the broker (and "" for the server).
const BROKER_SERVICE: &str = "leanmq.v1.Broker";
const ADMIN_SERVICE: &str = "leanmq.v1.Admin";

/// A running leanmqd.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    drain: Drain,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
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
    let redis = broker::redis::Redis::new(redis_url, cfg.redis_lanes, cfg.redis_timeout)
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
        .layer(tower::ServiceBuilder::new().layer(crate::layers::RpcMetricsLayer))
        .tcp_nodelay(true)
        // A subscriber whose connection died without a close is noticed
        // within ~15 s; its streams end and its leases run out for others.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(broker_svc)
        .add_service(admin_svc);
    // Options on the builder apply only to listeners tonic binds itself; on
    // ours, TCP_NODELAY must be set here, or small trailing writes wait ~40 ms
    // for the client's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let serve = router.serve_with_incoming_shutdown(incoming, signal);

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
    tracing::info!(%addr, "leanmqd listening");
    Ok(Running { addr, drain, task })
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
