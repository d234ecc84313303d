//! The scenarios. Each returns rows: a figure, the baseline it is compared
//! with (measured in the same run), the ratio, CPU µs per message per
//! process, and the target ratio from the issue where there is one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use leanmq_grpc::proto;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

use crate::procs::{leanmqd_bin, rss_mib, CpuMeter, Env, Proc};
use crate::Mode;

pub(crate) type Res<T> = Result<T, String>;

const PAYLOAD: usize = 200;

fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; PAYLOAD])
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One line of the report.
#[derive(Clone)]
pub struct Row {
    pub scenario: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline_name: String,
    pub baseline: f64,
    /// value / baseline (for latencies: baseline / value is "better").
    pub ratio: f64,
    pub cpu: Vec<(String, f64)>,
    /// (target, description) when the issue sets one.
    pub target: Option<(bool, String)>,
}

pub(crate) async fn channels(addr: &str, n: usize) -> Res<Vec<BrokerClient<Channel>>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let ch = Channel::from_shared(addr.to_string())
            .map_err(err)?
            .connect()
            .await
            .map_err(err)?;
        out.push(
            BrokerClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    }
    Ok(out)
}

fn send_req(path: &str) -> proto::SendRequest {
    proto::SendRequest {
        path: path.into(),
        payload: payload(),
        ..Default::default()
    }
}

/// Closed-loop unary Sends: `conc` callers over `clients`, for `window`.
async fn unary_sends(
    clients: &[BrokerClient<Channel>],
    conc: usize,
    window: Duration,
    path: &str,
) -> Res<(u64, Duration)> {
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let stop = t0 + window;
    let mut tasks = Vec::new();
    for i in 0..conc {
        let mut c = clients[i % clients.len()].clone();
        let (ops, errors) = (ops.clone(), errors.clone());
        let req = send_req(path);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                match c.send(req.clone()).await {
                    Ok(_) => ops.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.map_err(err)?;
    }
    if errors.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} sends failed", errors.load(Ordering::Relaxed)));
    }
    Ok((ops.load(Ordering::Relaxed), t0.elapsed()))
}

pub(crate) async fn redis_conns(
    url: &str,
    n: usize,
) -> Res<Vec<redis::aio::MultiplexedConnection>> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(err)?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(err)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        out.push(
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(err)?,
        );
    }
    Ok(out)
}

