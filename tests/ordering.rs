//! Ordering keys (issue #19): within a group, messages with the same key
//! are delivered one at a time in send order; keys are independent and
//! unordered messages flow past a waiting key. Real redis-server, real
//! leanmqd (in-process, or two processes for the competing-consumer run).
//!
//! Where a test shows something was *not* delivered, it does so with a
//! marker: an unordered message sent after it, whose arrival proves the
//! reader has read (and held back) everything before it.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use leanmq_grpc::proto;
use tonic::Code;

#[path = "ordering/competing.rs"]
mod competing;

fn keyed(path: &str, key: &str, body: &str) -> proto::SendRequest {
    proto::SendRequest {
        ordering_key: key.into(),
        ..bytes_send(path, body.as_bytes())
    }
}

async fn send_keyed(c: &mut Client, path: &str, key: &str, body: &str) -> String {
    c.send(keyed(path, key, body))
        .await
        .expect("send")
        .into_inner()
        .message_id
}

fn body(d: &proto::Delivery) -> String {
    String::from_utf8_lossy(&d.payload).into_owned()
}

/// Deliveries up to and including the one whose body is `marker`.
async fn until(s: &mut tonic::Streaming<proto::Delivery>, marker: &str) -> Vec<proto::Delivery> {
    let mut got = Vec::new();
    loop {
        let d = next(s).await;
        let done = body(&d) == marker;
        got.push(d);
        if done {
            return got;
        }
    }
}

fn bodies(ds: &[proto::Delivery]) -> HashSet<String> {
    ds.iter().map(body).collect()
}

#[tokio::test]
async fn a_key_delivers_one_message_at_a_time_in_send_order() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/order/status", "", 50, 30_000).await;
    for i in 0..4 {
        send_keyed(&mut c, "/order/status", "order-1", &format!("a{i}")).await;
        send_keyed(&mut c, "/order/status", "order-2", &format!("b{i}")).await;
    }
    send(&mut c, "/order/status", b"marker").await;
    // Only each key's first, and the unordered marker.
    let first = until(&mut s, "marker").await;
    assert_eq!(
        bodies(&first),
        HashSet::from(["a0".into(), "b0".into(), "marker".into()])
    );
    let a0 = first.iter().find(|d| body(d) == "a0").expect("a0");
    assert_eq!(a0.ordering_key, "order-1");
    let marker = first.iter().find(|d| body(d) == "marker").expect("m");
    assert_eq!(marker.ordering_key, "");
    ack(&mut c, &[&marker.receipt]).await;
    // Acking a key's head gives its next one (the other key's head is
    // still held, so nothing else can come), in send order.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut held: Vec<proto::Delivery> =
        first.into_iter().filter(|d| body(d) != "marker").collect();
    while let Some(h) = (!held.is_empty()).then(|| held.remove(0)) {
        let seen = order.entry(h.ordering_key.clone()).or_default();
        seen.push(body(&h));
        let more = seen.len() < 4;
        assert_eq!(ack(&mut c, &[&h.receipt]).await, vec![1]);
        if more {
            let n = next(&mut s).await;
            assert_eq!(n.ordering_key, h.ordering_key);
            held.push(n);
        }
    }
    assert_eq!(order["order-1"], ["a0", "a1", "a2", "a3"]);
    assert_eq!(order["order-2"], ["b0", "b1", "b2", "b3"]);
    // Nothing of the keys' state is left behind.
    let left: i64 = redis::cmd("EXISTS")
        .arg("webhook:order_status:order:order_status-group")
        .query(&mut redis.conn())
        .expect("exists");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_nack_or_an_expired_lease_keeps_the_key_waiting_for_that_message() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/k", "", 10, 300).await;
    send_keyed(&mut c, "/k", "k", "first").await;
    send_keyed(&mut c, "/k", "k", "second").await;
    let d1 = next(&mut s).await;
    assert_eq!((body(&d1).as_str(), d1.attempt), ("first", 1));
    let nack = c
        .nack(proto::NackRequest {
            receipt: d1.receipt.clone(),
            delay: ms(50),
            ..Default::default()
        })
        .await
        .expect("nack");
    drop(nack);
    // Redelivered before "second"; then left unacked until its lease ends.
    let d2 = next(&mut s).await;
    assert_eq!((body(&d2).as_str(), d2.attempt), ("first", 2));
    let d3 = next(&mut s).await;
    assert_eq!((body(&d3).as_str(), d3.attempt), ("first", 3));
    assert_eq!(ack(&mut c, &[&d3.receipt]).await, vec![1]);
    let d4 = next(&mut s).await;
    assert_eq!((body(&d4).as_str(), d4.attempt), ("second", 1));
    assert_eq!(ack(&mut c, &[&d4.receipt]).await, vec![1]);
}

