//! The live GPU time-slice scheduler: one `gvm-sched` engine per physical GPU.
//!
//! GVM gives each owner gcgroup (process × GPU) two scheduling knobs,
//! `compute.priority` (the hardware timeslice, `524288 µs >> priority`) and
//! `compute.freeze`. The pure [`gvm_sched::Engine`] decides which values they
//! should hold for a policy (best-effort, equal-share, fixed-share); this module
//! feeds it and carries its decisions out:
//!
//! - **Grouping.** vGPUs are grouped by the GVM GPU index of their owners'
//!   gcgroups (`processes/<pid>/<gpu>`), which is the physical GPU behind the
//!   vGPU's mdev parent. Each GPU has its own engine and configuration.
//! - **Counters.** Every [`TICK`] the daemon reads each owner gcgroup on the GPU
//!   (`gcgroup.stat`: pending and ended kernels). Demand = pending kernels > 0.
//! - **GPU time.** GVM exposes no GPU time, so it is *estimated* ([`split_gpu_time`]):
//!   while the GPU stayed busy for the whole tick, the tick's wall time is split
//!   among the vGPUs in proportion to the kernels each finished (kernel-count share
//!   of the GPU); the same ticks calibrate a mean kernel length, which prices the
//!   kernels finished in ticks where the GPU idled part of the time. This is exact
//!   when kernels have one length (the simulated host's 1 ms kernels); on real GVM
//!   a vGPU running long kernels beside one running short kernels is under-charged
//!   in proportion to the length ratio.
//! - **One place of truth.** The engine's knobs are stored in
//!   [`crate::model::Desired::sched`]; the reconciliation planner applies them in
//!   place of the type's priority and OR-s the freeze with the operator's, so the
//!   rescan loop never undoes a scheduler freeze as drift, and a vGPU frozen by
//!   the operator (or a paused domain) is never thawed by the scheduler: it is
//!   shown to the engine as having no work. Under best-effort nothing is stored
//!   and the planner's type priorities stand.
//! - **CUDA shim processes.** Under equal-share and fixed-share the GPU is marked
//!   daemon-driven for the shim backend (`gvm_shim_host::gating::GatingModes`):
//!   the shims' own priority arbitration is turned off and their launch queues bounded,
//!   so these freezes are the only gate and take effect within a kernel or two.
//! - **NVIDIA's scheduler.** On a GPU with NVIDIA's vGPU manager, `policy set` also sets
//!   the driver's own vGPU scheduler through NVML where NVML allows it, and the status
//!   reports it per GPU (`crate::nvidia_sched`).
//! - **Persistence.** The per-GPU choice lives in `/etc/gvm-vgpu/policy.json`
//!   (written atomically) and is restored at start.
//!
//! Pure parts (configuration file, estimator, GPU resolution) are unit-tested in
//! `scheduler_tests.rs`; the end-to-end behaviour on the simulated host in
//! `tests/policies.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gvm_error_chain::error_chain;
use gvm_gcgroup::host_gpus::HostGpus;
use gvm_host_root::HostRoot;
use gvm_proto::{
    ApiError, GpuSched, PolicyParams, SchedCounters, SchedStatus, SchedVgpu, Totals, UnmappedPolicy,
};
use gvm_sched::{Engine, EngineConfig, Nanos, Policy, VgpuId, VgpuInput};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::model::{effective, Desired, Observed, SchedKnobs, TypeSpec};
use crate::nvidia_sched::NvidiaScheduler;
pub use crate::policy_file::{Migration, PolicyFile, SchedulerError, StoredConfig};
use crate::ports::TypePort;
use crate::store::write_json;
use gvm_gcgroup::{GcgroupBackend, Knob, Priority};

/// How often the engines tick. The simulated GPU advances every 5 ms and a GVM
/// kernel is typically 0.1–5 ms; 10 ms keeps the equal-share lead bound (10 ms for
/// a 1 s window) at about one tick of progress while costing one `gcgroup` read
/// per owner per tick.
pub const TICK: Duration = Duration::from_millis(10);

/// GPUs whose policy is best-effort need no freezes: they tick every this many
/// [`TICK`]s, only to keep their achieved shares current for `top`.
pub const BEST_EFFORT_EVERY: u64 = 10;

