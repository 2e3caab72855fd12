//! Errors of the agent's library parts, each naming the path or port and
//! carrying the OS error.

use std::path::PathBuf;

/// What went wrong finding or opening the channel to the host, or reading the guest.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No virtio-serial port of that name exists.
    #[error("no virtio-serial port named '{name}' under {sysfs} (is the VM's channel configured, and virtio_console loaded?)")]
    PortNotFound {
        /// The port name looked for.
        name: String,
        /// The sysfs directory searched.
        sysfs: PathBuf,
    },
    /// A sysfs or proc file could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A sysfs `dev` file did not hold `major:minor`.
    #[error("{path} does not hold 'major:minor' (found '{found}')")]
    BadDevFile {
        /// The file.
        path: PathBuf,
        /// Its content, made log-safe.
        found: String,
    },
    /// The device node could not be created.
    #[error("could not create device node {path} ({major}:{minor}); run the agent as root or let udev create it")]
    Mknod {
        /// The node.
        path: PathBuf,
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The channel could not be opened.
    #[error("could not open {what}")]
    Open {
        /// The device path or vsock address.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// NVML could not be used.
    #[error("NVML is not usable: {reason}")]
    Nvml {
        /// NVML's complaint.
        reason: String,
    },
}

/// Result with [`AgentError`].
pub type Result<T> = std::result::Result<T, AgentError>;
