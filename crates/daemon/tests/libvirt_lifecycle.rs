//! gvm-vgpud follows a real libvirtd: a running TCG domain bound to a vGPU of the simulated host
//! (through gvm's `<metadata>` element, as `gvm-vgpu attach --metadata-only` writes it: a
//! domain here cannot hold an mdev) is suspended and resumed with `virsh`, and the vGPU's owner
//! processes' `compute.freeze` follows; a user freeze survives a suspend/resume cycle; a
//! `kill -9` of libvirtd does not lose the next suspend; `set <domain>` resolves the domain's
//! vGPU; destroying the domain drops the binding. Also checks that the domain's real QEMU pid
//! resolves as the vGPU's owner through libvirt's run directory.
//!
//! A daemon started while libvirtd is down waits for it (logging that once) and follows the
//! domains once libvirtd answers.
//!
//! Needs root, /dev/fuse, libvirtd, virsh and qemu-system-x86_64; skips (printing why) without.
//! In its own test binary because it kills libvirtd (and its tests take turns).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::libvirtd::{
    bound_running_domain, one_at_a_time, require_libvirtd, restart_libvirtd, start_libvirtd,
    stop_libvirtd, virsh_ok, TestDomain, URI,
};
use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{ErrorCode, OwnerRule};
use gvm_host_root::HostRoot;

// ---- the test ----

/// Every owner's `compute.freeze` equals `want` within `timeout`; returns how long it took.
fn freeze_follows(sim: &Sim, owners: &[u32], want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let ok = wait_until(timeout, || {
        owners
            .iter()
            .all(|p| sim.knob(*p, 0, "compute.freeze").as_deref() == Some(want))
    });
    let states: Vec<Option<String>> = owners
        .iter()
        .map(|p| sim.knob(*p, 0, "compute.freeze"))
        .collect();
    assert!(
        ok,
        "compute.freeze not {want} within {timeout:?}: {states:?}"
    );
    t0.elapsed()
}

