//! The agent's loop: open the channel, say hello, report every interval, and
//! between reports read the host's lines and watch the local processes.
//!
//! [`Agent::step`] does one round (open if needed, hello if needed, one v1 report,
//! then the v2 counters) and never waits longer than the write timeout per line
//! (plus the vsock connect timeout); [`Agent::run`] calls it on a fixed schedule
//! and, between rounds, [`Agent::service`]s the channel: host snapshots are applied
//! to the local daemon ([`crate::local`]) and acknowledged, busy transitions and
//! freeze completions are sent ([`crate::outbound`]). v2 lines go only to a
//! host that sent a valid snapshot on the current connection (a v1 host never
//! does, and would count them as violations). Failures are logged on stderr when
//! the situation changes, not every round.

use crate::collect::Collector;
use crate::compose::{self, SystemInfo};
use crate::inbound::{HostLines, Inbound};
use crate::local::LocalDaemon;
use crate::outbound::{AckTracker, BusyTracker};
use crate::sys::{self, ReadReadiness};
use crate::transport::lines::LineFramer;
use crate::transport::unix_server::UnixServer;
use crate::transport::{virtio, vsock, LineWriter, SendError};
use gvm_agent_proto::v2::{Busy, Counters, GuestMessage, Reached, Snapshot};
use gvm_agent_proto::MAX_LINE_BYTES;
use gvm_error_chain::error_chain;
use gvm_host_root::HostRoot;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the local processes are looked at while some are registered (busy
/// transitions, freeze completion).
pub const WATCH_PERIOD: Duration = Duration::from_millis(2);
/// How often otherwise (a new registration is noticed this late at worst).
pub const IDLE_WATCH_PERIOD: Duration = Duration::from_millis(100);
/// The longest one wait on a port whose host end is not connected (it cannot be
/// polled for the host's return).
const HANGUP_NAP: Duration = Duration::from_millis(50);

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A virtio-serial port, by name.
    Port(String),
    /// A device path.
    Device(PathBuf),
    /// A vsock address.
    Vsock {
        /// Context id (2 = host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix socket the agent listens on, one host connection at a time.
    ServeUnix(PathBuf),
    /// Standard output (debugging).
    Stdout,
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where lines go.
    pub target: Target,
    /// Time between reports.
    pub interval: Duration,
    /// Longest wait for the host per line (and per vsock connect).
    pub timeout: Duration,
    /// Repeat the hello every this many reports.
    pub hello_every: u64,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The report was sent.
    Sent,
    /// The report was dropped (channel absent, host not connected or slow).
    Dropped,
}

/// Running totals, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Reports sent.
    pub sent: u64,
    /// Reports dropped.
    pub dropped: u64,
    /// Hellos sent.
    pub hellos: u64,
    /// Times the channel was (re)opened.
    pub opens: u64,
    /// Snapshot acknowledgements sent.
    pub acks: u64,
    /// Busy/idle lines sent.
    pub busy: u64,
    /// Counters lines sent.
    pub counters: u64,
}

/// How a channel's descriptor can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A stream (vsock, `--serve-unix`): end of file means the host is gone.
    Stream,
    /// A virtio-serial port (a character device): end of file or a hangup means
    /// the host end is not connected now; the port stays open.
    Port,
    /// Write-only (a FIFO): nothing to read.
    WriteOnly,
}

enum Channel {
    Writer(LineWriter, Kind),
    Stdout(std::io::Stdout),
}

/// The agent.
pub struct Agent {
    opts: Options,
    root: HostRoot,
    collector: Box<dyn Collector>,
    sys: SystemInfo,
    channel: Option<Channel>,
    seq: u64,
    need_hello: bool,
    since_hello: u64,
    counters: AgentCounters,
    last_problem: Option<String>,
    server: Option<UnixServer>,
    framer: LineFramer,
    host: HostLines,
    local: Option<Arc<LocalDaemon>>,
    busy: BusyTracker,
    acks: AckTracker,
    /// When counters were last sent between reports (a GPU under a share policy).
    share_counters_at: Option<Instant>,
    said_without_host: bool,
    /// The host sent a valid snapshot on this connection: it speaks v2 and may be
    /// sent v2 lines (a v1 host would count them as violations).
    host_v2: bool,
}

impl Agent {
    /// An agent with its collector; nothing is opened yet.
    pub fn new(opts: Options, root: HostRoot, collector: Box<dyn Collector>) -> Self {
        let sys = compose::system_info(&root);
        Agent {
            opts,
            root,
            collector,
            sys,
            channel: None,
            seq: 0,
            need_hello: true,
            since_hello: 0,
            counters: AgentCounters::default(),
            last_problem: None,
            server: None,
            framer: LineFramer::default(),
            host: HostLines::default(),
            local: None,
            busy: BusyTracker::default(),
            acks: AckTracker::default(),
            share_counters_at: None,
            said_without_host: false,
            host_v2: false,
        }
    }

