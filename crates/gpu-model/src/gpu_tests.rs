//! Unit tests of the hardware model without the engine: round-robin,
//! timeslices, preemption, switch cost, freeze latency, accounting.

use super::*;
use crate::workload::{KernelDist, Span};

fn us(v: u64) -> Nanos {
    Nanos::from_micros(v)
}

fn spec(id: u128, priority_hw: u8, workload: Workload) -> (VgpuSpec, u8) {
    (
        VgpuSpec {
            id: VgpuId(id),
            priority: priority_hw,
            share: 0.0,
            workload,
            seed: id as u64,
        },
        priority_hw,
    )
}

/// A GPU whose vGPUs start at the given hardware priorities.
fn gpu(cfg: ModelConfig, specs: Vec<(VgpuSpec, u8)>) -> Gpu {
    let prios: Vec<u8> = specs.iter().map(|s| s.1).collect();
    let mut g = match Gpu::new(cfg, specs.into_iter().map(|s| s.0).collect()) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    };
    for (i, p) in prios.into_iter().enumerate() {
        g.apply(&Action {
            id: VgpuId(i as u128 + 1),
            priority: Some(p),
            freeze: None,
        });
    }
    g
}

fn busy_fixed(len: Nanos) -> Workload {
    Workload::busy(KernelDist::Fixed(len))
}

#[test]
fn round_robin_with_timeslices_and_switch_cost() {
    let cfg = ModelConfig::default();
    // 5 ms kernels, 2048 µs slices: every kernel is preempted twice.
    let mut g = gpu(
        cfg,
        vec![
            spec(1, 8, busy_fixed(us(5_000))),
            spec(2, 8, busy_fixed(us(5_000))),
        ],
    );
    g.advance_to(Nanos::from_secs(1));
    let (a, b) = (g.busy(0), g.busy(1));
    assert!(a.0.abs_diff(b.0) <= us(2_048).0, "{a} vs {b}");
    // One switch (20 µs) per 2048 µs slice.
    let slices = 1_000_000 / (2_048 + 20);
    assert!(
        g.overhead().0.abs_diff(slices * 20_000) <= 40_000,
        "{}",
        g.overhead()
    );
    assert_eq!(a + b + g.overhead(), Nanos::from_secs(1));
    assert_eq!(g.idle_time(), Nanos::ZERO);
    let c = g.counters();
    assert_eq!(c[0].pending_kernels, 2, "closed loop keeps depth 2");
    assert_eq!(c[0].gpu_time, a);
}

#[test]
fn longer_timeslice_gets_proportionally_more() {
    let mut g = gpu(
        ModelConfig::default(),
        vec![
            spec(1, 7, busy_fixed(us(300))),
            spec(2, 9, busy_fixed(us(300))),
        ],
    );
    g.advance_to(Nanos::from_secs(2));
    let ratio = g.busy(0).0 as f64 / g.busy(1).0 as f64;
    // 4096 µs vs 1024 µs, preempted mid-kernel at the slice end.
    assert!((ratio - 4.0).abs() < 0.01, "{ratio}");
}

#[test]
fn alone_a_context_is_not_switched_out() {
    let mut g = gpu(
        ModelConfig::default(),
        vec![spec(1, 8, busy_fixed(us(700)))],
    );
    g.advance_to(Nanos::from_millis(100));
    // Only the initial switch-in costs anything.
    assert_eq!(g.overhead(), us(20));
    assert_eq!(g.busy(0), Nanos::from_millis(100) - us(20));
}

#[test]
fn freeze_takes_effect_after_the_latency_and_thaw_resumes() {
    let cfg = ModelConfig::default();
    let mut g = gpu(cfg, vec![spec(1, 4, busy_fixed(us(50_000)))]);
    g.advance_to(Nanos::from_millis(1));
    let freeze = |f| Action {
        id: VgpuId(1),
        priority: None,
        freeze: Some(f),
    };
    g.apply(&freeze(true));
    g.advance_to(Nanos::from_millis(10));
    // Ran 1 ms − 20 µs, then 100 µs more until the freeze took effect.
    assert_eq!(g.busy(0), Nanos::from_millis(1) - us(20) + us(100));
    assert_eq!(
        g.idle_with_work(),
        Nanos::from_millis(10) - Nanos::from_millis(1) - us(100)
    );
    g.apply(&freeze(false));
    g.advance_to(Nanos::from_millis(11));
    // Resumed the same context: no switch cost.
    assert_eq!(g.busy(0), Nanos::from_millis(2) - us(20) + us(100));
    assert_eq!(g.writes().freeze, 2);
    assert_eq!(g.writes().priority, 1);
}

#[test]
fn periodic_light_load_idles_between_kernels() {
    let mut w = busy_fixed(us(100));
    w.arrival = Arrival::Periodic {
        period: Nanos::from_millis(1),
        max_queue: 4,
    };
    w.active = vec![Span {
        start: Nanos::ZERO,
        end: Nanos::from_millis(10),
    }];
    let mut g = gpu(ModelConfig::default(), vec![spec(1, 8, w)]);
    g.advance_to(Nanos::from_millis(20));
    assert_eq!(g.busy(0), us(1_000), "10 kernels of 100 µs");
    assert_eq!(g.counters()[0].pending_kernels, 0);
    assert_eq!(g.idle_with_work(), Nanos::ZERO);
    assert_eq!(
        g.idle_time() + g.busy(0) + g.overhead(),
        Nanos::from_millis(20)
    );
}

#[test]
fn windows_split_busy_time_at_boundaries() {
    let cfg = ModelConfig {
        window: Nanos::from_millis(10),
        ..ModelConfig::default()
    };
    let mut g = gpu(cfg, vec![spec(1, 8, busy_fixed(us(3_000)))]);
    g.advance_to(Nanos::from_millis(25));
    assert_eq!(g.complete_windows(), 2);
    assert_eq!(g.window_busy(0)[0], Nanos::from_millis(10) - us(20));
    assert_eq!(g.window_busy(1)[0], Nanos::from_millis(10));
    assert_eq!(g.window_busy(2)[0], Nanos::from_millis(5));
    assert_eq!(g.window_wall_shares(1), vec![1.0]);
    assert_eq!(g.window_used_shares(7), vec![0.0]);
}

#[test]
fn same_seed_same_run() {
    let w = || {
        Workload::busy(KernelDist::LogUniform {
            min: us(10),
            max: us(5_000),
        })
        .with_contexts(2)
    };
    let run = |seed_shift: u64| {
        let mut specs = vec![spec(1, 8, w()), spec(2, 9, w())];
        specs[0].0.seed += seed_shift;
        let mut g = gpu(ModelConfig::default(), specs);
        g.advance_to(Nanos::from_millis(500));
        (g.busy(0), g.busy(1), g.kernels_ended(0), g.kernels_ended(1))
    };
    assert_eq!(run(0), run(0));
    assert_ne!(run(0), run(17));
}

#[test]
fn bad_specs_are_rejected() {
    let (s, _) = spec(1, 8, busy_fixed(us(10)));
    let dup = Gpu::new(ModelConfig::default(), vec![s.clone(), s.clone()]);
    assert_eq!(dup.err(), Some(ModelError::DuplicateId { id: VgpuId(1) }));
    let cfg = ModelConfig {
        window: Nanos::ZERO,
        ..ModelConfig::default()
    };
    assert_eq!(Gpu::new(cfg, vec![s]).err(), Some(ModelError::ZeroWindow));
}
