//! Unit tests of the host's store rules, with fake owner processes.

use super::*;
use std::sync::{Arc, Mutex};

/// Fake processes: pids from 1000 up; `exited` simulates a kill from outside.
#[derive(Clone, Default)]
pub(crate) struct FakeProcs {
    pub(crate) state: Arc<Mutex<FakeState>>,
}

impl FakeProcs {
    /// The fake processes' state (a test that panicked holding it does not poison others).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub(crate) struct FakeState {
    pub(crate) next: u32,
    pub(crate) alive: Vec<(u32, String)>,
    pub(crate) exited: Vec<u32>,
}

impl OwnerProcs for FakeProcs {
    fn spawn(&mut self, uuid: &str, _group: u32) -> io::Result<u32> {
        let mut s = self.lock();
        s.next += 1;
        let pid = 1000 + s.next;
        s.alive.push((pid, uuid.to_string()));
        Ok(pid)
    }
    fn kill(&mut self, pid: u32) -> io::Result<()> {
        let mut s = self.lock();
        s.alive.retain(|(p, _)| *p != pid);
        s.exited.push(pid);
        Ok(())
    }
    fn reap(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.lock().exited)
    }
    fn kill_all(&mut self) {
        self.lock().alive.clear();
    }
}

pub(crate) fn host(model: Model, owners: u32) -> (SimHost, FakeProcs) {
    let procs = FakeProcs::default();
    (
        SimHost::new(model, 2, owners, Box::new(procs.clone())),
        procs,
    )
}

const U1: &str = "0b2e3c4d-1111-4a2b-8c3d-000000000001";
const U2: &str = "0b2e3c4d-1111-4a2b-8c3d-000000000002";

fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.errno(),
    }
}

#[test]
fn create_accepts_36_or_37_bytes_and_any_37th_byte() {
    let (mut h, _) = host(Model::GvmSim, 0);
    assert_eq!(
        h.create("c", 0, "gvmsim-1", U1.as_bytes()).ok().as_deref(),
        Some(U1)
    );
    assert!(h
        .create("c", 0, "gvmsim-1", format!("{U2}x").as_bytes())
        .is_ok());
    assert_eq!(h.devices().len(), 2);
    let long = format!("{}\n\n", "0b2e3c4d-1111-4a2b-8c3d-000000000003");
    assert_eq!(
        errno(h.create("c", 0, "gvmsim-1", long.as_bytes())),
        libc::EINVAL
    );
    assert_eq!(
        errno(h.create("c", 0, "gvmsim-1", &U1.as_bytes()[..35])),
        libc::EINVAL
    );
    assert_eq!(errno(h.create("c", 0, "gvmsim-1", b"")), libc::EINVAL);
}

