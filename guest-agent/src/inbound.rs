//! What the host sends (protocol v2): state snapshots, each applied only when its
//! generation is higher than the last applied.
//!
//! Every host line is untrusted input: it is framed within [`gvm_agent_proto::MAX_LINE_BYTES`]
//! ([`crate::transport::lines`]), decoded and checked with
//! [`gvm_agent_proto::v2::parse_host_line`], and offered to a [`SnapshotTracker`]. A line
//! that fails (too long, not UTF-8, not JSON, an unknown `type`, a field out of range) is
//! counted and logged, at most one log line per [`BAD_LOG_INTERVAL`]: never fatal.

use crate::ratelog::RateLog;
use crate::transport::lines::Framed;
use gvm_agent_proto::v2::{parse_host_line, Snapshot, SnapshotTracker};
use gvm_agent_proto::{log_safe, MAX_LINE_BYTES};
use std::time::{Duration, Instant};

/// The most often a bad host line is logged.
pub const BAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What one host line asks of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// A newer snapshot: apply it, then acknowledge it.
    Apply(Snapshot),
    /// A snapshot already applied, or older: nothing changes; the current one may be
    /// acknowledged again (the host may have missed the ack).
    Stale {
        /// The generation offered.
        offered: u64,
        /// The generation in force.
        current: u64,
    },
    /// A bad line (counted and logged).
    Bad,
}

/// Counts of host lines, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundCounters {
    /// Snapshots applied.
    pub applied: u64,
    /// Snapshots ignored (generation not higher).
    pub stale: u64,
    /// Lines refused.
    pub bad: u64,
}

/// The host's lines on every connection of one agent run (the tracker outlives
/// connections: a reconnect's resent snapshot is ignored unless newer).
#[derive(Debug)]
pub struct HostLines {
    tracker: SnapshotTracker,
    counters: InboundCounters,
    log: RateLog,
}

impl Default for HostLines {
    fn default() -> Self {
        HostLines {
            tracker: SnapshotTracker::default(),
            counters: InboundCounters::default(),
            log: RateLog::new(BAD_LOG_INTERVAL),
        }
    }
}

impl HostLines {
    /// The snapshot in force.
    pub fn current(&self) -> Option<Snapshot> {
        self.tracker.current().copied()
    }

    /// Totals so far.
    pub fn counters(&self) -> InboundCounters {
        self.counters
    }

    /// Take one framed line.
    pub fn take(&mut self, now: Instant, framed: Framed) -> Inbound {
        let line = match framed {
            Framed::Line(l) => l,
            Framed::Oversize(n) => {
                self.counters.bad += 1;
                let bad = self.counters.bad;
                self.log.log(now, || {
                    format!("host line of {n}+ bytes over the {MAX_LINE_BYTES}-byte limit skipped ({bad} bad host lines so far)")
                });
                return Inbound::Bad;
            }
        };
        // Blank lines (a host's keep-alive) are nothing.
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Inbound::Stale {
                offered: 0,
                current: self.current().map_or(0, |s| s.generation),
            };
        }
        match parse_host_line(&line) {
            Ok(s) => {
                if self.tracker.offer(s) {
                    self.counters.applied += 1;
                    Inbound::Apply(s)
                } else {
                    self.counters.stale += 1;
                    Inbound::Stale {
                        offered: s.generation,
                        current: self.current().map_or(0, |c| c.generation),
                    }
                }
            }
            Err(v) => {
                self.counters.bad += 1;
                let bad = self.counters.bad;
                let head = log_safe(&String::from_utf8_lossy(&line), 80);
                self.log.log(now, || {
                    format!("host line refused: {v} (line begins '{head}'; {bad} bad host lines so far)")
                });
                Inbound::Bad
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_agent_proto::v2::{HostMessage, Knobs};

    fn line(generation: u64, limit: Option<u64>) -> Framed {
        let s = Snapshot {
            generation,
            knobs: Knobs {
                memory_limit: limit,
                ..Knobs::default()
            },
            hold: false,
            outranked: false,
            outranks: false,
        };
        Framed::Line(HostMessage::Snapshot(s).to_line().into_bytes())
    }

    #[test]
    fn only_a_higher_generation_applies_and_bad_lines_are_counted() {
        let mut h = HostLines::default();
        let t = Instant::now();
        assert!(matches!(h.take(t, line(3, Some(10))), Inbound::Apply(s) if s.generation == 3));
        assert_eq!(
            h.take(t, line(3, Some(20))),
            Inbound::Stale {
                offered: 3,
                current: 3
            }
        );
        assert_eq!(
            h.take(t, line(2, None)),
            Inbound::Stale {
                offered: 2,
                current: 3
            }
        );
        assert_eq!(h.current().and_then(|s| s.knobs.memory_limit), Some(10));
        for bad in [
            Framed::Oversize(100_000),
            Framed::Line(b"not json".to_vec()),
            Framed::Line(br#"{"type":"counters","processes":[]}"#.to_vec()),
            Framed::Line(vec![0xff, 0xfe]),
            Framed::Line(br#"{"type":"snapshot","generation":0,"knobs":{"memory_limit":null,"priority":null,"frozen":false,"host_swap":false,"share_budget_us":null,"window_ms":null},"hold":false}"#.to_vec()),
        ] {
            assert_eq!(h.take(t, bad), Inbound::Bad);
        }
        assert_eq!(
            h.counters(),
            InboundCounters {
                applied: 1,
                stale: 2,
                bad: 5
            }
        );
        assert!(matches!(h.take(t, line(4, None)), Inbound::Apply(_)));
    }
}
