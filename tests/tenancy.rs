//! Safe to share: what one tenant's ordinary-looking requests must not do
//! to everyone else — break the broker's global keys, lose deliveries to an
//! oversized reply, grow metric series with forged names, open a blocking
//! Redis connection per group it names, or store a start position that
//! breaks retention. Nor what its ordinary requests may cost: retention
//! stays short inside Redis however many groups a queue has; idle empty
//! groups expire; groups per queue, queues in all and queues per token are
//! capped, atomically. Each against a real redis-server and leanmqd.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use tonic::{Code, Request};

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
                    None,
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

/// A field of `INFO commandstats` for one command (`calls`, `usec_per_call`).
fn command_stat(r: &RedisProc, command: &str, field: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut r.conn())
        .expect("info");
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|stats| {
            stats.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == field).then(|| v.parse().ok()).flatten()
            })
        })
        .unwrap_or(0.0)
}

fn group_names(r: &RedisProc, stream: &str) -> Vec<String> {
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(&mut r.conn())
        .unwrap_or_default();
    groups
        .iter()
        .filter_map(|g| match g {
            redis::Value::Array(f) => f.chunks(2).find_map(|kv| match kv {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn receive_req(path: &str, group: &str) -> proto::ReceiveRequest {
    proto::ReceiveRequest {
        path: path.into(),
        group: group.into(),
        max_messages: 1,
        ..Default::default()
    }
}

/// 2,000 groups on one queue (one far behind, in the middle of the name
/// order): every retention call stays under 20 ms of Redis time, and the
/// passes, made of many calls, still trim exactly what every group acked.
#[tokio::test]
async fn retention_over_thousands_of_groups_stays_short_and_exact() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.retention_max_age = Duration::ZERO;
        c.retention_interval = Duration::from_millis(100);
        c.max_groups_per_queue = 5000;
    })
    .await;
    let mut c = d.client().await;
    let mut a = AdminClient::new(d.channel().await);
    c.receive(receive_req("/wide", ""))
        .await
        .expect("the queue");
    for i in 0..10 {
        send(&mut c, "/wide", format!("{i}").as_bytes()).await;
    }
    // The groups, made directly (at "$": each has read everything), and
    // one laggard at the start that has read nothing.
    let mut p = redis::pipe();
    for i in 0..2000 {
        p.cmd("XGROUP")
            .arg("CREATE")
            .arg("webhook:wide")
            .arg(format!("g{i:04}"))
            .arg("$")
            .ignore();
    }
    p.cmd("XGROUP")
        .arg("CREATE")
        .arg("webhook:wide")
        .arg("g1000-laggard")
        .arg("0")
        .ignore();
    let () = p.query(&mut redis.conn()).expect("groups");
    // The default group reads and acks everything.
    let got = receive(&mut c, "/wide", "", 10, 30_000).await;
    assert_eq!(got.len(), 10);
    ack(
        &mut c,
        &got.iter().map(|m| m.receipt.as_str()).collect::<Vec<_>>(),
    )
    .await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg("20000")
        .query(&mut redis.conn())
        .expect("slowlog threshold");
    let () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query(&mut redis.conn())
        .expect("slowlog reset");
    let trims_before = command_stat(&redis, "xtrim", "calls");
    // Several whole passes (each ends in one XTRIM, after 21 slices of
    // 100 groups): the laggard holds every entry back.
    eventually("three passes over the 2,001 groups", || async {
        (command_stat(&redis, "xtrim", "calls") - trims_before >= 3.0).then_some(())
    })
    .await;
    assert_eq!(xlen(&redis, "webhook:wide"), 10, "the laggard read nothing");
    // The laggard catches up and acks: now everything goes.
    let lag = receive(&mut c, "/wide", "g1000-laggard", 10, 30_000).await;
    assert_eq!(lag.len(), 10);
    ack(
        &mut c,
        &lag.iter().map(|m| m.receipt.as_str()).collect::<Vec<_>>(),
    )
    .await;
    eventually("everything acked by every group is trimmed", || async {
        (xlen(&redis, "webhook:wide") == 0).then_some(())
    })
    .await;
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10)
        .query(&mut redis.conn())
        .expect("slowlog");
    assert!(slow.is_empty(), "Redis calls of 20 ms or more: {slow:?}");
    let per_call = command_stat(&redis, "evalsha", "usec_per_call");
    assert!(per_call < 20_000.0, "scripts took {per_call} us per call");
    // Sends are served meanwhile.
    send(&mut c, "/elsewhere", b"ok").await;
    assert_eq!(group_names(&redis, "webhook:wide").len(), 2002);
    let _ = a.list_queues(proto::ListQueuesRequest::default()).await;
}

/// An empty group idle past --group-idle-expiry goes; one with a pending
/// delivery stays, as do LeanMQ's default groups; a gone group comes back
/// on its next Receive.
#[tokio::test]
async fn idle_empty_groups_expire_but_never_pending_or_default_ones() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.group_idle_expiry = Duration::from_secs(2);
        c.retention_interval = Duration::from_millis(100);
    })
    .await;
    let mut c = d.client().await;
    // "busy" holds a message; "gone" reads nothing after its first look.
    for g in ["busy", "gone"] {
        c.receive(receive_req("/idle", g)).await.expect("the group");
    }
    send(&mut c, "/idle", b"held").await;
    let held = receive(&mut c, "/idle", "busy", 1, 60_000).await;
    assert_eq!(held.len(), 1);
    let start = Instant::now();
    eventually("the idle empty group expires", || async {
        (!group_names(&redis, "webhook:idle").contains(&"gone".to_string())).then_some(())
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "not before it was idle"
    );
    let mut left = group_names(&redis, "webhook:idle");
    left.sort();
    assert_eq!(left, ["busy", "idle-group"]);
    assert_eq!(group_names(&redis, "webhook:idle:dlq"), ["idle-group-dlq"]);
    // The pending delivery is still held and can be acked.
    assert_eq!(
        ack(&mut c, &[&held[0].receipt]).await,
        [proto::AckOutcome::Acked as i32]
    );
    // The expired group is made again by its next Receive.
    c.receive(receive_req("/idle", "gone"))
        .await
        .expect("made again");
    assert!(group_names(&redis, "webhook:idle").contains(&"gone".to_string()));
}

