//! Which endpoints a push may reach. An endpoint whose host resolves to a
//! loopback, private, link-local, CGNAT, unique-local, multicast,
//! unspecified or cloud-metadata address is refused when the subscription
//! is created or changed ([`Policy::check_endpoint`]) and again at every
//! connection ([`Resolver`], reqwest's resolver for push clients), so a name
//! that later rebinds to such an address reaches nothing.
//! `--push-allow-private` lifts this; `--push-allow-host` lifts it for
//! named hosts only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// What the operator allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `--push-allow-private`: any address (and http://).
    pub allow_private: bool,
    /// `--push-allow-http`: plain http:// endpoints.
    pub allow_http: bool,
    /// `--push-allow-host`: hosts (lower case) exempt from the address check.
    pub allow_hosts: Vec<String>,
}

/// Is `ip` one a push must never reach (unless allowed)?
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // unique local fc00::/7 (AWS' metadata fd00:ec2::254 is one)
                || (s[0] & 0xfe00) == 0xfc00
                // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfe80
                // NAT64 64:ff9b::/96 of a forbidden v4
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] && {
                    let o = v6.octets();
                    forbidden_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
                })
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, holds 169.254.169.254
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240
}

impl Policy {
    /// Is `host` exempt from the address check?
    pub fn exempt(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The URL of a valid endpoint, or why not: its scheme, and (resolving
    /// it now) every address it has.
    pub async fn check_endpoint(&self, endpoint: &str) -> Result<reqwest::Url, String> {
        let url = self.check_url(endpoint)?;
        let host = url.host_str().unwrap_or_default().to_string();
        if self.exempt(&host) {
            return Ok(url);
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("host {host:?} does not resolve: {e}"))?
            .collect();
        if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
            return Err(format!(
                "host {host:?} resolves to {}, a loopback, private, link-local or metadata address; pushes may not reach it (--push-allow-private, --push-allow-host)",
                bad.ip()
            ));
        }
        Ok(url)
    }

    /// The URL's own rules (no resolving): scheme, no user info, a host,
    /// and an IP-literal host checked at once.
    pub fn check_url(&self, endpoint: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| format!("is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http || self.allow_private => {}
            "http" => {
                return Err(
                    "is http://; endpoints are https:// unless leanmqd runs with --push-allow-http"
                        .into(),
                )
            }
            other => return Err(format!("has scheme {other:?}; use https://")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("holds user info; put credentials in headers instead".into());
        }
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err("has no host".into());
        }
        if !self.exempt(host) {
            if let Some(ip) = literal_ip(&url) {
                if forbidden(ip) {
                    return Err(format!(
                        "is {ip}, a loopback, private, link-local or metadata address; pushes may not reach it (--push-allow-private, --push-allow-host)"
                    ));
                }
            }
        }
        Ok(url)
    }
}

/// The address of an IP-literal host (which no resolver sees).
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// reqwest's resolver for push clients: the system's answers, less every
/// forbidden address (all of them when the host is not exempt).
pub struct Resolver {
    pub policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let exempt = policy.exempt(&host);
            let kept: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| exempt || !forbidden(a.ip()))
                .collect();
            if kept.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> = format!(
                    "{host} resolves only to addresses pushes may not reach (loopback, private, link-local or metadata)"
                )
                .into();
                return Err(e);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(forbidden(ip), "{bad}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            let ip: IpAddr = good.parse().expect("ip");
            assert!(!forbidden(ip), "{good}");
        }
    }

    #[test]
    fn checks_urls() {
        let p = Policy::default();
        assert!(p.check_url("https://93.184.216.34/hook").is_ok());
        assert!(p
            .check_url("http://example.com/")
            .unwrap_err()
            .contains("http://"));
        assert!(p.check_url("ftp://example.com/").is_err());
        assert!(p.check_url("https://u:p@example.com/").is_err());
        assert!(p.check_url("https://169.254.169.254/").is_err());
        assert!(p.check_url("https://[fd00:ec2::254]/").is_err());
        let open = Policy {
            allow_private: true,
            ..Policy::default()
        };
        assert!(open.check_url("http://127.0.0.1:1/").is_ok());
    }
}
