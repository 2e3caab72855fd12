//! The process-wide shim state, set up on the first wrapped CUDA call.
//!
//! Set-up makes the process's control block. By default it is an anonymous memfd sealed
//! against shrinking and growing (`ControlMap::create_sealed`): no file in `/dev/shm`, so no
//! other process can truncate or replace it, and gvm-vgpud, which maps only what is handed to
//! it, can never be killed with `SIGBUS` through it. With `GVM_SHIM_CONTROL=<path>` the block
//! is that file instead (tests and legacy set-ups; created mode 0600): a block gvm-vgpud
//! prepared there (valid, not standalone) is obeyed, otherwise the shim creates it from the
//! environment knobs. If neither can be made it keeps a private block: limits from the
//! environment still apply, nobody else can see them.
//!
//! Right after set-up, the first thread through [`get`] registers the process with gvm-vgpud
//! over its shim socket (`gvm_shim_abi::register`, protocol 2: pid, what the block is, the
//! GPUs by PCI bus id, `GVM_VGPU_UUID`, with the block's descriptor attached), at most
//! [`REGISTER_TIMEOUT`] once, holding no lock (other threads carry on meanwhile), and keeps
//! the connection open (close-on-exec) so the daemon sees the exit at once. Without a daemon
//! it prints one line on stderr and runs standalone.
//! Either way one thread, `gvm-reregister` (`gvm_shim_abi::reregister`), then sleeps in
//! `poll` on the connection and, when gvm-vgpud stops or restarts (or was not there at
//! set-up), retries the same registration, with the same block's descriptor, every second
//! until a daemon takes it: that is how a restarted daemon gets the block back. Not started
//! when `GVM_SHIM_SOCKET=off`; a `fork` child has no such thread.
//! Nothing here ever fails the CUDA program: errors are logged and the shim carries on.

use std::fmt::Display;
use std::io::Write;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use gvm_host_root::{HostRoot, ROOT_ENV};

use crate::accounting::{Key, Kind, Ledger, OverLimit};
use crate::arbiter::{WaitOutcome, ARBITER_ENV};
use crate::capture::Captures;
use crate::config::{Knobs, UNLIMITED};
use crate::control::{
    ControlBlock, ControlMap, LaunchPath, ARB_BUSY, ARB_HAS_HIGHER, ARB_HAS_LOWER, ARB_REGISTERED,
    CONTROL_ENV, FLAG_STANDALONE,
};
use crate::driver::{self, DriverEvents};
use crate::ffi::{self, CuResult, CUDA_SUCCESS};
use crate::gate::{self, FutexParker, StreamTracker};
use crate::gpu_gate;
use crate::gpus::{GpuArbitration, PerGpu, MAX_GPUS};
use crate::priority::{self, ArbiterMap, Participant, RealEnv};
use crate::queue::{self, Events, StreamKey, Tracker};
use crate::register::{self as reg, GpuId, Request, MEMFD_CONTROL, PROTOCOL_VERSION, SOCKET_ENV};
use crate::reregister::{self, SocketLink};
use crate::resolve::RealTable;

/// Real driver pointers, one per wrapped ABI.
pub static REALS: RealTable = RealTable::new();
/// A `dlopen` handle of the driver the program used (0 until seen).
pub static CUDA_HANDLE: AtomicUsize = AtomicUsize::new(0);

static SHIM: OnceLock<Shim> = OnceLock::new();

/// The whole registration (connect, send, reply) takes at most this long, once, unless
/// `GVM_SHIM_REGISTER_TIMEOUT_MS` says otherwise.
pub const REGISTER_TIMEOUT: Duration = reg::DEFAULT_TIMEOUT;
/// Registration: 0 not tried, 1 taken by a thread (in progress or done).
static REGISTER_STATE: AtomicU8 = AtomicU8::new(0);
/// The set-up connection to gvm-vgpud when the re-registration thread could not start (-1
/// otherwise: the thread owns the connection); closed by the kernel at exit.
static REGISTER_FD: AtomicI32 = AtomicI32::new(-1);

