//! The host side of the guest agent: one connection per VM channel, validated,
//! bounded, attributed by the socket alone.
//!
//! A VM's `gvm-vgpu-agent` writes JSON lines to a virtio-serial port. QEMU is the
//! *server* of the host end: `-chardev socket,…,server=on,wait=off` (and libvirt's
//! `<channel type='unix'><source mode='bind'/>`) make QEMU listen on a Unix socket,
//! so the daemon connects to each channel as a client and reconnects, with a
//! backoff, when QEMU restarts. Channels are discovered every
//! [`DISCOVERY_PERIOD`]:
//!
//! - `<state>/run/gvm-vgpu/agent/<uuid>.sock` (what `gvm-vgpu xml --with-agent` and
//!   `gvm-vgpu qemu-args --agent-socket` default to) belongs to vGPU `<uuid>`, and
//!   to whichever domain holds it;
//! - every `<channel type='unix'>` to `org.gvm.vgpu.agent.0` in a running libvirt
//!   domain's live XML (`<root>/run/libvirt/qemu/<name>.xml`) belongs to that domain.
//!
//! A listing that fails for any reason but a missing directory (no file descriptors
//! left, say) changes nothing: the channels followed are kept, not taken for gone.
//!
//! Attribution is by the socket the bytes arrived on, never by what the guest says.
//! Each channel gets one tokio task that feeds what it reads into a
//! [`gvm_agent_proto::IngestSession`] (line framing in a buffer of at most
//! 64 KiB + 1, a token bucket on lines, validation of every field, a partial-line
//! timeout armed from [`IngestSession::next_deadline`]). Violations are counted and
//! logged at most once per [`LOG_INTERVAL`] per channel (with the number
//! suppressed); when the session decides to disconnect, the task closes the socket
//! and waits the session's `reconnect_after` before connecting again. Nothing a
//! guest sends reaches another channel: each task has its own session, and the
//! shared [`GuestTable`] holds at most [`MAX_CHANNELS`] entries, each a bounded
//! hello and report (the proto caps a report at 1,024 processes in 64 KiB).
//!
//! **Protocol 2 (enforcement in the guest).** When a guest's hello says `"protocol":2`, the
//! channel is two-way: the daemon sends the vGPU's effective knobs as an idempotent state
//! [`Snapshot`] with a generation that only grows (a new connection gets the current state
//! under a new generation; generations start from the wall clock in µs, so a restarted
//! daemon's are higher still), and keeps what the guest answers: its CUDA processes
//! (counters), its busy/idle transitions and its acknowledgements, which the API shows as
//! [`gvm_proto::GuestEnforcement`]. An acknowledgement of a generation never sent on this
//! connection is counted as forged and ignored. The desired state comes from the daemon's
//! core ([`GuestTable::publish`]), which wakes the channel's task.
//!
//! Ingest cost matters (a host may run a hundred agents at 10 Hz): each channel's
//! entry has its own lock, held by the task (no lookup in, or contention on, the
//! table's map per report), and the accepted hello and report are shared
//! (`Arc`) between the session, its event and the entry, never copied. The
//! [`GuestStats`] the API returns is built only when someone asks, outside every
//! lock but the entry's brief one.
//!
//! Submodules:
//! - `arbitration`: which VMs are held, decided over the table, on busy lines and
//!   periodically ([`GuestTable::rearbitrate`]);
//! - `sched_share`: the scheduler's view of each VM's counters and its share back
//!   ([`GuestUsage`], [`SchedShare`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gvm_agent_proto::v2::{self, Ack, GuestMessage, HostMessage, Snapshot};
use gvm_agent_proto::{
    log_safe, Counters, Event, GuestStats, Hello, IngestSession, Limits, Report,
};
use gvm_host_root::HostRoot;
use gvm_proto::{ApiError, GuestAgentInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::log_limit::LogLimiter;
use crate::owners::Resolver;
use crate::vm_arbiter::HoldCap;
use gvm_shim_host::relay_hub::RelayHub;

/// Most channels the daemon follows at once; more are ignored (and said so).
pub const MAX_CHANNELS: usize = 1024;
/// How often the agent directory and libvirt's run directory are listed.
pub const DISCOVERY_PERIOD: Duration = Duration::from_millis(500);
/// At most one violation log line per channel per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// First and longest pause between connection attempts to a silent socket.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Whom a channel's stats belong to (decided by the socket, never the guest).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribution {
    /// A socket `<uuid>.sock` in the agent directory.
    Vgpu(Uuid),
    /// A channel in a libvirt domain's XML.
    Domain(String),
}

impl Attribution {
    /// Whether the channel belongs to vGPU `uuid`: its own socket, or a channel of
    /// `domain`, the libvirt domain holding it.
    pub fn is_of(&self, uuid: &Uuid, domain: Option<&str>) -> bool {
        match self {
            Attribution::Vgpu(u) => u == uuid,
            Attribution::Domain(d) => Some(d.as_str()) == domain,
        }
    }
}

