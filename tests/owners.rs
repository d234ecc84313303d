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
    assert!(msg.contains(&format!("which belongs to \"{OTHER}\"")), "{msg}");
}
