//! The live scheduler end to end: gvm-vgpud on the simulated host, shares measured
//! from the sim's ground truth (`gpu_time_us` in `.../gvm-sim/owners`), which the
//! daemon never reads (it estimates GPU time from `gcgroup.stat`).
//!
//! Bounds are looser than the model's (±2 points): the daemon ticks every 10 ms on
//! a loaded 2-core machine, estimates GPU time from whole 1 ms kernels, and the sim
//! advances in 5 ms steps. Each test skips (printing why) without root and /dev/fuse.
//! The tests run one at a time (they measure wall-clock shares).

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{skip_reason, wait_until, Sim};
use gvm_client::{gvm_proto, Client};
use gvm_proto::{CreateParams, PolicyParams, SetMode, SetParams};
use uuid::Uuid;

static SERIAL: Mutex<()> = Mutex::new(());

macro_rules! require_sim {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIP: {why}");
            return;
        }
    };
}

/// A vGPU of `type_name` on the sim's first parent with `owners` busy owners on GPU 0.
fn vgpu(sim: &Sim, c: &mut Client, type_name: &str, owners: usize, busy: bool) -> Uuid {
    let parent = sim.parents()[0].clone();
    let v = c
        .create(CreateParams {
            uuid: None,
            parent,
            type_name: type_name.into(),
            define: false,
            autostart: false,
        })
        .unwrap();
    for _ in 0..owners {
        sim.spawn_owner(&v.uuid, 0, if busy { "busy=1" } else { "busy=0" });
    }
    v.uuid
}

fn gpu_times(sim: &Sim) -> BTreeMap<Uuid, u64> {
    let mut m = BTreeMap::new();
    for o in sim.owners() {
        *m.entry(o.uuid).or_default() += o.gpu_time_us;
    }
    m
}

/// Each vGPU's share of wall time over `d` (ground truth).
fn shares(sim: &Sim, uuids: &[Uuid], d: Duration) -> Vec<f64> {
    let (a, t0) = (gpu_times(sim), Instant::now());
    std::thread::sleep(d);
    let (b, wall) = (gpu_times(sim), t0.elapsed());
    let wall_us = wall.as_micros() as f64;
    uuids
        .iter()
        .map(|u| (b.get(u).copied().unwrap_or(0) - a.get(u).copied().unwrap_or(0)) as f64 / wall_us)
        .collect()
}

fn set_policy(c: &mut Client, policy: &str, window_ms: Option<u64>) {
    c.set_policy_with(PolicyParams {
        policy: policy.into(),
        gpu: None,
        timeslice_us: None,
        window_ms,
    })
    .unwrap();
}

fn wait_tuned(sim: &Sim, n_owners: usize) {
    assert!(
        wait_until(Duration::from_secs(5), || {
            let o = sim.owners();
            o.len() == n_owners
                && o.iter()
                    .all(|o| sim.knob(o.pid, o.gpu, "compute.priority").is_some())
        }),
        "owners did not register"
    );
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn equal_share_gives_each_busy_vgpu_one_nth_whatever_its_priority_or_owner_count() {
    require_sim!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sim = Sim::start(1);
    let d = sim.daemon(&[]);
    let mut c = d.client();
    // Best-effort would give the sim-40c vGPU (priority 6) 16x a sim-4c (10), and the
    // three-owner vGPU three turns per round.
    let big = vgpu(&sim, &mut c, "sim-40c", 1, true);
    let multi = vgpu(&sim, &mut c, "sim-4c", 3, true);
    wait_tuned(&sim, 4);
    set_policy(&mut c, "equal-share", None);
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &[big, multi], Duration::from_secs(3));
    println!("2 vGPUs equal-share: {s:?}");
    for v in &s {
        assert!((v - 0.5).abs() <= 0.10, "2 busy vGPUs: {s:?}");
    }

    let small1 = vgpu(&sim, &mut c, "sim-4c", 1, true);
    let small2 = vgpu(&sim, &mut c, "sim-4c", 1, true);
    wait_tuned(&sim, 6);
    std::thread::sleep(Duration::from_millis(1500));
    let all = [big, multi, small1, small2];
    let s = shares(&sim, &all, Duration::from_secs(3));
    println!("4 vGPUs equal-share: {s:?}");
    for v in &s {
        assert!((v - 0.25).abs() <= 0.10, "4 busy vGPUs: {s:?}");
    }

    // The daemon's own view agrees (policy show / top).
    let st = c.policy().unwrap();
    let g = st.gpus.iter().find(|g| g.gpu == Some(0)).unwrap();
    assert_eq!(g.config.policy, "equal-share");
    assert_eq!(g.vgpus.len(), 4);
    for v in &g.vgpus {
        assert!((v.target - 0.25).abs() < 1e-9, "{:?}", g.vgpus);
        let a = v.achieved.unwrap();
        assert!((a - 0.25).abs() <= 0.10, "daemon's estimate {:?}", g.vgpus);
    }
    assert!(g.counters.freeze_writes > 0, "{:?}", g.counters);
    println!(
        "knob writes/s on GPU 0: {:.1} ({:?})",
        g.counters.writes_per_second(),
        g.counters
    );

    // A user freeze wins: the scheduler never thaws it, and its time goes to the others.
    c.freeze(&big.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &all, Duration::from_secs(2));
    println!("big frozen by the user: {s:?}");
    assert_eq!(s[0], 0.0, "a user-frozen vGPU ran: {s:?}");
    for v in &s[1..] {
        assert!((v - 1.0 / 3.0).abs() <= 0.10, "{s:?}");
    }
    let st = c.policy().unwrap();
    let frozen = st.gpus[0].vgpus.iter().find(|v| v.uuid == big).unwrap();
    assert!(frozen.frozen_by_user);
    c.thaw(&big.to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &all, Duration::from_secs(2));
    assert!(s[0] > 0.15, "thawed vGPU gets its share back: {s:?}");
}

