//! Publish: a stream of messages against a real leanmqd and redis-server,
//! each answered on its own.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use leanmq_grpc::proto;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

fn msg(sequence: u64, m: proto::SendRequest) -> proto::PublishRequest {
    proto::PublishRequest {
        sequence,
        message: Some(m),
    }
}

/// One Publish stream over `reqs` (then closed): the advertised window,
/// every response, and how the stream ended.
async fn publish_all(
    c: &mut Client,
    reqs: Vec<proto::PublishRequest>,
) -> (u64, Vec<proto::PublishResponse>, Result<(), tonic::Status>) {
    publish_req(c, Request::new(futures::stream::iter(reqs))).await
}

async fn publish_req(
    c: &mut Client,
    req: Request<futures::stream::Iter<std::vec::IntoIter<proto::PublishRequest>>>,
) -> (u64, Vec<proto::PublishResponse>, Result<(), tonic::Status>) {
    let resp = c.publish(req).await.expect("publish opens");
    let window = window_of(&resp);
    let mut s = resp.into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, s.message())
            .await
            .expect("answers in time")
        {
            Ok(Some(r)) => got.push(r),
            Ok(None) => return (window, got, Ok(())),
            Err(e) => return (window, got, Err(e)),
        }
    }
}

fn window_of<T>(resp: &tonic::Response<T>) -> u64 {
    resp.metadata()
        .get("leanmq-publish-window")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the window header")
}

fn stored_ids(r: &RedisProc, key: &str) -> HashSet<String> {
    entries(r, key).into_iter().map(|(id, _)| id).collect()
}

#[tokio::test]
async fn many_sequences_are_answered_and_each_is_in_redis() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    const N: u64 = 3000;
    let reqs = (0..N)
        .map(|i| {
            let path = if i % 2 == 0 { "/pub/a" } else { "/pub/b" };
            msg(i, json_send(path, &format!("{{\"n\":{i}}}")))
        })
        .collect();
    let (window, got, end) = publish_all(&mut c, reqs).await;
    assert_eq!(window, 1000, "the default window is advertised");
    end.expect("the stream ends OK once the client closes its side");
    assert_eq!(got.len() as u64, N);
    let seqs: HashSet<u64> = got.iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, (0..N).collect::<HashSet<_>>(), "each sequence once");
    let a = entries(&redis, "webhook:pub_a");
    let b = entries(&redis, "webhook:pub_b");
    assert_eq!(a.len() + b.len(), N as usize);
    // Ids are per stream (two streams may hold the same id).
    let a: std::collections::HashMap<String, serde_json::Value> = a.into_iter().collect();
    let b: std::collections::HashMap<String, serde_json::Value> = b.into_iter().collect();
    for r in &got {
        assert_eq!(r.code, 0, "{}", r.error);
        assert!(!r.duplicate);
        let stream = if r.sequence % 2 == 0 { &a } else { &b };
        let data = stream.get(&r.message_id).expect("the id is in Redis");
        assert_eq!(
            data["n"],
            serde_json::json!(r.sequence),
            "the id holds its message"
        );
    }
}

#[tokio::test]
async fn a_bad_message_gets_its_own_error_and_the_stream_goes_on() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut reqs: Vec<_> = (0..20)
        .map(|i| msg(i, bytes_send("/pub/mixed", b"ok")))
        .collect();
    reqs[5] = msg(5, bytes_send("/", b"bad path"));
    reqs[9] = msg(9, json_send("/pub/mixed", "{not json"));
    reqs[13] = proto::PublishRequest {
        sequence: 13,
        message: None,
    };
    let (_, got, end) = publish_all(&mut c, reqs).await;
    end.expect("ends OK");
    assert_eq!(got.len(), 20);
    for r in &got {
        if [5, 9, 13].contains(&r.sequence) {
            assert_eq!(r.code, Code::InvalidArgument as i32, "{r:?}");
            assert!(!r.error.is_empty());
            assert!(r.message_id.is_empty());
        } else {
            assert_eq!(r.code, 0, "{}", r.error);
        }
    }
    assert_eq!(xlen(&redis, "webhook:pub_mixed"), 17);
}

#[tokio::test]
async fn permission_is_checked_per_message_path() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"orders\"\nhash = \"{}\"\nsend = [\"/order/>\"]\n",
            leanmq_grpc::auth::hash_token("orders-secret")
        ),
    )
    .expect("write tokens");
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let mut c = d.client().await;
    let reqs: Vec<_> = (0..10)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/order/new"
            } else {
                "/billing/new"
            };
            msg(i, bytes_send(path, b"x"))
        })
        .collect();
    let mut req = Request::new(futures::stream::iter(reqs));
    req.metadata_mut().insert(
        "authorization",
        "Bearer orders-secret".parse().expect("ascii"),
    );
    let (_, got, end) = publish_req(&mut c, req).await;
    end.expect("ends OK");
    assert_eq!(got.len(), 10);
    for r in &got {
        let want = if r.sequence % 2 == 0 {
            Code::Ok
        } else {
            Code::PermissionDenied
        };
        assert_eq!(r.code, want as i32, "{r:?}");
    }
    assert_eq!(xlen(&redis, "webhook:order_new"), 5);
    assert_eq!(xlen(&redis, "webhook:billing_new"), 0);
    // Without a token the stream itself is refused.
    let e = c
        .publish(futures::stream::iter(vec![msg(
            0,
            bytes_send("/order/new", b"x"),
        )]))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn with_redis_down_each_message_is_unavailable_and_none_ok() {
    let mut redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.redis_timeout = Duration::from_millis(500)
    })
    .await;
    let mut c = d.client().await;
    send(&mut c, "/pub/outage", b"before").await;
    redis.kill();
    let reqs = (0..50)
        .map(|i| msg(i, bytes_send("/pub/outage", b"during")))
        .collect();
    let (_, got, end) = publish_all(&mut c, reqs).await;
    end.expect("the stream itself ends OK");
    assert_eq!(got.len(), 50);
    for r in &got {
        assert_eq!(r.code, Code::Unavailable as i32, "{r:?}");
        assert!(r.message_id.is_empty());
    }
}

