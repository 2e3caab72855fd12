//! Keeping a shim process registered with gvm-vgpud across daemon restarts.
//!
//! A registration lives exactly as long as its connection ([`crate::register`]): when
//! gvm-vgpud stops — an upgrade, a crash, `kill -9` — the connection hangs up and the new
//! daemon knows nothing of the process. Its block is a sealed memfd in no directory (or a
//! `GVM_SHIM_CONTROL` file the daemon does not look for), and a daemon maps only blocks
//! handed to it: so every block comes back to a new daemon by the process registering again,
//! with the same block's descriptor.
//!
//! So after set-up the shim runs one small thread, [`THREAD_NAME`], that
//!
//! * while registered, sleeps in `poll(2)` on the kept connection until it hangs up (no
//!   timeout, no busy loop, nothing on the CUDA launch path);
//! * while not registered (the daemon went away, or there was none at set-up), retries the
//!   same [`Request`] with the same block descriptor ([`SocketLink::control`]) every
//!   [`RETRY`] with the same bound ([`connect_and_register`]), holding no lock, and waits on
//!   the new connection once one is accepted;
//! * after a refusal retries only every [`RETRY_REFUSED`] (a refusal is deterministic; the
//!   daemon logs each one);
//! * logs one line per state change ([`Keeper::on`]), never one per retry;
//! * stops quietly once the process is exiting ([`Link::exiting`]).
//!
//! Threads do not survive `fork(2)`: a child has no such thread (it shares the parent's
//! connection until it execs, and is not registered itself, as before).
//!
//! The decisions ([`Keeper`]) and the loop ([`run`]) are separate from the I/O ([`Link`]), so
//! they are unit-tested with a fake link; [`SocketLink`] is the real one.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::register::{connect_and_register, RegisterError, Reply, Request};
use crate::sys;

/// The keeper thread's name (as `ps -L`, `top -H` and debuggers show it).
pub const THREAD_NAME: &str = "gvm-reregister";
/// The wait between attempts while the daemon is unreachable.
pub const RETRY: Duration = Duration::from_secs(1);
/// The wait between attempts after the daemon refused the registration.
pub const RETRY_REFUSED: Duration = Duration::from_secs(30);
/// The keeper thread's stack: it only connects, formats short lines and polls.
pub const STACK_SIZE: usize = 128 * 1024;

/// Where the registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Registered: waiting for the connection to hang up.
    Registered,
    /// Not registered yet: there was no daemon (or it did not answer) at set-up.
    Waiting,
    /// The daemon's connection hung up (it stopped or restarted): re-registering.
    Lost,
    /// The daemon refused the registration: retrying slowly.
    Refused,
}

/// Something that happened to the registration.
#[derive(Debug)]
pub enum Event<'a> {
    /// The kept connection hung up.
    HungUp,
    /// An attempt succeeded; the daemon put the process's gcgroup on GPU `gpu` (when it said).
    Registered {
        /// [`Reply::gpu`].
        gpu: Option<u32>,
    },
    /// An attempt failed.
    Failed(&'a RegisterError),
}

/// The registration's state machine: what to do next and what to log. Pure: no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keeper {
    socket: PathBuf,
    state: State,
}

impl Keeper {
    /// The state after the first attempt at set-up: registered when `first_error` is `None`.
    pub fn after_first(socket: PathBuf, first_error: Option<&RegisterError>) -> Keeper {
        let state = match first_error {
            None => State::Registered,
            Some(RegisterError::Refused { .. }) => State::Refused,
            Some(_) => State::Waiting,
        };
        Keeper { socket, state }
    }

    /// Where the registration stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long to wait before the next attempt; `None` while registered (wait for the
    /// connection to hang up instead).
    pub fn retry_after(&self) -> Option<Duration> {
        match self.state {
            State::Registered => None,
            State::Waiting | State::Lost => Some(RETRY),
            State::Refused => Some(RETRY_REFUSED),
        }
    }

    /// Apply `event`. Returns the line to log when the state changed, `None` otherwise (a
    /// retry that fails the same way as the last one says nothing).
    pub fn on(&mut self, event: Event<'_>) -> Option<String> {
        let path = self.socket.display();
        let (next, line) = match (self.state, event) {
            (State::Registered, Event::HungUp) => (
                State::Lost,
                format!(
                    "gvm-vgpud at {path} closed the registration (stopped or restarted): re-registering every {RETRY:?}"
                ),
            ),
            (_, Event::HungUp) => return None,
            (from, Event::Registered { gpu }) => {
                let gpu = gpu.map_or_else(|| "not said".to_string(), |g| g.to_string());
                let line = match from {
                    State::Registered => return None,
                    State::Waiting => format!(
                        "registered with gvm-vgpud at {path}, which started after this process (gpu {gpu})"
                    ),
                    State::Lost | State::Refused => {
                        format!("registered again with gvm-vgpud at {path} (gpu {gpu})")
                    }
                };
                (State::Registered, line)
            }
            (State::Refused, Event::Failed(RegisterError::Refused { .. })) => return None,
            (_, Event::Failed(e @ RegisterError::Refused { .. })) => (
                State::Refused,
                format!("{e}: retrying every {RETRY_REFUSED:?}"),
            ),
            (State::Refused, Event::Failed(e)) => (
                State::Lost,
                format!("{e}: retrying every {RETRY:?}"),
            ),
            // Still unreachable: nothing new to say.
            (State::Waiting | State::Lost, Event::Failed(_)) => return None,
            // Not reachable from `run` (no attempt while registered); keep the state.
            (State::Registered, Event::Failed(_)) => return None,
        };
        self.state = next;
        Some(line)
    }
}

