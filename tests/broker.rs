//! Broker core semantics against a real redis-server.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use tonic::Code;

const ACKED: i32 = proto::AckOutcome::Acked as i32;
const NOT_PENDING: i32 = proto::AckOutcome::NotPending as i32;
const STALE: i32 = proto::AckOutcome::Stale as i32;

#[tokio::test]
async fn send_stores_a_leanmq_envelope_under_leanmq_keys() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let id = c
        .send(json_send(
            "/order/status/",
            r#"{"order_id":"ORD-1","status":"shipped"}"#,
        ))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    assert!(id.contains('-'), "entry id {id}");
    let e = entries(&redis, "webhook:order_status");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].0, id);
    let data = &e[0].1;
    assert_eq!(data["order_id"], "ORD-1");
    assert_eq!(data["_leanmq"]["webhook"]["path"], "/order/status");
    assert!(data["_metadata"]["id"]
        .as_str()
        .is_some_and(|s| s.len() == 36));
    let mut conn = redis.conn();
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("webhook:order_status")
        .query(&mut conn)
        .expect("groups");
    assert_eq!(groups.len(), 1);
    let meta: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("webhook:order_status:metadata")
        .query(&mut conn)
        .expect("meta");
    assert_eq!(
        meta.get("dlq").map(String::as_str),
        Some("webhook:order_status:dlq")
    );
    assert_eq!(
        meta.get("consumer_group").map(String::as_str),
        Some("order_status-group")
    );
    let dlq_meta: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("webhook:order_status:dlq:metadata")
        .query(&mut conn)
        .expect("meta");
    assert_eq!(dlq_meta.get("is_dlq").map(String::as_str), Some("true"));
    assert_eq!(
        dlq_meta.get("consumer_group").map(String::as_str),
        Some("order_status-group-dlq")
    );
    let reg: HashSet<String> = redis::cmd("SMEMBERS")
        .arg("webhook:registry")
        .query(&mut conn)
        .expect("registry");
    assert!(reg.contains("webhook:order_status") && reg.contains("webhook:order_status:dlq"));
}

#[tokio::test]
async fn payloads_round_trip_json_and_bytes_with_headers() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut bin = bytes_send("/rt", &[0, 1, 2, 255, 254]);
    bin.content_type = "image/png".into();
    bin.headers
        .insert("traceparent".into(), "00-abc-def-01".into());
    c.send(bin).await.expect("send bin");
    c.send(json_send(
        "/rt",
        r#"{"a": 1, "b": [true, null], "big": 123456789012345678901234}"#,
    ))
    .await
    .expect("send json");
    let got = receive(&mut c, "/rt", "", 10, 30_000).await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].payload[..], &[0, 1, 2, 255, 254]);
    assert_eq!(got[0].content_type, "image/png");
    assert_eq!(
        got[0].headers.get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );
    assert_eq!(got[0].path, "/rt");
    assert_eq!(
        &got[1].payload[..],
        br#"{"a":1,"b":[true, null],"big":123456789012345678901234}"#
    );
    assert_eq!(got[1].content_type, "application/json");
    assert!(got[1].published_at.is_some());
    assert_eq!(got[1].attempt, 1);
    assert_eq!(got[1].group, "rt-group");
}

#[tokio::test]
async fn send_batch_is_all_or_nothing() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let ok = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![
                bytes_send("/a", b"1"),
                bytes_send("/b", b"2"),
                bytes_send("/a", b"3"),
            ],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(ok.results.len(), 3);
    assert_eq!(xlen(&redis, "webhook:a"), 2);
    assert_eq!(xlen(&redis, "webhook:b"), 1);

    // An invalid message fails the batch before anything is written.
    let err = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![bytes_send("/a", b"4"), bytes_send("", b"5")],
        })
        .await
        .expect_err("invalid batch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("messages[1]"), "{}", err.message());
    assert_eq!(xlen(&redis, "webhook:a"), 2);

    // A Redis-side failure (a key of the wrong type) also writes nothing.
    let _: () = redis::cmd("SET")
        .arg("webhook:blocked")
        .arg("x")
        .query(&mut redis.conn())
        .expect("set");
    let err = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![bytes_send("/a", b"6"), bytes_send("/blocked", b"7")],
        })
        .await
        .expect_err("wrongtype batch");
    // Another program's key in the way is a precondition, not a bug here.
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("nothing was written"),
        "{}",
        err.message()
    );
    assert_eq!(xlen(&redis, "webhook:a"), 2);
}

