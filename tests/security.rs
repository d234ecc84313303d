//! TLS, mTLS, certificate reload, every auth outcome, and each limit's
//! rejection. Every test runs its own redis-server and an in-process
//! leanmqd on port 0.

mod common;

use std::path::Path;

use common::pki::{write, Ca};
use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// Does a Send over this channel (if it connected) succeed?
async fn sends(ch: Result<Channel, tonic::transport::Error>) -> bool {
    match ch {
        Ok(ch) => BrokerClient::new(ch)
            .send(bytes_send("/tls", b"x"))
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_and_mtls_handshakes() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("server ca");
    let (cert, key) = ca.leaf("localhost");
    let cert_f = write(dir.path(), "server.crt", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let clients = Ca::new("client ca");
    let client_id = clients.leaf("client-a");
    let stranger = Ca::new("other ca").leaf("client-b");
    let clients_f = write(dir.path(), "clients.crt", &clients.pem());

    // TLS only.
    let (c2, k2) = (cert_f.clone(), key_f.clone());
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(c2);
        c.tls_key = Some(k2);
    })
    .await;
    assert!(sends(tls_channel(d.addr, &ca.pem(), None).await).await);
    let plain = BrokerClient::connect(format!("http://{}", d.addr)).await;
    let plain_ok = match plain {
        Ok(mut c) => c.send(bytes_send("/tls", b"x")).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain_ok, "plaintext must not reach a TLS listener");
    let wrong_ca = Ca::new("impostor");
    assert!(!sends(tls_channel(d.addr, &wrong_ca.pem(), None).await).await);

    // mTLS: a client certificate from the client CA is required.
    let m = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(cert_f);
        c.tls_key = Some(key_f);
        c.tls_client_ca = Some(clients_f);
    })
    .await;
    assert!(sends(tls_channel(m.addr, &ca.pem(), Some(&client_id)).await).await);
    assert!(!sends(tls_channel(m.addr, &ca.pem(), None).await).await);
    assert!(!sends(tls_channel(m.addr, &ca.pem(), Some(&stranger)).await).await);
}

#[tokio::test]
async fn certificate_reload_keeps_open_streams() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let old_ca = Ca::new("old ca");
    let (cert, key) = old_ca.leaf("localhost");
    let cert_f = write(dir.path(), "server.crt", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let (c2, k2) = (cert_f.clone(), key_f.clone());
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(c2);
        c.tls_key = Some(k2);
    })
    .await;
    let old_ch = tls_channel(d.addr, &old_ca.pem(), None)
        .await
        .expect("old chain works");
    let mut old = BrokerClient::new(old_ch);
    let mut stream = subscribe(&mut old, "/rotate", "", 10, 30_000).await;

    // Rotate to a certificate from a new CA, then SIGHUP's reload.
    let new_ca = Ca::new("new ca");
    let (cert, key) = new_ca.leaf("localhost");
    write(dir.path(), "server.crt", &cert);
    write(dir.path(), "server.key", &key);
    let running = d.running.as_ref().expect("running");
    running.reload().expect("reload");

    // New connections get the new certificate...
    assert!(!sends(tls_channel(d.addr, &old_ca.pem(), None).await).await);
    let mut new = BrokerClient::new(
        tls_channel(d.addr, &new_ca.pem(), None)
            .await
            .expect("new chain works"),
    );
    // ...and the stream opened before the reload still delivers.
    send(&mut new, "/rotate", b"after reload").await;
    let got = next(&mut stream).await;
    assert_eq!(&got.payload[..], b"after reload");

    // A broken file on reload is refused; what was in force stays.
    write(dir.path(), "server.key", "not a key");
    let e = running.reload().expect_err("bad key refused");
    assert!(e.contains("--tls-key"), "{e}");
    assert!(sends(tls_channel(d.addr, &new_ca.pem(), None).await).await);
}

fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    r
}

