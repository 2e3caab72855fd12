//! Errors of the simulated host.
//!
//! [`FsError`] is what one file operation on the simulated tree fails with; each
//! variant carries the errno the real kernel returns in that case
//! ([`FsError::errno`]), which the FUSE layer hands back to the caller.
//! [`SimError`] is what setting up or tearing down the mount fails with.

use std::path::PathBuf;

/// A file operation on the simulated sysfs/debugfs tree failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The node does not exist (or no longer does: the device was removed, the process exited).
    #[error(
        "{path}: no such file or directory (it may have been removed; list its directory again)"
    )]
    NotFound {
        /// Path relative to the simulated root.
        path: String,
    },
    /// The attribute cannot be opened that way (read-only attribute opened for
    /// writing, write-only attribute opened for reading): `EACCES`, like kernfs.
    #[error("{path}: permission denied: the attribute is {what}")]
    Access {
        /// Path relative to the simulated root.
        path: String,
        /// "read-only" or "write-only".
        what: &'static str,
    },
    /// The value written is not one the attribute accepts: `EINVAL`.
    #[error("{path}: invalid value written: {reason}")]
    Invalid {
        /// Path relative to the simulated root.
        path: String,
        /// What was wrong, and what is accepted.
        reason: String,
    },
    /// A device with this UUID already exists under some parent: `EEXIST`.
    #[error("mdev {uuid} already exists (UUIDs are unique across all parents); remove it first or use another UUID")]
    Exists {
        /// The UUID, lower case.
        uuid: String,
    },
    /// The type has no free instance left: `EUSERS` (mdev core) or `ENOSPC` (mtty).
    #[error("type {type_id} of parent {parent} has no free instance; remove a device of this parent first")]
    Exhausted {
        /// The parent device name.
        parent: String,
        /// The type id.
        type_id: String,
        /// The errno the vendor driver gives.
        errno: i32,
    },
    /// The object is in use and the store cannot change it now: `EBUSY` (Linux's
    /// `sriov_numvfs_store` with VFs enabled; NVIDIA's VF vGPU files, see docs/vendor-vfio.md).
    #[error("{path}: busy: {reason}")]
    Busy {
        /// Path relative to the simulated root (or the object, for control commands).
        path: String,
        /// What holds it, and what to do first.
        reason: String,
    },
    /// The store is refused while a VM holds the object: `EPERM` (writing `0` to a held VF's
    /// `current_vgpu_type`, docs/vendor-vfio.md).
    #[error("{path}: operation not permitted: {reason}")]
    NotPermitted {
        /// Path relative to the simulated root.
        path: String,
        /// Why, and what to do first.
        reason: String,
    },
    /// A number out of the attribute's range: `ERANGE` (Linux's `sriov_numvfs_store` above
    /// `sriov_totalvfs`; `kstrtou32` overflow).
    #[error("{path}: value out of range: {reason}")]
    OutOfRange {
        /// Path relative to the simulated root.
        path: String,
        /// The range accepted.
        reason: String,
    },
    /// The owner process of a vGPU could not be started or signalled.
    #[error("owner process of vGPU {uuid}: {message}")]
    Process {
        /// The vGPU the owner belongs to.
        uuid: String,
        /// What failed.
        message: String,
        /// The errno of the failed system call.
        errno: i32,
    },
}

impl FsError {
    /// The errno the kernel returns for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound { .. } => libc::ENOENT,
            FsError::Access { .. } => libc::EACCES,
            FsError::Invalid { .. } => libc::EINVAL,
            FsError::Exists { .. } => libc::EEXIST,
            FsError::Busy { .. } => libc::EBUSY,
            FsError::NotPermitted { .. } => libc::EPERM,
            FsError::OutOfRange { .. } => libc::ERANGE,
            FsError::Exhausted { errno, .. } | FsError::Process { errno, .. } => *errno,
        }
    }

    pub(crate) fn invalid(path: &str, reason: impl Into<String>) -> Self {
        FsError::Invalid {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn busy(path: &str, reason: impl Into<String>) -> Self {
        FsError::Busy {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn out_of_range(path: &str, reason: impl Into<String>) -> Self {
        FsError::OutOfRange {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(path: &str) -> Self {
        FsError::NotFound {
            path: path.to_string(),
        }
    }
}

/// Mounting or serving the simulated host failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// DIR is already a FUSE mount: left behind by a run that crashed, or still served.
    #[error("{dir} is already a FUSE mount (stale from a crashed run, or another simulator serving it); unmount it with `umount -l {dir}` (or `fusermount3 -u {dir}`), or pass --force-unmount-stale", dir = .dir.display())]
    StaleMount {
        /// The mount point.
        dir: PathBuf,
    },
    /// Unmounting a stale mount failed.
    #[error("could not unmount the stale mount at {dir} (errno {errno}); try `umount -l {dir}` by hand", dir = .dir.display())]
    StaleUnmount {
        /// The mount point.
        dir: PathBuf,
        /// errno of umount2.
        errno: i32,
    },
    /// The process is not root: mounting through /dev/fuse directly needs root.
    #[error("gvm-vgpu-sim must run as root to mount FUSE directly through /dev/fuse (running as uid {uid}); rerun with sudo")]
    NotRoot {
        /// The effective uid.
        uid: u32,
    },
    /// /dev/fuse is missing or cannot be opened.
    #[error("/dev/fuse is not usable (errno {errno}); load the fuse module (`modprobe fuse`) or give the container /dev/fuse")]
    NoFuse {
        /// errno of opening /dev/fuse.
        errno: i32,
    },
    /// DIR does not exist or is not a directory.
    #[error("mount point {dir} is not a directory; create it with `mkdir -p {dir}`", dir = .dir.display())]
    NotADirectory {
        /// The mount point.
        dir: PathBuf,
    },
    /// The FUSE mount itself failed.
    #[error("mounting the simulated host at {dir} failed", dir = .dir.display())]
    Mount {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Unmounting at shutdown failed.
    #[error("unmounting the simulated host at {dir} failed; run `umount -l {dir}`", dir = .dir.display())]
    Unmount {
        /// The mount point.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_match_the_kernel() {
        assert_eq!(FsError::not_found("x").errno(), libc::ENOENT);
        assert_eq!(FsError::invalid("x", "y").errno(), libc::EINVAL);
        assert_eq!(FsError::Exists { uuid: "u".into() }.errno(), libc::EEXIST);
        assert_eq!(FsError::busy("x", "y").errno(), libc::EBUSY);
        assert_eq!(FsError::out_of_range("x", "y").errno(), libc::ERANGE);
        let held = FsError::NotPermitted {
            path: "x".into(),
            reason: "a VM holds it".into(),
        };
        assert_eq!(held.errno(), libc::EPERM);
        let e = FsError::Exhausted {
            parent: "mtty".into(),
            type_id: "mtty-2".into(),
            errno: libc::ENOSPC,
        };
        assert_eq!(e.errno(), libc::ENOSPC);
        assert!(e.to_string().contains("mtty-2"));
    }

    #[test]
    fn stale_mount_message_names_the_fix() {
        let e = SimError::StaleMount {
            dir: PathBuf::from("/tmp/sim"),
        };
        let s = e.to_string();
        assert!(s.contains("umount -l /tmp/sim"), "{s}");
        assert!(s.contains("fusermount3 -u /tmp/sim"), "{s}");
    }
}
