//! Who holds a mediated device open: the processes with an fd on its VFIO node.
//!
//! QEMU (or any VFIO user) opens a mediated device through its IOMMU group's
//! character device, `/dev/vfio/<N>`, where N is the last component of the
//! device's `iommu_group` link; on kernels with VFIO device cdevs it may open
//! `/dev/vfio/devices/vfioX` (the device's `vfio-dev/vfioX` entry) instead.
//! While such an fd is open, writing `1` to the device's `remove` blocks in the
//! kernel, uninterruptibly, until the holder closes it (docs/conformance.md,
//! "Removing a held device"). So before removing, the manager looks for holders
//! the way `fuser` does: every `/proc/<pid>/fd/<n>` link that points at one of
//! the device's nodes.
//!
//! The parsing is pure ([`parse_pid`], [`link_is_node`], [`parse_comm`]); [`scan`]
//! is the thin I/O over a proc directory, so tests run it on a temporary tree.
//! Processes that exit while they are read are skipped; those whose fds this user
//! may not read (another user's, without root) are counted in
//! [`HolderScan::unreadable`], so a caller can say the answer is incomplete.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// One process holding a device's VFIO node open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), when it could be read.
    pub comm: Option<String>,
    /// The libvirt domain it runs, when the caller knows it (the daemon fills this in).
    pub domain: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        match (&self.comm, &self.domain) {
            (Some(c), Some(d)) => write!(f, " ({c}, libvirt domain {d})"),
            (Some(c), None) => write!(f, " ({c})"),
            (None, Some(d)) => write!(f, " (libvirt domain {d})"),
            (None, None) => Ok(()),
        }
    }
}

/// What one scan of a proc directory found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderScan {
    /// The processes with an fd on one of the nodes, sorted by pid.
    pub holders: Vec<Holder>,
    /// Pids whose fds could not be read (permission denied): they may hold it too.
    pub unreadable: Vec<u32>,
}

