//! What each exported NVML call does to the pretend host, apart from pointers: every
//! function takes plain values and returns the data or the `nvmlReturn_t` NVML's reference
//! documents for that refusal.
//!
//! The reference quoted beside each refusal is the API documentation in `nvml.h` (NVML API
//! version 13, as shipped in NVIDIA/go-nvml `pkg/nvml/nvml.h`), the same text as
//! <https://docs.nvidia.com/deploy/nvml-api/> chapters "vGPU APIs", "vGPU Management" and
//! "vGPU Migration" (where the vGPU scheduler calls live). Where the reference names only one
//! code for bad input (`NVML_ERROR_INVALID_ARGUMENT`), the fake uses it for every value outside
//! what NVML defines or the GPU's capabilities allow.

use nvml_wrapper_sys::bindings::{
    nvmlEnableState_enum_NVML_FEATURE_DISABLED as FEATURE_DISABLED,
    nvmlEnableState_enum_NVML_FEATURE_ENABLED as FEATURE_ENABLED,
    nvmlReturn_enum_NVML_ERROR_ARGUMENT_VERSION_MISMATCH as ARGUMENT_VERSION_MISMATCH,
    nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE as INSUFFICIENT_SIZE,
    nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT as INVALID_ARGUMENT,
    nvmlReturn_enum_NVML_ERROR_IN_USE as IN_USE, nvmlReturn_enum_NVML_ERROR_NOT_FOUND as NOT_FOUND,
    nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED as NOT_SUPPORTED, nvmlReturn_t,
    nvmlVgpuHeterogeneousMode_v1_t, nvmlVgpuSchedulerCapabilities_t, nvmlVgpuSchedulerGetState_t,
    nvmlVgpuSchedulerLogEntry_t, nvmlVgpuSchedulerLog_t, nvmlVgpuSchedulerParams_t,
    nvmlVgpuSchedulerParams_t__bindgen_ty_1, nvmlVgpuSchedulerParams_t__bindgen_ty_2,
    NVML_SCHEDULER_SW_MAX_LOG_ENTRIES, NVML_SUPPORTED_VGPU_SCHEDULER_POLICY_COUNT,
    NVML_VGPU_SCHEDULER_ARR_DEFAULT, NVML_VGPU_SCHEDULER_ARR_DISABLE,
    NVML_VGPU_SCHEDULER_ARR_ENABLE, NVML_VGPU_SCHEDULER_ENGINE_TYPE_GRAPHICS,
};

use crate::layout::HETEROGENEOUS_MODE_V1;
use crate::state::{FakeGpu, FakeHost, FakeProcessSample, FakeVgpu};

/// An NVML call's result: the data, or the `nvmlReturn_t` to hand back.
pub type Answer<T> = Result<T, nvmlReturn_t>;

/// The GPU behind a device handle (handles are `index + 1`).
pub fn gpu(host: &FakeHost, handle: usize) -> Answer<&FakeGpu> {
    // nvmlDeviceGet*/Set* reference: "NVML_ERROR_INVALID_ARGUMENT if ... device is invalid".
    handle
        .checked_sub(1)
        .and_then(|i| host.gpus.get(i))
        .ok_or(INVALID_ARGUMENT)
}

/// The GPU behind a device handle, to change.
pub fn gpu_mut(host: &mut FakeHost, handle: usize) -> Answer<&mut FakeGpu> {
    // As in `gpu`: "NVML_ERROR_INVALID_ARGUMENT if ... device is invalid".
    handle
        .checked_sub(1)
        .and_then(|i| host.gpus.get_mut(i))
        .ok_or(INVALID_ARGUMENT)
}

/// `nvmlDeviceGetHandleByPciBusId_v2`: the handle of the GPU at `bus_id`.
pub fn handle_by_pci_bus_id(host: &FakeHost, bus_id: &str) -> Answer<usize> {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if pciBusId is invalid" — it accepts
    // "domain:bus:device.function", "domain:bus:device" and "bus:device.function", all hex.
    let wanted = parse_bus_id(bus_id).ok_or(INVALID_ARGUMENT)?;
    host.gpus
        .iter()
        .position(|g| parse_bus_id(&g.pci).is_some_and(|have| matches_bus_id(wanted, have)))
        .map(|i| i + 1)
        // Reference: "NVML_ERROR_NOT_FOUND if pciBusId does not match a valid device on the
        // system".
        .ok_or(NOT_FOUND)
}

/// A parsed PCI bus ID; the function is `None` in the "domain:bus:device" form.
type BusId = (u32, u32, u32, Option<u32>);

