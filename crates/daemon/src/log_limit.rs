//! Rate-limited logging: at most one line per interval per kind of event, with the
//! number of lines held back said on the next line written.
//!
//! One [`LogLimiter`] per kind of event (a guest channel's violations, the API
//! listener's failed accepts, its refused connections, ...): the caller asks
//! [`LogLimiter::allow`] before writing a line and names the count it returns
//! ("N more suppressed"); [`LogLimiter::flush`] says, once the interval has passed,
//! how many were held back since the last line, so that the end of a burst is
//! reported even when no later event comes. [`EventLog`] keeps one limiter per
//! kind of event for a listener and the connections it spawns.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
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

/// What a rate-limited line says about the lines held back before it: nothing, or
/// ` (N more suppressed)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more suppressed)"),
        }
    }
}

/// One [`LogLimiter`] per kind of event `K`, shared (by reference or `Arc`) between a
/// listener and its connection tasks.
#[derive(Debug)]
pub struct EventLog<K> {
    interval: Duration,
    kinds: Mutex<BTreeMap<K, LogLimiter>>,
}

impl<K: Ord + Copy> EventLog<K> {
    /// At most one line per kind per `interval`.
    pub fn new(interval: Duration) -> Self {
        EventLog {
            interval,
            kinds: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a line about `kind` may be written now, with what to say about the ones
    /// held back ([`LogLimiter::allow`]).
    pub fn allow(&self, kind: K) -> Option<Suppressed> {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .entry(kind)
            .or_insert_with(|| LogLimiter::new(self.interval))
            .allow(now)
            .map(Suppressed)
    }

    /// The kinds whose held-back lines may be reported now, with their counts
    /// ([`LogLimiter::flush`]); call it about once per interval.
    pub fn flush(&self) -> Vec<(K, u64)> {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter_mut()
            .filter_map(|(k, l)| l.flush(now).map(|n| (*k, n)))
            .collect()
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
        assert_eq!(
            l.flush(t + Duration::from_millis(1200)),
            None,
            "reported once"
        );
        // The flushed line counts as that interval's line.
        assert_eq!(l.allow(t + Duration::from_millis(1500)), None);
        assert_eq!(l.allow(t + Duration::from_secs(2)), Some(1));
        assert_eq!(
            l.flush(t + Duration::from_secs(5)),
            None,
            "nothing held back"
        );
    }

    #[test]
    fn an_event_log_limits_each_kind_on_its_own() {
        let log = EventLog::new(Duration::from_secs(60));
        assert_eq!(log.allow("a"), Some(Suppressed(0)));
        assert_eq!(log.allow("b"), Some(Suppressed(0)), "another kind");
        assert_eq!(log.allow("a"), None);
        assert_eq!(log.allow("a"), None);
        assert_eq!(log.flush(), vec![], "the interval has not passed");
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(2).to_string(), " (2 more suppressed)");
        let fast = EventLog::new(Duration::ZERO);
        assert_eq!(fast.allow(1), Some(Suppressed(0)));
        assert_eq!(fast.flush(), vec![]);
    }
}
