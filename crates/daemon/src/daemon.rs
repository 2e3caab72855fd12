//! The transport-free core: state, rescans and the executor.
//!
//! [`Daemon`] holds the operator's intent (loaded from the [`Store`]) and the last
//! observed host state. [`Daemon::tick`] is called every rescan period (and on
//! uevents): it lists parents, devices and GVM processes cheaply (directory
//! listings, one `list` file), reads details only for what is new, resolves owners,
//! and, when anything changed, runs the pure [`plan`] and executes its actions.
//! Request handling ([`Daemon::handle`]) lives in `handlers.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;
use gvm_proto::{Drift, OwnerRule, ReconcileReport, Totals, VgpuKind};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::model::{Desired, GcState, Observed, ObservedDevice, TypeSpec};
use crate::owners::Resolver;
use crate::plan::{plan, Action, Scope};
use crate::ports::{MdevPort, PortError, TypePort, VfVgpu};
use crate::scheduler::SchedContext;
use crate::store::{Store, StoreError};
use crate::vf_restore::{mixed_sizes_message, plan_restore, VfToRestore};
use gvm_error_chain::error_chain;
use gvm_gcgroup::gpu_index::is_pci_address;
use gvm_gcgroup::{GcgroupBackend, GcgroupSnapshot, Knob};

/// Timing knobs of the rescan loop.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often every owner's GPU registrations are listed again (new GPUs of
    /// known owners, cgroup moves of unowned processes, libvirt changes).
    pub slow_rescan: Duration,
    /// How often every owner gcgroup is read back to detect drift and refresh totals.
    pub verify: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            slow_rescan: Duration::from_secs(1),
            verify: Duration::from_secs(30),
        }
    }
}

/// The daemon core.
pub struct Daemon {
    pub(crate) host: HostRoot,
    pub(crate) mdev: Box<dyn MdevPort>,
    pub(crate) gc: Box<dyn GcgroupBackend>,
    pub(crate) types: Box<dyn TypePort>,
    pub(crate) store: Store,
    pub(crate) desired: Desired,
    pub(crate) policy: String,
    pub(crate) observed: Observed,
    pub(crate) resolver: Resolver,
    pub(crate) type_of: BTreeMap<Uuid, TypeSpec>,
    pub(crate) totals: BTreeMap<Uuid, Totals>,
    /// Guest-agent channels and their latest stats (see `agent_ingest`).
    pub(crate) guests: crate::agent_ingest::GuestTable,
    /// Pausing VMs whose guests do not acknowledge a freeze (see `fallback`).
    pub(crate) fallback: crate::fallback::GuestFallback,
    /// Kernel types of each registered parent. The kernel makes a parent's type
    /// directories when the parent registers and keeps them until it unregisters, so
    /// they are read once per registration, not per request.
    parent_types: HashMap<String, Vec<crate::ports::TypeInfo>>,
    device_names: Vec<String>,
    pids: BTreeSet<u32>,
    unowned: BTreeSet<u32>,
    /// Processes listed by the first pass whose gcgroups were not read yet. Their
    /// gcgroups predate this run: an earlier one (killed, perhaps mid-request) may have
    /// frozen or tuned them, so each is read before its first plan instead of being
    /// taken for new. Emptied as they become owners (most at the first pass) or exit.
    unread_at_start: BTreeSet<u32>,
    first_pass: bool,
    last_slow: Option<Instant>,
    last_verify: Option<Instant>,
    timing: Timing,
    /// Owners whose GPU registrations are re-listed, a slice per tick (`sweep.rs`).
    gpu_sweep: crate::sweep::Sweep<u32>,
    /// Owners whose knobs are read back, a slice per tick.
    verify_sweep: crate::sweep::Sweep<u32>,
    /// The last full read of each owner gcgroup (for totals between fresh reads).
    reads: BTreeMap<(u32, u32), GcgroupSnapshot>,
    /// Knobs found changed behind the daemon's back, until they are written again.
    drifted: BTreeSet<(u32, u32, &'static str)>,
    /// Gcgroups of split owners on a GPU none of their vGPUs sits on, logged once.
    stray_logged: BTreeSet<(u32, u32)>,
    /// Parents whose GVM GPU index could not be read, logged once.
    gpu_index_failed: BTreeSet<String>,
    /// Who may claim a vGPU through its own environment or cgroup.
    claims: crate::owners::ClaimPolicy,
    /// libvirt's picture (domain → vGPUs, paused domains), fed by the lifecycle watch.
    pub(crate) libvirt: crate::domains::Domains,
    /// The live time-slice scheduler (`scheduler.rs`): per-GPU engines and policy.
    pub(crate) scheduler: crate::scheduler::Scheduler,
    /// `define_batch` lists being sent in parts.
    pub(crate) batches: crate::batches::Lists,
    /// Problems found when loading the store, reported by the first reconcile.
    pub startup_problems: Vec<String>,
    /// Where the catalog in `types` came from and the last refused reload, for
    /// `ping` (`None`: not told, as in tests over fake ports).
    pub(crate) catalog: Option<crate::catalog::CatalogState>,
    /// The config file and its last reload, as `ping` reports them.
    pub(crate) config: Option<gvm_proto::ConfigStatus>,
}

/// What putting a new catalog in place changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogSwap {
    /// Live vGPUs whose type values (or catalog type) changed, re-applied to their owners.
    pub changed: Vec<Uuid>,
    /// Of those, vGPUs the new catalog does not know: unmanaged now, their knobs left as they are.
    pub unmanaged: Vec<Uuid>,
    /// Knob writes that failed while re-applying.
    pub errors: Vec<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("root", &self.host.root())
            .field("devices", &self.observed.devices.len())
            .field("definitions", &self.desired.definitions.len())
            .finish()
    }
}

/// The host's GPUs as the mdev port lists them now (the daemon's first scan has not run
/// yet): every PCI parent with its GVM index.
fn host_gpus_of(mdev: &dyn MdevPort) -> gvm_gcgroup::host_gpus::HostGpus {
    let names = mdev.parent_names().unwrap_or_else(|e| {
        warn!("{}", error_chain(&e));
        Vec::new()
    });
    let indexed: Vec<(String, Option<u32>)> = names
        .into_iter()
        .filter(|p| is_pci_address(p))
        .map(|p| {
            let gvm = mdev.parent_gpu_index(&p).ok().flatten();
            (p, gvm)
        })
        .collect();
    gvm_gcgroup::host_gpus::HostGpus::new(indexed.iter().map(|(p, g)| (p.as_str(), *g)))
}