/// The daemon's libvirt status file says `domain` is (or is not) paused.
fn status_says_paused(root: &Path, domain: &str, paused: bool) -> bool {
    let Ok(text) = std::fs::read_to_string(root.join("run/gvm-vgpu/libvirt.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["domains"][domain]["paused"].as_bool() == Some(paused)
}

#[test]
fn suspend_and_resume_through_libvirt_freeze_and_thaw_the_bound_vgpu() {
    let _one = one_at_a_time();
    if let Some(why) = skip_reason().or_else(require_libvirtd) {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let d = sim.daemon(&["--libvirt", URI]);
    let mut c = d.client();
    // Bind a vGPU the way `gvm-vgpu attach --metadata-only --persistent` does, then start.
    let (dom, uuid) = bound_running_domain(&sim, &mut c, "lifecycle");
    let name = dom.name.clone();

    // The domain's real QEMU resolves as the vGPU's owner through libvirt's run directory.
    let qemu_pid: u32 = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut real = gvm_vgpud::owners::Resolver::new(HostRoot::new("/"));
    real.refresh_libvirt();
    assert_eq!(
        real.owner_of(qemu_pid, true),
        Some(gvm_vgpud::owners::Ownership {
            uuids: vec![uuid],
            rule: OwnerRule::Libvirt,
            uid: None,
        }),
        "QEMU {qemu_pid} of {name} should own {uuid}"
    );

    let owners = [
        sim.spawn_owner(&uuid, 0, "busy=1"),
        sim.spawn_owner(&uuid, 0, "busy=1"),
    ];
    assert!(
        wait_until(Duration::from_secs(5), || owners.iter().all(|p| sim
            .knob(*p, 0, "compute.priority")
            .is_some_and(|v| v != "8"))),
        "owners not tuned"
    );
    let shown = c.show(&name).unwrap().info;
    assert_eq!(
        (shown.uuid, shown.domain.as_deref()),
        (uuid, Some(name.as_str()))
    );
    freeze_follows(&sim, &owners, "0", Duration::from_secs(1));

    virsh_ok(&["suspend", &name]);
    let froze = freeze_follows(&sim, &owners, "1", Duration::from_secs(2));
    assert!(c.show(&uuid.to_string()).unwrap().info.knobs.frozen);
    virsh_ok(&["resume", &name]);
    let thawed = freeze_follows(&sim, &owners, "0", Duration::from_secs(2));
    println!("suspend → frozen in {froze:?}, resume → thawed in {thawed:?}");

    // A user freeze survives a suspend/resume cycle.
    c.freeze(&name).unwrap();
    freeze_follows(&sim, &owners, "1", Duration::from_secs(1));
    virsh_ok(&["suspend", &name]);
    assert!(wait_until(Duration::from_secs(3), || status_says_paused(
        &sim.root, &name, true
    )));
    virsh_ok(&["resume", &name]);
    assert!(wait_until(Duration::from_secs(3), || status_says_paused(
        &sim.root, &name, false
    )));
    std::thread::sleep(Duration::from_millis(500));
    freeze_follows(&sim, &owners, "1", Duration::from_millis(10));
    c.thaw(&name).unwrap();
    freeze_follows(&sim, &owners, "0", Duration::from_secs(1));

    // libvirtd crashes and comes back: the next suspend still freezes within seconds.
    let killed = Instant::now();
    restart_libvirtd();
    virsh_ok(&["suspend", &name]);
    let froze = freeze_follows(&sim, &owners, "1", Duration::from_secs(10));
    println!(
        "after a libvirtd kill: suspend → frozen in {froze:?} ({:?} after the kill)",
        killed.elapsed()
    );
    virsh_ok(&["resume", &name]);
    freeze_follows(&sim, &owners, "0", Duration::from_secs(3));
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("libvirt connection lost") && log.matches("libvirt connected").count() >= 2,
        "the daemon did not report the lost connection and the reconnect"
    );

    // Retune by domain name.
    c.set_priority(&name, 3).unwrap();
    assert!(wait_until(Duration::from_secs(1), || owners.iter().all(
        |p| sim.knob(*p, 0, "compute.priority").as_deref() == Some("3")
    )));

    // Destroy: the daemon logs it and drops the binding.
    virsh_ok(&["destroy", &name]);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&d.log)
            .is_ok_and(
                |l| l.contains("libvirt domain ended") && l.contains(&name)
            )),
        "no 'domain ended' in the daemon log"
    );
    assert!(wait_until(Duration::from_secs(2), || c
        .show(&uuid.to_string())
        .is_ok_and(|v| v.info.domain.is_none())));
    let err = c.show(&name).err().and_then(|e| e.code());
    assert_eq!(err, Some(ErrorCode::NotFound));
    drop(dom);
}

#[test]
fn a_daemon_started_before_libvirtd_follows_its_domains_once_it_answers() {
    let _one = one_at_a_time();
    if let Some(why) = skip_reason().or_else(require_libvirtd) {
        println!("SKIP: {why}");
        return;
    }
    stop_libvirtd();
    let sim = Sim::start(1);
    let d = sim.daemon(&["--libvirt", URI]);
    let log = || std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || log()
            .contains("waiting for libvirtd")),
        "the daemon does not say it waits: {}",
        log()
    );
    // It serves meanwhile.
    let mut c = d.client();
    assert!(c.ping().is_ok());

    start_libvirtd().expect("libvirtd starts");
    assert!(
        wait_until(Duration::from_secs(20), || log()
            .contains("libvirt connected")),
        "the daemon did not connect once libvirtd answered: {}",
        log()
    );
    // A domain defined and started now is followed.
    let name = format!("gvmd-{}-late", std::process::id());
    let dom = TestDomain::define(&name);
    virsh_ok(&["start", &name]);
    assert!(
        wait_until(Duration::from_secs(10), || status_says_paused(
            &sim.root, &name, false
        )),
        "{name} is not in the daemon's libvirt picture: {}",
        log()
    );
    virsh_ok(&["suspend", &name]);
    assert!(
        wait_until(Duration::from_secs(10), || status_says_paused(
            &sim.root, &name, true
        )),
        "the daemon did not see {name} paused"
    );
    // Waiting, however many retries it took, and connecting are logged once each.
    let text = log();
    assert_eq!(text.matches("waiting for libvirtd").count(), 1, "{text}");
    assert_eq!(text.matches("libvirt connected").count(), 1, "{text}");
    drop(dom);
}