fn tokens_file(dir: &Path, extra: &str) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    write(
        dir,
        "tokens.toml",
        &format!(
            r#"
[[tokens]]
name = "producer"
hash = "{}"
send = ["/order/>"]

[[tokens]]
name = "consumer"
hash = "{}"
subscribe = ["/order/*"]

[[tokens]]
name = "ops"
hash = "{}"
admin = ["/order/>"]
{extra}"#,
            h("producer-secret"),
            h("consumer-secret"),
            h("ops-secret"),
        ),
    )
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn every_auth_outcome() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens_file(dir.path(), "");
    let f2 = file.clone();
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(f2)).await;
    let ch = d.channel().await;
    let mut b = BrokerClient::new(ch.clone());
    let mut a = AdminClient::new(ch.clone());

    // No token, a bad scheme, an unknown token: UNAUTHENTICATED.
    let e = b
        .send(bytes_send("/order/x", b"1"))
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let mut basic = Request::new(bytes_send("/order/x", b"1"));
    basic.metadata_mut().insert(
        "authorization",
        "Basic cHJvZHVjZXI=".parse().expect("ascii"),
    );
    assert_eq!(code(b.send(basic).await), Code::Unauthenticated);
    assert_eq!(
        code(b.send(authed(bytes_send("/order/x", b"1"), "guess")).await),
        Code::Unauthenticated
    );

    // Send grants.
    assert_eq!(
        code(
            b.send(authed(bytes_send("/order/x", b"1"), "producer-secret"))
                .await
        ),
        Code::Ok
    );
    let e = b
        .send(authed(bytes_send("/payment/x", b"1"), "producer-secret"))
        .await
        .expect_err("outside the grant");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("producer") && e.message().contains("/payment/x"),
        "{}",
        e.message()
    );
    let batch = proto::SendBatchRequest {
        messages: vec![bytes_send("/order/a", b"1"), bytes_send("/payment/b", b"2")],
    };
    assert_eq!(
        code(b.send_batch(authed(batch, "producer-secret")).await),
        Code::PermissionDenied,
        "one forbidden message refuses the whole batch"
    );
    assert_eq!(
        code(
            b.send(authed(bytes_send("/order/x", b"1"), "consumer-secret"))
                .await
        ),
        Code::PermissionDenied
    );

    // Subscribe grants: a plain path, a pattern inside, a pattern outside.
    // (In their own group, so the Receive below sees the message.)
    let sub = |path: &str| proto::SubscribeRequest {
        path: path.into(),
        group: "watchers".into(),
        max_in_flight: 10,
        ..Default::default()
    };
    assert_eq!(
        code(
            b.subscribe(authed(sub("/order/x"), "consumer-secret"))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            b.subscribe(authed(sub("/order/*"), "consumer-secret"))
                .await
        ),
        Code::Ok
    );
    let e = b
        .subscribe(authed(sub("/order/>"), "consumer-secret"))
        .await
        .expect_err("pattern reaches outside the grant");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("/order/>"), "{}", e.message());
    assert_eq!(
        code(
            b.subscribe(authed(sub("/order/x"), "producer-secret"))
                .await
        ),
        Code::PermissionDenied
    );

    // Receive + Ack with the consumer; the producer may not settle it.
    let recv = proto::ReceiveRequest {
        path: "/order/x".into(),
        max_messages: 1,
        wait: ms(5_000),
        ..Default::default()
    };
    assert_eq!(
        code(b.receive(authed(recv.clone(), "producer-secret")).await),
        Code::PermissionDenied
    );
    let got = b
        .receive(authed(recv, "consumer-secret"))
        .await
        .expect("receive")
        .into_inner()
        .deliveries;
    assert_eq!(got.len(), 1);
    let ack = proto::AckRequest {
        receipts: vec![got[0].receipt.clone()],
    };
    assert_eq!(
        code(b.ack(authed(ack.clone(), "producer-secret")).await),
        Code::PermissionDenied
    );
    let res = b
        .ack(authed(ack, "consumer-secret"))
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(res.results[0].outcome, proto::AckOutcome::Acked as i32);

    // Admin: only the ops token, and ListQueues shows only its queues.
    b.send(authed(bytes_send("/order/y", b"1"), "producer-secret"))
        .await
        .expect("send");
    let q = proto::GetQueueRequest {
        path: "/order/x".into(),
        ..Default::default()
    };
    assert_eq!(
        code(a.get_queue(authed(q.clone(), "consumer-secret")).await),
        Code::PermissionDenied
    );
    assert_eq!(code(a.get_queue(authed(q, "ops-secret")).await), Code::Ok);

    // Health needs no token (probes carry none); reflection does.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health without a token");
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reload: a new token works, a removed one stops working.
    write(
        dir.path(),
        "tokens.toml",
        &format!(
            "[[tokens]]\nname = \"late\"\nhash = \"{}\"\nsend = [\">\"]\n",
            leanmq_grpc::auth::hash_token("late-secret")
        ),
    );
    d.running
        .as_ref()
        .expect("running")
        .reload()
        .expect("reload");
    assert_eq!(
        code(
            b.send(authed(bytes_send("/payment/x", b"1"), "late-secret"))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            b.send(authed(bytes_send("/order/x", b"1"), "producer-secret"))
                .await
        ),
        Code::Unauthenticated
    );
    drop(file);
}

