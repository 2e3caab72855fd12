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
//! The crate is split so the logic is testable without a host. The request core
//! ([`daemon::Daemon`] with `handlers`) owns the observed and desired state and lends each
//! part what it reads and may change; no part reaches back into the core (a test,
//! `tests/module_graph.rs`, fails on a module cycle). Architecture: `docs/architecture.md`.
//!
//! Modules:
//! - [`cli`]: the daemon's command line (for `main` and the man page generator);
//! - [`config`]: the config file `/etc/gvm-vgpu/gvm-vgpud.toml`, the command line over it,
//!   and what a `SIGHUP` may change while the daemon runs;
//! - [`daemon`]: the transport-free core: state, rescans, the executor;
//!   [`daemon::Daemon::handle`] answers a [`gvm_proto::Call`], [`daemon::Daemon::tick`]
//!   rescans and reconciles;
//! - `handlers`: one method per API call, on the core (the request core);
//! - [`model`]: observed and desired state as plain data, knob precedence;
//! - [`plan`]: the pure reconciliation planner (observed + desired → typed knob writes);
//! - [`policy_file`]: `/etc/gvm-vgpu/policy.json`, per-GPU entries by PCI address, and the
//!   migration of an older daemon's entries keyed by GVM index;
//! - [`ports`]: the mdev and catalog interfaces and their real implementations;
//! - [`qmp`]: a small QMP client, the fallback that pauses a plain-QEMU VM;
//! - [`relay_latency`]: the daemon's share of relaying a VM's busy transition to the VMs it holds;
//! - [`catalog`]: where the catalog is read from, loading it whole (start and `SIGHUP`), and
//!   what the last load or refused reload was, for `ping`;
//! - [`backends`]: the gcgroup backends (GVM, shim, both) and the handles shared with them,
//!   built once in `main`;
//! - [`sandbox`]: every place the daemon writes, for the systemd unit's `ReadWritePaths=`;
//! - [`scheduler`]: the time-slice scheduler, one `gvm-sched` engine per GPU, over a
//!   [`scheduler::SchedContext`] lent by the core;
//! - [`nvidia_sched`]: NVIDIA's own vGPU scheduler and per-vGPU framebuffer through NVML, on
//!   NVIDIA vGPU hosts;
//! - [`domains`]: libvirt lifecycle (domain → vGPU map, paused domains frozen);
//! - [`fallback`]: the hard fallback (pause the VM) for a freeze the guest does not acknowledge;
//! - [`libvirt_watch`]: the threads that feed libvirt's events to the core;
//! - [`agent_ingest`]: guest-agent channels, validated, and the guest table;
//! - [`limits`]: memory limits checked against the GPU model's framebuffer (`force`);
//! - [`log_limit`]: rate-limited logging (one line per interval per kind of event);
//! - [`owners`]: owner-resolution rules (environment, cgroup, libvirt);
//! - [`store`]: crash-safe persistence (atomic JSON files);
//! - [`batches`]: `define_batch` lists sent in parts, held until their last part;
//! - [`notify`]: systemd readiness (`READY=1`, `RELOADING=1`) over `$NOTIFY_SOCKET`;
//! - [`mdevctl`]: mdevctl's definition format, for `import-mdevctl`;
//! - [`metrics`]: Prometheus text for vGPUs and guest agents;
//! - [`server`]: the API socket, the metrics endpoint, the rescan and scheduler loops (tokio);
//! - [`accept`]: the listeners' defences: connection caps (total, per uid, a reserve for
//!   admins) and a backoff on failed accepts;
//! - [`shim_listener`]: the shim registration socket (tokio); the handover itself is
//!   `gvm_shim_host::handover`;
//! - [`sweep`]: spreading periodic per-owner work over rescan ticks;
//! - [`uevent`]: kernel uevents that wake the rescan.
//! - [`vf_restore`]: restoring defined SR-IOV VF vGPUs at start: VFs to enable, the order,
//!   what cannot be restored (mixed sizes without NVML);
//! - [`vm_arbiter`]: arbitration between VMs (who is held, the cap on a VM's busy claims);

pub mod accept;
pub mod agent_ingest;
pub mod backends;
pub mod batches;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domains;
pub mod fallback;
mod handlers;
pub mod libvirt_watch;
pub mod limits;
pub mod log_limit;
pub mod mdevctl;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod nvidia_sched;
pub mod owners;
pub mod plan;
pub mod policy_file;
pub mod ports;
pub mod qmp;
pub mod relay_latency;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod shim_listener;
pub mod store;
pub mod sweep;
pub mod uevent;
pub mod vf_restore;
pub mod vm_arbiter;
