//! What one tenant cannot do to another's deliveries: receipts are signed
//! (none can be forged, altered, or turned on another group), every replica
//! shares the key, keys rotate without breaking receipts in flight, grants
//! match paths exactly as documented, and the smaller rules that go with
//! them (a receipt repeated in one Ack, wildcards in Send paths).

mod common;

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use leanmq_grpc::broker::receipt::TAG_BYTES;
use leanmq_grpc::proto;
use tonic::{Code, Request};

const ACKED: i32 = proto::AckOutcome::Acked as i32;

fn status<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Code> {
    r.map(tonic::Response::into_inner).map_err(|s| s.code())
}

/// The three ways to settle, each with `receipt`; their status codes.
async fn settle_codes(c: &mut Client, receipt: &str) -> [Code; 3] {
    let code = |r: Result<(), Code>| r.err().unwrap_or(Code::Ok);
    let ack = status(
        c.ack(proto::AckRequest {
            receipts: vec![receipt.to_string()],
        })
        .await,
    )
    .map(drop);
    let extend = status(
        c.extend(proto::ExtendRequest {
            receipt: receipt.to_string(),
            extension: ms(60_000),
        })
        .await,
    )
    .map(drop);
    let nack = status(
        c.nack(proto::NackRequest {
            receipt: receipt.to_string(),
            dead_letter: true,
            reason: "forged".into(),
            ..Default::default()
        })
        .await,
    )
    .map(drop);
    [code(ack), code(extend), code(nack)]
}

