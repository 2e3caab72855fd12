//! The `shim` gcgroup backend: processes running under `libgvm_cuda.so` seen as gcgroups.
//!
//! On stock NVIDIA drivers there is no GVM debugfs tree. The CUDA interposer
//! (`crates/shim`, `libgvm_cuda.so`) enforces the same knobs from inside each process and
//! keeps them in a *control block*: one shared-memory page per process, by default
//! `/dev/shm/gvm-vgpu-<pid>` under the host root (`gvm_shim_abi::control`). A process that finds
//! no block prepared for it creates one itself from its environment (`GVM_MEMORY_LIMIT`,
//! `GVM_PRIORITY`, `GVM_VGPU_UUID`, ...) and runs standalone until someone writes to it.
//!
//! [`ShimBackend`] makes those blocks look like GVM gcgroups, so the daemon core does not
//! know which backend it drives:
//! * **Discovery** is registration first, a file scan as the fallback. A shim registers
//!   over the daemon's shim socket at set-up ([`crate::shim_register`]): its block (also at a
//!   non-default `GVM_SHIM_CONTROL` path) is a gcgroup from the next scan on, under the
//!   daemon's pid for the process (the socket's peer), and goes the moment the connection
//!   closes. For processes started before the daemon, or across a daemon restart, every
//!   `gvm-vgpu-<pid>` file in the root's `/dev/shm` whose magic and layout version are right
//!   and whose pid is alive is a process with one gcgroup too (a registered block is not
//!   counted twice). Blocks of dead processes (killed before the shim could remove its
//!   file) are deleted. Only regular files owned by root or by the process's own user
//!   count: a link, or a block another user planted for someone else's pid, is ignored.
//! * **GPU**: physical GPUs are known by PCI bus id. A process's gcgroup is on the GPU whose
//!   arbitration block (`gvm-vgpu-gpu-<pci bus id>`) holds its pid, else on the first GPU it
//!   registered; the bus id maps to GVM's GPU index through the mdev parent with that PCI
//!   address ([`gvm_gpu_of_pci`]: its `gvm_uvm_index`, or GVM's probe-order numbering).
//!   Without such a parent the CUDA ordinal is used, as before (logged once per bus id);
//!   legacy `gvm-vgpu-gpu<N>` blocks give their ordinal; with nothing known, GPU `0`.
//! * **Reads** map the block's counters to a [`GcgroupSnapshot`] ([`snapshot`]); the
//!   pending kernel count is `submitted - ended + waiting` (the shim advances `ended` at
//!   synchronisation points, so it lags; `waiting` counts threads held at the launch gate, so
//!   a frozen process that had synchronised still shows it has work, as GVM's pending
//!   kernels of a frozen channel do).
//! * **Writes**: `memory.limit` → `memory_limit` (new allocations over it fail or spill;
//!   memory already held is not evicted, unlike GVM), `compute.priority` → `priority`,
//!   `compute.freeze` → `frozen` through [`ControlMap::set_frozen`], which wakes threads held
//!   at the launch gate.
//! * **Who gates** ([`set_daemon_driven`]): under best-effort the shim's own priority
//!   arbitration between the processes of a GPU does the work (`arbitrate` on, following the
//!   block's priority live). Under equal-share and fixed-share the scheduler's freezes are
//!   the mechanism: the scheduler marks the GPU daemon-driven, and every read or write of a
//!   block on it turns `arbitrate` off (two gating mechanisms would fight) and
//!   `queue_always` on (a freeze then waits for at most `queue_depth` queued launches, not
//!   the driver's ~1,024); back under best-effort both are restored.
//!
//! The shim's owner comes from the daemon's usual rules (`GVM_VGPU_UUID` in
//! `/proc/<pid>/environ`); the UUID a shim registers with is informational.
//!
//! [`Composite`] puts two backends behind one: `--backend auto` is the GVM tree first, then
//! the shim, so on a host with both every GVM-registered process goes through GVM and every
//! other shim process through its block. [`BackendKind`] is the daemon's `--backend` flag.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::mem::offset_of;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gvm_gcgroup::{
    Error, GcgroupBackend, GcgroupSnapshot, GvmTree, KernelStat, MemoryLimit, Priority, Result,
};
use gvm_host_root::HostRoot;
use gvm_shim_abi::arbiter::{
    ArbiterBlock, ArbiterHeader, ArbiterKey, Slot, ARB_MAGIC, ARB_VERSION, SLOTS,
};
use gvm_shim_abi::control::{ControlBlock, ControlMap, FLAG_DAEMON_QUEUE};
use tracing::{debug, info, warn};

