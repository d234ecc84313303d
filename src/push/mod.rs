//! Push delivery (docs/push.md): leanmqd POSTs each message of a push
//! subscription's path to its HTTP endpoint, signed per Standard Webhooks.
//!
//! - `store` — a subscription as stored in Redis (via `broker::push`), and
//!   its state and counters;
//! - `worker` — the replica's runner: keeps the set of subscriptions in
//!   sync and runs one consumer of each active one's group (`deliver`
//!   makes one POST and settles its delivery);
//! - `signature` — Standard Webhooks signing;
//! - `ssrf` — which endpoints may be reached, at creation and at connect time.
//!
//! Deliveries come through the domain façade ([`crate::queues::Queues`]) as
//! a Subscribe stream's do, so leases, attempts and retry delays live in
//! Redis as for any consumer: a replica killed mid-push has its leases
//! expire and another replica redelivers.

mod deliver;
pub mod signature;
pub mod ssrf;
pub mod store;
pub mod worker;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most push subscriptions per served prefix (they label metrics).
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Longest name; names are `[A-Za-z0-9_-]`, starting alphanumeric.
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_ENDPOINT_BYTES: usize = 2048;
pub const MAX_SECRETS: usize = 5;
pub const MAX_HEADERS: usize = 16;
pub const MAX_HEADERS_BYTES: usize = 8 * 1024;
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10;
pub const MAX_IN_FLIGHT: u32 = 1000;
pub const MAX_SCHEDULE_ENTRIES: usize = 20;
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(10 * 3600);
/// Most response body bytes read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Body bytes kept in a dead-letter reason.
pub const REASON_BODY_BYTES: usize = 256;
/// Most `--push-allow-host` entries.
pub const MAX_ALLOW_HOSTS: usize = 64;

/// Standard Webhooks' retry schedule: the delay before each attempt after
/// the first (which is immediate).
pub fn default_schedule() -> Vec<Duration> {
    [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

/// Whether it pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Active,
    Paused,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Paused => "paused",
            State::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Active, State::Paused, State::Disabled]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// A subscription's configuration (what Create gives and Update changes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    /// A path or a pattern.
    pub path: String,
    pub group: String,
    /// Where a new group starts: a stream id, `0` or `$`.
    pub start: String,
    pub endpoint: String,
    /// `whsec_…`; never returned, never logged.
    pub secrets: Vec<String>,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    pub max_attempts: u32,
    /// Delays (ms): entry 0 before the first attempt (always 0), entry n
    /// after attempt n failed; see [`Spec::delay`].
    pub retry_schedule_ms: Vec<u64>,
    pub max_backoff_ms: u64,
    pub headers: Vec<(String, String)>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("group", &self.group)
            .field("endpoint", &self.endpoint)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("timeout_ms", &self.timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Spec {
    /// The delay after attempt `attempt` (1-based) failed: the schedule's
    /// entry for the next attempt (its last past its end), at most the cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        let i = attempt as usize;
        let ms = self
            .retry_schedule_ms
            .get(i)
            .or(self.retry_schedule_ms.last())
            .copied()
            .unwrap_or(0);
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// A hint of each secret: its prefix and first two characters.
    pub fn secret_hints(&self) -> Vec<String> {
        self.secrets
            .iter()
            .map(|s| {
                let keep: String = s.chars().take(signature::SECRET_PREFIX.len() + 2).collect();
                format!("{keep}…")
            })
            .collect()
    }
}

/// Counters, over every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: i64,
    pub failed: i64,
    pub dead_lettered: i64,
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub spec: Spec,
    pub state: State,
    pub reason: String,
    pub counters: Counters,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let spec = Spec {
            name: "n".into(),
            path: "/p/".into(),
            group: "g".into(),
            start: "$".into(),
            endpoint: "https://e/".into(),
            secrets: vec!["whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0".into()],
            timeout_ms: 1000,
            max_in_flight: 1,
            max_attempts: 3,
            retry_schedule_ms: vec![0, 10, 20],
            max_backoff_ms: 15,
            headers: vec![],
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("c2Vj"), "{shown}");
        assert_eq!(spec.delay(1), Duration::from_millis(10));
        assert_eq!(spec.delay(2), Duration::from_millis(15), "capped");
        assert_eq!(spec.delay(9), Duration::from_millis(15));
        assert_eq!(spec.secret_hints(), vec!["whsec_c2…".to_string()]);
    }
}