#[tokio::test]
async fn competing_consumers_in_one_group_split_the_messages() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s1 = subscribe(&mut c, "/work", "workers", 100, 30_000).await;
    let mut s2 = subscribe(&mut c, "/work", "workers", 100, 30_000).await;
    let mut sent = HashSet::new();
    for i in 0..40 {
        sent.insert(send(&mut c, "/work", format!("m{i}").as_bytes()).await);
    }
    let mut seen = HashSet::new();
    let (mut n1, mut n2) = (0, 0);
    while seen.len() < 40 {
        tokio::select! {
            m = s1.message() => { let m = m.expect("ok").expect("open"); n1 += 1; assert!(seen.insert(m.message_id), "duplicate"); ack(&mut c, &[&m.receipt]).await; }
            m = s2.message() => { let m = m.expect("ok").expect("open"); n2 += 1; assert!(seen.insert(m.message_id), "duplicate"); ack(&mut c, &[&m.receipt]).await; }
            _ = tokio::time::sleep(WAIT) => panic!("stalled at {}", seen.len()),
        }
    }
    assert_eq!(seen, sent);
    assert_eq!(n1 + n2, 40);
    assert!(n1 > 0 && n2 > 0, "both subscribers got work: {n1} {n2}");
    assert_eq!(pending_count(&redis, "webhook:work", "workers"), 0);
}

#[tokio::test]
async fn different_groups_each_get_every_message() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut billing = subscribe(&mut c, "/fan", "billing", 10, 30_000).await;
    let mut email = subscribe(&mut c, "/fan", "email", 10, 30_000).await;
    let id = send(&mut c, "/fan", b"x").await;
    let b = next(&mut billing).await;
    let e = next(&mut email).await;
    assert_eq!(
        (b.message_id.as_str(), b.group.as_str()),
        (id.as_str(), "billing")
    );
    assert_eq!(
        (e.message_id.as_str(), e.group.as_str()),
        (id.as_str(), "email")
    );
    assert_eq!(
        ack(&mut c, &[&b.receipt, &e.receipt]).await,
        vec![ACKED, ACKED]
    );
}

#[tokio::test]
async fn one_ack_call_settles_each_receipt_on_its_own_merits() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    for i in 0..30 {
        send(&mut c, "/mixed", format!("{i}").as_bytes()).await;
    }
    let mut got = receive(&mut c, "/mixed", "", 30, 30_000).await;
    assert_eq!(got.len(), 30);
    // The first message's lease runs out and it is delivered again: its old
    // receipt is stale now.
    c.nack(proto::NackRequest {
        receipt: got[0].receipt.clone(),
        delay: ms(1),
        ..Default::default()
    })
    .await
    .expect("nack");
    let again = receive(&mut c, "/mixed", "", 1, 30_000).await.remove(0);
    assert_eq!(again.message_id, got[0].message_id);
    // Already acked, so no longer pending.
    assert_eq!(ack(&mut c, &[&got[1].receipt]).await, vec![ACKED]);
    let keys = receipt_keys(&redis);
    let forged = |id: &str| signed_receipt(&keys, "mixed", id);
    // Ids inside the batch's range that were never sent, and one far
    // beyond any real id, which stretches the range past what one read of
    // the pending entries covers.
    let inside = forged("1-1");
    let beyond = forged("18446744073709551615-18446744073709551615");
    let last = got.pop().expect("30 deliveries");
    let mut batch: Vec<&str> = vec![&got[0].receipt, &got[1].receipt, &inside];
    batch.extend(got[2..].iter().map(|m| m.receipt.as_str()));
    batch.push(&beyond);
    batch.push(&again.receipt);
    batch.push(&last.receipt);
    let mut want = vec![STALE, NOT_PENDING, NOT_PENDING];
    want.extend(std::iter::repeat_n(ACKED, got.len() - 2));
    want.extend([NOT_PENDING, ACKED, ACKED]);
    assert_eq!(ack(&mut c, &batch).await, want);
    assert_eq!(pending_count(&redis, "webhook:mixed", "mixed-group"), 0);
}