impl Daemon {
    /// Open the store under `state` (normally the same root as `host`) and build a
    /// daemon over the given ports and gcgroup backend.
    pub fn new(
        host: HostRoot,
        state: &HostRoot,
        mdev: Box<dyn MdevPort>,
        backends: crate::backends::Backends,
        types: Box<dyn TypePort>,
        timing: Timing,
    ) -> Result<Daemon, StoreError> {
        let gc = backends.gcgroups;
        let (store, loaded) = Store::open(state)?;
        for p in &loaded.cleaned {
            info!(path = %p.display(), "removed a temp file left by an interrupted write");
        }
        for p in &loaded.problems {
            warn!("{p}");
        }
        info!(
            definitions = loaded.definitions.len(),
            live = loaded.live.len(),
            gcgroups = gc.name(),
            "state loaded"
        );
        // Gcgroups are CUDA shim processes only: no GVM tree, or `--backend shim`.
        let shim_only =
            !host.gvm_processes_dir().is_dir() || gc.name() == gvm_shim_host::backend::SHIM_NAME;
        let start_gpus = host_gpus_of(mdev.as_ref());
        Ok(Daemon {
            resolver: Resolver::new(host.clone()),
            claims: crate::owners::ClaimPolicy::default_for(&host, crate::owners::own_uid()),
            host,
            mdev,
            gc,
            types,
            store,
            desired: Desired {
                definitions: loaded.definitions,
                live: loaded.live,
                sched: BTreeMap::new(),
            },
            policy: loaded.policy.unwrap_or_else(|| "best-effort".to_string()),
            observed: Observed::default(),
            type_of: BTreeMap::new(),
            totals: BTreeMap::new(),
            guests: crate::agent_ingest::GuestTable::default(),
            fallback: crate::fallback::GuestFallback::new(state),
            parent_types: HashMap::new(),
            device_names: Vec::new(),
            pids: BTreeSet::new(),
            unowned: BTreeSet::new(),
            unread_at_start: BTreeSet::new(),
            first_pass: true,
            last_slow: None,
            last_verify: None,
            timing,
            gpu_sweep: crate::sweep::Sweep::new(timing.slow_rescan),
            verify_sweep: crate::sweep::Sweep::new(timing.verify),
            reads: BTreeMap::new(),
            drifted: BTreeSet::new(),
            stray_logged: BTreeSet::new(),
            gpu_index_failed: BTreeSet::new(),
            libvirt: crate::domains::Domains::default(),
            scheduler: {
                let mut s = crate::scheduler::Scheduler::open(state, backends.gating);
                // Policies an older daemon stored by GVM index are rekeyed by PCI address.
                s.migrate(&start_gpus);
                // Shim processes are preempted by nothing cheap below us: equal- and
                // fixed-share then run one vGPU at a time per GPU.
                if shim_only {
                    s.exclusive = Some(gvm_sched::DEFAULT_EXCLUSIVE_SLICE);
                    info!("CUDA shim gcgroups only: equal-share and fixed-share give each GPU to one vGPU at a time (slices of at least 20 ms)");
                }
                s
            },
            batches: crate::batches::Lists::default(),
            startup_problems: loaded.problems,
            catalog: None,
            config: None,
        })
    }

    /// Say which config file the daemon read and what its last reload did (`ping` reports it).
    pub fn set_config_status(&mut self, status: gvm_proto::ConfigStatus) {
        self.config = Some(status);
    }

    /// Say where the catalog given to [`Daemon::new`] came from (`ping` reports it).
    pub fn set_catalog_state(&mut self, state: crate::catalog::CatalogState) {
        self.catalog = Some(state);
    }

    /// Put a catalog that loaded whole in place, in one step (requests see the old catalog
    /// or the new one, never a mix), and re-apply the knobs of every live vGPU whose type
    /// values changed, as `set` does. A vGPU whose kernel type the new catalog does not know
    /// becomes unmanaged: its owners keep the knobs they have. `files` and `at` are what
    /// `ping` reports.
    pub fn replace_catalog(
        &mut self,
        types: Box<dyn TypePort>,
        files: Vec<String>,
        at: std::time::SystemTime,
    ) -> CatalogSwap {
        self.types = types;
        if let Some(c) = &mut self.catalog {
            c.reloaded(files, at);
        }
        let mut swap = CatalogSwap::default();
        for (uuid, dev) in &self.observed.devices {
            let new = self
                .types
                .resolve_kind(dev.kind, &dev.mdev_type, dev.kernel_name.as_deref());
            if new.as_ref() == self.type_of.get(uuid) {
                continue;
            }
            swap.changed.push(*uuid);
            match new {
                Some(t) => {
                    info!(%uuid, vgpu_type = %t.name, memory_limit = t.memory_limit,
                          priority = t.priority, "catalog reload: type values changed, re-applying");
                    self.type_of.insert(*uuid, t);
                }
                None => {
                    info!(%uuid, mdev_type = %dev.mdev_type,
                          "catalog reload: the type is no longer in the catalog: unmanaged now, knobs left as they are");
                    self.type_of.remove(uuid);
                    swap.unmanaged.push(*uuid);
                }
            }
        }
        if !swap.changed.is_empty() {
            swap.errors = self.retune(&swap.changed);
        }
        // Shares of the fixed-share policy come from the catalog too.
        self.scheduler.wake();
        swap
    }

    /// A reload was refused for `error` (the whole chain): the catalog in use stays, and
    /// `ping` says why until a reload succeeds.
    pub fn catalog_reload_failed(&mut self, error: String, at: std::time::SystemTime) {
        if let Some(c) = &mut self.catalog {
            c.failed(error, at);
        }
    }

    /// Rescan with `timing` from now on (a config reload); a sweep under way goes on at the
    /// new pace.
    pub fn set_timing(&mut self, timing: Timing) {
        self.timing = timing;
        self.gpu_sweep.set_period(timing.slow_rescan);
        self.verify_sweep.set_period(timing.verify);
    }

    /// Read and set NVIDIA's vGPU scheduler through `nvidia` (opened at start).
    pub fn use_nvml(&mut self, nvidia: crate::nvidia_sched::NvidiaScheduler) {
        self.scheduler.use_nvml(nvidia);
    }

    /// Give guests `d` to acknowledge a new state before the fallback acts.
    pub fn set_guest_ack_deadline(&mut self, d: std::time::Duration) {
        self.fallback.set_deadline(d);
    }

    /// Allow the users of `policy` (beside root) to claim vGPUs through their environment
    /// or cgroup (`--owner-uid`). Processes refused before are classified again.
    pub fn set_claim_policy(&mut self, policy: crate::owners::ClaimPolicy) {
        info!(uids = ?policy.uids().collect::<Vec<_>>(), "users that may claim vGPUs through their environment or cgroup");
        self.claims = policy;
        let refused: Vec<u32> = self.observed.refused.keys().copied().collect();
        for pid in refused {
            self.classify(pid, true);
        }
    }

    /// The host root this daemon manages.
    pub fn host(&self) -> &HostRoot {
        &self.host
    }

    /// Rescan and reconcile. `force` does the slow rescan and verification now.
    pub fn tick(&mut self, now: Instant, force: bool) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        if self.first_pass {
            report.errors.append(&mut self.startup_problems);
        }
        let slow = force
            || self
                .last_slow
                .is_none_or(|t| now.duration_since(t) >= self.timing.slow_rescan);
        let verify = force
            || self
                .last_verify
                .is_none_or(|t| now.duration_since(t) >= self.timing.verify);
        if slow {
            self.last_slow = Some(now);
        }
        if verify {
            self.last_verify = Some(now);
        }

