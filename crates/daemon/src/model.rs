//! The daemon's picture of the host and of what the operator wants, as plain data.
//!
//! *Observed* state is what the last scan found: mdev parents and devices, owner
//! processes tied to each vGPU, and each owner gcgroup's knob values (process ×
//! GPU). *Desired* state is what the operator asked for: persistent definitions
//! (with overrides), live overrides and freeze flags. The catalog turns a kernel
//! mdev type into a [`TypeSpec`] with default knobs. [`effective`] combines them:
//! live override > persistent override > type > kernel default.

use std::collections::{BTreeMap, BTreeSet};

use gvm_gcgroup::{GcgroupSnapshot, Knob, MemoryLimit, Priority};
use gvm_proto::{Definition, Knobs, Overrides, OwnerRule, Source, Sources};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Default knobs of a catalog vGPU type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSpec {
    /// Catalog type name (`sim-4c`).
    pub name: String,
    /// Memory limit in bytes.
    pub memory_limit: u64,
    /// Compute priority 0..=16.
    pub priority: u8,
    /// Fixed share, if the type sets one.
    pub share: Option<f64>,
    /// Whether pages over the memory limit may spill to host memory (the catalog's
    /// `host_swap`).
    pub host_swap: bool,
}

/// A live mediated device as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    /// UUID.
    pub uuid: Uuid,
    /// Parent device name.
    pub parent: String,
    /// Kernel mdev type id.
    pub mdev_type: String,
    /// The type's `name` attribute, if the parent provides one (a VF vGPU: its VF type's
    /// name, what the catalog binds).
    pub kernel_name: Option<String>,
    /// Which kernel ABI backs it: an mdev device, or a vGPU on an SR-IOV VF (then
    /// `parent` is the PF and `mdev_type` the VF type ID in decimal).
    pub kind: gvm_proto::VgpuKind,
    /// A VF vGPU's virtual function now.
    pub vf: Option<String>,
}

/// Knob values of one gcgroup as the daemon last read or wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcState {
    /// `memory.limit`.
    pub memory_limit: MemoryLimit,
    /// `compute.priority` as written by this daemon; `None` until written (the
    /// kernel only applies a priority once it is written, so a read 8 means nothing).
    pub priority: Option<Priority>,
    /// `compute.freeze`.
    pub frozen: bool,
}

impl GcState {
    /// The state of a gcgroup this run did not make, as read: its limit and freeze. The
    /// priority stays unknown (`None`) and is written once, since a read value does not
    /// tell whether it was ever written, and GVM applies only a written one.
    pub fn found(read: &GcgroupSnapshot) -> GcState {
        GcState {
            memory_limit: read.memory_limit,
            priority: None,
            frozen: read.frozen,
        }
    }

    /// `self` with `knob` written.
    pub fn apply(&mut self, knob: Knob) {
        match knob {
            Knob::MemoryLimit(v) => self.memory_limit = v,
            Knob::Priority(v) => self.priority = Some(v),
            Knob::Frozen(v) => self.frozen = v,
        }
    }
}

/// Host state as the last scan found it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Registered mdev parents.
    pub parents: BTreeSet<String>,
    /// SR-IOV GPUs (PFs) whose vGPUs are VFs: GPUs of the host as much as mdev parents are.
    pub pfs: BTreeSet<String>,
    /// Live devices by UUID.
    pub devices: BTreeMap<Uuid, ObservedDevice>,
    /// Owner processes by vGPU.
    pub owners: BTreeMap<Uuid, BTreeMap<u32, OwnerRule>>,
    /// GPU registrations by owner pid.
    pub gpus: BTreeMap<u32, BTreeSet<u32>>,
    /// Known knob values by (pid, gpu).
    pub gcgroups: BTreeMap<(u32, u32), GcState>,
    /// Owner pids that own several vGPUs (a libvirt domain's QEMU with several
    /// mdevs), with those vGPUs: each of their gcgroups belongs only to the vGPU
    /// whose parent has the gcgroup's GVM GPU index.
    pub split_owners: BTreeMap<u32, Vec<Uuid>>,
    /// GVM GPU index of mdev parents, as far as known (see `MdevPort::parent_gpu_index`).
    pub parent_gpu: BTreeMap<String, u32>,
    /// Processes whose environment or cgroup claim on a vGPU was refused, by pid: their uid
    /// may not claim vGPUs ([`crate::owners::ClaimPolicy`]).
    pub refused: BTreeMap<u32, (Uuid, gvm_proto::RefusedClaim)>,
}