use crate::ports::{fallback_gpu_index, parse_gpu_index, BackendGcgroups, GcgroupPort};
use crate::shim_register::{registry_for, ShimRegistry};

/// Where the shim keeps its blocks, under the host root.
pub const SHM_DIR: &str = "/dev/shm";
/// File name prefix of a process's control block (`gvm-vgpu-<pid>`).
pub const BLOCK_PREFIX: &str = "gvm-vgpu-";
/// The name [`ShimBackend`] reports.
pub const SHIM_NAME: &str = "shim";

/// Why the shim backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ShimBackendError {
    /// The directory of control blocks could not be listed.
    #[error("cannot list the CUDA shim's control blocks in {dir} (errno {errno:?}): make /dev/shm under the host root readable by gvm-vgpud")]
    ListBlocks {
        /// The directory.
        dir: PathBuf,
        /// The errno.
        errno: Option<i32>,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A process's control block exists but cannot be opened or is not a valid block.
    #[error("the control block {path} of process {pid} cannot be used (errno {errno:?}): remove it if no process {pid} runs under libgvm_cuda.so, or update gvm-vgpud to the shim's layout")]
    OpenBlock {
        /// The process.
        pid: u32,
        /// The block file.
        path: PathBuf,
        /// The errno, when the OS gave one.
        errno: Option<i32>,
        /// What the shim library said.
        #[source]
        source: gvm_shim_abi::Error,
    },
}

impl ShimBackendError {
    fn into_gcgroup(self) -> Error {
        Error::Backend {
            backend: SHIM_NAME,
            source: Box::new(self),
        }
    }
}

/// The pid a control block file name stands for: `gvm-vgpu-<pid>` (decimal, non-zero).
/// Arbitration blocks (`gvm-vgpu-gpu<N>`) and anything else are `None`.
pub fn block_pid(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix(BLOCK_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|p| *p != 0)
}

/// The GVM GPU index of the physical GPU at PCI address `pci` (normalised) on `host`: the
/// mdev parent of that name's `gvm_uvm_index`, else GVM's probe-order numbering of the PCI
/// parents ([`fallback_gpu_index`]). `None` when no mdev parent has that address.
pub fn gvm_gpu_of_pci(host: &HostRoot, pci: &str) -> Option<u32> {
    let bus = host.mdev_bus_dir();
    let parents: Vec<String> = fs::read_dir(&bus)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_ascii_lowercase())
        .collect();
    if !parents.iter().any(|p| p == pci) {
        return None;
    }
    fs::read_to_string(bus.join(pci).join("gvm_uvm_index"))
        .ok()
        .and_then(|t| parse_gpu_index(&t))
        .or_else(|| fallback_gpu_index(pci, &parents))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The pids registered in an arbitration block, from the file's bytes (empty when the bytes
