//! Result types: what the daemon knows about each vGPU.
//!
//! A vGPU has a *kernel type* (the mdev type id on its parent, e.g. `gvmsim-1`) and,
//! when the catalog knows that type, a *catalog type* (e.g. `sim-4c`) that gives its
//! default knobs. Knobs are the GVM gcgroup settings the daemon writes for every
//! owner process: memory limit, compute priority, freeze; plus the fixed share used
//! by the fixed-share scheduling policy. Each effective knob comes from a
//! [`Source`]: the type, a persistent override (stored with the definition) or a
//! live override (until the device goes away).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `ping` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Daemon package version.
    pub version: String,
    /// [`crate::PROTOCOL_VERSION`] of the daemon.
    pub protocol: u32,
    /// Host root the daemon manages.
    pub root: String,
    /// vGPUs known (live or defined).
    pub vgpus: usize,
    /// The daemon's vGPU type catalog: where it is read from, when it was loaded, the last
    /// reload that failed. Absent from daemons older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogStatus>,
    /// The daemon's config file and what its last reload did. Absent from daemons older
    /// than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
}

/// The config file a daemon read (`ping`); `SIGHUP` (`systemctl reload gvm-vgpud`) reads it
/// again and applies what a running daemon can change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The file (`/etc/gvm-vgpu/gvm-vgpud.toml`, or `--config`).
    pub file: String,
    /// Whether it existed when last read (a missing default file means the defaults).
    pub exists: bool,
    /// Reloads that were applied since the daemon started.
    pub reloads: u64,
    /// The last reload, applied or refused; absent before the first `SIGHUP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ConfigReload>,
}

/// What one config reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReload {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Settings whose new value the daemon took (file keys, e.g. `rescan-ms`).
    pub applied: Vec<String>,
    /// Settings that changed but take effect only on a restart; their old value stays.
    pub need_restart: Vec<String>,
    /// Why the reload was refused (nothing changed then); absent when it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The catalog a daemon uses (`ping`): the CLI's `--catalog` does not reach it; a changed
/// catalog is read again on `SIGHUP` (`systemctl reload gvm-vgpud`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogStatus {
    /// Directories read over the built-in catalog, in order, as the daemon names them (a
    /// later one overrides a GPU model of the same name; a missing one is skipped).
    pub dirs: Vec<String>,
    /// Files the catalog in use came from (`<builtin>/…` for the compiled-in ones).
    pub files: Vec<String>,
    /// When the catalog in use was loaded, in seconds since the Unix epoch.
    pub loaded_at: u64,
    /// Reloads that succeeded since the daemon started.
    pub reloads: u64,
    /// The last reload, when it failed after the catalog in use was loaded: the catalog in
    /// use is the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_failed: Option<ReloadFailure>,
}

/// A catalog reload that was refused, so the catalog before it stayed in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// Why: the error and its causes, once (file, line and column where the catalog says).
    pub error: String,
}

/// Knob overrides; `None` means "inherit from the type".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    /// Memory limit in bytes ([`crate::UNLIMITED`] for none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Compute priority 0..=16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Fixed share in (0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

impl Overrides {
    /// No override set.
    pub fn is_empty(&self) -> bool {
        self.memory_limit.is_none() && self.priority.is_none() && self.share.is_none()
    }

    /// `other`'s values where set, else ours.
    pub fn merged_with(&self, other: &Overrides) -> Overrides {
        Overrides {
            memory_limit: other.memory_limit.or(self.memory_limit),
            priority: other.priority.or(self.priority),
            share: other.share.or(self.share),
        }
    }
}

/// Which kernel ABI backs a vGPU: a VFIO-mdev device, or an NVIDIA vGPU on an SR-IOV
/// virtual function (docs/vendor-vfio.md). Absent from older daemons and definition files,
/// read as `mdev`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VgpuKind {
    /// A VFIO-mdev device: `parent` is the mdev parent, `mdev_type` its type id.
    #[default]
    Mdev,
    /// A VF vGPU: `parent` is the PF (the GPU), `mdev_type` the VF type ID in decimal.
    Vf,
}

