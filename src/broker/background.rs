//! Work no request drives: appending delayed messages when they fall due,
//! and the retention sweep. Every replica runs both; the scripts are atomic,
//! so replicas never do the same work twice, and nothing is lost when one
//! stops (the schedule lives in Redis).

use std::sync::Arc;
use std::time::Duration;

use super::limits::REGISTRY_SCAN_STEP;
use super::scripts::Due;
use super::{Broker, RetainPolicy};
use crate::shutdown::Drain;

/// Longest the scheduler sleeps between looks at the schedule, so a delayed
/// message is appended within this much of its due time.
const SCHEDULER_TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct Retention {
    pub max_age: Duration,
    pub interval: Duration,
    /// Opt-in cap; loses data.
    pub max_len: Option<u64>,
    /// Empty groups idle this long are destroyed (`--group-idle-expiry`); zero: never.
    pub group_idle_expiry: Duration,
    /// Sample per-queue gauges for /metrics (only when metrics are served).
    pub sample_gauges: bool,
}

/// Start the scheduler, the retention sweep and (when metrics are served)
/// the gauge sampler, tracked by `drain`.
pub fn spawn(broker: Arc<Broker>, retention: Retention, drain: &Drain) {
    drain.spawn(scheduler(broker.clone(), drain.clone()));
    if retention.sample_gauges {
        drain.spawn(gauges(broker.clone(), drain.clone()));
    }
    drain.spawn(sweeper(broker, retention, drain.clone()));
}

/// Sleep `d`; true when the drain started instead.
async fn pause(d: Duration, drain: &Drain) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = drain.draining() => true,
    }
}

async fn scheduler(broker: Arc<Broker>, drain: Drain) {
    loop {
        let wait = match broker.due_queues().await {
            Ok(Due {
                now_ms: now,
                queues,
                next_ms: next,
            }) => {
                for q in &queues {
                    match broker.promote(q).await {
                        Ok(n) if n > 0 => {
                            tracing::debug!(queue = %q, n, "delayed messages appended")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(queue = %q, error = %e, "appending delayed messages failed")
                        }
                    }
                }
                if queues.len() >= broker.due_queues_per_look() {
                    Duration::ZERO
                } else {
                    next.map(|n| Duration::from_millis(n.saturating_sub(now)))
                        .unwrap_or(SCHEDULER_TICK)
                        .min(SCHEDULER_TICK)
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "schedule check failed");
                Duration::from_secs(1)
            }
        };
        if pause(wait, &drain).await {
            return;
        }
    }
}

/// Every `interval`, one retention pass over every queue: the registry is
/// walked in SSCAN steps and each queue's pass is a series of short script
/// calls, so no single Redis call of the sweep grows with the number of
/// queues or groups.
async fn sweeper(broker: Arc<Broker>, r: Retention, drain: Drain) {
    let policy = RetainPolicy {
        max_age: r.max_age,
        max_len: r.max_len,
        group_idle_expiry: r.group_idle_expiry,
    };
    loop {
        if pause(r.interval, &drain).await {
            return;
        }
        let mut cursor = 0;
        loop {
            let (next, queues) = match broker.scan_registry(cursor, REGISTRY_SCAN_STEP).await {
                Ok(step) => step,
                Err(e) => {
                    tracing::debug!(error = %e, "retention: cannot read the registry");
                    break;
                }
            };
            for q in queues {
                if drain.is_draining() {
                    return;
                }
                sweep_one(&broker, &q, &policy).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

/// Schedule repair and one retention pass over `queue`, logged.
async fn sweep_one(broker: &Broker, queue: &str, policy: &RetainPolicy) {
    if let Err(e) = broker.repair_schedule(queue).await {
        tracing::debug!(queue, error = %e, "schedule repair failed");
    }
    match broker.retain(queue, policy).await {
        Ok(done) => {
            if done.trimmed > 0 {
                tracing::debug!(
                    queue,
                    trimmed = done.trimmed,
                    "retention trimmed acked entries"
                );
            }
            if done.expired > 0 {
                tracing::info!(
                    queue,
                    groups = done.expired,
                    "retention removed idle empty groups (--group-idle-expiry)"
                );
            }
            if done.dropped > 0 {
                tracing::warn!(
                    queue,
                    dropped = done.dropped,
                    "--max-len dropped entries, possibly unread: data lost by configuration"
                );
            }
        }
        Err(e) => tracing::warn!(queue, error = %e, "retention pass failed"),
    }
}

/// Per-queue gauges for /metrics, every 15 s (first 1000 queues).
async fn gauges(broker: Arc<Broker>, drain: Drain) {
    loop {
        if let Ok((queues, _)) = broker.list_queues_page(1000, None, &|_| true).await {
            for q in &queues {
                if let Ok(info) = broker.get_queue(&q.queue).await {
                    let pending = info.groups.iter().map(|g| g.pending).sum();
                    let oldest = info
                        .groups
                        .iter()
                        .filter_map(|g| g.oldest_unacked_age_ms)
                        .max()
                        .map(Duration::from_millis);
                    let retrying: i64 = info.groups.iter().map(|g| g.retrying).sum();
                    for g in &info.groups {
                        crate::observe::group_lag(&q.queue, &g.name, g.lag);
                    }
                    crate::observe::queue_gauges(
                        &q.queue,
                        info.length,
                        pending,
                        oldest,
                        info.dead_letters,
                        info.delayed + retrying,
                    );
                }
            }
        }
        if pause(Duration::from_secs(15), &drain).await {
            return;
        }
    }
}
