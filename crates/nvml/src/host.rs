//! The library handle and the GPUs reached through it by PCI address.

use std::ffi::OsStr;
use std::path::Path;

use nvml_wrapper::enum_wrappers::vgpu::VmId;
use nvml_wrapper::error::NvmlError as WrapperError;
use nvml_wrapper::struct_wrappers::device::{VgpuSchedulerSetParams, VgpuSchedulerSetState};
use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::{
    nvmlEnableState_enum_NVML_FEATURE_DISABLED as FEATURE_DISABLED,
    nvmlEnableState_enum_NVML_FEATURE_ENABLED as FEATURE_ENABLED,
};

use crate::code::ReturnCode;
use crate::error::{Error, Result};
use crate::pci::normalise_pci;
use crate::scheduler::{
    check_setting, setting_for, ProjectPolicy, SchedulerCapabilities, SchedulerLog,
    SchedulerPolicy, SchedulerSetting, SchedulerState, SliceSetting,
};
use crate::sys::{self, RawError};
use crate::vgpu::{VgpuInstance, VgpuProcessSample, VmIdKind};

/// The library `Nvml::open` loads: the driver's runtime library (the unversioned
/// `libnvidia-ml.so` nvml-wrapper defaults to ships only with development packages).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// An initialised NVML.
pub struct Nvml {
    inner: nvml_wrapper::Nvml,
    library: String,
}

impl Nvml {
    /// Loads and initialises `libnvidia-ml.so.1`. [`Error::Unavailable`] when the host has
    /// none.
    pub fn open() -> Result<Nvml> {
        Nvml::load(OsStr::new(LIBRARY), LIBRARY.to_owned())
    }

    /// Loads and initialises the library at `path` (tests load a stand-in this way).
    pub fn open_at(path: &Path) -> Result<Nvml> {
        Nvml::load(path.as_os_str(), path.display().to_string())
    }

    fn load(path: &OsStr, library: String) -> Result<Nvml> {
        match nvml_wrapper::Nvml::builder().lib_path(path).init() {
            Ok(inner) => Ok(Nvml { inner, library }),
            Err(WrapperError::LibloadingError(e)) => Err(Error::Unavailable {
                library,
                reason: e.to_string(),
            }),
            Err(WrapperError::FailedToLoadSymbol(_)) => Err(Error::MissingCall {
                library,
                call: "nvmlInit_v2",
            }),
            Err(e) => Err(Error::Init {
                library,
                code: ReturnCode::of_wrapper(e).unwrap_or(ReturnCode::UNKNOWN),
            }),
        }
    }

    /// The library this handle loaded.
    pub fn library(&self) -> &str {
        &self.library
    }

    fn system_error(&self, call: &'static str, e: WrapperError) -> Error {
        match e {
            WrapperError::FailedToLoadSymbol(_) => Error::MissingCall {
                library: self.library.clone(),
                call,
            },
            e => Error::System {
                call,
                code: ReturnCode::of_wrapper(e).unwrap_or(ReturnCode::UNKNOWN),
            },
        }
    }

    /// The NVIDIA driver's version (`nvmlSystemGetDriverVersion`).
    pub fn driver_version(&self) -> Result<String> {
        self.inner
            .sys_driver_version()
            .map_err(|e| self.system_error("nvmlSystemGetDriverVersion", e))
    }

    /// The PCI addresses of the GPUs NVML sees, in NVML's order, in Linux's form.
    pub fn gpus(&self) -> Result<Vec<String>> {
        let count = self
            .inner
            .device_count()
            .map_err(|e| self.system_error("nvmlDeviceGetCount_v2", e))?;
        (0..count)
            .map(|i| {
                let device = self
                    .inner
                    .device_by_index(i)
                    .map_err(|e| self.system_error("nvmlDeviceGetHandleByIndex_v2", e))?;
                let info = device
                    .pci_info()
                    .map_err(|e| self.system_error("nvmlDeviceGetPciInfo_v3", e))?;
                normalise_pci(&info.bus_id).ok_or_else(|| Error::Malformed {
                    pci: format!("#{i}"),
                    call: "nvmlDeviceGetPciInfo_v3",
                    detail: format!("bus ID '{}'", info.bus_id),
                })
            })
            .collect()
    }

    /// The GPU at PCI address `pci` (`0000:3c:00.0`; NVML's `00000000:3C:00.0` too).
    pub fn gpu(&self, pci: &str) -> Result<Gpu<'_>> {
        let pci = normalise_pci(pci).ok_or_else(|| Error::BadAddress {
            address: pci.to_owned(),
        })?;
        match self.inner.device_by_pci_bus_id(pci.as_str()) {
            Ok(device) => Ok(Gpu {
                device,
                pci,
                library: &self.library,
            }),
            Err(e) => Err(call_error(
                &self.library,
                &pci,
                "nvmlDeviceGetHandleByPciBusId_v2",
                e,
            )),
        }
    }
}

