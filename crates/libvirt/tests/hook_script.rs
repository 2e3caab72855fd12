//! The shipped hook script (`libvirt/hooks/qemu.d/gvm-vgpu`) run as libvirt runs it, with its
//! binary missing: it must never block a domain that has no gvm-vgpu device, and must name
//! the fix for one whose vGPU does not exist.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const PRESENT: &str = "6f6b0f4e-6a43-4a4e-9d5c-1b8f3c2a9e10";
const ABSENT: &str = "0c3b1a52-77d4-4c1f-a0a5-5e0f9a6d2b11";

/// Runs the script for `domain` at `op sub` with `xml` on stdin, `root` as the host root and a
/// hook binary that does not exist; returns (exit code, stderr).
fn run(root: &Path, op: &str, sub: &str, xml: &str) -> (i32, String) {
    let script = gvm_testkit::workspace_root().join("libvirt/hooks/qemu.d/gvm-vgpu");
    let mut child = Command::new("sh")
        .arg(&script)
        .args(["vm1", op, sub, "-"])
        .env("GVM_VGPU_HOOK", "/nonexistent/gvm-vgpu-hook")
        .env("GVM_VGPU_ROOT", root)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(xml.as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for the hook: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn domain(devices: &str) -> String {
    format!(
        "<domain type='kvm'><name>vm1</name><uuid>11111111-2222-4333-8444-555555555555</uuid>\
         <devices><disk type='file'/>{devices}</devices></domain>"
    )
}

fn mdev(uuid: &str) -> String {
    format!(
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>\
         <address uuid='{uuid}'/></source></hostdev>"
    )
}

#[test]
fn without_its_binary_the_hook_passes_unrelated_domains_and_names_the_fix_for_missing_vgpus() {
    let Ok(dir) = tempfile::tempdir() else {
        println!("SKIP: no temp dir");
        return;
    };
    let root = dir.path();
    assert!(std::fs::create_dir_all(root.join("sys/bus/mdev/devices").join(PRESENT)).is_ok());

    let (code, err) = run(root, "prepare", "begin", &domain(""));
    assert_eq!(code, 0, "a domain without vGPUs must start: {err}");
    let (code, err) = run(root, "prepare", "begin", &domain(&mdev(PRESENT)));
    assert_eq!(
        code, 0,
        "an existing vGPU needs nothing from the hook: {err}"
    );

    let (code, err) = run(root, "prepare", "begin", &domain(&mdev(ABSENT)));
    assert_eq!(code, 1);
    assert!(
        err.contains(ABSENT) && err.contains("not installed"),
        "{err}"
    );
    let meta = format!(
        "<metadata><gvm:vgpus xmlns:gvm='https://gvm-vgpu.dev/xmlns/libvirt/1'>\
         <gvm:vgpu uuid='{}'/></gvm:vgpus></metadata>",
        ABSENT.to_uppercase()
    );
    let xml = domain("").replace("<devices>", &format!("{meta}<devices>"));
    let (code, err) = run(root, "prepare", "begin", &xml);
    assert_eq!(code, 1, "a metadata vGPU counts too: {err}");

    for (op, sub) in [("release", "end"), ("started", "begin"), ("stopped", "end")] {
        let (code, err) = run(root, op, sub, &domain(&mdev(ABSENT)));
        assert_eq!(code, 0, "{op} {sub} never blocks: {err}");
    }
}

#[test]
fn without_its_binary_the_hook_passes_a_ready_vf_vgpu_and_names_one_whose_vf_lacks_its_type() {
    let Ok(dir) = tempfile::tempdir() else {
        println!("SKIP: no temp dir");
        return;
    };
    let root = dir.path();
    let vf = "0000:41:00.4";
    let nvidia = root.join("sys/bus/pci/devices").join(vf).join("nvidia");
    let records = root.join("etc/gvm-vgpu/vf-vgpus");
    assert!(std::fs::create_dir_all(&nvidia).is_ok() && std::fs::create_dir_all(&records).is_ok());
    // The record as gvm_vf::Assignments writes it (pretty JSON).
    let record = serde_json::to_string_pretty(&serde_json::json!({
        "uuid": ABSENT, "pf": "0000:41:00.0", "vf": vf,
        "type_id": 1047, "type_name": "NVIDIA H100-20C"
    }))
    .unwrap_or_default();
    assert!(std::fs::write(records.join(format!("{ABSENT}.json")), record).is_ok());
    let hostdev = format!(
        "<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' \
         bus='0x41' slot='0x00' function='0x4'/></source><alias name='ua-gvm-{ABSENT}'/></hostdev>"
    );
    let nic =
        "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' \
               bus='0x05' slot='0x00' function='0x0'/></source></hostdev>";

    let (code, err) = run(root, "prepare", "begin", &domain(nic));
    assert_eq!(code, 0, "a PCI device that is no vGPU must start: {err}");
    assert!(std::fs::write(nvidia.join("current_vgpu_type"), "1047\n").is_ok());
    let (code, err) = run(root, "prepare", "begin", &domain(&hostdev));
    assert_eq!(code, 0, "a VF with its recorded type needs nothing: {err}");
    assert!(std::fs::write(nvidia.join("current_vgpu_type"), "0\n").is_ok());
    let (code, err) = run(root, "prepare", "begin", &domain(&hostdev));
    assert_eq!(code, 1, "a cleared VF needs the binary: {err}");
    assert!(
        err.contains(ABSENT) && err.contains("not installed"),
        "{err}"
    );
}
