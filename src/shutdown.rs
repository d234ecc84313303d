//! Shutdown: SIGINT or SIGTERM starts a time-bounded drain.
//!
//! The drain is a cancellation plus waiting: health turns
//! NOT_SERVING, readers stop taking messages, Subscribe streams end with
//! UNAVAILABLE (giving back what they never sent), the gRPC server stops
//! accepting and finishes in-flight calls, every tracked task (readers,
//! the coalescer, background work, releases and dead-lettering) ends, and
//! after `--shutdown-grace` leanmqd exits regardless. Unacked deliveries stay leased in Redis and are
//! redelivered when their leases end.

use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// SIGINT and SIGTERM handlers. Registered by [`Signals::install`] before
/// leanmqd binds, so a signal that arrives while it starts still drains
/// instead of killing the process.
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    /// SIGHUP: re-read TLS files and tokens, keep serving.
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGINT or SIGTERM: drain and exit.
    Stop,
    /// SIGHUP: reload certificates and tokens.
    Reload,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Resolves on the next SIGINT, SIGTERM or SIGHUP.
    pub async fn recv(&mut self) -> SignalEvent {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => { tracing::info!("SIGINT: draining"); SignalEvent::Stop }
                _ = self.term.recv() => { tracing::info!("SIGTERM: draining"); SignalEvent::Stop }
                _ = self.hup.recv() => { tracing::info!("SIGHUP: reloading TLS files and tokens"); SignalEvent::Reload }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            SignalEvent::Stop
        }
    }
}

/// The drain, and every task leanmqd spawns.
///
/// `trigger` cancels one token every loop watches; every task is spawned
/// through [`Drain::spawn`] into one tracker, and [`Drain::wait`] waits for
/// all of them (bounded), so nothing still writes to Redis when the
/// embedded one is stopped.
#[derive(Clone, Default)]
pub struct Drain {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Start draining: every loop stops taking new work.
    pub fn trigger(&self) {
        self.cancel.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the drain has started.
    pub fn draining(&self) -> WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// Spawn a tracked task.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Wait, at most `grace`, for every tracked task to end; false when
    /// some were still running at the deadline.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                tasks = self.tracker.len(),
                ?grace,
                "drain grace period over with tasks still running"
            );
        }
        done
    }
}
