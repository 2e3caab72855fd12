//! The shim socket: CUDA processes under `libgvm_cuda.so` register with gvm-vgpud.
//!
//! The shim backend ([`crate::shim_backend`]) drives a shim process through its control block.
//! A file scan of `/dev/shm` finds blocks at the default path, but cannot know a block at a
//! non-default `GVM_SHIM_CONTROL` path, which physical GPUs a process sees, or that a process
//! just exited. So each shim connects to `/run/gvm-vgpu/shim.sock` under the host root
//! ([`gvm_shim_abi::register`]) at set-up, sends one JSON line and keeps the connection open
//! while it lives:
//!
//! * **Identity from the kernel.** The process is the socket's peer (`SO_PEERCRED`), never what
//!   the message says. The message's `pid` is the pid the process sees for itself; it must be
//!   the peer's innermost pid (`NSpid` in `/proc/<pid>/status`), and the control block's header
//!   must hold it. In a container the two pids differ: the registration stores the mapping.
//! * **The block must be the peer's.** A regular file (not a link), owned by root or the peer's
//!   uid, a valid block of this layout, whose header pid is the peer's. A path in another
//!   mount namespace is opened through `/proc/<pid>/root`. So a hostile process can register
//!   only itself and only a block it could write anyway.
//! * **Bounded.** One line of at most [`MAX_LINE`] bytes, read within [`READ_TIMEOUT`]; at most
//!   [`MAX_CONNECTIONS`] connections at once, and at most [`MAX_PER_UID`] of one non-root user
//!   (so one user cannot take every slot from the others; beyond either the answer is an
//!   error and the process runs standalone); every field
//!   validated ([`parse_request`], [`check_block`]); a refusal names the field and changes
//!   nothing.
//! * **End of file = exit.** When the connection closes, the registration is dropped at once
//!   (the process exited, or exec'd without it: the descriptor is close-on-exec).
//!
//! Registered processes appear in the shim backend's process list at its next scan, at their
//! registered block path; the GPUs they reported (PCI bus ids) map to GVM GPU indices through
//! the mdev parent with that PCI address ([`crate::shim_backend::gvm_gpu_of_pci`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gvm_host_root::HostRoot;
use gvm_shim_abi::control::ControlMap;
use gvm_shim_abi::register::{normalise_pci_bus_id, MAX_GPUS, MAX_LINE, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use gvm_shim_abi::register::SOCKET_PATH;

/// How long a peer has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// The most registration connections open at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// The most registration connections one non-root uid may hold at once.
pub const MAX_PER_UID: usize = 1024;
/// The longest control block path accepted.
pub const MAX_PATH: usize = 1024;

/// Connections held per uid, bounded for every uid but root.
#[derive(Debug)]
pub struct UidSlots {
    per_uid: usize,
    held: Mutex<BTreeMap<u32, usize>>,
}

/// One connection's place in [`UidSlots`]; given back when dropped.
#[derive(Debug)]
pub struct UidSlot {
    slots: Arc<UidSlots>,
    uid: u32,
}

impl UidSlots {
    /// At most `per_uid` connections for each uid other than root.
    pub fn new(per_uid: usize) -> Arc<UidSlots> {
        Arc::new(UidSlots {
            per_uid,
            held: Mutex::new(BTreeMap::new()),
        })
    }

    /// A slot for `uid`, or `None` when it holds `per_uid` already (root: always).
    pub fn take(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(uid).or_insert(0);
        if uid != 0 && *n >= self.per_uid {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            slots: self.clone(),
            uid,
        })
    }

    /// Connections `uid` holds now.
    pub fn held(&self, uid: u32) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// One GPU a registered process sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredGpu {
    /// Its CUDA ordinal in the process.
    pub ordinal: u32,
    /// Its PCI bus id, normalised (`0000:3b:00.0`).
    pub pci_bus_id: String,
}

/// A request that passed the checks that need no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    /// The pid the process sees for itself.
    pub pid: u32,
    /// Its control block path as it sees it (absolute, no `..`).
    pub control: PathBuf,
    /// Its GPUs.
    pub gpus: Vec<RegisteredGpu>,
    /// `GVM_VGPU_UUID`, lower case.
    pub vgpu_uuid: Option<String>,
}

/// Why a registration was refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    /// The request field (`version`, `pid`, `control`, `gpus[1].pci_bus_id`, ...).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        message: message.into(),
    }
}

fn as_u32(v: Option<&Value>, field: &str) -> Result<u32, Refusal> {
    v.and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| refuse(field, "missing or not an unsigned 32-bit integer"))
}

