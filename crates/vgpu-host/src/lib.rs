//! One notion of "a vGPU" over both kernel ABIs the host may offer.
//!
//! A vGPU is either a VFIO-mdev device (`gvm-mdev`: its UUID is the kernel's) or an NVIDIA
//! vGPU on an SR-IOV virtual function (`gvm-vf`: its UUID is the manager's own, kept with
//! its (PF, VF, type) in `gvm_vf::Assignments`, because a VF address is reused and is never
//! an identity). Everything above the kernel (the catalog, the CLI, the daemon) names a
//! vGPU by UUID and asks this crate where it lives: a [`Vgpu`] is the UUID, its
//! [`Backing`] and the kernel's name of its type, which is what the catalog binds for both
//! kinds (`mdev_name = "NVIDIA H100-20C"`).
//!
//! The code of each kernel ABI stays in its own crate; this one only joins them:
//! listing both kinds, finding one by UUID, creating one of a catalog type on an mdev
//! parent or on a free VF, removing one by UUID (a VF through the records'
//! compare-before-write), and the VFIO nodes through which a process holds one, for owner
//! discovery.
//!
//! Modules:
//! - `error`: the errors, wrapping each ABI's own;
//! - `host`: [`VgpuHost`], both trees of one host read and written through its root;
//! - `model`: [`Vgpu`], [`Backing`], [`Kind`], and the VF type offers of `types`;
//! - `offers`: pure computation of what each PF can still take, per type.
#![deny(missing_docs)]

mod error;
mod host;
mod model;
mod offers;

pub use error::{Error, Result};
pub use host::{ParentKind, VgpuHost};
pub use model::{Backing, Kind, VfTypeOffer, Vgpu};
pub use offers::vf_offers;
pub use uuid::Uuid;
