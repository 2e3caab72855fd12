//! The state of the simulated host and the kernel's rules for changing it.
//!
//! [`SimHost`] holds the mdev devices (which parent and type, which IOMMU group),
//! the owner processes of each vGPU and their GVM gcgroup state. Its methods are
//! the *stores* of the kernel attributes (`create`, `remove`, `memory.limit`, …)
//! with the kernel's parsing and errno rules, plus the simulator's own control
//! commands. It also holds the simulated SR-IOV GPUs ([`crate::vf`]), whose stores
//! [`crate::tree`] calls directly. It never touches the filesystem; processes are started and killed
//! through the [`OwnerProcs`] trait, so unit tests run with fake processes and a
//! fake clock. The path layout is in [`crate::tree`].

use std::collections::BTreeMap;
use std::io;

use crate::catalog::{self, Model, ParentSpec, GIB};
use crate::error::FsError;
use crate::vf::SriovGpus;
use crate::workload::{self, GpuClient, MAX_PRIORITY};

/// Starts, kills and reaps the real processes that own vGPUs.
pub trait OwnerProcs: Send {
    /// Start a process with `GVM_VGPU_UUID=<uuid>` in its environment, holding the
    /// vGPU's VFIO group `group` open where the table keeps group nodes
    /// ([`OwnerProcs::group_created`]); returns its pid.
    fn spawn(&mut self, uuid: &str, group: u32) -> io::Result<u32>;
    /// Kill the process (it is reaped later by [`OwnerProcs::reap`]).
    fn kill(&mut self, pid: u32) -> io::Result<()>;
    /// Pids of owners that have exited since the last call (reaped).
    fn reap(&mut self) -> Vec<u32>;
    /// Kill and reap every owner (shutdown).
    fn kill_all(&mut self);
    /// A way to start owners while the host is *not* locked, so that file requests are
    /// served while processes start ([`SimHost::take_pending`]). `None`: owners are
    /// started under the lock with [`OwnerProcs::spawn`].
    fn launcher(&self) -> Option<crate::procs::Launcher> {
        None
    }
    /// Take charge of a child a [`OwnerProcs::launcher`] started (kill, reap).
    fn adopt(&mut self, _child: std::process::Child) {}
    /// A device of IOMMU group `group` was created: make its stand-in for the group's
    /// `/dev/vfio/<group>` node, if the table keeps such nodes (default: none).
    fn group_created(&mut self, _group: u32) {}
    /// The device of IOMMU group `group` is gone: drop its node stand-in.
    fn group_released(&mut self, _group: u32) {}
}

/// One live mediated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Index of its parent in [`SimHost::parents`].
    pub parent: usize,
    /// Its type id.
    pub type_id: String,
    /// Its IOMMU group number.
    pub iommu_group: u32,
    /// A `remove` is waiting for its owners to go ([`SimHost::remove`]).
    pub removing: bool,
}

/// What a `remove` store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The device is gone (or `0` was written).
    Done,
    /// Owners hold it: the write returns once they are gone ([`SimHost::when_removed`]).
    Waiting,
}

/// What `remove` does to a device that owners still hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeldRemove {
    /// Wait for the owners to go, as the kernel does (the default).
    #[default]
    Block,
    /// Kill the owners and remove the device at once.
    Kill,
}

/// One owner process of a vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The vGPU it owns.
    pub uuid: String,
    /// When (simulated µs) it registers its GPU with GVM and appears in the tree.
    pub register_at_us: u64,
    /// Its GPU state.
    pub client: GpuClient,
}

/// Options of one `spawn` control command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpawnOpts {
    gpu: Option<u32>,
    memory: u64,
    busy: bool,
    register_delay_ms: u64,
}

/// The whole simulated host.
pub struct SimHost {
    model: Model,
    parents: Vec<ParentSpec>,
    devices: BTreeMap<String, Device>,
    owners: BTreeMap<u32, Owner>,
    next_group: u32,
    owners_per_vgpu: u32,
    /// vGPUs (one entry per owner) whose owners are still to be started.
    pending_owners: std::collections::VecDeque<String>,
    now_us: u64,
    procs: Box<dyn OwnerProcs>,
    /// Parents whose driver is "unloaded": absent from the tree until registered again.
    unregistered: std::collections::BTreeSet<usize>,
    /// What `remove` does to a held device.
    held_remove: HeldRemove,
    /// Writers of `remove` waiting for a held device to go, by UUID.
    removal_waiters: Vec<(String, Box<dyn FnOnce() + Send>)>,
    /// The SR-IOV GPUs whose VFs carry vGPUs (none unless [`SimHost::set_sriov_gpus`]).
    sriov: SriovGpus,
}

