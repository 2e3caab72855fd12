//! The exported `extern "C"` entry points: `dlsym`, `cuGetProcAddress{,_v2}` and the driver
//! functions the shim wraps.
//!
//! Each wrapper finds the driver's real function for its exact ABI (see `resolve.rs`), asks
//! the safe core (`shim.rs`) what to do, and calls through. When the real function cannot be
//! found the wrapper returns `CUDA_ERROR_NOT_INITIALIZED`; when the shim's own state is
//! degraded the wrappers still forward every call unchanged.
//!
//! `dlsym` is a two-instruction trampoline on x86-64: `dlsym(RTLD_NEXT, …)` jumps straight
//! into the C library's `dlsym`, so the lookup stays relative to the real caller; every other
//! lookup goes through [`dlsym_hook`], which returns a wrapper for the symbols the shim wraps.
#![allow(non_snake_case, clippy::too_many_arguments)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::Ordering;

use crate::accounting::{swap_fits, visible_mem_info, Key, Kind};
use crate::control::LaunchPath;
use crate::ffi::{
    self, CuDevice, CuDevicePtr, CuHandle, CuMemHandle, CuResult, CUDA_ERROR_NOT_INITIALIZED,
    CUDA_ERROR_OUT_OF_MEMORY, CUDA_SUCCESS, CU_DEVICE_CPU, CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
    CU_MEM_ATTACH_GLOBAL, CU_MEM_LOCATION_TYPE_DEVICE,
};
use crate::resolve::{self, Variant};
use crate::shim::{self, CUDA_HANDLE, REALS};

type GetProcAddressFn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CuResult;
type GetProcAddressV2Fn =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CuResult;
type MemAllocFn = unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult;
type MemAllocPitchFn =
    unsafe extern "C" fn(*mut CuDevicePtr, *mut usize, usize, usize, c_uint) -> CuResult;
type MemAllocManagedFn = unsafe extern "C" fn(*mut CuDevicePtr, usize, c_uint) -> CuResult;
type MemFreeFn = unsafe extern "C" fn(CuDevicePtr) -> CuResult;
type MemAllocAsyncFn = unsafe extern "C" fn(*mut CuDevicePtr, usize, CuHandle) -> CuResult;
type MemAllocFromPoolAsyncFn =
    unsafe extern "C" fn(*mut CuDevicePtr, usize, CuHandle, CuHandle) -> CuResult;
type MemFreeAsyncFn = unsafe extern "C" fn(CuDevicePtr, CuHandle) -> CuResult;
type MemCreateFn = unsafe extern "C" fn(*mut CuMemHandle, usize, *const c_void, u64) -> CuResult;
type MemReleaseFn = unsafe extern "C" fn(CuMemHandle) -> CuResult;
type MemGetInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult;
type DeviceTotalMemFn = unsafe extern "C" fn(*mut usize, CuDevice) -> CuResult;
type LaunchKernelFn = unsafe extern "C" fn(
    CuHandle,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CuHandle,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CuResult;
type LaunchKernelExFn =
    unsafe extern "C" fn(*const c_void, CuHandle, *mut *mut c_void, *mut *mut c_void) -> CuResult;
type LaunchCooperativeFn = unsafe extern "C" fn(
    CuHandle,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    CuHandle,
    *mut *mut c_void,
) -> CuResult;
type GraphLaunchFn = unsafe extern "C" fn(CuHandle, CuHandle) -> CuResult;
type CtxSynchronizeFn = unsafe extern "C" fn() -> CuResult;
type CtxSynchronizeV2Fn = unsafe extern "C" fn(CuHandle) -> CuResult;
type StreamSynchronizeFn = unsafe extern "C" fn(CuHandle) -> CuResult;
type BeginCaptureFn = unsafe extern "C" fn(CuHandle) -> CuResult;
type BeginCaptureV2Fn = unsafe extern "C" fn(CuHandle, c_int) -> CuResult;
type BeginCaptureToGraphFn = unsafe extern "C" fn(
    CuHandle,
    CuHandle,
    *const CuHandle,
    *const c_void,
    usize,
    c_int,
) -> CuResult;
type EndCaptureFn = unsafe extern "C" fn(CuHandle, *mut CuHandle) -> CuResult;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut CuDevice) -> CuResult;
type MemAdviseFn = unsafe extern "C" fn(CuDevicePtr, usize, c_int, CuDevice) -> CuResult;

