//! Errors of the gcgroup client, and the one mapping from errnos to them.
//!
//! GVM's debugfs files answer with three errnos that matter: `ENOENT` (the
//! process, or its registration of that GPU, went away — a normal event, not a
//! bug), `EINVAL` (the value was rejected) and `EACCES`/`EPERM` (not root). All
//! others are kept with their errno. Every variant names the file it is about,
//! except those that are about a pid or a value itself.

use std::io;
use std::path::PathBuf;

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong talking to a gcgroup backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// ENOENT: the process exited or unregistered the GPU; drop it and carry on.
    #[error(
        "process {pid} is gone from the GVM tree (it exited or released the GPU): nothing to do"
    )]
    ProcessGone {
        /// The process id.
        pid: u32,
    },

    /// EINVAL: the kernel rejected the value written.
    #[error("the kernel rejected {value:?} written to {file} (EINVAL): write a decimal number in the knob's range")]
    InvalidValue {
        /// The knob written.
        file: PathBuf,
        /// What was written, without its newline.
        value: String,
    },

    /// EACCES or EPERM.
    #[error("permission denied on {file} (errno {errno}): run as root")]
    PermissionDenied {
        /// The file read or written.
        file: PathBuf,
        /// The errno (EACCES or EPERM).
        errno: i32,
    },

    /// A file read did not hold what the ABI promises.
    #[error("cannot parse {file}: unexpected content {content:?}")]
    Parse {
        /// The file read.
        file: PathBuf,
        /// The offending content (for line-oriented files, the offending line).
        content: String,
    },

    /// The `processes/` directory does not exist: no GVM driver, or debugfs not mounted.
    #[error("the GVM gcgroup tree {dir} does not exist: load GVM's nvidia-uvm module and mount debugfs (`mount -t debugfs none /sys/kernel/debug`), or use the shim backend")]
    NotPresent {
        /// The missing `processes/` directory.
        dir: PathBuf,
    },

    /// The gcgroup directory exists but one knob does not: the GVM driver is older than this client.
    #[error("{file} does not exist although its gcgroup does: this GVM driver lacks the knob; update the GVM driver")]
    MissingKnob {
        /// The missing knob.
        file: PathBuf,
    },

    /// A priority outside 0..=16.
    #[error("compute priority {value:?} is out of range: use 0 (highest, 512 ms slices) to 16 (lowest, 8 us slices)")]
    InvalidPriority {
        /// What was given.
        value: String,
    },

    /// Any other I/O failure; the errno is in the source.
    #[error("I/O on {file} failed")]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// The I/O error, with its errno.
        #[source]
        source: io::Error,
    },

    /// A failure inside a non-file backend (e.g. the CUDA shim registry).
    #[error("gcgroup backend '{backend}' failed")]
    Backend {
        /// The backend's [`crate::GcgroupBackend::name`].
        backend: &'static str,
        /// What went wrong inside it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The errno behind this error, if it came from the kernel (or file system).
    ///
    /// [`Error::ProcessGone`], [`Error::NotPresent`] and [`Error::MissingKnob`]
    /// report `ENOENT`, [`Error::InvalidValue`] `EINVAL`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::ProcessGone { .. } | Error::NotPresent { .. } | Error::MissingKnob { .. } => {
                Some(libc::ENOENT)
            }
            Error::InvalidValue { .. } => Some(libc::EINVAL),
            Error::PermissionDenied { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Parse { .. } | Error::InvalidPriority { .. } | Error::Backend { .. } => None,
        }
    }

    /// Whether this only means the process (or its GPU registration) went away.
    pub fn is_process_gone(&self) -> bool {
        matches!(self, Error::ProcessGone { .. })
    }
}

/// Map an I/O error on `file` of process `pid` to an [`Error`].
///
/// `value` is what was written (`None` for reads). `ENOENT` always maps to
/// [`Error::ProcessGone`] here; [`crate::GvmTree`] refines it into
/// [`Error::NotPresent`] or [`Error::MissingKnob`] when the tree or the
/// gcgroup directory shows that the process is not the one missing.
pub fn map_io_error(err: io::Error, pid: u32, file: PathBuf, value: Option<&str>) -> Error {
    match (err.raw_os_error(), value) {
        (Some(libc::ENOENT), _) => Error::ProcessGone { pid },
        (Some(libc::EINVAL), Some(value)) => Error::InvalidValue {
            file,
            value: value.trim_end().to_string(),
        },
        (Some(errno @ (libc::EACCES | libc::EPERM)), _) => Error::PermissionDenied { file, errno },
        _ => Error::Io { file, source: err },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn map(errno: i32, value: Option<&str>) -> Error {
        map_io_error(
            io::Error::from_raw_os_error(errno),
            42,
            Path::new("/p/42/0/memory.limit").to_path_buf(),
            value,
        )
    }

    #[test]
    fn enoent_is_process_gone() {
        let e = map(libc::ENOENT, Some("1\n"));
        assert!(e.is_process_gone());
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("process 42 is gone"), "{e}");
    }

    #[test]
    fn einval_on_write_is_invalid_value_naming_file_and_value() {
        let e = map(libc::EINVAL, Some("-1\n"));
        match &e {
            Error::InvalidValue { file, value } => {
                assert_eq!(file, Path::new("/p/42/0/memory.limit"));
                assert_eq!(value, "-1");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn einval_on_read_keeps_the_errno() {
        let e = map(libc::EINVAL, None);
        assert!(matches!(e, Error::Io { .. }));
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn eacces_and_eperm_say_run_as_root() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = map(errno, None);
            assert_eq!(e.errno(), Some(errno));
            let msg = e.to_string();
            assert!(
                msg.contains("run as root") && msg.contains("memory.limit"),
                "{msg}"
            );
        }
    }

    #[test]
    fn other_errnos_are_kept() {
        let e = map(libc::EIO, Some("5\n"));
        assert!(matches!(e, Error::Io { ref file, .. } if file.ends_with("memory.limit")));
        assert_eq!(e.errno(), Some(libc::EIO));
    }
}
