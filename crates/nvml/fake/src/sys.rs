//! The exported C symbols, and all of the fake's `unsafe`: each export checks its pointers,
//! copies the caller's structs in, hands plain values to [`crate::calls`] and copies the answer
//! out. Nothing else is exported, so a call gvm-nvml starts making without a matching export
//! here fails its tests with nvml-wrapper's "function symbol failed to load".
//!
//! The state file is `$GVM_NVML_FAKE_STATE`, or else `nvml-fake.json` beside the loaded
//! library (so tests running in parallel threads each use their own copy of the library and
//! their own state).

use std::ffi::{c_char, c_uint, c_ulonglong, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nvml_wrapper_sys::bindings::{
    nvmlDevice_st, nvmlDevice_t, nvmlPciInfo_t,
    nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED as DRIVER_NOT_LOADED,
    nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT as INVALID_ARGUMENT,
    nvmlReturn_enum_NVML_ERROR_UNINITIALIZED as UNINITIALIZED,
    nvmlReturn_enum_NVML_ERROR_UNKNOWN as UNKNOWN, nvmlReturn_enum_NVML_SUCCESS as SUCCESS,
    nvmlReturn_t, nvmlVgpuHeterogeneousMode_t, nvmlVgpuInstance_t,
    nvmlVgpuProcessUtilizationSample_t, nvmlVgpuSchedulerCapabilities_t,
    nvmlVgpuSchedulerGetState_t, nvmlVgpuSchedulerLog_t, nvmlVgpuSchedulerSetState_t,
    nvmlVgpuVmIdType_t,
};

use crate::calls::{self, Answer, RequestParams, SchedulerRequest};
use crate::state::FakeHost;

/// The environment variable that names the state file.
pub const STATE_ENV: &str = "GVM_NVML_FAKE_STATE";
/// The state file's name beside the library when the variable is not set.
pub const STATE_FILE: &str = "nvml-fake.json";

/// `nvmlInit_v2` calls not yet matched by `nvmlShutdown` (NVML reference-counts them).
static INITS: AtomicU32 = AtomicU32::new(0);

fn state_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(STATE_ENV) {
        return Some(PathBuf::from(p));
    }
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let here = nvmlInit_v2 as *const c_void;
    // SAFETY: `here` is an address inside this library and `info` is a valid, writable
    // Dl_info; dladdr only writes it.
    let found = unsafe { libc::dladdr(here, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path that lives as long as
    // the library stays loaded; it is copied out at once.
    let lib = unsafe { CStr::from_ptr(info.dli_fname) };
    let lib = PathBuf::from(lib.to_string_lossy().into_owned());
    Some(lib.parent()?.join(STATE_FILE))
}

fn load() -> Answer<(PathBuf, FakeHost)> {
    let path = state_path().ok_or(UNKNOWN)?;
    match FakeHost::load(&path) {
        Ok(host) => Ok((path, host)),
        Err(e) => {
            eprintln!("gvm-nvml-fake: {}", e.0);
            // Reference (most calls): "NVML_ERROR_UNKNOWN on any unexpected error".
            Err(UNKNOWN)
        }
    }
}

/// Runs `f` on the host after the initialisation check.
fn read<T>(f: impl FnOnce(&FakeHost) -> Answer<T>) -> Answer<T> {
    // Reference (every call here): "NVML_ERROR_UNINITIALIZED if the library has not been
    // successfully initialized".
    if INITS.load(Ordering::SeqCst) == 0 {
        return Err(UNINITIALIZED);
    }
    let (_, host) = load()?;
    f(&host)
}

/// Runs `f` on the host and writes it back when `f` succeeded.
fn change(f: impl FnOnce(&mut FakeHost) -> Answer<()>) -> Answer<()> {
    if INITS.load(Ordering::SeqCst) == 0 {
        return Err(UNINITIALIZED);
    }
    let (path, mut host) = load()?;
    f(&mut host)?;
    host.store(&path).map_err(|e| {
        eprintln!("gvm-nvml-fake: {}", e.0);
        UNKNOWN
    })
}

fn code(r: Answer<()>) -> nvmlReturn_t {
    match r {
        Ok(()) => SUCCESS,
        Err(c) => c,
    }
}

fn handle_index(device: nvmlDevice_t) -> usize {
    device as usize
}

/// Copies `s` and a NUL into the caller's `size`-byte buffer.
///
/// # Safety
/// `buf` is null or writable for `size` bytes.
unsafe fn write_c_string(buf: *mut c_char, size: c_uint, s: &str) -> Answer<()> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    calls::fits(s, size)?;
    // SAFETY: the caller's buffer holds `size` bytes and `fits` checked s.len() + 1 <= size.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

/// Writes `value` through `out`, or refuses a null `out`.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: Answer<T>) -> nvmlReturn_t {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    match value {
        Ok(v) => {
            // SAFETY: non-null, and the caller guarantees it points at a writable T.
            unsafe { out.write(v) };
            SUCCESS
        }
        Err(c) => c,
    }
}

