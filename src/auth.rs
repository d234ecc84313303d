//! Who may do what: bearer tokens from a file of hashes, and the one place
//! that decides whether a request's token may act on a path.
//!
//! - The tokens file (`--auth-tokens`) is TOML with `[[tokens]]` entries:
//!   `name`, `hash` (what `leanmqd hash-token` prints; never the token
//!   itself), and lists `send`, `subscribe`, `admin` of NATS-style path
//!   patterns (`/order/>`, `/order/*/eu`, `>`). Optional `rate` (requests
//!   per second, per replica) and `burst` limit a token's traffic.
//! - [`crate::layers::AuthLayer`] authenticates every call (except gRPC
//!   health, which probes must reach) and puts the caller's [`Grant`] into
//!   the request's extensions; the RPC edge asks the grant before it acts.
//! - Permissions are on queues, as LeanMQ's are: `/order/status` and
//!   `/order_status` are the same queue, so a grant on one covers both.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::routing::{self, Pattern};

/// What a call wants to do on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Subscribe,
    Admin,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
        }
    }
}

/// Longest bearer token accepted, in bytes. Tokens are random secrets
/// (32 bytes of entropy is plenty); the bound keeps a client from making
/// every call hash kilobytes, and lets an oversized one get a clear
/// UNAUTHENTICATED instead of an HTTP/2 header error.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The stored form of a token: `sha256:` and the hex digest of its bytes.
/// Tokens are random secrets, not passwords, so a fast hash is the right
/// one (as GitHub and npm store theirs): a lookup costs one digest.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// One `[[tokens]]` entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    hash: String,
    #[serde(default)]
    send: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
    /// Requests per second this token may make on one replica.
    rate: Option<f64>,
    /// Requests it may make at once above `rate` (default: one second's worth).
    burst: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// A grant pattern: path segments, each a literal, `*` or a final `>`.
#[derive(Debug, Clone)]
struct GrantPattern {
    /// As written, for error messages.
    text: String,
    segments: Vec<String>,
    /// The same pattern over queue-name words (`order_status` → `order`,
    /// `status`), used for receipts and queue names, which carry no path.
    words: Vec<String>,
}

impl GrantPattern {
    fn parse(text: &str) -> std::result::Result<Self, String> {
        let normalized = routing::normalize_path(text);
        let segments: Vec<String> = normalized
            .trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("pattern {text:?} has an empty segment"));
        }
        for (i, s) in segments.iter().enumerate() {
            let wild = s == "*" || s == ">";
            if !wild && (s.contains('*') || s.contains('>')) {
                return Err(format!(
                    "pattern {text:?}: a wildcard must be a whole segment"
                ));
            }
            if s == ">" && i + 1 != segments.len() {
                return Err(format!(
                    "pattern {text:?}: \">\" may only be the last segment"
                ));
            }
        }
        let mut words = Vec::new();
        for s in &segments {
            if s == "*" || s == ">" {
                words.push(s.clone());
            } else {
                let q = routing::queue_name(s);
                words.extend(q.split('_').map(str::to_string));
            }
        }
        Ok(GrantPattern {
            text: text.to_string(),
            segments,
            words,
        })
    }

    /// Does this grant cover every path the requested segments can match?
    /// (A literal covers only itself; `*` covers a literal or `*`; `>`
    /// covers one or more of anything.)
    fn covers(&self, requested: &[&str]) -> bool {
        fn go(g: &[String], p: &[&str]) -> bool {
            match (g.first(), p.first()) {
                (Some(g0), _) if g0 == ">" => !p.is_empty(),
                (None, None) => true,
                (None, _) | (_, None) => false,
                (_, Some(&">")) => false,
                (Some(g0), Some(p0)) if g0 == "*" => !p0.is_empty() && go(&g[1..], &p[1..]),
                (Some(g0), Some(p0)) => g0 == p0 && go(&g[1..], &p[1..]),
            }
        }
        go(&self.segments, requested)
    }

    /// Does this grant cover a queue name? `*` may stand for several words
    /// here, since one path segment can hold `_` or other characters that
    /// become `_`.
    fn covers_queue(&self, queue: &str) -> bool {
        fn go(g: &[String], w: &[&str]) -> bool {
            match g.first() {
                None => w.is_empty(),
                Some(g0) if g0 == ">" => !w.is_empty(),
                Some(g0) if g0 == "*" => (1..=w.len()).any(|n| go(&g[1..], &w[n..])),
                Some(g0) => w.first() == Some(&g0.as_str()) && go(&g[1..], &w[1..]),
            }
        }
        let words: Vec<&str> = queue.split('_').collect();
        go(&self.words, &words)
    }
}

