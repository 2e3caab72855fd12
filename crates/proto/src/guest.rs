//! What the daemon knows about the guest agents of running VMs (`guest_stats`).
//!
//! A VM's guest agent (`gvm-vgpu-agent`) reports the guest processes that use
//! the GPU over a virtio-serial channel; QEMU exposes the channel as a Unix
//! socket on the host and `gvm-vgpud` reads it. The daemon attributes what
//! arrives **by the socket alone**: a socket named `<uuid>.sock` in the agent
//! directory belongs to that vGPU, a channel listed in a libvirt domain's XML
//! belongs to that domain. [`GuestAgentInfo`] is one such channel as the API
//! returns it; the guest's own view is [`gvm_agent_proto::GuestStats`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use gvm_agent_proto::{
    Counters as GuestCounters, GuestStats, Hello as GuestHello, ProcessSample,
    Report as GuestReport,
};

/// One guest-agent channel: where it is, whom it is attributed to, and the
/// latest validated stats the guest sent on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAgentInfo {
    /// The host Unix socket QEMU listens on for this channel.
    pub socket: PathBuf,
    /// The vGPU the channel belongs to (sockets named `<uuid>.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// The libvirt domain: the one whose XML lists the channel, or the one holding
    /// the vGPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Whether the daemon is connected to the socket now.
    pub connected: bool,
    /// Connections made to the socket since the daemon started.
    pub connections: u64,
    /// Times the daemon cut the guest off for misbehaving.
    pub disconnects: u64,
    /// Protocol violations seen on the channel, over all connections.
    pub violations: u64,
    /// The latest violation or disconnect reason, log-safe, if any: of the current
    /// connection, or of an earlier one until the guest reconnected and sent a valid
    /// hello or report without a violation (`violations` and `disconnects` keep the
    /// history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    /// Milliseconds since the latest accepted report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// The latest hello and report, once the agent has said hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<GuestStats>,
    /// The protocol-2 exchange (states sent, acknowledgements, the guest's CUDA processes),
    /// once the agent has said hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<crate::GuestEnforcement>,
}
