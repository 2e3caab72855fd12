//! gvm-libvirt against a real libvirtd (Debian's libvirt 9 with QEMU under TCG) and the
//! simulated host. Every test skips with a printed reason when its facilities are missing.
//!
//! Not provable here: a domain actually *started* with an mdev hostdev (libvirt refuses with
//! "Mediated host device assignment requires VFIO support" on a host without VFIO). The tests
//! stop at the definition for hostdevs, and bind the vGPU to a running domain through gvm's
//! metadata element instead, which is what the daemon and the watch read.

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use gvm_catalog::Catalog;
use gvm_libvirt::domain_xml::{self, MetaVgpu};
use gvm_libvirt::{
    attach, detach, AttachRequest, Connection, DetachHow, DomainState, EventKind, Target,
    WatchEvent,
};
use gvm_mdev::MdevHost;
use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use uuid::Uuid;

fn gvm_metadata(entries: &[MetaVgpu]) -> String {
    domain_xml::metadata_xml(entries)
        .replacen(
            "<vgpus>",
            &format!("<gvm:vgpus xmlns:gvm='{}'>", gvm_libvirt::NAMESPACE),
            1,
        )
        .replace("<vgpu ", "<gvm:vgpu ")
        .replace("</vgpus>", "</gvm:vgpus>")
}