/// --max-groups-per-queue: the group past it is refused (Receive and
/// Subscribe), atomically under concurrency; existing groups keep working.
#[tokio::test]
async fn groups_per_queue_are_capped_atomically() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.max_groups_per_queue = 3).await;
    let c = d.client().await;
    let tries = (0..20).map(|i| {
        let mut c = c.clone();
        async move { code(c.receive(receive_req("/capped", &format!("g{i}"))).await) }
    });
    let codes = futures::future::join_all(tries).await;
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        3,
        "{codes:?}"
    );
    assert!(codes
        .iter()
        .all(|c| *c == Code::Ok || *c == Code::ResourceExhausted));
    assert_eq!(
        group_names(&redis, "webhook:capped").len(),
        4,
        "3 and the default"
    );
    let mut c = c.clone();
    let err = c
        .receive(receive_req("/capped", "one-more"))
        .await
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-groups-per-queue"),
        "{}",
        err.message()
    );
    let sub = c
        .subscribe(proto::SubscribeRequest {
            path: "/capped".into(),
            group: "by-stream".into(),
            ..Default::default()
        })
        .await;
    let refused = match sub {
        Err(s) => s.code(),
        Ok(s) => s
            .into_inner()
            .message()
            .await
            .err()
            .map(|s| s.code())
            .unwrap_or(Code::Ok),
    };
    assert_eq!(refused, Code::ResourceExhausted);
    // The default group and existing groups are unaffected.
    assert_eq!(code(c.receive(receive_req("/capped", "")).await), Code::Ok);
    let ok = group_names(&redis, "webhook:capped")
        .into_iter()
        .find(|g| g.starts_with('g'))
        .expect("a kept group");
    assert_eq!(code(c.receive(receive_req("/capped", &ok)).await), Code::Ok);
}