    /// Drive the processes of `local` (the guest's local daemon) with the host's
    /// snapshots, and report them.
    pub fn with_local(mut self, local: Arc<LocalDaemon>) -> Self {
        self.local = Some(local);
        self
    }

    /// The host's lines so far.
    pub fn host_lines(&self) -> &HostLines {
        &self.host
    }

    /// Totals so far.
    pub fn counters(&self) -> AgentCounters {
        self.counters
    }

    fn problem(&mut self, what: String) {
        if self.last_problem.as_deref() != Some(what.as_str()) {
            eprintln!("gvm-vgpu-agent: {what}");
            self.last_problem = Some(what);
        }
        if !self.said_without_host {
            if let Some(s) = self.host.current() {
                eprintln!(
                    "gvm-vgpu-agent: without the host: the last snapshot (generation {}) stays in force until it is back",
                    s.generation
                );
                self.said_without_host = true;
            }
        }
    }

    fn recovered(&mut self) {
        if self.last_problem.take().is_some() {
            eprintln!("gvm-vgpu-agent: sending reports to the host again");
        }
        self.said_without_host = false;
    }

    fn open(&mut self) -> bool {
        if self.channel.is_some() {
            return true;
        }
        let opened = match &self.opts.target {
            Target::Stdout => Ok(Channel::Stdout(std::io::stdout())),
            Target::Port(name) => {
                virtio::open_port(&self.root, name).map(|w| Channel::Writer(w, Kind::Port))
            }
            Target::Device(path) => {
                let kind = match std::fs::metadata(path) {
                    Ok(m) if m.file_type().is_char_device() => Kind::Port,
                    _ => Kind::WriteOnly,
                };
                virtio::open_device(path).map(|w| Channel::Writer(w, kind))
            }
            Target::Vsock { cid, port } => vsock::connect(*cid, *port, self.opts.timeout)
                .map(|w| Channel::Writer(w, Kind::Stream)),
            Target::ServeUnix(path) => {
                if self.server.is_none() {
                    match UnixServer::bind(path) {
                        Ok(s) => self.server = Some(s),
                        Err(e) => {
                            self.problem(format!("{}; will retry", error_chain(&e)));
                            return false;
                        }
                    }
                }
                match self.server.as_ref().map(UnixServer::accept) {
                    Some(Ok(Some(w))) => Ok(Channel::Writer(w, Kind::Stream)),
                    Some(Err(e)) => Err(e),
                    _ => {
                        let what = format!("waiting for the host to connect to {}", path.display());
                        self.problem(what);
                        return false;
                    }
                }
            }
        };
        match opened {
            Ok(c) => {
                self.channel = Some(c);
                self.counters.opens += 1;
                self.need_hello = true;
                self.framer.reset();
                self.busy.reset();
                self.host_v2 = false;
                true
            }
            Err(e) => {
                self.problem(format!("{}; will retry", error_chain(&e)));
                false
            }
        }
    }

