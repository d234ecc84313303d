//! One blocking read for every stream a replica waits on.
//!
//! On a single Redis (or behind Sentinel) the readers of every (queue,
//! group) share one `XREAD BLOCK` that names all the streams they wait on,
//! on one connection: the blocking connections no longer grow with the
//! queues and groups clients choose (a Redis Cluster cannot take streams of
//! several slots in one XREAD, so there each reader keeps its own, see
//! `wait`). A reader registers "wake me when `stream` has an entry after
//! `id`"; the watch task reads from the smallest such id per stream, and
//! wakes exactly the waiters an entry it sees is new to. A registration the
//! running read does not cover cuts it short (`CLIENT UNBLOCK`), so the
//! read is re-issued with the new set.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::Value;
use tokio::sync::Notify;

use super::{Conn, Redis};
use crate::backoff::Pause;
use crate::broker::scripts::{as_array, as_string};

/// Longest single shared read, so the watch re-checks now and then.
const MAX_BLOCK: Duration = Duration::from_secs(5);
/// How often, and how far apart, a registration asks Redis to cut the
/// running read short before leaving it to the watch's next round.
const UNBLOCK_TRIES: u32 = 50;
const UNBLOCK_RETRY: Duration = Duration::from_millis(2);

/// The streams a read covers, each with the id it reads after.
type Snapshot = Vec<(String, (u64, u64))>;

/// One reader waiting.
struct Waiting {
    id: u64,
    after: (u64, u64),
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Vec<Waiting>>,
    next_id: u64,
    /// What the running read covers: stream → the id it reads after.
    covered: HashMap<String, (u64, u64)>,
}

