//! The `fuser` adapter: inode numbers ↔ paths, and file operations forwarded to [`crate::tree`].
//!
//! The filesystem keeps no tree of its own. Each path ever looked up gets a
//! stable inode number; every operation turns the inode back into its path and
//! asks [`crate::tree`] what is there *now*. Attribute and entry TTLs are zero
//! and files are opened with `FOPEN_DIRECT_IO`, so the kernel neither caches
//! stale entries nor coalesces writes: each `write(2)` arrives as one store, as
//! with sysfs. A read snapshots the attribute at open time, like kernfs's
//! seq_file buffer.
//!
//! Two exceptions make path walks cheap without letting the kernel answer for us:
//! * the directories that exist for the whole life of the mount
//!   ([`tree::is_fixed_dir`], e.g. `kernel/debug/nvidia-uvm/processes`) are answered
//!   with a long entry and attribute TTL. Their contents are still listed fresh; only
//!   the path walk down to them is cached, which saves four round trips on every
//!   gcgroup knob access;
//! * every other *entry* (name → inode) may be cached for `DYNAMIC_ENTRY_TTL`, with
//!   its *attributes* still uncached. This is safe because an inode number always
//!   means the same path here: a cached entry whose object has gone only skips the
//!   `LOOKUP`; the `GETATTR` of a `stat`, the `OPEN` and the `OPENDIR` that follow
//!   still come here and fail with `ENOENT`, as on sysfs, and listings are never
//!   cached. It saves the three lookups (`<pid>`, `<gpu>`, the file) of every
//!   repeated knob access.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::host::SimHost;
use crate::tree::{self, Kind, Stored};

/// Size reported for attribute files (sysfs reports a page).
const ATTR_SIZE: u64 = 4096;

/// Entry and attribute TTL of the fixed directories ([`tree::is_fixed_dir`]).
const FIXED_TTL: Duration = Duration::from_secs(3600);

/// How long the kernel may cache the name → inode entry of a path that can disappear
/// (its attributes are never cached; see the module documentation).
const DYNAMIC_ENTRY_TTL: Duration = Duration::from_secs(10);

/// How long the kernel may cache the entry and attributes of `path`.
fn ttl(path: &str) -> Duration {
    if tree::is_fixed_dir(&segs(path)) {
        FIXED_TTL
    } else {
        Duration::ZERO
    }
}

#[derive(Default)]
struct Inodes {
    by_path: HashMap<String, u64>,
    paths: Vec<String>,
}

impl Inodes {
    /// Inode 1 is the root (`""`).
    fn ino(&mut self, path: &str) -> u64 {
        if let Some(i) = self.by_path.get(path) {
            return *i;
        }
        self.paths.push(path.to_string());
        let i = self.paths.len() as u64;
        self.by_path.insert(path.to_string(), i);
        i
    }

    fn path(&self, ino: u64) -> Option<String> {
        if ino == 1 {
            return Some(String::new());
        }
        self.paths
            .get(usize::try_from(ino).ok()?.checked_sub(1)?)
            .cloned()
    }
}

/// The FUSE filesystem of the simulated host.
pub struct SimFs {
    host: Arc<Mutex<SimHost>>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Vec<u8>>>,
    next_fh: AtomicU64,
    born: SystemTime,
}

