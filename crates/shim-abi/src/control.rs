//! The control block: the shared-memory page through which gvm-vgpud and the shim talk.
//!
//! Each CUDA process running under the shim has one block, a file mapped `MAP_SHARED`
//! (`/dev/shm/gvm-vgpu-<pid>` by default, or the path in `GVM_SHIM_CONTROL`). It holds the
//! same knobs as a GVM gcgroup directory (`memory.limit`, `compute.priority`,
//! `compute.freeze`) plus `hold` (the policy engine's "wait, a more important vGPU has work")
//! and the counters GVM reports (`memory.current`, `memory.swap.current`, `gcgroup.stat`).
//! Every field is an atomic; writers that change `frozen` or `hold` should wake waiters with
//! [`ControlMap::set_frozen`]/[`ControlMap::set_hold`] (the shim also re-checks every 50 ms,
//! so a plain store works too, just later).
//!
//! If the daemon created the block (valid magic and layout), the shim obeys it; otherwise the
//! shim creates it itself from the environment and runs standalone.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use gvm_host_root::HostRoot;

use crate::config::Knobs;
use crate::error::{Error, Result};
use crate::sys::{self as ffi, SharedMapping};

/// `"GVMSHIM1"` little-endian: marks an initialised block.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GVMSHIM1");
/// The layout version of [`ControlBlock`].
pub const LAYOUT_VERSION: u32 = 2;
/// The size the block file is given (one page).
pub const FILE_LEN: usize = 4096;
/// The environment variable naming the control block path.
pub const CONTROL_ENV: &str = "GVM_SHIM_CONTROL";
/// `flags` bit: the shim created the block itself from the environment (no daemon).
pub const FLAG_STANDALONE: u32 = 1;
/// `flags` bit: gvm-vgpud turned `queue_always` on for a policy it drives (equal-share,
/// fixed-share) and turns it back off under best-effort; a `queue_always` the process set
/// itself (`GVM_QUEUE_ALWAYS=1`) has no such bit and is left alone.
pub const FLAG_DAEMON_QUEUE: u32 = 2;

/// The shared block. Field offsets are part of the ABI with gvm-vgpud (see the layout test).
#[repr(C)]
#[derive(Debug)]
pub struct ControlBlock {
    /// [`MAGIC`] once initialised (written last).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// The pid of the process the block belongs to.
    pub pid: AtomicU32,
    /// `memory.limit`: bytes per GPU, `u64::MAX` for none.
    pub memory_limit: AtomicU64,
    /// `memory.current`: bytes of device memory the process holds (all GPUs).
    pub memory_current: AtomicU64,
    /// `memory.swap.current`: bytes placed in host-preferred managed memory.
    pub swap_current: AtomicU64,
    /// `nr_submitted_kernels`: launches (kernels, cooperative kernels, graphs) submitted.
    pub submitted: AtomicU64,
    /// `nr_ended_kernels`: launches known complete (advanced at synchronisation points).
    pub ended: AtomicU64,
    /// `compute.priority`, 0..=16.
    pub priority: AtomicU32,
    /// `compute.freeze`: non-zero holds every new launch.
    pub frozen: AtomicU32,
    /// Policy hold: non-zero holds new launches (a more important vGPU has work).
    pub hold: AtomicU32,
    /// Non-zero: allocations over the limit spill to host-preferred managed memory.
    pub host_swap: AtomicU32,
    /// Threads currently held at the gate (the daemon reads it as "has work").
    pub waiting: AtomicU32,
    /// [`FLAG_STANDALONE`] and future flags.
    pub flags: AtomicU32,
    /// The vGPU UUID, NUL padded.
    pub vgpu_uuid: [AtomicU8; 40],
    /// Non-zero: take part in priority arbitration on the GPU (the best-effort policy). The
    /// daemon clears it for policies it drives itself through `hold`.
    pub arbitrate: AtomicU32,
    /// In-flight launch bound while yielding (0: unbounded).
    pub queue_depth: AtomicU32,
    /// Non-zero: apply `queue_depth` always (fast freezes), not only while yielding.
    pub queue_always: AtomicU32,
    /// Written by the shim: [`ARB_REGISTERED`], [`ARB_BUSY`], [`ARB_HAS_HIGHER`], [`ARB_HAS_LOWER`].
    pub arb_state: AtomicU32,
    /// Busy linger after the last launch, microseconds.
    pub linger_us: AtomicU32,
    /// Longest arbiter hold of one launch, milliseconds.
    pub max_hold_ms: AtomicU32,
    /// Successful launches per entry point, indexed by [`LaunchPath`].
    pub launches: [AtomicU64; 6],
    /// Launches the arbiter held because a more important process was busy.
    pub arb_waits: AtomicU64,
    /// Nanoseconds launches spent held by the arbiter.
    pub arb_wait_ns: AtomicU64,
    /// Arbiter holds that ended at the maximum hold instead of the other process going idle.
    pub arb_timeouts: AtomicU64,
    /// Launches that waited for the in-flight bound.
    pub queue_waits: AtomicU64,
    /// Room for later fields.
    pub reserved: [AtomicU64; 4],
}

