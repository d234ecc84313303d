//! The console's listener: plaintext, or TLS with the gRPC listener's
//! [`Tls`] (same certificate, same handshake timeout, same SIGHUP reload).
//! Both stop accepting at the drain and finish the requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;

use crate::shutdown::Drain;
use crate::tls::Tls;

/// Bind `at` and serve `app` on it, in tracked tasks, until the drain.
pub async fn serve(
    at: SocketAddr,
    tls: Option<Arc<Tls>>,
    app: axum::Router,
    drain: &Drain,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(at)
        .await
        .map_err(|e| format!("cannot listen on {at} (--console-listen): {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = drain.draining();
    let https = tls.is_some();
    let task = match tls {
        None => drain.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }),
        Some(tls) => {
            let incoming = TlsListener {
                handshaken: tls.incoming(listener, drain),
                addr,
            };
            drain.spawn(async move {
                axum::serve(incoming, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
    };
    drain.spawn(async move {
        match task.await {
            Ok(Ok(())) => tracing::info!("web console stopped"),
            Ok(Err(e)) => tracing::error!("web console: {e}"),
            Err(e) => tracing::error!("web console task: {e}"),
        }
    });
    let scheme = if https { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{addr}/"), "web console listening");
    Ok(addr)
}

/// Connections whose TLS handshake completed (handshakes run in
/// [`Tls::incoming`], each with a timeout, so a slow peer holds no slot).
struct TlsListener {
    handshaken: tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.handshaken.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (stream, peer);
                }
                Some(Err(e)) => tracing::debug!("console TLS accept: {e}"),
                // The acceptor ended (it only does when dropped): accept
                // nothing more; the drain ends the server.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
