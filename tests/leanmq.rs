//! Interop with the real LeanMQ 0.2.0 from PyPI, in both directions, on
//! one redis-server. The Python side is `tests/interop/leanmq_peer.py`,
//! run with the venv that `make setup` creates (`.venv`, or $LEANMQ_PYTHON).

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn python() -> String {
    if let Ok(p) = std::env::var("LEANMQ_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "no Python with leanmq==0.2.0: run `make setup` (creates .venv) or set LEANMQ_PYTHON"
    );
    venv.to_string()
}

fn peer(redis: &RedisProc, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/leanmq_peer.py"
    ))
    .arg(redis.port.to_string())
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    cmd
}

/// Run the peer to completion; its stdout as JSON lines.
async fn run_peer(redis: &RedisProc, args: &[&str]) -> Vec<Value> {
    let out = tokio::time::timeout(Duration::from_secs(60), peer(redis, args).output())
        .await
        .expect("peer finishes")
        .expect("peer runs");
    assert!(
        out.status.success(),
        "peer {args:?} failed: {:?}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("peer prints JSON"))
        .collect()
}

#[tokio::test]
async fn a_leanmq_send_reaches_a_grpc_subscriber_with_the_same_dict() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let sent = json!({"order_id": "ORD-12345", "status": "shipped", "updated_at": 1732800000.25, "items": [1, 2]});
    let id = run_peer(&redis, &["send", "/order/status/", &sent.to_string()]).await;
    // Subscribing after the send still gets it: LeanMQ made the group first.
    let mut s = subscribe(&mut c, "/order/status/", "", 10, 30_000).await;
    let m = next(&mut s).await;
    assert_eq!(Value::String(m.message_id.clone()), id[0]);
    assert_eq!(m.content_type, "application/json");
    assert_eq!(m.path, "/order/status");
    let got: Value = serde_json::from_slice(&m.payload).expect("JSON payload");
    assert_eq!(got, sent);
    assert!(m.headers.get("leanmq-id").is_some_and(|v| v.len() == 36));
    assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![1]);
    assert_eq!(
        pending_count(&redis, "webhook:order_status", "order_status-group"),
        0
    );
}

#[tokio::test]
async fn a_grpc_send_reaches_a_leanmq_handler_with_the_same_dict() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let sent = json!({"product_id": "PROD-789", "name": "Wireless Headphones", "quantity": 5});
    c.send(json_send("/product/inventory/", &sent.to_string()))
        .await
        .expect("send");
    let handled = run_peer(&redis, &["handle", "/product/inventory/", "1"]).await;
    assert_eq!(handled.len(), 1);
    let mut dict = handled[0].clone();
    // LeanMQ handlers see `_leanmq` (LeanMQ's own sends carry it too).
    let meta = dict
        .as_object_mut()
        .and_then(|o| o.remove("_leanmq"))
        .expect("_leanmq");
    assert_eq!(meta["webhook"]["path"], "/product/inventory");
    assert_eq!(dict, sent);
    assert_eq!(
        pending_count(
            &redis,
            "webhook:product_inventory",
            "product_inventory-group"
        ),
        0
    );
}

