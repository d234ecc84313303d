//! The `leanmqd` binary itself: configuration errors, the embedded Redis,
//! and the SIGTERM drain, with real processes and signals.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_leanmqd");

/// leanmqd in embedded mode (its own redis-server in `dir`) on `port`.
fn spawn_embedded(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .env_remove("LEANMQ_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn")
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    for args in [
        vec!["--redis-url", "not-a-url"],
        vec!["--listen", "nowhere"],
        vec!["--max-attempts", "0"],
        vec!["--retry-min", "10s", "--retry-max", "1s"],
        vec!["--ack-deadline", "1ms"],
        vec!["--log-format", "xml"],
        vec![
            "--tls-cert",
            "/nonexistent.crt",
            "--tls-key",
            "/nonexistent.key",
        ],
        vec!["--tls-cert", "/nonexistent.crt"],
        vec!["--auth-tokens", "/nonexistent.toml"],
        vec!["--max-concurrent-rpcs", "0"],
        vec!["--publish-window", "0"],
        vec!["--publish-window", "10001"],
        vec!["--max-queues", "0"],
        vec!["--max-groups-per-queue", "0"],
        vec!["--max-groups-per-queue", "10001"],
        vec!["--group-idle-expiry", "soon"],
        vec!["--max-long-polls-per-connection", "0"],
        vec!["--max-long-polls-per-token", "0"],
        vec!["--max-connections", "0"],
        vec!["--max-connections-per-source", "0"],
        vec!["--handshake-timeout", "1ms"],
        vec!["--handshake-timeout", "1h"],
        vec!["--max-unread-bytes-per-stream", "1024"],
        vec![
            "--max-unread-bytes-per-stream",
            "33554432",
            "--max-unread-bytes",
            "16777216",
        ],
        vec!["--redis-url", "redis+sentinel://leanmq:hunter2@/"],
        // --wait-replicas / --wait-timeout / --wait-replicas-for (tests/durability.rs)
        vec!["--wait-timeout", "0s"],
        vec!["--wait-timeout", "61s", "--redis-timeout", "90s"],
        vec![
            "--wait-replicas",
            "1",
            "--wait-timeout",
            "5s",
            "--redis-timeout",
            "5s",
        ],
        vec!["--wait-replicas", "65"],
        vec!["--wait-replicas", "-1"],
        vec!["--wait-replicas-for", "/safe/>"],
        vec!["--wait-replicas-for", "/safe/>=many"],
        vec!["--wait-replicas-for", "/a/>/b=1"],
        vec!["--wait-replicas-for", "prefix:=1"],
        vec!["--wait-replicas-for", "/a=65"],
        // push delivery (tests/push.rs, docs/push.md)
        vec!["--push-poll-interval", "10ms"],
        vec!["--push-poll-interval", "2m"],
        vec!["--push-allow-host", "bad host"],
        vec!["--push-allow-host", "a,,b"],
        vec!["--no-such-flag"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("LEANMQ_REDIS_URL")
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} explains itself");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("hunter2"),
            "a password never reaches the logs"
        );
    }
    let env = Command::new(BIN)
        .env("LEANMQ_MAX_BATCH", "0")
        .output()
        .expect("run");
    assert_eq!(env.status.code(), Some(64), "env twins are validated too");
}

#[test]
fn help_lists_the_subcommands_and_they_take_no_server_flags() {
    let help = Command::new(BIN).arg("--help").output().expect("run");
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in ["hash-token", "healthcheck", "--max-concurrent-rpcs"] {
        assert!(text.contains(sub), "--help names {sub}:\n{text}");
    }
    let mixed = Command::new(BIN)
        .args(["healthcheck", "--listen", "127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(
        mixed.status.code(),
        Some(64),
        "a server flag after a subcommand is a usage error: {}",
        String::from_utf8_lossy(&mixed.stderr)
    );
}

#[tokio::test]
async fn embedded_redis_serves_and_sigterm_drains_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = spawn_embedded(port, dir.path());
    let mut c = connect_when_up(port).await;
    let hc = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{port}")])
        .output()
        .expect("healthcheck");
    assert!(
        hc.status.success(),
        "healthcheck passes against a serving leanmqd"
    );
    let id = send(&mut c, "/embedded", b"kept").await;
    let got = receive(&mut c, "/embedded", "", 1, 30_000).await;
    assert_eq!(got[0].message_id, id);

    let pid = child.id().expect("pid") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc_kill(pid, 15) }, 0);
    let t0 = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "within the grace period"
    );
    let hc = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{port}")])
        .output()
        .expect("healthcheck");
    assert_eq!(
        hc.status.code(),
        Some(1),
        "healthcheck fails once leanmqd is gone"
    );
    // The data is in the AOF of the data dir, and the child redis is gone.
    let aof = std::fs::read_dir(dir.path().join("appendonlydir"))
        .expect("aof dir")
        .count();
    assert!(aof > 0);
    assert!(
        !dir.path().join("redis.sock").exists()
            || std::os::unix::net::UnixStream::connect(dir.path().join("redis.sock")).is_err()
    );

    // Started again on the same data dir, the unacked message is still there.
    // On a fresh port: the old one may have gone to a concurrent test's
    // server since ours exited, and connecting there proves nothing.
    let port = free_port();
    let mut child = spawn_embedded(port, dir.path());
    connect_when_up(port).await;
    // The unacked message survived the restart, still pending for its group.
    let url = format!("redis+unix://{}", dir.path().join("redis.sock").display());
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("embedded redis");
    let len: i64 = redis::cmd("XLEN")
        .arg("webhook:embedded")
        .query(&mut conn)
        .expect("xlen");
    assert_eq!(len, 1);
    let p: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg("webhook:embedded")
        .arg("embedded-group")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut conn)
        .expect("xpending");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, id);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc_kill(child.id().expect("pid") as i32, 15) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "second instance: {status:?}");
}

