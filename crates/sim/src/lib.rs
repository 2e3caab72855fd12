//! A simulated GPU host for gvm-vgpu: the mdev sysfs and the GVM debugfs, served by FUSE.
//!
//! On a real host the manager talks to two kernel interfaces. The VFIO *mediated
//! device* (mdev) framework lists physical *parents* under
//! `/sys/class/mdev_bus/`, each offering vGPU *types* under
//! `mdev_supported_types/`; writing a UUID to a type's `create` makes a device,
//! writing `1` to the device's `remove` drops it. GVM's modified `nvidia-uvm`
//! exposes per-process GPU cgroups ("gcgroups") in debugfs under
//! `/sys/kernel/debug/nvidia-uvm/processes/<pid>/<gpu>/` with memory limits,
//! compute priority and freeze.
//!
//! This crate serves both trees under one directory DIR with the kernel's
//! semantics and errno values, so the project's clients, a shell `echo` and
//! Debian's `mdevctl` (with `DIR/sys` bind-mounted over `/sys`) work against it
//! unchanged. It also runs real *owner* processes (with `GVM_VGPU_UUID` in their
//! environment) whose simulated GPU work responds to priority, freeze and memory
//! limits.
//!
//! On newer GPUs NVIDIA's vGPUs are SR-IOV virtual functions instead of mdevs
//! (docs/vendor-vfio.md); with `--sriov-gpus N` the simulator also serves that ABI under
//! `/sys/bus/pci/devices` ([`vf`]).
//!
//! Structure, from pure to I/O:
//! * [`catalog`] — the simulated parents and types (pure data);
//! * [`workload`] — the GPU time/kernels/memory model (pure, explicit clock);
//! * [`vf`] — simulated SR-IOV GPUs whose VFs carry vGPUs (NVIDIA's VF sysfs ABI; pure);
//! * [`host`] — host state and the kernel's store rules (no I/O; processes behind a trait);
//! * [`tree`] — the path layout computed from the host;
//! * [`procs`] — real owner processes;
//! * [`fuse`] — the thin `fuser` adapter; [`mount`] — mounting, stale-mount checks, serving.
//! * [`cli`] — the `gvm-vgpu-sim` command line (for `main` and the man page generator);
//! * [`error`] — the errors of the simulated host, each file operation error with its errno.

pub mod catalog;
pub mod cli;
pub mod error;
pub mod fuse;
pub mod host;
pub mod mount;
pub mod procs;
pub mod tree;
pub mod vf;
pub mod workload;

pub use catalog::Model;
pub use error::{FsError, SimError};
pub use host::{OwnerProcs, SimHost};