/// Parses the three forms `nvmlDeviceGetHandleByPciBusId_v2` accepts.
pub fn parse_bus_id(s: &str) -> Option<BusId> {
    let hex = |t: &str| {
        (!t.is_empty() && t.len() <= 8)
            .then(|| u32::from_str_radix(t, 16).ok())
            .flatten()
    };
    let parts: Vec<&str> = s.trim().split(':').collect();
    match parts.as_slice() {
        [domain, bus, rest] => {
            let (device, function) = match rest.split_once('.') {
                Some((d, f)) => (hex(d)?, Some(hex(f)?)),
                None => (hex(rest)?, None),
            };
            Some((hex(domain)?, hex(bus)?, device, function))
        }
        [bus, rest] => {
            let (device, function) = rest.split_once('.')?;
            Some((0, hex(bus)?, hex(device)?, Some(hex(function)?)))
        }
        _ => None,
    }
}

fn matches_bus_id(wanted: BusId, have: BusId) -> bool {
    wanted.0 == have.0
        && wanted.1 == have.1
        && wanted.2 == have.2
        && wanted.3.is_none_or(|f| Some(f) == have.3)
}

/// The vGPU-host-mode and MIG refusal most vGPU scheduler calls share.
fn require_vgpu_host_mode(g: &FakeGpu) -> Answer<()> {
    // nvmlDeviceGetVgpuSchedulerState / SetVgpuSchedulerState / GetVgpuSchedulerLog reference:
    // "NVML_ERROR_NOT_SUPPORTED If MIG is enabled or device not in vGPU host mode";
    // GetVgpuSchedulerCapabilities: "... not supported in current state or device not in vGPU
    // host mode".
    if !g.vgpu_manager || g.mig_enabled {
        return Err(NOT_SUPPORTED);
    }
    Ok(())
}

/// `nvmlDeviceGetVgpuSchedulerState`.
pub fn scheduler_state(g: &FakeGpu) -> Answer<nvmlVgpuSchedulerGetState_t> {
    require_vgpu_host_mode(g)?;
    Ok(nvmlVgpuSchedulerGetState_t {
        schedulerPolicy: g.scheduler.policy,
        arrMode: g.scheduler.arr_mode,
        schedulerParams: get_params(g),
    })
}

/// The union a get hands back: with ARR on, the averaging factor and a time slice.
fn get_params(g: &FakeGpu) -> nvmlVgpuSchedulerParams_t {
    if g.scheduler.arr_mode == NVML_VGPU_SCHEDULER_ARR_ENABLE {
        nvmlVgpuSchedulerParams_t {
            vgpuSchedDataWithARR: nvmlVgpuSchedulerParams_t__bindgen_ty_1 {
                avgFactor: g.scheduler.avg_factor,
                timeslice: g.scheduler.timeslice_ns,
            },
        }
    } else {
        nvmlVgpuSchedulerParams_t {
            vgpuSchedData: nvmlVgpuSchedulerParams_t__bindgen_ty_2 {
                timeslice: g.scheduler.timeslice_ns,
            },
        }
    }
}

/// A set request with its union already read according to `enableARRMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerRequest {
    /// `schedulerPolicy`.
    pub policy: u32,
    /// `enableARRMode`.
    pub arr_mode: u32,
    /// `vgpuSchedDataWithARR` when ARR is enabled, else `vgpuSchedData`.
    pub params: RequestParams,
}

/// The two members of `nvmlVgpuSchedulerSetParams_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestParams {
    /// `vgpuSchedData.timeslice`.
    Timeslice(u32),
    /// `vgpuSchedDataWithARR`.
    Adaptive {
        /// `avgFactor`.
        avg_factor: u32,
        /// `frequency`.
        frequency: u32,
    },
}

/// Which member of the set union `enableARRMode` selects: the reference says "IFF
/// enableARRMode is enabled then provide avgFactorForARR and frequency as input. If
/// enableARRMode is disabled then provide timeslice as input."
pub fn arr_selects_adaptive(arr_mode: u32) -> bool {
    arr_mode == NVML_VGPU_SCHEDULER_ARR_ENABLE
}

