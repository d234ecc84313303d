//! Who may do what: bearer tokens from a file of hashes, and the one place
//! that decides whether a request's token may act on a path.
//!
//! - The tokens file (`--auth-tokens`) is TOML with `[[tokens]]` entries:
//!   `name`, `hash` (what `leanmqd hash-token` prints; never the token
//!   itself), and lists `send`, `subscribe`, `admin` of NATS-style path
//!   patterns (`/order/>`, `/order/*/eu`, `>`). Optional `rate` (requests
//!   per second, per replica) and `burst` limit a token's traffic, and
//!   `max_queues` the queues it may create under each served prefix
//!   (counted in Redis, see [`crate::broker::Creator`]).
//!   Optional `prefixes` (e.g. `["mq:", "calc:"]`) limits the token to
//!   those of the served key prefixes; without it the token's patterns hold
//!   under every prefix leanmqd serves.
//! - [`crate::layers::AuthLayer`] authenticates every call (except gRPC
//!   health, which probes must reach) and puts the caller's [`Grant`] into
//!   the request's extensions; the RPC edge asks the grant before it acts.
//! - Grants are on paths and match exactly as Subscribe patterns do
//!   (`routing::Pattern`; property-tested against it in `auth/props.rs`):
//!   `/t/*` is `/t/x`, never `/t/x/y`. A receipt names only its queue;
//!   settling it needs a grant that covers some path of that queue.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::broker::Creator;
use crate::error::{Error, Result};
use crate::routing::{self, Pattern};

/// Largest `max_queues` a token may be given.
const MAX_TOKEN_QUEUES: u64 = 10_000_000;

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
    /// Queues it may create (and have at once; deleting one frees its place).
    max_queues: Option<u64>,
    /// The key prefixes the token may use; absent: every served prefix.
    prefixes: Option<Vec<String>>,
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
    /// The same segments over queue-name words, for receipts and queue
    /// names, which carry no path (see [`GrantPattern::queue_witness`]).
    words: Vec<Words>,
}