/// What the daemon keeps about one channel.
#[derive(Debug, Clone)]
pub struct ChannelState {
    /// Whom it belongs to.
    pub attribution: Attribution,
    /// Connected now.
    pub connected: bool,
    /// Connections made.
    pub connections: u64,
    /// Times the guest was cut off for misbehaving.
    pub disconnects: u64,
    /// Violations over all connections.
    pub violations: u64,
    /// Latest violation or disconnect reason (log-safe), until a later connection
    /// delivers a clean hello or report: a problem is never shown as current once the
    /// guest has reconnected and behaves.
    pub last_problem: Option<String>,
    /// The connection (1 = first, as counted by `connections`) `last_problem` came from.
    pub problem_connection: u64,
    /// Latest validated hello (shared with the session that accepted it).
    pub hello: Option<Arc<Hello>>,
    /// Latest validated report, kept across a new hello (shared, not copied).
    pub last_report: Option<Arc<Report>>,
    /// The session's counters as of the latest update.
    pub counters: Counters,
    /// When the latest report was accepted.
    pub last_report_at: Option<Instant>,
    /// The protocol-2 state: what the daemon wants, sent and heard.
    pub control: GuestControl,
}

/// What the daemon's core publishes for a channel: the vGPU, its knobs and its GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedState {
    /// The effective knobs.
    pub knobs: v2::Knobs,
    /// The vGPU.
    pub vgpu: Uuid,
    /// The PCI address of its GPU (the mdev parent), when it is a PCI device.
    pub gpu: Option<String>,
}

/// The state the daemon wants a protocol-2 guest in: the vGPU's knobs and the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredState {
    /// The effective knobs.
    pub knobs: v2::Knobs,
    /// The arbitration hold.
    pub hold: bool,
    /// A hold may come at any time (sent to protocol-3 agents as `outranked`).
    pub outranked: bool,
    /// The VM's busy claims may hold someone (sent to protocol-3 agents as `outranks`).
    pub outranks: bool,
}

/// One channel's protocol-2 exchange.
#[derive(Debug, Clone)]
pub struct GuestControl {
    /// What the daemon wants, if it said yet.
    pub desired: Option<DesiredState>,
    /// The generation of `desired` (bumped on every change and every new connection).
    pub generation: u64,
    /// The protocol the current connection's hello announced (0 before a hello).
    pub protocol: u32,
    /// The generation last sent on the current connection.
    pub sent: Option<u64>,
    /// The guest's last acknowledgement of a generation sent, and when.
    pub acked: Option<(Ack, Instant)>,
    /// The guest's last counters message, and when.
    pub processes: Option<(Arc<v2::Counters>, Instant)>,
    /// The VM's last busy/idle transition.
    pub busy: Option<bool>,
    /// Acknowledgements of generations never sent.
    pub forged_acks: u64,
    /// How long this VM's busy claims may hold other VMs ([`crate::vm_arbiter`]).
    pub cap: HoldCap,
    /// The vGPU the channel's state is of, and the PCI address of its GPU (its parent),
    /// as the daemon last published them.
    pub placed: Option<(Uuid, String)>,
    /// The guest's kernels submitted (summed over its processes) when it acknowledged the
    /// current freeze as complete.
    pub submitted_at_freeze: Option<u64>,
    /// The guest's counters rose after it acknowledged a freeze: it does not keep it (the
    /// daemon then pauses the VM, `fallback`). Cleared at thaw.
    pub frozen_lie: bool,
    /// `frozen_lie` was handed to the daemon already.
    pub lie_taken: bool,
    /// The knobs the daemon's core published last, before the scheduler's [`SchedShare`].
    pub base_knobs: Option<v2::Knobs>,
    /// The scheduler's share of this VM, on a GPU under equal-share or fixed-share.
    pub sched: Option<SchedShare>,
    /// When the event that last changed this VM's hold was taken (for
    /// [`crate::relay_latency`]; cleared when the snapshot carrying it is written).
    pub hold_changed_at: Option<Instant>,
    /// Wakes the channel's task when `desired` changes.
    pub wake: Arc<Notify>,
}

/// Kernels submitted by all of a guest's processes in one counters message.
fn submitted_of(c: &v2::Counters) -> u64 {
    c.processes
        .iter()
        .fold(0u64, |n, p| n.saturating_add(p.kernels_submitted))
}

/// A generation above `prev`: the wall clock in µs when that is higher (so generations
/// keep growing across daemon restarts), else `prev + 1`; at most 2^53 (JSON-exact).
pub fn next_generation(prev: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    prev.saturating_add(1).max(now).min(1 << 53)
}