/// The driver's entry point for `v` (0 when it cannot be found).
pub(crate) fn real_addr(v: Variant) -> usize {
    REALS.get_or_lookup(v, |s| {
        ffi::lookup_driver_symbol(s, CUDA_HANDLE.load(Ordering::Acquire))
    })
}

/// The driver's function for `$v` as type `$t`, or return `CUDA_ERROR_NOT_INITIALIZED`.
macro_rules! real {
    ($v:expr, $t:ty) => {{
        let addr = real_addr($v);
        if addr == 0 {
            return CUDA_ERROR_NOT_INITIALIZED;
        }
        // SAFETY: `addr` is the driver's entry point for exactly this variant (found by its
        // exported symbol, or returned by cuGetProcAddress for this ABI), whose C signature
        // is `$t`.
        unsafe { std::mem::transmute::<usize, $t>(addr) }
    }};
}

/// The address of the shim's wrapper for `v` (0 for variants it only calls).
fn wrapper_addr(v: Variant) -> usize {
    match v {
        Variant::GetProcAddress => cuGetProcAddress as *const () as usize,
        Variant::GetProcAddressV2 => cuGetProcAddress_v2 as *const () as usize,
        Variant::MemAlloc => cuMemAlloc_v2 as *const () as usize,
        Variant::MemAllocPitch => cuMemAllocPitch_v2 as *const () as usize,
        Variant::MemAllocManaged => cuMemAllocManaged as *const () as usize,
        Variant::MemFree => cuMemFree_v2 as *const () as usize,
        Variant::MemAllocAsync => cuMemAllocAsync as *const () as usize,
        Variant::MemAllocAsyncPtsz => cuMemAllocAsync_ptsz as *const () as usize,
        Variant::MemAllocFromPoolAsync => cuMemAllocFromPoolAsync as *const () as usize,
        Variant::MemAllocFromPoolAsyncPtsz => cuMemAllocFromPoolAsync_ptsz as *const () as usize,
        Variant::MemFreeAsync => cuMemFreeAsync as *const () as usize,
        Variant::MemFreeAsyncPtsz => cuMemFreeAsync_ptsz as *const () as usize,
        Variant::MemCreate => cuMemCreate as *const () as usize,
        Variant::MemRelease => cuMemRelease as *const () as usize,
        Variant::MemGetInfo => cuMemGetInfo_v2 as *const () as usize,
        Variant::DeviceTotalMem => cuDeviceTotalMem_v2 as *const () as usize,
        Variant::LaunchKernel => cuLaunchKernel as *const () as usize,
        Variant::LaunchKernelPtsz => cuLaunchKernel_ptsz as *const () as usize,
        Variant::LaunchKernelEx => cuLaunchKernelEx as *const () as usize,
        Variant::LaunchKernelExPtsz => cuLaunchKernelEx_ptsz as *const () as usize,
        Variant::LaunchCooperativeKernel => cuLaunchCooperativeKernel as *const () as usize,
        Variant::LaunchCooperativeKernelPtsz => {
            cuLaunchCooperativeKernel_ptsz as *const () as usize
        }
        Variant::GraphLaunch => cuGraphLaunch as *const () as usize,
        Variant::GraphLaunchPtsz => cuGraphLaunch_ptsz as *const () as usize,
        Variant::CtxSynchronize => cuCtxSynchronize as *const () as usize,
        Variant::CtxSynchronizeV2 => cuCtxSynchronize_v2 as *const () as usize,
        Variant::StreamSynchronize => cuStreamSynchronize as *const () as usize,
        Variant::StreamSynchronizePtsz => cuStreamSynchronize_ptsz as *const () as usize,
        Variant::StreamBeginCapture => cuStreamBeginCapture as *const () as usize,
        Variant::StreamBeginCapturePtsz => cuStreamBeginCapture_ptsz as *const () as usize,
        Variant::StreamBeginCaptureV2 => cuStreamBeginCapture_v2 as *const () as usize,
        Variant::StreamBeginCaptureV2Ptsz => cuStreamBeginCapture_v2_ptsz as *const () as usize,
        Variant::StreamBeginCaptureToGraph => cuStreamBeginCaptureToGraph as *const () as usize,
        Variant::StreamBeginCaptureToGraphPtsz => {
            cuStreamBeginCaptureToGraph_ptsz as *const () as usize
        }
        Variant::StreamEndCapture => cuStreamEndCapture as *const () as usize,
        Variant::StreamEndCapturePtsz => cuStreamEndCapture_ptsz as *const () as usize,
        Variant::CtxGetDevice
        | Variant::MemAdvise
        | Variant::CtxGetCurrent
        | Variant::CtxSetCurrent
        | Variant::EventCreate
        | Variant::EventRecord
        | Variant::EventRecordPtsz
        | Variant::EventQuery
        | Variant::StreamQuery
        | Variant::EventElapsedTime
        | Variant::StreamIsCapturing
        | Variant::StreamIsCapturingPtsz
        | Variant::ThreadExchangeCaptureMode
        | Variant::DeviceGetCount
        | Variant::DeviceGet
        | Variant::DeviceGetPciBusId
        | Variant::MemHostRegister
        | Variant::MemHostGetDevicePointer
        | Variant::StreamWaitValue32
        | Variant::StreamWaitValue32Ptsz => 0,
    }
}

