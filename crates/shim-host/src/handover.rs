//! The registration handover: a CUDA process under `libgvm_cuda.so` hands its control block
//! to the manager that drives it (gvm-vgpud on a host; the guest agent inside a VM).
//!
//! [`crate::backend::ShimBackend`] drives a shim process through its control block. Each shim
//! connects to the manager's shim socket ([`gvm_shim_abi::register`], protocol 2) at set-up,
//! sends one JSON line with its block's descriptor attached (`SCM_RIGHTS`) and keeps the
//! connection open while it lives. This module is the manager's half of that exchange, without
//! any transport: the listener (tokio in gvm-vgpud) reads the line and the descriptor and
//! calls [`register`].
//!
//! * **Identity from the kernel.** The process is the socket's peer (`SO_PEERCRED`, given as
//!   a [`Peer`]), never what the message says. The message's `pid` is the pid the process
//!   sees for itself; it must be the peer's innermost pid (`NSpid` in `/proc/<pid>/status`),
//!   and the control block's header must hold it. In a container the two pids differ: the
//!   registration stores the mapping.
//! * **Map only what nobody less privileged can resize.** A mapping of a file that its owner
//!   truncates kills the mapper with `SIGBUS` at the next access; the manager runs as root.
//!   So the block is the descriptor that came with the line — never a path, which could be
//!   truncated or replaced — and it is mapped only if it is a memfd sealed against shrinking
//!   and growing of exactly one block ([`ControlMap::from_handed_fd`]), or, from a root peer
//!   only, a root-owned mode-0600 regular file ([`ControlMap::from_root_file_fd`]); both
//!   checked with `fstat`/`F_GET_SEALS` on the descriptor ([`check_handed_block`]). Anything
//!   else is refused, naming the field `control` and the fix. The registry keeps the mapping
//!   itself: nothing is reopened later. What the process writes into the block stays
//!   untrusted input (its readers clamp every value).
//! * **Bounded.** One line of at most [`MAX_LINE`] bytes; at most [`MAX_CONNECTIONS`]
//!   connections at once, and at most [`MAX_PER_UID`] of one non-root user ([`UidSlots`], so
//!   one user cannot take every slot from the others; beyond either the answer is an error
//!   and the process runs standalone); every field validated ([`parse_request`],
//!   [`check_handed_block`]); a refusal names the field and changes nothing. A version-1
//!   request (a block by path) is refused with a message saying to use a shim of the same
//!   release.
//! * **End of file = exit.** When the connection closes, the listener drops the
//!   registration at once (the process exited, or exec'd without it: the descriptor is
//!   close-on-exec).
//!
//! Registered processes appear in the shim backend's process list at its next scan, through
//! the mapping made here; the GPUs they reported (PCI bus ids) map to GVM GPU indices through
//! the mdev parent with that PCI address ([`gvm_gcgroup::gpu_index::gvm_gpu_of_pci`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use gvm_host_root::HostRoot;
use gvm_shim_abi::control::ControlMap;
use gvm_shim_abi::register::{
    normalise_pci_bus_id, MAX_GPUS, MAX_HANDED_BACK, MEMFD_CONTROL, PROTOCOL_VERSION,
};
use gvm_shim_abi::{BlockProblem, Error as AbiError};
use serde_json::{json, Value};

use crate::registry::{Registration, ShimRegistry};

pub use gvm_shim_abi::register::{MAX_LINE, SOCKET_PATH};

/// The most registration connections open at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// The most registration connections one non-root uid may hold at once.
pub const MAX_PER_UID: usize = 1024;
/// The longest `control` description (a block file's path) accepted.
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
    /// What its block is, as it says: [`MEMFD_CONTROL`], or the block file's path as it sees
    /// it (absolute, no `..`). A description for logs only: the block is the descriptor.
    pub control: String,
    /// Its GPUs.
    pub gpus: Vec<RegisteredGpu>,
    /// `GVM_VGPU_UUID`, lower case.
    pub vgpu_uuid: Option<String>,
    /// The GPUs (each one of `gpus`) whose arbitration blocks come back as the descriptors
    /// after the control block's, in this order: `"arbiter"` (one) or `"arbiters"` (a list
    /// of at most [`MAX_HANDED_BACK`]).
    pub arbiters: Vec<String>,
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

