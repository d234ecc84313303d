//! Hostile and broken input at the protocol level: each gets a precise
//! status or a closed connection, never a crash, and nothing is stored.

mod common;

use std::time::Duration;

use common::*;
use leanmq_grpc::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// A SendRequest whose `path` is raw bytes, to put invalid UTF-8 on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSendRequest {
    #[prost(bytes = "vec", tag = "1")]
    path: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_and_undecodable_protobuf_are_refused() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut grpc = tonic::client::Grpc::new(d.channel().await);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/leanmq.v1.Broker/Send");
    let codec = tonic_prost::ProstCodec::<RawSendRequest, proto::SendResponse>::default();
    let req = RawSendRequest {
        path: vec![b'/', 0xff, 0xfe, b'a'],
        payload: b"x".to_vec(),
    };
    let e = grpc
        .unary(tonic::Request::new(req), path.clone(), codec)
        .await
        .expect_err("invalid UTF-8 is refused");
    // gRPC's status-code spec maps "error parsing request proto" to INTERNAL.
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("decode"), "{}", e.message());
    // Truncated protobuf: a length-delimited field claiming more bytes than sent.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Junk {
        #[prost(bytes = "vec", tag = "1")]
        b: Vec<u8>,
    }
    let codec = tonic_prost::ProstCodec::<Junk, proto::SendResponse>::default();
    grpc.ready().await.expect("ready");
    // Field 2 declared as a varint where a length-delimited bytes field is expected.
    let raw = Junk {
        b: vec![0x10, 0x01],
    };
    let _ = grpc.unary(tonic::Request::new(raw), path, codec).await;
    // Nothing stored (but leanmqd's own receipt key, made at start), and
    // the server still serves.
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("webhook:*")
        .query(&mut redis.conn())
        .expect("keys");
    keys.retain(|k| k != "webhook:receipt-key");
    assert!(keys.is_empty(), "{keys:?}");
    let mut c = d.client().await;
    send(&mut c, "/after", b"ok").await;
}

#[tokio::test]
async fn raw_garbage_on_the_socket_closes_that_connection_only() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        vec![0u8; 4096],
        (0..=255u8).cycle().take(10_000).collect(),
    ] {
        let mut s = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        let _ = s.write_all(&garbage).await;
        let mut buf = vec![0u8; 1024];
        // The server answers (GOAWAY/400) or closes; it must not hang forever.
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "connection closed after garbage");
    }
    let mut c = d.client().await;
    send(&mut c, "/still", b"serving").await;
}

#[tokio::test]
async fn thousands_of_streams_opened_and_dropped_leave_nothing_behind() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let c = d.client().await;
    for _round in 0..4 {
        let mut streams = Vec::new();
        for i in 0..500 {
            let mut c = c.clone();
            let path = format!("/churn/{}", i % 5);
            streams.push(tokio::spawn(async move {
                c.subscribe(proto::SubscribeRequest {
                    path,
                    max_in_flight: 1,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
            }));
        }
        for s in streams {
            let s = s.await.expect("join").expect("subscribe");
            drop(s);
        }
    }
    // Messages sent now reach a fresh subscriber: the dropped ones hold no credit
    // and nothing was leased to them.
    let mut c2 = c.clone();
    let id = send(&mut c2, "/churn/0", b"after the churn").await;
    let mut s = subscribe(&mut c2, "/churn/0", "", 10, 30_000).await;
    let m = next(&mut s).await;
    assert_eq!((m.message_id.as_str(), m.attempt), (id.as_str(), 1));
    // Redis saw a bounded number of clients, not one per stream.
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.conn())
        .expect("info");
    let clients: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients");
    assert!(clients < 40, "{clients} Redis clients for 2000 streams");
}

#[tokio::test]
async fn odd_paths_headers_and_durations_get_precise_answers() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    // ".." is only characters: it maps to a queue name and cannot reach another key.
    let id = send(&mut c, "/a/../b", b"x").await;
    assert!(!id.is_empty());
    assert_eq!(xlen(&redis, "webhook:a____b"), 1);
    // 10k headers.
    let mut req = bytes_send("/h", b"x");
    for i in 0..10_000 {
        req.headers.insert(format!("h{i}"), "v".into());
    }
    let e = c.send(req).await.expect_err("too many headers");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("headers"), "{}", e.message());
    // Durations: zero means default, negative and huge are refused.
    for (secs, nanos, ok) in [
        (0, 0, true),
        (-5, 0, false),
        (0, -1, false),
        (i64::MAX, 0, false),
        (1, 2_000_000_000, false),
    ] {
        let r = c
            .receive(proto::ReceiveRequest {
                path: "/dur".into(),
                ack_deadline: Some(prost_types::Duration {
                    seconds: secs,
                    nanos,
                }),
                ..Default::default()
            })
            .await;
        match (r, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => assert_eq!(e.code(), Code::InvalidArgument, "{secs}s {nanos}ns"),
            (r, _) => panic!("{secs}s {nanos}ns: {r:?}"),
        }
    }
    let mut huge = bytes_send("/dur", b"x");
    huge.delay = dur(Duration::from_secs(10 * 365 * 24 * 3600));
    assert_eq!(
        c.send(huge).await.expect_err("delay too long").code(),
        Code::InvalidArgument
    );
    assert_eq!(xlen(&redis, "webhook:dur"), 0);
}
