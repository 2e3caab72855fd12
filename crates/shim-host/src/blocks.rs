//! The CUDA shim's shared-memory blocks as the manager reads them: names, counters, gating.
//!
//! A *control block* (`gvm-vgpu-<pid>` in `/dev/shm` by default) holds one process's knobs
//! and counters; an *arbitration block* (`gvm-vgpu-gpu-<pci bus id>`) lists the processes
//! arbitrating on one GPU. These functions only interpret bytes and atomics the shim shares
//! (`gvm_shim_abi`): no file is opened here.

use std::mem::offset_of;
use std::sync::atomic::Ordering;

use gvm_gcgroup::{GcgroupSnapshot, KernelStat, MemoryLimit, Priority};
use gvm_shim_abi::arbiter::{ArbiterBlock, ArbiterHeader, Slot, ARB_MAGIC, ARB_VERSION, SLOTS};
use gvm_shim_abi::control::{ControlBlock, FLAG_DAEMON_QUEUE};

/// Where the shim keeps its blocks, under the host root.
pub const SHM_DIR: &str = "/dev/shm";
/// File name prefix of a process's control block (`gvm-vgpu-<pid>`).
pub const BLOCK_PREFIX: &str = "gvm-vgpu-";
/// The pid a control block file name stands for: `gvm-vgpu-<pid>` (decimal, non-zero).
/// Arbitration blocks (`gvm-vgpu-gpu<N>`) and anything else are `None`.
pub fn block_pid(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix(BLOCK_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|p| *p != 0)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The pids registered in an arbitration block, from the file's bytes (empty when the bytes
/// are not an initialised block of the layout this daemon was built with).
pub fn arbiter_pids(bytes: &[u8]) -> Vec<u32> {
    let magic_at = offset_of!(ArbiterBlock, header) + offset_of!(ArbiterHeader, magic);
    let version_at = offset_of!(ArbiterBlock, header) + offset_of!(ArbiterHeader, version);
    let magic = bytes
        .get(magic_at..magic_at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    if magic != Some(ARB_MAGIC) || u32_at(bytes, version_at) != Some(ARB_VERSION) {
        return Vec::new();
    }
    (0..SLOTS)
        .filter_map(|i| {
            let at = offset_of!(ArbiterBlock, slots)
                + i * std::mem::size_of::<Slot>()
                + offset_of!(Slot, pid);
            u32_at(bytes, at)
        })
        .filter(|p| *p != 0)
        .collect()
}

/// Puts a block in the gating mode of its GPU: daemon-driven = arbitration off and the
/// in-flight bound always applied (marked [`FLAG_DAEMON_QUEUE`] when this turned it on);
/// otherwise arbitration on and a bound this function had turned on back off (one the
/// process asked for itself stays). Returns whether anything changed.
pub fn apply_gating(block: &ControlBlock, driven: bool) -> bool {
    let arbitrate = u32::from(!driven);
    let mut changed = false;
    if block.arbitrate.load(Ordering::Relaxed) != arbitrate {
        block.arbitrate.store(arbitrate, Ordering::Release);
        changed = true;
    }
    let ours = block.flags.load(Ordering::Relaxed) & FLAG_DAEMON_QUEUE != 0;
    let always = block.queue_always.load(Ordering::Relaxed) != 0;
    if driven && !always {
        block.flags.fetch_or(FLAG_DAEMON_QUEUE, Ordering::AcqRel);
        block.queue_always.store(1, Ordering::Release);
        changed = true;
    } else if !driven && ours {
        block.queue_always.store(0, Ordering::Release);
        block.flags.fetch_and(!FLAG_DAEMON_QUEUE, Ordering::AcqRel);
        changed = true;
    }
    changed
}

/// A block's knobs and counters as the gcgroup of `pid` on `gpu`. A priority the block
/// holds out of GVM's range reads as the lowest one. Threads held at the launch gate count
/// as pending kernels (each is a launch about to be submitted).
pub fn snapshot(block: &ControlBlock, pid: u32, gpu: u32) -> GcgroupSnapshot {
    let submitted = block.submitted.load(Ordering::Relaxed);
    let ended = block.ended.load(Ordering::Relaxed);
    let waiting = u64::from(block.waiting.load(Ordering::Relaxed));
    let priority = u8::try_from(block.priority.load(Ordering::Relaxed))
        .ok()
        .and_then(|p| Priority::try_from(p).ok())
        .unwrap_or(Priority::MAX);
    GcgroupSnapshot {
        pid,
        gpu,
        memory_limit: MemoryLimit::from_bytes(block.memory_limit.load(Ordering::Relaxed)),
        memory_current: block.memory_current.load(Ordering::Relaxed),
        swap_current: block.swap_current.load(Ordering::Relaxed),
        priority,
        frozen: block.frozen.load(Ordering::Acquire) != 0,
        stat: KernelStat {
            submitted,
            ended,
            pending: submitted.saturating_sub(ended).saturating_add(waiting),
        },
    }
}