impl Observed {
    /// The host's GPUs as operators name them (position in PCI order, PCI address), from
    /// the registered PCI parents and their GVM indexes.
    pub fn host_gpus(&self) -> gvm_gcgroup::host_gpus::HostGpus {
        gvm_gcgroup::host_gpus::HostGpus::new(
            self.parents
                .iter()
                .chain(self.pfs.iter().filter(|p| !self.parents.contains(*p)))
                .map(|p| (p.as_str(), self.parent_gpu.get(p).copied())),
        )
    }

    /// Position and PCI address of the GPU GVM numbers `gvm_index`, as far as known.
    pub fn gpu_name(&self, gvm_index: u32) -> (Option<u32>, Option<String>) {
        match self.host_gpus().by_gvm_index(gvm_index) {
            Some(g) => (Some(g.position), Some(g.pci.clone())),
            None => (None, None),
        }
    }

    /// The GVM GPU index of the parent `uuid` sits on, when known.
    pub fn device_gpu(&self, uuid: &Uuid) -> Option<u32> {
        let d = self.devices.get(uuid)?;
        self.parent_gpu.get(&d.parent).copied()
    }

    /// Whether gcgroup (`pid`, `gpu`) belongs to vGPU `uuid`, given that `pid` is one of
    /// its owners: an owner of one vGPU gives it all its gcgroups; an owner of several
    /// gives each only those on the GPU of its parent.
    pub fn owns(&self, uuid: &Uuid, pid: u32, gpu: u32) -> bool {
        !self.split_owners.contains_key(&pid) || self.device_gpu(uuid) == Some(gpu)
    }

    /// The GPU indexes of `pid`'s gcgroups that belong to vGPU `uuid` (`pid` being
    /// one of its owners).
    pub fn owner_gpus<'a>(&'a self, uuid: &'a Uuid, pid: u32) -> impl Iterator<Item = u32> + 'a {
        self.gpus
            .get(&pid)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |gpu| self.owns(uuid, pid, *gpu))
    }

    /// GPUs on which split owner `pid` has a gcgroup that none of its vGPUs sits on.
    pub fn stray_gpus(&self, pid: u32) -> Vec<u32> {
        let Some(uuids) = self.split_owners.get(&pid) else {
            return Vec::new();
        };
        self.gpus
            .get(&pid)
            .into_iter()
            .flatten()
            .copied()
            .filter(|gpu| !uuids.iter().any(|u| self.device_gpu(u) == Some(*gpu)))
            .collect()
    }
}

/// What the operator asked for beyond the definition: until the device goes away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveState {
    /// Live overrides (`set --live`).
    pub overrides: Overrides,
    /// Freeze flag.
    pub frozen: bool,
    /// Frozen because libvirt paused the vGPU's domain: set and cleared only by the
    /// libvirt lifecycle watch (`domains.rs`), so a resume never thaws `frozen`.
    pub paused: bool,
}

impl LiveState {
    /// Nothing to remember.
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty() && !self.frozen && !self.paused
    }
}

/// The operator's intent.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Persistent definitions by UUID.
    pub definitions: BTreeMap<Uuid, Definition>,
    /// Live state by UUID.
    pub live: BTreeMap<Uuid, LiveState>,
    /// The live scheduler's knobs by (vGPU, GVM GPU index), while a policy other than
    /// best-effort runs there: they override the priority and add a freeze.
    pub sched: BTreeMap<(Uuid, u32), SchedKnobs>,
}

/// What the time-slice scheduler (`scheduler.rs`) holds for a vGPU on one GPU.
///
/// The scheduler's freeze is OR-ed with the operator's, so a user freeze always wins
/// and the planner never "corrects" a scheduler freeze or priority as drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedKnobs {
    /// `compute.priority` realising the policy's slice (replaces the type's).
    pub priority: Option<u8>,
    /// Frozen for being over its share.
    pub frozen: bool,
}

