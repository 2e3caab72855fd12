//! Driver calls the shim makes on its own behalf: the current context and device, events for
//! the queue tracker, stream-capture checks, and the GPU-side gate (pinning the arbitration
//! block for the GPU, stream waits on its words).
//!
//! Two rules keep these calls from disturbing the program:
//! * No event is recorded on a stream that is being captured into a CUDA graph (the record
//!   would become part of the graph, and querying it later is an error). The null, legacy
//!   and per-thread stream handles cannot be captured and are not asked.
//! * Event queries run with the calling thread's capture mode switched to *relaxed*
//!   ([`relaxed`]), so that a query made while another thread captures in the default
//!   *global* mode is allowed and does not invalidate that capture.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

use crate::ffi::{CuHandle, CuResult, CUDA_SUCCESS};
use crate::hooks::real_addr;
use crate::queue::{Events, Query, StreamKey};
use crate::resolve::Variant;

type CtxGetCurrentFn = unsafe extern "C" fn(*mut CuHandle) -> CuResult;
type CtxSetCurrentFn = unsafe extern "C" fn(CuHandle) -> CuResult;
type CtxGetDeviceFn = unsafe extern "C" fn(*mut c_int) -> CuResult;
type EventCreateFn = unsafe extern "C" fn(*mut CuHandle, c_uint) -> CuResult;
type EventRecordFn = unsafe extern "C" fn(CuHandle, CuHandle) -> CuResult;
type EventQueryFn = unsafe extern "C" fn(CuHandle) -> CuResult;
type StreamQueryFn = unsafe extern "C" fn(CuHandle) -> CuResult;
type EventElapsedTimeFn = unsafe extern "C" fn(*mut f32, CuHandle, CuHandle) -> CuResult;
type StreamIsCapturingFn = unsafe extern "C" fn(CuHandle, *mut c_int) -> CuResult;
type ExchangeModeFn = unsafe extern "C" fn(*mut c_int) -> CuResult;
type DeviceGetCountFn = unsafe extern "C" fn(*mut c_int) -> CuResult;
type DeviceGetFn = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type DeviceGetPciBusIdFn = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult;
type MemHostRegisterFn = unsafe extern "C" fn(*mut c_void, usize, c_uint) -> CuResult;
type MemHostGetDevicePointerFn = unsafe extern "C" fn(*mut u64, *mut c_void, c_uint) -> CuResult;
type StreamWaitValue32Fn = unsafe extern "C" fn(CuHandle, u64, u32, c_uint) -> CuResult;

/// `CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP`: pinned for every context,
/// and mapped into the GPU's address space.
const CU_MEMHOSTREGISTER_PORTABLE_DEVICEMAP: c_uint = 0x1 | 0x2;
/// `CU_STREAM_WAIT_VALUE_EQ`: wait until the word equals the value.
const CU_STREAM_WAIT_VALUE_EQ: c_uint = 0x1;

/// The most GPUs the shim reports to the daemon.
const MAX_REPORTED_GPUS: c_int = 64;

/// `CU_EVENT_DISABLE_TIMING`: the cheapest event.
const CU_EVENT_DISABLE_TIMING: c_uint = 2;
/// `CU_EVENT_DEFAULT`: an event that records a GPU timestamp.
const CU_EVENT_DEFAULT: c_uint = 0;
/// `CUDA_ERROR_NOT_READY`: an event query's "still pending".
const CUDA_ERROR_NOT_READY: CuResult = 600;
/// `CU_STREAM_CAPTURE_MODE_RELAXED`.
const CU_STREAM_CAPTURE_MODE_RELAXED: c_int = 2;
/// `CU_STREAM_CAPTURE_STATUS_NONE`.
const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;
/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD`: special handles, never captured.
const MAX_SPECIAL_STREAM: usize = 2;
/// `CU_STREAM_PER_THREAD`: the calling thread's default stream, so another thread cannot
/// query it.
const CU_STREAM_PER_THREAD: usize = 2;
/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` .. `CUDA_ERROR_CAPTURED_EVENT`: the stream is
/// being captured (its launches become graph nodes, nothing of it runs now).
const CUDA_ERROR_STREAM_CAPTURE_FIRST: CuResult = 900;
const CUDA_ERROR_STREAM_CAPTURE_LAST: CuResult = 907;

