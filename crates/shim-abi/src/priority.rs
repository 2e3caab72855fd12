//! This process's side of priority arbitration: joining the GPU's arbitration block, knowing
//! its role, publishing `busy`, and the helper thread that notices when its GPU work is done.
//!
//! **Busy, precisely.** A process with a less important peer marks itself busy *before* each
//! launch reaches the driver (so the peer's next launch already sees it), records an event
//! after it (`queue.rs`), and stays busy until a helper thread sees, polling every
//! [`POLL`], that (a) no launch call is in progress, (b) the newest event of every stream it
//! launched on has completed, and (c) its last launch is at least the linger time old (2 ms
//! by default: the CPU gaps of a launch-bound loop, such as token-by-token decoding, do not
//! count as idle). So busy ends between about `POLL` and `POLL + linger` after the GPU
//! finished its last kernel. The helper refreshes the slot's heartbeat while busy; if the
//! process is stopped or hangs, the heartbeat goes stale and peers clear the flag.
//!
//! Clearing races with a new launch; the launch path bumps a sequence number and an
//! in-progress count *before* setting busy, and the helper re-checks both *after* clearing
//! and sets busy again if anything moved, so busy is never left clear while a launch is on
//! its way to the driver.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use gvm_host_root::HostRoot;

use crate::arbiter::{self, ArbiterBlock, Role, ARB_FILE_LEN, ARB_MAGIC, ARB_VERSION};
use crate::error::{Error, Result};
use crate::sys::{self as ffi, SharedMapping};

/// How often the helper thread polls while its process is busy.
pub const POLL: Duration = Duration::from_micros(100);

/// The production environment of the arbiter: the monotonic clock, futexes, `kill(pid, 0)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealEnv;

impl arbiter::Env for RealEnv {
    fn now_ns(&self) -> u64 {
        ffi::monotonic_ns()
    }
    fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        ffi::futex_wait(word, expected, timeout);
    }
    fn wake(&self, word: &AtomicU32) {
        ffi::futex_wake(word);
    }
    fn alive(&self, pid: u32) -> bool {
        ffi::pid_alive(pid)
    }
}

/// Where a GPU's arbitration block lives when no daemon hands one over: `$GVM_SHIM_ARBITER`
/// if set, else, under the host root, `/dev/shm/gvm-vgpu-gpu-<pci bus id>-u<euid>` when the
/// GPU's PCI bus id is known (the same physical GPU whatever `CUDA_VISIBLE_DEVICES` each
/// process has), or the legacy `/dev/shm/gvm-vgpu-gpu<ordinal>-u<euid>` when the driver could
/// not say. The uid suffix makes the block one *arbitration domain*'s (one uid's): a file
/// another user created under that name is refused by [`ArbiterMap::open_or_create`], so no
/// user can make another user's processes map memory it controls. Processes of different
/// uids are arbitrated against each other only through the daemon's relay
/// (`gvm_shim_host::relay`).
pub fn arbiter_path(
    env_value: Option<&OsStr>,
    host: &HostRoot,
    pci_bus_id: Option<&str>,
    ordinal: i32,
    euid: u32,
) -> PathBuf {
    match env_value {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => match pci_bus_id.and_then(crate::register::normalise_pci_bus_id) {
            Some(pci) => host.path(format!(
                "/dev/shm/{}",
                arbiter::arbiter_file_name_of_uid(&pci, euid)
            )),
            None => host.path(format!(
                "/dev/shm/{}{ordinal}{}{euid}",
                arbiter::ARBITER_ORDINAL_PREFIX,
                arbiter::ARBITER_UID_INFIX
            )),
        },
    }
}

/// The name an arbitration block made as a memfd shows in `/proc/<pid>/fd`.
const ARB_MEMFD_NAME: &std::ffi::CStr = c"gvm-vgpu-arbiter";

/// A mapped arbitration block.
#[derive(Debug)]
pub struct ArbiterMap {
    map: SharedMapping,
    path: PathBuf,
    /// The descriptor of a block that is a sealed memfd (made by a manager, or handed over):
    /// what [`ArbiterMap::fd`] hands on. `None` for a block file opened by path.
    memfd: Option<std::fs::File>,
}

