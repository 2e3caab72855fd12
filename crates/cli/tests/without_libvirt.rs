//! gvm-vgpu and gvm-vgpud on a host without libvirt's client library (no `libvirt0`: a
//! plain-QEMU host). Neither binary links libvirt (checked in their ELF dynamic section), so
//! both start there; the libvirt commands say which package to install and fail, and the
//! daemon serves without following libvirt, saying so once.
//!
//! The missing library is played with `GVM_LIBVIRT_LIBRARY`, which names the file gvm-libvirt
//! loads instead of `libvirt.so.0`: a path that does not exist fails exactly as a host without
//! the package does (dlopen finds no file).
#![cfg(feature = "libvirt")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use support::{gvm_vgpu, stderr, succeeded, Daemon, CLI_BIN};

mod support;

/// What gvm-libvirt is told to load: a file no host has.
const MISSING: &str = "/nonexistent/libvirt.so.0";

/// The shared libraries `binary` names in its dynamic section (`DT_NEEDED`), by `readelf -d`.
fn needed_libraries(binary: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(binary)
        .output()
        .expect("run readelf (binutils, which linking the binaries needed too)");
    assert!(out.status.success(), "readelf -d {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

#[test]
fn neither_gvm_vgpu_nor_gvm_vgpud_links_libvirt() {
    let daemon = gvm_testkit::workspace_bin_rebuilt("gvm-vgpud", "gvm-vgpud");
    for binary in [Path::new(CLI_BIN), daemon.as_path()] {
        let needed = needed_libraries(binary);
        assert!(
            needed.iter().any(|l| l.starts_with("libc.so")),
            "the dynamic section of {} was not read: {needed:?}",
            binary.display()
        );
        assert!(
            !needed.iter().any(|l| l.contains("libvirt")),
            "{} links libvirt, so it cannot start on a host without libvirt0: {needed:?}",
            binary.display()
        );
    }
}

/// A test root with an empty mdev tree: enough for gvm-vgpu's libvirt commands to get as
/// far as libvirt.
fn empty_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in ["sys/class/mdev_bus", "sys/bus/mdev/devices"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    dir
}

fn without_libvirt(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args)
        .env("GVM_LIBVIRT_LIBRARY", MISSING)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .output()
        .expect("run gvm-vgpu")
}

#[test]
fn libvirt_commands_fail_naming_the_package_to_install() {
    let host = empty_host();
    let uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    for args in [
        &["attach", "web1", "--uuid", uuid][..],
        &["detach", "web1", "--uuid", uuid],
        &["show", "web1"],
    ] {
        let out = without_libvirt(host.path(), args);
        let err = stderr(&out);
        assert!(!out.status.success(), "gvm-vgpu {args:?} succeeded: {err}");
        assert!(
            err.contains(MISSING) && err.contains("apt install libvirt0"),
            "gvm-vgpu {args:?} does not say what is missing and how to install it: {err}"
        );
        assert!(
            !err.contains("is libvirtd running"),
            "gvm-vgpu {args:?} blames libvirtd for a missing library: {err}"
        );
    }
}

#[test]
fn the_daemon_serves_without_libvirt_and_says_so_once() {
    let host = empty_host();
    let log_path = host.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Asked to follow libvirt, on a host that cannot.
    let mut daemon = Daemon::start_with(host.path(), log, |c| {
        c.args(["--libvirt", "test:///default", "--no-uevents"])
            .env("GVM_LIBVIRT_LIBRARY", MISSING)
            .env("RUST_LOG", "info");
    });
    succeeded(&without_libvirt(host.path(), &["status"]), &["status"]);
    // The daemon decides before it listens; a watch retrying would say it again meanwhile.
    let log_text = std::fs::read_to_string(&log_path).unwrap();
    let said = log_text
        .matches("cannot load libvirt's client library")
        .count();
    assert_eq!(said, 1, "not said exactly once: {log_text}");
    assert!(log_text.contains("apt install libvirt0"), "{log_text}");
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "gvm-vgpud exited without libvirt: {log_text}"
    );
}
