//! Publish (#18): 8 Publish streams against raw multiplexed XADD of
//! identical entries, in one run.
//!
//! A short warm-up publishes through leanmqd, and one entry it wrote is read
//! back: the baseline XADDs exactly those fields (the same envelope bytes),
//! 8 callers pipelining on multiplexed connections. Then 8 streams, each on
//! its own channel, keep `DEPTH` messages unanswered (under the window) for
//! the measurement window. The figure is messages answered OK per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leanmq_grpc::proto;
use tokio_stream::wrappers::ReceiverStream;

use crate::procs::{CpuMeter, Env};
use crate::scenarios::{channels, del, err, redis_conns, Res, Row};
use crate::Mode;

const STREAMS: usize = 8;
/// Unanswered messages each stream keeps (under the default window, 1000).
const DEPTH: u64 = 512;
/// XADDs per pipelined round trip in the baseline.
const RAW_BATCH: usize = 256;
const PATH: &str = "/bench/publish";
const KEY: &str = "webhook:bench_publish";

fn message() -> proto::SendRequest {
    proto::SendRequest {
        path: PATH.into(),
        payload: bytes::Bytes::from(vec![b'x'; 200]),
        ..Default::default()
    }
}

/// Messages answered OK over `STREAMS` streams in `window`; errors counted.
async fn publish_for(env: &Env, window: Duration) -> Res<(u64, u64, Duration)> {
    let clients = channels(&env.leanmqd_addr, STREAMS).await?;
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let stop = t0 + window;
    let mut tasks = Vec::new();
    for mut c in clients {
        let (ok, bad) = (ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(DEPTH as usize);
            let mut s = c
                .publish(ReceiverStream::new(rx))
                .await
                .map_err(err)?
                .into_inner();
            let (mut sent, mut answered) = (0u64, 0u64);
            loop {
                while sent - answered < DEPTH && Instant::now() < stop {
                    let req = proto::PublishRequest {
                        sequence: sent,
                        message: Some(message()),
                    };
                    tx.send(req).await.map_err(err)?;
                    sent += 1;
                }
                if answered == sent {
                    break;
                }
                match s.message().await.map_err(err)? {
                    Some(r) if r.code == 0 => ok.fetch_add(1, Ordering::Relaxed),
                    Some(_) => bad.fetch_add(1, Ordering::Relaxed),
                    None => return Err("the stream ended early".to_string()),
                };
                answered += 1;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    Ok((
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        t0.elapsed(),
    ))
}

/// An entry's fields, as Redis stores them.
type Fields = Vec<(String, Vec<u8>)>;

/// One entry leanmqd wrote: its fields, to XADD as they are.
async fn written_entry(env: &Env) -> Res<Fields> {
    let mut c = redis_conns(&env.redis_url, 1).await?.remove(0);
    let v: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(KEY)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut c)
        .await
        .map_err(err)?;
    v.into_iter()
        .next()
        .map(|(_, fields)| fields)
        .ok_or_else(|| "leanmqd wrote no entry".to_string())
}

async fn raw_for(
    env: &Env,
    fields: &[(String, Vec<u8>)],
    window: Duration,
) -> Res<(u64, Duration)> {
    let conns = redis_conns(&env.redis_url, 4).await?;
    let ops = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let stop = t0 + window;
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let mut c = conns[i % conns.len()].clone();
        let ops = ops.clone();
        let fields = fields.to_vec();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let mut p = redis::pipe();
                for _ in 0..RAW_BATCH {
                    let cmd = p.cmd("XADD").arg("bench:rawpublish").arg("*");
                    for (k, v) in &fields {
                        cmd.arg(k).arg(v);
                    }
                }
                let r: redis::RedisResult<Vec<String>> = p.query_async(&mut c).await;
                if r.is_ok() {
                    ops.fetch_add(RAW_BATCH as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(err)?;
    }
    Ok((ops.load(Ordering::Relaxed), t0.elapsed()))
}

pub async fn publish(env: &Env, mode: Mode, rows: &mut Vec<Row>) -> Res<Vec<String>> {
    let mut failures = Vec::new();
    publish_for(env, Duration::from_millis(300)).await?;
    let fields = written_entry(env).await?;
    del(env, &[KEY]).await?;
    let (x_ops, x_t) = raw_for(env, &fields, mode.window).await?;
    let raw = x_ops as f64 / x_t.as_secs_f64();
    del(env, &["bench:rawpublish"]).await?;
    let m = CpuMeter::start(&[&env.leanmqd, &env.redis]);
    let (ok, bad, t) = publish_for(env, mode.window).await?;
    let cpu = m.per_op_us(ok);
    if bad > 0 {
        failures.push(format!("publish: {bad} messages answered with an error"));
    }
    let v = ok as f64 / t.as_secs_f64();
    println!(
        "publish: {v:.0} msg/s over {STREAMS} streams; raw XADD of the same entries {raw:.0} msg/s; ratio {:.2}",
        v / raw
    );
    rows.push(Row {
        scenario: format!("Publish, {STREAMS} streams × {DEPTH} unanswered"),
        value: v,
        unit: "msg/s",
        baseline_name: format!("raw multiplexed XADD ×{RAW_BATCH} of the same entry"),
        baseline: raw,
        ratio: v / raw,
        cpu,
        target: None,
    });
    del(env, &[KEY]).await?;
    Ok(failures)
}