#[test]
fn virt_xml_validate_accepts_our_hostdev_and_rejects_a_bad_uuid() {
    if skip(
        "virt_xml_validate_accepts_our_hostdev_and_rejects_a_bad_uuid",
        require_command("virt-xml-validate"),
    ) {
        return;
    }
    let uuid = Uuid::new_v4();
    let devices = format!(
        "{}{}",
        domain_xml::hostdev_xml(&uuid, Some(false)),
        domain_xml::agent_channel_xml(std::path::Path::new("/run/gvm-vgpu/agent/x.sock")).unwrap()
    );
    let meta = gvm_metadata(&[MetaVgpu {
        uuid,
        type_name: Some("sim-4c".into()),
        parent: Some("0000:3b:00.0".into()),
        mdev_type: Some("gvmsim-1".into()),
        persistent: true,
        created: false,
    }]);
    let dir = tempfile::tempdir().unwrap();
    let validate = |xml: &str| {
        let f = dir.path().join("d.xml");
        std::fs::write(&f, xml).unwrap();
        Command::new("virt-xml-validate")
            .arg(&f)
            .arg("domain")
            .output()
            .unwrap()
    };
    let good = domain_xml("validate", &devices, &meta);
    let out = validate(&good);
    assert!(
        out.status.success(),
        "virt-xml-validate rejected our XML: {}\n{good}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = good.replace(&uuid.to_string(), "not-a-uuid");
    assert!(!validate(&bad).status.success(), "a bad UUID validated");
}

#[test]
fn the_example_domain_validates_and_names_its_vgpu() {
    if skip(
        "the_example_domain_validates_and_names_its_vgpu",
        require_command("virt-xml-validate"),
    ) {
        return;
    }
    let path = gvm_testkit::workspace_root().join("libvirt/examples/domain-vgpu.xml");
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = domain_xml::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let uuid = Uuid::try_parse("4b20d080-1b54-4048-85b3-a6a62d165c01").unwrap();
    assert_eq!(info.vgpus(), vec![uuid]);
    assert!(info.meta(&uuid).is_some_and(|m| m.persistent));
    assert_eq!(info.agent_sockets.len(), 1);
}

#[test]
fn virsh_define_and_attach_device_config_take_our_hostdev() {
    if skip(
        "virsh_define_and_attach_device_config_take_our_hostdev",
        require_libvirtd(),
    ) {
        return;
    }
    let name = unique_name("virsh");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let uuid = Uuid::new_v4();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hostdev.xml");
    std::fs::write(&f, domain_xml::hostdev_xml(&uuid, None)).unwrap();
    virsh_ok(&["attach-device", &name, path_str(&f), "--config"]);
    let info = domain_xml::parse(&dom.dumpxml(true)).unwrap();
    assert!(
        info.has_hostdev(&uuid),
        "hostdev missing after attach-device"
    );
    virsh_ok(&["detach-device", &name, path_str(&f), "--config"]);
    let info = domain_xml::parse(&dom.dumpxml(true)).unwrap();
    assert!(
        !info.has_hostdev(&uuid),
        "hostdev still there after detach-device"
    );
}

/// A simulated host and a libvirtd, or the reason to skip.
fn sim_and_libvirtd(test: &str) -> Option<SimHost> {
    if skip(test, require_root_and_fuse()) || skip(test, require_libvirtd()) {
        return None;
    }
    Some(SimHost::start(SimModel::GvmSim, 2))
}

#[test]
fn attach_and_detach_round_trip_on_a_shut_off_domain() {
    let Some(sim) = sim_and_libvirtd("attach_and_detach_round_trip_on_a_shut_off_domain") else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let catalog = Catalog::builtin().unwrap();
    let name = unique_name("attach");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let conn = Connection::open(URI).unwrap();

    // --type: a new vGPU is created on the simulated host and attached to the definition.
    let req = AttachRequest::new(&name, Target::Type("sim-4c".into()), true, false);
    let a = attach(&conn, &mdev, Some(&catalog), &req).unwrap();
    assert!(a.created);
    assert!(a.apply.config && !a.apply.live);
    let dev = mdev.device(&a.uuid).unwrap();
    assert_eq!(dev.type_id, "gvmsim-1");
    let xml = dom.dumpxml(true);
    let info = domain_xml::parse(&xml).unwrap();
    assert!(info.has_hostdev(&a.uuid), "{xml}");
    let meta = info.meta(&a.uuid).expect("metadata entry written");
    assert_eq!(meta.type_name.as_deref(), Some("sim-4c"));
    assert_eq!(meta.parent.as_deref(), Some(dev.parent.as_str()));
    assert_eq!(meta.mdev_type.as_deref(), Some("gvmsim-1"));
    assert!(meta.persistent, "a --persistent attach keeps its vGPU");
    assert!(meta.created, "the entry says attach created the vGPU");
    assert!(xml.contains(&format!("xmlns:gvm=\"{}\"", gvm_libvirt::NAMESPACE)));

    // --uuid: an existing vGPU is reused, not created.
    let other = mdev.create(&dev.parent, "gvmsim-2", None).unwrap();
    let b = attach(
        &conn,
        &mdev,
        Some(&catalog),
        &AttachRequest::new(&name, Target::Uuid(other.uuid), false, false),
    )
    .unwrap();
    assert!(!b.created);
    assert!(
        b.apply.config,
        "a shut-off domain's current state is its definition"
    );
    let bindings = conn.bindings().unwrap();
    let mine = bindings.iter().find(|x| x.domain == name).unwrap();
    assert_eq!(mine.state, DomainState::ShutOff);
    assert_eq!(mine.vgpus(), vec![a.uuid, other.uuid]);
    assert_eq!(conn.domains_of(&other.uuid).unwrap(), vec![name.clone()]);

    // Detach undoes both: the vGPU attach created goes with it, the reused one stays.
    let d = detach(&conn, &mdev, &name, &a.uuid, DetachHow::new(true, false)).unwrap();
    assert!(d.hostdev && d.made_by_attach && d.removed_vgpu, "{d:?}");
    let info = domain_xml::parse(&dom.dumpxml(true)).unwrap();
    assert!(!info.has_hostdev(&a.uuid) && info.meta(&a.uuid).is_none());
    assert_eq!(info.vgpus(), vec![other.uuid]);
    assert!(mdev.device(&a.uuid).is_err(), "attach's vGPU removed");
    let d = detach(
        &conn,
        &mdev,
        &name,
        &other.uuid,
        DetachHow::new(true, false),
    )
    .unwrap();
    assert!(!d.made_by_attach && !d.removed_vgpu, "{d:?}");
    assert!(mdev.device(&other.uuid).is_ok(), "the user's vGPU stays");
    assert!(domain_xml::parse(&dom.dumpxml(true))
        .unwrap()
        .vgpus()
        .is_empty());
    let e = detach(
        &conn,
        &mdev,
        &name,
        &other.uuid,
        DetachHow::new(true, false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("has no vGPU"), "{e}");
    // Errors name the domain.
    let e = attach(
        &conn,
        &mdev,
        Some(&catalog),
        &AttachRequest::new(
            "gvmtest-no-such-domain",
            Target::Uuid(other.uuid),
            true,
            false,
        ),
    )
    .unwrap_err();
    assert!(e.to_string().contains("gvmtest-no-such-domain"), "{e}");
}

#[test]
fn a_running_domain_bound_by_metadata_reports_suspend_and_resume_with_its_vgpu() {
    let Some(sim) = sim_and_libvirtd(
        "a_running_domain_bound_by_metadata_reports_suspend_and_resume_with_its_vgpu",
    ) else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let catalog = Catalog::builtin().unwrap();
    let name = unique_name("events");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    virsh_ok(&["start", &name]);
    let conn = Connection::open(URI).unwrap();

    // Bind a new, transient vGPU to the running domain through the metadata only.
    let mut req = AttachRequest::new(&name, Target::Type("sim-4c".into()), false, true);
    req.hostdev = false;
    let a = attach(&conn, &mdev, Some(&catalog), &req).unwrap();
    assert!(a.created && !a.metadata.persistent && a.hostdev_xml.is_none());
    // The daemon's view: libvirt's live status file names the vGPU.
    let status = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.xml")).unwrap();
    assert_eq!(domain_xml::parse(&status).unwrap().vgpus(), vec![a.uuid]);

    let (tx, rx) = mpsc::channel();
    let handle = gvm_libvirt::watch(URI, move |ev| {
        let _ = tx.send(ev);
    })
    .unwrap();
    let connected = wait_for(&rx, Duration::from_secs(10), "Connected", |e| {
        matches!(e, WatchEvent::Connected { .. })
    });
    let WatchEvent::Connected { domains } = connected else {
        unreachable!()
    };
    let me = domains.iter().find(|d| d.domain == name).unwrap();
    assert_eq!(me.state, DomainState::Running);
    assert_eq!(me.vgpus(), vec![a.uuid]);

    let is = |kind: EventKind, name: String| move |e: &WatchEvent| matches!(e, WatchEvent::Domain(d) if d.domain == name && d.kind == kind);
    virsh_ok(&["suspend", &name]);
    let ev = wait_for(
        &rx,
        Duration::from_secs(10),
        "Suspended",
        is(EventKind::Suspended, name.clone()),
    );
    let WatchEvent::Domain(ev) = ev else {
        unreachable!()
    };
    assert_eq!(ev.vgpus, vec![a.uuid]);
    virsh_ok(&["resume", &name]);
    let ev = wait_for(
        &rx,
        Duration::from_secs(10),
        "Resumed",
        is(EventKind::Resumed, name.clone()),
    );
    let WatchEvent::Domain(ev) = ev else {
        unreachable!()
    };
    assert_eq!(ev.vgpus, vec![a.uuid]);

    // Detaching the transient binding removes the vGPU from the host.
    let d = detach(&conn, &mdev, &name, &a.uuid, DetachHow::new(false, true)).unwrap();
    assert!(d.removed_vgpu && !d.hostdev);
    assert!(mdev.device(&a.uuid).is_err());

    // Stopping is reported with the last known vGPUs (none now).
    virsh_ok(&["destroy", &name]);
    let ev = wait_for(
        &rx,
        Duration::from_secs(10),
        "Stopped",
        is(EventKind::Stopped, name.clone()),
    );
    let WatchEvent::Domain(ev) = ev else {
        unreachable!()
    };
    assert!(ev.vgpus.is_empty());
    handle.stop();
}

#[test]
fn the_hook_creates_missing_vgpus_from_real_dumpxml_and_removes_transient_ones() {
    let Some(sim) = sim_and_libvirtd(
        "the_hook_creates_missing_vgpus_from_real_dumpxml_and_removes_transient_ones",
    ) else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let parent = mdev.parents().unwrap()[0].name.clone();
    let kept = Uuid::new_v4();
    let transient = Uuid::new_v4();
    let meta = gvm_metadata(&[
        MetaVgpu {
            uuid: kept,
            type_name: Some("sim-10c".into()),
            parent: Some(parent.clone()),
            mdev_type: Some("gvmsim-2".into()),
            persistent: true,
            created: false,
        },
        MetaVgpu {
            uuid: transient,
            type_name: Some("sim-4c".into()),
            parent: None,
            mdev_type: None,
            persistent: false,
            created: false,
        },
    ]);
    let name = unique_name("hook");
    let dom = TestDomain::define(
        &name,
        &domain_xml(&name, &domain_xml::hostdev_xml(&kept, None), &meta),
    );
    let xml = dom.dumpxml(false);
    let hook = |op: &str, subop: &str, xml: &str| {
        // Through the installed script, as libvirt runs it: no `qemu` argument, root by env.
        let script = gvm_testkit::workspace_root().join("libvirt/hooks/qemu.d/gvm-vgpu");
        let mut child = Command::new("sh")
            .arg(script)
            .env("GVM_VGPU_HOOK", env!("CARGO_BIN_EXE_gvm-vgpu-hook"))
            .env("GVM_VGPU_ROOT", sim.root())
            .args([name.as_str(), op, subop, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(mdev.device(&kept).is_err() && mdev.device(&transient).is_err());

    let out = hook("prepare", "begin", &xml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let k = mdev.device(&kept).unwrap();
    assert_eq!(
        (k.parent.as_str(), k.type_id.as_str()),
        (parent.as_str(), "gvmsim-2")
    );
    assert_eq!(mdev.device(&transient).unwrap().type_id, "gvmsim-1");
    // Idempotent: a second prepare finds them present.
    assert!(hook("prepare", "begin", &xml).status.success());
    // Other steps do nothing.
    assert!(hook("started", "begin", &xml).status.success());

    let out = hook("release", "end", &xml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mdev.device(&transient).is_err(),
        "transient vGPU not removed"
    );
    assert!(mdev.device(&kept).is_ok(), "persistent vGPU removed");

    // A hostdev nothing says how to create fails the start with a clear message.
    let orphan = Uuid::new_v4();
    let name2 = unique_name("hook-orphan");
    let dom2 = TestDomain::define(
        &name2,
        &domain_xml(&name2, &domain_xml::hostdev_xml(&orphan, None), ""),
    );
    let out = hook("prepare", "begin", &dom2.dumpxml(false));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&orphan.to_string()) && err.contains("has no definition"),
        "{err}"
    );
    assert!(err.contains(&name2), "{err}");
}

/// Poll `f` every 20 ms until it holds or `timeout` passes; returns its last answer.
fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The pid of the simulator's owner of `uuid`, once started.
fn owner_of(sim: &SimHost, uuid: &Uuid) -> String {
    let mut pid = None;
    assert!(poll_until(Duration::from_secs(5), || {
        pid = sim
            .owners()
            .into_iter()
            .find(|o| o.get(1) == Some(&uuid.to_string()))
            .and_then(|o| o.first().cloned());
        pid.is_some()
    }));
    pid.expect("an owner started")
}

#[test]
fn a_live_detach_leaves_a_still_held_transient_vgpu_in_place_and_wait_removes_it_once_let_go() {
    let test = "a_live_detach_leaves_a_still_held_transient_vgpu_in_place";
    if skip(test, require_root_and_fuse()) || skip(test, require_libvirtd()) {
        return;
    }
    // As on a kernel: a held remove would block.
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--held-remove", "block"]);
    let mdev = MdevHost::new(sim.host_root());
    let catalog = Catalog::builtin().unwrap();
    let name = unique_name("held");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    virsh_ok(&["start", &name]);
    let conn = Connection::open(URI).unwrap();
    let bind = || {
        // A transient vGPU bound to the running domain through the metadata only.
        let mut req = AttachRequest::new(&name, Target::Type("sim-4c".into()), false, true);
        req.hostdev = false;
        let a = attach(&conn, &mdev, Some(&catalog), &req).unwrap();
        assert!(a.created && !a.metadata.persistent);
        a.uuid
    };

    // A holder that does not let go: the binding is detached, the vGPU stays, said so.
    let a = bind();
    sim.control(&format!("spawn {a}")).unwrap();
    let pid = owner_of(&sim, &a);
    let started = std::time::Instant::now();
    let e = detach(&conn, &mdev, &name, &a, DetachHow::new(false, true)).unwrap_err();
    assert!(started.elapsed() >= gvm_libvirt::DETACH_GRACE);
    assert!(
        matches!(e, gvm_libvirt::Error::DetachedButHeld { .. }),
        "{e}"
    );
    let text = gvm_libvirt::report(&e);
    assert!(
        text.contains(&format!("pid {pid} (gvm-vgpu-sim)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("gvm-vgpu remove --wait {a}")),
        "{text}"
    );
    assert!(mdev.device(&a).is_ok(), "not removed");
    let status = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.xml")).unwrap();
    assert!(domain_xml::parse(&status).unwrap().vgpus().is_empty());
    sim.control(&format!("kill {pid}")).unwrap();

    // detach_waiting removes it once the holder lets go.
    let b = bind();
    sim.control(&format!("spawn {b}")).unwrap();
    let pid = owner_of(&sim, &b);
    let control = sim.root().join("sys/kernel/debug/gvm-sim/control");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(control, format!("kill {pid}\n"))
    });
    let mut announced = Vec::new();
    let d = gvm_libvirt::detach_waiting(
        &conn,
        &mdev,
        &name,
        &b,
        DetachHow::new(false, true),
        &mut |h| announced.extend(h.iter().map(|h| h.pid)),
    )
    .unwrap();
    assert!(killer.join().unwrap().is_ok());
    assert!(d.removed_vgpu);
    assert_eq!(
        announced.len(),
        1,
        "the holder was announced before the wait"
    );
    assert!(mdev.device(&b).is_err());
    virsh_ok(&["destroy", &name]);
}