/// A `/proc` entry name as a pid (`self`, `sys` and other names are not processes).
pub fn parse_pid(name: &OsStr) -> Option<u32> {
    let s = name.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether an fd's link target is one of `nodes`. A node unlinked while held reads as
/// `<path> (deleted)`; that still counts.
pub fn link_is_node(target: &Path, nodes: &[PathBuf]) -> bool {
    let lossy = target.to_string_lossy();
    let path = Path::new(lossy.strip_suffix(" (deleted)").unwrap_or(&lossy));
    nodes.iter().any(|n| n == path)
}

/// The command name in a `comm` file's text (one line), if it is not empty.
pub fn parse_comm(text: &str) -> Option<String> {
    let name = text.trim_end_matches('\n');
    (!name.is_empty()).then(|| name.to_string())
}

/// Every process under `proc_dir` with an open fd whose link target is one of `nodes`.
///
/// Only a failure to list `proc_dir` itself is an error ([`Error::Read`] naming it, with
/// the errno); a process that exits meanwhile is skipped, one whose fds are not readable
/// is listed in [`HolderScan::unreadable`].
pub fn scan(proc_dir: &Path, nodes: &[PathBuf]) -> Result<HolderScan> {
    let mut out = HolderScan::default();
    if nodes.is_empty() {
        return Ok(out);
    }
    let read_err = |source| Error::Read {
        path: proc_dir.to_path_buf(),
        source,
    };
    let mut pids: Vec<u32> = Vec::new();
    for entry in fs::read_dir(proc_dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if let Some(pid) = parse_pid(&entry.file_name()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_dir.join(pid.to_string());
        match holds(&dir.join("fd"), nodes) {
            Ok(true) => out.holders.push(Holder {
                pid,
                comm: fs::read_to_string(dir.join("comm"))
                    .ok()
                    .and_then(|t| parse_comm(&t)),
                domain: None,
            }),
            Ok(false) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                out.unreadable.push(pid)
            }
            // Gone (ENOENT, ESRCH) or a kernel thread without fds: not a holder.
            Err(_) => {}
        }
    }
    Ok(out)
}

/// Whether one process's fd directory has a link to one of `nodes`.
fn holds(fd_dir: &Path, nodes: &[PathBuf]) -> io::Result<bool> {
    for entry in fs::read_dir(fd_dir)? {
        let entry = entry?;
        // An fd closed between listing and reading is simply not there any more.
        if let Ok(target) = fs::read_link(entry.path()) {
            if link_is_node(&target, nodes) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pids_are_all_digit_names() {
        assert_eq!(parse_pid(OsStr::new("1234")), Some(1234));
        assert_eq!(parse_pid(OsStr::new("self")), None);
        assert_eq!(parse_pid(OsStr::new("")), None);
        assert_eq!(parse_pid(OsStr::new("+12")), None);
        assert_eq!(parse_pid(OsStr::new("99999999999")), None);
    }

    #[test]
    fn node_links_match_exactly_or_deleted() {
        let nodes = [PathBuf::from("/dev/vfio/7")];
        assert!(link_is_node(Path::new("/dev/vfio/7"), &nodes));
        assert!(link_is_node(Path::new("/dev/vfio/7 (deleted)"), &nodes));
        assert!(!link_is_node(Path::new("/dev/vfio/70"), &nodes));
        assert!(!link_is_node(Path::new("/dev/vfio/vfio"), &nodes));
        assert!(!link_is_node(Path::new("socket:[123]"), &nodes));
        assert!(!link_is_node(Path::new("/dev/vfio/7"), &[]));
    }

    #[test]
    fn comm_is_one_trimmed_line() {
        assert_eq!(
            parse_comm("qemu-system-x86\n").as_deref(),
            Some("qemu-system-x86")
        );
        assert_eq!(parse_comm("\n"), None);
    }

    #[test]
    fn holder_names_pid_command_and_domain() {
        let mut h = Holder {
            pid: 42,
            comm: Some("qemu-kvm".into()),
            domain: None,
        };
        assert_eq!(h.to_string(), "pid 42 (qemu-kvm)");
        h.domain = Some("vm1".into());
        assert_eq!(h.to_string(), "pid 42 (qemu-kvm, libvirt domain vm1)");
        h.comm = None;
        assert_eq!(h.to_string(), "pid 42 (libvirt domain vm1)");
    }

    /// One fake process: pid, comm, and `(fd, link target)` pairs.
    type FakeProc<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// A fake proc tree with a `comm` and an `fd/` directory per pid.
    fn fake_proc(procs: &[FakeProc<'_>]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("temp dir");
        for (pid, comm, fds) in procs {
            let fd_dir = d.path().join(pid).join("fd");
            fs::create_dir_all(&fd_dir).expect("fd dir");
            fs::write(d.path().join(pid).join("comm"), format!("{comm}\n")).expect("comm");
            for (fd, target) in *fds {
                symlink(target, fd_dir.join(fd)).expect("fd link");
            }
        }
        d
    }

    #[test]
    fn scan_finds_the_processes_with_the_group_open() -> Result<()> {
        let d = fake_proc(&[
            (
                "100",
                "qemu-system-x86",
                &[("0", "/dev/null"), ("17", "/dev/vfio/3")],
            ),
            ("200", "bash", &[("0", "/dev/pts/1")]),
            (
                "31",
                "other-vm",
                &[("9", "/dev/vfio/30"), ("10", "/dev/vfio/vfio")],
            ),
            (
                "7",
                "cdev-user",
                &[("4", "/dev/vfio/devices/vfio0 (deleted)")],
            ),
            ("self", "not-a-pid", &[("1", "/dev/vfio/3")]),
        ]);
        let nodes = [
            PathBuf::from("/dev/vfio/3"),
            PathBuf::from("/dev/vfio/devices/vfio0"),
        ];
        let s = scan(d.path(), &nodes)?;
        let got: Vec<(u32, Option<&str>)> = s
            .holders
            .iter()
            .map(|h| (h.pid, h.comm.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![(7, Some("cdev-user")), (100, Some("qemu-system-x86"))]
        );
        assert!(s.unreadable.is_empty());
        assert!(scan(d.path(), &[PathBuf::from("/dev/vfio/4")])?
            .holders
            .is_empty());
        Ok(())
    }

    #[test]
    fn scan_skips_processes_without_fd_dirs_and_names_a_missing_proc_dir() -> Result<()> {
        let d = fake_proc(&[("5", "held", &[("3", "/dev/vfio/1")])]);
        // A process that exited between listing and reading: no fd directory.
        fs::create_dir_all(d.path().join("6")).expect("pid dir");
        let s = scan(d.path(), &[PathBuf::from("/dev/vfio/1")])?;
        assert_eq!(s.holders.len(), 1);
        let missing = d.path().join("nope");
        match scan(&missing, &[PathBuf::from("/dev/vfio/1")]) {
            Err(Error::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        Ok(())
    }
}