/// `arb_state` bit: registered in the GPU's arbitration block.
pub const ARB_REGISTERED: u32 = 1;
/// `arb_state` bit: published busy (has GPU work a less important process yields to).
pub const ARB_BUSY: u32 = 2;
/// `arb_state` bit: a more important process is registered.
pub const ARB_HAS_HIGHER: u32 = 4;
/// `arb_state` bit: a less important process is registered.
pub const ARB_HAS_LOWER: u32 = 8;

/// The launch entry points counted apart in `launches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum LaunchPath {
    /// `cuLaunchKernel`.
    Kernel = 0,
    /// `cuLaunchKernel_ptsz`.
    KernelPtsz = 1,
    /// `cuLaunchKernelEx` (either flavour).
    KernelEx = 2,
    /// `cuLaunchKernelEx_ptsz` (either flavour).
    KernelExPtsz = 3,
    /// `cuLaunchCooperativeKernel` (either flavour).
    Cooperative = 4,
    /// `cuGraphLaunch` (either flavour).
    Graph = 5,
}

/// Byte offsets of the fields, for non-Rust writers (tests, daemon in other languages).
pub mod offsets {
    /// `frozen`.
    pub const FROZEN: usize = 60;
    /// `hold`.
    pub const HOLD: usize = 64;
    /// `submitted`.
    pub const SUBMITTED: usize = 40;
    /// `arbitrate`.
    pub const ARBITRATE: usize = 120;
    /// `queue_depth`.
    pub const QUEUE_DEPTH: usize = 124;
    /// `launches[0]`.
    pub const LAUNCHES: usize = 144;
    /// `arb_waits`.
    pub const ARB_WAITS: usize = 192;
}