impl GuestControl {
    fn new() -> GuestControl {
        GuestControl {
            desired: None,
            generation: next_generation(0),
            protocol: 0,
            sent: None,
            acked: None,
            processes: None,
            busy: None,
            forged_acks: 0,
            cap: HoldCap::default(),
            placed: None,
            submitted_at_freeze: None,
            frozen_lie: false,
            lie_taken: false,
            base_knobs: None,
            sched: None,
            hold_changed_at: None,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The snapshot to send now on a protocol-2 connection, if one is due.
    fn due(&self) -> Option<Snapshot> {
        let d = self.desired?;
        (self.protocol >= 2 && self.sent != Some(self.generation)).then_some(Snapshot {
            generation: self.generation,
            knobs: d.knobs,
            hold: d.hold,
            // A protocol-2 agent refuses a field it does not know.
            outranked: d.outranked && self.protocol >= v2::OUTRANKED_PROTOCOL,
            outranks: d.outranks && self.protocol >= v2::OUTRANKED_PROTOCOL,
        })
    }

    /// Take a guest message (already validated by the session).
    fn take(&mut self, m: GuestMessage, now: Instant) -> Option<String> {
        match m {
            GuestMessage::Counters(c) => {
                let submitted = submitted_of(&c);
                self.processes = Some((Arc::new(c), now));
                let frozen = self.desired.is_some_and(|d| d.knobs.frozen);
                if !frozen {
                    self.submitted_at_freeze = None;
                } else if let Some(at) = self.submitted_at_freeze {
                    if submitted > at && !self.frozen_lie {
                        self.frozen_lie = true;
                        return Some(format!(
                            "the guest acknowledged the freeze, yet its processes submitted {} more kernels since",
                            submitted - at
                        ));
                    }
                }
            }
            GuestMessage::Busy(b) => self.busy = Some(b.busy),
            GuestMessage::Ack(a) => {
                if self.sent.is_none_or(|s| a.generation > s) {
                    self.forged_acks += 1;
                    return Some(format!(
                        "acknowledgement of generation {} that was never sent (last sent: {:?}); ignored",
                        a.generation, self.sent
                    ));
                }
                if self
                    .acked
                    .is_none_or(|(old, _)| a.generation >= old.generation)
                {
                    self.acked = Some((a, now));
                    let frozen = self.desired.is_some_and(|d| d.knobs.frozen);
                    if frozen && a.generation >= self.generation && a.freeze_complete() {
                        // From here on its kernel counts must stand still.
                        let submitted = self.processes.as_ref().map_or(0, |(c, _)| submitted_of(c));
                        self.submitted_at_freeze.get_or_insert(submitted);
                    }
                }
            }
        }
        None
    }

    /// The API view.
    pub fn enforcement(&self, connected: bool, now: Instant) -> gvm_proto::GuestEnforcement {
        let processes = self
            .processes
            .as_ref()
            .map(|(c, _)| {
                c.processes
                    .iter()
                    .map(|p| gvm_proto::GuestProcess {
                        pid: p.pid,
                        name: p.name.clone(),
                        memory_current: p.memory_current,
                        memory_swap: p.memory_swap,
                        kernels_submitted: p.kernels_submitted,
                        kernels_ended: p.kernels_ended,
                        pending: p.pending,
                        busy: p.busy,
                        gpu_busy_us: p.gpu_busy_us,
                    })
                    .collect()
            })
            .unwrap_or_default();
        gvm_proto::GuestEnforcement {
            protocol: self.protocol.max(1),
            connected,
            generation_sent: self.sent,
            generation_acked: self.acked.map(|(a, _)| a.generation),
            frozen_reached: self.acked.map(|(a, _)| a.freeze_complete()),
            in_flight: self.acked.map(|(a, _)| a.reached.in_flight),
            busy: self.busy,
            forged_acks: self.forged_acks,
            held: self.desired.is_some_and(|d| d.hold),
            hold_cap_hits: self.cap.hits,
            processes,
            processes_age_ms: self
                .processes
                .as_ref()
                .map(|(_, t)| now.saturating_duration_since(*t).as_millis() as u64),
        }
    }
}

impl ChannelState {
    fn new(attribution: Attribution) -> Self {
        ChannelState {
            attribution,
            connected: false,
            connections: 0,
            disconnects: 0,
            violations: 0,
            last_problem: None,
            problem_connection: 0,
            hello: None,
            last_report: None,
            counters: Counters::default(),
            last_report_at: None,
            control: GuestControl::new(),
        }
    }

    /// The API view, with `domain` filled in by the caller when it knows more.
    pub fn info(&self, socket: &Path, now: Instant) -> GuestAgentInfo {
        let (uuid, domain) = match &self.attribution {
            Attribution::Vgpu(u) => (Some(*u), None),
            Attribution::Domain(d) => (None, Some(d.clone())),
        };
        GuestAgentInfo {
            socket: socket.to_path_buf(),
            uuid,
            domain,
            connected: self.connected,
            connections: self.connections,
            disconnects: self.disconnects,
            violations: self.violations,
            last_problem: self.last_problem.clone(),
            report_age_ms: self
                .last_report_at
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            stats: self.stats(),
            enforcement: self
                .hello
                .is_some()
                .then(|| self.control.enforcement(self.connected, now)),
        }
    }

    /// The latest hello, report and counters as the API shows them (a copy; only
    /// once a hello was accepted).
    pub fn stats(&self) -> Option<GuestStats> {
        let hello = self.hello.as_deref()?;
        Some(GuestStats {
            hello: hello.clone(),
            last_report: self.last_report.as_deref().cloned(),
            counters: self.counters,
        })
    }
}

/// One channel's entry: its own lock, so that its task updates it without
/// touching the table's map or the other channels.
pub type ChannelEntry = Arc<Mutex<ChannelState>>;

fn lock_entry(entry: &Mutex<ChannelState>) -> std::sync::MutexGuard<'_, ChannelState> {
    match entry.lock() {
        Ok(g) => g,
        // A panicking channel task must not take the readers down.
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The channels and their latest stats, shared by the channel tasks (writers)
/// and the API and metrics handlers (readers). Cheap to clone.
#[derive(Debug, Clone)]
pub struct GuestTable {
    inner: Arc<Mutex<BTreeMap<PathBuf, ChannelEntry>>>,
    /// The shim socket's arbitration relay, when the daemon serves one: VMs and host
    /// processes on one GPU are arbitrated in one order through it.
    host_relay: Arc<std::sync::OnceLock<Arc<RelayHub>>>,
    /// The least important priority among the arbitrated VMs at the last
    /// [`GuestTable::rearbitrate`] (`u32::MAX` before the first): a VM at it holds no other
    /// VM whatever it claims, so its busy lines need no arbitration of every VM
    /// ([`GuestTable::on_busy`]).
    lowest_priority: Arc<std::sync::atomic::AtomicU32>,
    /// What the last arbitration found ([`GuestTable::tick`]).
    last_arbitration: Arc<Mutex<LastArbitration>>,
    /// The daemon's share of relaying hold changes.
    relay_latency: Arc<crate::relay_latency::RelayLatency>,
}

impl Default for GuestTable {
    fn default() -> GuestTable {
        GuestTable {
            inner: Arc::default(),
            host_relay: Arc::default(),
            lowest_priority: Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX)),
            last_arbitration: Arc::default(),
            relay_latency: Arc::default(),
        }
    }
}

impl GuestTable {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<PathBuf, ChannelEntry>) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            // A panicking channel task must not take the others down.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Every channel's API view, sorted by socket path. The map's lock is held
    /// only to copy the entry handles, each entry's only to copy its state (a few
    /// `Arc`s); the hello and report are copied into the view after that.
    pub fn snapshot(&self) -> Vec<GuestAgentInfo> {
        let now = Instant::now();
        let entries: Vec<(PathBuf, ChannelEntry)> =
            self.with(|m| m.iter().map(|(s, e)| (s.clone(), Arc::clone(e))).collect());
        entries
            .into_iter()
            .map(|(socket, e)| {
                let state = lock_entry(&e).clone();
                state.info(&socket, now)
            })
            .collect()
    }

