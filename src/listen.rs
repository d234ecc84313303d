//! The listener's incoming connections, guarded for a shared service.
//!
//! - **Handshake timeout** (`--handshake-timeout`): a connection must send
//!   the 24-byte HTTP/2 preface (under TLS: complete the TLS handshake and
//!   then send the preface) in time, or it is closed. Before this a socket that sent
//!   nothing stayed open for ever, and enough of them used up the file
//!   descriptors.
//! - **A cap on open connections** (`--max-connections`), lowered at start
//!   to what `RLIMIT_NOFILE` leaves after a reserve for Redis and files.
//! - **A cap per source address** (`--max-connections-per-source`; an IPv6
//!   /64 is one source), at most half the cap, so no single source can
//!   take every place.
//!
//! A connection over a cap is accepted and closed at once (the client
//! sees EOF), which frees its descriptor immediately; leaving it in the
//! kernel's backlog would only make the client time out. Each handshake
//! runs in its own task, so a slow one never holds up the next accept.
//!
//! Built from tokio's pieces: the preface read is given back to hyper by
//! `tokio::io::join` of a `Cursor` chained before the read half and the
//! write half; the cap is a tokio semaphore. The one hand-written part is
//! [`Conn`], the forwarding wrapper that keeps a connection's places for
//! as long as it is open and tells tonic its addresses.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::shutdown::Drain;
use crate::tls::Tls;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// File descriptors kept out of `--max-connections` for Redis lanes and
/// blocking connections, the metrics and health listeners, logs and TLS
/// files.
const FD_RESERVE: usize = 128;

/// A connection whose preface has been read: the preface is replayed to
/// hyper ahead of the rest of the stream.
pub type Plain =
    tokio::io::Join<tokio::io::Chain<io::Cursor<[u8; PREFACE_LEN]>, OwnedReadHalf>, OwnedWriteHalf>;

/// A TLS connection whose preface has been read, replayed the same way.
pub type Secure = tokio::io::Join<
    tokio::io::Chain<
        io::Cursor<[u8; PREFACE_LEN]>,
        tokio::io::ReadHalf<tokio_rustls::server::TlsStream<TcpStream>>,
    >,
    tokio::io::WriteHalf<tokio_rustls::server::TlsStream<TcpStream>>,
>;

/// The connection limits in force.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_per_source: usize,
}

impl Limits {
    /// The configured limits, with the cap lowered to fit the file
    /// descriptors this process may open (`soft_nofile`, when known) and
    /// the per-source cap to half of that. Each lowering is logged.
    pub fn fitted(
        handshake_timeout: Duration,
        max_connections: usize,
        max_per_source: usize,
        soft_nofile: Option<usize>,
    ) -> Limits {
        let mut cap = max_connections;
        if let Some(n) = soft_nofile {
            let room = n.saturating_sub(FD_RESERVE).max(n / 2).max(1);
            if room < cap {
                tracing::warn!(
                    configured = cap,
                    using = room,
                    nofile = n,
                    "--max-connections lowered to fit the file-descriptor limit (raise `ulimit -n` for more)"
                );
                cap = room;
            }
        }
        let half = (cap / 2).max(1);
        let mut per_source = max_per_source;
        if per_source > half {
            tracing::warn!(
                configured = per_source,
                using = half,
                "--max-connections-per-source lowered to half of --max-connections, so one source cannot take every place"
            );
            per_source = half;
        }
        Limits {
            handshake_timeout,
            max_connections: cap,
            max_per_source: per_source,
        }
    }
}

/// This process's soft `RLIMIT_NOFILE`, when it can be read and is finite.
pub fn soft_nofile() -> Option<usize> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    (rc == 0 && l.rlim_cur != libc::RLIM_INFINITY)
        .then(|| usize::try_from(l.rlim_cur).unwrap_or(usize::MAX))
}

/// The open connections: the cap's permits and the count per source.
struct Places {
    total: Arc<Semaphore>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    limits: Limits,
}

/// One connection's places, given back when it closes.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    places: Arc<Places>,
    source: IpAddr,
}

/// The source a connection counts against: its IP address, or its /64
/// for IPv6 (one host or site usually holds a whole /64).
fn source_of(peer: &SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Places {
    /// A place for a connection from `peer`, or why there is none.
    fn take(self: &Arc<Self>, peer: &SocketAddr) -> Result<Place, &'static str> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "--max-connections")?;
        let source = source_of(peer);
        let mut m = self.per_source.lock().map_err(|_| "a poisoned lock")?;
        let n = m.entry(source).or_insert(0);
        if *n >= self.limits.max_per_source {
            return Err("--max-connections-per-source");
        }
        *n += 1;
        Ok(Place {
            _permit: permit,
            places: self.clone(),
            source,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut m) = self.places.per_source.lock() {
            if let Some(n) = m.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.source);
                }
            }
        }
    }
}

