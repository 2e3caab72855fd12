//! GPU busy time of each registered process, as the agent's polls see it.
//!
//! The interposer's control block counts kernels submitted and seen ended, not GPU time, so
//! the agent integrates it: between two polls (every 5 ms while processes are registered) a
//! process that had kernels in flight at the first poll is counted busy for the interval.
//! Launches held at the gate (the VM is held or frozen) are not in flight and do not count:
//! a held VM's budget is not charged. An interval longer than [`MAX_INTERVAL`] (the agent was
//! not scheduled) counts for that much at most, so a stalled agent never invents time. The
//! sum is the `gpu_busy_us` the host's equal-share and fixed-share budgets are charged from.
//!
//! This is time with work on the GPU as the process sees it: on a GPU that other VMs share it
//! includes time the kernels waited for the GPU, so a VM's figure can exceed its GPU time;
//! the host compares VMs on one GPU by it, which charges each in proportion to its work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest interval between two polls that is counted.
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// One process's busy time.
#[derive(Debug, Clone, Copy, Default)]
pub struct BusyClock {
    last: Option<(Instant, bool)>,
    total: Duration,
}

impl BusyClock {
    /// The process had kernels in flight (`in_flight`) at `now`.
    pub fn poll(&mut self, now: Instant, in_flight: bool) {
        if let Some((at, true)) = self.last {
            self.total += now.saturating_duration_since(at).min(MAX_INTERVAL);
        }
        self.last = Some((now, in_flight));
    }

    /// Busy time so far, µs.
    pub fn total_us(&self) -> u64 {
        u64::try_from(self.total.as_micros()).unwrap_or(u64::MAX)
    }
}

/// The busy clocks of the registered processes, by host pid.
#[derive(Debug, Default)]
pub struct BusyClocks {
    clocks: BTreeMap<u32, BusyClock>,
}

impl BusyClocks {
    /// Poll every process in `in_flight` (pid, kernels in flight) at `now`; processes no
    /// longer registered are forgotten.
    pub fn poll(&mut self, now: Instant, in_flight: impl IntoIterator<Item = (u32, bool)>) {
        let mut seen = BTreeMap::new();
        for (pid, busy) in in_flight {
            let mut c = self.clocks.get(&pid).copied().unwrap_or_default();
            c.poll(now, busy);
            seen.insert(pid, c);
        }
        self.clocks = seen;
    }

    /// `pid`'s busy time, µs (0 for a process never polled).
    pub fn total_us(&self, pid: u32) -> u64 {
        self.clocks.get(&pid).map_or(0, BusyClock::total_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn busy_intervals_add_up_and_idle_ones_do_not() {
        let t0 = Instant::now();
        let mut c = BusyClock::default();
        c.poll(t0, true);
        c.poll(t0 + ms(5), true);
        c.poll(t0 + ms(10), false);
        c.poll(t0 + ms(15), false);
        c.poll(t0 + ms(20), true);
        c.poll(t0 + ms(22), false);
        assert_eq!(c.total_us(), 12_000);
    }

    #[test]
    fn a_stalled_agent_counts_at_most_the_cap() {
        let t0 = Instant::now();
        let mut c = BusyClock::default();
        c.poll(t0, true);
        c.poll(t0 + Duration::from_secs(10), true);
        assert_eq!(c.total_us(), MAX_INTERVAL.as_micros() as u64);
    }

    #[test]
    fn processes_that_left_are_forgotten() {
        let t0 = Instant::now();
        let mut all = BusyClocks::default();
        all.poll(t0, [(10, true), (11, true)]);
        all.poll(t0 + ms(5), [(10, true)]);
        assert_eq!((all.total_us(10), all.total_us(11)), (5_000, 0));
        // A new process under a pid seen before starts from nothing.
        all.poll(t0 + ms(10), [(10, true), (11, true)]);
        assert_eq!((all.total_us(10), all.total_us(11)), (10_000, 0));
    }
}