#[tokio::test]
async fn list_queues_shows_only_granted_queues() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens_file(
        dir.path(),
        &format!(
            "\n[[tokens]]\nname = \"all\"\nhash = \"{}\"\nsend = [\">\"]\nadmin = [\">\"]\n",
            leanmq_grpc::auth::hash_token("all-secret")
        ),
    );
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let ch = d.channel().await;
    let mut b = BrokerClient::new(ch.clone());
    let mut a = AdminClient::new(ch);
    for p in ["/order/a", "/payment/b"] {
        b.send(authed(bytes_send(p, b"1"), "all-secret"))
            .await
            .expect("send");
    }
    let names = |r: proto::ListQueuesResponse| {
        let mut v: Vec<String> = r.queues.into_iter().map(|q| q.queue).collect();
        v.sort();
        v
    };
    let all = a
        .list_queues(authed(proto::ListQueuesRequest::default(), "all-secret"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(names(all), ["order_a", "payment_b"]);
    let ops = a
        .list_queues(authed(proto::ListQueuesRequest::default(), "ops-secret"))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(names(ops), ["order_a"]);
}

#[tokio::test]
async fn each_limit_rejects_with_a_clear_status() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = write(
        dir.path(),
        "tokens.toml",
        &format!(
            "[[tokens]]\nname = \"open\"\nhash = \"{}\"\nsend = [\">\"]\nsubscribe = [\">\"]\n\n[[tokens]]\nname = \"metered\"\nhash = \"{}\"\nsend = [\">\"]\nrate = 0.01\nburst = 3\n",
            leanmq_grpc::auth::hash_token("open-secret"),
            leanmq_grpc::auth::hash_token("metered-secret"),
        ),
    );
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.auth_tokens = Some(file);
        c.max_streams_per_connection = 2;
        c.max_subscriptions = 3;
        c.max_concurrent_rpcs = 2;
        c.max_headers_bytes = 100;
        // The shed check holds Sends on a paused Redis: longer than it.
        c.redis_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let tok = "open-secret";
    let sub = || proto::SubscribeRequest {
        path: "/limits".into(),
        max_in_flight: 1,
        ..Default::default()
    };

    // Streams per connection.
    let mut one = BrokerClient::new(d.channel().await);
    let s1 = one.subscribe(authed(sub(), tok)).await.expect("1st");
    let _s2 = one.subscribe(authed(sub(), tok)).await.expect("2nd");
    let e = one
        .subscribe(authed(sub(), tok))
        .await
        .expect_err("3rd on one connection");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-streams-per-connection"),
        "{}",
        e.message()
    );
    // Subscriptions per replica.
    let mut two = BrokerClient::new(d.channel().await);
    let _s3 = two
        .subscribe(authed(sub(), tok))
        .await
        .expect("3rd overall");
    let e = two
        .subscribe(authed(sub(), tok))
        .await
        .expect_err("4th overall");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-subscriptions"),
        "{}",
        e.message()
    );
    // A closed stream frees its place.
    drop(s1);
    eventually("a closed stream frees a place", || {
        let mut two = two.clone();
        async move { two.subscribe(authed(sub(), tok)).await.ok() }
    })
    .await;

    // Load shedding: two Sends wait in flight on a paused Redis; a third
    // call is shed at once. (Receives that wait are not counted here: they
    // have their own budget, see tests/net_limits.rs.)
    let signal = |sig| {
        // SAFETY: kill(2) on our own redis-server child.
        assert_eq!(unsafe { libc::kill(redis.pid() as libc::pid_t, sig) }, 0);
    };
    signal(libc::SIGSTOP);
    let hold = |mut c: BrokerClient<Channel>| {
        tokio::spawn(async move {
            loop {
                match c.send(authed(bytes_send("/shed", b"x"), tok)).await {
                    Err(e) if e.code() == Code::ResourceExhausted => tokio::task::yield_now().await,
                    other => return other,
                }
            }
        })
    };
    let r1 = hold(two.clone());
    let r2 = hold(two.clone());
    // Health answers without Redis, and is counted: once it is shed, both
    // Sends are in flight.
    let health = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    eventually("both Sends are in flight", || {
        let mut h = health.clone();
        async move {
            let r = h
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            matches!(r, Err(e) if e.code() == Code::ResourceExhausted).then_some(())
        }
    })
    .await;
    let shed = two
        .clone()
        .send(authed(bytes_send("/other", b"x"), tok))
        .await
        .expect_err("a third call is shed");
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(
        shed.message().contains("--max-concurrent-rpcs"),
        "{}",
        shed.message()
    );
    // A Receive that does not wait is a unary call like any other.
    let shed = two
        .clone()
        .receive(authed(
            proto::ReceiveRequest {
                path: "/other".into(),
                ..Default::default()
            },
            tok,
        ))
        .await
        .expect_err("a Receive without wait is shed too");
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(
        shed.message().contains("--max-concurrent-rpcs"),
        "{}",
        shed.message()
    );
    signal(libc::SIGCONT);
    let mut sender = BrokerClient::new(d.channel().await);
    r1.await.expect("join").expect("send 1 after the pause");
    r2.await.expect("join").expect("send 2 after the pause");
    assert_eq!(
        code(sender.send(authed(bytes_send("/other", b"x"), tok)).await),
        Code::Ok
    );

    // Headers size.
    let mut fat = bytes_send("/limits", b"x");
    fat.headers.insert("big".into(), "y".repeat(200));
    let e = sender.send(authed(fat, tok)).await.expect_err("headers");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("--max-headers-bytes"),
        "{}",
        e.message()
    );

    // A token's rate: its burst of 3, then RESOURCE_EXHAUSTED.
    for _ in 0..3 {
        assert_eq!(
            code(
                sender
                    .send(authed(bytes_send("/rated", b"x"), "metered-secret"))
                    .await
            ),
            Code::Ok
        );
    }
    let e = sender
        .send(authed(bytes_send("/rated", b"x"), "metered-secret"))
        .await
        .expect_err("over the rate");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("metered"), "{}", e.message());
    drop(sender.send(authed(bytes_send("/rated", b"x"), tok)).await);
}

