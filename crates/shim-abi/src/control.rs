//! The control block: the shared-memory page through which gvm-vgpud and the shim talk.
//!
//! Each CUDA process running under the shim has one block, mapped `MAP_SHARED`. By default it
//! is an anonymous memfd sealed against shrinking and growing ([`ControlMap::create_sealed`]),
//! in no directory, which the shim hands to its manager over the registration socket
//! ([`crate::register`], `SCM_RIGHTS`); with `GVM_SHIM_CONTROL=<path>` it is a file at that
//! path, created mode 0600 ([`ControlMap::create`]). It holds the same knobs as a GVM gcgroup
//! directory (`memory.limit`, `compute.priority`, `compute.freeze`) plus `hold` (the policy
//! engine's "wait, a more important vGPU has work") and the counters GVM reports
//! (`memory.current`, `memory.swap.current`, `gcgroup.stat`). Every field is an atomic;
//! writers that change `frozen` or `hold` should wake waiters with
//! [`ControlMap::set_frozen`]/[`ControlMap::set_hold`] (the shim also re-checks every 50 ms,
//! so a plain store works too, just later).
//!
//! **What a manager maps.** A mapping of a file that someone else truncates faults with
//! `SIGBUS` at the next access, which kills the mapping process: a root daemon must never map
//! memory that a less-privileged process can shrink or replace. So a manager maps a block
//! only through [`ControlMap::from_handed_fd`] (a memfd sealed with `F_SEAL_SHRINK |
//! F_SEAL_GROW` of exactly [`FILE_LEN`] bytes, checked with `F_GET_SEALS` and `fstat` before
//! mapping), [`ControlMap::from_root_file_fd`] (a root-owned mode-0600 regular file handed
//! over by a root process) or [`ControlMap::open_root_owned`] (the same, found by a scan,
//! opened with `O_NOFOLLOW` and checked on the opened descriptor). Each refusal is an
//! [`Error::UnsafeBlock`] naming the [`BlockProblem`]. A sealed block still belongs to its
//! owner, who can write any bytes into it: every field a manager reads is untrusted input.
//!
//! If a `GVM_SHIM_CONTROL` file already holds a block the daemon prepared (valid magic and
//! layout, not standalone), the shim obeys it; otherwise the shim creates its block itself
//! from the environment and runs standalone until its manager retunes it.

use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use gvm_host_root::HostRoot;

use crate::config::Knobs;
use crate::error::{BlockProblem, Error, Result};
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
            register_timeout_ms: crate::config::DEFAULT_REGISTER_TIMEOUT_MS,
        }
    }

    /// Whether the shim created this block itself (no daemon).
    pub fn is_standalone(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & FLAG_STANDALONE != 0
    }
}

/// Where a file block of process `pid` lives: `$GVM_SHIM_CONTROL` if set, else
/// `/dev/shm/gvm-vgpu-<pid>` under the host root (where shims before the memfd block kept
/// theirs; a manager's scan maps such a file only when it is root-owned and mode 0600).
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

/// What a shared block lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A file at this path (`GVM_SHIM_CONTROL`, a scanned root-owned file).
    Path(PathBuf),
    /// An anonymous sealed memfd, in no directory.
    Memfd,
    /// A descriptor handed over by another process.
    Handed,
}

/// A control block, shared through a memfd or a file, or (when neither could be made)
/// private to this process.
///
/// Its owner, the shim, makes it with [`ControlMap::create_sealed`] (the default) or
/// [`ControlMap::create`] (a `GVM_SHIM_CONTROL` path) and hands [`ControlMap::fd`] to its
/// manager. A manager maps only what nobody less privileged can resize under it:
/// [`ControlMap::from_handed_fd`] (a memfd sealed against shrinking and growing) or, from a
/// root process or a scan, a root-owned mode-0600 file ([`ControlMap::from_root_file_fd`],
/// [`ControlMap::open_root_owned`]). Even then every field is the owner's to write: readers
/// treat each value as untrusted.
pub struct ControlMap {
    backing: Backing,
    /// The open file or memfd of a shared block: re-registration hands it over again.
    file: Option<File>,
    source: Option<Source>,
    /// (device, inode) of `file`.
    file_id: Option<(u64, u64)>,
}

