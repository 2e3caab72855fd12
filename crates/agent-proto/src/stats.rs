//! What the host keeps per domain: the latest hello and report plus counters.
//!
//! A [`GuestStats`] is a snapshot taken from an [`crate::IngestSession`]; the
//! daemon stores one per domain (attributed by the channel the bytes came in on,
//! never by anything the guest claims) and serves it to `gvm-vgpu top` and the
//! metrics endpoint.

use crate::message::{Hello, Report};
use serde::{Deserialize, Serialize};

/// Running totals of one ingest session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Bytes fed in.
    pub bytes: u64,
    /// Complete lines seen (including dropped and invalid ones).
    pub lines: u64,
    /// Hellos accepted.
    pub hellos: u64,
    /// Reports accepted.
    pub reports: u64,
    /// Violations of every kind.
    pub violations: u64,
    /// Lines dropped by the rate limit.
    pub rate_limited_lines: u64,
    /// Bytes discarded as parts of over-long or timed-out lines.
    pub discarded_bytes: u64,
    /// Protocol-2 messages (counters, busy, acks) accepted.
    #[serde(default)]
    pub v2_messages: u64,
}

/// The latest view of one guest's GPU use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// The agent's latest hello (who it is, which GPUs the guest sees).
    pub hello: Hello,
    /// The latest accepted report, if any since the hello.
    pub last_report: Option<Report>,
    /// Session counters at the time of the snapshot.
    pub counters: Counters,
}

impl GuestStats {
    /// Total GPU memory the guest's processes use, in bytes, summed over the
    /// processes whose figure is known.
    pub fn process_memory_bytes(&self) -> u64 {
        self.last_report
            .as_ref()
            .map(|r| {
                r.processes
                    .iter()
                    .filter_map(|p| p.memory_bytes)
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CollectorKind, ProcessSample};

    #[test]
    fn process_memory_sums_known_figures_only() {
        let p = |pid, memory_bytes| ProcessSample {
            pid,
            name: "p".into(),
            cmdline: String::new(),
            gpu: None,
            memory_bytes,
            sm_pct: None,
            mem_pct: None,
        };
        let s = GuestStats {
            hello: Hello {
                v: 1,
                agent: "a".into(),
                os: "o".into(),
                kernel: "k".into(),
                driver: None,
                protocol: None,
                collector: CollectorKind::Proc,
                gpus: vec![],
            },
            last_report: Some(Report {
                v: 1,
                seq: 1,
                ts_ms: 0,
                gpus: vec![],
                processes: vec![p(1, Some(10)), p(2, None), p(3, Some(5))],
                processes_omitted: 0,
            }),
            counters: Counters::default(),
        };
        assert_eq!(s.process_memory_bytes(), 15);
    }
}
