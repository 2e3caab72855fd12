//! Log lines that something outside the agent can cause, at most one per interval.
//!
//! The host (or a process) can make the agent log by misbehaving; each kind of
//! complaint goes through a [`RateLog`], which prints the first and then at most
//! one per interval, saying how many were held back.

use std::time::{Duration, Instant};

/// One kind of complaint, rate-limited.
#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLog {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> RateLog {
        RateLog {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Log `what` on stderr unless one was logged less than the interval ago.
    pub fn log(&mut self, now: Instant, what: impl FnOnce() -> String) -> bool {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.held_back += 1;
            return false;
        }
        let more = match std::mem::take(&mut self.held_back) {
            0 => String::new(),
            n => format!(" ({n} more since the last such line)"),
        };
        eprintln!("gvm-vgpu-agent: {}{more}", what());
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval() {
        let mut r = RateLog::new(Duration::from_secs(10));
        let t = Instant::now();
        assert!(r.log(t, || "a".into()));
        assert!(!r.log(t + Duration::from_secs(1), || "b".into()));
        assert!(!r.log(t + Duration::from_secs(9), || "c".into()));
        assert!(r.log(t + Duration::from_secs(11), || "d".into()));
        assert_eq!(r.held_back, 0);
    }
}