impl SimHost {
    /// A host of `model` with `gpus` GPUs (ignored for `mtty`), spawning
    /// `owners_per_vgpu` owners for every created vGPU.
    pub fn new(model: Model, gpus: u32, owners_per_vgpu: u32, procs: Box<dyn OwnerProcs>) -> Self {
        SimHost {
            model,
            parents: catalog::parents(model, gpus),
            devices: BTreeMap::new(),
            owners: BTreeMap::new(),
            next_group: 0,
            owners_per_vgpu,
            pending_owners: std::collections::VecDeque::new(),
            now_us: 0,
            procs,
            unregistered: std::collections::BTreeSet::new(),
            held_remove: HeldRemove::default(),
            removal_waiters: Vec::new(),
            sriov: SriovGpus::default(),
        }
    }

    /// Serve `count` SR-IOV GPUs (PFs `0000:41:00.0`, `0000:42:00.0`, …) beside the mdev
    /// parents, with no VFs enabled, as after boot.
    pub fn set_sriov_gpus(&mut self, count: u32) {
        self.sriov = SriovGpus::new(count);
    }

    /// The SR-IOV GPUs.
    pub fn sriov(&self) -> &SriovGpus {
        &self.sriov
    }

    /// The SR-IOV GPUs, for their stores.
    pub fn sriov_mut(&mut self) -> &mut SriovGpus {
        &mut self.sriov
    }

    /// Choose what `remove` does to a device that owners hold.
    pub fn set_held_remove(&mut self, mode: HeldRemove) {
        self.held_remove = mode;
    }

    /// Whether parent `i` is registered with the mdev core (its driver is "loaded").
    pub fn is_registered(&self, i: usize) -> bool {
        !self.unregistered.contains(&i)
    }

