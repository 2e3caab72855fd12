//! Errors of the shim's own set-up (control block, environment). None of them ever reaches
//! the CUDA program: the shim logs them once and degrades to a private, env-configured state.

use std::path::PathBuf;

/// What went wrong while setting the shim up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control block file could not be opened or created.
    #[error("cannot open the shim control block {path} (errno {errno}); make /dev/shm writable or point GVM_SHIM_CONTROL at a writable file")]
    OpenControl {
        /// The control block path.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The control block file could not be sized or mapped.
    #[error("cannot map the shim control block {path} (errno {errno}); check free space in its filesystem")]
    MapControl {
        /// The control block path.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but does not hold a control block of this layout.
    #[error("{path} is not a gvm-vgpu control block of layout {expected_version} (magic {magic:#x}, layout {version}); remove it or let gvm-vgpud recreate it")]
    BadControlBlock {
        /// The control block path.
        path: PathBuf,
        /// The magic number found.
        magic: u64,
        /// The layout version found.
        version: u32,
        /// The layout version this shim speaks.
        expected_version: u32,
    },
    /// The GPU's arbitration block could not be opened, created or mapped.
    #[error("cannot open the GPU arbitration block {path} (errno {errno}); make /dev/shm writable, point GVM_SHIM_ARBITER at a writable file, or set GVM_ARBITRATE=0")]
    OpenArbiter {
        /// The arbitration block path.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something other than an arbitration block of this layout.
    #[error("{path} is not a gvm-vgpu arbitration block of layout {expected_version} (magic {magic:#x}, layout {version}); remove it once no CUDA process uses the GPU")]
    BadArbiter {
        /// The arbitration block path.
        path: PathBuf,
        /// The magic number found.
        magic: u64,
        /// The layout version found.
        version: u32,
        /// The layout version this shim speaks.
        expected_version: u32,
    },
    /// An environment knob has a value the shim does not understand.
    #[error("ignoring {var}={value:?}: {reason}")]
    BadEnv {
        /// The variable name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
}

/// Result of the shim's set-up functions.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The OS error number, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::OpenControl { errno, .. }
            | Error::MapControl { errno, .. }
            | Error::OpenArbiter { errno, .. } => Some(*errno),
            Error::BadControlBlock { .. } | Error::BadArbiter { .. } | Error::BadEnv { .. } => None,
        }
    }
}