/// The shim's state.
#[derive(Debug)]
pub struct Shim {
    control: ControlMap,
    ledger: Ledger,
    streams: StreamTracker,
    warned_over_limit: AtomicBool,
    tracker: Tracker,
    /// The arbitration on each GPU the process launches on.
    gpus: PerGpu,
    /// Arbitration blocks gvm-vgpud handed over (by GPU PCI bus id), for a GPU not joined yet
    /// to join instead of a standalone block: the daemon relays busy between the uids (and
    /// VMs) on a GPU through them.
    handed_arbiters: std::sync::Mutex<Vec<(String, OwnedFd)>>,
    /// The helper thread that clears busy (one for every GPU), and the word it sleeps on
    /// while no GPU of the process is busy.
    helper: Once,
    helper_wake: AtomicU32,
    /// The GPU-side gate's watchdog (one for every GPU).
    watchdog: Once,
    /// Stream captures in progress: the helper looks at no stream meanwhile.
    captures: Captures,
    /// What to say when no daemon takes the registration (a standalone block's knobs).
    standalone_note: Option<String>,
    /// `GVM_QUEUE_BUDGET_US`: GPU time a yielding process may queue beyond its count floor
    /// (0: the count alone; see `queue.rs`).
    queue_budget_us: u32,
    /// `GVM_GPU_GATE`: hold queued work on the GPU while yielding (`gpu_gate.rs`).
    gpu_gate_wanted: bool,
    /// `GVM_SHIM_REGISTER_TIMEOUT_MS`: the bound of one registration.
    register_timeout: Duration,
}

/// What [`Shim::before_launch`] decided for one launch, for [`Shim::after_launch`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Ticket {
    /// Record an event after the launch on this queue.
    key: Option<StreamKey>,
    /// The launch was published busy: report its end.
    busy: bool,
    /// The device it went to.
    device: i32,
    /// What runs: the `CUfunction` or graph handle (its run time is learned per handle).
    work: usize,
    /// A queue budget applies: record events with GPU timestamps, to learn run times.
    timed: bool,
    /// The event would serve only to tell when the process is idle: mark the stream instead
    /// (`Tracker::mark_launched`), the idle check queries it.
    idle_only: bool,
}

/// The state, set up on first use.
#[inline]
pub fn get() -> &'static Shim {
    if let Some(s) = SHIM.get() {
        return s;
    }
    let s = SHIM.get_or_init(|| {
        std::panic::catch_unwind(init).unwrap_or_else(|_| {
            log("set-up failed unexpectedly; running without limits");
            Shim::with(ControlMap::local(&Knobs::default()))
        })
    });
    // Outside the OnceLock: no lock is held across the connect.
    let first = REGISTER_STATE
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    if first && std::panic::catch_unwind(|| s.register()).is_err() {
        log("registration with gvm-vgpud failed unexpectedly; running standalone");
    }
    s
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
    let mut shim = init_control(&knobs);
    shim.queue_budget_us = knobs.queue_budget_us;
    shim.gpu_gate_wanted = knobs.gpu_gate;
    shim.register_timeout = Duration::from_millis(u64::from(knobs.register_timeout_ms));
    shim
}

