//! Client of NVIDIA's SR-IOV VF vGPU sysfs ABI (the "vendor-specific VFIO" path).
//!
//! On Ada, Hopper and Blackwell GPUs with NVIDIA's vGPU manager on kernels ≥ 6.8 a vGPU is
//! an SR-IOV virtual function (VF) of the GPU, not an mdev. The ABI (settled, with a source
//! for every behaviour and errno, in `docs/vendor-vfio.md`):
//!
//! * `/sys/bus/pci/devices/<PF>/sriov_numvfs` enables VFs, which appear as `<PF>/virtfnN`;
//! * each `/sys/bus/pci/devices/<VF>/nvidia/` holds `creatable_vgpu_types` (`ID : name`
//!   lines), `current_vgpu_type` (`0` or the ID; write an ID to create, `0` to remove),
//!   `vgpu_params`, `gpu_instance_id` and `placement_id`.
//!
//! A VF address is not a vGPU's identity: VFs are reused. [`Assignments`] gives each VF vGPU
//! a UUID of the manager's own, stored with its (PF, VF, type), and [`Assignments::remove`]
//! compares the VF's state with the record before writing `0`, so a stale remove cannot clear a
//! later assignment.
//!
//! Every path is built through [`gvm_host_root::HostRoot`], so the same code runs on `/`, on a
//! temporary tree in tests and on the simulated host.
//!
//! Modules:
//! - `assign`: the manager's records, UUID → (PF, VF, type), kept under `/etc/gvm-vgpu`;
//! - `error`: the errors, and the mapping from the errnos of bad writes to them;
//! - `host`: the PF/VF sysfs tree of one host, read and written through its root;
//! - `model`: PFs, VFs, vGPU types and the state of one VF;
//! - `parse`: pure parsers of `creatable_vgpu_types`, `current_vgpu_type` and PCI addresses.
#![deny(missing_docs)]

mod assign;
mod error;
mod host;
mod model;
mod parse;

pub use assign::{Assignment, Assignments};
pub use error::{map_type_write_error, Error, Result};
pub use host::VfHost;
pub use model::{Pf, Vf, VfState, VgpuType};
pub use parse::{parse_creatable, parse_current, valid_pci_address};
pub use uuid::Uuid;
