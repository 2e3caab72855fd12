//! A deterministic discrete-event model of one GPU time-shared by vGPUs.
//!
//! It exists to prove the `gvm-sched` policies without a GPU. The model has
//! what the real mechanism has and nothing more: contexts (channel groups)
//! holding queues of kernels, a hardware round-robin that runs each context up
//! to the timeslice its priority implies and preempts it mid-kernel at the
//! slice end, a context-switch cost, and a freeze knob that takes effect after
//! a latency. Workloads draw kernel lengths from a seeded SplitMix64 generator
//! and submit either in a closed loop (always busy) or periodically, inside
//! optional active spans (to start, stop and idle).
//!
//! The engine sees only [`Gpu::counters`] (pending kernels, exact GPU time, the
//! type's priority and share) and acts only through [`Gpu::apply`]; [`Gpu::run`]
//! is the loop that connects them. Busy time is binned per vGPU into fixed
//! windows so tests can check shares over every window.
//!
//! ```
//! use gvm_gpu_model::{Gpu, KernelDist, ModelConfig, VgpuSpec, Workload};
//! use gvm_sched::{Engine, EngineConfig, Nanos, Policy, VgpuId};
//!
//! let spec = |id: u128| VgpuSpec {
//!     id: VgpuId(id),
//!     priority: 8,
//!     share: 0.5,
//!     workload: Workload::busy(KernelDist::Fixed(Nanos::from_micros(300))),
//!     seed: 1,
//! };
//! let mut gpu = Gpu::new(ModelConfig::default(), vec![spec(1), spec(2)])?;
//! let mut engine = Engine::new(EngineConfig::with_policy(Policy::EqualShare))?;
//! gpu.run(&mut engine, Nanos::from_secs(1), Nanos::from_millis(1));
//! let shares = gpu.window_used_shares(0);
//! assert!((shares[0] - 0.5).abs() < 0.02);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules:
//! - `driver`: driving the model with the policy engine, the way gvm-vgpud drives a GPU;
//! - `error`: errors in a model description;
//! - `gpu`: the GPU: contexts, a round-robin hardware scheduler, knobs and counters;
//! - `rng`: a small seeded SplitMix64 generator for workload kernels;
//! - `workload`: what a vGPU's guest submits: kernel lengths, arrival pattern, active spans.

mod driver;
mod error;
mod gpu;
mod rng;
mod workload;

pub use driver::RunStats;
pub use error::ModelError;
pub use gpu::{Gpu, KnobWrites, ModelConfig, VgpuSpec};
pub use rng::SplitMix64;
pub use workload::{Arrival, KernelDist, Span, Workload};