/// An accepted connection past its handshake, holding its places while it
/// is open. Reads and writes go straight to `io`.
pub struct Conn<IO> {
    io: IO,
    info: TcpConnectInfo,
    _place: Place,
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Plaintext HTTP/2: connections that sent their preface in time.
pub fn plaintext(
    listener: TcpListener,
    limits: Limits,
    drain: &Drain,
) -> ReceiverStream<io::Result<Conn<Plain>>> {
    accept(listener, limits, drain, |tcp, info, place| async move {
        let (mut r, w) = tcp.into_split();
        let mut preface = [0u8; PREFACE_LEN];
        r.read_exact(&mut preface).await?;
        let io = tokio::io::join(io::Cursor::new(preface).chain(r), w);
        Ok(Conn {
            io,
            info,
            _place: place,
        })
    })
}

/// TLS: connections that completed the TLS handshake and then sent the
/// HTTP/2 preface, both within the timeout, with the TLS configuration in
/// force when each arrived (see [`Tls`]). tonic is told the TCP addresses
/// (leanmqd reads no client certificate after the handshake verified it).
pub fn tls(
    listener: TcpListener,
    limits: Limits,
    tls: Arc<Tls>,
    drain: &Drain,
) -> ReceiverStream<io::Result<Conn<Secure>>> {
    accept(listener, limits, drain, move |tcp, info, place| {
        let acceptor = tls.acceptor();
        async move {
            let acceptor =
                acceptor.ok_or_else(|| io::Error::other("TLS configuration unavailable"))?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut preface = [0u8; PREFACE_LEN];
            tls.read_exact(&mut preface).await?;
            let (r, w) = tokio::io::split(tls);
            let io = tokio::io::join(io::Cursor::new(preface).chain(r), w);
            Ok(Conn {
                io,
                info,
                _place: place,
            })
        }
    })
}

/// Plaintext HTTP/1.1 or HTTP/2 (the HTTP ingress): connections under the
/// caps that sent their first byte within the handshake timeout.
pub fn http_plaintext(
    listener: TcpListener,
    limits: Limits,
    drain: &Drain,
) -> ReceiverStream<io::Result<Conn<TcpStream>>> {
    accept(listener, limits, drain, |tcp, info, place| async move {
        tcp.peek(&mut [0u8; 1]).await?;
        Ok(Conn {
            io: tcp,
            info,
            _place: place,
        })
    })
}

/// TLS for the HTTP ingress: connections under the caps whose handshake
/// completed within the timeout (ALPN offers h2 and http/1.1).
pub fn http_tls(
    listener: TcpListener,
    limits: Limits,
    tls: Arc<Tls>,
    drain: &Drain,
) -> ReceiverStream<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>> {
    accept(listener, limits, drain, move |tcp, info, place| {
        let acceptor = tls.acceptor();
        async move {
            let acceptor =
                acceptor.ok_or_else(|| io::Error::other("TLS configuration unavailable"))?;
            Ok(Conn {
                io: acceptor.accept(tcp).await?,
                info,
                _place: place,
            })
        }
    })
}

/// Accepted connections as an axum listener (the HTTP ingress).
pub struct Accepted<IO> {
    conns: ReceiverStream<io::Result<Conn<IO>>>,
    addr: SocketAddr,
}

impl<IO> Accepted<IO> {
    pub fn new(conns: ReceiverStream<io::Result<Conn<IO>>>, addr: SocketAddr) -> Self {
        Accepted { conns, addr }
    }
}

impl<IO> axum::serve::Listener for Accepted<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Conn<IO>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt as _;
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let peer = c.info.remote_addr.unwrap_or(self.addr);
                    return (c, peer);
                }
                Some(Err(e)) => tracing::debug!("accept: {e}"),
                // The accept loop ended (only at the drain): accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The accept loop: take a place, then run `handshake` under the timeout
/// in a task of its own and hand over what completes. Ends when the
/// receiver (the gRPC server) is gone.
fn accept<IO, F, Fut>(
    listener: TcpListener,
    limits: Limits,
    drain: &Drain,
    handshake: F,
) -> ReceiverStream<io::Result<IO>>
where
    IO: Send + 'static,
    F: Fn(TcpStream, TcpConnectInfo, Place) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(128);
    let places = Arc::new(Places {
        total: Arc::new(Semaphore::new(limits.max_connections)),
        per_source: Mutex::default(),
        limits,
    });
    let tasks = drain.clone();
    drain.spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a reset before accept:
                    // back off a little rather than spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let place = match places.take(&peer) {
                Ok(p) => p,
                Err(limit) => {
                    crate::observe::connection_refused(limit);
                    tracing::debug!(%peer, "connection closed at once: over {limit}");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let shake = handshake(tcp, info, place);
            let tx = tx.clone();
            tasks.spawn(async move {
                let r = tokio::select! {
                    r = tokio::time::timeout(limits.handshake_timeout, shake) => r,
                    _ = tx.closed() => return,
                };
                match r {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "handshake failed: {e}"),
                    Err(_) => {
                        crate::observe::connection_refused("--handshake-timeout");
                        tracing::debug!(%peer, "handshake timed out (--handshake-timeout)");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_fit_the_descriptor_limit() {
        let t = Duration::from_secs(10);
        let l = Limits::fitted(t, 10_000, 256, Some(256));
        assert_eq!((l.max_connections, l.max_per_source), (128, 64));
        let l = Limits::fitted(t, 10_000, 256, Some(1 << 20));
        assert_eq!((l.max_connections, l.max_per_source), (10_000, 256));
        let l = Limits::fitted(t, 3, 5, None);
        assert_eq!((l.max_connections, l.max_per_source), (3, 1));
        let l = Limits::fitted(t, 10, 5, Some(16));
        assert_eq!((l.max_connections, l.max_per_source), (8, 4));
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000".parse().expect("addr");
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:6000".parse().expect("addr");
        let c: SocketAddr = "[2001:db8:1:3::1]:6000".parse().expect("addr");
        assert_eq!(source_of(&a), source_of(&b));
        assert_ne!(source_of(&a), source_of(&c));
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().expect("addr");
        assert_eq!(
            source_of(&mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
