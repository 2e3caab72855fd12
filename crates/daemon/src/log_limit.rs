//! Rate-limited logging: at most one line per interval per kind of event, with the
//! number of lines held back said on the next line written.
//!
//! One [`LogLimiter`] per kind of event (a guest channel's violations, the API
//! listener's failed accepts, its refused connections, ...): the caller asks
//! [`LogLimiter::allow`] before writing a line and names the count it returns
//! ("N more suppressed"); [`LogLimiter::flush`] says, once the interval has passed,
//! how many were held back since the last line, so that the end of a burst is
//! reported even when no later event comes.

use std::time::{Duration, Instant};

/// Rate-limits log lines: [`LogLimiter::allow`] says whether a line may be
/// written now and how many were suppressed since the last one.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be written at `now`, else `None` (and the
    /// line is counted as suppressed).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.too_soon(now) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// `Some(suppressed)` when lines were held back and a line may be written at `now`
    /// (the caller writes "N more suppressed"; that line counts as this interval's),
    /// else `None`.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || self.too_soon(now) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    fn too_soon(&self, now: Instant) -> bool {
        self.last
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_allows_one_line_per_interval_and_counts_the_rest() {
        let mut l = LogLimiter::new(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t + Duration::from_secs(4)), None);
        assert_eq!(l.allow(t + Duration::from_secs(5)), Some(2));
        assert_eq!(l.allow(t + Duration::from_secs(6)), None);
        assert_eq!(l.allow(t + Duration::from_secs(11)), Some(1));
    }

    #[test]
    fn flush_reports_what_was_held_back_once_the_interval_passed() {
        let mut l = LogLimiter::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.flush(t), None, "nothing held back yet");
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(100)), None);
        assert_eq!(l.allow(t + Duration::from_millis(200)), None);
        assert_eq!(l.flush(t + Duration::from_millis(500)), None, "too soon");
        assert_eq!(l.flush(t + Duration::from_secs(1)), Some(2));
        assert_eq!(l.flush(t + Duration::from_secs(3)), None, "reported once");
        // The flushed line counts as that interval's line.
        assert_eq!(l.allow(t + Duration::from_millis(1500)), None);
        assert_eq!(l.allow(t + Duration::from_secs(2)), Some(1));
    }
}