// ---------------------------------------------------------------------------------------
// dlsym

/// Find the C library's `dlsym` before anything else runs, so the trampoline can use it.
#[used]
#[link_section = ".init_array"]
static FIND_REAL_DLSYM: extern "C" fn() = find_real_dlsym;

extern "C" fn find_real_dlsym() {
    ffi::real_dlsym_addr();
}

/// `dlsym`, interposed: `RTLD_NEXT` lookups go straight to the C library's (keeping the
/// caller's identity); others go through [`dlsym_hook`].
///
/// # Safety
/// The C `dlsym` contract.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmp rdi, -1",
        "jne 2f",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "jmp {hook}",
        real = sym ffi::REAL_DLSYM,
        hook = sym dlsym_hook,
    )
}

/// `dlsym`, interposed (no trampoline on this architecture: `RTLD_NEXT` lookups made through
/// it are relative to the shim).
///
/// # Safety
/// The C `dlsym` contract.
#[cfg(not(target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // SAFETY: forwarded under the caller's contract.
    unsafe { dlsym_hook(handle, symbol) }
}

/// Look the symbol up for real, then answer with the shim's wrapper if it wraps that symbol.
unsafe extern "C" fn dlsym_hook(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    // SAFETY: the caller's arguments, unchanged, to the real dlsym.
    let real = unsafe { ffi::call_real_dlsym(handle, symbol) };
    if real.is_null() {
        return real;
    }
    // SAFETY: dlsym found the symbol, so `symbol` is a valid NUL-terminated string.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    if !name.starts_with(b"cu") {
        return real;
    }
    let Some(v) = Variant::by_symbol(name) else {
        return real;
    };
    let h = handle as usize;
    if h != 0 && h != usize::MAX {
        let _ = CUDA_HANDLE.compare_exchange(0, h, Ordering::AcqRel, Ordering::Relaxed);
    }
    let answer = REALS.answer(v, real as usize, wrapper_addr(v));
    shim::debug(|| {
        format!(
            "dlsym({}) -> {}",
            String::from_utf8_lossy(name),
            if answer == real as usize {
                "driver (unwrapped)"
            } else {
                "wrapper"
            }
        )
    });
    answer as *mut c_void
}

// ---------------------------------------------------------------------------------------
// cuGetProcAddress

/// Replace the driver's answer `*pfn` to a `cuGetProcAddress` request by the wrapper of the
/// same ABI, when the shim wraps it.
///
/// # Safety
/// `symbol` is null or NUL-terminated; `pfn` is null or writable.
unsafe fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, version: c_int, flags: u64) {
    if symbol.is_null() || pfn.is_null() {
        return;
    }
    // SAFETY: non-null and NUL-terminated by the cuGetProcAddress contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    let Some(v) = resolve::for_proc_address(name, version, flags) else {
        return;
    };
    // SAFETY: `pfn` is non-null and the driver just wrote it.
    let real = unsafe { *pfn } as usize;
    let answer = REALS.answer(v, real, wrapper_addr(v));
    shim::debug(|| {
        format!(
            "cuGetProcAddress({}, {version}, {flags}) -> {:?} {}",
            String::from_utf8_lossy(name),
            v,
            if answer == real {
                "driver (unwrapped)"
            } else {
                "wrapper"
            }
        )
    });
    // SAFETY: as above, `pfn` is writable.
    unsafe { *pfn = answer as *mut c_void };
}