/// Closed-loop raw XADD (pipelined by multiplexing), `batch` per round trip.
async fn raw_xadds(
    conns: &[redis::aio::MultiplexedConnection],
    conc: usize,
    batch: usize,
    window: Duration,
    key: &str,
) -> Res<(u64, Duration)> {
    let ops = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let stop = t0 + window;
    let mut tasks = Vec::new();
    for i in 0..conc {
        let mut c = conns[i % conns.len()].clone();
        let ops = ops.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let data = vec![b'x'; PAYLOAD];
            while Instant::now() < stop {
                let mut p = redis::pipe();
                for _ in 0..batch {
                    p.cmd("XADD").arg(&key).arg("*").arg("data").arg(&data);
                }
                let r: redis::RedisResult<Vec<String>> = p.query_async(&mut c).await;
                if r.is_ok() {
                    ops.fetch_add(batch as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(err)?;
    }
    Ok((ops.load(Ordering::Relaxed), t0.elapsed()))
}

fn rate(ops: u64, d: Duration) -> f64 {
    ops as f64 / d.as_secs_f64()
}

/// With BENCH_CMDSTATS set, Redis' per-command time for one drain: its stats
/// are reset before (`reset`) and printed after, to see where Redis spends
/// a delivery.
pub(crate) async fn cmdstats(env: &Env, reset: bool) -> Res<()> {
    if std::env::var_os("BENCH_CMDSTATS").is_none() {
        return Ok(());
    }
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    if reset {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut c)
            .await
            .map_err(err)?;
    } else {
        let s: String = redis::cmd("INFO")
            .arg("commandstats")
            .arg("errorstats")
            .query_async(&mut c)
            .await
            .map_err(err)?;
        eprintln!("{s}");
    }
    Ok(())
}

pub(crate) async fn del(env: &Env, keys: &[&str]) -> Res<()> {
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    for k in keys {
        let _: i64 = redis::cmd("DEL")
            .arg(*k)
            .query_async(&mut c)
            .await
            .map_err(err)?;
    }
    Ok(())
}

async fn unary_sweep(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<()> {
    let concs: &[usize] = if mode.short {
        &[10, 200]
    } else {
        &[1, 10, 50, 200, 1000]
    };
    let lq = channels(&env.leanmqd_addr, 4).await?;
    let nq = channels(&env.noop_addr, 4).await?;
    let rc = redis_conns(&env.redis_url, 4).await?;
    for &conc in concs {
        let m = CpuMeter::start(&[&env.noop]);
        let (n_ops, n_t) = unary_sends(&nq, conc, mode.window, "/bench/unary").await?;
        let noop = rate(n_ops, n_t);
        let noop_cpu = m
            .per_op_us(n_ops)
            .into_iter()
            .find(|(n, _)| n == "noop")
            .map(|(_, c)| c)
            .unwrap_or(0.0);
        let (x_ops, x_t) = raw_xadds(&rc, conc, 1, mode.window, "bench:raw").await?;
        let raw = rate(x_ops, x_t);
        del(env, &["bench:raw"]).await?;
        let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
        let (ops, t) = unary_sends(&lq, conc, mode.window, "/bench/unary").await?;
        let cpu = m.per_op_us(ops);
        let v = rate(ops, t);
        let target = (conc == 200).then(|| {
            let server = cpu
                .iter()
                .find(|(n, _)| n == "leanmqd")
                .map(|(_, c)| *c)
                .unwrap_or(f64::MAX);
            (
                v / noop >= 0.9 && server <= 10.0,
                format!(
                    "≥ 0.9× no-op tonic and leanmqd ≤ 10 µs/msg (got {:.2}×, {server:.1} µs)",
                    v / noop
                ),
            )
        });
        rows.push(Row {
            scenario: format!(
                "Send, concurrency {conc}, 4 channels (no-op server: {noop_cpu:.1} µs/req)"
            ),
            value: v,
            unit: "msg/s",
            baseline_name: "no-op tonic server".into(),
            baseline: noop,
            ratio: v / noop,
            cpu: cpu.clone(),
            target,
        });
        rows.push(Row {
            scenario: format!("Send, concurrency {conc} (vs raw XADD)"),
            value: v,
            unit: "msg/s",
            baseline_name: "raw XADD, multiplexed".into(),
            baseline: raw,
            ratio: v / raw,
            cpu,
            target: None,
        });
        del(env, &["webhook:bench_unary"]).await?;
    }
    Ok(())
}

async fn batch_sweep(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<()> {
    let sizes: &[usize] = if mode.short { &[100] } else { &[10, 100, 1000] };
    let lq = channels(&env.leanmqd_addr, 4).await?;
    let rc = redis_conns(&env.redis_url, 4).await?;
    let conc = 8;
    for &n in sizes {
        let (x_ops, x_t) = raw_xadds(&rc, conc, n, mode.window, "bench:rawbatch").await?;
        let raw = rate(x_ops, x_t);
        del(env, &["bench:rawbatch"]).await?;
        let ops = Arc::new(AtomicU64::new(0));
        let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
        let t0 = Instant::now();
        let stop = t0 + mode.window;
        let mut tasks = Vec::new();
        for i in 0..conc {
            let mut c = lq[i % lq.len()].clone();
            let ops = ops.clone();
            let req = proto::SendBatchRequest {
                messages: (0..n).map(|_| send_req("/bench/batch")).collect(),
            };
            tasks.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    if c.send_batch(req.clone()).await.is_ok() {
                        ops.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.map_err(err)?;
        }
        let total = ops.load(Ordering::Relaxed);
        let cpu = m.per_op_us(total);
        let v = rate(total, t0.elapsed());
        let target = (n == 100).then(|| {
            let server = cpu.iter().find(|(p, _)| p == "leanmqd").map(|(_, c)| *c).unwrap_or(f64::MAX);
            (
                v >= 500_000.0 && v / raw >= 0.75 && server <= 1.5,
                format!("≥ 500k msg/s, ≥ 0.75× raw, leanmqd ≤ 1.5 µs/msg (got {v:.0}, {:.2}×, {server:.2} µs)", v / raw),
            )
        });
        rows.push(Row {
            scenario: format!("SendBatch({n}), 8 callers"),
            value: v,
            unit: "msg/s",
            baseline_name: format!("raw pipelined XADD ×{n}"),
            baseline: raw,
            ratio: v / raw,
            cpu,
            target,
        });
        del(env, &["webhook:bench_batch"]).await?;
    }
    Ok(())
}

/// Fill a path with `n` messages through SendBatch.
async fn preload(c: &mut BrokerClient<Channel>, path: &str, n: usize) -> Res<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        c.send_batch(proto::SendBatchRequest {
            messages: (0..k).map(|_| send_req(path)).collect(),
        })
        .await
        .map_err(err)?;
        left -= k;
    }
    Ok(())
}

/// Consume everything on `path` with `subs` Subscribe streams, acking in
/// batches; `nack_every`: nack (retry in 1 ms) each n-th first delivery.
async fn drain_subscribe(
    env: &Env,
    path: &str,
    total: u64,
    subs: usize,
    nack_every: Option<u64>,
) -> Res<(Duration, Vec<(String, f64)>)> {
    let clients = channels(&env.leanmqd_addr, subs.clamp(1, 4)).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..subs {
        let mut c = clients[i % clients.len()].clone();
        let (acked, seen) = (acked.clone(), seen.clone());
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut s = c
                .subscribe(proto::SubscribeRequest {
                    path,
                    max_in_flight: 2000,
                    ack_deadline: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            let mut pending = Vec::with_capacity(200);
            let mut acks = futures::stream::FuturesUnordered::new();
            use futures::StreamExt;
            while acked.load(Ordering::Relaxed) < total {
                let m = tokio::time::timeout(Duration::from_millis(5), s.message()).await;
                let idle = m.is_err();
                if let Ok(m) = m {
                    let Some(m) = m.map_err(err)? else { break };
                    let n = seen.fetch_add(1, Ordering::Relaxed);
                    if let Some(k) = nack_every {
                        if m.attempt == 1 && n % k == 0 {
                            let mut c = c.clone();
                            let r = m.receipt.clone();
                            acks.push(tokio::spawn(async move {
                                c.nack(proto::NackRequest {
                                    receipt: r,
                                    delay: Some(prost_types::Duration {
                                        seconds: 0,
                                        nanos: 1_000_000,
                                    }),
                                    ..Default::default()
                                })
                                .await
                                .map(|_| 0u64)
                                .map_err(err)
                            }));
                            continue;
                        }
                    }
                    pending.push(m.receipt);
                }
                if pending.len() >= 200 || (idle && !pending.is_empty()) {
                    let mut c = c.clone();
                    let batch = std::mem::take(&mut pending);
                    let n = batch.len() as u64;
                    acks.push(tokio::spawn(async move {
                        c.ack(proto::AckRequest { receipts: batch })
                            .await
                            .map(|_| n)
                            .map_err(err)
                    }));
                }
                while let Some(Some(done)) = futures::FutureExt::now_or_never(acks.next()) {
                    acked.fetch_add(done.map_err(err)??, Ordering::Relaxed);
                }
            }
            while let Some(done) = acks.next().await {
                acked.fetch_add(done.map_err(err)??, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let deadline = Duration::from_secs(120);
    for t in tasks {
        tokio::time::timeout(deadline, t)
            .await
            .map_err(|_| "drain timed out".to_string())?
            .map_err(err)??;
    }
    let d = t0.elapsed();
    Ok((d, m.per_op_us(total)))
}

/// Raw XREADGROUP COUNT 100 + XACK pipelined with the next read, 1 reader.
/// Returns its time and Redis' CPU per message.
async fn raw_drain(env: &Env, total: usize) -> Res<(Duration, f64)> {
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    let key = "bench:rawdrain";
    let mut left = total;
    while left > 0 {
        let k = left.min(1000);
        let mut p = redis::pipe();
        for _ in 0..k {
            p.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("data")
                .arg(vec![b'x'; PAYLOAD]);
        }
        let _: Vec<String> = p.query_async(&mut c).await.map_err(err)?;
        left -= k;
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("g")
        .arg("0")
        .query_async(&mut c)
        .await
        .map_err(err)?;
    let m = CpuMeter::start(&[&env.redis]);
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut to_ack: Vec<String> = Vec::new();
    while done < total {
        let mut p = redis::pipe();
        if !to_ack.is_empty() {
            p.cmd("XACK").arg(key).arg("g").arg(&to_ack).ignore();
        }
        p.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(key)
            .arg(">");
        let (r,): (redis::streams::StreamReadReply,) = p.query_async(&mut c).await.map_err(err)?;
        to_ack = r
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|i| i.id))
            .collect();
        done += to_ack.len();
        if to_ack.is_empty() {
            break;
        }
    }
    let _: i64 = redis::cmd("XACK")
        .arg(key)
        .arg("g")
        .arg(&to_ack)
        .query_async(&mut c)
        .await
        .map_err(err)?;
    let d = t0.elapsed();
    let redis_cpu = m
        .per_op_us(total as u64)
        .into_iter()
        .find(|(n, _)| n == "redis")
        .map_or(0.0, |(_, c)| c);
    del(env, &[key]).await?;
    Ok((d, redis_cpu))
}

pub(crate) async fn pel(env: &Env, key: &str, group: &str) -> Res<i64> {
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .query_async(&mut c)
        .await
        .map_err(err)?;
    Ok(match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    })
}

/// Rounds of the delivery scenario, each its raw baseline then leanmqd: a
/// drain is short (a fraction of a second for the baseline), so one round's
/// ratio swings with whatever else the box is doing; the median of several
/// interleaved rounds does not.
const DRAIN_ROUNDS: usize = 3;

async fn delivery_and_ack(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<Vec<String>> {
    let mut failures = Vec::new();
    let n = if mode.short { 50_000 } else { 200_000 };
    let mut c = channels(&env.leanmqd_addr, 1).await?.remove(0);
    // (ratio, leanmqd rate, raw rate, CPU) of each round of the plain drain.
    let mut rounds = Vec::with_capacity(DRAIN_ROUNDS);
    for _ in 0..DRAIN_ROUNDS {
        let (raw, raw_cpu) = raw_drain(env, n).await?;
        let raw_rate = n as f64 / raw.as_secs_f64();
        let (v, cpu) = drain_round(env, &mut c, "/bench/drain", n, None, &mut failures).await?;
        rounds.push((v / raw_rate, v, raw_rate, cpu, raw_cpu));
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let spread = rounds
        .iter()
        .map(|r| format!("{:.2}", r.0))
        .collect::<Vec<_>>()
        .join(" / ");
    let (ratio, v, raw_rate, cpu, raw_cpu) = rounds.swap_remove(DRAIN_ROUNDS / 2);
    let server = cpu
        .iter()
        .find(|(p, _)| p == "leanmqd")
        .map(|(_, c)| *c)
        .unwrap_or(f64::MAX);
    rows.push(Row {
        scenario: format!(
            "Subscribe delivery + batched Ack, 1 subscriber, {n} msgs (median of {DRAIN_ROUNDS} interleaved rounds; ratios {spread})"
        ),
        value: v,
        unit: "msg/s",
        baseline_name: format!(
            "raw XREADGROUP COUNT 100 + pipelined XACK; its Redis CPU {raw_cpu:.2} µs/msg"
        ),
        baseline: raw_rate,
        ratio,
        cpu,
        target: Some((
            ratio >= 0.5 && server <= 3.0,
            format!("≥ 0.5× raw, leanmqd ≤ 3 µs/msg (got {ratio:.2}×, {server:.2} µs)"),
        )),
    });
    let (v, cpu) = drain_round(env, &mut c, "/bench/nack", n, Some(10), &mut failures).await?;
    rows.push(Row {
        scenario: format!("… with 10% nacked once (retry 1 ms), 1 subscriber, {n} msgs"),
        value: v,
        unit: "msg/s",
        baseline_name: "raw XREADGROUP COUNT 100 + pipelined XACK, the median round".into(),
        baseline: raw_rate,
        ratio: v / raw_rate,
        cpu,
        target: None,
    });
    Ok(failures)
}

/// Preload `n` messages on `path`, drain them with one subscriber, and check
/// nothing is left pending. Returns the drain rate and CPU per message.
async fn drain_round(
    env: &Env,
    c: &mut BrokerClient<Channel>,
    path: &str,
    n: usize,
    nack: Option<u64>,
    failures: &mut Vec<String>,
) -> Res<(f64, Vec<(String, f64)>)> {
    preload(c, path, n).await?;
    cmdstats(env, true).await?;
    let (d, cpu) = drain_subscribe(env, path, n as u64, 1, nack).await?;
    cmdstats(env, false).await?;
    let queue = path.trim_start_matches('/').replace('/', "_");
    let left = pel(env, &format!("webhook:{queue}"), &format!("{queue}-group")).await?;
    if left != 0 {
        failures.push(format!(
            "{path}: {left} entries still pending after the drain"
        ));
    }
    del(env, &[&format!("webhook:{queue}")]).await?;
    Ok((n as f64 / d.as_secs_f64(), cpu))
}

async fn ack_throughput(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<()> {
    let n = if mode.short { 20_000 } else { 100_000 };
    let mut cs = channels(&env.leanmqd_addr, 4).await?;
    let mut results = Vec::new();
    for batch in [1usize, 100] {
        let path = format!("/bench/ack{batch}");
        preload(&mut cs[0], &path, n).await?;
        let mut receipts = Vec::with_capacity(n);
        while receipts.len() < n {
            let r = cs[0]
                .receive(proto::ReceiveRequest {
                    path: path.clone(),
                    max_messages: 1000,
                    ack_deadline: Some(prost_types::Duration {
                        seconds: 300,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            receipts.extend(r.deliveries.into_iter().map(|d| d.receipt));
        }
        let chunks: Vec<Vec<String>> = receipts.chunks(batch).map(|c| c.to_vec()).collect();
        let queue = Arc::new(Mutex::new(chunks));
        let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let mut c = cs[i % cs.len()].clone();
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                    let Some(rs) = next else { return };
                    let _ = c.ack(proto::AckRequest { receipts: rs }).await;
                }
            }));
        }
        for t in tasks {
            t.await.map_err(err)?;
        }
        let d = t0.elapsed();
        results.push((batch, n as f64 / d.as_secs_f64(), m.per_op_us(n as u64)));
        let q = path.trim_start_matches('/').replace('/', "_");
        del(env, &[&format!("webhook:{q}")]).await?;
    }
    let one = results[0].1;
    for (batch, v, cpu) in results {
        rows.push(Row {
            scenario: format!("Ack, {batch} receipt(s) per call, 200 callers"),
            value: v,
            unit: "acks/s",
            baseline_name: "Ack of 1 receipt per call".into(),
            baseline: one,
            ratio: v / one,
            cpu,
            target: None,
        });
    }
    Ok(())
}

/// Open-loop end-to-end latency at a fixed rate through leanmqd.
async fn e2e_leanmqd(
    env: &Env,
    rate_hz: u64,
    subs: usize,
    window: Duration,
    path: &str,
) -> Res<(Histogram<u64>, u64, u64)> {
    let clients = channels(&env.leanmqd_addr, 4).await?;
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(err)?,
    ));
    let delivered = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut sub_tasks = Vec::new();
    let mut ready = Vec::new();
    for i in 0..subs {
        let mut c = clients[i % clients.len()].clone();
        let (hist, delivered) = (hist.clone(), delivered.clone());
        let path = path.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        sub_tasks.push(tokio::spawn(async move {
            let mut s = c
                .subscribe(proto::SubscribeRequest {
                    path,
                    max_in_flight: 1000,
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            let _ = tx.send(());
            let mut pending = Vec::new();
            let record = |m: proto::Delivery, pending: &mut Vec<String>| {
                let intended = u64::from_le_bytes(m.payload[..8].try_into().unwrap_or([0; 8]));
                let now = t0.elapsed().as_micros() as u64;
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record(now.saturating_sub(intended).max(1));
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                pending.push(m.receipt);
            };
            loop {
                match tokio::time::timeout(Duration::from_millis(2), s.message()).await {
                    Ok(Ok(Some(m))) => {
                        record(m, &mut pending);
                        // What has already arrived joins this Ack, as the raw
                        // baseline acks each read's batch with one XACK.
                        use futures::FutureExt;
                        while let Some(Ok(Some(m))) = s.message().now_or_never() {
                            record(m, &mut pending);
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
                if !pending.is_empty() {
                    let mut c = c.clone();
                    let rs = std::mem::take(&mut pending);
                    tokio::spawn(async move { c.ack(proto::AckRequest { receipts: rs }).await });
                }
            }
            Ok::<(), String>(())
        }));
    }
    for r in ready {
        let _ = r.await;
    }
    let sent = open_loop(rate_hz, window, t0, |i, intended_us| {
        let mut c = clients[(i as usize) % clients.len()].clone();
        let mut p = vec![b'x'; PAYLOAD];
        p[..8].copy_from_slice(&intended_us.to_le_bytes());
        let req = proto::SendRequest {
            path: path.to_string(),
            payload: bytes::Bytes::from(p),
            ..Default::default()
        };
        async move { c.send(req).await.is_ok() }
    })
    .await;
    // Long enough to drain the backlog of an overloaded run: the check is
    // that nothing is lost, not that it kept up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in sub_tasks {
        t.abort();
    }
    let h = hist
        .lock()
        .map(|h| h.clone())
        .map_err(|_| "histogram lock".to_string())?;
    Ok((h, sent, delivered.load(Ordering::Relaxed)))
}

/// Send at `rate_hz` for `window`, each at its intended time (µs since t0),
/// without waiting for earlier sends (open loop). Returns how many succeeded.
async fn open_loop<F, Fut>(rate_hz: u64, window: Duration, t0: Instant, send: F) -> u64
where
    F: Fn(u64, u64) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = rate_hz * window.as_secs_f64() as u64;
    let ok = Arc::new(AtomicU64::new(0));
    let start_us = t0.elapsed().as_micros() as u64 + 1000;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut i = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while i < total {
        tick.tick().await;
        let now_us = t0.elapsed().as_micros() as u64;
        while i < total {
            let intended = start_us + i * 1_000_000 / rate_hz;
            if intended > now_us {
                break;
            }
            let fut = send(i, intended);
            let ok = ok.clone();
            tasks.push(tokio::spawn(async move {
                if fut.await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }));
            i += 1;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::Relaxed)
}

/// The same open loop straight on Redis: XADD → XREADGROUP BLOCK → XACK.
async fn e2e_raw(
    env: &Env,
    rate_hz: u64,
    subs: usize,
    window: Duration,
) -> Res<(Histogram<u64>, u64, u64)> {
    let key = "bench:e2e";
    let mut admin = redis_conns(&env.redis_url, 1).await?.remove(0);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .map_err(err)?;
    let producer = redis_conns(&env.redis_url, 2).await?;
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(err)?,
    ));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut readers = Vec::new();
    for i in 0..subs {
        let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
        let (hist, delivered, stop) = (hist.clone(), delivered.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r: redis::RedisResult<redis::streams::StreamReadReply> =
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("g")
                        .arg(format!("c{i}"))
                        .arg("COUNT")
                        .arg(100)
                        .arg("BLOCK")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(key)
                        .arg(">")
                        .query_async(&mut c)
                        .await;
                let Ok(r) = r else { continue };
                let mut ids = Vec::new();
                for k in r.keys {
                    for e in k.ids {
                        if let Some(redis::Value::BulkString(b)) = e.map.get("data") {
                            let intended = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
                            let now = t0.elapsed().as_micros() as u64;
                            if let Ok(mut h) = hist.lock() {
                                let _ = h.record(now.saturating_sub(intended).max(1));
                            }
                        }
                        ids.push(e.id);
                    }
                }
                if !ids.is_empty() {
                    delivered.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    let _: redis::RedisResult<i64> = redis::cmd("XACK")
                        .arg(key)
                        .arg("g")
                        .arg(&ids)
                        .query_async(&mut c)
                        .await;
                }
            }
        }));
    }
    let sent = open_loop(rate_hz, window, t0, |i, intended_us| {
        let mut c = producer[(i as usize) % producer.len()].clone();
        let mut p = vec![b'x'; PAYLOAD];
        p[..8].copy_from_slice(&intended_us.to_le_bytes());
        async move {
            let r: redis::RedisResult<String> = redis::cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("data")
                .arg(p)
                .query_async(&mut c)
                .await;
            r.is_ok()
        }
    })
    .await;
    // Long enough to drain the backlog of an overloaded run: the check is
    // that nothing is lost, not that it kept up.
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
    }
    del(env, &[key]).await?;
    let h = hist
        .lock()
        .map(|h| h.clone())
        .map_err(|_| "histogram lock".to_string())?;
    Ok((h, sent, delivered.load(Ordering::Relaxed)))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn end_to_end(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<Vec<String>> {
    let mut failures = Vec::new();
    let runs: &[(u64, usize)] = if mode.short {
        &[(1_000, 10), (10_000, 10)]
    } else {
        &[
            (1_000, 1),
            (1_000, 10),
            (1_000, 100),
            (10_000, 1),
            (10_000, 10),
            (10_000, 100),
            (50_000, 10),
        ]
    };
    let window = if mode.short {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    for (i, &(hz, subs)) in runs.iter().enumerate() {
        let (rh, rs, rd) = e2e_raw(env, hz, subs, window).await?;
        let path = format!("/bench/e2e{i}");
        let (h, s, d) = e2e_leanmqd(env, hz, subs, window, &path).await?;
        let queue = path.trim_start_matches('/').replace('/', "_");
        let left = pel(env, &format!("webhook:{queue}"), &format!("{queue}-group")).await?;
        if d < s {
            failures.push(format!("e2e {hz}/s × {subs}: {s} sent, only {d} delivered"));
        }
        // Acks are sent in the background; give them a moment, bounded.
        let mut left = left;
        let deadline = Instant::now() + Duration::from_secs(10);
        while left > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = pel(env, &format!("webhook:{queue}"), &format!("{queue}-group")).await?;
        }
        if left != 0 {
            failures.push(format!("e2e {hz}/s × {subs}: PEL not empty ({left})"));
        }
        let p99 = h.value_at_quantile(0.99);
        let raw_p99 = rh.value_at_quantile(0.99).max(1);
        let target = (hz == 10_000 && subs == 10).then(|| {
            let p999 = h.value_at_quantile(0.999);
            (
                p99 as f64 <= 2.0 * raw_p99 as f64 && p999 < 3_000,
                format!(
                    "p99 ≤ 2× raw and p99.9 < 3 ms (got {:.2}×, p99.9 {:.2} ms)",
                    p99 as f64 / raw_p99 as f64,
                    ms(p999)
                ),
            )
        });
        rows.push(Row {
            scenario: format!(
                "End-to-end {hz}/s, {subs} subscriber(s): p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.2} ms (raw p50 {:.2} / p99 {:.2} / p99.9 {:.2}); sent {s} delivered {d} (raw {rs}/{rd})",
                ms(h.value_at_quantile(0.5)),
                ms(p99),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                ms(rh.value_at_quantile(0.5)),
                ms(raw_p99),
                ms(rh.value_at_quantile(0.999)),
            ),
            value: ms(p99),
            unit: "ms p99",
            baseline_name: "raw XADD→XREADGROUP BLOCK→XACK p99".into(),
            baseline: ms(raw_p99),
            ratio: p99 as f64 / raw_p99 as f64,
            cpu: Vec::new(),
            target,
        });
        del(env, &[&format!("webhook:{queue}")]).await?;
    }
    Ok(failures)
}

async fn redis_info(env: &Env, field: &str) -> Res<f64> {
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    let info: String = redis::cmd("INFO").query_async(&mut c).await.map_err(err)?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("INFO has no {field}"))
}

async fn idle_subscribers(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<Vec<String>> {
    let counts: &[usize] = if mode.short {
        &[1_000]
    } else {
        &[1_000, 10_000]
    };
    let mut failures = Vec::new();
    for &n in counts {
        let pid = env.leanmqd.pid();
        let rss0 = rss_mib(pid);
        let clients0 = redis_info(env, "connected_clients").await?;
        let conns = channels(&env.leanmqd_addr, n.div_ceil(500)).await?;
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = conns[i % conns.len()].clone();
            let s = c
                .subscribe(proto::SubscribeRequest {
                    path: "/bench/idle".into(),
                    max_in_flight: 10,
                    ..Default::default()
                })
                .await
                .map_err(err)?
                .into_inner();
            streams.push(s);
        }
        let clients1 = redis_info(env, "connected_clients").await?;
        let mem = redis_info(env, "used_memory").await? / (1024.0 * 1024.0);
        let cpu0 = crate::procs::cpu_secs(pid);
        let idle = Duration::from_secs(if mode.short { 3 } else { 5 });
        tokio::time::sleep(idle).await;
        let idle_pct = (crate::procs::cpu_secs(pid) - cpu0) / idle.as_secs_f64() * 100.0;
        let rss1 = rss_mib(pid);
        let extra_clients = clients1 - clients0;
        if extra_clients > 8.0 {
            failures.push(format!(
                "{n} idle subscribers opened {extra_clients} Redis connections"
            ));
        }
        rows.push(Row {
            scenario: format!(
                "{n} idle Subscribe streams on one path: leanmqd RSS {rss0:.0}→{rss1:.0} MiB, Redis clients {clients0}→{clients1}, Redis used_memory {mem:.1} MiB, leanmqd idle CPU {idle_pct:.2}%"
            ),
            value: rss1,
            unit: "MiB RSS",
            baseline_name: "before the streams".into(),
            baseline: rss0,
            ratio: rss1 / rss0.max(1.0),
            cpu: Vec::new(),
            target: (n == 10_000 || mode.short).then(|| {
                (
                    rss1 < 200.0 && extra_clients <= 8.0 && idle_pct < 1.0,
                    format!("RSS < 200 MiB, constant Redis connections, idle CPU < 1% (got {rss1:.0} MiB, +{extra_clients} clients, {idle_pct:.2}%)"),
                )
            }),
        });
        drop(streams);
    }
    Ok(failures)
}

fn report(rows: &[Row], out: &Path) -> Res<()> {
    std::fs::create_dir_all(out).map_err(err)?;
    let mut md = String::from("| scenario | leanmqd | baseline | ratio | CPU µs/msg (leanmqd / redis / client) | target |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let cpu: HashMap<&str, f64> = r.cpu.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let cpu = if r.cpu.is_empty() {
            String::from("–")
        } else {
            format!(
                "{:.2} / {:.2} / {:.2}",
                cpu.get("leanmqd").copied().unwrap_or(0.0),
                cpu.get("redis").copied().unwrap_or(0.0),
                cpu.get("client").copied().unwrap_or(0.0)
            )
        };
        let target = match &r.target {
            Some((true, d)) => format!("met: {d}"),
            Some((false, d)) => format!("**missed**: {d}"),
            None => String::new(),
        };
        md.push_str(&format!(
            "| {} | {:.2} {} | {:.2} ({}) | {:.2}× | {} | {} |\n",
            r.scenario, r.value, r.unit, r.baseline, r.baseline_name, r.ratio, cpu, target
        ));
    }
    println!("\n{md}");
    std::fs::write(out.join("results.md"), &md).map_err(err)?;
    // A bar chart of the ratios.
    let h = 28 * rows.len() + 40;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='900' height='{h}' font-family='sans-serif' font-size='12'>\n<text x='10' y='20' font-weight='bold'>leanmqd / baseline (same run)</text>\n<line x1='520' y1='30' x2='520' y2='{}' stroke='#888' stroke-dasharray='4'/>\n<text x='508' y='{}' fill='#888'>1×</text>\n",
        h - 5,
        h - 5
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 40 + i * 28;
        let w = (r.ratio.min(3.0) * 200.0).max(1.0);
        let color = match &r.target {
            Some((true, _)) => "#2a9d8f",
            Some((false, _)) => "#e76f51",
            None => "#457b9d",
        };
        let label: String = r.scenario.chars().take(60).collect();
        svg.push_str(&format!(
            "<text x='10' y='{}'>{}</text><rect x='320' y='{}' width='{w:.0}' height='18' fill='{color}'/><text x='{:.0}' y='{}'>{:.2}×</text>\n",
            y + 13,
            label.replace('&', "&amp;").replace('<', "&lt;"),
            y,
            325.0 + w,
            y + 13,
            r.ratio
        ));
    }
    svg.push_str("</svg>\n");
    std::fs::write(out.join("ratios.svg"), svg).map_err(err)?;
    println!(
        "wrote {}/results.md and {}/ratios.svg",
        out.display(),
        out.display()
    );
    Ok(())
}

pub async fn run_all(mode: Mode, out: &Path) -> Res<Vec<String>> {
    let env = Env::start(&leanmqd_bin())?;
    let _keep: &Proc = &env.redis;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let want = |name: &str| mode.only.is_empty() || mode.only.iter().any(|o| o == name);
    if want("idle") {
        // First, on a fresh leanmqd, so its memory figure is not that of earlier scenarios.
        println!("== idle subscribers");
        failures.extend(idle_subscribers(&env, mode, &mut rows).await?);
    }
    if want("unary") {
        println!("== unary Send");
        unary_sweep(&env, mode, &mut rows).await?;
    }
    if want("batch") {
        println!("== SendBatch");
        batch_sweep(&env, mode, &mut rows).await?;
    }
    if want("publish") {
        println!("== Publish streams");
        failures.extend(crate::publish::publish(&env, mode, &mut rows).await?);
    }
    if want("drain") {
        println!("== delivery + ack");
        failures.extend(delivery_and_ack(&env, mode, &mut rows).await?);
    }
    if want("ordered") {
        println!("== ordered delivery + ack");
        failures.extend(crate::ordered::ordered_delivery(&env, mode, &mut rows).await?);
    }
    if want("push") {
        println!("== push delivery");
        crate::push::push_delivery(&env, mode, &mut rows).await?;
    }
    if want("ack") {
        println!("== Ack throughput");
        ack_throughput(&env, mode, &mut rows).await?;
    }
    if want("e2e") {
        println!("== end-to-end latency");
        failures.extend(end_to_end(&env, mode, &mut rows).await?);
    }
    report(&rows, out)?;
    Ok(failures)
}