/// Check a request line's shape and every field that needs no I/O.
pub fn parse_request(line: &[u8]) -> Result<ParsedRequest, Refusal> {
    if line.len() > MAX_LINE {
        return Err(refuse("request", format!("longer than {MAX_LINE} bytes")));
    }
    let text = std::str::from_utf8(line).map_err(|_| refuse("request", "not UTF-8 text"))?;
    let v: Value = serde_json::from_str(text.trim_end())
        .map_err(|e| refuse("request", format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| refuse("request", "not a JSON object"))?;
    let version = as_u32(obj.get("version"), "version")?;
    if version != PROTOCOL_VERSION {
        return Err(refuse(
            "version",
            format!("protocol {version} is not spoken here (gvm-vgpud speaks {PROTOCOL_VERSION}): use a shim and daemon of the same release"),
        ));
    }
    let pid = as_u32(obj.get("pid"), "pid")?;
    if pid == 0 {
        return Err(refuse("pid", "0 is not a process"));
    }
    let control = obj
        .get("control")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("control", "missing or not a string"))?;
    let path = Path::new(control);
    if control.len() > MAX_PATH
        || !path.is_absolute()
        || control.contains('\0')
        || path.components().any(|c| c == Component::ParentDir)
    {
        return Err(refuse(
            "control",
            format!("{control:?} is not an absolute path of at most {MAX_PATH} bytes without '..'"),
        ));
    }
    let list = obj
        .get("gpus")
        .and_then(Value::as_array)
        .ok_or_else(|| refuse("gpus", "missing or not an array"))?;
    if list.len() > MAX_GPUS {
        return Err(refuse(
            "gpus",
            format!("{} GPUs listed, at most {MAX_GPUS}", list.len()),
        ));
    }
    let mut gpus = Vec::with_capacity(list.len());
    let (mut ordinals, mut ids) = (BTreeSet::new(), BTreeSet::new());
    for (i, g) in list.iter().enumerate() {
        let ordinal = as_u32(g.get("ordinal"), &format!("gpus[{i}].ordinal"))?;
        let raw = g
            .get("pci_bus_id")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse(format!("gpus[{i}].pci_bus_id"), "missing or not a string"))?;
        let pci = normalise_pci_bus_id(raw).ok_or_else(|| {
            refuse(
                format!("gpus[{i}].pci_bus_id"),
                format!("{raw:?} is not a PCI bus id such as 0000:3b:00.0"),
            )
        })?;
        if !ordinals.insert(ordinal) {
            return Err(refuse(
                format!("gpus[{i}].ordinal"),
                format!("ordinal {ordinal} listed twice"),
            ));
        }
        if !ids.insert(pci.clone()) {
            return Err(refuse(
                format!("gpus[{i}].pci_bus_id"),
                format!("{pci} listed twice"),
            ));
        }
        gpus.push(RegisteredGpu {
            ordinal,
            pci_bus_id: pci,
        });
    }
    let vgpu_uuid = match obj.get("vgpu_uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            uuid::Uuid::parse_str(s)
                .ok()
                .filter(|_| s.len() == 36)
                .map(|u| u.to_string())
                .ok_or_else(|| refuse("vgpu_uuid", format!("{s:?} is not a 36-character UUID")))?,
        ),
        Some(_) => return Err(refuse("vgpu_uuid", "not a string or null")),
    };
    Ok(ParsedRequest {
        pid,
        control: path.to_path_buf(),
        gpus,
        vgpu_uuid,
    })
}

/// The pid a process sees for itself, from its `/proc/<pid>/status` text: the last `NSpid`
/// field (its innermost pid namespace), or `host_pid` on a kernel without that line.
pub fn innermost_pid(status: &str, host_pid: u32) -> Option<u32> {
    match status.lines().find_map(|l| l.strip_prefix("NSpid:")) {
        Some(list) => list.split_whitespace().last()?.parse().ok(),
        None => Some(host_pid),
    }
}

/// The peer's control block path as the daemon can open it: as given when the peer shares
/// the daemon's mount namespace, else through `<proc>/<pid>/root`.
pub fn daemon_view(control: &Path, host_pid: u32, same_mount_ns: bool, proc_dir: &Path) -> PathBuf {
    if same_mount_ns {
        return control.to_path_buf();
    }
    let rel = control.strip_prefix("/").unwrap_or(control);
    proc_dir.join(host_pid.to_string()).join("root").join(rel)
}

