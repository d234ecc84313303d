//! Admin service and the message lifecycle (TTL, delay, dedup, retention,
//! replay, patterns), each checked against the actual Redis state.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::Code;

async fn admin(d: &Leanmqd) -> AdminClient<Channel> {
    AdminClient::new(d.channel().await)
}

fn zcard(r: &RedisProc, key: &str) -> i64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query(&mut r.conn())
        .expect("zcard")
}

fn redis_now_ms(r: &RedisProc) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(&mut r.conn()).expect("time");
    s * 1000 + us / 1000
}

async fn dead_letter(c: &mut Client, path: &str, reason: &str) -> String {
    let m = receive(c, path, "", 1, 30_000).await.remove(0);
    c.nack(proto::NackRequest {
        receipt: m.receipt,
        dead_letter: true,
        reason: reason.into(),
        delay: None,
    })
    .await
    .expect("nack")
    .into_inner()
    .dead_letter_id
}

#[tokio::test]
async fn admin_lists_and_inspects_queues() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = admin(&d).await;
    for _ in 0..3 {
        send(&mut c, "/inv/a", b"x").await;
    }
    send(&mut c, "/inv/b", b"y").await;
    let held = receive(&mut c, "/inv/a", "", 2, 30_000).await;
    c.nack(proto::NackRequest {
        receipt: held[1].receipt.clone(),
        delay: dur(Duration::from_secs(60)),
        ..Default::default()
    })
    .await
    .expect("nack");
    let list = a
        .list_queues(proto::ListQueuesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: Vec<(&str, i64)> = list
        .queues
        .iter()
        .map(|q| (q.queue.as_str(), q.length))
        .collect();
    assert_eq!(names, vec![("inv_a", 3), ("inv_b", 1)]);
    assert_eq!(list.queues[0].paths, vec!["/inv/a".to_string()]);

    let q = a
        .get_queue(proto::GetQueueRequest {
            path: "/inv/a/".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (q.queue.as_str(), q.length, q.dead_letters),
        ("inv_a", 3, 0)
    );
    let g = q
        .groups
        .iter()
        .find(|g| g.name == "inv_a-group")
        .expect("default group");
    assert_eq!(g.pending, 2, "one leased, one waiting for retry");
    assert_eq!(g.retrying, 1);
    assert_eq!(g.lag, 1);
    assert!(g.oldest_unacked_age.is_some());
    assert_eq!(q.scheduled, 1);
    assert!(q.created_at.is_some());
    // By queue name too; an unknown queue is NOT_FOUND.
    let by_name = a
        .get_queue(proto::GetQueueRequest {
            path: "inv_b".into(),
            ..Default::default()
        })
        .await
        .expect("by name")
        .into_inner();
    assert_eq!(by_name.length, 1);
    let e = a
        .get_queue(proto::GetQueueRequest {
            path: "/nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn dead_letters_are_listed_requeued_and_delivered_again() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = admin(&d).await;
    let mut req = json_send("/dlq/flow", r#"{"order_id":"ORD-1"}"#);
    req.headers.insert("tenant".into(), "acme".into());
    let original = c.send(req).await.expect("send").into_inner().message_id;
    let dlq_id = dead_letter(&mut c, "/dlq/flow", "card declined").await;

    let page = a
        .list_dead_letters(proto::ListDeadLettersRequest {
            path: "/dlq/flow".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.dead_letters.len(), 1);
    let dl = &page.dead_letters[0];
    assert_eq!(dl.id, dlq_id);
    assert_eq!(dl.original_message_id, original);
    assert_eq!(&dl.payload[..], br#"{"order_id":"ORD-1"}"#);
    assert_eq!(dl.headers.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!((dl.attempts, dl.last_reason.as_str()), (1, "card declined"));
    assert_eq!(dl.failures.len(), 1);
    assert!(dl.first_failed_at.is_some() && dl.last_failed_at.is_some());
    assert_eq!(dl.path, "/dlq/flow");

    let r = a
        .requeue_dead_letters(proto::RequeueDeadLettersRequest {
            path: "/dlq/flow".into(),
            selector: Some(proto::requeue_dead_letters_request::Selector::Ids(
                proto::DeadLetterIds {
                    ids: vec![dlq_id.clone(), "1-1".into()],
                },
            )),
            ..Default::default()
        })
        .await
        .expect("requeue")
        .into_inner();
    assert_eq!(r.requeued.len(), 1);
    assert_eq!(r.missing, vec!["1-1".to_string()]);
    let new_id = r.requeued[0].message_id.clone();
    assert_eq!(xlen(&redis, "webhook:dlq_flow:dlq"), 0);
    assert_eq!(
        pending_count(&redis, "webhook:dlq_flow:dlq", "dlq_flow-group-dlq"),
        0,
        "no ghost pending entry"
    );
    let stored = entries(&redis, "webhook:dlq_flow");
    let copy = &stored
        .iter()
        .find(|(id, _)| *id == new_id)
        .expect("requeued entry")
        .1;
    assert_eq!(copy["_requeues"][0]["from_dlq"], "webhook:dlq_flow:dlq");
    assert_eq!(copy["_requeues"][0]["to_queue"], "webhook:dlq_flow");
    // Delivered again, attempts starting over, with its history in headers.
    let again = receive(&mut c, "/dlq/flow", "", 1, 30_000).await.remove(0);
    assert_eq!(
        (again.message_id.as_str(), again.attempt),
        (new_id.as_str(), 1)
    );
    assert!(again
        .headers
        .get("leanmq-failures")
        .is_some_and(|f| f.contains("card declined")));
    assert_eq!(ack(&mut c, &[&again.receipt]).await, vec![1]);
}

#[tokio::test]
async fn dead_letters_page_delete_purge_and_requeue_all_or_since() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = admin(&d).await;
    for i in 0..5 {
        send(&mut c, "/dlq/many", format!("{i}").as_bytes()).await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(dead_letter(&mut c, "/dlq/many", &format!("r{i}")).await);
    }
    // Pages of two: 2, 2, 1, tokens chaining.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let p = a
            .list_dead_letters(proto::ListDeadLettersRequest {
                path: "/dlq/many".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(p.dead_letters.into_iter().map(|d| d.id));
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(seen, ids);
    let bad = a
        .list_dead_letters(proto::ListDeadLettersRequest {
            path: "/dlq/many".into(),
            page_size: 2,
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);

    let del = a
        .delete_dead_letters(proto::DeleteDeadLettersRequest {
            path: "/dlq/many".into(),
            ids: vec![ids[0].clone()],
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(del.deleted, 1);
    assert_eq!(xlen(&redis, "webhook:dlq_many:dlq"), 4);

    // Since the third one was dead-lettered: the last three.
    let ms: u64 = ids[2]
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("ms");
    let since = a
        .requeue_dead_letters(proto::RequeueDeadLettersRequest {
            path: "/dlq/many".into(),
            selector: Some(proto::requeue_dead_letters_request::Selector::Since(
                prost_types::Timestamp {
                    seconds: (ms / 1000) as i64,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                },
            )),
            ..Default::default()
        })
        .await
        .expect("since")
        .into_inner();
    let moved: HashSet<String> = since
        .requeued
        .iter()
        .map(|r| r.dead_letter_id.clone())
        .collect();
    assert!(
        moved.contains(&ids[2]) && moved.contains(&ids[3]) && moved.contains(&ids[4]),
        "{moved:?}"
    );
    assert!(!moved.contains(&ids[1]));
    assert_eq!(xlen(&redis, "webhook:dlq_many:dlq"), 4 - moved.len() as i64);

    let all = a
        .requeue_dead_letters(proto::RequeueDeadLettersRequest {
            path: "/dlq/many".into(),
            selector: Some(proto::requeue_dead_letters_request::Selector::All(true)),
            ..Default::default()
        })
        .await
        .expect("all")
        .into_inner();
    assert_eq!(all.requeued.len() + moved.len(), 4);
    assert_eq!(xlen(&redis, "webhook:dlq_many:dlq"), 0);

    dead_letter(&mut c, "/dlq/many", "again").await;
    let purged = a
        .purge_dead_letters(proto::PurgeDeadLettersRequest {
            path: "/dlq/many".into(),
            ..Default::default()
        })
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(purged.purged, 1);
    assert_eq!(xlen(&redis, "webhook:dlq_many:dlq"), 0);
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("webhook:dlq_many:dlq")
        .query(&mut redis.conn())
        .expect("groups");
    assert_eq!(groups.len(), 1, "the DLQ group survives a purge");
}

/// Found by tests/fuzz.rs: purging the dead letters of a queue that does
/// not exist made its DLQ stream (the group's MKSTREAM), a key no registry
/// entry knows.
#[tokio::test]
async fn purging_the_dead_letters_of_no_queue_makes_no_key() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut a = admin(&d).await;
    let purged = a
        .purge_dead_letters(proto::PurgeDeadLettersRequest {
            path: "/never/made".into(),
            ..Default::default()
        })
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(purged.purged, 0);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("webhook:never_made:dlq")
        .query(&mut redis.conn())
        .expect("exists");
    assert_eq!(exists, 0, "no DLQ stream without its queue");
}

#[tokio::test]
async fn purge_and_delete_queue_need_confirmation() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = admin(&d).await;
    for _ in 0..3 {
        send(&mut c, "/gone", b"x").await;
    }
    let held = receive(&mut c, "/gone", "", 1, 30_000).await.remove(0);
    dead_letter(&mut c, "/gone", "x").await;
    let e = a
        .purge_queue(proto::PurgeQueueRequest {
            path: "/gone".into(),
            confirm: "yes".into(),
            ..Default::default()
        })
        .await
        .expect_err("unconfirmed");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"gone\""), "{}", e.message());
    let p = a
        .purge_queue(proto::PurgeQueueRequest {
            path: "/gone".into(),
            confirm: "gone".into(),
            ..Default::default()
        })
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(p.purged, 3);
    assert_eq!(xlen(&redis, "webhook:gone"), 0);
    assert_eq!(zcard(&redis, "webhook:gone:leases:gone-group"), 0);
    assert_eq!(pending_count(&redis, "webhook:gone", "gone-group"), 0);
    assert_eq!(
        ack(&mut c, &[&held.receipt]).await,
        vec![2],
        "a purged message is not pending"
    );
    // The group survived and new messages flow.
    let id = send(&mut c, "/gone", b"new").await;
    assert_eq!(
        receive(&mut c, "/gone", "", 1, 30_000).await[0].message_id,
        id
    );

    let e = a
        .delete_queue(proto::DeleteQueueRequest {
            path: "/gone".into(),
            with_dlq: true,
            confirm: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("unconfirmed");
    assert_eq!(e.code(), Code::InvalidArgument);
    a.delete_queue(proto::DeleteQueueRequest {
        path: "/gone".into(),
        with_dlq: true,
        confirm: "gone".into(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let mut r = redis.conn();
    for key in [
        "webhook:gone",
        "webhook:gone:dlq",
        "webhook:gone:metadata",
        "webhook:gone:dlq:metadata",
        "webhook:gone:leases:gone-group",
    ] {
        let n: i64 = redis::cmd("EXISTS").arg(key).query(&mut r).expect("exists");
        assert_eq!(n, 0, "{key} deleted");
    }
    let reg: Vec<String> = redis::cmd("SMEMBERS")
        .arg("webhook:registry")
        .query(&mut r)
        .expect("registry");
    assert!(
        !reg.iter().any(|k| k.starts_with("webhook:gone")),
        "{reg:?}"
    );
}

/// The expiry of `id` in `queue`'s `:expiry` set (LeanMQ's layout: seconds).
fn expiry_of(redis: &RedisProc, queue: &str, id: &str) -> f64 {
    redis::cmd("ZSCORE")
        .arg(format!("webhook:{queue}:expiry"))
        .arg(id)
        .query(&mut redis.conn())
        .expect("zscore")
}

/// Wait until Redis' clock is past `score` (seconds).
async fn until_redis_time_passes(redis: &RedisProc, score: f64) {
    eventually("the TTL has passed on Redis' clock", || async {
        (redis_now_ms(redis) as f64 > score * 1000.0).then_some(())
    })
    .await;
}

/// `id` reaches `queue`'s DLQ as expired.
async fn dead_lettered_as_expired(redis: &RedisProc, queue: &str, id: &str) {
    let dlq = eventually("the expired one reaches the DLQ", || async {
        let e = entries(redis, &format!("webhook:{queue}:dlq"));
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(dlq[0].1["_failures"][0]["reason"], "expired");
    assert_eq!(dlq[0].1["_failures"][0]["message_id"], id);
}

/// The same through a subscription, whose rounds read new entries without a
/// script when nothing is due: an entry found expired there is parked for
/// the DLQ too, and the live one behind it is delivered without delay.
#[tokio::test]
async fn a_subscription_never_delivers_an_expired_message() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/subttl", "", 1, 30_000).await;
    // The one credit is held by an unacked delivery while the others wait.
    send(&mut c, "/subttl", b"holds the credit").await;
    let holder = next(&mut s).await;
    let mut req = bytes_send("/subttl", b"short-lived");
    req.ttl = ms(300);
    let id = c.send(req).await.expect("send").into_inner().message_id;
    let kept = send(&mut c, "/subttl", b"live").await;
    until_redis_time_passes(&redis, expiry_of(&redis, "subttl", &id)).await;
    assert_eq!(
        ack(&mut c, &[&holder.receipt]).await,
        vec![proto::AckOutcome::Acked as i32]
    );
    let got = tokio::time::timeout(Duration::from_secs(2), s.message())
        .await
        .expect("the live message comes at once, not after a blocked read times out")
        .expect("stream ok")
        .expect("stream open");
    assert_eq!(got.message_id, kept, "the expired one is skipped");
    dead_lettered_as_expired(&redis, "subttl", &id).await;
}

#[tokio::test]
async fn an_expired_message_is_never_delivered_and_goes_to_the_dlq() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut a = admin(&d).await;
    let mut req = bytes_send("/ttl", b"short-lived");
    req.ttl = ms(300);
    let id = c.send(req).await.expect("send").into_inner().message_id;
    let mut keep = bytes_send("/ttl", b"long-lived");
    keep.ttl = dur(Duration::from_secs(3600));
    let kept = c.send(keep).await.expect("send").into_inner().message_id;
    // LeanMQ's layout: `:expiry` holds the entry with its expiry in seconds,
    // `_metadata.ttl` whole seconds.
    let score = expiry_of(&redis, "ttl", &id);
    assert!(score > 1.0e9);
    assert_eq!(entries(&redis, "webhook:ttl")[0].1["_metadata"]["ttl"], 1);
    until_redis_time_passes(&redis, score).await;
    let got = receive(&mut c, "/ttl", "", 10, 30_000).await;
    assert_eq!(got.len(), 1, "only the live one is delivered");
    assert_eq!(got[0].message_id, kept);
    dead_lettered_as_expired(&redis, "ttl", &id).await;
    let q = a
        .get_queue(proto::GetQueueRequest {
            path: "/ttl".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(q.expired, 1);
    assert_eq!(
        pending_count(&redis, "webhook:ttl", "ttl-group"),
        1,
        "only the delivered one is pending"
    );
}

#[tokio::test]
async fn a_delayed_message_waits_and_survives_restarts_of_leanmqd_and_redis() {
    let mut redis = RedisProc::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let t0 = Instant::now();
    let mut req = bytes_send("/later", b"wake up");
    req.delay = dur(Duration::from_secs(3));
    let r = c.send(req).await.expect("send").into_inner();
    assert!(r.message_id.is_empty());
    assert!(!r.schedule_id.is_empty());
    assert_eq!(xlen(&redis, "webhook:later"), 0, "not visible yet");
    assert_eq!(zcard(&redis, "webhook:later:delayed"), 1);
    let mut a = admin(&d).await;
    assert_eq!(
        a.get_queue(proto::GetQueueRequest {
            path: "/later".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .delayed,
        1
    );
    // Both leanmqd and Redis go away and come back before it is due.
    d.stop().await;
    redis.restart();
    assert_eq!(
        zcard(&redis, "webhook:later:delayed"),
        1,
        "the schedule survived in the AOF"
    );
    let d2 = Leanmqd::start(&redis.url()).await;
    let mut c2 = d2.client().await;
    let mut s = subscribe(&mut c2, "/later", "", 10, 30_000).await;
    let m = next(&mut s).await;
    let at = t0.elapsed();
    assert_eq!(&m.payload[..], b"wake up");
    assert!(
        at >= Duration::from_millis(2900) && at <= Duration::from_secs(4),
        "delivered at {at:?}, due at 3s"
    );
    assert_eq!(zcard(&redis, "webhook:later:delayed"), 0);
    // deliver_at in the past: right away.
    let mut now = bytes_send("/later", b"now");
    now.deliver_at = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    let r = c2.send(now).await.expect("send").into_inner();
    assert!(!r.message_id.is_empty());
    assert_eq!(next(&mut s).await.message_id, r.message_id);
    let mut both = bytes_send("/later", b"x");
    both.delay = ms(10);
    both.deliver_at = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    assert_eq!(
        c2.send(both).await.expect_err("both").code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn concurrent_duplicate_sends_store_exactly_one_message() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let c = d.client().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = bytes_send("/dedup", format!("attempt {i}").as_bytes());
            req.idempotency_key = "order-42".into();
            c.send(req).await.expect("send").into_inner()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join"));
    }
    assert_eq!(xlen(&redis, "webhook:dedup"), 1);
    let ids: HashSet<&str> = results.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "every caller got the first message's id");
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("webhook:dedup:dedup:order-42")
        .query(&mut redis.conn())
        .expect("pttl");
    assert!(ttl > 23 * 3600 * 1000, "remembered for the dedup window");

    // In a batch: per entry, also against an earlier entry of the same batch.
    let mut c = c.clone();
    let mk = |key: &str, body: &[u8]| {
        let mut r = bytes_send("/dedup", body);
        r.idempotency_key = key.into();
        r
    };
    let b = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![
                mk("order-42", b"a"),
                mk("order-43", b"b"),
                mk("order-43", b"c"),
            ],
        })
        .await
        .expect("batch")
        .into_inner();
    let flags: Vec<bool> = b.results.iter().map(|r| r.duplicate).collect();
    assert_eq!(flags, vec![true, false, true]);
    assert_eq!(b.results[1].message_id, b.results[2].message_id);
    assert_eq!(xlen(&redis, "webhook:dedup"), 2);
}

#[tokio::test]
async fn retention_trims_only_what_every_group_acked() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.retention_max_age = Duration::ZERO;
        c.retention_interval = Duration::from_millis(100);
    })
    .await;
    let mut c = d.client().await;
    // Two groups exist before the messages.
    receive(&mut c, "/keep", "other", 1, 30_000).await;
    c.receive(proto::ReceiveRequest {
        path: "/keep".into(),
        ..Default::default()
    })
    .await
    .expect("create default group");
    for i in 0..5 {
        send(&mut c, "/keep", format!("{i}").as_bytes()).await;
    }
    let got = receive(&mut c, "/keep", "", 5, 30_000).await;
    assert_eq!(got.len(), 5);
    ack(&mut c, &[&got[0].receipt, &got[1].receipt]).await;
    // "other" has read nothing: nothing may go, over several 100 ms sweeps.
    let sweeps_before = Instant::now();
    while sweeps_before.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            xlen(&redis, "webhook:keep"),
            5,
            "unread by 'other': never trimmed"
        );
        tokio::task::yield_now().await;
    }
    // Once "other" has read and acked the first three, exactly the entries
    // acked by both groups go; the pending ones stay.
    let o = receive(&mut c, "/keep", "other", 3, 30_000).await;
    ack(
        &mut c,
        &o.iter().map(|m| m.receipt.as_str()).collect::<Vec<_>>(),
    )
    .await;
    eventually(
        "the two entries acked by both groups are trimmed",
        || async { (xlen(&redis, "webhook:keep") == 3).then_some(()) },
    )
    .await;
    let left: Vec<String> = entries(&redis, "webhook:keep")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        got[2..]
            .iter()
            .map(|m| m.message_id.clone())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_opt_in_max_len_cap_drops_and_counts() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.max_len = Some(3);
        c.retention_interval = Duration::from_millis(100);
    })
    .await;
    let mut c = d.client().await;
    for i in 0..10 {
        send(&mut c, "/capped", format!("{i}").as_bytes()).await;
    }
    let mut a = admin(&d).await;
    let q = eventually("the cap applies", || {
        let mut a = a.clone();
        async move {
            let q = a
                .get_queue(proto::GetQueueRequest {
                    path: "/capped".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (q.length == 3).then_some(q)
        }
    })
    .await;
    assert_eq!(q.dropped, 7);
    assert_eq!(xlen(&redis, "webhook:capped"), 3);
    let stats: i64 = redis::cmd("HGET")
        .arg("webhook:capped:stats")
        .arg("dropped")
        .query(&mut redis.conn())
        .expect("stats");
    assert_eq!(stats, 7);
    let _ = a
        .list_queues(proto::ListQueuesRequest::default())
        .await
        .expect("still serving");
}

#[tokio::test]
async fn new_groups_replay_from_the_beginning_an_id_a_time_or_now() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&mut c, "/history", format!("{i}").as_bytes()).await);
    }
    use proto::start_position::Position;
    let pull = |group: &str, start: Position| proto::ReceiveRequest {
        path: "/history".into(),
        group: group.into(),
        max_messages: 10,
        start: Some(proto::StartPosition {
            position: Some(start),
        }),
        ..Default::default()
    };
    let ids_of = |r: proto::ReceiveResponse| {
        r.deliveries
            .into_iter()
            .map(|d| d.message_id)
            .collect::<Vec<_>>()
    };
    let all = c
        .receive(pull("replay-all", Position::Beginning(true)))
        .await
        .expect("beginning")
        .into_inner();
    assert_eq!(ids_of(all), ids);
    let after = c
        .receive(pull("replay-after", Position::AfterId(ids[0].clone())))
        .await
        .expect("after")
        .into_inner();
    assert_eq!(ids_of(after), ids[1..].to_vec());
    let ms: u64 = ids[2]
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("ms");
    let at = c
        .receive(pull(
            "replay-time",
            Position::AtTime(prost_types::Timestamp {
                seconds: (ms / 1000) as i64,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
        ))
        .await
        .expect("time")
        .into_inner();
    // Every entry at or after that millisecond: two sends can share one.
    let from_ms: Vec<String> = ids
        .iter()
        .filter(|id| id.split('-').next().and_then(|m| m.parse::<u64>().ok()) >= Some(ms))
        .cloned()
        .collect();
    assert!(from_ms.ends_with(&ids[2..]));
    assert_eq!(ids_of(at), from_ms);
    let now = c
        .receive(pull("replay-now", Position::Now(true)))
        .await
        .expect("now")
        .into_inner();
    assert!(now.deliveries.is_empty());
    let fresh = send(&mut c, "/history", b"new").await;
    let now = c
        .receive(pull("replay-now", Position::Now(true)))
        .await
        .expect("now")
        .into_inner();
    assert_eq!(ids_of(now), vec![fresh]);
    // An existing group ignores the start position.
    let again = c
        .receive(pull("replay-all", Position::Beginning(true)))
        .await
        .expect("existing")
        .into_inner();
    assert_eq!(again.deliveries.len(), 1, "only the new message");
    let bad = c
        .receive(pull("replay-bad", Position::AfterId("nope".into())))
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_pattern_subscription_gets_every_matching_queue_even_new_ones() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/order/status", b"before").await; // creates the queue; group starts at its end
    let mut s = c
        .subscribe(proto::SubscribeRequest {
            path: "/order/*".into(),
            group: "audit".into(),
            max_in_flight: 10,
            start: Some(proto::StartPosition {
                position: Some(proto::start_position::Position::Beginning(true)),
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    send(&mut c, "/order/status/eu", b"too deep").await;
    send(&mut c, "/other/status", b"elsewhere").await;
    send(&mut c, "/order/payment", b"created after the stream opened").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = next(&mut s).await;
        assert_eq!(m.group, "audit");
        ack(&mut c, &[&m.receipt]).await;
        got.push((m.path, String::from_utf8_lossy(&m.payload).to_string()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "/order/payment".to_string(),
                "created after the stream opened".to_string()
            ),
            ("/order/status".to_string(), "before".to_string()),
        ]
    );
    assert_eq!(pending_count(&redis, "webhook:order_payment", "audit"), 0);
    // Nothing from the non-matching paths arrives.
    let extra = tokio::time::timeout(Duration::from_millis(1500), s.message()).await;
    assert!(
        extra.is_err(),
        "no delivery from /order/status/eu or /other/status: {extra:?}"
    );
    // ">" matches the deeper path too.
    let mut deep = c
        .subscribe(proto::SubscribeRequest {
            path: "/order/>".into(),
            group: "deep".into(),
            start: Some(proto::StartPosition {
                position: Some(proto::start_position::Position::Beginning(true)),
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut paths = HashSet::new();
    while paths.len() < 3 {
        paths.insert(next(&mut deep).await.path);
    }
    assert!(paths.contains("/order/status/eu"));
    let bad = c
        .subscribe(proto::SubscribeRequest {
            path: "/order/>/x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad pattern");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let e = c
        .receive(proto::ReceiveRequest {
            path: "/order/*".into(),
            ..Default::default()
        })
        .await
        .expect_err("pattern receive");
    assert_eq!(e.code(), Code::InvalidArgument);
}
