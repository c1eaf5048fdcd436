//! Capped exponential backoff with full jitter, for Link reconnects.

use std::time::Duration;

use rand::Rng;

/// Delay generator: attempt n waits a random time in `[0, min(max, min_delay * 2^n)]`, never
/// less than `min_delay`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (callers validate `min <= max`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; each call doubles the ceiling until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = rand::rng().random_range(Duration::ZERO..=ceiling);
        jittered.max(self.min)
    }

    /// Back to the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_bounds_and_resets() {
        let min = Duration::from_millis(50);
        let max = Duration::from_millis(400);
        let mut backoff = Backoff::new(min, max);
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay >= min && delay <= max, "{delay:?}");
        }
        backoff.reset();
        for _ in 0..20 {
            let mut fresh = backoff.clone();
            assert!(fresh.next_delay() <= min);
        }
    }
}