/// What one caller may do.
#[derive(Debug)]
pub struct Grant {
    /// The token's name, for logs and errors (never the token).
    pub name: String,
    /// `None` when auth is off: everything is allowed.
    rules: Option<Rules>,
    /// Token bucket for the optional per-token rate limit.
    bucket: Option<Bucket>,
}

#[derive(Debug)]
struct Rules {
    send: Vec<GrantPattern>,
    subscribe: Vec<GrantPattern>,
    admin: Vec<GrantPattern>,
}

impl Rules {
    fn of(&self, action: Action) -> &[GrantPattern] {
        match action {
            Action::Send => &self.send,
            Action::Subscribe => &self.subscribe,
            Action::Admin => &self.admin,
        }
    }
}

/// A token's rate limit: `governor`'s GCRA, which behaves as a token
/// bucket of `burst` requests refilled at `rate` per second (one request
/// every `1 / rate` s), full at start.
#[derive(Debug)]
struct Bucket {
    /// As configured, for the refusal message.
    rate: f64,
    limiter: governor::DefaultDirectRateLimiter,
}

/// Longest time a full burst may take to refill: governor counts time in
/// u64 nanoseconds (about 584 years), so a quota past this would overflow.
const MAX_REFILL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Bucket {
    /// A bucket of `burst` requests refilled at `rate` per second.
    /// `burst` is whole requests (a fraction of one could never be taken);
    /// a rate above 10^9/s is one request per nanosecond, governor's unit.
    fn new(rate: f64, burst: f64) -> std::result::Result<Bucket, String> {
        if !rate.is_finite() || rate <= 0.0 {
            return Err("rate must be a positive number".into());
        }
        if !burst.is_finite() || burst < 1.0 {
            return Err("burst must be at least 1".into());
        }
        let refill = Duration::try_from_secs_f64(burst / rate).unwrap_or(Duration::MAX);
        if refill > MAX_REFILL {
            return Err("burst / rate must be under 100 years (rate is too small)".into());
        }
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        // `as` saturates: a burst past u32::MAX (4 billion) is that many.
        let burst = NonZeroU32::new(burst as u32).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period)
            .ok_or("rate is too large")?
            .allow_burst(burst);
        Ok(Bucket {
            rate,
            limiter: governor::RateLimiter::direct(quota),
        })
    }
}

impl Grant {
    /// The grant of every call while auth is off.
    pub fn everything() -> Arc<Grant> {
        Arc::new(Grant {
            name: "anonymous".into(),
            rules: None,
            bucket: None,
        })
    }

    fn denied(&self, action: Action, what: &str) -> Error {
        Error::PermissionDenied(format!(
            "token {:?} may not {} {what}",
            self.name,
            action.name()
        ))
    }

