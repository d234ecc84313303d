//! A queue belongs to the first path that creates it (issue #14 finding
//! 10): LeanMQ maps `/order-status` and `/order/status` both to
//! `order_status`, so without owners a token granted one spelling reads and
//! writes the other's messages. Each test against a real redis-server and
//! leanmqd.

mod common;

use common::*;
use leanmq_grpc::proto;
use tonic::Code;

const OWNER: &str = "/order/status";
const OTHER: &str = "/order-status";

fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), s.message().to_string())
}

/// The refusal every RPC gives another spelling of an owned queue.
fn assert_owned(what: &str, (code, msg): (Code, String)) {
    assert_eq!(code, Code::FailedPrecondition, "{what}: {msg}");
    assert!(
        msg.contains(&format!(
            "path \"{OTHER}\" maps to queue \"order_status\", which belongs to \"{OWNER}\""
        )) && msg.contains("--allow-colliding-paths"),
        "{what}: {msg}"
    );
}

fn owner_key(r: &RedisProc) -> Option<String> {
    redis::cmd("GET")
        .arg("webhook:order_status:owner")
        .query(&mut r.conn())
        .expect("get owner")
}

fn receive_req(path: &str) -> proto::ReceiveRequest {
    proto::ReceiveRequest {
        path: path.into(),
        max_messages: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn other_spellings_of_an_owned_queue_are_refused() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    send(&mut c, OWNER, b"1").await;
    assert_eq!(owner_key(&redis).as_deref(), Some(OWNER));
    // Twice: the second send takes the plain (script-less) path for the owner.
    send(&mut c, OWNER, b"2").await;
    assert_owned("Send", refusal(c.send(bytes_send(OTHER, b"x")).await));
    assert_owned(
        "SendBatch",
        refusal(
            c.send_batch(proto::SendBatchRequest {
                messages: vec![bytes_send(OTHER, b"x")],
            })
            .await,
        ),
    );
    assert_owned("Receive", refusal(c.receive(receive_req(OTHER)).await));
    assert_owned(
        "Subscribe",
        refusal(
            c.subscribe(proto::SubscribeRequest {
                path: OTHER.into(),
                max_in_flight: 1,
                ..Default::default()
            })
            .await,
        ),
    );
    // Nothing the refused calls did reached the queue; the owner still reads it.
    assert_eq!(xlen(&redis, "webhook:order_status"), 2);
    let got = receive(&mut c, OWNER, "", 10, 30_000).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.path == OWNER), "{got:?}");
}

#[tokio::test]
async fn a_batch_with_one_refused_path_stores_nothing() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    // Within one batch too: the first spelling claims a new queue.
    let r = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![
                bytes_send(OWNER, b"a"),
                bytes_send("/elsewhere", b"b"),
                bytes_send(OTHER, b"c"),
            ],
        })
        .await;
    assert_owned("SendBatch, new queue", refusal(r));
    assert_eq!(xlen(&redis, "webhook:order_status"), 0);
    assert_eq!(xlen(&redis, "webhook:elsewhere"), 0);
    assert_eq!(owner_key(&redis), None);
    send(&mut c, OWNER, b"1").await;
    let r = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![bytes_send("/elsewhere", b"b"), bytes_send(OTHER, b"c")],
        })
        .await;
    assert_owned("SendBatch, owned queue", refusal(r));
    assert_eq!(xlen(&redis, "webhook:order_status"), 1);
    assert_eq!(xlen(&redis, "webhook:elsewhere"), 0);
}

#[tokio::test]
async fn allow_colliding_paths_keeps_leanmqs_sharing() {
    let redis = RedisProc::start();
    let l = Leanmqd::start_with(&redis.url(), |c| c.allow_colliding_paths = true).await;
    let mut c = l.client().await;
    send(&mut c, OWNER, b"1").await;
    send(&mut c, OTHER, b"2").await;
    // The owner is still recorded, for a later switch to owners.
    assert_eq!(owner_key(&redis).as_deref(), Some(OWNER));
    let got = receive(&mut c, OTHER, "", 10, 30_000).await;
    let paths: Vec<&str> = got.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, [OWNER, OTHER]);
}

#[tokio::test]
async fn delete_queue_frees_the_name_for_another_spelling() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    send(&mut c, OWNER, b"1").await;
    send(&mut c, OWNER, b"2").await;
    let mut a = proto::admin_client::AdminClient::new(l.channel().await);
    a.delete_queue(proto::DeleteQueueRequest {
        path: OWNER.into(),
        with_dlq: true,
        confirm: "order_status".into(),
        ..Default::default()
    })
    .await
    .expect("delete");
    assert_eq!(owner_key(&redis), None);
    send(&mut c, OTHER, b"3").await;
    assert_eq!(owner_key(&redis).as_deref(), Some(OTHER));
    // This replica forgot the old owner with the queue: its plain path is refused.
    let (code, msg) = refusal(c.send(bytes_send(OWNER, b"4")).await);
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains(&format!("which belongs to \"{OTHER}\"")),
        "{msg}"
    );
}

fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    let path = dir.join("tokens.toml");
    let text = format!(
        "[[tokens]]\nname = \"owner\"\nhash = \"{}\"\nsend = [\"{OWNER}\"]\nsubscribe = [\"{OWNER}\"]\nadmin = [\"{OWNER}\"]\n\n\
         [[tokens]]\nname = \"narrow\"\nhash = \"{}\"\nsend = [\"{OTHER}\"]\nsubscribe = [\"{OTHER}\"]\nadmin = [\"{OTHER}\"]\n",
        h("owner-secret"),
        h("narrow-secret"),
    );
    std::fs::write(&path, text).expect("tokens file");
    path
}

fn as_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    let (code, msg) = refusal(r);
    assert_eq!(code, Code::PermissionDenied, "{what}: {msg}");
}

/// Grants are checked on the owner's path, never on the words of a queue
/// name: a token granted only `/order-status` can't settle `/order/status`'s
/// receipts, admin its queue, or read it by name.
#[tokio::test]
async fn a_grant_on_another_spelling_reaches_nothing_of_the_owners_queue() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = tokens_file(dir.path());
    let l = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let mut c = l.client().await;
    let (own, narrow) = ("owner-secret", "narrow-secret");
    for p in [b"1", b"2"] {
        c.send(as_token(bytes_send(OWNER, p), own))
            .await
            .expect("owner sends");
    }
    let got = c
        .receive(as_token(
            proto::ReceiveRequest {
                path: OWNER.into(),
                max_messages: 2,
                wait: dur(WAIT),
                ..Default::default()
            },
            own,
        ))
        .await
        .expect("owner receives")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 2);
    let receipt = got[0].receipt.clone();
    let ack = proto::AckRequest {
        receipts: vec![receipt.clone()],
    };
    denied("Ack", c.ack(as_token(ack.clone(), narrow)).await);
    denied(
        "Extend",
        c.extend(as_token(
            proto::ExtendRequest {
                receipt: receipt.clone(),
                extension: ms(60_000),
            },
            narrow,
        ))
        .await,
    );
    denied(
        "Nack",
        c.nack(as_token(
            proto::NackRequest {
                receipt: receipt.clone(),
                ..Default::default()
            },
            narrow,
        ))
        .await,
    );
    let by_name = proto::ReceiveRequest {
        queue: "order_status".into(),
        max_messages: 1,
        ..Default::default()
    };
    denied(
        "Receive by name",
        c.receive(as_token(by_name, narrow)).await,
    );
    let mut a = proto::admin_client::AdminClient::new(l.channel().await);
    for (path, queue) in [(OTHER, ""), ("", "order_status"), ("order_status", "")] {
        let r = a
            .get_queue(as_token(
                proto::GetQueueRequest {
                    path: path.into(),
                    queue: queue.into(),
                    ..Default::default()
                },
                narrow,
            ))
            .await;
        denied(&format!("GetQueue {path:?} {queue:?}"), r);
    }
    // ListQueues shows the queue to the owner's grant only.
    for (token, listed) in [(narrow, false), (own, true)] {
        let page = a
            .list_queues(as_token(proto::ListQueuesRequest::default(), token))
            .await
            .expect("ListQueues")
            .into_inner();
        let names: Vec<&str> = page.queues.iter().map(|q| q.queue.as_str()).collect();
        assert_eq!(
            names.contains(&"order_status"),
            listed,
            "{token}: {names:?}"
        );
    }
    // The owner's token still does all of it.
    let r = c.ack(as_token(ack, own)).await.expect("owner acks");
    assert_eq!(r.into_inner().results.len(), 1);
    a.get_queue(as_token(
        proto::GetQueueRequest {
            path: OWNER.into(),
            ..Default::default()
        },
        own,
    ))
    .await
    .expect("owner admins");
}

/// A pattern delivers an owned queue only through its owner's path: `/*`
/// matches the spelling `/order-status` recorded before owners (by LeanMQ,
/// or under --allow-colliding-paths), and still gets nothing of the queue.
#[tokio::test]
async fn patterns_match_an_owned_queue_on_its_owners_path_only() {
    let redis = RedisProc::start();
    let l = Leanmqd::start(&redis.url()).await;
    let mut c = l.client().await;
    send(&mut c, OWNER, b"1").await;
    let _: i64 = redis::cmd("SADD")
        .arg("webhook:order_status:paths")
        .arg(OTHER)
        .query(&mut redis.conn())
        .expect("sadd");
    let pattern = |path: &str, group: &str| proto::SubscribeRequest {
        path: path.into(),
        group: group.into(),
        max_in_flight: 10,
        start: Some(proto::StartPosition {
            position: Some(proto::start_position::Position::Beginning(true)),
        }),
        ..Default::default()
    };
    let mut c2 = l.client().await;
    let mut any = c
        .subscribe(pattern("/*", "g1"))
        .await
        .expect("/*")
        .into_inner();
    let mut order = c2
        .subscribe(pattern("/order/*", "g2"))
        .await
        .expect("/order/*")
        .into_inner();
    let d = next(&mut order).await;
    assert_eq!((d.path.as_str(), d.payload.as_ref()), (OWNER, &b"1"[..]));
    // Both patterns matched against the same discovered queues by now.
    send(&mut c2, "/solo", b"x").await;
    let d = next(&mut any).await;
    assert_eq!(d.path, "/solo", "{d:?}");
}
