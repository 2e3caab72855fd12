//! Shared set-up for the policy property tests: vGPU specs and share checks.

#![allow(dead_code)]

use gvm_gpu_model::{Gpu, KernelDist, ModelConfig, Span, VgpuSpec, Workload};
use gvm_sched::{Engine, EngineConfig, Nanos, Policy, VgpuId};

/// Kernels from 10 µs to 5 ms, log-uniform.
pub const MIXED: KernelDist = KernelDist::LogUniform {
    min: Nanos::from_micros(10),
    max: Nanos::from_millis(5),
};

/// The engine's tick in these tests.
pub const TICK: Nanos = Nanos::from_millis(1);

/// The share tolerance the issue states: ±2 percentage points.
pub const TOL: f64 = 0.02;

/// `s` seconds, as a window index or time.
pub fn secs(s: u64) -> Nanos {
    Nanos::from_secs(s)
}

/// `ms` milliseconds.
pub fn ms(ms: u64) -> Nanos {
    Nanos::from_millis(ms)
}

/// An always-busy vGPU.
pub fn busy(i: usize, seed: u64, priority: u8, share: f64) -> VgpuSpec {
    VgpuSpec {
        id: VgpuId(i as u128 + 1),
        priority,
        share,
        workload: Workload::busy(MIXED),
        seed: seed.wrapping_mul(1_000).wrapping_add(i as u64),
    }
}

/// A vGPU busy only within `spans`.
pub fn busy_during(i: usize, seed: u64, share: f64, spans: Vec<Span>) -> VgpuSpec {
    let mut s = busy(i, seed, 8, share);
    s.workload = s.workload.during(spans);
    s
}

/// A span `[a, b)`.
pub fn span(a: Nanos, b: Nanos) -> Span {
    Span { start: a, end: b }
}

/// A model and an engine with `policy`.
pub fn setup(specs: Vec<VgpuSpec>, policy: Policy) -> (Gpu, Engine) {
    let gpu = match Gpu::new(ModelConfig::default(), specs) {
        Ok(g) => g,
        Err(e) => panic!("bad model: {e}"),
    };
    let engine = match Engine::new(EngineConfig::with_policy(policy)) {
        Ok(e) => e,
        Err(e) => panic!("bad engine config: {e}"),
    };
    (gpu, engine)
}

/// Asserts `got[i]` is within `tol` of `want[i]` for every `i`.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}: vGPU {i} got {g:.4}, want {w:.4} ± {tol} (all: {got:.3?})"
        );
    }
}
