//! The gvm-vgpu host daemon, `gvm-vgpud`, as a library.
//!
//! One daemon runs per host. It *adopts* every mediated vGPU device on the host
//! (whether `gvm-vgpu` created it or someone wrote a UUID into an mdev `create`
//! file by hand), finds the vGPU's *owner* processes (the host processes whose GPU
//! channels do the VM's work: the libvirt domain's QEMU, processes carrying
//! `GVM_VGPU_UUID=<uuid>`, processes in a cgroup named after the UUID), and keeps
//! each owner's GVM gcgroups (per-process × per-GPU knob directories in debugfs)
//! at the vGPU's effective memory limit, compute priority and freeze state.
//!
//! The crate is split so the logic is testable without a host:
//! - [`model`]: observed and desired state as plain data, knob precedence;
//! - [`plan`]: the pure reconciliation planner (observed + desired → actions);
//! - [`store`]: crash-safe persistence (atomic JSON files);
//! - [`owners`]: owner-resolution rules (environment, cgroup, libvirt);
//! - [`ports`]: the host interfaces (mdev, gcgroups, catalog) and in-memory fakes;
//! - [`daemon`]: the transport-free core: [`daemon::Daemon::handle`] answers a
//!   [`gvm_proto::Call`], [`daemon::Daemon::tick`] rescans and reconciles;
//! - [`server`]: the Unix-socket and metrics transports (tokio);
//! - [`domains`]: libvirt lifecycle (domain → vGPU map, paused domains frozen);
//! - [`shim_backend`]: the CUDA shim's control blocks as gcgroups (`--backend shim|auto`);
//! - [`shim_register`]: the shim socket on which CUDA processes register;
//! - [`metrics`]: Prometheus text rendering.

pub mod agent_ingest;
pub mod backends;
pub mod daemon;
pub mod domains;
mod handlers;
pub mod libvirt_watch;
pub mod mdevctl;
pub mod metrics;
pub mod model;
pub mod owners;
pub mod plan;
pub mod ports;
pub mod scheduler;
pub mod server;
pub mod shim_listener;
pub mod store;
pub mod sweep;
pub mod uevent;
