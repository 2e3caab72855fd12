//! The NVML calls nvml-wrapper does not wrap, or wraps losing data, made through its raw
//! `nvml-wrapper-sys` bindings; all of the crate's `unsafe`.
//!
//! - `nvmlDeviceGetVgpuSchedulerState`: the wrapper drops the time slice and averaging factor;
//! - `nvmlDeviceGetVgpuSchedulerLog`: the wrapper returns all 200 slots, not `entriesCount`;
//! - `nvmlDeviceGet/SetVgpuHeterogeneousMode`, `nvmlDeviceGetVgpuProcessUtilization`: not
//!   wrapped;
//! - `nvmlDeviceGetActiveVgpus`: the wrapper hides the instance IDs process samples use.

use std::mem::size_of;

use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings::{
    nvmlReturn_t, nvmlVgpuHeterogeneousMode_t, nvmlVgpuHeterogeneousMode_v1_t, nvmlVgpuInstance_t,
    nvmlVgpuProcessUtilizationSample_t, nvmlVgpuSchedulerGetState_t, nvmlVgpuSchedulerLog_t,
    nvmlVgpuSchedulerParams_t, nvmlVgpuSchedulerParams_t__bindgen_ty_1,
    NVML_SCHEDULER_SW_MAX_LOG_ENTRIES, NVML_VGPU_SCHEDULER_ARR_ENABLE,
};

use crate::code::ReturnCode;
use crate::scheduler::{ArrMode, SchedulerLog, SchedulerLogEntry, SchedulerPolicy, SchedulerState};
use crate::vgpu::VgpuProcessSample;

/// `nvmlVgpuHeterogeneousMode_v1` of `nvml.h`:
/// `NVML_STRUCT_VERSION(VgpuHeterogeneousMode, 1) = sizeof(nvmlVgpuHeterogeneousMode_v1_t) | 1 << 24`.
pub const HETEROGENEOUS_MODE_V1: u32 =
    size_of::<nvmlVgpuHeterogeneousMode_v1_t>() as u32 | (1 << 24);

/// Why a raw call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawError {
    /// The library does not export the symbol.
    Missing,
    /// The call returned this code.
    Code(ReturnCode),
}

/// A raw call's result.
pub type Raw<T> = Result<T, RawError>;

fn returned(r: nvmlReturn_t) -> Raw<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(RawError::Code(ReturnCode(r)))
    }
}

fn zero_params() -> nvmlVgpuSchedulerParams_t {
    nvmlVgpuSchedulerParams_t {
        vgpuSchedDataWithARR: nvmlVgpuSchedulerParams_t__bindgen_ty_1 {
            avgFactor: 0,
            timeslice: 0,
        },
    }
}

/// The state of a get or a log: the union read by the ARR mode, as NVML fills it.
fn state_of(policy: u32, arr: u32, params: nvmlVgpuSchedulerParams_t) -> SchedulerState {
    let (timeslice_ns, avg_factor) = if arr == NVML_VGPU_SCHEDULER_ARR_ENABLE {
        // SAFETY: both members of the union are plain u32s, so either reading is defined;
        // with ARR on NVML fills vgpuSchedDataWithARR.
        let d = unsafe { params.vgpuSchedDataWithARR };
        (d.timeslice, Some(d.avgFactor))
    } else {
        // SAFETY: as above; with ARR off NVML fills vgpuSchedData.
        (unsafe { params.vgpuSchedData.timeslice }, None)
    };
    SchedulerState {
        policy: SchedulerPolicy::from_nvml(policy),
        policy_nvml: policy,
        arr_mode: ArrMode::from_nvml(arr),
        timeslice_ns,
        avg_factor,
    }
}

/// `nvmlDeviceGetVgpuSchedulerState`.
pub fn scheduler_state(device: &Device<'_>) -> Raw<SchedulerState> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceGetVgpuSchedulerState
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    let mut s = nvmlVgpuSchedulerGetState_t {
        schedulerPolicy: 0,
        arrMode: 0,
        schedulerParams: zero_params(),
    };
    // SAFETY: the handle comes from nvml-wrapper and lives as long as `device`; `s` is a
    // writable struct of the layout the symbol takes.
    returned(unsafe { call(device.handle(), &mut s) })?;
    Ok(state_of(s.schedulerPolicy, s.arrMode, s.schedulerParams))
}

/// `nvmlDeviceGetVgpuSchedulerLog`.
pub fn scheduler_log(device: &Device<'_>) -> Raw<SchedulerLog> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceGetVgpuSchedulerLog
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    // SAFETY: the struct is integers and arrays of integers, for which all-zero is valid.
    let mut log: Box<nvmlVgpuSchedulerLog_t> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: as in `scheduler_state`; `log` is a writable struct of the symbol's layout.
    returned(unsafe { call(device.handle(), &mut *log) })?;
    let count = (log.entriesCount as usize).min(NVML_SCHEDULER_SW_MAX_LOG_ENTRIES as usize);
    let entries = log.logEntries[..count]
        .iter()
        .map(|e| SchedulerLogEntry {
            timestamp_ns: e.timestamp,
            time_run_total_ns: e.timeRunTotal,
            time_run_ns: e.timeRun,
            sw_runlist_id: e.swRunlistId,
            target_time_slice_ns: e.targetTimeSlice,
            cumulative_preemption_time_ns: e.cumulativePreemptionTime,
        })
        .collect();
    Ok(SchedulerLog {
        engine_id: log.engineId,
        state: state_of(log.schedulerPolicy, log.arrMode, log.schedulerParams),
        entries,
    })
}

