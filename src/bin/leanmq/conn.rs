//! One connection to leanmqd: the address and its scheme, TLS (a CA, a
//! client certificate), the bearer token on every call, and `--timeout`
//! on connecting and on each call.

use std::future::Future;
use std::time::Duration;

use leanmq_grpc::proto::admin_client::AdminClient;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;

use crate::fail::Failure;
use crate::Global;

/// Largest response the CLI accepts: a page of dead letters can hold many
/// payloads of up to leanmqd's 64 MiB ceiling.
const MAX_RESPONSE: usize = 512 << 20;

/// Adds `authorization: Bearer <token>` to every call. The value is marked
/// sensitive, so no Debug output or log line shows it.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, Bearer>;

pub struct Conn {
    /// The address as the user will recognise it, for error lines.
    pub addr: String,
    pub timeout: Duration,
    channel: Channel,
    bearer: Bearer,
}

impl Conn {
    /// Check the flags, then connect (within `--timeout`).
    pub async fn open(g: &Global) -> Result<Conn, Failure> {
        let tls_wanted = g.ca.is_some() || g.cert.is_some() || g.tls_key.is_some();
        let addr = normalize_addr(&g.addr, tls_wanted)?;
        let bearer = Bearer(bearer_value(g.token.as_deref())?);
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| Failure::usage(format!("--addr {addr:?} is not a valid URL: {e}")))?
            .connect_timeout(g.timeout);
        if addr.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(g)?)
                .map_err(|e| Failure::usage(format!("TLS settings: {e}")))?;
        } else if tls_wanted {
            return Err(Failure::usage(
                "--ca, --cert and --key need an https:// address",
            ));
        }
        let channel = match tokio::time::timeout(g.timeout, endpoint.connect()).await {
            Err(_) => {
                return Err(Failure::Timeout {
                    addr,
                    after: g.timeout,
                })
            }
            Ok(Err(e)) => return Err(Failure::unreachable(&addr, &e)),
            Ok(Ok(ch)) => ch,
        };
        Ok(Conn {
            addr,
            timeout: g.timeout,
            channel,
            bearer,
        })
    }

    pub fn broker(&self) -> BrokerClient<Svc> {
        BrokerClient::with_interceptor(self.channel.clone(), self.bearer.clone())
            .max_decoding_message_size(MAX_RESPONSE)
            .max_encoding_message_size(MAX_RESPONSE)
    }

    pub fn admin(&self) -> AdminClient<Svc> {
        AdminClient::with_interceptor(self.channel.clone(), self.bearer.clone())
            .max_decoding_message_size(MAX_RESPONSE)
    }

    pub fn health(&self) -> HealthClient<Svc> {
        HealthClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Await one call within `--timeout`, its failure classified.
    pub async fn call<T>(
        &self,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(Failure::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            }),
            Ok(Err(status)) => Err(self.status(status)),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    pub fn status(&self, status: tonic::Status) -> Failure {
        Failure::from_status(&self.addr, status)
    }
}

/// `host:port` → `http://host:port` (`https://` when TLS files are
/// given); only http and https are accepted.
fn normalize_addr(addr: &str, tls_wanted: bool) -> Result<String, Failure> {
    let addr = addr.trim();
    let full = if addr.contains("://") {
        addr.to_string()
    } else if tls_wanted {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    if !(full.starts_with("http://") || full.starts_with("https://")) {
        return Err(Failure::usage(format!(
            "--addr {addr:?} must be an http:// or https:// URL"
        )));
    }
    if full.split("://").nth(1).is_none_or(|rest| rest.is_empty()) {
        return Err(Failure::usage(format!("--addr {addr:?} names no host")));
    }
    Ok(full.trim_end_matches('/').to_string())
}

fn bearer_value(token: Option<&str>) -> Result<Option<AsciiMetadataValue>, Failure> {
    let Some(token) = token else { return Ok(None) };
    let token = token.trim();
    if token.is_empty() {
        return Err(Failure::usage("--token (or LEANMQ_TOKEN) is empty"));
    }
    // The token itself is never part of the message.
    let mut v = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Failure::usage("--token (or LEANMQ_TOKEN) has characters gRPC metadata cannot carry")
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read {flag} {}: {e}", path.display())))
}

fn tls_config(g: &Global) -> Result<ClientTlsConfig, Failure> {
    let mut tls = ClientTlsConfig::new();
    tls = match &g.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem("--ca", ca)?)),
        None => tls.with_native_roots(),
    };
    match (&g.cert, &g.tls_key) {
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read_pem("--cert", cert)?, read_pem("--key", key)?);
            tls = tls.identity(identity);
        }
        (None, None) => {}
        _ => return Err(Failure::usage("--cert and --key go together")),
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_only_http_or_https() {
        assert_eq!(
            normalize_addr("127.0.0.1:1", false).ok().as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(
            normalize_addr("h:1", true).ok().as_deref(),
            Some("https://h:1")
        );
        assert!(normalize_addr("ftp://h:1", false).is_err());
        assert!(normalize_addr("http://", false).is_err());
    }

    #[test]
    fn tokens_are_checked_without_being_echoed() {
        assert!(bearer_value(Some("")).is_err());
        let e = bearer_value(Some("bad\nsecret"))
            .err()
            .map(|f| f.to_string());
        assert!(e.is_some_and(|m| !m.contains("secret")));
        assert!(bearer_value(Some("ok-token")).is_ok_and(|v| v.is_some()));
    }
}
