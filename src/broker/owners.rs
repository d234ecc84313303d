//! Which path owns a queue (`{q}:owner`, issue #14 finding 10), as this
//! replica last saw it.
//!
//! The owner is written once, by the script that first gives a queue a
//! path, and removed only by DeleteQueue; so a cached owner goes stale only
//! when the queue is deleted and re-created by another spelling. This
//! replica forgets its entry when it deletes the queue itself; another
//! replica's deletion is seen within [`OWNER_CACHE_TTL`]. The cache holds
//! at most [`OWNER_CACHE_ENTRIES`] queues, and only queues that exist
//! (filled after a successful write or a read of the key), so a flood of
//! client-chosen names cannot grow it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::Broker;
use crate::error::Result;

/// How long a seen owner is trusted without asking Redis again.
pub const OWNER_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most queues whose owner one broker remembers.
pub const OWNER_CACHE_ENTRIES: usize = 4096;

/// Queue name → (owner path, when seen).
#[derive(Default)]
pub struct Owners {
    seen: RwLock<HashMap<String, (String, Instant)>>,
}

impl Owners {
    /// The owner of `queue`, if seen within the TTL.
    pub fn get(&self, queue: &str) -> Option<String> {
        let seen = self.seen.read().ok()?;
        let (owner, at) = seen.get(queue)?;
        (at.elapsed() < OWNER_CACHE_TTL).then(|| owner.clone())
    }

    /// Remember that `owner` owns `queue`.
    pub fn put(&self, queue: &str, owner: &str) {
        let Ok(mut seen) = self.seen.write() else {
            return;
        };
        if seen.len() >= OWNER_CACHE_ENTRIES && !seen.contains_key(queue) {
            seen.retain(|_, (_, at)| at.elapsed() < OWNER_CACHE_TTL);
            if seen.len() >= OWNER_CACHE_ENTRIES {
                seen.clear();
            }
        }
        seen.insert(queue.to_string(), (owner.to_string(), Instant::now()));
    }

    /// Forget `queue` (it was deleted).
    pub fn forget(&self, queue: &str) {
        if let Ok(mut seen) = self.seen.write() {
            seen.remove(queue);
        }
    }
}

impl Broker {
    /// The path that owns `queue`, or `None` when it has no recorded owner
    /// (made by LeanMQ, or by leanmqd before owners were recorded, or only
    /// ever addressed by name).
    pub async fn owner(&self, queue: &str) -> Result<Option<String>> {
        if let Some(o) = self.owners.get(queue) {
            return Ok(Some(o));
        }
        let k = self.keys(queue);
        let owner: Option<String> = self.query(::redis::cmd("GET").arg(&k.owner)).await?;
        if let Some(o) = &owner {
            self.owners.put(queue, o);
        }
        Ok(owner)
    }
}

impl Broker {
    /// The paths a pattern subscription may deliver each of `queues`
    /// through: its owner's alone when it has one (so a pattern matching
    /// only another spelling does not match it), else every recorded path;
    /// every recorded path with `--allow-colliding-paths`.
    pub async fn pattern_paths(&self, queues: &[String]) -> Result<Vec<Vec<String>>> {
        let all = self.recorded_paths(queues).await?;
        if self.settings.allow_colliding_paths {
            return Ok(all);
        }
        let mut p = ::redis::pipe();
        for q in queues {
            p.cmd("GET").arg(&self.keys(q).owner);
        }
        let owners: Vec<Option<String>> = self.query_pipe(&p).await?;
        Ok(all
            .into_iter()
            .zip(owners)
            .map(|(paths, owner)| match owner {
                Some(o) => vec![o],
                None => paths,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_forgets_and_stays_bounded() {
        let o = Owners::default();
        o.put("order_status", "/order/status");
        assert_eq!(o.get("order_status").as_deref(), Some("/order/status"));
        o.forget("order_status");
        assert_eq!(o.get("order_status"), None);
        for i in 0..OWNER_CACHE_ENTRIES + 10 {
            o.put(&format!("q{i}"), "/p");
        }
        let n = o.seen.read().map(|s| s.len()).unwrap_or(usize::MAX);
        assert!(n <= OWNER_CACHE_ENTRIES, "{n}");
    }
}