impl VgpuKind {
    /// `mdev` or `vf`, as JSON and the text tables write it.
    pub fn as_text(self) -> &'static str {
        match self {
            VgpuKind::Mdev => "mdev",
            VgpuKind::Vf => "vf",
        }
    }

    /// Whether this is the default (`mdev`), for fields left out of older files.
    pub fn is_mdev(&self) -> bool {
        *self == VgpuKind::Mdev
    }
}

/// A persistent vGPU definition, one file per UUID under `/etc/gvm-vgpu/vgpus/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// The vGPU's UUID.
    pub uuid: Uuid,
    /// Parent device name.
    pub parent: String,
    /// Kernel mdev type id the device is created with (a VF vGPU: its VF type ID in decimal).
    pub mdev_type: String,
    /// Catalog type name, when the catalog knew the type at define time.
    #[serde(default)]
    pub type_name: Option<String>,
    /// Which kernel ABI the vGPU is created through; absent (older files): `mdev`.
    #[serde(default, skip_serializing_if = "VgpuKind::is_mdev")]
    pub kind: VgpuKind,
    /// A VF vGPU's kernel type name (`NVIDIA H100-20C`), by which it is re-created: VF type
    /// IDs change between driver releases, names rarely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_name: Option<String>,
    /// Create at daemon start and when the parent registers.
    #[serde(default)]
    pub autostart: bool,
    /// Persistent knob overrides.
    #[serde(default)]
    pub overrides: Overrides,
    /// Uids whose processes may claim this vGPU through their own environment
    /// (`GVM_VGPU_UUID`) or cgroup, beyond the daemon's `--owner-uid` list (root and the
    /// libvirt QEMU user always may).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_uids: Vec<u32>,
}

/// The answer to `define_batch`: every definition was stored (the call fails as a
/// whole otherwise); with `start`, each vGPU either started or failed on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// The stored definitions, in request order.
    pub defined: Vec<Definition>,
    /// vGPUs created.
    #[serde(default)]
    pub started: Vec<Uuid>,
    /// vGPUs whose creation failed (their definitions stay), with why.
    #[serde(default)]
    pub failed: Vec<BatchFailure>,
}

/// One vGPU of a batch that could not be started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchFailure {
    /// The vGPU.
    pub uuid: Uuid,
    /// What went wrong and what to do about it.
    pub error: String,
}

/// Whether a vGPU exists on the host, is only defined, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VgpuState {
    /// The mdev device exists.
    Running,
    /// Only a definition exists (not created, or its parent is absent).
    Stopped,
}

/// How a vGPU comes to exist: by `start` only, also by the daemon, or not defined at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Defined, created only by `gvm-vgpu start`.
    Manual,
    /// Defined with autostart: created when the daemon starts or the parent registers.
    Auto,
    /// No definition: the vGPU exists only while its device does.
    #[default]
    NotDefined,
}

impl StartMode {
    /// The start mode of a vGPU with or without a definition (`autostart`: the definition's flag).
    pub fn of(defined: bool, autostart: bool) -> StartMode {
        match (defined, autostart) {
            (false, _) => StartMode::NotDefined,
            (true, false) => StartMode::Manual,
            (true, true) => StartMode::Auto,
        }
    }

    /// How tables print it: `manual`, `auto`, `not defined`.
    pub fn as_text(self) -> &'static str {
        match self {
            StartMode::Manual => "manual",
            StartMode::Auto => "auto",
            StartMode::NotDefined => "not defined",
        }
    }
}

