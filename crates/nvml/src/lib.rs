//! NVML for NVIDIA vGPU hosts: the vGPU scheduler, heterogeneous mode and per-vGPU memory of
//! a GPU, by PCI address.
//!
//! On a host with NVIDIA's vGPU manager, the driver time-slices the vGPUs of each GPU under
//! one of three policies (best effort, equal share, fixed share) with a fixed or adaptive
//! time slice; NVML reads and sets that per GPU, but sets it only while no VM runs on the GPU.
//! Heterogeneous mode (vGPUs of mixed sizes with placements on one GPU) is a runtime setting
//! of the GPU set the same way and cleared when its VFs are re-enabled. NVML also reports the
//! active vGPU instances, one per running VM's vGPU, with the framebuffer each uses, and the
//! utilisation of the processes in the guests.
//!
//! Without NVML (no `libnvidia-ml.so.1`) [`Nvml::open`] returns [`Error::Unavailable`] and
//! callers go on without these. On a GPU host without the vGPU manager NVML refuses the vGPU
//! calls with `NVML_ERROR_NOT_SUPPORTED`, which comes back as [`Error::Call`] naming the GPU,
//! the call and the code.
//!
//! Calls go through nvml-wrapper's safe API where it covers them and its raw bindings
//! otherwise (`sys`). `docs/vendor-vfio.md` ("NVML") lists each call, its struct version and
//! its documented errors.
//!
//! Modules:
//! - `code`: NVML return codes by name, and the fix for each;
//! - `error`: the errors;
//! - `host`: the library handle, GPUs by PCI address and their calls;
//! - `pci`: PCI addresses in Linux's and NVML's forms;
//! - `scheduler`: the scheduler's data types and the pure mapping from and to the project's
//!   policies;
//! - `sys`: the raw calls, all of the `unsafe`;
//! - `vgpu`: active vGPU instances and their guests' process utilisation.
#![deny(missing_docs)]

mod code;
mod error;
mod host;
mod pci;
mod scheduler;
mod sys;
mod vgpu;

pub use code::ReturnCode;
pub use error::{Error, Result};
pub use host::{Gpu, Nvml, LIBRARY};
pub use pci::normalise_pci;
pub use scheduler::{
    check_setting, project_policy, setting_for, ArrMode, ProjectPolicy, SchedulerCapabilities,
    SchedulerLog, SchedulerLogEntry, SchedulerPolicy, SchedulerSetting, SchedulerState,
    SettingError, SliceSetting,
};
pub use sys::HETEROGENEOUS_MODE_V1;
pub use vgpu::{VgpuInstance, VgpuProcessSample, VmIdKind};
