//! Path → queue → Redis keys, exactly as LeanMQ 0.2.0 lays them out.
//!
//! | key | what |
//! | --- | --- |
//! | `{prefix}{q}` | the queue stream |
//! | `{prefix}{q}:dlq` | its dead-letter stream |
//! | `{prefix}{q}:metadata`, `{prefix}{q}:dlq:metadata` | LeanMQ's metadata hashes |
//! | `{prefix}{q}:expiry` | LeanMQ's TTL sorted set |
//! | `{prefix}registry` | set of every queue and DLQ stream key |
//! | `{prefix}{q}:leases:{group}` | leanmq-grpc: due time (ms, Redis clock) of every pending entry the broker manages for `group` |
//! | `{prefix}{q}:order:{group}` | leanmq-grpc: the keyed entries `group` has not settled, as `key\0<padded id>` members (ordering keys, see `lua/common.lua`) |
//! | `{prefix}{q}:delayed`, `{prefix}{q}:delayed:data` | leanmq-grpc: delayed messages (due ms) and their envelopes, until appended |
//! | `{prefix}{q}:dedup:{key}` | leanmq-grpc: idempotency key → first message's id, expiring after the dedup window |
//! | `{prefix}{q}:paths` | leanmq-grpc: the paths seen for this queue (for patterns and ListQueues) |
//! | `{prefix}{q}:stats` | leanmq-grpc: counters (`expired`, `dropped`) |
//! | `{prefix}{q}:owner` | leanmq-grpc: the path that owns the queue, written once by the first path that creates it (`--allow-colliding-paths` aside, every other spelling is refused) |
//! | `{prefix}schedule` | leanmq-grpc: queue name → earliest delayed due time (ms) |
//! | `{prefix}receipt-key` | leanmq-grpc: the key replicas sign receipts with, unless configured (`broker::receipt`); its `-` can be in no queue name |
//! | `{prefix}{#push}:sub:{name}`, `{prefix}{#push}:index` | leanmq-grpc: push subscriptions and their index (`broker::push`) |
//! | `{prefix}#created-by:{token}` | leanmq-grpc: the queues a token with `max_queues` has created (`broker::Creator`) |
//!
//! Queue names that paths map to hold only alphanumerics and `_`, so no
//! such queue's keys can collide with another queue's `:`-suffixed keys.
//! A request may also name a queue directly (LeanMQ's core API does:
//! `responses:<uuid>`); such a name may hold `:` and `-`, so [`named`]
//! refuses every name whose stream key would be one of another queue's
//! keys in the table above ([`RESERVED_SUFFIXES`], [`RESERVED_INFIXES`]),
//! the prefix-wide names ([`RESERVED_NAMES`]) and the start of every
//! token's set of created queues ([`OWNER_MARK`]).
//!
//! **Redis Cluster:** the queue name is a hash tag, `{prefix}{{q}}` (so
//! `webhook:{order_status}`, `webhook:{order_status}:dlq`, …): every key of
//! a queue lands in one slot and each script stays atomic. Only
//! `{prefix}registry`, `{prefix}schedule` and `{prefix}receipt-key` live elsewhere and are updated
//! by separate, idempotent commands. LeanMQ 0.2.0 knows no cluster and reads
//! the plain keys, so sharing queues with LeanMQ needs a single Redis.

use crate::error::{Error, Result};

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest accepted group or consumer name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// A validated webhook path and the queue it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The path as LeanMQ normalizes it: leading `/`, no trailing `/`. Goes
    /// into `_leanmq.webhook.path` and `Delivery.path`.
    pub path: String,
    /// The queue name (`order_status`), without the key prefix.
    pub queue: String,
}

/// LeanMQ's `_normalize_path`: drop one trailing `/` (unless the path is `/`),
/// then make sure it starts with `/`.
pub fn normalize_path(path: &str) -> String {
    let p = if path != "/" && path.ends_with('/') {
        &path[..path.len() - 1]
    } else {
        path
    };
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// LeanMQ's `_path_to_queue_name`: strip every leading and trailing `/`,
/// turn `/` into `_`, then every non-alphanumeric character into `_`.
pub fn queue_name(normalized: &str) -> String {
    normalized
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect()
}

/// Validate a client path and map it to its queue.
pub fn route(path: &str) -> Result<Route> {
    if path.is_empty() {
        return Err(Error::invalid(
            "path is empty; give a webhook path such as \"/order/status/\"",
        ));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::invalid(format!(
            "path is {} bytes; the limit is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "path contains control character U+{:04X}; paths are printable text",
            c as u32
        )));
    }
    let normalized = normalize_path(path);
    let queue = queue_name(&normalized);
    if queue.is_empty() {
        return Err(Error::invalid(format!(
            "path {path:?} maps to an empty queue name; use a path with at least one segment, such as \"/events\""
        )));
    }
    check_not_reserved(path, &queue)?;
    Ok(Route {
        path: normalized,
        queue,
    })
}

