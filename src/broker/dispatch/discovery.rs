//! Pattern discovery: one task per replica learns which queues exist (and
//! the paths recorded for them), and every pattern subscription of the
//! replica matches against what it learned, so idle pattern subscriptions
//! cost Redis nothing of their own.
//!
//! Each [`LOOK`] the task asks Redis one thing, the registry's size
//! (`SCARD`). Only when that changed, or [`FULL_WALK`] has passed (a queue
//! deleted and another created in between leave the size alone), does it
//! walk the registry in SSCAN steps, reading the paths of queues it had not
//! seen. With no pattern subscription it asks nothing at all.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::broker::limits::REGISTRY_SCAN_STEP;
use crate::broker::Broker;
use crate::error::Result;
use crate::routing::{Pattern, Route};
use crate::shutdown::Drain;

/// How often the task looks at the registry's size.
pub const LOOK: Duration = Duration::from_secs(1);
/// Longest time between two full walks.
const FULL_WALK: Duration = Duration::from_secs(60);
/// Queues whose paths one pipeline reads.
const PATHS_PER_PIPELINE: usize = 100;

/// A queue and the paths recorded for it.
#[derive(Debug, Clone)]
pub struct Found {
    pub queue: String,
    pub paths: Vec<String>,
}

impl Found {
    /// The first of its paths `pattern` matches (a LeanMQ queue, with no
    /// recorded path, as "/" + name with "_" read as "/").
    pub fn route(&self, pattern: &Pattern) -> Option<Route> {
        let guessed;
        let candidates: &[String] = if self.paths.is_empty() {
            guessed = [format!("/{}", self.queue.replace('_', "/"))];
            &guessed
        } else {
            &self.paths
        };
        candidates
            .iter()
            .find(|p| pattern.matches(p))
            .map(|p| Route {
                path: p.clone(),
                queue: self.queue.clone(),
            })
    }
}

/// What the task knows. `queues` only grows within one `epoch`; a walk
/// that finds a queue gone starts a new epoch, and a watcher then looks at
/// everything again.
#[derive(Debug, Default)]
pub struct Known {
    pub epoch: u64,
    pub queues: Vec<Found>,
}

/// The replica's discovery task and what it knows.
pub struct Discovery {
    known: watch::Sender<Arc<Known>>,
}

impl Discovery {
    /// Start the task, tracked by `drain`.
    pub fn start(broker: Arc<Broker>, drain: &Drain) -> Arc<Discovery> {
        let (tx, _) = watch::channel(Arc::new(Known::default()));
        let d = Arc::new(Discovery { known: tx });
        drain.spawn(run(broker, d.clone(), drain.clone()));
        d
    }

    /// What is known now, and from then on.
    pub fn watch(&self) -> watch::Receiver<Arc<Known>> {
        self.known.subscribe()
    }
}

async fn run(broker: Arc<Broker>, d: Arc<Discovery>, drain: Drain) {
    let mut size = None;
    let mut walked: Option<Instant> = None;
    loop {
        if d.known.receiver_count() > 0 {
            if let Err(e) = look(&broker, &d, &mut size, &mut walked).await {
                tracing::debug!(error = %e, "pattern discovery: cannot read the registry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK) => {}
            _ = drain.draining() => return,
        }
    }
}

/// One look: the registry's size, and a walk when it moved.
async fn look(
    broker: &Broker,
    d: &Discovery,
    size: &mut Option<u64>,
    walked: &mut Option<Instant>,
) -> Result<()> {
    let now = broker.registry_size().await?;
    let stale = walked.is_none_or(|at| at.elapsed() >= FULL_WALK);
    if *size == Some(now) && !stale {
        return Ok(());
    }
    let mut names = HashSet::new();
    let mut cursor = 0;
    loop {
        let (next, step) = broker.scan_registry(cursor, REGISTRY_SCAN_STEP).await?;
        names.extend(step);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let old = d.known.borrow().clone();
    let kept: Vec<Found> = old
        .queues
        .iter()
        .filter(|f| names.contains(&f.queue))
        .cloned()
        .collect();
    let gone = kept.len() < old.queues.len();
    let had: HashSet<&str> = kept.iter().map(|f| f.queue.as_str()).collect();
    let mut fresh: Vec<String> = names
        .iter()
        .filter(|n| !had.contains(n.as_str()))
        .cloned()
        .collect();
    fresh.sort();
    let mut queues = kept;
    for chunk in fresh.chunks(PATHS_PER_PIPELINE) {
        queues.extend(paths(broker, chunk).await?);
    }
    *size = Some(now);
    *walked = Some(Instant::now());
    if gone || queues.len() > old.queues.len() {
        d.known.send_replace(Arc::new(Known {
            epoch: old.epoch + u64::from(gone),
            queues,
        }));
    }
    Ok(())
}

/// The paths of `queues` a pattern may match (`Broker::pattern_paths`).
async fn paths(broker: &Broker, queues: &[String]) -> Result<Vec<Found>> {
    let all = broker.pattern_paths(queues).await?;
    Ok(queues
        .iter()
        .zip(all)
        .map(|(q, paths)| Found {
            queue: q.clone(),
            paths,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_matches_by_its_paths_or_by_its_name_without_any() {
        let p = Pattern::parse("/order/*")
            .expect("parses")
            .expect("a pattern");
        let recorded = Found {
            queue: "order_eu".into(),
            paths: vec!["/order/eu".into()],
        };
        assert_eq!(recorded.route(&p).map(|r| r.path), Some("/order/eu".into()));
        let leanmq = Found {
            queue: "order_us".into(),
            paths: vec![],
        };
        assert_eq!(leanmq.route(&p).map(|r| r.queue), Some("order_us".into()));
        let other = Found {
            queue: "order_us_x".into(),
            paths: vec!["/order-us/x".into()],
        };
        assert!(other.route(&p).is_none());
    }
}
