//! Protobuf ↔ domain, at the edge: validation of every client-supplied
//! field happens here, so `broker/` only ever sees checked domain values.

use std::time::Duration;

use crate::broker::envelope::OCTET_STREAM;
use crate::broker::limits::{
    MAX_HEADERS, MAX_IDEMPOTENCY_KEY_BYTES, MAX_ORDERING_KEY_BYTES, MAX_SCHEDULE,
};
use crate::broker::receipt::Keys;
use crate::broker::{Delivery, Outgoing, Target};
use crate::error::{Error, Result};
use crate::proto;
use crate::routing;

/// Longest accepted content type.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// A `google.protobuf.Duration` field: unset or zero gives `default`;
/// negative, malformed or out of `range` is INVALID_ARGUMENT.
pub fn duration(
    field: &str,
    d: Option<prost_types::Duration>,
    default: Duration,
    range: (Duration, Duration),
) -> Result<Duration> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds == 0 && d.nanos == 0 {
        return Ok(default);
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid(format!("{field} must not be negative")));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(format!(
            "{field} has nanos out of range (0..999999999)"
        )));
    }
    let v = Duration::new(d.seconds as u64, d.nanos as u32);
    if v < range.0 || v > range.1 {
        return Err(Error::invalid(format!(
            "{field} is {v:?}; it must be between {:?} and {:?}",
            range.0, range.1
        )));
    }
    Ok(v)
}

/// A count field: 0 gives `default`; above `max` is INVALID_ARGUMENT.
pub fn count(field: &str, n: u32, default: u32, max: u32) -> Result<u32> {
    match n {
        0 => Ok(default),
        n if n > max => Err(Error::invalid(format!(
            "{field} is {n}; the limit is {max}"
        ))),
        n => Ok(n),
    }
}

/// Like [`duration`], with no lower bound (zero means "use the default").
pub fn optional_duration(
    field: &str,
    d: Option<prost_types::Duration>,
    max: Duration,
) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(None),
        Some(d) => duration(field, Some(d), Duration::ZERO, (Duration::ZERO, max)).map(Some),
    }
}

/// Validate a SendRequest (`what` names it in errors, e.g. "messages[3]").
/// A Send's message as the broker takes it. `traceparent`, the call's
/// W3C trace context, becomes the message's `traceparent` header unless it
/// has one, so the trace reaches the consumer.
pub fn outgoing(
    what: &str,
    mut r: proto::SendRequest,
    settings: &super::EdgeSettings,
    traceparent: Option<&str>,
) -> Result<Outgoing> {
    if let Some(tp) = traceparent {
        if !r.headers.contains_key("traceparent") {
            r.headers.insert("traceparent".into(), tp.to_string());
        }
    }
    let at = |e: Error| match e {
        Error::InvalidArgument(m) if !what.is_empty() => {
            Error::InvalidArgument(format!("{what}: {m}"))
        }
        other => other,
    };
    // A Send's path may hold no pattern characters; a name needs none.
    let route = if r.queue.is_empty() {
        routing::send_route(&r.path)
    } else {
        routing::address(&r.path, &r.queue)
    }
    .map_err(at)?;
    if r.payload.len() > settings.max_payload_bytes {
        return Err(at(Error::PayloadTooLarge {
            size: r.payload.len(),
            limit: settings.max_payload_bytes,
        }));
    }
    // Checked in this order, so a request with several faults hears of the first.
    let content_type = content_type(r.content_type).map_err(at)?;
    let headers = headers(r.headers, settings.max_headers_bytes).map_err(at)?;
    let ttl = optional_duration("ttl", r.ttl, MAX_SCHEDULE).map_err(at)?;
    let delay = optional_duration("delay", r.delay, MAX_SCHEDULE).map_err(at)?;
    Ok(Outgoing {
        route,
        payload: r.payload,
        content_type,
        headers,
        ttl,
        delay: delay_or_deliver_at(delay, r.deliver_at).map_err(at)?,
        idempotency_key: idempotency_key(r.idempotency_key).map_err(at)?,
        ordering_key: ordering_key(r.ordering_key).map_err(at)?,
        creator: None,
    })
}

/// A message's content type; octet-stream when unset.
fn content_type(ct: String) -> Result<String> {
    if ct.is_empty() {
        return Ok(OCTET_STREAM.to_string());
    }
    if ct.len() > MAX_CONTENT_TYPE_BYTES || ct.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "content_type must be printable and at most {MAX_CONTENT_TYPE_BYTES} bytes"
        )));
    }
    Ok(ct)
}

