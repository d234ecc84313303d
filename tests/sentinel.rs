//! Redis Sentinel: leanmqd follows a failover to the promoted replica, and
//! nothing acknowledged by Redis before the failover is lost.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn port_of(r: &RedisProc) -> String {
    r.url().rsplit(':').next().unwrap_or_default().to_string()
}

fn info(r: &RedisProc, section: &str) -> String {
    let mut c = r.conn();
    redis::cmd("INFO")
        .arg(section)
        .query::<String>(&mut c)
        .unwrap_or_default()
}

/// Poll `ok` (a state check, not a sleep for synchronisation) until it holds.
fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

    fn master_port(&self) -> Option<String> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection()
            .ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?;
        addr.get(1).cloned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn leanmqd_follows_a_sentinel_failover_without_loss() {
    let mut master = RedisProc::start();
    let mport = port_of(&master);
    let replica = RedisProc::start_with(&["--replicaof", "127.0.0.1", &mport]);
    let rport = port_of(&replica);
    until("the replica is in sync", || {
        info(&replica, "replication").contains("master_link_status:up")
    });
    let sentinel = Sentinel::start(&mport);
    until("the sentinel knows the master", || {
        sentinel.master_port().as_deref() == Some(mport.as_str())
    });

    let url = format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port);
    let d = Leanmqd::start(&url).await;
    let mut c = d.client().await;
    let mut sent = HashSet::new();
    for i in 0..50 {
        sent.insert(send(&mut c, "/failover", format!("{i}").as_bytes()).await);
    }
    // Everything is on the replica before the master dies (replication is
    // asynchronous; leanmqd's promise holds for what Redis replicated).
    until("the replica has every write", || {
        let m = info(&master, "replication");
        let offset = |s: &str, key: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let r = info(&replica, "replication");
        offset(&m, "master_repl_offset:").is_some()
            && offset(&m, "master_repl_offset:") == offset(&r, "master_repl_offset:")
    });
    master.kill();
    until("the sentinel promotes the replica", || {
        sentinel.master_port().as_deref() == Some(rport.as_str())
    });

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
    while got.len() < sent.len() {
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
