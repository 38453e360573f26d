//! The back-off every retry loop of the crate waits by: 50 ms, doubling up to 1 s.
//!
//! A store that is down is retried often enough to be used again within a second of coming
//! back, and rarely enough that the retries cost it nothing while it recovers.

use std::time::Duration;

/// The pauses between attempts: each twice the last, from a first one up to a longest one.
#[derive(Debug, Clone)]
#[must_use]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// 50 ms, doubling up to 1 s.
    pub fn new() -> Backoff {
        Backoff::between(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// `first`, doubling up to `max`.
    pub fn between(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            max,
        }
    }

    /// The pause before the next attempt; the one after will be twice as long, up to the
    /// longest.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Starts again from the first pause, after an attempt that worked.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest() {
        let mut backoff = Backoff::new();
        let ms: Vec<u128> = (0..7).map(|_| backoff.pause().as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.pause(), Duration::from_millis(50));
    }
}