/// The I/O the keeper loop needs, so that tests can fake it.
pub trait Link {
    /// A kept connection: dropping it closes it.
    type Conn;
    /// One registration attempt, bounded in time, holding no lock.
    fn register(&mut self) -> Result<(Self::Conn, Reply), RegisterError>;
    /// Block until `conn` hangs up (or can no longer be watched).
    fn wait_hangup(&mut self, conn: &Self::Conn);
    /// Sleep `d` between attempts.
    fn pause(&mut self, d: Duration);
    /// Whether the process is exiting: the loop then stops without another attempt.
    fn exiting(&self) -> bool;
    /// Log one line.
    fn log(&mut self, line: &str);
}

/// The keeper loop: wait for hang-up while registered, retry while not; returns only once
/// [`Link::exiting`] says so. `first` is the outcome of the attempt made at set-up.
pub fn run<L: Link>(link: &mut L, socket: PathBuf, first: Result<L::Conn, RegisterError>) {
    let mut keeper = Keeper::after_first(socket, first.as_ref().err());
    let mut conn = first.ok();
    loop {
        if link.exiting() {
            return;
        }
        if let Some(c) = conn.take() {
            link.wait_hangup(&c);
            drop(c);
            if link.exiting() {
                return;
            }
            if let Some(line) = keeper.on(Event::HungUp) {
                link.log(&line);
            }
            continue;
        }
        link.pause(keeper.retry_after().unwrap_or(RETRY));
        if link.exiting() {
            return;
        }
        let line = match link.register() {
            Ok((c, reply)) => {
                conn = Some(c);
                keeper.on(Event::Registered { gpu: reply.gpu })
            }
            Err(e) => keeper.on(Event::Failed(&e)),
        };
        if let Some(line) = line {
            link.log(&line);
        }
    }
}

/// The real link: the daemon's Unix socket.
#[derive(Debug)]
pub struct SocketLink {
    /// The daemon's shim socket.
    pub socket: PathBuf,
    /// The request sent at set-up, sent again unchanged.
    pub request: Request,
    /// The control block's descriptor (a duplicate, close-on-exec), handed over again with
    /// every request.
    pub control: OwnedFd,
    /// The bound of one attempt ([`crate::register::DEFAULT_TIMEOUT`] in the shim).
    pub timeout: Duration,
    /// Set once the process is exiting (the shim sets it from an `atexit` handler).
    pub exiting: &'static AtomicBool,
    /// Where lines go (the shim's stderr logger).
    pub log: fn(&str),
    /// The daemon-made arbitration blocks this process has joined, by GPU (duplicate
    /// descriptors): handed back with every re-registration.
    pub joined_arbiters: fn() -> Vec<(String, OwnedFd)>,
    /// Takes the arbitration blocks a daemon handed over with its reply.
    pub on_arbiters: fn(Vec<(String, OwnedFd)>),
}

impl Link for SocketLink {
    type Conn = OwnedFd;

    fn register(&mut self) -> Result<(OwnedFd, Reply), RegisterError> {
        let mut joined = (self.joined_arbiters)();
        joined.truncate(crate::register::MAX_HANDED_BACK);
        let mut request = self.request.clone();
        request.arbiters = joined.iter().map(|(pci, _)| pci.clone()).collect();
        let fds: Vec<_> = joined.iter().map(|(_, fd)| fd.as_fd()).collect();
        let r = connect_and_register(
            &self.socket,
            &request,
            self.control.as_fd(),
            &fds,
            self.timeout,
        )?;
        (self.on_arbiters)(r.arbiters);
        Ok((r.connection, r.reply))
    }

    fn wait_hangup(&mut self, conn: &OwnedFd) {
        sys::wait_hangup(conn.as_fd());
    }

    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn exiting(&self) -> bool {
        self.exiting.load(Ordering::Acquire)
    }

    fn log(&mut self, line: &str) {
        (self.log)(line);
    }
}

/// Why the keeper thread could not start; `connection` is the set-up connection, handed back
/// so the caller can keep it open (the process stays registered until the daemon restarts).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {THREAD_NAME} thread for {socket} (errno {errno:?}): the process will not re-register after gvm-vgpud restarts")]
pub struct SpawnError<C: std::fmt::Debug> {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The OS error number.
    pub errno: Option<i32>,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
    /// The set-up connection, when there was one.
    pub connection: Option<C>,
}

/// Start the keeper thread ([`THREAD_NAME`], all signals blocked, [`STACK_SIZE`]) running
/// [`run`] over `link`. The thread is detached; it never panics out (a panic inside is caught
/// and logged once).
pub fn spawn<L>(
    link: L,
    socket: &Path,
    first: Result<L::Conn, RegisterError>,
) -> Result<(), SpawnError<L::Conn>>
where
    L: Link + Send + 'static,
    L::Conn: Send + std::fmt::Debug + 'static,
{
    // The closure takes the outcome out of the slot when it runs; if the thread never
    // starts, the caller gets the connection back from it.
    let slot = Arc::new(Mutex::new(Some(first)));
    let theirs = Arc::clone(&slot);
    let path = socket.to_path_buf();
    let started = sys::with_signals_blocked(|| {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let first = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
                drop(theirs);
                let Some(first) = first else { return };
                let mut link = link;
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&mut link, path, first);
                }));
                if outcome.is_err() {
                    link.log("the re-registration thread failed unexpectedly; the process will not re-register after gvm-vgpud restarts");
                }
            })
    });
    match started {
        Ok(_detached) => Ok(()),
        Err(source) => {
            let first = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            Err(SpawnError {
                socket: socket.to_path_buf(),
                errno: source.raw_os_error(),
                source,
                connection: first.and_then(Result::ok),
            })
        }
    }
}

#[cfg(test)]
#[path = "reregister_tests.rs"]
mod tests;