/// An ack checks a receipt against the attempt its lease's score vouches for
/// (deadline + attempt/1024, `lua/common.lua`) and falls back to the pending
/// entry when the score vouches for nothing: a whole-ms score, as an older
/// leanmqd writes when it leases, extends or redelivers. Neither way may a
/// stale receipt settle the newer delivery.
#[tokio::test]
async fn receipts_are_checked_against_the_pending_entry_when_no_lease_score_vouches() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    for i in 0..3 {
        send(&mut c, "/rec", format!("{i}").as_bytes()).await;
    }
    let got = receive(&mut c, "/rec", "", 3, 30_000).await;
    assert_eq!(got.len(), 3);
    let (stream, leases) = ("webhook:rec", "webhook:rec:leases:rec-group");
    let mut r = redis.conn();
    let score = |r: &mut redis::Connection, id: &str| -> f64 {
        redis::cmd("ZSCORE")
            .arg(leases)
            .arg(id)
            .query(r)
            .expect("zscore")
    };
    let s = score(&mut r, &got[2].message_id);
    assert_eq!(
        (s - s.floor()) * 1024.0,
        1.0,
        "the score vouches for attempt 1"
    );
    // 0: leased the way an older leanmqd does, with a whole-ms score.
    let _: i64 = redis::cmd("ZADD")
        .arg(leases)
        .arg(score(&mut r, &got[0].message_id).floor())
        .arg(&got[0].message_id)
        .query(&mut r)
        .expect("zadd");
    // 1: redelivered the way an older leanmqd does (XCLAIM to leanmqd's
    // consumer, a new whole-ms lease).
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg("rec-group")
        .arg("leanmq-grpc")
        .arg(0)
        .arg(&got[1].message_id)
        .query(&mut r)
        .expect("xclaim");
    let _: i64 = redis::cmd("ZADD")
        .arg(leases)
        .arg(score(&mut r, &got[1].message_id).floor() + 60_000.0)
        .arg(&got[1].message_id)
        .query(&mut r)
        .expect("zadd");
    let second = leanmq_grpc::broker::receipt::Receipt::encode_parts(
        &receipt_keys(&redis),
        "rec",
        "rec-group",
        &got[1].message_id,
        2,
        None,
    );
    assert_eq!(
        ack(&mut c, &[&got[0].receipt, &got[1].receipt, &got[2].receipt]).await,
        vec![ACKED, STALE, ACKED]
    );
    assert_eq!(ack(&mut c, &[&second]).await, vec![ACKED]);
    assert_eq!(pending_count(&redis, stream, "rec-group"), 0);
}

/// A reader takes new entries with a plain XREADGROUP and leases them with a
/// second call; if leanmqd or Redis dies in between, the entry is pending
/// under leanmqd's consumer with no lease. Such an entry is handed out again
/// once idle for twice --redis-timeout, to subscribers and to Receive.
#[tokio::test]
async fn an_entry_read_but_never_leased_is_delivered_again() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.redis_timeout = Duration::from_millis(200)
    })
    .await;
    let mut c = d.client().await;
    for path in ["/unleased-sub", "/unleased-pull"] {
        let id = send(&mut c, path, b"x").await;
        let queue = &path[1..].replace('-', "_");
        // What a reader that died after its read left behind.
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(format!("{queue}-group"))
            .arg(leanmq_grpc::broker::HOLDER)
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(format!("webhook:{queue}"))
            .arg(">")
            .query(&mut redis.conn())
            .expect("xreadgroup");
        assert_eq!(
            pending_count(
                &redis,
                &format!("webhook:{queue}"),
                &format!("{queue}-group")
            ),
            1
        );
        let m = if path == "/unleased-sub" {
            let mut s = subscribe(&mut c, path, "", 10, 30_000).await;
            next(&mut s).await
        } else {
            receive(&mut c, path, "", 10, 30_000).await.remove(0)
        };
        assert_eq!(m.message_id, id);
        assert_eq!(m.attempt, 2, "the lost read counted as a delivery");
        assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![ACKED]);
        assert_eq!(
            pending_count(
                &redis,
                &format!("webhook:{queue}"),
                &format!("{queue}-group")
            ),
            0
        );
    }
}

#[tokio::test]
async fn empty_group_is_leanmqs_group() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/order/status/", b"x").await;
    let got = receive(&mut c, "/order/status", "", 1, 30_000).await;
    assert_eq!(got[0].group, "order_status-group");
    assert_eq!(
        pending_count(&redis, "webhook:order_status", "order_status-group"),
        1
    );
}

#[tokio::test]
async fn attempt_counts_every_redelivery_and_stale_receipts_are_refused() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/att", b"x").await;
    let first = receive(&mut c, "/att", "", 1, 30_000).await.remove(0);
    assert_eq!(first.attempt, 1);
    c.nack(proto::NackRequest {
        receipt: first.receipt.clone(),
        delay: ms(1),
        ..Default::default()
    })
    .await
    .expect("nack");
    let second = receive(&mut c, "/att", "", 1, 200).await.remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.message_id, first.message_id);
    // The lease of the second delivery runs out: a third delivery.
    let third = receive(&mut c, "/att", "", 1, 30_000).await.remove(0);
    assert_eq!(third.attempt, 3);
    // Old receipts no longer settle anything.
    assert_eq!(
        ack(&mut c, &[&first.receipt, &second.receipt]).await,
        vec![STALE, STALE]
    );
    let err = c
        .nack(proto::NackRequest {
            receipt: second.receipt.clone(),
            ..Default::default()
        })
        .await
        .expect_err("stale nack");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(pending_count(&redis, "webhook:att", "att-group"), 1);
    // The current one does; acking twice is harmless.
    assert_eq!(ack(&mut c, &[&third.receipt]).await, vec![ACKED]);
    assert_eq!(ack(&mut c, &[&third.receipt]).await, vec![NOT_PENDING]);
    assert_eq!(pending_count(&redis, "webhook:att", "att-group"), 0);
}