/// A keyed delivery's receipt carries its key (version 3), so the ack
/// needs no read of the entry; a version 2 receipt for it, as a leanmqd
/// from before ordering keys issued during a rolling upgrade, still settles
/// it and lets the key's next message go.
#[tokio::test]
async fn keyed_receipts_carry_the_key_and_an_older_receipt_still_releases_it() {
    use leanmq_grpc::broker::receipt::Receipt;
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/rk", "", 10, 30_000).await;
    for b in ["one", "two", "three"] {
        send_keyed(&mut c, "/rk", "order-9", b).await;
    }
    let keys = receipt_keys(&redis);
    let d1 = next(&mut s).await;
    let r1 = Receipt::decode(&keys, &d1.receipt).expect("a receipt this leanmqd signed");
    assert_eq!(
        (body(&d1).as_str(), r1.ordering_key.as_deref()),
        ("one", Some("order-9"))
    );
    assert_eq!(ack(&mut c, &[&d1.receipt]).await, vec![1]);
    let d2 = next(&mut s).await;
    assert_eq!((body(&d2).as_str(), d2.attempt), ("two", 1));
    let older = Receipt {
        ordering_key: None,
        ..Receipt::decode(&keys, &d2.receipt).expect("decodes")
    }
    .encode(&keys);
    assert_ne!(older, d2.receipt);
    assert_eq!(ack(&mut c, &[&older]).await, vec![1]);
    let d3 = next(&mut s).await;
    assert_eq!((body(&d3).as_str(), d3.attempt), ("three", 1));
    assert_eq!(ack(&mut c, &[&d3.receipt]).await, vec![1]);
}

#[tokio::test]
async fn a_poisoned_message_is_dead_lettered_and_its_keys_later_messages_still_arrive() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/p", "", 10, 30_000).await;
    for i in 0..4 {
        send_keyed(&mut c, "/p", "poison", &format!("p{i}")).await;
    }
    let bad = next(&mut s).await;
    assert_eq!(body(&bad), "p0");
    c.nack(proto::NackRequest {
        receipt: bad.receipt.clone(),
        dead_letter: true,
        reason: "cannot parse".into(),
        ..Default::default()
    })
    .await
    .expect("nack to the DLQ");
    for i in 1..4 {
        let d = next(&mut s).await;
        assert_eq!(body(&d), format!("p{i}"));
        assert_eq!(ack(&mut c, &[&d.receipt]).await, vec![1]);
    }
    // The dead letter keeps its key, so a requeue rejoins it.
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("webhook:p:dlq")
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("xrange");
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0]
        .1
        .iter()
        .any(|(k, v)| k == "ordering_key" && v == "poison"));
}

#[tokio::test]
async fn unordered_messages_and_other_keys_flow_past_a_waiting_key() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/mixed", "", 300, 30_000).await;
    send_keyed(&mut c, "/mixed", "slow", "slow0").await;
    send_keyed(&mut c, "/mixed", "slow", "slow1").await;
    for i in 0..100 {
        send(&mut c, "/mixed", format!("u{i}").as_bytes()).await;
        send_keyed(&mut c, "/mixed", &format!("k{i}"), &format!("k{i}")).await;
    }
    send(&mut c, "/mixed", b"marker").await;
    // slow0 stays unacked: everything else arrives, slow1 does not.
    let got = until(&mut s, "marker").await;
    let names = bodies(&got);
    assert_eq!(
        got.len(),
        202,
        "slow0, 100 unordered, 100 other keys, marker"
    );
    assert!(names.contains("slow0") && !names.contains("slow1"));
    let slow0 = got.iter().find(|d| body(d) == "slow0").expect("slow0");
    let rest: Vec<&str> = got
        .iter()
        .filter(|d| body(d) != "slow0")
        .map(|d| d.receipt.as_str())
        .collect();
    ack(&mut c, &rest).await;
    assert_eq!(ack(&mut c, &[&slow0.receipt]).await, vec![1]);
    assert_eq!(body(&next(&mut s).await), "slow1");
}