        let mut new_parents = self.scan_parents(&mut report);
        if self.first_pass || slow {
            new_parents.extend(self.scan_pfs(&mut report));
        }
        if !new_parents.is_empty() && !self.scheduler.file().unmapped.is_empty() {
            // A GPU that registered late (its driver loaded after the daemon started) may
            // be the one a kept-aside policy was stored for.
            self.scheduler.migrate(&self.observed.host_gpus());
        }
        if self.first_pass {
            self.restore_vf_vgpus(&mut report);
        }
        let mut dirty = self.scan_devices(&mut report, force);
        dirty |= self.scan_vf_vgpus(&mut report);
        dirty |= self.scan_processes(&mut report, slow);
        if self.first_pass {
            self.unread_at_start = self.pids.clone();
        }
        if verify && (force || self.first_pass) {
            self.verify_gcgroups(&mut report);
            self.verify_sweep.visited_all(now);
            dirty = true;
        } else {
            let owned: BTreeSet<u32> = self.observed.gpus.keys().copied().collect();
            let slice = self.verify_sweep.take(now, &owned);
            dirty |= self.verify_pids(&slice, &mut report);
        }
        // Processes from before the start that became owners only now (their owner
        // resolved later: libvirt's files, a cgroup move) are read like the first pass's.
        let late: Vec<u32> = self
            .unread_at_start
            .iter()
            .filter(|p| self.observed.gpus.contains_key(p))
            .copied()
            .collect();
        if !late.is_empty() {
            self.verify_pids(&late, &mut report);
            dirty = true;
        }
        if dirty || !new_parents.is_empty() || self.first_pass {
            self.reconcile(&new_parents, None, &mut report);
        }
        if self.first_pass && self.fallback.any_paused() {
            // VMs an earlier run paused whose vGPU is no longer meant to be frozen.
            let live = self.desired.live.clone();
            self.fallback
                .converge(|u| live.get(u).is_some_and(|l| l.frozen));
        }
        self.first_pass = false;
        self.publish_guest_states();
        for u in self.guests.take_frozen_liars() {
            let meant_frozen = self.desired.live.get(&u).is_some_and(|l| l.frozen);
            if meant_frozen && !self.fallback.is_paused(&u) {
                let domain = self.domain_of(&u);
                let vm = crate::fallback::VmRef {
                    domain: domain.as_deref(),
                    libvirt_uri: self.libvirt.uri(),
                };
                self.fallback.pause_liar(&u, vm);
            }
        }
        report
    }

    /// The SR-IOV GPUs (PFs) of the host, on the first and each slow pass (they come and go
    /// with NVIDIA's vGPU manager, not with vGPUs); returns those that appeared.
    fn scan_pfs(&mut self, report: &mut ReconcileReport) -> BTreeSet<String> {
        let now: BTreeSet<String> = match self.mdev.pf_addresses() {
            Ok(a) => a.into_iter().collect(),
            Err(e) => {
                report.errors.push(error_chain(&e));
                return BTreeSet::new();
            }
        };
        let added: BTreeSet<String> = now.difference(&self.observed.pfs).cloned().collect();
        for gone in self.observed.pfs.difference(&now) {
            info!(gpu = %gone, "SR-IOV GPU gone");
        }
        for pf in &added {
            info!(gpu = %pf, "SR-IOV GPU found: its vGPUs are VFs");
        }
        self.observed.pfs = now;
        added
    }

    fn scan_parents(&mut self, report: &mut ReconcileReport) -> BTreeSet<String> {
        let names = match self.mdev.parent_names() {
            Ok(n) => n,
            Err(e) => {
                report.errors.push(error_chain(&e));
                return BTreeSet::new();
            }
        };
        let now: BTreeSet<String> = names.into_iter().collect();
        let added: BTreeSet<String> = now.difference(&self.observed.parents).cloned().collect();
        for gone in self.observed.parents.difference(&now) {
            info!(parent = %gone, "mdev parent unregistered");
            self.parent_types.remove(gone);
            self.observed.parent_gpu.remove(gone);
            self.gpu_index_failed.remove(gone);
        }
        for p in &added {
            if !self.first_pass {
                info!(parent = %p, "mdev parent registered");
            }
            if let Err(e) = self.types_of_parent(p) {
                debug!("{}", error_chain(&e));
            }
        }
        self.observed.parents = now;
        // Every PCI parent's GVM index, so that GPUs can be shown and named by position
        // and PCI address (`gvm_gcgroup::host_gpus`).
        for p in added.iter().filter(|p| is_pci_address(p)) {
            match self.mdev.parent_gpu_index(p) {
                Ok(Some(gpu)) => {
                    self.observed.parent_gpu.insert(p.clone(), gpu);
                }
                Ok(None) => {}
                Err(e) => debug!("{}", error_chain(&e)),
            }
        }
        added
    }

    /// The kernel types of a parent: read from sysfs the first time after the parent
    /// registered, from the cache afterwards.
    pub(crate) fn types_of_parent(
        &mut self,
        parent: &str,
    ) -> Result<&[crate::ports::TypeInfo], PortError> {
        if !self.parent_types.contains_key(parent) {
            let types = self.mdev.parent_types(parent)?;
            self.parent_types.insert(parent.to_string(), types);
        }
        Ok(self
            .parent_types
            .get(parent)
            .map(Vec::as_slice)
            .unwrap_or(&[]))
    }

    /// The `name` attribute of a kernel type (cached per parent).
    pub(crate) fn kernel_name(&mut self, parent: &str, mdev_type: &str) -> Option<String> {
        match self.types_of_parent(parent) {
            Ok(types) => types
                .iter()
                .find(|t| t.id == mdev_type)
                .and_then(|t| t.name.clone()),
            Err(e) => {
                debug!("{}", error_chain(&e));
                None
            }
        }
    }

    fn scan_devices(&mut self, report: &mut ReconcileReport, force: bool) -> bool {
        let mut names = match self.mdev.device_names() {
            Ok(n) => n,
            Err(e) => {
                report.errors.push(error_chain(&e));
                return false;
            }
        };
        names.sort();
        if names == self.device_names && !force {
            return false;
        }
        // Read only what is new when little changed; everything otherwise.
        let known: BTreeSet<String> = self.device_names.iter().cloned().collect();
        let new_names: Vec<&String> = names.iter().filter(|n| !known.contains(*n)).collect();
        let devices = if !force && new_names.len() <= 64 {
            let mut devs: Vec<crate::ports::DeviceInfo> = Vec::new();
            for n in new_names {
                let Ok(u) = Uuid::try_parse(n) else { continue };
                match self.mdev.device(u) {
                    Ok(d) => devs.push(d),
                    Err(e) if e.is_gone() => {}
                    Err(e) => {
                        report.errors.push(error_chain(&e));
                        return false;
                    }
                }
            }
            let listed: BTreeSet<&String> = names.iter().collect();
            devs.extend(
                self.observed
                    .devices
                    .values()
                    .filter(|d| listed.contains(&d.uuid.to_string()))
                    .map(|d| crate::ports::DeviceInfo {
                        uuid: d.uuid,
                        parent: d.parent.clone(),
                        mdev_type: d.mdev_type.clone(),
                    }),
            );
            devs
        } else {
            match self.mdev.devices() {
                Ok(d) => d,
                Err(e) => {
                    report.errors.push(error_chain(&e));
                    return false;
                }
            }
        };
        self.device_names = names;
        let mut seen = BTreeSet::new();
        for d in devices {
            seen.insert(d.uuid);
            if self.observed.devices.contains_key(&d.uuid) {
                continue;
            }
            let kernel_name = self.kernel_name(&d.parent, &d.mdev_type);
            self.adopt(
                ObservedDevice {
                    uuid: d.uuid,
                    parent: d.parent,
                    mdev_type: d.mdev_type,
                    kernel_name,
                    kind: gvm_proto::VgpuKind::Mdev,
                    vf: None,
                },
                report,
            );
        }
        let gone: Vec<Uuid> = self
            .observed
            .devices
            .values()
            .filter(|d| d.kind == VgpuKind::Mdev && !seen.contains(&d.uuid))
            .map(|d| d.uuid)
            .collect();
        for uuid in gone {
            info!(%uuid, "vGPU removed from the host");
            self.forget_device(&uuid);
        }
        true
    }

    /// Adopt the VF vGPUs that became live (created by `gvm-vgpu create`, or restored) and
    /// forget those whose VF no longer carries them (removed, or the VFs were disabled).
    fn scan_vf_vgpus(&mut self, report: &mut ReconcileReport) -> bool {
        let live = match self.mdev.vf_vgpus() {
            Ok(v) => v,
            Err(e) => {
                report.errors.push(error_chain(&e));
                return false;
            }
        };
        let mut dirty = false;
        let seen: BTreeSet<Uuid> = live.iter().map(|v| v.uuid).collect();
        for v in live {
            if self.observed.devices.contains_key(&v.uuid) {
                continue;
            }
            self.adopt(observed_vf(v), report);
            dirty = true;
        }
        let gone: Vec<Uuid> = self
            .observed
            .devices
            .values()
            .filter(|d| d.kind == VgpuKind::Vf && !seen.contains(&d.uuid))
            .map(|d| d.uuid)
            .collect();
        for uuid in gone {
            info!(%uuid, "VF vGPU removed from the host");
            self.forget_device(&uuid);
            dirty = true;
        }
        if dirty || self.first_pass {
            // The owner rule for VF vGPUs: the process holding the VF's VFIO device.
            let mut nodes = Vec::new();
            for uuid in &seen {
                match self.mdev.vf_vfio_nodes(*uuid) {
                    Ok(n) => nodes.extend(n.into_iter().map(|n| (n, *uuid))),
                    Err(e) => debug!("{}", error_chain(&e)),
                }
            }
            self.resolver.set_vf_nodes(nodes);
        }
        dirty
    }

    /// At start: re-create every autostart VF definition whose vGPU is not live, enabling
    /// the VFs of its GPU first where needed, largest first ([`crate::vf_restore`]); each
    /// vGPU that cannot be restored gets its own line in `report.errors`, naming it.
    fn restore_vf_vgpus(&mut self, report: &mut ReconcileReport) {
        // Records of VF vGPUs nobody defined whose VF holds nothing now (a reboot): they
        // would keep their VFs reserved for vGPUs that are gone.
        let defined: BTreeSet<Uuid> = self.desired.definitions.keys().copied().collect();
        match self.mdev.prune_gone_vf_records(&defined) {
            Ok(gone) => {
                for uuid in gone {
                    info!(%uuid, "dropped the record of a VF vGPU that is gone (its VF holds no vGPU: a reboot, or another tool removed it); the VF is free again");
                }
            }
            Err(e) => report
                .errors
                .push(format!("restore VF vGPUs: {}", error_chain(&e))),
        }
        let defs: Vec<&gvm_proto::Definition> = self
            .desired
            .definitions
            .values()
            .filter(|d| d.kind == VgpuKind::Vf && d.autostart)
            .collect();
        if defs.is_empty() {
            return;
        }
        let (pfs, live) = match (self.mdev.pfs(), self.mdev.vf_vgpus()) {
            (Ok(p), Ok(l)) => (p, l),
            (Err(e), _) | (_, Err(e)) => {
                report
                    .errors
                    .push(format!("restore VF vGPUs: {}", error_chain(&e)));
                return;
            }
        };
        let live_uuids: BTreeSet<Uuid> = live.iter().map(|v| v.uuid).collect();
        let mut live_types: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for v in &live {
            live_types
                .entry(v.pf.clone())
                .or_default()
                .insert(v.kernel_name.clone());
        }
        let wanted: Vec<VfToRestore> = defs
            .iter()
            .filter(|d| !live_uuids.contains(&d.uuid))
            .map(|d| VfToRestore {
                uuid: d.uuid,
                pf: d.parent.clone(),
                kernel_name: d.kernel_name.clone().unwrap_or_else(|| d.mdev_type.clone()),
                memory: d
                    .type_name
                    .as_deref()
                    .and_then(|n| self.types.spec_by_name(n))
                    .map_or(0, |t| t.memory_limit),
            })
            .collect();
        let p = plan_restore(&wanted, &pfs, &live_types);
        let mut failed_pfs: BTreeSet<String> = BTreeSet::new();
        for (pf, n) in &p.enable {
            match self.mdev.enable_vfs(pf, *n) {
                Ok(()) => {
                    info!(%pf, vfs = n, "enabled the VFs of an SR-IOV GPU for its defined vGPUs")
                }
                Err(e) => {
                    for w in p.create.iter().filter(|w| &w.pf == pf) {
                        report.errors.push(format!(
                            "restore vGPU {}: cannot enable the VFs of {pf}: {}",
                            w.uuid,
                            error_chain(&e)
                        ));
                    }
                    failed_pfs.insert(pf.clone());
                }
            }
        }
        // Mixed sizes need heterogeneous mode, which enabling the VFs cleared: NVML sets it
        // where the daemon has NVML; where it cannot, the creations are still tried (another
        // tool may have set it) and a refusal says why.
        let mut no_heterogeneous: BTreeMap<String, String> = BTreeMap::new();
        for pf in p.mixed.iter().filter(|pf| !failed_pfs.contains(*pf)) {
            if let Err(why) = self.scheduler.nvidia().enable_heterogeneous(pf) {
                info!(%pf, "heterogeneous vGPU mode not set for the mixed sizes defined there: {why}");
                no_heterogeneous.insert(pf.clone(), why);
            }
        }
        // Each failure is one line of the report, which the initial reconciliation logs.
        for (uuid, why) in &p.refused {
            report.errors.push(format!("restore vGPU {uuid}: {why}"));
        }
        for w in p.create.iter().filter(|w| !failed_pfs.contains(&w.pf)) {
            let made = self
                .mdev
                .drop_vf_record(w.uuid)
                .and_then(|()| self.mdev.create_vf(&w.pf, &w.kernel_name, w.uuid));
            match made {
                Ok(v) => {
                    info!(uuid = %w.uuid, pf = %w.pf, vf = %v.vf, kernel_name = %w.kernel_name, "restored defined VF vGPU");
                    report.autostarted.push(w.uuid);
                    self.adopt(observed_vf(v), report);
                }
                Err(e) => {
                    let mixed_refused = p.mixed.contains(&w.pf) && is_not_creatable(&e);
                    let why = match no_heterogeneous.get(&w.pf) {
                        Some(nvml) if mixed_refused => format!(
                            "{} ({})",
                            mixed_sizes_message(
                                &w.pf,
                                &w.kernel_name,
                                p.enable.iter().any(|(pf, _)| *pf == w.pf),
                                nvml
                            ),
                            error_chain(&e)
                        ),
                        _ => error_chain(&e),
                    };
                    report
                        .errors
                        .push(format!("restore vGPU {}: {why}", w.uuid));
                }
            }
        }
    }

    /// Start managing a live device.
    pub(crate) fn adopt(&mut self, dev: ObservedDevice, report: &mut ReconcileReport) {
        let uuid = dev.uuid;
        match self
            .types
            .resolve_kind(dev.kind, &dev.mdev_type, dev.kernel_name.as_deref())
        {
            Some(t) => {
                info!(%uuid, parent = %dev.parent, mdev_type = %dev.mdev_type, vgpu_type = %t.name, "adopted vGPU");
                self.type_of.insert(uuid, t);
                report.adopted.push(uuid);
            }
            None => {
                info!(%uuid, parent = %dev.parent, mdev_type = %dev.mdev_type,
                    "vGPU type is not in the catalog: listed as unmanaged, not touched");
                self.type_of.remove(&uuid);
                report.unmanaged.push(uuid);
            }
        }
        self.observed.devices.insert(uuid, dev);
    }

    pub(crate) fn forget_device(&mut self, uuid: &Uuid) {
        self.observed.devices.remove(uuid);
        self.type_of.remove(uuid);
        self.totals.remove(uuid);
        if self.desired.live.remove(uuid).is_some() {
            if let Err(e) = self.store.save_live(uuid, &Default::default()) {
                warn!("{}", error_chain(&e));
            }
        }
    }

    fn scan_processes(&mut self, report: &mut ReconcileReport, slow: bool) -> bool {
        let now = Instant::now();
        if slow && self.resolver.refresh_libvirt() {
            info!(
                domains = self.resolver.domains().len(),
                "libvirt domains changed"
            );
        }
        let pids: BTreeSet<u32> = match self.gc.processes() {
            Ok(p) => p.into_iter().collect(),
            Err(e) => {
                report.errors.push(format!(
                    "list the {} backend's processes: {}",
                    self.gc.name(),
                    error_chain(&e)
                ));
                return false;
            }
        };
        let mut dirty = false;
        let gone: Vec<u32> = self.pids.difference(&pids).copied().collect();
        for pid in gone {
            self.drop_pid(pid);
            dirty = true;
        }
        let new: Vec<u32> = pids.difference(&self.pids).copied().collect();
        self.pids = pids;
        for pid in new {
            dirty |= self.classify(pid, true);
        }
        if slow {
            for pid in self.unowned.clone() {
                dirty |= self.classify(pid, true);
            }
        }
        // Every owner's GPU directory is listed again once per slow period, a slice
        // per tick, so thousands of owners never stall a tick (and the API behind it).
        let owned: BTreeSet<u32> = self.observed.gpus.keys().copied().collect();
        for pid in self.gpu_sweep.take(now, &owned) {
            dirty |= self.refresh_gpus_if_count_moved(pid);
        }
        {
            // Owners that had no GPU yet register soon after starting: look often.
            let waiting: Vec<u32> = self
                .observed
                .gpus
                .iter()
                .filter(|(_, g)| g.is_empty())
                .map(|(p, _)| *p)
                .collect();
            for pid in waiting {
                dirty |= self.refresh_gpus(pid);
            }
        }
        dirty
    }

    /// Resolve the owner of `pid`; true when it became an owner (of one more vGPU).
    fn classify(&mut self, pid: u32, retry: bool) -> bool {
        let Some(own) = self.resolver.owner_of(pid, retry) else {
            self.unowned.insert(pid);
            return false;
        };
        let claimed = matches!(own.rule, OwnerRule::Environment | OwnerRule::Cgroup);
        // Allowed everywhere by the daemon's policy, or by the definition of every vGPU the
        // process claims.
        let allowed = own.uuids.iter().all(|u| {
            let by_definition = self
                .desired
                .definitions
                .get(u)
                .map_or(&[][..], |d| d.owner_uids.as_slice());
            self.claims.allows(own.uid, by_definition)
        });
        if claimed && !allowed {
            let uuid = own.uuids.first().copied().unwrap_or_default();
            let refusal = gvm_proto::RefusedClaim {
                pid,
                uid: own.uid,
                rule: own.rule,
            };
            if self.observed.refused.insert(pid, (uuid, refusal)).is_none() {
                warn!(%uuid, pid, uid = ?own.uid, rule = ?own.rule,
                    "claim refused: this user may not own this vGPU (allow it with `gvm-vgpu define --owner-uid` or gvm-vgpud --owner-uid)");
            }
            self.unowned.insert(pid);
            return false;
        }
        self.observed.refused.remove(&pid);
        self.unowned.remove(&pid);
        let mut fresh = false;
        for uuid in &own.uuids {
            let added = self
                .observed
                .owners
                .entry(*uuid)
                .or_default()
                .insert(pid, own.rule)
                .is_none();
            if added {
                info!(%uuid, pid, rule = ?own.rule, vgpus = own.uuids.len(), "owner process found");
            }
            fresh |= added;
        }
        if own.uuids.len() > 1 {
            self.observed.split_owners.insert(pid, own.uuids);
        }
        if fresh {
            self.observed.gpus.entry(pid).or_default();
            self.refresh_gpus(pid);
        }
        fresh
    }

    /// Learn the GVM GPU index of the parents of split owners' vGPUs (cached per
    /// parent) and log, once each, gcgroups of split owners that no vGPU of theirs
    /// sits on: those are left alone.
    fn learn_split_owner_gpus(&mut self) {
        let mut parents: BTreeSet<String> = BTreeSet::new();
        for uuids in self.observed.split_owners.values() {
            for u in uuids {
                if let Some(d) = self.observed.devices.get(u) {
                    if !self.observed.parent_gpu.contains_key(&d.parent) {
                        parents.insert(d.parent.clone());
                    }
                }
            }
        }
        for parent in parents {
            match self.mdev.parent_gpu_index(&parent) {
                Ok(Some(gpu)) => {
                    debug!(%parent, gpu, "GVM GPU index of parent");
                    self.gpu_index_failed.remove(&parent);
                    self.observed.parent_gpu.insert(parent, gpu);
                }
                Ok(None) => {
                    if self.gpu_index_failed.insert(parent.clone()) {
                        warn!(%parent, "cannot tell the GVM GPU index of this parent (no \
                            gvm_uvm_index file and not a PCI address): the gcgroups of processes \
                            owning several vGPUs are not tuned for its vGPUs");
                    }
                }
                Err(e) => {
                    if self.gpu_index_failed.insert(parent.clone()) {
                        warn!("{}", error_chain(&e));
                    }
                }
            }
        }
        let split: Vec<u32> = self.observed.split_owners.keys().copied().collect();
        for pid in split {
            for gpu in self.observed.stray_gpus(pid) {
                if self.stray_logged.insert((pid, gpu)) {
                    warn!(pid, gpu, vgpus = ?self.observed.split_owners.get(&pid),
                        "owner of several vGPUs has a gcgroup on a GPU none of them sits on: \
                         leaving it alone");
                }
            }
        }
    }

    fn refresh_gpus(&mut self, pid: u32) -> bool {
        let gpus: BTreeSet<u32> = match self.gc.gpus(pid) {
            Ok(g) => g.into_iter().collect(),
            // Gone: it has no GPUs (the process list drops it at the next scan).
            Err(e) if e.is_process_gone() => BTreeSet::new(),
            Err(e) => {
                debug!(pid, "list GPUs: {}", error_chain(&e));
                return false;
            }
        };
        let known = self.observed.gpus.entry(pid).or_default();
        if *known == gpus {
            return false;
        }
        for g in gpus.difference(known) {
            debug!(pid, gpu = g, "GPU registration appeared");
        }
        let removed: Vec<u32> = known.difference(&gpus).copied().collect();
        *known = gpus.clone();
        for g in removed {
            self.observed.gcgroups.remove(&(pid, g));
            self.reads.remove(&(pid, g));
        }
        // A new gcgroup is not read first: with no known state the plan writes every
        // knob, which costs less than reading six files and still writing most of them.
        // Gcgroups that predate this run are read first (`unread_at_start`).
        true
    }

    /// [`Daemon::refresh_gpus`] when the backend's cheap count of `pid`'s GPUs differs
    /// from what is known, or cannot be had (one `stat` instead of a listing on GVM).
    fn refresh_gpus_if_count_moved(&mut self, pid: u32) -> bool {
        let count = match self.gc.gpu_count(pid) {
            Err(e) if e.is_process_gone() => Ok(Some(0)),
            other => other,
        };
        if let Ok(Some(n)) = count {
            if self.observed.gpus.get(&pid).is_some_and(|g| g.len() == n) {
                return false;
            }
        }
        self.refresh_gpus(pid)
    }

    fn drop_pid(&mut self, pid: u32) {
        self.unowned.remove(&pid);
        self.observed.refused.remove(&pid);
        self.unread_at_start.remove(&pid);
        if let Some(gpus) = self.observed.gpus.remove(&pid) {
            for g in gpus {
                self.observed.gcgroups.remove(&(pid, g));
                self.reads.remove(&(pid, g));
            }
        }
        self.drifted.retain(|(p, _, _)| *p != pid);
        self.stray_logged.retain(|(p, _)| *p != pid);
        self.observed.split_owners.remove(&pid);
        self.observed.owners.retain(|uuid, owners| {
            if owners.remove(&pid).is_some() {
                debug!(%uuid, pid, "owner process exited");
            }
            !owners.is_empty()
        });
        let pids = &self.pids;
        self.resolver.retain_pids(&|p| pids.contains(&p));
    }

    /// Read back every owner gcgroup: detect drift, refresh totals.
    fn verify_gcgroups(&mut self, report: &mut ReconcileReport) {
        let owned: Vec<u32> = self.observed.gpus.keys().copied().collect();
        self.verify_pids(&owned, report);
        self.reads
            .retain(|(pid, _), _| self.observed.gpus.contains_key(pid));
        let uuids: Vec<Uuid> = self.observed.devices.keys().copied().collect();
        self.totals.clear();
        self.refresh_totals(&uuids);
    }

    /// Read back the gcgroups of `pids`: a knob that differs from what the daemon
    /// last wrote changed behind its back (drift: reported, then corrected by the
    /// plan); the reads refresh the totals of the pids' vGPUs. True on drift.
    fn verify_pids(&mut self, pids: &[u32], report: &mut ReconcileReport) -> bool {
        if pids.is_empty() {
            return false;
        }
        // The slow rescan only lists an owner's GPUs when their count moved; here, once
        // per verification period, every owner's GPUs are listed whatever the count.
        let mut moved = false;
        for pid in pids {
            moved |= self.refresh_gpus(*pid);
        }
        let wanted: BTreeSet<u32> = pids.iter().copied().collect();
        let mut uuids: BTreeSet<Uuid> = BTreeSet::new();
        let mut owner_of: BTreeMap<(u32, u32), Uuid> = BTreeMap::new();
        for (uuid, owners) in &self.observed.owners {
            for pid in owners.keys().filter(|p| wanted.contains(p)) {
                for gpu in self.observed.owner_gpus(uuid, *pid) {
                    owner_of.insert((*pid, gpu), *uuid);
                }
                uuids.insert(*uuid);
            }
        }
        let mut drift = false;
        let host_gpus = self.observed.host_gpus();
        for pid in pids {
            let gpus: Vec<u32> = self
                .observed
                .gpus
                .get(pid)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for gpu in gpus {
                let r = match self.gc.read(*pid, gpu) {
                    Ok(r) => r,
                    Err(e) if e.is_process_gone() => continue,
                    Err(e) => {
                        report
                            .errors
                            .push(error_chain(&PortError::gcgroup("read", *pid, gpu, e)));
                        continue;
                    }
                };
                self.reads.insert((*pid, gpu), r);
                let Some(s) = self.observed.gcgroups.get_mut(&(*pid, gpu)) else {
                    if self.unread_at_start.contains(pid) {
                        // Made before this run: plan from what it holds, not from what a
                        // new gcgroup would hold (thawed, the kernel's limit).
                        if r.frozen {
                            info!(pid, gpu, "gcgroup found frozen at start");
                        }
                        self.observed
                            .gcgroups
                            .insert((*pid, gpu), GcState::found(&r));
                    }
                    continue;
                };
                let uuid = owner_of.get(&(*pid, gpu)).copied().unwrap_or_default();
                for (knob, found, was) in crate::plan::drift(s, &r) {
                    warn!(%uuid, pid, gpu, knob, %found, written = %was,
                        "knob changed behind the daemon's back: correcting it");
                    let named = host_gpus.by_gvm_index(gpu);
                    report.drift.push(Drift {
                        uuid,
                        pid: *pid,
                        gpu: named.map(|g| g.position),
                        pci: named.map(|g| g.pci.clone()),
                        gvm_index: gpu,
                        knob: knob.to_string(),
                        found,
                        wanted: was,
                    });
                    self.drifted.insert((*pid, gpu, knob));
                    drift = true;
                }
                s.memory_limit = r.memory_limit;
                s.frozen = r.frozen;
                if s.priority.is_some() {
                    s.priority = Some(r.priority);
                }
            }
        }
        for pid in pids {
            if self.observed.gpus.contains_key(pid) {
                self.unread_at_start.remove(pid);
            }
        }
        let uuids: Vec<Uuid> = uuids.into_iter().collect();
        self.refresh_totals(&uuids);
        drift || moved
    }

    /// Recompute the totals of `uuids` from the last reads, with the gcgroup and
    /// frozen counts from the knob cache (which reflects the writes just made).
    pub(crate) fn refresh_totals(&mut self, uuids: &[Uuid]) {
        for uuid in uuids {
            if !self.observed.devices.contains_key(uuid) {
                continue;
            }
            let mut t = Totals::default();
            for pid in self
                .observed
                .owners
                .get(uuid)
                .into_iter()
                .flatten()
                .map(|o| o.0)
            {
                for gpu in self.observed.owner_gpus(uuid, *pid) {
                    let key = (*pid, gpu);
                    if let Some(r) = self.reads.get(&key) {
                        add_totals(&mut t, r);
                    } else {
                        t.gcgroups += 1;
                    }
                    if let Some(s) = self.observed.gcgroups.get(&key) {
                        t.frozen_gcgroups -=
                            u32::from(self.reads.get(&key).is_some_and(|r| r.frozen));
                        t.frozen_gcgroups += u32::from(s.frozen);
                    }
                }
            }
            self.totals.insert(*uuid, t);
        }
    }

    /// Plan and execute: autostart on `autostart_parents`, knob writes for `only`
    /// (all vGPUs when `None`).
    pub(crate) fn reconcile(
        &mut self,
        autostart_parents: &BTreeSet<String>,
        only: Option<&BTreeSet<Uuid>>,
        report: &mut ReconcileReport,
    ) {
        if !self.observed.split_owners.is_empty() {
            self.learn_split_owner_gpus();
        }
        let p = plan(
            &self.observed,
            &self.desired,
            &self.type_of,
            Scope {
                autostart_parents,
                only,
            },
        );
        for uuid in &p.stale_live {
            debug!(%uuid, "dropping live state of a vGPU that is gone");
            self.forget_device(uuid);
        }
        for a in p.actions {
            match a {
                Action::Create {
                    uuid,
                    parent,
                    mdev_type,
                } => match self.mdev.create(&parent, &mdev_type, uuid) {
                    Ok(()) => {
                        info!(%uuid, %parent, %mdev_type, "autostarted defined vGPU");
                        report.autostarted.push(uuid);
                        let kernel_name = self.kernel_name(&parent, &mdev_type);
                        self.adopt(
                            ObservedDevice {
                                uuid,
                                parent,
                                mdev_type,
                                kernel_name,
                                kind: gvm_proto::VgpuKind::Mdev,
                                vf: None,
                            },
                            report,
                        );
                    }
                    Err(e) => {
                        warn!("autostart: {}", error_chain(&e));
                        report.errors.push(error_chain(&e));
                    }
                },
                Action::Write {
                    uuid,
                    pid,
                    gpu,
                    knob,
                    found,
                } => self.execute_write(uuid, pid, gpu, knob, found, report),
            }
        }
        // Answers given right after (freeze, thaw, set) count frozen gcgroups as written.
        let touched: Vec<Uuid> = match only {
            Some(o) => o.iter().copied().collect(),
            None => self.observed.devices.keys().copied().collect(),
        };
        self.refresh_totals(&touched);
        self.publish_guest_states();
    }

    /// Hand every guest-agent channel the effective knobs of the vGPU it belongs to: its
    /// own socket's vGPU, or the (first) vGPU of the libvirt domain whose channel it is.
    /// A protocol-2 guest applies them to its CUDA processes (`agent_ingest`).
    pub(crate) fn publish_guest_states(&mut self) {
        if self.guests.is_empty() {
            return;
        }
        let domain_vgpu: BTreeMap<String, Uuid> = self
            .observed
            .devices
            .keys()
            .filter_map(|u| Some((self.resolver.domain_of(u)?.to_string(), *u)))
            .collect();
        let table = self.guests.clone();
        table.publish(|who| {
            let uuid = match who {
                crate::agent_ingest::Attribution::Vgpu(u) => *u,
                crate::agent_ingest::Attribution::Domain(d) => *domain_vgpu.get(d)?,
            };
            let dev = self.observed.devices.get(&uuid)?;
            let gpu = gvm_shim_abi::register::normalise_pci_bus_id(&dev.parent);
            let knobs = self.info(&uuid).knobs;
            let knobs = gvm_agent_proto::v2::Knobs {
                memory_limit: (knobs.memory_limit != gvm_proto::UNLIMITED)
                    .then_some(knobs.memory_limit),
                priority: Some(u32::from(knobs.priority)),
                frozen: knobs.frozen,
                host_swap: self.type_of.get(&uuid).is_some_and(|t| t.host_swap),
                share_budget_us: None,
                window_ms: None,
            };
            Some(crate::agent_ingest::PublishedState {
                knobs,
                vgpu: uuid,
                gpu,
            })
        });
    }

    fn execute_write(
        &mut self,
        uuid: Uuid,
        pid: u32,
        gpu: u32,
        knob: Knob,
        found: Option<String>,
        report: &mut ReconcileReport,
    ) {
        match self.gc.write(pid, gpu, knob) {
            Ok(()) => {
                report.writes += 1;
                let state = self.observed.gcgroups.entry((pid, gpu)).or_default();
                state.apply(knob);
                let (file, value) = (knob.file(), knob.text());
                if self.drifted.remove(&(pid, gpu, file)) {
                    info!(%uuid, pid, gpu, knob = file, found = ?found, wanted = %value, "corrected knob after drift");
                } else if let Some(found) = found {
                    debug!(%uuid, pid, gpu, knob = file, was = %found, value = %value, "retuned knob");
                } else if let Knob::Frozen(frozen) = knob {
                    // Freeze is the last knob of a gcgroup's first application.
                    info!(%uuid, pid, gpu, memory_limit = state.memory_limit.as_bytes(),
                        priority = ?state.priority, frozen, "applied the vGPU's knobs to a new owner gcgroup");
                } else {
                    debug!(%uuid, pid, gpu, knob = file, %value, "applied knob");
                }
            }
            Err(e) if e.is_process_gone() => {
                self.observed.gcgroups.remove(&(pid, gpu));
                if let Some(g) = self.observed.gpus.get_mut(&pid) {
                    g.remove(&gpu);
                }
            }
            Err(e) => {
                let e = error_chain(&PortError::gcgroup(
                    format!("write {file}", file = knob.file()),
                    pid,
                    gpu,
                    e,
                ));
                warn!(%uuid, "{e}");
                report.errors.push(format!("vGPU {uuid}: {e}"));
            }
        }
    }
}