impl ControlBlock {
    /// A block holding `knobs`, not yet shared.
    pub fn new(knobs: &Knobs) -> ControlBlock {
        let b = ControlBlock {
            magic: AtomicU64::new(0),
            version: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            memory_limit: AtomicU64::new(0),
            memory_current: AtomicU64::new(0),
            swap_current: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            priority: AtomicU32::new(0),
            frozen: AtomicU32::new(0),
            hold: AtomicU32::new(0),
            host_swap: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            vgpu_uuid: std::array::from_fn(|_| AtomicU8::new(0)),
            arbitrate: AtomicU32::new(0),
            queue_depth: AtomicU32::new(0),
            queue_always: AtomicU32::new(0),
            arb_state: AtomicU32::new(0),
            linger_us: AtomicU32::new(0),
            max_hold_ms: AtomicU32::new(0),
            launches: std::array::from_fn(|_| AtomicU64::new(0)),
            arb_waits: AtomicU64::new(0),
            arb_wait_ns: AtomicU64::new(0),
            arb_timeouts: AtomicU64::new(0),
            queue_waits: AtomicU64::new(0),
            reserved: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        b.initialise(knobs, 0);
        b
    }

    /// Write `knobs`, zero the counters, then publish the magic.
    pub fn initialise(&self, knobs: &Knobs, flags: u32) {
        self.magic.store(0, Ordering::Release);
        self.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        self.pid.store(std::process::id(), Ordering::Relaxed);
        self.memory_limit
            .store(knobs.memory_limit, Ordering::Relaxed);
        self.priority.store(knobs.priority, Ordering::Relaxed);
        self.host_swap
            .store(u32::from(knobs.host_swap), Ordering::Relaxed);
        for c in [
            &self.memory_current,
            &self.swap_current,
            &self.submitted,
            &self.ended,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for w in [&self.frozen, &self.hold, &self.waiting, &self.arb_state] {
            w.store(0, Ordering::Relaxed);
        }
        self.arbitrate
            .store(u32::from(knobs.arbitrate), Ordering::Relaxed);
        self.queue_depth.store(knobs.queue_depth, Ordering::Relaxed);
        self.queue_always
            .store(u32::from(knobs.queue_always), Ordering::Relaxed);
        self.linger_us.store(knobs.linger_us, Ordering::Relaxed);
        self.max_hold_ms.store(knobs.max_hold_ms, Ordering::Relaxed);
        for c in self.launches.iter().chain([
            &self.arb_waits,
            &self.arb_wait_ns,
            &self.arb_timeouts,
            &self.queue_waits,
        ]) {
            c.store(0, Ordering::Relaxed);
        }
        self.flags.store(flags, Ordering::Relaxed);
        let uuid = knobs.vgpu_uuid.as_deref().unwrap_or("").as_bytes();
        for (i, cell) in self.vgpu_uuid.iter().enumerate() {
            cell.store(uuid.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// The knobs as they are now.
    pub fn knobs(&self) -> Knobs {
        let uuid: Vec<u8> = self
            .vgpu_uuid
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .take_while(|&b| b != 0)
            .collect();
        Knobs {
            memory_limit: self.memory_limit.load(Ordering::Relaxed),
            priority: self.priority.load(Ordering::Relaxed),
            host_swap: self.host_swap.load(Ordering::Relaxed) != 0,
            vgpu_uuid: String::from_utf8(uuid).ok().filter(|s| !s.is_empty()),
            arbitrate: self.arbitrate.load(Ordering::Relaxed) != 0,
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            queue_always: self.queue_always.load(Ordering::Relaxed) != 0,
            linger_us: self.linger_us.load(Ordering::Relaxed),
            max_hold_ms: self.max_hold_ms.load(Ordering::Relaxed),
            // Process-local, not in the block: the default.
            queue_budget_us: crate::config::DEFAULT_QUEUE_BUDGET_US,
            gpu_gate: Knobs::default().gpu_gate,
        }
    }

    /// Whether the shim created this block itself (no daemon).
    pub fn is_standalone(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLAG_STANDALONE != 0
    }
}

/// Where the block of process `pid` lives: `$GVM_SHIM_CONTROL` if set, else
/// `/dev/shm/gvm-vgpu-<pid>` under the host root.
pub fn control_path(env_value: Option<&OsStr>, host: &HostRoot, pid: u32) -> PathBuf {
    match env_value {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => host.path(format!("/dev/shm/gvm-vgpu-{pid}")),
    }
}

enum Backing {
    Shared(SharedMapping),
    Local(Box<ControlBlock>),
}

/// A control block, shared through a file or (when that failed) private to this process.
pub struct ControlMap {
    backing: Backing,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for ControlMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMap")
            .field("path", &self.path)
            .finish()
    }
}

impl ControlMap {
    /// Create (or overwrite) the block at `path` holding `knobs`, as the daemon does;
    /// `flags` may carry [`FLAG_STANDALONE`].
    pub fn create(path: &Path, knobs: &Knobs, flags: u32) -> Result<ControlMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o660)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let map = map_file(path, &file, true)?;
        let cm = ControlMap {
            backing: Backing::Shared(map),
            path: Some(path.to_path_buf()),
        };
        cm.block().initialise(knobs, flags);
        Ok(cm)
    }

    /// Open an existing block; fails unless it carries [`MAGIC`] and [`LAYOUT_VERSION`].
    pub fn open(path: &Path) -> Result<ControlMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let len = file.metadata().map_err(|e| open_err(path, e))?.len();
        if len < FILE_LEN as u64 {
            return Err(Error::BadControlBlock {
                path: path.to_path_buf(),
                magic: 0,
                version: 0,
                expected_version: LAYOUT_VERSION,
            });
        }
        let map = map_file(path, &file, false)?;
        let cm = ControlMap {
            backing: Backing::Shared(map),
            path: Some(path.to_path_buf()),
        };
        let b = cm.block();
        let (magic, version) = (
            b.magic.load(Ordering::Acquire),
            b.version.load(Ordering::Relaxed),
        );
        if magic != MAGIC || version != LAYOUT_VERSION {
            return Err(Error::BadControlBlock {
                path: path.to_path_buf(),
                magic,
                version,
                expected_version: LAYOUT_VERSION,
            });
        }
        Ok(cm)
    }

    /// A private block (the fallback when no file can be shared).
    pub fn local(knobs: &Knobs) -> ControlMap {
        ControlMap {
            backing: Backing::Local(Box::new(ControlBlock::new(knobs))),
            path: None,
        }
    }

    /// The block.
    pub fn block(&self) -> &ControlBlock {
        match &self.backing {
            Backing::Shared(m) => ffi::control_block_of(m),
            Backing::Local(b) => b,
        }
    }

    /// The file backing the block, if shared.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Freeze (`true`) or thaw the process's launches, waking held threads.
    pub fn set_frozen(&self, frozen: bool) {
        let b = self.block();
        b.frozen.store(u32::from(frozen), Ordering::Release);
        ffi::futex_wake(&b.frozen);
    }

    /// Set or clear the policy hold, waking held threads.
    pub fn set_hold(&self, hold: bool) {
        let b = self.block();
        b.hold.store(u32::from(hold), Ordering::Release);
        ffi::futex_wake(&b.hold);
    }
}

fn open_err(path: &Path, source: std::io::Error) -> Error {
    Error::OpenControl {
        path: path.to_path_buf(),
        errno: source.raw_os_error().unwrap_or(0),
        source,
    }
}

fn map_file(path: &Path, file: &File, grow: bool) -> Result<SharedMapping> {
    let map_err = |source: std::io::Error| Error::MapControl {
        path: path.to_path_buf(),
        errno: source.raw_os_error().unwrap_or(0),
        source,
    };
    if grow {
        file.set_len(FILE_LEN as u64).map_err(map_err)?;
    }
    SharedMapping::map(file, FILE_LEN).map_err(map_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layout_is_stable() {
        assert_eq!(offset_of!(ControlBlock, memory_limit), 16);
        assert_eq!(offset_of!(ControlBlock, submitted), offsets::SUBMITTED);
        assert_eq!(offset_of!(ControlBlock, frozen), offsets::FROZEN);
        assert_eq!(offset_of!(ControlBlock, hold), offsets::HOLD);
        assert_eq!(offset_of!(ControlBlock, vgpu_uuid), 80);
        assert_eq!(offset_of!(ControlBlock, arbitrate), offsets::ARBITRATE);
        assert_eq!(offset_of!(ControlBlock, queue_depth), offsets::QUEUE_DEPTH);
        assert_eq!(offset_of!(ControlBlock, launches), offsets::LAUNCHES);
        assert_eq!(offset_of!(ControlBlock, arb_waits), offsets::ARB_WAITS);
        assert_eq!(std::mem::size_of::<ControlBlock>(), 256);
        assert!(std::mem::size_of::<ControlBlock>() <= FILE_LEN);
    }

    #[test]
    fn default_path_goes_through_the_host_root() {
        let h = HostRoot::new("/tmp/r");
        assert_eq!(
            control_path(None, &h, 42),
            PathBuf::from("/tmp/r/dev/shm/gvm-vgpu-42")
        );
        assert_eq!(
            control_path(Some(OsStr::new("/x/ctl")), &h, 42),
            PathBuf::from("/x/ctl")
        );
    }

    #[test]
    fn a_created_block_is_seen_by_a_second_mapping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctl");
        let knobs = Knobs {
            memory_limit: 1 << 30,
            priority: 3,
            host_swap: true,
            vgpu_uuid: Some("5b4f1d7c-0000-4000-8000-000000000001".into()),
            arbitrate: false,
            queue_depth: 3,
            queue_always: true,
            linger_us: 700,
            max_hold_ms: 9,
            // Process-local (not in the block): a second mapping sees the default.
            queue_budget_us: crate::config::DEFAULT_QUEUE_BUDGET_US,
            gpu_gate: Knobs::default().gpu_gate,
        };
        let a = ControlMap::create(&path, &knobs, FLAG_STANDALONE).expect("create");
        let b = ControlMap::open(&path).expect("open");
        assert_eq!(b.block().knobs(), knobs);
        assert!(b.block().is_standalone());
        a.set_frozen(true);
        assert_eq!(b.block().frozen.load(Ordering::Acquire), 1);
        b.block().submitted.fetch_add(5, Ordering::Relaxed);
        assert_eq!(a.block().submitted.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn garbage_is_rejected_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctl");
        std::fs::write(&path, vec![7u8; FILE_LEN]).expect("write");
        let err = ControlMap::open(&path).expect_err("garbage must not open");
        assert!(matches!(err, Error::BadControlBlock { .. }));
        assert!(err.to_string().contains("ctl"));
        let err = ControlMap::open(&dir.path().join("missing")).expect_err("missing");
        assert_eq!(err.errno(), Some(libc::ENOENT));
    }
}
