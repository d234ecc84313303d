//! `--wait-replicas`: a Send is answered OK only once Redis' `WAIT` reports
//! the replicas have it; with the replica stopped it is UNAVAILABLE, and a
//! retry with the same idempotency key after the replica returns stores
//! nothing new and is OK.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Send or stop a process with a real signal.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn replication(r: &RedisProc) -> String {
    redis::cmd("INFO")
        .arg("replication")
        .query(&mut r.conn())
        .unwrap_or_default()
}

/// A primary and one replica in sync.
async fn pair() -> (RedisProc, RedisProc) {
    let primary = RedisProc::start();
    let port = primary.port.to_string();
    let replica = RedisProc::start_with(&["--replicaof", "127.0.0.1", &port]);
    eventually("the replica is in sync", || {
        let up = replication(&replica).contains("master_link_status:up")
            && replication(&primary).contains("connected_slaves:1");
        async move { up.then_some(()) }
    })
    .await;
    (primary, replica)
}

fn keyed(path: &str, body: &[u8], key: &str) -> leanmq_grpc::proto::SendRequest {
    let mut r = bytes_send(path, body);
    r.idempotency_key = key.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_the_replica_and_a_retry_stores_nothing_new() {
    let (primary, replica) = pair().await;
    let d = Leanmqd::start_with(&primary.url(), |c| {
        c.wait_replicas = 1;
        c.wait_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = d.client().await;

    // The replica is up: OK, and the entry is on it.
    let first = c.send(keyed("/dur", b"one", "k1")).await.expect("send ok");
    let id1 = first.into_inner().message_id;
    assert_eq!(
        xlen(&replica, "webhook:dur"),
        1,
        "WAIT returned: on the replica"
    );

    // The replica stops acknowledging: UNAVAILABLE within about the timeout.
    signal(replica.pid(), "-STOP");
    let started = Instant::now();
    let err = c
        .send(keyed("/dur", b"two", "k2"))
        .await
        .expect_err("not confirmed");
    let took = started.elapsed();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains("stored on the primary, not confirmed on 1 replicas (0 acknowledged within"),
        "{}",
        err.message()
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(xlen(&primary, "webhook:dur"), 2, "stored on the primary");

    // The replica returns: the retry is a duplicate of the stored entry,
    // waits again, and is OK; nothing new is stored.
    signal(replica.pid(), "-CONT");
    let stored: Vec<String> = entries(&primary, "webhook:dur")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let retry = c
        .send(keyed("/dur", b"two", "k2"))
        .await
        .expect("retry ok")
        .into_inner();
    assert!(retry.duplicate, "the first attempt set the dedup key");
    assert_eq!(
        retry.message_id, stored[1],
        "the same id as the stored entry"
    );
    assert_ne!(retry.message_id, id1);
    assert_eq!(xlen(&primary, "webhook:dur"), 2, "XLEN did not grow");
    assert_eq!(xlen(&replica, "webhook:dur"), 2, "and the replica has it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_a_stopped_replica_does_not_hold_up_sends() {
    let (primary, replica) = pair().await;
    let d = Leanmqd::start(&primary.url()).await;
    let mut c = d.client().await;
    signal(replica.pid(), "-STOP");
    let started = Instant::now();
    send(&mut c, "/fast", b"x").await;
    assert!(started.elapsed() < Duration::from_millis(400));
    signal(replica.pid(), "-CONT");
    assert_eq!(xlen(&primary, "webhook:fast"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_path_rule_waits_only_for_its_paths() {
    let (primary, replica) = pair().await;
    let d = Leanmqd::start_with(&primary.url(), |c| {
        c.wait_replicas_for = vec!["/safe/>=1".into()];
        c.wait_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = d.client().await;
    c.send(bytes_send("/safe/a", b"ok"))
        .await
        .expect("replica up");
    signal(replica.pid(), "-STOP");
    let err = c
        .send(bytes_send("/safe/a", b"held"))
        .await
        .expect_err("the rule waits");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let started = Instant::now();
    send(&mut c, "/other", b"x").await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "a path no rule covers does not wait"
    );
    signal(replica.pid(), "-CONT");
    assert_eq!(xlen(&primary, "webhook:safe_a"), 2);
    assert_eq!(xlen(&primary, "webhook:other"), 1);
}

/// Redis 7.0 (installed here) has no WAITAOF: `--wait-aof` refuses to start
/// with the "unavailable" exit, saying why. (No Redis >= 7.2 binary was at
/// hand to test WAITAOF itself.)
#[test]
fn wait_aof_refuses_redis_before_7_2() {
    let redis = RedisProc::start();
    let out = Command::new(env!("CARGO_BIN_EXE_leanmqd"))
        .args(["--listen", "127.0.0.1:0", "--redis-url", &redis.url()])
        .arg("--wait-aof")
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{text}");
    assert!(
        text.contains("--wait-aof needs WAITAOF, which needs Redis 7.2 or later")
            && text.contains("where it is unavailable"),
        "{text}"
    );
}
