//! TLS for the gRPC listener (rustls), reloadable without dropping anyone.
//!
//! The certificate, key and optional client CA (mTLS) are read into a
//! rustls `ServerConfig` held behind a lock. Every new connection's
//! handshake uses the config in force when it arrives; [`Tls::reload`]
//! swaps in a fresh one, so connections (and their Subscribe streams) that
//! are already up keep going on the old one until they close.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in force, and how to rebuild it.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

/// Use ring as rustls' crypto everywhere in the process (server TLS and
/// rediss://). Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, String> {
    install_crypto();
    let certs = read_certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "--tls-client-ca")? {
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key do not make a usable pair: {e}"))?;
    // h2 for gRPC; http/1.1 for gRPC-Web and the HTTP ingress (console too).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Tls {
    /// Read and check the files; any problem is a configuration error.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let cfg = build(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(cfg)),
        })
    }

    /// Re-read the files. On error the configuration in force stays.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = Arc::new(build(&self.files)?);
        let mut cur = self
            .current
            .write()
            .map_err(|_| "tls config lock poisoned".to_string())?;
        *cur = cfg;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// An acceptor with the configuration in force now (see `listen`,
    /// which runs the handshake under `--handshake-timeout`).
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        let cfg = self.current.read().ok()?.clone();
        Some(TlsAcceptor::from(cfg))
    }

    /// Connections on `listener` whose TLS handshake completed within
    /// [`HANDSHAKE_TIMEOUT`], each handshake in a tracked task of its own
    /// (the web console's listener; gRPC's is `listen::tls`).
    pub fn incoming(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        drain: &crate::shutdown::Drain,
    ) -> tokio_stream::wrappers::ReceiverStream<
        std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        let tasks = drain.clone();
        drain.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                    _ = tasks.draining() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(acceptor) = self.acceptor() else {
                    continue;
                };
                let tx = tx.clone();
                tasks.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Longest a console client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