#[tokio::test]
async fn lease_expires_after_a_dropped_stream_and_another_subscriber_gets_it() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s1 = subscribe(&mut c, "/lease", "", 10, 300).await;
    let id = send(&mut c, "/lease", b"x").await;
    let got = next(&mut s1).await;
    assert_eq!((got.message_id.as_str(), got.attempt), (id.as_str(), 1));
    drop(s1); // vanishes without acking
    let mut s2 = subscribe(&mut c, "/lease", "", 10, 30_000).await;
    let again = next(&mut s2).await;
    assert_eq!((again.message_id.as_str(), again.attempt), (id.as_str(), 2));
    assert_eq!(ack(&mut c, &[&again.receipt]).await, vec![ACKED]);
}

#[tokio::test]
async fn unacked_messages_survive_a_leanmqd_restart() {
    let redis = RedisProc::start();
    let mut d1 = Leanmqd::start(&redis.url()).await;
    let mut c1 = d1.client().await;
    for i in 0..5 {
        send(&mut c1, "/restart", format!("{i}").as_bytes()).await;
    }
    let held = receive(&mut c1, "/restart", "", 5, 500).await;
    assert_eq!(held.len(), 5);
    d1.stop().await;
    assert_eq!(pending_count(&redis, "webhook:restart", "restart-group"), 5);

    let d2 = Leanmqd::start(&redis.url()).await;
    let mut c2 = d2.client().await;
    let mut s = subscribe(&mut c2, "/restart", "", 10, 30_000).await;
    let mut ids = HashSet::new();
    while ids.len() < 5 {
        let m = next(&mut s).await;
        assert_eq!(m.attempt, 2);
        ids.insert(m.message_id.clone());
        ack(&mut c2, &[&m.receipt]).await;
    }
    assert_eq!(ids, held.iter().map(|m| m.message_id.clone()).collect());
    // A receipt from the old instance is stale now.
    assert_eq!(ack(&mut c2, &[&held[0].receipt]).await, vec![NOT_PENDING]);
}

#[tokio::test]
async fn extend_pushes_the_lease_out() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/ext", b"x").await;
    let m = receive(&mut c, "/ext", "", 1, 300).await.remove(0);
    let r = c
        .extend(proto::ExtendRequest {
            receipt: m.receipt.clone(),
            extension: dur(Duration::from_secs(60)),
        })
        .await
        .expect("extend")
        .into_inner();
    let end = r.lease_expires_at.expect("lease end");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(end.seconds >= now + 55, "lease ends in ~60 s");
    let score: f64 = redis::cmd("ZSCORE")
        .arg("webhook:ext:leases:ext-group")
        .arg(&m.message_id)
        .query(&mut redis.conn())
        .expect("zscore");
    assert!(score as i64 / 1000 >= now + 55);
    // Well past the original 300 ms lease, nothing is redelivered.
    let none = c
        .receive(proto::ReceiveRequest {
            path: "/ext".into(),
            max_messages: 1,
            wait: ms(800),
            ..Default::default()
        })
        .await
        .expect("receive")
        .into_inner();
    assert!(none.deliveries.is_empty());
    assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![ACKED]);
}

#[tokio::test]
async fn nack_with_delay_redelivers_after_the_delay() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/delay", "", 10, 30_000).await;
    send(&mut c, "/delay", b"x").await;
    let m = next(&mut s).await;
    let t0 = Instant::now();
    let r = c
        .nack(proto::NackRequest {
            receipt: m.receipt,
            delay: ms(700),
            reason: "busy".into(),
            dead_letter: false,
        })
        .await
        .expect("nack")
        .into_inner();
    assert_eq!(r.outcome, proto::NackOutcome::RetryScheduled as i32);
    let again = next(&mut s).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(650),
        "redelivered after {:?}",
        t0.elapsed()
    );
    assert_eq!(again.attempt, 2);
}

