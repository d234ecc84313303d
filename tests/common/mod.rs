//! Test harness: a real `redis-server` per test (own port, own temp dir)
//! and leanmqd in-process on port 0. Waiting is always on a condition with
//! a deadline, never a bare sleep.
#![allow(dead_code)]

pub mod pki;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leanmq_grpc::config::Config;
use leanmq_grpc::proto;
use leanmq_grpc::proto::broker_client::BrokerClient;
use leanmq_grpc::server::{self, Running};
use tonic::transport::Channel;

pub type Client = BrokerClient<Channel>;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// A redis-server child on a free loopback port.
pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisProc {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start with extra `redis-server` arguments (e.g. AOF settings).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = RedisProc {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..10 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no");
        if !self.extra.iter().any(|a| a == "--appendonly") {
            cmd.arg("--appendonly").arg("no");
        }
        cmd.args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("url");
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // port taken, most likely
            }
            if let Ok(mut c) = client.get_connection() {
                // Make sure it is our server answering, not another test's
                // that won a race for the same port.
                if let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut c) {
                    let ours = format!("process_id:{}", child.id());
                    if info.lines().any(|l| l.trim() == ours) {
                        // Ours: now wait until it has loaded its AOF, so the
                        // first command of a test does not meet LOADING.
                        let loaded = redis::cmd("INFO")
                            .arg("persistence")
                            .query::<String>(&mut c)
                            .is_ok_and(|p| p.lines().any(|l| l.trim() == "loading:0"));
                        if loaded {
                            self.child = Some(child);
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A synchronous connection for inspecting Redis state.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// leanmqd in-process, with a connected client.
pub struct Leanmqd {
    pub running: Option<Running>,
    pub addr: std::net::SocketAddr,
}

impl Leanmqd {
    pub async fn start(redis_url: &str) -> Self {
        Self::start_with(redis_url, |_| {}).await
    }

    pub async fn start_with(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::for_redis(redis_url);
        cfg.shutdown_grace = Duration::from_secs(5);
        tweak(&mut cfg);
        let running = server::start(&cfg, redis_url)
            .await
            .expect("leanmqd starts");
        Leanmqd {
            addr: running.addr,
            running: Some(running),
        }
    }

    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            match BrokerClient::connect(format!("http://{}", self.addr)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }
}

impl Drop for Leanmqd {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.drain();
        }
    }
}

/// Start the `leanmqd` binary on a free port against `redis_url`, with
/// `extra` flags, its output discarded; killed when the child is dropped.
pub fn spawn_leanmqd(redis_url: &str, extra: &[&str]) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_leanmqd"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", redis_url])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn leanmqd");
    (child, port)
}

/// A client to the leanmqd process listening on `port`, once it accepts
/// connections.
pub async fn connect_when_up(port: u16) -> Client {
    let addr = format!("http://127.0.0.1:{port}");
    eventually("leanmqd accepts connections", || {
        let addr = addr.clone();
        async move { BrokerClient::connect(addr).await.ok() }
    })
    .await
}

