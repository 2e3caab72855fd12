//! The interposer's registration socket inside the guest, served by plain threads.
//!
//! The same exchange and bounds as gvm-vgpud's listener on a host (see
//! `crates/daemon/src/shim_listener.rs`): the socket (mode 0666, any CUDA process
//! may register) is bound at `/run/gvm-vgpu/shim.sock` under the root unless given
//! elsewhere; at most [`MAX_CONNECTIONS`] connections at once and [`MAX_PER_UID`]
//! per non-root uid ([`UidSlots`]); the peer is who the kernel says
//! (`SO_PEERCRED`); one request line of at most [`MAX_LINE`] bytes within
//! [`READ_TIMEOUT`], with the control block descriptor (and the arbitration blocks
//! handed back, one per GPU) attached; [`register`] checks it all. The reply carries, for each
//! GPU, the arbitration block of the process's domain (its uid in its pid
//! namespace) from the [`gvm_shim_host::relay_hub::RelayHub`], attached with
//! `SCM_RIGHTS`. Before the reply the host's snapshot is put in force on the new
//! block ([`LocalDaemon::adopt`]). The connection is then held until the process
//! closes it, and its registration dropped.
//!
//! One thread accepts; one small thread serves each connection. Refusals and
//! failed accepts are logged at most once per [`LOG_INTERVAL`].

use super::LocalDaemon;
use crate::ratelog::RateLog;
use gvm_shim_abi::priority::ArbiterMap;
use gvm_shim_abi::register::MAX_HANDED_BACK;
use gvm_shim_abi::sys::{recv_with_fds, send_bytes, send_with_fds};
use gvm_shim_host::handover::{
    pid_namespace, refusal_reply, refuse, register, Peer, Refusal, UidSlots, MAX_CONNECTIONS,
    MAX_LINE, MAX_PER_UID,
};
use gvm_shim_host::registry::Registration;
use gvm_shim_host::relay::DomainKey;
use gvm_shim_host::relay_hub::RelayHub;
use serde_json::Value;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a peer has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the reply may take to go.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most often a refusal or a failed accept is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Stack of a connection thread (it parses one bounded line).
const CONNECTION_STACK: usize = 256 * 1024;

/// Why the shim socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another manager answers on the socket.
    #[error("another manager (gvm-vgpud or an agent) already serves the shim socket {path}: use --shim-socket to serve another path, or none")]
    InUse {
        /// The socket.
        path: String,
    },
    /// The socket could not be set up.
    #[error("cannot {what} {path} (errno {errno:?})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The errno.
        errno: Option<i32>,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Bind the shim socket at `path` (mode 0666), replacing a stale socket file.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    let io_err = |what, source: io::Error| ListenError::Io {
        what,
        path: path.display().to_string(),
        errno: source.raw_os_error(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err("create the directory of", e))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse {
                path: path.display().to_string(),
            });
        }
        fs::remove_file(path).map_err(|e| io_err("remove the stale socket", e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| io_err("bind", e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(|e| io_err("chmod", e))?;
    Ok(l)
}

#[derive(Debug)]
struct Shared {
    daemon: Arc<LocalDaemon>,
    open: AtomicUsize,
    uid_slots: Arc<UidSlots>,
    refused: Mutex<RateLog>,
}

impl Shared {
    fn log_refusal(&self, what: impl FnOnce() -> String) {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log(Instant::now(), what);
    }
}

/// One connection's place in the global count; given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bind `path` and serve it in a thread of its own, for as long as the agent runs.
pub fn spawn(path: &Path, daemon: Arc<LocalDaemon>) -> Result<(), ListenError> {
    let listener = bind(path)?;
    let shared = Arc::new(Shared {
        daemon,
        open: AtomicUsize::new(0),
        uid_slots: UidSlots::new(MAX_PER_UID),
        refused: Mutex::new(RateLog::new(LOG_INTERVAL)),
    });
    std::thread::Builder::new()
        .name("gvm-shim-listen".into())
        .spawn(move || serve(listener, shared))
        .map_err(|e| ListenError::Io {
            what: "start the thread serving",
            path: path.display().to_string(),
            errno: e.raw_os_error(),
            source: e,
        })?;
    Ok(())
}

fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let mut backoff = Duration::ZERO;
    let mut failed = RateLog::new(LOG_INTERVAL);
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => {
                backoff = Duration::ZERO;
                s
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                failed.log(Instant::now(), || {
                    format!("shim socket accept failed: {e}; pausing accepts for {backoff:?}")
                });
                std::thread::sleep(backoff);
                continue;
            }
        };
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("gvm-shim-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || admit(stream, &s));
        if let Err(e) = spawned {
            // The stream went with the closure: the process sees the connection close
            // and runs standalone.
            failed.log(Instant::now(), || {
                format!("cannot start a shim connection thread: {e}")
            });
        }
    }
}