#[test]
fn create_rejects_malformed_uuids() {
    let (mut h, _) = host(Model::GvmSim, 0);
    for bad in [
        "0b2e3c4d11111-4a2b-8c3d-000000000001",
        "0b2e3c4g-1111-4a2b-8c3d-000000000001",
        "{b2e3c4d-1111-4a2b-8c3d-00000000000}",
        "0b2e3c4d-1111-4a2b-8c3d-00000000000\n",
    ] {
        assert_eq!(
            errno(h.create("c", 0, "gvmsim-1", bad.as_bytes())),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert!(h.devices().is_empty());
}

#[test]
fn upper_case_is_named_lower_case_and_duplicates_anywhere_are_eexist() {
    let (mut h, _) = host(Model::GvmSim, 0);
    let upper = U1.to_ascii_uppercase();
    assert_eq!(
        h.create("c", 0, "gvmsim-2", format!("{upper}\n").as_bytes())
            .ok()
            .as_deref(),
        Some(U1)
    );
    assert_eq!(
        errno(h.create("c", 0, "gvmsim-2", U1.as_bytes())),
        libc::EEXIST
    );
    assert_eq!(
        errno(h.create("c", 1, "gvmsim-5", upper.as_bytes())),
        libc::EEXIST
    );
    assert_eq!(h.devices().len(), 1);
}

#[test]
fn types_of_one_gpu_share_the_framebuffer_and_exhaustion_is_eusers() {
    let (mut h, _) = host(Model::GvmSim, 0);
    assert_eq!(h.available(0, "gvmsim-4"), 2);
    assert!(h.create("c", 0, "gvmsim-4", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert_eq!(h.available(0, "gvmsim-4"), 1);
    assert_eq!(h.available(0, "gvmsim-5"), 0);
    assert_eq!(h.available(0, "gvmsim-1"), 10);
    assert_eq!(h.available(1, "gvmsim-5"), 1, "the other GPU is untouched");
    assert_eq!(
        errno(h.create("c", 0, "gvmsim-5", U2.as_bytes())),
        libc::EUSERS
    );
    assert!(h.remove("r", U1, b"1\n").is_ok());
    assert_eq!(h.available(0, "gvmsim-5"), 1);
}

#[test]
fn mtty_pool_of_24_ports_exhausts_with_enospc() {
    let (mut h, _) = host(Model::Mtty, 0);
    assert_eq!(
        (h.available(0, "mtty-1"), h.available(0, "mtty-2")),
        (24, 12)
    );
    for i in 0..12u32 {
        let u = format!("00000000-0000-0000-0000-{i:012}");
        assert!(h.create("c", 0, "mtty-2", u.as_bytes()).is_ok());
        h.spawn_pending(usize::MAX);
    }
    assert_eq!((h.available(0, "mtty-1"), h.available(0, "mtty-2")), (0, 0));
    assert_eq!(
        errno(h.create("c", 0, "mtty-1", U1.as_bytes())),
        libc::ENOSPC
    );
}

#[test]
fn remove_follows_kstrtoul() {
    let (mut h, _) = host(Model::GvmSim, 0);
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert!(h.remove("r", U1, b"0\n").is_ok());
    assert!(h.devices().contains_key(U1), "0 does nothing");
    assert_eq!(errno(h.remove("r", U1, b"yes")), libc::EINVAL);
    assert_eq!(errno(h.remove("r", U1, b"")), libc::EINVAL);
    assert_eq!(errno(h.remove("r", U1, b"1\n\n")), libc::EINVAL);
    assert!(h.devices().contains_key(U1));
    assert!(h.remove("r", U1, b"0x1").is_ok());
    assert!(h.devices().is_empty());
    assert_eq!(parse_kstrtoul(b"010\n"), Some(8));
    assert_eq!(parse_kstrtoul(b"+7"), Some(7));
    assert_eq!(parse_kstrtoul(b"-1"), None);
}

#[test]
fn iommu_groups_are_fresh_per_device() {
    let (mut h, _) = host(Model::GvmSim, 0);
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert!(h.remove("r", U1, b"1").is_ok());
    assert!(h.create("c", 0, "gvmsim-1", U2.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert!(h.create("c", 1, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    let groups: Vec<u32> = h.devices().values().map(|d| d.iommu_group).collect();
    assert_eq!(groups, vec![2, 1]);
}

#[test]
fn owners_per_vgpu_are_spawned_on_create_and_killed_on_remove_in_kill_mode() {
    let (mut h, procs) = host(Model::GvmSim, 2);
    h.set_held_remove(HeldRemove::Kill);
    assert!(h.create("c", 1, "gvmsim-1", U1.as_bytes()).is_ok());
    assert!(
        h.owners().is_empty(),
        "owners start after the create returns"
    );
    assert_eq!(h.spawn_pending(1), 1);
    assert_eq!(h.spawn_pending(8), 0);
    assert_eq!(h.owners().len(), 2);
    assert!(h
        .owners()
        .values()
        .all(|o| o.uuid == U1 && o.client.gpu == 8));
    assert_eq!(h.registered_pids().len(), 2);
    assert!(h.remove("r", U1, b"1").is_ok());
    assert!(h.owners().is_empty());
    assert!(procs.lock().alive.is_empty());
}

#[test]
fn removing_a_held_device_waits_for_its_owners_as_the_kernel_does() {
    let (mut h, procs) = host(Model::Mtty, 2);
    assert!(h.create("c", 0, "mtty-2", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    let pids: Vec<u32> = h.owners().keys().copied().collect();
    assert_eq!(pids.len(), 2);
    let before = h.available(0, "mtty-1");
    assert_eq!(h.remove("r", U1, b"1\n").ok(), Some(Removal::Waiting));
    let woke = Arc::new(Mutex::new(0));
    let w = woke.clone();
    h.when_removed(
        U1,
        Box::new(move || *w.lock().unwrap_or_else(|p| p.into_inner()) += 1),
    );
    // Off the bus and out of its type, still holding its ports, not removable again.
    assert!(h.live_device(U1).is_none());
    assert!(h.devices().contains_key(U1));
    assert!(h.devices_of_type(0, "mtty-2").is_empty());
    assert_eq!(h.available(0, "mtty-1"), before);
    assert_eq!(errno(h.remove("r", U1, b"1")), libc::ENOENT);
    assert_eq!(
        errno(h.create("c", 0, "mtty-1", U1.as_bytes())),
        libc::EEXIST
    );
    // No new owner may take it meanwhile.
    assert!(h.control("ctl", format!("spawn {U1}").as_bytes()).is_err());
    // One owner going is not enough; the last one is.
    assert!(h
        .control("ctl", format!("kill {}", pids[0]).as_bytes())
        .is_ok());
    assert_eq!(*woke.lock().unwrap_or_else(|p| p.into_inner()), 0);
    assert!(h.devices().contains_key(U1));
    // The other exits by itself and is reaped by the clock.
    procs.lock().exited.push(pids[1]);
    h.advance(1);
    assert_eq!(*woke.lock().unwrap_or_else(|p| p.into_inner()), 1);
    assert!(!h.devices().contains_key(U1));
    assert_eq!(h.available(0, "mtty-1"), before + 2);
    // Waiting for a device already gone answers at once.
    let w = woke.clone();
    h.when_removed(
        U1,
        Box::new(move || *w.lock().unwrap_or_else(|p| p.into_inner()) += 1),
    );
    assert_eq!(*woke.lock().unwrap_or_else(|p| p.into_inner()), 2);
}

#[test]
fn a_device_without_owners_goes_at_once_and_shutdown_wakes_waiting_writers() {
    let (mut h, _) = host(Model::Mtty, 1);
    assert!(h.create("c", 0, "mtty-1", U1.as_bytes()).is_ok());
    assert!(h.create("c", 0, "mtty-1", U2.as_bytes()).is_ok());
    // U2's owner is still queued (not started): nothing holds it.
    assert_eq!(h.take_pending(1), vec![(U1.to_string(), 0)]);
    h.spawn_pending(0);
    assert!(h.control("ctl", format!("spawn {U1}").as_bytes()).is_ok());
    assert_eq!(h.remove("r", U2, b"1").ok(), Some(Removal::Done));
    assert_eq!(h.remove("r", U1, b"1").ok(), Some(Removal::Waiting));
    let woke = Arc::new(Mutex::new(false));
    let w = woke.clone();
    h.when_removed(
        U1,
        Box::new(move || *w.lock().unwrap_or_else(|p| p.into_inner()) = true),
    );
    h.shutdown();
    assert!(*woke.lock().unwrap_or_else(|p| p.into_inner()));
}

#[test]
fn queued_owners_of_a_vgpu_removed_before_they_start_are_dropped() {
    let (mut h, procs) = host(Model::GvmSim, 3);
    h.set_held_remove(HeldRemove::Kill);
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert!(h.remove("r", U1, b"1").is_ok());
    assert_eq!(h.spawn_pending(usize::MAX), 0);
    assert!(h.owners().is_empty());
    assert!(procs.lock().alive.is_empty());
}

#[test]
fn control_spawn_set_kill_and_external_exit() {
    let (mut h, procs) = host(Model::GvmSim, 0);
    assert_eq!(
        errno(h.control("ctl", format!("spawn {U1}").as_bytes())),
        libc::ENOENT
    );
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    assert!(h
        .control(
            "ctl",
            format!("spawn {U1} gpu=8 memory=2048 busy=0 register_delay_ms=50\n").as_bytes()
        )
        .is_ok());
    let pid = *h.owners().keys().next().unwrap_or(&0);
    assert_eq!(h.owners_text(), format!("{pid} {U1} 8 0 2048 0 0\n"));
    assert!(
        h.registered_pids().is_empty(),
        "not registered before the delay"
    );
    h.advance(49_000);
    assert!(h.client(pid, 8).is_none());
    h.advance(50_000);
    assert_eq!(h.registered_pids(), vec![pid]);
    assert!(h
        .control("ctl", format!("set {pid} memory=4096 busy=1").as_bytes())
        .is_ok());
    assert_eq!(
        h.client(pid, 8).map(|c| (c.memory_wanted, c.busy)),
        Some((4096, true))
    );
    for bad in [
        "bogus",
        "spawn",
        "set 1 memory=1",
        "kill x",
        &format!("set {pid} busy=2"),
        &format!("spawn {U1} foo=1"),
    ] {
        assert!(h.control("ctl", bad.as_bytes()).is_err(), "{bad}");
    }
    assert_eq!(errno(h.control("ctl", b"kill 99999")), libc::ENOENT);
    // Killed from outside: the next tick reaps it.
    procs.lock().exited.push(pid);
    h.advance(60_000);
    assert!(h.owners().is_empty());
    assert!(h.control("ctl", format!("spawn {U1}").as_bytes()).is_ok());
    let pid2 = *h.owners().keys().next().unwrap_or(&0);
    assert!(h.control("ctl", format!("kill {pid2}").as_bytes()).is_ok());
    assert!(h.owners().is_empty());
}

#[test]
fn gvm_knobs_validate_like_the_driver() {
    let (mut h, _) = host(Model::GvmSim, 1);
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    let pid = h.registered_pids()[0];
    let cases: [(&str, &[u8], Option<i32>); 12] = [
        ("memory.limit", b"1073741824\n", None),
        ("memory.limit", b"18446744073709551615", None),
        ("memory.limit", b"-1", Some(libc::EINVAL)),
        ("memory.limit", b"18446744073709551616", Some(libc::EINVAL)),
        (
            "memory.limit",
            b"00000000000000000000000000000001",
            Some(libc::EINVAL),
        ),
        ("compute.priority", b"16", None),
        ("compute.priority", b"17", Some(libc::EINVAL)),
        ("compute.priority", b"0x2", Some(libc::EINVAL)),
        ("compute.freeze", b"1\n", None),
        ("compute.freeze", b"2", Some(libc::EINVAL)),
        ("memory.current", b"1", Some(libc::EACCES)),
        ("gcgroup.stat", b"1", Some(libc::EACCES)),
    ];
    for (knob, data, want) in cases {
        let got = h
            .gvm_store("k", pid, 0, knob, data)
            .err()
            .map(|e| e.errno());
        assert_eq!(got, want, "{knob} <- {:?}", String::from_utf8_lossy(data));
    }
    assert_eq!(
        h.client(pid, 0).map(|c| (c.priority, c.frozen)),
        Some((16, true))
    );
    assert_eq!(
        errno(h.gvm_store("k", pid, 8, "compute.freeze", b"1")),
        libc::ENOENT
    );
    assert_eq!(
        errno(h.gvm_store("k", 4242, 0, "compute.freeze", b"1")),
        libc::ENOENT
    );
}

#[test]
fn frozen_owner_stops_progress_on_the_clock() {
    let (mut h, _) = host(Model::GvmSim, 2);
    assert!(h.create("c", 0, "gvmsim-1", U1.as_bytes()).is_ok());
    h.spawn_pending(usize::MAX);
    let pids = h.registered_pids();
    h.advance(100_000);
    let t0: Vec<u64> = pids
        .iter()
        .filter_map(|p| h.client(*p, 0).map(|c| c.gpu_time_us))
        .collect();
    assert_eq!(t0, vec![50_000, 50_000]);
    assert!(h.gvm_store("k", pids[0], 0, "compute.freeze", b"1").is_ok());
    h.advance(200_000);
    let t1: Vec<u64> = pids
        .iter()
        .filter_map(|p| h.client(*p, 0).map(|c| c.gpu_time_us))
        .collect();
    assert_eq!(t1, vec![50_000, 150_000]);
}

#[test]
fn unregistering_a_parent_removes_its_devices_and_hides_it_until_registered() {
    let (mut h, procs) = host(Model::Mtty, 1);
    h.create("c", 0, "mtty-1", U1.as_bytes()).unwrap();
    h.spawn_pending(usize::MAX);
    h.create("c", 0, "mtty-2", U2.as_bytes()).unwrap();
    h.spawn_pending(usize::MAX);
    assert_eq!(procs.lock().alive.len(), 2);

    h.control("control", b"unregister mtty").unwrap();
    assert!(h.devices().is_empty(), "live devices go with the parent");
    assert!(procs.lock().alive.is_empty(), "their owners are killed");
    let bus = crate::tree::list(&h, &["sys", "class", "mdev_bus"]).unwrap();
    assert!(bus.is_empty(), "the parent left mdev_bus");
    assert_eq!(
        errno(crate::tree::stat(
            &h,
            &["sys", "devices", "virtual", "mtty", "mtty"]
        )),
        libc::ENOENT
    );
    assert_eq!(
        errno(h.control("control", b"unregister mtty")),
        libc::ENOENT
    );

    h.control("control", b"register mtty").unwrap();
    assert_eq!(errno(h.control("control", b"register mtty")), libc::EEXIST);
    assert_eq!(
        errno(h.control("control", b"register nosuch")),
        libc::ENOENT
    );
    let bus = crate::tree::list(&h, &["sys", "class", "mdev_bus"]).unwrap();
    assert_eq!(bus.len(), 1);
    // The pool is whole again.
    assert_eq!(h.available(0, "mtty-1"), 24);
}

#[test]
fn control_drives_the_sriov_gpus() {
    let (mut h, _) = host(Model::GvmSim, 0);
    h.set_sriov_gpus(1);
    let pf = "0000:41:00.0";
    assert_eq!(
        errno(h.control("ctl", format!("vf-heterogeneous {pf} on").as_bytes())),
        libc::EINVAL,
        "no VFs yet"
    );
    let pf_index = h.sriov().pf(pf).unwrap_or_else(|| panic!("{pf}"));
    h.sriov_mut()
        .set_num_vfs("n", pf_index, b"2")
        .unwrap_or_else(|e| panic!("{e}"));
    for bad in [
        format!("vf-heterogeneous {pf}"),
        format!("vf-heterogeneous {pf} yes"),
        format!("vf-heterogeneous {pf} on off"),
        "vf-hold".to_string(),
        "vf-reset now".to_string(),
    ] {
        assert_eq!(
            errno(h.control("ctl", bad.as_bytes())),
            libc::EINVAL,
            "{bad}"
        );
    }
    h.control("ctl", format!("vf-heterogeneous {pf} on\n").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(h.sriov().gpus()[0].heterogeneous);
    assert_eq!(
        errno(h.control("ctl", b"vf-hold 0000:41:00.4")),
        libc::EINVAL,
        "no vGPU on it"
    );
    h.sriov_mut()
        .set_type("t", 0, 0, b"1047")
        .unwrap_or_else(|e| panic!("{e}"));
    h.control("ctl", b"vf-hold 0000:41:00.4")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(h.sriov().gpus()[0].vfs[0].held);
    h.control("ctl", b"vf-release 0000:41:00.4")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        errno(h.control("ctl", b"vf-release 0000:41:00.9")),
        libc::ENOENT
    );
    h.control("ctl", b"vf-reset\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(h.sriov().gpus()[0].vfs.is_empty());
}