/// `nvmlInit_v2`.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    match load() {
        Ok(_) => {
            INITS.fetch_add(1, Ordering::SeqCst);
            SUCCESS
        }
        // Reference: "NVML_ERROR_DRIVER_NOT_LOADED if NVIDIA driver is not running" — the
        // fake's driver is its state file.
        Err(_) => DRIVER_NOT_LOADED,
    }
}

/// `nvmlShutdown`.
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    // Reference: "NVML_ERROR_UNINITIALIZED if the library has not been successfully
    // initialized".
    match INITS.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => SUCCESS,
        Err(_) => UNINITIALIZED,
    }
}

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` is null or writable for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    // SAFETY: forwarded from this function's contract.
    code(read(|h| unsafe {
        write_c_string(version, length, &h.driver_version)
    }))
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    let n = read(|h| Ok(u32::try_from(h.gpus.len()).unwrap_or(u32::MAX)));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(count, n) }
}

/// `nvmlDeviceGetHandleByIndex_v2`.
///
/// # Safety
/// `device` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if index is invalid or device is NULL".
    let handle = read(|h| {
        let i = index as usize;
        calls::gpu(h, i + 1)?;
        Ok((i + 1) as *mut nvmlDevice_st)
    });
    // SAFETY: forwarded from this function's contract.
    unsafe { put(device, handle) }
}

/// `nvmlDeviceGetHandleByPciBusId_v2`.
///
/// # Safety
/// `bus_id` is null or a NUL-terminated string; `device` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    if bus_id.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let bus_id = unsafe { CStr::from_ptr(bus_id) }.to_string_lossy();
    let handle = read(|h| Ok(calls::handle_by_pci_bus_id(h, &bus_id)? as *mut nvmlDevice_st));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(device, handle) }
}

/// `nvmlDeviceGetPciInfo_v3`.
///
/// # Safety
/// `pci` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    let info = read(|h| {
        let g = calls::gpu(h, handle_index(device))?;
        let (domain, bus, dev, function) = calls::parse_bus_id(&g.pci).ok_or(UNKNOWN)?;
        // nvmlPciInfo_t::busId is "domain:bus:device.function" with an 8-digit domain
        // (NVML_DEVICE_PCI_BUS_ID_FMT "%08X:%02X:%02X.0"); busIdLegacy the 4-digit form.
        let full = format!(
            "{domain:08X}:{bus:02X}:{dev:02X}.{:X}",
            function.unwrap_or(0)
        );
        let legacy = format!(
            "{domain:04X}:{bus:02X}:{dev:02X}.{:X}",
            function.unwrap_or(0)
        );
        let mut out = nvmlPciInfo_t {
            busIdLegacy: [0; 16],
            domain,
            bus,
            device: dev,
            pciDeviceId: 0x2335_10de,
            pciSubSystemId: 0x18be_10de,
            busId: [0; 32],
        };
        for (slot, b) in out.busId.iter_mut().zip(full.bytes()) {
            *slot = b as c_char;
        }
        for (slot, b) in out.busIdLegacy.iter_mut().zip(legacy.bytes()) {
            *slot = b as c_char;
        }
        Ok(out)
    });
    // SAFETY: forwarded from this function's contract.
    unsafe { put(pci, info) }
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` is null or writable for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    code(read(|h| {
        let g = calls::gpu(h, handle_index(device))?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_c_string(name, length, &g.name) }
    }))
}

/// `nvmlDeviceGetVgpuSchedulerState`.
///
/// # Safety
/// `state` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVgpuSchedulerState(
    device: nvmlDevice_t,
    state: *mut nvmlVgpuSchedulerGetState_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If pSchedulerState is NULL" (checked in `put`).
    let answer = read(|h| calls::scheduler_state(calls::gpu(h, handle_index(device))?));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(state, answer) }
}

