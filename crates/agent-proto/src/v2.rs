//! Agent protocol v2: the two-way channel between the host daemon and a guest's agent.
//!
//! Same port, same framing (one JSON object per `\n`-terminated line, at most
//! [`crate::MAX_LINE_BYTES`]) and same host-side bounds as v1. A v2 agent says
//! `"protocol":2` in its hello; a hello without it is a v1 agent, which keeps
//! sending v1 reports and never sees a v2 line. v2 lines carry no `"v"`: they are
//! told apart by `"type"`.
//!
//! Host → guest, [`HostMessage`]: an idempotent state [`Snapshot`] with a
//! generation; a guest applies only a generation higher than the last it applied
//! ([`SnapshotTracker`]), so lost, repeated or reordered lines do not matter.
//!
//! Guest → host, [`GuestMessage`]: per-process [`ProcessCounters`], the VM's
//! busy/idle transition, and an [`Ack`] of a snapshot saying the state reached.
//!
//! ```text
//! {"type":"snapshot","generation":7,"knobs":{"memory_limit":1073741824,"priority":2,"frozen":false,
//!  "host_swap":false,"share_budget_us":null,"window_ms":null},"hold":false}
//! {"type":"snapshot","generation":8,"knobs":{…},"hold":true,"outranked":true}   (protocol 3)
//! {"type":"counters","processes":[{"pid":41,"name":"train","memory_current":4096,"memory_swap":0,
//!  "kernels_submitted":10,"kernels_ended":9,"pending":1,"busy":true,"gpu_busy_us":1500}]}
//! {"type":"busy","busy":true}
//! {"type":"ack","generation":7,"reached":{"frozen":false,"held":false,"processes":1,"in_flight":0,
//!  "memory_limit":1073741824,"priority":2}}
//! ```
//!
//! Everything a guest sends is untrusted: [`parse_guest_line`] decodes and
//! checks every field; whether an ack's generation was ever sent is the host's
//! business (it alone knows what it sent).

use serde::{Deserialize, Serialize};

use crate::error::{log_safe, Violation};
use crate::message::{MAX_COUNTER, MAX_MEMORY_BYTES, MAX_PID};
use crate::validate::{check_range, check_str};

/// The agent protocol this crate speaks at most (`"protocol"` in a hello).
///
/// - 2: the two-way channel (snapshots, counters, busy, acks);
/// - 3: as 2, and a snapshot may carry [`Snapshot::outranked`] and [`Snapshot::outranks`]. A host sends that field only
///   to an agent whose hello said 3 or more (a protocol-2 agent refuses unknown fields), and
///   an agent takes a snapshot without it as `false`.
pub const AGENT_PROTOCOL: u32 = 3;
/// The first agent protocol whose snapshots carry [`Snapshot::outranked`].
pub const OUTRANKED_PROTOCOL: u32 = 3;
/// Most process entries in one counters message.
pub const MAX_V2_PROCESSES: usize = 256;
/// Highest priority (0 is the highest, 16 the lowest, as on the host).
pub const MAX_PRIORITY: u32 = 16;
/// Longest process name in a counters message, bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Largest arbitration window accepted, ms (one minute).
pub const MAX_WINDOW_MS: u32 = 60_000;

/// The vGPU's effective knobs, as the guest must apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// Memory limit per process in bytes; `None` = no limit.
    pub memory_limit: Option<u64>,
    /// Priority 0..=16 (0 highest); `None` = default.
    pub priority: Option<u32>,
    /// Every process held, in-flight kernels left to end.
    pub frozen: bool,
    /// Allocations past the limit may spill to host memory.
    pub host_swap: bool,
    /// GPU time budget per window, µs; `None` = unlimited.
    pub share_budget_us: Option<u64>,
    /// The budget's window, ms.
    pub window_ms: Option<u32>,
}

/// Host → guest: the whole state the guest should be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Strictly increasing per VM across reconnects; the higher wins.
    pub generation: u64,
    /// The knobs.
    pub knobs: Knobs,
    /// The arbitration hold: a higher-priority VM or host process is busy.
    pub hold: bool,
    /// A hold may come at any time (protocol 3): a VM or host process of strictly higher
    /// priority shares the GPU, or a share scheduler meters it. The guest then keeps its
    /// processes' GPU-side gate armed, so that a hold stops the work they already queued, not
    /// only their next launch. Sent only when true, and only to protocol-3 agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outranked: bool,
    /// The VM's busy claims may hold someone (protocol 3): a VM or host process of strictly
    /// lower priority shares the GPU. The guest then tells its busy state precisely (the
    /// shim's own busy flags, which clear a linger after the last kernel) rather than from
    /// kernel counts, which only catch up at a synchronise. Sent only when true, and only to
    /// protocol-3 agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outranks: bool,
}