/// --max-queues: a SendBatch over the cap stores nothing; Send, Receive and
/// Subscribe that would create one more are refused; concurrent creations
/// stop exactly at the cap; deleting a queue frees its place.
#[tokio::test]
async fn queues_in_all_are_capped_atomically() {
    let redis = RedisProc::start();
    // A configured receipt key, so leanmqd keeps none in Redis and the
    // store holds only what requests wrote.
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.max_queues = 5;
        c.receipt_key = vec!["0123456789abcdef".repeat(4)];
    })
    .await;
    let c = d.client().await;
    let mut a = AdminClient::new(d.channel().await);
    let mut c1 = c.clone();
    let batch = c1
        .send_batch(proto::SendBatchRequest {
            messages: (0..6).map(|i| json_send(&format!("/b{i}"), "{}")).collect(),
        })
        .await
        .expect_err("six new queues");
    assert_eq!(batch.code(), Code::ResourceExhausted);
    assert!(
        batch.message().contains("--max-queues"),
        "{}",
        batch.message()
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut redis.conn())
        .expect("keys");
    assert!(keys.is_empty(), "nothing stored: {keys:?}");
    let tries = (0..20).map(|i| {
        let mut c = c.clone();
        async move { code(c.send(json_send(&format!("/q{i}"), "{}")).await) }
    });
    let codes = futures::future::join_all(tries).await;
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        5,
        "{codes:?}"
    );
    let scard: i64 = redis::cmd("SCARD")
        .arg("webhook:registry")
        .query(&mut redis.conn())
        .expect("scard");
    assert_eq!(scard, 10, "five queues and their DLQs");
    assert_eq!(
        code(c1.receive(receive_req("/new", "")).await),
        Code::ResourceExhausted
    );
    let sub = c1
        .subscribe(proto::SubscribeRequest {
            path: "/new".into(),
            ..Default::default()
        })
        .await;
    let refused = match sub {
        Err(s) => s.code(),
        Ok(s) => s
            .into_inner()
            .message()
            .await
            .err()
            .map(|s| s.code())
            .unwrap_or(Code::Ok),
    };
    assert_eq!(refused, Code::ResourceExhausted);
    // Existing queues keep working; a deleted one frees its place.
    let made: Vec<usize> = (0..20).filter(|i| codes[*i] == Code::Ok).collect();
    let first = format!("/q{}", made[0]);
    assert_eq!(code(c1.send(json_send(&first, "{}")).await), Code::Ok);
    a.delete_queue(proto::DeleteQueueRequest {
        path: first.clone(),
        with_dlq: true,
        confirm: first[1..].to_string(),
        ..Default::default()
    })
    .await
    .expect("delete");
    assert_eq!(code(c1.send(json_send("/new", "{}")).await), Code::Ok);
}

fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    let path = dir.join("tokens.toml");
    let text = format!(
        "[[tokens]]\nname = \"tenant\"\nhash = \"{}\"\nsend = [\">\"]\nsubscribe = [\">\"]\nmax_queues = 2\n\n\
         [[tokens]]\nname = \"other\"\nhash = \"{}\"\nsend = [\">\"]\nsubscribe = [\">\"]\nadmin = [\">\"]\n",
        h("tenant-secret"),
        h("other-secret"),
    );
    std::fs::write(&path, text).expect("tokens file");
    path
}

fn as_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

