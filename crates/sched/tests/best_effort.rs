//! Best-effort on the GPU model: work-conserving (never idle while any vGPU has
//! work, no freezes) and shares in the ratio of the priorities' timeslices.

mod common;

use common::*;
use gvm_gpu_model::{Arrival, KernelDist, Workload};
use gvm_sched::{timeslice_of_priority, Policy};

/// Priorities 7, 8, 8, 9 → timeslices 4096, 2048, 2048, 1024 µs → shares
/// 4/9, 2/9, 2/9, 1/9 of the GPU time, ±2 points, in every window.
#[test]
fn shares_follow_the_timeslice_ratio() {
    let prios = [7u8, 8, 8, 9];
    let total: u64 = prios.iter().map(|&p| timeslice_of_priority(p).0).sum();
    let want: Vec<f64> = prios
        .iter()
        .map(|&p| timeslice_of_priority(p).0 as f64 / total as f64)
        .collect();
    for seed in [1u64, 2, 3] {
        let specs: Vec<_> = (0..4).map(|i| busy(i, seed, prios[i], 0.0)).collect();
        let (mut gpu, mut engine) = setup(specs, Policy::BestEffort);
        let stats = gpu.run(&mut engine, secs(4), TICK);
        assert_eq!(stats.freeze_writes, 0);
        assert_eq!(stats.priority_writes, 4, "each priority written once");
        for w in 0..gpu.complete_windows() {
            let what = format!("seed={seed} window {w}");
            assert_close(&what, &gpu.window_used_shares(w), &want, TOL);
        }
        assert!(want[0] > want[1], "the higher priority gets more");
    }
}

/// Light, bursty and intermittent load: the GPU idles only when nobody has a
/// kernel queued (and it does idle, so the check is not vacuous).
#[test]
fn never_idle_while_any_vgpu_has_work() {
    for seed in [4u64, 5, 6] {
        let mut specs: Vec<_> = (0..6).map(|i| busy(i, seed, 6 + i as u8, 0.0)).collect();
        for (i, s) in specs.iter_mut().enumerate() {
            s.workload = Workload {
                contexts: 1 + (i as u32 % 2),
                kernels: MIXED,
                arrival: Arrival::Periodic {
                    period: ms(3 + 2 * i as u64),
                    max_queue: 8,
                },
                active: vec![span(ms(100 * i as u64), ms(1_500 + 300 * i as u64))],
            };
        }
        specs[0].workload.kernels = KernelDist::Fixed(ms(4));
        let (mut gpu, mut engine) = setup(specs, Policy::BestEffort);
        let stats = gpu.run(&mut engine, secs(3), TICK);
        assert_eq!(stats.freeze_writes, 0);
        assert_eq!(
            gpu.idle_with_work().0,
            0,
            "seed={seed}: idle with work queued"
        );
        assert!(
            gpu.idle_time().0 > 0,
            "seed={seed}: load never let the GPU idle"
        );
    }
}
