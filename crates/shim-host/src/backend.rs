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
//!   over the manager's shim socket at set-up ([`crate::handover`]) and hands over its block
//!   (a sealed memfd, or a root process's root-owned file), which the handover maps: that
//!   mapping is a gcgroup from the next scan on, under the daemon's pid for the process (the
//!   socket's peer), and goes the moment the connection closes. After a daemon restart the
//!   shim registers again, with the same block. The scan of the root's `/dev/shm` is for
//!   shims of older releases run by root: a `gvm-vgpu-<pid>` file of a live pid is mapped only
//!   if, checked with `fstat` on the descriptor opened with `O_NOFOLLOW` (never by path
//!   first), it is a regular file owned by root, mode 0600 (no group or other bits), on the
//!   filesystem of `/dev/shm` itself, one block long, with the right magic and layout
//!   ([`ControlMap::open_root_owned`]). Everything else — another user's file, a link, a
//!   FIFO, a mount over the name — is ignored (logged once at debug level): any user can
//!   create files there, and a mapped file its owner truncates kills the mapper with
//!   `SIGBUS`. A registered block is not counted twice; root-owned blocks of dead processes
//!   (killed before the shim could remove its file) are deleted.
//! * **GPU**: physical GPUs are known by PCI bus id. A process's gcgroup is on the GPU whose
//!   arbitration block (`gvm-vgpu-gpu-<pci bus id>`) holds its pid, else on the first GPU it
//!   registered; the bus id maps to GVM's GPU index through the mdev parent with that PCI
//!   address (`gvm_gcgroup::gpu_index::gvm_gpu_of_pci`: its `gvm_uvm_index`, or GVM's probe-order numbering).
//!   Without such a parent the CUDA ordinal is used, as before (logged once per bus id);
//!   legacy `gvm-vgpu-gpu<N>` blocks give their ordinal; with nothing known, GPU `0`.
//! * **Reads** map the block's counters to a [`GcgroupSnapshot`] ([`crate::blocks::snapshot`],
//!   which treats every field as untrusted: the block's owner writes what it likes); the
//!   pending kernel count is `submitted - ended + waiting` (the shim advances `ended` at
//!   synchronisation points, so it lags; `waiting` counts threads held at the launch gate, so
//!   a frozen process that had synchronised still shows it has work, as GVM's pending
//!   kernels of a frozen channel do).
//! * **Writes**: `memory.limit` → `memory_limit` (new allocations over it fail or spill;
//!   memory already held is not evicted, unlike GVM), `compute.priority` → `priority`,
//!   `compute.freeze` → `frozen` through [`ControlMap::set_frozen`], which wakes threads held
//!   at the launch gate.
//! * **Who gates**: [`crate::gating::GatingModes`], shared with the scheduler.
//!
//! The shim's owner comes from the daemon's usual rules (`GVM_VGPU_UUID` in
//! `/proc/<pid>/environ`); the UUID a shim registers with is informational.
//!
//! `gvm_gcgroup::Composite` puts this backend behind the GVM tree for `--backend auto`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gvm_error_chain::error_chain;
use gvm_gcgroup::{Error, GcgroupBackend, GcgroupSnapshot, MemoryLimit, Priority, Result};
use gvm_host_root::HostRoot;
use gvm_shim_abi::arbiter::ArbiterKey;
use gvm_shim_abi::control::ControlMap;
use gvm_shim_abi::{BlockProblem, Error as AbiError};
use tracing::{debug, info, warn};

use crate::blocks::{apply_gating, arbiter_pids, block_pid, snapshot, BLOCK_PREFIX, SHM_DIR};
use crate::gating::GatingModes;
use crate::registry::{Registration, ShimRegistry};

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

/// A block the backend has mapped, and the file it came from.
#[derive(Debug)]
struct Tracked {
    /// The mapping: the registration's own, or one the scan made of a root-owned file.
    map: Arc<ControlMap>,
    /// (device, inode): a file replaced under the same name is mapped again.
    file_id: (u64, u64),
}