#[tokio::test]
async fn dead_letters_are_shared_both_ways() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // LeanMQ dead-letters a message; its DLQ entry is a LeanMQ envelope we decode.
    c.send(json_send("/both", r#"{"n":1}"#))
        .await
        .expect("send");
    run_peer(&redis, &["handle", "/both", "1", "fail"]).await;
    let dlq = entries(&redis, "webhook:both:dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].1["n"], 1);
    assert!(dlq[0].1["_failures"][0]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("python handler says no")));
    // A gRPC dead letter is readable by LeanMQ's get_dead_letter_queue.
    c.send(json_send("/both", r#"{"n":2}"#))
        .await
        .expect("send");
    let m = receive(&mut c, "/both", "", 1, 30_000).await.remove(0);
    c.nack(leanmq_grpc::proto::NackRequest {
        receipt: m.receipt,
        dead_letter: true,
        reason: "grpc says no".into(),
        delay: None,
    })
    .await
    .expect("nack");
    let seen = run_peer(&redis, &["dlq", "/both"]).await;
    let datas: Vec<&Value> = seen.iter().map(|v| &v["data"]).collect();
    let grpc_one = datas
        .iter()
        .find(|d| d["n"] == 2)
        .expect("LeanMQ reads the gRPC dead letter");
    assert_eq!(grpc_one["_failures"][0]["reason"], "grpc says no");
}

#[tokio::test]
async fn leanmq_and_grpc_consumers_share_one_group_without_loss_or_duplicates() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut py = peer(&redis, &["share", "/shared"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("peer");
    let mut py_lines = BufReader::new(py.stdout.take().expect("stdout")).lines();
    let mut s = subscribe(&mut c, "/shared", "", 5, 30_000).await;
    for i in 0..40 {
        c.send(json_send("/shared", &format!(r#"{{"i":{i}}}"#)))
            .await
            .expect("send");
    }
    let mut seen: HashSet<i64> = HashSet::new();
    let (mut by_py, mut by_grpc) = (0, 0);
    while seen.len() < 40 {
        tokio::select! {
            line = py_lines.next_line() => {
                let line = line.expect("read").expect("peer alive");
                let v: Value = serde_json::from_str(&line).expect("json");
                assert!(seen.insert(v["i"].as_i64().expect("i")), "duplicate {line}");
                by_py += 1;
            }
            m = s.message() => {
                let m = m.expect("ok").expect("open");
                let v: Value = serde_json::from_slice(&m.payload).expect("json");
                assert!(seen.insert(v["i"].as_i64().expect("i")), "duplicate {v}");
                ack(&mut c, &[&m.receipt]).await;
                by_grpc += 1;
            }
            _ = tokio::time::sleep(WAIT) => panic!("stalled at {}", seen.len()),
        }
    }
    drop(py.stdin.take());
    let _ = tokio::time::timeout(WAIT, py.wait()).await;
    assert_eq!(seen.len(), 40);
    assert!(by_grpc > 0, "gRPC consumer took part ({by_py} by LeanMQ)");
    assert_eq!(pending_count(&redis, "webhook:shared", "shared-group"), 0);
}

#[tokio::test]
async fn a_message_held_by_a_crashed_leanmq_worker_is_reclaimed() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| c.orphan_timeout = Duration::from_secs(1)).await;
    let mut c = d.client().await;
    let id = c
        .send(json_send("/orphan", r#"{"x":1}"#))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let held = run_peer(&redis, &["hold", "/orphan"]).await;
    assert_eq!(held[0], json!([id]));
    assert_eq!(pending_count(&redis, "webhook:orphan", "orphan-group"), 1);
    let mut s = subscribe(&mut c, "/orphan", "", 10, 30_000).await;
    let m = next(&mut s).await;
    assert_eq!(m.message_id, id);
    assert_eq!(m.attempt, 2, "LeanMQ's read counts as the first delivery");
    assert_eq!(ack(&mut c, &[&m.receipt]).await, vec![1]);
    assert_eq!(pending_count(&redis, "webhook:orphan", "orphan-group"), 0);
}

/// The layout of `../shared/leanmq-wire-format.md`, written by hand with
/// plain Redis commands: leanmqd must read it, and add to it, as LeanMQ does.
#[tokio::test]
async fn the_wire_format_written_by_hand_is_read_and_extended() {
    let redis = RedisProc::start();
    let mut r = redis.conn();
    let q = "Order_Status";
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("webhook:{q}"))
        .arg(format!("{q}-group"))
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut r)
        .expect("group");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("webhook:{q}:dlq"))
        .arg(format!("{q}-group-dlq"))
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut r)
        .expect("dlq group");
    let _: () = redis::cmd("HSET")
        .arg(format!("webhook:{q}:metadata"))
        .arg("created_at")
        .arg("1.5")
        .arg("dlq")
        .arg(format!("webhook:{q}:dlq"))
        .arg("consumer_group")
        .arg(format!("{q}-group"))
        .query(&mut r)
        .expect("meta");
    let _: () = redis::cmd("SADD")
        .arg("webhook:registry")
        .arg(format!("webhook:{q}"))
        .arg(format!("webhook:{q}:dlq"))
        .query(&mut r)
        .expect("registry");
    let data = json!({
        "order_id": "ORD-7",
        "_metadata": {"id": "0b3a2c1e-0000-4000-8000-000000000000", "timestamp": 1732800000.5, "ttl": null},
        "_leanmq": {"webhook": {"path": "/Order.Status", "timestamp": 1732800000.5}},
        "_failures": [{"timestamp": 1732800001.0, "reason": "Processing error: boom"}],
        "_requeues": [{"timestamp": 1732800002.0, "from_dlq": "webhook:Order_Status:dlq", "to_queue": "webhook:Order_Status"}]
    });
    let id: String = redis::cmd("XADD")
        .arg(format!("webhook:{q}"))
        .arg("*")
        .arg("data")
        .arg(data.to_string())
        .query(&mut r)
        .expect("xadd");

    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // "/Order.Status" maps to the same queue; the empty group is LeanMQ's.
    let m = receive(&mut c, "/Order.Status", "", 1, 30_000)
        .await
        .remove(0);
    assert_eq!(m.message_id, id);
    assert_eq!(m.path, "/Order.Status");
    assert_eq!(m.group, "Order_Status-group");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).expect("json"),
        json!({"order_id": "ORD-7"})
    );
    assert_eq!(
        m.headers.get("leanmq-id").map(String::as_str),
        Some("0b3a2c1e-0000-4000-8000-000000000000")
    );
    let failures: Value =
        serde_json::from_str(m.headers.get("leanmq-failures").expect("failures")).expect("json");
    assert_eq!(failures[0]["reason"], "Processing error: boom");
    assert!(m.headers.contains_key("leanmq-requeues"));
    assert_eq!(m.published_at.expect("published_at").seconds, 1732800000);
    // Dead-lettering it appends to LeanMQ's `_failures` list and keeps `_metadata.id`.
    c.nack(leanmq_grpc::proto::NackRequest {
        receipt: m.receipt,
        dead_letter: true,
        reason: "second".into(),
        delay: None,
    })
    .await
    .expect("nack");
    let dlq = entries(&redis, &format!("webhook:{q}:dlq"));
    let f = dlq[0].1["_failures"].as_array().expect("list");
    assert_eq!(f.len(), 2);
    assert_eq!(f[1]["reason"], "second");
    assert_eq!(
        dlq[0].1["_metadata"]["id"],
        "0b3a2c1e-0000-4000-8000-000000000000"
    );
    assert_eq!(dlq[0].1["_requeues"], data["_requeues"]);
    // A Send writes exactly one field, `data`.
    send(&mut c, "/Order.Status", b"x").await;
    let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("webhook:{q}"))
        .arg("-")
        .arg("+")
        .query(&mut r)
        .expect("xrange");
    let last = &raw.last().expect("entry").1;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].0, "data");
}