/// The driver function for `v` as `T`, or `None` when the driver lacks it.
macro_rules! driver_fn {
    ($v:expr, $t:ty) => {{
        let addr = real_addr($v);
        if addr == 0 {
            None
        } else {
            // SAFETY: `addr` is the driver's exported entry point named by the variant,
            // whose C signature is `$t` in the public driver API.
            Some(unsafe { std::mem::transmute::<usize, $t>(addr) })
        }
    }};
}

/// The calling thread's current context (0 when none or unknown).
pub fn current_ctx() -> usize {
    let Some(f) = driver_fn!(Variant::CtxGetCurrent, CtxGetCurrentFn) else {
        return 0;
    };
    let mut ctx: CuHandle = std::ptr::null_mut();
    // SAFETY: writes one handle into our local.
    if unsafe { f(&mut ctx) } == CUDA_SUCCESS {
        ctx as usize
    } else {
        0
    }
}

/// The current context's device ordinal (0 when it cannot be asked).
pub fn current_device() -> i32 {
    let Some(f) = driver_fn!(Variant::CtxGetDevice, CtxGetDeviceFn) else {
        return 0;
    };
    let mut dev: c_int = 0;
    // SAFETY: writes one int into our local.
    if unsafe { f(&mut dev) } == CUDA_SUCCESS {
        dev
    } else {
        0
    }
}

/// How many devices the process sees, or `None` when the driver cannot say yet.
pub fn device_count() -> Option<i32> {
    let f = driver_fn!(Variant::DeviceGetCount, DeviceGetCountFn)?;
    let mut n: c_int = 0;
    // SAFETY: writes one int into our local.
    (unsafe { f(&mut n) } == CUDA_SUCCESS).then_some(n)
}

/// The PCI bus id of device `dev` as the driver writes it (`0000:3B:00.0`), or `None` when
/// the driver cannot say (not initialised, no such device, an old driver).
pub fn pci_bus_id(dev: c_int) -> Option<String> {
    let f = driver_fn!(Variant::DeviceGetPciBusId, DeviceGetPciBusIdFn)?;
    let mut buf = [0 as c_char; 32];
    let len = c_int::try_from(buf.len() - 1).ok()?;
    // SAFETY: the driver writes at most `len` bytes and a NUL into our 32-byte buffer, whose
    // last byte stays 0 in any case.
    if unsafe { f(buf.as_mut_ptr(), len, dev) } != CUDA_SUCCESS {
        return None;
    }
    // SAFETY: `buf` is NUL-terminated (its last byte was never handed to the driver).
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    text.to_str().ok().map(str::to_owned)
}

/// Every device the process sees: (CUDA ordinal, PCI bus id). Empty when the driver is not
/// initialised or lacks the calls; devices whose bus id cannot be read are left out.
pub fn visible_gpus() -> Vec<(u32, String)> {
    let Some(count_fn) = driver_fn!(Variant::DeviceGetCount, DeviceGetCountFn) else {
        return Vec::new();
    };
    let get = driver_fn!(Variant::DeviceGet, DeviceGetFn);
    let mut n: c_int = 0;
    // SAFETY: writes one int into our local.
    if unsafe { count_fn(&mut n) } != CUDA_SUCCESS {
        return Vec::new();
    }
    (0..n.clamp(0, MAX_REPORTED_GPUS))
        .filter_map(|ordinal| {
            let mut dev: c_int = ordinal;
            if let Some(g) = get {
                // SAFETY: writes one device handle into our local.
                if unsafe { g(&mut dev, ordinal) } != CUDA_SUCCESS {
                    return None;
                }
            }
            let pci = pci_bus_id(dev)?;
            Some((u32::try_from(ordinal).ok()?, pci))
        })
        .collect()
}

/// Make `ctx` current on the calling thread (used by the shim's own helper thread only).
pub fn set_current_ctx(ctx: usize) -> bool {
    let Some(f) = driver_fn!(Variant::CtxSetCurrent, CtxSetCurrentFn) else {
        return false;
    };
    // SAFETY: a context handle the program itself had current (or null, which unsets).
    unsafe { f(ctx as CuHandle) == CUDA_SUCCESS }
}

