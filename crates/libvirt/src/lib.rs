//! libvirt and plain-QEMU integration of gvm-vgpu.
//!
//! A vGPU is a VFIO *mediated device* (mdev): the kernel creates it from a parent GPU and QEMU
//! opens it like a PCI device (`-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`).
//! libvirt describes that with an mdev `<hostdev>` in the domain XML, but never creates the
//! device itself. An SR-IOV VF vGPU (`gvm_vf`) is a PCI `<hostdev>` of its VF instead, whose
//! vGPU type must be set before the domain starts. This crate closes the gaps:
//!
//! - [`domain_xml`] (pure): read a domain XML (name, UUID, mdev and VF hostdevs, gvm's `<metadata>`
//!   element in namespace [`NAMESPACE`], agent channels) and build the XML fragments;
//! - [`connection`]: a thin typed layer over one libvirt connection: look
//!   domains up, attach/detach devices with explicit impact flags, write the metadata, list
//!   which domain holds which vGPU ([`Connection::bindings`]);
//! - [`attach`](mod@attach): `gvm-vgpu attach/detach`: create or reuse a vGPU, attach its hostdev, record
//!   it in the metadata, and undo all of it;
//! - [`watch`](mod@watch): follow domain lifecycle events (suspended, resumed, stopped, …) on a thread,
//!   reconnecting when libvirtd restarts — what the daemon uses to freeze a paused domain's vGPUs;
//! - [`hook`] and the `gvm-vgpu-hook` binary: libvirt's qemu hook, which creates a domain's
//!   missing vGPUs (and gives its VF vGPUs their type) before it starts and removes transient
//!   ones after it stops, without calling libvirt;
//! - [`events`] (always compiled): what libvirt says about domains as plain data: lifecycle
//!   events, states, and which domain is bound to which vGPU;
//! - [`uri`]: which libvirt URI to use (`--connect`, `LIBVIRT_DEFAULT_URI`, `qemu:///system`);
//! - `error`: the one error type of the crate, naming what it was about and keeping the cause;
//! - `sys` (feature `connect`): the only unsafe code: libvirt's C functions, loaded at run time
//!   from `libvirt.so.0` (never linked), libvirt's event loop and the event callbacks.
//!
//! Nothing links libvirt: a process loads it on its first libvirt operation, and on a host
//! without it (no `libvirt0` package) that operation fails with [`Error::LibraryMissing`]
//! while everything else works. `GVM_LIBVIRT_LIBRARY` names another file to load instead of
//! `libvirt.so.0` (a libvirt outside the linker's path; tests use a missing one).
//!
//! Every host path goes through [`gvm_host_root::HostRoot`]; libvirt itself is reached only by
//! URI ([`connection::resolve_uri`]).
#![deny(missing_docs)]

#[cfg(feature = "connect")]
pub mod attach;
#[cfg(feature = "connect")]
pub mod connection;
pub mod domain_xml;
mod error;
pub mod events;
pub mod hook;
#[cfg(feature = "connect")]
mod sys;
pub mod uri;
#[cfg(feature = "connect")]
pub mod watch;

#[cfg(feature = "connect")]
pub use attach::{
    attach, detach, detach_waiting, AttachRequest, Attached, DetachHow, Detached, Target,
    DETACH_GRACE,
};
#[cfg(feature = "connect")]
pub use connection::{Apply, Connection};
pub use domain_xml::{DomainInfo, MetaVgpu, AGENT_PORT_NAME, NAMESPACE, NAMESPACE_KEY};
pub use error::{Error, LibvirtError, Result};
pub use events::{DomainBinding, DomainEvent, DomainState, EventKind, WatchEvent};
#[cfg(feature = "connect")]
pub use sys::{load_library, LIBRARY, LIBRARY_ENV};
#[cfg(feature = "connect")]
pub use watch::{watch, watch_with, WatchHandle, WatchOptions};

/// An error and its causes on one line (`a: b: c`): [`gvm_error_chain::error_chain`], under
/// the name this crate's callers already use. New code calls `gvm_error_chain` directly.
pub use gvm_error_chain::error_chain as report;
