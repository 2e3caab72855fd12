//! gvm-vgpu's dynamic shell completion, through the binary as a shell calls it
//! (`COMPLETE=fish gvm-vgpu -- gvm-vgpu WORDS…`, one candidate a line): subcommands, and the
//! host's values read at completion time: vGPU UUIDs (live and defined), the libvirt
//! domains the daemon follows, catalog type names. The host is a temporary root holding a
//! stored definition and the daemon's libvirt status file (`GVM_VGPU_ROOT`), so no simulated
//! host is needed.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn complete(root: &Path, words: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_gvm-vgpu"))
        .env("COMPLETE", "fish")
        .env("GVM_VGPU_ROOT", root)
        .arg("--")
        .arg("gvm-vgpu")
        .args(words)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_shell_completes_subcommands_and_the_hosts_uuids_domains_and_types() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let uuid = "0d0e0000-0000-4000-8000-000000000001";
    std::fs::create_dir_all(r.join("etc/gvm-vgpu/vgpus")).unwrap();
    std::fs::write(r.join(format!("etc/gvm-vgpu/vgpus/{uuid}.json")), "{}").unwrap();
    std::fs::write(r.join("etc/gvm-vgpu/vgpus/notes.txt"), "not a definition").unwrap();
    std::fs::create_dir_all(r.join("run/gvm-vgpu")).unwrap();
    std::fs::write(
        r.join("run/gvm-vgpu/libvirt.json"),
        r#"{"domains":{"web1":{"paused":false}}}"#,
    )
    .unwrap();

    assert!(complete(r, &["impo"]).contains(&"import-mdevctl".to_string()));
    // A target is a UUID or a domain; a UUID-only argument is a UUID.
    let targets = complete(r, &["show", ""]);
    assert!(
        targets.contains(&uuid.to_string()) && targets.contains(&"web1".to_string()),
        "{targets:?}"
    );
    assert!(!targets.iter().any(|t| t.contains("notes")), "{targets:?}");
    let uuids = complete(r, &["start", ""]);
    assert!(uuids.contains(&uuid.to_string()), "{uuids:?}");
    assert!(!uuids.contains(&"web1".to_string()), "{uuids:?}");
    // Catalog type names (the built-in catalog's simulated types among them).
    let types = complete(r, &["create", "--type", "sim-"]);
    assert!(types.contains(&"sim-4c".to_string()), "{types:?}");
    // An unreadable host completes no values (only the flags), and never fails.
    let flags = complete(&r.join("absent"), &["show", ""]);
    assert!(flags.iter().all(|f| f.starts_with("--")), "{flags:?}");
}