#[tokio::test]
async fn a_killed_leanmqd_takes_its_embedded_redis_with_it() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = spawn_embedded(port, dir.path());
    connect_when_up(port).await;
    let socket = dir.path().join("redis.sock");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "embedded redis is up"
    );
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    eventually("the orphaned redis-server stops", || {
        let socket = socket.clone();
        async move {
            std::os::unix::net::UnixStream::connect(&socket)
                .is_err()
                .then_some(())
        }
    })
    .await;
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// GET /metrics over plain TCP; the body.
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

/// The value of the first sample whose line starts with `prefix`.
fn sample(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_the_traffic_and_redis_errors() {
    let redis = RedisProc::start();
    let mport = free_port();
    let (_child, port) = spawn_leanmqd(
        &redis.url(),
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
    );
    let mut c = connect_when_up(port).await;
    let mut s = subscribe(&mut c, "/metered", "", 10, 30_000).await;
    for i in 0..3 {
        send(&mut c, "/metered", format!("{i}").as_bytes()).await;
    }
    let a = next(&mut s).await;
    let b = next(&mut s).await;
    let d = next(&mut s).await;
    ack(&mut c, &[&a.receipt, &b.receipt]).await;
    c.nack(leanmq_grpc::proto::NackRequest {
        receipt: d.receipt,
        dead_letter: true,
        reason: "bad".into(),
        delay: None,
    })
    .await
    .expect("nack");
    let e = c.send(bytes_send("", b"x")).await.expect_err("bad path");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let body = eventually("metrics are served", || scrape(mport)).await;
    assert_eq!(
        sample(&body, "leanmq_messages_sent_total{queue=\"metered\"}"),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "leanmq_deliveries_total{queue=\"metered\",group=\"metered-group\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            "leanmq_acks_total{queue=\"metered\",group=\"metered-group\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&body, "leanmq_dead_lettered_total{queue=\"metered\",group=\"metered-group\",reason=\"consumer\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &body,
            "grpc_server_handling_seconds_count{grpc_service=\"leanmq.v1.Broker\",grpc_method=\"Send\",grpc_type=\"unary\",grpc_code=\"OK\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&body, "grpc_server_handling_seconds_count{grpc_service=\"leanmq.v1.Broker\",grpc_method=\"Send\",grpc_type=\"unary\",grpc_code=\"INVALID_ARGUMENT\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "leanmq_open_streams"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "leanmq_serving"), Some(1.0), "{body}");
    assert!(sample(&body, "leanmq_redis_duration_seconds_count").is_some_and(|n| n > 0.0));

    // Redis loses its data: the reader hits NOGROUP, recreates the group and counts it.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut redis.conn())
        .expect("flushall");
    eventually("a NOGROUP error is counted", || async {
        let body = scrape(mport).await?;
        sample(&body, "leanmq_redis_errors_total{kind=\"nogroup\"}").filter(|n| *n >= 1.0)
    })
    .await;
    let id = send(&mut c, "/metered", b"after the flush").await;
    assert_eq!(
        next(&mut s).await.message_id,
        id,
        "the subscriber keeps working"
    );
}

#[tokio::test]
async fn hash_token_then_sighup_reloads_the_tokens_file() {
    // `leanmqd hash-token` prints what the file stores.
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"second-secret\n").expect("write");
    }
    let out = child.wait_with_output().expect("hash-token");
    assert!(out.status.success());
    let hashed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(hashed, leanmq_grpc::auth::hash_token("second-secret"));

    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = dir.path().join("tokens.toml");
    let entry = |name: &str, hash: &str| {
        format!("[[tokens]]\nname = \"{name}\"\nhash = \"{hash}\"\nsend = [\">\"]\n")
    };
    std::fs::write(
        &tokens,
        entry("first", &leanmq_grpc::auth::hash_token("first-secret")),
    )
    .expect("write");
    let hport = free_port();
    let health = format!("127.0.0.1:{hport}");
    let tokens_path = tokens.display().to_string();
    let (child, port) = spawn_leanmqd(
        &redis.url(),
        &["--health-listen", &health, "--auth-tokens", &tokens_path],
    );
    let pid = child.id().expect("pid") as i32;
    let mut c = connect_when_up(port).await;
    let send_as = |token: &'static str| {
        let mut r = tonic::Request::new(bytes_send("/hup", b"x"));
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        r
    };
    c.send(send_as("first-secret")).await.expect("first token");
    let e = c.send(send_as("second-secret")).await.expect_err("not yet");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // The plaintext health port answers without a token.
    let status = Command::new(BIN)
        .args(["healthcheck", &format!("127.0.0.1:{hport}")])
        .status()
        .expect("healthcheck");
    assert!(status.success());

    std::fs::write(
        &tokens,
        entry("first", &leanmq_grpc::auth::hash_token("first-secret")) + &entry("second", &hashed),
    )
    .expect("rewrite");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    eventually("SIGHUP loaded the new token", || {
        let mut c = c.clone();
        async move { c.send(send_as("second-secret")).await.ok() }
    })
    .await;
    c.send(send_as("first-secret"))
        .await
        .expect("the old token still works; leanmqd kept running");
}

/// SIGTERM during a send flood and a dead-letter storm: leanmqd exits 0
/// within its grace, after every tracked task has ended. Nothing is lost:
/// every Send it answered OK is in the stream, and every message that left
/// the group's pending list (the storm only dead-letters, never acks) has
/// its dead-letter copy in the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_send_flood_and_a_dead_letter_storm_loses_nothing() {
    use leanmq_grpc::proto;
    use std::collections::HashSet;

    let redis = RedisProc::start();
    let (mut child, port) = spawn_leanmqd(&redis.url(), &["--shutdown-grace", "15s"]);
    let client = connect_when_up(port).await;
    let mut storm_client = client.clone();
    let storm = tokio::spawn(async move {
        let mut s = storm_client
            .subscribe(proto::SubscribeRequest {
                path: "/drain/q".into(),
                max_in_flight: 200,
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let mut nacked = 0u64;
        while let Ok(Some(d)) = s.message().await {
            let r = storm_client
                .nack(proto::NackRequest {
                    receipt: d.receipt,
                    dead_letter: true,
                    reason: "storm".into(),
                    ..Default::default()
                })
                .await;
            nacked += u64::from(r.is_ok());
        }
        nacked
    });
    let flood: Vec<_> = (0..4)
        .map(|w| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                // Bounded; in practice it ends when leanmqd stops answering.
                for i in 0..200_000 {
                    let body = format!("{{\"w\":{w},\"i\":{i}}}");
                    match c.send(json_send("/drain/q", &body)).await {
                        Ok(r) => ok.push(r.into_inner().message_id),
                        Err(_) => break,
                    }
                }
                ok
            })
        })
        .collect();
    eventually(
        "the flood and the dead-letter storm are under way",
        || async { (xlen(&redis, "webhook:drain_q:dlq") >= 200).then_some(()) },
    )
    .await;
    let pid = child.id().expect("pid") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("leanmqd exits within its grace")
        .expect("wait");
    assert!(status.success(), "clean exit, got {status:?}");

    let mut accepted = Vec::new();
    for f in flood {
        accepted.extend(f.await.expect("sender"));
    }
    let nacked = storm.await.expect("storm");
    assert!(!accepted.is_empty() && nacked > 0);
    let stream: HashSet<String> = entries(&redis, "webhook:drain_q")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let missing: Vec<&String> = accepted.iter().filter(|id| !stream.contains(*id)).collect();
    assert!(missing.is_empty(), "accepted but not stored: {missing:?}");
    let dead: HashSet<String> = entries(&redis, "webhook:drain_q:dlq")
        .into_iter()
        .filter_map(|(_, v)| {
            v["_failures"]
                .as_array()?
                .last()?
                .get("message_id")?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let mut conn = redis.conn();
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg("webhook:drain_q")
        .arg("drain_q-group")
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .query(&mut conn)
        .expect("xpending");
    let pending: HashSet<String> = pending.into_iter().map(|p| p.0).collect();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("webhook:drain_q")
        .query(&mut conn)
        .expect("xinfo");
    let last: String = groups
        .iter()
        .find(|g| {
            g.get("name")
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .as_deref()
                == Some("drain_q-group")
        })
        .and_then(|g| g.get("last-delivered-id"))
        .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
        .expect("the subscriber's group");
    let id_key = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    let lost: Vec<&String> = stream
        .iter()
        .filter(|id| id_key(id) <= id_key(&last))
        .filter(|id| !pending.contains(*id) && !dead.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} delivered, settled without a dead-letter copy: {lost:?}",
        lost.len()
    );
    eprintln!(
        "accepted={} dead-lettered={} still-pending={} lost=0",
        accepted.len(),
        dead.len(),
        pending.len()
    );
}
