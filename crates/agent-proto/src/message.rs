//! The wire messages and the protocol's hard limits.
//!
//! One message is one JSON object on one line (`\n`-terminated, at most
//! [`MAX_LINE_BYTES`] bytes before the newline). Every message carries the
//! protocol version `"v"` and its `"type"`:
//!
//! ```text
//! {"type":"hello","v":1,"agent":"0.1.0","os":"Debian GNU/Linux 12","kernel":"6.1.0-28-amd64",
//!  "driver":"580.65","collector":"nvml","gpus":[{"index":0,"name":"NVIDIA H100","uuid":"GPU-…","memory_total_bytes":85899345920}]}
//! {"type":"report","v":1,"seq":1,"ts_ms":1767225600000,"gpus":[{"index":0,"util_sm_pct":87,
//!  "util_mem_pct":40,"memory_used_bytes":4294967296}],"processes":[{"pid":1234,"name":"python3",
//!  "cmdline":"python3 train.py","gpu":0,"memory_bytes":4194304000,"sm_pct":85,"mem_pct":39}]}
//! ```
//!
//! The agent sends a hello when it (re)connects and then periodically, and a report
//! every interval. Unknown fields are rejected (`deny_unknown_fields`): a new field
//! means a new protocol version.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (`"v"` in every message).
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line in bytes, not counting its `\n`.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest ordinary string field in bytes (names, versions, UUIDs).
pub const MAX_STRING_BYTES: usize = 256;
/// Longest `cmdline` in bytes.
pub const MAX_CMDLINE_BYTES: usize = 4096;
/// Most process entries in one report.
pub const MAX_PROCESSES: usize = 1024;
/// Most GPUs in a hello or a report.
pub const MAX_GPUS: usize = 64;
/// Largest memory figure accepted (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Largest pid accepted (Linux's `PID_MAX_LIMIT`).
pub const MAX_PID: u32 = 4_194_304;
/// Largest GPU index accepted.
pub const MAX_GPU_INDEX: u32 = 1023;
/// Largest timestamp / sequence number accepted (2^53, exact in every JSON reader).
pub const MAX_COUNTER: u64 = 1 << 53;

/// Any message of the protocol, tagged by `"type"`.
///
/// Encoded by serde's internally tagged form; decoded by a hand-written one-pass
/// visitor (see `decode.rs`) that reads the tag as it comes instead of buffering
/// the whole object first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Who the agent is and what GPUs the guest sees.
    Hello(Hello),
    /// One sample of per-GPU and per-process use.
    Report(Report),
}

/// Which collector produced the agent's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectorKind {
    /// NVIDIA's management library: memory per process, utilization samples.
    Nvml,
    /// `/proc` only: which processes hold `/dev/nvidia*` open; no figures.
    Proc,
}

/// The first message on a connection (and repeated periodically).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u64,
    /// Agent version (`CARGO_PKG_VERSION`).
    pub agent: String,
    /// Guest OS (`PRETTY_NAME` of `/etc/os-release`).
    pub os: String,
    /// Guest kernel release (`uname -r`).
    pub kernel: String,
    /// NVIDIA driver version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The agent protocol the agent speaks: absent (a v1 agent) means 1; a v2
    /// agent sends `2` and may then send the `v2` messages (counters, busy, ack)
    /// and read host snapshots. `"v"` stays 1: the line format is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The collector in use.
    pub collector: CollectorKind,
    /// The GPUs the guest sees.
    pub gpus: Vec<GpuInfo>,
}

/// A GPU as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuInfo {
    /// The guest's index for the GPU (NVML index or `/dev/nvidiaN` minor).
    pub index: u32,
    /// Product name.
    pub name: String,
    /// The GPU's UUID (`GPU-…`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Framebuffer size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
}

/// One sample of GPU use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u64,
    /// Sequence number, strictly increasing within a connection (from 1).
    pub seq: u64,
    /// Guest wall clock in milliseconds since the Unix epoch (informational only).
    pub ts_ms: u64,
    /// Per-GPU figures.
    pub gpus: Vec<GpuSample>,
    /// Per-process figures, largest memory first.
    pub processes: Vec<ProcessSample>,
    /// Processes left out to keep the line under [`MAX_LINE_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub processes_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whole-GPU figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// GPU index, as in the hello.
    pub index: u32,
    /// Percent of the sample period a kernel ran (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util_sm_pct: Option<u32>,
    /// Percent of the sample period memory was read or written (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub util_mem_pct: Option<u32>,
    /// Framebuffer in use, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
}

/// One process using a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSample {
    /// Process id in the guest.
    pub pid: u32,
    /// Short name (`comm`).
    pub name: String,
    /// Command line, arguments separated by spaces, clipped to [`MAX_CMDLINE_BYTES`].
    pub cmdline: String,
    /// GPU index, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// GPU memory used by the process, bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// SM utilization of the process over the last interval (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_pct: Option<u32>,
    /// Memory-bandwidth utilization of the process over the last interval (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_pct: Option<u32>,
}

