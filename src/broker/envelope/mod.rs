//! LeanMQ's `data` envelope: how a message is stored in its stream entry,
//! and how a stored entry (written by leanmq-grpc or by LeanMQ Python)
//! becomes a delivery.
//!
//! Every entry has one field, `data`, holding a JSON object:
//! - the user's keys at the top level (for JSON-object payloads);
//! - `_leanmq`: `{"webhook": {"path", "timestamp"}}`, as LeanMQWebhook.send
//!   writes it, plus `"grpc": {...}` for what LeanMQ has no place for:
//!   `content_type`, `headers`, and `payload` (base64) for payloads that are
//!   not JSON objects. It sits inside `_leanmq` because LeanMQ copies the
//!   top-level keys when it dead-letters or requeues, but rebuilds
//!   `_metadata` from scratch: anything stored there would be lost.
//! - `_metadata`: `{"id": uuid4, "timestamp", "ttl"}`;
//! - `_failures` / `_requeues`: LeanMQ's DLQ and requeue histories.
//!
//! Values are carried as raw JSON text ([`RawValue`]), so user values are
//! never re-encoded: numbers, escapes and nesting stay byte for byte.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::error::{Error, Result};

/// LeanMQ's reserved top-level keys. A JSON-object payload may not use them.
pub const RESERVED_KEYS: [&str; 4] = ["_metadata", "_leanmq", "_failures", "_requeues"];

pub const JSON: &str = "application/json";
pub const OCTET_STREAM: &str = "application/octet-stream";

type Members = IndexMap<String, Box<RawValue>>;

/// A top-level key, borrowed from the JSON text unless it holds escapes.
#[derive(Deserialize, PartialEq, Eq, Hash)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The top-level members of a JSON object, read in one pass and borrowed
/// from its text: LeanMQ's reserved members by name, the user's in order.
/// Every send of a JSON object and every delivery reads one, so it copies
/// nothing and hashes nothing. A repeated key keeps its first place and its
/// last value, as reading the object into a map would.
///
/// `M` and `L` are how `_metadata` and `_leanmq` are read: typed, for a
/// delivery's one pass over a well-formed envelope, or raw ([`RawParts`]),
/// for a send (which only checks they are absent) and for an envelope whose
/// own members are malformed.
struct Parts<'a, M, L> {
    metadata: Option<M>,
    leanmq: Option<L>,
    failures: Option<&'a RawValue>,
    requeues: Option<&'a RawValue>,
    user: Vec<(Key<'a>, &'a RawValue)>,
}

type RawParts<'a> = Parts<'a, &'a RawValue, &'a RawValue>;
type TypedParts<'a> = Parts<'a, Metadata<'a>, LeanmqKey<'a>>;

/// Up to this many user keys, repeats are found by a scan as the object is
/// read; beyond it, by one map built at the end.
const SCAN_KEYS: usize = 16;

impl<M, L> Parts<'_, M, L> {
    /// The first of [`RESERVED_KEYS`] present, if any.
    fn reserved(&self) -> Option<&'static str> {
        [
            self.metadata.is_some(),
            self.leanmq.is_some(),
            self.failures.is_some(),
            self.requeues.is_some(),
        ]
        .iter()
        .zip(RESERVED_KEYS)
        .find_map(|(present, k)| present.then_some(k))
    }
}

impl<'de, M: Deserialize<'de>, L: Deserialize<'de>> Deserialize<'de> for Parts<'de, M, L> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Object<M, L>(std::marker::PhantomData<(M, L)>);
        impl<'de, M: Deserialize<'de>, L: Deserialize<'de>> serde::de::Visitor<'de> for Object<M, L> {
            type Value = Parts<'de, M, L>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut p = Parts {
                    metadata: None,
                    leanmq: None,
                    failures: None,
                    requeues: None,
                    user: Vec::new(),
                };
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    match &*k.0 {
                        "_metadata" => p.metadata = Some(map.next_value()?),
                        "_leanmq" => p.leanmq = Some(map.next_value()?),
                        "_failures" => p.failures = Some(map.next_value()?),
                        "_requeues" => p.requeues = Some(map.next_value()?),
                        _ => {
                            let v: &'de RawValue = map.next_value()?;
                            let seen = if p.user.len() < SCAN_KEYS {
                                p.user.iter_mut().find(|(seen, _)| *seen == k)
                            } else {
                                None
                            };
                            match seen {
                                Some(slot) => slot.1 = v,
                                None => p.user.push((k, v)),
                            }
                        }
                    }
                }
                if p.user.len() > SCAN_KEYS {
                    let unique: IndexMap<Key<'de>, &'de RawValue> = p.user.drain(..).collect();
                    p.user.extend(unique);
                }
                Ok(p)
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
    }
}