#[tokio::test]
async fn traceparent_travels_from_send_metadata_to_the_delivery() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    let mut s = subscribe(&mut c, "/traced", "", 10, 30_000).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = Request::new(bytes_send("/traced", b"x"));
    req.metadata_mut()
        .insert("traceparent", tp.parse().expect("ascii"));
    c.send(req).await.expect("send");
    let got = next(&mut s).await;
    assert_eq!(got.headers.get("traceparent").map(String::as_str), Some(tp));
    // A malformed traceparent is not carried.
    let mut req = Request::new(bytes_send("/traced", b"y"));
    req.metadata_mut()
        .insert("traceparent", "garbage".parse().expect("ascii"));
    c.send(req).await.expect("send");
    let got = next(&mut s).await;
    assert!(!got.headers.contains_key("traceparent"));
}

#[tokio::test]
async fn rediss_with_an_acl_user() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("redis ca");
    let (cert, key) = ca.leaf("localhost");
    let cert_f = write(dir.path(), "redis.crt", &cert);
    let key_f = write(dir.path(), "redis.key", &key);
    let ca_f = write(dir.path(), "ca.crt", &ca.pem());
    let port = free_port();
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(&cert_f)
        .arg("--tls-key-file")
        .arg(&key_f)
        .arg("--tls-ca-cert-file")
        .arg(&ca_f)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--bind", "127.0.0.1"])
        .args(["--user", "default", "off"])
        .args(["--user", "leanmq", "on", ">s3cret", "~*", "&*", "+@all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let url = format!("rediss://leanmq:s3cret@localhost:{port}");
    let ca_path = ca_f.clone();
    let d = Leanmqd::start_with(&url, move |c| c.redis_tls_ca = Some(ca_path)).await;
    let mut c = d.client().await;
    // Redis may still be starting: UNAVAILABLE until it answers.
    eventually("a send over rediss:// succeeds", || {
        let mut c = c.clone();
        async move { c.send(bytes_send("/secure", b"x")).await.ok() }
    })
    .await;
    let got = receive(&mut c, "/secure", "", 1, 30_000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"x");

    // A wrong password is refused by Redis: UNAVAILABLE or INTERNAL, never OK.
    let bad = format!("rediss://leanmq:wrong@localhost:{port}");
    let ca_path = ca_f.clone();
    let d2 = Leanmqd::start_with(&bad, move |c| c.redis_tls_ca = Some(ca_path)).await;
    let mut c2 = d2.client().await;
    let e = c2
        .send(bytes_send("/secure", b"x"))
        .await
        .expect_err("bad password");
    assert_ne!(e.code(), Code::Ok);
    let _ = child.kill();
    let _ = child.wait();
}
