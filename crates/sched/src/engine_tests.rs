//! Unit tests of the engine's decisions, on hand-made counters.

use super::*;

fn input(id: u128, pending: u64, used_ms: u64) -> VgpuInput {
    VgpuInput {
        id: VgpuId(id),
        pending_kernels: pending,
        gpu_time: Nanos::from_millis(used_ms),
        priority: 8,
        share: 0.25,
    }
}

fn engine(policy: Policy) -> Engine {
    match Engine::new(EngineConfig::with_policy(policy)) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

fn freeze_of(actions: &[Action], id: u128) -> Option<bool> {
    actions
        .iter()
        .find(|a| a.id == VgpuId(id))
        .and_then(|a| a.freeze)
}

#[test]
fn first_tick_writes_priorities_then_nothing_changes() {
    let mut e = engine(Policy::BestEffort);
    let mut inputs = [input(1, 1, 0), input(2, 1, 0)];
    inputs[1].priority = 5;
    let a = e.tick(ms(0), &inputs);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].priority, Some(8));
    assert_eq!(a[1].priority, Some(5));
    assert!(
        a.iter().all(|a| a.freeze.is_none()),
        "freeze=0 is the default"
    );
    assert!(e.tick(ms(1), &inputs).is_empty());
    assert_eq!(e.stats().priority_writes, 2);
    assert_eq!(e.stats().ticks, 2);
}

#[test]
fn best_effort_never_freezes_and_targets_follow_timeslices() {
    let mut e = engine(Policy::BestEffort);
    let mut inputs = [input(1, 1, 0), input(2, 1, 0), input(3, 0, 0)];
    inputs[0].priority = 7;
    e.tick(ms(0), &inputs);
    inputs[0].gpu_time = ms(500);
    let a = e.tick(ms(10), &inputs);
    assert!(a.is_empty());
    let r = e.report();
    assert!((r[0].target - 2.0 / 3.0).abs() < 1e-9);
    assert!((r[1].target - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(r[2].target, 0.0);
}

#[test]
fn best_effort_clamps_priority_to_sixteen() {
    let mut e = engine(Policy::BestEffort);
    let mut i = input(1, 1, 0);
    i.priority = 40;
    assert_eq!(e.tick(ms(0), &[i])[0].priority, Some(16));
}

#[test]
fn equal_share_uses_the_slice_priority() {
    let mut e = engine(Policy::EqualShare);
    let few: Vec<_> = (0..8).map(|i| input(i, 1, 0)).collect();
    assert!(e.tick(ms(0), &few).iter().all(|a| a.priority == Some(8)));
    let many: Vec<_> = (0..9).map(|i| input(i, 1, 0)).collect();
    let a = e.tick(ms(1), &many);
    assert_eq!(a.len(), 9, "all move to the 1 ms slice");
    assert!(a.iter().all(|a| a.priority == Some(9)));
}

#[test]
fn equal_share_freezes_the_leader_and_thaws_it_at_half_the_bound() {
    let mut e = engine(Policy::EqualShare);
    e.tick(ms(0), &[input(1, 1, 0), input(2, 1, 0)]);
    // Bound is max(2 × 2 ms, 1 s / 100) = 10 ms.
    assert!(e
        .tick(ms(10), &[input(1, 1, 10), input(2, 1, 0)])
        .is_empty());
    let a = e.tick(ms(11), &[input(1, 1, 11), input(2, 1, 0)]);
    assert_eq!(freeze_of(&a, 1), Some(true));
    assert_eq!(freeze_of(&a, 2), None, "the one behind is never frozen");
    // vGPU 2 catches up to a 6 ms lead: still frozen; at 5 ms: thawed.
    assert!(e
        .tick(ms(16), &[input(1, 1, 11), input(2, 1, 5)])
        .is_empty());
    let a = e.tick(ms(17), &[input(1, 1, 11), input(2, 1, 6)]);
    assert_eq!(freeze_of(&a, 1), Some(false));
    assert!(e.report().iter().all(|r| (r.target - 0.5).abs() < 1e-9));
}

#[test]
fn equal_share_ignores_idle_vgpus_and_caps_their_credit() {
    let mut e = engine(Policy::EqualShare);
    e.tick(ms(0), &[input(1, 1, 0), input(2, 0, 0)]);
    // vGPU 1 runs alone for a second: nobody with work is behind it.
    let a = e.tick(ms(1_000), &[input(1, 1, 1_000), input(2, 0, 0)]);
    assert!(a.is_empty());
    assert_eq!(e.report()[0].target, 1.0);
    // vGPU 2 gets work: it is owed at most the bound (10 ms), not a second.
    let a = e.tick(ms(1_001), &[input(1, 1, 1_001), input(2, 1, 0)]);
    assert_eq!(freeze_of(&a, 1), Some(true));
    let a = e.tick(ms(1_007), &[input(1, 1, 1_001), input(2, 1, 6)]);
    assert_eq!(
        freeze_of(&a, 1),
        Some(false),
        "thawed after ~half the bound"
    );
}

#[test]
fn fixed_share_freezes_when_the_bucket_empties_and_thaws_when_refilled() {
    let mut e = engine(Policy::FixedShare);
    e.tick(ms(0), &[input(1, 1, 0)]);
    // 4 ms elapsed, 4 ms used, share 1/4: 3 ms in debt → frozen.
    let a = e.tick(ms(4), &[input(1, 1, 4)]);
    assert_eq!(freeze_of(&a, 1), Some(true));
    // Thaw needs half the 10 ms cap: (3 + 5) ms / 0.25 = 32 ms more.
    assert!(e.tick(ms(35), &[input(1, 1, 4)]).is_empty());
    let a = e.tick(ms(36), &[input(1, 1, 4)]);
    assert_eq!(freeze_of(&a, 1), Some(false));
}

#[test]
fn fixed_share_treats_nonsense_shares_as_zero() {
    let mut e = engine(Policy::FixedShare);
    let mut i = input(1, 1, 0);
    i.share = f64::NAN;
    e.tick(ms(0), &[i]);
    i.gpu_time = ms(1);
    assert_eq!(freeze_of(&e.tick(ms(1), &[i]), 1), Some(true));
    assert_eq!(e.report()[0].target, 0.0);
}

#[test]
fn switching_to_best_effort_thaws_and_restores_priorities() {
    let mut e = engine(Policy::FixedShare);
    let mut i = input(1, 1, 0);
    i.priority = 3;
    e.tick(ms(0), &[i]);
    i.gpu_time = ms(8);
    assert_eq!(freeze_of(&e.tick(ms(8), &[i]), 1), Some(true));
    e.set_policy(Policy::BestEffort);
    let a = e.tick(ms(9), &[i]);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].priority, a[0].freeze), (Some(3), Some(false)));
}