#[tokio::test]
async fn nack_without_delay_backs_off_exponentially() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.retry_min = Duration::from_millis(400);
        c.retry_max = Duration::from_secs(60);
    })
    .await;
    let mut c = d.client().await;
    send(&mut c, "/backoff", b"x").await;
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    for attempt in 1..=3u32 {
        let m = receive(&mut c, "/backoff", "", 1, 30_000).await.remove(0);
        assert_eq!(m.attempt, attempt);
        let before = unix();
        let r = c
            .nack(proto::NackRequest {
                receipt: m.receipt,
                ..Default::default()
            })
            .await
            .expect("nack")
            .into_inner();
        let after = unix();
        let at = r.retry_at.expect("retry_at");
        let at = at.seconds as f64 + at.nanos as f64 / 1e9;
        // Equal jitter: attempt n waits between base/2 and base, base = 400ms * 2^(n-1).
        // Redis and this test share the machine's clock (1 ms resolution).
        let base = 0.4 * 2f64.powi(attempt as i32 - 1);
        assert!(
            at - before >= base / 2.0 - 0.002,
            "attempt {attempt}: retry {}s after the nack began, base {base}s",
            at - before
        );
        assert!(
            at - after <= base + 0.002,
            "attempt {attempt}: retry {}s after the nack returned, base {base}s",
            at - after
        );
    }
}

#[tokio::test]
async fn max_attempts_moves_the_message_to_the_dlq_with_a_failures_record() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.max_attempts = 3).await;
    let mut c = d.client().await;
    let id = c
        .send(json_send("/fail", r#"{"k":"v"}"#))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    for attempt in 1..=3u32 {
        let m = receive(&mut c, "/fail", "", 1, 30_000).await.remove(0);
        assert_eq!(m.attempt, attempt);
        let r = c
            .nack(proto::NackRequest {
                receipt: m.receipt,
                delay: ms(1),
                reason: format!("boom {attempt}"),
                dead_letter: false,
            })
            .await
            .expect("nack")
            .into_inner();
        let expected = if attempt < 3 {
            proto::NackOutcome::RetryScheduled
        } else {
            proto::NackOutcome::DeadLettered
        };
        assert_eq!(r.outcome, expected as i32);
    }
    assert_eq!(pending_count(&redis, "webhook:fail", "fail-group"), 0);
    let dlq = entries(&redis, "webhook:fail:dlq");
    assert_eq!(dlq.len(), 1);
    let data = &dlq[0].1;
    assert_eq!(data["k"], "v");
    let failures = data["_failures"].as_array().expect("_failures list");
    assert_eq!(failures.len(), 1);
    assert!(failures[0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("boom 3")));
    assert_eq!(failures[0]["attempts"], 3);
    assert_eq!(failures[0]["message_id"], id.as_str());
    assert!(failures[0]["timestamp"].as_f64().is_some());
    let zcard: i64 = redis::cmd("ZCARD")
        .arg("webhook:fail:leases:fail-group")
        .query(&mut redis.conn())
        .expect("zcard");
    assert_eq!(zcard, 0);
}

#[tokio::test]
async fn a_stalled_consumer_exhausts_attempts_by_lease_expiry() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.max_attempts = 2).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/stall", "", 1, 150).await;
    send(&mut c, "/stall", b"x").await;
    for attempt in 1..=2u32 {
        let m = next(&mut s).await;
        assert_eq!(m.attempt, attempt); // never acked
    }
    let dlq = eventually("the message reaches the DLQ", || async {
        let e = entries(&redis, "webhook:stall:dlq");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(dlq[0].1["_failures"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("lease expired")));
    assert_eq!(pending_count(&redis, "webhook:stall", "stall-group"), 0);
}

#[tokio::test]
async fn nack_dead_letter_moves_at_once() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/dl", b"\x00binary").await;
    let m = receive(&mut c, "/dl", "", 1, 30_000).await.remove(0);
    let r = c
        .nack(proto::NackRequest {
            receipt: m.receipt.clone(),
            dead_letter: true,
            reason: "invalid order".into(),
            delay: None,
        })
        .await
        .expect("nack")
        .into_inner();
    assert_eq!(r.outcome, proto::NackOutcome::DeadLettered as i32);
    let dlq = entries(&redis, "webhook:dl:dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].0, r.dead_letter_id);
    assert_eq!(dlq[0].1["_failures"][0]["reason"], "invalid order");
    assert_eq!(dlq[0].1["_leanmq"]["grpc"]["payload"], "AGJpbmFyeQ==");
    assert_eq!(pending_count(&redis, "webhook:dl", "dl-group"), 0);
    assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![NOT_PENDING]);
}