/// A message's headers, sorted, within the count and size limits.
fn headers(
    h: std::collections::HashMap<String, String>,
    max_bytes: usize,
) -> Result<Vec<(String, String)>> {
    if h.len() > MAX_HEADERS {
        return Err(Error::invalid(format!(
            "{} headers; the limit is {MAX_HEADERS}",
            h.len()
        )));
    }
    let size: usize = h.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > max_bytes {
        return Err(Error::invalid(format!(
            "headers total {size} bytes; the limit is {max_bytes} (--max-headers-bytes)"
        )));
    }
    let mut headers: Vec<(String, String)> = h.into_iter().collect();
    headers.sort();
    for (k, v) in &headers {
        if k.is_empty()
            || k.chars().any(|c| c.is_control())
            || v.chars().any(|c| c.is_control() && c != '\t')
        {
            return Err(Error::invalid(format!(
                "header {k:?}: keys must be non-empty, and keys and values free of control characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("leanmq-") {
            return Err(Error::invalid(format!(
                "header {k:?}: the \"leanmq-\" prefix is reserved for headers the broker adds"
            )));
        }
    }
    Ok(headers)
}

/// The delay a message waits: `delay`, or the time until `deliver_at`.
fn delay_or_deliver_at(
    delay: Option<Duration>,
    deliver_at: Option<prost_types::Timestamp>,
) -> Result<Option<Duration>> {
    match (delay, deliver_at) {
        (Some(_), Some(_)) => Err(Error::invalid("give delay or deliver_at, not both")),
        (d, None) => Ok(d),
        (None, Some(ts)) => {
            if ts.nanos < 0 || ts.nanos >= 1_000_000_000 {
                return Err(Error::invalid("deliver_at has nanos out of range"));
            }
            let at_ms = ts
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(ts.nanos / 1_000_000));
            let now_ms = (crate::broker::envelope::now_secs() * 1000.0) as i64;
            let d = Duration::from_millis(at_ms.saturating_sub(now_ms).max(0) as u64);
            if d > MAX_SCHEDULE {
                return Err(Error::invalid("deliver_at is more than 365 days ahead"));
            }
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

fn idempotency_key(key: String) -> Result<Option<String>> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "idempotency_key must be at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes, without control characters"
        )));
    }
    Ok(Some(key))
}

fn ordering_key(key: String) -> Result<Option<String>> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.len() > MAX_ORDERING_KEY_BYTES || key.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "ordering_key is {} bytes; it must be at most {MAX_ORDERING_KEY_BYTES} bytes, without control characters",
            key.len()
        )));
    }
    Ok(Some(key))
}

/// How far ahead of this replica's clock a client-given time may be: room
/// for clock skew, no more (a time past the stream ids Redis can make only
/// breaks what compares against it).
const MAX_FUTURE_MS: u64 = 24 * 3600 * 1000;
/// Largest sequence number accepted in an entry id: exact in a double, as
/// the Lua scripts read ids.
const MAX_ID_SEQ: u64 = (1 << 53) - 1;

/// A client-given point in time as ms since the epoch (saturating: a time
/// past what a u64 holds selects nothing), refused when invalid.
pub fn any_time_ms(field: &str, ts: &prost_types::Timestamp) -> Result<u64> {
    if ts.seconds < 0 || ts.nanos < 0 || ts.nanos >= 1_000_000_000 {
        return Err(Error::invalid(format!("{field} is not a valid time")));
    }
    Ok((ts.seconds as u64)
        .saturating_mul(1000)
        .saturating_add((ts.nanos / 1_000_000) as u64))
}

/// [`any_time_ms`], also refused when more than a day ahead: for times
/// kept in Redis (a group's start).
pub fn time_ms(field: &str, ts: &prost_types::Timestamp) -> Result<u64> {
    let ms = any_time_ms(field, ts)?;
    let now_ms = (crate::broker::envelope::now_secs() * 1000.0) as u64;
    if ms > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(Error::invalid(format!(
            "{field} is more than a day in the future"
        )));
    }
    Ok(ms)
}