/// `nvmlDeviceSetVgpuSchedulerState`.
pub fn set_scheduler_state(g: &mut FakeGpu, req: SchedulerRequest) -> Answer<()> {
    require_vgpu_host_mode(g)?;
    // Reference: "Scheduler state and params will be allowed to set only when no VM is
    // running", and "NVML_ERROR_NOT_SUPPORTED ... or if any vGPU instance currently exists
    // on the device".
    if !g.vgpus.is_empty() {
        return Err(NOT_SUPPORTED);
    }
    let caps = &g.capabilities;
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If pSchedulerState is NULL or device is
    // invalid" — the only bad-input code listed; the fake uses it for a policy the GPU does
    // not list in its capabilities, an ARR mode outside NVML_VGPU_SCHEDULER_ARR_*, and
    // parameters outside the capabilities' ranges.
    if !caps.supported.contains(&req.policy) {
        return Err(INVALID_ARGUMENT);
    }
    if ![
        NVML_VGPU_SCHEDULER_ARR_DEFAULT,
        NVML_VGPU_SCHEDULER_ARR_DISABLE,
        NVML_VGPU_SCHEDULER_ARR_ENABLE,
    ]
    .contains(&req.arr_mode)
    {
        return Err(INVALID_ARGUMENT);
    }
    let within = |v: u32, lo: u32, hi: u32| (lo..=hi).contains(&v);
    match req.params {
        RequestParams::Adaptive {
            avg_factor,
            frequency,
        } => {
            if !caps.arr_supported
                || !within(avg_factor, caps.min_avg_factor, caps.max_avg_factor)
                || !within(frequency, caps.min_frequency, caps.max_frequency)
            {
                return Err(INVALID_ARGUMENT);
            }
            g.scheduler.avg_factor = avg_factor;
            g.scheduler.frequency = frequency;
            g.scheduler.timeslice_ns = 0;
        }
        RequestParams::Timeslice(ns) => {
            // 0 leaves the time slice to the driver's default.
            if ns != 0 && !within(ns, caps.min_timeslice_ns, caps.max_timeslice_ns) {
                return Err(INVALID_ARGUMENT);
            }
            g.scheduler.timeslice_ns = ns;
            g.scheduler.avg_factor = 0;
            g.scheduler.frequency = 0;
        }
    }
    g.scheduler.policy = req.policy;
    g.scheduler.arr_mode = req.arr_mode;
    Ok(())
}

/// `nvmlDeviceGetVgpuSchedulerCapabilities`.
pub fn scheduler_capabilities(g: &FakeGpu) -> Answer<nvmlVgpuSchedulerCapabilities_t> {
    require_vgpu_host_mode(g)?;
    let c = &g.capabilities;
    let mut supported = [0u32; NVML_SUPPORTED_VGPU_SCHEDULER_POLICY_COUNT as usize];
    for (slot, p) in supported.iter_mut().zip(&c.supported) {
        *slot = *p;
    }
    Ok(nvmlVgpuSchedulerCapabilities_t {
        supportedSchedulers: supported,
        maxTimeslice: c.max_timeslice_ns,
        minTimeslice: c.min_timeslice_ns,
        isArrModeSupported: u32::from(c.arr_supported),
        maxFrequencyForARR: c.max_frequency,
        minFrequencyForARR: c.min_frequency,
        maxAvgFactorForARR: c.max_avg_factor,
        minAvgFactorForARR: c.min_avg_factor,
    })
}

/// `nvmlDeviceGetVgpuSchedulerLog`: "The number of elements returned will never exceed
/// NVML_SCHEDULER_SW_MAX_LOG_ENTRIES".
pub fn scheduler_log(g: &FakeGpu) -> Answer<nvmlVgpuSchedulerLog_t> {
    require_vgpu_host_mode(g)?;
    let empty = nvmlVgpuSchedulerLogEntry_t {
        timestamp: 0,
        timeRunTotal: 0,
        timeRun: 0,
        swRunlistId: 0,
        targetTimeSlice: 0,
        cumulativePreemptionTime: 0,
    };
    let mut entries = [empty; NVML_SCHEDULER_SW_MAX_LOG_ENTRIES as usize];
    let mut count = 0u32;
    for (slot, e) in entries.iter_mut().zip(&g.log) {
        *slot = nvmlVgpuSchedulerLogEntry_t {
            timestamp: e.timestamp,
            timeRunTotal: e.time_run_total,
            timeRun: e.time_run,
            swRunlistId: e.sw_runlist_id,
            targetTimeSlice: e.target_time_slice,
            cumulativePreemptionTime: e.cumulative_preemption_time,
        };
        count += 1;
    }
    Ok(nvmlVgpuSchedulerLog_t {
        engineId: NVML_VGPU_SCHEDULER_ENGINE_TYPE_GRAPHICS,
        schedulerPolicy: g.scheduler.policy,
        arrMode: g.scheduler.arr_mode,
        schedulerParams: get_params(g),
        entriesCount: count,
        logEntries: entries,
    })
}

