//! Push delivery (#20 part B) beside the gRPC Subscribe path, in one run.
//!
//! Receivers are axum servers in this process on 127.0.0.1:0 answering 200
//! at once; leanmqd runs with `--push-allow-private --push-allow-http`.
//! - Throughput: `n` preloaded messages pushed to 1 endpoint, and spread
//!   over 10 paths each pushed to its own endpoint, against a Subscribe
//!   drain of the same messages (batched acks, 1 stream).
//! - Latency: Sends at a fixed rate, each carrying its send time; the
//!   time to the POST's arrival against the time to a Subscribe delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

use crate::procs::{CpuMeter, Env};
use crate::scenarios::{channels, del, err, Res, Row};
use crate::Mode;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Pushes in flight per subscription (the most a subscription may ask).
const IN_FLIGHT: u32 = 100;

/// What the receivers saw: POSTs, and Send → arrival latencies.
struct Ledger {
    posts: AtomicU64,
    t0: Instant,
    latency: Mutex<Histogram<u64>>,
}

impl Ledger {
    fn new() -> Res<Arc<Ledger>> {
        Ok(Arc::new(Ledger {
            posts: AtomicU64::new(0),
            t0: Instant::now(),
            latency: Mutex::new(Histogram::new(3).map_err(err)?),
        }))
    }