/// Switch the calling thread's stream-capture mode to relaxed for good (the shim's helper
/// thread, which only queries events).
pub fn relax_capture_mode() {
    let _ = exchange_mode(CU_STREAM_CAPTURE_MODE_RELAXED);
}

fn exchange_mode(mode: c_int) -> Option<c_int> {
    let f = driver_fn!(Variant::ThreadExchangeCaptureMode, ExchangeModeFn)?;
    let mut m = mode;
    // SAFETY: reads and writes one int of ours.
    (unsafe { f(&mut m) } == CUDA_SUCCESS).then_some(m)
}

/// Run `f` with the calling thread's capture mode relaxed, restoring it afterwards.
pub fn relaxed<R>(f: impl FnOnce() -> R) -> R {
    let old = exchange_mode(CU_STREAM_CAPTURE_MODE_RELAXED);
    let r = f();
    if let Some(mut old) = old {
        if let Some(x) = driver_fn!(Variant::ThreadExchangeCaptureMode, ExchangeModeFn) {
            // SAFETY: reads and writes one int of ours.
            unsafe { x(&mut old) };
        }
    }
    r
}

/// The queue a launch on `stream` (through a `_ptsz` entry point when `ptsz`) of the current
/// context, on `device`, went to, or `None` when it must not be tracked (no context, or the
/// stream is being captured).
pub fn stream_key(stream: usize, ptsz: bool, device: i32) -> Option<StreamKey> {
    let ctx = current_ctx();
    if ctx == 0 {
        return None;
    }
    if stream > MAX_SPECIAL_STREAM {
        let v = if ptsz {
            Variant::StreamIsCapturingPtsz
        } else {
            Variant::StreamIsCapturing
        };
        let f = driver_fn!(v, StreamIsCapturingFn)?;
        let mut status: c_int = CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: the program's stream handle, just accepted by a launch; writes one int.
        let rc = unsafe { f(stream as CuHandle, &mut status) };
        if rc != CUDA_SUCCESS || status != CU_STREAM_CAPTURE_STATUS_NONE {
            return None;
        }
    }
    Some(StreamKey {
        device,
        ctx,
        stream,
        ptsz,
    })
}

/// The real driver's events.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverEvents {
    /// Make the key's context current before a query (the helper thread has none).
    pub set_ctx: bool,
    /// Create events that record GPU timestamps, and ask for the time between two (for
    /// learning kernel run times; without it no run time is asked for).
    pub timing: bool,
}

impl Events for DriverEvents {
    fn create(&self, _key: StreamKey) -> Option<usize> {
        let f = driver_fn!(Variant::EventCreate, EventCreateFn)?;
        let mut e: CuHandle = std::ptr::null_mut();
        let flags = if self.timing {
            CU_EVENT_DEFAULT
        } else {
            CU_EVENT_DISABLE_TIMING
        };
        // SAFETY: writes one handle into our local; the launching thread's context is current.
        let rc = unsafe { f(&mut e, flags) };
        (rc == CUDA_SUCCESS && !e.is_null()).then_some(e as usize)
    }

    fn record(&self, event: usize, key: StreamKey) -> bool {
        let v = if key.ptsz {
            Variant::EventRecordPtsz
        } else {
            Variant::EventRecord
        };
        let Some(f) = driver_fn!(v, EventRecordFn) else {
            return false;
        };
        // SAFETY: an event we created in this stream's context, and the stream the program
        // launched on a moment ago.
        unsafe { f(event as CuHandle, key.stream as CuHandle) == CUDA_SUCCESS }
    }

    fn query(&self, event: usize, key: StreamKey) -> Query {
        let Some(f) = driver_fn!(Variant::EventQuery, EventQueryFn) else {
            return Query::Done;
        };
        if self.set_ctx {
            set_current_ctx(key.ctx);
        }
        // SAFETY: an event the shim created and never destroys.
        match unsafe { f(event as CuHandle) } {
            CUDA_ERROR_NOT_READY => Query::Pending,
            _ => Query::Done,
        }
    }