/// True for "application/json", with or without parameters, any case.
pub fn is_json_content_type(ct: &str) -> bool {
    ct.split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(JSON))
}

/// Seconds since the Unix epoch, as LeanMQ's `time.time()`.
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn json_str(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Append `s` as a JSON string. Most keys, paths and header values need no
/// escaping: those are copied as they are, without an allocation.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&json_str(s));
    }
}

/// The send time as LeanMQ writes it (`time.time()` as JSON), formatted once
/// for a whole batch rather than twice per message.
pub fn timestamp_text(now: f64) -> String {
    now.to_string()
}

/// Build the `data` field for a message sent through gRPC.
///
/// `payload` must already be within the size limit; `headers` validated.
pub fn encode(
    path: &str,
    payload: &[u8],
    content_type: &str,
    headers: &[(String, String)],
    ttl_secs: Option<u64>,
    now: f64,
) -> Result<String> {
    encode_at(
        path,
        payload,
        content_type,
        headers,
        ttl_secs,
        &timestamp_text(now),
    )
}

/// [`encode`] with the timestamp already formatted by [`timestamp_text`].
pub fn encode_at(
    path: &str,
    payload: &[u8],
    content_type: &str,
    headers: &[(String, String)],
    ttl_secs: Option<u64>,
    now: &str,
) -> Result<String> {
    let members = json_members(payload, content_type)?;
    let mut out = String::with_capacity(payload.len() + 256);
    out.push('{');
    if let Some(m) = &members {
        for (k, v) in &m.user {
            push_json_str(&mut out, &k.0);
            out.push(':');
            out.push_str(v.get());
            out.push(',');
        }
    }
    // A message sent to a queue by name (empty `path`) has no webhook path,
    // as LeanMQ's `Queue.send_message` writes none; with nothing else to
    // say either, it has no `_leanmq` at all.
    let plain_json_object = members.is_some() && content_type == JSON;
    let grpc_part = !plain_json_object || !headers.is_empty();
    let leanmq = !path.is_empty() || grpc_part;
    if leanmq {
        out.push_str("\"_leanmq\":{");
    }
    if !path.is_empty() {
        out.push_str("\"webhook\":{\"path\":");
        push_json_str(&mut out, path);
        out.push_str(",\"timestamp\":");
        out.push_str(now);
        out.push('}');
    }
    if grpc_part {
        if !path.is_empty() {
            out.push(',');
        }
        push_grpc_member(&mut out, payload, content_type, headers, members.is_some());
    }
    if leanmq {
        out.push_str("},");
    }
    out.push_str("\"_metadata\":{\"id\":\"");
    out.push_str(
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    out.push_str("\",\"timestamp\":");
    out.push_str(now);
    match ttl_secs {
        Some(t) => {
            out.push_str(",\"ttl\":");
            out.push_str(&t.to_string());
            out.push_str("}}");
        }
        None => out.push_str(",\"ttl\":null}}"),
    }
    Ok(out)
}

/// The members of a JSON object payload (sent as LeanMQ's top-level keys);
/// `None` for any other payload. A payload declared JSON must parse, and may
/// not use LeanMQ's reserved keys.
fn json_members<'p>(payload: &'p [u8], content_type: &str) -> Result<Option<RawParts<'p>>> {
    if !is_json_content_type(content_type) {
        return Ok(None);
    }
    match serde_json::from_slice::<RawParts>(payload) {
        Ok(m) => {
            if let Some(k) = m.reserved() {
                return Err(Error::invalid(format!(
                    "payload uses the reserved top-level key {k:?}; LeanMQ keeps {RESERVED_KEYS:?} for itself"
                )));
            }
            Ok(Some(m))
        }
        Err(_) => {
            // Not an object: still has to be JSON, since the sender said so.
            serde_json::from_slice::<&RawValue>(payload).map_err(|e| {
                Error::invalid(format!(
                    "content_type is application/json but the payload is not valid JSON: {e}"
                ))
            })?;
            Ok(None)
        }
    }
}

