//! Blocking waits for appends: `XREAD BLOCK` on a connection of its own,
//! which another task can cut short with `CLIENT UNBLOCK`.
//!
//! A [`Waiter`] is the seam between the fan-out and Redis: a reader asks it
//! to wait for entries after an id, for at most a while, unless told to stop
//! looking earlier. On a single Redis or behind Sentinel every reader's wait
//! goes to the one shared read of `watch`; on a Redis Cluster (where one
//! XREAD cannot span slots) each reader's `Waiter` keeps a connection of its
//! own.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Conn, Redis};

/// How often, and how long apart, a cut-short wait asks Redis to release its
/// blocked read before it just waits the read out. `CLIENT UNBLOCK` travels on
/// another connection, so it can reach Redis before the XREAD does, find
/// nothing blocked, and leave the read to block its whole length.
const UNBLOCK_TRIES: u32 = 50;
const UNBLOCK_RETRY: Duration = Duration::from_millis(2);

/// One blocking connection, opened on first use and after a failure.
#[derive(Default)]
pub struct Waiter {
    conn: Option<Conn>,
    /// Redis client id of `conn` (0: unknown), for `CLIENT UNBLOCK`.
    client_id: Arc<AtomicI64>,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// Entries were appended, or the block ran out.
    Returned,
    /// `cut` fired: the caller has something to look at sooner.
    Cut,
    /// `stop` resolved.
    Stopped,
    /// The read failed; the connection is dropped and re-opened next time.
    Failed,
    /// No blocking connection could be opened; the caller should poll.
    NoConnection,
}

impl Redis {
    /// Wait until `stream` has an entry after `after_id`, for at most
    /// `block`, returning early when `cut` is notified or `stop` resolves.
    pub async fn wait_for_append(
        &self,
        w: &mut Waiter,
        stream: &str,
        after_id: &str,
        block: Duration,
        cut: &Notify,
        stop: impl Future<Output = ()>,
    ) -> Waited {
        if !self.is_cluster() {
            return self.wait_shared(stream, after_id, block, cut, stop).await;
        }
        let Some(mut c) = self.waiting_conn(w, stream).await else {
            return Waited::NoConnection;
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg(after_id);
        let limit = block + self.timeout();
        let (ended, result) = {
            let xread = tokio::time::timeout(limit, cmd.query_async::<redis::Value>(&mut c));
            tokio::pin!(xread);
            tokio::select! {
                r = &mut xread => (Waited::Returned, r),
                _ = cut.notified() => {
                    let id = w.client_id.load(Ordering::Relaxed);
                    (Waited::Cut, self.cut_short(stream, id, &mut xread).await)
                }
                _ = stop => return Waited::Stopped,
            }
        };
        match result {
            Ok(Ok(_)) => {
                w.conn = Some(c);
                ended
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "blocking read failed; reconnecting");
                Waited::Failed
            }
            Err(_) => {
                tracing::warn!("blocking read timed out; reconnecting");
                Waited::Failed
            }
        }
    }

    /// The waiter's connection, opened (and its client id learnt) if needed.
    async fn waiting_conn(&self, w: &mut Waiter, stream: &str) -> Option<Conn> {
        if let Some(c) = w.conn.take() {
            return Some(c);
        }
        match self.blocking().await {
            Ok(mut c) => {
                // The id of the connection on the node that holds the stream.
                let id = c
                    .on_node_of(stream, redis::cmd("CLIENT").arg("ID"))
                    .await
                    .ok()
                    .and_then(|v| redis::from_redis_value::<i64>(v).ok());
                w.client_id.store(id.unwrap_or(0), Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no blocking connection; polling");
                None
            }
        }
    }

    /// Release a blocked read: `CLIENT UNBLOCK` until it finds the read
    /// blocked, or the read returns, then the read's result.
    async fn cut_short<F: Future + Unpin>(
        &self,
        stream: &str,
        client_id: i64,
        xread: &mut F,
    ) -> F::Output {
        let mut tries = 0;
        loop {
            tries += 1;
            if self.unblock(stream, client_id).await || tries >= UNBLOCK_TRIES {
                return xread.await;
            }
            if let Ok(r) = tokio::time::timeout(UNBLOCK_RETRY, &mut *xread).await {
                return r;
            }
        }
    }

    /// `CLIENT UNBLOCK` a blocked XREAD (it returns as if timed out).
    /// `stream` picks the node (in a cluster) the connection is on. True
    /// when the read was blocked and is now released.
    pub(super) async fn unblock(&self, stream: &str, client_id: i64) -> bool {
        if client_id == 0 {
            return false;
        }
        let Ok(mut lane) = self.lane().await else {
            return false;
        };
        let r = lane
            .conn
            .on_node_of(stream, redis::cmd("CLIENT").arg("UNBLOCK").arg(client_id))
            .await;
        matches!(self.settle(&lane, r).await, Ok(redis::Value::Int(1)))
    }
}