#[tokio::test]
async fn receive_waits_for_the_first_message() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // Without wait: returns at once, empty.
    let empty = c
        .receive(proto::ReceiveRequest {
            path: "/pull".into(),
            ..Default::default()
        })
        .await
        .expect("receive")
        .into_inner();
    assert!(empty.deliveries.is_empty());
    // With wait: it returns as soon as a message arrives, not at the end of the wait.
    let mut c2 = c.clone();
    let t0 = Instant::now();
    let waiter = tokio::spawn(async move { receive(&mut c2, "/pull", "", 10, 30_000).await });
    let id = send(&mut c, "/pull", b"x").await;
    let got = waiter.await.expect("join");
    assert!(t0.elapsed() < WAIT, "returned before its wait ran out");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id);
}

#[tokio::test]
async fn flow_control_caps_unacked_deliveries_per_stream() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    for i in 0..10 {
        send(&mut c, "/flow", format!("{i}").as_bytes()).await;
    }
    let mut s = subscribe(&mut c, "/flow", "", 3, 30_000).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut s).await);
    }
    // With three unacked, a fourth does not come.
    let fourth = tokio::time::timeout(Duration::from_millis(500), s.message()).await;
    assert!(
        fourth.is_err(),
        "no fourth delivery while three are unacked"
    );
    assert_eq!(pending_count(&redis, "webhook:flow", "flow-group"), 3);
    // Acking one lets exactly one more through.
    ack(&mut c, &[&held[0].receipt]).await;
    let m = next(&mut s).await;
    assert!(!held.iter().any(|h| h.message_id == m.message_id));
    assert_eq!(pending_count(&redis, "webhook:flow", "flow-group"), 3);
}

#[tokio::test]
async fn shutdown_ends_streams_and_keeps_unacked_messages() {
    let redis = RedisProc::start();
    let mut d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    let mut s = subscribe(&mut c, "/drain", "", 10, 30_000).await;
    send(&mut c, "/drain", b"x").await;
    let held = next(&mut s).await;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "leanmq.v1.Broker".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("ok").expect("status");
    assert_eq!(
        first.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let running = d.running.take().expect("running");
    running.drain();
    let end = tokio::time::timeout(WAIT, s.message())
        .await
        .expect("stream ends");
    assert_eq!(
        end.expect_err("ends with a status").code(),
        Code::Unavailable
    );
    let not_serving = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("health update");
    if let Ok(Some(m)) = not_serving {
        assert_eq!(
            m.status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        );
    }
    tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("exits in the grace period")
        .expect("clean");
    d.stop().await;
    // The unacked delivery is still pending in Redis, for redelivery.
    let p: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg("webhook:drain")
        .arg("drain-group")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut redis.conn())
        .expect("xpending");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, held.message_id);
}

#[tokio::test]
async fn bad_input_gets_precise_statuses() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.max_payload_bytes = 1024).await;
    let mut c = d.client().await;
    for path in [
        "",
        "/",
        "//",
        "/a\u{0}b",
        "/a\u{7}",
        &format!("/{}", "x".repeat(2000)),
    ] {
        let e = c.send(bytes_send(path, b"x")).await.expect_err(path);
        assert_eq!(e.code(), Code::InvalidArgument, "{path:?}: {}", e.message());
        assert!(e.message().contains("path"), "{}", e.message());
    }
    let e = c
        .send(bytes_send("/big", &[0u8; 1025]))
        .await
        .expect_err("too big");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("1025") && e.message().contains("1024"),
        "{}",
        e.message()
    );
    let e = c
        .send(json_send("/j", "{nope"))
        .await
        .expect_err("bad json");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .send(json_send("/j", r#"{"_metadata":1}"#))
        .await
        .expect_err("reserved key");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .ack(proto::AckRequest {
            receipts: vec!["garbage".into()],
        })
        .await
        .expect_err("bad receipt");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("receipt"), "{}", e.message());
    let e = c
        .ack(proto::AckRequest { receipts: vec![] })
        .await
        .expect_err("no receipts");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .nack(proto::NackRequest {
            receipt: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad receipt");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .extend(proto::ExtendRequest {
            receipt: String::new(),
            extension: None,
        })
        .await
        .expect_err("empty receipt");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .receive(proto::ReceiveRequest {
            path: "/a".into(),
            wait: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("negative wait");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .subscribe(proto::SubscribeRequest {
            path: "/a".into(),
            ack_deadline: dur(Duration::from_secs(86_400)),
            ..Default::default()
        })
        .await
        .expect_err("huge lease");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .subscribe(proto::SubscribeRequest {
            path: "/a".into(),
            max_in_flight: 1_000_000,
            ..Default::default()
        })
        .await
        .expect_err("huge max_in_flight");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .receive(proto::ReceiveRequest {
            path: "/a".into(),
            group: "bad\ngroup".into(),
            ..Default::default()
        })
        .await
        .expect_err("control char in group");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A genuinely signed receipt naming a message that never existed:
    // nothing to ack.
    let forged = signed_receipt(&receipt_keys(&redis), "a", "1-1");
    assert_eq!(ack(&mut c, &[&forged]).await, vec![NOT_PENDING]);
    // Nothing was stored by any of it, and the server still serves.
    assert_eq!(xlen(&redis, "webhook:big"), 0);
    send(&mut c, "/still-ok", b"x").await;
}

#[tokio::test]
async fn redis_outage_gives_unavailable_and_leanmqd_recovers() {
    let mut redis = RedisProc::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.redis_timeout = Duration::from_millis(500)
    })
    .await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/outage", "", 10, 30_000).await;
    let before = send(&mut c, "/outage", b"before").await;
    assert_eq!(next(&mut s).await.message_id, before);
    redis.kill();
    let e = c
        .send(bytes_send("/outage", b"during"))
        .await
        .expect_err("no redis");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    redis.restart();
    let after = eventually("sends succeed again", || {
        let mut c = c.clone();
        async move {
            c.send(bytes_send("/outage", b"after"))
                .await
                .ok()
                .map(|r| r.into_inner().message_id)
        }
    })
    .await;
    // The subscriber, still connected, gets the new message.
    let m = next(&mut s).await;
    assert_eq!(m.message_id, after);
    assert_eq!(&m.payload[..], b"after");
}

