//! The one error type of gvm-libvirt.
//!
//! Every variant names what it was about (the libvirt URI, the domain, the vGPU UUID, the file)
//! and keeps the cause: libvirt's own error code and message, the mdev errno through
//! [`gvm_mdev::Error`] or [`gvm_vf::Error`], or the `std::io::Error`. Messages say what to do next; causes are only in
//! `#[source]`, so a binary prints the chain once.

use std::path::PathBuf;

use uuid::Uuid;

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A libvirt failure as libvirt reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libvirt error {code}: {message}")]
pub struct LibvirtError {
    /// libvirt's `virErrorNumber` (e.g. 42 = `VIR_ERR_NO_DOMAIN`).
    pub code: i32,
    /// libvirt's message.
    pub message: String,
}

impl LibvirtError {
    /// `VIR_ERR_NO_DOMAIN` of `virErrorNumber` (libvirt's virterror.h).
    pub const NO_DOMAIN: i32 = 42;
    /// `VIR_ERR_NO_DOMAIN_METADATA` of `virErrorNumber` (virterror.h).
    pub const NO_DOMAIN_METADATA: i32 = 80;
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libvirt's client library could not be loaded (not installed, or not libvirt): nothing
    /// that talks to libvirtd works in this process; everything else does.
    #[error("cannot load libvirt's client library {library}: install libvirt0 (`apt install libvirt0`), or work without libvirt: plain QEMU through `gvm-vgpu qemu-args`, and gvm-vgpud with `--no-libvirt`")]
    LibraryMissing {
        /// The file asked for (`libvirt.so.0`, or the value of `GVM_LIBVIRT_LIBRARY`).
        library: String,
        /// The loader's reason (`dlopen`'s or `dlsym`'s message).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Opening the libvirt connection failed.
    #[error("cannot connect to libvirt at {uri}: is libvirtd running (`virsh -c {uri} version`), and may this user use it?")]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: LibvirtError,
    },

    /// No domain of this name.
    #[error("libvirt at {uri} has no domain named '{domain}'; list domains with `virsh -c {uri} list --all`")]
    DomainNotFound {
        /// The URI.
        uri: String,
        /// The name asked for.
        domain: String,
    },

    /// A libvirt call on a domain failed.
    #[error("libvirt could not {op} on domain '{domain}'")]
    Domain {
        /// What was being done (`attach the hostdev of vGPU …`).
        op: String,
        /// The domain.
        domain: String,
        /// libvirt's error.
        #[source]
        source: LibvirtError,
    },

    /// A libvirt call on the connection failed.
    #[error("libvirt at {uri} could not {op}")]
    Libvirt {
        /// What was being done.
        op: String,
        /// The URI.
        uri: String,
        /// libvirt's error.
        #[source]
        source: LibvirtError,
    },

    /// XML that could not be used.
    #[error("invalid {what}: {detail}")]
    Xml {
        /// Which XML (`domain XML`, `mdev hostdev`, …).
        what: String,
        /// What is wrong with it.
        detail: String,
    },

    /// Neither attach nor detach: the domain does not have this vGPU.
    #[error("domain '{domain}' has no vGPU {uuid} (neither an mdev hostdev nor gvm metadata); `virsh dumpxml {domain}` shows what it has")]
    NotAttached {
        /// The domain.
        domain: String,
        /// The vGPU.
        uuid: Uuid,
    },

    /// A mediated-device operation failed (the errno is inside).
    #[error("cannot {op} vGPU {uuid}")]
    Mdev {
        /// What was being done (`create`, `remove`, `look up`).
        op: &'static str,
        /// The vGPU.
        uuid: Uuid,
        /// The mdev client's error, with the errno.
        #[source]
        source: gvm_mdev::Error,
    },

    /// A live detach took the vGPU from the domain, but a process still held it open after
    /// the grace period, so it was not removed (that would block uninterruptibly).
    #[error("detached vGPU {uuid} from domain {domain}, but did not remove it: it is still held open by {}, {}s after the detach (the guest may not have released the device yet). Remove it once it is free with `gvm-vgpu remove {uuid}`, or `gvm-vgpu remove --wait {uuid}` to wait for the holder (that wait cannot be interrupted)", holder_list(.holders), .waited_s)]
    DetachedButHeld {
        /// The domain.
        domain: String,
        /// The vGPU, still present.
        uuid: Uuid,
        /// Who holds it.
        holders: Vec<gvm_mdev::Holder>,
        /// How long the detach waited for them to let go, in seconds.
        waited_s: u64,
    },

