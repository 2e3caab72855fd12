//! gvm-vgpu-agent: the in-guest half of gvm-vgpu's per-process GPU statistics.
//!
//! A VM with a vGPU runs its CUDA work in guest processes the host cannot see:
//! GVM and the host's NVIDIA tools see only QEMU. The agent runs inside the guest,
//! reads which guest processes use the GPU and how much ([`collect`]), and sends
//! it to the host as versioned JSON lines ([`gvm_agent_proto`]) over a
//! virtio-serial port or vsock ([`transport`]). The host attributes what arrives
//! to the VM by the channel it came in on and trusts nothing else in it.
//!
//! Protocol v2 makes the channel two-way: the host sends state snapshots (the
//! vGPU's knobs and the arbitration hold), and the agent is the guest's local
//! daemon for the CUDA interposer ([`local`]): it serves the shim's registration
//! socket, puts each snapshot in force on every registered process's control
//! block, and sends back acknowledgements, per-process counters and busy/idle
//! transitions ([`outbound`]).
//!
//! The binary's `main` only parses [`cli::Cli`] and calls into [`agent::Agent`].
//!
//! Modules:
//! - [`agent`]: the agent's loop: open the channel, say hello, report every interval,
//!   serve the host's lines in between;
//! - [`cli`]: command-line options (clap definitions only);
//! - [`collect`]: the collectors, where the agent's figures come from;
//! - [`compose`]: building the protocol's messages from what the collectors found;
//! - `error`: errors of the library parts, each naming the path or port;
//! - [`inbound`]: the host's snapshots, checked and applied by generation;
//! - [`local`]: the guest's local daemon for the CUDA interposer;
//! - [`outbound`]: when acks and busy lines go (bounded);
//! - [`ratelog`]: log lines an outside party can cause, rate-limited;
//! - [`sys`]: the few raw system calls the agent needs, each behind a safe function;
//! - [`transport`]: getting lines to the host without ever blocking the guest.

pub mod agent;
pub mod cli;
pub mod collect;
pub mod compose;
mod error;
pub mod inbound;
pub mod local;
pub mod outbound;
pub mod ratelog;
pub mod sys;
pub mod transport;

pub use error::{AgentError, Result};