    /// Give every channel the knobs `desired_of` wants for it (`None`: nothing to say yet);
    /// a channel whose state changed gets a new generation and its task is woken. The
    /// arbitration hold is this table's own ([`GuestTable::rearbitrate`]).
    pub fn publish(&self, desired_of: impl Fn(&Attribution) -> Option<PublishedState>) {
        let entries: Vec<ChannelEntry> = self.with(|m| m.values().cloned().collect());
        for e in entries {
            let mut c = lock_entry(&e);
            let Some(PublishedState { knobs, vgpu, gpu }) = desired_of(&c.attribution) else {
                continue;
            };
            c.control.placed = gpu.map(|pci| (vgpu, pci));
            c.control.base_knobs = Some(knobs);
            let knobs = c.control.sched.map_or(knobs, |s| s.overlay(knobs));
            let hold = c.control.desired.is_some_and(|d| d.hold);
            let outranked = c.control.desired.is_some_and(|d| d.outranked);
            let outranks = c.control.desired.is_some_and(|d| d.outranks);
            if !knobs.frozen {
                c.control.submitted_at_freeze = None;
                c.control.frozen_lie = false;
                c.control.lie_taken = false;
            }
            let want = DesiredState {
                knobs,
                hold,
                outranked,
                outranks,
            };
            if c.control.desired != Some(want) {
                c.control.desired = Some(want);
                c.control.generation = next_generation(c.control.generation);
                c.control.wake.notify_one();
            }
        }
        self.rearbitrate(Instant::now());
    }

    /// Arbitrate VMs and the host's shim processes through `hub` too (see
    /// [`GuestTable::rearbitrate`]); set once, at start.
    pub fn set_host_relay(&self, hub: Arc<RelayHub>) {
        let _ = self.host_relay.set(hub);
    }

    /// The protocol-2 view of the channel that belongs to vGPU `uuid` (its own socket, or
    /// a channel of `domain`, the libvirt domain holding it).
    pub fn enforcement_of(
        &self,
        uuid: &Uuid,
        domain: Option<&str>,
    ) -> Option<gvm_proto::GuestEnforcement> {
        let entries: Vec<ChannelEntry> = self.with(|m| m.values().cloned().collect());
        let now = Instant::now();
        entries.into_iter().find_map(|e| {
            let c = lock_entry(&e);
            (c.attribution.is_of(uuid, domain) && c.hello.is_some())
                .then(|| c.control.enforcement(c.connected, now))
        })
    }