    fn can_query_stream(&self, key: StreamKey) -> bool {
        // The per-thread default stream (a `_ptsz` launch on stream 0, or the
        // CU_STREAM_PER_THREAD handle) is the launching thread's own: the helper thread would
        // query its own instead.
        !key.ptsz && key.stream != CU_STREAM_PER_THREAD && real_addr(Variant::StreamQuery) != 0
    }

    fn query_stream(&self, key: StreamKey) -> Query {
        let Some(f) = driver_fn!(Variant::StreamQuery, StreamQueryFn) else {
            return Query::Done;
        };
        if self.set_ctx {
            set_current_ctx(key.ctx);
        }
        // SAFETY: a stream handle the program launched on (a stream it destroyed since makes
        // the driver return an error, not touch memory of ours).
        match unsafe { f(key.stream as CuHandle) } {
            CUDA_ERROR_NOT_READY => Query::Pending,
            // Captured since its last launch: what it had queued before may still run.
            rc if (CUDA_ERROR_STREAM_CAPTURE_FIRST..=CUDA_ERROR_STREAM_CAPTURE_LAST)
                .contains(&rc) =>
            {
                Query::Pending
            }
            _ => Query::Done,
        }
    }

    fn elapsed_us(&self, earlier: usize, later: usize, key: StreamKey) -> Option<f32> {
        if !self.timing {
            return None; // events without timestamps: the driver could only refuse
        }
        let f = driver_fn!(Variant::EventElapsedTime, EventElapsedTimeFn)?;
        if self.set_ctx {
            set_current_ctx(key.ctx);
        }
        let mut ms: f32 = 0.0;
        // SAFETY: two events the shim created (an event without timing makes the driver
        // return an error, not write); writes one float into our local.
        let rc = unsafe { f(&mut ms, earlier as CuHandle, later as CuHandle) };
        (rc == CUDA_SUCCESS && ms.is_finite() && ms >= 0.0).then_some(ms * 1000.0)
    }
}

/// Pin the `len` bytes of shared memory at `ptr` for every context and map them for the
/// GPU; returns the address the GPU reads them at, or the driver's error (and which call
/// failed). The calling thread's context must be current.
pub fn map_for_gpu(ptr: *mut u8, len: usize) -> Result<u64, (&'static str, CuResult)> {
    const NOT_FOUND: CuResult = 500; // CUDA_ERROR_NOT_FOUND
    let register = driver_fn!(Variant::MemHostRegister, MemHostRegisterFn)
        .ok_or(("cuMemHostRegister_v2", NOT_FOUND))?;
    let device_ptr = driver_fn!(Variant::MemHostGetDevicePointer, MemHostGetDevicePointerFn)
        .ok_or(("cuMemHostGetDevicePointer_v2", NOT_FOUND))?;
    // SAFETY: `ptr` is a live, page-aligned shared mapping of `len` bytes that the shim
    // keeps for the life of the process; the driver only pins it.
    let rc = unsafe { register(ptr.cast(), len, CU_MEMHOSTREGISTER_PORTABLE_DEVICEMAP) };
    if rc != CUDA_SUCCESS {
        return Err(("cuMemHostRegister_v2", rc));
    }
    let mut dev: u64 = 0;
    // SAFETY: `ptr` was registered just above; writes one address into our local.
    let rc = unsafe { device_ptr(&mut dev, ptr.cast(), 0) };
    if rc != CUDA_SUCCESS || dev == 0 {
        return Err(("cuMemHostGetDevicePointer_v2", rc));
    }
    Ok(dev)
}

/// Queue on `key`'s stream a wait until the 32-bit word the GPU sees at `addr` is 0: work
/// the program queues after it runs only then. Whether the driver took it.
pub fn stream_wait_zero(key: StreamKey, addr: u64) -> bool {
    let v = if key.ptsz {
        Variant::StreamWaitValue32Ptsz
    } else {
        Variant::StreamWaitValue32
    };
    let Some(f) = driver_fn!(v, StreamWaitValue32Fn) else {
        return false;
    };
    // SAFETY: the program's stream, just accepted by a launch and not being captured; `addr`
    // is a word of the arbitration block the shim mapped for the GPU and never unmaps.
    unsafe { f(key.stream as CuHandle, addr, 0, CU_STREAM_WAIT_VALUE_EQ) == CUDA_SUCCESS }
}