/// `nvmlDeviceGetVgpuHeterogeneousMode`: `NVML_FEATURE_ENABLED` or `NVML_FEATURE_DISABLED`.
pub fn heterogeneous_mode(device: &Device<'_>) -> Raw<u32> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceGetVgpuHeterogeneousMode
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    let mut m: nvmlVgpuHeterogeneousMode_t = nvmlVgpuHeterogeneousMode_v1_t {
        version: HETEROGENEOUS_MODE_V1,
        mode: 0,
    };
    // SAFETY: as in `scheduler_state`; `m` is a writable v1 struct with its version set.
    returned(unsafe { call(device.handle(), &mut m) })?;
    Ok(m.mode)
}

/// `nvmlDeviceSetVgpuHeterogeneousMode` with `mode` `NVML_FEATURE_ENABLED`/`_DISABLED`.
pub fn set_heterogeneous_mode(device: &Device<'_>, mode: u32) -> Raw<()> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceSetVgpuHeterogeneousMode
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    let m: nvmlVgpuHeterogeneousMode_t = nvmlVgpuHeterogeneousMode_v1_t {
        version: HETEROGENEOUS_MODE_V1,
        mode,
    };
    // SAFETY: as in `scheduler_state`; `m` is a readable v1 struct with its version set.
    returned(unsafe { call(device.handle(), &m) })
}

/// How often a two-step list call is retried when the list grew between its steps.
const LIST_ATTEMPTS: usize = 4;

/// `nvmlDeviceGetActiveVgpus`: the instance IDs.
pub fn active_vgpus(device: &Device<'_>) -> Raw<Vec<u32>> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceGetActiveVgpus
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    let mut ids: Vec<nvmlVgpuInstance_t> = Vec::new();
    for _ in 0..LIST_ATTEMPTS {
        let mut count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let buffer = if ids.is_empty() {
            std::ptr::null_mut()
        } else {
            ids.as_mut_ptr()
        };
        // SAFETY: as in `scheduler_state`; `count` is writable and `buffer` is null with
        // count 0 or holds `count` elements.
        match returned(unsafe { call(device.handle(), &mut count, buffer) }) {
            Ok(()) => {
                ids.truncate(count as usize);
                return Ok(ids);
            }
            // "the function returns NVML_ERROR_INSUFFICIENT_SIZE, with the element count of
            // nvmlVgpuInstance_t array required in vgpuCount".
            Err(RawError::Code(c)) if c == ReturnCode::INSUFFICIENT_SIZE => {
                ids = vec![0; count as usize]
            }
            Err(e) => return Err(e),
        }
    }
    Err(RawError::Code(ReturnCode::INSUFFICIENT_SIZE))
}

/// `nvmlDeviceGetVgpuProcessUtilization`; "NVML_ERROR_NOT_FOUND if sample entries are not
/// found" is an empty list.
pub fn vgpu_process_utilization(
    device: &Device<'_>,
    last_seen_us: u64,
) -> Raw<Vec<VgpuProcessSample>> {
    let call = device
        .nvml()
        .lib()
        .nvmlDeviceGetVgpuProcessUtilization
        .as_ref()
        .map_err(|_| RawError::Missing)?;
    let mut samples: Vec<nvmlVgpuProcessUtilizationSample_t> = Vec::new();
    for _ in 0..LIST_ATTEMPTS {
        let mut count = u32::try_from(samples.len()).unwrap_or(u32::MAX);
        let buffer = if samples.is_empty() {
            std::ptr::null_mut()
        } else {
            samples.as_mut_ptr()
        };
        // SAFETY: as in `active_vgpus`.
        match returned(unsafe { call(device.handle(), last_seen_us, &mut count, buffer) }) {
            Ok(()) => {
                samples.truncate(count as usize);
                return Ok(samples.iter().map(process_sample).collect());
            }
            Err(RawError::Code(c)) if c == ReturnCode::NOT_FOUND => return Ok(Vec::new()),
            Err(RawError::Code(c)) if c == ReturnCode::INSUFFICIENT_SIZE => {
                // SAFETY: the struct is integers and a char array; all-zero is valid.
                samples = vec![unsafe { std::mem::zeroed() }; count as usize];
            }
            Err(e) => return Err(e),
        }
    }
    Err(RawError::Code(ReturnCode::INSUFFICIENT_SIZE))
}

fn process_sample(s: &nvmlVgpuProcessUtilizationSample_t) -> VgpuProcessSample {
    let name: Vec<u8> = s
        .processName
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    VgpuProcessSample {
        vgpu_instance: s.vgpuInstance,
        pid: s.pid,
        name: String::from_utf8_lossy(&name).into_owned(),
        timestamp_us: s.timeStamp,
        sm_percent: s.smUtil,
        mem_percent: s.memUtil,
        enc_percent: s.encUtil,
        dec_percent: s.decUtil,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heterogeneous_mode_version_word_is_nvml_h_s() {
        assert_eq!(HETEROGENEOUS_MODE_V1, 0x0100_0008);
    }

    #[test]
    fn the_union_is_read_by_the_arr_mode() {
        let params = nvmlVgpuSchedulerParams_t {
            vgpuSchedDataWithARR: nvmlVgpuSchedulerParams_t__bindgen_ty_1 {
                avgFactor: 33,
                timeslice: 2_000_000,
            },
        };
        let arr = state_of(2, NVML_VGPU_SCHEDULER_ARR_ENABLE, params);
        assert_eq!((arr.timeslice_ns, arr.avg_factor), (2_000_000, Some(33)));
        // With ARR off the first word is the time slice.
        let fixed = state_of(2, 1, params);
        assert_eq!((fixed.timeslice_ns, fixed.avg_factor), (33, None));
        assert_eq!(fixed.policy, Some(SchedulerPolicy::EqualShare));
    }
}
