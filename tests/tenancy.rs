//! Safe to share: what one tenant's ordinary-looking requests must not do
//! to everyone else — break the broker's global keys, lose deliveries to an
//! oversized reply, grow metric series with forged names, open a blocking
//! Redis connection per group it names, or store a start position that
//! breaks retention. Each against a real redis-server and leanmqd.

mod common;

use std::time::Duration;

use common::*;
use leanmq_grpc::proto;
use tonic::Code;

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), s.message().to_string())
}

#[tokio::test]
async fn paths_that_map_onto_the_brokers_global_keys_are_refused() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    // Case matters in keys: "Schedule" is an ordinary queue.
    c.send(json_send("/Schedule", "{}"))
        .await
        .expect("an ordinary queue");
    for path in ["/schedule", "/registry", "registry/"] {
        let (code, msg) = code_of(c.send(json_send(path, "{}")).await);
        assert_eq!(code, Code::InvalidArgument, "{path}: {msg}");
        assert!(msg.contains("reserved"), "{msg}");
        let (code, _) = code_of(
            c.receive(proto::ReceiveRequest {
                path: path.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument);
    }
    let mut admin = proto::admin_client::AdminClient::new(l.channel().await);
    let (code, _) = code_of(
        admin
            .get_queue(proto::GetQueueRequest {
                path: "schedule".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    // Nothing was made of the global keys.
    let t: String = redis::cmd("TYPE")
        .arg("webhook:registry")
        .query(&mut redis.conn())
        .expect("type");
    assert_ne!(t, "stream");
}

#[tokio::test]
async fn a_global_key_another_program_broke_fails_a_batch_whole_and_a_delete_before_it_deletes() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    send(&mut c, "/orders", b"first").await;
    // A LeanMQ program with a webhook on /schedule made the schedule a stream.
    let _: String = redis::cmd("XADD")
        .arg("webhook:schedule")
        .arg("*")
        .arg("data")
        .arg("{}")
        .query(&mut redis.conn())
        .expect("xadd");
    let delayed = proto::SendRequest {
        delay: dur(Duration::from_secs(60)),
        ..json_send("/orders", "{\"later\":true}")
    };
    let before = xlen(&redis, "webhook:orders");
    let (code, msg) = code_of(
        c.send_batch(proto::SendBatchRequest {
            messages: vec![json_send("/orders", "{\"now\":true}"), delayed],
        })
        .await,
    );
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("nothing was written"), "{msg}");
    assert_eq!(xlen(&redis, "webhook:orders"), before, "all or none");
    let delayed_left: i64 = redis::cmd("ZCARD")
        .arg("webhook:orders:delayed")
        .query(&mut redis.conn())
        .expect("zcard");
    assert_eq!(delayed_left, 0, "no half-written delayed message");
    let mut admin = proto::admin_client::AdminClient::new(l.channel().await);
    let (code, _) = code_of(
        admin
            .delete_queue(proto::DeleteQueueRequest {
                path: "/orders".into(),
                confirm: "orders".into(),
                with_dlq: true,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(xlen(&redis, "webhook:orders"), before, "nothing deleted");
}

#[tokio::test]
async fn a_receive_reply_is_capped_by_bytes_and_what_did_not_fit_is_not_leased() {
    let redis = RedisProc::start();
    // 1 MiB payloads: the gRPC message limit is 32 MiB.
    let l = Leanmqd::start_with(&redis.url(), |cfg| cfg.max_payload_bytes = 1 << 20).await;
    let mut c = l.client().await;
    let big = vec![b'x'; (1 << 20) - 1024];
    for _ in 0..40 {
        c.send(bytes_send("/big", &big)).await.expect("send");
    }
    let mut seen = std::collections::HashSet::new();
    let mut calls = 0;
    while seen.len() < 40 {
        calls += 1;
        assert!(calls <= 10, "every message arrives within a few calls");
        let got = c
            .clone()
            .max_decoding_message_size(64 << 20)
            .receive(proto::ReceiveRequest {
                path: "/big".into(),
                max_messages: 1000,
                ..Default::default()
            })
            .await
            .expect("a reply within the message limit, not OUT_OF_RANGE")
            .into_inner()
            .deliveries;
        assert!(!got.is_empty());
        assert!(got.len() < 40, "one reply cannot hold 40 MiB");
        for d in &got {
            assert_eq!(d.attempt, 1, "what did not fit was given back uncounted");
            seen.insert(d.message_id.clone());
        }
        let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
        ack(&mut c, &receipts).await;
    }
    assert_eq!(xlen(&redis, "webhook:big:dlq"), 0, "nothing dead-lettered");
}

/// GET a path over plain HTTP; the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn forged_receipts_make_no_metric_series() {
    let redis = RedisProc::start();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let at = metrics.to_string();
    let (_leanmqd, port) = spawn_leanmqd(&redis.url(), &["--metrics-listen", &at]);
    let mut c = connect_when_up(port).await;
    send(&mut c, "/real", b"x").await;
    let got = receive(&mut c, "/real", "", 1, 30_000).await;
    ack(&mut c, &[got[0].receipt.as_str()]).await;
    let name = "forged".repeat(600);
    // Signed with the real key (as if it leaked): receipts for queues that
    // don't exist get past the signature and still make no series.
    let keys = receipt_keys(&redis);
    for batch in 0..5 {
        let receipts: Vec<String> = (0..200)
            .map(|i| {
                leanmq_grpc::broker::receipt::Receipt::encode_parts(
                    &keys,
                    &format!("{name}{batch}x{i}"),
                    "g",
                    "1-0",
                    1,
                )
            })
            .collect();
        let r = c.ack(proto::AckRequest { receipts }).await;
        // Refused (unsigned or unknown) or answered NOT_PENDING: either way
        // nothing was settled.
        if let Ok(r) = r {
            assert!(r
                .into_inner()
                .results
                .iter()
                .all(|r| r.outcome != proto::AckOutcome::Acked as i32));
        }
    }
    let body = http_get(metrics, "/metrics").await;
    assert!(body.contains("queue=\"real\""), "the real queue is counted");
    assert!(
        !body.contains("forged"),
        "no series for a queue that doesn't exist"
    );
    assert!(body.len() < 200_000, "{} bytes of /metrics", body.len());
}

fn connected_clients(redis: &RedisProc) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.conn())
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_in_many_groups_share_one_blocking_connection() {
    let redis = RedisProc::start();
    let l = Leanmqd::start_with(&redis.url(), |cfg| cfg.max_streams_per_connection = 1000).await;
    let mut c = l.client().await;
    send(&mut c, "/fan/out", b"warm").await;
    let baseline = connected_clients(&redis);
    let mut subs = Vec::new();
    for g in 0..300 {
        subs.push(subscribe(&mut c, "/fan/out", &format!("h{g}"), 10, 30_000).await);
    }
    // Every reader is up and waiting once a message sent now reaches all.
    let id = send(&mut c, "/fan/out", b"to every group").await;
    for s in subs.iter_mut() {
        assert_eq!(next(s).await.message_id, id);
    }
    let now = connected_clients(&redis);
    assert!(
        now <= baseline + 4,
        "300 groups: {now} Redis clients, {baseline} before (one shared blocking read, not one per group)"
    );
}

#[tokio::test]
async fn absurd_start_positions_are_refused() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    use proto::start_position::Position;
    for (what, start) in [
        (
            "after_id past u64 times",
            Position::AfterId("18446744073709551615-18446744073709551615".into()),
        ),
        (
            "after_id a year ahead",
            Position::AfterId(format!("{}-0", 4_102_444_800_000u64)),
        ),
        (
            "at_time at 2^62 s",
            Position::AtTime(prost_types::Timestamp {
                seconds: 1 << 62,
                nanos: 0,
            }),
        ),
    ] {
        let (code, msg) = code_of(
            c.receive(proto::ReceiveRequest {
                path: "/start".into(),
                group: "g".into(),
                start: Some(proto::StartPosition {
                    position: Some(start),
                }),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{what}: {msg}");
    }
    // A start at a real time is kept with an id retention can read.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    c.receive(proto::ReceiveRequest {
        path: "/start".into(),
        group: "g".into(),
        start: Some(proto::StartPosition {
            position: Some(Position::AtTime(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: 0,
            })),
        }),
        ..Default::default()
    })
    .await
    .expect("a valid start");
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("webhook:start")
        .query(&mut redis.conn())
        .expect("xinfo");
    let last: Vec<String> = groups
        .iter()
        .filter_map(|g| g.get("last-delivered-id"))
        .filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .collect();
    for id in &last {
        let seq: u64 = id
            .split('-')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(seq < 1 << 53, "{id}: a sequence Lua reads exactly");
    }
}
