//! Adaptive hold linger (issue 18), pure logic with the clock passed in: how long a
//! high-priority process keeps its hold on the GPU after its last launch.
//!
//! A fixed linger opens the hold in an eager server's CPU gaps between kernels, so the next
//! kernel waits behind a long batch kernel. [`Linger`] learns two things: the server's launch
//! gaps (an exponentially weighted mean of gaps shorter than [`Linger::cap_ns`]: longer ones
//! end a burst, not a gap inside it) and the batch's kernel durations (reported by whoever
//! times them). It keeps the hold through a gap when releasing would cost the server more than
//! holding costs the batch: the linger is the learned in-burst gap, with headroom, but only
//! while the batch's kernels are longer than that gap (otherwise a released batch kernel ends
//! before the server's next launch and the hold may open). Bounded by `cap_ns` in every case.
//!
//! NOT yet wired into the interposer or the arbiter block: the shim still uses its fixed
//! `GVM_ARB_LINGER_US`.

/// Weight of a new sample in the running means, as 1/`EWMA_DIV`.
const EWMA_DIV: u64 = 8;

/// Learned linger of one high-priority process.
#[derive(Debug, Clone)]
pub struct Linger {
    /// Upper bound of any linger, and the longest gap still counted as inside a burst.
    pub cap_ns: u64,
    /// Linger used before anything is learned (the fixed default).
    pub base_ns: u64,
    last_launch: Option<u64>,
    gap_ns: Option<u64>,
    batch_kernel_ns: Option<u64>,
}

fn ewma(old: Option<u64>, sample: u64) -> u64 {
    match old {
        None => sample,
        Some(o) => o - o / EWMA_DIV + sample / EWMA_DIV,
    }
}

impl Linger {
    /// A learner with the fixed `base_ns` linger and the `cap_ns` bound.
    pub fn new(base_ns: u64, cap_ns: u64) -> Self {
        Linger {
            cap_ns,
            base_ns: base_ns.min(cap_ns),
            last_launch: None,
            gap_ns: None,
            batch_kernel_ns: None,
        }
    }

    /// The high-priority process launched at `now_ns`.
    pub fn on_launch(&mut self, now_ns: u64) {
        if let Some(prev) = self.last_launch {
            let gap = now_ns.saturating_sub(prev);
            if gap <= self.cap_ns {
                self.gap_ns = Some(ewma(self.gap_ns, gap));
            }
        }
        self.last_launch = Some(now_ns);
    }

    /// A batch kernel took `dur_ns` on the GPU.
    pub fn on_batch_kernel(&mut self, dur_ns: u64) {
        self.batch_kernel_ns = Some(ewma(self.batch_kernel_ns, dur_ns));
    }

    /// The learned in-burst gap, if any.
    pub fn gap_ns(&self) -> Option<u64> {
        self.gap_ns
    }

    /// How long to keep the hold after the last launch.
    pub fn linger_ns(&self) -> u64 {
        match (self.gap_ns, self.batch_kernel_ns) {
            // Hold through the typical gap with 2x headroom when a released batch kernel
            // would still be running at the server's next launch.
            (Some(g), Some(k)) if k > g => (2 * g).max(self.base_ns).min(self.cap_ns),
            _ => self.base_ns,
        }
    }

    /// Whether the hold is still kept at `now_ns`.
    pub fn holding(&self, now_ns: u64) -> bool {
        self.last_launch
            .is_some_and(|t| now_ns.saturating_sub(t) < self.linger_ns())
    }
}

#[cfg(test)]
#[path = "hold_tests.rs"]
mod tests;
