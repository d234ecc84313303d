//! Work no request drives: appending delayed messages when they fall due,
//! and the retention sweep. Every replica runs both; the scripts are atomic,
//! so replicas never do the same work twice, and nothing is lost when one
//! stops (the schedule lives in Redis).

use std::sync::Arc;
use std::time::Duration;

use super::scripts::Due;
use super::Broker;
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

async fn sweeper(broker: Arc<Broker>, r: Retention, drain: Drain) {
    loop {
        if pause(r.interval, &drain).await {
            return;
        }
        let queues = match broker.list_queues().await {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, "retention: cannot list queues");
                continue;
            }
        };
        for q in queues {
            if let Err(e) = broker.repair_schedule(&q.queue).await {
                tracing::debug!(queue = %q.queue, error = %e, "schedule repair failed");
            }
            match broker
                .retain(
                    &q.queue,
                    r.max_age.as_millis() as u64,
                    r.max_len.unwrap_or(0),
                )
                .await
            {
                Ok((trimmed, dropped)) => {
                    if trimmed > 0 {
                        tracing::debug!(queue = %q.queue, trimmed, "retention trimmed acked entries");
                    }
                    if dropped > 0 {
                        tracing::warn!(
                            queue = %q.queue, dropped,
                            "--max-len dropped entries, possibly unread: data lost by configuration"
                        );
                    }
                }
                Err(e) => tracing::warn!(queue = %q.queue, error = %e, "retention pass failed"),
            }
        }
    }
}

/// Per-queue gauges for /metrics, every 15 s (first 1000 queues).
async fn gauges(broker: Arc<Broker>, drain: Drain) {
    loop {
        if let Ok(queues) = broker.list_queues().await {
            for q in queues.iter().take(1000) {
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