/// `_leanmq.grpc` (the caller decides whether it is needed): what a plain
/// JSON object doesn't say by itself — the
/// content type, headers, and a non-object payload in base64.
fn push_grpc_member(
    out: &mut String,
    payload: &[u8],
    content_type: &str,
    headers: &[(String, String)],
    is_object: bool,
) {
    let plain_json_object = is_object && content_type == JSON;
    {
        out.push_str("\"grpc\":{");
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !first {
                out.push(',');
            }
            first = false;
        };
        if !plain_json_object {
            sep(out);
            out.push_str("\"content_type\":");
            push_json_str(out, content_type);
        }
        if !headers.is_empty() {
            sep(out);
            out.push_str("\"headers\":{");
            for (i, (k, v)) in headers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, k);
                out.push(':');
                push_json_str(out, v);
            }
            out.push('}');
        }
        if !is_object {
            sep(out);
            out.push_str("\"payload\":\"");
            STANDARD.encode_string(payload, out);
            out.push('"');
        }
        out.push('}');
    }
}

// The envelope's own members, their strings borrowed from the entry's text
// (a string holding escapes is the rare one copied).
#[derive(Deserialize, Default)]
struct Metadata<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<f64>,
}

#[derive(Deserialize, Default)]
struct LeanmqKey<'a> {
    #[serde(default, borrow)]
    webhook: Option<WebhookKey<'a>>,
    #[serde(default, borrow)]
    grpc: Option<GrpcKey<'a>>,
}

#[derive(Deserialize, Default)]
struct WebhookKey<'a> {
    #[serde(default, borrow)]
    path: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct GrpcKey<'a> {
    #[serde(default, borrow)]
    content_type: Option<Cow<'a, str>>,
    #[serde(default)]
    headers: Option<IndexMap<String, String>>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
}

/// A stored message, decoded for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub payload: Bytes,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    /// `_leanmq.webhook.path`, when present.
    pub path: Option<String>,
    /// `_metadata.timestamp`, seconds since the epoch, when present.
    pub published_at: Option<f64>,
}

fn parse_or_default<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>) -> T {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// Decode the `data` field of an entry (or its absence) into a delivery.
/// Never fails: an entry that is not a LeanMQ envelope is delivered raw,
/// with the header `leanmq-envelope: invalid`, rather than dropped (LeanMQ
/// acks and drops such entries; that loses data).
pub fn decode(data: Option<&[u8]>) -> Decoded {
    let raw_fallback = |bytes: &[u8]| Decoded {
        payload: Bytes::copy_from_slice(bytes),
        content_type: OCTET_STREAM.to_string(),
        headers: vec![("leanmq-envelope".to_string(), "invalid".to_string())],
        path: None,
        published_at: None,
    };
    let Some(data) = data else {
        return raw_fallback(b"");
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return raw_fallback(data);
    };
    // One pass for a well-formed envelope; a second, lenient one reads an
    // entry whose `_metadata` or `_leanmq` is not as LeanMQ writes them, so
    // the rest of it is still delivered.
    let (metadata, leanmq, parts): (Metadata, LeanmqKey, RawParts) =
        match serde_json::from_str::<TypedParts>(text) {
            Ok(p) => (
                p.metadata.unwrap_or_default(),
                p.leanmq.unwrap_or_default(),
                Parts {
                    metadata: None,
                    leanmq: None,
                    failures: p.failures,
                    requeues: p.requeues,
                    user: p.user,
                },
            ),
            Err(_) => match serde_json::from_str::<RawParts>(text) {
                Ok(p) => (parse_or_default(p.metadata), parse_or_default(p.leanmq), p),
                Err(_) => return raw_fallback(data),
            },
        };
    let mut headers: Vec<(String, String)> = Vec::new();
    let grpc = leanmq.grpc.unwrap_or_default();
    if let Some(h) = grpc.headers {
        headers.extend(h);
    }
    if let Some(id) = metadata.id {
        headers.push(("leanmq-id".to_string(), id.into_owned()));
    }
    for (v, header) in [
        (parts.failures, "leanmq-failures"),
        (parts.requeues, "leanmq-requeues"),
    ] {
        if let Some(v) = v {
            headers.push((header.to_string(), v.get().to_string()));
        }
    }
    let content_type = |default: &str| grpc.content_type.as_deref().unwrap_or(default).to_string();
    let (payload, content_type) = match &grpc.payload {
        Some(b64) => match STANDARD.decode(b64.as_bytes()) {
            Ok(p) => (Bytes::from(p), content_type(OCTET_STREAM)),
            Err(_) => return raw_fallback(data),
        },
        None => {
            let mut out = String::with_capacity(data.len());
            out.push('{');
            for (i, (k, v)) in parts.user.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(&mut out, &k.0);
                out.push(':');
                out.push_str(v.get());
            }
            out.push('}');
            (Bytes::from(out), content_type(JSON))
        }
    };
    Decoded {
        payload,
        content_type,
        headers,
        path: leanmq.webhook.and_then(|w| w.path).map(Cow::into_owned),
        published_at: metadata.timestamp,
    }
}

