//! The ABI between the CUDA interposer (`libgvm_cuda.so`, crate `gvm-cuda-shim`) and the host
//! daemon (`gvm-vgpud`): what both sides map and agree on, and nothing that interposes.
//!
//! A process running under the interposer keeps its gcgroup knobs and counters in a
//! *control block*, a small `#[repr(C)]` struct of atomics in shared memory: by default an
//! anonymous memfd sealed against shrinking and growing (or a `GVM_SHIM_CONTROL` file):
//! memory limit and usage, priority, freeze and hold flags, kernel counts. The daemon maps
//! the same memory, handed to it as a descriptor, to read and retune it, exactly as it writes
//! GVM's debugfs knobs ([`control`], which also says what a manager agrees to map: nothing
//! whose owner could resize it under the mapping). Processes of one GPU also share an
//! *arbitration block* (`/dev/shm/gvm-vgpu-gpu-<pci bus id>`) through which a lower-priority
//! process holds its launches while a higher-priority one has GPU work ([`arbiter`],
//! [`priority`]). [`config`] parses the knobs from the environment for processes running
//! without a daemon. [`register`] is the socket protocol by which a shim process announces
//! itself to the daemon (its GPUs by PCI bus id, its control block's descriptor, its pid as
//! it sees it); [`reregister`] keeps that registration alive across daemon restarts. [`vgpu_env`] names `GVM_VGPU_UUID`, the
//! variable that ties a process to its vGPU, and reads it from a `/proc/<pid>/environ` block.
//!
//! This crate is separate from the interposer so that the daemon links the block layout
//! without linking the interposer's exported `dlsym` and `cu*` symbols.
//!
//! Modules:
//! - [`arbiter`]: priority arbitration between the shim processes that share one physical GPU;
//! - [`config`]: knobs from the environment, used when no daemon hands over a control block;
//! - [`control`]: the control block, the shared-memory page between gvm-vgpud and the shim;
//! - [`error`]: errors of the shim's own set-up, which never reach the CUDA program;
//! - [`hold`]: the adaptive hold linger learned from launch gaps and batch kernel times (not yet wired in);
//! - [`priority`]: this process's side of priority arbitration;
//! - [`register`]: registration of a shim process with gvm-vgpud over the shim socket;
//! - [`reregister`]: keeping that registration alive across daemon restarts;
//! - [`sys`]: the OS primitives the blocks are built on (mappings, sealed memfds, descriptor
//!   passing, futexes), and all of the crate's `unsafe`.

#![deny(missing_docs)]

pub mod arbiter;
pub mod config;
pub mod control;
pub mod error;
pub mod hold;
pub mod priority;
pub mod register;
pub mod reregister;
pub mod sys;
pub mod vgpu_env;

pub use error::{BlockProblem, Error, Result};
