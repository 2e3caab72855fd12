//! Simulated GPU work of the owner processes, driven by an explicit clock.
//!
//! GVM schedules each process's GPU channel groups with a timeslice of
//! `524288 µs >> compute.priority`; `compute.freeze` preempts them. This module
//! models that on one physical GPU at a time: time advances in ticks, and the
//! runnable owners on a GPU (busy or with kernels still pending, and not frozen)
//! share each tick in proportion to their timeslice. Work is counted in kernels
//! of [`KERNEL_US`] each: a busy owner keeps [`QUEUE_DEPTH`] kernels queued
//! (`nr_pending_kernels` stays above 0), progress ends them, a frozen owner's
//! `nr_ended_kernels` stops.
//!
//! Memory: an owner wants some bytes; `memory.current = min(wanted, limit)` and
//! the rest sits in host memory (`memory.swap.current`), so lowering the limit
//! moves bytes to swap at once and raising it brings them back.
//!
//! Nothing here reads a clock or touches a process: the caller passes elapsed
//! time, which is what makes it testable with a fake clock.

use std::collections::BTreeMap;

/// GPU time one simulated kernel takes, in µs.
pub const KERNEL_US: u64 = 1000;
/// Kernels a busy owner keeps submitted ahead of completion.
pub const QUEUE_DEPTH: u64 = 4;
/// `memory.limit` meaning "no limit".
pub const UNLIMITED: u64 = u64::MAX;
/// Default `compute.priority`.
pub const DEFAULT_PRIORITY: u8 = 8;
/// Highest (least favoured) accepted `compute.priority`.
pub const MAX_PRIORITY: u8 = 16;

/// GVM's timeslice for a priority, in µs.
pub fn timeslice_us(priority: u8) -> u64 {
    524_288u64 >> priority.min(MAX_PRIORITY)
}

/// The GPU-side state of one owner process on one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuClient {
    /// UVM index of the GPU it runs on.
    pub gpu: u32,
    /// Whether the process keeps submitting work.
    pub busy: bool,
    /// `compute.freeze`.
    pub frozen: bool,
    /// `compute.priority`.
    pub priority: u8,
    /// `memory.limit`.
    pub memory_limit: u64,
    /// Bytes the process wants resident.
    pub memory_wanted: u64,
    /// GPU time received so far, in µs.
    pub gpu_time_us: u64,
    /// `nr_submitted_kernels`.
    pub submitted: u64,
    /// `nr_ended_kernels`.
    pub ended: u64,
    /// Progress into the kernel now running, in µs.
    partial_us: u64,
}

impl GpuClient {
    /// A freshly registered client with GVM's defaults.
    pub fn new(gpu: u32, busy: bool, memory_wanted: u64) -> Self {
        let mut c = GpuClient {
            gpu,
            busy,
            frozen: false,
            priority: DEFAULT_PRIORITY,
            memory_limit: UNLIMITED,
            memory_wanted,
            gpu_time_us: 0,
            submitted: 0,
            ended: 0,
            partial_us: 0,
        };
        c.refill();
        c
    }

    /// `nr_pending_kernels`.
    pub fn pending(&self) -> u64 {
        self.submitted - self.ended
    }

    /// `memory.current`: the resident part of what the process wants.
    pub fn memory_current(&self) -> u64 {
        self.memory_wanted.min(self.memory_limit)
    }

    /// `memory.swap.current`: the part evicted to host memory.
    pub fn memory_swap(&self) -> u64 {
        self.memory_wanted - self.memory_current()
    }

    /// Whether it competes for the GPU now.
    pub fn runnable(&self) -> bool {
        !self.frozen && (self.busy || self.pending() > 0)
    }

    /// Set whether the process keeps submitting work.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
        self.refill();
    }

    /// The `gcgroup.stat` file contents.
    pub fn stat(&self) -> String {
        format!(
            "nr_submitted_kernels: {}\nnr_ended_kernels: {}\nnr_pending_kernels: {}\n",
            self.submitted,
            self.ended,
            self.pending()
        )
    }

    fn refill(&mut self) {
        if self.busy {
            self.submitted = self.submitted.max(self.ended + QUEUE_DEPTH);
        }
    }

    fn run(&mut self, us: u64) {
        // An idle client only uses the GPU until its queue is drained.
        let us = if self.busy {
            us
        } else {
            us.min((self.pending() * KERNEL_US).saturating_sub(self.partial_us))
        };
        self.gpu_time_us += us;
        self.partial_us += us;
        let done = (self.partial_us / KERNEL_US).min(self.pending());
        self.ended += done;
        self.partial_us -= done * KERNEL_US;
        if self.pending() == 0 {
            self.partial_us = 0;
        }
        self.refill();
    }
}