/// Name endings that would make a queue's stream key another queue's key:
/// `a:dlq` is queue `a`'s DLQ, `a:metadata` its metadata, and so on.
pub const RESERVED_SUFFIXES: [&str; 8] = [
    ":dlq",
    ":metadata",
    ":expiry",
    ":delayed",
    ":delayed:data",
    ":paths",
    ":stats",
    ":owner",
];
/// Name parts followed by a client-chosen word in another queue's keys
/// (`a:leases:{group}`, `a:order:{group}`, `a:dedup:{key}`).
pub const RESERVED_INFIXES: [&str; 3] = [":leases:", ":order:", ":dedup:"];
/// Names whose stream key is a prefix-wide key (`{prefix}registry`,
/// `{prefix}schedule`, `{prefix}receipt-key`).
pub const RESERVED_NAMES: [&str; 3] = ["registry", "schedule", "receipt-key"];

/// After the prefix, the start of the key of a token's set of created
/// queues (`{prefix}#created-by:{token name}`): no queue name starts so.
pub const OWNER_MARK: &str = "#created-by:";

/// Check a queue name given directly (the `queue` field of a request, or
/// the queue of a receipt): non-empty, at most [`MAX_PATH_BYTES`], printable
/// without whitespace, no `{` or `}` (Redis Cluster hash tags), and not
/// colliding with another queue's keys. Every name [`queue_name`] makes
/// passes.
pub fn check_queue_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("queue is empty"));
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(Error::invalid(format!(
            "queue name is {} bytes; the limit is {MAX_PATH_BYTES}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == '{' || *c == '}')
    {
        return Err(Error::invalid(format!(
            "queue name {name:?} contains {c:?}; names are printable, without whitespace, '{{' or '}}'"
        )));
    }
    if let Some(s) = RESERVED_SUFFIXES.iter().find(|s| name.ends_with(**s)) {
        return Err(Error::invalid(format!(
            "queue name {name:?} ends in {s:?}, which names another queue's own key; choose another name"
        )));
    }
    if let Some(s) = RESERVED_INFIXES.iter().find(|s| name.contains(**s)) {
        return Err(Error::invalid(format!(
            "queue name {name:?} contains {s:?}, which names another queue's own keys; choose another name"
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(Error::invalid(format!(
            "queue name {name:?} is the prefix's own {name} key; choose another name"
        )));
    }
    if name.starts_with(OWNER_MARK) {
        return Err(Error::invalid(format!(
            "queue name {name:?} starts with {OWNER_MARK:?}, which names the broker's record of a token's queues; choose another name"
        )));
    }
    Ok(())
}

/// Refuse a path (or queue name) that maps onto a global key.
pub fn check_not_reserved(asked: &str, queue: &str) -> Result<()> {
    if RESERVED_NAMES.contains(&queue) {
        return Err(Error::invalid(format!(
            "{asked:?} maps to the queue name {queue:?}, which is reserved: its key is the broker's own {queue} key; choose another path"
        )));
    }
    Ok(())
}

/// The route of a queue addressed by name: no path (`path` is empty, so
/// nothing records or writes one).
pub fn named(queue: &str) -> Result<Route> {
    check_queue_name(queue)?;
    Ok(Route {
        path: String::new(),
        queue: queue.to_string(),
    })
}

/// A request's queue, from its `path` or its `queue` field: exactly one of
/// the two.
pub fn address(path: &str, queue: &str) -> Result<Route> {
    match (path.is_empty(), queue.is_empty()) {
        (false, true) => route(path),
        (true, false) => named(queue),
        (true, true) => Err(Error::invalid(
            "give the queue by path (\"/order/status/\") or by queue name (\"order_status\")",
        )),
        (false, false) => Err(Error::invalid(
            "path and queue are both set; give one of the two",
        )),
    }
}

/// True when `name` could have come out of [`queue_name`].
/// Validate the path of a message to send: [`route`], and no `*` or `>`
/// anywhere. Those are Subscribe wildcards, so Receive and Subscribe could
/// never name such a path, and its messages could only be read through a
/// pattern by accident (NATS refuses wildcards in a publish subject too).
pub fn send_route(path: &str) -> Result<Route> {
    let route = route(path)?;
    if let Some(c) = path.chars().find(|c| *c == '*' || *c == '>') {
        return Err(Error::invalid(format!(
            "path {path:?} contains {c:?}, a Subscribe wildcard: no Receive or Subscribe could name it; send to a path without \"*\" and \">\""
        )));
    }
    Ok(route)
}

/// True when `name` could have come out of [`queue_name`] (used to validate
/// receipts, which carry a queue name).
pub fn is_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PATH_BYTES * 4
        && name.chars().all(|c| c == '_' || c.is_alphanumeric())
}

/// Validate a group or consumer name (`what` names the field in errors).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

/// LeanMQ's default group for a queue.
pub fn default_group(queue: &str) -> String {
    format!("{queue}-group")
}

/// The Redis keys of one queue under a prefix.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    pub queue: String,
    pub stream: String,
    pub dlq: String,
    pub meta: String,
    pub dlq_meta: String,
    pub expiry: String,
    pub registry: String,
    pub delayed: String,
    pub delayed_data: String,
    pub paths: String,
    pub stats: String,
    /// The path that owns the queue.
    pub owner: String,
    pub schedule: String,
}

impl QueueKeys {
    /// `cluster`: hash-tag the queue name so its keys share a slot.
    pub fn new(prefix: &str, queue: &str, cluster: bool) -> Self {
        let stream = if cluster {
            format!("{prefix}{{{queue}}}")
        } else {
            format!("{prefix}{queue}")
        };
        QueueKeys {
            queue: queue.to_string(),
            dlq: format!("{stream}:dlq"),
            meta: format!("{stream}:metadata"),
            dlq_meta: format!("{stream}:dlq:metadata"),
            expiry: format!("{stream}:expiry"),
            registry: format!("{prefix}registry"),
            delayed: format!("{stream}:delayed"),
            delayed_data: format!("{stream}:delayed:data"),
            paths: format!("{stream}:paths"),
            stats: format!("{stream}:stats"),
            owner: format!("{stream}:owner"),
            schedule: format!("{prefix}schedule"),
            stream,
        }
    }

    /// The due-time sorted set leanmq-grpc keeps for one group.
    pub fn leases(&self, group: &str) -> String {
        format!("{}:leases:{group}", self.stream)
    }
}

/// The queue name of a registry member (a stream or DLQ key), if it is a
/// queue stream under `prefix` in this key layout.
pub fn queue_of_key<'a>(prefix: &str, key: &'a str, cluster: bool) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?;
    let q = if cluster {
        rest.strip_prefix('{')?.strip_suffix('}')?
    } else {
        rest
    };
    check_queue_name(q).is_ok().then_some(q)
}

/// A Subscribe pattern, as NATS subjects: `*` matches one segment, a final
/// `>` matches one or more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    /// The pattern as given, normalized like a path.
    pub text: String,
    segments: Vec<String>,
}

