//! Errors of the shim's own set-up (control block, environment), none of which ever reaches
//! the CUDA program (the shim logs them once and degrades to a private, env-configured
//! state), and of a manager's checks of a block handed to it ([`Error::UnsafeBlock`], with
//! the [`BlockProblem`]).

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
    /// The control block could not be made as a sealed memfd.
    #[error("cannot create the shim control block as a sealed memfd (errno {errno}): Linux 3.17 or later with memfd sealing is needed; set GVM_SHIM_CONTROL to a file to use a file block instead")]
    CreateMemfd {
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A manager will not map this block: its owner could change its size under the mapping
    /// (which would kill the mapper with `SIGBUS`), or it is not a block at all.
    #[error("refusing to map the control block {object}: {problem}")]
    UnsafeBlock {
        /// The block: its path, or the descriptor handed over (with its inode).
        object: String,
        /// What is wrong with it.
        problem: BlockProblem,
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
    /// An arbitration block file that another user could control: refused, never mapped.
    #[error("refusing the arbitration block {}: {problem}; remove it (or fix its owner and mode 0600) to arbitrate", path.display())]
    UnsafeArbiter {
        /// The arbitration block path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
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

/// Why a manager refuses to map a control block ([`Error::UnsafeBlock`]). Each problem is
/// its own variant, so callers and tests can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockProblem {
    /// `fstat(2)` of the descriptor failed.
    #[error("fstat failed (errno {errno})")]
    Stat {
        /// The OS error number.
        errno: i32,
    },
    /// Not a regular file (a directory, socket, pipe, device...).
    #[error("it is a {kind}, not a regular file")]
    NotRegular {
        /// What it is.
        kind: &'static str,
    },
    /// The file cannot carry seals at all (`F_GET_SEALS` failed): not a memfd.
    #[error("it cannot be sealed (F_GET_SEALS: errno {errno}), so it is not a memfd: hand over a memfd sealed with F_SEAL_SHRINK and F_SEAL_GROW")]
    NotSealable {
        /// The OS error number (EINVAL for a file of a filesystem without seals).
        errno: i32,
    },
    /// A sealable file with neither size seal: its owner can shrink it at will.
    #[error("it is not sealed against shrinking or growing (seals {seals:#x}): hand over a memfd sealed with F_SEAL_SHRINK and F_SEAL_GROW")]
    Unsealed {
        /// The seals it has.
        seals: u32,
    },
    /// One of the two size seals is missing.
    #[error("it is sealed against {present} but not against {missing} (seals {seals:#x}): seal it with F_SEAL_SHRINK and F_SEAL_GROW")]
    SealMissing {
        /// The seals it has.
        seals: u32,
        /// The seal it lacks (`shrinking` or `growing`).
        missing: &'static str,
        /// The one it has.
        present: &'static str,
    },
    /// Sealed against writes: the manager could not drive it through a writable mapping.
    #[error("it is sealed against writing (seals {seals:#x}), so it cannot be driven")]
    WriteSealed {
        /// The seals it has.
        seals: u32,
    },
    /// Not exactly one block long.
    #[error("it is {size} bytes long, not {expected}")]
    WrongSize {
        /// Its size.
        size: u64,
        /// [`crate::control::FILE_LEN`].
        expected: u64,
    },
    /// A file block not owned by root (whose owner could truncate it).
    #[error("it belongs to uid {uid}, not root: only a root-owned file block is mapped (any other process hands over a sealed memfd)")]
    NotRootOwned {
        /// Its owner.
        uid: u32,
    },
    /// A root-owned file block that others may open.
    #[error("its mode {mode:04o} gives group or others access: a file block must be mode 0600")]
    OpenToOthers {
        /// Its permission bits.
        mode: u32,
    },
    /// The file sits on another filesystem than the directory scanned (a mount over it).
    #[error(
        "it is not on the filesystem of the directory that holds it (something is mounted over it)"
    )]
    MountedOver,
    /// `mmap(2)` failed.
    #[error("mmap failed (errno {errno})")]
    Map {
        /// The OS error number.
        errno: i32,
    },
    /// The bytes are not an initialised block of this layout.
    #[error("it holds no control block of layout {expected} (magic {magic:#x}, layout {version})")]
    BadBlock {
        /// The magic number found.
        magic: u64,
        /// The layout version found.
        version: u32,
        /// The layout this library speaks.
        expected: u32,
    },
}

impl BlockProblem {
    /// The OS error number, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BlockProblem::Stat { errno }
            | BlockProblem::NotSealable { errno }
            | BlockProblem::Map { errno } => Some(*errno),
            _ => None,
        }
    }
}

/// Result of the shim's set-up functions.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The OS error number, where there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::OpenControl { errno, .. }
            | Error::MapControl { errno, .. }
            | Error::CreateMemfd { errno, .. }
            | Error::OpenArbiter { errno, .. } => Some(*errno),
            Error::UnsafeBlock { problem, .. } => problem.errno(),
            Error::BadControlBlock { .. }
            | Error::BadArbiter { .. }
            | Error::UnsafeArbiter { .. }
            | Error::BadEnv { .. } => None,
        }
    }
}