impl Daemon {
    /// Lend the scheduler what it reads and may change for one call.
    fn with_scheduler<T>(
        &mut self,
        f: impl FnOnce(&mut crate::scheduler::Scheduler, &mut SchedContext<'_>) -> T,
    ) -> T {
        let guests = if self.guests.is_empty() {
            Vec::new()
        } else {
            self.guests.usage()
        };
        let mut cx = SchedContext {
            observed: &mut self.observed,
            desired: &mut self.desired,
            type_of: &self.type_of,
            totals: &self.totals,
            types: &*self.types,
            gc: &*self.gc,
            guests: &guests,
        };
        f(&mut self.scheduler, &mut cx)
    }

    /// One scheduler tick: read counters (the owners' gcgroups and the protocol-2 guests'),
    /// run each GPU's engine, write what changed, and give each guest the scheduler's share
    /// of it (its throttle is the VM's hold).
    pub fn sched_tick(&mut self, now: Instant) {
        let shares = self.with_scheduler(|s, cx| {
            s.tick(cx, now);
            (!cx.guests.is_empty()).then(|| s.guest_shares(cx))
        });
        if !self.guests.is_empty() {
            self.guests.set_sched(&shares.unwrap_or_default());
        }
    }

    /// Every GPU's scheduler (`policy show`, `top`).
    pub(crate) fn policy_status(&mut self) -> gvm_proto::SchedStatus {
        self.with_scheduler(|s, cx| s.status(cx))
    }

    /// `policy set`: validate, persist, switch the engines live, apply at once.
    pub(crate) fn policy_set(
        &mut self,
        p: gvm_proto::PolicyParams,
    ) -> Result<gvm_proto::SchedStatus, gvm_proto::ApiError> {
        let status = self.with_scheduler(|s, cx| s.set(cx, p))?;
        self.policy = self.scheduler.file().default.policy.to_string();
        Ok(status)
    }

    /// The flag the scheduler's tick loop reads without the daemon's lock.
    pub fn scheduler_busy_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.scheduler.busy_flag()
    }
}