/// are not an initialised block of the layout this daemon was built with).
pub fn arbiter_pids(bytes: &[u8]) -> Vec<u32> {
    let magic_at = offset_of!(ArbiterBlock, header) + offset_of!(ArbiterHeader, magic);
    let version_at = offset_of!(ArbiterBlock, header) + offset_of!(ArbiterHeader, version);
    let magic = bytes
        .get(magic_at..magic_at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    if magic != Some(ARB_MAGIC) || u32_at(bytes, version_at) != Some(ARB_VERSION) {
        return Vec::new();
    }
    (0..SLOTS)
        .filter_map(|i| {
            let at = offset_of!(ArbiterBlock, slots)
                + i * std::mem::size_of::<Slot>()
                + offset_of!(Slot, pid);
            u32_at(bytes, at)
        })
        .filter(|p| *p != 0)
        .collect()
}

/// GPUs (by host root and GPU index) whose shim processes the scheduler drives itself
/// (equal-share, fixed-share). Process-wide because the scheduler reaches the backend only
/// through the generic gcgroup port; keyed by root so daemons over different roots in one
/// process (tests) do not see each other's choice.
static DAEMON_DRIVEN: Mutex<BTreeSet<(PathBuf, u32)>> = Mutex::new(BTreeSet::new());

fn driven_set() -> MutexGuard<'static, BTreeSet<(PathBuf, u32)>> {
    DAEMON_DRIVEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Says whether the scheduler drives the shim processes of `gpu` on `host` itself
/// (equal-share, fixed-share: `true`) or leaves gating to the shim's priority arbitration
/// (best-effort: `false`, the default). Blocks follow at their next read or write.
pub fn set_daemon_driven(host: &HostRoot, gpu: u32, driven: bool) {
    let key = (host.root().to_path_buf(), gpu);
    let mut set = driven_set();
    let changed = if driven {
        set.insert(key)
    } else {
        set.remove(&key)
    };
    if changed {
        info!(
            gpu,
            driven,
            "CUDA shim gating: {}",
            if driven {
                "the scheduler's freezes (arbitration off, bounded queues)"
            } else {
                "the shims' priority arbitration"
            }
        );
    }
}

/// Whether [`set_daemon_driven`] marked `gpu` of `host` as driven by the scheduler.
pub fn is_daemon_driven(host: &HostRoot, gpu: u32) -> bool {
    driven_set().contains(&(host.root().to_path_buf(), gpu))
}

/// Puts a block in the gating mode of its GPU: daemon-driven = arbitration off and the
/// in-flight bound always applied (marked [`FLAG_DAEMON_QUEUE`] when this turned it on);
/// otherwise arbitration on and a bound this function had turned on back off (one the
/// process asked for itself stays). Returns whether anything changed.
pub fn apply_gating(block: &ControlBlock, driven: bool) -> bool {
    let arbitrate = u32::from(!driven);
    let mut changed = false;
    if block.arbitrate.load(Ordering::Relaxed) != arbitrate {
        block.arbitrate.store(arbitrate, Ordering::Release);
        changed = true;
    }
    let ours = block.flags.load(Ordering::Relaxed) & FLAG_DAEMON_QUEUE != 0;
    let always = block.queue_always.load(Ordering::Relaxed) != 0;
    if driven && !always {
        block.flags.fetch_or(FLAG_DAEMON_QUEUE, Ordering::AcqRel);
        block.queue_always.store(1, Ordering::Release);
        changed = true;
    } else if !driven && ours {
        block.queue_always.store(0, Ordering::Release);
        block.flags.fetch_and(!FLAG_DAEMON_QUEUE, Ordering::AcqRel);
        changed = true;
    }
    changed
}

/// A block's knobs and counters as the gcgroup of `pid` on `gpu`. A priority the block
/// holds out of GVM's range reads as the lowest one. Threads held at the launch gate count
/// as pending kernels (each is a launch about to be submitted).
pub fn snapshot(block: &ControlBlock, pid: u32, gpu: u32) -> GcgroupSnapshot {
    let submitted = block.submitted.load(Ordering::Relaxed);
    let ended = block.ended.load(Ordering::Relaxed);
    let waiting = u64::from(block.waiting.load(Ordering::Relaxed));
    let priority = u8::try_from(block.priority.load(Ordering::Relaxed))
        .ok()
        .and_then(|p| Priority::try_from(p).ok())
        .unwrap_or(Priority::MAX);
    GcgroupSnapshot {
        pid,
        gpu,
        memory_limit: MemoryLimit::from_bytes(block.memory_limit.load(Ordering::Relaxed)),
        memory_current: block.memory_current.load(Ordering::Relaxed),
        swap_current: block.swap_current.load(Ordering::Relaxed),
        priority,
        frozen: block.frozen.load(Ordering::Acquire) != 0,
        stat: KernelStat {
            submitted,
            ended,
            pending: submitted.saturating_sub(ended).saturating_add(waiting),
        },
    }
}

/// A block the backend has mapped, and the file it came from.
#[derive(Debug)]
struct Tracked {
    map: ControlMap,
    /// (device, inode): a file replaced under the same name is mapped again.
    file_id: (u64, u64),
}

#[derive(Debug, Default)]
struct State {
    blocks: BTreeMap<u32, Tracked>,
    /// Bad block files and how many scans in a row found them bad (warned at the second).
    bad: BTreeMap<PathBuf, u32>,
    /// PCI bus ids already logged as having no mdev parent.
    unmapped: BTreeSet<String>,
}

/// The CUDA shim's control blocks as a [`GcgroupBackend`].
#[derive(Debug)]
pub struct ShimBackend {
    host: HostRoot,
    shm: PathBuf,
    state: Mutex<State>,
    registry: Arc<ShimRegistry>,
}

impl ShimBackend {
    /// The blocks of `host` (in its `/dev/shm`).
    pub fn new(host: HostRoot) -> ShimBackend {
        let shm = host.path(SHM_DIR);
        let registry = registry_for(&host);
        ShimBackend {
            host,
            shm,
            state: Mutex::new(State::default()),
            registry,
        }
    }

    /// The directory scanned for blocks.
    pub fn shm_dir(&self) -> &Path {
        &self.shm
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn alive(&self, pid: u32) -> bool {
        self.host.proc_dir().join(pid.to_string()).exists()
    }

    /// Whether `meta` is a regular file (not a link) owned by root or by the user running
    /// `pid`: a block someone else planted for a process is not that process's.
    fn trusted(&self, pid: u32, meta: &fs::Metadata) -> bool {
        if !meta.file_type().is_file() {
            return false;
        }
        meta.uid() == 0
            || fs::metadata(self.host.proc_dir().join(pid.to_string()))
                .is_ok_and(|p| p.uid() == meta.uid())
    }

    fn block_path(&self, pid: u32) -> PathBuf {
        self.shm.join(format!("{BLOCK_PREFIX}{pid}"))
    }

    /// Map (or keep) the block of `pid` at `path`, whose file identity is `id`.
    fn track(
        &self,
        state: &mut State,
        pid: u32,
        path: &Path,
        id: (u64, u64),
    ) -> std::result::Result<(), ShimBackendError> {
        if state.blocks.get(&pid).is_some_and(|t| t.file_id == id) {
            return Ok(());
        }
        state.blocks.remove(&pid);
        let map = ControlMap::open(path).map_err(|e| ShimBackendError::OpenBlock {
            pid,
            path: path.to_path_buf(),
            errno: e.errno(),
            source: e,
        })?;
        let standalone = map.block().is_standalone();
        info!(pid, path = %path.display(), standalone, "CUDA shim process found");
        state.bad.remove(path);
        state.blocks.insert(pid, Tracked { map, file_id: id });
        Ok(())
    }

    /// Run `f` on the block of `pid`, mapping it first if no scan has yet.
    fn with_block<T>(&self, pid: u32, f: impl FnOnce(&ControlMap) -> T) -> Result<T> {
        let mut state = self.lock();
        if !self.alive(pid) {
            state.blocks.remove(&pid);
            return Err(Error::ProcessGone { pid });
        }
        if !state.blocks.contains_key(&pid) {
            if let Some(reg) = self.registry.get(pid) {
                self.track(&mut state, pid, &reg.control, reg.file_id)
                    .map_err(ShimBackendError::into_gcgroup)?;
                return match state.blocks.get(&pid) {
                    Some(t) => Ok(f(&t.map)),
                    None => Err(Error::ProcessGone { pid }),
                };
            }
            let path = self.block_path(pid);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                return Err(Error::ProcessGone { pid });
            };
            if !self.trusted(pid, &meta) {
                return Err(Error::ProcessGone { pid });
            }
            self.track(&mut state, pid, &path, (meta.dev(), meta.ino()))
                .map_err(ShimBackendError::into_gcgroup)?;
        }
        match state.blocks.get(&pid) {
            Some(t) => Ok(f(&t.map)),
            None => Err(Error::ProcessGone { pid }),
        }
    }

    /// The arbitration blocks that list `pid` (as the process sees itself), sorted.
    fn arbiters_of(&self, pid: u32) -> Vec<ArbiterKey> {
        let Ok(rd) = fs::read_dir(&self.shm) else {
            return Vec::new();
        };
        let mut found: Vec<ArbiterKey> = rd
            .flatten()
            .filter_map(|e| {
                ArbiterKey::from_file_name(&e.file_name().to_string_lossy()).map(|k| (k, e.path()))
            })
            .filter(|(_, path)| {
                fs::read(path)
                    .map(|b| arbiter_pids(&b).contains(&pid))
                    .unwrap_or(false)
            })
            .map(|(k, _)| k)
            .collect();
        found.sort();
        found
    }

    /// The GVM GPU of the physical GPU at `pci`, or `ordinal` (logged once per bus id) when
    /// no mdev parent has that address.
    fn map_pci(&self, pid: u32, pci: &str, ordinal: u32) -> u32 {
        if let Some(i) = gvm_gpu_of_pci(&self.host, pci) {
            return i;
        }
        if self.lock().unmapped.insert(pci.to_string()) {
            info!(
                pid,
                pci,
                gpu = ordinal,
                "no mdev parent has this GPU's PCI address: its CUDA shim gcgroups use the CUDA ordinal as the GPU index, as before registration"
            );
        }
        ordinal
    }

    /// The GPU of `pid`'s gcgroup: the PCI-keyed arbitration block holding it, else the first
    /// GPU it registered, else a legacy ordinal-keyed block, else 0.
    fn gpu_of(&self, pid: u32) -> u32 {
        let reg = self.registry.get(pid);
        let seen_as = reg.as_ref().map_or(pid, |r| r.ns_pid);
        let keys = self.arbiters_of(seen_as);
        let ordinal_of = |pci: &str| {
            reg.as_ref()
                .and_then(|r| r.gpus.iter().find(|g| g.pci_bus_id == pci))
                .map_or(0, |g| g.ordinal)
        };
        if let Some(ArbiterKey::Pci(pci)) = keys.iter().find(|k| matches!(k, ArbiterKey::Pci(_))) {
            return self.map_pci(pid, pci, ordinal_of(pci));
        }
        if let Some(g) = reg.as_ref().and_then(|r| r.gpus.first()) {
            return self.map_pci(pid, &g.pci_bus_id, g.ordinal);
        }
        keys.iter()
            .find_map(|k| match k {
                ArbiterKey::Ordinal(n) => Some(*n),
                ArbiterKey::Pci(_) => None,
            })
            .unwrap_or(0)
    }
}

/// An error and its sources on one line (`a: b: c`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl GcgroupBackend for ShimBackend {
    fn processes(&self) -> Result<Vec<u32>> {
        let rd = match fs::read_dir(&self.shm) {
            Ok(rd) => rd,
            // No /dev/shm under this root: no shim process can have a block.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.lock().blocks.clear();
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(ShimBackendError::ListBlocks {
                    dir: self.shm.clone(),
                    errno: e.raw_os_error(),
                    source: e,
                }
                .into_gcgroup())
            }
        };
        let mut state = self.lock();
        let mut live = BTreeSet::new();
        // Registered processes first, at their registered block.
        let mut registered_files = BTreeSet::new();
        for (pid, reg) in self.registry.all() {
            if !self.alive(pid) {
                self.registry.forget(pid);
                continue;
            }
            registered_files.insert(reg.file_id);
            match self.track(&mut state, pid, &reg.control, reg.file_id) {
                Ok(()) => {
                    live.insert(pid);
                }
                Err(e) => {
                    warn!("{}", chain(&e));
                    self.registry.forget(pid);
                }
            }
        }
        for entry in rd.flatten() {
            let Some(pid) = block_pid(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let path = entry.path();
            // A registered block is known under the daemon's pid for its process already
            // (its name holds the pid the process sees, which differs in a container).
            if let Ok(meta) = fs::symlink_metadata(&path) {
                if registered_files.contains(&(meta.dev(), meta.ino())) {
                    continue;
                }
            }
            if !self.alive(pid) && entry.file_type().is_ok_and(|t| t.is_file()) {
                // The shim removes its block at exit; one left behind was killed.
                if fs::remove_file(&path).is_ok() {
                    debug!(pid, path = %path.display(), "removed the control block of a dead process");
                }
                state.bad.remove(&path);
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !self.trusted(pid, &meta) {
                continue;
            }
            match self.track(&mut state, pid, &path, (meta.dev(), meta.ino())) {
                Ok(()) => {
                    live.insert(pid);
                }
                // A block being created has no magic yet: say so only if it stays bad.
                Err(e) => {
                    let strikes = state.bad.entry(path).or_insert(0);
                    *strikes += 1;
                    if *strikes == 2 {
                        warn!("{}", chain(&e));
                    }
                }
            }
        }
        state.blocks.retain(|pid, _| live.contains(pid));
        state.bad.retain(|path, _| path.exists());
        Ok(live.into_iter().collect())
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        self.with_block(pid, |_| ())?;
        Ok(vec![self.gpu_of(pid)])
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        let driven = is_daemon_driven(&self.host, gpu);
        self.with_block(pid, |m| {
            if apply_gating(m.block(), driven) {
                debug!(pid, gpu, driven, "CUDA shim gating mode applied");
            }
            snapshot(m.block(), pid, gpu)
        })
    }

    fn set_memory_limit(&self, pid: u32, _gpu: u32, limit: MemoryLimit) -> Result<()> {
        self.with_block(pid, |m| {
            m.block()
                .memory_limit
                .store(limit.as_bytes(), Ordering::Release);
        })
    }

    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        let driven = is_daemon_driven(&self.host, gpu);
        self.with_block(pid, |m| {
            let b = m.block();
            b.priority
                .store(u32::from(priority.get()), Ordering::Release);
            // Under best-effort, priority acts between shim processes through the GPU's
            // arbiter; under a scheduler-driven policy the freezes do.
            apply_gating(b, driven);
        })
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        let driven = is_daemon_driven(&self.host, gpu);
        self.with_block(pid, |m| {
            // The bound must be on before a scheduler freeze for it to act quickly.
            apply_gating(m.block(), driven);
            m.set_frozen(frozen);
        })
    }

    fn name(&self) -> &'static str {
        SHIM_NAME
    }
}