/// Effective knob values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    /// Memory limit in bytes ([`crate::UNLIMITED`] for none).
    pub memory_limit: u64,
    /// Compute priority 0..=16.
    pub priority: u8,
    /// Fixed share, when the type or an override gives one.
    pub share: Option<f64>,
    /// Whether the vGPU's owners are frozen.
    pub frozen: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            memory_limit: crate::UNLIMITED,
            priority: 8,
            share: None,
            frozen: false,
        }
    }
}

/// Where an effective knob value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The kernel default (no type knows this vGPU, or the type sets nothing).
    Default,
    /// The catalog type.
    Type,
    /// An override stored in the definition.
    Persistent,
    /// A live override (`set --live`), kept until the device goes away.
    Live,
}

/// Source of each knob in [`Knobs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    /// Source of the memory limit.
    pub memory_limit: Source,
    /// Source of the priority.
    pub priority: Source,
    /// Source of the share.
    pub share: Source,
}

/// Per-vGPU totals over every owner's gcgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of `memory.current` (bytes).
    pub memory_current: u64,
    /// Sum of `memory.swap.current` (bytes evicted to host).
    pub swap_current: u64,
    /// Sum of `nr_submitted_kernels`.
    pub kernels_submitted: u64,
    /// Sum of `nr_ended_kernels`.
    pub kernels_ended: u64,
    /// Sum of `nr_pending_kernels`.
    pub kernels_pending: u64,
    /// Number of gcgroups (owner × GPU) counted.
    pub gcgroups: u32,
    /// Number of them currently frozen.
    pub frozen_gcgroups: u32,
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgpuInfo {
    /// The vGPU's UUID.
    pub uuid: Uuid,
    /// Parent device name.
    pub parent: String,
    /// Kernel mdev type id (a VF vGPU: its VF type ID in decimal).
    pub mdev_type: String,
    /// Catalog type name, when managed.
    pub type_name: Option<String>,
    /// Which kernel ABI backs it (absent from older daemons: `mdev`).
    #[serde(default)]
    pub kind: VgpuKind,
    /// A running VF vGPU's virtual function (PCI address), else `null`. Not its identity:
    /// VFs are reused; the UUID is.
    #[serde(default)]
    pub vf: Option<String>,
    /// Running or only defined.
    pub state: VgpuState,
    /// Whether the catalog knows its type (unmanaged vGPUs are listed, never touched).
    pub managed: bool,
    /// Whether a persistent definition exists.
    pub defined: bool,
    /// Autostart flag of the definition.
    pub autostart: bool,
    /// How the vGPU is started: `manual`, `auto` or `not_defined` (`defined` and
    /// `autostart` in one; absent from older daemons, read as `not_defined`).
    #[serde(default)]
    pub start: StartMode,
    /// The definition's `owner_uids`: users (beyond the daemon's) whose processes may claim it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_uids: Vec<u32>,
    /// libvirt domain holding the device, when known.
    pub domain: Option<String>,
    /// Owner process ids.
    pub owners: Vec<u32>,
    /// Effective knobs (what the daemon writes).
    pub knobs: Knobs,
    /// Totals over owners' gcgroups, from the last scan.
    pub totals: Totals,
}

/// How an owner process was tied to its vGPU (the owner rules in docs/daemon.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerRule {
    /// `GVM_VGPU_UUID=<uuid>` in the process environment.
    Environment,
    /// The process lives in a cgroup named after the UUID.
    Cgroup,
    /// The QEMU process of the libvirt domain holding the mdev.
    Libvirt,
    /// The process holding a VF vGPU's VFIO device open (`/dev/vfio/<group>` or its VFIO
    /// cdev): the QEMU the VF is assigned to.
    Vfio,
}