#[tokio::test]
async fn two_replicas_share_a_group_and_settle_each_others_receipts() {
    let redis = RedisProc::start();
    let a = Leanmqd::start(&redis.url()).await;
    let b = Leanmqd::start(&redis.url()).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let mut sa = subscribe(&mut ca, "/rep", "", 100, 30_000).await;
    let mut sb = subscribe(&mut cb, "/rep", "", 100, 30_000).await;
    for i in 0..30 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        send(c, "/rep", format!("{i}").as_bytes()).await;
    }
    let mut seen = HashSet::new();
    while seen.len() < 30 {
        tokio::select! {
            m = sa.message() => { let m = m.expect("ok").expect("open"); assert!(seen.insert(m.message_id)); assert_eq!(ack(&mut cb, &[&m.receipt]).await, vec![ACKED]); }
            m = sb.message() => { let m = m.expect("ok").expect("open"); assert!(seen.insert(m.message_id)); assert_eq!(ack(&mut ca, &[&m.receipt]).await, vec![ACKED]); }
            _ = tokio::time::sleep(WAIT) => panic!("stalled at {}", seen.len()),
        }
    }
    assert_eq!(pending_count(&redis, "webhook:rep", "rep-group"), 0);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let ch = d.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "leanmq.v1.Broker".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut refl = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let msg = resp.message().await.expect("ok").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("list services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"leanmq.v1.Broker".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn health_follows_redis_reachability() {
    let mut redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.redis_timeout = Duration::from_millis(300)
    })
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    let status =
        |h: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>| {
            let mut h = h.clone();
            async move {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .ok()
            }
        };
    use tonic_health::pb::health_check_response::ServingStatus as S;
    redis.kill();
    eventually("NOT_SERVING while redis is down", || {
        let f = status(&mut health);
        async move { (f.await == Some(S::NotServing as i32)).then_some(()) }
    })
    .await;
    redis.restart();
    eventually("SERVING again", || {
        let f = status(&mut health);
        async move { (f.await == Some(S::Serving as i32)).then_some(()) }
    })
    .await;
}

/// Regression (found by the fault suite's subscriber-cut): a stream that
/// takes deliveries but never settles them must not keep getting its full
/// credit back every lease, burning the attempts of messages a healthy
/// subscriber would have handled.
#[tokio::test]
async fn a_stalled_subscriber_gets_probes_not_its_full_credit() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut dead = subscribe(&mut c, "/stalls", "", 10, 200).await;
    let mut healthy = subscribe(&mut c, "/stalls", "", 10, 30_000).await;
    let mut sent = HashSet::new();
    for i in 0..200 {
        sent.insert(send(&mut c, "/stalls", format!("{i}").as_bytes()).await);
    }
    let mut acked = HashSet::new();
    let mut to_dead = 0;
    while acked.len() < sent.len() {
        tokio::select! {
            m = dead.message() => { m.expect("ok").expect("open"); to_dead += 1; }
            m = healthy.message() => {
                let m = m.expect("ok").expect("open");
                assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![ACKED]);
                acked.insert(m.message_id);
            }
            _ = tokio::time::sleep(WAIT) => panic!("stalled at {} acked", acked.len()),
        }
    }
    assert_eq!(acked, sent);
    assert_eq!(
        xlen(&redis, "webhook:stalls:dlq"),
        0,
        "no healthy message was dead-lettered"
    );
    assert!(to_dead < 60, "the stalled stream got {to_dead} deliveries");
}