/// A peer's value as a refusal quotes it: at most [`QUOTE_BYTES`], its middle cut, so that a
/// 4 KiB line cannot make a 4 KiB answer or log line.
fn quoted(value: &str) -> String {
    gvm_error_chain::clip_middle(value, QUOTE_BYTES)
}

/// The most of a peer's value a refusal quotes.
pub const QUOTE_BYTES: usize = 96;

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
    const KNOWN: [&str; 7] = [
        "version",
        "pid",
        "control",
        "gpus",
        "vgpu_uuid",
        "arbiter",
        "arbiters",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(refuse(
            "request",
            format!(
                "unknown field {:?} (known: {}): use a shim of this release",
                quoted(k),
                KNOWN.join(", ")
            ),
        ));
    }
    let version = as_u32(obj.get("version"), "version")?;
    if version != PROTOCOL_VERSION {
        let why = if version == 1 {
            " (protocol 1 named the control block by path, which the daemon no longer maps; protocol 2 hands it over as a sealed memfd)"
        } else {
            ""
        };
        return Err(refuse(
            "version",
            format!("protocol {version} is not spoken here (gvm-vgpud speaks {PROTOCOL_VERSION}){why}: use a shim and daemon of the same release"),
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
    if control != MEMFD_CONTROL
        && (control.len() > MAX_PATH
            || !path.is_absolute()
            || control.contains('\0')
            || path.components().any(|c| c == Component::ParentDir))
    {
        return Err(refuse(
            "control",
            format!("{:?} is neither {MEMFD_CONTROL:?} nor an absolute path of at most {MAX_PATH} bytes without '..'", quoted(control)),
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
                format!("{:?} is not a PCI bus id such as 0000:3b:00.0", quoted(raw)),
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
                .ok_or_else(|| {
                    refuse(
                        "vgpu_uuid",
                        format!("{:?} is not a 36-character UUID", quoted(s)),
                    )
                })?,
        ),
        Some(_) => return Err(refuse("vgpu_uuid", "not a string or null")),
    };
    let listed = |field: &str, a: &str| {
        normalise_pci_bus_id(a)
            .filter(|p| gpus.iter().any(|g| g.pci_bus_id == *p))
            .ok_or_else(|| {
                refuse(
                    field,
                    format!(
                        "{:?} is not the PCI bus id of a GPU listed in gpus",
                        quoted(a)
                    ),
                )
            })
    };
    let given = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    if given("arbiter") && given("arbiters") {
        return Err(refuse(
            "arbiters",
            "both \"arbiter\" and \"arbiters\" given: send one of them",
        ));
    }
    let mut arbiters = Vec::new();
    match obj.get("arbiter") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) => arbiters.push(listed("arbiter", a)?),
        Some(_) => return Err(refuse("arbiter", "not a string or null")),
    }
    match obj.get("arbiters") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > MAX_HANDED_BACK {
                return Err(refuse(
                    "arbiters",
                    format!("{} blocks listed, at most {MAX_HANDED_BACK}", list.len()),
                ));
            }
            for (i, a) in list.iter().enumerate() {
                let field = format!("arbiters[{i}]");
                let a = a
                    .as_str()
                    .ok_or_else(|| refuse(field.as_str(), "not a string"))?;
                let pci = listed(&field, a)?;
                if arbiters.contains(&pci) {
                    return Err(refuse(field, format!("{pci} listed twice")));
                }
                arbiters.push(pci);
            }
        }
        Some(_) => return Err(refuse("arbiters", "not an array of strings or null")),
    }
    Ok(ParsedRequest {
        pid,
        control: control.to_string(),
        gpus,
        vgpu_uuid,
        arbiters,
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

/// The inode of a pid namespace from the text of its `/proc/<pid>/ns/pid` link
/// (`pid:[4026531836]`).
pub fn pid_namespace_of_link(link: &str) -> Option<u64> {
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// The pid namespace of host process `pid` (the inode of `/proc/<pid>/ns/pid`).
pub fn pid_namespace(host: &HostRoot, pid: u32) -> Option<u64> {
    let link = fs::read_link(host.proc_dir().join(pid.to_string()).join("ns/pid")).ok()?;
    pid_namespace_of_link(link.to_str()?)
}

/// What to tell a process whose block was refused: how to hand one over that is mapped.
const CONTROL_FIX: &str = "hand the block over as a memfd sealed with F_SEAL_SHRINK and F_SEAL_GROW (libgvm_cuda.so of this release does unless GVM_SHIM_CONTROL names a file; a file block is taken only from a root process, owned by root, mode 0600)";

/// Check the block `fd` handed over by the peer (`uid`, seeing itself as `pid`) and map it:
/// a memfd sealed against shrinking and growing ([`ControlMap::from_handed_fd`]), or — from
/// a root peer only — a root-owned mode-0600 regular file ([`ControlMap::from_root_file_fd`]);
/// either must hold a valid block whose header holds `pid`. Every check is made on the
/// descriptor (`fstat`, `F_GET_SEALS`), none by path. Returns the mapping and the file's
/// (device, inode).
pub fn check_handed_block(
    fd: OwnedFd,
    pid: u32,
    uid: u32,
) -> Result<(ControlMap, (u64, u64)), Refusal> {
    let spare = if uid == 0 { fd.try_clone().ok() } else { None };
    let map = match ControlMap::from_handed_fd(fd) {
        Ok(m) => m,
        // Not a sealed memfd at all: a root process may hand over a root-owned file block.
        Err(AbiError::UnsafeBlock {
            problem: BlockProblem::NotSealable { .. } | BlockProblem::Unsealed { .. },
            ..
        }) if spare.is_some() => match spare.map(ControlMap::from_root_file_fd) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(refuse("control", format!("{e}: {CONTROL_FIX}"))),
            None => return Err(refuse("control", "no descriptor to check")),
        },
        Err(e) => return Err(refuse("control", format!("{e}: {CONTROL_FIX}"))),
    };
    let header = map.block().pid.load(Ordering::Acquire);
    if header != pid {
        return Err(refuse(
            "control",
            format!("the block handed over is the block of pid {header}, not of the registering process ({pid})"),
        ));
    }
    let file_id = map.file_id().unwrap_or_default();
    Ok((map, file_id))
}

/// The peer as the kernel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid in the daemon's pid namespace.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
}

/// Validate `line` from `peer` and the block descriptor `control` that came with it
/// completely (fields, pid, block) and, when they pass, record the registration on
/// `connection`, with the block mapped. Returns the reply to send.
pub fn register(
    host: &HostRoot,
    registry: &ShimRegistry,
    peer: Peer,
    connection: u64,
    line: &[u8],
    control: Option<OwnedFd>,
) -> Result<(Registration, Value), Refusal> {
    let req = parse_request(line)?;
    let Some(control) = control else {
        return Err(refuse(
            "control",
            format!("no descriptor came with the request: protocol {PROTOCOL_VERSION} hands the control block over as a file descriptor (SCM_RIGHTS) with the line; use a shim of this release"),
        ));
    };
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
    let (map, file_id) = check_handed_block(control, req.pid, peer.uid)?;
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
        control: req.control,
        block: Arc::new(map),
        file_id,
        gpus: req.gpus,
        vgpu_uuid: req.vgpu_uuid,
        assigned_priority: None,
        arbiter_back: req.arbiters,
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