    /// Wait until the connected protocol-2 guest of vGPU `uuid` (its own socket, or a
    /// channel of `domain`) acknowledges the latest state (with `frozen`: as a complete
    /// freeze), at most until `deadline`. `None`: no such guest; `Some(false)`: not in time.
    pub fn wait_acked(
        &self,
        uuid: &Uuid,
        domain: Option<&str>,
        frozen: bool,
        deadline: Instant,
    ) -> Option<bool> {
        let entry = self.with(|m| {
            m.values()
                .find(|e| {
                    let c = lock_entry(e);
                    c.attribution.is_of(uuid, domain)
                        && c.connected
                        && c.control.protocol >= 2
                        && c.control.desired.is_some()
                })
                .cloned()
        })?;
        loop {
            {
                let c = lock_entry(&entry);
                if !c.connected {
                    return Some(false);
                }
                let done = c.control.acked.is_some_and(|(a, _)| {
                    a.generation >= c.control.generation && (!frozen || a.freeze_complete())
                });
                if done {
                    return Some(true);
                }
            }
            if Instant::now() >= deadline {
                return Some(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The vGPUs whose guests acknowledged a freeze and then went on submitting kernels,
    /// each once per freeze (taken: the caller acts on it).
    pub fn take_frozen_liars(&self) -> Vec<Uuid> {
        let entries: Vec<ChannelEntry> = self.with(|m| m.values().cloned().collect());
        entries
            .iter()
            .filter_map(|e| {
                let mut c = lock_entry(e);
                if !c.control.frozen_lie || c.control.lie_taken {
                    return None;
                }
                c.control.lie_taken = true;
                c.control.placed.as_ref().map(|(u, _)| *u)
            })
            .collect()
    }

    /// The daemon's share of relaying hold changes to VMs so far.
    pub fn relay_latency(&self) -> &crate::relay_latency::RelayLatency {
        &self.relay_latency
    }

    /// Number of channels followed.
    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    /// Whether no channel is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where channels are looked for, and the limits every session gets.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `<state>/run/gvm-vgpu/agent`.
    pub agent_dir: PathBuf,
    /// The host root libvirt's run directory and channel paths are read under.
    pub host: HostRoot,
    /// Limits of each ingest session.
    pub limits: Limits,
}

impl AgentConfig {
    /// The default layout: the agent directory under the state root, libvirt under
    /// the host root, [`Limits::default`].
    pub fn new(host: &HostRoot, state: &HostRoot) -> Self {
        AgentConfig {
            agent_dir: state.run_dir().join("agent"),
            host: host.clone(),
            limits: Limits::default(),
        }
    }
}

/// Why a limits specification was refused.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// An item is not `key=value` with a known key and a number.
    #[error(
        "agent limit '{item}' is not understood: use comma-separated key=value with keys \
         max_line, lines_per_second, burst, v2_lines_per_second, v2_burst, \
         partial_line_timeout_ms, violation_window_ms, \
         max_violations, max_consecutive_violations, rate_violation_interval_ms, reconnect_after_ms"
    )]
    Item {
        /// The offending item.
        item: String,
    },
}

/// Parse `key=value,…` over [`Limits::default`] (for `--agent-limits`; tests and
/// operators tighten or loosen the defaults with it).
pub fn parse_limits(spec: &str) -> Result<Limits, LimitsError> {
    let mut l = Limits::default();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || LimitsError::Item {
            item: item.to_string(),
        };
        let (key, value) = item.split_once('=').ok_or_else(bad)?;
        let n: u64 = value.trim().parse().map_err(|_| bad())?;
        let ms = Duration::from_millis(n);
        let small = |n: u64| u32::try_from(n).map_err(|_| bad());
        match key.trim() {
            "max_line" => l.max_line = usize::try_from(n).map_err(|_| bad())?.max(1),
            "lines_per_second" => l.lines_per_second = small(n)?,
            "burst" => l.burst = small(n)?,
            "v2_lines_per_second" => l.v2_lines_per_second = small(n)?,
            "v2_burst" => l.v2_burst = small(n)?,
            "partial_line_timeout_ms" => l.partial_line_timeout = ms,
            "violation_window_ms" => l.violation_window = ms,
            "max_violations" => l.max_violations = n as usize,
            "max_consecutive_violations" => l.max_consecutive_violations = n as usize,
            "rate_violation_interval_ms" => l.rate_violation_interval = ms,
            "reconnect_after_ms" => l.reconnect_after = ms,
            _ => return Err(bad()),
        }
    }
    Ok(l)
}