/// Apply the caps, then serve the connection.
fn admit(stream: UnixStream, shared: &Shared) {
    let Ok((pid, uid)) = crate::sys::peer_cred(stream.as_fd()) else {
        return;
    };
    let peer = Peer { pid, uid };
    let held = shared.open.fetch_add(1, Ordering::AcqRel);
    let _slot = Slot(&shared.open);
    let uid_slot = shared.uid_slots.take(uid);
    let why = if held >= MAX_CONNECTIONS {
        Some(format!(
            "the agent holds {MAX_CONNECTIONS} registrations already: running standalone"
        ))
    } else if uid_slot.is_none() {
        Some(format!(
            "uid {uid} holds {MAX_PER_UID} registrations already: running standalone"
        ))
    } else {
        None
    };
    if let Some(why) = why {
        shared.log_refusal(|| format!("shim registration of pid {pid} (uid {uid}) refused: {why}"));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        send(&stream, &refusal_reply(&refuse("request", why)), &[]);
        return;
    }
    connection(stream, peer, shared);
    drop(uid_slot);
}

/// Read one request line (at most [`MAX_LINE`] bytes, newline included) within
/// [`READ_TIMEOUT`], and the descriptors that came with its first bytes (the
/// control block, then the arbitration blocks handed back, at most
/// [`MAX_HANDED_BACK`]; any more are closed).
fn read_request(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), Refusal> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut line = Vec::with_capacity(512);
    let mut handed = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut first = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(refuse(
                "request",
                format!("no request line within {READ_TIMEOUT:?}"),
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| refuse("request", format!("read failed: {e}")))?;
        let room = (MAX_LINE + 1 - line.len()).min(chunk.len());
        let buf = &mut chunk[..room];
        let (n, fds) = match recv_with_fds(stream.as_fd(), buf, 1 + MAX_HANDED_BACK) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(refuse("request", format!("read failed: {e}"))),
        };
        if first {
            handed = fds;
            first = false;
        } // A later descriptor is dropped here: closed.
        if n == 0 {
            break;
        }
        let bytes = &buf[..n];
        if let Some(at) = bytes.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&bytes[..=at]);
            return Ok((line, handed));
        }
        line.extend_from_slice(bytes);
        if line.len() > MAX_LINE {
            break;
        }
    }
    Err(refuse(
        "request",
        format!("not one newline-terminated line of at most {MAX_LINE} bytes"),
    ))
}

/// Send `v` as one line with `fds` attached to the first bytes (none: a plain write).
fn send(stream: &UnixStream, v: &Value, fds: &[BorrowedFd<'_>]) -> bool {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    let mut rest: &[u8] = &out;
    let mut first = !fds.is_empty();
    while !rest.is_empty() {
        let sent = if first {
            send_with_fds(stream.as_fd(), rest, fds)
        } else {
            send_bytes(stream.as_fd(), rest)
        };
        match sent {
            Ok(0) => return false,
            Ok(n) => {
                first = false;
                rest = rest.get(n..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Put the registered process into the in-guest relay and add its domain's blocks
/// to `reply`; returns the blocks to attach, in the reply's order.
fn join_relay(
    daemon: &LocalDaemon,
    peer: Peer,
    reg: &Registration,
    back: Vec<OwnedFd>,
    reply: &mut Value,
) -> Vec<Arc<ArbiterMap>> {
    let domain = DomainKey::Host {
        uid: peer.uid,
        pid_ns: pid_namespace(daemon.root(), peer.pid).unwrap_or(0),
    };
    let h = daemon.hub().join_registration(peer.pid, reg, domain, back);
    RelayHub::reply_with(&h, reply);
    h.blocks
}

fn connection(stream: UnixStream, peer: Peer, shared: &Shared) {
    let daemon = &shared.daemon;
    let registry = daemon.registry();
    let outcome = read_request(&stream).and_then(|(line, fds)| {
        let mut fds = fds.into_iter();
        let control = fds.next();
        let id = registry.connection_id();
        let (reg, mut reply) = register(daemon.root(), registry, peer, id, &line, control)?;
        daemon.adopt(peer.pid, &reg.block);
        daemon.changed();
        let blocks = join_relay(daemon, peer, &reg, fds.collect(), &mut reply);
        Ok((reg, reply, blocks))
    });
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (reg, reply, blocks) = match outcome {
        Ok(ok) => ok,
        Err(r) => {
            shared.log_refusal(|| {
                format!(
                    "shim registration of pid {} (uid {}) refused: {r}",
                    peer.pid, peer.uid
                )
            });
            send(&stream, &refusal_reply(&r), &[]);
            return;
        }
    };
    let fds: Vec<_> = blocks.iter().filter_map(|b| b.fd()).collect();
    let sent = send(&stream, &reply, &fds);
    drop(fds);
    if sent {
        // Hold the connection until the process closes it; anything more it sends
        // is read and dropped (a descriptor with it is discarded by the kernel).
        let _ = stream.set_read_timeout(None);
        let mut sink = [0u8; 256];
        let mut s = &stream;
        loop {
            match s.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    if registry.remove(peer.pid, reg.connection) {
        daemon.hub().leave(peer.pid);
    }
    daemon.changed();
}
