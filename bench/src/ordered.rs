//! Ordered delivery + ack (#19): the same drain with 1, 100 and 10,000
//! ordering keys against the same messages without keys, in one run.
//!
//! Every round preloads `n` messages spread round-robin over the keys (or
//! no key), then drains them with 4 competing Subscribe streams that ack as
//! soon as nothing more is ready (or every 200). Only a key's head is ever
//! leased, so at most one message per key is in flight: with one key the
//! drain is a chain of ack → lease round trips; with 100 keys up to 100 ride
//! together. The drain also checks what it measures: each key's messages
//! arrive in send order, and nothing is left pending or waiting afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use leanmq_grpc::proto;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

use crate::procs::{CpuMeter, Env};
use crate::scenarios::{channels, cmdstats, del, err, pel, redis_conns, Res, Row};
use crate::Mode;

/// Competing subscribers per drain.
const SUBSCRIBERS: usize = 4;

/// Send `n` messages to `path`, message i with key `k{i % keys}` (no key
/// when `keys` is 0) and its sequence number as the payload.
async fn preload_keyed(
    c: &mut BrokerClient<Channel>,
    path: &str,
    n: usize,
    keys: usize,
) -> Res<()> {
    let mut i = 0usize;
    while i < n {
        let k = (n - i).min(1000);
        let messages = (i..i + k)
            .map(|j| proto::SendRequest {
                path: path.into(),
                payload: format!("{j:0>180}").into_bytes().into(),
                ordering_key: if keys == 0 {
                    String::new()
                } else {
                    format!("k{}", j % keys)
                },
                ..Default::default()
            })
            .collect();
        c.send_batch(proto::SendBatchRequest { messages })
            .await
            .map_err(err)?;
        i += k;
    }
    Ok(())
}

/// What a drain saw: per key, the last sequence number delivered, and how
/// many deliveries came out of order.
#[derive(Default)]
struct Seen {
    last: HashMap<String, u64>,
    out_of_order: u64,
}

/// Drain `total` messages from `path` with [`SUBSCRIBERS`] streams.
async fn drain(env: &Env, path: &str, total: u64) -> Res<(Duration, Vec<(String, f64)>, u64)> {
    let clients = channels(&env.leanmqd_addr, 2).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
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
            while acked.load(Ordering::Relaxed) < total {
                // Take what is ready; wait (briefly) only when there is nothing to ack.
                let next = if pending.is_empty() {
                    tokio::time::timeout(Duration::from_millis(5), s.message())
                        .await
                        .ok()
                } else {
                    futures::FutureExt::now_or_never(s.message())
                };
                if let Some(m) = next {
                    let Some(m) = m.map_err(err)? else { break };
                    let seq: u64 = std::str::from_utf8(&m.payload)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or("a payload that is not a sequence number")?;
                    if !m.ordering_key.is_empty() {
                        let mut s = seen.lock().map_err(err)?;
                        let last = s.last.insert(m.ordering_key.clone(), seq);
                        if last.is_some_and(|l| l >= seq) {
                            s.out_of_order += 1;
                        }
                    }
                    pending.push(m.receipt);
                    if pending.len() < 200 {
                        continue;
                    }
                }
                if !pending.is_empty() {
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
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t)
            .await
            .map_err(|_| "ordered drain timed out".to_string())?
            .map_err(err)??;
    }
    let d = t0.elapsed();
    let out_of_order = seen.lock().map_err(err)?.out_of_order;
    Ok((d, m.per_op_us(total), out_of_order))
}

/// One drain of `n` messages over `keys` keys (0: unordered) on a fresh
/// path; checks order and that nothing is left. Returns msg/s and CPU.
async fn round(
    env: &Env,
    c: &mut BrokerClient<Channel>,
    keys: usize,
    n: usize,
    failures: &mut Vec<String>,
) -> Res<(f64, Vec<(String, f64)>)> {
    let path = format!("/bench/ordered{keys}/");
    let queue = format!("bench_ordered{keys}");
    let (stream, group) = (format!("webhook:{queue}"), format!("{queue}-group"));
    let order = format!("{stream}:order:{group}");
    preload_keyed(c, &path, n, keys).await?;
    cmdstats(env, true).await?;
    let (d, cpu, out_of_order) = drain(env, &path, n as u64).await?;
    cmdstats(env, false).await?;
    if out_of_order != 0 {
        failures.push(format!(
            "{path}: {out_of_order} deliveries out of key order"
        ));
    }
    let left = pel(env, &stream, &group).await?;
    let mut r = redis_conns(&env.redis_url, 1).await?.remove(0);
    let waiting: i64 = redis::cmd("ZCARD")
        .arg(&order)
        .query_async(&mut r)
        .await
        .map_err(err)?;
    if left != 0 || waiting != 0 {
        failures.push(format!(
            "{path}: {left} pending and {waiting} keyed entries unsettled after the drain"
        ));
    }
    del(env, &[&stream, &order]).await?;
    Ok((n as f64 / d.as_secs_f64(), cpu))
}

pub async fn ordered_delivery(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<Vec<String>> {
    let mut failures = Vec::new();
    let n = if mode.short { 20_000 } else { 100_000 };
    let mut c = channels(&env.leanmqd_addr, 1).await?.remove(0);
    let (base, _) = round(env, &mut c, 0, n, &mut failures).await?;
    // One key is a chain of single round trips: fewer messages keep it short.
    for (keys, n) in [(1usize, n / 10), (100, n), (10_000, n)] {
        let (v, cpu) = round(env, &mut c, keys, n, &mut failures).await?;
        let ratio = v / base;
        rows.push(Row {
            scenario: format!(
                "Ordered delivery + Ack, {keys} key(s), {SUBSCRIBERS} subscribers, {n} msgs"
            ),
            value: v,
            unit: "msg/s",
            baseline_name: format!("the same drain without ordering keys, {n} msgs"),
            baseline: base,
            ratio,
            cpu,
            target: (keys == 100).then(|| {
                (
                    ratio >= 0.5,
                    format!("≥ 0.5× unordered with 100 keys (got {ratio:.2}×)"),
                )
            }),
        });
    }
    Ok(failures)
}
