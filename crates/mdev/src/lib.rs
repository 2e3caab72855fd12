//! Client of the Linux VFIO-mdev sysfs ABI (mediated devices, i.e. vGPUs).
//!
//! A *mediated device* is a virtual PCI device carved out of a physical one by
//! its vendor driver; QEMU hands it to a guest through VFIO like a real
//! device. The kernel exposes the whole life cycle in sysfs:
//!
//! * `/sys/class/mdev_bus/<parent>` — one link per *parent* (a GPU's PCI
//!   function, or the `mtty` sample) whose driver registered with the mdev core;
//! * `<parent>/mdev_supported_types/<type>/` — one directory per *type* with
//!   `name`, `description` (both optional), `device_api`, `available_instances`,
//!   a `create` attribute and a `devices/` directory;
//! * `/sys/bus/mdev/devices/<uuid>` — one link per live *device*, with a
//!   `mdev_type` link back to its type, an `iommu_group` link and `remove`.
//!
//! Writing a UUID to `create` makes a device; writing `1` to `remove` drops it.
//! The kernel answers mistakes with bare errnos; this crate turns each into an
//! [`Error`] that names the parent, type or UUID, says what to do, and keeps the
//! errno ([`Error::errno`]).
//!
//! Every path is built through [`gvm_host_root::HostRoot`], so the same code
//! runs on `/`, on a temporary tree in tests, and on the simulated host.
//!
//! ```no_run
//! use gvm_host_root::HostRoot;
//! use gvm_mdev::MdevHost;
//!
//! let mdev = MdevHost::new(HostRoot::default());
//! for parent in mdev.parents()? {
//!     for t in &parent.types {
//!         println!("{} {} free={}", parent.name, t.id, t.available_instances);
//!     }
//! }
//! let dev = mdev.create("mtty", "mtty-2", None)?;
//! mdev.remove(&dev.uuid)?;
//! # Ok::<(), gvm_mdev::Error>(())
//! ```
//!
//! Modules:
//! - `attr`: reading sysfs attributes, directories and links, with errors that name the path;
//! - `error`: the errors, and the mapping from kernel errnos to them;
//! - `holders`: the processes holding a device's VFIO node open (a `/proc` fd scan);
//! - `host`: the mdev sysfs tree of one host, read and written through its root;
//! - `model`: the objects the ABI exposes: parents, their types, and live devices;
//! - `suggest`: "did you mean ...?" for mistyped parent names;
//! - `fixture` (tests only): a fake sysfs tree shaped like the kernel's.
#![deny(missing_docs)]

mod attr;
mod error;
mod holders;
mod host;
mod model;
mod suggest;

#[cfg(test)]
mod fixture;

pub use error::{map_create_error, map_remove_error, CreateTarget, Error, Result};
pub use holders::{scan as scan_holders, Holder, HolderScan};
pub use host::{MdevHost, DEFAULT_CREATE_TIMEOUT};
pub use model::{Device, MdevType, Parent};
pub use suggest::suggest;
pub use uuid::Uuid;