/// The shim over its control block: a sealed memfd by default; with `GVM_SHIM_CONTROL` the
/// daemon's block at that path, else a standalone one there; from `knobs` when standalone.
fn init_control(knobs: &Knobs) -> Shim {
    let limit = match knobs.memory_limit {
        UNLIMITED => "unlimited".to_string(),
        b => format!("{b} bytes"),
    };
    let note = |where_: &str| {
        format!(
            "memory limit {limit}, priority {}, host swap {}, knobs in {where_}",
            knobs.priority, knobs.host_swap
        )
    };
    let env_path = std::env::var_os(CONTROL_ENV).filter(|p| !p.is_empty());
    let Some(path) = env_path.map(std::path::PathBuf::from) else {
        return match ControlMap::create_sealed(knobs, FLAG_STANDALONE) {
            Ok(m) => {
                let mut s = Shim::with(m);
                s.standalone_note = Some(note("a sealed memfd"));
                s
            }
            Err(e) => {
                log(format_args!(
                    "{e}; running standalone from the environment (memory limit {limit}) with a private control block"
                ));
                Shim::with(ControlMap::local(knobs))
            }
        };
    };
    if let Ok(m) = ControlMap::open(&path) {
        if !m.block().is_standalone() {
            m.block().pid.store(std::process::id(), Ordering::Relaxed);
            debug(|| format!("using the control block {} from gvm-vgpud", path.display()));
            return Shim::with(m);
        }
    }
    match ControlMap::create(&path, knobs, FLAG_STANDALONE) {
        Ok(m) => {
            let mut s = Shim::with(m);
            s.standalone_note = Some(note(&path.display().to_string()));
            s
        }
        Err(e) => {
            log(format_args!(
                "{e}; running standalone from the environment (memory limit {limit}) with a private control block"
            ));
            Shim::with(ControlMap::local(knobs))
        }
    }
}

/// Set by an `atexit` handler: the re-registration thread then stops quietly.
static EXITING: AtomicBool = AtomicBool::new(false);

extern "C" fn mark_exiting() {
    EXITING.store(true, Ordering::Release);
}

fn log_line(line: &str) {
    log(line);
}

/// Hand the set-up outcome to the re-registration thread (`gvm_shim_abi::reregister`): it
/// watches the connection and registers again after gvm-vgpud restarts, or registers once a
/// daemon starts. If the thread cannot start, the set-up connection is kept open here.
fn keep_registered(
    socket: std::path::PathBuf,
    request: Request,
    control: OwnedFd,
    first: Result<OwnedFd, reg::RegisterError>,
    timeout: Duration,
) {
    if !ffi::at_exit(mark_exiting) {
        debug(|| "could not register the exit flag of the re-registration thread".into());
    }
    let link = SocketLink {
        socket: socket.clone(),
        request,
        control,
        timeout,
        exiting: &EXITING,
        log: log_line,
        joined_arbiters,
        on_arbiters,
    };
    if let Err(e) = reregister::spawn(link, &socket, first) {
        log(&e);
        if let Some(c) = e.connection {
            REGISTER_FD.store(c.into_raw_fd(), Ordering::Release);
        }
    }
}

/// The daemon-made arbitration blocks this process joined, by GPU (duplicate descriptors).
fn joined_arbiters() -> Vec<(String, OwnedFd)> {
    SHIM.get().map(|s| s.gpus.handed_back()).unwrap_or_default()
}

/// Keep the arbitration blocks a daemon handed over, for a participant not joined yet.
fn on_arbiters(handed: Vec<(String, OwnedFd)>) {
    if let Some(s) = SHIM.get() {
        s.keep_handed_arbiters(handed);
    }
}

/// The one-line warning of a process no daemon took.
fn standalone(socket: &std::path::Path, why: &str, note: Option<&str>) {
    let how = match note {
        Some(n) => format!("running standalone with limits from the environment ({n})"),
        None => "running on the prepared control block without registration".to_string(),
    };
    let _ = writeln!(
        std::io::stderr(),
        "gvm-vgpu: no daemon at {} ({why}): {how}",
        socket.display()
    );
}

extern "C" fn leave_arbiter_at_exit() {
    if let Some(s) = SHIM.get() {
        for (_, p) in s.gpus.joined() {
            p.leave();
        }
    }
}

/// The helper thread of a process that publishes busy: clears each GPU's busy flag once its
/// work on that GPU is done (see `priority.rs` for the rule and its latency).
fn helper_main() {
    driver::relax_capture_mode();
    let s = get();
    let ev = DriverEvents {
        set_ctx: true,
        ..DriverEvents::default()
    };
    let any_busy = || s.gpus.joined().any(|(_, p)| p.is_busy());
    loop {
        if !any_busy() {
            let w = s.helper_wake.load(Ordering::Acquire);
            if !any_busy() {
                ffi::futex_wait(&s.helper_wake, w, Duration::from_millis(100));
            }
            continue;
        }
        std::thread::sleep(priority::POLL);
        let linger = Duration::from_micros(u64::from(s.block().linger_us.load(Ordering::Relaxed)));
        for (device, p) in s.gpus.joined() {
            if p.is_busy() {
                // While the program captures a graph, no stream may be queried: stay busy.
                p.try_go_idle(linger, || {
                    s.captures
                        .unless_capturing(|| s.tracker.all_done_on(device, &ev))
                        .unwrap_or(false)
                });
            }
        }
    }
}