/// The channels that should be followed: `<uuid>.sock` files of the agent
/// directory (other names ignored), then libvirt domains' channel sockets, at
/// most [`MAX_CHANNELS`] in all. The first attribution of a path wins.
pub fn desired_channels(
    agent_dir_sockets: &[PathBuf],
    domains: &[(String, Vec<PathBuf>)],
) -> BTreeMap<PathBuf, Attribution> {
    let mut out = BTreeMap::new();
    let vgpus = agent_dir_sockets.iter().filter_map(|p| {
        let stem = p.file_name()?.to_str()?.strip_suffix(".sock")?;
        Some((p.clone(), Attribution::Vgpu(Uuid::try_parse(stem).ok()?)))
    });
    let doms = domains.iter().flat_map(|(name, sockets)| {
        sockets
            .iter()
            .map(move |s| (s.clone(), Attribution::Domain(name.clone())))
    });
    for (path, who) in vgpus.chain(doms) {
        if out.len() >= MAX_CHANNELS {
            break;
        }
        out.entry(path).or_insert(who);
    }
    out
}

/// A directory's entries; a missing directory has none. Any other failure (no file
/// descriptors left, say) is an error, not an empty directory: the channels found
/// before must not be taken for gone.
fn read_dir_or_none(dir: &Path) -> std::io::Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn list_agent_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(rd) = read_dir_or_none(dir)? else {
        return Ok(Vec::new());
    };
    Ok(rd
        .flatten()
        .take(MAX_CHANNELS * 2)
        .map(|e| e.path())
        .collect())
}

fn libvirt_channels(host: &HostRoot) -> std::io::Result<Vec<(String, Vec<PathBuf>)>> {
    let Some(rd) = read_dir_or_none(&host.libvirt_run_dir())? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let fname = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = fname.strip_suffix(".xml") else {
            continue;
        };
        let xml = match std::fs::read_to_string(entry.path()) {
            Ok(xml) => xml,
            // The domain stopped since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match gvm_libvirt::domain_xml::parse(&xml) {
            Ok(info) if !info.agent_sockets.is_empty() => {
                let sockets = info.agent_sockets.iter().map(|s| host.path(s)).collect();
                out.push((name.to_string(), sockets));
            }
            Ok(_) => {}
            Err(e) => debug!(domain = name, "cannot read the live domain XML: {e}"),
        }
    }
    out.sort();
    Ok(out)
}

/// The channels to follow now and how many were seen in all (more than
/// [`MAX_CHANNELS`]: the rest are ignored), or why they cannot be listed.
fn discover(config: &AgentConfig) -> std::io::Result<(BTreeMap<PathBuf, Attribution>, usize)> {
    let sockets = list_agent_dir(&config.agent_dir)?;
    let doms = libvirt_channels(&config.host)?;
    let seen = sockets.len() + doms.iter().map(|d| d.1.len()).sum::<usize>();
    Ok((desired_channels(&sockets, &doms), seen))
}

/// Follow every channel until the caller's runtime stops (this future is
/// dropped): discover, start a task per new channel, stop the tasks of channels
/// that went away.
///
/// The channels are served by a single-threaded runtime on a thread of their own
/// (`gvm-agent-ingest`): a hundred agents at 10 Hz wake the daemon a thousand
/// times a second, and on one thread each wake-up is one epoll return and one
/// task poll, not a hand-off between the daemon's worker threads; the API and
/// the scheduler keep their workers to themselves. If that thread cannot be
/// started, the channels are followed on the caller's runtime instead.
pub async fn run(table: GuestTable, config: AgentConfig) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (t, c) = (table.clone(), config.clone());
    let spawned = std::thread::Builder::new()
        .name("gvm-agent-ingest".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(async {
                tokio::select! {
                    _ = follow(t, c) => {}
                    // The caller's future was dropped: its runtime is stopping.
                    _ = stop_rx => {}
                }
            });
        });
    let problem = match spawned {
        Err(e) => e.to_string(),
        Ok(_) => match ready_rx.await {
            Ok(Ok(())) => {
                // Keep `stop_tx` alive for as long as this future lives.
                std::future::pending::<()>().await;
                drop(stop_tx);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => "the thread ended before starting".to_string(),
        },
    };
    warn!("cannot start the guest-agent ingest thread ({problem}); following channels on the main runtime");
    follow(table, config).await
}

/// How often the VM arbitration is decided again without an event (to apply the cap on a
/// VM's busy claims, and windows ending).
pub const REARBITRATE_PERIOD: Duration = Duration::from_millis(20);

async fn follow(table: GuestTable, config: AgentConfig) {
    info!(dir = %config.agent_dir.display(), "following guest-agent channels");
    let t = table.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REARBITRATE_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if !t.is_empty() {
                t.tick(Instant::now());
            }
        }
    });
    let mut tasks: BTreeMap<PathBuf, JoinHandle<()>> = BTreeMap::new();
    let mut warned_full = false;
    let mut failed_log = LogLimiter::new(LOG_INTERVAL);
    loop {
        let c = config.clone();
        let found = tokio::task::spawn_blocking(move || discover(&c)).await;
        if let Ok(Err(e)) = &found {
            if let Some(suppressed) = failed_log.allow(Instant::now()) {
                warn!(
                    suppressed,
                    followed = tasks.len(),
                    "cannot list the guest-agent channels: {e}; keeping the ones followed"
                );
            }
        }
        if let Ok(Ok((want, seen))) = found {
            if seen > MAX_CHANNELS && !warned_full {
                warn!(
                    seen,
                    max = MAX_CHANNELS,
                    "more guest-agent channels than the daemon follows; the rest are ignored"
                );
            }
            warned_full = seen > MAX_CHANNELS;
            reconcile_tasks(&table, &config, &mut tasks, want);
        }
        tokio::time::sleep(DISCOVERY_PERIOD).await;
    }
}