/// GPU time of each vGPU in one tick, from the kernels each finished.
///
/// `ended[i]` is vGPU i's finished-kernel delta over `dt`. When `saturated` (some
/// vGPU had runnable work at both ends of the tick, so the GPU never idled), `dt`
/// is split in proportion to `ended` and `dt / Σended` is returned as a kernel-length
/// sample. Otherwise each kernel is priced at `kernel` (the calibrated mean; the
/// proportional split when none yet), and the total is capped at `dt`.
pub fn split_gpu_time(
    dt: Nanos,
    ended: &[u64],
    saturated: bool,
    kernel: Option<Nanos>,
) -> (Vec<Nanos>, Option<Nanos>) {
    let total: u64 = ended.iter().sum();
    if total == 0 {
        return (vec![Nanos::ZERO; ended.len()], None);
    }
    let prop =
        |e: u64| Nanos((u128::from(dt.as_nanos()) * u128::from(e) / u128::from(total)) as u64);
    match (saturated, kernel) {
        (false, Some(k)) => {
            let priced: Vec<u128> = ended
                .iter()
                .map(|e| u128::from(*e) * u128::from(k.as_nanos()))
                .collect();
            let sum: u128 = priced.iter().sum();
            let cap = u128::from(dt.as_nanos());
            let used = priced
                .iter()
                .map(|p| {
                    let v = if sum > cap { p * cap / sum } else { *p };
                    Nanos(u64::try_from(v).unwrap_or(u64::MAX))
                })
                .collect();
            (used, None)
        }
        _ => (
            ended.iter().map(|e| prop(*e)).collect(),
            saturated.then(|| Nanos(dt.as_nanos() / total)),
        ),
    }
}

/// Folds a kernel-length sample into the running mean (weight 1/8).
pub fn calibrate(mean: Option<Nanos>, sample: Nanos) -> Nanos {
    match mean {
        None => sample,
        Some(m) => Nanos((m.as_nanos() * 7 + sample.as_nanos()) / 8),
    }
}

/// Counter readings of one vGPU's owner gcgroups on one GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Σ `nr_ended_kernels`.
    pub ended: u64,
    /// Σ `nr_pending_kernels`.
    pub pending: u64,
    /// Σ `memory.current`.
    pub memory: u64,
    /// Owner gcgroups read.
    pub gcgroups: u32,
    /// Gcgroups reading `compute.freeze` = 0.
    pub running: u32,
    /// The protocol-2 guests' GPU busy time, µs, when the vGPU has one.
    pub guest_busy_us: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct VgpuTrack {
    last_ended: Option<u64>,
    gpu_time: Nanos,
    sample: Sample,
    user_frozen: bool,
    /// The share the engine was last given (fixed-share budgets of guests).
    share: f64,
    /// The guest's GPU busy time at the last tick, µs.
    last_guest_busy_us: Option<u64>,
}

struct GpuState {
    engine: Engine,
    tracks: BTreeMap<Uuid, VgpuTrack>,
    kernel: Option<Nanos>,
    last_tick: Option<Instant>,
    busy_after: bool,
    since: Instant,
    priority_writes: u64,
    freeze_writes: u64,
}

/// The scheduler's state inside the daemon.
pub struct Scheduler {
    file: PolicyFile,
    path: PathBuf,
    /// The host's GPUs (position, PCI address, GVM index) as last seen: the policy file is
    /// keyed by PCI address, the engines by GVM index.
    host: HostGpus,
    gpus: BTreeMap<u32, GpuState>,
    origin: Instant,
    ticks: u64,
    /// When `policy show`/`top` last asked for achieved shares. Best-effort GPUs need no
    /// counters to schedule, so they are sampled only while someone is looking.
    watched: std::cell::Cell<Option<Instant>>,
    /// Whether the next tick has work: cleared by a tick that found everything
    /// best-effort and unwatched, set again by every API request. The tick loop reads
    /// it without the daemon lock, so an idle daemon wakes no thread 100 times a second.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// [`gvm_sched::EngineConfig::exclusive`] for every GPU's engine: set by the daemon
    /// on a host without GVM's tree, where the CUDA shim gates launches and concurrent
    /// contexts lose GPU time to the hardware's context switching.
    pub(crate) exclusive: Option<gvm_sched::Nanos>,
    /// Which GPUs' CUDA shim processes this scheduler gates itself (shared with the shim
    /// backend, which applies it to each block).
    gating: std::sync::Arc<gvm_shim_host::gating::GatingModes>,
    /// NVIDIA's own vGPU scheduler through NVML, or why there is none (`nvidia_sched.rs`).
    nvidia: NvidiaScheduler,
}