    /// Unregister a parent, as unloading its driver does (`rmmod mtty`): its live devices are
    /// removed (their owners killed) and the parent leaves `mdev_bus`. ENOENT if unknown or
    /// already unregistered.
    pub fn unregister_parent(&mut self, _path: &str, name: &str) -> Result<(), FsError> {
        let i = self
            .parent_index(name)
            .filter(|i| self.is_registered(*i))
            .ok_or_else(|| FsError::NotFound {
                path: format!("registered parent {name}"),
            })?;
        let uuids: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.parent == i)
            .map(|(u, _)| u.clone())
            .collect();
        // Not measured on a kernel with a held device (there `rmmod` meets the module
        // reference an open VFIO device takes); here the owners are killed.
        for uuid in uuids {
            self.drop_device(&uuid);
            for pid in self.owners_of(&uuid) {
                self.kill_owner(pid)?;
            }
        }
        self.finish_released_removals();
        self.unregistered.insert(i);
        Ok(())
    }

    /// Register a parent again (`insmod mtty`). ENOENT if unknown, EEXIST if registered.
    pub fn register_parent(&mut self, name: &str) -> Result<(), FsError> {
        let i = self.parent_index(name).ok_or_else(|| FsError::NotFound {
            path: format!("parent {name}"),
        })?;
        if !self.unregistered.remove(&i) {
            return Err(FsError::Exists {
                uuid: format!("registered parent {name}"),
            });
        }
        Ok(())
    }

    /// The model served.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The parent devices.
    pub fn parents(&self) -> &[ParentSpec] {
        &self.parents
    }

    /// Index of the parent with this name.
    pub fn parent_index(&self, name: &str) -> Option<usize> {
        self.parents.iter().position(|p| p.name == name)
    }

    /// Live devices by UUID.
    pub fn devices(&self) -> &BTreeMap<String, Device> {
        &self.devices
    }

    /// Owners by pid, registered or not.
    pub fn owners(&self) -> &BTreeMap<u32, Owner> {
        &self.owners
    }

    /// Free units of a parent's shared pool.
    pub fn pool_free(&self, parent: usize) -> u64 {
        let Some(p) = self.parents.get(parent) else {
            return 0;
        };
        let used: u64 = self
            .devices
            .values()
            .filter(|d| d.parent == parent)
            .filter_map(|d| p.type_spec(&d.type_id).map(|t| t.size))
            .sum();
        p.pool.saturating_sub(used)
    }

    /// `available_instances` of a type.
    pub fn available(&self, parent: usize, type_id: &str) -> u64 {
        let Some(t) = self.parents.get(parent).and_then(|p| p.type_spec(type_id)) else {
            return 0;
        };
        let live = self
            .devices
            .values()
            .filter(|d| d.parent == parent && d.type_id == type_id)
            .count() as u64;
        t.available(live, self.pool_free(parent))
    }

    /// UUIDs of the live devices of one type (not those being removed, which have left
    /// their type's `devices/` already).
    pub fn devices_of_type(&self, parent: usize, type_id: &str) -> Vec<&str> {
        self.devices
            .iter()
            .filter(|(_, d)| d.parent == parent && d.type_id == type_id && !d.removing)
            .map(|(u, _)| u.as_str())
            .collect()
    }

    /// The store of `<parent>/mdev_supported_types/<type>/create`.
    pub fn create(
        &mut self,
        path: &str,
        parent: usize,
        type_id: &str,
        data: &[u8],
    ) -> Result<String, FsError> {
        if data.len() != 36 && data.len() != 37 {
            return Err(FsError::invalid(
                path,
                format!("{} bytes written; write one 36-character UUID, optionally followed by a newline", data.len()),
            ));
        }
        let uuid = parse_uuid(&data[..36]).ok_or_else(|| {
            FsError::invalid(
                path,
                "not a UUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            )
        })?;
        if self.devices.contains_key(&uuid) {
            return Err(FsError::Exists { uuid });
        }
        let p = self
            .parents
            .get(parent)
            .ok_or_else(|| FsError::not_found(path))?;
        if p.type_spec(type_id).is_none() {
            return Err(FsError::not_found(path));
        }
        if self.available(parent, type_id) == 0 {
            return Err(FsError::Exhausted {
                parent: p.name.clone(),
                type_id: type_id.to_string(),
                errno: self.model.exhausted_errno(),
            });
        }
        let iommu_group = self.next_group;
        self.next_group += 1;
        self.devices.insert(
            uuid.clone(),
            Device {
                parent,
                type_id: type_id.to_string(),
                iommu_group,
                removing: false,
            },
        );
        self.procs.group_created(iommu_group);
        // Owners start after the device exists, as QEMU does after libvirt created the
        // mdev: the store returns now and the clock thread starts them
        // ([`SimHost::spawn_pending`]), so a burst of creates is not serialised behind
        // process start-up.
        for _ in 0..self.owners_per_vgpu {
            self.pending_owners.push_back(uuid.clone());
        }
        Ok(uuid)
    }

    /// The store of `<device>/remove`: a non-zero number removes the device, `0` does
    /// nothing, anything else is `EINVAL`.
    ///
    /// A device that owners still hold is not gone at once: as on the kernel (measured on
    /// 6.1 with mtty, docs/conformance.md) it leaves `sys/bus/mdev/devices` and its type's
    /// `devices/`, loses its `remove` and `mdev_type` entries, keeps its pool share, and
    /// the write waits ([`Removal::Waiting`]) until the last owner is gone
    /// ([`SimHost::when_removed`]). With [`HeldRemove::Kill`] the owners are killed and the
    /// device goes at once instead (the simulator's old shortcut).
    pub fn remove(&mut self, path: &str, uuid: &str, data: &[u8]) -> Result<Removal, FsError> {
        let value = parse_kstrtoul(data)
            .ok_or_else(|| FsError::invalid(path, "write 1 to remove the device"))?;
        if value == 0 {
            return Ok(Removal::Done);
        }
        if self.live_device(uuid).is_none() {
            return Err(FsError::not_found(path));
        }
        let pids = self.owners_of(uuid);
        if pids.is_empty() || self.held_remove == HeldRemove::Kill {
            self.drop_device(uuid);
            for pid in pids {
                self.kill_owner(pid)?;
            }
            return Ok(Removal::Done);
        }
        if let Some(d) = self.devices.get_mut(uuid) {
            d.removing = true;
        }
        Ok(Removal::Waiting)
    }

    /// Call `done` once device `uuid` is gone: now if it is, else when the last owner of
    /// a device being removed goes (the blocked `remove` write returns then).
    pub fn when_removed(&mut self, uuid: &str, done: Box<dyn FnOnce() + Send>) {
        if self.devices.contains_key(uuid) {
            self.removal_waiters.push((uuid.to_string(), done));
        } else {
            done();
        }
    }

    /// Drop the devices being removed that no owner holds any more, and wake their writers.
    fn finish_released_removals(&mut self) {
        let free: Vec<String> = self
            .devices
            .iter()
            .filter(|(u, d)| d.removing && !self.owners.values().any(|o| o.uuid == **u))
            .map(|(u, _)| u.clone())
            .collect();
        for uuid in &free {
            self.drop_device(uuid);
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removal_waiters)
            .into_iter()
            .partition(|(u, _)| !self.devices.contains_key(u));
        self.removal_waiters = waiting;
        for (_, done) in ready {
            done();
        }
    }

    /// Forget a device and drop its group node.
    fn drop_device(&mut self, uuid: &str) {
        if let Some(d) = self.devices.remove(uuid) {
            self.procs.group_released(d.iommu_group);
        }
    }

    /// A device that exists and is not being removed.
    pub fn live_device(&self, uuid: &str) -> Option<&Device> {
        self.devices.get(uuid).filter(|d| !d.removing)
    }

    fn owners_of(&self, uuid: &str) -> Vec<u32> {
        self.owners
            .iter()
            .filter(|(_, o)| o.uuid == uuid)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Pids registered with GVM now (the `list` file), in order.
    pub fn registered_pids(&self) -> Vec<u32> {
        self.owners
            .iter()
            .filter(|(_, o)| o.register_at_us <= self.now_us)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The GVM client of a registered `pid` on UVM GPU `gpu`.
    pub fn client(&self, pid: u32, gpu: u32) -> Option<&GpuClient> {
        self.owners
            .get(&pid)
            .filter(|o| o.register_at_us <= self.now_us && o.client.gpu == gpu)
            .map(|o| &o.client)
    }

    /// A store to `<pid>/<gpu>/<knob>` in the GVM tree.
    pub fn gvm_store(
        &mut self,
        path: &str,
        pid: u32,
        gpu: u32,
        knob: &str,
        data: &[u8],
    ) -> Result<(), FsError> {
        if self.client(pid, gpu).is_none() {
            return Err(FsError::not_found(path));
        }
        if data.len() > 31 {
            return Err(FsError::invalid(path, "more than 31 bytes written"));
        }
        let value =
            parse_decimal(data).ok_or_else(|| FsError::invalid(path, "write a decimal number"))?;
        let client = match self.owners.get_mut(&pid) {
            Some(o) => &mut o.client,
            None => return Err(FsError::not_found(path)),
        };
        match knob {
            "memory.limit" => client.memory_limit = value,
            "compute.priority" => {
                client.priority = u8::try_from(value)
                    .ok()
                    .filter(|p| *p <= MAX_PRIORITY)
                    .ok_or_else(|| FsError::invalid(path, "priority must be 0..16"))?;
            }
            "compute.freeze" => {
                client.frozen = match value {
                    0 => false,
                    1 => true,
                    _ => return Err(FsError::invalid(path, "write 0 (thaw) or 1 (freeze)")),
                }
            }
            _ => {
                return Err(FsError::Access {
                    path: path.to_string(),
                    what: "read-only",
                })
            }
        }
        Ok(())
    }

    /// The `sys/kernel/debug/gvm-sim/owners` file.
    pub fn owners_text(&self) -> String {
        let mut s = String::new();
        for (pid, o) in &self.owners {
            let c = &o.client;
            s.push_str(&format!(
                "{pid} {} {} {} {} {} {}\n",
                o.uuid,
                c.gpu,
                u8::from(c.busy),
                c.memory_wanted,
                c.gpu_time_us,
                u8::from(c.frozen)
            ));
        }
        s
    }

    /// One command written to `sys/kernel/debug/gvm-sim/control`.
    pub fn control(&mut self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let text = std::str::from_utf8(data)
            .map_err(|_| FsError::invalid(path, "commands are UTF-8 text"))?;
        let mut words = text.split_whitespace();
        let usage = "commands: `spawn <uuid> [gpu=N] [memory=BYTES] [busy=0|1] [register_delay_ms=N]`, `kill <pid>`, `set <pid> memory=BYTES|busy=0|1`, `unregister <parent>`, `register <parent>`, `vf-heterogeneous <PF> on|off`, `vf-hold <VF>`, `vf-release <VF>`, `vf-reset`";
        match (words.next(), words.next()) {
            (Some("vf-heterogeneous"), Some(pf)) => {
                let on = match (words.next(), words.next()) {
                    (Some("on"), None) => true,
                    (Some("off"), None) => false,
                    _ => return Err(FsError::invalid(path, "vf-heterogeneous <PF> on|off")),
                };
                self.sriov.set_heterogeneous(pf, on)
            }
            (Some("vf-hold"), Some(vf)) if words.next().is_none() => self.sriov.hold(vf),
            (Some("vf-release"), Some(vf)) if words.next().is_none() => self.sriov.release(vf),
            (Some("vf-reset"), None) => {
                self.sriov.reset();
                Ok(())
            }
            (Some("unregister"), Some(parent)) if words.next().is_none() => {
                self.unregister_parent(path, parent)
            }
            (Some("register"), Some(parent)) if words.next().is_none() => {
                self.register_parent(parent)
            }
            (Some("spawn"), Some(uuid)) => {
                let uuid = uuid.to_ascii_lowercase();
                if self.live_device(&uuid).is_none() {
                    return Err(FsError::NotFound {
                        path: format!("vGPU {uuid}"),
                    });
                }
                let mut opts = SpawnOpts::default_for(None);
                for w in words {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| FsError::invalid(path, usage))?;
                    let n: u64 = v
                        .parse()
                        .map_err(|_| FsError::invalid(path, format!("{k}: not a number")))?;
                    match k {
                        "gpu" => {
                            opts.gpu = Some(
                                u32::try_from(n)
                                    .map_err(|_| FsError::invalid(path, "gpu too large"))?,
                            )
                        }
                        "memory" => opts.memory = n,
                        "busy" => opts.busy = parse_bool(path, n)?,
                        "register_delay_ms" => opts.register_delay_ms = n,
                        _ => return Err(FsError::invalid(path, usage)),
                    }
                }
                self.spawn_owner(&uuid, &opts).map(|_| ())
            }
            (Some("kill"), Some(pid)) => {
                let pid = self.known_pid(path, pid)?;
                let r = self.kill_owner(pid);
                self.finish_released_removals();
                r
            }
            (Some("set"), Some(pid)) => {
                let pid = self.known_pid(path, pid)?;
                for w in words {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| FsError::invalid(path, usage))?;
                    let n: u64 = v
                        .parse()
                        .map_err(|_| FsError::invalid(path, format!("{k}: not a number")))?;
                    let busy = if k == "busy" {
                        Some(parse_bool(path, n)?)
                    } else {
                        None
                    };
                    let Some(o) = self.owners.get_mut(&pid) else {
                        return Err(FsError::not_found(path));
                    };
                    match (k, busy) {
                        ("memory", _) => o.client.memory_wanted = n,
                        (_, Some(b)) => o.client.set_busy(b),
                        _ => return Err(FsError::invalid(path, usage)),
                    }
                }
                Ok(())
            }
            _ => Err(FsError::invalid(path, usage)),
        }
    }

    /// Start up to `max` of the owners that creates queued (`--owners-per-vgpu`); owners
    /// of a vGPU removed meanwhile are dropped. Returns how many are still queued. A
    /// failure to start one is reported on stderr (the vGPU then has fewer owners).
    pub fn spawn_pending(&mut self, max: usize) -> usize {
        for (uuid, _) in self.take_pending(max) {
            if let Err(e) = self.spawn_owner(&uuid, &SpawnOpts::default_for(None)) {
                eprintln!("gvm-vgpu-sim: owner of vGPU {uuid}: {e}");
            }
        }
        self.pending_owners.len()
    }

    /// Up to `max` queued owners (their vGPUs and IOMMU groups), skipping vGPUs removed
    /// meanwhile, to be started outside the lock and handed back to
    /// [`SimHost::register_started`].
    pub fn take_pending(&mut self, max: usize) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(uuid) = self.pending_owners.pop_front() else {
                break;
            };
            if let Some(group) = self.live_device(&uuid).map(|d| d.iommu_group) {
                out.push((uuid, group));
            }
        }
        out
    }

    /// An owner of `uuid` (IOMMU group `group`) started by a launcher: record it, or kill
    /// it when the vGPU was removed while it started (and drop the group node its start
    /// made again).
    pub fn register_started(
        &mut self,
        uuid: &str,
        group: u32,
        started: io::Result<std::process::Child>,
    ) {
        let child = match started {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gvm-vgpu-sim: owner of vGPU {uuid}: could not start it: {e}");
                return;
            }
        };
        let pid = child.id();
        self.procs.adopt(child);
        if self.live_device(uuid).is_some() {
            self.record_owner(uuid, pid, &SpawnOpts::default_for(None));
        } else {
            if let Err(e) = self.procs.kill(pid) {
                eprintln!("gvm-vgpu-sim: owner {pid} of removed vGPU {uuid}: {e}");
            }
            if !self.devices.contains_key(uuid) {
                self.procs.group_released(group);
            }
        }
    }

    /// The owner launcher of the process table, if it has one.
    pub fn launcher(&self) -> Option<crate::procs::Launcher> {
        self.procs.launcher()
    }

    /// Move the clock to `now_us`: reap exited owners and run the GPUs for the elapsed time.
    pub fn advance(&mut self, now_us: u64) {
        for pid in self.procs.reap() {
            self.owners.remove(&pid);
        }
        self.finish_released_removals();
        let dt = now_us.saturating_sub(self.now_us);
        self.now_us = self.now_us.max(now_us);
        let now = self.now_us;
        let mut clients: Vec<&mut GpuClient> = self
            .owners
            .values_mut()
            .filter(|o| o.register_at_us <= now)
            .map(|o| &mut o.client)
            .collect();
        workload::advance(&mut clients, dt);
    }

    /// Kill every owner (at shutdown).
    pub fn shutdown(&mut self) {
        self.procs.kill_all();
        self.owners.clear();
        self.finish_released_removals();
    }

    fn known_pid(&self, path: &str, word: &str) -> Result<u32, FsError> {
        let pid: u32 = word
            .parse()
            .map_err(|_| FsError::invalid(path, "pid must be a number"))?;
        if self.owners.contains_key(&pid) {
            Ok(pid)
        } else {
            Err(FsError::NotFound {
                path: format!("owner pid {pid}"),
            })
        }
    }

    fn spawn_owner(&mut self, uuid: &str, opts: &SpawnOpts) -> Result<u32, FsError> {
        let group = self
            .live_device(uuid)
            .map(|d| d.iommu_group)
            .ok_or_else(|| FsError::NotFound {
                path: format!("vGPU {uuid}"),
            })?;
        let pid = self
            .procs
            .spawn(uuid, group)
            .map_err(|e| FsError::Process {
                uuid: uuid.to_string(),
                message: format!("could not start it: {e}"),
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            })?;
        self.record_owner(uuid, pid, opts);
        Ok(pid)
    }

    fn record_owner(&mut self, uuid: &str, pid: u32, opts: &SpawnOpts) {
        let parent_gpu = self
            .devices
            .get(uuid)
            .and_then(|d| self.parents.get(d.parent))
            .and_then(|p| p.uvm_index)
            .unwrap_or(0);
        self.owners.insert(
            pid,
            Owner {
                uuid: uuid.to_string(),
                register_at_us: self.now_us + opts.register_delay_ms * 1000,
                client: GpuClient::new(opts.gpu.unwrap_or(parent_gpu), opts.busy, opts.memory),
            },
        );
    }

    fn kill_owner(&mut self, pid: u32) -> Result<(), FsError> {
        let Some(o) = self.owners.remove(&pid) else {
            return Ok(());
        };
        self.procs.kill(pid).map_err(|e| FsError::Process {
            uuid: o.uuid,
            message: format!("could not kill pid {pid}: {e}"),
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }
}

impl SpawnOpts {
    fn default_for(gpu: Option<u32>) -> Self {
        SpawnOpts {
            gpu,
            memory: GIB,
            busy: true,
            register_delay_ms: 0,
        }
    }
}

fn parse_bool(path: &str, n: u64) -> Result<bool, FsError> {
    match n {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(FsError::invalid(path, "busy must be 0 or 1")),
    }
}

/// Parse a UUID like the kernel's `uuid_parse`: exactly 8-4-4-4-12 hex digits,
/// either case. Returns it in lower case.
pub fn parse_uuid(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 36 {
        return None;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    std::str::from_utf8(bytes).ok().map(str::to_ascii_lowercase)
}

fn strip_newline(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

/// Parse like the kernel's `kstrtoul(buf, 0, …)`: optional `+`, `0x` hex,
/// leading-`0` octal or decimal, one trailing newline allowed.
pub fn parse_kstrtoul(data: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(strip_newline(data)).ok()?;
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parse a decimal `u64` (GVM's knobs), one trailing newline allowed.
pub fn parse_decimal(data: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(strip_newline(data)).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
#[path = "host_tests.rs"]
pub(crate) mod tests;