/// The shared watch of one Redis.
#[derive(Default)]
pub(super) struct Watch {
    state: Mutex<State>,
    /// The set of waits changed in a way the running read does not cover.
    changed: Notify,
    /// Bumped each time the watch takes a new snapshot of the waits.
    generation: AtomicU64,
    /// Redis client id of the watch's connection (0: none yet).
    client_id: AtomicI64,
    /// The generation whose read is in flight (0: none), so a registration
    /// asks Redis to cut a read only while there is one to cut.
    reading: AtomicU64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stream id as numbers (`"0"` and malformed ids as 0-0).
pub(super) fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl Watch {
    /// Register a wait; returns its id, its wake-up, and whether the running
    /// read must be cut short to cover it, with the generation seen.
    fn register(&self, stream: &str, after: &str) -> (u64, Arc<Notify>, Option<u64>) {
        let after = parse_id(after);
        let wake = Arc::new(Notify::new());
        let mut st = lock(&self.state);
        st.next_id += 1;
        let id = st.next_id;
        let covered = st.covered.get(stream).is_some_and(|c| *c <= after);
        st.waiting
            .entry(stream.to_string())
            .or_default()
            .push(Waiting {
                id,
                after,
                wake: wake.clone(),
            });
        let gen = self.generation.load(Ordering::Acquire);
        (id, wake, (!covered).then_some(gen))
    }

    fn deregister(&self, stream: &str, id: u64) {
        let mut st = lock(&self.state);
        if let Some(w) = st.waiting.get_mut(stream) {
            w.retain(|w| w.id != id);
            if w.is_empty() {
                st.waiting.remove(stream);
            }
        }
    }

    /// The streams to read and the id to read each after (the smallest id
    /// any waiter of the stream waits after), and the snapshot's generation.
    fn snapshot_gen(&self) -> (u64, Snapshot) {
        let mut st = lock(&self.state);
        let gen = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let set: Vec<(String, (u64, u64))> = st
            .waiting
            .iter()
            .filter_map(|(s, w)| w.iter().map(|w| w.after).min().map(|a| (s.clone(), a)))
            .collect();
        st.covered = set.iter().cloned().collect();
        (gen, set)
    }

    #[cfg(test)]
    fn snapshot(&self) -> Snapshot {
        self.snapshot_gen().1
    }

    /// `stream` has an entry `seen`: wake (and forget) every waiter it is new to.
    fn appended(&self, stream: &str, seen: (u64, u64)) {
        let mut st = lock(&self.state);
        if let Some(w) = st.waiting.get_mut(stream) {
            w.retain(|w| {
                let new = w.after < seen;
                if new {
                    w.wake.notify_one();
                }
                !new
            });
        }
    }

    /// Wake everyone (the read failed: let readers look for themselves).
    fn wake_all(&self) {
        let mut st = lock(&self.state);
        for (_, w) in st.waiting.drain() {
            for w in w {
                w.wake.notify_one();
            }
        }
        st.covered.clear();
    }
}

/// `[[stream, [[id, fields]]], …]`: the first new id of each stream.
fn first_ids(v: &Value) -> Vec<(String, (u64, u64))> {
    let Some(streams) = as_array(v) else {
        return Vec::new();
    };
    streams
        .iter()
        .filter_map(|s| {
            let s = as_array(s)?;
            let name = as_string(s.first()?)?;
            let id = as_string(as_array(as_array(s.get(1)?)?.first()?)?.first()?)?;
            Some((name, parse_id(&id)))
        })
        .collect()
}

impl Redis {
    /// Wait on the shared watch (see the module docs).
    pub(super) async fn wait_shared(
        &self,
        stream: &str,
        after_id: &str,
        block: Duration,
        cut: &Notify,
        stop: impl Future<Output = ()>,
    ) -> super::Waited {
        use super::Waited;
        let (id, wake, uncovered) = self.watch.register(stream, after_id);
        // The cut runs beside the wait, not before it: an entry the new read
        // finds wakes this reader at once, even while the cut still retries.
        let cut_short = async {
            if let Some(gen) = uncovered {
                self.watch.changed.notify_one();
                self.cut_watch(gen).await;
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        let waited = tokio::select! {
            _ = wake.notified() => Waited::Returned,
            never = cut_short => match never {},
            _ = cut.notified() => Waited::Cut,
            _ = tokio::time::sleep(block) => Waited::Returned,
            _ = stop => Waited::Stopped,
        };
        self.watch.deregister(stream, id);
        waited
    }

    /// Cut the running shared read short, until Redis says it was blocked
    /// or the watch has taken a newer snapshot (which covers the caller).
    async fn cut_watch(&self, gen: u64) {
        for _ in 0..UNBLOCK_TRIES {
            if self.watch.generation.load(Ordering::Acquire) != gen {
                return;
            }
            if self.watch.reading.load(Ordering::Acquire) == gen {
                let id = self.watch.client_id.load(Ordering::Acquire);
                // The watch runs only off a Cluster, so no key is needed to route.
                if self.unblock("", id).await {
                    return;
                }
            }
            tokio::time::sleep(UNBLOCK_RETRY).await;
        }
    }

    /// The shared watch's loop: read, wake, repeat, until `stop`. Does
    /// nothing on a Redis Cluster.
    pub async fn run_watch(&self, stop: impl Future<Output = ()>) {
        if self.is_cluster() {
            return;
        }
        tokio::pin!(stop);
        let mut conn: Option<Conn> = None;
        let mut pause = Pause::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (gen, set) = self.watch.snapshot_gen();
            if set.is_empty() {
                tokio::select! {
                    _ = self.watch.changed.notified() => continue,
                    _ = &mut stop => return,
                }
            }
            let Some(mut c) = self.watch_conn(&mut conn).await else {
                self.watch.wake_all();
                tokio::select! {
                    _ = tokio::time::sleep(pause.failed()) => continue,
                    _ = &mut stop => return,
                }
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(MAX_BLOCK.as_millis() as u64)
                .arg("STREAMS");
            for (s, _) in &set {
                cmd.arg(s);
            }
            for (_, (ms, seq)) in &set {
                cmd.arg(format!("{ms}-{seq}"));
            }
            let limit = MAX_BLOCK + self.timeout();
            self.watch.reading.store(gen, Ordering::Release);
            let read = tokio::select! {
                r = tokio::time::timeout(limit, cmd.query_async::<Value>(&mut c)) => r,
                _ = &mut stop => return,
            };
            self.watch.reading.store(0, Ordering::Release);
            match read {
                Ok(Ok(v)) => {
                    pause.succeeded();
                    conn = Some(c);
                    for (stream, seen) in first_ids(&v) {
                        self.watch.appended(&stream, seen);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "shared blocking read failed; reconnecting");
                    self.watch.wake_all();
                }
                Err(_) => {
                    tracing::warn!("shared blocking read timed out; reconnecting");
                    self.watch.wake_all();
                }
            }
        }
    }

    /// The watch's connection, opened (and its client id learnt) if needed.
    async fn watch_conn(&self, conn: &mut Option<Conn>) -> Option<Conn> {
        if let Some(c) = conn.take() {
            return Some(c);
        }
        match self.blocking().await {
            Ok(mut c) => {
                let id: Option<i64> = redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut c)
                    .await
                    .ok();
                self.watch
                    .client_id
                    .store(id.unwrap_or(0), Ordering::Release);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no blocking connection for the shared watch");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_covered_only_by_a_read_from_at_or_before_its_id() {
        let w = Watch::default();
        let (_, _, uncovered) = w.register("s", "5-0");
        assert!(uncovered.is_some(), "nothing is read yet");
        assert_eq!(w.snapshot(), vec![("s".to_string(), (5, 0))]);
        let (_, _, later) = w.register("s", "7-0");
        assert!(
            later.is_none(),
            "a read after 5-0 sees what comes after 7-0"
        );
        let (_, _, earlier) = w.register("s", "3-0");
        assert!(earlier.is_some(), "a read after 5-0 misses 4-0");
    }

    #[test]
    fn an_entry_wakes_exactly_the_waiters_it_is_new_to() {
        use futures::FutureExt;
        let w = Watch::default();
        let (_, a, _) = w.register("s", "5-0");
        let (_, b, _) = w.register("s", "7-0");
        let (_, c, _) = w.register("t", "1-0");
        w.snapshot();
        w.appended("s", (6, 0));
        assert!(
            a.notified().now_or_never().is_some(),
            "6-0 is new to a wait after 5-0"
        );
        assert!(
            b.notified().now_or_never().is_none(),
            "but not to one after 7-0"
        );
        assert!(
            c.notified().now_or_never().is_none(),
            "nor to another stream's"
        );
        let mut set = w.snapshot();
        set.sort();
        assert_eq!(
            set,
            vec![("s".to_string(), (7, 0)), ("t".to_string(), (1, 0))]
        );
    }

    #[test]
    fn a_failed_read_wakes_everyone_and_deregistering_forgets_a_wait() {
        use futures::FutureExt;
        let w = Watch::default();
        let (id, _, _) = w.register("s", "1-0");
        w.deregister("s", id);
        assert!(w.snapshot().is_empty());
        let (_, a, _) = w.register("s", "1-0");
        w.wake_all();
        assert!(a.notified().now_or_never().is_some());
        assert!(w.snapshot().is_empty());
    }

    #[test]
    fn stream_ids_parse_and_order_numerically() {
        assert!(parse_id("10-0") > parse_id("9-99"));
        assert_eq!(parse_id("0"), (0, 0));
        let v = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"3-1".to_vec()),
                Value::Array(vec![]),
            ])]),
        ])]);
        assert_eq!(first_ids(&v), vec![("s".to_string(), (3, 1))]);
        assert!(first_ids(&Value::Nil).is_empty());
    }
}
