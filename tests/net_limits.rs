//! A shared service's connection-level limits, with real sockets, a real
//! redis-server and leanmqd in-process: long polls have their own budget
//! (never starving unary calls), silent connections are closed after the
//! handshake timeout, connections are capped in all and per source
//! address, an oversized bearer token gets a clear status, and health
//! follows a stopped Redis within --redis-timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The health status of the whole server, or None while unreachable.
async fn health_status(h: &mut HealthClient<tonic::transport::Channel>) -> Option<i32> {
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .map(|r| r.into_inner().status)
    .ok()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Finding: health turned NOT_SERVING ~10 s after Redis stopped answering.
/// A SIGSTOPped Redis keeps its sockets open and answers nothing, the
/// hardest case: health must flip within --redis-timeout (+1 s of slack
/// for the check's own cadence), and turn SERVING again after SIGCONT.
#[tokio::test]
async fn health_follows_a_stopped_redis_within_the_redis_timeout() {
    let redis = RedisProc::start();
    let timeout = Duration::from_secs(2);
    let d = Leanmqd::start_with(&redis.url(), |c| c.redis_timeout = timeout).await;
    let mut health = HealthClient::new(d.channel().await);
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    eventually("SERVING at start", || {
        let mut h = health.clone();
        async move { (health_status(&mut h).await == Some(serving)).then_some(()) }
    })
    .await;
    // Traffic keeps going through the pause, as in production: its calls
    // time out, retire the shared connections and reconnect, which is
    // what held health's own ping up for two timeouts.
    let mut c = d.client().await;
    send(&mut c, "/health-load", b"x").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let _ = c.send(bytes_send("/health-load", b"x")).await;
                }
            })
        })
        .collect();

    signal(redis.pid(), libc::SIGSTOP);
    let stopped = Instant::now();
    let deadline = stopped + timeout + Duration::from_secs(1);
    let mut flipped = None;
    while Instant::now() < deadline {
        if health_status(&mut health).await == Some(not_serving) {
            flipped = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(redis.pid(), libc::SIGCONT);
    stop.cancel();
    for l in load {
        l.await.expect("load task");
    }
    let flipped = flipped.unwrap_or_else(|| {
        panic!("health still SERVING {timeout:?} + 1 s after Redis stopped answering")
    });
    eprintln!("health NOT_SERVING {flipped:?} after SIGSTOP (--redis-timeout {timeout:?})");
    eventually("SERVING again after SIGCONT", || {
        let mut h = health.clone();
        async move { (health_status(&mut h).await == Some(serving)).then_some(()) }
    })
    .await;
}

/// Finding: a 16 KB bearer token got an unclear HTTP 431 from the HTTP/2
/// layer. It gets UNAUTHENTICATED naming the limit, and a normal token on
/// the same connection still works.
#[tokio::test]
async fn an_oversized_bearer_token_is_unauthenticated_with_the_limit_named() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"app\"\nhash = \"{}\"\nsend = [\">\"]\n",
            leanmq_grpc::auth::hash_token("app-secret")
        ),
    )
    .expect("write tokens");
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let mut c = d.client().await;
    let authed = |token: &str| {
        let mut r = Request::new(bytes_send("/tokens", b"x"));
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        r
    };
    for size in [16 << 10, 40 << 10] {
        let e = c
            .send(authed(&"t".repeat(size)))
            .await
            .expect_err("an oversized token");
        assert_eq!(e.code(), Code::Unauthenticated, "{size}: {e:?}");
        assert!(
            e.message().contains("bytes") && e.message().contains("at most"),
            "{size}: {}",
            e.message()
        );
    }
    c.send(authed("app-secret")).await.expect("a normal token");
}

/// A long-poll Receive on `path` that waits up to 30 s for one message.
fn long_poll(path: &str, wait_ms: u64) -> proto::ReceiveRequest {
    proto::ReceiveRequest {
        path: path.into(),
        max_messages: 1,
        wait: ms(wait_ms),
        ..Default::default()
    }
}

