//! The pooled connection layer.
//!
//! - **Lanes:** a few long-lived multiplexed connections, taken from a
//!   deadpool-redis pool, shared by every request. Concurrent Sends and Acks
//!   on one lane are pipelined by redis-rs, which is what lets one leanmqd
//!   go far past the ~65k ops/s of a pool checkout per command. A lane whose
//!   connection breaks is dropped and refilled from the pool on next use.
//! - **Redis Cluster** (`redis+cluster://`): lanes come from
//!   deadpool-redis's cluster pool and route each command to the node of
//!   its keys; every key of a queue shares one hash slot (see `routing`).
//! - **Blocking waits** (`wait`, `watch`): one `XREAD BLOCK` per replica, on
//!   a connection with no response timeout, watches every stream a reader
//!   waits on (on a Cluster, each reader's [`Waiter`] blocks on its own), so
//!   a blocked read never holds up anyone else's command and the number of
//!   blocking connections does not grow with queues or groups.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Connection, Manager, Pool};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncConnectionConfig, Cmd, RedisFuture, Value};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

mod wait;
mod watch;
pub use wait::{Waited, Waiter};

/// One Redis connection: to a single server, or to a Redis Cluster (which
/// routes each command to the node holding its keys).
#[derive(Clone)]
pub enum Conn {
    /// With a reply timeout to apply here, when the connection has none of
    /// its own (Sentinel-made connections).
    Single(MultiplexedConnection, Option<Duration>),
    /// With the reply timeout to apply (`None` for blocking reads).
    Cluster(ClusterConnection, Option<Duration>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c, t) => within(*t, c.req_packed_command(cmd)),
            Conn::Cluster(c, t) => within(*t, c.req_packed_command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c, t) => within(*t, c.req_packed_commands(cmd, offset, count)),
            Conn::Cluster(c, t) => within(*t, c.req_packed_commands(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Bound a cluster call by the reply timeout, as single-server connections are.
fn within<'a, T: Send + 'a>(t: Option<Duration>, fut: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    match t {
        None => fut,
        Some(t) => Box::pin(async move {
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "redis reply timed out",
                ))),
            }
        }),
    }
}

impl Conn {
    /// Run a command that names no key (`CLIENT ID`, `CLIENT UNBLOCK`) on
    /// the server that holds `key`.
    pub async fn on_node_of(&mut self, key: &str, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(..) => cmd.query_async(self).await,
            Conn::Cluster(c, _) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key.as_bytes(), SlotAddr::Master),
                ));
                c.route_command(cmd.clone(), route).await
            }
        }
    }
}

/// A deadpool-redis pool (single, sentinel or cluster) for `lanes` lanes:
/// room for a replacement per lane, and every wait bounded by `timeout`.
macro_rules! lane_pool {
    ($pool:ty, $manager:expr, $lanes:expr, $timeout:expr) => {
        <$pool>::builder($manager)
            .max_size($lanes.max(1) * 2)
            .wait_timeout(Some($timeout))
            .create_timeout(Some($timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Internal(format!("redis pool: {e}")))?
    };
}

/// Where the data lives.
enum Backend {
    Single {
        /// Opens the dedicated blocking connections.
        client: Box<redis::Client>,
        /// Creates and health-checks the lane connections.
        pool: Pool,
    },
    Sentinel {
        /// Finds the current master for the dedicated blocking connections.
        client: Box<Mutex<redis::sentinel::SentinelClient>>,
        /// deadpool-redis's sentinel pool: lane connections to the master.
        pool: deadpool_redis::sentinel::Pool,
    },
    Cluster {
        /// Opens the dedicated blocking connections (no reply timeout).
        client: Box<redis::cluster::ClusterClient>,
        /// deadpool-redis's cluster pool: creates the lane connections.
        pool: deadpool_redis::cluster::Pool,
    },
}

/// Shared access to Redis.
pub struct Redis {
    backend: Backend,
    /// The shared pipelined connections; `None` until first use or after a failure.
    lanes: Vec<Mutex<Option<Conn>>>,
    /// Round-robin cursor over `lanes`.
    next: AtomicUsize,
    /// Reply timeout for lane commands; a slower reply is UNAVAILABLE.
    timeout: Duration,
    /// The one blocking read every reader shares (not on a Cluster).
    watch: watch::Watch,
}

/// A lane connection, with the lane it came from so a failure can retire it.
pub struct LaneConn {
    pub conn: Conn,
    lane: usize,
    /// When the call began, for the Redis latency histogram.
    started: std::time::Instant,
}

/// The parts of a `redis+sentinel://[user:pass@]host:port[,host:port…]/master` URL.
pub struct SentinelUrl {
    /// The sentinels, as `redis://host:port`.
    pub sentinels: Vec<String>,
    /// The monitored master's name.
    pub master: String,
    /// ACL user and password for the data nodes.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Parse a `redis+sentinel://` URL; `None` for any other URL.
pub fn sentinel_parts(url: &str) -> Option<SentinelUrl> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let (hosts, master) = rest.rsplit_once('/')?;
    let (auth, hosts) = match hosts.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, hosts),
    };
    let (user, pass) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
        Some((u, p)) => (
            (!u.is_empty()).then(|| u.to_string()),
            (!p.is_empty()).then(|| p.to_string()),
        ),
        None => (None, None),
    };
    let sentinels = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    Some(SentinelUrl {
        sentinels,
        master: master.to_string(),
        username: user,
        password: pass,
    })
}