/// A token's `max_queues`: it may create that many queues, may still use
/// queues others made, and gets its place back when one of its queues is
/// deleted; other tokens are not limited by it.
#[tokio::test]
async fn a_tokens_queue_quota_counts_what_it_created() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("dir");
    let file = tokens_file(dir.path());
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let mut c = d.client().await;
    let mut a = AdminClient::new(d.channel().await);
    let t = "tenant-secret";
    for p in ["/t/a", "/t/b"] {
        assert_eq!(
            code(c.send(as_token(json_send(p, "{}"), t)).await),
            Code::Ok,
            "{p}"
        );
    }
    let err = c
        .send(as_token(json_send("/t/c", "{}"), t))
        .await
        .expect_err("a third queue");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_queues"), "{}", err.message());
    assert_eq!(
        code(c.receive(as_token(receive_req("/t/d", ""), t)).await),
        Code::ResourceExhausted
    );
    // Another token makes /t/c; the tenant may use it (it creates nothing).
    assert_eq!(
        code(
            c.send(as_token(json_send("/t/c", "{}"), "other-secret"))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(c.send(as_token(json_send("/t/c", "{}"), t)).await),
        Code::Ok
    );
    assert_eq!(
        code(c.send(as_token(json_send("/t/a", "{}"), t)).await),
        Code::Ok
    );
    a.delete_queue(as_token(
        proto::DeleteQueueRequest {
            path: "/t/a".into(),
            with_dlq: true,
            confirm: "t_a".into(),
            ..Default::default()
        },
        "other-secret",
    ))
    .await
    .expect("delete");
    assert_eq!(
        code(c.send(as_token(json_send("/t/e", "{}"), t)).await),
        Code::Ok
    );
    let owned: Vec<String> = redis::cmd("SMEMBERS")
        .arg("webhook:#created-by:tenant")
        .query(&mut redis.conn())
        .expect("smembers");
    let mut owned = owned;
    owned.sort();
    assert_eq!(owned, ["t_b", "t_e"]);
}

/// `INFO stats total_commands_processed`.
fn commands_processed(r: &RedisProc) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut r.conn())
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_commands_processed")
}

/// Queues `/{prefix}/q0000` … made with SendBatch calls of 1,000.
async fn make_queues(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}_q{i:04}")).collect();
    for chunk in names.chunks(1000) {
        c.send_batch(proto::SendBatchRequest {
            messages: chunk
                .iter()
                .map(|q| json_send(&format!("/{}", q.replace('_', "/")), "{}"))
                .collect(),
        })
        .await
        .expect("send batch");
    }
    names
}

