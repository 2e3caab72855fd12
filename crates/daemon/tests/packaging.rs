//! The shipped systemd unit is checked by systemd itself: `systemd-analyze verify` on the
//! unit with `ExecStart` pointed at the binary built here must pass without a single
//! warning (unknown keys, bad values, missing executables). Skips, saying so, without
//! `systemd-analyze`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn verify(unit_text: &str, dir: &Path) -> (bool, String) {
    let unit = dir.join("gvm-vgpud.service");
    std::fs::write(&unit, unit_text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: systemd-analyze is not installed");
        return;
    }
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/gvm-vgpud.service"),
    )
    .unwrap();
    assert!(shipped.contains("ExecStart=/usr/bin/gvm-vgpud "));
    // `systemctl reload gvm-vgpud` reads the catalog again (docs/daemon.md, "Catalog reload").
    assert!(shipped.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    let here = shipped.replace("/usr/bin/gvm-vgpud", env!("CARGO_BIN_EXE_gvm-vgpud"));
    let dir = tempfile::tempdir().unwrap();
    let (ok, warnings) = verify(&here, dir.path());
    assert!(ok && warnings.trim().is_empty(), "{warnings}");

    // The check can fail: a misspelt key is reported.
    let broken = here.replace("RestartSec=1", "RestartSecs=1");
    let (_, warnings) = verify(&broken, dir.path());
    assert!(warnings.contains("RestartSecs"), "{warnings}");
}
