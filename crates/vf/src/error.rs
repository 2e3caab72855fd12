//! Errors of the VF vGPU client, and the mapping from the errnos of bad writes to them.
//!
//! NVIDIA documents that a bad write to `current_vgpu_type` fails, not with which errno
//! (docs/vendor-vfio.md). [`map_type_write_error`] is the one place that turns whatever errno
//! the driver answers into an [`Error`] naming the VF and the fix; it keeps the raw errno
//! ([`Error::errno`]) and is pure, so each mapping is unit-tested without a driver.

use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong talking to the VF vGPU sysfs ABI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `/sys/bus/pci/devices/<pf>` with `sriov_numvfs`.
    #[error("'{pf}' is not an SR-IOV physical function on this host{}; list them with `gvm-vgpu types`", did_you_mean(.suggestion))]
    PfNotFound {
        /// The address asked for.
        pf: String,
        /// The closest PF address, if one is close.
        suggestion: Option<String>,
    },

    /// A VF disappeared, or was never there (VFs disabled, e.g. after a reboot).
    #[error("VF {vf} does not exist (errno {errno}): enable the VFs of its GPU (`sriov-manage -e <PF>` or `gvm-vgpu` restore) and retry")]
    VfGone {
        /// The VF's address.
        vf: String,
        /// ENOENT or ENODEV.
        errno: i32,
    },

    /// The VF has no `nvidia/` directory.
    #[error("VF {vf} has no nvidia/ directory: NVIDIA's vGPU manager is not loaded for it (install and load nvidia-vgpu-mgr)")]
    NoVgpuManager {
        /// The VF's address.
        vf: String,
    },

    /// Pre-check: no VF of the PF lists the type as creatable.
    #[error("vGPU type '{wanted}' cannot be created on {pf} now; creatable there: {}. In homogeneous mode only the size already in use stays creatable: remove the other vGPUs of this GPU or choose one of those", list_or_none(.creatable))]
    TypeNotCreatable {
        /// The PF (or `any GPU`).
        pf: String,
        /// The type name asked for.
        wanted: String,
        /// The names that are creatable now.
        creatable: Vec<String>,
    },

    /// The driver refused the ID written (EINVAL by our reading; see docs/vendor-vfio.md).
    #[error("VF {vf} refused vGPU type ID {written:?} (errno {errno}): it is not in the VF's creatable_vgpu_types now (unknown ID, GPU full, or another size in homogeneous mode); see `gvm-vgpu types`")]
    Rejected {
        /// The VF's address.
        vf: String,
        /// What was written.
        written: String,
        /// The raw errno.
        errno: i32,
    },

    /// EBUSY or EPERM writing `current_vgpu_type`: a VM holds the VF, or it has a vGPU already.
    #[error("VF {vf} is busy ({}): a VM still holds it or it already carries a vGPU; stop the VM or remove that vGPU first (EPERM also means: run as root)", errno_name(*.errno))]
    VfBusy {
        /// The VF's address.
        vf: String,
        /// EBUSY or EPERM.
        errno: i32,
    },

    /// EBUSY writing a non-zero `sriov_numvfs` while VFs are enabled (Linux PCI core).
    #[error("{pf} already has {current} VF(s) enabled (EBUSY): write 0 to sriov_numvfs first, which destroys every vGPU of that GPU")]
    VfsAlreadyEnabled {
        /// The PF.
        pf: String,
        /// The VFs enabled now.
        current: u32,
        /// EBUSY.
        errno: i32,
    },

    /// EBUSY writing 0 to `sriov_numvfs`: a VF still has a vGPU or is in use (the driver
    /// refuses to take VFs away under a VM; see docs/vendor-vfio.md for where this comes from).
    #[error("{pf}'s VFs cannot be disabled (EBUSY): a VF still has a vGPU type set or is in use; stop the VMs and write 0 to each VF's nvidia/current_vgpu_type first")]
    VfsInUse {
        /// The PF.
        pf: String,
        /// EBUSY.
        errno: i32,
    },

    /// EACCES writing an attribute.
    #[error("permission denied writing {path} (EACCES): run as root")]
    PermissionDenied {
        /// The attribute.
        path: PathBuf,
        /// EACCES.
        errno: i32,
    },

    /// The manager's record and the VF disagree: someone else changed the VF.
    #[error("vGPU {uuid} was on VF {vf} with type {expected}, but the VF now holds {found}: another tool or a later assignment changed it, so it was left alone; `gvm-vgpu list` shows what is there")]
    Stale {
        /// The vGPU.
        uuid: Uuid,
        /// Its VF.
        vf: String,
        /// The type ID on record.
        expected: u32,
        /// The type ID found.
        found: u32,
    },

    /// No record of this vGPU.
    #[error("no VF vGPU {uuid} on record; list them with `gvm-vgpu list`")]
    NotAssigned {
        /// The vGPU.
        uuid: Uuid,
    },

    /// No free VF of the PF can take the type, although it is creatable.
    #[error("every VF of {pf} that offers '{wanted}' already carries a vGPU: remove one or enable more VFs")]
    NoFreeVf {
        /// The PF.
        pf: String,
        /// The type name.
        wanted: String,
    },

    /// A PCI address that is not `dddd:bb:ss.f`.
    #[error("{what} {value:?} is not a PCI address like 0000:41:00.0")]
    InvalidAddress {
        /// What it was meant to be.
        what: &'static str,
        /// What was given.
        value: String,
    },

    /// An attribute did not hold what the ABI promises.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// Any other failed write; the errno is in the source.
    #[error("writing {path} failed")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A failed read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The raw errno behind this error, where one came from the kernel or driver.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::VfGone { errno, .. }
            | Error::Rejected { errno, .. }
            | Error::VfBusy { errno, .. }
            | Error::VfsAlreadyEnabled { errno, .. }
            | Error::VfsInUse { errno, .. }
            | Error::PermissionDenied { errno, .. } => Some(*errno),
            Error::Write { source, .. } | Error::Read { source, .. } => source.raw_os_error(),
            Error::PfNotFound { .. } => Some(libc::ENOENT),
            _ => None,
        }
    }
}

/// Turn the failure of writing `written` to `<vf>/nvidia/current_vgpu_type` into an [`Error`].
pub fn map_type_write_error(err: io::Error, vf: &str, path: &Path, written: &[u8]) -> Error {
    let written = String::from_utf8_lossy(written).trim().to_string();
    match err.raw_os_error() {
        Some(errno) if errno == libc::EINVAL || errno == libc::ERANGE => Error::Rejected {
            vf: vf.to_string(),
            written,
            errno,
        },
        Some(errno) if errno == libc::EBUSY || errno == libc::EPERM => Error::VfBusy {
            vf: vf.to_string(),
            errno,
        },
        Some(errno) if errno == libc::ENOENT || errno == libc::ENODEV => Error::VfGone {
            vf: vf.to_string(),
            errno,
        },
        Some(errno) if errno == libc::EACCES => Error::PermissionDenied {
            path: path.to_path_buf(),
            errno,
        },
        _ => Error::Write {
            path: path.to_path_buf(),
            source: err,
        },
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EBUSY => "EBUSY",
        libc::EPERM => "EPERM",
        _ => "errno",
    }
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
