//! Unit tests of the scheduler's pure parts: the GPU-time estimator and how scheduler
//! knobs combine with the operator's (the policy file's are in `policy_file.rs`).

use super::*;
use gvm_gcgroup::MemoryLimit;

fn ms(v: u64) -> Nanos {
    Nanos::from_millis(v)
}

#[test]
fn a_saturated_tick_is_split_by_kernels_and_calibrates_the_kernel_length() {
    let (used, k) = split_gpu_time(ms(20), &[10, 5, 5], true, None);
    assert_eq!(used, vec![ms(10), ms(5), ms(5)]);
    assert_eq!(k, Some(ms(1)));
    // No kernels: nobody used anything, nothing learned.
    let (used, k) = split_gpu_time(ms(20), &[0, 0], true, Some(ms(1)));
    assert_eq!((used, k), (vec![Nanos::ZERO; 2], None));
}

#[test]
fn an_idle_gpu_tick_prices_kernels_at_the_calibrated_length_capped_by_wall_time() {
    // One light vGPU finished 3 kernels of ~1 ms in a 20 ms tick: 3 ms, not 20.
    let (used, k) = split_gpu_time(ms(20), &[3], false, Some(ms(1)));
    assert_eq!((used, k), (vec![ms(3)], None));
    // Never more than the tick in total.
    let (used, _) = split_gpu_time(ms(10), &[15, 5], false, Some(ms(1)));
    assert_eq!(used.iter().fold(Nanos::ZERO, |a, b| a + *b), ms(10));
    assert_eq!(used[0], Nanos(7_500_000));
    // Nothing calibrated yet: the proportional split.
    let (used, _) = split_gpu_time(ms(10), &[1, 1], false, None);
    assert_eq!(used, vec![ms(5), ms(5)]);
}

#[test]
fn calibration_is_a_running_mean() {
    assert_eq!(calibrate(None, ms(2)), ms(2));
    assert_eq!(calibrate(Some(ms(1)), ms(9)), ms(2));
}

#[test]
fn scheduler_knobs_replace_the_priority_and_never_undo_a_user_freeze() {
    let base = gvm_proto::Knobs {
        priority: 10,
        frozen: true,
        ..gvm_proto::Knobs::default()
    };
    let thawing = SchedKnobs {
        priority: Some(8),
        frozen: false,
    };
    let k = SchedKnobs::apply(Some(&thawing), base);
    assert_eq!((k.priority, k.frozen), (8, true));
    let freezing = SchedKnobs {
        priority: None,
        frozen: true,
    };
    let k = SchedKnobs::apply(
        Some(&freezing),
        gvm_proto::Knobs {
            frozen: false,
            ..base
        },
    );
    assert_eq!((k.priority, k.frozen), (10, true));
    assert_eq!(SchedKnobs::apply(None, base), base);
}

#[test]
fn stored_config_converts_both_ways() {
    let c = EngineConfig {
        policy: Policy::FixedShare,
        timeslice: Some(Nanos::from_micros(512)),
        window: ms(250),
        exclusive: None,
    };
    assert_eq!(StoredConfig::of(&c).engine(), c);
    let w = StoredConfig::of(&c).wire();
    assert_eq!(
        (w.policy.as_str(), w.timeslice_us, w.window_ms),
        ("fixed-share", Some(512), 250)
    );
}

#[test]
fn the_planner_holds_scheduler_knobs_instead_of_correcting_them() {
    use crate::model::{GcState, LiveState, Observed, ObservedDevice, TypeSpec};
    use crate::plan::{plan, Action, Scope};
    let u = Uuid::from_u128(1);
    let mut obs = Observed::default();
    obs.devices.insert(
        u,
        ObservedDevice {
            uuid: u,
            parent: "p0".into(),
            mdev_type: "gvmsim-1".into(),
            kernel_name: None,
            kind: gvm_proto::VgpuKind::Mdev,
            vf: None,
        },
    );
    obs.owners.insert(
        u,
        [(100, gvm_proto::OwnerRule::Environment)]
            .into_iter()
            .collect(),
    );
    obs.gpus.insert(100, [0u32].into_iter().collect());
    // What the scheduler wrote: priority 8 (type says 10), frozen.
    let written = GcState {
        memory_limit: MemoryLimit::from_bytes(4 << 30),
        priority: Some(Priority::clamped(8)),
        frozen: true,
    };
    obs.gcgroups.insert((100, 0), written);
    let types = [(
        u,
        TypeSpec {
            name: "sim-4c".into(),
            memory_limit: 4 << 30,
            priority: 10,
            share: None,
            host_swap: false,
        },
    )]
    .into_iter()
    .collect();
    let mut desired = crate::model::Desired::default();
    desired.sched.insert(
        (u, 0),
        SchedKnobs {
            priority: Some(8),
            frozen: true,
        },
    );
    let none = BTreeSet::new();
    let scope = Scope {
        autostart_parents: &none,
        only: None,
    };
    assert_eq!(plan(&obs, &desired, &types, scope).actions, Vec::new());

    // The scheduler thaws, but the operator froze it: still no write.
    desired.sched.insert(
        (u, 0),
        SchedKnobs {
            priority: Some(8),
            frozen: false,
        },
    );
    desired.live.insert(
        u,
        LiveState {
            frozen: true,
            ..LiveState::default()
        },
    );
    assert_eq!(plan(&obs, &desired, &types, scope).actions, Vec::new());

    // Without scheduler knobs (best-effort), the type's priority comes back.
    desired.sched.clear();
    let p = plan(&obs, &desired, &types, scope);
    assert!(
        p.actions.iter().any(|a| matches!(
            a,
            Action::Write {
                knob: Knob::Priority(p),
                ..
            } if p.get() == 10
        )),
        "{:?}",
        p.actions
    );
}

#[test]
fn the_hosts_exclusive_mode_reaches_every_gpus_engine_but_is_not_stored() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut s = Scheduler::open(&HostRoot::new(dir.path()), Default::default());
    assert_eq!(s.engine_config(0).exclusive, None);
    s.exclusive = Some(gvm_sched::DEFAULT_EXCLUSIVE_SLICE);
    for gpu in [0, 8] {
        assert_eq!(
            s.engine_config(gpu).exclusive,
            Some(gvm_sched::DEFAULT_EXCLUSIVE_SLICE)
        );
    }
    // A host property, not a stored choice: the policy file never carries it.
    assert_eq!(s.file.for_pci(None).engine().exclusive, None);
}