#[tokio::test]
async fn forged_or_tampered_receipts_are_refused_and_change_nothing() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // Both groups exist before the send (a new group starts at the end).
    for group in ["victim", "attacker"] {
        c.receive(proto::ReceiveRequest {
            path: "/q".into(),
            group: group.into(),
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("creates the group");
    }
    let id = send(&mut c, "/q", b"x").await;
    let victim = receive(&mut c, "/q", "victim", 1, 60_000).await.remove(0);
    let mine = receive(&mut c, "/q", "attacker", 1, 60_000).await.remove(0);
    // Written by hand for the victim's group: unsigned, the old layout
    // (which once dead-lettered the victim's delivery), and the new layout
    // with a made-up tag.
    let unsigned = URL_SAFE_NO_PAD.encode(format!("1\nq\nvictim\n{id}\n1"));
    let mut made_up = format!("2\nq\nvictim\n{id}\n1").into_bytes();
    made_up.extend_from_slice(&[7u8; TAG_BYTES]);
    // The attacker's genuine receipt with its group changed, tag kept.
    let raw = URL_SAFE_NO_PAD.decode(&mine.receipt).expect("base64url");
    let (body, tag) = raw.split_at(raw.len() - TAG_BYTES);
    let mut tampered = String::from_utf8(body.to_vec())
        .expect("text")
        .replace("attacker", "victim")
        .into_bytes();
    tampered.extend_from_slice(tag);
    for forged in [
        unsigned,
        URL_SAFE_NO_PAD.encode(made_up),
        URL_SAFE_NO_PAD.encode(tampered),
    ] {
        assert_eq!(
            settle_codes(&mut c, &forged).await,
            [Code::InvalidArgument; 3],
            "{forged}"
        );
    }
    // The victim's delivery is untouched: still pending, never
    // dead-lettered, and settled by its own receipt.
    assert_eq!(pending_count(&redis, "webhook:q", "victim"), 1);
    assert_eq!(xlen(&redis, "webhook:q:dlq"), 0);
    assert_eq!(ack(&mut c, &[&victim.receipt]).await, vec![ACKED]);
    assert_eq!(ack(&mut c, &[&mine.receipt]).await, vec![ACKED]);
}

#[tokio::test]
async fn replicas_sharing_the_key_from_redis_settle_each_others_receipts() {
    let redis = RedisProc::start();
    let one = Leanmqd::start(&redis.url()).await;
    let two = Leanmqd::start(&redis.url()).await;
    let (mut c1, mut c2) = (one.client().await, two.client().await);
    for i in 0..2 {
        send(&mut c1, "/shared", format!("{i}").as_bytes()).await;
    }
    let from_one = receive(&mut c1, "/shared", "", 1, 60_000).await.remove(0);
    let from_two = receive(&mut c2, "/shared", "", 1, 60_000).await.remove(0);
    assert_eq!(ack(&mut c2, &[&from_one.receipt]).await, vec![ACKED]);
    c1.extend(proto::ExtendRequest {
        receipt: from_two.receipt.clone(),
        extension: ms(60_000),
    })
    .await
    .expect("replica one extends replica two's delivery");
    assert_eq!(ack(&mut c1, &[&from_two.receipt]).await, vec![ACKED]);
    // The key the first of them made: 256 random bits, in hex.
    let key = shared_key(&redis).expect("the shared key");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
}

fn shared_key(redis: &RedisProc) -> Option<String> {
    redis::cmd("GET")
        .arg("webhook:receipt-key")
        .query(&mut redis.conn())
        .expect("GET")
}

#[tokio::test]
async fn a_lost_shared_key_is_put_back_for_replicas_started_later() {
    let redis = RedisProc::start();
    let one = Leanmqd::start(&redis.url()).await;
    let mut c1 = one.client().await;
    // Made at start, before any receipt is asked for.
    let key = eventually("the key made at start", || async { shared_key(&redis) }).await;
    send(&mut c1, "/lost", b"x").await;
    let got = receive(&mut c1, "/lost", "", 1, 60_000).await.remove(0);
    // Redis loses it (as a restart without persistence would).
    let _: i64 = redis::cmd("DEL")
        .arg("webhook:receipt-key")
        .query(&mut redis.conn())
        .expect("DEL");
    let back = eventually("the key put back", || async { shared_key(&redis) }).await;
    assert_eq!(back, key);
    // A replica started now signs and checks with the same key.
    let two = Leanmqd::start(&redis.url()).await;
    let mut c2 = two.client().await;
    assert_eq!(ack(&mut c2, &[&got.receipt]).await, vec![ACKED]);
}

#[tokio::test]
async fn rotating_the_key_keeps_receipts_in_flight() {
    let redis = RedisProc::start();
    let (old, new) = ("0123456789abcdef".repeat(4), "fedcba9876543210".repeat(4));
    let keys = |list: &[&String]| {
        let list: Vec<String> = list.iter().map(|k| k.to_string()).collect();
        move |c: &mut leanmq_grpc::config::Config| c.receipt_key = list
    };
    let before = Leanmqd::start_with(&redis.url(), keys(&[&old])).await;
    let during = Leanmqd::start_with(&redis.url(), keys(&[&new, &old])).await;
    let after = Leanmqd::start_with(&redis.url(), keys(&[&new])).await;
    let (mut b, mut d, mut a) = (
        before.client().await,
        during.client().await,
        after.client().await,
    );
    for i in 0..2 {
        send(&mut b, "/rot", format!("{i}").as_bytes()).await;
    }
    // Signed with the old key, settled where the new one signs.
    let old_signed = receive(&mut b, "/rot", "", 1, 60_000).await.remove(0);
    assert_eq!(ack(&mut d, &[&old_signed.receipt]).await, vec![ACKED]);
    // Signed with the new key: a replica that lacks it refuses it (why the
    // new key is added everywhere before any replica signs with it).
    let new_signed = receive(&mut d, "/rot", "", 1, 60_000).await.remove(0);
    let refused = b
        .ack(proto::AckRequest {
            receipts: vec![new_signed.receipt.clone()],
        })
        .await
        .expect_err("the old key alone does not verify it");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("signature"),
        "{}",
        refused.message()
    );
    assert_eq!(ack(&mut a, &[&new_signed.receipt]).await, vec![ACKED]);
}

