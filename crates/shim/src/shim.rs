//! The process-wide shim state, set up on the first wrapped CUDA call.
//!
//! Set-up reads the control block the daemon prepared (`GVM_SHIM_CONTROL` or
//! `/dev/shm/gvm-vgpu-<pid>` under `GVM_VGPU_ROOT`); without one it creates that block itself
//! from the environment knobs and says so in one line on stderr. If even that fails it keeps
//! a private block: limits from the environment still apply, nobody else can see them.
//! Nothing here ever fails the CUDA program: errors are logged and the shim carries on.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use gvm_host_root::{HostRoot, ROOT_ENV};

use crate::accounting::{Key, Kind, Ledger, OverLimit};
use crate::config::{Knobs, UNLIMITED};
use crate::control::{control_path, ControlBlock, ControlMap, CONTROL_ENV, FLAG_STANDALONE};
use crate::ffi::{self, CuResult, CUDA_SUCCESS};
use crate::gate::{self, FutexParker, StreamTracker};
use crate::resolve::RealTable;

/// Real driver pointers, one per wrapped ABI.
pub static REALS: RealTable = RealTable::new();
/// A `dlopen` handle of the driver the program used (0 until seen).
pub static CUDA_HANDLE: AtomicUsize = AtomicUsize::new(0);

static SHIM: OnceLock<Shim> = OnceLock::new();

/// The shim's state.
#[derive(Debug)]
pub struct Shim {
    control: ControlMap,
    ledger: Ledger,
    streams: StreamTracker,
    remove_on_exit: bool,
    warned_over_limit: AtomicBool,
}

/// The state, set up on first use.
#[inline]
pub fn get() -> &'static Shim {
    SHIM.get_or_init(|| {
        std::panic::catch_unwind(init).unwrap_or_else(|_| {
            log("set-up failed unexpectedly; running without limits");
            Shim::with(ControlMap::local(&Knobs::default()), false)
        })
    })
}

/// Write one line to stderr (never fails the caller).
pub fn log(msg: impl Display) {
    let _ = writeln!(std::io::stderr(), "gvm-cuda[{}]: {msg}", std::process::id());
}