/// The version check of a versioned struct.
pub fn check_version(got: u32, expected: u32) -> Answer<()> {
    // nvmlDeviceGet/SetVgpuHeterogeneousMode reference: "NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    // If the version of pHeterogeneousMode is invalid".
    if got != expected {
        return Err(ARGUMENT_VERSION_MISMATCH);
    }
    Ok(())
}

/// The refusals both heterogeneous-mode calls share.
fn require_heterogeneous_support(g: &FakeGpu) -> Answer<()> {
    // Reference (get and set): "NVML_ERROR_NOT_SUPPORTED If MIG is enabled or device doesn't
    // support this feature" — without the vGPU manager the GPU has no vGPU modes.
    if !g.vgpu_manager || g.mig_enabled {
        return Err(NOT_SUPPORTED);
    }
    Ok(())
}

/// `nvmlDeviceGetVgpuHeterogeneousMode`: `version` is what the caller put in the struct.
pub fn heterogeneous_mode(g: &FakeGpu, version: u32) -> Answer<nvmlVgpuHeterogeneousMode_v1_t> {
    check_version(version, HETEROGENEOUS_MODE_V1)?;
    require_heterogeneous_support(g)?;
    Ok(nvmlVgpuHeterogeneousMode_v1_t {
        version,
        // Reference: "pHeterogeneousMode->mode can either be NVML_FEATURE_ENABLED or
        // NVML_FEATURE_DISABLED".
        mode: if g.heterogeneous {
            FEATURE_ENABLED
        } else {
            FEATURE_DISABLED
        },
    })
}

/// `nvmlDeviceSetVgpuHeterogeneousMode`.
pub fn set_heterogeneous_mode(
    g: &mut FakeGpu,
    mode: &nvmlVgpuHeterogeneousMode_v1_t,
) -> Answer<()> {
    check_version(mode.version, HETEROGENEOUS_MODE_V1)?;
    require_heterogeneous_support(g)?;
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If ... pHeterogeneousMode->mode is invalid".
    let enabled = match mode.mode {
        FEATURE_ENABLED => true,
        FEATURE_DISABLED => false,
        _ => return Err(INVALID_ARGUMENT),
    };
    // Reference: "the heterogeneous mode set will fail with error NVML_ERROR_IN_USE if any
    // vGPU instance is active on the device".
    if !g.vgpus.is_empty() {
        return Err(IN_USE);
    }
    g.heterogeneous = enabled;
    Ok(())
}

/// `nvmlDeviceGetActiveVgpus`: `capacity` is the caller's `*vgpuCount`. Returns the instances
/// (all of them: the caller's buffer holds them), or the count to report with
/// `NVML_ERROR_INSUFFICIENT_SIZE`.
pub fn active_vgpus(g: &FakeGpu, capacity: u32) -> Result<Vec<u32>, (nvmlReturn_t, u32)> {
    // Reference: "NVML_ERROR_NOT_SUPPORTED if vGPU is not supported by the device".
    if !g.vgpu_manager {
        return Err((NOT_SUPPORTED, 0));
    }
    let ids: Vec<u32> = g.vgpus.iter().map(|v| v.instance).collect();
    let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    // Reference: "If the supplied buffer is not large enough ... the function returns
    // NVML_ERROR_INSUFFICIENT_SIZE, with the element count ... required in vgpuCount";
    // with no instances a zero-sized query succeeds.
    if count > capacity {
        return Err((INSUFFICIENT_SIZE, count));
    }
    Ok(ids)
}