/// The node URLs of a `redis+cluster://[user:pass@]host:port[,host:port…]`
/// (or `rediss+cluster://`) URL; `None` for any other URL.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        ("redis", r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        ("rediss", r)
    } else {
        return None;
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{auth}{h}"))
            .collect(),
    )
}

impl Redis {
    /// `tls_ca`: a PEM CA bundle to verify a `rediss://` server with,
    /// instead of the system's roots.
    pub fn new(
        url: &str,
        lanes: usize,
        timeout: Duration,
        tls_ca: Option<Vec<u8>>,
    ) -> Result<Self> {
        let bad_url = |e: redis::RedisError| Error::invalid(format!("redis url: {e}"));
        let certs = |ca: Vec<u8>| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        if tls_ca.is_some() {
            crate::tls::install_crypto();
        }
        let backend = if let Some(parts) = sentinel_parts(url) {
            sentinel_backend(parts, lanes, timeout)?
        } else if let Some(nodes) = cluster_nodes(url) {
            if nodes.is_empty() {
                return Err(Error::invalid("redis+cluster:// URL names no node"));
            }
            let mut blocking = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(timeout);
            if let Some(ca) = tls_ca {
                blocking = blocking.certs(certs(ca));
            }
            let manager = deadpool_redis::cluster::Manager::new(nodes, false).map_err(bad_url)?;
            let pool = lane_pool!(deadpool_redis::cluster::Pool, manager, lanes, timeout);
            Backend::Cluster {
                client: Box::new(blocking.build().map_err(bad_url)?),
                pool,
            }
        } else {
            let client = match tls_ca {
                None => redis::Client::open(url).map_err(bad_url)?,
                Some(ca) => redis::Client::build_with_tls(url, certs(ca)).map_err(bad_url)?,
            };
            let cfg = AsyncConnectionConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout));
            let manager = Manager::new_with_config(client.get_connection_info().clone(), cfg)
                .map_err(bad_url)?;
            let pool = lane_pool!(Pool, manager, lanes, timeout);
            Backend::Single {
                client: Box::new(client),
                pool,
            }
        };
        Ok(Redis {
            backend,
            lanes: (0..lanes.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
            watch: Default::default(),
        })
    }

    /// True when the data lives in a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A fresh lane connection from the pool.
    async fn open_lane(&self) -> Result<Conn> {
        let r = match &self.backend {
            Backend::Single { pool, .. } => pool
                .get()
                .await
                .map(|c| Conn::Single(Connection::take(c), None)),
            Backend::Sentinel { pool, .. } => pool.get().await.map(|c| {
                Conn::Single(
                    deadpool_redis::sentinel::Connection::take(c),
                    Some(self.timeout),
                )
            }),
            Backend::Cluster { pool, .. } => pool.get().await.map(|c| {
                Conn::Cluster(
                    deadpool_redis::cluster::Connection::take(c),
                    Some(self.timeout),
                )
            }),
        };
        r.map_err(|e| {
            crate::observe::redis_error("unavailable");
            e.into()
        })
    }

    /// A shared connection for one command or script call.
    pub async fn lane(&self) -> Result<LaneConn> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let mut slot = self.lanes[lane].lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(LaneConn {
                conn: conn.clone(),
                lane,
                started: std::time::Instant::now(),
            });
        }
        let conn = self.open_lane().await?;
        *slot = Some(conn.clone());
        Ok(LaneConn {
            conn,
            lane,
            started: std::time::Instant::now(),
        })
    }

    /// Report the outcome of a lane call; a connection-level failure retires
    /// the lane's connection so the next call reconnects.
    pub async fn settle<T>(&self, lane: &LaneConn, r: redis::RedisResult<T>) -> Result<T> {
        crate::observe::redis_call(lane.started.elapsed());
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                // READONLY / MASTERDOWN: this server is no longer (or not
                // yet) the master after a failover; reconnect to find it.
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                    || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
                {
                    *self.lanes[lane.lane].lock().await = None;
                }
                let err = Error::from(e);
                crate::observe::redis_error(match &err {
                    Error::Unavailable(_) => "unavailable",
                    e if e.is_nogroup() => "nogroup",
                    _ => "other",
                });
                Err(err)
            }
        }
    }

    /// A dedicated connection for blocking reads (no reply timeout).
    pub async fn blocking(&self) -> Result<Conn> {
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.timeout));
        match &self.backend {
            Backend::Single { client, .. } => Ok(Conn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?,
                None,
            )),
            Backend::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?, None))
            }
            Backend::Sentinel { client, .. } => {
                // Asks the sentinels for the current master each time.
                let mut client = client.lock().await;
                Ok(Conn::Single(
                    client.get_async_connection_with_config(&cfg).await?,
                    None,
                ))
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// PING through a lane: is Redis reachable right now?
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.lane().await?;
        let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c.conn).await;
        self.settle(&c, r).await.map(|_| ())
    }
}