/// GET /metrics; the body once the listener answers.
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[tokio::test]
async fn a_receipt_repeated_in_one_ack_is_settled_and_counted_once() {
    let port = free_port();
    leanmq_grpc::observe::install(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("metrics recorder");
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/dup", b"once").await;
    let got = receive(&mut c, "/dup", "", 1, 60_000).await.remove(0);
    let r = got.receipt.as_str();
    // Every copy reports the one outcome.
    assert_eq!(ack(&mut c, &[r, r, r]).await, vec![ACKED; 3]);
    let line = "leanmq_acks_total{queue=\"dup\",group=\"dup-group\"}";
    let counted = eventually("the ack counter", || async {
        let body = scrape(port).await?;
        body.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    })
    .await;
    assert_eq!(counted, 1.0);
    assert_eq!(pending_count(&redis, "webhook:dup", "dup-group"), 0);
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

fn tokens(dir: &Path) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    let f = dir.join("tokens.toml");
    std::fs::write(
        &f,
        format!(
            "[[tokens]]\nname = \"wide\"\nhash = \"{}\"\nsend = [\"/t/>\"]\nsubscribe = [\"/t/>\"]\n\n\
             [[tokens]]\nname = \"narrow\"\nhash = \"{}\"\nsubscribe = [\"/t/*\"]\n",
            h("wide-secret"),
            h("narrow-secret"),
        ),
    )
    .expect("write tokens");
    f
}

#[tokio::test]
async fn a_star_grant_reaches_exactly_one_segment() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens(dir.path());
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let mut c = d.client().await;
    let send_as = |path: &str| authed(bytes_send(path, b"secret"), "wide-secret");
    c.send(send_as("/t/x/secret"))
        .await
        .expect("wide sends deep");
    c.send(send_as("/t/x")).await.expect("wide sends shallow");
    let recv = |path: &str| proto::ReceiveRequest {
        path: path.into(),
        max_messages: 1,
        wait: ms(2_000),
        ..Default::default()
    };
    for deep in ["/t/x/secret", "/t/x/y/z"] {
        let e = c
            .receive(authed(recv(deep), "narrow-secret"))
            .await
            .expect_err("`*` is one segment");
        assert_eq!(e.code(), Code::PermissionDenied, "{deep}: {}", e.message());
        let e = c
            .subscribe(authed(
                proto::SubscribeRequest {
                    path: deep.into(),
                    max_in_flight: 1,
                    ..Default::default()
                },
                "narrow-secret",
            ))
            .await
            .expect_err("`*` is one segment");
        assert_eq!(e.code(), Code::PermissionDenied, "{deep}");
    }
    let got = c
        .receive(authed(recv("/t/x"), "narrow-secret"))
        .await
        .expect("one segment is granted")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 1);
    let settled = c
        .ack(authed(
            proto::AckRequest {
                receipts: vec![got[0].receipt.clone()],
            },
            "narrow-secret",
        ))
        .await
        .expect("settles its own delivery");
    assert_eq!(settled.into_inner().results[0].outcome, ACKED);
}

#[tokio::test]
async fn a_path_with_a_wildcard_is_refused_by_send_as_by_receive() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    for path in ["/a/*", "/a/>", "/a*b", "/x>y/z"] {
        let e = c
            .send(bytes_send(path, b"1"))
            .await
            .expect_err("a wildcard in a Send path");
        assert_eq!(e.code(), Code::InvalidArgument, "{path}");
        assert!(e.message().contains("wildcard"), "{path}: {}", e.message());
        let e = c
            .send_batch(proto::SendBatchRequest {
                messages: vec![bytes_send("/fine", b"1"), bytes_send(path, b"2")],
            })
            .await
            .expect_err("one wildcard path refuses the batch");
        assert_eq!(e.code(), Code::InvalidArgument, "{path}");
        let e = c
            .receive(proto::ReceiveRequest {
                path: path.into(),
                ..Default::default()
            })
            .await
            .expect_err("nor can Receive name it");
        assert_eq!(e.code(), Code::InvalidArgument, "{path}");
    }
    // Nothing of the refused batches was stored.
    assert_eq!(xlen(&redis, "webhook:fine"), 0);
    assert_eq!(xlen(&redis, "webhook:a__"), 0);
}