/// `cuGetProcAddress` (CUDA 11.3–11.8 ABI, four arguments).
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CuResult {
    let real = real!(Variant::GetProcAddress, GetProcAddressFn);
    // SAFETY: the caller's arguments, unchanged, to the driver.
    let rc = unsafe { real(symbol, pfn, version, flags) };
    if rc == CUDA_SUCCESS {
        // SAFETY: same pointers the driver accepted.
        unsafe { substitute(symbol, pfn, version, flags) };
    }
    rc
}

/// `cuGetProcAddress_v2` (CUDA 12.0+ ABI, with the symbol status).
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> CuResult {
    let real = real!(Variant::GetProcAddressV2, GetProcAddressV2Fn);
    // SAFETY: the caller's arguments, unchanged, to the driver.
    let rc = unsafe { real(symbol, pfn, version, flags, status) };
    if rc == CUDA_SUCCESS {
        // SAFETY: same pointers the driver accepted.
        unsafe { substitute(symbol, pfn, version, flags) };
    }
    rc
}

// ---------------------------------------------------------------------------------------
// memory

/// The current context's device (0 when it cannot be asked).
fn current_device() -> CuDevice {
    let addr = real_addr(Variant::CtxGetDevice);
    if addr == 0 {
        return 0;
    }
    // SAFETY: the driver's cuCtxGetDevice, whose signature is CtxGetDeviceFn.
    let f = unsafe { std::mem::transmute::<usize, CtxGetDeviceFn>(addr) };
    let mut dev: CuDevice = 0;
    // SAFETY: writes one int into our local.
    if unsafe { f(&mut dev) } == CUDA_SUCCESS {
        dev
    } else {
        0
    }
}

/// Read a pointer the driver wrote after a successful call.
///
/// # Safety
/// `p` was accepted by a driver call that succeeded (so it is non-null and written).
unsafe fn written<T: Copy>(p: *const T) -> T {
    // SAFETY: per the contract.
    unsafe { *p }
}

/// The allocation a driver call made, keyed by the pointer it wrote.
///
/// # Safety
/// `dptr` was passed to the driver call that returned `rc`.
unsafe fn ptr_result(rc: CuResult, dptr: *const CuDevicePtr, size: u64) -> Option<(Key, u64)> {
    if rc != CUDA_SUCCESS || dptr.is_null() {
        return None;
    }
    // SAFETY: the call succeeded, so the driver wrote `*dptr`.
    Some((Key::Ptr(unsafe { *dptr }), size))
}

