//! Smoke test of the built host package, from its installed paths: `dpkg-deb -x` unpacks
//! `<target>/debian/gvm-vgpu_*.deb` into a scratch root, and the binaries run from there, the
//! man pages and completions are where man and the shells look, the installed unit passes
//! `systemd-analyze verify` and rates below 5.0, and the installed hook script lets a domain
//! without vGPUs start, with and without its binary. Skips, saying so, when the package has
//! not been built (`packaging/build-debs.sh`) or `dpkg-deb` is missing.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn target_dir() -> PathBuf {
    // <target>/debug/gvm-vgpu-docs
    Path::new(env!("CARGO_BIN_EXE_gvm-vgpu-docs"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

fn newest_deb(prefix: &str) -> Option<PathBuf> {
    let dir = target_dir().join("debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with(prefix) && n.to_string_lossy().ends_with(".deb")
            })
        })
        .collect();
    debs.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    debs.pop()
}

fn run_hook(script: &Path, hook_bin: &str, xml: &str) -> std::process::Output {
    let mut child = Command::new("sh")
        .arg(script)
        .args(["vm-without-vgpu", "prepare", "begin", "-"])
        .env("GVM_VGPU_HOOK", hook_bin)
        .env("GVM_VGPU_ROOT", "/nonexistent-root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_host_package_installs_and_runs_from_its_paths() {
    let Some(deb) = newest_deb("gvm-vgpu_") else {
        println!(
            "SKIP: no gvm-vgpu_*.deb under {}/debian: run packaging/build-debs.sh",
            target_dir().display()
        );
        return;
    };
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        println!("SKIP: dpkg-deb is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(r)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for bin in ["gvm-vgpu", "gvm-vgpud", "gvm-vgpu-sim"] {
        let out = Command::new(r.join("usr/bin").join(bin))
            .arg("--version")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} --version: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in [
        "usr/bin/gvm-vgpu-hook",
        "usr/lib/gvm-vgpu/libgvm_cuda.so",
        "usr/lib/udev/rules.d/90-gvm-vgpu.rules",
        "etc/gvm-vgpu/gvm-vgpud.toml",
        "etc/libvirt/hooks/qemu.d/gvm-vgpu",
        "usr/share/gvm-vgpu/mdev-types/gvm-sim.toml",
        "usr/share/man/man1/gvm-vgpu.1.gz",
        "usr/share/man/man1/gvm-vgpu-policy-show.1.gz",
        "usr/share/man/man8/gvm-vgpud.8.gz",
        "usr/share/man/man8/gvm-vgpu-hook.8.gz",
        "usr/share/bash-completion/completions/gvm-vgpu",
        "usr/share/zsh/vendor-completions/_gvm-vgpu",
        "usr/share/fish/vendor_completions.d/gvm-vgpu.fish",
    ] {
        assert!(r.join(f).is_file(), "the package lacks /{f}");
    }
    let unit = [
        "lib/systemd/system/gvm-vgpud.service",
        "usr/lib/systemd/system/gvm-vgpud.service",
    ]
    .iter()
    .map(|u| r.join(u))
    .find(|p| p.is_file())
    .expect("the package has no gvm-vgpud.service");

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let text = std::fs::read_to_string(&unit).unwrap();
        let here = text.replace(
            "/usr/bin/gvm-vgpud",
            &r.join("usr/bin/gvm-vgpud").to_string_lossy(),
        );
        let checked = r.join("gvm-vgpud.service");
        std::fs::write(&checked, here).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&checked)
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && warnings.trim().is_empty(),
            "{warnings}"
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&checked)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = report
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure in {report}"));
        assert!(exposure < 5.0, "installed unit exposure {exposure}");
    } else {
        println!("SKIP (part): systemd-analyze is not installed");
    }

    // The installed hook script: a domain without gvm-vgpu devices starts, with the packaged
    // binary and without any.
    let script = r.join("etc/libvirt/hooks/qemu.d/gvm-vgpu");
    let xml = "<domain type='kvm'><name>vm-without-vgpu</name><devices/></domain>";
    let hook = r.join("usr/bin/gvm-vgpu-hook");
    for bin in [
        hook.to_string_lossy().into_owned(),
        "/nonexistent/gvm-vgpu-hook".into(),
    ] {
        let out = run_hook(&script, &bin, xml);
        assert!(
            out.status.success(),
            "hook {bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
