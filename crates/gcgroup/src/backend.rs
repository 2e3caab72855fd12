//! The backend seam: one trait over every implementation of the gcgroup knobs.
//!
//! The daemon applies memory limits, priorities and freezes through
//! [`GcgroupBackend`] without knowing who enforces them: GVM's debugfs tree
//! ([`crate::GvmTree`], name `gvm`), the CUDA interposer's control blocks (`shim`, in
//! the `gvm-shim-host` crate) or an in-memory table for tests ([`crate::MemoryBackend`],
//! name `memory`). All share the knob names and semantics of GVM's ABI.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::knob::Knob;
use crate::tree::GvmTree;
use crate::value::{KernelStat, MemoryLimit, Priority};

/// Every knob of one gcgroup, read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcgroupSnapshot {
    /// The process id.
    pub pid: u32,
    /// UVM's GPU index.
    pub gpu: u32,
    /// `memory.limit`.
    pub memory_limit: MemoryLimit,
    /// `memory.current`: bytes resident on the GPU.
    pub memory_current: u64,
    /// `memory.swap.current`: bytes evicted to host memory.
    pub swap_current: u64,
    /// `compute.priority`.
    pub priority: Priority,
    /// `compute.freeze`.
    pub frozen: bool,
    /// `gcgroup.stat`.
    pub stat: KernelStat,
}

/// Something that enforces per-process, per-GPU limits with GVM's knobs.
///
/// A process that disappears mid-call yields [`crate::Error::ProcessGone`].
pub trait GcgroupBackend: Send + Sync {
    /// The processes that currently have a gcgroup, sorted.
    fn processes(&self) -> Result<Vec<u32>>;
    /// The GPU indexes `pid` has registered, sorted.
    fn gpus(&self, pid: u32) -> Result<Vec<u32>>;
    /// How many GPUs `pid` has registered, when that can be told more cheaply than by
    /// listing them ([`GcgroupBackend::gpus`]); `None` when it cannot. A watcher lists
    /// again only when the count moved (and, now and then, regardless: a GPU dropped
    /// and another registered between two looks keep the count).
    fn gpu_count(&self, _pid: u32) -> Result<Option<usize>> {
        Ok(None)
    }
    /// Every knob of `pid` on `gpu`.
    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot>;
    /// Only the kernel counters (`gcgroup.stat`) of `pid` on `gpu`: what a scheduler polls
    /// many times a second, so backends whose full read costs several files override it.
    fn stat(&self, pid: u32, gpu: u32) -> Result<KernelStat> {
        Ok(self.read(pid, gpu)?.stat)
    }
    /// Set `memory.limit`.
    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()>;
    /// Set `compute.priority`.
    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()>;
    /// Set `compute.freeze`.
    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()>;
    /// A short stable name: `gvm`, `shim`, `memory`, ...
    fn name(&self) -> &'static str;
    /// Apply one typed knob write (the planner's unit of work).
    fn write(&self, pid: u32, gpu: u32, knob: Knob) -> Result<()> {
        match knob {
            Knob::MemoryLimit(limit) => self.set_memory_limit(pid, gpu, limit),
            Knob::Priority(priority) => self.set_priority(pid, gpu, priority),
            Knob::Frozen(frozen) => self.set_frozen(pid, gpu, frozen),
        }
    }
}

impl<B: GcgroupBackend + ?Sized> GcgroupBackend for Box<B> {
    fn processes(&self) -> Result<Vec<u32>> {
        (**self).processes()
    }
    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        (**self).gpus(pid)
    }
    fn gpu_count(&self, pid: u32) -> Result<Option<usize>> {
        (**self).gpu_count(pid)
    }
    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        (**self).read(pid, gpu)
    }
    fn stat(&self, pid: u32, gpu: u32) -> Result<KernelStat> {
        (**self).stat(pid, gpu)
    }
    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()> {
        (**self).set_memory_limit(pid, gpu, limit)
    }
    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        (**self).set_priority(pid, gpu, priority)
    }
    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        (**self).set_frozen(pid, gpu, frozen)
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn write(&self, pid: u32, gpu: u32, knob: Knob) -> Result<()> {
        (**self).write(pid, gpu, knob)
    }
}

impl GcgroupBackend for GvmTree {
    fn processes(&self) -> Result<Vec<u32>> {
        GvmTree::processes(self)
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        GvmTree::gpus(self, pid)
    }

    fn gpu_count(&self, pid: u32) -> Result<Option<usize>> {
        GvmTree::gpu_count(self, pid)
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        self.gcgroup(pid, gpu).snapshot()
    }

    fn stat(&self, pid: u32, gpu: u32) -> Result<KernelStat> {
        self.gcgroup(pid, gpu).stat()
    }

    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()> {
        self.gcgroup(pid, gpu).set_memory_limit(limit)
    }

    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        self.gcgroup(pid, gpu).set_priority(priority)
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        self.gcgroup(pid, gpu).set_frozen(frozen)
    }

    fn name(&self) -> &'static str {
        "gvm"
    }
}