/// Eventually a short wait on `c` is refused RESOURCE_EXHAUSTED naming
/// `limit`: every wait before it has taken its place.
async fn wait_refused(c: &Client, path: &str, limit: &str) {
    let e = eventually(&format!("a further wait is refused by {limit}"), || {
        let mut c = c.clone();
        async move {
            match c.receive(long_poll(path, 1)).await {
                Err(e) if e.code() == Code::ResourceExhausted => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert!(e.message().contains(limit), "{}", e.message());
}

/// Finding 11: waits had no budget of their own, so a flood of
/// Receive(wait) calls shed every Send and Ack. More waits than
/// --max-concurrent-rpcs are held open here, while Sends, unary Receives
/// and Acks still succeed; past its own budget (per connection, per
/// token) a wait is RESOURCE_EXHAUSTED.
#[tokio::test]
async fn long_polls_have_their_own_budget_and_never_starve_unary_calls() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.max_concurrent_rpcs = 4;
        c.max_long_polls_per_connection = 3;
        c.max_long_polls_per_token = 8;
    })
    .await;
    // Three connections: 3 + 3 + 2 waits, twice --max-concurrent-rpcs.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(proto::broker_client::BrokerClient::new(d.channel().await));
    }
    let mut waits = Vec::new();
    for (conn, n) in conns.iter().take(3).zip([3, 3, 2]) {
        for _ in 0..n {
            let mut c = conn.clone();
            // A probe below may take a place for a moment: retry then.
            waits.push(tokio::spawn(async move {
                loop {
                    match c.receive(long_poll("/long", 30_000)).await {
                        Err(e) if e.code() == Code::ResourceExhausted => {
                            tokio::task::yield_now().await
                        }
                        other => return other,
                    }
                }
            }));
        }
    }
    wait_refused(&conns[0], "/long", "--max-long-polls-per-connection").await;
    wait_refused(&conns[1], "/long", "--max-long-polls-per-connection").await;
    wait_refused(&conns[3], "/long", "--max-long-polls-per-token").await;

    // Unary calls go on, from a connection that holds waits and from one
    // that does not.
    for c in [&conns[0], &conns[3]] {
        let mut c = c.clone();
        for i in 0..10 {
            send(&mut c, "/unary", format!("{i}").as_bytes()).await;
        }
        let got = c
            .receive(proto::ReceiveRequest {
                path: "/unary".into(),
                max_messages: 10,
                ..Default::default()
            })
            .await
            .expect("a Receive without wait is a unary call")
            .into_inner()
            .deliveries;
        assert_eq!(got.len(), 10);
        let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
        assert_eq!(ack(&mut c, &receipts).await.len(), 10);
    }

    // The waits were real: each takes one of these.
    let mut c = conns[3].clone();
    for i in 0..8 {
        send(&mut c, "/long", format!("{i}").as_bytes()).await;
    }
    let mut delivered = 0;
    for w in waits {
        delivered += w
            .await
            .expect("join")
            .expect("wait")
            .into_inner()
            .deliveries
            .len();
    }
    assert_eq!(delivered, 8);
    // Their places are free again.
    c.receive(long_poll("/long", 1))
        .await
        .expect("a wait after the others ended");
}

/// Leanmqd with the given connection limits.
async fn with_limits(
    redis: &RedisProc,
    timeout: Duration,
    cap: usize,
    per_source: usize,
) -> Leanmqd {
    Leanmqd::start_with(&redis.url(), move |c| {
        c.handshake_timeout = timeout;
        c.max_connections = cap;
        c.max_connections_per_source = per_source;
    })
    .await
}

/// A TCP connection to `to` from `from` (any 127.0.0.0/8 address is
/// loopback), which sends nothing.
async fn silent(from: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind((std::net::Ipv4Addr::from(from), 0).into())
        .expect("bind");
    s.connect(to).await.expect("connect")
}

/// The server closes `s` (EOF or reset) within [`WAIT`]; whatever it
/// sends first is read past.
async fn closed_by_server(mut s: TcpStream) {
    let closed = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(()))),
        "expected the server to close the connection within {WAIT:?}, got {closed:?}"
    );
}

/// Still open: no EOF, no data, no error (a non-blocking look).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Finding 12: a connection that never sends the HTTP/2 preface is
/// closed after --handshake-timeout, not held for ever.
#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let redis = RedisProc::start();
    let timeout = Duration::from_millis(300);
    let d = with_limits(&redis, timeout, 100, 10).await;
    let opened = Instant::now();
    closed_by_server(silent([127, 0, 0, 2], d.addr).await).await;
    assert!(opened.elapsed() >= timeout, "closed before the timeout");
    // A real client is served as before, its preface well in time.
    let mut c = d.client().await;
    send(&mut c, "/after-silence", b"x").await;
}

/// Finding 12: silent sockets held open from one source beyond
/// --max-connections-per-source are closed at once, and a client from
/// another source is still served.
#[tokio::test]
async fn a_source_past_its_limit_is_refused_while_others_are_served() {
    let redis = RedisProc::start();
    let d = with_limits(&redis, Duration::from_secs(60), 100, 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(silent([127, 0, 0, 2], d.addr).await);
    }
    for _ in 0..3 {
        closed_by_server(silent([127, 0, 0, 2], d.addr).await).await;
    }
    let mut c = d.client().await;
    send(&mut c, "/other-source", b"x").await;
    assert!(held.iter().all(still_open), "the first 3 stay open");
}