/// Place an over-limit allocation in managed memory preferring the host, as swap.
///
/// # Safety
/// `dptr` is the caller's writable result pointer.
unsafe fn swap_alloc(dptr: *mut CuDevicePtr, size: usize, device: CuDevice) -> CuResult {
    let s = shim::get();
    let get_info = real!(Variant::MemGetInfo, MemGetInfoFn);
    let managed = real!(Variant::MemAllocManaged, MemAllocManagedFn);
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: writes two size_t into our locals.
    let rc = unsafe { get_info(&mut free, &mut total) };
    if rc != CUDA_SUCCESS || !swap_fits(size as u64, free as u64) {
        shim::log(format_args!(
            "not spilling {size} bytes to host memory: the GPU has only {free} bytes free (managed memory beyond that can hang it)"
        ));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    // SAFETY: the caller's result pointer and size, global attachment.
    let rc = unsafe { managed(dptr, size, CU_MEM_ATTACH_GLOBAL) };
    if rc != CUDA_SUCCESS {
        return rc;
    }
    // SAFETY: the allocation succeeded, so the driver wrote *dptr.
    let ptr = unsafe { written(dptr) };
    let advise = real_addr(Variant::MemAdvise);
    if advise != 0 {
        // SAFETY: the driver's cuMemAdvise (device-ordinal ABI, MemAdviseFn).
        let advise = unsafe { std::mem::transmute::<usize, MemAdviseFn>(advise) };
        // SAFETY: advises the range just allocated.
        let rc = unsafe {
            advise(
                ptr,
                size,
                CU_MEM_ADVISE_SET_PREFERRED_LOCATION,
                CU_DEVICE_CPU,
            )
        };
        if rc != CUDA_SUCCESS {
            shim::debug(|| format!("cuMemAdvise(preferred host) failed with {rc}"));
        }
    }
    s.record_swap(Key::Ptr(ptr), device, size as u64);
    CUDA_SUCCESS
}

/// `cuMemAlloc_v2`: within the limit, or spilled to host memory when allowed, or OOM.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CuDevicePtr, size: usize) -> CuResult {
    let real = real!(Variant::MemAlloc, MemAllocFn);
    let s = shim::get();
    let dev = current_device();
    let r = s.allocate(dev, size as u64, Kind::Device, || {
        // SAFETY: the caller's arguments, unchanged, to the driver.
        let rc = unsafe { real(dptr, size) };
        // SAFETY: `dptr` went to the call that returned `rc`.
        let got = unsafe { ptr_result(rc, dptr, size as u64) };
        (rc, got)
    });
    match r {
        Ok(rc) => rc,
        Err(_) if s.host_swap() && !dptr.is_null() => {
            // SAFETY: the caller's result pointer.
            unsafe { swap_alloc(dptr, size, dev) }
        }
        Err(over) => {
            s.refused(over);
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `cuMemAllocPitch_v2`: reserved at width × height, recorded at pitch × height.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CuDevicePtr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    elem: c_uint,
) -> CuResult {
    let real = real!(Variant::MemAllocPitch, MemAllocPitchFn);
    let s = shim::get();
    let want = (width as u64).saturating_mul(height as u64);
    let r = s.allocate(current_device(), want, Kind::Device, || {
        // SAFETY: the caller's arguments, unchanged, to the driver.
        let rc = unsafe { real(dptr, pitch, width, height, elem) };
        let got = (rc == CUDA_SUCCESS).then(|| {
            // SAFETY: read only after success.
            let (p, pitch) = unsafe { (written(dptr), written(pitch)) };
            (Key::Ptr(p), (pitch as u64).saturating_mul(height as u64))
        });
        (rc, got)
    });
    r.unwrap_or_else(|over| {
        s.refused(over);
        CUDA_ERROR_OUT_OF_MEMORY
    })
}

/// `cuMemAllocManaged`: counted as device memory; over the limit it is allowed only as swap.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CuDevicePtr,
    size: usize,
    flags: c_uint,
) -> CuResult {
    let real = real!(Variant::MemAllocManaged, MemAllocManagedFn);
    let s = shim::get();
    let dev = current_device();
    let r = s.allocate(dev, size as u64, Kind::Managed, || {
        // SAFETY: the caller's arguments, unchanged, to the driver.
        let rc = unsafe { real(dptr, size, flags) };
        // SAFETY: `dptr` went to the call that returned `rc`.
        let got = unsafe { ptr_result(rc, dptr, size as u64) };
        (rc, got)
    });
    match r {
        Ok(rc) => rc,
        Err(_) if s.host_swap() => {
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(dptr, size, flags) };
            if rc == CUDA_SUCCESS {
                // SAFETY: read only after success.
                s.record_swap(Key::Ptr(unsafe { written(dptr) }), dev, size as u64);
            }
            rc
        }
        Err(over) => {
            s.refused(over);
            CUDA_ERROR_OUT_OF_MEMORY
        }
    }
}

/// `cuMemFree_v2`.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CuDevicePtr) -> CuResult {
    let real = real!(Variant::MemFree, MemFreeFn);
    // SAFETY: the caller's argument, unchanged, to the driver.
    let rc = unsafe { real(dptr) };
    if rc == CUDA_SUCCESS {
        shim::get().release(Key::Ptr(dptr));
    }
    rc
}

macro_rules! alloc_async {
    ($name:ident, $v:expr) => {
        /// `cuMemAllocAsync` (this stream flavour): counted when enqueued, OOM over the limit.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CuDevicePtr,
            size: usize,
            stream: CuHandle,
        ) -> CuResult {
            let real = real!($v, MemAllocAsyncFn);
            let s = shim::get();
            let r = s.allocate(current_device(), size as u64, Kind::Async, || {
                // SAFETY: the caller's arguments, unchanged, to the driver.
                let rc = unsafe { real(dptr, size, stream) };
                // SAFETY: `dptr` went to the call that returned `rc`.
                let got = unsafe { ptr_result(rc, dptr, size as u64) };
                (rc, got)
            });
            r.unwrap_or_else(|over| {
                s.refused(over);
                CUDA_ERROR_OUT_OF_MEMORY
            })
        }
    };
}
alloc_async!(cuMemAllocAsync, Variant::MemAllocAsync);
alloc_async!(cuMemAllocAsync_ptsz, Variant::MemAllocAsyncPtsz);