/// The GPU-gate watchdog of a process that holds its queued work on the GPU
/// (`gpu_gate.rs`): reaps stale peers while held, ends a hold after the maximum hold, on
/// every GPU whose gate is in use.
fn gpu_gate_watchdog_main() {
    let s = get();
    let b = s.block();
    gpu_gate::watch(
        MAX_GPUS,
        |i| s.gpus.gated(i),
        || Duration::from_millis(u64::from(b.max_hold_ms.load(Ordering::Relaxed))),
        |d| {
            b.arb_timeouts.fetch_add(1, Ordering::Relaxed);
            debug(|| format!("GPU-side hold ended by the watchdog after {d:?}"));
        },
    )
}

impl Shim {
    fn with(control: ControlMap) -> Shim {
        Shim {
            control,
            ledger: Ledger::new(),
            streams: StreamTracker::new(),
            warned_over_limit: AtomicBool::new(false),
            tracker: Tracker::new(),
            gpus: PerGpu::new(),
            handed_arbiters: std::sync::Mutex::new(Vec::new()),
            helper: Once::new(),
            helper_wake: AtomicU32::new(0),
            watchdog: Once::new(),
            captures: Captures::new(),
            standalone_note: None,
            queue_budget_us: 0,
            gpu_gate_wanted: false,
            register_timeout: REGISTER_TIMEOUT,
        }
    }

