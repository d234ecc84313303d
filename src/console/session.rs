//! The session cookie and CSRF tokens.
//!
//! Choice: a stateless cookie signed with HMAC-SHA256 under a key drawn at
//! random when leanmqd starts. Nothing is stored server-side, so there is
//! nothing to bound or evict; the cost is that a restart signs everyone out
//! and that, behind a load balancer, a console session is good on the
//! replica that issued it only (use sticky sessions or one console replica).
//!
//! The cookie holds a random nonce, the signed-in token's *hash* (what the
//! tokens file stores; never the token) or `-`, and an expiry. Each request
//! looks the hash up again, so a token revoked on SIGHUP signs its sessions
//! out at once. The CSRF token is an HMAC of the nonce: a form can only be
//! posted by a page that was served with this session, and signing in draws
//! a new nonce (no fixation).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Longest cookie value accepted (a valid one is ~150 bytes).
const MAX_COOKIE: usize = 512;

/// The per-process signing key.
pub struct Keys {
    key: [u8; 32],
}

/// One browser's session, as read from (or about to be set in) its cookie.
#[derive(Debug, Clone)]
pub struct Session {
    nonce: String,
    /// The signed-in token's hash, `None` before sign-in.
    pub principal: Option<String>,
    expires: u64,
    /// Made for this request (no valid cookie came): the response sets it.
    pub fresh: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Keys {
    pub fn random() -> Self {
        Keys {
            key: rand::random(),
        }
    }

    fn mac(&self, domain: &str, body: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(domain.as_bytes());
        mac.update(b"|");
        mac.update(body.as_bytes());
        mac
    }

    /// A new session for `principal`, with a fresh nonce.
    pub fn issue(&self, principal: Option<String>) -> Session {
        let nonce: [u8; 16] = rand::random();
        Session {
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            principal,
            expires: now_secs() + LIFETIME.as_secs(),
            fresh: true,
        }
    }

    /// The session a cookie value stands for, if its signature holds and it
    /// has not expired.
    pub fn open(&self, value: &str) -> Option<Session> {
        if value.len() > MAX_COOKIE {
            return None;
        }
        let (body, sig) = value.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac("session", body).verify_slice(&sig).ok()?;
        let mut parts = body.splitn(3, '.');
        let nonce = parts.next()?.to_string();
        let principal = parts.next()?;
        let expires: u64 = parts.next()?.parse().ok()?;
        if expires <= now_secs() {
            return None;
        }
        Some(Session {
            nonce,
            principal: (principal != "-").then(|| principal.to_string()),
            expires,
            fresh: false,
        })
    }

    /// The signed cookie value of a session.
    pub fn seal(&self, s: &Session) -> String {
        let body = format!(
            "{}.{}.{}",
            s.nonce,
            s.principal.as_deref().unwrap_or("-"),
            s.expires
        );
        let sig = self.mac("session", &body).finalize().into_bytes();
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self, s: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", &s.nonce).finalize().into_bytes())
    }

    /// Does `token` (from a posted form) belong to this session? Compared
    /// in constant time.
    pub fn csrf_ok(&self, s: &Session, token: &str) -> bool {
        if s.fresh || token.len() > 64 {
            return false;
        }
        match URL_SAFE_NO_PAD.decode(token) {
            Ok(raw) => self.mac("csrf", &s.nonce).verify_slice(&raw).is_ok(),
            Err(_) => false,
        }
    }
}

/// The cookie's name: with the `__Host-` prefix under TLS, which browsers
/// accept only with `Secure`, `Path=/` and no `Domain`.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-leanmq_console"
    } else {
        "leanmq_console"
    }
}

/// The `Set-Cookie` header value for a session.
pub fn set_cookie(keys: &Keys, s: &Session, secure: bool) -> String {
    let mut v = format!(
        "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
        cookie_name(secure),
        keys.seal(s),
        s.expires.saturating_sub(now_secs())
    );
    if secure {
        v.push_str("; Secure");
    }
    v
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'a>(
    headers: impl Iterator<Item = &'a axum::http::HeaderValue>,
    secure: bool,
) -> Option<&'a str> {
    let name = cookie_name(secure);
    headers
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_sessions_open_and_tampered_ones_do_not() {
        let k = Keys::random();
        let s = k.issue(Some("sha256:ab".into()));
        let v = k.seal(&s);
        let back = k.open(&v).expect("opens");
        assert_eq!(back.principal.as_deref(), Some("sha256:ab"));
        assert!(!back.fresh);
        let forged = v.replacen("sha256:ab", "sha256:cd", 1);
        assert!(k.open(&forged).is_none());
        assert!(Keys::random().open(&v).is_none(), "another key");
        assert!(k.open("garbage").is_none());
        assert!(k.open(&"x".repeat(10_000)).is_none());
    }

    #[test]
    fn csrf_is_bound_to_the_session() {
        let k = Keys::random();
        let s = k.open(&k.seal(&k.issue(None))).expect("opens");
        let t = k.csrf(&s);
        assert!(k.csrf_ok(&s, &t));
        let other = k.open(&k.seal(&k.issue(None))).expect("opens");
        assert!(!k.csrf_ok(&other, &t));
        assert!(!k.csrf_ok(&s, ""));
        assert!(!k.csrf_ok(&s, "not base64!"));
    }
}