pub fn dur(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

pub fn ms(n: u64) -> Option<prost_types::Duration> {
    dur(Duration::from_millis(n))
}

pub fn json_send(path: &str, json: &str) -> proto::SendRequest {
    proto::SendRequest {
        path: path.into(),
        payload: bytes::Bytes::copy_from_slice(json.as_bytes()),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

pub fn bytes_send(path: &str, payload: &[u8]) -> proto::SendRequest {
    proto::SendRequest {
        path: path.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
        ..Default::default()
    }
}

pub async fn send(c: &mut Client, path: &str, payload: &[u8]) -> String {
    c.send(bytes_send(path, payload))
        .await
        .expect("send")
        .into_inner()
        .message_id
}

pub async fn subscribe(
    c: &mut Client,
    path: &str,
    group: &str,
    max_in_flight: u32,
    lease_ms: u64,
) -> tonic::Streaming<proto::Delivery> {
    c.subscribe(proto::SubscribeRequest {
        path: path.into(),
        group: group.into(),
        consumer: "test".into(),
        max_in_flight,
        ack_deadline: ms(lease_ms),
        start: None,
        ..Default::default()
    })
    .await
    .expect("subscribe")
    .into_inner()
}

/// The next delivery on a stream, within [`WAIT`].
pub async fn next(s: &mut tonic::Streaming<proto::Delivery>) -> proto::Delivery {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a delivery within the wait")
        .expect("stream ok")
        .expect("stream open")
}

/// Receive with a wait, expecting at least one delivery.
pub async fn receive(
    c: &mut Client,
    path: &str,
    group: &str,
    max: u32,
    lease_ms: u64,
) -> Vec<proto::Delivery> {
    c.receive(proto::ReceiveRequest {
        path: path.into(),
        group: group.into(),
        consumer: "test".into(),
        max_messages: max,
        wait: dur(WAIT),
        ack_deadline: ms(lease_ms),
        start: None,
        ..Default::default()
    })
    .await
    .expect("receive")
    .into_inner()
    .deliveries
}

pub async fn ack(c: &mut Client, receipts: &[&str]) -> Vec<i32> {
    c.ack(proto::AckRequest {
        receipts: receipts.iter().map(|s| s.to_string()).collect(),
    })
    .await
    .expect("ack")
    .into_inner()
    .results
    .into_iter()
    .map(|r| r.outcome)
    .collect()
}

/// Poll `f` until it returns Some, within [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// XPENDING summary count of a group.
pub fn pending_count(r: &RedisProc, stream: &str, group: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(&mut r.conn())
        .expect("xpending");
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

pub fn xlen(r: &RedisProc, key: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(key)
        .query(&mut r.conn())
        .expect("xlen")
}

/// The `data` JSON of every entry in a stream.
pub fn entries(r: &RedisProc, key: &str) -> Vec<(String, serde_json::Value)> {
    let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut r.conn())
        .expect("xrange");
    v.into_iter()
        .map(|(id, fields)| {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "data")
                .map(|(_, v)| v)
                .unwrap_or_default();
            (
                id,
                serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

/// The keys a leanmqd on this Redis signs receipts with when none is
/// configured (the shared key it keeps at `webhook:receipt-key`), for
/// tests that write receipts by hand. Present once leanmqd handed out or
/// checked a receipt.
pub fn receipt_keys(r: &RedisProc) -> leanmq_grpc::broker::receipt::Keys {
    let key: String = redis::cmd("GET")
        .arg("webhook:receipt-key")
        .query(&mut r.conn())
        .expect("the shared receipt key");
    leanmq_grpc::broker::receipt::Keys::new([key], false).expect("a usable key")
}

/// A receipt signed with `keys` for attempt 1 of entry `id` of `queue`'s
/// default group: genuine, whether or not that delivery was ever made.
pub fn signed_receipt(keys: &leanmq_grpc::broker::receipt::Keys, queue: &str, id: &str) -> String {
    leanmq_grpc::broker::receipt::Receipt {
        queue: queue.into(),
        group: format!("{queue}-group"),
        id: id.into(),
        attempt: 1,
        ordering_key: None,
    }
    .encode(keys)
}

/// A gRPC-Web request body: `msg` in one uncompressed message frame.
pub fn grpc_web_body(msg: &impl prost::Message) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    body.extend_from_slice(&bytes);
    body
}

/// A gRPC-Web reply body: its message frame, if any, and its trailer
/// frame's text (`grpc-status:0\r\n…`).
pub fn grpc_web_reply<T: prost::Message + Default>(raw: &[u8]) -> (Option<T>, String) {
    let (mut reply, mut trailers, mut at) = (None, String::new(), 0);
    while at + 5 <= raw.len() {
        let flag = raw[at];
        let len = u32::from_be_bytes([raw[at + 1], raw[at + 2], raw[at + 3], raw[at + 4]]) as usize;
        let frame = &raw[at + 5..(at + 5 + len).min(raw.len())];
        if flag & 0x80 == 0 {
            reply = Some(T::decode(frame).expect("a reply message"));
        } else {
            trailers = String::from_utf8_lossy(frame).into_owned();
        }
        at += 5 + len;
    }
    (reply, trailers)
}