/// Where a new group starts, as an XGROUP CREATE id ("$" when unset).
pub fn start_position(p: Option<proto::StartPosition>) -> Result<String> {
    use proto::start_position::Position;
    Ok(match p.and_then(|p| p.position) {
        None | Some(Position::Now(_)) => "$".to_string(),
        Some(Position::Beginning(_)) => "0".to_string(),
        Some(Position::AfterId(id)) => {
            let parts = id
                .split_once('-')
                .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)));
            let Some((ms, seq)) = parts else {
                return Err(Error::invalid(format!(
                    "start.after_id {id:?} is not a stream entry id"
                )));
            };
            let now_ms = (crate::broker::envelope::now_secs() * 1000.0) as u64;
            if ms > now_ms.saturating_add(MAX_FUTURE_MS) || seq > MAX_ID_SEQ {
                return Err(Error::invalid(format!(
                    "start.after_id {id:?} is out of range: its time is more than a day ahead, or its sequence past 2^53"
                )));
            }
            id
        }
        Some(Position::AtTime(ts)) => {
            let ms = time_ms("start.at_time", &ts)?;
            // Entries after (ms - 1, any seq): those at or after `ms`.
            if ms == 0 {
                "0".to_string()
            } else {
                format!("{}-{MAX_ID_SEQ}", ms - 1)
            }
        }
    })
}

/// A queue (by path or by name, exactly one) and group from
/// Subscribe/Receive: empty group means LeanMQ's.
pub fn target(path: &str, queue: &str, group: &str, consumer: &str) -> Result<Target> {
    let route = routing::address(path, queue)?;
    routing::check_name("group", group)?;
    routing::check_name("consumer", consumer)?;
    let group = if group.is_empty() {
        routing::default_group(&route.queue)
    } else {
        group.to_string()
    };
    Ok(Target { route, group })
}

