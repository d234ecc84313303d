//! The pooled connection layer.
//!
//! - **Lanes:** a few long-lived multiplexed connections, taken from a
//!   deadpool-redis pool, shared by every request. Concurrent Sends and Acks
//!   on one lane are pipelined by redis-rs, which is what lets one leanmqd
//!   go far past the ~65k ops/s of a pool checkout per command. A lane whose
//!   connection breaks is dropped and refilled from the pool on next use.
//! - **Blocking connections:** each reader (one per queue and group) owns
//!   one connection with no response timeout for its `XREAD BLOCK`, so a
//!   blocked read never holds up anyone else's command.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Connection, Manager, Pool};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Shared access to Redis.
pub struct Redis {
    /// Opens the dedicated blocking connections.
    client: redis::Client,
    /// Creates and health-checks the lane connections.
    pool: Pool,
    /// The shared pipelined connections; `None` until first use or after a failure.
    lanes: Vec<Mutex<Option<MultiplexedConnection>>>,
    /// Round-robin cursor over `lanes`.
    next: AtomicUsize,
    /// Reply timeout for lane commands; a slower reply is UNAVAILABLE.
    timeout: Duration,
}

/// A lane connection, with the lane it came from so a failure can retire it.
pub struct LaneConn {
    pub conn: MultiplexedConnection,
    lane: usize,
    /// When the call began, for the Redis latency histogram.
    started: std::time::Instant,
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
        let client = match tls_ca {
            None => redis::Client::open(url).map_err(bad_url)?,
            Some(ca) => {
                crate::tls::install_crypto();
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca),
                    },
                )
                .map_err(bad_url)?
            }
        };
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        let manager =
            Manager::new_with_config(client.get_connection_info().clone(), cfg).map_err(bad_url)?;
        let pool = Pool::builder(manager)
            .max_size(lanes.max(1) * 2)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Internal(format!("redis pool: {e}")))?;
        Ok(Redis {
            client,
            pool,
            lanes: (0..lanes.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            timeout,
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
        let conn = match self.pool.get().await {
            Ok(c) => Connection::take(c),
            Err(e) => {
                crate::observe::redis_error("unavailable");
                return Err(e.into());
            }
        };
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
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
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
    pub async fn blocking(&self) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.timeout));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?)
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