/// One owner gcgroup (process × GPU) as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcgroupInfo {
    /// Position of the GPU in PCI order (`0..N-1`); `None` when no PCI GPU has its GVM index.
    pub gpu: Option<u32>,
    /// PCI address of the GPU, when known.
    pub pci: Option<String>,
    /// GVM's UVM index of the GPU (the `<gpu>` of `processes/<pid>/<gpu>/`).
    pub gvm_index: u32,
    /// `memory.limit`.
    pub memory_limit: u64,
    /// `memory.current`.
    pub memory_current: u64,
    /// `memory.swap.current`.
    pub swap_current: u64,
    /// `compute.priority`.
    pub priority: u8,
    /// `compute.freeze`.
    pub frozen: bool,
    /// `nr_submitted_kernels`.
    pub kernels_submitted: u64,
    /// `nr_ended_kernels` (0 from daemons older than the field).
    #[serde(default)]
    pub kernels_ended: u64,
    /// `nr_pending_kernels`.
    pub kernels_pending: u64,
}

/// An owner process and its gcgroups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// Process id.
    pub pid: u32,
    /// Rule that made it an owner.
    pub rule: OwnerRule,
    /// Its GPU registrations.
    pub gcgroups: Vec<GcgroupInfo>,
}

/// A process that claimed a vGPU through its environment or cgroup and was refused: its uid
/// may not claim vGPUs (`gvm-vgpud --owner-uid` allows more users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedClaim {
    /// Process id.
    pub pid: u32,
    /// Its effective uid, when it could be read.
    pub uid: Option<u32>,
    /// The rule it claimed by.
    pub rule: OwnerRule,
}

/// `show` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VgpuDetail {
    /// The list line.
    pub info: VgpuInfo,
    /// Where each knob came from.
    pub sources: Sources,
    /// The stored definition, if any.
    pub definition: Option<Definition>,
    /// Live overrides in force.
    pub live_overrides: Overrides,
    /// Owners and their gcgroups, freshly read.
    pub owners: Vec<OwnerInfo>,
    /// Processes whose claim on this vGPU was refused.
    #[serde(default)]
    pub refused_claims: Vec<RefusedClaim>,
    /// How the knobs reach the CUDA processes inside the VM (its guest agent), when the
    /// vGPU has a guest-agent channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestEnforcement>,
    /// What holds the VM when the hard fallback does (its guest did not acknowledge a
    /// freeze): e.g. paused through its QMP socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// Framebuffer the VM uses on this vGPU as NVIDIA's vGPU manager reports it (NVML's vGPU
    /// instance of the same UUID), in bytes; `None` without NVML or such an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvidia_fb_usage_bytes: Option<u64>,
}

/// What the daemon sent a VM's guest agent and what the guest said back (agent protocol 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestEnforcement {
    /// The agent protocol the guest's hello announced (1: stats only, no enforcement).
    pub protocol: u32,
    /// Whether the channel is connected now.
    pub connected: bool,
    /// Generation of the latest state snapshot sent on this connection.
    pub generation_sent: Option<u64>,
    /// Generation the guest acknowledged last.
    pub generation_acked: Option<u64>,
    /// Every registered guest process held, as the guest's last acknowledgement says.
    pub frozen_reached: Option<bool>,
    /// In-flight kernels in the guest at its last acknowledgement.
    pub in_flight: Option<u32>,
    /// The VM's last busy/idle transition.
    pub busy: Option<bool>,
    /// Acknowledgements of generations never sent (ignored).
    pub forged_acks: u64,
    /// Whether the VM is held now because a more important VM is busy.
    #[serde(default)]
    pub held: bool,
    /// Times this VM's busy claims reached the cap on how long they may hold other VMs.
    #[serde(default)]
    pub hold_cap_hits: u64,
    /// The guest's CUDA processes (source: guest), from its last counters message.
    pub processes: Vec<GuestProcess>,
    /// Age of `processes`, ms.
    pub processes_age_ms: Option<u64>,
}

impl GuestEnforcement {
    /// Whether the guest acknowledged the latest snapshot sent.
    pub fn in_sync(&self) -> bool {
        self.generation_sent.is_some() && self.generation_sent == self.generation_acked
    }
}

