//! The shim socket's transport: CUDA processes under `libgvm_cuda.so` connect to
//! `/run/gvm-vgpu/shim.sock` under the host root and register.
//!
//! What a registration must prove, and the registry it lands in, are
//! [`gvm_shim_host::handover`] and [`gvm_shim_host::registry`]; this module only binds the
//! socket, bounds connections (count, per uid, [`READ_TIMEOUT`] for the line), reads the
//! request line together with the control block descriptor that comes with its first bytes
//! (`SCM_RIGHTS`, received close-on-exec; any other descriptor is closed at once), hands both
//! to [`register`] off the async threads, and holds each connection open until the process
//! closes it, at which point its registration is dropped.
//!
//! It also runs the cross-domain arbitration relay ([`RelayHub`]): the reply to an accepted
//! registration carries, for each GPU the process uses, the arbitration block of its domain
//! (its uid in its pid namespace) as a sealed memfd, listed in `"arbiters"` and attached in
//! that order; a block the process hands back (a second descriptor, after a daemon restart)
//! is taken back as its domain's block. A process leaves the relay when its connection ends.
//! The socket is open to every user, so failed accepts back off
//! ([`crate::accept::AcceptBackoff`]) and refusals and failed accepts are each logged at
//! most once per [`crate::accept::LOG_INTERVAL`], with the number held back.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gvm_host_root::HostRoot;
use gvm_shim_abi::register::MAX_HANDED_BACK;
use gvm_shim_abi::sys::{recv_with_fds, send_bytes, send_with_fds};
use gvm_shim_host::handover::Refusal;
use gvm_shim_host::handover::{
    pid_namespace, refusal_reply, refuse, register, Peer, UidSlots, MAX_CONNECTIONS, MAX_LINE,
    MAX_PER_UID, SOCKET_PATH,
};
use gvm_shim_host::registry::{Registration, ShimRegistry};
use gvm_shim_host::relay::DomainKey;
use gvm_shim_host::relay_hub::RelayHub;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::accept::{is_exhaustion, AcceptBackoff, LOG_INTERVAL};
use crate::log_limit::EventLog;

/// How long a peer has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Bind the shim socket at `path` (mode 0666: any CUDA process may register), replacing a
/// stale socket file; refuses when another daemon answers there.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| {
            format!("cannot create the shim socket directory {}", dir.display())
        })?;
    }
    if fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another gvm-vgpud is already serving the shim socket {}: stop it first",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale shim socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the shim socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(l)
}

/// The shim socket path from `--shim-socket`: `none` disables, a path is taken as given,
/// nothing means [`SOCKET_PATH`] under the host root.
pub fn socket_option(host: &HostRoot, flag: Option<&str>) -> Option<PathBuf> {
    match flag {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(host.path(SOCKET_PATH)),
    }
}

/// Bind the shim socket named by `flag` ([`socket_option`]) and serve it on `rt`. A socket
/// that cannot be bound is logged: shim processes are then found by the scan only.
pub fn spawn_listener(
    rt: &tokio::runtime::Runtime,
    host: &HostRoot,
    registry: Arc<ShimRegistry>,
    hub: Arc<RelayHub>,
    flag: Option<&str>,
) {
    let Some(path) = socket_option(host, flag) else {
        info!("shim registration socket disabled (--shim-socket none): only root-owned mode-0600 CUDA shim block files in /dev/shm are found, by the scan");
        return;
    };
    let _in_runtime = rt.enter();
    match bind(&path) {
        Ok(l) => {
            info!(socket = %path.display(), "CUDA shim registration listening");
            rt.spawn(serve(l, host.clone(), registry, hub));
        }
        Err(e) => warn!("{e:#}: only root-owned mode-0600 CUDA shim block files in /dev/shm are found, by the scan"),
    }
}

/// The kinds of event logged at most once per [`LOG_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The shim socket's accept failed.
    AcceptFailed,
    /// A registration was refused (caps, or the request).
    Refused,
}