#[test]
fn invalidate_rewrites_both_knobs() {
    let mut e = engine(Policy::BestEffort);
    e.tick(ms(0), &[input(1, 1, 0)]);
    assert!(e.invalidate(VgpuId(1)));
    assert!(!e.invalidate(VgpuId(2)));
    let a = e.tick(ms(1), &[input(1, 1, 0)]);
    assert_eq!((a[0].priority, a[0].freeze), (Some(8), Some(false)));
}

#[test]
fn membership_changes_keep_state_of_known_vgpus() {
    let mut e = engine(Policy::EqualShare);
    e.tick(ms(0), &[input(1, 1, 0), input(2, 1, 0)]);
    let a = e.tick(ms(20), &[input(2, 1, 0), input(1, 1, 20), input(3, 1, 7)]);
    // Only the newcomer's priority; vGPU 1 is frozen (20 ms ahead of vGPU 2).
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(freeze_of(&a, 1), Some(true));
    assert_eq!(
        a.iter()
            .find(|x| x.id == VgpuId(3))
            .and_then(|x| x.priority),
        Some(8)
    );
    let ids: Vec<_> = e.report().iter().map(|r| r.id).collect();
    assert_eq!(ids, [VgpuId(2), VgpuId(1), VgpuId(3)]);
    // Removing a vGPU forgets it.
    e.tick(ms(21), &[input(3, 1, 7)]);
    assert_eq!(e.report().len(), 1);
}