/// The tree path of a path inside the mount: the mount point is the host's `/sys`.
fn segs(path: &str) -> Vec<&str> {
    std::iter::once("sys")
        .chain(path.split('/').filter(|s| !s.is_empty()))
        .collect()
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl SimFs {
    /// A filesystem serving `host`.
    pub fn new(host: Arc<Mutex<SimHost>>) -> Self {
        let mut inodes = Inodes::default();
        inodes.ino("");
        SimFs {
            host,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            born: SystemTime::now(),
        }
    }

    fn host(&self) -> MutexGuard<'_, SimHost> {
        // A panic while holding the lock leaves the model usable: recover the guard.
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: INodeNo) -> Option<String> {
        self.inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path(ino.0)
    }

    fn ino_of(&self, path: &str) -> u64 {
        self.inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ino(path)
    }

    /// Attributes of `path`; a directory's link count is 2 + its subdirectories, as
    /// debugfs and sysfs keep it (the manager counts a process's GPU registrations
    /// with one `stat` of `processes/<pid>`).
    fn attr_of(&self, path: &str, ino: u64, kind: &Kind) -> FileAttr {
        let mut a = self.attr(ino, kind);
        if matches!(kind, Kind::Dir) {
            if let Ok(entries) = tree::list(&self.host(), &segs(path)) {
                let subdirs = entries
                    .iter()
                    .filter(|e| matches!(e.kind, Kind::Dir))
                    .count();
                a.nlink = 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2);
            }
        }
        a
    }

    fn attr(&self, ino: u64, kind: &Kind) -> FileAttr {
        let (kind, perm, size, nlink) = match kind {
            Kind::Dir => (FileType::Directory, 0o755, 0, 2),
            Kind::File { mode } => (FileType::RegularFile, *mode, ATTR_SIZE, 1),
            Kind::Link(t) => (FileType::Symlink, 0o777, t.len() as u64, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Whether `uid` may open `path` for `read`/`write`/`exec`, as the kernel's permission
    /// check decides for sysfs and debugfs files, all owned by root:root: root may (the tree's
    /// own rules, e.g. EACCES for reading a write-only attribute, come after); any other user
    /// needs the "other" bits of the file's mode (the simulation has no supplementary groups:
    /// a non-root member of group root is treated as other). Done here rather than with
    /// `default_permissions`, which would make the kernel fetch attributes (uncached, they
    /// change) before every access and slow every client of the simulated host.
    fn permitted(&self, uid: u32, path: &str, read: bool, write: bool, exec: bool) -> bool {
        if uid == 0 {
            return true;
        }
        let mode = match self.stat_path(path) {
            Ok(Kind::File { mode }) => mode,
            Ok(Kind::Dir) => 0o755,
            Ok(Kind::Link(_)) => 0o777,
            Err(_) => return true, // the operation itself reports ENOENT
        };
        (!read || mode & 0o004 != 0)
            && (!write || mode & 0o002 != 0)
            && (!exec || mode & 0o001 != 0)
    }

    fn stat_path(&self, path: &str) -> Result<Kind, FsError> {
        tree::stat(&self.host(), &segs(path))
    }
}

impl Filesystem for SimFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // `open(O_TRUNC)` (a shell's `echo 1 >`, Rust's `File::create`) then reaches us
        // as a flag of OPEN, which an attribute file ignores as sysfs does, instead of a
        // separate SETATTR round trip before every store.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (Some(pp), Some(name)) = (self.path_of(parent), name.to_str()) else {
            return reply.error(Errno::ENOENT);
        };
        let path = join(&pp, name);
        match self.stat_path(&path) {
            Ok(kind) => {
                let ino = self.ino_of(&path);
                let attr_ttl = ttl(&path);
                let entry_ttl = attr_ttl.max(DYNAMIC_ENTRY_TTL);
                reply.entry_with_ttls(
                    &attr_ttl,
                    &entry_ttl,
                    &self.attr_of(&path, ino, &kind),
                    Generation(0),
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.stat_path(&path) {
            Ok(kind) => reply.attr(&ttl(&path), &self.attr_of(&path, ino.0, &kind)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // `echo > attr` truncates first; sysfs ignores that, and so do we.
        self.getattr(req, ino, fh, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        match self.stat_path(&path) {
            Ok(Kind::Link(t)) => reply.data(t.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        if !self.permitted(req.uid(), &path, read, write, false) {
            return reply.error(Errno::EACCES);
        }
        let s = segs(&path);
        let host = self.host();
        if let Err(e) = tree::check_open(&host, &s, read, write) {
            return reply.error(errno(&e));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if read {
            match tree::read(&host, &s) {
                Ok(data) => {
                    self.handles
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(fh, data);
                }
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let Some(data) = handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let written = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let mut host = self.host();
        match tree::write(&mut host, &segs(&path), data) {
            Ok(Stored::Done) => reply.written(written),
            // A held device: answer when its owners are gone, as the kernel's
            // vfio_unregister_group_dev returns when the last device fd is closed. Other
            // requests are served meanwhile; an interrupt (a signal to the writer) is not
            // answered, so the write goes on waiting, as it did on the kernel.
            Ok(Stored::RemoveWaiting(uuid)) => {
                host.when_removed(&uuid, Box::new(move || reply.written(written)));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    // No `flush`: kernfs attribute files have none, and fuser's default (ENOSYS) tells
    // the kernel so once, after which no close(2) costs a FLUSH round trip.

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let entries = match tree::list(&self.host(), &segs(&path)) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (ino.0, FileType::Directory, "..".to_string()),
        ];
        for en in entries {
            let child = self.ino_of(&join(&path, &en.name));
            let kind = match en.kind {
                Kind::Dir => FileType::Directory,
                Kind::File { .. } => FileType::RegularFile,
                Kind::Link(_) => FileType::Symlink,
            };
            all.push((child, kind, en.name));
        }
        for (i, (child, kind, name)) in all
            .into_iter()
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let read = mask.contains(fuser::AccessFlags::R_OK);
        let write = mask.contains(fuser::AccessFlags::W_OK);
        let exec = mask.contains(fuser::AccessFlags::X_OK);
        if self.permitted(req.uid(), &path, read, write, exec) {
            reply.ok();
        } else {
            reply.error(Errno::EACCES);
        }
    }
}