/// A key's backlog longer than any read (and than the read-ahead it
/// shrinks to, see `Round_::read_ahead`) stands in front of other traffic
/// while its head is held: the reader reads on through it, and the
/// messages behind it arrive.
#[tokio::test]
async fn a_waiting_keys_long_backlog_does_not_hold_back_what_follows_it() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let stuck = (0..1000).map(|i| keyed("/long", "stuck", &format!("s{i}")));
    let mut rest: Vec<proto::SendRequest> = (0..10)
        .map(|i| keyed("/long", &format!("k{i}"), &format!("k{i}")))
        .collect();
    rest.push(bytes_send("/long", b"marker"));
    for messages in [stuck.collect(), rest] {
        c.send_batch(proto::SendBatchRequest { messages })
            .await
            .expect("batch");
    }
    let mut s = subscribe(&mut c, "/long", "", 100, 30_000).await;
    // s0 stays unacked: the other keys and the marker arrive, s1 does not.
    let got = until(&mut s, "marker").await;
    let mut want: HashSet<String> = (0..10).map(|i| format!("k{i}")).collect();
    want.extend(["s0".to_string(), "marker".to_string()]);
    assert_eq!(bodies(&got), want);
    assert_eq!(got.len(), 12, "each once");
    let s0 = got.iter().find(|d| body(d) == "s0").expect("s0");
    assert_eq!(ack(&mut c, &[&s0.receipt]).await, vec![1]);
    assert_eq!(body(&next(&mut s).await), "s1");
}

#[tokio::test]
async fn each_fan_out_group_keeps_its_own_order() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = subscribe(&mut c, "/fan", "a", 10, 30_000).await;
    let mut b = subscribe(&mut c, "/fan", "b", 10, 30_000).await;
    for i in 0..3 {
        send_keyed(&mut c, "/fan", "k", &format!("m{i}")).await;
    }
    // Group a works through the key while group b holds its first.
    let b0 = next(&mut b).await;
    assert_eq!(body(&b0), "m0");
    for i in 0..3 {
        let d = next(&mut a).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert_eq!(ack(&mut c, &[&d.receipt]).await, vec![1]);
    }
    assert_eq!(ack(&mut c, &[&b0.receipt]).await, vec![1]);
    for i in 1..3 {
        let d = next(&mut b).await;
        assert_eq!(body(&d), format!("m{i}"));
        assert_eq!(ack(&mut c, &[&d.receipt]).await, vec![1]);
    }
}

#[tokio::test]
async fn batched_and_delayed_keyed_messages_keep_their_order_and_receive_honours_keys() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // Make the group first: a group registers keyed messages sent while it exists.
    receive_none(&mut c, "/b").await;
    let mut msgs: Vec<proto::SendRequest> =
        (0..3).map(|i| keyed("/b", "k", &format!("m{i}"))).collect();
    msgs.push(proto::SendRequest {
        delay: ms(100),
        ..keyed("/b", "k", "m3")
    });
    c.send_batch(proto::SendBatchRequest { messages: msgs })
        .await
        .expect("batch");
    for i in 0..4 {
        let got = receive(&mut c, "/b", "", 10, 30_000).await;
        assert_eq!(
            got.len(),
            1,
            "one at a time: {:?}",
            got.iter().map(body).collect::<Vec<_>>()
        );
        assert_eq!(body(&got[0]), format!("m{i}"));
        assert_eq!(got[0].ordering_key, "k");
        assert_eq!(ack(&mut c, &[&got[0].receipt]).await, vec![1]);
    }
}

/// Receive once without waiting (creates the default group).
async fn receive_none(c: &mut Client, path: &str) {
    let got = c
        .receive(proto::ReceiveRequest {
            path: path.into(),
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("receive")
        .into_inner()
        .deliveries;
    assert!(got.is_empty());
}

#[tokio::test]
async fn bad_ordering_keys_are_invalid_argument_and_store_nothing() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    for (key, says) in [
        (
            "k".repeat(257),
            "ordering_key is 257 bytes; it must be at most 256",
        ),
        ("a\nb".to_string(), "without control characters"),
    ] {
        let e = c.send(keyed("/bad", &key, "x")).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(says), "{}", e.message());
        let batch = c
            .send_batch(proto::SendBatchRequest {
                messages: vec![keyed("/bad", "ok", "x"), keyed("/bad", &key, "y")],
            })
            .await
            .expect_err("refused");
        assert_eq!(batch.code(), Code::InvalidArgument);
        assert!(
            batch.message().contains("messages[1]"),
            "{}",
            batch.message()
        );
    }
    assert_eq!(xlen(&redis, "webhook:bad"), 0);
    // 256 bytes is fine.
    send_keyed(&mut c, "/bad", &"k".repeat(256), "x").await;
    assert_eq!(xlen(&redis, "webhook:bad"), 1);
}