fn reconcile_tasks(
    table: &GuestTable,
    config: &AgentConfig,
    tasks: &mut BTreeMap<PathBuf, JoinHandle<()>>,
    want: BTreeMap<PathBuf, Attribution>,
) {
    let gone: Vec<PathBuf> = tasks
        .keys()
        .filter(|p| !want.contains_key(*p))
        .cloned()
        .collect();
    for p in gone {
        if let Some(t) = tasks.remove(&p) {
            t.abort();
        }
        table.with(|m| m.remove(&p));
        info!(socket = %p.display(), "guest-agent channel gone");
    }
    for (path, who) in want {
        if tasks.get(&path).is_some_and(|t| !t.is_finished()) {
            continue;
        }
        let entry = table.with(|m| {
            Arc::clone(
                m.entry(path.clone())
                    .or_insert_with(|| Arc::new(Mutex::new(ChannelState::new(who.clone())))),
            )
        });
        debug!(socket = %path.display(), ?who, "following a guest-agent channel");
        let l = config.limits.clone();
        tasks.insert(
            path.clone(),
            tokio::spawn(channel_task(path, who, entry, l, table.clone())),
        );
    }
}

/// How one connection ended.
enum Ended {
    /// QEMU closed the socket (VM stopped or restarting).
    Eof,
    /// Reading failed.
    Error(std::io::Error),
    /// The session cut the guest off; wait this long.
    Cut(Duration),
}

