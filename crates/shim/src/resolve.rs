//! Which driver entry points the shim wraps, and how a request for one is answered.
//!
//! Programs reach the driver three ways: linking its exported symbols (the shim's exports
//! shadow them), `dlsym(handle, "cuMemAlloc_v2")` (the shim's `dlsym` returns its wrapper),
//! and `cuGetProcAddress(name, &pfn, cudaVersion, flags)`, where `name` is the base name
//! (`"cuMemAlloc"`) and the driver picks the ABI from the version and the stream flavour from
//! the flags. Each ABI the shim wraps is a [`Variant`] with its exact exported symbol
//! (`cuMemAlloc_v2`, `cuLaunchKernel_ptsz`, …); [`for_proc_address`] maps a request to one,
//! or to none — then the driver's own pointer goes back unchanged, so a caller never gets a
//! different ABI than it asked for.
//!
//! [`RealTable`] keeps one real pointer per variant. The first pointer offered for a variant
//! (by `dlsym` or `cuGetProcAddress`) is kept; if a later request yields a different real
//! pointer for the same variant, that request gets the driver's pointer unwrapped rather than
//! a wrapper that would call the wrong function.

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`: ask for the `_ptsz` flavour.
pub const PER_THREAD_DEFAULT_STREAM: u64 = 2;

macro_rules! variants {
    ($($v:ident = $sym:literal, $wrapped:literal;)*) => {
        /// A driver entry point with one ABI, named by its exported symbol.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Variant {
            $(
                #[doc = stringify!($sym)]
                $v,
            )*
        }
        /// Every variant, in declaration order.
        pub const ALL: &[Variant] = &[$(Variant::$v),*];
        impl Variant {
            /// The exported symbol.
            pub fn symbol(self) -> &'static CStr {
                match self { $(Variant::$v => $sym,)* }
            }
            /// Whether the shim has a wrapper for it (others are only called by the shim).
            pub fn is_wrapped(self) -> bool {
                match self { $(Variant::$v => $wrapped,)* }
            }
        }
    };
}

variants! {
    GetProcAddress = c"cuGetProcAddress", true;
    GetProcAddressV2 = c"cuGetProcAddress_v2", true;
    MemAlloc = c"cuMemAlloc_v2", true;
    MemAllocPitch = c"cuMemAllocPitch_v2", true;
    MemAllocManaged = c"cuMemAllocManaged", true;
    MemFree = c"cuMemFree_v2", true;
    MemAllocAsync = c"cuMemAllocAsync", true;
    MemAllocAsyncPtsz = c"cuMemAllocAsync_ptsz", true;
    MemAllocFromPoolAsync = c"cuMemAllocFromPoolAsync", true;
    MemAllocFromPoolAsyncPtsz = c"cuMemAllocFromPoolAsync_ptsz", true;
    MemFreeAsync = c"cuMemFreeAsync", true;
    MemFreeAsyncPtsz = c"cuMemFreeAsync_ptsz", true;
    MemCreate = c"cuMemCreate", true;
    MemRelease = c"cuMemRelease", true;
    MemGetInfo = c"cuMemGetInfo_v2", true;
    DeviceTotalMem = c"cuDeviceTotalMem_v2", true;
    LaunchKernel = c"cuLaunchKernel", true;
    LaunchKernelPtsz = c"cuLaunchKernel_ptsz", true;
    LaunchKernelEx = c"cuLaunchKernelEx", true;
    LaunchKernelExPtsz = c"cuLaunchKernelEx_ptsz", true;
    LaunchCooperativeKernel = c"cuLaunchCooperativeKernel", true;
    LaunchCooperativeKernelPtsz = c"cuLaunchCooperativeKernel_ptsz", true;
    GraphLaunch = c"cuGraphLaunch", true;
    GraphLaunchPtsz = c"cuGraphLaunch_ptsz", true;
    CtxSynchronize = c"cuCtxSynchronize", true;
    CtxSynchronizeV2 = c"cuCtxSynchronize_v2", true;
    StreamSynchronize = c"cuStreamSynchronize", true;
    StreamSynchronizePtsz = c"cuStreamSynchronize_ptsz", true;
    StreamBeginCapture = c"cuStreamBeginCapture", true;
    StreamBeginCapturePtsz = c"cuStreamBeginCapture_ptsz", true;
    StreamBeginCaptureV2 = c"cuStreamBeginCapture_v2", true;
    StreamBeginCaptureV2Ptsz = c"cuStreamBeginCapture_v2_ptsz", true;
    StreamBeginCaptureToGraph = c"cuStreamBeginCaptureToGraph", true;
    StreamBeginCaptureToGraphPtsz = c"cuStreamBeginCaptureToGraph_ptsz", true;
    StreamEndCapture = c"cuStreamEndCapture", true;
    StreamEndCapturePtsz = c"cuStreamEndCapture_ptsz", true;
    CtxGetDevice = c"cuCtxGetDevice", false;
    MemAdvise = c"cuMemAdvise", false;
    CtxGetCurrent = c"cuCtxGetCurrent", false;
    CtxSetCurrent = c"cuCtxSetCurrent", false;
    EventCreate = c"cuEventCreate", false;
    EventRecord = c"cuEventRecord", false;
    EventRecordPtsz = c"cuEventRecord_ptsz", false;
    EventQuery = c"cuEventQuery", false;
    StreamQuery = c"cuStreamQuery", false;
    EventElapsedTime = c"cuEventElapsedTime", false;
    StreamIsCapturing = c"cuStreamIsCapturing", false;
    StreamIsCapturingPtsz = c"cuStreamIsCapturing_ptsz", false;
    ThreadExchangeCaptureMode = c"cuThreadExchangeStreamCaptureMode", false;
    DeviceGetCount = c"cuDeviceGetCount", false;
    DeviceGet = c"cuDeviceGet", false;
    DeviceGetPciBusId = c"cuDeviceGetPCIBusId", false;
    MemHostRegister = c"cuMemHostRegister_v2", false;
    MemHostGetDevicePointer = c"cuMemHostGetDevicePointer_v2", false;
    StreamWaitValue32 = c"cuStreamWaitValue32_v2", false;
    StreamWaitValue32Ptsz = c"cuStreamWaitValue32_v2_ptsz", false;
}

impl Variant {
    /// The wrapped variant exported under exactly `symbol`, if any.
    pub fn by_symbol(symbol: &[u8]) -> Option<Variant> {
        ALL.iter()
            .copied()
            .find(|v| v.is_wrapped() && v.symbol().to_bytes() == symbol)
    }
}

/// One `cuGetProcAddress` rule: `name` asked for with `min <= version < max` has the ABI of
/// `legacy`, or of `ptsz` when the per-thread default stream flavour is asked for.
struct Rule {
    name: &'static str,
    min: i32,
    max: i32,
    legacy: Variant,
    ptsz: Option<Variant>,
}

const fn rule(
    name: &'static str,
    min: i32,
    max: i32,
    legacy: Variant,
    ptsz: Option<Variant>,
) -> Rule {
    Rule {
        name,
        min,
        max,
        legacy,
        ptsz,
    }
}

use Variant as V;
const ANY: i32 = i32::MAX;

/// Versions are `cudaVersion` numbers (1000 × major + 10 × minor) from which each ABI exists.
const RULES: &[Rule] = &[
    // CUDA 12.0 added the symbol-status argument (PFN_cuGetProcAddress_v12000). Seen on an
    // H200 with driver 580: asked at 12000, the driver hands out the 5-argument function.
    rule("cuGetProcAddress", 11030, 12000, V::GetProcAddress, None),
    rule("cuGetProcAddress", 12000, ANY, V::GetProcAddressV2, None),
    rule("cuMemAlloc", 3020, ANY, V::MemAlloc, None),
    rule("cuMemAllocPitch", 3020, ANY, V::MemAllocPitch, None),
    rule("cuMemAllocManaged", 6000, ANY, V::MemAllocManaged, None),
    rule("cuMemFree", 3020, ANY, V::MemFree, None),
    rule(
        "cuMemAllocAsync",
        11020,
        ANY,
        V::MemAllocAsync,
        Some(V::MemAllocAsyncPtsz),
    ),
    rule(
        "cuMemAllocFromPoolAsync",
        11020,
        ANY,
        V::MemAllocFromPoolAsync,
        Some(V::MemAllocFromPoolAsyncPtsz),
    ),
    rule(
        "cuMemFreeAsync",
        11020,
        ANY,
        V::MemFreeAsync,
        Some(V::MemFreeAsyncPtsz),
    ),
    rule("cuMemCreate", 10020, ANY, V::MemCreate, None),
    rule("cuMemRelease", 10020, ANY, V::MemRelease, None),
    rule("cuMemGetInfo", 3020, ANY, V::MemGetInfo, None),
    rule("cuDeviceTotalMem", 3020, ANY, V::DeviceTotalMem, None),
    rule(
        "cuLaunchKernel",
        4000,
        ANY,
        V::LaunchKernel,
        Some(V::LaunchKernelPtsz),
    ),
    rule(
        "cuLaunchKernelEx",
        11060,
        ANY,
        V::LaunchKernelEx,
        Some(V::LaunchKernelExPtsz),
    ),
    rule(
        "cuLaunchCooperativeKernel",
        9000,
        ANY,
        V::LaunchCooperativeKernel,
        Some(V::LaunchCooperativeKernelPtsz),
    ),
    rule(
        "cuGraphLaunch",
        10000,
        ANY,
        V::GraphLaunch,
        Some(V::GraphLaunchPtsz),
    ),
    // CUDA 13 added cuCtxSynchronize_v2(CUcontext) and hands it out for the base name.
    rule("cuCtxSynchronize", 2000, 13000, V::CtxSynchronize, None),
    rule("cuCtxSynchronize", 13000, ANY, V::CtxSynchronizeV2, None),
    rule(
        "cuStreamSynchronize",
        2000,
        ANY,
        V::StreamSynchronize,
        Some(V::StreamSynchronizePtsz),
    ),
    // Stream capture (wrapped so the helper thread never queries a stream while a capture
    // is being made, which would invalidate it): CUDA 10.1 added the capture mode argument
    // (`_v2`), 12.3 capture into an existing graph.
    rule(
        "cuStreamBeginCapture",
        10000,
        10010,
        V::StreamBeginCapture,
        Some(V::StreamBeginCapturePtsz),
    ),
    rule(
        "cuStreamBeginCapture",
        10010,
        ANY,
        V::StreamBeginCaptureV2,
        Some(V::StreamBeginCaptureV2Ptsz),
    ),
    rule(
        "cuStreamBeginCaptureToGraph",
        12030,
        ANY,
        V::StreamBeginCaptureToGraph,
        Some(V::StreamBeginCaptureToGraphPtsz),
    ),
    rule(
        "cuStreamEndCapture",
        10000,
        ANY,
        V::StreamEndCapture,
        Some(V::StreamEndCapturePtsz),
    ),
];

/// The wrapped variant a `cuGetProcAddress(name, version, flags)` request resolves to, or
/// `None` when the shim does not wrap that ABI (the driver's pointer is then returned).
pub fn for_proc_address(name: &[u8], version: i32, flags: u64) -> Option<Variant> {
    let r = RULES
        .iter()
        .find(|r| r.name.as_bytes() == name && r.min <= version && version < r.max)?;
    if flags & PER_THREAD_DEFAULT_STREAM != 0 {
        Some(r.ptsz.unwrap_or(r.legacy))
    } else {
        Some(r.legacy)
    }
}

/// What [`RealTable::offer`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The pointer is now the variant's real entry point.
    Installed,
    /// The same pointer was already known.
    Same,
    /// A different real pointer is already known: hand the caller its pointer unwrapped.
    Conflict,
}

/// One real driver pointer per variant.
#[derive(Debug)]
pub struct RealTable {
    slots: [AtomicUsize; ALL.len()],
}

impl Default for RealTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RealTable {
    /// Nothing known yet.
    pub const fn new() -> RealTable {
        #[expect(
            clippy::declare_interior_mutable_const,
            reason = "array initialiser only"
        )]
        const EMPTY: AtomicUsize = AtomicUsize::new(0);
        RealTable {
            slots: [EMPTY; ALL.len()],
        }
    }

    /// The real pointer of `v` (0 if unknown).
    #[inline]
    pub fn get(&self, v: Variant) -> usize {
        self.slots[v as usize].load(Ordering::Acquire)
    }

    /// Offer `addr` (non-zero) as the real pointer of `v`.
    pub fn offer(&self, v: Variant, addr: usize) -> Offer {
        match self.slots[v as usize].compare_exchange(0, addr, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Offer::Installed,
            Err(now) if now == addr => Offer::Same,
            Err(_) => Offer::Conflict,
        }
    }

    /// The real pointer of `v`, looking it up with `lookup` (by exported symbol) the first time.
    pub fn get_or_lookup(&self, v: Variant, lookup: impl FnOnce(&CStr) -> usize) -> usize {
        let now = self.get(v);
        if now != 0 {
            return now;
        }
        let found = lookup(v.symbol());
        if found == 0 {
            return 0;
        }
        match self.offer(v, found) {
            Offer::Installed | Offer::Same => found,
            Offer::Conflict => self.get(v),
        }
    }

    /// Decide what a caller asking for `v` gets, given the driver's pointer `real` and the
    /// shim's wrapper address: the wrapper, unless `real` is already the wrapper (the lookup
    /// found the shim's own export) or conflicts with the known real pointer.
    pub fn answer(&self, v: Variant, real: usize, wrapper: usize) -> usize {
        if real == 0 || wrapper == 0 || real == wrapper || !v.is_wrapped() {
            return real;
        }
        match self.offer(v, real) {
            Offer::Installed | Offer::Same => wrapper,
            Offer::Conflict => real,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_the_abi_and_flags_the_stream_flavour() {
        assert_eq!(for_proc_address(b"cuMemAlloc", 13000, 0), Some(V::MemAlloc));
        assert_eq!(
            for_proc_address(b"cuMemAlloc", 3010, 0),
            None,
            "v1 ABI is not wrapped"
        );
        assert_eq!(
            for_proc_address(b"cuLaunchKernel", 12080, 0),
            Some(V::LaunchKernel)
        );
        assert_eq!(
            for_proc_address(b"cuLaunchKernel", 12080, 2),
            Some(V::LaunchKernelPtsz)
        );
        assert_eq!(
            for_proc_address(b"cuLaunchKernel", 12080, 1),
            Some(V::LaunchKernel)
        );
        assert_eq!(
            for_proc_address(b"cuMemAlloc", 13000, 2),
            Some(V::MemAlloc),
            "no ptsz flavour"
        );
        assert_eq!(
            for_proc_address(b"cuGetProcAddress", 11030, 0),
            Some(V::GetProcAddress)
        );
        assert_eq!(
            for_proc_address(b"cuGetProcAddress", 12000, 0),
            Some(V::GetProcAddressV2),
            "12.0 added the status argument"
        );
        assert_eq!(
            for_proc_address(b"cuGetProcAddress", 13000, 0),
            Some(V::GetProcAddressV2)
        );
        assert_eq!(
            for_proc_address(b"cuCtxSynchronize", 12080, 0),
            Some(V::CtxSynchronize)
        );
        assert_eq!(
            for_proc_address(b"cuCtxSynchronize", 13000, 0),
            Some(V::CtxSynchronizeV2)
        );
        assert_eq!(
            for_proc_address(b"cuStreamBeginCapture", 10000, 0),
            Some(V::StreamBeginCapture),
            "before CUDA 10.1: no capture mode argument"
        );
        assert_eq!(
            for_proc_address(b"cuStreamBeginCapture", 13000, PER_THREAD_DEFAULT_STREAM),
            Some(V::StreamBeginCaptureV2Ptsz)
        );
        assert_eq!(
            for_proc_address(b"cuStreamBeginCaptureToGraph", 12020, 0),
            None,
            "from CUDA 12.3"
        );
        assert_eq!(
            for_proc_address(b"cuStreamEndCapture", 12080, 0),
            Some(V::StreamEndCapture)
        );
        assert_eq!(for_proc_address(b"cuMemcpyHtoD", 13000, 0), None);
        assert_eq!(
            for_proc_address(b"cuMemAlloc_v2", 13000, 0),
            None,
            "base names only"
        );
    }

    #[test]
    fn exported_symbols_map_to_wrapped_variants_only() {
        assert_eq!(Variant::by_symbol(b"cuMemAlloc_v2"), Some(V::MemAlloc));
        assert_eq!(
            Variant::by_symbol(b"cuLaunchKernel_ptsz"),
            Some(V::LaunchKernelPtsz)
        );
        assert_eq!(
            Variant::by_symbol(b"cuMemAlloc"),
            None,
            "the v1 export is not wrapped"
        );
        assert_eq!(
            Variant::by_symbol(b"cuCtxGetDevice"),
            None,
            "internal use only"
        );
        for v in ALL {
            assert_eq!(ALL[*v as usize], *v, "discriminants index ALL");
        }
    }

    #[test]
    fn one_real_pointer_per_variant_and_conflicts_pass_through() {
        let t = RealTable::new();
        assert_eq!(t.answer(V::LaunchKernel, 0x100, 0x900), 0x900);
        assert_eq!(t.answer(V::LaunchKernelPtsz, 0x200, 0x901), 0x901);
        assert_eq!(t.get(V::LaunchKernel), 0x100);
        assert_eq!(
            t.get(V::LaunchKernelPtsz),
            0x200,
            "flags keep their own pointer"
        );
        assert_eq!(
            t.answer(V::LaunchKernel, 0x100, 0x900),
            0x900,
            "same pointer again"
        );
        assert_eq!(
            t.answer(V::LaunchKernel, 0x300, 0x900),
            0x300,
            "a different real stays unwrapped"
        );
        assert_eq!(
            t.answer(V::MemAlloc, 0x900, 0x900),
            0x900,
            "never record the wrapper as real"
        );
        assert_eq!(t.get(V::MemAlloc), 0);
        assert_eq!(t.answer(V::MemAlloc, 0, 0x900), 0, "missing stays missing");
        assert_eq!(
            t.get_or_lookup(V::MemFree, |s| if s == c"cuMemFree_v2" { 0x55 } else { 0 }),
            0x55
        );
        assert_eq!(
            t.get_or_lookup(V::MemFree, |_| 0x66),
            0x55,
            "looked up once"
        );
    }
}
