//! Retry delays, in one place: the exponential backoff with equal jitter
//! that a Nack without a delay gets, and the doubling pause of a loop that
//! retries a failing Redis call.
//!
//! Hand-written rather than a crate: both are a line of arithmetic, and the
//! Nack delay must be a pure function of the attempt (it is stored in Redis
//! as a due time), which the retry crates' stateful iterators don't offer.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with equal jitter for the n-th failed attempt
/// (1-based): half of `min · 2ⁿ⁻¹` (capped at `max`) plus a random part of
/// the other half.
pub fn jittered(min: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = ceiling(min, max, attempt).as_millis() as u64;
    let half = exp / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=exp - half))
}

/// `min · 2ⁿ⁻¹`, capped at `max`: the upper bound of [`jittered`].
pub fn ceiling(min: Duration, max: Duration, attempt: u32) -> Duration {
    let min = min.as_millis() as u64;
    let max = max.as_millis() as u64;
    Duration::from_millis(
        min.saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(max),
    )
}

/// A pause that doubles after each failure, up to a cap, and starts over
/// after a success.
#[derive(Debug, Clone)]
pub struct Pause {
    first: Duration,
    cap: Duration,
    now: Duration,
}

impl Pause {
    pub fn new(first: Duration, cap: Duration) -> Pause {
        Pause {
            first,
            cap,
            now: first,
        }
    }

    /// The pause to take after this failure; the next one is twice as long.
    pub fn failed(&mut self) -> Duration {
        let d = self.now;
        self.now = (self.now * 2).min(self.cap);
        d
    }

    /// The pause the next failure would get, without counting one.
    pub fn current(&self) -> Duration {
        self.now
    }

    pub fn succeeded(&mut self) {
        self.now = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole_of_the_ceiling() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 1..12 {
            let top = ceiling(min, max, attempt);
            let d = jittered(min, max, attempt);
            assert!(d >= top / 2 && d <= top, "{attempt}: {d:?} vs {top:?}");
        }
        assert_eq!(ceiling(min, max, 1), min);
        assert_eq!(ceiling(min, max, 3), Duration::from_millis(400));
        assert_eq!(ceiling(min, max, 60), max);
    }

    #[test]
    fn a_pause_doubles_to_its_cap_and_resets() {
        let mut p = Pause::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(p.failed(), Duration::from_millis(100));
        assert_eq!(p.failed(), Duration::from_millis(200));
        assert_eq!(p.failed(), Duration::from_millis(350));
        assert_eq!(p.failed(), Duration::from_millis(350));
        p.succeeded();
        assert_eq!(p.current(), Duration::from_millis(100));
    }
}
