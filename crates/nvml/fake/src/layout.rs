//! The layouts the fake expects, taken from `nvml-wrapper-sys`'s bindings and checked at
//! compile time against the sizes `nvml.h` gives them, plus the version words of the
//! versioned structs.
//!
//! `nvml.h` builds a version word as `NVML_STRUCT_VERSION(data, ver) = sizeof(nvml<data>_v<ver>_t)
//! | ver << 24`, so a caller compiled against another layout of the struct sends another word.
//! The unversioned structs of the vGPU scheduler calls carry no such word; their layout is
//! fixed by the function's ABI, which the size checks below pin.

use std::mem::size_of;

use nvml_wrapper_sys::bindings::{
    nvmlPciInfo_t, nvmlVgpuHeterogeneousMode_v1_t, nvmlVgpuProcessUtilizationSample_t,
    nvmlVgpuSchedulerCapabilities_t, nvmlVgpuSchedulerGetState_t, nvmlVgpuSchedulerLogEntry_t,
    nvmlVgpuSchedulerLog_t, nvmlVgpuSchedulerSetState_t,
};

/// `NVML_STRUCT_VERSION(data, ver)` of `nvml.h` for a struct of `size` bytes.
pub const fn struct_version(size: usize, version: u32) -> u32 {
    size as u32 | (version << 24)
}

/// `nvmlVgpuHeterogeneousMode_v1`: `NVML_STRUCT_VERSION(VgpuHeterogeneousMode, 1)`.
pub const HETEROGENEOUS_MODE_V1: u32 =
    struct_version(size_of::<nvmlVgpuHeterogeneousMode_v1_t>(), 1);

// Sizes from nvml.h's definitions on x86-64 (unsigned int 4, unsigned long long 8 bytes).
// { version, mode }.
const _: () = assert!(size_of::<nvmlVgpuHeterogeneousMode_v1_t>() == 8);
// { schedulerPolicy, enableARRMode, union { { avgFactor, frequency }, { timeslice } } }.
const _: () = assert!(size_of::<nvmlVgpuSchedulerSetState_t>() == 16);
// { schedulerPolicy, arrMode, union { { avgFactor, timeslice }, { timeslice } } }.
const _: () = assert!(size_of::<nvmlVgpuSchedulerGetState_t>() == 16);
// { supportedSchedulers[3], maxTimeslice, minTimeslice, isArrModeSupported,
//   max/minFrequencyForARR, max/minAvgFactorForARR }.
const _: () = assert!(size_of::<nvmlVgpuSchedulerCapabilities_t>() == 40);
// { timestamp, timeRunTotal, timeRun, swRunlistId (+4 padding), targetTimeSlice,
//   cumulativePreemptionTime }.
const _: () = assert!(size_of::<nvmlVgpuSchedulerLogEntry_t>() == 48);
// { engineId, schedulerPolicy, arrMode, params (8), entriesCount, (+4 padding),
//   logEntries[NVML_SCHEDULER_SW_MAX_LOG_ENTRIES = 200] }.
const _: () = assert!(size_of::<nvmlVgpuSchedulerLog_t>() == 24 + 200 * 48);
// { vgpuInstance, pid, processName[64], timeStamp, smUtil, memUtil, encUtil, decUtil }.
const _: () = assert!(size_of::<nvmlVgpuProcessUtilizationSample_t>() == 96);
// { busIdLegacy[16], domain, bus, device, pciDeviceId, pciSubSystemId, busId[32] }.
const _: () = assert!(size_of::<nvmlPciInfo_t>() == 68);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heterogeneous_mode_version_is_size_and_version_one() {
        assert_eq!(HETEROGENEOUS_MODE_V1, 0x0100_0008);
        assert_ne!(struct_version(8, 2), HETEROGENEOUS_MODE_V1);
    }
}