#[test]
fn counter_reset_counts_as_no_time_used() {
    let mut e = engine(Policy::FixedShare);
    e.tick(ms(0), &[input(1, 1, 50)]);
    // The counter went back to 0 (owner restarted): not a huge usage.
    assert!(e.tick(ms(1), &[input(1, 1, 0)]).is_empty());
}

#[test]
fn report_gives_achieved_share_per_window() {
    let mut e = engine(Policy::BestEffort);
    e.tick(ms(0), &[input(1, 1, 0)]);
    assert_eq!(e.report()[0].achieved, None);
    e.tick(ms(500), &[input(1, 1, 100)]);
    e.tick(ms(1_000), &[input(1, 1, 300)]);
    let r = e.report()[0];
    let Some(achieved) = r.achieved else {
        panic!("no window completed: {r:?}");
    };
    assert!((achieved - 0.3).abs() < 1e-9, "{achieved}");
}

#[test]
fn config_errors_are_reported() {
    let bad = EngineConfig {
        window: Nanos::ZERO,
        ..EngineConfig::default()
    };
    assert!(Engine::new(bad).is_err());
    let mut e = engine(Policy::BestEffort);
    assert!(e.set_config(bad).is_err());
    assert_eq!(e.config().policy, Policy::BestEffort);
    assert_eq!(e.slice_for(4), (Nanos::from_micros(2_048), 8));
}

/// Runs `engine` for `ticks` ticks of 10 ms on a GPU that splits each tick evenly between
/// the vGPUs left unfrozen; returns each vGPU's GPU time and the most vGPUs ever unfrozen
/// together after the first tick.
fn run_exclusive(engine: &mut Engine, shares: &[f64], ticks: u64) -> (Vec<u64>, usize) {
    let n = shares.len();
    let mut used = vec![0u64; n];
    let mut frozen = vec![false; n];
    let mut most_running = 0;
    for t in 0..ticks {
        let inputs: Vec<VgpuInput> = (0..n)
            .map(|i| VgpuInput {
                id: VgpuId(i as u128 + 1),
                pending_kernels: 4,
                gpu_time: Nanos::from_micros(used[i]),
                priority: 8,
                share: shares[i],
            })
            .collect();
        for a in engine.tick(ms(10 * t), &inputs) {
            if let Some(f) = a.freeze {
                frozen[(a.id.0 - 1) as usize] = f;
            }
        }
        let running: Vec<usize> = (0..n).filter(|i| !frozen[*i]).collect();
        if t > 0 {
            most_running = most_running.max(running.len());
        }
        for i in &running {
            used[*i] += 10_000 / running.len() as u64;
        }
    }
    (used, most_running)
}

#[test]
fn exclusive_equal_share_runs_one_vgpu_at_a_time_and_splits_evenly() {
    let mut cfg = EngineConfig::with_policy(Policy::EqualShare);
    cfg.exclusive = Some(ms(20));
    let mut e = Engine::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    let (used, most) = run_exclusive(&mut e, &[0.5, 0.5, 0.5], 300);
    assert_eq!(most, 1, "more than one vGPU ran at once");
    let total: u64 = used.iter().sum();
    for u in &used {
        let share = *u as f64 / total as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.03, "{used:?}");
    }
    // Without the mode the same engine lets all three run together.
    let mut e = engine(Policy::EqualShare);
    let (_, most) = run_exclusive(&mut e, &[0.5, 0.5, 0.5], 50);
    assert_eq!(most, 3);
}

#[test]
fn exclusive_fixed_share_keeps_each_vgpu_at_its_share_one_at_a_time() {
    let mut cfg = EngineConfig::with_policy(Policy::FixedShare);
    cfg.exclusive = Some(ms(20));
    let mut e = Engine::new(cfg).unwrap_or_else(|e| panic!("{e}"));
    let ticks = 300; // 3 s
    let (used, most) = run_exclusive(&mut e, &[0.5, 0.25, 0.125, 0.125], ticks);
    assert_eq!(most, 1);
    let wall = (ticks * 10_000) as f64;
    for (u, want) in used.iter().zip([0.5, 0.25, 0.125, 0.125]) {
        let got = *u as f64 / wall;
        assert!((got - want).abs() < 0.04, "{used:?}: {got} vs {want}");
    }
}