/// What LeanMQ dead-lettered is listable and requeueable through the Admin
/// service, and the requeued copy is delivered again with attempts reset.
#[tokio::test]
async fn admin_lists_and_requeues_a_leanmq_dead_letter() {
    use leanmq_grpc::proto;
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut a = proto::admin_client::AdminClient::new(d.channel().await);
    run_peer(
        &redis,
        &["send", "/legacy/orders", r#"{"order_id": "ORD-77"}"#],
    )
    .await;
    run_peer(&redis, &["handle", "/legacy/orders", "1", "fail"]).await;
    let list = a
        .list_dead_letters(proto::ListDeadLettersRequest {
            path: "/legacy/orders".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.dead_letters.len(), 1);
    let dl = &list.dead_letters[0];
    assert_eq!(
        serde_json::from_slice::<Value>(&dl.payload).expect("json"),
        json!({"order_id": "ORD-77"})
    );
    assert!(
        dl.last_reason.contains("python handler says no"),
        "{}",
        dl.last_reason
    );
    assert_eq!(dl.path, "/legacy/orders");
    let queues = a
        .list_queues(proto::ListQueuesRequest::default())
        .await
        .expect("queues")
        .into_inner();
    assert!(queues
        .queues
        .iter()
        .any(|q| q.queue == "legacy_orders" && q.dead_letters == 1));
    let r = a
        .requeue_dead_letters(proto::RequeueDeadLettersRequest {
            path: "/legacy/orders".into(),
            selector: Some(proto::requeue_dead_letters_request::Selector::All(true)),
            ..Default::default()
        })
        .await
        .expect("requeue")
        .into_inner();
    assert_eq!(r.requeued.len(), 1);
    assert_eq!(xlen(&redis, "webhook:legacy_orders:dlq"), 0);
    // The copy is back in the queue and reaches LeanMQ's own handler again.
    let again = run_peer(&redis, &["handle", "/legacy/orders", "1"]).await;
    assert_eq!(again[0]["order_id"], "ORD-77");
    let m = entries(&redis, "webhook:legacy_orders");
    let copy = &m
        .iter()
        .find(|(id, _)| *id == r.requeued[0].message_id)
        .expect("copy")
        .1;
    assert_eq!(copy["_requeues"][0]["to_queue"], "webhook:legacy_orders");
    assert_eq!(
        pending_count(&redis, "webhook:legacy_orders", "legacy_orders-group"),
        0
    );
}
