//! Rate-limited logging for faults that repeat: a guest opening flows while slirpnet is out
//! of file descriptors, a TAP refusing frames, a listener whose `accept` keeps failing. The
//! first occurrence is logged at once; after that at most one line per interval, saying how
//! many occurrences went unlogged meanwhile. Nothing here reads the clock: callers pass `now`.

use std::time::{Duration, Instant};

/// How often a repeated fault may be logged.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of repeated fault.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    /// When the last line was logged.
    last: Option<Instant>,
    /// Occurrences since then that were not logged.
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence. `Some(n)` when a line should be logged now, `n` being how many
    /// earlier occurrences were not; `None` when this one is to be suppressed.
    #[must_use]
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_is_logged_then_one_line_per_interval_with_the_count() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.record(start), Some(0));
        for i in 1..=1000 {
            let at = start + Duration::from_millis(i);
            assert_eq!(throttle.record(at), None);
        }
        assert_eq!(throttle.record(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(throttle.record(start + Duration::from_secs(11)), None);
        // A quiet spell: the next occurrence is logged at once, with the one suppressed.
        assert_eq!(throttle.record(start + Duration::from_secs(60)), Some(1));
        assert_eq!(throttle.record(start + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_clock_that_goes_backwards_suppresses_instead_of_panicking() {
        let start = Instant::now() + Duration::from_secs(100);
        let mut throttle = Throttle::default();
        assert_eq!(throttle.record(start), Some(0));
        assert_eq!(throttle.record(start - Duration::from_secs(50)), None);
    }
}
