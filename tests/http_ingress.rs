//! The HTTP JSON ingress (`--http-listen`, docs/http.md) and gRPC-Web,
//! against an in-process leanmqd and a real redis-server per test, with
//! reqwest as the client: stored messages are read back over gRPC.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use leanmq_grpc::proto;
use prost::Message as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// leanmqd with the ingress on a free port; its base URL.
async fn start(
    redis: &RedisProc,
    tweak: impl FnOnce(&mut leanmq_grpc::config::Config),
) -> (Leanmqd, String) {
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.http_listen = Some("127.0.0.1:0".parse().expect("addr"));
        tweak(c);
    })
    .await;
    let at = d
        .running
        .as_ref()
        .and_then(|r| r.http_addr)
        .expect("the ingress is listening");
    (d, format!("http://{at}"))
}

fn tokens(dir: &Path) -> PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    let file = dir.join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"producer\"\nhash = \"{}\"\nsend = [\"/order/>\"]\n\n\
             [[tokens]]\nname = \"reader\"\nhash = \"{}\"\nsubscribe = [\">\"]\n\n\
             [[tokens]]\nname = \"metered\"\nhash = \"{}\"\nsend = [\">\"]\nrate = 0.01\nburst = 1\n",
            h("producer-secret"),
            h("reader-secret"),
            h("metered-secret"),
        ),
    )
    .expect("write tokens");
    file
}

/// POST `body` with `Transfer-Encoding: chunked` over a plain socket; the
/// status of the answer.
async fn chunked_status(base: &str, path: &str, auth: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: {auth}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn json_of(b: bytes::Bytes) -> Value {
    serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)))
}

/// A problem answer's status, checked against its body and media type.
async fn problem(r: reqwest::Response) -> (StatusCode, Value, Option<String>) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = json_of(r.bytes().await.expect("body"));
    assert_eq!(ct.as_deref(), Some("application/problem+json"), "{body}");
    assert_eq!(body["status"], json!(status.as_u16()), "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:leanmq:problem:")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    (status, body, retry)
}