/// `nvmlDeviceSetVgpuSchedulerState`.
///
/// # Safety
/// `state` is null or readable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetVgpuSchedulerState(
    device: nvmlDevice_t,
    state: *mut nvmlVgpuSchedulerSetState_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If pSchedulerState is NULL".
    if state.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and readable per this function's contract.
    let s = unsafe { state.read() };
    let params = if calls::arr_selects_adaptive(s.enableARRMode) {
        // SAFETY: with ARR enabled the caller filled the vgpuSchedDataWithARR member (the
        // reference's rule); both members are plain integers, so any bits are valid.
        let d = unsafe { s.schedulerParams.vgpuSchedDataWithARR };
        RequestParams::Adaptive {
            avg_factor: d.avgFactor,
            frequency: d.frequency,
        }
    } else {
        // SAFETY: otherwise the caller filled vgpuSchedData; plain integers as above.
        RequestParams::Timeslice(unsafe { s.schedulerParams.vgpuSchedData.timeslice })
    };
    let req = SchedulerRequest {
        policy: s.schedulerPolicy,
        arr_mode: s.enableARRMode,
        params,
    };
    code(change(|h| {
        calls::set_scheduler_state(calls::gpu_mut(h, handle_index(device))?, req)
    }))
}

/// `nvmlDeviceGetVgpuSchedulerCapabilities`.
///
/// # Safety
/// `caps` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVgpuSchedulerCapabilities(
    device: nvmlDevice_t,
    caps: *mut nvmlVgpuSchedulerCapabilities_t,
) -> nvmlReturn_t {
    let answer = read(|h| calls::scheduler_capabilities(calls::gpu(h, handle_index(device))?));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(caps, answer) }
}

/// `nvmlDeviceGetVgpuSchedulerLog`.
///
/// # Safety
/// `log` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVgpuSchedulerLog(
    device: nvmlDevice_t,
    log: *mut nvmlVgpuSchedulerLog_t,
) -> nvmlReturn_t {
    let answer = read(|h| calls::scheduler_log(calls::gpu(h, handle_index(device))?));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(log, answer) }
}

/// `nvmlDeviceGetVgpuHeterogeneousMode`.
///
/// # Safety
/// `mode` is null or readable and writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVgpuHeterogeneousMode(
    device: nvmlDevice_t,
    mode: *mut nvmlVgpuHeterogeneousMode_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If device is invalid or pHeterogeneousMode is
    // NULL".
    if mode.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and readable; the caller sets `version` before the call.
    let version = unsafe { (*mode).version };
    let answer = read(|h| calls::heterogeneous_mode(calls::gpu(h, handle_index(device))?, version));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(mode, answer) }
}

/// `nvmlDeviceSetVgpuHeterogeneousMode`.
///
/// # Safety
/// `mode` is null or readable.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetVgpuHeterogeneousMode(
    device: nvmlDevice_t,
    mode: *const nvmlVgpuHeterogeneousMode_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT If device or pHeterogeneousMode is NULL".
    if mode.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and readable per this function's contract.
    let m = unsafe { mode.read() };
    let mut tell_sim = None;
    let r = change(|h| {
        let g = calls::gpu_mut(h, handle_index(device))?;
        calls::set_heterogeneous_mode(g, &m)?;
        tell_sim = g.sim_control.clone().map(|path| {
            let on = if g.heterogeneous { "on" } else { "off" };
            (path, format!("vf-heterogeneous {} {on}", g.pci))
        });
        Ok(())
    });
    if let (Ok(()), Some((path, line))) = (&r, tell_sim) {
        // The simulated host's VF tree follows the mode, as the driver's does (state.rs).
        if let Err(e) = std::fs::write(&path, line.as_bytes()) {
            eprintln!("gvm-nvml-fake: cannot tell the simulated host at {path}: {e}");
            return UNKNOWN;
        }
    }
    code(r)
}

/// `nvmlDeviceGetActiveVgpus`.
///
/// # Safety
/// `count` is null or readable and writable; `instances` is null or writable for `*count`
/// elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetActiveVgpus(
    device: nvmlDevice_t,
    count: *mut c_uint,
    instances: *mut nvmlVgpuInstance_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if device is invalid, or vgpuCount is NULL".
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and readable per this function's contract.
    let capacity = unsafe { count.read() };
    let answer = read(|h| {
        let g = calls::gpu(h, handle_index(device))?;
        Ok(calls::active_vgpus(g, capacity))
    });
    match answer {
        Err(c) => c,
        Ok(Err((c, needed))) => {
            // SAFETY: count is non-null and writable.
            unsafe { count.write(needed) };
            c
        }
        Ok(Ok(ids)) => {
            if !ids.is_empty() && instances.is_null() {
                return INVALID_ARGUMENT;
            }
            // SAFETY: `instances` holds `capacity` >= ids.len() elements (checked by
            // `active_vgpus`), and `count` is writable.
            unsafe {
                std::ptr::copy_nonoverlapping(ids.as_ptr(), instances, ids.len());
                count.write(ids.len() as c_uint);
            }
            SUCCESS
        }
    }
}