/// Finding 12: past --max-connections every new connection is closed at
/// once, whatever its source, until one closes.
#[tokio::test]
async fn the_connection_cap_refuses_extra_connections() {
    let redis = RedisProc::start();
    let d = with_limits(&redis, Duration::from_secs(60), 4, 2).await;
    let mut held = Vec::new();
    for from in [[127, 0, 0, 2], [127, 0, 0, 3]] {
        for _ in 0..2 {
            held.push(silent(from, d.addr).await);
        }
    }
    closed_by_server(silent([127, 0, 0, 4], d.addr).await).await;
    let refused = tokio::time::timeout(WAIT, async {
        let mut c = proto::broker_client::BrokerClient::connect(format!("http://{}", d.addr))
            .await
            .ok()?;
        c.send(bytes_send("/capped", b"x")).await.ok()
    })
    .await
    .expect("refused at once, not left waiting");
    assert!(
        refused.is_none(),
        "a client was served past --max-connections"
    );
    assert!(
        held.iter().all(still_open),
        "the held connections stay open"
    );
    held.pop();
    let mut c = eventually("a freed place serves a new client", || async {
        let mut c = proto::broker_client::BrokerClient::connect(format!("http://{}", d.addr))
            .await
            .ok()?;
        c.send(bytes_send("/capped", b"x")).await.ok().map(|_| c)
    })
    .await;
    send(&mut c, "/capped", b"y").await;
}

/// A TLS handshake with leanmqd as "localhost", then silence: the TCP
/// stream underneath, to watch for the server's close.
async fn tls_then_silence(ca_pem: &str, to: std::net::SocketAddr) -> TcpStream {
    use rustls::pki_types::pem::PemObject;
    leanmq_grpc::tls::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector
        .connect(name, silent([127, 0, 0, 3], to).await)
        .await
        .expect("TLS handshake");
    tls.into_inner().0
}

/// Finding 12 under TLS: a connection that never starts its TLS handshake,
/// or sends no preface after it, is closed after --handshake-timeout, and
/// a TLS client is served.
#[tokio::test]
async fn a_silent_tls_connection_is_closed_after_the_handshake_timeout() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = common::pki::Ca::new("net ca");
    let (cert, key) = ca.leaf("localhost");
    let cert = common::pki::write(dir.path(), "server.crt", &cert);
    let key = common::pki::write(dir.path(), "server.key", &key);
    let timeout = Duration::from_millis(300);
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.handshake_timeout = timeout;
    })
    .await;
    let opened = Instant::now();
    closed_by_server(silent([127, 0, 0, 2], d.addr).await).await;
    assert!(opened.elapsed() >= timeout, "closed before the timeout");
    // A client that completes the TLS handshake and then sends nothing is
    // closed too: the preface inside TLS has the same deadline.
    let shaken = Instant::now();
    closed_by_server(tls_then_silence(&ca.pem(), d.addr).await).await;
    assert!(shaken.elapsed() >= timeout, "closed before the timeout");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", d.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("a TLS client connects");
    let mut c = proto::broker_client::BrokerClient::new(ch);
    send(&mut c, "/tls-after-silence", b"x").await;
}

/// The scenario on the leanmqd binary: with `ulimit -n 256`, 300
/// sockets that send nothing locked out new clients. Now the caps fit the
/// descriptors (128 connections, 64 per source): the silent source is
/// held to its share and a new client is served at once.
#[tokio::test]
async fn with_ulimit_256_silent_sockets_do_not_lock_out_new_clients() {
    let redis = RedisProc::start();
    let port = free_port();
    let _leanmqd = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec {} --listen 127.0.0.1:{port} --redis-url {}",
            env!("CARGO_BIN_EXE_leanmqd"),
            redis.url()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn leanmqd under ulimit -n 256");
    let mut first = connect_when_up(port).await;
    send(&mut first, "/ulimit", b"up").await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut silent_socks = Vec::new();
    for _ in 0..300 {
        silent_socks.push(silent([127, 0, 0, 2], addr).await);
    }
    // Bounded: a locked-out client would wait in the backlog for ever.
    let served = tokio::time::timeout(WAIT, async {
        let mut c = proto::broker_client::BrokerClient::connect(format!("http://{addr}")).await?;
        c.send(bytes_send("/ulimit", b"served")).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await;
    assert!(
        matches!(served, Ok(Ok(()))),
        "a new client is served: {served:?}"
    );
    let open = silent_socks.iter().filter(|s| still_open(s)).count();
    assert!(
        open <= 64,
        "{open} silent sockets held, over the per-source share"
    );
}

/// Health must not flicker while Redis answers: with a `--redis-timeout`
/// under the 1 s ping cadence, the next ping used to start after the last
/// answer's deadline had passed, so health went NOT_SERVING for a moment
/// every second (found by the cluster-failover fault scenario). Every
/// change of status is pushed on a Watch stream; over several ping rounds
/// none may arrive after the first SERVING.
#[tokio::test]
async fn health_does_not_flicker_with_a_short_redis_timeout() {
    let redis = RedisProc::start();
    let timeout = Duration::from_millis(300);
    let d = Leanmqd::start_with(&redis.url(), |c| c.redis_timeout = timeout).await;
    let mut health = HealthClient::new(d.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch health")
        .into_inner();
    let first = watch.message().await.expect("first status").expect("open");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // Observe for ten timeouts (several rounds of the 1 s cadence): the
    // window is how long we look, not a wait for something to happen.
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(m)) = watch.message().await {
            seen.push(m.status);
        }
    })
    .await;
    assert!(
        seen.is_empty(),
        "health changed while Redis was up (statuses after SERVING: {seen:?})"
    );
}