impl Daemon {
    /// Follow libvirt at `uri` (the watch itself starts in
    /// [`crate::libvirt_watch::spawn_watch`]); `status_file` receives the libvirt picture as
    /// JSON after every change.
    pub fn use_libvirt(&mut self, uri: &str, status_file: Option<std::path::PathBuf>) {
        self.libvirt.follow(uri, status_file);
    }

    /// The domain holding `uuid`: as the followed libvirt reports it, else as libvirt's run
    /// directory says.
    pub(crate) fn domain_of(&self, uuid: &Uuid) -> Option<String> {
        self.libvirt
            .domain_of(uuid)
            .or_else(|| self.resolver.domain_of(uuid))
            .map(str::to_string)
    }

    /// The daemon's libvirt picture.
    pub fn libvirt(&self) -> &crate::domains::Domains {
        &self.libvirt
    }

    /// Act on one lifecycle event: update the map, drop a gone domain's QEMU owners, and
    /// bring pause freezes in line. Returns the errors of knob writes.
    pub fn libvirt_event(&mut self, event: &gvm_libvirt::WatchEvent) -> Vec<String> {
        let t = self
            .libvirt
            .on_event(event, &mut self.observed, &mut self.resolver);
        let errors = self.sync_pauses();
        if t != crate::domains::Transition::Ignored {
            self.libvirt.write_status(&self.desired);
        }
        errors
    }