/// How long after a `policy show`/`top` best-effort GPUs keep being sampled.
pub const WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("file", &self.file)
            .field("gpus", &self.gpus.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Scheduler {
    /// Loads `/etc/gvm-vgpu/policy.json` under `state`; a missing file means
    /// best-effort everywhere, a bad one is reported and replaced by the default.
    pub fn open(
        state: &HostRoot,
        gating: std::sync::Arc<gvm_shim_host::gating::GatingModes>,
    ) -> Scheduler {
        let path = state.config_dir().join("policy.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => PolicyFile::parse(&path, &bytes).unwrap_or_else(|e| {
                warn!("{}", error_chain(&e));
                PolicyFile::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PolicyFile::default(),
            Err(source) => {
                warn!(
                    "{}",
                    error_chain(&SchedulerError::Read {
                        path: path.clone(),
                        source
                    })
                );
                PolicyFile::default()
            }
        };
        info!(default = %file.default.policy, gpus = file.gpus.len(), "scheduling policy loaded");
        Scheduler {
            file,
            path,
            host: HostGpus::default(),
            gpus: BTreeMap::new(),
            origin: Instant::now(),
            ticks: 0,
            watched: std::cell::Cell::new(None),
            busy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            exclusive: None,
            gating,
            nvidia: NvidiaScheduler::without("NVML not opened (gvm-vgpud opens it at start)"),
        }
    }

    /// Read and set NVIDIA's vGPU scheduler through `nvidia` as well.
    pub fn use_nvml(&mut self, nvidia: NvidiaScheduler) {
        self.nvidia = nvidia;
    }

    /// NVIDIA's vGPU scheduler through NVML (or why there is none).
    pub fn nvidia(&self) -> &NvidiaScheduler {
        &self.nvidia
    }

    /// The stored configuration.
    pub fn file(&self) -> &PolicyFile {
        &self.file
    }

    /// At start and when a GPU registers: rekeys the entries an older daemon stored by GVM
    /// index by the PCI address of their GPU in `gpus`, writes the file again (atomically)
    /// when that changed anything, and logs each entry moved and each kept aside because
    /// its index maps to no GPU. On a failed write the file stays as it was and the
    /// migrated copy is used.
    pub fn migrate(&mut self, gpus: &HostGpus) -> Migration {
        self.host = gpus.clone();
        let (next, m) = self.file.migrate(gpus);
        if next != self.file {
            match write_json(&self.path, &next) {
                Ok(()) => info!(path = %self.path.display(), "policy file rekeyed by PCI address"),
                Err(e) => warn!("{}", error_chain(&SchedulerError::Save(e))),
            }
            for (gvm, position, pci) in &m.moved {
                info!(gvm_index = gvm, gpu = position, %pci,
                    "stored policy of GVM GPU index {gvm} migrated to GPU {position} ({pci})");
            }
            self.file = next;
        }
        // Reported whenever looked at (each start, each GPU registering), changed or not.
        for gvm in &m.unmapped {
            warn!(gvm_index = gvm, gpus = %gpus.names(),
                "stored policy of GVM GPU index {gvm} maps to no GPU of this host: kept aside \
                 in the policy file (not applied; see `gvm-vgpu policy show`)");
        }
        for gvm in &m.shadowed {
            warn!(
                gvm_index = gvm,
                "stored policy of GVM GPU index {gvm} is for a GPU that already has a policy by \
                 PCI address: that one is used, the old one kept aside in the policy file"
            );
        }
        m
    }

    /// The stored configuration of the GPU GVM numbers `gvm_index`.
    fn stored_for(&self, gvm_index: u32) -> StoredConfig {
        self.file
            .for_pci(self.host.by_gvm_index(gvm_index).map(|g| g.pci.as_str()))
    }

    /// Make the next tick look again (after any request: a policy, a share or who watches
    /// may have changed; an idle tick clears it).
    pub fn wake(&self) {
        self.busy.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The flag the tick loop reads without the daemon's lock: set while a tick has work.
    pub fn busy_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.busy.clone()
    }

    /// Whether no GPU runs a policy other than best-effort (stored or in a live engine) and
    /// no report asked for achieved shares recently: a tick then has nothing to do.
    fn idle(&self) -> bool {
        let best_effort = |c: &StoredConfig| c.policy == Policy::BestEffort;
        best_effort(&self.file.default)
            && self.file.gpus.values().all(best_effort)
            && self
                .gpus
                .values()
                .all(|g| g.engine.config().policy == Policy::BestEffort)
            && self.watched.get().is_none_or(|t| t.elapsed() >= WATCH_FOR)
    }

    /// The engine configuration of `gpu`: its stored policy, plus the host's exclusive mode.
    fn engine_config(&self, gpu: u32) -> gvm_sched::EngineConfig {
        let mut cfg = self.stored_for(gpu).engine();
        cfg.exclusive = self.exclusive;
        cfg
    }

    fn state(&mut self, gpu: u32, now: Instant) -> Option<&mut GpuState> {
        if !self.gpus.contains_key(&gpu) {
            let engine = match Engine::new(self.engine_config(gpu)) {
                Ok(e) => e,
                Err(e) => {
                    warn!(gpu, "{e}");
                    return None;
                }
            };
            self.gpus.insert(
                gpu,
                GpuState {
                    engine,
                    tracks: BTreeMap::new(),
                    kernel: None,
                    last_tick: None,
                    busy_after: false,
                    since: now,
                    priority_writes: 0,
                    freeze_writes: 0,
                },
            );
        }
        self.gpus.get_mut(&gpu)
    }
}

/// One GPU of `policy show`: how operators name it and, when an engine runs for it, the
/// engine's GVM index.
struct GpuRow {
    position: Option<u32>,
    pci: Option<String>,
    gvm_index: Option<u32>,
}

/// What the scheduler reads and may change, lent by the daemon core for one call: the
/// observed host (its gcgroup knob cache follows the scheduler's writes), the desired state
/// (the scheduler's own knobs in [`crate::model::Desired::sched`]), the catalog's view of
/// each vGPU and the gcgroup backend it writes through.
pub struct SchedContext<'a> {
    /// The host as last scanned.
    pub observed: &'a mut Observed,
    /// The operator's intent and the scheduler's knobs.
    pub desired: &'a mut Desired,
    /// The catalog type of each managed vGPU.
    pub type_of: &'a BTreeMap<Uuid, TypeSpec>,
    /// Each vGPU's totals from the last verification (memory in use).
    pub totals: &'a BTreeMap<Uuid, Totals>,
    /// The catalog (default shares).
    pub types: &'a dyn TypePort,
    /// The gcgroup backend.
    pub gc: &'a dyn GcgroupBackend,
    /// The counters of the VMs whose guests run protocol 2: charged like owner gcgroups.
    pub guests: &'a [crate::agent_ingest::GuestUsage],
}

