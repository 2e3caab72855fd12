//! VF vGPUs (SR-IOV, docs/vendor-vfio.md) against a real libvirtd and the simulated host's VF
//! tree (`gvm-vgpu-sim --sriov-gpus 1`): the VF hostdev validates, `attach --config` puts it
//! into a real definition and detach takes it out, the hook readies the VF from libvirt's own
//! XML, and bad records are refused with nothing changed. Every test skips with a printed
//! reason when its facilities are missing.
//!
//! Not provable here: a domain *started* with the VF (the simulated VF is no PCI device
//! libvirt could open).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use gvm_catalog::Catalog;
use gvm_libvirt::domain_xml::{self, MetaVgpu};
use gvm_libvirt::{attach, detach, AttachRequest, Connection, DetachHow, Target};
use gvm_mdev::MdevHost;
use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vf::{Assignments, VfHost};
use uuid::Uuid;

const PF: &str = "0000:41:00.0";

fn validate(xml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let f = dir.path().join("d.xml");
    std::fs::write(&f, xml).expect("the domain XML file is written");
    Command::new("virt-xml-validate")
        .arg(&f)
        .arg("domain")
        .output()
        .expect("virt-xml-validate runs")
}

#[test]
fn virt_xml_validate_accepts_the_vf_hostdev_and_its_metadata() {
    if skip(
        "virt_xml_validate_accepts_the_vf_hostdev_and_its_metadata",
        require_command("virt-xml-validate"),
    ) {
        return;
    }
    let uuid = Uuid::new_v4();
    let hostdev = domain_xml::vf_hostdev_xml(&uuid, "0000:41:00.4").unwrap();
    let meta = domain_xml::metadata_xml(&[MetaVgpu {
        uuid,
        type_name: Some("NVIDIA H100-20C".into()),
        parent: Some(PF.into()),
        mdev_type: None,
        persistent: true,
        created: true,
    }])
    .replacen(
        "<vgpus>",
        &format!("<gvm:vgpus xmlns:gvm='{}'>", gvm_libvirt::NAMESPACE),
        1,
    )
    .replace("<vgpu ", "<gvm:vgpu ")
    .replace("</vgpus>", "</gvm:vgpus>");
    let good = domain_xml("validate", &hostdev, &meta);
    let out = validate(&good);
    assert!(
        out.status.success(),
        "virt-xml-validate rejected the VF hostdev: {}\n{good}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(domain_xml::parse(&good).unwrap().vgpus(), vec![uuid]);
    // The schema checks the address: a PCI function is 0 to 7.
    let bad = good.replace("function='0x4'", "function='0x9'");
    assert!(!validate(&bad).status.success(), "function 9 validated");
}

#[test]
fn the_example_vf_hostdev_is_what_the_builder_writes_and_validates_in_a_domain() {
    if skip(
        "the_example_vf_hostdev_is_what_the_builder_writes_and_validates_in_a_domain",
        require_command("virt-xml-validate"),
    ) {
        return;
    }
    let path = gvm_testkit::workspace_root().join("libvirt/examples/hostdev-vf.xml");
    let example = std::fs::read_to_string(&path).unwrap();
    let uuid = Uuid::try_parse("9d7c3a52-51e4-4b55-9a7e-0c3f1d2b8e61").unwrap();
    assert_eq!(
        example,
        domain_xml::vf_hostdev_xml(&uuid, "0000:41:00.4").unwrap()
    );
    let out = validate(&domain_xml("example", &example, ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A simulated host with one SR-IOV GPU and 4 VFs enabled, and a libvirtd; or the reason to
/// skip.
fn sim_with_vfs(test: &str) -> Option<(SimHost, VfHost)> {
    if skip(test, require_root_and_fuse()) || skip(test, require_libvirtd()) {
        return None;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let vf = VfHost::new(sim.host_root());
    vf.enable_vfs(PF, 4).unwrap_or_else(|e| panic!("{e}"));
    Some((sim, vf))
}

fn current(vf: &VfHost, addr: &str) -> u32 {
    vf.vf_state(addr)
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .current
}

#[test]
fn attach_config_and_detach_a_vf_vgpu_by_uuid_and_by_type() {
    let Some((sim, vf)) = sim_with_vfs("attach_config_and_detach_a_vf_vgpu_by_uuid_and_by_type")
    else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let records = Assignments::new(vf.clone());
    let catalog = Catalog::builtin().unwrap();
    let name = unique_name("vf");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let conn = Connection::open(URI).unwrap();

    // By UUID: a VF vGPU the user created is attached as its VF's PCI hostdev.
    let mine = records
        .create(Some(PF), "H100-20C", None)
        .unwrap_or_else(|e| panic!("{e}"));
    let req = AttachRequest::new(&name, Target::Uuid(mine.uuid), true, false);
    let a = attach(&conn, &mdev, Some(&catalog), &req).unwrap_or_else(|e| panic!("{e}"));
    assert!(!a.created && a.apply.config && !a.apply.live);
    let xml = dom.dumpxml(true);
    assert!(
        xml.contains(&format!("<alias name='ua-gvm-{}'/>", mine.uuid)),
        "libvirt keeps the alias in the definition: {xml}"
    );
    assert!(validate(&xml).status.success(), "{xml}");
    let info = domain_xml::parse(&xml).unwrap();
    assert_eq!(info.vgpus(), vec![mine.uuid]);
    let h = info.vf_hostdev(&mine.uuid).expect("the VF hostdev");
    assert_eq!((h.address.as_str(), h.managed), (mine.vf.as_str(), false));
    let meta = info.meta(&mine.uuid).expect("metadata entry");
    assert_eq!(meta.type_name.as_deref(), Some("NVIDIA H100-20C"));
    assert_eq!(meta.parent.as_deref(), Some(PF));
    assert!(meta.mdev_type.is_none() && meta.persistent && !meta.created);
    // The daemon's binding sees it by UUID.
    assert_eq!(conn.domains_of(&mine.uuid).unwrap(), vec![name.clone()]);

    // By type: no mdev parent offers H100-20C, so a free VF is taken.
    let req = AttachRequest::new(&name, Target::Type("H100-20C".into()), true, false);
    let b = attach(&conn, &mdev, Some(&catalog), &req).unwrap_or_else(|e| panic!("{e}"));
    assert!(b.created);
    let made = records.get(&b.uuid).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(made.vf, mine.vf);
    assert_eq!(current(&vf, &made.vf), made.type_id);
    let info = domain_xml::parse(&dom.dumpxml(true)).unwrap();
    assert_eq!(info.vgpus(), vec![mine.uuid, b.uuid]);
    assert!(info.meta(&b.uuid).is_some_and(|m| m.created));

    // Detach: the VF vGPU attach created goes with it, the user's stays.
    let d = detach(&conn, &mdev, &name, &b.uuid, DetachHow::new(true, false))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.hostdev && d.made_by_attach && d.removed_vgpu, "{d:?}");
    assert_eq!(current(&vf, &made.vf), 0);
    assert!(records.get(&b.uuid).is_err(), "its record is gone");
    let d = detach(&conn, &mdev, &name, &mine.uuid, DetachHow::new(true, false))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.hostdev && !d.removed_vgpu, "{d:?}");
    assert_eq!(
        current(&vf, &mine.vf),
        mine.type_id,
        "the user's vGPU stays"
    );
    let info = domain_xml::parse(&dom.dumpxml(true)).unwrap();
    assert!(info.vgpus().is_empty() && info.pci_hostdevs.is_empty());

    // A hand-written VF hostdev (no alias) is found by its record and detached.
    let f = tempfile::NamedTempFile::new().unwrap();
    let plain = domain_xml::vf_hostdev_xml(&mine.uuid, &mine.vf)
        .unwrap()
        .replace(&format!("  <alias name='ua-gvm-{}'/>\n", mine.uuid), "");
    std::fs::write(f.path(), &plain).unwrap();
    virsh_ok(&["attach-device", &name, path_str(f.path()), "--config"]);
    let d = detach(&conn, &mdev, &name, &mine.uuid, DetachHow::new(true, false))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.hostdev, "{d:?}");
    assert!(domain_xml::parse(&dom.dumpxml(true))
        .unwrap()
        .pci_hostdevs
        .is_empty());
}

#[test]
fn bad_vf_records_are_refused_naming_the_vf_and_the_fix_with_nothing_changed() {
    let Some((sim, vf)) =
        sim_with_vfs("bad_vf_records_are_refused_naming_the_vf_and_the_fix_with_nothing_changed")
    else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let records = Assignments::new(vf.clone());
    let name = unique_name("vf-bad");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let conn = Connection::open(URI).unwrap();
    let before = dom.dumpxml(true);
    let by_uuid = |u: Uuid| {
        attach(
            &conn,
            &mdev,
            None,
            &AttachRequest::new(&name, Target::Uuid(u), true, false),
        )
        .unwrap_err()
    };

    // A VF vGPU made for a refused attach is removed again.
    let mut req = AttachRequest::new(&name, Target::Type("H100-20C".into()), true, false);
    req.display = Some(true);
    let e = gvm_libvirt::report(&attach(&conn, &mdev, None, &req).unwrap_err());
    assert!(e.contains("--display"), "{e}");
    assert!(records.list().unwrap().is_empty(), "nothing half-done");
    assert!(vf
        .pf(PF)
        .unwrap()
        .vfs
        .iter()
        .all(|v| v.state.as_ref().is_some_and(|s| s.current == 0)));

    // A UUID with no record (and no mdev).
    let nobody = Uuid::new_v4();
    let e = by_uuid(nobody);
    assert!(matches!(e, gvm_libvirt::Error::NoSuchVgpu { .. }), "{e:?}");
    let e = gvm_libvirt::report(&e);
    assert!(
        e.contains(&nobody.to_string()) && e.contains("gvm-vgpu list"),
        "{e}"
    );

    // Stale: another tool changed the VF's type behind the record.
    let a = records
        .create(Some(PF), "H100-20C", None)
        .unwrap_or_else(|e| panic!("{e}"));
    vf.write_type(&a.vf, 0).unwrap();
    let other = vf.vf_state(&a.vf).unwrap().creatable;
    let other = other.iter().find(|t| t.id != a.type_id).unwrap();
    vf.write_type(&a.vf, other.id).unwrap();
    let e = by_uuid(a.uuid);
    assert!(
        matches!(e, gvm_libvirt::Error::VfTypeChanged { .. }),
        "{e:?}"
    );
    let text = gvm_libvirt::report(&e);
    assert!(
        text.contains(&a.vf) && text.contains(&other.id.to_string()) && text.contains("echo 0"),
        "{text}"
    );
    assert_eq!(current(&vf, &a.vf), other.id, "the other tool's type stays");

    // A VF that vanished (VFs lost, as on a reboot).
    sim.control("vf-reset").unwrap();
    let e = gvm_libvirt::report(&by_uuid(a.uuid));
    assert!(
        e.contains(&a.vf) && e.contains("does not exist") && e.contains("sriov-manage"),
        "{e}"
    );
    assert_eq!(dom.dumpxml(true), before, "the definition is unchanged");
    assert!(records.get(&a.uuid).is_ok(), "the record stays");
}

#[test]
fn the_hook_gives_a_cleared_vf_its_type_from_real_dumpxml_and_never_rewrites_a_ready_one() {
    let test = "the_hook_gives_a_cleared_vf_its_type_from_real_dumpxml";
    let Some((sim, vf)) = sim_with_vfs(test) else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let records = Assignments::new(vf.clone());
    let a = records
        .create(Some(PF), "H100-20C", None)
        .unwrap_or_else(|e| panic!("{e}"));
    let name = unique_name("vf-hook");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let conn = Connection::open(URI).unwrap();
    attach(
        &conn,
        &mdev,
        None,
        &AttachRequest::new(&name, Target::Uuid(a.uuid), true, false),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let xml = dom.dumpxml(false);
    let hook = |xml: &str| {
        let script = gvm_testkit::workspace_root().join("libvirt/hooks/qemu.d/gvm-vgpu");
        let mut child = Command::new("sh")
            .arg(script)
            .env("GVM_VGPU_HOOK", env!("CARGO_BIN_EXE_gvm-vgpu-hook"))
            .env("GVM_VGPU_ROOT", sim.root())
            .args([name.as_str(), "prepare", "begin", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Ready and held by a VM: a write would fail (EBUSY), so passing proves none was made.
    sim.control(&format!("vf-hold {}", a.vf)).unwrap();
    let (code, err) = hook(&xml);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "nothing to say when nothing changed: {err}");
    sim.control(&format!("vf-release {}", a.vf)).unwrap();

    // After a reboot the VFs come back without types: the hook sets the recorded one.
    sim.control("vf-reset").unwrap();
    vf.enable_vfs(PF, 4).unwrap();
    assert_eq!(current(&vf, &a.vf), 0);
    let (code, err) = hook(&xml);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&a.vf) && err.contains(&a.uuid.to_string()),
        "{err}"
    );
    assert_eq!(current(&vf, &a.vf), a.type_id);

    // Another type on the VF: the start is refused, the VF left as it is.
    vf.write_type(&a.vf, 0).unwrap();
    let other = vf.vf_state(&a.vf).unwrap().creatable;
    let other = other.iter().find(|t| t.id != a.type_id).unwrap().id;
    vf.write_type(&a.vf, other).unwrap();
    let (code, err) = hook(&xml);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&a.vf) && err.contains(&name), "{err}");
    assert_eq!(current(&vf, &a.vf), other);
}

#[test]
fn a_live_attach_libvirt_refuses_leaves_no_vf_vgpu_behind_and_metadata_binding_works() {
    let test = "a_live_attach_libvirt_refuses_leaves_no_vf_vgpu_behind";
    let Some((sim, vf)) = sim_with_vfs(test) else {
        return;
    };
    let mdev = MdevHost::new(sim.host_root());
    let records = Assignments::new(vf.clone());
    let name = unique_name("vf-live");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    virsh_ok(&["start", &name]);
    let conn = Connection::open(URI).unwrap();

    // The simulated VF is no PCI device QEMU could open: libvirt refuses the hot-plug, and
    // the VF vGPU attach made for it is removed again.
    let req = AttachRequest::new(&name, Target::Type("H100-20C".into()), false, true);
    let e = attach(&conn, &mdev, None, &req).unwrap_err();
    assert!(
        matches!(e, gvm_libvirt::Error::Domain { .. }),
        "libvirt's refusal: {e:?}"
    );
    assert!(records.list().unwrap().is_empty(), "nothing half-done");
    assert!(vf
        .pf(PF)
        .unwrap()
        .vfs
        .iter()
        .all(|v| v.state.as_ref().is_some_and(|s| s.current == 0)));

    // Bound through the metadata only, the running domain holds it by UUID, and a transient
    // one goes with a live detach.
    let mut req = AttachRequest::new(&name, Target::Type("H100-20C".into()), false, true);
    req.hostdev = false;
    let a = attach(&conn, &mdev, None, &req).unwrap_or_else(|e| panic!("{e}"));
    assert!(a.created && !a.metadata.persistent, "{a:?}");
    assert_eq!(conn.domains_of(&a.uuid).unwrap(), vec![name.clone()]);
    let made = records.get(&a.uuid).unwrap();
    let d = detach(&conn, &mdev, &name, &a.uuid, DetachHow::new(false, true))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.removed_vgpu && !d.hostdev, "{d:?}");
    assert_eq!(current(&vf, &made.vf), 0);
    virsh_ok(&["destroy", &name]);
}