/// What the host sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// The state to apply.
    Snapshot(Snapshot),
}

/// One shim process in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessCounters {
    /// Guest pid (means nothing on the host).
    pub pid: u32,
    /// Short name, at most [`MAX_NAME_BYTES`].
    pub name: String,
    /// GPU memory held, bytes.
    pub memory_current: u64,
    /// GPU memory spilled to host memory, bytes.
    pub memory_swap: u64,
    /// Kernels launched since the process registered.
    pub kernels_submitted: u64,
    /// Kernels ended since the process registered (≤ submitted).
    pub kernels_ended: u64,
    /// Launches waiting on a hold or freeze.
    pub pending: u32,
    /// Whether the process has work in flight.
    pub busy: bool,
    /// GPU busy time, µs, since the process registered.
    pub gpu_busy_us: u64,
}

/// Per-process counters of the guest's shim processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// At most [`MAX_V2_PROCESSES`].
    pub processes: Vec<ProcessCounters>,
}

/// A busy/idle transition of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Busy {
    /// Busy now.
    pub busy: bool,
}

/// The state the guest reached for a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reached {
    /// Every process held for the freeze (with `in_flight` 0 it is complete).
    pub frozen: bool,
    /// Every process held for the arbitration hold.
    pub held: bool,
    /// Processes the snapshot was applied to.
    pub processes: u32,
    /// Kernels still in flight.
    pub in_flight: u32,
    /// The memory limit in force.
    pub memory_limit: Option<u64>,
    /// The priority in force.
    pub priority: Option<u32>,
}

/// The acknowledgement of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The snapshot's generation.
    pub generation: u64,
    /// What was reached.
    pub reached: Reached,
}

impl Ack {
    /// Whether this ack completes a freeze: held, and nothing in flight.
    pub fn freeze_complete(&self) -> bool {
        self.reached.frozen && self.reached.in_flight == 0
    }
}

/// What a v2 guest sends (besides v1's hello and report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestMessage {
    /// Per-process counters.
    Counters(Counters),
    /// A busy/idle transition.
    Busy(Busy),
    /// A snapshot's acknowledgement.
    Ack(Ack),
}

/// The `"type"` values of [`GuestMessage`].
pub const GUEST_KINDS: &[&str] = &["counters", "busy", "ack"];

