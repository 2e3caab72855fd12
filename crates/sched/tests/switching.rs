//! Switching policy live under load: the new policy's shares hold from the
//! first full window after the switch (the issue allows two windows).

mod common;

use common::*;
use gvm_sched::Policy;

/// Priorities 6, 8, 8, 9 and shares 0.4/0.2/0.2/0.1 under a chain of switches
/// at mid-window instants: best-effort → equal-share → fixed-share → best-effort.
#[test]
fn each_new_policy_converges_within_a_window() {
    let prios = [6u8, 8, 8, 9];
    let shares = [0.4, 0.2, 0.2, 0.1];
    for seed in [1u64, 2, 3] {
        let specs: Vec<_> = (0..4).map(|i| busy(i, seed, prios[i], shares[i])).collect();
        let (mut gpu, mut engine) = setup(specs, Policy::BestEffort);
        gpu.run(&mut engine, ms(2_500), TICK);
        // 8192:2048:2048:1024 µs timeslices.
        let be = [8.0 / 13.0, 2.0 / 13.0, 2.0 / 13.0, 1.0 / 13.0];
        assert_close(
            &format!("seed={seed} best-effort w1"),
            &gpu.window_used_shares(1),
            &be,
            TOL,
        );

        engine.set_policy(Policy::EqualShare);
        gpu.run(&mut engine, secs(3), TICK);
        for w in [3, 4] {
            let what = format!("seed={seed} equal-share w{w}");
            assert_close(&what, &gpu.window_used_shares(w), &[0.25; 4], TOL);
        }

        engine.set_policy(Policy::FixedShare);
        gpu.run(&mut engine, secs(3), TICK);
        for w in [6, 7] {
            let what = format!("seed={seed} fixed-share w{w}");
            assert_close(&what, &gpu.window_wall_shares(w), &shares, TOL);
        }

        engine.set_policy(Policy::BestEffort);
        gpu.run(&mut engine, secs(3), TICK);
        for w in [9, 10] {
            let what = format!("seed={seed} best-effort again w{w}");
            assert_close(&what, &gpu.window_used_shares(w), &be, TOL);
        }
        assert!(
            engine.report().iter().all(|r| !r.frozen),
            "best-effort thaws all"
        );
    }
}
