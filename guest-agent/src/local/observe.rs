//! What the registered processes' control blocks say, as protocol v2 figures.
//!
//! Every field of a block is written by its process and is untrusted: counters are
//! clamped to the protocol's ranges (ended never above submitted), names are read
//! from `/proc/<pid>/comm` under the guest's root (at most [`MAX_NAME_BYTES`], control
//! characters replaced), and a pid seen twice (two pid namespaces) is listed once, so
//! what the agent sends always passes the host's checks.
//!
//! A process is *busy* when its block shows GPU work: the shim published busy
//! (`arb_state` [`ARB_BUSY`], set while it arbitrates against another process),
//! launches wait at its gate, or launches are in flight (submitted, not yet seen
//! ended). A lone process never publishes busy, hence the other two.
//!
//! While the host says the VM *outranks* someone (protocol 3), the agent presents
//! a less important peer to its processes (`outside_of`), so every one of them
//! publishes busy in its arbitration block, set before each launch and cleared a
//! linger after its GPU work is done; the VM is then busy exactly while one of them
//! is (the in-guest relay's reading of the blocks, [`gvm_shim_host::relay_hub::RelayHub::busy_anywhere`]) or
//! launches wait at a gate. Kernel counts are not used then: `ended` only catches
//! up at a synchronise, which would keep the VM busy, and the VMs it holds held,
//! through the CPU gaps of an eager server.

use super::{applied_priority, LocalDaemon};
use gvm_agent_proto::v2::{ProcessCounters, Reached, Snapshot, MAX_NAME_BYTES, MAX_V2_PROCESSES};
use gvm_agent_proto::{clean_text, MAX_COUNTER, MAX_MEMORY_BYTES, MAX_PID};
use gvm_shim_abi::control::{ControlBlock, ARB_BUSY};
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::atomic::Ordering;

/// A block's counters, clamped: (submitted, ended, waiting).
fn kernels(b: &ControlBlock) -> (u64, u64, u64) {
    let submitted = b.submitted.load(Ordering::Acquire).min(MAX_COUNTER);
    let ended = b.ended.load(Ordering::Acquire).min(submitted);
    let waiting = u64::from(b.waiting.load(Ordering::Acquire));
    (submitted, ended, waiting)
}

/// Whether the block shows GPU work (see the module doc).
pub fn block_busy(b: &ControlBlock) -> bool {
    let (submitted, ended, waiting) = kernels(b);
    b.arb_state.load(Ordering::Acquire) & ARB_BUSY != 0 || waiting > 0 || submitted > ended
}

/// The first [`MAX_NAME_BYTES`] of `/proc/<pid>/comm`, cleaned; `?` when unreadable.
fn process_name(daemon: &LocalDaemon, host_pid: u32) -> String {
    let path = daemon
        .root()
        .proc_dir()
        .join(host_pid.to_string())
        .join("comm");
    let mut raw = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(4 * MAX_NAME_BYTES as u64).read_to_end(&mut raw));
    if read.is_err() {
        return "?".into();
    }
    let text = String::from_utf8_lossy(&raw);
    let name = clean_text(text.trim_end_matches('\n'), MAX_NAME_BYTES);
    if name.is_empty() {
        "?".into()
    } else {
        name
    }
}

impl LocalDaemon {
    /// Each registered process's counters (at most [`MAX_V2_PROCESSES`], by pid).
    pub fn counters(&self) -> Vec<ProcessCounters> {
        let busy = self
            .busy_clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (host_pid, reg) in self.registry().all() {
            let pid = reg.ns_pid;
            if pid == 0 || pid > MAX_PID || !seen.insert(pid) {
                continue;
            }
            if out.len() >= MAX_V2_PROCESSES {
                break;
            }
            let b = reg.block.block();
            let (submitted, ended, waiting) = kernels(b);
            let pending = (submitted - ended).saturating_add(waiting);
            out.push(ProcessCounters {
                pid,
                name: process_name(self, host_pid),
                memory_current: b
                    .memory_current
                    .load(Ordering::Relaxed)
                    .min(MAX_MEMORY_BYTES),
                memory_swap: b.swap_current.load(Ordering::Relaxed).min(MAX_MEMORY_BYTES),
                kernels_submitted: submitted,
                kernels_ended: ended,
                pending: u32::try_from(pending).unwrap_or(u32::MAX),
                busy: block_busy(b),
                gpu_busy_us: busy.total_us(host_pid).min(MAX_COUNTER),
            });
        }
        out
    }

    /// Advance each registered process's busy clock ([`super::busy_clock`]): kernels in
    /// flight now or not.
    pub fn poll_busy_time(&self, now: std::time::Instant) {
        let in_flight: Vec<(u32, bool)> = self
            .registry()
            .all()
            .iter()
            .map(|(host_pid, r)| {
                let (submitted, ended, _) = kernels(r.block.block());
                (*host_pid, submitted > ended)
            })
            .collect();
        self.busy_clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .poll(now, in_flight);
    }

    /// Whether any registered process is busy (see the module doc).
    pub fn busy(&self) -> bool {
        let all = self.registry().all();
        if self.snapshot().is_some_and(|s| s.outranks) {
            return self.hub().busy_anywhere()
                || all.iter().any(|(_, r)| kernels(r.block.block()).2 > 0);
        }
        all.iter().any(|(_, r)| block_busy(r.block.block()))
    }

    /// The state reached for `s` now: frozen/held only when every registered process
    /// is, the kernels still in flight summed over processes.
    pub fn reached(&self, s: &Snapshot) -> Reached {
        let all = self.registry().all();
        let mut in_flight: u64 = 0;
        let (mut frozen, mut held) = (s.knobs.frozen, s.hold);
        for (_, r) in &all {
            let b = r.block.block();
            let (submitted, ended, _) = kernels(b);
            in_flight = in_flight.saturating_add(submitted - ended);
            frozen &= b.frozen.load(Ordering::Acquire) != 0;
            held &= b.hold.load(Ordering::Acquire) != 0;
        }
        Reached {
            frozen,
            held,
            processes: u32::try_from(all.len().min(MAX_V2_PROCESSES)).unwrap_or(0),
            in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
            memory_limit: s.knobs.memory_limit,
            priority: Some(applied_priority(s)),
        }
    }
}
