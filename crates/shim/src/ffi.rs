//! The foreign boundary: CUDA driver types declared by hand, the dynamic loader, futexes and
//! shared mappings.
//!
//! No CUDA headers exist on the build machines, so the few driver types the shim needs are
//! declared here from the public driver API: handles are opaque pointers, device pointers are
//! 64-bit integers, every entry point returns a 32-bit `CUresult`. Everything in this module
//! that touches raw memory or the loader is wrapped in a small safe function so that the rest
//! of the crate (accounting, gating, resolution, control) stays free of `unsafe`; the exported
//! `extern "C"` wrappers live in `hooks.rs`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `CUresult`: 0 is success, anything else an error code.
pub type CuResult = c_int;
/// `CUdeviceptr`: a device virtual address.
pub type CuDevicePtr = u64;
/// `CUdevice`: a device ordinal.
pub type CuDevice = c_int;
/// `CUstream`, `CUfunction`, `CUgraphExec`, `CUmemoryPool`, `CUcontext`: opaque handles.
pub type CuHandle = *mut c_void;
/// `CUmemGenericAllocationHandle`: a physical allocation made by `cuMemCreate`.
pub type CuMemHandle = u64;

/// `CUDA_SUCCESS`.
pub const CUDA_SUCCESS: CuResult = 0;
/// `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;
/// `CUDA_ERROR_NOT_INITIALIZED`: returned when the real driver entry point cannot be found.
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
/// `CU_MEM_ATTACH_GLOBAL`: managed memory accessible from every stream.
pub const CU_MEM_ATTACH_GLOBAL: u32 = 1;
/// `CU_MEM_ADVISE_SET_PREFERRED_LOCATION`.
pub const CU_MEM_ADVISE_SET_PREFERRED_LOCATION: c_int = 3;
/// `CU_DEVICE_CPU`: the host, as a device ordinal in `cuMemAdvise`.
pub const CU_DEVICE_CPU: CuDevice = -1;
/// `CU_MEM_LOCATION_TYPE_DEVICE` in `CUmemLocation.type`.
pub const CU_MEM_LOCATION_TYPE_DEVICE: u32 = 1;

/// The first fields of `CUmemAllocationProp` (the rest is never read).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CuMemAllocationPropHead {
    /// `CUmemAllocationType`.
    pub alloc_type: u32,
    /// `CUmemAllocationHandleType`.
    pub requested_handle_types: u32,
    /// `CUmemLocation.type`.
    pub location_type: u32,
    /// `CUmemLocation.id`: the device ordinal when the type is a device.
    pub location_id: c_int,
}

/// Read the head of a `CUmemAllocationProp` the caller passed to `cuMemCreate`.
///
/// # Safety
/// `prop` must be null or point to a readable `CUmemAllocationProp`.
pub unsafe fn read_alloc_prop(prop: *const c_void) -> Option<CuMemAllocationPropHead> {
    let head = prop.cast::<CuMemAllocationPropHead>();
    if head.is_null() {
        return None;
    }
    // SAFETY: non-null and, by this function's contract, points at a CUmemAllocationProp whose
    // first 16 bytes have exactly this layout.
    Some(unsafe { head.read_unaligned() })
}

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// The real `dlsym` of the C library, found once with `dlvsym` (the shim exports its own).
pub static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

/// Find (once) the C library's own `dlsym`, skipping the shim's export.
pub fn real_dlsym_addr() -> usize {
    let cached = REAL_DLSYM.load(Ordering::Acquire);
    if cached != 0 {
        return cached;
    }
    let mut found = 0usize;
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
        // SAFETY: dlvsym with RTLD_NEXT and two NUL-terminated strings; it only reads them.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            found = p as usize;
            break;
        }
    }
    if found != 0 {
        REAL_DLSYM.store(found, Ordering::Release);
    }
    found
}

/// Call the real `dlsym`. Returns null when it is unavailable or the symbol is missing.
///
/// # Safety
/// `handle` must be a handle `dlsym` accepts (from `dlopen`, or `RTLD_DEFAULT`/`RTLD_NEXT`) and
/// `name` a NUL-terminated string.
pub unsafe fn call_real_dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void {
    let addr = real_dlsym_addr();
    if addr == 0 || name.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `addr` came from dlvsym("dlsym") and has dlsym's signature.
    let f: DlsymFn = unsafe { std::mem::transmute::<usize, DlsymFn>(addr) };
    // SAFETY: arguments are valid per this function's contract.
    unsafe { f(handle, name) }
}

/// The handle of a `libcuda.so.1` that is already loaded (never loads it).
pub fn loaded_libcuda() -> *mut c_void {
    // SAFETY: RTLD_NOLOAD only returns a handle for a library already in the process; the
    // name is a NUL-terminated literal. The reference it takes is never dropped on purpose:
    // libcuda stays loaded for the process's life anyway.
    unsafe {
        libc::dlopen(
            c"libcuda.so.1".as_ptr(),
            libc::RTLD_LAZY | libc::RTLD_NOLOAD,
        )
    }
}

/// Look a driver symbol up: after the shim in the global scope, then in `extra` (a handle the
/// program used), then in an already loaded `libcuda.so.1`. Returns 0 when none has it.
pub fn lookup_driver_symbol(name: &CStr, extra: usize) -> usize {
    // SAFETY: RTLD_NEXT and a NUL-terminated name.
    let p = unsafe { call_real_dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if !p.is_null() {
        return p as usize;
    }
    if extra != 0 {
        // SAFETY: `extra` is a handle the program itself passed to dlsym successfully.
        let p = unsafe { call_real_dlsym(extra as *mut c_void, name.as_ptr()) };
        if !p.is_null() {
            return p as usize;
        }
    }
    let h = loaded_libcuda();
    if h.is_null() {
        return 0;
    }
    // SAFETY: `h` is a live handle from dlopen.
    unsafe { call_real_dlsym(h, name.as_ptr()) as usize }
}

/// Run `f` when the process exits normally.
pub fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: registers a plain function pointer that stays valid (the shim is never unloaded
    // while preloaded).
    unsafe { libc::atexit(f) == 0 }
}

/// The head of `CUlaunchConfig` (grid, block, shared bytes, stream).
#[repr(C)]
struct CuLaunchConfigHead {
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem_bytes: u32,
    stream: CuHandle,
}

/// The stream of a `cuLaunchKernelEx` configuration (0 if `config` is null).
///
/// # Safety
/// `config` must be null or point to a readable `CUlaunchConfig`.
pub unsafe fn launch_config_stream(config: *const c_void) -> u64 {
    let head = config.cast::<CuLaunchConfigHead>();
    if head.is_null() {
        return 0;
    }
    // SAFETY: per the contract, a CUlaunchConfig, whose first fields have this layout.
    unsafe { (*head).stream as u64 }
}

pub use gvm_shim_abi::sys::{futex_wait, futex_wake};
