//! The envelope's unit tests.
use super::*;

#[test]
fn json_object_round_trips_and_matches_leanmq_layout() {
    let payload =
        br#"{"order_id": "ORD-1", "n": 12345678901234567890, "nested": {"a": [1, 2.50]}}"#;
    let data = encode("/order/status", payload, JSON, &[], None, 1.5).expect("encode");
    let v: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(v["order_id"], "ORD-1");
    assert_eq!(v["_leanmq"]["webhook"]["path"], "/order/status");
    assert!(v["_leanmq"].get("grpc").is_none());
    assert_eq!(v["_metadata"]["ttl"], serde_json::Value::Null);
    let d = decode(Some(data.as_bytes()));
    assert_eq!(
        &d.payload[..],
        br#"{"order_id":"ORD-1","n":12345678901234567890,"nested":{"a": [1, 2.50]}}"#
    );
    assert_eq!(d.content_type, JSON);
    assert_eq!(d.path.as_deref(), Some("/order/status"));
    assert_eq!(d.published_at, Some(1.5));
}

#[test]
fn binary_and_headers_round_trip() {
    let payload = [0u8, 159, 146, 150, 255];
    let headers = vec![("trace".to_string(), "abc".to_string())];
    let data = encode("/bin", &payload, "image/png", &headers, None, 2.0).expect("encode");
    let d = decode(Some(data.as_bytes()));
    assert_eq!(&d.payload[..], &payload);
    assert_eq!(d.content_type, "image/png");
    assert_eq!(d.headers[0], ("trace".to_string(), "abc".to_string()));
    assert!(d.headers.iter().any(|(k, _)| k == "leanmq-id"));
}

#[test]
fn keys_and_headers_that_need_escaping_round_trip() {
    let payload = br#"{"plain": 1, "q\"uote": 2, "tab\tkey": 3, "caf\u00e9": 4}"#;
    let headers = vec![("h\"1".to_string(), "line\nbreak\\".to_string())];
    let data = encode("/p\"ath", payload, JSON, &headers, None, 1.0).expect("encode");
    let v: serde_json::Value = serde_json::from_str(&data).expect("stored JSON is valid");
    assert_eq!(v["q\"uote"], 2);
    assert_eq!(v["tab\tkey"], 3);
    assert_eq!(v["café"], 4);
    assert_eq!(v["_leanmq"]["webhook"]["path"], "/p\"ath");
    let d = decode(Some(data.as_bytes()));
    let back: serde_json::Value = serde_json::from_slice(&d.payload).expect("payload");
    let sent: serde_json::Value = serde_json::from_slice(payload).expect("sent");
    assert_eq!(back, sent);
    assert_eq!(d.headers[0], headers[0]);
}

#[test]
fn json_non_object_is_stored_verbatim() {
    let data = encode(
        "/a",
        b" [1, 2] ",
        "application/json; charset=utf-8",
        &[],
        None,
        0.0,
    )
    .expect("encode");
    let d = decode(Some(data.as_bytes()));
    assert_eq!(&d.payload[..], b" [1, 2] ");
    assert_eq!(d.content_type, "application/json; charset=utf-8");
}

