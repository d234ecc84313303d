//! HTTP request → `SendRequest`, at the edge: only the HTTP forms are read
//! here (query strings, `X-Leanmq-Header-*`, JSON batch elements). Every
//! value's own rule (ranges, lengths, reserved names) is checked once, by
//! `rpc::convert`, as for gRPC.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;

use crate::broker::limits::MAX_HEADERS;
use crate::error::{Error, Result};
use crate::proto;

/// The prefix of a header that becomes a message header.
pub const HEADER_PREFIX: &str = "x-leanmq-header-";
/// The query parameters `/v1/send/<path>` takes, at most once each.
const PARAMS: [&str; 5] = ["delay", "ttl", "deliver_at", "prefix", "ordering_key"];

/// The options of a send, as the query string or a batch element gives them.
#[derive(Debug, Default)]
pub struct Options {
    pub delay: Option<String>,
    pub ttl: Option<String>,
    pub deliver_at: Option<String>,
    pub prefix: Option<String>,
    pub ordering_key: Option<String>,
}

/// `delay=30s`, `ttl=1h`, `deliver_at=2026-12-24T18:00:00Z`, … from a
/// query string; an unknown or repeated parameter is refused, so a typo
/// never silently sends without its option.
pub fn query(q: Option<&str>) -> Result<Options> {
    let mut seen: Vec<&str> = Vec::new();
    let mut o = Options::default();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        let Some(name) = PARAMS.iter().find(|p| **p == k) else {
            return Err(Error::invalid(format!(
                "unknown query parameter (these are taken: {})",
                PARAMS.join(", ")
            )));
        };
        if seen.contains(name) {
            return Err(Error::invalid(format!(
                "query parameter {name} is given twice"
            )));
        }
        seen.push(name);
        let v = Some(v.into_owned());
        match *name {
            "delay" => o.delay = v,
            "ttl" => o.ttl = v,
            "deliver_at" => o.deliver_at = v,
            "prefix" => o.prefix = v,
            _ => o.ordering_key = v,
        }
    }
    Ok(o)
}

/// A duration as `30s`, `1500ms`, `5m` (humantime) or bare seconds.
fn duration(field: &str, v: &str) -> Result<prost_types::Duration> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(v).map_err(|_| {
            Error::invalid(format!(
                "{field} is not a duration (examples: 30s, 1500ms, 5m, 90)"
            ))
        })?,
    };
    Ok(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    })
}

/// A point in time as RFC 3339 or Unix seconds.
fn time(field: &str, v: &str) -> Result<prost_types::Timestamp> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        });
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|_| {
        Error::invalid(format!(
            "{field} is not a time (RFC 3339, e.g. 2026-12-24T18:00:00Z, or Unix seconds)"
        ))
    })?;
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::invalid(format!("{field} is before 1970")))?;
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    })
}

impl Options {
    /// Put these options on `r`.
    pub fn apply(self, r: &mut proto::SendRequest) -> Result<()> {
        r.delay = self
            .delay
            .as_deref()
            .map(|v| duration("delay", v))
            .transpose()?;
        r.ttl = self
            .ttl
            .as_deref()
            .map(|v| duration("ttl", v))
            .transpose()?;
        r.deliver_at = self
            .deliver_at
            .as_deref()
            .map(|v| time("deliver_at", v))
            .transpose()?;
        r.prefix = self.prefix.unwrap_or_default();
        r.ordering_key = self.ordering_key.unwrap_or_default();
        Ok(())
    }
}

/// The text of a header, if given; a value that is not text is refused.
pub fn text<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>> {
    let mut all = h.get_all(name).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(Error::invalid(format!("header {name} is given twice")));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| Error::invalid(format!("header {name} is not visible ASCII")))
}

/// The message headers of `X-Leanmq-Header-<name>: value` (names lower
/// case, as HTTP sends them). The count is bounded before anything is
/// kept; sizes and names are checked by `rpc::convert`.
pub fn message_headers(h: &HeaderMap) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for (name, value) in h {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if out.len() == MAX_HEADERS {
            return Err(Error::invalid(format!(
                "more than {MAX_HEADERS} X-Leanmq-Header-* headers; the limit is {MAX_HEADERS}"
            )));
        }
        let value = value
            .to_str()
            .map_err(|_| Error::invalid(format!("header {name} is not visible ASCII")))?;
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(Error::invalid(format!("header {name} is given twice")));
        }
    }
    Ok(out)
}

/// The media types a body cannot be: an HTML form's. A browser posts
/// those cross-site without asking (CORS "simple" requests), and they are
/// no message anyway.
pub fn check_not_form(content_type: &str) -> std::result::Result<(), String> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/x-www-form-urlencoded" || essence == "multipart/form-data" {
        return Err(format!(
            "{essence} is a form, not a message: send the body with its own content type (application/json, …)"
        ));
    }
    Ok(())
}

