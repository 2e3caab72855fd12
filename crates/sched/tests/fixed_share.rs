//! Fixed-share on the GPU model: no vGPU exceeds its share of wall time by more
//! than 2 points in any 1 s window, even alone on the GPU, and idle time is
//! not handed out.

mod common;

use common::*;
use gvm_sched::Policy;

/// One busy vGPU of a 4-instance type (share 1/4) alone on the GPU: it gets
/// its quarter and no more; the rest of the GPU stays idle.
#[test]
fn alone_on_the_gpu_a_vgpu_stays_at_its_share() {
    for seed in [1u64, 2, 3] {
        for contexts in [1u32, 3] {
            let mut specs: Vec<_> = (0..4)
                .map(|i| busy_during(i, seed, 0.25, Vec::new()))
                .collect();
            // vGPUs 1..3 exist but never submit anything.
            for s in specs.iter_mut().skip(1) {
                s.workload = s.workload.clone().during(vec![span(secs(0), secs(0))]);
            }
            specs[0].workload = specs[0].workload.clone().with_contexts(contexts);
            let (mut gpu, mut engine) = setup(specs, Policy::FixedShare);
            gpu.run(&mut engine, secs(4), TICK);
            for w in 0..gpu.complete_windows() {
                let what = format!("seed={seed} contexts={contexts} window {w}");
                let wall = gpu.window_wall_shares(w);
                assert!(wall[0] <= 0.25 + TOL, "{what}: {:.4} over share", wall[0]);
                assert!(wall[0] >= 0.25 - TOL, "{what}: {:.4} under share", wall[0]);
                assert!(wall[1..].iter().all(|&x| x == 0.0), "{what}: {wall:?}");
            }
            // Idle time is not given away: ~3/4 of the GPU idles.
            assert!(gpu.idle_time().0 as f64 > 0.70 * secs(4).0 as f64);
        }
    }
}

/// Unequal shares summing to 1, everyone busy, one vGPU with 3 contexts:
/// nobody exceeds its share by more than 2 points in any window.
#[test]
fn unequal_shares_are_caps() {
    let shares = [0.5, 0.25, 0.125, 0.125];
    for seed in [4u64, 5, 6] {
        let mut specs: Vec<_> = (0..4).map(|i| busy(i, seed, 8, shares[i])).collect();
        specs[3].workload = specs[3].workload.clone().with_contexts(3);
        let (mut gpu, mut engine) = setup(specs, Policy::FixedShare);
        gpu.run(&mut engine, secs(4), TICK);
        for w in 0..gpu.complete_windows() {
            let wall = gpu.window_wall_shares(w);
            for (i, (&got, &cap)) in wall.iter().zip(&shares).enumerate() {
                assert!(
                    got <= cap + TOL,
                    "seed={seed} window {w}: vGPU {i} got {got:.4} > {cap} + {TOL}"
                );
                // Switch costs come out of someone's share, so allow 5 points below.
                assert!(
                    got >= cap - 0.05,
                    "seed={seed} window {w}: vGPU {i} starved: {got:.4}"
                );
            }
        }
    }
}

/// Eight-instance type (1/8 each), three busy vGPUs and one that comes and
/// goes: the busy ones get 1/8 each and not the absent one's time.
#[test]
fn shares_do_not_grow_when_others_idle() {
    for seed in [7u64, 8] {
        let mut specs: Vec<_> = (0..3).map(|i| busy(i, seed, 8, 0.125)).collect();
        specs.push(busy_during(3, seed, 0.125, vec![span(secs(1), ms(2_500))]));
        let (mut gpu, mut engine) = setup(specs, Policy::FixedShare);
        gpu.run(&mut engine, secs(4), TICK);
        for w in 0..gpu.complete_windows() {
            let wall = gpu.window_wall_shares(w);
            let what = format!("seed={seed} window {w}");
            assert_close(&what, &wall[..3], &[0.125; 3], TOL);
            assert!(wall[3] <= 0.125 + TOL, "{what}: {wall:?}");
        }
    }
}