/// Whether `GVM_SHIM_DEBUG=1` asks for decisions to be logged.
pub fn debug_enabled() -> bool {
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("GVM_SHIM_DEBUG").is_some_and(|v| v == "1");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Log `msg()` when debugging is on.
pub fn debug(msg: impl FnOnce() -> String) {
    if debug_enabled() {
        log(msg());
    }
}

fn init() -> Shim {
    let (knobs, errors) = Knobs::from_lookup(|k| std::env::var(k).ok());
    for e in &errors {
        log(e);
    }
    let host = HostRoot::new(std::env::var_os(ROOT_ENV).unwrap_or_else(|| "/".into()));
    let env_path = std::env::var_os(CONTROL_ENV);
    let path = control_path(env_path.as_deref(), &host, std::process::id());
    if let Ok(m) = ControlMap::open(&path) {
        if !m.block().is_standalone() {
            m.block().pid.store(std::process::id(), Ordering::Relaxed);
            debug(|| format!("using the control block {} from gvm-vgpud", path.display()));
            return Shim::with(m, false);
        }
    }
    let limit = match knobs.memory_limit {
        UNLIMITED => "unlimited".to_string(),
        b => format!("{b} bytes"),
    };
    match ControlMap::create(&path, &knobs, FLAG_STANDALONE) {
        Ok(m) => {
            log(format_args!(
                "no gvm-vgpud control block; running standalone from the environment (memory limit {limit}, priority {}, host swap {}), knobs in {}",
                knobs.priority, knobs.host_swap, path.display()
            ));
            let remove = env_path.is_none();
            if remove && !ffi::at_exit(remove_block_at_exit) {
                debug(|| "could not register the exit clean-up".into());
            }
            Shim::with(m, remove)
        }
        Err(e) => {
            log(format_args!(
                "{e}; running standalone from the environment (memory limit {limit}) with a private control block"
            ));
            Shim::with(ControlMap::local(&knobs), false)
        }
    }
}

extern "C" fn remove_block_at_exit() {
    if let Some(s) = SHIM.get() {
        if s.remove_on_exit {
            if let Some(p) = s.control.path() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Shim {
    fn with(control: ControlMap, remove_on_exit: bool) -> Shim {
        Shim {
            control,
            ledger: Ledger::new(),
            streams: StreamTracker::new(),
            remove_on_exit,
            warned_over_limit: AtomicBool::new(false),
        }
    }

    /// The control block.
    #[inline]
    pub fn block(&self) -> &ControlBlock {
        self.control.block()
    }

    /// The memory limit per GPU now.
    pub fn limit(&self) -> u64 {
        self.block().memory_limit.load(Ordering::Relaxed)
    }

    /// Whether over-limit allocations may spill to host memory.
    pub fn host_swap(&self) -> bool {
        self.block().host_swap.load(Ordering::Relaxed) != 0
    }

    /// Hold the calling thread while launches are frozen or held.
    #[inline]
    pub fn gate(&self) {
        gate::pass(self.block(), &FutexParker);
    }

    /// A launch on `stream` returned `rc`.
    #[inline]
    pub fn launched(&self, stream: u64, rc: CuResult) {
        if rc == CUDA_SUCCESS {
            self.streams.launched(self.block(), stream);
        }
    }

    /// The submitted count a synchronise starting now will prove complete.
    pub fn sync_snapshot(&self) -> u64 {
        self.streams.snapshot(self.block())
    }

    /// A context synchronise begun at `snapshot` returned `rc`.
    pub fn ctx_synchronized(&self, snapshot: u64, rc: CuResult) {
        if rc == CUDA_SUCCESS {
            self.streams.ctx_synchronized(self.block(), snapshot);
        }
    }

    /// A synchronise of `stream` begun at `snapshot` returned `rc`.
    pub fn stream_synchronized(&self, stream: u64, snapshot: u64, rc: CuResult) {
        if rc == CUDA_SUCCESS {
            self.streams
                .stream_synchronized(self.block(), stream, snapshot);
        }
    }

    /// Account an allocation of `size` on `device`: reserve within the limit, run `call`
    /// (the driver; it returns its result and, on success, the key and the actual size),
    /// then commit or cancel. `Err` means the limit refused it and `call` did not run.
    pub fn allocate(
        &self,
        device: i32,
        size: u64,
        kind: Kind,
        call: impl FnOnce() -> (CuResult, Option<(Key, u64)>),
    ) -> Result<CuResult, OverLimit> {
        let r = self.ledger.try_reserve(device, size, self.limit())?;
        let (rc, got) = call();
        match got {
            Some((key, actual)) if rc == CUDA_SUCCESS => self.ledger.commit(r, key, kind, actual),
            _ => self.ledger.cancel(r),
        }
        self.publish();
        Ok(rc)
    }

    /// Record memory placed on the host because the process was over its limit.
    pub fn record_swap(&self, key: Key, device: i32, size: u64) {
        self.ledger.record_swap(key, device, size);
        self.publish();
    }

    /// Forget a freed allocation.
    pub fn release(&self, key: Key) {
        if self.ledger.release(key).is_some() {
            self.publish();
        }
    }

    /// Bytes held on `device`.
    pub fn device_current(&self, device: i32) -> u64 {
        self.ledger.device_current(device)
    }

    /// Log a refused allocation (the first one loudly, later ones when debugging).
    pub fn refused(&self, o: OverLimit) {
        let msg = || {
            format!(
                "refusing {} bytes on GPU {}: {} of the {}-byte limit in use (CUDA_ERROR_OUT_OF_MEMORY)",
                o.size, o.device, o.current, o.limit
            )
        };
        if !self.warned_over_limit.swap(true, Ordering::Relaxed) {
            log(msg());
        } else {
            debug(msg);
        }
    }

    fn publish(&self) {
        let b = self.block();
        b.memory_current
            .store(self.ledger.total_current(), Ordering::Release);
        b.swap_current
            .store(self.ledger.swap_current(), Ordering::Release);
    }
}