async fn channel_task(
    socket: PathBuf,
    who: Attribution,
    entry: ChannelEntry,
    limits: Limits,
    table: GuestTable,
) {
    let mut backoff = BACKOFF_MIN;
    let mut log = LogLimiter::new(LOG_INTERVAL);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(e) => {
                debug!(socket = %socket.display(), "cannot connect to the guest-agent channel yet: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        {
            let mut c = lock_entry(&entry);
            c.connected = true;
            c.connections += 1;
        }
        info!(socket = %socket.display(), ?who, "guest-agent channel connected");
        let session = IngestSession::new(limits.clone());
        let channel = Channel {
            socket: &socket,
            who: &who,
            entry: &entry,
            table: &table,
        };
        let ended = read_session(stream, session, channel, &mut log, &mut buf).await;
        lock_entry(&entry).connected = false;
        // A VM gone from its channel holds nobody any more.
        table.rearbitrate(Instant::now());
        match ended {
            Ended::Cut(after) => tokio::time::sleep(after).await,
            Ended::Eof => {
                info!(socket = %socket.display(), ?who, "guest-agent channel closed by QEMU; reconnecting");
                tokio::time::sleep(backoff).await;
            }
            Ended::Error(e) => {
                warn!(socket = %socket.display(), ?who, "reading the guest-agent channel failed: {e}; reconnecting");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Which channel a session reads, and the table it belongs to.
#[derive(Clone, Copy)]
struct Channel<'a> {
    socket: &'a Path,
    who: &'a Attribution,
    entry: &'a Mutex<ChannelState>,
    table: &'a GuestTable,
}

async fn read_session(
    mut stream: UnixStream,
    mut session: IngestSession,
    channel: Channel<'_>,
    log: &mut LogLimiter,
    buf: &mut [u8],
) -> Ended {
    let Channel {
        socket,
        who,
        entry,
        table,
    } = channel;
    let mut hellos = 0u64;
    let wake = {
        let mut c = lock_entry(entry);
        // A new connection: whatever was sent before is not known to this guest.
        c.control.protocol = 0;
        c.control.sent = None;
        Arc::clone(&c.control.wake)
    };
    loop {
        let deadline = session.next_deadline();
        let events = tokio::select! {
            r = stream.read(buf) => match r {
                Ok(0) => return Ended::Eof,
                Ok(n) => session.feed(Instant::now(), &buf[..n]),
                Err(e) => return Ended::Error(e),
            },
            _ = sleep_until(deadline) => session.tick(Instant::now()),
            () = wake.notified() => Vec::new(),
        };
        // The newest hello and report of this batch, shared (not copied) with the entry.
        let mut hello = None;
        let mut report = None;
        let mut violations = 0u64;
        let mut problem = None;
        let mut cut = None;
        let mut rearbitrate = false;
        let mut joined = false;
        for event in events {
            match event {
                Event::Hello(h) => {
                    hellos += 1;
                    if hellos == 1 {
                        info!(socket = %socket.display(), ?who, agent = %log_safe(&h.agent, 40),
                              os = %log_safe(&h.os, 80), collector = ?h.collector, gpus = h.gpus.len(),
                              "guest agent said hello");
                    }
                    hello = Some(h);
                }
                Event::Report(r) => report = Some(r),
                Event::Guest(m) => {
                    rearbitrate |= matches!(m, GuestMessage::Busy(_));
                    if let Some(p) = lock_entry(entry).control.take(m, Instant::now()) {
                        if let Some(suppressed) = log.allow(Instant::now()) {
                            warn!(socket = %socket.display(), ?who, suppressed, "guest agent: {p}");
                        }
                        problem = Some(p);
                    }
                }
                Event::Violation { line, violation } => {
                    violations += 1;
                    let text = format!("line {line}: {violation}");
                    if let Some(suppressed) = log.allow(Instant::now()) {
                        warn!(socket = %socket.display(), ?who, suppressed, "guest agent broke the protocol: {text}");
                    }
                    problem = Some(text);
                }
                Event::Disconnect {
                    reason,
                    reconnect_after,
                } => {
                    warn!(socket = %socket.display(), ?who, wait_s = reconnect_after.as_secs(),
                          "guest agent disconnected: {reason}");
                    problem = Some(reason.to_string());
                    cut = Some(reconnect_after);
                }
            }
        }
        if hello.is_some() || report.is_some() || problem.is_some() {
            let (now, counters) = (Instant::now(), session.counters());
            let mut c = lock_entry(entry);
            // A new hello keeps the latest report as the latest known view.
            if let Some(h) = hello {
                let protocol = h.protocol();
                if protocol >= 2 && c.control.protocol < 2 {
                    // Newly negotiated on this connection: the current state goes out
                    // under a new generation, and the VM joins the arbitration.
                    c.control.generation = next_generation(c.control.generation);
                    joined = true;
                }
                c.control.protocol = protocol;
                c.hello = Some(h);
            }
            if c.hello.is_some() {
                c.counters = counters;
                if let Some(r) = report {
                    c.last_report = Some(r);
                    c.last_report_at = Some(now);
                }
            }
            c.violations += violations;
            match problem {
                Some(p) => {
                    c.last_problem = Some(p);
                    c.problem_connection = c.connections;
                }
                // A valid hello or report and no problem: a problem of an earlier
                // connection is history now (the counters keep it); one of this
                // connection stays.
                None if c.problem_connection < c.connections => c.last_problem = None,
                None => {}
            }
            if cut.is_some() {
                c.disconnects += 1;
            }
        }
        if let Some(after) = cut {
            return Ended::Cut(after);
        }
        if joined {
            table.rearbitrate(Instant::now());
        } else if rearbitrate {
            table.on_busy(entry, Instant::now());
        }
        let due = lock_entry(entry).control.due();
        if let Some(snapshot) = due {
            let mut line = HostMessage::Snapshot(snapshot).to_line().into_bytes();
            line.push(b'\n');
            if let Err(e) = stream.write_all(&line).await {
                return Ended::Error(e);
            }
            let changed_at = {
                let mut c = lock_entry(entry);
                c.control.sent = Some(snapshot.generation);
                c.control.hold_changed_at.take()
            };
            if let Some(at) = changed_at {
                table.relay_latency().observe(at.elapsed());
            }
            debug!(socket = %socket.display(), ?who, generation = snapshot.generation, "state snapshot sent to the guest");
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Pick the channels a `guest_stats` target names: all of them without a
/// target; a UUID's channel; a domain name's channels (by XML or by the vGPUs
/// it holds, whose `domain` the caller has filled in).
pub fn select(
    infos: Vec<GuestAgentInfo>,
    target: Option<&str>,
) -> Result<Vec<GuestAgentInfo>, ApiError> {
    let Some(target) = target else {
        return Ok(infos);
    };
    let uuid = Uuid::try_parse(target).ok();
    let picked: Vec<GuestAgentInfo> = infos
        .into_iter()
        .filter(|i| match uuid {
            Some(u) => i.uuid == Some(u),
            None => i.domain.as_deref() == Some(target),
        })
        .collect();
    if picked.is_empty() {
        return Err(ApiError::not_found(format!(
            "no guest-agent channel for '{target}': wire the VM's agent port with \
             `gvm-vgpu xml --with-agent` or `gvm-vgpu qemu-args --agent-socket`, and check \
             that the VM runs"
        )));
    }
    Ok(picked)
}

impl GuestTable {
    /// Every channel's view, with `domain` filled in for vGPU sockets from libvirt's run
    /// directory (read again through `resolver`).
    pub fn infos(&self, resolver: &mut Resolver) -> Vec<GuestAgentInfo> {
        resolver.refresh_libvirt();
        let mut infos = self.snapshot();
        for i in &mut infos {
            if let (None, Some(u)) = (&i.domain, i.uuid) {
                i.domain = resolver.domain_of(&u).map(str::to_string);
            }
        }
        infos
    }
}

mod arbitration;
mod sched_share;
use arbitration::LastArbitration;
pub use arbitration::IDLE_REARBITRATE_PERIOD;
pub use sched_share::{GuestUsage, SchedShare};

#[cfg(test)]
#[path = "agent_ingest_tests.rs"]
mod tests;