/// `nvmlDeviceGetVgpuProcessUtilization`: the samples newer than `last_seen_us`, or the code
/// and the count to report. `capacity` is the caller's `*vgpuProcessSamplesCount`,
/// `has_buffer` whether `utilizationSamples` is non-NULL.
pub fn vgpu_process_samples(
    g: &FakeGpu,
    last_seen_us: u64,
    capacity: u32,
    has_buffer: bool,
) -> Result<Vec<FakeProcessSample>, (nvmlReturn_t, u32)> {
    // Reference: "NVML_ERROR_NOT_SUPPORTED if vGPU is not supported by the device".
    if !g.vgpu_manager {
        return Err((NOT_SUPPORTED, 0));
    }
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if ... a sample count of 0 is passed with a
    // non-NULL utilizationSamples".
    if has_buffer && capacity == 0 {
        return Err((INVALID_ARGUMENT, 0));
    }
    let fresh: Vec<FakeProcessSample> = g
        .processes
        .iter()
        .filter(|p| p.timestamp_us > last_seen_us)
        .cloned()
        .collect();
    // Reference: "NVML_ERROR_NOT_FOUND if sample entries are not found".
    if fresh.is_empty() {
        return Err((NOT_FOUND, 0));
    }
    let count = u32::try_from(fresh.len()).unwrap_or(u32::MAX);
    // Reference: "invoking the function with utilizationSamples set to NULL ... will return
    // NVML_ERROR_INSUFFICIENT_SIZE, with the current vGPU instance count in
    // vgpuProcessSamplesCount"; and "NVML_ERROR_INSUFFICIENT_SIZE if supplied
    // vgpuProcessSamplesCount is too small".
    if !has_buffer || count > capacity {
        return Err((INSUFFICIENT_SIZE, count));
    }
    Ok(fresh)
}

/// The active vGPU instance `instance`, on any GPU.
pub fn vgpu(host: &FakeHost, instance: u32) -> Answer<&FakeVgpu> {
    // nvmlVgpuInstanceGet{UUID,VmID,FbUsage} reference: "NVML_ERROR_INVALID_ARGUMENT if
    // vgpuInstance is 0".
    if instance == 0 {
        return Err(INVALID_ARGUMENT);
    }
    host.gpus
        .iter()
        .flat_map(|g| &g.vgpus)
        .find(|v| v.instance == instance)
        // Reference: "NVML_ERROR_NOT_FOUND if vgpuInstance does not match a valid active
        // vGPU instance on the system".
        .ok_or(NOT_FOUND)
}