#[tokio::test]
async fn a_send_is_stored_with_its_headers_key_and_order() {
    let redis = RedisProc::start();
    let (d, base) = start(&redis, |_| {}).await;
    let http = reqwest::Client::new();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let post = || {
        http.post(format!("{base}/v1/send/order/status/?ordering_key=order-1"))
            .header("content-type", "application/json")
            .header("idempotency-key", "k-1")
            .header("traceparent", tp)
            .header("x-leanmq-header-tenant", "acme")
            .body(r#"{"order_id":1}"#)
            .send()
    };
    let r = post().await.expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: Value = r.bytes().await.map(json_of).expect("json");
    assert_eq!(first["duplicate"], json!(false));
    let id = first["message_id"].as_str().expect("an id").to_string();
    assert!(!id.is_empty());

    let again: Value = post()
        .await
        .expect("post")
        .bytes()
        .await
        .map(json_of)
        .expect("json");
    assert_eq!(again, json!({"message_id": id, "duplicate": true}));

    let mut c = d.client().await;
    let got = receive(&mut c, "/order/status", "", 10, 30_000).await;
    assert_eq!(got.len(), 1, "stored once");
    let m = &got[0];
    assert_eq!(m.message_id, id);
    assert_eq!(m.path, "/order/status");
    assert_eq!(&m.payload[..], br#"{"order_id":1}"#);
    assert_eq!(m.content_type, "application/json");
    assert_eq!(m.ordering_key, "order-1");
    assert_eq!(m.headers.get("tenant").map(String::as_str), Some("acme"));
    assert_eq!(m.headers.get("traceparent").map(String::as_str), Some(tp));
}

#[tokio::test]
async fn every_refusal_is_a_problem_with_its_status() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens(dir.path());
    let (_d, base) = start(&redis, |c| {
        c.auth_tokens = Some(file);
        c.max_payload_bytes = 1024;
        c.max_batch = 3;
    })
    .await;
    let http = reqwest::Client::new();
    let send = |path: &str| {
        http.post(format!("{base}/v1/send{path}"))
            .header("content-type", "application/json")
            .body("{}")
    };
    let tok = "Bearer producer-secret";

    let (s, ..) = problem(send("/order/a").send().await.expect("post")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no token");
    let (s, ..) = problem(
        send("/order/a")
            .header("authorization", "Bearer nope")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "an unknown token");
    let (s, b, _) = problem(
        send("/billing/a")
            .header("authorization", tok)
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "outside the grant: {b}");
    let (s, ..) = problem(
        http.post(format!("{base}/v2/nothing"))
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, ..) = problem(
        http.get(format!("{base}/v1/send/order/a"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Too large, declared or not.
    let big = "x".repeat(1025);
    let (s, ..) = problem(
        send("/order/a")
            .header("authorization", tok)
            .body(big.clone())
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, so no Content-Length tells the size up front.
    let status = chunked_status(&base, "/v1/send/order/a", tok, &big).await;
    assert_eq!(status, 413, "chunked");

    let (s, ..) = problem(
        http.post(format!("{base}/v1/send/order/a"))
            .header("authorization", tok)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("a=1")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "a form");
    let (s, ..) = problem(
        http.post(format!("{base}/v1/send-batch"))
            .header("authorization", tok)
            .header("content-type", "text/plain")
            .body("[]")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "a batch that is not JSON"
    );

    let long_key = format!("?ordering_key={}", "k".repeat(257));
    for (q, says) in [
        ("?dealy=1s", "unknown query parameter"),
        ("?delay=soon", "delay"),
        ("?delay=1s&deliver_at=2030-01-01T00:00:00Z", "not both"),
        ("?ttl=400d", "ttl"),
        (long_key.as_str(), "ordering_key"),
    ] {
        let (s, b, _) = problem(
            send(&format!("/order/a{q}"))
                .header("authorization", tok)
                .send()
                .await
                .expect("post"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert!(
            b["detail"].as_str().unwrap_or("").contains(says),
            "{q}: {b}"
        );
    }
    let (s, b, _) = problem(
        send("/order/*")
            .header("authorization", tok)
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a wildcard: {b}");
    let mut many = send("/order/a").header("authorization", tok);
    for i in 0..=leanmq_grpc::broker::limits::MAX_HEADERS {
        many = many.header(format!("x-leanmq-header-h{i}"), "v");
    }
    let (s, ..) = problem(many.send().await.expect("post")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "too many message headers");

    // A token over its rate: 429, told when to retry.
    let metered = || send("/any").header("authorization", "Bearer metered-secret");
    assert_eq!(
        metered().send().await.expect("post").status(),
        StatusCode::ACCEPTED
    );
    let (s, _, retry) = problem(metered().send().await.expect("post")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("1"));
}

#[tokio::test]
async fn shedding_is_429_and_redis_down_is_503() {
    let mut redis = RedisProc::start();
    let (d, base) = start(&redis, |c| {
        c.max_concurrent_rpcs = 1;
        c.redis_timeout = Duration::from_secs(30);
    })
    .await;
    let http = reqwest::Client::new();
    let send = |path: &str| http.post(format!("{base}/v1/send{path}")).body("x").send();
    let signal = |sig| {
        // SAFETY: kill(2) on our own redis-server child.
        assert_eq!(unsafe { libc::kill(redis.pid() as libc::pid_t, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let held = tokio::spawn(send("/held"));
    // gRPC health is counted by the same budget: once it is shed, the
    // held send has the one place.
    let health = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    eventually("the held send is in flight", || {
        let mut h = health.clone();
        async move {
            let r = h
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            matches!(r, Err(e) if e.code() == tonic::Code::ResourceExhausted).then_some(())
        }
    })
    .await;
    let (s, b, retry) = problem(send("/shed").await.expect("post")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        b["detail"]
            .as_str()
            .unwrap_or("")
            .contains("--max-concurrent-rpcs"),
        "{b}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    signal(libc::SIGCONT);
    let r = held.await.expect("task").expect("post");
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "stored once Redis answers"
    );

    redis.kill();
    let (s, b, retry) = problem(send("/down").await.expect("post")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        !b["detail"].as_str().unwrap_or("").contains("127.0.0.1"),
        "no internals: {b}"
    );
}

#[tokio::test]
async fn a_batch_is_stored_whole_or_not_at_all() {
    let redis = RedisProc::start();
    let (_d, base) = start(&redis, |c| c.max_batch = 3).await;
    let http = reqwest::Client::new();
    let batch = |body: Value| {
        http.post(format!("{base}/v1/send-batch"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"plain bytes");
    let r = batch(json!([
        {"path": "/batch1", "data": {"n": 1}, "ordering_key": "o"},
        {"path": "/batch2", "payload": b64, "content_type": "text/plain", "headers": {"h": "v"}},
    ]))
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.bytes().await.map(json_of).expect("json");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["duplicate"] == json!(false)
        && r["message_id"].as_str().is_some_and(|s| !s.is_empty())));
    assert_eq!(
        (
            xlen(&redis, "webhook:batch1"),
            xlen(&redis, "webhook:batch2")
        ),
        (1, 1)
    );

    for (bad, says) in [
        (
            json!([{"path": "/batch1", "data": 1}, {"path": "/batch2", "data": 2, "delay": "soon"}]),
            "messages[1]",
        ),
        (
            json!([{"path": "/batch1", "data": 1}, {"path": "/b*", "data": 2}]),
            "messages[1]",
        ),
        (
            json!([{"path": "/batch1", "data": 1}, {"path": "/batch2"}]),
            "exactly one",
        ),
        (
            json!([{"path": "/batch1", "data": 1, "colour": "red"}]),
            "unknown field",
        ),
        (
            json!([{"path": "/batch1", "data": 1}, {"path": "/batch1", "data": 1}, {"path": "/batch1", "data": 1}, {"path": "/batch1", "data": 1}]),
            "--max-batch",
        ),
        (json!([]), "empty"),
        (json!({"path": "/batch1"}), "array"),
    ] {
        let (s, b, _) = problem(batch(bad.clone()).await.expect("post")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            b["detail"].as_str().unwrap_or("").contains(says),
            "{bad}: {b}"
        );
    }
    assert_eq!(
        (
            xlen(&redis, "webhook:batch1"),
            xlen(&redis, "webhook:batch2")
        ),
        (1, 1),
        "nothing of a refused batch is stored"
    );
}

/// A Standard Webhooks signature, made here from the spec (not with
/// leanmqd's own signing code).
fn sign(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_signed_route_takes_only_signed_requests() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens(dir.path());
    let secret_file = dir.path().join("stripe.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write");
    let route = format!("/stripe/events/={}", secret_file.display());
    let (d, base) = start(&redis, |c| {
        c.auth_tokens = Some(file);
        c.http_signed_route = vec![route];
    })
    .await;
    let http = reqwest::Client::new();
    let body = r#"{"type":"charge.succeeded"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let post = |id: &str, ts: i64, sig: String| {
        http.post(format!("{base}/v1/send/stripe/events/"))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
    };
    let r = post("msg_1", now, sign(SECRET, "msg_1", now, body))
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "signed, and no bearer token needed"
    );
    let first: Value = r.bytes().await.map(json_of).expect("json");
    // The third party's retry (same webhook-id, signed anew) is the same message.
    let again: Value = post("msg_1", now + 1, sign(SECRET, "msg_1", now + 1, body))
        .await
        .expect("post")
        .bytes()
        .await
        .map(json_of)
        .expect("json");
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["message_id"], first["message_id"]);

    let other = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM=";
    for (what, r) in [
        (
            "another secret",
            post("msg_2", now, sign(other, "msg_2", now, body)).await,
        ),
        (
            "another id",
            post("msg_2", now, sign(SECRET, "msg_1", now, body)).await,
        ),
        (
            "stale",
            post("msg_3", now - 600, sign(SECRET, "msg_3", now - 600, body)).await,
        ),
        (
            "from the future",
            post("msg_4", now + 600, sign(SECRET, "msg_4", now + 600, body)).await,
        ),
        (
            "unsigned, with a token",
            http.post(format!("{base}/v1/send/stripe/events"))
                .header("authorization", "Bearer producer-secret")
                .body(body)
                .send()
                .await,
        ),
    ] {
        let (s, b, _) = problem(r.expect("post")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {b}");
    }
    let mut c = d.client().await;
    let mut req = tonic::Request::new(proto::ReceiveRequest {
        path: "/stripe/events".into(),
        max_messages: 10,
        wait: dur(Duration::from_secs(5)),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer reader-secret".parse().expect("ascii"),
    );
    let got = c
        .receive(req)
        .await
        .expect("receive")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 1, "only the signed message, once");
    assert_eq!(&got[0].payload[..], body.as_bytes());
}

/// One gRPC-Web call (application/grpc-web+proto over HTTP/1.1) by hand:
/// the reply's message frame and its `grpc-status` trailer frame.
async fn grpc_web<T: prost::Message + Default>(
    addr: std::net::SocketAddr,
    method: &str,
    msg: &impl prost::Message,
) -> (T, String) {
    let body = grpc_web_body(msg);
    let r = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
        .post(format!("http://{addr}{method}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    // A refusal may come "trailers-only": grpc-status in the headers.
    let mut trailers = r
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(|c| format!("grpc-status:{c}"))
        .unwrap_or_default();
    let raw = r.bytes().await.expect("body");
    let (reply, framed) = grpc_web_reply::<T>(&raw);
    if !framed.is_empty() {
        trailers = framed;
    }
    (reply.unwrap_or_default(), trailers)
}

#[tokio::test]
async fn grpc_web_reaches_broker_and_admin() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let (sent, trailers): (proto::SendResponse, _) = grpc_web(
        d.addr,
        "/leanmq.v1.Broker/Send",
        &json_send("/web", r#"{"from":"a browser"}"#),
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert!(!sent.message_id.is_empty());
    assert_eq!(xlen(&redis, "webhook:web"), 1);
    let (info, trailers): (proto::QueueInfo, _) = grpc_web(
        d.addr,
        "/leanmq.v1.Admin/GetQueue",
        &proto::GetQueueRequest {
            path: "/web".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert_eq!(info.length, 1);
    let (_, trailers): (proto::SendResponse, _) =
        grpc_web(d.addr, "/leanmq.v1.Broker/Send", &json_send("/web/*", "{}")).await;
    assert!(
        trailers.contains("grpc-status:3"),
        "a refusal travels as a trailer: {trailers}"
    );

    // Other HTTP/1.1 on the gRPC port is refused and its connection closed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("closed by the server")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 415"), "{text}");
}

/// The TLS of the gRPC listener serves the ingress too, and gRPC-Web over
/// HTTP/1.1 inside TLS (ALPN http/1.1).
#[tokio::test]
async fn the_ingress_and_grpc_web_serve_tls() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = common::pki::Ca::new("ingress ca");
    let (cert, key) = ca.leaf("localhost");
    let cert = common::pki::write(dir.path(), "server.crt", &cert);
    let key = common::pki::write(dir.path(), "server.key", &key);
    let (d, base) = start(&redis, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    let at: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("addr");
    let client = |http1: bool| {
        let b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("ca"))
            .resolve("localhost", at);
        if http1 { b.http1_only() } else { b }
            .build()
            .expect("client")
    };
    let r = client(false)
        .post(format!("https://localhost:{}/v1/send/tls", at.port()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("an HTTPS post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let plain = reqwest::Client::new()
        .post(format!("{base}/v1/send/tls"))
        .body("{}")
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "no plaintext beside TLS"
    );
    let bytes = json_send("/tls-web", "{}").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    let r = client(true)
        .post(format!(
            "https://localhost:{}/leanmq.v1.Broker/Send",
            d.addr.port()
        ))
        .header("content-type", "application/grpc-web+proto")
        .body(frame)
        .send()
        .await
        .expect("gRPC-Web over TLS and HTTP/1.1");
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.expect("body");
    assert!(
        String::from_utf8_lossy(&body).contains("grpc-status:0"),
        "{body:?}"
    );
    assert_eq!(
        (xlen(&redis, "webhook:tls"), xlen(&redis, "webhook:tls_web")),
        (1, 1)
    );
}

/// A body uploaded slower than --http-request-timeout is 408 and stores
/// nothing; connections past --max-connections-per-source are closed at once.
#[tokio::test]
async fn slow_uploads_and_connection_caps_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisProc::start();
    let timeout = Duration::from_millis(300);
    let (_d, base) = start(&redis, |c| {
        c.http_request_timeout = timeout;
        c.max_connections = 4;
        c.max_connections_per_source = 2;
    })
    .await;
    let host = base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    slow.write_all(
        format!("POST /v1/send/slow HTTP/1.1\r\nhost: {host}\r\ncontent-length: 10\r\nconnection: close\r\n\r\nab").as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() >= timeout, "not before the timeout");
    assert_eq!(xlen(&redis, "webhook:slow"), 0);

    // Two open connections from 127.0.0.1 hold its share; a third is closed.
    let _a = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    let _b = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    eventually("a third connection is closed at once", || {
        let host = host.clone();
        async move {
            let mut c = tokio::net::TcpStream::connect(&host).await.ok()?;
            let _ = c
                .write_all(b"POST /v1/send/x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(WAIT, c.read(&mut buf))
                .await
                .ok()?
                .unwrap_or(0);
            (n == 0).then_some(())
        }
    })
    .await;
}

/// `--grpc-web-allow-origin`: a listed origin's preflight and calls get
/// CORS answers a browser accepts; another origin gets none.
#[tokio::test]
async fn grpc_web_cors_answers_listed_origins_only() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.grpc_web_allow_origin = vec!["https://app.example".into()];
    })
    .await;
    let http = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let url = format!("http://{}/leanmq.v1.Broker/Send", d.addr);
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,authorization",
            )
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let ok = preflight("https://app.example").await.expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        header(&ok, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let allowed = header(&ok, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("authorization") && allowed.contains("x-grpc-web"),
        "{allowed}"
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    let bytes = json_send("/cors", "{}").encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    let r = http
        .post(&url)
        .header("origin", "https://app.example")
        .header("content-type", "application/grpc-web+proto")
        .body(frame)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert!(header(&r, "access-control-expose-headers").is_some_and(|h| h.contains("grpc-status")));
    let _ = r.bytes().await.expect("body");
    assert_eq!(xlen(&redis, "webhook:cors"), 1);
}

/// The ingress stops with the drain: leanmqd stops cleanly with it open,
/// and afterwards nothing listens there.
#[tokio::test]
async fn the_ingress_closes_at_the_drain() {
    let redis = RedisProc::start();
    let (mut d, base) = start(&redis, |_| {}).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/send/drain"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    d.stop().await;
    let after = http
        .post(format!("{base}/v1/send/drain"))
        .body("x")
        .send()
        .await;
    assert!(after.is_err(), "still answering after the drain: {after:?}");
    assert_eq!(xlen(&redis, "webhook:drain"), 1);
}
