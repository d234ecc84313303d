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