/// Advance every GPU by `dt_us`: on each GPU the runnable clients share the time
/// in proportion to their timeslices.
pub fn advance(clients: &mut [&mut GpuClient], dt_us: u64) {
    let mut weights: BTreeMap<u32, u64> = BTreeMap::new();
    for c in clients.iter().filter(|c| c.runnable()) {
        *weights.entry(c.gpu).or_default() += timeslice_us(c.priority);
    }
    for c in clients.iter_mut().filter(|c| c.runnable()) {
        let total = weights.get(&c.gpu).copied().unwrap_or(0);
        if total == 0 {
            continue;
        }
        let share = u128::from(dt_us) * u128::from(timeslice_us(c.priority)) / u128::from(total);
        c.run(u64::try_from(share).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut BTreeMap<u32, GpuClient>, dt_us: u64) {
        advance(&mut m.values_mut().collect::<Vec<_>>(), dt_us);
    }

    fn two_on_one_gpu() -> BTreeMap<u32, GpuClient> {
        let mut m = BTreeMap::new();
        m.insert(1, GpuClient::new(0, true, 0));
        m.insert(2, GpuClient::new(0, true, 0));
        m
    }

    #[test]
    fn equal_priorities_split_the_gpu_evenly() {
        let mut m = two_on_one_gpu();
        for _ in 0..200 {
            run(&mut m, 5_000);
        }
        assert_eq!(m[&1].gpu_time_us, 500_000);
        assert_eq!(m[&2].gpu_time_us, 500_000);
        assert_eq!(m[&1].ended, 500);
        assert_eq!(m[&1].pending(), QUEUE_DEPTH);
    }

    #[test]
    fn lower_priority_number_gets_proportionally_more() {
        let mut m = two_on_one_gpu();
        if let Some(c) = m.get_mut(&1) {
            c.priority = 7; // 4096 µs vs 2048 µs
        }
        run(&mut m, 300_000);
        assert_eq!(m[&1].gpu_time_us, 200_000);
        assert_eq!(m[&2].gpu_time_us, 100_000);
    }

    #[test]
    fn frozen_client_makes_no_progress_and_others_take_its_time() {
        let mut m = two_on_one_gpu();
        run(&mut m, 10_000);
        let ended = m[&1].ended;
        if let Some(c) = m.get_mut(&1) {
            c.frozen = true;
        }
        run(&mut m, 10_000);
        assert_eq!(m[&1].ended, ended);
        assert!(m[&1].pending() > 0);
        assert_eq!(m[&2].gpu_time_us, 15_000);
        if let Some(c) = m.get_mut(&1) {
            c.frozen = false;
        }
        run(&mut m, 10_000);
        assert!(m[&1].ended > ended);
    }

    #[test]
    fn gpus_are_independent() {
        let mut m = two_on_one_gpu();
        m.insert(3, GpuClient::new(8, true, 0));
        run(&mut m, 10_000);
        assert_eq!(m[&3].gpu_time_us, 10_000);
        assert_eq!(m[&1].gpu_time_us, 5_000);
    }

    #[test]
    fn idle_client_drains_its_queue_then_stops() {
        let mut m = BTreeMap::new();
        m.insert(1, GpuClient::new(0, true, 0));
        if let Some(c) = m.get_mut(&1) {
            c.set_busy(false);
        }
        run(&mut m, 100_000);
        assert_eq!(m[&1].pending(), 0);
        assert_eq!(m[&1].ended, QUEUE_DEPTH);
        assert_eq!(m[&1].gpu_time_us, QUEUE_DEPTH * KERNEL_US);
        assert!(!m[&1].runnable());
    }

    #[test]
    fn memory_over_the_limit_goes_to_swap_and_comes_back() {
        let mut c = GpuClient::new(0, false, 10 << 30);
        assert_eq!((c.memory_current(), c.memory_swap()), (10 << 30, 0));
        c.memory_limit = 6 << 30;
        assert_eq!((c.memory_current(), c.memory_swap()), (6 << 30, 4 << 30));
        c.memory_limit = UNLIMITED;
        assert_eq!(c.memory_swap(), 0);
    }

    #[test]
    fn timeslices_follow_gvm() {
        assert_eq!(timeslice_us(0), 524_288);
        assert_eq!(timeslice_us(8), 2048);
        assert_eq!(timeslice_us(16), 8);
    }
}
