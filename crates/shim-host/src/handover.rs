//! The registration handover: a CUDA process under `libgvm_cuda.so` hands its control block
//! to the manager that drives it (gvm-vgpud on a host; the guest agent inside a VM).
//!
//! [`crate::backend::ShimBackend`] drives a shim process through its control block. A file
//! scan of `/dev/shm` finds blocks at the default path, but cannot know a block at a
//! non-default `GVM_SHIM_CONTROL` path, which physical GPUs a process sees, or that a process
//! just exited. So each shim connects to the manager's shim socket
//! ([`gvm_shim_abi::register`]) at set-up, sends one JSON line and keeps the connection open
//! while it lives. This module is the manager's half of that exchange, without any transport:
//! the listener (tokio in gvm-vgpud) reads the line and calls [`register`].
//!
//! * **Identity from the kernel.** The process is the socket's peer (`SO_PEERCRED`, given as
//!   a [`Peer`]), never what the message says. The message's `pid` is the pid the process
//!   sees for itself; it must be the peer's innermost pid (`NSpid` in `/proc/<pid>/status`),
//!   and the control block's header must hold it. In a container the two pids differ: the
//!   registration stores the mapping.
//! * **The block must be the peer's.** A regular file (not a link), owned by root or the
//!   peer's uid, a valid block of this layout, whose header pid is the peer's. A path in
//!   another mount namespace is opened through `/proc/<pid>/root`. So a hostile process can
//!   register only itself and only a block it could write anyway.
//! * **Bounded.** One line of at most [`MAX_LINE`] bytes; at most [`MAX_CONNECTIONS`]
//!   connections at once, and at most [`MAX_PER_UID`] of one non-root user ([`UidSlots`], so
//!   one user cannot take every slot from the others; beyond either the answer is an error
//!   and the process runs standalone); every field validated ([`parse_request`],
//!   [`check_block`]); a refusal names the field and changes nothing.
//! * **End of file = exit.** When the connection closes, the listener drops the
//!   registration at once (the process exited, or exec'd without it: the descriptor is
//!   close-on-exec).
//!
//! Registered processes appear in the shim backend's process list at its next scan, at their
//! registered block path; the GPUs they reported (PCI bus ids) map to GVM GPU indices through
//! the mdev parent with that PCI address ([`gvm_gcgroup::gpu_index::gvm_gpu_of_pci`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use gvm_host_root::HostRoot;
use gvm_shim_abi::control::ControlMap;
use gvm_shim_abi::register::{normalise_pci_bus_id, MAX_GPUS, PROTOCOL_VERSION};
use serde_json::{json, Value};

use crate::registry::{Registration, ShimRegistry};

pub use gvm_shim_abi::register::{MAX_LINE, SOCKET_PATH};

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

/// A refusal of `field` saying `message`.
pub fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
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
        Some(g) => match gvm_gcgroup::gpu_index::gvm_gpu_of_pci(host, &g.pci_bus_id) {
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

/// The JSON reply that tells a shim why it was refused.
pub fn refusal_reply(r: &Refusal) -> Value {
    json!({"ok": false, "field": r.field, "error": r.message})
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