    /// Micros since `t0`.
    fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Count one arrival; a payload "t<micros>" records its latency.
    fn arrived(&self, body: &[u8]) {
        self.posts.fetch_add(1, Ordering::Relaxed);
        let sent = std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.strip_prefix('t'))
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(sent), Ok(mut h)) = (sent, self.latency.lock()) {
            let _ = h.record(self.now_us().saturating_sub(sent).max(1));
        }
    }

    async fn wait_posts(&self, n: u64, within: Duration) -> Res<()> {
        let deadline = Instant::now() + within;
        while self.posts.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return Err(format!(
                    "push: {} of {n} POSTs arrived within {within:?}",
                    self.posts.load(Ordering::Relaxed)
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// A receiver answering 200 to every POST; returns its URL.
async fn receiver(ledger: Arc<Ledger>) -> Res<String> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: bytes::Bytes| {
            let ledger = ledger.clone();
            async move {
                ledger.arrived(&body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

async fn admin(env: &Env) -> Res<AdminClient<Channel>> {
    let ch = Channel::from_shared(env.leanmqd_addr.clone())
        .map_err(err)?
        .connect()
        .await
        .map_err(err)?;
    Ok(AdminClient::new(ch))
}

async fn subscribe_push(
    a: &mut AdminClient<Channel>,
    name: &str,
    path: &str,
    url: &str,
) -> Res<()> {
    a.create_push_subscription(proto::CreatePushSubscriptionRequest {
        subscription: Some(proto::PushSubscription {
            name: name.into(),
            path: path.into(),
            endpoint: url.into(),
            secrets: vec![SECRET.into()],
            max_in_flight: IN_FLIGHT,
            ..Default::default()
        }),
        prefix: String::new(),
    })
    .await
    .map_err(err)?;
    Ok(())
}

async fn unsubscribe_push(a: &mut AdminClient<Channel>, name: &str) -> Res<()> {
    a.delete_push_subscription(proto::DeletePushSubscriptionRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .map_err(err)?;
    Ok(())
}

async fn send_batch(c: &mut BrokerClient<Channel>, path: &str, n: usize, body: &str) -> Res<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let messages = (0..k)
            .map(|_| proto::SendRequest {
                path: path.into(),
                payload: body.as_bytes().to_vec().into(),
                content_type: "text/plain".into(),
                ..Default::default()
            })
            .collect();
        c.send_batch(proto::SendBatchRequest { messages })
            .await
            .map_err(err)?;
        left -= k;
    }
    Ok(())
}

/// Push `n` messages spread over `endpoints` paths, one subscription and
/// receiver each; the first message of each is awaited before the clock
/// starts, so that the subscription poll is not in the figure.
async fn push_drain(env: &Env, endpoints: usize, n: usize) -> Res<(f64, Vec<(String, f64)>)> {
    let ledger = Ledger::new()?;
    let mut a = admin(env).await?;
    let mut c = channels(&env.leanmqd_addr, 1).await?.remove(0);
    let paths: Vec<String> = (0..endpoints)
        .map(|i| format!("/bench/push{endpoints}x{i}/"))
        .collect();
    for (i, path) in paths.iter().enumerate() {
        let url = receiver(ledger.clone()).await?;
        subscribe_push(&mut a, &format!("bench-{endpoints}-{i}"), path, &url).await?;
        send_batch(&mut c, path, 1, "warm-up").await?;
    }
    ledger
        .wait_posts(endpoints as u64, Duration::from_secs(30))
        .await?;
    let base = ledger.posts.load(Ordering::Relaxed);
    let per = n / endpoints;
    for path in &paths {
        send_batch(&mut c, path, per, "x").await?;
    }
    let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
    let t0 = Instant::now();
    let total = (per * endpoints) as u64;
    ledger
        .wait_posts(base + total, Duration::from_secs(300))
        .await?;
    let d = t0.elapsed();
    let cpu = m.per_op_us(total);
    for i in 0..endpoints {
        unsubscribe_push(&mut a, &format!("bench-{endpoints}-{i}")).await?;
    }
    for path in &paths {
        let q = path.trim_matches('/').replace('/', "_");
        del(env, &[&format!("webhook:{q}")]).await?;
    }
    // The drain timer started after the sends: from a backlog, as Subscribe's.
    Ok((total as f64 / d.as_secs_f64(), cpu))
}

async fn ack(c: &mut BrokerClient<Channel>, receipts: &mut Vec<String>) -> Res<()> {
    c.ack(proto::AckRequest {
        receipts: std::mem::take(receipts),
    })
    .await
    .map_err(err)?;
    Ok(())
}

/// The same messages drained over Subscribe with batched acks.
async fn subscribe_drain(env: &Env, n: usize) -> Res<(f64, Vec<(String, f64)>)> {
    let mut c = channels(&env.leanmqd_addr, 1).await?.remove(0);
    let path = "/bench/pushbase/";
    send_batch(&mut c, path, n, "x").await?;
    let mut s = c
        .subscribe(proto::SubscribeRequest {
            path: path.into(),
            max_in_flight: IN_FLIGHT,
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
    let t0 = Instant::now();
    let (mut got, mut pending) = (0usize, Vec::new());
    while got < n {
        // Ack what was taken as soon as nothing more is ready (or every 50).
        let next = if pending.is_empty() {
            tokio::time::timeout(Duration::from_secs(30), s.next())
                .await
                .map_err(|_| "subscribe drain stalled".to_string())?
        } else {
            match futures::FutureExt::now_or_never(s.next()) {
                Some(next) => next,
                None => {
                    ack(&mut c, &mut pending).await?;
                    continue;
                }
            }
        };
        let d = next.ok_or("subscribe stream ended")?.map_err(err)?;
        got += 1;
        pending.push(d.receipt);
        if pending.len() >= 50 || got >= n {
            ack(&mut c, &mut pending).await?;
        }
    }
    let d = t0.elapsed();
    let cpu = m.per_op_us(n as u64);
    del(env, &["webhook:bench_pushbase"]).await?;
    Ok((n as f64 / d.as_secs_f64(), cpu))
}

/// Send at `rate_hz` for `window`, each payload its send time; returns the
/// (p50, p99) in ms of its arrival by push and by Subscribe.
async fn latencies(env: &Env, rate_hz: u64, window: Duration) -> Res<((f64, f64), (f64, f64))> {
    let ledger = Ledger::new()?;
    let mut a = admin(env).await?;
    let mut c = channels(&env.leanmqd_addr, 1).await?.remove(0);
    let (push_path, sub_path) = ("/bench/pushlat/", "/bench/sublat/");
    let url = receiver(ledger.clone()).await?;
    subscribe_push(&mut a, "bench-latency", push_path, &url).await?;
    send_batch(&mut c, push_path, 1, "warm-up").await?;
    ledger.wait_posts(1, Duration::from_secs(30)).await?;
    let mut s = c
        .subscribe(proto::SubscribeRequest {
            path: sub_path.into(),
            max_in_flight: IN_FLIGHT,
            ..Default::default()
        })
        .await
        .map_err(err)?
        .into_inner();
    let sub_hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).map_err(err)?));
    let seen = Arc::new(AtomicU64::new(0));
    let reader = {
        let (ledger, hist, seen) = (ledger.clone(), sub_hist.clone(), seen.clone());
        let c = c.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = s.next().await {
                let t = std::str::from_utf8(&d.payload)
                    .ok()
                    .and_then(|s| s.strip_prefix('t'))
                    .and_then(|s| s.parse::<u64>().ok());
                if let (Some(t), Ok(mut h)) = (t, hist.lock()) {
                    let _ = h.record(ledger.now_us().saturating_sub(t).max(1));
                }
                // Acked off the read loop, so that an ack's round trip is
                // not in the next delivery's latency.
                let mut c = c.clone();
                tokio::spawn(async move {
                    let _ = c
                        .ack(proto::AckRequest {
                            receipts: vec![d.receipt],
                        })
                        .await;
                });
                seen.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let period = Duration::from_nanos(1_000_000_000 / rate_hz.max(1));
    let mut tick = tokio::time::interval(period);
    let stop = Instant::now() + window;
    let mut sends = futures::stream::FuturesUnordered::new();
    let mut n = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        for path in [push_path, sub_path] {
            let mut c = c.clone();
            let body = format!("t{}", ledger.now_us());
            sends.push(async move {
                c.send(proto::SendRequest {
                    path: path.into(),
                    payload: body.into_bytes().into(),
                    content_type: "text/plain".into(),
                    ..Default::default()
                })
                .await
            });
        }
        n += 1;
        while let Some(Some(r)) = futures::FutureExt::now_or_never(sends.next()) {
            r.map_err(err)?;
        }
    }
    while let Some(r) = sends.next().await {
        r.map_err(err)?;
    }
    ledger.wait_posts(1 + n, Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(format!(
                "subscribe latency: {} of {n} delivered",
                seen.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    reader.abort();
    unsubscribe_push(&mut a, "bench-latency").await?;
    del(env, &["webhook:bench_pushlat", "webhook:bench_sublat"]).await?;
    let q = |h: &Histogram<u64>| {
        (
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
        )
    };
    let push = q(&*ledger.latency.lock().map_err(err)?);
    let sub = q(&*sub_hist.lock().map_err(err)?);
    Ok((push, sub))
}

pub async fn push_delivery(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<()> {
    let n = if mode.short { 5_000 } else { 50_000 };
    let (sub_rate, sub_cpu) = subscribe_drain(env, n).await?;
    rows.push(Row {
        scenario: format!("Subscribe drain, 1 stream, {IN_FLIGHT} in flight, batched Ack, {n} msgs (push's baseline)"),
        value: sub_rate,
        unit: "msg/s",
        baseline_name: "itself".into(),
        baseline: sub_rate,
        ratio: 1.0,
        cpu: sub_cpu,
        target: None,
    });
    for endpoints in [1usize, 10] {
        let (v, cpu) = push_drain(env, endpoints, n).await?;
        rows.push(Row {
            scenario: format!(
                "Push to {endpoints} HTTP endpoint(s), {IN_FLIGHT} in flight each, {n} msgs"
            ),
            value: v,
            unit: "msg/s",
            baseline_name: "the Subscribe drain of the same messages".into(),
            baseline: sub_rate,
            ratio: v / sub_rate,
            cpu,
            target: None,
        });
    }
    let rate = if mode.short { 200 } else { 1000 };
    let ((p50, p99), (s50, s99)) = latencies(env, rate, mode.window).await?;
    for (q, push, sub) in [("p50", p50, s50), ("p99", p99, s99)] {
        rows.push(Row {
            scenario: format!("Send → push POST arrival at {rate}/s, {q}"),
            value: push,
            unit: "ms",
            baseline_name: "Send → Subscribe delivery, same run".into(),
            baseline: sub,
            ratio: sub / push,
            cpu: Vec::new(),
            target: None,
        });
    }
    Ok(())
}