impl Scheduler {
    /// One scheduler tick: read counters, run each GPU's engine, write what changed.
    pub fn tick(&mut self, cx: &mut SchedContext<'_>, now: Instant) {
        let slow = self.ticks.is_multiple_of(BEST_EFFORT_EVERY);
        self.ticks += 1;
        // All best-effort, nobody watching and no scheduler knobs left: nothing to do, and
        // walking thousands of owners 100 times a second would cost more than everything else.
        if self.idle() && cx.desired.sched.is_empty() {
            self.busy.store(false, std::sync::atomic::Ordering::Release);
            return;
        }
        self.host = cx.observed.host_gpus();
        let mut live: BTreeSet<(Uuid, u32)> = Self::owner_pairs(cx);
        live.extend(self.guest_pairs(cx).map(|(u, gpu, _)| (u, gpu)));
        let samples = self.sample_gcgroups(cx, slow, &live);
        // Forget scheduler knobs of (vGPU, GPU) pairs that no longer exist.
        cx.desired.sched.retain(|k, _| live.contains(k));
        for (gpu, vgpus) in samples {
            self.tick_gpu(cx, gpu, vgpus, now);
        }
    }

    /// (vGPU, GPU) pairs of managed vGPUs with owner gcgroups.
    fn owner_pairs(cx: &SchedContext<'_>) -> BTreeSet<(Uuid, u32)> {
        let mut out = BTreeSet::new();
        for (uuid, owners) in &cx.observed.owners {
            if !cx.type_of.contains_key(uuid) || !cx.observed.devices.contains_key(uuid) {
                continue;
            }
            for pid in owners.keys() {
                for gpu in cx.observed.owner_gpus(uuid, *pid) {
                    out.insert((*uuid, gpu));
                }
            }
        }
        out
    }