impl HostMessage {
    /// Encode as one line, without the newline.
    pub fn to_line(&self) -> String {
        // Only integers and booleans: serde_json cannot fail on these.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl GuestMessage {
    /// Encode as one line, without the newline; a counters message with more than
    /// [`MAX_V2_PROCESSES`] entries is cut to that many (the host refuses more).
    pub fn to_line(&self) -> Result<String, crate::EncodeError> {
        let line = match self {
            GuestMessage::Counters(c) if c.processes.len() > MAX_V2_PROCESSES => {
                let mut cut = c.clone();
                cut.processes.truncate(MAX_V2_PROCESSES);
                serde_json::to_string(&GuestMessage::Counters(cut))
            }
            m => serde_json::to_string(m),
        };
        line.map_err(crate::EncodeError::Json)
    }
}

fn malformed(e: serde_json::Error) -> Violation {
    Violation::Malformed {
        detail: log_safe(&e.to_string(), 160),
    }
}

fn check_knob_fields(
    prefix: &str,
    memory_limit: Option<u64>,
    priority: Option<u32>,
) -> Result<(), Violation> {
    if let Some(m) = memory_limit {
        check_range(|| format!("{prefix}.memory_limit"), m, 0, MAX_MEMORY_BYTES)?;
    }
    if let Some(p) = priority {
        check_range(
            || format!("{prefix}.priority"),
            u64::from(p),
            0,
            u64::from(MAX_PRIORITY),
        )?;
    }
    Ok(())
}

/// Check every field of a snapshot (the guest runs this on what the host sends).
pub fn check_snapshot(s: &Snapshot) -> Result<(), Violation> {
    check_range(|| "generation".into(), s.generation, 1, MAX_COUNTER)?;
    check_knob_fields("knobs", s.knobs.memory_limit, s.knobs.priority)?;
    if let Some(b) = s.knobs.share_budget_us {
        check_range(|| "knobs.share_budget_us".into(), b, 0, MAX_COUNTER)?;
    }
    if let Some(w) = s.knobs.window_ms {
        check_range(
            || "knobs.window_ms".into(),
            u64::from(w),
            1,
            u64::from(MAX_WINDOW_MS),
        )?;
    }
    Ok(())
}

/// Check every field of a guest message.
pub fn check_guest(m: &GuestMessage) -> Result<(), Violation> {
    match m {
        GuestMessage::Busy(_) => Ok(()),
        GuestMessage::Ack(a) => {
            check_range(|| "generation".into(), a.generation, 1, MAX_COUNTER)?;
            check_knob_fields("reached", a.reached.memory_limit, a.reached.priority)?;
            check_range(
                || "reached.processes".into(),
                u64::from(a.reached.processes),
                0,
                MAX_V2_PROCESSES as u64,
            )
        }
        GuestMessage::Counters(c) => {
            if c.processes.len() > MAX_V2_PROCESSES {
                return Err(Violation::TooMany {
                    field: "processes",
                    count: c.processes.len(),
                    max: MAX_V2_PROCESSES,
                });
            }
            for (i, p) in c.processes.iter().enumerate() {
                check_range(
                    || format!("processes[{i}].pid"),
                    u64::from(p.pid),
                    1,
                    u64::from(MAX_PID),
                )?;
                check_str(|| format!("processes[{i}].name"), &p.name, MAX_NAME_BYTES)?;
                for (f, v, max) in [
                    ("memory_current", p.memory_current, MAX_MEMORY_BYTES),
                    ("memory_swap", p.memory_swap, MAX_MEMORY_BYTES),
                    ("kernels_submitted", p.kernels_submitted, MAX_COUNTER),
                    ("gpu_busy_us", p.gpu_busy_us, MAX_COUNTER),
                ] {
                    check_range(|| format!("processes[{i}].{f}"), v, 0, max)?;
                }
                check_range(
                    || format!("processes[{i}].kernels_ended"),
                    p.kernels_ended,
                    0,
                    p.kernels_submitted,
                )?;
                if c.processes[..i].iter().any(|q| q.pid == p.pid) {
                    return Err(Violation::OutOfRange {
                        field: format!("processes[{i}].pid (appears twice)"),
                        value: u64::from(p.pid),
                        min: 1,
                        max: u64::from(MAX_PID),
                    });
                }
            }
            Ok(())
        }
    }
}

/// The `"type"` of a line, read leniently (only on a failure path).
#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

/// Whether a line names one of the v2 guest message types (a lenient look, for
/// routing a line v1's decoder refused).
pub fn is_guest_kind(line: &[u8]) -> bool {
    serde_json::from_slice::<TypeOnly>(line)
        .map(|t| GUEST_KINDS.contains(&t.kind.as_str()))
        .unwrap_or(false)
}

/// Decode and check one guest line (no newline) as a v2 message.
pub fn parse_guest_line(line: &[u8]) -> Result<GuestMessage, Violation> {
    let text = std::str::from_utf8(line).map_err(|e| Violation::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let m: GuestMessage = serde_json::from_str(text).map_err(malformed)?;
    check_guest(&m)?;
    Ok(m)
}

/// Decode and check one host line (no newline): what the guest's agent runs.
pub fn parse_host_line(line: &[u8]) -> Result<Snapshot, Violation> {
    let text = std::str::from_utf8(line).map_err(|e| Violation::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let HostMessage::Snapshot(s) = serde_json::from_str(text).map_err(malformed)?;
    check_snapshot(&s)?;
    Ok(s)
}

/// The guest's rule for snapshots: apply only a generation higher than the last
/// applied; repeated or older ones are ignored (but may be re-acked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotTracker {
    last: Option<Snapshot>,
}

impl SnapshotTracker {
    /// Offer a snapshot; `true` when it is new and must be applied.
    pub fn offer(&mut self, s: Snapshot) -> bool {
        if self.last.is_some_and(|l| l.generation >= s.generation) {
            return false;
        }
        self.last = Some(s);
        true
    }

    /// The snapshot in force, if any.
    pub fn current(&self) -> Option<&Snapshot> {
        self.last.as_ref()
    }
}

#[cfg(test)]
#[path = "v2_tests.rs"]
mod tests;