/// The segments of a normalized path (`/a/b` → `["a", "b"]`).
fn segments(normalized: &str) -> Vec<&str> {
    normalized.trim_start_matches('/').split('/').collect()
}

impl Pattern {
    /// `Ok(None)` when `path` is a plain path (no wildcard segment).
    pub fn parse(path: &str) -> Result<Option<Pattern>> {
        let normalized = normalize_path(path);
        let segs = segments(&normalized);
        if !segs.iter().any(|s| s.contains('*') || s.contains('>')) {
            return Ok(None);
        }
        route(path)?; // length and character checks
        for (i, s) in segs.iter().enumerate() {
            let wild = *s == "*" || *s == ">";
            if !wild && (s.contains('*') || s.contains('>')) {
                return Err(Error::invalid(format!(
                    "pattern {path:?}: a wildcard must be a whole segment (\"*\" or a final \">\")"
                )));
            }
            if *s == ">" && i + 1 != segs.len() {
                return Err(Error::invalid(format!(
                    "pattern {path:?}: \">\" may only be the last segment"
                )));
            }
            if s.is_empty() {
                return Err(Error::invalid(format!(
                    "pattern {path:?} has an empty segment"
                )));
            }
        }
        Ok(Some(Pattern {
            segments: segs.iter().map(|s| s.to_string()).collect(),
            text: normalized,
        }))
    }