/// Check that `path` is a block the peer (`uid`, seeing itself as `pid`) may register:
/// a regular file, not a link, owned by root or `uid`, a valid block whose header holds
/// `pid`. Returns the mapping and the file's (device, inode).
pub fn check_block(path: &Path, pid: u32, uid: u32) -> Result<(ControlMap, (u64, u64)), Refusal> {
    let shown = path.display();
    let meta = fs::symlink_metadata(path).map_err(|e| {
        refuse(
            "control",
            format!("cannot stat {shown} (errno {:?}): {e}", e.raw_os_error()),
        )
    })?;
    if !meta.file_type().is_file() {
        return Err(refuse(
            "control",
            format!("{shown} is not a regular file (links are not followed)"),
        ));
    }
    if meta.uid() != 0 && meta.uid() != uid {
        return Err(refuse(
            "control",
            format!(
                "{shown} belongs to uid {}, not to root or the registering uid {uid}",
                meta.uid()
            ),
        ));
    }
    let map = ControlMap::open(path).map_err(|e| refuse("control", e.to_string()))?;
    // The file opened must be the one checked (not swapped for a link in between).
    let again = fs::symlink_metadata(path).map_err(|e| refuse("control", e.to_string()))?;
    if (again.dev(), again.ino()) != (meta.dev(), meta.ino()) || !again.file_type().is_file() {
        return Err(refuse(
            "control",
            format!("{shown} changed while being checked"),
        ));
    }
    let header = map.block().pid.load(Ordering::Acquire);
    if header != pid {
        return Err(refuse(
            "control",
            format!("{shown} is the block of pid {header}, not of the registering process ({pid})"),
        ));
    }
    Ok((map, (meta.dev(), meta.ino())))
}

/// A registered shim process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The connection it came on (a newer registration of the same pid replaces it).
    pub connection: u64,
    /// The pid the process sees for itself (differs from the daemon's in a container).
    pub ns_pid: u32,
    /// Its control block, as the daemon opens it.
    pub control: PathBuf,
    /// The block file's (device, inode).
    pub file_id: (u64, u64),
    /// The GPUs it sees.
    pub gpus: Vec<RegisteredGpu>,
    /// The UUID it was given (informational).
    pub vgpu_uuid: Option<String>,
}

/// The registered shim processes of one host root, by the daemon's pid for them.
#[derive(Debug, Default)]
pub struct ShimRegistry {
    by_pid: Mutex<BTreeMap<u32, Registration>>,
    next_connection: AtomicU64,
}

impl ShimRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Registration>> {
        self.by_pid.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record `reg` for `host_pid` (replacing an older one).
    pub fn insert(&self, host_pid: u32, reg: Registration) {
        self.lock().insert(host_pid, reg);
    }

    /// Drop the registration of `host_pid` made on `connection` (a newer one stays).
    /// Returns whether one was dropped.
    pub fn remove(&self, host_pid: u32, connection: u64) -> bool {
        let mut m = self.lock();
        if m.get(&host_pid).is_some_and(|r| r.connection == connection) {
            m.remove(&host_pid);
            return true;
        }
        false
    }

    /// Drop the registration of `host_pid`, whatever its connection (the process is gone).
    pub fn forget(&self, host_pid: u32) {
        self.lock().remove(&host_pid);
    }

    /// The registration of `host_pid`.
    pub fn get(&self, host_pid: u32) -> Option<Registration> {
        self.lock().get(&host_pid).cloned()
    }

    /// Every registration.
    pub fn all(&self) -> Vec<(u32, Registration)> {
        self.lock().iter().map(|(p, r)| (*p, r.clone())).collect()
    }
}

/// The registry of `host` (one per host root in this process, shared by the listener and
/// the shim backend).
pub fn registry_for(host: &HostRoot) -> Arc<ShimRegistry> {
    static ALL: Mutex<BTreeMap<PathBuf, Arc<ShimRegistry>>> = Mutex::new(BTreeMap::new());
    ALL.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(host.root().to_path_buf())
        .or_default()
        .clone()
}

/// The peer as the kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid in the daemon's pid namespace.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
}

fn same_mount_ns(host: &HostRoot, pid: u32) -> bool {
    let own = fs::read_link(host.proc_dir().join("self/ns/mnt"));
    let peer = fs::read_link(host.proc_dir().join(pid.to_string()).join("ns/mnt"));
    match (own, peer) {
        (Ok(a), Ok(b)) => a == b,
        // Cannot tell (no such files under a test /proc): take the path as given.
        _ => true,
    }
}

