//! Unit tests of the libvirt lifecycle: the pure map, and the daemon core driven by watch
//! events over in-memory ports (no libvirt, no sysfs).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use gvm_host_root::HostRoot;
use gvm_libvirt::{DomainBinding, DomainEvent, DomainInfo, DomainState, MetaVgpu};
use gvm_proto::{Call, Request, Target};

use super::*;
use crate::backends::Backends;
use crate::daemon::{Daemon, Timing};
use crate::model::TypeSpec;
use crate::ports::{DeviceInfo, MdevPort, PortResult, TypeInfo, TypePort};
use gvm_gcgroup::{GcgroupBackend, GcgroupSnapshot, MemoryLimit, Priority};

fn u(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn binding(name: &str, state: DomainState, vgpus: &[Uuid]) -> DomainBinding {
    DomainBinding {
        domain: name.to_string(),
        state,
        info: DomainInfo {
            name: name.to_string(),
            metadata: vgpus
                .iter()
                .map(|u| MetaVgpu {
                    uuid: *u,
                    type_name: None,
                    parent: None,
                    mdev_type: None,
                    persistent: true,
                    created: false,
                })
                .collect(),
            ..DomainInfo::default()
        },
    }
}

fn event(name: &str, kind: EventKind, vgpus: &[Uuid]) -> WatchEvent {
    WatchEvent::Domain(DomainEvent {
        domain: name.to_string(),
        uuid: None,
        kind,
        detail: 0,
        vgpus: vgpus.to_vec(),
    })
}

fn watched() -> Domains {
    Domains {
        uri: Some("test:///x".into()),
        ..Domains::default()
    }
}

#[test]
fn the_snapshot_keeps_active_domains_and_marks_paused_ones() {
    let mut d = watched();
    let t = d.apply(&WatchEvent::Connected {
        domains: vec![
            binding("off", DomainState::ShutOff, &[u(1)]),
            binding("paused", DomainState::Paused, &[u(2)]),
            binding("run", DomainState::Running, &[u(3), u(4)]),
        ],
    });
    assert_eq!(
        t,
        Transition::Connected {
            active: 2,
            paused: 1
        }
    );
    assert!(
        d.vgpus_of("off").is_none(),
        "a shut-off domain holds nothing"
    );
    assert_eq!(d.vgpus_of("run"), Some(&[u(3), u(4)][..]));
    assert_eq!(d.domain_of(&u(4)), Some("run"));
    assert!(d.pause_wanted(&u(2)));
    assert!(!d.pause_wanted(&u(3)));
    assert!(!d.pause_wanted(&u(1)));
}

#[test]
fn suspend_resume_and_stop_move_the_map() {
    let mut d = watched();
    d.apply(&WatchEvent::Connected { domains: vec![] });
    assert!(matches!(
        d.apply(&event("vm", EventKind::Started, &[u(1)])),
        Transition::Running { .. }
    ));
    assert!(!d.pause_wanted(&u(1)));
    assert!(matches!(
        d.apply(&event("vm", EventKind::Suspended, &[u(1)])),
        Transition::Paused { .. }
    ));
    assert!(d.pause_wanted(&u(1)));
    d.apply(&event("vm", EventKind::Resumed, &[u(1)]));
    assert!(!d.pause_wanted(&u(1)));
    d.apply(&event("vm", EventKind::Suspended, &[u(1)]));
    assert_eq!(
        d.apply(&event("vm", EventKind::Defined, &[])),
        Transition::Ignored
    );
    // A stopped domain's event may list fewer vGPUs (live-only metadata is gone): union.
    let t = d.apply(&event("vm", EventKind::Stopped, &[u(7)]));
    assert_eq!(
        t,
        Transition::Ended {
            domain: "vm".into(),
            kind: EventKind::Stopped,
            detail: 0,
            vgpus: vec![u(1), u(7)],
        }
    );
    assert!(d.vgpus_of("vm").is_none());
    assert!(!d.pause_wanted(&u(1)), "an ended domain holds no pause");
}

#[test]
fn pause_changes_wait_for_the_first_snapshot_and_repair_missed_events() {
    let mut d = watched();
    // Not synced yet: a stored pause is left alone (libvirtd may just be slow to answer).
    assert!(d.pause_changes([(u(1), true)]).is_empty());
    // The snapshot after a reconnect says vm1 runs (its resume was missed) and vm2 paused.
    d.apply(&WatchEvent::Connected {
        domains: vec![
            binding("vm1", DomainState::Running, &[u(1)]),
            binding("vm2", DomainState::Paused, &[u(2)]),
        ],
    });
    let changes = d.pause_changes([(u(1), true), (u(2), false), (u(3), false)]);
    assert_eq!(changes, vec![(u(1), false), (u(2), true)]);
    // A disconnect keeps the picture: nothing is thawed while libvirtd restarts.
    d.apply(&WatchEvent::Disconnected {
        reason: "eof".into(),
    });
    assert!(!d.connected());
    assert!(d.pause_changes([(u(2), true)]).is_empty());

    // Without libvirt every leftover pause is cleared.
    let off = Domains::default();
    assert_eq!(off.pause_changes([(u(5), true)]), vec![(u(5), false)]);
}

#[test]
fn the_uri_is_the_flag_or_the_system_daemon_on_a_real_host_only() {
    assert_eq!(
        choose_uri(Some("qemu:///session"), false, false, true).as_deref(),
        Some("qemu:///session")
    );
    assert_eq!(choose_uri(Some("qemu:///session"), true, true, true), None);
    // On a real host the system daemon is followed whether it runs yet or not.
    assert_eq!(
        choose_uri(None, false, true, true).as_deref(),
        Some("qemu:///system")
    );
    assert_eq!(
        choose_uri(None, false, true, false),
        None,
        "a build without libvirt follows it only when told"
    );
    assert_eq!(
        choose_uri(None, false, false, true),
        None,
        "a test root needs the flag"
    );
    let Ok(dir) = tempfile::tempdir() else { return };
    let host = HostRoot::new(dir.path());
    assert_eq!(uri_for_host(&host, None, false), None, "not a real host");
}

#[test]
fn a_wait_for_libvirtd_and_a_lost_connection_are_logged_once_each() {
    let mut d = Domains::default();
    d.follow("qemu:///system", None);
    let down = |reason: &str| WatchEvent::Disconnected {
        reason: reason.into(),
    };
    let mut observed = Observed::default();
    let mut resolver = Resolver::new(HostRoot::new("/nonexistent"));
    d.on_event(&down("no socket"), &mut observed, &mut resolver);
    assert!(d.waiting_logged && !d.synced);
    d.on_event(&down("connection refused"), &mut observed, &mut resolver);
    assert!(d.waiting_logged, "a second reason is no new wait");
    d.on_event(
        &WatchEvent::Connected { domains: vec![] },
        &mut observed,
        &mut resolver,
    );
    assert!(!d.waiting_logged && d.connected());
    // A loss after a connection is a new outage, logged again.
    d.on_event(&down("end of file"), &mut observed, &mut resolver);
    assert!(d.waiting_logged && !d.connected());
}

// ---- The daemon core over in-memory ports ----

const PARENT: &str = "p0";
const KTYPE: &str = "t-1";

#[derive(Debug, Default)]
struct Host {
    devices: Vec<Uuid>,
    /// (pid, gpu) → frozen
    frozen: BTreeMap<(u32, u32), bool>,
    /// Pids holding a device open (its VFIO group), by device.
    holders: BTreeMap<Uuid, Vec<u32>>,
}

type SharedHost = Arc<Mutex<Host>>;

fn lock(h: &SharedHost) -> std::sync::MutexGuard<'_, Host> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

struct FakeMdev(SharedHost);

impl MdevPort for FakeMdev {
    fn parent_names(&self) -> PortResult<Vec<String>> {
        Ok(vec![PARENT.into()])
    }
    fn parent_types(&self, _: &str) -> PortResult<Vec<TypeInfo>> {
        Ok(vec![TypeInfo {
            id: KTYPE.into(),
            name: None,
        }])
    }
    fn device_names(&self) -> PortResult<Vec<String>> {
        Ok(lock(&self.0)
            .devices
            .iter()
            .map(|u| u.to_string())
            .collect())
    }
    fn devices(&self) -> PortResult<Vec<DeviceInfo>> {
        Ok(lock(&self.0)
            .devices
            .iter()
            .map(|u| DeviceInfo {
                uuid: *u,
                parent: PARENT.into(),
                mdev_type: KTYPE.into(),
            })
            .collect())
    }
    fn device(&self, uuid: Uuid) -> PortResult<DeviceInfo> {
        Ok(DeviceInfo {
            uuid,
            parent: PARENT.into(),
            mdev_type: KTYPE.into(),
        })
    }
    fn create(&self, _: &str, _: &str, uuid: Uuid) -> PortResult<()> {
        lock(&self.0).devices.push(uuid);
        Ok(())
    }
    fn remove(&self, uuid: Uuid) -> PortResult<()> {
        lock(&self.0).devices.retain(|d| *d != uuid);
        Ok(())
    }
    fn holders(&self, uuid: Uuid) -> PortResult<Vec<gvm_mdev::Holder>> {
        Ok(lock(&self.0)
            .holders
            .get(&uuid)
            .into_iter()
            .flatten()
            .map(|pid| gvm_mdev::Holder {
                pid: *pid,
                comm: Some("qemu-system-x86".into()),
                domain: None,
            })
            .collect())
    }
}

struct FakeGc(SharedHost);

impl GcgroupBackend for FakeGc {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn processes(&self) -> gvm_gcgroup::Result<Vec<u32>> {
        let mut p: Vec<u32> = lock(&self.0).frozen.keys().map(|k| k.0).collect();
        p.dedup();
        Ok(p)
    }
    fn gpus(&self, pid: u32) -> gvm_gcgroup::Result<Vec<u32>> {
        Ok(lock(&self.0)
            .frozen
            .keys()
            .filter(|k| k.0 == pid)
            .map(|k| k.1)
            .collect())
    }
    fn read(&self, pid: u32, gpu: u32) -> gvm_gcgroup::Result<GcgroupSnapshot> {
        let frozen = lock(&self.0).frozen.get(&(pid, gpu)).copied();
        frozen
            .map(|frozen| GcgroupSnapshot {
                frozen,
                ..GcgroupSnapshot::default()
            })
            .ok_or_else(|| gone(pid))
    }
    fn set_memory_limit(&self, pid: u32, gpu: u32, _: MemoryLimit) -> gvm_gcgroup::Result<()> {
        self.set(pid, gpu, None)
    }
    fn set_priority(&self, pid: u32, gpu: u32, _: Priority) -> gvm_gcgroup::Result<()> {
        self.set(pid, gpu, None)
    }
    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> gvm_gcgroup::Result<()> {
        self.set(pid, gpu, Some(frozen))
    }
}

impl FakeGc {
    /// A write to (pid, gpu): only the freeze state is kept.
    fn set(&self, pid: u32, gpu: u32, frozen: Option<bool>) -> gvm_gcgroup::Result<()> {
        let mut h = lock(&self.0);
        let slot = h.frozen.get_mut(&(pid, gpu)).ok_or_else(|| gone(pid))?;
        if let Some(f) = frozen {
            *slot = f;
        }
        Ok(())
    }
}

fn gone(pid: u32) -> gvm_gcgroup::Error {
    gvm_gcgroup::Error::ProcessGone { pid }
}

struct FakeTypes;

impl TypePort for FakeTypes {
    fn resolve(&self, _: &str, _: Option<&str>) -> Option<TypeSpec> {
        Some(TypeSpec {
            name: "fake-1".into(),
            memory_limit: 1 << 30,
            priority: 4,
            share: None,
            host_swap: false,
        })
    }
    fn binds(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    host: SharedHost,
    daemon: Daemon,
}

/// A daemon with vGPUs `vgpus`, each owned by pid 100 + n (GPU 0) through its environment.
fn rig(vgpus: &[Uuid]) -> Option<Rig> {
    let dir = tempfile::tempdir().ok()?;
    let proc_dir = dir.path().join("proc");
    let shared = Arc::new(Mutex::new(Host::default()));
    for (n, uuid) in vgpus.iter().enumerate() {
        let pid = 100 + n as u32;
        let p = proc_dir.join(pid.to_string());
        std::fs::create_dir_all(&p).ok()?;
        std::fs::write(p.join("environ"), format!("GVM_VGPU_UUID={uuid}\0")).ok()?;
        // Root's process: its claim is allowed.
        std::fs::write(p.join("status"), "Name:\tqemu\nUid:\t0\t0\t0\t0\n").ok()?;
        let mut h = lock(&shared);
        h.devices.push(*uuid);
        h.frozen.insert((pid, 0), false);
    }
    let host = HostRoot::new(dir.path()).with_proc_dir(&proc_dir);
    let mut daemon = Daemon::new(
        host.clone(),
        &host,
        Box::new(FakeMdev(shared.clone())),
        Backends::of(Box::new(FakeGc(shared.clone()))),
        Box::new(FakeTypes),
        Timing::default(),
    )
    .ok()?;
    daemon.use_libvirt("test:///x", Some(host.path(STATUS_FILE)));
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    Some(Rig {
        _dir: dir,
        host: shared,
        daemon,
    })
}

impl Rig {
    fn frozen(&self, pid: u32) -> bool {
        lock(&self.host)
            .frozen
            .get(&(pid, 0))
            .copied()
            .unwrap_or(false)
    }

    fn call(&mut self, call: Call) -> gvm_proto::Response {
        self.daemon.handle(Request { id: 1, call })
    }
}

fn target(t: &str) -> Target {
    Target { target: t.into() }
}

#[test]
fn suspend_freezes_resume_thaws_and_a_user_freeze_survives() {
    let (a, b) = (u(0xa), u(0xb));
    let Some(mut r) = rig(&[a, b]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    assert!(r
        .daemon
        .libvirt_event(&WatchEvent::Connected {
            domains: vec![binding("vm", DomainState::Running, &[a])],
        })
        .is_empty());
    assert!(!r.frozen(100));

    r.daemon
        .libvirt_event(&event("vm", EventKind::Suspended, &[a]));
    assert!(r.frozen(100), "the paused domain's vGPU is frozen");
    assert!(!r.frozen(101), "another vGPU is untouched");
    let info = r.daemon.info(&a);
    assert!(info.knobs.frozen, "show reports the pause freeze");
    assert_eq!(info.domain.as_deref(), Some("vm"));

    r.daemon
        .libvirt_event(&event("vm", EventKind::Resumed, &[a]));
    assert!(!r.frozen(100), "resume thaws what the pause froze");

    // A user freeze by domain name, then a suspend/resume cycle: still frozen.
    assert!(r.call(Call::Freeze(target("vm"))).error.is_none());
    assert!(r.frozen(100));
    r.daemon
        .libvirt_event(&event("vm", EventKind::Suspended, &[a]));
    r.daemon
        .libvirt_event(&event("vm", EventKind::Resumed, &[a]));
    assert!(r.frozen(100), "resume never thaws a user freeze");
    assert!(r.call(Call::Thaw(target("vm"))).error.is_none());
    assert!(!r.frozen(100));

    // The status file tells what the daemon believes.
    let status = std::fs::read_to_string(r.daemon.host().path(STATUS_FILE)).unwrap_or_default();
    assert!(status.contains("\"vm\""), "{status}");
}

#[test]
fn a_reconnect_snapshot_repairs_missed_events_and_a_stop_clears_the_pause() {
    let (a, b) = (u(0xa), u(0xb));
    let Some(mut r) = rig(&[a, b]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    r.daemon.libvirt_event(&WatchEvent::Connected {
        domains: vec![
            binding("vm1", DomainState::Paused, &[a]),
            binding("vm2", DomainState::Running, &[b]),
        ],
    });
    assert!(r.frozen(100) && !r.frozen(101));
    // libvirtd restarts; meanwhile vm1 was resumed and vm2 paused, unseen.
    r.daemon.libvirt_event(&WatchEvent::Disconnected {
        reason: "eof".into(),
    });
    assert!(r.frozen(100), "nothing thaws while disconnected");
    r.daemon.libvirt_event(&WatchEvent::Connected {
        domains: vec![
            binding("vm1", DomainState::Running, &[a]),
            binding("vm2", DomainState::Paused, &[b]),
        ],
    });
    assert!(
        !r.frozen(100) && r.frozen(101),
        "resynced from the snapshot"
    );

    // Destroying the paused domain drops its binding and its pause freeze.
    r.daemon
        .libvirt_event(&event("vm2", EventKind::Stopped, &[b]));
    assert!(!r.frozen(101));
    assert_eq!(r.daemon.info(&b).domain, None);
    let resp = r.call(Call::Show(target("vm2")));
    assert_eq!(
        resp.error.map(|e| e.code),
        Some(gvm_proto::ErrorCode::NotFound)
    );
}

#[test]
fn set_resolves_a_domain_name_through_the_map() {
    let (a, b) = (u(0xa), u(0xb));
    let Some(mut r) = rig(&[a, b]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    r.daemon.libvirt_event(&WatchEvent::Connected {
        domains: vec![binding("vm", DomainState::Running, &[b])],
    });
    let resp = r.call(Call::Set(gvm_proto::SetParams {
        target: "vm".into(),
        memory_limit: None,
        priority: Some(3),
        share: None,
        clear: false,
        mode: gvm_proto::SetMode::Live,
        force: false,
    }));
    assert!(resp.error.is_none(), "{:?}", resp.error);
    assert_eq!(r.daemon.info(&b).knobs.priority, 3);
    assert_eq!(
        r.daemon.info(&a).knobs.priority,
        4,
        "only the domain's vGPU"
    );
}

#[test]
fn an_ended_domain_loses_its_qemu_owner() {
    let a = u(0xa);
    let Some(mut r) = rig(&[a]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    // A QEMU (pid 300) named by libvirt's run directory, registered on GPU 0.
    let lv = r.daemon.host().libvirt_run_dir();
    assert!(std::fs::create_dir_all(&lv).is_ok());
    assert!(std::fs::write(lv.join("vm.pid"), "300\n").is_ok());
    let xml = format!(
        "<domain><metadata><gvm:vgpus><gvm:vgpu uuid='{a}'/></gvm:vgpus></metadata></domain>"
    );
    assert!(std::fs::write(lv.join("vm.xml"), xml).is_ok());
    lock(&r.host).frozen.insert((300, 0), false);
    r.daemon.tick(Instant::now(), true);
    let owners = r.daemon.info(&a).owners;
    assert!(owners.contains(&300), "QEMU resolved as owner: {owners:?}");

    assert!(std::fs::remove_file(lv.join("vm.pid")).is_ok());
    assert!(std::fs::remove_file(lv.join("vm.xml")).is_ok());
    r.daemon
        .libvirt_event(&event("vm", EventKind::Stopped, &[a]));
    let owners = r.daemon.info(&a).owners;
    assert_eq!(owners, vec![100], "only the environment owner is left");
}

#[test]
fn stop_of_a_held_vgpu_is_refused_naming_holder_and_domain_and_changes_nothing() {
    let (a, b) = (u(0xa), u(0xb));
    let Some(mut r) = rig(&[a, b]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    r.daemon.libvirt_event(&WatchEvent::Connected {
        domains: vec![binding("vm", DomainState::Running, &[a])],
    });
    lock(&r.host).holders.insert(a, vec![4242]);
    let resp = r.call(Call::Stop(target(&a.to_string())));
    let Some(e) = resp.error else {
        panic!("a held vGPU was stopped");
    };
    assert_eq!(e.code, gvm_proto::ErrorCode::Conflict);
    for part in [
        "pid 4242 (qemu-system-x86)",
        "libvirt domain vm",
        "`virsh shutdown vm`",
        &format!("`gvm-vgpu detach vm --uuid {a}`"),
        "--wait",
        "nothing was changed",
    ] {
        assert!(e.message.contains(part), "{part}: {}", e.message);
    }
    assert!(lock(&r.host).devices.contains(&a), "still there");
    assert!(r.daemon.observed.devices.contains_key(&a));
    // An unheld vGPU stops at once; the held one once its holder let go.
    assert!(r.call(Call::Stop(target(&b.to_string()))).error.is_none());
    lock(&r.host).holders.clear();
    assert!(r.call(Call::Stop(target(&a.to_string()))).error.is_none());
    assert!(lock(&r.host).devices.is_empty());
}

#[test]
fn a_domains_qemu_found_by_the_libvirt_rule_and_by_its_fd_is_named_once_with_its_domain() {
    let a = u(0xa);
    let Some(mut r) = rig(&[a]) else {
        panic!("the test rig could not be built in a temp dir");
    };
    r.daemon.libvirt_event(&WatchEvent::Connected {
        domains: vec![binding("vm", DomainState::Running, &[a])],
    });
    lock(&r.host).holders.insert(a, vec![4242]);
    let owners = r.daemon.observed.owners.entry(a).or_default();
    owners.insert(4242, gvm_proto::OwnerRule::Libvirt);
    owners.insert(4343, gvm_proto::OwnerRule::Libvirt);
    let held = match r.daemon.holders_of(&a) {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    };
    let got: Vec<(u32, Option<&str>)> = held.iter().map(|h| (h.pid, h.domain.as_deref())).collect();
    // pid 100 is an environment owner: GPU work, not a VFIO holder.
    assert_eq!(got, [(4242, Some("vm")), (4343, Some("vm"))]);
}
