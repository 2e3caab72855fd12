//! GPU time-slice scheduling for gvm-vgpu: a pure policy engine.
//!
//! A physical GPU is shared by several vGPUs. Under GVM, each vGPU's GPU work
//! belongs to host processes ("owners") whose gcgroups expose two scheduling
//! knobs: `compute.priority` (0..=16; the hardware round-robins runnable channel
//! groups and lets each run up to `524288 µs >> priority` before preempting it)
//! and `compute.freeze` (1 preempts the process's channel groups and stops
//! scheduling them, after a short latency; 0 resumes). This crate decides, tick
//! by tick, which values those knobs should hold so that a GPU follows one of
//! three policies — best-effort, equal-share, fixed-share (see [`Policy`]).
//!
//! The crate does no I/O and reads no clock: the caller passes the time and
//! each vGPU's counters ([`VgpuInput`]) to [`Engine::tick`], and writes the
//! returned [`Action`]s (only changed knobs). The `gvm-gpu-model` crate is a
//! discrete-event GPU that drives it in tests.
//!
//! ```
//! use gvm_sched::{Engine, EngineConfig, Nanos, Policy, VgpuId, VgpuInput};
//!
//! let mut engine = Engine::new(EngineConfig::with_policy(Policy::EqualShare))?;
//! let vgpu = |id, used_ms| VgpuInput {
//!     id: VgpuId(id),
//!     pending_kernels: 4,
//!     gpu_time: Nanos::from_millis(used_ms),
//!     priority: 8,
//!     share: 0.25,
//! };
//! // First tick: every vGPU gets the priority whose timeslice is 2 ms (8).
//! let actions = engine.tick(Nanos::ZERO, &[vgpu(1, 0), vgpu(2, 0)]);
//! assert!(actions.iter().all(|a| a.priority == Some(8)));
//! // vGPU 1 ran 30 ms, vGPU 2 nothing: vGPU 1 is frozen until 2 catches up.
//! let actions = engine.tick(Nanos::from_millis(30), &[vgpu(1, 30), vgpu(2, 0)]);
//! assert_eq!(actions.len(), 1);
//! assert_eq!((actions[0].id, actions[0].freeze), (VgpuId(1), Some(true)));
//! # Ok::<(), gvm_sched::SchedError>(())
//! ```
//!
//! Modules:
//! - `config`: engine configuration: the policy, the time slice and the averaging window;
//! - `engine`: the per-GPU policy engine: counters in, knob changes out, once per tick;
//! - `error`: bad policy names and bad engine configuration;
//! - `policy`: the three scheduling policies and their names;
//! - `time`: time as a value, and the GVM priority ↔ hardware timeslice mapping.

mod config;
mod engine;
mod error;
mod policy;
mod time;

pub use config::{
    EngineConfig, DEFAULT_EXCLUSIVE_SLICE, DEFAULT_SLICE_LARGE, DEFAULT_SLICE_SMALL,
    DEFAULT_WINDOW, MAX_WINDOW, SMALL_GPU_VGPUS,
};
pub use engine::{Action, Engine, EngineStats, ShareReport, VgpuId, VgpuInput};
pub use error::SchedError;
pub use policy::Policy;
pub use time::{
    priority_for_timeslice, timeslice_of_priority, Nanos, PRIORITY_DEFAULT, PRIORITY_MAX,
    PRIORITY_MIN,
};