#[derive(Debug, Default)]
struct State {
    blocks: BTreeMap<u32, Tracked>,
    /// Bad block files and how many scans in a row found them bad (warned at the second).
    bad: BTreeMap<PathBuf, u32>,
    /// Files the scan will not map (not root's, not 0600, a link...), by the identity they
    /// had when logged: each is logged once.
    ignored: BTreeMap<PathBuf, Option<(u64, u64)>>,
    /// PCI bus ids already logged as having no mdev parent.
    unmapped: BTreeSet<String>,
}

/// What came of looking at one scanned block file.
#[derive(Debug)]
enum Scanned {
    /// Mapped (or kept mapped).
    Tracked,
    /// Not a file the manager maps whatever it holds: ignored.
    Ignored,
    /// A root-owned file that is not (yet) a block of this layout.
    Bad(ShimBackendError),
}

/// The CUDA shim's control blocks as a [`GcgroupBackend`].
#[derive(Debug)]
pub struct ShimBackend {
    host: HostRoot,
    shm: PathBuf,
    state: Mutex<State>,
    registry: Arc<ShimRegistry>,
    gating: Arc<GatingModes>,
}

impl ShimBackend {
    /// The blocks of `host` (in its `/dev/shm`), with the processes that registered in
    /// `registry`, gated as `gating` says.
    pub fn new(
        host: HostRoot,
        registry: Arc<ShimRegistry>,
        gating: Arc<GatingModes>,
    ) -> ShimBackend {
        let shm = host.path(SHM_DIR);
        ShimBackend {
            host,
            shm,
            state: Mutex::new(State::default()),
            registry,
            gating,
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

    fn block_path(&self, pid: u32) -> PathBuf {
        self.shm.join(format!("{BLOCK_PREFIX}{pid}"))
    }

    /// Keep the block `reg` handed over as the one of `pid` (its own mapping: nothing is
    /// opened).
    fn track_registered(&self, state: &mut State, pid: u32, reg: &Registration) {
        if state
            .blocks
            .get(&pid)
            .is_some_and(|t| Arc::ptr_eq(&t.map, &reg.block))
        {
            return;
        }
        let standalone = reg.block.block().is_standalone();
        info!(pid, control = %reg.control, standalone, "CUDA shim process found (registered)");
        state.blocks.insert(
            pid,
            Tracked {
                map: reg.block.clone(),
                file_id: reg.file_id,
            },
        );
    }

    /// Map (or keep) the scanned block file of `pid` at `path`, whose name had identity `id`
    /// when listed: only a root-owned mode-0600 file, as checked on the opened descriptor.
    fn track_scanned(
        &self,
        state: &mut State,
        pid: u32,
        path: &Path,
        id: Option<(u64, u64)>,
        shm_dev: Option<u64>,
    ) -> Scanned {
        if id.is_some()
            && state
                .blocks
                .get(&pid)
                .is_some_and(|t| Some(t.file_id) == id)
        {
            return Scanned::Tracked;
        }
        state.blocks.remove(&pid);
        let map = match ControlMap::open_root_owned(path, shm_dev) {
            Ok(m) => m,
            Err(
                e @ AbiError::UnsafeBlock {
                    problem: BlockProblem::WrongSize { .. } | BlockProblem::BadBlock { .. },
                    ..
                },
            ) => {
                // Root's own file, still being written or of another layout.
                return Scanned::Bad(ShimBackendError::OpenBlock {
                    pid,
                    path: path.to_path_buf(),
                    errno: e.errno(),
                    source: e,
                });
            }
            Err(e) => {
                if state.ignored.get(path) != Some(&id) {
                    debug!(pid, path = %path.display(), "not mapping this control block file: {e}");
                    state.ignored.insert(path.to_path_buf(), id);
                }
                return Scanned::Ignored;
            }
        };
        let file_id = map.file_id().or(id).unwrap_or_default();
        let standalone = map.block().is_standalone();
        info!(pid, path = %path.display(), standalone, "CUDA shim process found (root-owned block file)");
        state.bad.remove(path);
        state.ignored.remove(path);
        state.blocks.insert(
            pid,
            Tracked {
                map: Arc::new(map),
                file_id,
            },
        );
        Scanned::Tracked
    }

    /// The device of the scanned directory (a block file must be on it).
    fn shm_dev(&self) -> Option<u64> {
        fs::metadata(&self.shm).ok().map(|m| m.dev())
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
                self.track_registered(&mut state, pid, &reg);
            } else {
                let path = self.block_path(pid);
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    return Err(Error::ProcessGone { pid });
                };
                let id = Some((meta.dev(), meta.ino()));
                let shm_dev = self.shm_dev();
                match self.track_scanned(&mut state, pid, &path, id, shm_dev) {
                    Scanned::Tracked => {}
                    Scanned::Ignored => return Err(Error::ProcessGone { pid }),
                    Scanned::Bad(e) => return Err(e.into_gcgroup()),
                }
            }
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
        if let Some(i) = gvm_gcgroup::gpu_index::gvm_gpu_of_pci(&self.host, pci) {
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

impl GcgroupBackend for ShimBackend {
    fn processes(&self) -> Result<Vec<u32>> {
        let rd = match fs::read_dir(&self.shm) {
            Ok(rd) => rd,
            // No /dev/shm under this root: only registered processes.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut state = self.lock();
                let mut live = BTreeSet::new();
                for (pid, reg) in self.registry.all() {
                    if !self.alive(pid) {
                        self.registry.forget(pid);
                        continue;
                    }
                    self.track_registered(&mut state, pid, &reg);
                    live.insert(pid);
                }
                state.blocks.retain(|pid, _| live.contains(pid));
                return Ok(live.into_iter().collect());
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
        let shm_dev = self.shm_dev();
        let mut state = self.lock();
        let mut live = BTreeSet::new();
        // Registered processes first, with the block each handed over.
        let mut registered_files = BTreeSet::new();
        for (pid, reg) in self.registry.all() {
            if !self.alive(pid) {
                self.registry.forget(pid);
                continue;
            }
            registered_files.insert(reg.file_id);
            self.track_registered(&mut state, pid, &reg);
            live.insert(pid);
        }
        for entry in rd.flatten() {
            let Some(pid) = block_pid(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            if live.contains(&pid) {
                continue;
            }
            let path = entry.path();
            // The name's identity (lstat: a link is its own inode). Only to recognise a file
            // already mapped or registered; what is mapped is checked on the opened descriptor.
            let meta = fs::symlink_metadata(&path).ok();
            let id = meta.as_ref().map(|m| (m.dev(), m.ino()));
            // A registered block is known under the daemon's pid for its process already
            // (its name holds the pid the process sees, which differs in a container).
            if id.is_some_and(|id| registered_files.contains(&id)) {
                continue;
            }
            if !self.alive(pid) {
                // A shim removes its block at exit; one left behind was killed. Only root's
                // own files are the manager's to clean up.
                if meta.is_some_and(|m| m.file_type().is_file() && m.uid() == 0)
                    && fs::remove_file(&path).is_ok()
                {
                    debug!(pid, path = %path.display(), "removed the control block of a dead process");
                }
                state.bad.remove(&path);
                continue;
            }
            match self.track_scanned(&mut state, pid, &path, id, shm_dev) {
                Scanned::Tracked => {
                    live.insert(pid);
                }
                Scanned::Ignored => {}
                // A block being created has no magic yet: say so only if it stays bad.
                Scanned::Bad(e) => {
                    let strikes = state.bad.entry(path).or_insert(0);
                    *strikes += 1;
                    if *strikes == 2 {
                        warn!("{}", error_chain(&e));
                    }
                }
            }
        }
        state.blocks.retain(|pid, _| live.contains(pid));
        state.bad.retain(|path, _| path.exists());
        state
            .ignored
            .retain(|path, _| fs::symlink_metadata(path).is_ok());
        Ok(live.into_iter().collect())
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        self.with_block(pid, |_| ())?;
        Ok(vec![self.gpu_of(pid)])
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        let driven = self.gating.is_daemon_driven(gpu);
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
        let driven = self.gating.is_daemon_driven(gpu);
        self.with_block(pid, |m| {
            let b = m.block();
            b.priority
                .store(u32::from(priority.get()), Ordering::Release);
            // Under best-effort, priority acts between shim processes through the GPU's
            // arbiter; under a scheduler-driven policy the freezes do.
            apply_gating(b, driven);
        })?;
        self.registry
            .assign_priority(pid, u32::from(priority.get()));
        Ok(())
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        let driven = self.gating.is_daemon_driven(gpu);
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

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