macro_rules! alloc_from_pool {
    ($name:ident, $v:expr) => {
        /// `cuMemAllocFromPoolAsync` (this stream flavour): counted when enqueued.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            dptr: *mut CuDevicePtr,
            size: usize,
            pool: CuHandle,
            stream: CuHandle,
        ) -> CuResult {
            let real = real!($v, MemAllocFromPoolAsyncFn);
            let s = shim::get();
            let r = s.allocate(current_device(), size as u64, Kind::Async, || {
                // SAFETY: the caller's arguments, unchanged, to the driver.
                let rc = unsafe { real(dptr, size, pool, stream) };
                // SAFETY: `dptr` went to the call that returned `rc`.
                let got = unsafe { ptr_result(rc, dptr, size as u64) };
                (rc, got)
            });
            r.unwrap_or_else(|over| {
                s.refused(over);
                CUDA_ERROR_OUT_OF_MEMORY
            })
        }
    };
}
alloc_from_pool!(cuMemAllocFromPoolAsync, Variant::MemAllocFromPoolAsync);
alloc_from_pool!(
    cuMemAllocFromPoolAsync_ptsz,
    Variant::MemAllocFromPoolAsyncPtsz
);

macro_rules! free_async {
    ($name:ident, $v:expr) => {
        /// `cuMemFreeAsync` (this stream flavour): uncounted when enqueued.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(dptr: CuDevicePtr, stream: CuHandle) -> CuResult {
            let real = real!($v, MemFreeAsyncFn);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(dptr, stream) };
            if rc == CUDA_SUCCESS {
                shim::get().release(Key::Ptr(dptr));
            }
            rc
        }
    };
}
free_async!(cuMemFreeAsync, Variant::MemFreeAsync);
free_async!(cuMemFreeAsync_ptsz, Variant::MemFreeAsyncPtsz);

/// `cuMemCreate`: physical memory on a device counts against that device's limit.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CuMemHandle,
    size: usize,
    prop: *const c_void,
    flags: u64,
) -> CuResult {
    let real = real!(Variant::MemCreate, MemCreateFn);
    // SAFETY: `prop` is the caller's CUmemAllocationProp (or null).
    let head = unsafe { ffi::read_alloc_prop(prop) };
    let device = match head {
        Some(h) if h.location_type == CU_MEM_LOCATION_TYPE_DEVICE => h.location_id,
        _ => {
            // Host or unknown locations are not device memory: pass through uncounted.
            // SAFETY: the caller's arguments, unchanged, to the driver.
            return unsafe { real(handle, size, prop, flags) };
        }
    };
    let s = shim::get();
    let r = s.allocate(device, size as u64, Kind::Physical, || {
        // SAFETY: the caller's arguments, unchanged, to the driver.
        let rc = unsafe { real(handle, size, prop, flags) };
        // SAFETY: read only after success.
        let got =
            (rc == CUDA_SUCCESS).then(|| (Key::Handle(unsafe { written(handle) }), size as u64));
        (rc, got)
    });
    r.unwrap_or_else(|over| {
        s.refused(over);
        CUDA_ERROR_OUT_OF_MEMORY
    })
}

/// `cuMemRelease`.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemRelease(handle: CuMemHandle) -> CuResult {
    let real = real!(Variant::MemRelease, MemReleaseFn);
    // SAFETY: the caller's argument, unchanged, to the driver.
    let rc = unsafe { real(handle) };
    if rc == CUDA_SUCCESS {
        shim::get().release(Key::Handle(handle));
    }
    rc
}

/// `cuMemGetInfo_v2`: the card's numbers shrunk to the limit.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    let real = real!(Variant::MemGetInfo, MemGetInfoFn);
    // SAFETY: the caller's arguments, unchanged, to the driver.
    let rc = unsafe { real(free, total) };
    if rc != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return rc;
    }
    let s = shim::get();
    let dev = current_device();
    // SAFETY: both pointers are non-null and were just written by the driver.
    let (f, t) = unsafe { (written(free), written(total)) };
    let (f, t) = visible_mem_info(f as u64, t as u64, s.device_current(dev), s.limit());
    // SAFETY: as above; the values only shrink, so they fit in usize.
    unsafe {
        *free = usize::try_from(f).unwrap_or(usize::MAX);
        *total = usize::try_from(t).unwrap_or(usize::MAX);
    }
    rc
}