/// A string answer copied into a caller's buffer of `size` bytes, NUL included.
pub fn fits(s: &str, size: u32) -> Answer<()> {
    // nvmlVgpuInstanceGetUUID / GetVmID / nvmlSystemGetDriverVersion / nvmlDeviceGetName
    // reference: "NVML_ERROR_INSUFFICIENT_SIZE if size is too small".
    if s.len() >= size as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nvml_wrapper_sys::bindings::NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE;

    use super::*;
    use crate::state::{FakeCapabilities, FakeScheduler};

    fn gpu(manager: bool) -> FakeGpu {
        FakeGpu {
            pci: "0000:3c:00.0".into(),
            name: "NVIDIA H200".into(),
            vgpu_manager: manager,
            mig_enabled: false,
            heterogeneous: false,
            scheduler: FakeScheduler::default(),
            capabilities: FakeCapabilities::default(),
            vgpus: vec![],
            log: vec![],
            processes: vec![],
            sim_control: None,
        }
    }

    fn running_vm() -> FakeVgpu {
        FakeVgpu {
            instance: 7,
            uuid: "u".into(),
            vm_id: "v".into(),
            vm_id_type: 1,
            fb_usage: 1,
        }
    }

    fn equal_share(ns: u32) -> SchedulerRequest {
        SchedulerRequest {
            policy: NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE,
            arr_mode: NVML_VGPU_SCHEDULER_ARR_DISABLE,
            params: RequestParams::Timeslice(ns),
        }
    }

    #[test]
    fn bus_ids_in_all_three_forms_find_the_gpu() {
        let host = FakeHost {
            driver_version: "1".into(),
            gpus: vec![gpu(true), {
                let mut g = gpu(true);
                g.pci = "0000:9a:00.0".into();
                g
            }],
        };
        assert_eq!(handle_by_pci_bus_id(&host, "00000000:9A:00.0"), Ok(2));
        assert_eq!(handle_by_pci_bus_id(&host, "0:9a:0"), Ok(2));
        assert_eq!(handle_by_pci_bus_id(&host, "3c:00.0"), Ok(1));
        assert_eq!(handle_by_pci_bus_id(&host, "0000:3d:00.0"), Err(NOT_FOUND));
        assert_eq!(
            handle_by_pci_bus_id(&host, "garbage"),
            Err(INVALID_ARGUMENT)
        );
    }

    #[test]
    fn the_scheduler_is_refused_without_the_vgpu_manager_and_while_a_vm_runs() {
        assert_eq!(scheduler_state(&gpu(false)).err(), Some(NOT_SUPPORTED));
        let mut g = gpu(true);
        g.vgpus.push(running_vm());
        let before = g.clone();
        assert_eq!(
            set_scheduler_state(&mut g, equal_share(2_000_000)),
            Err(NOT_SUPPORTED)
        );
        assert_eq!(g, before, "a refused set changes nothing");
    }

    #[test]
    fn scheduler_values_outside_the_capabilities_are_invalid() {
        let mut g = gpu(true);
        assert_eq!(
            set_scheduler_state(&mut g, equal_share(5)),
            Err(INVALID_ARGUMENT)
        );
        let mut bad_policy = equal_share(0);
        bad_policy.policy = 9;
        assert_eq!(
            set_scheduler_state(&mut g, bad_policy),
            Err(INVALID_ARGUMENT)
        );
        let mut bad_arr = equal_share(0);
        bad_arr.arr_mode = 3;
        assert_eq!(set_scheduler_state(&mut g, bad_arr), Err(INVALID_ARGUMENT));
        assert_eq!(set_scheduler_state(&mut g, equal_share(2_000_000)), Ok(()));
        assert_eq!(g.scheduler.timeslice_ns, 2_000_000);
    }

    #[test]
    fn a_wrong_heterogeneous_mode_version_is_a_version_mismatch() {
        let mut g = gpu(true);
        let wrong = [HETEROGENEOUS_MODE_V1 + 1, 8, 2 << 24 | 8, 0];
        for version in wrong {
            let m = nvmlVgpuHeterogeneousMode_v1_t { version, mode: 1 };
            assert_eq!(
                set_heterogeneous_mode(&mut g, &m),
                Err(ARGUMENT_VERSION_MISMATCH),
                "version {version:#x}"
            );
            assert_eq!(
                heterogeneous_mode(&g, version).err(),
                Some(ARGUMENT_VERSION_MISMATCH)
            );
        }
        assert!(!g.heterogeneous);
        let right = nvmlVgpuHeterogeneousMode_v1_t {
            version: HETEROGENEOUS_MODE_V1,
            mode: 1,
        };
        assert_eq!(set_heterogeneous_mode(&mut g, &right), Ok(()));
        assert!(g.heterogeneous);
    }

    #[test]
    fn heterogeneous_mode_is_in_use_while_a_vgpu_exists_and_checks_the_mode() {
        let mut g = gpu(true);
        let m = |mode| nvmlVgpuHeterogeneousMode_v1_t {
            version: HETEROGENEOUS_MODE_V1,
            mode,
        };
        assert_eq!(set_heterogeneous_mode(&mut g, &m(2)), Err(INVALID_ARGUMENT));
        g.vgpus.push(running_vm());
        assert_eq!(set_heterogeneous_mode(&mut g, &m(1)), Err(IN_USE));
        assert_eq!(
            set_heterogeneous_mode(&mut gpu(false), &m(1)),
            Err(NOT_SUPPORTED)
        );
    }

    #[test]
    fn process_samples_are_sized_first_then_filtered_by_time() {
        let mut g = gpu(true);
        assert_eq!(vgpu_process_samples(&g, 0, 0, false), Err((NOT_FOUND, 0)));
        let sample = |t| FakeProcessSample {
            vgpu_instance: 7,
            pid: 100,
            name: "python3".into(),
            timestamp_us: t,
            sm: 50,
            mem: 10,
            enc: 0,
            dec: 0,
        };
        g.processes = vec![sample(10), sample(20)];
        assert_eq!(
            vgpu_process_samples(&g, 0, 0, false),
            Err((INSUFFICIENT_SIZE, 2))
        );
        assert_eq!(
            vgpu_process_samples(&g, 0, 0, true),
            Err((INVALID_ARGUMENT, 0))
        );
        assert_eq!(
            vgpu_process_samples(&g, 0, 1, true),
            Err((INSUFFICIENT_SIZE, 2))
        );
        assert_eq!(vgpu_process_samples(&g, 15, 4, true), Ok(vec![sample(20)]));
        assert_eq!(
            vgpu_process_samples(&gpu(false), 0, 0, false),
            Err((NOT_SUPPORTED, 0))
        );
    }

    #[test]
    fn active_vgpus_reports_the_count_a_short_buffer_needs() {
        let mut g = gpu(true);
        assert_eq!(active_vgpus(&g, 0), Ok(vec![]));
        g.vgpus.push(running_vm());
        assert_eq!(active_vgpus(&g, 0), Err((INSUFFICIENT_SIZE, 1)));
        assert_eq!(active_vgpus(&g, 1), Ok(vec![7]));
        assert_eq!(active_vgpus(&gpu(false), 0), Err((NOT_SUPPORTED, 0)));
    }
}