    /// (vGPU, GPU, usage) of each managed vGPU whose guest reports counters, on a GPU whose
    /// GVM index is known (engines are keyed by it).
    fn guest_pairs<'c>(
        &'c self,
        cx: &'c SchedContext<'_>,
    ) -> impl Iterator<Item = (Uuid, u32, &'c crate::agent_ingest::GuestUsage)> + 'c {
        cx.guests.iter().filter_map(move |g| {
            if !cx.type_of.contains_key(&g.vgpu) || !cx.observed.devices.contains_key(&g.vgpu) {
                return None;
            }
            let gpu = self.host.by_pci(&g.pci)?.gvm_index?;
            Some((g.vgpu, gpu, g))
        })
    }

    /// What the scheduler wants of each protocol-2 VM on a GPU under equal-share or
    /// fixed-share: the engine's priority, its throttle (the VM's `desired.sched` freeze)
    /// and the budget's window.
    pub fn guest_shares(
        &self,
        cx: &SchedContext<'_>,
    ) -> BTreeMap<Uuid, crate::agent_ingest::SchedShare> {
        let mut out = BTreeMap::new();
        for (uuid, gpu, _) in self.guest_pairs(cx) {
            let Some(st) = self.gpus.get(&gpu) else {
                continue;
            };
            let cfg = st.engine.config();
            if cfg.policy == Policy::BestEffort {
                continue;
            }
            let Some(k) = cx.desired.sched.get(&(uuid, gpu)) else {
                continue;
            };
            let window_ms = u32::try_from(cfg.window.0 / 1_000_000).unwrap_or(u32::MAX);
            let budget_us = (cfg.policy == Policy::FixedShare)
                .then(|| st.tracks.get(&uuid).map(|t| t.share))
                .flatten()
                .map(|share| (share * f64::from(window_ms) * 1000.0) as u64);
            out.insert(
                uuid,
                crate::agent_ingest::SchedShare {
                    priority: k.priority.unwrap_or(gvm_sched::PRIORITY_DEFAULT),
                    throttled: k.frozen,
                    window_ms,
                    budget_us,
                },
            );
        }
        out
    }

    /// Whether `gpu` is under best-effort, as stored and in its engine (a GPU switching
    /// policy is sampled until both agree).
    fn best_effort(&self, gpu: u32) -> bool {
        self.stored_for(gpu).policy == Policy::BestEffort
            && self
                .gpus
                .get(&gpu)
                .is_none_or(|st| st.engine.config().policy == Policy::BestEffort)
    }

    fn sample_gcgroups(
        &self,
        cx: &SchedContext<'_>,
        slow: bool,
        pairs: &BTreeSet<(Uuid, u32)>,
    ) -> BTreeMap<u32, BTreeMap<Uuid, Sample>> {
        let mut out: BTreeMap<u32, BTreeMap<Uuid, Sample>> = BTreeMap::new();
        // Best-effort GPUs are sampled (every BEST_EFFORT_EVERY ticks) only for reports.
        let watched = self.watched.get().is_some_and(|t| t.elapsed() < WATCH_FOR);
        let slow = slow && watched;
        for &(uuid, gpu) in pairs {
            if !slow && self.best_effort(gpu) {
                continue;
            }
            let s = out.entry(gpu).or_default().entry(uuid).or_default();
            for pid in cx
                .observed
                .owners
                .get(&uuid)
                .into_iter()
                .flatten()
                .map(|(p, _)| p)
            {
                if !cx.observed.gpus.get(pid).is_some_and(|g| g.contains(&gpu))
                    || !cx.observed.owns(&uuid, *pid, gpu)
                {
                    continue;
                }
                // Only gcgroup.stat is read (one file); the freeze state is what this daemon
                // wrote last, and memory comes from the totals of the verify passes.
                match cx.gc.stat(*pid, gpu) {
                    Ok(stat) => {
                        s.ended += stat.ended;
                        s.pending += stat.pending;
                        s.gcgroups += 1;
                        let frozen = cx
                            .observed
                            .gcgroups
                            .get(&(*pid, gpu))
                            .is_some_and(|g| g.frozen);
                        s.running += u32::from(!frozen);
                    }
                    Err(e) if e.is_process_gone() => {}
                    Err(e) => debug!(%uuid, pid, gpu, "scheduler read: {}", error_chain(&e)),
                }
            }
            s.memory = cx.totals.get(&uuid).map_or(0, |t| t.memory_current);
        }
        // A VM's guest processes count as the vGPU's gcgroups: their kernels, as the guest
        // last reported them. Running unless the scheduler throttles the VM.
        for (uuid, gpu, g) in self.guest_pairs(cx) {
            if !slow && self.best_effort(gpu) {
                continue;
            }
            let s = out.entry(gpu).or_default().entry(uuid).or_default();
            s.guest_busy_us = Some(s.guest_busy_us.unwrap_or(0).saturating_add(g.busy_us));
            s.pending = s.pending.saturating_add(g.pending);
            s.gcgroups += 1;
            let throttled = cx.desired.sched.get(&(uuid, gpu)).is_some_and(|k| k.frozen);
            s.running += u32::from(!throttled);
        }
        out
    }

    fn tick_gpu(
        &mut self,
        cx: &mut SchedContext<'_>,
        gpu: u32,
        vgpus: BTreeMap<Uuid, Sample>,
        now: Instant,
    ) {
        let now_ns =
            Nanos(u64::try_from(now.duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX));
        let mut knobs = BTreeMap::new();
        let mut shares = BTreeMap::new();
        for uuid in vgpus.keys() {
            let (k, _) = effective(
                cx.type_of.get(uuid),
                cx.desired.definitions.get(uuid),
                cx.desired.live.get(uuid),
            );
            let share = k.share.or_else(|| {
                cx.observed.devices.get(uuid).and_then(|d| {
                    cx.types
                        .default_share(&d.mdev_type, d.kernel_name.as_deref())
                })
            });
            knobs.insert(*uuid, k);
            shares.insert(*uuid, share.unwrap_or(0.0));
        }
        let Some(st) = self.state(gpu, now) else {
            return;
        };
        let dt = st
            .last_tick
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        st.last_tick = Some(now);
        st.tracks.retain(|u, _| vgpus.contains_key(u));
        // Estimate the GPU time of the tick.
        let order: Vec<Uuid> = vgpus.keys().copied().collect();
        let deltas: Vec<u64> = order
            .iter()
            .map(|u| {
                let t = st.tracks.get(u).and_then(|t| t.last_ended);
                match t {
                    Some(prev) => vgpus[u].ended.saturating_sub(prev),
                    None => 0,
                }
            })
            .collect();
        let busy_now = vgpus.values().any(|s| s.pending > 0 && s.running > 0);
        let dt_ns = Nanos(u64::try_from(dt.as_nanos()).unwrap_or(u64::MAX));
        let (used, sample) = split_gpu_time(dt_ns, &deltas, st.busy_after && busy_now, st.kernel);
        if let Some(k) = sample {
            st.kernel = Some(calibrate(st.kernel, k));
        }
        let mut inputs = Vec::with_capacity(order.len());
        for (i, u) in order.iter().enumerate() {
            let s = vgpus[u];
            let user_frozen = knobs.get(u).is_some_and(|k| k.frozen);
            let t = st.tracks.entry(*u).or_default();
            t.last_ended = Some(s.ended);
            t.gpu_time += used[i];
            // A guest's own GPU busy time; a drop (a process left) charges nothing.
            if let Some(busy) = s.guest_busy_us {
                let prev = t.last_guest_busy_us.unwrap_or(busy);
                t.gpu_time += Nanos(busy.saturating_sub(prev).saturating_mul(1000));
                t.last_guest_busy_us = Some(busy);
            }
            t.sample = s;
            t.user_frozen = user_frozen;
            t.share = shares.get(u).copied().unwrap_or(0.0);
            inputs.push(VgpuInput {
                id: VgpuId(u.as_u128()),
                // An operator freeze wins: the engine must not wait for this vGPU.
                pending_kernels: if user_frozen { 0 } else { s.pending },
                gpu_time: t.gpu_time,
                priority: knobs
                    .get(u)
                    .map_or(gvm_sched::PRIORITY_DEFAULT, |k| k.priority),
                share: shares.get(u).copied().unwrap_or(0.0),
            });
        }
        let actions = st.engine.tick(now_ns, &inputs);
        let best_effort = st.engine.config().policy == Policy::BestEffort;
        // CUDA shim processes: the shims' own priority arbitration under best-effort, the
        // freezes below otherwise (a no-op for GVM's tree).
        self.gating.set_daemon_driven(gpu, !best_effort);
        let mut touched: BTreeSet<Uuid> = BTreeSet::new();
        for a in &actions {
            let uuid = Uuid::from_u128(a.id.0);
            touched.insert(uuid);
            let e = cx.desired.sched.entry((uuid, gpu)).or_default();
            if let Some(p) = a.priority {
                e.priority = Some(p);
            }
            if let Some(f) = a.freeze {
                e.frozen = f;
            }
        }
        if best_effort {
            // The planner's type priorities stand; nothing is frozen by the scheduler.
            let before = cx.desired.sched.len();
            cx.desired.sched.retain(|(u, g), _| {
                let drop = *g == gpu;
                if drop {
                    touched.insert(*u);
                }
                !drop
            });
            if before != cx.desired.sched.len() {
                debug!(gpu, "best-effort: scheduler knobs dropped");
            }
        }
        let (mut pw, mut fw) = (0, 0);
        for uuid in &touched {
            let (p, f) = Self::write_sched_knobs(cx, *uuid, gpu, knobs.get(uuid).copied());
            pw += p;
            fw += f;
        }
        let busy_after = vgpus.iter().any(|(u, s)| {
            let frozen = knobs.get(u).is_some_and(|k| k.frozen)
                || cx.desired.sched.get(&(*u, gpu)).is_some_and(|k| k.frozen);
            s.pending > 0 && !frozen
        });
        if let Some(st) = self.gpus.get_mut(&gpu) {
            st.busy_after = busy_after;
            st.priority_writes += pw;
            st.freeze_writes += fw;
        }
    }

    /// Brings the owner gcgroups of `uuid` on `gpu` to the planner's intent with
    /// the scheduler's knobs applied; returns (priority, freeze) writes made.
    fn write_sched_knobs(
        cx: &mut SchedContext<'_>,
        uuid: Uuid,
        gpu: u32,
        knobs: Option<gvm_proto::Knobs>,
    ) -> (u64, u64) {
        let Some(base) = knobs else { return (0, 0) };
        let want = SchedKnobs::apply(cx.desired.sched.get(&(uuid, gpu)), base);
        let pids: Vec<u32> = cx
            .observed
            .owners
            .get(&uuid)
            .map(|o| o.keys().copied().collect())
            .unwrap_or_default();
        let (mut pw, mut fw) = (0, 0);
        for pid in pids {
            if !cx.observed.owns(&uuid, pid, gpu) {
                continue; // another vGPU's gcgroup of a process owning several
            }
            let Some(state) = cx.observed.gcgroups.get(&(pid, gpu)).copied() else {
                continue; // never tuned yet: the planner writes every knob
            };
            let mut writes = Vec::with_capacity(2);
            let priority = Priority::clamped(want.priority);
            if state.priority != Some(priority) {
                writes.push(Knob::Priority(priority));
            }
            if state.frozen != want.frozen {
                writes.push(Knob::Frozen(want.frozen));
            }
            for w in writes {
                match cx.gc.write(pid, gpu, w) {
                    Ok(()) => {
                        if let Some(s) = cx.observed.gcgroups.get_mut(&(pid, gpu)) {
                            s.apply(w);
                        }
                        match w {
                            Knob::Frozen(_) => fw += 1,
                            _ => pw += 1,
                        }
                        debug!(%uuid, pid, gpu, knob = w.file(), value = %w.text(), "scheduler wrote");
                    }
                    Err(e) if e.is_process_gone() => break,
                    Err(e) => warn!(%uuid, pid, gpu, "scheduler: {}", error_chain(&e)),
                }
            }
        }
        (pw, fw)
    }

    /// Every GPU's scheduler (`policy show`, `top`), NVIDIA's beside the daemon's.
    pub fn status(&self, cx: &SchedContext<'_>) -> SchedStatus {
        let mut status = self.engine_status(cx);
        self.add_nvidia(cx, &mut status, &[]);
        status
    }

    /// Every GPU's engine and configuration.
    fn engine_status(&self, cx: &SchedContext<'_>) -> SchedStatus {
        self.watched.set(Some(Instant::now()));
        let host = cx.observed.host_gpus();
        // One row per engine (by GVM index) and per GPU with its own stored configuration
        // (by PCI address), in PCI order; GPUs no PCI parent maps to come last.
        let mut rows: Vec<GpuRow> = self
            .gpus
            .keys()
            .map(|g| match host.by_gvm_index(*g) {
                Some(h) => GpuRow {
                    position: Some(h.position),
                    pci: Some(h.pci.clone()),
                    gvm_index: Some(*g),
                },
                None => GpuRow {
                    position: None,
                    pci: None,
                    gvm_index: Some(*g),
                },
            })
            .collect();
        for pci in self.file.gpus.keys() {
            if rows.iter().any(|r| r.pci.as_deref() == Some(pci.as_str())) {
                continue;
            }
            let h = host.by_pci(pci);
            rows.push(GpuRow {
                position: h.map(|h| h.position),
                pci: Some(pci.clone()),
                gvm_index: h.and_then(|h| h.gvm_index),
            });
        }
        rows.sort_by_key(|r| (r.position.is_none(), r.position, r.pci.clone(), r.gvm_index));
        SchedStatus {
            default: self.file.default.wire(),
            gpus: rows.into_iter().map(|r| self.gpu_status(cx, r)).collect(),
            unmapped: self
                .file
                .unmapped
                .iter()
                .map(|(g, c)| UnmappedPolicy {
                    gvm_index: *g,
                    config: c.wire(),
                })
                .collect(),
            without_nvml: None,
        }
    }

    fn gpu_status(&self, cx: &SchedContext<'_>, row: GpuRow) -> GpuSched {
        let config = self.file.for_pci(row.pci.as_deref());
        let engine = row.gvm_index.and_then(|g| Some((g, self.gpus.get(&g)?)));
        let Some((gpu, st)) = engine else {
            let slice = EngineConfig::default().slice_for(0);
            return GpuSched {
                gpu: row.position,
                pci: row.pci,
                gvm_index: row.gvm_index,
                parents: Vec::new(),
                config: config.wire(),
                slice_us: config.timeslice_us.unwrap_or(slice.as_nanos() / 1_000),
                counters: SchedCounters::default(),
                vgpus: Vec::new(),
                nvidia: None,
            };
        };
        let mut parents = BTreeSet::new();
        let mut vgpus = Vec::new();
        for r in st.engine.report() {
            let uuid = Uuid::from_u128(r.id.0);
            let Some(t) = st.tracks.get(&uuid) else {
                continue;
            };
            if let Some(d) = cx.observed.devices.get(&uuid) {
                parents.insert(d.parent.clone());
            }
            let sched = cx.desired.sched.get(&(uuid, gpu));
            vgpus.push(SchedVgpu {
                uuid,
                type_name: cx.type_of.get(&uuid).map(|t| t.name.clone()),
                target: r.target,
                achieved: r.achieved,
                frozen_by_user: t.user_frozen,
                frozen_by_scheduler: sched.is_some_and(|s| s.frozen),
                pending_kernels: t.sample.pending,
                memory_current: t.sample.memory,
                priority: sched.and_then(|s| s.priority),
            });
        }
        vgpus.sort_by_key(|v| v.uuid);
        let (slice, _) = st.engine.slice_for(st.tracks.len());
        GpuSched {
            gpu: row.position,
            pci: row.pci,
            gvm_index: Some(gpu),
            parents: parents.into_iter().collect(),
            config: config.wire(),
            slice_us: slice.as_nanos() / 1_000,
            counters: SchedCounters {
                ticks: st.engine.stats().ticks,
                priority_writes: st.priority_writes,
                freeze_writes: st.freeze_writes,
                seconds: st
                    .last_tick
                    .map_or(0.0, |t| t.duration_since(st.since).as_secs_f64()),
            },
            vgpus,
            nvidia: None,
        }
    }

    /// Puts NVIDIA's scheduler of each host GPU NVML knows into `status` (a row of its own
    /// for a GPU without one: no vGPU with owners, no own configuration), setting it first
    /// on the GPUs of `set_on` to their configured policy; or says why there is no NVML.
    fn add_nvidia(&self, cx: &SchedContext<'_>, status: &mut SchedStatus, set_on: &[String]) {
        status.without_nvml = self.nvidia.without_nvml().map(str::to_string);
        if status.without_nvml.is_some() {
            return;
        }
        let host = cx.observed.host_gpus();
        let mut added = false;
        for gpu in host.all() {
            let pci = gpu.pci.as_str();
            let report = if set_on.iter().any(|s| s == pci) {
                let stored = self.file.for_pci(Some(pci));
                let project = gvm_nvml::ProjectPolicy {
                    policy: stored.policy,
                    timeslice_us: stored.timeslice_us,
                };
                self.nvidia.apply(pci, project)
            } else {
                self.nvidia.read(pci)
            };
            let Some(report) = report else {
                continue;
            };
            match status
                .gpus
                .iter_mut()
                .find(|g| g.pci.as_deref() == Some(pci))
            {
                Some(row) => row.nvidia = Some(report),
                None => {
                    let row = GpuRow {
                        position: Some(gpu.position),
                        pci: Some(gpu.pci.clone()),
                        gvm_index: gpu.gvm_index,
                    };
                    let mut row = self.gpu_status(cx, row);
                    row.nvidia = Some(report);
                    status.gpus.push(row);
                    added = true;
                }
            }
        }
        if added {
            status
                .gpus
                .sort_by_key(|g| (g.gpu.is_none(), g.gpu, g.pci.clone(), g.gvm_index));
        }
    }

    /// `policy set`: validate, persist, switch the engines live, apply at once.
    pub fn set(
        &mut self,
        cx: &mut SchedContext<'_>,
        p: PolicyParams,
    ) -> Result<SchedStatus, ApiError> {
        let policy: Policy = p
            .policy
            .parse()
            .map_err(|e: gvm_sched::SchedError| ApiError::invalid(e.to_string()))?;
        self.host = cx.observed.host_gpus();
        let gpus = match &p.gpu {
            None => None,
            Some(arg) if arg.trim().eq_ignore_ascii_case("all") => None,
            Some(arg) => {
                let gpu = self
                    .host
                    .resolve(arg)
                    .map_err(|e| ApiError::not_found(e.to_string()))?;
                Some(vec![gpu.pci.clone()])
            }
        };
        let next = self
            .file
            .with_change(policy, p.timeslice_us, p.window_ms, gpus.as_deref())
            .map_err(|e| ApiError::invalid(error_chain(&e)))?;
        write_json(&self.path, &next)
            .map_err(|e| ApiError::internal(error_chain(&SchedulerError::Save(e))))?;
        self.file = next;
        let configs: Vec<(u32, gvm_sched::EngineConfig)> = self
            .gpus
            .keys()
            .map(|g| (*g, self.engine_config(*g)))
            .collect();
        for (g, cfg) in configs {
            let Some(st) = self.gpus.get_mut(&g) else {
                continue;
            };
            if *st.engine.config() != cfg {
                if let Err(e) = st.engine.set_config(cfg) {
                    warn!(gpu = g, "{e}");
                }
            }
        }
        info!(%policy, gpu = ?p.gpu, timeslice_us = ?p.timeslice_us, window_ms = ?p.window_ms,
            "scheduling policy set");
        // Apply now rather than at the next tick, so the answer reflects the change.
        self.tick(cx, Instant::now());
        // Then NVIDIA's scheduler of the GPUs addressed, where the GPU has one.
        let addressed: Vec<String> = match gpus {
            Some(pcis) => pcis,
            None => self.host.all().iter().map(|g| g.pci.clone()).collect(),
        };
        let mut status = self.engine_status(cx);
        self.add_nvidia(cx, &mut status, &addressed);
        Ok(status)
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