impl SchedKnobs {
    /// `knobs` as they must be on a gcgroup of this vGPU on this GPU.
    pub fn apply(sched: Option<&SchedKnobs>, mut knobs: Knobs) -> Knobs {
        if let Some(s) = sched {
            if let Some(p) = s.priority {
                knobs.priority = p;
            }
            knobs.frozen |= s.frozen;
        }
        knobs
    }
}

/// Effective knobs of a vGPU and where each came from.
pub fn effective(
    ty: Option<&TypeSpec>,
    definition: Option<&Definition>,
    live: Option<&LiveState>,
) -> (Knobs, Sources) {
    let mut knobs = Knobs::default();
    let mut src = Sources {
        memory_limit: Source::Default,
        priority: Source::Default,
        share: Source::Default,
    };
    if let Some(t) = ty {
        knobs.memory_limit = t.memory_limit;
        knobs.priority = t.priority;
        knobs.share = t.share;
        src.memory_limit = Source::Type;
        src.priority = Source::Type;
        if t.share.is_some() {
            src.share = Source::Type;
        }
    }
    let layers = [
        (definition.map(|d| d.overrides), Source::Persistent),
        (live.map(|l| l.overrides), Source::Live),
    ];
    for (o, source) in layers {
        let Some(o) = o else { continue };
        if let Some(v) = o.memory_limit {
            knobs.memory_limit = v;
            src.memory_limit = source;
        }
        if let Some(v) = o.priority {
            knobs.priority = v;
            src.priority = source;
        }
        if let Some(v) = o.share {
            knobs.share = Some(v);
            src.share = source;
        }
    }
    knobs.frozen = live.is_some_and(|l| l.frozen || l.paused);
    (knobs, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty() -> TypeSpec {
        TypeSpec {
            name: "sim-4c".into(),
            memory_limit: 4 << 30,
            priority: 4,
            share: None,
            host_swap: false,
        }
    }

    fn def(o: Overrides) -> Definition {
        Definition {
            uuid: Uuid::nil(),
            parent: "p".into(),
            mdev_type: "t".into(),
            type_name: None,
            kind: gvm_proto::VgpuKind::Mdev,
            kernel_name: None,
            autostart: false,
            overrides: o,
            owner_uids: Vec::new(),
        }
    }

    #[test]
    fn live_beats_persistent_beats_type_beats_default() {
        let (k, s) = effective(None, None, None);
        assert_eq!((k.priority, s.priority), (8, Source::Default));
        assert_eq!(k.memory_limit, gvm_proto::UNLIMITED);

        let (k, s) = effective(Some(&ty()), None, None);
        assert_eq!((k.priority, s.priority), (4, Source::Type));

        let d = def(Overrides {
            priority: Some(2),
            ..Overrides::default()
        });
        let (k, s) = effective(Some(&ty()), Some(&d), None);
        assert_eq!((k.priority, s.priority), (2, Source::Persistent));
        assert_eq!((k.memory_limit, s.memory_limit), (4 << 30, Source::Type));

        let live = LiveState {
            overrides: Overrides {
                priority: Some(1),
                share: Some(0.5),
                ..Overrides::default()
            },
            frozen: true,
            paused: false,
        };
        let (k, s) = effective(Some(&ty()), Some(&d), Some(&live));
        assert_eq!((k.priority, s.priority), (1, Source::Live));
        assert_eq!((k.share, s.share), (Some(0.5), Source::Live));
        assert!(k.frozen);
    }
}

/// Typed knob values for the daemon's unit tests.
#[cfg(test)]
pub(crate) mod test_knobs {
    use gvm_gcgroup::{Knob, MemoryLimit, Priority};

    /// A `memory.limit` write of `bytes` (`u64::MAX`: unlimited).
    pub(crate) fn mem(bytes: u64) -> Knob {
        Knob::MemoryLimit(MemoryLimit::from_bytes(bytes))
    }

    /// A `compute.priority` write of `p` (0..=16).
    pub(crate) fn prio(p: u8) -> Knob {
        Knob::Priority(Priority::clamped(p))
    }
}