impl std::fmt::Debug for ControlMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMap")
            .field("source", &self.source)
            .field("file_id", &self.file_id)
            .finish()
    }
}

/// The name of the shim's control block memfd (`/proc/<pid>/fd` shows `/memfd:gvm-vgpu-control`).
pub const MEMFD_NAME: &CStr = c"gvm-vgpu-control";

fn file_kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of another kind"
    }
}

fn refused_block(object: &str, problem: BlockProblem) -> Error {
    Error::UnsafeBlock {
        object: object.to_string(),
        problem,
    }
}

fn stat_of(file: &File, object: &str) -> Result<std::fs::Metadata> {
    file.metadata().map_err(|e| {
        refused_block(
            object,
            BlockProblem::Stat {
                errno: e.raw_os_error().unwrap_or(0),
            },
        )
    })
}

impl ControlMap {
    /// Create (or overwrite) the block at `path` holding `knobs`, as the daemon does;
    /// `flags` may carry [`FLAG_STANDALONE`]. A new file is made mode 0600.
    pub fn create(path: &Path, knobs: &Knobs, flags: u32) -> Result<ControlMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let map = map_file(path, &file, true)?;
        let file_id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let cm = ControlMap {
            backing: Backing::Shared(map),
            file: Some(file),
            source: Some(Source::Path(path.to_path_buf())),
            file_id,
        };
        cm.block().initialise(knobs, flags);
        Ok(cm)
    }

    /// Create the block holding `knobs` as an anonymous memfd of [`FILE_LEN`] bytes sealed
    /// against shrinking, growing and further sealing (`F_SEAL_SHRINK | F_SEAL_GROW |
    /// F_SEAL_SEAL`): in no directory, so nobody can truncate or replace it, and a manager
    /// that maps it can never fault on it. `flags` may carry [`FLAG_STANDALONE`].
    pub fn create_sealed(knobs: &Knobs, flags: u32) -> Result<ControlMap> {
        let fd = ffi::sealed_memfd(MEMFD_NAME, FILE_LEN as u64).map_err(|source| {
            Error::CreateMemfd {
                errno: source.raw_os_error().unwrap_or(0),
                source,
            }
        })?;
        let file = File::from(fd);
        let shown = PathBuf::from(format!("memfd:{}", MEMFD_NAME.to_string_lossy()));
        let map = map_file(&shown, &file, false)?;
        let file_id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let cm = ControlMap {
            backing: Backing::Shared(map),
            file: Some(file),
            source: Some(Source::Memfd),
            file_id,
        };
        cm.block().initialise(knobs, flags);
        Ok(cm)
    }

    /// Open an existing block at `path`; fails unless it carries [`MAGIC`] and
    /// [`LAYOUT_VERSION`]. For the process whose block it is, and for tests: a manager maps a
    /// block only through [`ControlMap::from_handed_fd`], [`ControlMap::from_root_file_fd`]
    /// or [`ControlMap::open_root_owned`], which check that nobody else can resize it.
    pub fn open(path: &Path) -> Result<ControlMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let meta = file.metadata().map_err(|e| open_err(path, e))?;
        if meta.len() < FILE_LEN as u64 {
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
            file: Some(file),
            source: Some(Source::Path(path.to_path_buf())),
            file_id: Some((meta.dev(), meta.ino())),
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

    /// For managers: map the block another process handed over as `fd` (`SCM_RIGHTS`), if
    /// its size can never change: a regular file (a memfd is one) sealed against shrinking
    /// and growing (`F_GET_SEALS`), not against writing, of exactly [`FILE_LEN`] bytes, that
    /// holds a block of this layout. The seals are checked before the size, so the size seen
    /// is the size for good. Anything else is [`Error::UnsafeBlock`] with the
    /// [`BlockProblem`]. The mapping is safe from `SIGBUS`; its contents stay the owner's to
    /// write, so every field read from it is untrusted.
    pub fn from_handed_fd(fd: OwnedFd) -> Result<ControlMap> {
        let file = File::from(fd);
        let mut object = "handed over as a descriptor".to_string();
        let meta = stat_of(&file, &object)?;
        object = format!(
            "handed over as a descriptor (device {:#x}, inode {})",
            meta.dev(),
            meta.ino()
        );
        if !meta.file_type().is_file() {
            let kind = file_kind(meta.file_type());
            return Err(refused_block(&object, BlockProblem::NotRegular { kind }));
        }
        let seals = ffi::get_seals(file.as_fd()).map_err(|e| {
            refused_block(
                &object,
                BlockProblem::NotSealable {
                    errno: e.raw_os_error().unwrap_or(0),
                },
            )
        })?;
        let (shrink, grow) = (seals & ffi::SEAL_SHRINK != 0, seals & ffi::SEAL_GROW != 0);
        match (shrink, grow) {
            (true, true) => {}
            (false, false) => return Err(refused_block(&object, BlockProblem::Unsealed { seals })),
            (false, true) => {
                return Err(refused_block(
                    &object,
                    BlockProblem::SealMissing {
                        seals,
                        missing: "shrinking",
                        present: "growing",
                    },
                ))
            }
            (true, false) => {
                return Err(refused_block(
                    &object,
                    BlockProblem::SealMissing {
                        seals,
                        missing: "growing",
                        present: "shrinking",
                    },
                ))
            }
        }
        if seals & (ffi::SEAL_WRITE | ffi::SEAL_FUTURE_WRITE) != 0 {
            return Err(refused_block(&object, BlockProblem::WriteSealed { seals }));
        }
        // Sealed: the size read now is the size for good.
        let meta = stat_of(&file, &object)?;
        Self::map_checked(file, &meta, object, Source::Handed)
    }

    /// For managers: map the block file handed over as `fd` by a root process, if fstat on
    /// the descriptor says it is a regular file owned by root with no group or other access
    /// (mode 0600) of exactly [`FILE_LEN`] bytes holding a block of this layout: only root can
    /// resize it then. Anything else is [`Error::UnsafeBlock`].
    pub fn from_root_file_fd(fd: OwnedFd) -> Result<ControlMap> {
        let file = File::from(fd);
        let meta = stat_of(&file, "handed over as a descriptor")?;
        let object = format!(
            "handed over as a descriptor (device {:#x}, inode {})",
            meta.dev(),
            meta.ino()
        );
        Self::check_root_file(&meta, &object)?;
        Self::map_checked(file, &meta, object, Source::Handed)
    }

    /// For a manager's scan: open the block file at `path` without following a link
    /// (`O_NOFOLLOW`) or blocking on a FIFO (`O_NONBLOCK`), then check on the opened
    /// descriptor (never by path first) what [`ControlMap::from_root_file_fd`] checks, and
    /// that it lies on the filesystem with device `dir_dev` (its directory's: nothing is
    /// mounted over it) when given.
    pub fn open_root_owned(path: &Path, dir_dev: Option<u64>) -> Result<ControlMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| open_err(path, e))?;
        let object = path.display().to_string();
        let meta = stat_of(&file, &object)?;
        Self::check_root_file(&meta, &object)?;
        if dir_dev.is_some_and(|d| d != meta.dev()) {
            return Err(refused_block(&object, BlockProblem::MountedOver));
        }
        Self::map_checked(file, &meta, object, Source::Path(path.to_path_buf()))
    }

    fn check_root_file(meta: &std::fs::Metadata, object: &str) -> Result<()> {
        if !meta.file_type().is_file() {
            let kind = file_kind(meta.file_type());
            return Err(refused_block(object, BlockProblem::NotRegular { kind }));
        }
        if meta.uid() != 0 {
            return Err(refused_block(
                object,
                BlockProblem::NotRootOwned { uid: meta.uid() },
            ));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refused_block(
                object,
                BlockProblem::OpenToOthers {
                    mode: meta.mode() & 0o7777,
                },
            ));
        }
        Ok(())
    }

    /// Map `file`, whose size cannot change behind us any more, after checking that size and
    /// then the block's magic and layout.
    fn map_checked(
        file: File,
        meta: &std::fs::Metadata,
        object: String,
        source: Source,
    ) -> Result<ControlMap> {
        if meta.len() != FILE_LEN as u64 {
            return Err(refused_block(
                &object,
                BlockProblem::WrongSize {
                    size: meta.len(),
                    expected: FILE_LEN as u64,
                },
            ));
        }
        let map = SharedMapping::map(&file, FILE_LEN).map_err(|e| {
            refused_block(
                &object,
                BlockProblem::Map {
                    errno: e.raw_os_error().unwrap_or(0),
                },
            )
        })?;
        let cm = ControlMap {
            backing: Backing::Shared(map),
            file: Some(file),
            source: Some(source),
            file_id: Some((meta.dev(), meta.ino())),
        };
        let b = cm.block();
        let (magic, version) = (
            b.magic.load(Ordering::Acquire),
            b.version.load(Ordering::Relaxed),
        );
        if magic != MAGIC || version != LAYOUT_VERSION {
            return Err(refused_block(
                &object,
                BlockProblem::BadBlock {
                    magic,
                    version,
                    expected: LAYOUT_VERSION,
                },
            ));
        }
        Ok(cm)
    }

    /// A private block (the fallback when no file can be shared).
    pub fn local(knobs: &Knobs) -> ControlMap {
        ControlMap {
            backing: Backing::Local(Box::new(ControlBlock::new(knobs))),
            file: None,
            source: None,
            file_id: None,
        }
    }

    /// The block.
    pub fn block(&self) -> &ControlBlock {
        match &self.backing {
            Backing::Shared(m) => ffi::control_block_of(m),
            Backing::Local(b) => b,
        }
    }

    /// The file backing the block, if it is a file at a path.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Some(Source::Path(p)) => Some(p),
            _ => None,
        }
    }

    /// Whether the block is an anonymous sealed memfd this process made.
    pub fn is_memfd(&self) -> bool {
        self.source == Some(Source::Memfd)
    }

    /// The descriptor of a shared block (memfd or file), to hand over to a manager; `None`
    /// for a private block.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(AsFd::as_fd)
    }

    /// (device, inode) of the memfd or file behind a shared block.
    pub fn file_id(&self) -> Option<(u64, u64)> {
        self.file_id
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
            register_timeout_ms: crate::config::DEFAULT_REGISTER_TIMEOUT_MS,
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

    fn knobs() -> Knobs {
        Knobs {
            memory_limit: 1 << 30,
            priority: 3,
            ..Knobs::default()
        }
    }

    /// A second descriptor of `fd` (what a manager receives over the socket).
    fn dup(fd: BorrowedFd<'_>) -> OwnedFd {
        fd.try_clone_to_owned().expect("dup")
    }

    fn problem(e: Error) -> BlockProblem {
        match e {
            Error::UnsafeBlock { problem, .. } => problem,
            other => panic!("expected UnsafeBlock, got {other:?}"),
        }
    }

    /// A memfd of `len` bytes holding a valid block, with `seals` added.
    fn memfd_block(len: u64, seals: u32) -> OwnedFd {
        let fd = ffi::memfd_create(c"gvm-vgpu-test").expect("memfd");
        let f = File::from(fd);
        f.set_len(FILE_LEN as u64).expect("size");
        {
            let m = SharedMapping::map(&f, FILE_LEN).expect("map");
            ffi::control_block_of(&m).initialise(&knobs(), 0);
        }
        f.set_len(len).expect("final size");
        if seals != 0 {
            ffi::add_seals(f.as_fd(), seals).expect("seal");
        }
        OwnedFd::from(f)
    }

    #[test]
    fn a_sealed_block_cannot_be_shrunk_or_grown_and_stays_mapped() {
        let cm = ControlMap::create_sealed(&knobs(), FLAG_STANDALONE).expect("create_sealed");
        assert!(cm.is_memfd() && cm.path().is_none());
        let fd = cm.fd().expect("a shared block has a descriptor");
        let seals = ffi::get_seals(fd).expect("seals");
        assert_eq!(
            seals & (ffi::SEAL_SHRINK | ffi::SEAL_GROW | ffi::SEAL_SEAL),
            ffi::SEAL_SHRINK | ffi::SEAL_GROW | ffi::SEAL_SEAL
        );
        let other = File::from(dup(fd));
        for len in [0, 1, FILE_LEN as u64 - 1, FILE_LEN as u64 + 1, 1 << 20] {
            let e = other.set_len(len).expect_err("the size is sealed");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "ftruncate to {len}");
        }
        assert_eq!(other.metadata().expect("fstat").len(), FILE_LEN as u64);
        // Nor can seals be taken off or added.
        assert!(ffi::add_seals(fd, ffi::SEAL_WRITE).is_err());
        // Still mapped and shared: a manager's mapping of the handed-over descriptor sees it.
        let manager = ControlMap::from_handed_fd(dup(fd)).expect("a sealed memfd maps");
        assert_eq!(manager.block().knobs(), cm.block().knobs());
        assert!(manager.block().is_standalone());
        manager.set_frozen(true);
        assert_eq!(cm.block().frozen.load(Ordering::Acquire), 1);
        cm.block().submitted.fetch_add(3, Ordering::Relaxed);
        assert_eq!(manager.block().submitted.load(Ordering::Relaxed), 3);
        assert_eq!(manager.file_id(), cm.file_id());
    }

    #[test]
    fn from_handed_fd_refuses_what_its_owner_could_resize_each_with_its_own_error() {
        // An unsealed regular file, on a filesystem without seals.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ctl");
        let plain = ControlMap::create(&path, &knobs(), 0).expect("file block");
        let e = ControlMap::from_handed_fd(dup(plain.fd().expect("fd"))).expect_err("unsealed");
        let shown = e.to_string();
        match problem(e) {
            // tmpfs files carry F_SEAL_SEAL alone; others cannot be sealed at all.
            BlockProblem::NotSealable { errno } => assert_eq!(errno, libc::EINVAL),
            BlockProblem::Unsealed { seals } => assert_eq!(seals, ffi::SEAL_SEAL),
            p => panic!("an unsealed file: {p:?}"),
        }
        assert!(
            shown.contains("inode") && shown.contains("F_SEAL_SHRINK"),
            "{shown}"
        );
        // An unsealed memfd.
        let e = ControlMap::from_handed_fd(memfd_block(FILE_LEN as u64, 0)).expect_err("no seal");
        assert!(
            matches!(problem(e), BlockProblem::Unsealed { seals } if seals & (ffi::SEAL_SHRINK | ffi::SEAL_GROW) == 0)
        );
        // Sealed against growing only: its owner can still shrink it.
        let e = ControlMap::from_handed_fd(memfd_block(FILE_LEN as u64, ffi::SEAL_GROW))
            .expect_err("grow only");
        assert_eq!(
            problem(e),
            BlockProblem::SealMissing {
                seals: ffi::get_seals(memfd_block(FILE_LEN as u64, ffi::SEAL_GROW).as_fd())
                    .expect("seals"),
                missing: "shrinking",
                present: "growing"
            }
        );
        // Sealed, but the wrong size.
        let both = ffi::SEAL_SHRINK | ffi::SEAL_GROW;
        for len in [FILE_LEN as u64 / 2, 2 * FILE_LEN as u64] {
            let e = ControlMap::from_handed_fd(memfd_block(len, both)).expect_err("size");
            assert_eq!(
                problem(e),
                BlockProblem::WrongSize {
                    size: len,
                    expected: FILE_LEN as u64
                }
            );
        }
        // Sealed against writing: cannot be driven.
        let e = ControlMap::from_handed_fd(memfd_block(FILE_LEN as u64, both | ffi::SEAL_WRITE))
            .expect_err("write sealed");
        assert!(matches!(problem(e), BlockProblem::WriteSealed { .. }));
        // Sealed and sized, but no block in it.
        let junk = ffi::sealed_memfd(c"gvm-vgpu-junk", FILE_LEN as u64).expect("memfd");
        let e = ControlMap::from_handed_fd(junk).expect_err("no block");
        assert!(matches!(
            problem(e),
            BlockProblem::BadBlock { magic: 0, .. }
        ));
        // Not a file at all.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let e = ControlMap::from_handed_fd(OwnedFd::from(a)).expect_err("a socket");
        assert_eq!(problem(e), BlockProblem::NotRegular { kind: "socket" });
        // And the good one.
        assert!(ControlMap::from_handed_fd(memfd_block(FILE_LEN as u64, both)).is_ok());
    }

    fn is_root() -> bool {
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    #[test]
    fn only_root_owned_mode_0600_files_map_as_file_blocks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gvm-vgpu-1");
        let cm = ControlMap::create(&path, &knobs(), 0).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a file block is created mode 0600");
        if !is_root() {
            println!("SKIP (part): not root, so no file here is root-owned");
            return;
        }
        let dev = std::fs::metadata(dir.path()).expect("dir").dev();
        let ok = ControlMap::open_root_owned(&path, Some(dev)).expect("root-owned 0600");
        assert_eq!(ok.block().knobs(), cm.block().knobs());
        assert!(ControlMap::from_root_file_fd(dup(cm.fd().expect("fd"))).is_ok());
        // Another filesystem than the directory's: something is mounted over it.
        let e = ControlMap::open_root_owned(&path, Some(dev ^ 1)).expect_err("mounted over");
        assert_eq!(problem(e), BlockProblem::MountedOver);
        // Open to others.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = ControlMap::open_root_owned(&path, None).expect_err("0644");
        assert_eq!(problem(e), BlockProblem::OpenToOthers { mode: 0o644 });
        let e = ControlMap::from_root_file_fd(dup(cm.fd().expect("fd"))).expect_err("0644");
        assert_eq!(problem(e), BlockProblem::OpenToOthers { mode: 0o644 });
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // Owned by another user.
        std::os::unix::fs::chown(&path, Some(4321), None).expect("chown");
        let e = ControlMap::open_root_owned(&path, None).expect_err("not root's");
        assert_eq!(problem(e), BlockProblem::NotRootOwned { uid: 4321 });
        // A link is not followed, a FIFO is not waited on.
        std::os::unix::fs::chown(&path, Some(0), None).expect("chown");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let e = ControlMap::open_root_owned(&link, None).expect_err("a link");
        assert_eq!(e.errno(), Some(libc::ELOOP));
        let fifo = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo").arg(&fifo).status();
        if st.is_ok_and(|s| s.success()) {
            let e = ControlMap::open_root_owned(&fifo, None).expect_err("a FIFO");
            assert_eq!(problem(e), BlockProblem::NotRegular { kind: "FIFO" });
        }
        // The wrong size.
        let short = dir.path().join("short");
        std::fs::write(&short, [0u8; 100]).expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = ControlMap::open_root_owned(&short, None).expect_err("short");
        assert_eq!(
            problem(e),
            BlockProblem::WrongSize {
                size: 100,
                expected: FILE_LEN as u64
            }
        );
    }
}