/// Why a message could not be encoded within the limits.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde_json failed (not expected for these types).
    #[error("could not encode the message as JSON")]
    Json(#[source] serde_json::Error),
    /// Even with every process left out, the line is too long.
    #[error("message is {len} bytes even without processes, over the {max}-byte line limit; clip the GPU list")]
    TooLong {
        /// Encoded length without processes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Hello {
    /// The agent protocol this hello announces (1 when the field is absent).
    pub fn protocol(&self) -> u32 {
        self.protocol.unwrap_or(1)
    }
}

impl Message {
    /// Encode as one line, without the trailing newline.
    pub fn to_line(&self) -> Result<String, EncodeError> {
        serde_json::to_string(self).map_err(EncodeError::Json)
    }
}

impl Report {
    /// Encode as one line of at most `max` bytes (no newline), leaving processes out
    /// from the end of the list (the least important when sorted by memory) and
    /// counting them in `processes_omitted`. `self` is updated to what was sent.
    pub fn encode_bounded(&mut self, max: usize) -> Result<String, EncodeError> {
        let encode = |r: &Report| Message::Report(r.clone()).to_line();
        if self.processes.len() > MAX_PROCESSES {
            let cut = self.processes.len() - MAX_PROCESSES;
            self.processes.truncate(MAX_PROCESSES);
            self.processes_omitted += cut as u64;
        }
        let line = encode(self)?;
        if line.len() <= max {
            return Ok(line);
        }
        // Binary search for the most processes that fit.
        let all = std::mem::take(&mut self.processes);
        let omitted_before = self.processes_omitted;
        let (mut lo, mut hi) = (0usize, all.len());
        let mut best: Option<String> = None;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            self.processes = all[..mid].to_vec();
            self.processes_omitted = omitted_before + (all.len() - mid) as u64;
            let line = encode(self)?;
            if line.len() <= max {
                lo = mid;
                best = Some(line);
            } else {
                hi = mid - 1;
            }
        }
        self.processes = all[..lo].to_vec();
        self.processes_omitted = omitted_before + (all.len() - lo) as u64;
        match best {
            Some(line) if lo > 0 => Ok(line),
            _ => {
                let line = encode(self)?;
                if line.len() <= max {
                    Ok(line)
                } else {
                    Err(EncodeError::TooLong {
                        len: line.len(),
                        max,
                    })
                }
            }
        }
    }
}

/// Make guest text safe to send: control characters become `?` (NULs, the
/// separators of `/proc/<pid>/cmdline`, become spaces), and the result is clipped
/// to `max_bytes` on a character boundary.
pub fn clean_text(s: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_bytes));
    for c in s.chars() {
        let c = match c {
            '\0' => ' ',
            c if c.is_control() => '?',
            c => c,
        };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, cmd_len: usize) -> ProcessSample {
        ProcessSample {
            pid,
            name: format!("p{pid}"),
            cmdline: "x".repeat(cmd_len),
            gpu: Some(0),
            memory_bytes: Some(u64::from(pid) * 1000),
            sm_pct: None,
            mem_pct: None,
        }
    }

    fn report(n: u32, cmd_len: usize) -> Report {
        Report {
            v: 1,
            seq: 7,
            ts_ms: 1,
            gpus: vec![],
            processes: (1..=n).map(|p| process(p, cmd_len)).collect(),
            processes_omitted: 0,
        }
    }

    #[test]
    fn messages_round_trip_with_their_type_tag() {
        let m = Message::Report(report(2, 5));
        let line = m.to_line().unwrap();
        assert!(
            line.starts_with(r#"{"type":"report","v":1,"seq":7"#),
            "{line}"
        );
        assert!(!line.contains("processes_omitted"));
        let back: Message = serde_json::from_str(&line).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn unknown_fields_are_rejected_inside_a_tagged_message() {
        let line =
            r#"{"type":"report","v":1,"seq":1,"ts_ms":1,"gpus":[],"processes":[],"extra":1}"#;
        let err = serde_json::from_str::<Message>(line).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn bounded_encoding_drops_processes_from_the_end_and_counts_them() {
        let mut r = report(200, 1000);
        let line = r.encode_bounded(MAX_LINE_BYTES).unwrap();
        assert!(line.len() <= MAX_LINE_BYTES);
        assert!(r.processes.len() < 200 && !r.processes.is_empty());
        assert_eq!(r.processes.len() as u64 + r.processes_omitted, 200);
        assert_eq!(r.processes[0].pid, 1, "the head of the list is kept");
        // One more process would not have fitted.
        let mut bigger = r.clone();
        bigger.processes.push(process(999, 1000));
        let longer = Message::Report(bigger).to_line().unwrap();
        assert!(longer.len() > MAX_LINE_BYTES);
        let decoded: Message = serde_json::from_str(&line).unwrap();
        assert_eq!(decoded, Message::Report(r));
    }

    #[test]
    fn bounded_encoding_caps_the_process_count() {
        let mut r = report(1500, 0);
        let line = r.encode_bounded(usize::MAX).unwrap();
        assert_eq!(r.processes.len(), MAX_PROCESSES);
        assert_eq!(r.processes_omitted, 476);
        assert!(line.contains(r#""processes_omitted":476"#));
    }

    #[test]
    fn bounded_encoding_fails_when_nothing_fits() {
        let mut r = report(3, 10);
        assert!(matches!(
            r.encode_bounded(20),
            Err(EncodeError::TooLong { max: 20, .. })
        ));
    }

    #[test]
    fn clean_text_replaces_controls_and_clips_on_char_boundaries() {
        assert_eq!(clean_text("a\0b\x1b[31m\n", 100), "a b?[31m?");
        assert_eq!(clean_text("ééé", 5), "éé");
        assert_eq!(clean_text("abc", 0), "");
    }
}