/// The Sentinel backend: lanes from deadpool-redis's sentinel pool, and a
/// sentinel client that finds the current master for blocking connections.
fn sentinel_backend(parts: SentinelUrl, lanes: usize, timeout: Duration) -> Result<Backend> {
    let bad_url = |e: redis::RedisError| Error::invalid(format!("redis url: {e}"));
    let SentinelUrl {
        sentinels,
        master,
        username,
        password,
    } = parts;
    if sentinels.is_empty() || master.is_empty() {
        return Err(Error::invalid(
                "redis+sentinel:// URL needs sentinels and a master name: redis+sentinel://host:port[,host:port]/mymaster",
            ));
    }
    let node = deadpool_redis::sentinel::SentinelNodeConnectionInfo {
        tls_mode: None,
        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
            db: 0,
            username: username.clone(),
            password: password.clone(),
            protocol: Default::default(),
        }),
    };
    let mut info = redis::RedisConnectionInfo::default();
    if let Some(u) = &username {
        info = info.set_username(u);
    }
    if let Some(p) = &password {
        info = info.set_password(p);
    }
    let client = redis::sentinel::SentinelClient::build(
        sentinels.clone(),
        master.clone(),
        Some(
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info),
        ),
        redis::sentinel::SentinelServerType::Master,
    )
    .map_err(bad_url)?;
    let manager = deadpool_redis::sentinel::Manager::new(
        sentinels,
        master,
        Some(node),
        deadpool_redis::sentinel::SentinelServerType::Master,
    )
    .map_err(bad_url)?;
    let pool = lane_pool!(deadpool_redis::sentinel::Pool, manager, lanes, timeout);
    Ok(Backend::Sentinel {
        client: Box::new(Mutex::new(client)),
        pool,
    })
}