/// `cuDeviceTotalMem_v2`: at most the limit.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice) -> CuResult {
    let real = real!(Variant::DeviceTotalMem, DeviceTotalMemFn);
    // SAFETY: the caller's arguments, unchanged, to the driver.
    let rc = unsafe { real(bytes, dev) };
    if rc == CUDA_SUCCESS && !bytes.is_null() {
        let limit = shim::get().limit();
        // SAFETY: non-null and just written by the driver.
        unsafe {
            if (*bytes as u64) > limit {
                *bytes = usize::try_from(limit).unwrap_or(usize::MAX);
            }
        }
    }
    rc
}

// ---------------------------------------------------------------------------------------
// compute

macro_rules! launch_kernel {
    ($name:ident, $v:expr, $ptsz:expr, $path:expr) => {
        /// `cuLaunchKernel` (this stream flavour): gated and counted.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            f: CuHandle,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            stream: CuHandle,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CuResult {
            let real = real!($v, LaunchKernelFn);
            let s = shim::get();
            let t = s.before_launch(stream as usize, $ptsz, f as usize);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) };
            s.after_launch(t, $path, stream as u64, rc);
            rc
        }
    };
}
launch_kernel!(
    cuLaunchKernel,
    Variant::LaunchKernel,
    false,
    LaunchPath::Kernel
);
launch_kernel!(
    cuLaunchKernel_ptsz,
    Variant::LaunchKernelPtsz,
    true,
    LaunchPath::KernelPtsz
);

macro_rules! launch_kernel_ex {
    ($name:ident, $v:expr, $ptsz:expr, $path:expr) => {
        /// `cuLaunchKernelEx` (this stream flavour): gated and counted.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            config: *const c_void,
            f: CuHandle,
            params: *mut *mut c_void,
            extra: *mut *mut c_void,
        ) -> CuResult {
            let real = real!($v, LaunchKernelExFn);
            let s = shim::get();
            // SAFETY: `config` is the caller's CUlaunchConfig (or null), per the API contract.
            let stream = unsafe { ffi::launch_config_stream(config) };
            let t = s.before_launch(stream as usize, $ptsz, f as usize);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(config, f, params, extra) };
            s.after_launch(t, $path, stream, rc);
            rc
        }
    };
}
launch_kernel_ex!(
    cuLaunchKernelEx,
    Variant::LaunchKernelEx,
    false,
    LaunchPath::KernelEx
);
launch_kernel_ex!(
    cuLaunchKernelEx_ptsz,
    Variant::LaunchKernelExPtsz,
    true,
    LaunchPath::KernelExPtsz
);

macro_rules! launch_cooperative {
    ($name:ident, $v:expr, $ptsz:expr) => {
        /// `cuLaunchCooperativeKernel` (this stream flavour): gated and counted.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            f: CuHandle,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            shared: c_uint,
            stream: CuHandle,
            params: *mut *mut c_void,
        ) -> CuResult {
            let real = real!($v, LaunchCooperativeFn);
            let s = shim::get();
            let t = s.before_launch(stream as usize, $ptsz, f as usize);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(f, gx, gy, gz, bx, by, bz, shared, stream, params) };
            s.after_launch(t, LaunchPath::Cooperative, stream as u64, rc);
            rc
        }
    };
}
launch_cooperative!(
    cuLaunchCooperativeKernel,
    Variant::LaunchCooperativeKernel,
    false
);
launch_cooperative!(
    cuLaunchCooperativeKernel_ptsz,
    Variant::LaunchCooperativeKernelPtsz,
    true
);

macro_rules! graph_launch {
    ($name:ident, $v:expr, $ptsz:expr) => {
        /// `cuGraphLaunch` (this stream flavour): gated and counted as one launch.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(exec: CuHandle, stream: CuHandle) -> CuResult {
            let real = real!($v, GraphLaunchFn);
            let s = shim::get();
            let t = s.before_launch(stream as usize, $ptsz, exec as usize);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(exec, stream) };
            s.after_launch(t, LaunchPath::Graph, stream as u64, rc);
            rc
        }
    };
}
graph_launch!(cuGraphLaunch, Variant::GraphLaunch, false);
graph_launch!(cuGraphLaunch_ptsz, Variant::GraphLaunchPtsz, true);

/// `cuCtxSynchronize`: everything submitted before it is complete afterwards.
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CuResult {
    let real = real!(Variant::CtxSynchronize, CtxSynchronizeFn);
    let s = shim::get();
    let snap = s.sync_snapshot();
    // SAFETY: no arguments; the driver's own entry point.
    let rc = unsafe { real() };
    s.ctx_synchronized(snap, rc);
    rc
}

