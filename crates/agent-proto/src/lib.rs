//! The protocol between `gvm-vgpu-agent`, running inside a guest, and the host.
//!
//! A guest's agent reads per-process GPU use (through NVIDIA's NVML, or `/proc`
//! when NVML is absent) and writes **versioned JSON lines** to a virtio-serial
//! port (`org.gvm.vgpu.agent.0`) or a vsock stream. On the host, QEMU connects the
//! port to a per-domain Unix socket; the daemon reads it and attributes whatever
//! arrives to that domain by the channel alone, never by what the message says.
//!
//! The guest is untrusted. This crate holds both halves of the contract:
//!
//! - the wire types ([`Message`], [`Hello`], [`Report`], …) and the hard limits
//!   ([`MAX_LINE_BYTES`], [`MAX_PROCESSES`], …), with [`Report::encode_bounded`]
//!   so the agent never writes a line the host would refuse;
//! - the host's [`IngestSession`]: a pure, I/O-free state machine that takes bytes
//!   as they arrive and a caller-supplied clock, frames lines in a buffer of at
//!   most 64 KiB + 1, rate-limits them with a token bucket, validates every field,
//!   reports each problem as a typed [`Violation`], and decides when a guest has
//!   misbehaved enough to be disconnected.
//!
//! ```
//! use gvm_agent_proto::{Event, IngestSession};
//! use std::time::Instant;
//!
//! let mut session = IngestSession::default();
//! let now = Instant::now();
//! let hello = br#"{"type":"hello","v":1,"agent":"0.1.0","os":"Debian","kernel":"6.1","collector":"proc","gpus":[]}"#;
//! let mut bytes = hello.to_vec();
//! bytes.extend_from_slice(b"\n{\"type\":\"report\",\"v\":1,\"seq\":1,\"ts_ms\":0,\"gpus\":[],\"processes\":[]}\n");
//! let events = session.feed(now, &bytes);
//! assert!(matches!(events[0], Event::Hello(_)));
//! assert!(matches!(events[1], Event::Report(_)));
//! assert_eq!(session.stats().map(|s| s.counters.reports), Some(1));
//! ```
//!
//! Modules:
//! - `decode`: one-pass decoding of a message, the `"type"` tag read as it comes;
//! - `error`: what a guest can do wrong, as typed violations a log line can print;
//! - `ingest`: the host's per-connection ingest state machine, bytes in, events out;
//! - `message`: the wire messages and the protocol's hard limits;
//! - `stats`: what the host keeps per domain, the latest hello and report plus counters;
//! - `v2`: protocol v2, host snapshots and guest counters, busy and acks;
//! - `validate`: decoding and checking one line: UTF-8, JSON, version, then every field.

mod decode;
mod error;
mod ingest;
mod message;
mod stats;
pub mod v2;
mod validate;

pub use error::{log_safe, DisconnectReason, Violation};
pub use ingest::{Event, IngestSession, Limits};
pub use message::{
    clean_text, CollectorKind, EncodeError, GpuInfo, GpuSample, Hello, Message, ProcessSample,
    Report, MAX_CMDLINE_BYTES, MAX_COUNTER, MAX_GPUS, MAX_GPU_INDEX, MAX_LINE_BYTES,
    MAX_MEMORY_BYTES, MAX_PID, MAX_PROCESSES, MAX_STRING_BYTES, PROTOCOL_VERSION,
};
pub use stats::{Counters, GuestStats};
pub use validate::{check_hello, check_report, parse_line};