    /// Give every managed vGPU the pause freeze libvirt's picture says, storing it and
    /// writing the owners' knobs. Returns the errors.
    pub fn sync_pauses(&mut self) -> Vec<String> {
        let changes = self
            .libvirt
            .pause_changes_for(&self.observed, &self.type_of, &self.desired);
        if changes.is_empty() {
            return Vec::new();
        }
        let (touched, mut errors) =
            self.libvirt
                .store_pauses(changes, &mut self.desired, &self.store);
        errors.extend(self.retune(&touched));
        self.libvirt.write_status(&self.desired);
        errors
    }

    /// The known vGPUs (running or defined) of the active domain `name`.
    pub(crate) fn domain_vgpus(&self, name: &str) -> Option<Vec<Uuid>> {
        self.libvirt
            .known_vgpus_of(name, &self.observed, &self.desired)
    }

    /// The domain holding `uuid`: libvirt's report, else libvirt's run directory.
    pub(crate) fn domain_name_of(&self, uuid: &Uuid) -> Option<String> {
        self.libvirt
            .domain_of(uuid)
            .or_else(|| self.resolver.domain_of(uuid))
            .map(str::to_string)
    }
}

impl Daemon {
    /// The table the guest-agent channel tasks write and the API reads (start
    /// [`crate::agent_ingest::run`] with it).
    pub fn guest_table(&self) -> crate::agent_ingest::GuestTable {
        self.guests.clone()
    }

