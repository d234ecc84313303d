//! Several key prefixes on one leanmqd, queues addressed by name, names
//! that would be another queue's keys, and tokens limited to prefixes.
//! Each test runs its own redis-server and an in-process leanmqd.

mod common;

use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn multi(redis: &RedisProc) -> Leanmqd {
    Leanmqd::start_with(&redis.url(), |c| {
        c.prefix = vec!["webhook:".into(), "mq:".into(), "calc:".into()];
    })
    .await
}

fn json_to(prefix: &str, queue: &str, json: &str) -> proto::SendRequest {
    proto::SendRequest {
        queue: queue.into(),
        prefix: prefix.into(),
        payload: bytes::Bytes::copy_from_slice(json.as_bytes()),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

fn receive_from(prefix: &str, path: &str, queue: &str) -> proto::ReceiveRequest {
    proto::ReceiveRequest {
        path: path.into(),
        queue: queue.into(),
        prefix: prefix.into(),
        max_messages: 10,
        wait: dur(WAIT),
        ..Default::default()
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn all_keys(r: &RedisProc) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut r.conn())
        .expect("keys");
    k.sort();
    k
}

fn exists(r: &RedisProc, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query(&mut r.conn())
        .expect("exists");
    n == 1
}

#[tokio::test]
async fn each_request_selects_its_prefix_and_receipts_remember_it() {
    let redis = RedisProc::start();
    let d = multi(&redis).await;
    let mut c = d.client().await;

    // Default prefix (the first) when none is named; `mq:` when named.
    c.send(json_send("/orders", r#"{"n":1}"#))
        .await
        .expect("send default");
    let mut to_mq = json_send("/orders", r#"{"n":2}"#);
    to_mq.prefix = "mq:".into();
    c.send(to_mq).await.expect("send mq");
    assert_eq!(xlen(&redis, "webhook:orders"), 1);
    assert_eq!(xlen(&redis, "mq:orders"), 1);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("mq:registry")
        .query(&mut redis.conn())
        .expect("smembers");
    assert!(members.contains(&"mq:orders".to_string()), "{members:?}");

    // Each prefix's queue delivers its own message; receipts of both settle
    // in one Ack.
    let a = c
        .receive(receive_from("", "/orders", ""))
        .await
        .expect("receive default")
        .into_inner()
        .deliveries;
    let b = c
        .receive(receive_from("mq:", "/orders", ""))
        .await
        .expect("receive mq")
        .into_inner()
        .deliveries;
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].payload.as_ref(), br#"{"n":1}"#);
    assert_eq!(b[0].payload.as_ref(), br#"{"n":2}"#);
    assert_ne!(a[0].receipt, b[0].receipt);
    let outcomes = ack(&mut c, &[&b[0].receipt, &a[0].receipt]).await;
    assert_eq!(
        outcomes,
        vec![
            proto::AckOutcome::Acked as i32,
            proto::AckOutcome::Acked as i32
        ]
    );
    assert_eq!(pending_count(&redis, "webhook:orders", "orders-group"), 0);
    assert_eq!(pending_count(&redis, "mq:orders", "orders-group"), 0);

    // Nack and Extend find the prefix in the receipt too.
    let mut again = json_send("/orders", r#"{"n":3}"#);
    again.prefix = "calc:".into();
    c.send(again).await.expect("send calc");
    let d3 = c
        .receive(receive_from("calc:", "/orders", ""))
        .await
        .expect("receive calc")
        .into_inner()
        .deliveries;
    assert_eq!(d3.len(), 1);
    c.extend(proto::ExtendRequest {
        receipt: d3[0].receipt.clone(),
        extension: ms(60_000),
    })
    .await
    .expect("extend");
    let n = c
        .nack(proto::NackRequest {
            receipt: d3[0].receipt.clone(),
            dead_letter: true,
            reason: "boom".into(),
            ..Default::default()
        })
        .await
        .expect("nack")
        .into_inner();
    assert_eq!(n.outcome, proto::NackOutcome::DeadLettered as i32);
    assert_eq!(xlen(&redis, "calc:orders:dlq"), 1);
    assert_eq!(xlen(&redis, "webhook:orders:dlq"), 0);

    // Subscribe under a prefix, and its receipts settle.
    let mut s = c
        .subscribe(proto::SubscribeRequest {
            path: "/events".into(),
            prefix: "mq:".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut ev = json_send("/events", r#"{"e":1}"#);
    ev.prefix = "mq:".into();
    c.send(ev).await.expect("send event");
    let got = next(&mut s).await;
    assert_eq!(got.payload.as_ref(), br#"{"e":1}"#);
    assert_eq!(
        ack(&mut c, &[&got.receipt]).await,
        vec![proto::AckOutcome::Acked as i32]
    );

    // Admin selects by prefix too.
    let mut admin = AdminClient::new(d.channel().await);
    let listed = admin
        .list_queues(proto::ListQueuesRequest {
            prefix: "calc:".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .queues;
    assert_eq!(
        listed.iter().map(|q| q.queue.as_str()).collect::<Vec<_>>(),
        vec!["orders"]
    );
    assert_eq!(listed[0].dead_letters, 1);
}

#[tokio::test]
async fn an_unserved_prefix_is_failed_precondition_naming_the_served_ones() {
    let redis = RedisProc::start();
    let d = multi(&redis).await;
    let mut c = d.client().await;
    let mut req = json_send("/orders", "{}");
    req.prefix = "events:".into();
    let err = c.send(req).await.expect_err("unserved");
    assert_eq!(err.code(), Code::FailedPrecondition);
    for p in [
        "\"events:\"",
        "\"webhook:\" (the default)",
        "\"mq:\"",
        "\"calc:\"",
    ] {
        assert!(err.message().contains(p), "{}", err.message());
    }
    let err = c
        .receive(receive_from("events:", "/orders", ""))
        .await
        .expect_err("unserved");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut admin = AdminClient::new(d.channel().await);
    let err = admin
        .list_queues(proto::ListQueuesRequest {
            prefix: "events:".into(),
            ..Default::default()
        })
        .await
        .expect_err("unserved");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // A prefix longer than any served one may be is refused as input.
    let mut long = json_send("/orders", "{}");
    long.prefix = "p".repeat(129);
    assert_eq!(code(c.send(long).await), Code::InvalidArgument);
    // A receipt naming an unserved prefix.
    let forged = format!("ZXZlbnRzOg.{}", "x");
    let err = c
        .nack(proto::NackRequest {
            receipt: forged,
            ..Default::default()
        })
        .await
        .expect_err("unserved");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Nothing was written under the unserved prefix.
    assert!(!exists(&redis, "events:orders"));
}

#[tokio::test]
async fn queues_can_be_addressed_by_name_with_colons_and_dashes() {
    let redis = RedisProc::start();
    let d = multi(&redis).await;
    let mut c = d.client().await;
    let mut admin = AdminClient::new(d.channel().await);
    let name = "responses:3f2b9c1e-11ee-4b2a";

    // CreateQueue makes LeanMQ's pair, metadata and groups, sending nothing.
    let created = admin
        .create_queue(proto::CreateQueueRequest {
            queue: name.into(),
            prefix: "calc:".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.stream, format!("calc:{name}"));
    assert_eq!(created.dead_letter_stream, format!("calc:{name}:dlq"));
    assert_eq!(created.group, format!("{name}-group"));
    assert_eq!(xlen(&redis, &format!("calc:{name}")), 0);
    assert!(exists(&redis, &format!("calc:{name}:metadata")));
    assert!(exists(&redis, &format!("calc:{name}:dlq:metadata")));
    assert_eq!(
        pending_count(&redis, &format!("calc:{name}"), &created.group),
        0
    );

    // A send by name is LeanMQ's core envelope: no `_leanmq` webhook path.
    c.send(json_to("calc:", name, r#"{"result":15}"#))
        .await
        .expect("send by name");
    let e = entries(&redis, &format!("calc:{name}"));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].1["result"], 15);
    assert!(e[0].1.get("_leanmq").is_none(), "{}", e[0].1);
    assert!(e[0].1["_metadata"]["id"].is_string());
    let paths: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("calc:{name}:paths"))
        .query(&mut redis.conn())
        .expect("smembers");
    assert!(paths.is_empty(), "{paths:?}");

    let got = c
        .receive(receive_from("calc:", "", name))
        .await
        .expect("receive by name")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.as_ref(), br#"{"result":15}"#);
    assert_eq!(got[0].group, format!("{name}-group"));
    assert_eq!(
        ack(&mut c, &[&got[0].receipt]).await,
        vec![proto::AckOutcome::Acked as i32]
    );

    // Admin by name, and ListQueues shows the name.
    let info = admin
        .get_queue(proto::GetQueueRequest {
            queue: name.into(),
            prefix: "calc:".into(),
            ..Default::default()
        })
        .await
        .expect("get by name")
        .into_inner();
    assert_eq!(info.queue, name);
    assert_eq!(info.length, 1);
    let listed = admin
        .list_queues(proto::ListQueuesRequest {
            prefix: "calc:".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .queues;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].queue, name);

    // Exactly one of path and queue.
    let mut both = json_to("calc:", name, "{}");
    both.path = "/x".into();
    assert_eq!(code(c.send(both).await), Code::InvalidArgument);
    let neither = json_to("calc:", "", "{}");
    assert_eq!(code(c.send(neither).await), Code::InvalidArgument);
    assert_eq!(
        code(c.receive(receive_from("calc:", "/x", name)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            admin
                .create_queue(proto::CreateQueueRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn names_that_are_another_queues_keys_are_refused() {
    let redis = RedisProc::start();
    let d = multi(&redis).await;
    let mut c = d.client().await;
    let mut admin = AdminClient::<Channel>::new(d.channel().await);
    c.send(json_to("mq:", "tasks", "{}"))
        .await
        .expect("send tasks");
    let before = all_keys(&redis);
    for bad in [
        "tasks:dlq",
        "tasks:metadata",
        "tasks:expiry",
        "tasks:dlq:metadata",
        "tasks:delayed",
        "tasks:delayed:data",
        "tasks:paths",
        "tasks:stats",
        "tasks:leases:tasks-group",
        "tasks:dedup:k1",
        "registry",
        "schedule",
        "a b",
        "{tasks}",
    ] {
        let send = c.send(json_to("mq:", bad, "{}")).await;
        let err = send.expect_err(bad);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{bad}: {}",
            err.message()
        );
        assert!(err.message().contains("queue name"), "{}", err.message());
        assert_eq!(
            code(c.receive(receive_from("mq:", "", bad)).await),
            Code::InvalidArgument,
            "{bad}"
        );
        assert_eq!(
            code(
                c.subscribe(proto::SubscribeRequest {
                    queue: bad.into(),
                    prefix: "mq:".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::InvalidArgument,
            "{bad}"
        );
        assert_eq!(
            code(
                admin
                    .create_queue(proto::CreateQueueRequest {
                        queue: bad.into(),
                        prefix: "mq:".into(),
                        ..Default::default()
                    })
                    .await
            ),
            Code::InvalidArgument,
            "{bad}"
        );
        assert_eq!(
            code(
                admin
                    .purge_queue(proto::PurgeQueueRequest {
                        queue: bad.into(),
                        prefix: "mq:".into(),
                        confirm: bad.into(),
                        ..Default::default()
                    })
                    .await
            ),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    let too_long = "q".repeat(1025);
    assert_eq!(
        code(c.send(json_to("mq:", &too_long, "{}")).await),
        Code::InvalidArgument
    );
    // Nothing was created or changed by the refused requests.
    assert_eq!(all_keys(&redis), before);
    // A name that merely contains ":dlq" in the middle is its own queue.
    c.send(json_to("mq:", "tasks:dlq:archive", "{}"))
        .await
        .expect("allowed");
    assert_eq!(xlen(&redis, "mq:tasks:dlq:archive"), 1);
}

#[tokio::test]
async fn tokens_can_be_limited_to_prefixes() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tokens.toml");
    let h = leanmq_grpc::auth::hash_token;
    std::fs::write(
        &file,
        format!(
            r#"[[tokens]]
name = "calc-only"
hash = "{}"
send = [">"]
subscribe = [">"]
admin = [">"]
prefixes = ["calc:"]

[[tokens]]
name = "everywhere"
hash = "{}"
send = [">"]
subscribe = [">"]
"#,
            h("calc-secret"),
            h("all-secret")
        ),
    )
    .expect("write tokens");
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.prefix = vec!["webhook:".into(), "calc:".into()];
        c.auth_tokens = Some(file);
    })
    .await;
    let mut c = d.client().await;
    let authed = |msg: proto::SendRequest, token: &str| {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        r
    };
    // The limited token: calc: yes, the default prefix and webhook: no.
    assert_eq!(
        code(
            c.send(authed(json_to("calc:", "requests", "{}"), "calc-secret"))
                .await
        ),
        Code::Ok
    );
    for p in ["", "webhook:"] {
        let err = c
            .send(authed(json_to(p, "requests", "{}"), "calc-secret"))
            .await
            .expect_err("denied");
        assert_eq!(err.code(), Code::PermissionDenied, "{p:?}");
        assert!(err.message().contains("\"calc:\""), "{}", err.message());
    }
    // The unlimited token uses both; its default-prefix receipts cannot be
    // settled with the limited token.
    assert_eq!(
        code(
            c.send(authed(json_to("", "requests", "{}"), "all-secret"))
                .await
        ),
        Code::Ok
    );
    let mut rr = Request::new(receive_from("", "", "requests"));
    rr.metadata_mut()
        .insert("authorization", "Bearer all-secret".parse().expect("ascii"));
    let got = c
        .receive(rr)
        .await
        .expect("receive")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 1);
    let mut ack_req = Request::new(proto::AckRequest {
        receipts: vec![got[0].receipt.clone()],
    });
    ack_req.metadata_mut().insert(
        "authorization",
        "Bearer calc-secret".parse().expect("ascii"),
    );
    assert_eq!(code(c.ack(ack_req).await), Code::PermissionDenied);
    // Admin is limited the same way.
    let mut admin = AdminClient::new(d.channel().await);
    let mut lq = Request::new(proto::ListQueuesRequest::default());
    lq.metadata_mut().insert(
        "authorization",
        "Bearer calc-secret".parse().expect("ascii"),
    );
    assert_eq!(code(admin.list_queues(lq).await), Code::PermissionDenied);
    let mut lq = Request::new(proto::ListQueuesRequest {
        prefix: "calc:".into(),
        ..Default::default()
    });
    lq.metadata_mut().insert(
        "authorization",
        "Bearer calc-secret".parse().expect("ascii"),
    );
    assert_eq!(code(admin.list_queues(lq).await), Code::Ok);
}

#[test]
fn bad_prefix_lists_and_token_prefixes_are_refused_at_startup() {
    use leanmq_grpc::config::Config;
    let mut cfg = Config::for_redis("redis://127.0.0.1:1");
    for bad in [
        vec!["mq:".to_string(), "mq:".to_string()],
        vec!["mq:".to_string(), String::new()],
        vec!["a b".to_string()],
        vec!["p".repeat(129)],
        vec![],
    ] {
        cfg.prefix = bad.clone();
        assert!(cfg.validate().is_err(), "{bad:?}");
    }
    cfg.prefix = vec!["webhook:".into(), "mq:".into()];
    assert!(cfg.validate().is_ok());
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tokens.toml");
    for prefixes in ["[]", "[\"mq:\", \"mq:\"]"] {
        std::fs::write(
            &file,
            format!(
                "[[tokens]]\nname = \"a\"\nhash = \"{}\"\nprefixes = {prefixes}\n",
                leanmq_grpc::auth::hash_token("x")
            ),
        )
        .expect("write");
        assert!(
            leanmq_grpc::auth::Auth::from_file(&file).is_err(),
            "{prefixes}"
        );
    }
}