#[test]
fn fixed_share_caps_a_vgpu_at_its_share_on_an_idle_gpu_and_the_choice_persists() {
    require_sim!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sim = Sim::start(1);
    let mut d = sim.daemon(&[]);
    let mut c = d.client();
    // sim-20c: max 4 instances, so its default share is 0.25.
    let busy = vgpu(&sim, &mut c, "sim-20c", 1, true);
    let idle = vgpu(&sim, &mut c, "sim-20c", 1, false);
    wait_tuned(&sim, 2);
    set_policy(&mut c, "fixed-share", None);
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &[busy, idle], Duration::from_secs(3));
    println!("fixed-share 0.25 alone: {s:?}");
    assert!(s[0] <= 0.35, "over its share on an idle GPU: {s:?}");
    assert!(s[0] >= 0.15, "far under its share: {s:?}");

    // A live share override is honoured.
    c.set(SetParams {
        target: busy.to_string(),
        share: Some(0.5),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &[busy], Duration::from_secs(2));
    println!("fixed-share 0.5 alone: {s:?}");
    assert!((s[0] - 0.5).abs() <= 0.10, "{s:?}");

    // Persisted: a restarted daemon comes back with fixed-share and enforces it.
    let file = std::fs::read_to_string(sim.root.join("etc/gvm-vgpu/policy.json")).unwrap();
    assert!(file.contains("fixed-share"), "{file}");
    d.kill9();
    d.restart();
    let mut c = d.client();
    assert_eq!(c.policy().unwrap().default.policy, "fixed-share");
    std::thread::sleep(Duration::from_millis(1500));
    let s = shares(&sim, &[busy], Duration::from_secs(2));
    assert!(s[0] <= 0.6, "after restart: {s:?}");
}

#[test]
fn best_effort_splits_by_timeslice_and_a_live_switch_converges_within_two_windows() {
    require_sim!();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sim = Sim::start(1);
    let d = sim.daemon(&[]);
    let mut c = d.client();
    let a = vgpu(&sim, &mut c, "sim-4c", 1, true);
    let b = vgpu(&sim, &mut c, "sim-4c", 1, true);
    for (u, p) in [(a, 8), (b, 9)] {
        c.set(SetParams {
            target: u.to_string(),
            priority: Some(p),
            mode: SetMode::Live,
            ..SetParams::default()
        })
        .unwrap();
    }
    wait_tuned(&sim, 2);
    let s = shares(&sim, &[a, b], Duration::from_secs(2));
    let ratio = s[0] / s[1];
    println!("best-effort 8 vs 9: {s:?} ratio {ratio:.2}");
    assert!((1.5..=2.5).contains(&ratio), "ratio {ratio} ({s:?})");
    assert!(s[0] + s[1] > 0.9, "not work-conserving: {s:?}");

    // Live switch to equal-share with a 500 ms window: equal within two windows.
    let window = Duration::from_millis(500);
    set_policy(&mut c, "equal-share", Some(500));
    std::thread::sleep(window * 2);
    let s = shares(&sim, &[a, b], window);
    println!("after switching to equal-share: {s:?}");
    for v in &s {
        assert!((v - 0.5).abs() <= 0.10, "{s:?}");
    }
    // And back: best-effort's 2:1 within two windows, nothing left frozen.
    set_policy(&mut c, "best-effort", None);
    std::thread::sleep(window * 2);
    let s = shares(&sim, &[a, b], Duration::from_secs(1));
    let ratio = s[0] / s[1];
    println!("after switching back to best-effort: {s:?} ratio {ratio:.2}");
    assert!((1.5..=2.5).contains(&ratio), "ratio {ratio} ({s:?})");
    assert!(sim.owners().iter().all(|o| !o.frozen));
    for o in sim.owners() {
        let want = if o.uuid == a { "8" } else { "9" };
        assert_eq!(
            sim.knob(o.pid, o.gpu, "compute.priority").as_deref(),
            Some(want)
        );
    }
}
