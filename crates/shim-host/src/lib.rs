//! The manager's side of the CUDA shim (`libgvm_cuda.so`), shared by every manager that
//! drives shim processes: gvm-vgpud on a host, and the guest agent inside a VM.
//!
//! A shim process keeps its knobs and counters in a shared *control block*. It hands that
//! block to its manager over the shim socket ([`handover`]), which records it in a
//! [`registry::ShimRegistry`]; [`backend::ShimBackend`] then presents every registered (or
//! scanned) block as GVM gcgroups, a peer of GVM's debugfs tree behind
//! `gvm_gcgroup::GcgroupBackend`. [`gating::GatingModes`] says per GPU whether the shims'
//! own priority arbitration gates them or the scheduler's freezes do.
//!
//! No tokio and no daemon here: the transport (a tokio listener in gvm-vgpud) reads a line
//! and calls [`handover::register`]; the registry and gating handles are made by the caller
//! and passed to whoever needs them.
//!
//! Modules:
//! - [`backend`]: [`backend::ShimBackend`], the control blocks as a gcgroup backend;
//! - [`blocks`]: block names, counters as a snapshot, the gating bits of one block;
//! - [`gating`]: [`gating::GatingModes`], the per-GPU gating choice;
//! - [`handover`]: the registration request's checks and [`handover::register`];
//! - [`registry`]: [`registry::ShimRegistry`], the registered processes;
//! - [`relay`]: cross-domain arbitration decisions (pure);
//! - [`relay_hub`]: [`relay_hub::RelayHub`], the relay running: blocks per (GPU, domain),
//!   their watchers, the masks written.

pub mod backend;
pub mod blocks;
pub mod gating;
pub mod handover;
pub mod registry;
pub mod relay;
pub mod relay_hub;