    /// Register with gvm-vgpud (see the module doc). Called once, by one thread, after
    /// set-up; failures print one line and leave the process standalone.
    fn register(&self) {
        let Some(block_fd) = self.control.fd() else {
            return; // A private block: nothing the daemon could drive.
        };
        let host = HostRoot::new(std::env::var_os(ROOT_ENV).unwrap_or_else(|| "/".into()));
        let note = self.standalone_note.as_deref();
        let Some(socket) = reg::socket_path(std::env::var_os(SOCKET_ENV).as_deref(), &host) else {
            if let Some(n) = note {
                log(format_args!(
                    "registration off ({SOCKET_ENV}=off); running standalone from the environment ({n})"
                ));
            }
            return;
        };
        let control = match self.control.path() {
            None => MEMFD_CONTROL,
            Some(p) => match p.to_str() {
                Some(p) => p,
                None => {
                    standalone(&socket, "the control block path is not UTF-8", note);
                    return;
                }
            },
        };
        // A descriptor of the block of its own for the re-registration thread.
        let kept = match block_fd.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                standalone(
                    &socket,
                    &format!("cannot duplicate the control block descriptor: {e}"),
                    note,
                );
                return;
            }
        };
        let gpus = driver::visible_gpus()
            .into_iter()
            .map(|(ordinal, pci_bus_id)| GpuId {
                ordinal,
                pci_bus_id,
            })
            .collect();
        let request = Request {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            control: control.to_owned(),
            gpus,
            vgpu_uuid: self.block().knobs().vgpu_uuid,
            arbiters: Vec::new(),
        };
        let first = match reg::connect_and_register(
            &socket,
            &request,
            block_fd,
            &[],
            self.register_timeout,
        ) {
            Ok(r) => {
                self.keep_handed_arbiters(r.arbiters);
                debug(|| {
                    format!(
                        "registered with gvm-vgpud at {} (gpu {:?}, {} GPUs reported)",
                        socket.display(),
                        r.reply.gpu,
                        request.gpus.len()
                    )
                });
                Ok(r.connection)
            }
            Err(e) => {
                standalone(&socket, &e.to_string(), note);
                Err(e)
            }
        };
        keep_registered(socket, request, kept, first, self.register_timeout);
    }

    /// Before a launch on `stream` (`ptsz`: through a `_ptsz` entry point): pass the gate
    /// (frozen/hold), then, when the process takes part in arbitration or bounds its queue,
    /// yield to more important busy processes, wait for the queue bound, publish busy.
    /// When neither applies (or the process is alone on its GPU) it is a few atomic loads.
    #[inline]
    pub fn before_launch(&self, stream: usize, ptsz: bool, work: usize) -> Ticket {
        self.gate();
        let b = self.block();
        let arbitrate = b.arbitrate.load(Ordering::Relaxed) != 0;
        let always = b.queue_always.load(Ordering::Relaxed) != 0;
        if !arbitrate && !always {
            return Ticket::default();
        }
        self.before_launch_arbitrated(stream, ptsz, work, arbitrate, always)
    }

    fn before_launch_arbitrated(
        &self,
        stream: usize,
        ptsz: bool,
        work: usize,
        arbitrate: bool,
        always: bool,
    ) -> Ticket {
        let b = self.block();
        // Arbitration is per GPU: the launching thread's context's device says which.
        let device = self
            .gpus
            .launch_device(driver::device_count, driver::current_device);
        let gpu = self.gpus.get(device, || {
            log(format_args!(
                "CUDA device {device} is beyond the {MAX_GPUS} devices arbitrated; its launches are not arbitrated"
            ))
        });
        let p = match (arbitrate, gpu) {
            (true, Some(g)) => self.participant(device, g),
            _ => None,
        };
        let prio = b.priority.load(Ordering::Relaxed);
        let role = p.map(|p| p.role(prio)).unwrap_or_default();
        if !always && role.is_alone() {
            self.publish_arb_state(gpu, p.is_some(), role, false);
            return Ticket::default();
        }
        let key = driver::stream_key(stream, ptsz, device);
        // A process that yields holds its queued work on the GPU when it can: then a more
        // important one waits behind about one kernel whatever is queued, and no count bound
        // is needed. Under `queue_always` the count is what bounds a freeze or a time slice.
        let gate_on_gpu = match (p, gpu, key) {
            (Some(p), Some(g), Some(_)) if role.has_higher && !always && self.gpu_gate_wanted => {
                g.gate.block_on_gpu(p, log_line)
            }
            _ => None,
        };
        let gpu_gated = gate_on_gpu.is_some();
        let depth = b.queue_depth.load(Ordering::Relaxed) as usize;
        let bound = if always || (role.has_higher && !gpu_gated) {
            depth
        } else {
            0
        };
        let max_hold = Duration::from_millis(u64::from(b.max_hold_ms.load(Ordering::Relaxed)));
        // Beyond the count, short kernels may fill a GPU-time budget — but not under
        // `queue_always`, where the count is what bounds a freeze or a time slice.
        let budget = if always { 0 } else { self.queue_budget_us };
        if let (Some(k), true) = (key, bound > 0) {
            if self.wait_queue(k, bound, budget, work, max_hold) {
                // A freeze or hold that came while waiting applies to this launch too:
                // otherwise it would add one more kernel to what a freeze has to drain.
                self.gate();
            }
        }
        let mut busy = false;
        if let Some(p) = p {
            if role.has_higher {
                match p.block().wait_turn(p.slot(), prio, max_hold, &RealEnv) {
                    WaitOutcome::Free => {}
                    WaitOutcome::Waited(d) => self.count_hold(d, false),
                    WaitOutcome::TimedOut(d) => self.count_hold(d, true),
                }
            }
            if let (Some(block_on_gpu), Some(g), Some(k)) = (gate_on_gpu, gpu, key) {
                if g.gate.hold_point(p, k, block_on_gpu) {
                    gvm_shim_abi::sys::spawn_once(
                        &self.watchdog,
                        "gvm-gpu-gate",
                        gpu_gate_watchdog_main,
                        |e| {
                            log(format_args!(
                                "cannot start the GPU-gate watchdog ({e}); a GPU hold ends only when the holder goes idle or is reaped"
                            ))
                        },
                    );
                }
            }
            if role.has_lower && key.is_some() {
                if p.launch_begins() {
                    self.helper_wake.fetch_add(1, Ordering::Release);
                    ffi::futex_wake(&self.helper_wake);
                }
                gvm_shim_abi::sys::spawn_once(&self.helper, "gvm-arbiter", helper_main, |e| {
                    log(format_args!(
                        "cannot start the arbiter helper thread ({e}); busy will clear only when peers find it stale"
                    ))
                });
                busy = true;
            }
        }
        self.publish_arb_state(gpu, p.is_some(), role, busy);
        let key = key.filter(|_| bound > 0 || busy);
        Ticket {
            // Events are needed to bound the queue and to tell when a busy process is idle.
            key,
            busy,
            device,
            work,
            timed: budget > 0 && bound > 0,
            idle_only: bound == 0
                && key.is_some_and(|k| DriverEvents::default().can_query_stream(k)),
        }
    }

    /// After the launch of `t` (entry point `path`, on `stream`) returned `rc`.
    #[inline]
    pub fn after_launch(&self, t: Ticket, path: LaunchPath, stream: u64, rc: CuResult) {
        if rc == CUDA_SUCCESS {
            let b = self.block();
            self.streams.launched(b, stream);
            b.launches[path as usize].fetch_add(1, Ordering::Relaxed);
            if let Some(k) = t.key {
                let ev = DriverEvents {
                    set_ctx: false,
                    timing: t.timed,
                };
                if !(t.idle_only && self.tracker.mark_launched(k)) {
                    self.tracker
                        .launched(k, t.work, self.queue_budget_us as f32, &ev);
                }
            }
        }
        if t.busy {
            if let Some(p) = self
                .gpus
                .get(t.device, || {})
                .and_then(GpuArbitration::joined)
            {
                p.launch_done();
            }
        }
    }

    /// Wait until `key`'s queue admits a launch of `work` (at most `max_hold`): fewer than
    /// `bound` tracked launches unfinished, or — with a `budget_us` — their estimated GPU
    /// time plus this launch's within it. Spins briefly with yields, then sleeps in short
    /// steps. Returns whether it had to wait.
    fn wait_queue(
        &self,
        key: StreamKey,
        bound: usize,
        budget_us: u32,
        work: usize,
        max_hold: Duration,
    ) -> bool {
        let ev = DriverEvents {
            set_ctx: false,
            timing: budget_us > 0,
        };
        // Without a budget only the count matters: no estimate to look up.
        let next_us = if budget_us > 0 {
            self.tracker.estimate_us(work).unwrap_or(budget_us as f32)
        } else {
            0.0
        };
        let admitted = || {
            let q = driver::relaxed(|| self.tracker.queued(key, &ev));
            queue::admits(q, next_us, bound, budget_us)
        };
        if admitted() {
            return false;
        }
        self.block().queue_waits.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let mut spins = 0u32;
        while !admitted() && start.elapsed() < max_hold {
            spins += 1;
            if spins < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        true
    }

    fn count_hold(&self, d: Duration, timed_out: bool) {
        let b = self.block();
        b.arb_waits.fetch_add(1, Ordering::Relaxed);
        b.arb_wait_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if timed_out {
            b.arb_timeouts.fetch_add(1, Ordering::Relaxed);
            debug(|| format!("arbiter hold gave up after {d:?}"));
        }
    }

    fn publish_arb_state(
        &self,
        gpu: Option<&GpuArbitration>,
        registered: bool,
        role: crate::arbiter::Role,
        busy: bool,
    ) {
        let bits = u32::from(registered) * ARB_REGISTERED
            + u32::from(busy) * ARB_BUSY
            + u32::from(role.has_higher) * ARB_HAS_HIGHER
            + u32::from(role.has_lower) * ARB_HAS_LOWER;
        let all = match gpu {
            Some(g) => match self.gpus.publish(g, bits) {
                Some(all) => all,
                None => return,
            },
            None => bits,
        };
        let cell = &self.block().arb_state;
        if cell.load(Ordering::Relaxed) != all {
            cell.store(all, Ordering::Relaxed);
        }
    }

    /// This process's registration in the arbitration block of device `device` (`gpu`'s
    /// state), joined on first use.
    fn participant<'a>(&self, device: i32, gpu: &'a GpuArbitration) -> Option<&'a Participant> {
        gpu.participant(|| {
            std::panic::catch_unwind(|| self.join_arbiter(device, gpu)).unwrap_or(None)
        })
    }

    /// Keep `handed` (blocks by GPU) for [`Self::join_arbiter`] of GPUs not joined yet.
    fn keep_handed_arbiters(&self, handed: Vec<(String, OwnedFd)>) {
        if handed.is_empty() {
            return;
        }
        let mut kept = self
            .handed_arbiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *kept = handed;
    }

    /// The block gvm-vgpud handed over for the GPU at `pci`, checked and mapped; `None`
    /// (with a log line when one was handed but is unusable) to fall back to a standalone one.
    fn handed_arbiter(&self, pci: Option<&str>) -> Option<(String, ArbiterMap)> {
        let pci = pci.and_then(crate::register::normalise_pci_bus_id)?;
        let fd = {
            let kept = self
                .handed_arbiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            kept.iter()
                .find(|(p, _)| *p == pci)
                .and_then(|(_, fd)| fd.try_clone().ok())?
        };
        match ArbiterMap::from_handed_fd(fd) {
            Ok(m) => Some((pci, m)),
            Err(e) => {
                log(format_args!(
                    "{e}; using a standalone arbitration block instead"
                ));
                None
            }
        }
    }

    fn join_arbiter(&self, device: i32, gpu: &GpuArbitration) -> Option<Participant> {
        let host = HostRoot::new(std::env::var_os(ROOT_ENV).unwrap_or_else(|| "/".into()));
        let env_path = std::env::var_os(ARBITER_ENV);
        let pci = driver::pci_bus_id(device);
        let euid = gvm_shim_abi::sys::euid();
        let handed = match env_path {
            Some(_) => None,
            None => self.handed_arbiter(pci.as_deref()),
        };
        let (map, path) = match handed {
            Some((pci, m)) => {
                if let Some(fd) = m.fd().and_then(|f| f.try_clone_to_owned().ok()) {
                    gpu.set_handed_back(pci, fd);
                }
                let shown = m.path().to_path_buf();
                (m, shown)
            }
            None => {
                let path = priority::arbiter_path(
                    env_path.as_deref(),
                    &host,
                    pci.as_deref(),
                    device,
                    euid,
                );
                match ArbiterMap::open_or_create(&path) {
                    Ok(m) => (m, path),
                    Err(e) => {
                        log(format_args!("{e}; launches are not arbitrated"));
                        return None;
                    }
                }
            }
        };
        let prio = self.block().priority.load(Ordering::Relaxed);
        match Participant::join(map, std::process::id(), prio) {
            Some(p) => {
                debug(|| {
                    format!(
                        "arbitration on device {device}: slot {} at priority {prio} in {}",
                        p.slot(),
                        p.path().display()
                    )
                });
                static AT_EXIT: Once = Once::new();
                AT_EXIT.call_once(|| {
                    if !ffi::at_exit(leave_arbiter_at_exit) {
                        debug(|| "could not register the arbiter clean-up".into());
                    }
                });
                Some(p)
            }
            None => {
                log(format_args!(
                    "the arbitration block {} has no free slot; launches on device {device} are not arbitrated",
                    path.display()
                ));
                None
            }
        }
    }

    /// The program begins a stream capture with `real` (see `capture.rs`).
    pub fn capture_begins(&self, real: impl FnOnce() -> CuResult) -> CuResult {
        self.captures.begin(real)
    }

    /// The program's end-capture call answered `rc`.
    pub fn capture_ended(&self, rc: CuResult) {
        self.captures.end(rc);
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