/// One grant segment seen over the words of a queue name (`order_status`
/// → `order`, `status`).
#[derive(Debug, Clone)]
enum Words {
    /// A literal segment and the words its queue name has (`a.b` → `a`, `b`).
    Literal(String, Vec<String>),
    /// `*`: one segment, so one or more words that are not all empty.
    One,
    /// A final `>`: the rest, as one segment.
    Rest,
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
        let words = segments
            .iter()
            .map(|s| match s.as_str() {
                "*" => Words::One,
                ">" => Words::Rest,
                lit => Words::Literal(
                    lit.to_string(),
                    routing::queue_name(lit)
                        .split('_')
                        .map(str::to_string)
                        .collect(),
                ),
            })
            .collect();
        Ok(GrantPattern {
            text: text.to_string(),
            segments,
            words,
        })
    }

    /// Does this grant cover every path the requested segments can match?
    /// Exactly as a Subscribe pattern matches paths (`routing::Pattern`):
    /// a literal covers only itself; `*` covers one non-empty segment (a
    /// literal or `*`), never more; `>` covers one or more of anything.
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

    /// Does this grant cover a queue known only by name? Only if some path
    /// it covers maps to that queue, so a name never reaches further than
    /// the paths do.
    fn covers_queue(&self, queue: &str) -> bool {
        self.queue_witness(queue).is_some()
    }

    /// A path this grant covers that maps to `queue`, if there is one.
    /// Linear in the words of `queue` per grant segment (no backtracking),
    /// whatever the name: `from[k][j]` is where segment `k - 1` starts
    /// when the first `k` segments make exactly the first `j` words.
    fn queue_witness(&self, queue: &str) -> Option<String> {
        // A name given directly (`responses:<uuid>`) is matched as the
        // path it reads as: `:` and `-` split words as `/` and `_` do.
        let mapped = routing::queue_name(queue);
        let w: Vec<&str> = mapped.split('_').collect();
        let n = w.len();
        let mut from = vec![vec![None::<usize>; n + 1]; self.words.len() + 1];
        from[0][0] = Some(0);
        for (k, seg) in self.words.iter().enumerate() {
            let (now, next) = from.split_at_mut(k + 1);
            let (now, next) = (&now[k], &mut next[0]);
            match seg {
                Words::Literal(_, lw) => {
                    for i in (0..=n).filter(|&i| now[i].is_some()) {
                        let end = i + lw.len();
                        if end <= n && w[i..end].iter().zip(lw).all(|(a, b)| *a == b) {
                            next[end] = Some(i);
                        }
                    }
                }
                Words::One | Words::Rest => {
                    // A run of words w[i..j] is a segment unless it is one
                    // empty word; `far` is a start at least two words back.
                    let mut far = None;
                    for j in 1..=n {
                        let near = (now[j - 1].is_some() && !w[j - 1].is_empty()).then_some(j - 1);
                        next[j] = near.or(far);
                        if now[j - 1].is_some() {
                            far = Some(j - 1);
                        }
                    }
                    if matches!(seg, Words::Rest) {
                        next[..n].fill(None);
                    }
                }
            }
        }
        let mut j = n;
        let mut path = Vec::with_capacity(self.words.len());
        for k in (1..=self.words.len()).rev() {
            let i = from[k][j]?;
            path.push(match &self.words[k - 1] {
                Words::Literal(text, _) => text.clone(),
                Words::One | Words::Rest => w[i..j].join("_"),
            });
            j = i;
        }
        (j == 0).then(|| {
            path.reverse();
            format!("/{}", path.join("/"))
        })
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
    /// The optional `max_queues` quota, counted in Redis.
    creator: Option<Creator>,
    /// Key prefixes this token may use; `None`: all that are served.
    prefixes: Option<Vec<String>>,
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
            creator: None,
            prefixes: None,
        })
    }

    fn denied(&self, action: Action, what: &str) -> Error {
        Error::PermissionDenied(format!(
            "token {:?} may not {} {what}",
            self.name,
            action.name()
        ))
    }

    /// May this caller `action` the (normalized) path of `route`? Decided
    /// on the path alone, as documented: `/t/*` allows `/t/x`, never
    /// `/t/x/y` (whose queue name, `t_x_y`, a looser reading would let
    /// `*` span).
    pub fn check(&self, action: Action, route: &routing::Route) -> Result<()> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        // A queue addressed by name has no path: it is allowed when some
        // path the grant covers maps to it (as for a receipt's queue).
        if route.path.is_empty() {
            return self.check_queue(action, &route.queue);
        }
        let segs: Vec<&str> = route.path.trim_start_matches('/').split('/').collect();
        let ok = rules.of(action).iter().any(|g| g.covers(&segs));
        if ok {
            Ok(())
        } else {
            Err(self.denied(
                action,
                &if route.path.is_empty() {
                    format!("queue {:?}", route.queue)
                } else {
                    format!("path {:?}", route.path)
                },
            ))
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
    /// Yes when a path the grant covers maps to that queue.
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

    /// May this caller `action` `queue`, whose owner path (if it has one)
    /// is `owner`? An owned queue is checked on its owner's path alone, so
    /// a grant on another spelling (`/order-status` for `/order/status`'s
    /// `order_status`) reaches nothing; an unowned one (made by LeanMQ, or
    /// before owners were recorded) as [`Grant::check_queue`].
    pub fn check_owned(&self, action: Action, queue: &str, owner: Option<&str>) -> Result<()> {
        match owner {
            Some(path) => self.check(
                action,
                &routing::Route {
                    path: path.to_string(),
                    queue: queue.to_string(),
                },
            ),
            None => self.check_queue(action, queue),
        }
    }

    /// Does this caller's grant limit paths at all (else no check needs a
    /// queue's owner)?
    pub fn restricted(&self) -> bool {
        self.rules.is_some()
    }

    /// May this caller use the key prefix `prefix` at all?
    pub fn check_prefix(&self, prefix: &str) -> Result<()> {
        match &self.prefixes {
            Some(allowed) if !allowed.iter().any(|p| p == prefix) => {
                Err(Error::PermissionDenied(format!(
                    "token {:?} may not use prefix {prefix:?} (its prefixes: {})",
                    self.name,
                    allowed
                        .iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// Is `queue` visible to this caller's admin grant (ListQueues filter)?
    pub fn sees_queue(&self, queue: &str) -> bool {
        self.check_queue(Action::Admin, queue).is_ok()
    }

    /// Whose quota the queues this caller creates count against.
    pub fn creator(&self) -> Option<Creator> {
        self.creator.clone()
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
        if t.max_queues.is_some_and(|m| m > MAX_TOKEN_QUEUES) {
            return Err(format!(
                "{at}: max_queues must be at most {MAX_TOKEN_QUEUES}"
            ));
        }
        let creator = t.max_queues.map(|max_queues| Creator {
            name: t.name.as_str().into(),
            max_queues,
        });
        if let Some(p) = &t.prefixes {
            if p.is_empty() {
                return Err(format!(
                    "{at}: prefixes is empty, which allows nothing; list prefixes or leave it out"
                ));
            }
            crate::rpc::prefixes::validate(p).map_err(|e| format!("{at}: {e}"))?;
        }
        let grant = Arc::new(Grant {
            name: t.name,
            rules: Some(rules),
            bucket,
            creator,
            prefixes: t.prefixes,
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
        self.grant_of_hash(&hash)
    }

    /// The grant of a token known by its [`hash_token`] form (the web
    /// console's session carries the hash, never the token), or
    /// UNAUTHENTICATED once it is revoked. With auth off, everything.
    pub fn grant_of_hash(&self, hash: &str) -> Result<Arc<Grant>> {
        if self.file.is_none() {
            return Ok(self.everything.clone());
        }
        let tokens = self
            .tokens
            .read()
            .map_err(|_| Error::Internal("token table lock poisoned".into()))?
            .clone();
        tokens
            .by_hash
            .get(hash)
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
mod props;

#[cfg(test)]
mod tests;
