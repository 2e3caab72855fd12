//! `gvm-vgpu xml`, `qemu-args`, `attach` and `detach` for SR-IOV VF vGPUs, against the
//! simulated host's VF tree (`--sriov-gpus 1`) and a real libvirtd (Debian's libvirt 9). The
//! VF vGPUs are made through `gvm_vf::Assignments`, as the manager records them.
//!
//! Needs root, /dev/fuse, libvirtd, virsh, qemu-system-x86_64 and virt-xml-validate; every
//! test prints `SKIP: <reason>` without them. The libvirtd fixture is the libvirt crate's.
#![cfg(feature = "libvirt")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

#[path = "../../libvirt/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{domain_xml, require_libvirtd, unique_name, TestDomain, URI};
use gvm_libvirt::domain_xml as dx;
use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vf::{Assignments, VfHost};
use serde_json::Value;
use support::{gvm_vgpu, payload, stderr, succeeded};

mod support;

const PF: &str = "0000:41:00.0";

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args)
        .env("LIBVIRT_DEFAULT_URI", URI)
        .output()
        .expect("run gvm-vgpu")
}

fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(&cli(root, args), args)
}

/// A failed run's stderr, after checking that it failed.
fn fails(root: &Path, args: &[&str]) -> String {
    let o = cli(root, args);
    assert!(!o.status.success(), "{args:?} succeeded: {}", stderr(&o));
    stderr(&o)
}

fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    payload(&serde_json::from_str(&ok(root, &all)).expect("valid JSON"))
}