type Log = Arc<EventLog<Event>>;

/// Serve registrations on `listener` for `host` into `registry`, relaying arbitration
/// through `hub` (made over the same registry), until the runtime stops.
pub async fn serve(
    listener: UnixListener,
    host: HostRoot,
    registry: Arc<ShimRegistry>,
    hub: Arc<RelayHub>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let uid_slots = UidSlots::new(MAX_PER_UID);
    let log: Log = Arc::new(EventLog::new(LOG_INTERVAL));
    let mut backoff = AcceptBackoff::default();
    let mut flush = tokio::time::interval(LOG_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = flush.tick() => {
                for (event, n) in log.flush() {
                    match event {
                        Event::AcceptFailed => warn!("failed shim socket accepts: {n} more suppressed"),
                        Event::Refused => info!("refused shim registrations: {n} more suppressed"),
                    }
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                let wait = backoff.failed();
                if let Some(more) = log.allow(Event::AcceptFailed) {
                    let hint = if is_exhaustion(&e) {
                        " (out of file descriptors or buffers)"
                    } else {
                        ""
                    };
                    warn!(
                        "shim socket accept failed: {e}{hint}; pausing accepts for {wait:?}{more}"
                    );
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let slot = slots.clone().try_acquire_owned();
        // A peer without credentials is turned away by `connection` itself.
        let cred = stream.peer_cred();
        let uid_slot = cred
            .as_ref()
            .ok()
            .map(|c| (c.uid(), uid_slots.take(c.uid())));
        let (host, registry, log, hub) = (host.clone(), registry.clone(), log.clone(), hub.clone());
        tokio::spawn(async move {
            let refusal = match (&slot, &uid_slot) {
                (Err(_), _) => Some(format!(
                    "gvm-vgpud holds {MAX_CONNECTIONS} registrations already: running standalone"
                )),
                (_, Some((u, None))) => Some(format!(
                    "uid {u} holds {MAX_PER_UID} registrations already: running standalone"
                )),
                _ => None,
            };
            match refusal {
                None => connection(stream, cred, host, registry, hub, &log).await,
                Some(why) => {
                    if let Some((u, _)) = uid_slot {
                        if let Some(more) = log.allow(Event::Refused) {
                            info!(uid = u, "shim registration refused: {why}{more}");
                        }
                    }
                    send(&mut { stream }, &refusal_reply(&refuse("request", why))).await;
                }
            }
            drop((slot, uid_slot));
        });
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), v: &Value) -> bool {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    w.write_all(&out).await.is_ok()
}

/// Read one request line (at most [`MAX_LINE`] bytes, newline included) from `stream`, and
/// the descriptors that came with its first bytes (the control block, then the arbitration
/// blocks handed back, at most [`MAX_HANDED_BACK`]; any more are closed). Bytes after the newline are dropped (a shim sends
/// nothing before the reply); so are descriptors that come later.
async fn read_request(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), Refusal> {
    let mut line = Vec::with_capacity(512);
    let mut handed: Vec<OwnedFd> = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut first = true;
    loop {
        let room = (MAX_LINE + 1 - line.len()).min(chunk.len());
        let buf = &mut chunk[..room];
        stream
            .readable()
            .await
            .map_err(|e| refuse("request", format!("read failed: {e}")))?;
        let got = stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_fd(), buf, 1 + MAX_HANDED_BACK)
        });
        let (n, fd) = match got {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(refuse("request", format!("read failed: {e}"))),
        };
        if first {
            handed = fd;
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
async fn send_with(stream: &UnixStream, v: &Value, fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    let mut rest: &[u8] = &out;
    let mut first = !fds.is_empty();
    while !rest.is_empty() {
        if stream.writable().await.is_err() {
            return false;
        }
        let sent = stream.try_io(Interest::WRITABLE, || {
            if first {
                send_with_fds(stream.as_fd(), rest, fds)
            } else {
                send_bytes(stream.as_fd(), rest)
            }
        });
        match sent {
            Ok(0) => return false,
            Ok(n) => {
                first = false;
                rest = rest.get(n..).unwrap_or_default();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
    true
}

/// Put the registered process `reg` (host pid `peer.pid`) into the arbitration relay and
/// add its domain's blocks to `reply`; returns the blocks to attach, in the reply's order.
fn join_relay(
    hub: &RelayHub,
    host: &HostRoot,
    peer: Peer,
    reg: &Registration,
    back: Vec<OwnedFd>,
    reply: &mut Value,
) -> Vec<Arc<gvm_shim_abi::priority::ArbiterMap>> {
    let domain = DomainKey::Host {
        uid: peer.uid,
        pid_ns: pid_namespace(host, peer.pid).unwrap_or(0),
    };
    let h = hub.join_registration(peer.pid, reg, domain, back);
    if let Some(n) = &h.note {
        debug!(pid = peer.pid, "no relayed arbitration block: {n}");
    }
    RelayHub::reply_with(&h, reply);
    h.blocks
}

async fn connection(
    stream: UnixStream,
    cred: std::io::Result<tokio::net::unix::UCred>,
    host: HostRoot,
    registry: Arc<ShimRegistry>,
    hub: Arc<RelayHub>,
    log: &EventLog<Event>,
) {
    let peer = match cred {
        Ok(c) => match c.pid().and_then(|p| u32::try_from(p).ok()) {
            Some(pid) => Peer { pid, uid: c.uid() },
            None => return,
        },
        Err(e) => {
            debug!("shim socket: no peer credentials: {e}");
            return;
        }
    };
    let mut stream = stream;
    let outcome = match tokio::time::timeout(READ_TIMEOUT, read_request(&stream)).await {
        Err(_) => Err(refuse(
            "request",
            format!("no request line within {READ_TIMEOUT:?}"),
        )),
        Ok(Err(r)) => Err(r),
        Ok(Ok((line, fds))) => {
            let id = registry.connection_id();
            let (h, reg, hub) = (host.clone(), registry.clone(), hub.clone());
            tokio::task::spawn_blocking(move || {
                let mut fds = fds.into_iter();
                let control = fds.next();
                let (r, mut reply) = register(&h, &reg, peer, id, &line, control)?;
                let blocks = join_relay(&hub, &h, peer, &r, fds.collect(), &mut reply);
                Ok((r, reply, blocks))
            })
            .await
            .unwrap_or_else(|e| Err(refuse("request", format!("validation failed: {e}"))))
        }
    };
    let (reg, reply, blocks) = match outcome {
        Ok(ok) => ok,
        Err(r) => {
            if let Some(more) = log.allow(Event::Refused) {
                info!(
                    pid = peer.pid,
                    uid = peer.uid,
                    "shim registration refused: {r}{more}"
                );
            }
            send(&mut stream, &refusal_reply(&r)).await;
            return;
        }
    };
    info!(
        pid = peer.pid,
        ns_pid = reg.ns_pid,
        control = %reg.control,
        gpus = ?reg.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect::<Vec<_>>(),
        "CUDA shim process registered"
    );
    let fds: Vec<_> = blocks.iter().filter_map(|b| b.fd()).collect();
    if !send_with(&stream, &reply, &fds).await {
        if registry.remove(peer.pid, reg.connection) {
            hub.leave(peer.pid);
        }
        return;
    }
    drop(fds);
    // Hold the connection until the process closes it; anything more it sends is ignored
    // (and a descriptor sent with it is discarded by the kernel: no room was given for it).
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if registry.remove(peer.pid, reg.connection) {
        hub.leave(peer.pid);
        info!(
            pid = peer.pid,
            "CUDA shim process unregistered (connection closed)"
        );
    }
}

#[cfg(test)]
#[path = "shim_listener_tests.rs"]
mod tests;