/// One CUDA process inside a VM, as its guest agent reports it (untrusted, validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    /// The pid inside the guest.
    pub pid: u32,
    /// Its name (at most 64 bytes, no control characters).
    pub name: String,
    /// GPU memory in use, bytes.
    pub memory_current: u64,
    /// Of it, spilled to host memory, bytes.
    pub memory_swap: u64,
    /// Kernels submitted.
    pub kernels_submitted: u64,
    /// Kernels ended.
    pub kernels_ended: u64,
    /// Kernels pending.
    pub pending: u32,
    /// Busy now.
    pub busy: bool,
    /// GPU busy time, µs.
    pub gpu_busy_us: u64,
}

/// A knob found different from its intended value and corrected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// vGPU.
    pub uuid: Uuid,
    /// Owner process.
    pub pid: u32,
    /// Position of the GPU in PCI order; `None` when no PCI GPU has its GVM index.
    pub gpu: Option<u32>,
    /// PCI address of the GPU, when known.
    pub pci: Option<String>,
    /// GVM's UVM index of the GPU.
    pub gvm_index: u32,
    /// Knob file name (`memory.limit`, `compute.priority`, `compute.freeze`).
    pub knob: String,
    /// Value found.
    pub found: String,
    /// Value written.
    pub wanted: String,
}

/// `reconcile` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// vGPUs adopted in this pass.
    pub adopted: Vec<Uuid>,
    /// vGPUs whose kernel type the catalog does not know (left untouched).
    pub unmanaged: Vec<Uuid>,
    /// Devices created for autostart definitions.
    pub autostarted: Vec<Uuid>,
    /// Knob writes done.
    pub writes: u32,
    /// Values corrected because they differed from intent.
    pub drift: Vec<Drift>,
    /// Failures (each names the object and errno).
    pub errors: Vec<String>,
}

/// `import_mdevctl` result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Definitions imported (or that would be, on a dry run).
    pub imported: Vec<Definition>,
    /// Definitions skipped, with the reason.
    pub skipped: Vec<String>,
    /// The mdevctl definitions of vGPUs gvm-vgpu defines the same way (imported now or
    /// before), each still there unless `remove_source` removed it.
    #[serde(default)]
    pub mdevctl_sources: Vec<MdevctlSource>,
}

/// An mdevctl definition file of a vGPU that gvm-vgpu defines too (`import_mdevctl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdevctlSource {
    /// The vGPU.
    pub uuid: Uuid,
    /// mdevctl's definition file (`/etc/mdevctl.d/<parent>/<uuid>` under the host root).
    pub path: String,
    /// Whether `remove_source` deleted it (after gvm-vgpu's definition was stored).
    pub removed: bool,
    /// Why deleting it failed (`remove_source`); gvm-vgpu's definition stays either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_definition_file_is_an_mdev_one_and_a_vf_one_keeps_its_kind() {
        let old = r#"{"uuid":"a1b2c3d4-0000-4000-8000-000000000001","parent":"0000:3b:00.0",
            "mdev_type":"gvmsim-1","type_name":"sim-4c","autostart":true}"#;
        let def: Definition = serde_json::from_str(old).expect("an old file loads");
        assert_eq!(
            (def.kind, def.kernel_name.as_deref()),
            (VgpuKind::Mdev, None)
        );
        // Written again, an mdev definition has no new member: older readers see no change.
        let text = serde_json::to_string(&def).expect("serializes");
        assert!(
            !text.contains("kind") && !text.contains("kernel_name"),
            "{text}"
        );

        let vf = Definition {
            kind: VgpuKind::Vf,
            kernel_name: Some("NVIDIA H100-20C".into()),
            parent: "0000:41:00.0".into(),
            mdev_type: "1047".into(),
            ..def
        };
        let text = serde_json::to_string(&vf).expect("serializes");
        assert!(text.contains(r#""kind":"vf""#), "{text}");
        let back: Definition = serde_json::from_str(&text).expect("loads");
        assert_eq!(back, vf);
    }
}