    fn send(&mut self, line: &[u8]) -> bool {
        let timeout = self.opts.timeout;
        let result = match &mut self.channel {
            None => return false,
            Some(Channel::Stdout(out)) => {
                let mut out = out.lock();
                out.write_all(line)
                    .and_then(|_| out.flush())
                    .map_err(SendError::Broken)
            }
            Some(Channel::Writer(w, _)) => w.send(line, timeout),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, SendError::NotConnected) {
                    // Whoever connects next has not heard our hello (nor our busy state).
                    self.need_hello = true;
                    self.busy.reset();
                    self.host_v2 = false;
                    if let Some(Channel::Writer(w, _)) = &mut self.channel {
                        w.drop_pending();
                    }
                }
                // A stalled stream socket is reconnected: a new connection is a
                // clean stream, free of the half-written line.
                let stalled_stream = matches!(
                    self.opts.target,
                    Target::Vsock { .. } | Target::ServeUnix(_)
                ) && matches!(e, SendError::Timeout { .. });
                if e.needs_reopen() || stalled_stream {
                    self.channel = None;
                }
                self.problem(error_chain(&e));
                false
            }
        }
    }

    /// Send the hello (on a channel just opened, or when due).
    fn hello(&mut self) -> bool {
        let driver = self.collector.driver();
        let gpus = self.collector.gpus();
        let h = compose::hello(&self.sys, self.collector.kind(), driver, gpus);
        let line = match compose::hello_line(&h) {
            Ok(l) => l,
            Err(e) => {
                self.problem(error_chain(&e));
                return false;
            }
        };
        if !self.send(&line) {
            return false;
        }
        self.counters.hellos += 1;
        self.need_hello = false;
        self.since_hello = 0;
        true
    }

    /// Send one v2 message, if the host on this connection speaks v2.
    fn send_v2(&mut self, m: &GuestMessage) -> bool {
        if !self.host_v2 {
            return false;
        }
        let mut line = match m.to_line() {
            Ok(l) if l.len() <= MAX_LINE_BYTES => l.into_bytes(),
            Ok(l) => {
                self.problem(format!(
                    "a {}-byte message is over the line limit; not sent",
                    l.len()
                ));
                return false;
            }
            Err(e) => {
                self.problem(error_chain(&e));
                return false;
            }
        };
        line.push(b'\n');
        let sent = self.send(&line);
        if sent {
            match m {
                GuestMessage::Ack(_) => self.counters.acks += 1,
                GuestMessage::Busy(_) => self.counters.busy += 1,
                GuestMessage::Counters(_) => self.counters.counters += 1,
            }
        }
        sent
    }

    /// One round: open, hello when due, one report, the counters.
    pub fn step(&mut self) -> StepOutcome {
        self.seq += 1;
        if !self.open() {
            self.counters.dropped += 1;
            return StepOutcome::Dropped;
        }
        if (self.need_hello || self.since_hello >= self.opts.hello_every) && !self.hello() {
            self.counters.dropped += 1;
            return StepOutcome::Dropped;
        }
        // Sample after the hello, so the report matches the GPUs it announced.
        let sample = self.collector.sample();
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut report = compose::report(self.seq, ts_ms, sample);
        let line = match compose::report_line(&mut report) {
            Ok(l) => l,
            Err(e) => {
                self.problem(error_chain(&e));
                self.counters.dropped += 1;
                return StepOutcome::Dropped;
            }
        };
        if self.send(&line) {
            self.counters.sent += 1;
            self.since_hello += 1;
            self.recovered();
            if let Some(local) = self.local.clone() {
                let processes = local.counters();
                self.send_v2(&GuestMessage::Counters(Counters { processes }));
            }
            StepOutcome::Sent
        } else {
            self.counters.dropped += 1;
            StepOutcome::Dropped
        }
    }

    /// Report every interval, forever; between reports, serve the channel.
    pub fn run(&mut self) -> ! {
        let mut next = Instant::now();
        loop {
            self.step();
            next += self.opts.interval;
            let now = Instant::now();
            if next < now {
                // Fell behind (a suspended guest): restart the schedule.
                next = now + self.opts.interval;
            }
            while Instant::now() < next {
                let period = match &self.local {
                    Some(l) if !l.registry().all().is_empty() => WATCH_PERIOD,
                    _ => IDLE_WATCH_PERIOD,
                };
                let until = next.min(Instant::now() + period);
                self.service(until);
                self.watch(Instant::now());
            }
        }
    }

    /// Until `until`: take the host's lines (and, for `--serve-unix`, a host that
    /// connects), applying what they ask at once.
    pub fn service(&mut self, until: Instant) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let now = Instant::now();
            let Some(left) = until.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return;
            };
            let readiness = match &self.channel {
                None => {
                    let server = self
                        .server
                        .as_ref()
                        .map(|s| sys::wait_readable(s.fd(), left));
                    match server {
                        Some(Ok(ReadReadiness::Readable)) => {
                            if self.open() {
                                // Say who we are at once: the host waits for the hello.
                                self.hello();
                            }
                            continue;
                        }
                        Some(Ok(_)) => return,
                        _ => {
                            std::thread::sleep(left);
                            return;
                        }
                    }
                }
                Some(Channel::Stdout(_)) | Some(Channel::Writer(_, Kind::WriteOnly)) => {
                    std::thread::sleep(left);
                    return;
                }
                Some(Channel::Writer(w, kind)) => (sys::wait_readable(w.fd(), left), *kind),
            };
            match readiness {
                (Ok(ReadReadiness::TimedOut), _) => return,
                (Ok(ReadReadiness::Readable), kind) => {
                    let got = match &mut self.channel {
                        Some(Channel::Writer(w, _)) => w.read_some(&mut buf),
                        _ => return,
                    };
                    match got {
                        Ok(0) if kind == Kind::Port => std::thread::sleep(left.min(HANGUP_NAP)),
                        Ok(0) => self.lost("the host closed the connection"),
                        Ok(n) => {
                            let framed = self.framer.feed(&buf[..n]);
                            for f in framed {
                                let at = Instant::now();
                                let inbound = self.host.take(at, f);
                                self.inbound(at, inbound);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if kind == Kind::Port => {
                            let _ = e;
                            std::thread::sleep(left.min(HANGUP_NAP));
                        }
                        Err(e) => self.lost(&format!("reading from the host failed: {e}")),
                    }
                }
                (Ok(ReadReadiness::Hangup), Kind::Stream) => self.lost("the host hung up"),
                (Ok(ReadReadiness::Hangup), _) => std::thread::sleep(left.min(HANGUP_NAP)),
                (Err(e), _) => {
                    self.lost(&format!("waiting for the host failed: {e}"));
                    std::thread::sleep(left);
                    return;
                }
            }
        }
    }

    /// The host connection ended: a new one is opened (accepted) at the next chance.
    fn lost(&mut self, why: &str) {
        self.channel = None;
        self.need_hello = true;
        self.framer.reset();
        self.host_v2 = false;
        self.problem(why.to_owned());
    }

    /// The state a snapshot reached, as the local daemon sees it (nothing is
    /// enforced without one).
    fn reached(&self, s: &Snapshot) -> Reached {
        match &self.local {
            Some(l) => l.reached(s),
            None => Reached {
                frozen: false,
                held: false,
                processes: 0,
                in_flight: 0,
                memory_limit: s.knobs.memory_limit,
                priority: Some(crate::local::applied_priority(s)),
            },
        }
    }

    /// Act on one host line.
    fn inbound(&mut self, now: Instant, inbound: Inbound) {
        if matches!(
            inbound,
            Inbound::Apply(_) | Inbound::Stale { offered: 1.., .. }
        ) {
            self.host_v2 = true;
        }
        match inbound {
            Inbound::Apply(s) => {
                if let Some(l) = &self.local {
                    l.apply(s);
                }
                let reached = self.reached(&s);
                let ack = self.acks.applied(now, s.generation, reached);
                self.send_v2(&GuestMessage::Ack(ack));
            }
            Inbound::Stale { offered, .. } if offered > 0 => {
                if let Some(s) = self.host.current() {
                    let reached = self.reached(&s);
                    if let Some(ack) = self.acks.repeat(now, reached) {
                        self.send_v2(&GuestMessage::Ack(ack));
                    }
                }
            }
            Inbound::Stale { .. } | Inbound::Bad => {}
        }
    }

    /// Look at the local processes: a busy transition or a change of the state
    /// reached goes to the host (bounded, see [`crate::outbound`]).
    pub fn watch(&mut self, now: Instant) {
        if !matches!(self.channel, Some(Channel::Writer(..))) {
            return;
        }
        let Some(local) = self.local.clone() else {
            return;
        };
        local.poll_busy_time(now);
        if let Some(b) = self.busy.poll(now, local.busy()) {
            self.send_v2(&GuestMessage::Busy(Busy { busy: b }));
        }
        if let Some(s) = self.host.current() {
            if let Some(ack) = self.acks.poll(now, local.reached(&s)) {
                self.send_v2(&GuestMessage::Ack(ack));
            }
            // Under equal-share or fixed-share the host charges the VM's budget from these
            // counters: send them ten times per window, not only with each report.
            if let Some(period) = share_counters_period(&s, self.opts.interval) {
                let due = self
                    .share_counters_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= period);
                if due {
                    self.share_counters_at = Some(now);
                    let processes = local.counters();
                    self.send_v2(&GuestMessage::Counters(Counters { processes }));
                }
            }
        }
    }
}