/// Validate `line` from `peer` completely (fields, pid, block) and, when it passes, record
/// the registration on `connection`. Returns the reply to send.
pub fn register(
    host: &HostRoot,
    registry: &ShimRegistry,
    peer: Peer,
    connection: u64,
    line: &[u8],
) -> Result<(Registration, Value), Refusal> {
    let req = parse_request(line)?;
    let status = fs::read_to_string(host.proc_dir().join(peer.pid.to_string()).join("status"))
        .map_err(|e| {
            refuse(
                "pid",
                format!("cannot read the status of the peer {}: {e}", peer.pid),
            )
        })?;
    let seen = innermost_pid(&status, peer.pid).ok_or_else(|| {
        refuse(
            "pid",
            format!("cannot tell the pid process {} sees", peer.pid),
        )
    })?;
    if seen != req.pid {
        return Err(refuse(
            "pid",
            format!(
                "{} is not the registering process (it is {seen} in its own pid namespace): a process registers only itself",
                req.pid
            ),
        ));
    }
    let path = daemon_view(
        &req.control,
        peer.pid,
        same_mount_ns(host, peer.pid),
        host.proc_dir(),
    );
    let (_map, file_id) = check_block(&path, req.pid, peer.uid)?;
    let (gpu, source) = match req.gpus.first() {
        Some(g) => match crate::shim_backend::gvm_gpu_of_pci(host, &g.pci_bus_id) {
            Some(i) => (i, format!("mdev parent {}", g.pci_bus_id)),
            None => (
                g.ordinal,
                format!(
                    "CUDA ordinal: no mdev parent has PCI address {}",
                    g.pci_bus_id
                ),
            ),
        },
        None => (0, "default: no GPU reported".to_string()),
    };
    let reg = Registration {
        connection,
        ns_pid: req.pid,
        control: path,
        file_id,
        gpus: req.gpus,
        vgpu_uuid: req.vgpu_uuid,
    };
    registry.insert(peer.pid, reg.clone());
    let reply = json!({"ok": true, "host_pid": peer.pid, "gpu": gpu, "gpu_source": source});
    Ok((reg, reply))
}

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
pub fn spawn_listener(rt: &tokio::runtime::Runtime, host: &HostRoot, flag: Option<&str>) {
    let Some(path) = socket_option(host, flag) else {
        info!("shim registration socket disabled (--shim-socket none): CUDA shim processes are found by the /dev/shm scan");
        return;
    };
    let _in_runtime = rt.enter();
    match bind(&path) {
        Ok(l) => {
            info!(socket = %path.display(), "CUDA shim registration listening");
            rt.spawn(serve(l, host.clone()));
        }
        Err(e) => warn!("{e:#}: CUDA shim processes are found by the /dev/shm scan only"),
    }
}

/// Serve registrations on `listener` for `host` until the runtime stops.
pub async fn serve(listener: UnixListener, host: HostRoot) {
    let registry = registry_for(&host);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let uid_slots = UidSlots::new(MAX_PER_UID);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("shim socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
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
        let (host, registry) = (host.clone(), registry.clone());
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
                None => connection(stream, cred, host, registry).await,
                Some(why) => {
                    if let Some((u, _)) = uid_slot {
                        info!(uid = u, "shim registration refused: {why}");
                    }
                    send(&mut { stream }, &refusal_reply(&refuse("request", why))).await;
                }
            }
            drop((slot, uid_slot));
        });
    }
}

fn refusal_reply(r: &Refusal) -> Value {
    json!({"ok": false, "field": r.field, "error": r.message})
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), v: &Value) -> bool {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    w.write_all(&out).await.is_ok()
}

async fn connection(
    stream: UnixStream,
    cred: std::io::Result<tokio::net::unix::UCred>,
    host: HostRoot,
    registry: Arc<ShimRegistry>,
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
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
    let read = limited.read_until(b'\n', &mut line);
    let outcome = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Err(refuse(
            "request",
            format!("no request line within {READ_TIMEOUT:?}"),
        )),
        Ok(Err(e)) => Err(refuse("request", format!("read failed: {e}"))),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(refuse(
            "request",
            format!("not one newline-terminated line of at most {MAX_LINE} bytes"),
        )),
        Ok(Ok(_)) => {
            let id = registry.connection_id();
            let (h, reg) = (host.clone(), registry.clone());
            tokio::task::spawn_blocking(move || register(&h, &reg, peer, id, &line))
                .await
                .unwrap_or_else(|e| Err(refuse("request", format!("validation failed: {e}"))))
        }
    };
    let (reg, reply) = match outcome {
        Ok(ok) => ok,
        Err(r) => {
            info!(
                pid = peer.pid,
                uid = peer.uid,
                "shim registration refused: {r}"
            );
            send(&mut w, &refusal_reply(&r)).await;
            return;
        }
    };
    info!(
        pid = peer.pid,
        ns_pid = reg.ns_pid,
        control = %reg.control.display(),
        gpus = ?reg.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect::<Vec<_>>(),
        "CUDA shim process registered"
    );
    if !send(&mut w, &reply).await {
        registry.remove(peer.pid, reg.connection);
        return;
    }
    // Hold the connection until the process closes it; anything more it sends is ignored.
    let mut sink = [0u8; 256];
    loop {
        match reader.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if registry.remove(peer.pid, reg.connection) {
        info!(
            pid = peer.pid,
            "CUDA shim process unregistered (connection closed)"
        );
    }
}

#[cfg(test)]
#[path = "shim_register_tests.rs"]
mod tests;
