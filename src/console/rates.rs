//! Send, ack and dead-letter rates, sampled in the process.
//!
//! Every [`INTERVAL`] the sampler copies the running per-queue totals of
//! [`crate::observe::tally`] and keeps [`WINDOW`] of them per queue (90
//! samples of three counters: about 2 KiB a queue, for at most
//! [`crate::observe::tally::MAX_QUEUES`] queues). The figures are this
//! replica's: behind a load balancer each leanmqd shows its own share.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::observe::tally::{self, Totals};

/// How often totals are sampled.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How far back the chart goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The span the tables' rates average over.
pub const RATE_SPAN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    totals: Totals,
}

/// One point of the chart: rates per second between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds before now, of the interval's end.
    pub ago: f64,
    pub sent: f64,
    pub acked: f64,
    pub dead_lettered: f64,
}

/// The sampled history.
pub struct Rates {
    started: Instant,
    history: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Default for Rates {
    fn default() -> Self {
        Self::new()
    }
}

fn per_sec(now: u64, then: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        now.saturating_sub(then) as f64 / secs
    }
}

impl Rates {
    pub fn new() -> Self {
        Rates {
            started: Instant::now(),
            history: Mutex::new(HashMap::new()),
        }
    }

    /// Sample now and every [`INTERVAL`] until the drain.
    pub fn spawn(self: Arc<Self>, drain: &crate::shutdown::Drain) {
        let stop = drain.clone();
        drain.spawn(async move {
            loop {
                self.sample();
                tokio::select! {
                    _ = tokio::time::sleep(INTERVAL) => {}
                    _ = stop.draining() => return,
                }
            }
        });
    }

    /// Take one sample of every tallied queue.
    pub fn sample(&self) {
        let now = Instant::now();
        let snap = tally::snapshot();
        let Ok(mut h) = self.history.lock() else {
            return;
        };
        for (queue, totals) in snap {
            let q = h.entry(queue).or_default();
            q.push_back(Sample { at: now, totals });
            while q
                .front()
                .is_some_and(|s| now.duration_since(s.at) > WINDOW + INTERVAL)
            {
                q.pop_front();
            }
        }
    }

    /// (send/s, ack/s) of every tallied queue, over the last minute (or
    /// since the console started, when that is shorter).
    pub fn current(&self) -> HashMap<String, (f64, f64)> {
        let now = Instant::now();
        let live = tally::snapshot();
        let Ok(h) = self.history.lock() else {
            return HashMap::new();
        };
        live.into_iter()
            .map(|(queue, cur)| {
                // The oldest sample within the span; with none yet, the
                // console's start (when the tally began at zero).
                let base = h.get(&queue).and_then(|q| {
                    q.iter()
                        .find(|s| now.duration_since(s.at) <= RATE_SPAN + INTERVAL / 2)
                        .copied()
                });
                let (at, then) = match base {
                    Some(s) => (s.at, s.totals),
                    None => (self.started, Totals::default()),
                };
                let secs = now.duration_since(at).as_secs_f64();
                let r = (
                    per_sec(cur.sent, then.sent, secs),
                    per_sec(cur.acked, then.acked, secs),
                );
                (queue, r)
            })
            .collect()
    }

    /// The chart's points for one queue, oldest first: one per sampling
    /// interval, and a last one up to now.
    pub fn series(&self, queue: &str) -> Vec<Point> {
        let now = Instant::now();
        let live = tally::snapshot().get(queue).copied();
        let Ok(h) = self.history.lock() else {
            return Vec::new();
        };
        let mut samples: Vec<Sample> = h
            .get(queue)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default();
        let settled = samples
            .last()
            .is_none_or(|s| now.duration_since(s.at) >= Duration::from_secs(1));
        if let (Some(t), true) = (live, settled) {
            samples.push(Sample { at: now, totals: t });
        }
        samples
            .windows(2)
            .filter(|w| now.duration_since(w[0].at) <= WINDOW)
            .map(|w| {
                let secs = w[1].at.duration_since(w[0].at).as_secs_f64();
                Point {
                    ago: now.duration_since(w[1].at).as_secs_f64(),
                    sent: per_sec(w[1].totals.sent, w[0].totals.sent, secs),
                    acked: per_sec(w[1].totals.acked, w[0].totals.acked, secs),
                    dead_lettered: per_sec(
                        w[1].totals.dead_lettered,
                        w[0].totals.dead_lettered,
                        secs,
                    ),
                }
            })
            .filter(|p| p.ago.is_finite())
            .collect()
    }
}