#[test]
fn rejects_reserved_keys_and_invalid_json() {
    assert!(encode("/a", br#"{"_metadata": 1}"#, JSON, &[], None, 0.0).is_err());
    assert!(encode("/a", b"{not json", JSON, &[], None, 0.0).is_err());
}

#[test]
fn decodes_a_leanmq_python_entry() {
    let data = br#"{"order_id": "ORD-9", "_leanmq": {"webhook": {"path": "/order/status", "timestamp": 1.0}}, "_metadata": {"id": "u-1", "timestamp": 2.0, "ttl": null}, "_failures": [{"timestamp": 3.0, "reason": "boom"}]}"#;
    let d = decode(Some(data));
    assert_eq!(&d.payload[..], br#"{"order_id":"ORD-9"}"#);
    assert_eq!(d.content_type, JSON);
    assert!(d.headers.contains(&("leanmq-id".into(), "u-1".into())));
    assert!(d
        .headers
        .iter()
        .any(|(k, v)| k == "leanmq-failures" && v.contains("boom")));
}

#[test]
fn a_repeated_key_keeps_its_first_place_and_last_value() {
    // As a map would read the object, for few keys (scanned) and many
    // (deduplicated at the end).
    for n in [3usize, SCAN_KEYS + 5] {
        let mut text = String::from(r#"{"dup": 1"#);
        let mut want = String::from(r#"{"dup":"last""#);
        for i in 0..n {
            text.push_str(&format!(r#", "k{i}": {i}"#));
            want.push_str(&format!(r#","k{i}":{i}"#));
        }
        text.push_str(r#", "dup": "last"}"#);
        want.push('}');
        let data = encode("/d", text.as_bytes(), JSON, &[], None, 1.0).expect("encode");
        let d = decode(Some(data.as_bytes()));
        assert_eq!(String::from_utf8_lossy(&d.payload), want, "{n} keys");
    }
}

#[test]
fn envelope_strings_with_escapes_are_read() {
    // A LeanMQ entry whose id, path and content type need unescaping.
    let data = br#"{"_leanmq": {"webhook": {"path": "/a\/b"}, "grpc": {"content_type": "text\/plain", "payload": "aGk="}}, "_metadata": {"id": "u-1", "timestamp": 2.0}}"#;
    let d = decode(Some(data));
    assert_eq!(&d.payload[..], b"hi");
    assert_eq!(d.content_type, "text/plain");
    assert_eq!(d.path.as_deref(), Some("/a/b"));
    assert!(d.headers.contains(&("leanmq-id".into(), "u-1".into())));
}

#[test]
fn an_entry_with_malformed_own_members_keeps_the_rest() {
    // `_metadata` not an object, `_leanmq.webhook` not one either: the
    // user's keys still arrive, and what is readable is read.
    let data = br#"{"a": 1, "_metadata": "x", "_leanmq": {"webhook": 7, "grpc": {"headers": {"h": "v"}}}}"#;
    let d = decode(Some(data));
    assert_eq!(&d.payload[..], br#"{"a":1}"#);
    assert_eq!(d.content_type, JSON);
    assert_eq!(d.path, None);
    assert_eq!(d.published_at, None);
    assert!(!d.headers.iter().any(|(k, _)| k == "leanmq-envelope"));
    let data = br#"{"a": 1, "_metadata": {"id": "u-2"}, "_leanmq": []}"#;
    let d = decode(Some(data));
    assert_eq!(&d.payload[..], br#"{"a":1}"#);
    assert!(d.headers.contains(&("leanmq-id".into(), "u-2".into())));
}

#[test]
fn invalid_entries_are_delivered_raw() {
    let d = decode(Some(b"not json"));
    assert_eq!(&d.payload[..], b"not json");
    assert!(d
        .headers
        .contains(&("leanmq-envelope".into(), "invalid".into())));
}

#[test]
fn dead_letter_appends_failures_and_keeps_id() {
    let data = encode("/a", br#"{"k":1}"#, JSON, &[], None, 1.0).expect("encode");
    let f = Failure {
        reason: "boom",
        attempts: 5,
        group: "a-group",
        message_id: "1-0",
        now: 9.0,
    };
    let once = dead_letter_data(Some(data.as_bytes()), &f);
    let twice = dead_letter_data(Some(once.as_bytes()), &f);
    let v: serde_json::Value = serde_json::from_str(&twice).expect("json");
    assert_eq!(v["_failures"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(v["_failures"][0]["reason"], "boom");
    assert_eq!(v["_metadata"]["timestamp"], 9.0);
    let orig: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(v["_metadata"]["id"], orig["_metadata"]["id"]);
    assert_eq!(v["k"], 1);
    let recs = failures(Some(twice.as_bytes()));
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].attempts, 5);
    let back = requeue_data(Some(twice.as_bytes()), "webhook:a:dlq", "webhook:a", 10.0);
    let v: serde_json::Value = serde_json::from_str(&back).expect("json");
    assert_eq!(v["_requeues"][0]["from_dlq"], "webhook:a:dlq");
    assert_eq!(v["_metadata"]["id"], orig["_metadata"]["id"]);
    assert_eq!(v["_failures"].as_array().map(|a| a.len()), Some(2));
}

#[test]
fn ttl_is_written_in_whole_seconds() {
    let data = encode("/a", b"x", OCTET_STREAM, &[], Some(3), 1.0).expect("encode");
    let v: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(v["_metadata"]["ttl"], 3);
}
