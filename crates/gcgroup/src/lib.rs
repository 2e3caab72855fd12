//! Client of GVM's gcgroup ABI: per-process GPU memory limits, priorities and freezing.
//!
//! [GVM](https://github.com/ovg-project/GVM) modifies NVIDIA's `nvidia-uvm`
//! kernel module so that every process using the GPU gets a *gcgroup*, a
//! cgroup-like set of knobs per (process, GPU), in debugfs:
//!
//! * `/sys/kernel/debug/nvidia-uvm/processes/list` — a `PID` header, then one
//!   pid a line;
//! * `processes/<pid>/<gpu>/` — `<gpu>` is UVM's GPU index (`0`, then normally
//!   `8` for the next physical GPU), with `memory.limit` (bytes; over-limit pages
//!   swap to host memory), `memory.current`, `memory.swap.current`,
//!   `compute.priority` (0..=16, timeslice = 524288 µs >> priority),
//!   `compute.freeze` (1 preempts and stops the process's GPU work) and
//!   `gcgroup.stat` (kernel counts).
//!
//! [`GvmTree`] reads and writes that tree through [`gvm_host_root::HostRoot`];
//! [`GcgroupBackend`] is the one seam the daemon uses so that GVM, the CUDA shim
//! (`gvm-shim-host`) and tests ([`MemoryBackend`]) are interchangeable peers, with a
//! [`Knob`] as the typed value of a write and [`Composite`] routing between two
//! backends. Processes come and go at any
//! moment: [`Error::ProcessGone`] says so and is not a failure.
//!
//! ```no_run
//! use gvm_gcgroup::{GvmTree, MemoryLimit, Priority};
//! use gvm_host_root::HostRoot;
//!
//! let tree = GvmTree::new(HostRoot::default());
//! for pid in tree.processes()? {
//!     for gpu in tree.gpus(pid)? {
//!         let g = tree.gcgroup(pid, gpu);
//!         g.set_memory_limit(MemoryLimit::Bytes(6 << 30))?;
//!         g.set_priority(Priority::try_from(2)?)?;
//!         println!("{pid}/{gpu}: {:?}", g.snapshot()?);
//!     }
//! }
//! # Ok::<(), gvm_gcgroup::Error>(())
//! ```
//!
//! Modules: `backend` (the trait and [`GcgroupSnapshot`]), `composite` ([`Composite`]),
//! `error` ([`Error`], the errno mapping), [`gpu_index`] (GVM's numbering of GPUs),
//! [`host_gpus`] (the names operators use: position in PCI order, PCI address), `knob`
//! ([`Knob`]), `memory` ([`MemoryBackend`]), `tree` ([`GvmTree`], the debugfs files),
//! `value` (knob values and their text forms).
#![deny(missing_docs)]

mod backend;
mod composite;
mod error;
pub mod gpu_index;
pub mod host_gpus;
mod knob;
mod memory;
mod tree;
mod value;

pub use backend::{GcgroupBackend, GcgroupSnapshot};
pub use composite::Composite;
pub use error::{map_io_error, Error, Result};
pub use knob::Knob;
pub use memory::MemoryBackend;
pub use tree::{
    Gcgroup, GvmTree, COMPUTE_FREEZE, COMPUTE_PRIORITY, GCGROUP_STAT, MEMORY_CURRENT, MEMORY_LIMIT,
    SWAP_CURRENT,
};
pub use value::{KernelStat, MemoryLimit, Priority, UNLIMITED};