/// `cuCtxSynchronize_v2` (CUDA 13): counted like `cuCtxSynchronize` (process-wide, so with
/// several contexts `ended` may run ahead for the ones not synchronised).
///
/// # Safety
/// The driver API contract of this function.
#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize_v2(ctx: CuHandle) -> CuResult {
    let real = real!(Variant::CtxSynchronizeV2, CtxSynchronizeV2Fn);
    let s = shim::get();
    let snap = s.sync_snapshot();
    // SAFETY: the caller's argument, unchanged, to the driver.
    let rc = unsafe { real(ctx) };
    s.ctx_synchronized(snap, rc);
    rc
}

macro_rules! stream_sync {
    ($name:ident, $v:expr) => {
        /// `cuStreamSynchronize` (this stream flavour): advances `ended` when one stream is used.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(stream: CuHandle) -> CuResult {
            let real = real!($v, StreamSynchronizeFn);
            let s = shim::get();
            let snap = s.sync_snapshot();
            // SAFETY: the caller's argument, unchanged, to the driver.
            let rc = unsafe { real(stream) };
            s.stream_synchronized(stream as u64, snap, rc);
            rc
        }
    };
}
stream_sync!(cuStreamSynchronize, Variant::StreamSynchronize);
stream_sync!(cuStreamSynchronize_ptsz, Variant::StreamSynchronizePtsz);

macro_rules! begin_capture {
    ($name:ident, $v:expr) => {
        /// `cuStreamBeginCapture` (first ABI, this stream flavour): counted as a capture in
        /// progress (`shim::Captures`).
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(stream: CuHandle) -> CuResult {
            let real = real!($v, BeginCaptureFn);
            // SAFETY: the caller's argument, unchanged, to the driver.
            shim::get().capture_begins(|| unsafe { real(stream) })
        }
    };
}
begin_capture!(cuStreamBeginCapture, Variant::StreamBeginCapture);
begin_capture!(cuStreamBeginCapture_ptsz, Variant::StreamBeginCapturePtsz);

macro_rules! begin_capture_v2 {
    ($name:ident, $v:expr) => {
        /// `cuStreamBeginCapture_v2` (this stream flavour): counted as a capture in progress.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(stream: CuHandle, mode: c_int) -> CuResult {
            let real = real!($v, BeginCaptureV2Fn);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            shim::get().capture_begins(|| unsafe { real(stream, mode) })
        }
    };
}
begin_capture_v2!(cuStreamBeginCapture_v2, Variant::StreamBeginCaptureV2);
begin_capture_v2!(
    cuStreamBeginCapture_v2_ptsz,
    Variant::StreamBeginCaptureV2Ptsz
);

macro_rules! begin_capture_to_graph {
    ($name:ident, $v:expr) => {
        /// `cuStreamBeginCaptureToGraph` (this stream flavour): counted as a capture in
        /// progress.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            stream: CuHandle,
            graph: CuHandle,
            dependencies: *const CuHandle,
            dependency_data: *const c_void,
            count: usize,
            mode: c_int,
        ) -> CuResult {
            let real = real!($v, BeginCaptureToGraphFn);
            shim::get().capture_begins(|| {
                // SAFETY: the caller's arguments, unchanged, to the driver.
                unsafe { real(stream, graph, dependencies, dependency_data, count, mode) }
            })
        }
    };
}
begin_capture_to_graph!(
    cuStreamBeginCaptureToGraph,
    Variant::StreamBeginCaptureToGraph
);
begin_capture_to_graph!(
    cuStreamBeginCaptureToGraph_ptsz,
    Variant::StreamBeginCaptureToGraphPtsz
);

macro_rules! end_capture {
    ($name:ident, $v:expr) => {
        /// `cuStreamEndCapture` (this stream flavour): the capture is no longer in progress.
        ///
        /// # Safety
        /// The driver API contract of this function.
        #[no_mangle]
        pub unsafe extern "C" fn $name(stream: CuHandle, graph: *mut CuHandle) -> CuResult {
            let real = real!($v, EndCaptureFn);
            // SAFETY: the caller's arguments, unchanged, to the driver.
            let rc = unsafe { real(stream, graph) };
            shim::get().capture_ended(rc);
            rc
        }
    };
}
end_capture!(cuStreamEndCapture, Variant::StreamEndCapture);
end_capture!(cuStreamEndCapture_ptsz, Variant::StreamEndCapturePtsz);