#[tokio::test]
async fn idempotency_keys_dedupe_a_resend() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let reqs = || -> Vec<proto::PublishRequest> {
        (0..50)
            .map(|i| {
                let mut m = bytes_send("/pub/dedupe", format!("m{i}").as_bytes());
                m.idempotency_key = format!("key-{i}");
                msg(i, m)
            })
            .collect()
    };
    let (_, first, _) = publish_all(&mut c, reqs()).await;
    let (_, again, _) = publish_all(&mut c, reqs()).await;
    let ids = |rs: &[proto::PublishResponse]| {
        let mut v: Vec<(u64, String, bool)> = rs
            .iter()
            .map(|r| (r.sequence, r.message_id.clone(), r.duplicate))
            .collect();
        v.sort();
        v
    };
    let (first, again) = (ids(&first), ids(&again));
    assert_eq!(first.len(), 50);
    for ((s1, id1, d1), (s2, id2, d2)) in first.iter().zip(&again) {
        assert_eq!(s1, s2);
        assert!(!id1.is_empty());
        assert_eq!(id1, id2, "a resend gets the first id");
        assert!(!d1 && *d2, "only the resend is a duplicate");
    }
    assert_eq!(xlen(&redis, "webhook:pub_dedupe"), 50);
}

#[tokio::test]
async fn the_window_is_advertised_and_a_small_one_still_carries_everything() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.publish_window = 3).await;
    let mut c = d.client().await;
    // The client keeps at most the window unanswered, as the SDKs do, and
    // never sees more than that outstanding.
    let (tx, rx) = mpsc::channel(16);
    let resp = c.publish(ReceiverStream::new(rx)).await.expect("opens");
    let window = window_of(&resp);
    assert_eq!(window, 3);
    let mut s = resp.into_inner();
    let mut answered = 0u64;
    let mut sent = 0u64;
    while answered < 200 {
        while sent < 200 && sent - answered < window {
            tx.send(msg(sent, bytes_send("/pub/window", b"w")))
                .await
                .expect("send");
            sent += 1;
        }
        let r = tokio::time::timeout(WAIT, s.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        assert_eq!(r.code, 0, "{}", r.error);
        answered += 1;
    }
    drop(tx);
    assert!(s.message().await.expect("ends OK").is_none());
    assert_eq!(xlen(&redis, "webhook:pub_window"), 200);
}

#[tokio::test]
async fn a_bad_window_flag_is_refused() {
    let mut cfg = leanmq_grpc::config::Config::for_redis("redis://127.0.0.1:1");
    for bad in [0, 10_001] {
        cfg.publish_window = bad;
        let e = cfg.validate().expect_err("refused");
        assert!(e.to_string().contains("--publish-window"), "{e}");
    }
}

#[tokio::test]
async fn on_drain_the_stream_answers_what_it_read_then_ends_unavailable() {
    let redis = RedisProc::start();
    let mut d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let (tx, rx) = mpsc::channel(16);
    let mut s = c
        .publish(ReceiverStream::new(rx))
        .await
        .expect("opens")
        .into_inner();
    let mut ok = Vec::new();
    for i in 0..10 {
        tx.send(msg(i, bytes_send("/pub/drain", b"d")))
            .await
            .expect("send");
        let r = tokio::time::timeout(WAIT, s.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open");
        assert_eq!(r.code, 0);
        ok.push(r.message_id);
    }
    // The client keeps its side open; the drain ends the stream anyway.
    let running = d.running.take().expect("running");
    let stopped = tokio::spawn(running.stop());
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match s.message().await {
                Ok(Some(r)) => assert_ne!(r.code, 0, "nothing new is OK once draining"),
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the stream ends within the drain");
    let e = end.expect("an error status, not OK");
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("leanmqd stops")
        .expect("join")
        .expect("clean stop");
    let stored = stored_ids(&redis, "webhook:pub_drain");
    assert!(ok.iter().all(|id| stored.contains(id)));
    drop(tx);
}

#[tokio::test]
async fn each_message_picks_its_own_prefix() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.prefix = vec!["webhook:".into(), "mq:".into()]
    })
    .await;
    let mut c = d.client().await;
    let with_prefix = |i: u64, prefix: &str| {
        let mut m = bytes_send("/pub/prefixed", b"p");
        m.prefix = prefix.into();
        msg(i, m)
    };
    let reqs = vec![
        with_prefix(0, ""),
        with_prefix(1, "mq:"),
        with_prefix(2, "nope:"),
    ];
    let (_, mut got, end) = publish_all(&mut c, reqs).await;
    end.expect("ends OK");
    got.sort_by_key(|r| r.sequence);
    let codes: Vec<i32> = got.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        vec![0, 0, Code::FailedPrecondition as i32],
        "{got:?}"
    );
    assert_eq!(xlen(&redis, "webhook:pub_prefixed"), 1);
    assert_eq!(xlen(&redis, "mq:pub_prefixed"), 1);
}