    /// Listing mdev parents failed.
    #[error("cannot list the host's mdev parents")]
    MdevList {
        /// The mdev client's error.
        #[source]
        source: gvm_mdev::Error,
    },

    /// The vGPU type catalog could not be loaded or has no such type.
    #[error("cannot use vGPU type '{type_name}' from the catalog; `gvm-vgpu types` lists the known types")]
    Catalog {
        /// The type asked for.
        type_name: String,
        /// The catalog's error.
        #[source]
        source: gvm_catalog::Error,
    },

    /// No parent can host a new vGPU of the type.
    #[error(transparent)]
    NoPlacement(#[from] gvm_catalog::placement::PlacementError),

    /// An operation on an SR-IOV VF vGPU or its record failed (the errno is inside).
    #[error("cannot {op} VF vGPU {uuid}")]
    Vf {
        /// What was being done (`find`, `remove`, `set the type of`).
        op: &'static str,
        /// The vGPU.
        uuid: Uuid,
        /// The VF client's error: it names the VF and the fix.
        #[source]
        source: gvm_vf::Error,
    },

    /// A UUID that names neither an mdev nor a VF vGPU on record (`attach --uuid`).
    #[error("vGPU {uuid} does not exist: it is neither an mdev (/sys/bus/mdev/devices/{uuid}) nor a VF vGPU on record; `gvm-vgpu list` shows the vGPUs, `gvm-vgpu attach DOMAIN --type T` creates one")]
    NoSuchVgpu {
        /// The UUID asked for.
        uuid: Uuid,
    },

    /// A VF vGPU's VF holds another type than its record (hook `prepare`, `attach`): someone
    /// else changed it, and gvm-vgpu will not reset a VF it does not own.
    #[error("VF vGPU {uuid} is recorded as type {expected} ({type_name}) on VF {vf}, but that VF now holds type {found}: another tool changed it, so it was left alone. If nothing uses the VF, clear it (`echo 0 > /sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type`) and retry; otherwise `gvm-vgpu detach` this vGPU and attach another")]
    VfTypeChanged {
        /// The vGPU.
        uuid: Uuid,
        /// Its VF.
        vf: String,
        /// The type ID on record.
        expected: u32,
        /// The type name on record.
        type_name: String,
        /// The type ID found on the VF.
        found: u32,
    },

    /// A domain names a VF vGPU (its hostdev carries the vGPU's alias) that has no record.
    #[error("domain '{domain}' has VF {vf} as vGPU {uuid}, but no VF vGPU {uuid} is on record (`gvm-vgpu list` shows those there are): create it again with `gvm-vgpu create --type T --uuid {uuid}`, or `gvm-vgpu detach {domain} --uuid {uuid}`")]
    VfNotRecorded {
        /// The domain.
        domain: String,
        /// The vGPU.
        uuid: Uuid,
        /// The VF its hostdev names.
        vf: String,
    },

    /// The vGPU is missing and nothing says how to create it (hook `prepare`).
    #[error("vGPU {uuid} of domain '{domain}' does not exist and has no definition: create it (`gvm-vgpu create --uuid {uuid} --type T`), define it in {definition}, or attach it with `gvm-vgpu attach {domain} --type T` which records its type")]
    NoDefinition {
        /// The domain.
        domain: String,
        /// The vGPU.
        uuid: Uuid,
        /// The definition file that was looked for.
        definition: PathBuf,
    },

    /// A definition file exists but cannot be used.
    #[error("cannot use the vGPU definition {path}: fix or remove the file")]
    Definition {
        /// The file.
        path: PathBuf,
        /// Why (read error or JSON error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Starting the watch thread failed.
    #[error("cannot start the libvirt event thread")]
    Thread(#[source] std::io::Error),
}

impl Error {
    /// libvirt's error code, when libvirt reported the failure.
    pub fn libvirt_code(&self) -> Option<i32> {
        match self {
            Error::Connect { source, .. }
            | Error::Domain { source, .. }
            | Error::Libvirt { source, .. } => Some(source.code),
            _ => None,
        }
    }

    /// The errno of the mdev operation, when the kernel (or simulated host) reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Mdev { source, .. } | Error::MdevList { source } => source.errno(),
            Error::Vf { source, .. } => source.errno(),
            Error::DetachedButHeld { .. } => Some(libc::EBUSY),
            Error::NoSuchVgpu { .. } => Some(libc::ENOENT),
            _ => None,
        }
    }
}

/// `pid 1 (qemu), pid 2 (qemu)` for a message.
fn holder_list(holders: &[gvm_mdev::Holder]) -> String {
    let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
    names.join(", ")
}