/// The `data` of a requeued copy of a dead letter: a LeanMQ `_requeues`
/// record appended and `_metadata` renewed (keeping its id), as LeanMQ's
/// `requeue_messages` does.
pub fn requeue_data(data: Option<&[u8]>, from_dlq: &str, to_queue: &str, now: f64) -> String {
    let mut members = members_or_wrapped(data);
    let record = format!(
        "{{\"timestamp\":{now},\"from_dlq\":{},\"to_queue\":{}}}",
        json_str(from_dlq),
        json_str(to_queue)
    );
    let mut list: Vec<Box<RawValue>> = members
        .get("_requeues")
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default();
    if let Ok(rec) = RawValue::from_string(record) {
        list.push(rec);
    }
    if let Ok(l) = serde_json::to_string(&list).and_then(RawValue::from_string) {
        members.insert("_requeues".to_string(), l);
    }
    renew_metadata(&mut members, now);
    serde_json::to_string(&members).unwrap_or_else(|_| "{}".to_string())
}

/// The top-level members of a stored envelope; an entry that is not one is
/// wrapped as a binary payload (marked `leanmq-envelope: invalid`), so a
/// DLQ or requeue copy still carries its bytes.
fn members_or_wrapped(data: Option<&[u8]>) -> Members {
    if let Some(Ok(m)) = data.map(serde_json::from_slice::<Members>) {
        return m;
    }
    let wrapped = format!(
        "{{\"_leanmq\":{{\"grpc\":{{\"content_type\":\"{OCTET_STREAM}\",\"headers\":{{\"leanmq-envelope\":\"invalid\"}},\"payload\":\"{}\"}}}}}}",
        STANDARD.encode(data.unwrap_or_default())
    );
    serde_json::from_str::<Members>(&wrapped).unwrap_or_default()
}

fn renew_metadata(members: &mut Members, now: f64) {
    let metadata: Metadata = parse_or_default(members.get("_metadata").map(|b| &**b));
    let id = metadata
        .id
        .map(Cow::into_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let meta = format!(
        "{{\"id\":{},\"timestamp\":{},\"ttl\":null}}",
        json_str(&id),
        now
    );
    if let Ok(m) = RawValue::from_string(meta) {
        members.insert("_metadata".to_string(), m);
    }
}

/// One recorded failure, read back from `_failures`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FailureRecord {
    #[serde(default)]
    pub timestamp: f64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub message_id: String,
}

/// The `_failures` history of an entry (LeanMQ's or ours), oldest first.
pub fn failures(data: Option<&[u8]>) -> Vec<FailureRecord> {
    data.and_then(|d| serde_json::from_slice::<Members>(d).ok())
        .and_then(|m| {
            m.get("_failures")
                .and_then(|r| serde_json::from_str::<Vec<serde_json::Value>>(r.get()).ok())
        })
        .map(|list| {
            list.into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One `_failures` record. LeanMQ writes `timestamp` and `reason`; the rest
/// are leanmq-grpc's additions, which LeanMQ ignores.
pub struct Failure<'a> {
    pub reason: &'a str,
    pub attempts: u32,
    pub group: &'a str,
    pub message_id: &'a str,
    pub now: f64,
}

/// The `data` of the dead-letter copy of an entry: the original envelope with
/// a `_failures` record appended and `_metadata` renewed (keeping its id),
/// as LeanMQ's `move_to_dlq` does.
pub fn dead_letter_data(data: Option<&[u8]>, f: &Failure<'_>) -> String {
    let record = format!(
        "{{\"timestamp\":{},\"reason\":{},\"attempts\":{},\"group\":{},\"message_id\":{}}}",
        f.now,
        json_str(f.reason),
        f.attempts,
        json_str(f.group),
        json_str(f.message_id)
    );
    let mut members = members_or_wrapped(data);
    let mut failures: Vec<Box<RawValue>> = members
        .get("_failures")
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default();
    if let Ok(rec) = RawValue::from_string(record) {
        failures.push(rec);
    }
    if let Ok(list) = serde_json::to_string(&failures).and_then(RawValue::from_string) {
        members.insert("_failures".to_string(), list);
    }
    renew_metadata(&mut members, f.now);
    serde_json::to_string(&members).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests;