/// A simulated host with 4 VFs on its SR-IOV GPU and a libvirtd, or the reason to skip.
fn sim_with_vfs(test: &str) -> Option<(SimHost, VfHost)> {
    if skip(test, require_root_and_fuse())
        || skip(test, require_libvirtd())
        || skip(test, require_command("virt-xml-validate"))
    {
        return None;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let vf = VfHost::new(sim.host_root());
    vf.enable_vfs(PF, 4).unwrap();
    Some((sim, vf))
}

fn validates(dir: &Path, domain: &str) -> bool {
    let f = dir.join("d.xml");
    std::fs::write(&f, domain).unwrap();
    Command::new("virt-xml-validate")
        .arg(&f)
        .arg("domain")
        .status()
        .unwrap()
        .success()
}

#[test]
fn xml_and_qemu_args_name_the_vf_of_a_vf_vgpu_and_refuse_bad_records() {
    let Some((sim, vf)) = sim_with_vfs("xml_and_qemu_args_name_the_vf_of_a_vf_vgpu") else {
        return;
    };
    let root = sim.root();
    let a = Assignments::new(vf.clone())
        .create(Some(PF), "H100-20C", None)
        .unwrap();
    let u = a.uuid.to_string();

    let xml = ok(root, &["xml", &u]);
    assert_eq!(xml, dx::vf_hostdev_xml(&a.uuid, &a.vf).unwrap());
    let dir = tempfile::tempdir().unwrap();
    assert!(validates(dir.path(), &domain_xml("x", &xml, "")), "{xml}");
    let with_agent = ok(root, &["xml", &u, "--with-agent"]);
    assert!(
        with_agent.contains(gvm_libvirt::AGENT_PORT_NAME),
        "{with_agent}"
    );
    assert!(fails(root, &["xml", &u, "--display", "on"]).contains("--display"));

    let line = ok(root, &["qemu-args", &u]);
    assert_eq!(line.trim(), format!("-device vfio-pci,host={}", a.vf));
    let v = json(root, &["qemu-args", &u]);
    assert_eq!(v["args"][1], format!("vfio-pci,host={}", a.vf), "{v}");

    // No record: the UUID is named and where to look.
    let nobody = uuid::Uuid::new_v4().to_string();
    let e = fails(root, &["xml", &nobody]);
    assert!(e.contains(&nobody) && e.contains("gvm-vgpu list"), "{e}");

    // A cleared VF (reboot): fine for libvirt (the hook sets it), not for plain QEMU.
    vf.write_type(&a.vf, 0).unwrap();
    ok(root, &["xml", &u]);
    let e = fails(root, &["qemu-args", &u]);
    assert!(
        e.contains(&a.vf) && e.contains("holds no vGPU type") && e.contains("echo 1047"),
        "{e}"
    );

    // Stale: another tool set another type.
    let other = vf.vf_state(&a.vf).unwrap().creatable;
    let other = other.iter().find(|t| t.id != a.type_id).unwrap().id;
    vf.write_type(&a.vf, other).unwrap();
    for cmd in ["xml", "qemu-args"] {
        let e = fails(root, &[cmd, &u]);
        assert!(
            e.contains(&a.vf) && e.contains(&other.to_string()) && e.contains("another tool"),
            "{cmd}: {e}"
        );
    }
    assert_eq!(vf.vf_state(&a.vf).unwrap().current, other, "left alone");

    // The VF vanished.
    sim.control("vf-reset").unwrap();
    let e = fails(root, &["xml", &u]);
    assert!(e.contains(&a.vf) && e.contains("sriov-manage"), "{e}");
}

#[test]
fn attach_persistent_and_detach_a_vf_vgpu_in_a_real_domain() {
    let Some((sim, vf)) = sim_with_vfs("attach_persistent_and_detach_a_vf_vgpu") else {
        return;
    };
    let root = sim.root();
    let records = Assignments::new(vf.clone());
    let name = unique_name("cli-vf");
    let dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    let dir = tempfile::tempdir().unwrap();

    // By UUID: attached to the definition, the user's vGPU stays on detach.
    let a = records.create(Some(PF), "H100-20C", None).unwrap();
    let u = a.uuid.to_string();
    let v = json(root, &["attach", &name, "--uuid", &u, "--persistent"]);
    assert_eq!(
        (v["created"].clone(), v["hostdev"].clone()),
        (false.into(), true.into()),
        "{v}"
    );
    let xml = dom.dumpxml(true);
    assert!(validates(dir.path(), &xml), "{xml}");
    let info = dx::parse(&xml).unwrap();
    assert_eq!(
        info.vf_hostdev(&a.uuid).map(|h| h.address.as_str()),
        Some(a.vf.as_str())
    );
    let shown = json(root, &["show", &name]);
    assert_eq!(shown["vgpus"][0]["uuid"], u, "{shown}");
    assert_eq!(shown["vgpus"][0]["present"], true, "{shown}");
    let text = ok(root, &["show", &name]);
    assert!(
        text.contains(&format!("vGPU {u}: VF {} (NVIDIA H100-20C on {PF})", a.vf)),
        "{text}"
    );
    let text = ok(root, &["detach", &name, "--uuid", &u, "--persistent"]);
    assert!(text.contains("attach did not create it"), "{text}");
    assert_eq!(vf.vf_state(&a.vf).unwrap().current, a.type_id);
    assert!(dx::parse(&dom.dumpxml(true)).unwrap().vgpus().is_empty());

    // By type: a VF vGPU created on a free VF, removed again on detach.
    let v = json(
        root,
        &["attach", &name, "--type", "H100-20C", "--persistent"],
    );
    assert_eq!(v["created"], true, "{v}");
    let made = uuid::Uuid::try_parse(v["uuid"].as_str().unwrap()).unwrap();
    let rec = records.get(&made).unwrap();
    assert_eq!(vf.vf_state(&rec.vf).unwrap().current, rec.type_id);
    let text = ok(
        root,
        &["detach", &name, "--uuid", &made.to_string(), "--persistent"],
    );
    assert!(text.contains("and removed it"), "{text}");
    assert!(records.get(&made).is_err());
    assert_eq!(vf.vf_state(&rec.vf).unwrap().current, 0);

    // Stale record: refused, the definition unchanged.
    let before = dom.dumpxml(true);
    vf.write_type(&a.vf, 0).unwrap();
    let other = vf.vf_state(&a.vf).unwrap().creatable;
    let other = other.iter().find(|t| t.id != a.type_id).unwrap().id;
    vf.write_type(&a.vf, other).unwrap();
    let e = fails(root, &["attach", &name, "--uuid", &u, "--persistent"]);
    assert!(e.contains(&a.vf) && e.contains(&name), "{e}");
    assert_eq!(dom.dumpxml(true), before);
}