/// `nvmlVgpuInstanceGetUUID`.
///
/// # Safety
/// `uuid` is null or writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlVgpuInstanceGetUUID(
    instance: nvmlVgpuInstance_t,
    uuid: *mut c_char,
    size: c_uint,
) -> nvmlReturn_t {
    code(read(|h| {
        let v = calls::vgpu(h, instance)?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_c_string(uuid, size, &v.uuid) }
    }))
}

/// `nvmlVgpuInstanceGetVmID`.
///
/// # Safety
/// `vm_id` is null or writable for `size` bytes; `id_type` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlVgpuInstanceGetVmID(
    instance: nvmlVgpuInstance_t,
    vm_id: *mut c_char,
    size: c_uint,
    id_type: *mut nvmlVgpuVmIdType_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if vmId or vmIdType is NULL, or vgpuInstance
    // is 0".
    if id_type.is_null() {
        return INVALID_ARGUMENT;
    }
    let answer = read(|h| {
        let v = calls::vgpu(h, instance)?;
        // SAFETY: forwarded from this function's contract.
        unsafe { write_c_string(vm_id, size, &v.vm_id)? };
        Ok(v.vm_id_type)
    });
    // SAFETY: forwarded from this function's contract.
    unsafe { put(id_type, answer) }
}

/// `nvmlVgpuInstanceGetFbUsage`.
///
/// # Safety
/// `usage` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn nvmlVgpuInstanceGetFbUsage(
    instance: nvmlVgpuInstance_t,
    usage: *mut c_ulonglong,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if vgpuInstance is 0, or fbUsage is NULL".
    let answer = read(|h| Ok(calls::vgpu(h, instance)?.fb_usage));
    // SAFETY: forwarded from this function's contract.
    unsafe { put(usage, answer) }
}

/// `nvmlDeviceGetVgpuProcessUtilization`.
///
/// # Safety
/// `count` is null or readable and writable; `samples` is null or writable for `*count`
/// elements.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetVgpuProcessUtilization(
    device: nvmlDevice_t,
    last_seen_us: c_ulonglong,
    count: *mut c_uint,
    samples: *mut nvmlVgpuProcessUtilizationSample_t,
) -> nvmlReturn_t {
    // Reference: "NVML_ERROR_INVALID_ARGUMENT if device is invalid, vgpuProcessSamplesCount
    // ... is passed" NULL.
    if count.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and readable per this function's contract.
    let capacity = unsafe { count.read() };
    let answer = read(|h| {
        let g = calls::gpu(h, handle_index(device))?;
        Ok(calls::vgpu_process_samples(
            g,
            last_seen_us,
            capacity,
            !samples.is_null(),
        ))
    });
    match answer {
        Err(c) => c,
        Ok(Err((c, needed))) => {
            // SAFETY: count is non-null and writable.
            unsafe { count.write(needed) };
            c
        }
        Ok(Ok(fresh)) => {
            for (i, p) in fresh.iter().enumerate() {
                let mut name = [0 as c_char; 64];
                for (slot, b) in name.iter_mut().zip(p.name.bytes().take(63)) {
                    *slot = b as c_char;
                }
                let sample = nvmlVgpuProcessUtilizationSample_t {
                    vgpuInstance: p.vgpu_instance,
                    pid: p.pid,
                    processName: name,
                    timeStamp: p.timestamp_us,
                    smUtil: p.sm,
                    memUtil: p.mem,
                    encUtil: p.enc,
                    decUtil: p.dec,
                };
                // SAFETY: `samples` is non-null (checked by `vgpu_process_samples`) and holds
                // `capacity` >= fresh.len() elements.
                unsafe { samples.add(i).write(sample) };
            }
            // SAFETY: count is non-null and writable.
            unsafe { count.write(fresh.len() as c_uint) };
            SUCCESS
        }
    }
}