    /// `guest_stats`: the channels a target names (all without one).
    pub(crate) fn guest_stats(
        &mut self,
        target: Option<&str>,
    ) -> Result<Vec<gvm_proto::GuestAgentInfo>, gvm_proto::ApiError> {
        crate::agent_ingest::select(self.guests.infos(&mut self.resolver), target)
    }

    /// The guest agents' Prometheus text.
    pub(crate) fn guest_metrics(&mut self) -> String {
        let mut text = crate::metrics::render_guests(&self.guests.infos(&mut self.resolver));
        if self.guests.relay_latency().count() > 0 {
            text.push_str(&self.guests.relay_latency().render());
        }
        text
    }
}

/// Add one gcgroup's values to a vGPU's totals.
/// A live VF vGPU as the core observes it.
pub(crate) fn observed_vf(v: VfVgpu) -> ObservedDevice {
    ObservedDevice {
        uuid: v.uuid,
        parent: v.pf,
        mdev_type: v.type_id.to_string(),
        kernel_name: Some(v.kernel_name),
        kind: VgpuKind::Vf,
        vf: Some(v.vf),
    }
}

/// Whether a VF creation failed because no VF lists the type now (homogeneous mode, or the
/// GPU full), as opposed to the VF vanishing or being busy.
fn is_not_creatable(e: &PortError) -> bool {
    match e {
        PortError::Vf { source, .. } => matches!(
            source.as_ref(),
            gvm_vgpu_host::Error::Vf(
                gvm_vf::Error::TypeNotCreatable { .. } | gvm_vf::Error::Rejected { .. }
            )
        ),
        _ => false,
    }
}

pub(crate) fn add_totals(t: &mut Totals, r: &GcgroupSnapshot) {
    t.memory_current += r.memory_current;
    t.swap_current += r.swap_current;
    t.kernels_submitted += r.stat.submitted;
    t.kernels_ended += r.stat.ended;
    t.kernels_pending += r.stat.pending;
    t.gcgroups += 1;
    t.frozen_gcgroups += u32::from(r.frozen);
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