pub fn timestamp_ms(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_secs(s: f64) -> prost_types::Timestamp {
    let s = if s.is_finite() && s > 0.0 { s } else { 0.0 };
    let seconds = s.trunc() as i64;
    let nanos = ((s - s.trunc()) * 1e9).round().min(999_999_999.0) as i32;
    prost_types::Timestamp { seconds, nanos }
}

pub fn sent(s: crate::broker::Sent) -> proto::SendResponse {
    proto::SendResponse {
        message_id: s.message_id,
        duplicate: s.duplicate,
        schedule_id: s.schedule_id,
    }
}

/// A delivery for the client, its receipt signed with `keys`.
pub fn delivery(d: Delivery, keys: &Keys) -> proto::Delivery {
    proto::Delivery {
        receipt: d.receipt_token(keys),
        message_id: d.message_id,
        path: d.path,
        payload: d.payload,
        content_type: d.content_type,
        headers: d.headers.into_iter().collect(),
        attempt: d.attempt,
        published_at: Some(timestamp_secs(d.published_at)),
        group: d.group,
        lease_expires_at: Some(timestamp_ms(d.lease_expires_ms)),
        ordering_key: d.ordering_key.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    #[test]
    fn durations() {
        let range = (Duration::from_millis(100), Duration::from_secs(60));
        let def = Duration::from_secs(30);
        assert_eq!(duration("d", None, def, range).ok(), Some(def));
        assert_eq!(duration("d", pd(0, 0), def, range).ok(), Some(def));
        assert_eq!(
            duration("d", pd(1, 500_000_000), def, range).ok(),
            Some(Duration::from_millis(1500))
        );
        for bad in [
            pd(-1, 0),
            pd(0, -5),
            pd(61, 0),
            pd(0, 1),
            pd(1, 1_000_000_000),
            pd(i64::MAX, 0),
        ] {
            assert!(duration("d", bad, def, range).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(count("n", 0, 10, 100).ok(), Some(10));
        assert_eq!(count("n", 100, 10, 100).ok(), Some(100));
        assert!(
            matches!(count("n", 101, 10, 100), Err(Error::InvalidArgument(m)) if m == "n is 101; the limit is 100")
        );
    }

    #[test]
    fn send_request_validation() {
        let ok = proto::SendRequest {
            path: "/a".into(),
            payload: bytes::Bytes::from_static(b"x"),
            ..Default::default()
        };
        let o = outgoing("", ok.clone(), &edge(10), None).expect("valid");
        assert_eq!(o.content_type, OCTET_STREAM);
        let mut big = ok.clone();
        big.payload = bytes::Bytes::from(vec![0u8; 11]);
        assert!(matches!(
            outgoing("", big, &edge(10), None),
            Err(Error::PayloadTooLarge { .. })
        ));
        let mut reserved = ok.clone();
        reserved.headers.insert("LeanMQ-id".into(), "x".into());
        assert!(outgoing("", reserved, &edge(10), None).is_err());
        let mut many = ok;
        for i in 0..=MAX_HEADERS {
            many.headers.insert(format!("h{i}"), "v".into());
        }
        assert!(outgoing("", many.clone(), &edge(10), None).is_err());
        // The call's trace context reaches the message, unless it has its own.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut one = many;
        one.headers.clear();
        let o = outgoing("", one.clone(), &edge(10), Some(tp)).expect("valid");
        assert!(o
            .headers
            .contains(&("traceparent".to_string(), tp.to_string())));
        one.headers.insert("traceparent".into(), "mine".into());
        let o = outgoing("", one.clone(), &edge(10), Some(tp)).expect("valid");
        assert!(o
            .headers
            .contains(&("traceparent".to_string(), "mine".to_string())));
        let mut fat = one;
        fat.headers.insert("big".into(), "x".repeat(100));
        let mut small = edge(10);
        small.max_headers_bytes = 64;
        assert!(
            matches!(outgoing("", fat, &small, None), Err(Error::InvalidArgument(m)) if m.contains("--max-headers-bytes"))
        );
    }
}

/// Edge settings for tests, with `max_payload_bytes` set.
#[cfg(test)]
pub(crate) fn edge(max_payload_bytes: usize) -> super::EdgeSettings {
    super::EdgeSettings {
        max_payload_bytes,
        max_headers_bytes: crate::broker::limits::MAX_HEADER_BYTES,
        max_streams_per_connection: 10,
        max_subscriptions: 10,
        max_batch: 10,
        publish_window: 10,
        default_lease: std::time::Duration::from_secs(30),
        max_reply_bytes: 32 << 20,
        max_long_polls_per_connection: 10,
        max_long_polls_per_token: 10,
        unary: crate::layers::UnaryBudget::new(10),
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests over the request → domain conversion: arbitrary
    //! requests are either accepted with every limit holding, or refused
    //! with INVALID_ARGUMENT; nothing panics.
    use super::*;
    use proptest::prelude::*;

    fn arb_duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
        proptest::option::of(
            (any::<i64>(), any::<i32>())
                .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        )
    }

    proptest! {
        #[test]
        fn send_requests_are_validated_without_panics(
            path in ".{0,80}",
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            content_type in prop_oneof![Just(String::new()), Just("application/json".to_string()), ".{0,40}"],
            headers in proptest::collection::hash_map(".{0,20}", ".{0,20}", 0..80),
            ttl in arb_duration(),
            delay in arb_duration(),
            key in ".{0,300}",
        ) {
            let req = proto::SendRequest {
                path, payload: bytes::Bytes::from(payload), content_type, headers,
                ttl, delay, deliver_at: None, idempotency_key: key, ..Default::default()
            };
            match outgoing("", req, &edge(100), None) {
                Ok(o) => {
                    prop_assert!(o.payload.len() <= 100);
                    prop_assert!(o.headers.len() <= MAX_HEADERS);
                    prop_assert!(!o.route.queue.is_empty());
                    prop_assert!(!o.route.path.contains(['*', '>']), "wildcards are refused");
                    prop_assert!(o.ttl.is_none_or(|t| t <= MAX_SCHEDULE));
                    prop_assert!(o.idempotency_key.is_none_or(|k| k.len() <= MAX_IDEMPOTENCY_KEY_BYTES));
                    // The envelope of anything accepted encodes (or is refused as bad JSON).
                    let _ = crate::broker::envelope::encode(&o.route.path, &o.payload, &o.content_type, &o.headers, None, 1.0);
                }
                Err(e) => {
                    let refused = matches!(e, Error::InvalidArgument(_) | Error::PayloadTooLarge { .. });
                    prop_assert!(refused, "unexpected error kind: {}", e);
                }
            }
        }

        #[test]
        fn durations_are_bounded(d in arb_duration()) {
            let range = (Duration::from_millis(100), Duration::from_secs(3600));
            if let Ok(v) = duration("d", d, Duration::from_secs(30), range) {
                prop_assert!(v >= range.0 && v <= range.1);
            }
        }

        #[test]
        fn stored_envelopes_decode_without_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = crate::broker::envelope::decode(Some(&data));
            let f = crate::broker::envelope::Failure { reason: "r", attempts: 1, group: "g", message_id: "1-1", now: 1.0 };
            let dl = crate::broker::envelope::dead_letter_data(Some(&data), &f);
            prop_assert!(serde_json::from_str::<serde_json::Value>(&dl).is_ok());
        }
    }
}
