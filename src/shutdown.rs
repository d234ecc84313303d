//! Shutdown: SIGINT or SIGTERM starts a time-bounded drain.
//!
//! The drain is a broadcast (`watch`) plus waiting: health turns
//! NOT_SERVING, readers stop taking messages, Subscribe streams end with
//! UNAVAILABLE (giving back what they never sent), the gRPC server stops
//! accepting and finishes in-flight calls, and after `--shutdown-grace`
//! leanmqd exits regardless. Unacked deliveries stay leased in Redis and are
//! redelivered when their leases end.

use tokio::sync::watch;

/// SIGINT and SIGTERM handlers. Registered by [`Signals::install`] before
/// leanmqd binds, so a signal that arrives while it starts still drains
/// instead of killing the process.
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => tracing::info!("SIGINT: draining"),
                _ = self.term.recv() => tracing::info!("SIGTERM: draining"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The drain broadcast: `trigger` once, every holder of a receiver sees it.
#[derive(Clone)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> (Drain, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (Drain { tx }, rx)
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}