impl ArbiterMap {
    /// Open the block at `path`, creating and initialising it if it does not exist yet.
    ///
    /// Never maps a file another user controls: it creates the file with `O_CREAT|O_EXCL`
    /// and mode 0600, or opens the existing one with `O_NOFOLLOW|O_NONBLOCK` (no link, no
    /// FIFO), and checks on the opened descriptor that it is a regular file owned by this
    /// process's effective uid with no group or other access, of exactly [`ARB_FILE_LEN`]
    /// bytes. Anything else is [`Error::UnsafeArbiter`] (the caller logs it and runs
    /// unarbitrated). Only the owner uid can then resize it: a domain can hurt only itself.
    pub fn open_or_create(path: &Path) -> Result<ArbiterMap> {
        let err = |source: std::io::Error| Error::OpenArbiter {
            path: path.to_path_buf(),
            errno: source.raw_os_error().unwrap_or(0),
            source,
        };
        let unsafe_file = |problem: String| Error::UnsafeArbiter {
            path: path.to_path_buf(),
            problem,
        };
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
        let (file, created) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(flags)
                    .open(path)
                    .map_err(err)?,
                false,
            ),
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let euid = ffi::euid();
        if !meta.file_type().is_file() {
            return Err(unsafe_file("not a regular file".into()));
        }
        if meta.uid() != euid {
            return Err(unsafe_file(format!(
                "owned by uid {}, not by this process's uid {euid}",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(unsafe_file(format!(
                "mode {:o} gives group or others access (0600 expected)",
                meta.mode() & 0o7777
            )));
        }
        if created {
            file.set_len(ARB_FILE_LEN as u64).map_err(err)?;
        } else if meta.len() == 0 {
            // Created by a process of ours that has not sized it yet: growing only adds zeros.
            file.set_len(ARB_FILE_LEN as u64).map_err(err)?;
        } else if meta.len() != ARB_FILE_LEN as u64 {
            return Err(unsafe_file(format!(
                "{} bytes, not {ARB_FILE_LEN}",
                meta.len()
            )));
        }
        let map = SharedMapping::map(&file, ARB_FILE_LEN).map_err(err)?;
        let m = ArbiterMap {
            map,
            path: path.to_path_buf(),
            memfd: None,
        };
        let b = m.block();
        let magic = b.header.magic.load(Ordering::Acquire);
        if magic == 0 {
            b.initialise();
        } else if !b.is_valid() {
            return Err(Error::BadArbiter {
                path: path.to_path_buf(),
                magic,
                version: b.header.version.load(Ordering::Relaxed),
                expected_version: ARB_VERSION,
            });
        }
        debug_assert_eq!(b.header.magic.load(Ordering::Relaxed), ARB_MAGIC);
        Ok(m)
    }

    /// For a manager: a new, initialised block in an anonymous memfd of [`ARB_FILE_LEN`]
    /// bytes sealed against shrinking, growing and further sealing. It is in no directory, so
    /// nobody can pre-create, replace or truncate it; it is shared only by handing its
    /// descriptor ([`ArbiterMap::fd`]) to the processes of one arbitration domain.
    pub fn create_sealed() -> Result<ArbiterMap> {
        let shown = PathBuf::from(format!("memfd:{}", ARB_MEMFD_NAME.to_string_lossy()));
        let fd = ffi::sealed_memfd(ARB_MEMFD_NAME, ARB_FILE_LEN as u64).map_err(|source| {
            Error::CreateMemfd {
                errno: source.raw_os_error().unwrap_or(0),
                source,
            }
        })?;
        let file = std::fs::File::from(fd);
        let map = SharedMapping::map(&file, ARB_FILE_LEN).map_err(|source| Error::OpenArbiter {
            path: shown.clone(),
            errno: source.raw_os_error().unwrap_or(0),
            source,
        })?;
        let m = ArbiterMap {
            map,
            path: shown,
            memfd: Some(file),
        };
        m.block().initialise();
        Ok(m)
    }

    /// Map a block handed over as `fd` (by the daemon to a shim, or back by a shim to a
    /// restarted daemon), if its size can never change: a memfd sealed against shrinking and
    /// growing, not against writing, of exactly [`ARB_FILE_LEN`] bytes, holding a block of
    /// this layout. The seals are checked before the size. Anything else is
    /// [`Error::UnsafeArbiter`] or [`Error::BadArbiter`]. The mapping cannot fault; what other
    /// processes write into it stays untrusted.
    pub fn from_handed_fd(fd: std::os::fd::OwnedFd) -> Result<ArbiterMap> {
        use std::os::fd::AsFd;
        let file = std::fs::File::from(fd);
        let shown = match file.metadata() {
            Ok(m) => PathBuf::from(format!(
                "handed-over arbitration block (device {:#x}, inode {})",
                m.dev(),
                m.ino()
            )),
            Err(_) => PathBuf::from("handed-over arbitration block"),
        };
        let unsafe_file = |problem: String| Error::UnsafeArbiter {
            path: shown.clone(),
            problem,
        };
        let io_err = |source: std::io::Error| Error::OpenArbiter {
            path: shown.clone(),
            errno: source.raw_os_error().unwrap_or(0),
            source,
        };
        let seals = ffi::get_seals(file.as_fd())
            .map_err(|e| unsafe_file(format!("not a sealable memfd ({e})")))?;
        if seals & ffi::SEAL_SHRINK == 0 || seals & ffi::SEAL_GROW == 0 {
            return Err(unsafe_file(format!(
                "seals {seals:#x} do not forbid shrinking and growing"
            )));
        }
        if seals & (ffi::SEAL_WRITE | ffi::SEAL_FUTURE_WRITE) != 0 {
            return Err(unsafe_file(format!("seals {seals:#x} forbid writing")));
        }
        let meta = file.metadata().map_err(io_err)?;
        if !meta.file_type().is_file() || meta.len() != ARB_FILE_LEN as u64 {
            return Err(unsafe_file(format!(
                "{} bytes, not {ARB_FILE_LEN}",
                meta.len()
            )));
        }
        let map = SharedMapping::map(&file, ARB_FILE_LEN).map_err(io_err)?;
        let m = ArbiterMap {
            map,
            path: shown.clone(),
            memfd: Some(file),
        };
        let b = m.block();
        if !b.is_valid() {
            return Err(Error::BadArbiter {
                path: shown,
                magic: b.header.magic.load(Ordering::Acquire),
                version: b.header.version.load(Ordering::Relaxed),
                expected_version: ARB_VERSION,
            });
        }
        Ok(m)
    }

    /// The descriptor of a memfd block, to hand to another process; `None` for a block
    /// file opened by path (which is never handed on).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.memfd.as_ref().map(|f| f.as_fd())
    }

    /// The memfd's (device, inode): the same block handed over twice has the same one.
    pub fn file_id(&self) -> Option<(u64, u64)> {
        let m = self.memfd.as_ref()?.metadata().ok()?;
        Some((m.dev(), m.ino()))
    }

    /// The block.
    pub fn block(&self) -> &ArbiterBlock {
        ffi::arbiter_block_of(&self.map)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

const HAS_HIGHER: u8 = 1;
const HAS_LOWER: u8 = 2;
const ROLE_UNKNOWN: u8 = 0x80;

/// This process's registration in its GPU's block.
#[derive(Debug)]
pub struct Participant {
    map: ArbiterMap,
    slot: usize,
    priority: AtomicU32,
    generation: AtomicU32,
    role: AtomicU8,
    /// Launch calls begun while publishing busy.
    pub launch_seq: AtomicU64,
    /// Launch calls in progress while publishing busy.
    pub in_progress: AtomicU32,
    /// When the last launch call began (monotonic ns).
    pub last_launch_ns: AtomicU64,
}

impl Participant {
    /// Register `pid` at `priority`; `None` when the block has no free slot.
    pub fn join(map: ArbiterMap, pid: u32, priority: u32) -> Option<Participant> {
        let slot = map.block().register(pid, priority, &RealEnv)?;
        Some(Participant {
            map,
            slot,
            priority: AtomicU32::new(priority),
            generation: AtomicU32::new(0),
            role: AtomicU8::new(ROLE_UNKNOWN),
            launch_seq: AtomicU64::new(0),
            in_progress: AtomicU32::new(0),
            last_launch_ns: AtomicU64::new(0),
        })
    }

    /// The shared block.
    #[inline]
    pub fn block(&self) -> &ArbiterBlock {
        self.map.block()
    }

    /// The slot index.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The block's path.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// The priority registered now.
    #[inline]
    pub fn priority(&self) -> u32 {
        self.priority.load(Ordering::Relaxed)
    }

    /// This process's role, given its control block's priority now. Atomic loads only unless
    /// the priority or the block's generation changed since the last call.
    #[inline]
    pub fn role(&self, priority: u32) -> Role {
        let b = self.block();
        let gen = b.generation();
        let cached = self.role.load(Ordering::Acquire);
        if cached & ROLE_UNKNOWN == 0
            && gen == self.generation.load(Ordering::Relaxed)
            && priority == self.priority.load(Ordering::Relaxed)
        {
            return Role {
                has_higher: cached & HAS_HIGHER != 0,
                has_lower: cached & HAS_LOWER != 0,
            };
        }
        self.refresh(priority)
    }

    #[cold]
    fn refresh(&self, priority: u32) -> Role {
        let b = self.block();
        if priority != self.priority.swap(priority, Ordering::AcqRel) {
            b.set_priority(self.slot, priority, &RealEnv);
        }
        let gen = b.generation();
        let role = b.role(self.slot);
        let bits = u8::from(role.has_higher) * HAS_HIGHER + u8::from(role.has_lower) * HAS_LOWER;
        self.generation.store(gen, Ordering::Relaxed);
        self.role.store(bits, Ordering::Release);
        role
    }

    /// Publish busy for a launch about to go to the driver; pair with [`Self::launch_done`].
    /// Returns whether the slot was idle until now (the caller then wakes the helper that
    /// will clear busy again).
    #[inline]
    pub fn launch_begins(&self) -> bool {
        self.launch_seq.fetch_add(1, Ordering::SeqCst);
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        self.last_launch_ns
            .store(ffi::monotonic_ns(), Ordering::Release);
        !self.block().set_busy(self.slot, true, &RealEnv)
    }

    /// The launch call begun with [`Self::launch_begins`] returned (and its event, if any,
    /// was recorded).
    #[inline]
    pub fn launch_done(&self) {
        self.in_progress.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether this process publishes busy now.
    pub fn is_busy(&self) -> bool {
        self.block().slots[self.slot].busy.load(Ordering::Acquire) != 0
    }

    /// One helper step while busy: clear busy if the work is done (`all_done()` says so),
    /// nothing is being launched and the last launch is `linger` old. Returns whether busy
    /// was cleared.
    pub fn try_go_idle(&self, linger: Duration, all_done: impl FnOnce() -> bool) -> bool {
        let b = self.block();
        let now = ffi::monotonic_ns();
        b.heartbeat(self.slot, now);
        let seq = self.launch_seq.load(Ordering::SeqCst);
        if self.in_progress.load(Ordering::SeqCst) != 0 {
            return false;
        }
        let last = self.last_launch_ns.load(Ordering::Acquire);
        if u128::from(now.saturating_sub(last)) < linger.as_nanos() {
            return false;
        }
        if !all_done() {
            return false;
        }
        b.set_busy(self.slot, false, &RealEnv);
        if self.in_progress.load(Ordering::SeqCst) != 0
            || self.launch_seq.load(Ordering::SeqCst) != seq
        {
            b.set_busy(self.slot, true, &RealEnv);
            return false;
        }
        true
    }

    /// Leave the block (process exit).
    pub fn leave(&self) {
        self.block().unregister(self.slot, &RealEnv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_is_per_gpu_under_the_host_root() {
        let h = HostRoot::new("/tmp/r");
        assert_eq!(
            arbiter_path(None, &h, Some("0000:3B:00.0"), 1, 1000),
            PathBuf::from("/tmp/r/dev/shm/gvm-vgpu-gpu-0000:3b:00.0-u1000"),
            "keyed by the PCI bus id, not the ordinal"
        );
        assert_eq!(
            arbiter_path(None, &h, None, 3, 0),
            PathBuf::from("/tmp/r/dev/shm/gvm-vgpu-gpu3-u0"),
            "the ordinal only when the bus id is unknown"
        );
        assert_eq!(
            arbiter_path(None, &h, Some("garbage"), 3, 7),
            PathBuf::from("/tmp/r/dev/shm/gvm-vgpu-gpu3-u7")
        );
        assert_eq!(
            arbiter_path(Some(OsStr::new("/x/arb")), &h, Some("0000:3b:00.0"), 3, 0),
            PathBuf::from("/x/arb")
        );
    }

    #[test]
    fn two_participants_share_a_file_and_busy_goes_idle_only_when_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arb");
        let me = std::process::id();
        let hi = Participant::join(ArbiterMap::open_or_create(&path).expect("map"), me, 0)
            .expect("slot");
        let lo = Participant::join(ArbiterMap::open_or_create(&path).expect("map"), me, 8)
            .expect("slot");
        assert!(hi.role(0).has_lower && !hi.role(0).has_higher);
        assert!(lo.role(8).has_higher);
        assert!(
            hi.launch_begins(),
            "idle until now: the helper is to be woken"
        );
        assert!(
            lo.block().higher_busy(8),
            "the other mapping sees busy at once"
        );
        assert!(
            !hi.try_go_idle(Duration::ZERO, || true),
            "a launch is in progress"
        );
        hi.launch_done();
        assert!(
            !hi.try_go_idle(Duration::from_secs(60), || true),
            "within the linger"
        );
        assert!(
            !hi.try_go_idle(Duration::ZERO, || false),
            "GPU work pending"
        );
        assert!(hi.try_go_idle(Duration::ZERO, || true));
        assert!(!lo.block().higher_busy(8));
        // A priority change is seen through the generation.
        assert!(!lo.role(0).has_higher, "now equal");
        hi.leave();
        assert!(lo.role(0).is_alone());
    }

    #[test]
    fn garbage_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arb");
        std::fs::write(&path, vec![9u8; ARB_FILE_LEN]).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let err = ArbiterMap::open_or_create(&path).expect_err("garbage");
        assert!(matches!(err, Error::BadArbiter { .. }));
        assert!(err.to_string().contains("arb"));
    }

    fn refused(path: &Path) -> String {
        match ArbiterMap::open_or_create(path) {
            Err(e @ Error::UnsafeArbiter { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_block_is_created_private_and_sized_by_its_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arb");
        drop(ArbiterMap::open_or_create(&path).expect("create"));
        let m = std::fs::metadata(&path).expect("stat");
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(m.uid(), ffi::euid());
        assert_eq!(m.len(), ARB_FILE_LEN as u64);
        assert!(
            ArbiterMap::open_or_create(&path).is_ok(),
            "reopened by its owner"
        );
    }

    #[test]
    fn a_block_open_to_others_a_link_or_a_wrong_size_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let open = dir.path().join("open");
        std::fs::write(&open, vec![0u8; ARB_FILE_LEN]).expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(refused(&open).contains("mode 666"));
        let short = dir.path().join("short");
        std::fs::write(&short, vec![0u8; 100]).expect("write");
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(refused(&short).contains("100 bytes"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).expect("symlink");
        assert!(matches!(
            ArbiterMap::open_or_create(&link),
            Err(Error::OpenArbiter {
                errno: libc::ELOOP,
                ..
            })
        ));
    }

    #[test]
    fn a_sealed_block_travels_as_a_descriptor_and_only_sealed_ones_are_mapped() {
        use std::os::fd::AsFd;
        let made = ArbiterMap::create_sealed().expect("memfd block");
        let fd = made
            .fd()
            .expect("a memfd")
            .try_clone_to_owned()
            .expect("dup");
        let theirs = ArbiterMap::from_handed_fd(fd).expect("a sealed block is taken");
        assert_eq!(theirs.file_id(), made.file_id());
        let p = Participant::join(theirs, 7, 2).expect("slot");
        assert_eq!(
            made.block().slots[p.slot()].pid.load(Ordering::SeqCst),
            7,
            "one block"
        );
        // A plain memfd (resizable by whoever holds it) is refused before it is mapped.
        let loose = ffi::memfd_create(c"loose").expect("memfd");
        std::fs::File::from(loose.try_clone().expect("dup"))
            .set_len(ARB_FILE_LEN as u64)
            .expect("size");
        let e = ArbiterMap::from_handed_fd(loose).expect_err("unsealed");
        assert!(e.to_string().contains("shrinking and growing"), "{e}");
        // A sealed memfd of the wrong size, and a regular file, are refused too.
        let small = ffi::sealed_memfd(c"small", 64).expect("memfd");
        assert!(ArbiterMap::from_handed_fd(small)
            .expect_err("wrong size")
            .to_string()
            .contains("64 bytes"));
        let dir = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::create(dir.path().join("f")).expect("file");
        let e = ArbiterMap::from_handed_fd(f.as_fd().try_clone_to_owned().expect("dup"))
            .expect_err("a file");
        assert!(matches!(e, Error::UnsafeArbiter { .. }), "{e:?}");
        // A sealed block of garbage is not a block.
        let junk = ffi::sealed_memfd(c"junk", ARB_FILE_LEN as u64).expect("memfd");
        assert!(matches!(
            ArbiterMap::from_handed_fd(junk),
            Err(Error::BadArbiter { .. })
        ));
    }

    #[test]
    fn a_block_another_uid_pre_created_is_never_mapped() {
        if ffi::euid() != 0 {
            println!("SKIP: needs root to give a file to another uid");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gvm-vgpu-gpu-0000:3b:00.0-u0");
        std::fs::write(&path, vec![0u8; ARB_FILE_LEN]).expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
        let msg = refused(&path);
        assert!(msg.contains("owned by uid 65534"), "{msg}");
    }
}