/// Two backends as one: each pid goes to `primary` when `primary` has it, else to
/// `secondary`. `primary` saying its tree is missing ([`Error::NotPresent`]) counts as
/// having no processes.
#[derive(Debug)]
pub struct Composite<P, S> {
    primary: P,
    secondary: S,
    name: &'static str,
}

impl<P: GcgroupBackend, S: GcgroupBackend> Composite<P, S> {
    /// `primary` first, then `secondary`, reported as `name`.
    pub fn new(primary: P, secondary: S, name: &'static str) -> Self {
        Composite {
            primary,
            secondary,
            name,
        }
    }

    /// Run `f` on `primary`, or on `secondary` when `primary` does not know the pid.
    fn route<T>(&self, f: impl Fn(&dyn GcgroupBackend) -> Result<T>) -> Result<T> {
        match f(&self.primary) {
            Err(Error::ProcessGone { .. } | Error::NotPresent { .. }) => f(&self.secondary),
            other => other,
        }
    }
}

impl<P: GcgroupBackend, S: GcgroupBackend> GcgroupBackend for Composite<P, S> {
    fn processes(&self) -> Result<Vec<u32>> {
        let mut pids = match self.primary.processes() {
            Ok(p) => p,
            Err(Error::NotPresent { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        pids.extend(self.secondary.processes()?);
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        self.route(|b| b.gpus(pid))
    }

    fn gpu_count(&self, pid: u32) -> Result<Option<usize>> {
        self.route(|b| b.gpu_count(pid))
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        self.route(|b| b.read(pid, gpu))
    }

    fn stat(&self, pid: u32, gpu: u32) -> Result<gvm_gcgroup::KernelStat> {
        self.route(|b| b.stat(pid, gpu))
    }

    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()> {
        self.route(|b| b.set_memory_limit(pid, gpu, limit))
    }

    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        self.route(|b| b.set_priority(pid, gpu, priority))
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        self.route(|b| b.set_frozen(pid, gpu, frozen))
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// Which gcgroup backend the daemon drives (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// GVM's debugfs tree only (the GVM driver).
    Gvm,
    /// The CUDA shim's control blocks only (stock drivers, `LD_PRELOAD=libgvm_cuda.so`).
    Shim,
    /// GVM for the processes GVM has registered, the shim for the others; on a host
    /// without the GVM tree that is the shim alone.
    #[default]
    Auto,
}

/// The daemon's gcgroup port for `kind` on `host`.
pub fn gcgroup_port(kind: BackendKind, host: &HostRoot) -> Box<dyn GcgroupPort> {
    match kind {
        BackendKind::Gvm => Box::new(crate::ports::gvm_tree(host)),
        BackendKind::Shim => Box::new(BackendGcgroups::new(ShimBackend::new(host.clone()))),
        BackendKind::Auto => {
            let gvm = host.gvm_processes_dir().is_dir();
            info!(
                gvm_tree = gvm,
                shim_dir = %host.path(SHM_DIR).display(),
                "gcgroup backend auto: GVM-registered processes through GVM, the others through the CUDA shim"
            );
            Box::new(BackendGcgroups::new(Composite::new(
                GvmTree::new(host.clone()),
                ShimBackend::new(host.clone()),
                "gvm+shim",
            )))
        }
    }
}

#[cfg(test)]
#[path = "shim_backend_tests.rs"]
mod tests;