    /// May this caller `action` the (normalized) path of `route`?
    pub fn check(&self, action: Action, route: &routing::Route) -> Result<()> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let segs: Vec<&str> = route.path.trim_start_matches('/').split('/').collect();
        let ok = rules
            .of(action)
            .iter()
            .any(|g| g.covers(&segs) || g.covers_queue(&route.queue));
        if ok {
            Ok(())
        } else {
            Err(self.denied(action, &format!("path {:?}", route.path)))
        }
    }

    /// May this caller `action` every path a pattern can match? A pattern
    /// that reaches outside the grant is refused as a whole.
    pub fn check_pattern(&self, action: Action, pattern: &Pattern) -> Result<()> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let segs: Vec<&str> = pattern.text.trim_start_matches('/').split('/').collect();
        if rules.of(action).iter().any(|g| g.covers(&segs)) {
            Ok(())
        } else {
            Err(self.denied(
                action,
                &format!(
                    "everything pattern {:?} matches (granted: {})",
                    pattern.text,
                    list(rules.of(action))
                ),
            ))
        }
    }

    /// May this caller `action` a queue known only by name (receipts)?
    pub fn check_queue(&self, action: Action, queue: &str) -> Result<()> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        if rules.of(action).iter().any(|g| g.covers_queue(queue)) {
            Ok(())
        } else {
            Err(self.denied(action, &format!("queue {queue:?}")))
        }
    }

    /// Is `queue` visible to this caller's admin grant (ListQueues filter)?
    pub fn sees_queue(&self, queue: &str) -> bool {
        self.check_queue(Action::Admin, queue).is_ok()
    }

    /// Take one request from the token's rate budget.
    pub fn take(&self) -> Result<()> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        if b.limiter.check().is_ok() {
            Ok(())
        } else {
            Err(Error::ResourceExhausted(format!(
                "token {:?} is over its rate of {} requests/s; retry with backoff",
                self.name, b.rate
            )))
        }
    }
}

fn list(patterns: &[GrantPattern]) -> String {
    if patterns.is_empty() {
        return "none".into();
    }
    patterns
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The loaded tokens, by hash.
#[derive(Debug, Default)]
struct TokenSet {
    by_hash: HashMap<String, Arc<Grant>>,
}

fn parse_tokens(text: &str, origin: &Path) -> std::result::Result<TokenSet, String> {
    let file: TokensFile =
        toml::from_str(text).map_err(|e| format!("{}: {e}", origin.display()))?;
    let mut set = TokenSet::default();
    let mut names = std::collections::HashSet::new();
    for (i, t) in file.tokens.into_iter().enumerate() {
        let at = format!("{}: tokens[{i}] ({:?})", origin.display(), t.name);
        if t.name.is_empty() {
            return Err(format!("{at}: name is empty"));
        }
        if !names.insert(t.name.clone()) {
            return Err(format!("{at}: a token with this name comes earlier"));
        }
        let digest = hex::decode(t.hash.strip_prefix("sha256:").unwrap_or(""));
        if !digest.is_ok_and(|d| d.len() == 32) {
            return Err(format!(
                "{at}: hash must be \"sha256:\" and 64 hex digits, as `leanmqd hash-token` prints"
            ));
        }
        let parse = |list: &[String]| {
            list.iter()
                .map(|p| GrantPattern::parse(p).map_err(|e| format!("{at}: {e}")))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let rules = Rules {
            send: parse(&t.send)?,
            subscribe: parse(&t.subscribe)?,
            admin: parse(&t.admin)?,
        };
        let bucket = match t.rate {
            None => None,
            Some(rate) => {
                let burst = t.burst.unwrap_or(rate.max(1.0));
                Some(Bucket::new(rate, burst).map_err(|e| format!("{at}: {e}"))?)
            }
        };
        let grant = Arc::new(Grant {
            name: t.name,
            rules: Some(rules),
            bucket,
        });
        if set
            .by_hash
            .insert(t.hash.to_ascii_lowercase(), grant)
            .is_some()
        {
            return Err(format!("{at}: the same hash appears twice"));
        }
    }
    Ok(set)
}

/// Authentication state: off, or a reloadable token file.
#[derive(Debug)]
pub struct Auth {
    file: Option<PathBuf>,
    tokens: RwLock<Arc<TokenSet>>,
    /// The grant every call gets while auth is off (one, shared).
    everything: Arc<Grant>,
}

impl Auth {
    /// Auth off: every call gets [`Grant::everything`].
    pub fn off() -> Self {
        Auth {
            file: None,
            tokens: RwLock::new(Arc::new(TokenSet::default())),
            everything: Grant::everything(),
        }
    }

    /// Load `path`; an unreadable or invalid file is an error.
    pub fn from_file(path: &Path) -> std::result::Result<Self, String> {
        let auth = Auth {
            file: Some(path.to_path_buf()),
            tokens: RwLock::new(Arc::new(TokenSet::default())),
            everything: Grant::everything(),
        };
        auth.reload()?;
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Re-read the file. On error the tokens in force stay in force.
    pub fn reload(&self) -> std::result::Result<(), String> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --auth-tokens {}: {e}", path.display()))?;
        let set = parse_tokens(&text, path)?;
        let n = set.by_hash.len();
        match self.tokens.write() {
            Ok(mut t) => *t = Arc::new(set),
            Err(_) => return Err("token table lock poisoned".into()),
        }
        tracing::info!(tokens = n, file = %path.display(), "auth tokens loaded");
        Ok(())
    }

    /// The grant of an `authorization` metadata value, or UNAUTHENTICATED.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Grant>> {
        if self.file.is_none() {
            return Ok(self.everything.clone());
        }
        let Some(value) = authorization else {
            return Err(Error::Unauthenticated(
                "missing \"authorization: Bearer <token>\" metadata".into(),
            ));
        };
        let value = std::str::from_utf8(value).unwrap_or("");
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(Error::Unauthenticated(
                    "authorization metadata must be \"Bearer <token>\"".into(),
                ))
            }
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Unauthenticated(format!(
                "the bearer token is {} bytes; tokens may be at most {MAX_TOKEN_BYTES} bytes",
                token.len()
            )));
        }
        let hash = hash_token(token);
        let tokens = self
            .tokens
            .read()
            .map_err(|_| Error::Internal("token table lock poisoned".into()))?
            .clone();
        tokens
            .by_hash
            .get(&hash)
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))
    }
}

