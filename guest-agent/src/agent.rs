//! The agent's loop: open the channel, say hello, report every interval.
//!
//! [`Agent::step`] does one round (open if needed, hello if needed, one report)
//! and never waits longer than the write timeout (plus the vsock connect
//! timeout); [`Agent::run`] calls it on a fixed schedule. Failures are logged on
//! stderr when the situation changes, not every round.

use crate::collect::Collector;
use crate::compose::{self, SystemInfo};
use crate::transport::{virtio, vsock, LineWriter, SendError};
use gvm_error_chain::error_chain;
use gvm_host_root::HostRoot;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
}

enum Channel {
    Writer(LineWriter),
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
        }
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
    }

    fn recovered(&mut self) {
        if self.last_problem.take().is_some() {
            eprintln!("gvm-vgpu-agent: sending reports to the host again");
        }
    }

    fn open(&mut self) -> bool {
        if self.channel.is_some() {
            return true;
        }
        let opened = match &self.opts.target {
            Target::Stdout => Ok(Channel::Stdout(std::io::stdout())),
            Target::Port(name) => virtio::open_port(&self.root, name).map(Channel::Writer),
            Target::Device(path) => virtio::open_device(path).map(Channel::Writer),
            Target::Vsock { cid, port } => {
                vsock::connect(*cid, *port, self.opts.timeout).map(Channel::Writer)
            }
        };
        match opened {
            Ok(c) => {
                self.channel = Some(c);
                self.counters.opens += 1;
                self.need_hello = true;
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
            Some(Channel::Writer(w)) => w.send(line, timeout),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, SendError::NotConnected) {
                    // Whoever connects next has not heard our hello.
                    self.need_hello = true;
                    if let Some(Channel::Writer(w)) = &mut self.channel {
                        w.drop_pending();
                    }
                }
                // A stalled stream socket is reconnected: a new connection is a
                // clean stream, free of the half-written line.
                let stalled_stream = matches!(self.opts.target, Target::Vsock { .. })
                    && matches!(e, SendError::Timeout { .. });
                if e.needs_reopen() || stalled_stream {
                    self.channel = None;
                }
                self.problem(error_chain(&e));
                false
            }
        }
    }

    /// One round: open, hello when due, one report.
    pub fn step(&mut self) -> StepOutcome {
        self.seq += 1;
        if !self.open() {
            self.counters.dropped += 1;
            return StepOutcome::Dropped;
        }
        if self.need_hello || self.since_hello >= self.opts.hello_every {
            let driver = self.collector.driver();
            let gpus = self.collector.gpus();
            let h = compose::hello(&self.sys, self.collector.kind(), driver, gpus);
            let line = match compose::hello_line(&h) {
                Ok(l) => l,
                Err(e) => {
                    self.problem(error_chain(&e));
                    self.counters.dropped += 1;
                    return StepOutcome::Dropped;
                }
            };
            if !self.send(&line) {
                self.counters.dropped += 1;
                return StepOutcome::Dropped;
            }
            self.counters.hellos += 1;
            self.need_hello = false;
            self.since_hello = 0;
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
            StepOutcome::Sent
        } else {
            self.counters.dropped += 1;
            StepOutcome::Dropped
        }
    }

    /// Report every interval, forever.
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
            std::thread::sleep(next - now);
        }
    }
}