/// Is `content_type` JSON (`application/json`, with parameters or not)?
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
}

/// The single send's request, from its parts.
pub fn send_request(
    path: String,
    headers: &HeaderMap,
    query: Option<&str>,
    payload: bytes::Bytes,
) -> Result<proto::SendRequest> {
    let mut r = proto::SendRequest {
        path,
        payload,
        content_type: text(headers, header::CONTENT_TYPE.as_str())?
            .unwrap_or_default()
            .to_string(),
        headers: message_headers(headers)?,
        idempotency_key: text(headers, "idempotency-key")?
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    self::query(query)?.apply(&mut r)?;
    Ok(r)
}

/// One element of a `/v1/send-batch` array.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Element {
    pub path: String,
    /// A JSON value, stored as `application/json`.
    pub data: Option<Box<serde_json::value::RawValue>>,
    /// Or bytes, as standard base64, with their `content_type`.
    pub payload: Option<String>,
    pub content_type: Option<String>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    pub idempotency_key: Option<String>,
    pub delay: Option<String>,
    pub ttl: Option<String>,
    pub deliver_at: Option<String>,
    pub prefix: Option<String>,
    pub ordering_key: Option<String>,
}

impl Element {
    /// This element as a SendRequest; `at` names it in errors.
    pub fn into_request(self, at: &str) -> Result<proto::SendRequest> {
        let bad = |m: &str| Error::invalid(format!("{at}: {m}"));
        if self.headers.len() > MAX_HEADERS {
            return Err(bad(&format!(
                "{} headers; the limit is {MAX_HEADERS}",
                self.headers.len()
            )));
        }
        let (payload, content_type) = match (self.data, self.payload) {
            (Some(d), None) => {
                if self.content_type.is_some() {
                    return Err(bad("data is JSON: give content_type only with payload"));
                }
                (
                    bytes::Bytes::from(d.get().to_string()),
                    "application/json".to_string(),
                )
            }
            (None, Some(b64)) => (
                bytes::Bytes::from(
                    STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|_| bad("payload is not standard base64"))?,
                ),
                self.content_type.unwrap_or_default(),
            ),
            _ => return Err(bad("give data (JSON) or payload (base64), exactly one")),
        };
        let mut r = proto::SendRequest {
            path: self.path,
            payload,
            content_type,
            headers: self.headers,
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            ..Default::default()
        };
        let options = Options {
            delay: self.delay,
            ttl: self.ttl,
            deliver_at: self.deliver_at,
            prefix: self.prefix,
            ordering_key: self.ordering_key,
        };
        options.apply(&mut r).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("{at}: {m}")),
            other => other,
        })?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_known_and_once() {
        let o = query(Some("delay=30s&ordering_key=o%2F1&prefix=mq:")).expect("parses");
        let mut r = proto::SendRequest::default();
        o.apply(&mut r).expect("applies");
        assert_eq!(r.delay.map(|d| d.seconds), Some(30));
        assert_eq!(r.ordering_key, "o/1");
        assert_eq!(r.prefix, "mq:");
        assert!(query(Some("dealy=1s")).is_err());
        assert!(query(Some("ttl=1s&ttl=2s")).is_err());
        let mut r = proto::SendRequest::default();
        query(Some("ttl=90&deliver_at=2030-01-01T00:00:00Z"))
            .and_then(|o| o.apply(&mut r))
            .expect("bare seconds and RFC 3339");
        assert_eq!(r.ttl.map(|d| d.seconds), Some(90));
        assert_eq!(r.deliver_at.map(|t| t.seconds), Some(1_893_456_000));
        let mut r = proto::SendRequest::default();
        assert!(query(Some("delay=soon"))
            .and_then(|o| o.apply(&mut r))
            .is_err());
    }

    #[test]
    fn header_count_is_bounded() {
        let mut h = HeaderMap::new();
        for i in 0..=MAX_HEADERS {
            h.insert(
                axum::http::HeaderName::try_from(format!("x-leanmq-header-h{i}")).expect("name"),
                axum::http::HeaderValue::from_static("v"),
            );
        }
        assert!(message_headers(&h).is_err());
        h.remove("x-leanmq-header-h0");
        assert_eq!(message_headers(&h).map(|m| m.len()).ok(), Some(MAX_HEADERS));
    }

    #[test]
    fn forms_are_not_messages() {
        assert!(check_not_form("application/x-www-form-urlencoded").is_err());
        assert!(check_not_form("multipart/form-data; boundary=x").is_err());
        assert!(check_not_form("application/json").is_ok());
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
    }
}