/// Regression (found by the fault suite's redis-flush): a named group lost
/// with Redis' data is recreated where its reader had got to, so messages
/// appended after the loss still reach it.
#[tokio::test]
async fn a_named_group_lost_with_redis_data_misses_nothing_sent_after() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut audit = subscribe(&mut c, "/flushed", "audit", 100, 30_000).await;
    let before = send(&mut c, "/flushed", b"before").await;
    assert_eq!(next(&mut audit).await.message_id, before);
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.conn())
        .expect("flushall");
    let mut after = HashSet::new();
    for i in 0..20 {
        after.insert(send(&mut c, "/flushed", format!("{i}").as_bytes()).await);
    }
    let mut got = HashSet::new();
    while got.len() < after.len() {
        let m = next(&mut audit).await;
        ack(&mut c, &[&m.receipt]).await;
        got.insert(m.message_id);
    }
    assert_eq!(got, after);
}

#[tokio::test]
async fn concurrent_sends_share_calls_but_not_failures() {
    let redis = RedisProc::start();
    // A key of the wrong type where one queue's stream should be: a send
    // there fails; the sends sharing its script call must not.
    let mut conn = redis.conn();
    let _: () = redis::cmd("SET")
        .arg("webhook:broken")
        .arg("not a stream")
        .query(&mut conn)
        .expect("set");
    let d = Leanmqd::start(&redis.url()).await;
    let c = d.client().await;
    let mut calls = Vec::new();
    for i in 0..300 {
        let mut c = c.clone();
        let path = if i == 150 { "/broken" } else { "/shared" };
        calls.push(tokio::spawn(async move {
            (
                path,
                c.send(bytes_send(path, format!("{i}").as_bytes())).await,
            )
        }));
    }
    let mut ok = 0;
    for call in calls {
        let (path, r) = call.await.expect("join");
        match path {
            "/broken" => {
                let e = r.expect_err("the send to a broken key fails");
                assert!(
                    e.message()
                        .contains("webhook:broken holds a string, not a stream"),
                    "the error names the key and its type: {e:?}"
                );
            }
            _ => {
                r.expect("sends next to a failing one succeed");
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 299);
    assert_eq!(xlen(&redis, "webhook:shared"), 299);
}

/// Concurrent Ack calls share Redis calls (`queues/acks.rs`): each caller
/// still gets its own outcomes, in its own order. Every caller acks two
/// deliveries of its own, a receipt that was never delivered, and one
/// receipt all callers share, each at a position of its own, so outcomes
/// handed back to the wrong caller or cut at the wrong place show.
#[tokio::test]
async fn concurrent_acks_each_get_their_own_outcomes_in_their_order() {
    const CALLERS: usize = 40;
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let n = 2 * CALLERS + 1;
    for i in 0..n {
        send(&mut c, "/acks", format!("{i}").as_bytes()).await;
    }
    let mut got = receive(&mut c, "/acks", "", n as u32, 30_000).await;
    assert_eq!(got.len(), n);
    let shared = got.pop().expect("the shared delivery").receipt;
    let ghost = signed_receipt(&receipt_keys(&redis), "acks", "1-1");
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CALLERS));
    let mut calls = Vec::new();
    for (i, own) in got.chunks(2).enumerate() {
        let mut c = c.clone();
        let start = start.clone();
        let mut batch = vec![own[0].receipt.clone(), own[1].receipt.clone()];
        batch.insert(i % 3, ghost.clone());
        batch.insert((i / 3) % 4, shared.clone());
        calls.push(tokio::spawn(async move {
            start.wait().await;
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let outcomes = ack(&mut c, &refs).await;
            (batch, outcomes)
        }));
    }
    let (mut own_acked, mut shared_acked) = (0, 0);
    for call in calls {
        let (batch, outcomes) = call.await.expect("join");
        assert_eq!(outcomes.len(), batch.len());
        for (r, o) in batch.iter().zip(outcomes) {
            if *r == ghost {
                assert_eq!(o, NOT_PENDING, "a receipt never delivered");
            } else if *r == shared {
                assert!(o == ACKED || o == NOT_PENDING, "shared receipt: {o}");
                shared_acked += usize::from(o == ACKED);
            } else {
                assert_eq!(o, ACKED, "a caller's own delivery");
                own_acked += 1;
            }
        }
    }
    assert_eq!(own_acked, 2 * CALLERS);
    assert!(shared_acked >= 1, "the shared receipt was acked by someone");
    assert_eq!(pending_count(&redis, "webhook:acks", "acks-group"), 0);
}