/// The error of a wrapped call about one GPU.
fn call_error(library: &str, pci: &str, call: &'static str, e: WrapperError) -> Error {
    if let WrapperError::FailedToLoadSymbol(_) = e {
        return Error::MissingCall {
            library: library.to_owned(),
            call,
        };
    }
    let detail = e.to_string();
    match ReturnCode::of_wrapper(e) {
        Some(code) => Error::Call {
            pci: pci.to_owned(),
            call,
            code,
        },
        None => Error::Malformed {
            pci: pci.to_owned(),
            call,
            detail,
        },
    }
}

/// One GPU, reached by PCI address.
pub struct Gpu<'a> {
    device: Device<'a>,
    pci: String,
    library: &'a str,
}

impl Gpu<'_> {
    /// Its PCI address, Linux's form.
    pub fn pci(&self) -> &str {
        &self.pci
    }

    fn error(&self, call: &'static str, e: WrapperError) -> Error {
        call_error(self.library, &self.pci, call, e)
    }

    fn raw_error(&self, call: &'static str, e: RawError) -> Error {
        match e {
            RawError::Missing => Error::MissingCall {
                library: self.library.to_owned(),
                call,
            },
            RawError::Code(code) => Error::Call {
                pci: self.pci.clone(),
                call,
                code,
            },
        }
    }

    /// A refusal NVML documents for "a vGPU instance exists on the device": the clearer
    /// [`Error::VmsRunning`] when instances do exist, else the code as it is.
    fn refusal(&self, call: &'static str, code: ReturnCode) -> Error {
        match self.active_instances() {
            Ok(active) if !active.is_empty() => Error::VmsRunning {
                pci: self.pci.clone(),
                call,
                code,
                active: active.len(),
            },
            _ => Error::Call {
                pci: self.pci.clone(),
                call,
                code,
            },
        }
    }

    /// Its marketing name (`nvmlDeviceGetName`).
    pub fn name(&self) -> Result<String> {
        self.device
            .name()
            .map_err(|e| self.error("nvmlDeviceGetName", e))
    }

    /// The vGPU scheduler in force (`nvmlDeviceGetVgpuSchedulerState`).
    pub fn scheduler_state(&self) -> Result<SchedulerState> {
        sys::scheduler_state(&self.device)
            .map_err(|e| self.raw_error("nvmlDeviceGetVgpuSchedulerState", e))
    }

    /// What the GPU's vGPU scheduler can be set to (`nvmlDeviceGetVgpuSchedulerCapabilities`).
    pub fn scheduler_capabilities(&self) -> Result<SchedulerCapabilities> {
        let c = self
            .device
            .vgpu_scheduler_capabilities()
            .map_err(|e| self.error("nvmlDeviceGetVgpuSchedulerCapabilities", e))?;
        Ok(SchedulerCapabilities {
            supported: c
                .supported_schedulers
                .iter()
                .filter_map(|p| SchedulerPolicy::from_nvml(*p))
                .collect(),
            min_timeslice_ns: c.min_time_slice,
            max_timeslice_ns: c.max_time_slice,
            arr_supported: c.is_arr_mode_supported,
            min_frequency: c.min_freq_for_arr,
            max_frequency: c.max_freq_for_arr,
            min_avg_factor: c.min_avg_factor_for_arr,
            max_avg_factor: c.max_avg_factor_for_arr,
        })
    }

    /// The scheduler's software-runlist log (`nvmlDeviceGetVgpuSchedulerLog`).
    pub fn scheduler_log(&self) -> Result<SchedulerLog> {
        sys::scheduler_log(&self.device)
            .map_err(|e| self.raw_error("nvmlDeviceGetVgpuSchedulerLog", e))
    }

    /// Sets the vGPU scheduler (`nvmlDeviceSetVgpuSchedulerState`). NVML allows it only while
    /// no VM runs on the GPU: [`Error::VmsRunning`] otherwise.
    pub fn set_scheduler_state(&self, setting: &SchedulerSetting) -> Result<()> {
        const CALL: &str = "nvmlDeviceSetVgpuSchedulerState";
        let (avg_factor, frequency_or_timeslice) = match setting.slice {
            SliceSetting::DriverDefault => (None, 0),
            SliceSetting::Fixed { timeslice_ns } => (None, timeslice_ns),
            SliceSetting::Adaptive {
                avg_factor,
                frequency,
            } => (Some(avg_factor), frequency),
        };
        let state = VgpuSchedulerSetState {
            scheduler_policy: setting.policy.to_nvml(),
            enable_arr_mode: setting.slice.arr_mode().to_nvml(),
            scheduler_params: VgpuSchedulerSetParams {
                avg_factor,
                frequency_or_timeslice,
            },
        };
        match self.device.set_vgpu_scheduler_state(state) {
            Ok(()) => Ok(()),
            Err(WrapperError::NotSupported) => Err(self.refusal(CALL, ReturnCode::NOT_SUPPORTED)),
            Err(e) => Err(self.error(CALL, e)),
        }
    }

    /// Sets the scheduler to the project's policy: mapped with [`setting_for`], checked
    /// against the GPU's capabilities, then set. Returns what was set.
    pub fn apply_policy(&self, project: ProjectPolicy) -> Result<SchedulerSetting> {
        let invalid = |source| Error::InvalidSetting {
            pci: self.pci.clone(),
            source,
        };
        let setting = setting_for(project).map_err(invalid)?;
        check_setting(&setting, &self.scheduler_capabilities()?).map_err(invalid)?;
        self.set_scheduler_state(&setting)?;
        Ok(setting)
    }

    /// Whether vGPU heterogeneous mode (mixed sizes with placements) is on
    /// (`nvmlDeviceGetVgpuHeterogeneousMode`).
    pub fn heterogeneous_mode(&self) -> Result<bool> {
        const CALL: &str = "nvmlDeviceGetVgpuHeterogeneousMode";
        match sys::heterogeneous_mode(&self.device).map_err(|e| self.raw_error(CALL, e))? {
            FEATURE_ENABLED => Ok(true),
            FEATURE_DISABLED => Ok(false),
            other => Err(Error::Malformed {
                pci: self.pci.clone(),
                call: CALL,
                detail: format!("mode {other}"),
            }),
        }
    }

    /// Turns vGPU heterogeneous mode on or off (`nvmlDeviceSetVgpuHeterogeneousMode`). NVML
    /// refuses while a vGPU instance is active: [`Error::VmsRunning`]. Re-enabling the VFs
    /// clears it.
    pub fn set_heterogeneous_mode(&self, enabled: bool) -> Result<()> {
        const CALL: &str = "nvmlDeviceSetVgpuHeterogeneousMode";
        let mode = if enabled {
            FEATURE_ENABLED
        } else {
            FEATURE_DISABLED
        };
        match sys::set_heterogeneous_mode(&self.device, mode) {
            Ok(()) => Ok(()),
            Err(RawError::Code(code)) if code == ReturnCode::IN_USE => {
                Err(self.refusal(CALL, code))
            }
            Err(e) => Err(self.raw_error(CALL, e)),
        }
    }

    /// The active vGPU instances, each with its VM and framebuffer use
    /// (`nvmlDeviceGetActiveVgpus`, then per instance `nvmlVgpuInstanceGetUUID`,
    /// `nvmlVgpuInstanceGetVmID`, `nvmlVgpuInstanceGetFbUsage`).
    pub fn vgpu_instances(&self) -> Result<Vec<VgpuInstance>> {
        self.active_instances()?
            .into_iter()
            .map(|instance| {
                let v = nvml_wrapper::vgpu::VgpuInstance::new(instance, &self.device);
                let uuid = v
                    .uuid()
                    .map_err(|e| self.error("nvmlVgpuInstanceGetUUID", e))?;
                let (vm_id_kind, vm_id) = match v
                    .vm_id()
                    .map_err(|e| self.error("nvmlVgpuInstanceGetVmID", e))?
                {
                    VmId::Domain(id) => (VmIdKind::Domain, id),
                    VmId::Uuid(id) => (VmIdKind::Uuid, id),
                };
                let fb_usage_bytes = v
                    .fb_usage()
                    .map_err(|e| self.error("nvmlVgpuInstanceGetFbUsage", e))?;
                Ok(VgpuInstance {
                    instance,
                    uuid,
                    vm_id,
                    vm_id_kind,
                    fb_usage_bytes,
                })
            })
            .collect()
    }

    /// The IDs of the active vGPU instances (`nvmlDeviceGetActiveVgpus`).
    fn active_instances(&self) -> Result<Vec<u32>> {
        sys::active_vgpus(&self.device).map_err(|e| self.raw_error("nvmlDeviceGetActiveVgpus", e))
    }

    /// Whether any VM runs on the GPU: whether it has an active vGPU instance.
    pub fn vm_running(&self) -> Result<bool> {
        Ok(!self.active_instances()?.is_empty())
    }

    /// Utilisation of the guest processes on the GPU's vGPUs sampled after `last_seen_us`
    /// (a CPU timestamp in µs; 0 for all the driver holds), one sample per process with
    /// non-zero use (`nvmlDeviceGetVgpuProcessUtilization`). Empty when NVML has no samples.
    pub fn vgpu_process_utilization(&self, last_seen_us: u64) -> Result<Vec<VgpuProcessSample>> {
        sys::vgpu_process_utilization(&self.device, last_seen_us)
            .map_err(|e| self.raw_error("nvmlDeviceGetVgpuProcessUtilization", e))
    }
}
