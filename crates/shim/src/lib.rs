//! `libgvm_cuda.so`: the userspace gcgroup backend, a CUDA driver-API interposer.
//!
//! GVM enforces per-process GPU limits ("gcgroups": `memory.limit`, `compute.priority`,
//! `compute.freeze`, kernel counts) inside a modified NVIDIA UVM driver. On stock drivers the
//! same knobs can be enforced from inside each process: this library is loaded with
//! `LD_PRELOAD` into the processes that own a vGPU and sits between the program (or the CUDA
//! runtime, cuBLAS, NCCL…) and `libcuda.so.1`.
//!
//! * **Reaching the driver.** Programs find driver functions by linking them, by `dlsym`, or
//!   through `cuGetProcAddress`/`cuGetProcAddress_v2` (CUDA 12/13 runtimes fetch
//!   `cuGetProcAddress` through itself first). The library answers all three with its
//!   wrappers, chosen by name, requested version and stream flavour ([`resolve`]); whatever it
//!   does not wrap goes straight to the driver.
//! * **Memory.** Every device allocation path and every free is accounted per GPU
//!   ([`accounting`]); over the limit an allocation fails with `CUDA_ERROR_OUT_OF_MEMORY`, or,
//!   when host swap is allowed, is placed in managed memory that prefers the host and counted
//!   as swap. `cuMemGetInfo` and `cuDeviceTotalMem` report the limit.
//! * **Compute.** Every launch passes a gate ([`gate`]): two atomic loads when nothing is
//!   throttled; a futex sleep while frozen or held by the policy engine. A process that must
//!   yield to a busy, more important one is held on the CPU and, with what it already
//!   queued, on the GPU itself ([`gpu_gate`]).
//! * **Control.** Knobs and counters live in a shared-memory block ([`control`]), by default
//!   a sealed memfd the library creates from environment variables ([`config`]) and hands
//!   to gvm-vgpud when it registers ([`register`]); gvm-vgpud then retunes it. Without a
//!   daemon the library says so once on stderr and runs standalone.
//!
//! The library never fails the program it is loaded into: set-up errors are logged and the
//! library degrades to a private block or to plain forwarding. A process that never touches
//! CUDA sees only an extra `dlsym` hop.
//!
//! The Rust API (the `rlib`) is what gvm-vgpud and tests use to create and drive control
//! blocks:
//!
//! ```
//! use gvm_cuda::{config::Knobs, control::ControlMap};
//! let knobs = Knobs { memory_limit: 6 << 30, ..Knobs::default() };
//! let shim = ControlMap::create_sealed(&knobs, 0)?;      // the process's side
//! let handed = shim.fd().expect("shared").try_clone_to_owned()?; // what it sends
//! let daemon = ControlMap::from_handed_fd(handed)?;        // the daemon's side
//! daemon.set_frozen(true);                                 // holds the process's new launches
//! assert_eq!(shim.block().frozen.load(std::sync::atomic::Ordering::Acquire), 1);
//! assert_eq!(daemon.block().knobs().memory_limit, 6 << 30);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules:
//! - [`accounting`]: the allocation ledger: device memory held per GPU, against its limit;
//! - [`capture`]: stream captures in progress, which the helper thread must not disturb;
//! - `driver`: driver calls the shim makes on its own behalf;
//! - `ffi`: the foreign boundary: hand-declared CUDA driver types, the loader, futexes, mappings;
//! - [`gate`]: the launch gate and the kernel counters;
//! - [`gpu_gate`]: the GPU-side gate, holding a yielding process's queued work;
//! - [`gpus`]: the process's arbitration on each GPU it launches on;
//! - `hooks`: the exported `extern "C"` entry points: `dlsym`, `cuGetProcAddress`, the wrappers;
//! - [`queue`]: what a process still has on the GPU, one ring of CUDA events per stream;
//! - [`resolve`]: which driver entry points the shim wraps, and how a request for one is answered;
//! - `shim`: the process-wide shim state, set up on the first wrapped CUDA call.

pub mod accounting;
pub mod capture;
mod driver;
mod ffi;
pub mod gate;
pub mod gpu_gate;
pub mod gpus;
mod hooks;
pub mod queue;
pub mod resolve;
mod shim;

/// The control/arbitration blocks and knobs, shared with gvm-vgpud (crate `gvm-shim-abi`),
/// and the OS primitives under them (`sys`: sealed memfds, descriptor passing).
pub use gvm_shim_abi::{arbiter, config, control, error, priority, register, reregister, sys};
pub use gvm_shim_abi::{Error, Result};
