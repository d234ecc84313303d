//! Long-poll budgets. A Receive that waits (`wait` > 0) may sit idle for
//! up to a minute, so counting it among `--max-concurrent-rpcs` let a flood
//! of waits shed every other client's Sends and Acks. Waits pass by that
//! limit and take a place here instead: at most
//! `--max-long-polls-per-connection` on one client connection and
//! `--max-long-polls-per-token` per bearer token (while auth is off every
//! caller is the one anonymous token, so that is the replica's total). A
//! Receive that does not wait is a unary call like any other.
//!
//! The counts are plain maps under a mutex, as for Subscribe streams: a
//! semaphore per key would need the same map to find it and to forget it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Waiting Receives on this replica, per connection and per token.
pub struct LongPolls {
    counts: Mutex<Counts>,
    /// `--max-long-polls-per-connection`.
    per_connection: usize,
    /// `--max-long-polls-per-token`.
    per_token: usize,
}

#[derive(Default)]
struct Counts {
    per_connection: HashMap<SocketAddr, usize>,
    per_token: HashMap<String, usize>,
}

/// One waiting Receive's place, given back when dropped (the call ended,
/// or its client went away).
pub struct LongPoll {
    polls: Arc<LongPolls>,
    conn: Option<SocketAddr>,
    token: String,
}

impl LongPolls {
    pub fn new(per_connection: usize, per_token: usize) -> Arc<Self> {
        Arc::new(LongPolls {
            counts: Mutex::default(),
            per_connection,
            per_token,
        })
    }

    /// Take a place for a waiting Receive on `conn` by `token`, or
    /// RESOURCE_EXHAUSTED naming the budget that is full.
    pub fn take(self: &Arc<Self>, conn: Option<SocketAddr>, token: &str) -> Result<LongPoll> {
        let mut c = self
            .counts
            .lock()
            .map_err(|_| Error::Internal("long-poll counts lock poisoned".into()))?;
        // The connection's own limit first: it is the nearer cause.
        let on_conn = conn.map(|a| c.per_connection.get(&a).copied().unwrap_or(0));
        if on_conn.is_some_and(|n| n >= self.per_connection) {
            return Err(Error::ResourceExhausted(format!(
                "this connection has {} waiting Receives open, the limit per connection (--max-long-polls-per-connection); open another connection, or use Subscribe",
                on_conn.unwrap_or_default()
            )));
        }
        let on_token = c.per_token.get(token).copied().unwrap_or(0);
        if on_token >= self.per_token {
            return Err(Error::ResourceExhausted(format!(
                "token {token:?} has {on_token} waiting Receives open, its limit (--max-long-polls-per-token); wait for one to end, or use Subscribe"
            )));
        }
        if let (Some(addr), Some(n)) = (conn, on_conn) {
            c.per_connection.insert(addr, n + 1);
        }
        c.per_token.insert(token.to_string(), on_token + 1);
        Ok(LongPoll {
            polls: self.clone(),
            conn,
            token: token.to_string(),
        })
    }
}

/// One less under `key`, forgetting keys that reach zero so the maps hold
/// only callers with a wait open.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        if let Ok(mut c) = self.polls.counts.lock() {
            release(&mut c.per_token, &self.token);
            if let Some(addr) = self.conn {
                release(&mut c.per_connection, &addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn each_budget_refuses_past_its_limit_and_frees_on_drop() {
        let polls = LongPolls::new(2, 3);
        let a1 = polls.take(addr(1), "t").expect("1st on conn 1");
        let _a2 = polls.take(addr(1), "t").expect("2nd on conn 1");
        let e = polls.take(addr(1), "u").err().expect("3rd on conn 1");
        assert!(
            matches!(&e, Error::ResourceExhausted(m) if m.contains("--max-long-polls-per-connection")),
            "{e:?}"
        );
        let _b1 = polls.take(addr(2), "t").expect("3rd of token t");
        let e = polls.take(addr(3), "t").err().expect("4th of token t");
        assert!(
            matches!(&e, Error::ResourceExhausted(m) if m.contains("--max-long-polls-per-token")),
            "{e:?}"
        );
        drop(a1);
        let _again = polls
            .take(addr(1), "t")
            .expect("a freed place is taken again");
        let c = polls.counts.lock().expect("lock");
        assert_eq!(c.per_token.get("t"), Some(&3));
    }

    #[test]
    fn maps_forget_callers_with_nothing_open() {
        let polls = LongPolls::new(5, 5);
        drop(polls.take(addr(9), "gone").expect("take"));
        let c = polls.counts.lock().expect("lock");
        assert!(c.per_token.is_empty() && c.per_connection.is_empty());
    }
}
