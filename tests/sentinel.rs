//! Redis Sentinel: leanmqd follows a failover to the promoted replica, and
//! nothing acknowledged by Redis before the failover is lost.
//!
//! leanmqd runs in this test's runtime, so every wait here is async (a
//! multi-thread runtime, Redis asked over async connections): a blocking
//! wait would freeze leanmqd exactly while it should be following the
//! failover.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use common::*;

fn port_of(r: &RedisProc) -> String {
    r.url().rsplit(':').next().unwrap_or_default().to_string()
}

/// One command on a fresh async connection; None when Redis is not there.
async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> Option<T> {
    let mut c = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    cmd.query_async(&mut c).await.ok()
}

async fn info(r: &RedisProc, section: &str) -> String {
    query(&r.url(), redis::cmd("INFO").arg(section))
        .await
        .unwrap_or_default()
}

/// Longest a failover step may take: Sentinel needs its down-after (500 ms)
/// plus an election and a promotion.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// Poll `ok` (a state check, not a sleep for synchronisation) until it
/// holds, failing the test at [`FAILOVER_WAIT`].
async fn until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + FAILOVER_WAIT;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `key:` in an INFO reply.
fn field(info: &str, key: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: &str) -> Sentinel {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\nsentinel down-after-milliseconds mymaster 500\nsentinel failover-timeout mymaster 3000\n",
                dir.path().display()
            ),
        )
        .expect("write conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        Sentinel {
            child,
            port,
            _dir: dir,
        }
    }

    async fn master_port(&self) -> Option<String> {
        let url = format!("redis://127.0.0.1:{}", self.port);
        let cmd = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .clone();
        let addr: Vec<String> = query(&url, &cmd).await?;
        addr.get(1).cloned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leanmqd_follows_a_sentinel_failover_without_loss() {
    let mut master = RedisProc::start();
    let mport = port_of(&master);
    let replica = RedisProc::start_with(&["--replicaof", "127.0.0.1", &mport]);
    let rport = port_of(&replica);
    until("the replica is in sync", || async {
        info(&replica, "replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::start(&mport);
    until("the sentinel knows the master", || async {
        sentinel.master_port().await.as_deref() == Some(mport.as_str())
    })
    .await;

    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let d = Leanmqd::start(&url).await;
    let mut c = d.client().await;
    let mut sent = HashSet::new();
    for i in 0..50 {
        sent.insert(send(&mut c, "/failover", format!("{i}").as_bytes()).await);
    }
    // Everything is on the replica before the master dies (replication is
    // asynchronous; leanmqd's promise holds for what Redis replicated).
    until("the replica has every write", || async {
        let m = field(&info(&master, "replication").await, "master_repl_offset:");
        let r = field(&info(&replica, "replication").await, "master_repl_offset:");
        m.is_some() && m == r
    })
    .await;
    master.kill();
    until("the sentinel promotes the replica", || async {
        sentinel.master_port().await.as_deref() == Some(rport.as_str())
    })
    .await;

    // leanmqd reconnects to the new master on its own.
    let after = eventually("a send succeeds after the failover", || {
        let mut c = c.clone();
        async move {
            c.send(bytes_send("/failover", b"after"))
                .await
                .ok()
                .map(|r| r.into_inner().message_id)
        }
    })
    .await;
    sent.insert(after);
    let mut got = HashSet::new();
    let deadline = Instant::now() + FAILOVER_WAIT;
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "timed out receiving: {} of {} messages",
            got.len(),
            sent.len()
        );
        for d in receive(&mut c, "/failover", "", 100, 30_000).await {
            ack(&mut c, &[&d.receipt]).await;
            got.insert(d.message_id);
        }
    }
    assert_eq!(
        got, sent,
        "every message from before and after the failover"
    );
}