    /// Does a normalized path match?
    pub fn matches(&self, path: &str) -> bool {
        let segs = segments(path);
        let mut i = 0;
        for (k, p) in self.segments.iter().enumerate() {
            if p == ">" {
                return segs.len() > k;
            }
            match segs.get(i) {
                // `*` is one segment, and an empty one is none (as in NATS).
                Some(s) if (p == "*" && !s.is_empty()) || p == s => i += 1,
                _ => return false,
            }
        }
        i == segs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_like_leanmq() {
        for (path, q) in [
            ("/order/status/", "order_status"),
            ("order/status", "order_status"),
            ("/Order.Status", "Order_Status"),
            ("//a//b//", "a__b"),
            ("/order-status", "order_status"),
            ("/café/über", "café_über"),
        ] {
            assert_eq!(
                route(path).map(|r| r.queue).ok().as_deref(),
                Some(q),
                "{path}"
            );
        }
        assert_eq!(
            route("/order/status/").map(|r| r.path).ok().as_deref(),
            Some("/order/status")
        );
        assert_eq!(route("a/").map(|r| r.path).ok().as_deref(), Some("/a"));
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "",
            "/",
            "//",
            "/a\0b",
            "/a\nb",
            &"x".repeat(MAX_PATH_BYTES + 1),
        ] {
            assert!(
                matches!(route(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sent_paths_hold_no_wildcard() {
        assert!(send_route("/order/status").is_ok());
        for bad in ["/order/*", "/order/>", "/a*b", "/a>b", ">"] {
            assert!(
                matches!(send_route(bad), Err(Error::InvalidArgument(m)) if m.contains("wildcard")),
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns_match_like_nats_subjects() {
        let p = |s: &str| Pattern::parse(s).ok().flatten().expect("pattern");
        assert!(Pattern::parse("/order/status").ok().flatten().is_none());
        assert!(p("/order/*").matches("/order/status"));
        assert!(!p("/order/*").matches("/order/status/eu"));
        assert!(!p("/order/*").matches("/order"));
        assert!(!p("/order/*").matches("/order/"));
        assert!(p("/order/>").matches("/order/status/eu"));
        assert!(!p("/order/>").matches("/order"));
        assert!(p("/*/status").matches("/order/status"));
        assert!(!p("/*/status").matches("/order/payment"));
        for bad in ["/order/>/x", "/ord*", "/a/b>", "/a//*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_follow_the_wire_format() {
        let k = QueueKeys::new("webhook:", "order_status", false);
        assert_eq!(k.stream, "webhook:order_status");
        assert_eq!(k.dlq, "webhook:order_status:dlq");
        assert_eq!(k.meta, "webhook:order_status:metadata");
        assert_eq!(k.dlq_meta, "webhook:order_status:dlq:metadata");
        assert_eq!(k.expiry, "webhook:order_status:expiry");
        assert_eq!(k.registry, "webhook:registry");
        assert_eq!(default_group("order_status"), "order_status-group");
        assert_eq!(
            queue_of_key("webhook:", "webhook:order_status", false),
            Some("order_status")
        );
        assert_eq!(
            queue_of_key("webhook:", "webhook:order_status:dlq", false),
            None
        );
    }

    #[test]
    fn names_with_colons_and_dashes_address_queues() {
        let r = address("", "responses:3f2b-11ee").expect("named");
        assert_eq!(r.queue, "responses:3f2b-11ee");
        assert_eq!(r.path, "");
        assert_eq!(
            queue_of_key("calc:", "calc:responses:3f2b-11ee", false),
            Some("responses:3f2b-11ee")
        );
        assert!(matches!(address("", ""), Err(Error::InvalidArgument(_))));
        assert!(matches!(address("/a", "a"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn refuses_every_name_that_is_another_queues_key() {
        let k = QueueKeys::new("p:", "a", false);
        for key in [
            &k.dlq,
            &k.meta,
            &k.dlq_meta,
            &k.expiry,
            &k.delayed,
            &k.delayed_data,
            &k.paths,
            &k.stats,
            &k.owner,
            &k.leases("g"),
            &format!("{}:dedup:x", k.stream),
            &k.registry,
            &k.schedule,
            &format!("p:{OWNER_MARK}some token"),
            &format!("p:{OWNER_MARK}"),
        ] {
            let name = key.strip_prefix("p:").expect("prefixed");
            assert!(
                matches!(named(name), Err(Error::InvalidArgument(_))),
                "{name}"
            );
        }
        for bad in ["", "a b", "a{b}", "a\nb", &"x".repeat(MAX_PATH_BYTES + 1)] {
            assert!(
                matches!(named(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(named("a:dlq:x").is_ok());
        assert!(named("a#created-by:x").is_ok());
    }

    #[test]
    fn cluster_keys_share_one_hash_slot() {
        let k = QueueKeys::new("webhook:", "order_status", true);
        assert_eq!(k.stream, "webhook:{order_status}");
        assert_eq!(k.dlq, "webhook:{order_status}:dlq");
        assert_eq!(k.leases("g"), "webhook:{order_status}:leases:g");
        assert_eq!(k.owner, "webhook:{order_status}:owner");
        assert_eq!(k.registry, "webhook:registry");
        assert_eq!(
            queue_of_key("webhook:", &k.stream, true),
            Some("order_status")
        );
        assert_eq!(queue_of_key("webhook:", &k.dlq, true), None);
    }
}