/// The shortest period between counters messages (50 a second: a quarter of the host's
/// protocol-2 line rate).
pub const MIN_SHARE_COUNTERS_PERIOD: Duration = Duration::from_millis(20);

/// How often counters go to the host between reports when snapshot `s` names a share
/// window: a tenth of the window, at least [`MIN_SHARE_COUNTERS_PERIOD`]; `None` when the
/// snapshot has no window or the reports are as frequent already.
pub fn share_counters_period(s: &Snapshot, interval: Duration) -> Option<Duration> {
    let window = Duration::from_millis(u64::from(s.knobs.window_ms?));
    let period = (window / 10).max(MIN_SHARE_COUNTERS_PERIOD);
    (period < interval).then_some(period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_agent_proto::v2::Knobs;

    fn snapshot(window_ms: Option<u32>) -> Snapshot {
        Snapshot {
            generation: 1,
            knobs: Knobs {
                memory_limit: None,
                priority: Some(8),
                frozen: false,
                host_swap: false,
                share_budget_us: None,
                window_ms,
            },
            hold: false,
            outranked: false,
            outranks: false,
        }
    }

    #[test]
    fn counters_go_ten_times_per_share_window_and_never_faster_than_the_floor() {
        let second = Duration::from_secs(1);
        assert_eq!(share_counters_period(&snapshot(None), second), None);
        assert_eq!(
            share_counters_period(&snapshot(Some(1000)), second),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            share_counters_period(&snapshot(Some(50)), second),
            Some(MIN_SHARE_COUNTERS_PERIOD)
        );
        // Reports every 50 ms already carry counters often enough.
        assert_eq!(
            share_counters_period(&snapshot(Some(1000)), Duration::from_millis(50)),
            None
        );
    }
}