/// The grant the auth layer attached to a request.
pub fn grant_of<T>(req: &tonic::Request<T>) -> Result<Arc<Grant>> {
    req.extensions()
        .get::<Arc<Grant>>()
        .cloned()
        .ok_or_else(|| Error::Internal("request passed no auth layer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(toml_text: &str) -> Arc<Grant> {
        let set = parse_tokens(toml_text, Path::new("t.toml")).expect("parses");
        set.by_hash.values().next().cloned().expect("one token")
    }

    const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn hashes_like_sha256sum() {
        assert_eq!(hash_token("test"), HASH);
    }

    #[test]
    fn grants_cover_paths_patterns_and_queues() {
        let g = grant(&format!(
            "[[tokens]]\nname = \"orders\"\nhash = \"{HASH}\"\nsend = [\"/order/>\"]\nsubscribe = [\"/order/*/eu\", \"/audit\"]\n"
        ));
        let r = |p: &str| routing::route(p).expect("route");
        let pat = |p: &str| Pattern::parse(p).ok().flatten().expect("pattern");
        assert!(g.check(Action::Send, &r("/order/status/")).is_ok());
        assert!(g.check(Action::Send, &r("/order/a/b")).is_ok());
        assert!(g.check(Action::Send, &r("/order")).is_err());
        assert!(g.check(Action::Send, &r("/payment/x")).is_err());
        assert!(g.check(Action::Subscribe, &r("/order/x/eu")).is_ok());
        assert!(g.check(Action::Subscribe, &r("/order/x/us")).is_err());
        assert!(g.check(Action::Admin, &r("/order/x")).is_err());
        // Patterns: inside the grant or refused whole.
        assert!(g
            .check_pattern(Action::Subscribe, &pat("/order/*/eu"))
            .is_ok());
        assert!(g
            .check_pattern(Action::Subscribe, &pat("/order/>"))
            .is_err());
        assert!(g.check_pattern(Action::Subscribe, &pat("/*/x/eu")).is_err());
        assert!(g.check_pattern(Action::Send, &pat("/order/*/x/>")).is_ok());
        // Queue names (receipts): `*` may span words of one segment.
        assert!(g
            .check_queue(Action::Subscribe, "order_new_item_eu")
            .is_ok());
        assert!(g.check_queue(Action::Subscribe, "audit").is_ok());
        assert!(g.check_queue(Action::Subscribe, "order_eu").is_err());
        assert!(g.check_queue(Action::Subscribe, "payment_x_eu").is_err());
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        for (text, says) in [
            (
                "[[tokens]]\nname = \"a\"\nhash = \"plain\"\n",
                "hash must be",
            ),
            (
                &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nsend = [\"/a/>/b\"]\n"),
                "last segment",
            ),
            (
                &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nsned = []\n"),
                "unknown field",
            ),
            (
                &format!("[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nrate = -1\n"),
                "rate must be",
            ),
        ] {
            let e = parse_tokens(text, Path::new("t.toml"))
                .err()
                .unwrap_or_default();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn rate_limit_refuses_past_the_burst() {
        let g = grant(&format!(
            "[[tokens]]\nname = \"slow\"\nhash = \"{HASH}\"\nrate = 0.001\nburst = 2\n"
        ));
        assert!(g.take().is_ok());
        assert!(g.take().is_ok());
        assert!(matches!(g.take(), Err(Error::ResourceExhausted(_))));
    }

    #[test]
    fn burst_is_whole_requests() {
        let g = grant(&format!(
            "[[tokens]]\nname = \"slow\"\nhash = \"{HASH}\"\nrate = 0.001\nburst = 2.9\n"
        ));
        assert!(g.take().is_ok());
        assert!(g.take().is_ok());
        assert!(
            matches!(g.take(), Err(Error::ResourceExhausted(m)) if m.contains("rate of 0.001"))
        );
    }

    #[test]
    fn rates_governor_cannot_count_are_refused_and_huge_ones_are_capped() {
        for (rate, burst, says) in [
            ("1e-12", "1", "burst / rate"),
            ("0.001", "1e12", "burst / rate"),
            ("inf", "1", "rate must be"),
            ("1", "0.5", "burst must be"),
        ] {
            let text = format!(
                "[[tokens]]\nname = \"a\"\nhash = \"{HASH}\"\nrate = {rate}\nburst = {burst}\n"
            );
            let e = parse_tokens(&text, Path::new("t.toml"))
                .err()
                .unwrap_or_default();
            assert!(e.contains(says), "rate {rate} burst {burst}: {e}");
        }
        // Faster than governor's 1 ns unit, and a burst past u32::MAX: both load.
        let g = grant(&format!(
            "[[tokens]]\nname = \"fast\"\nhash = \"{HASH}\"\nrate = 1e12\n"
        ));
        assert!(g.take().is_ok());
    }

    #[test]
    fn authenticate_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tokens.toml");
        std::fs::write(
            &f,
            format!("[[tokens]]\nname = \"t\"\nhash = \"{HASH}\"\nsend = [\">\"]\n"),
        )
        .expect("write");
        let auth = Auth::from_file(&f).expect("loads");
        assert!(matches!(
            auth.authenticate(None),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Basic dGVzdA==")),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some(b"Bearer nope")),
            Err(Error::Unauthenticated(_))
        ));
        let g = auth.authenticate(Some(b"bearer test")).expect("known");
        assert_eq!(g.name, "t");
        assert!(Auth::off().authenticate(None).is_ok());
    }
}