/// 2,000 queues and five idle pattern subscriptions: Redis serves a few
/// commands a second in all (they share the replica's one discovery), not
/// a listing of every queue per subscription per second; a queue made
/// later is still found.
#[tokio::test]
async fn idle_pattern_subscriptions_cost_redis_almost_nothing() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.retention_interval = Duration::from_secs(3600);
    })
    .await;
    let mut c = d.client().await;
    make_queues(&mut c, "many", 2000).await;
    send(&mut c, "/late/x", b"{}").await;
    let mut subs = Vec::new();
    for pattern in ["/none0/>", "/none1/>", "/none2/*", "/none3/*/x", "/late/*"] {
        let s = c
            .subscribe(proto::SubscribeRequest {
                path: pattern.into(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        subs.push(s);
    }
    let late = subs.last_mut().expect("the /late/* subscription");
    // Attached to /late/x: discovery has walked the registry.
    assert_eq!(next(late).await.path, "/late/x");
    let before = commands_processed(&redis);
    let window = Duration::from_secs(3);
    // The measured window itself (nothing waits on a condition here).
    tokio::time::sleep(window).await;
    let spent = commands_processed(&redis) - before;
    eprintln!("{spent} Redis commands in {window:?}");
    assert!(
        spent < 300,
        "{spent} Redis commands in {window:?} with 2,000 queues and 5 idle pattern subscriptions"
    );
    send(&mut c, "/late/y", b"{}").await;
    let late = subs.last_mut().expect("the /late/* subscription");
    assert_eq!(next(late).await.path, "/late/y");
}

/// ListQueues pages: in name order, every queue on exactly one page; an
/// unset page_size gives the default page and a token; bad sizes and
/// tokens are INVALID_ARGUMENT.
#[tokio::test]
async fn list_queues_pages_cover_every_queue_exactly_once() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut want = make_queues(&mut c, "paged", 250).await;
    want.sort();
    let mut a = AdminClient::new(d.channel().await);
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = a
            .list_queues(proto::ListQueuesRequest {
                page_size: 100,
                page_token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        sizes.push(page.queues.len());
        seen.extend(page.queues.into_iter().map(|q| q.queue));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(seen, want, "every queue once, in name order");
    let first = a
        .list_queues(proto::ListQueuesRequest::default())
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(first.queues.len(), 100);
    assert!(!first.next_page_token.is_empty());
    for bad in [
        proto::ListQueuesRequest {
            page_size: 1001,
            ..Default::default()
        },
        proto::ListQueuesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        },
    ] {
        let e = a.list_queues(bad).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
}

fn named_send(prefix: &str, queue: &str) -> proto::SendRequest {
    proto::SendRequest {
        queue: queue.into(),
        prefix: prefix.into(),
        ..json_send("", "{}")
    }
}

fn create_named(prefix: &str, queue: &str) -> proto::CreateQueueRequest {
    proto::CreateQueueRequest {
        queue: queue.into(),
        prefix: prefix.into(),
        ..Default::default()
    }
}

/// Several served prefixes: `--max-queues` counts each prefix's registry on
/// its own, queues addressed by name and CreateQueue count like any other,
/// ListQueues pages over names holding ':', and no queue name can be a
/// token's record of the queues it created.
#[tokio::test]
async fn the_queue_cap_holds_per_prefix_and_for_queues_addressed_by_name() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.prefix = vec!["webhook:".into(), "mq:".into()];
        c.max_queues = 2;
    })
    .await;
    let mut c = d.client().await;
    let mut a = AdminClient::new(d.channel().await);
    assert_eq!(
        code(a.create_queue(create_named("mq:", "responses:1")).await),
        Code::Ok
    );
    assert_eq!(
        code(c.send(named_send("mq:", "responses:2")).await),
        Code::Ok
    );
    let full = c
        .send(named_send("mq:", "responses:3"))
        .await
        .expect_err("a third queue under mq:");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(
        full.message().contains("--max-queues"),
        "{}",
        full.message()
    );
    assert_eq!(
        code(a.create_queue(create_named("mq:", "responses:4")).await),
        Code::ResourceExhausted
    );
    // Using a queue that exists creates nothing.
    assert_eq!(
        code(c.send(named_send("mq:", "responses:1")).await),
        Code::Ok
    );
    // The default prefix has a registry, and a cap, of its own.
    for p in ["/a", "/b"] {
        assert_eq!(code(c.send(json_send(p, "{}")).await), Code::Ok, "{p}");
    }
    assert_eq!(
        code(c.send(json_send("/c", "{}")).await),
        Code::ResourceExhausted
    );
    // Pages of one: each page token names a queue holding ':'.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = a
            .list_queues(proto::ListQueuesRequest {
                prefix: "mq:".into(),
                page_size: 1,
                page_token,
            })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.queues.into_iter().map(|q| q.queue));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["responses:1", "responses:2"]);
    let e = c
        .send(named_send("", "#created-by:tenant"))
        .await
        .expect_err("reserved");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
}

/// A token's `max_queues` counts per prefix, and CreateQueue and queues
/// addressed by name count against it as Send does.
#[tokio::test]
async fn a_tokens_quota_counts_named_and_created_queues_per_prefix() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("dir");
    let file = tokens_file(dir.path());
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.auth_tokens = Some(file);
        c.prefix = vec!["webhook:".into(), "mq:".into()];
    })
    .await;
    let mut c = d.client().await;
    let mut a = AdminClient::new(d.channel().await);
    let t = "tenant-secret";
    assert_eq!(
        code(
            a.create_queue(as_token(create_named("mq:", "jobs:x"), t))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(c.send(as_token(named_send("mq:", "jobs:y"), t)).await),
        Code::Ok
    );
    let e = a
        .create_queue(as_token(create_named("mq:", "jobs:z"), t))
        .await
        .expect_err("a third queue under mq:");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("max_queues"), "{}", e.message());
    assert_eq!(
        code(c.send(as_token(named_send("mq:", "jobs:z"), t)).await),
        Code::ResourceExhausted
    );
    let mut owned: Vec<String> = redis::cmd("SMEMBERS")
        .arg("mq:#created-by:tenant")
        .query(&mut redis.conn())
        .expect("smembers");
    owned.sort();
    assert_eq!(owned, ["jobs:x", "jobs:y"]);
    // Under the default prefix the token starts from nothing.
    assert_eq!(
        code(c.send(as_token(json_send("/t/a", "{}"), t)).await),
        Code::Ok
    );
}
