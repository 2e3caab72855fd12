//! The shipped systemd unit is checked by systemd itself: `systemd-analyze verify` on the
//! unit with `ExecStart` pointed at the binary built here must pass without a single
//! warning (unknown keys, bad values, missing executables), and `systemd-analyze security
//! --offline=true` must rate its exposure below 5.0. Those two skip, saying so, without
//! `systemd-analyze`. The unit's key lines (readiness, ordering after libvirtd, the sandbox)
//! are checked as text, and every place the daemon writes
//! ([`gvm_vgpud::sandbox::written_paths`]) must stay writable under its sandbox.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn verify(unit_text: &str, dir: &Path) -> (bool, String) {
    let unit = dir.join("gvm-vgpud.service");
    std::fs::write(&unit, unit_text).unwrap();
    // `--man=no`: the unit's `Documentation=man:gvm-vgpud(8)` is installed by the package,
    // not on this machine (the generated pages are checked by gvm-vgpu-docs' tests).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped_unit() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/gvm-vgpud.service"),
    )
    .unwrap()
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
}

/// The values of every `key=` line of `unit`, in order (a line per assignment).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The directories the unit leaves writable under `ProtectSystem=strict`: its
/// `ReadWritePaths=` (an optional `-` prefix only says a missing path is no error) and the
/// directories systemd makes for it (`RuntimeDirectory=`, `StateDirectory=`).
fn writable_dirs(unit: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for v in values(unit, "ReadWritePaths") {
        for p in v.split_whitespace() {
            dirs.push(PathBuf::from(p.trim_start_matches(['-', '+'])));
        }
    }
    for (key, base) in [("RuntimeDirectory", "/run"), ("StateDirectory", "/var/lib")] {
        for v in values(unit, key) {
            for p in v.split_whitespace() {
                dirs.push(Path::new(base).join(p));
            }
        }
    }
    dirs
}

/// The written paths (their `writable` directory) that no writable directory of `unit` covers.
fn uncovered(unit: &str) -> Vec<String> {
    let dirs = writable_dirs(unit);
    gvm_vgpud::sandbox::written_paths(&gvm_host_root::HostRoot::default())
        .into_iter()
        .filter(|w| !dirs.iter().any(|d| w.writable.starts_with(d)))
        .map(|w| format!("{} ({})", w.writable.display(), w.what))
        .collect()
}

#[test]
fn the_unit_is_a_hardened_notify_service_ordered_after_libvirtd() {
    let unit = shipped_unit();
    for line in [
        "Type=notify",
        "Documentation=man:gvm-vgpud(8)",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "the unit lacks `{line}`"
        );
    }
    for key in ["After", "Wants"] {
        assert!(
            values(&unit, key)
                .iter()
                .any(|v| v.split_whitespace().any(|u| u == "libvirtd.service")),
            "{key}= does not name libvirtd.service"
        );
    }
    let caps: Vec<&str> = values(&unit, "CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(!caps.is_empty(), "no CapabilityBoundingSet=");
    assert!(
        !caps.contains(&"CAP_SYS_ADMIN"),
        "CAP_SYS_ADMIN is not needed: {caps:?}"
    );
    // Not PrivateDevices: the shim's control blocks are shared in the host's /dev/shm.
    assert!(values(&unit, "PrivateDevices").is_empty());
}

#[test]
fn every_path_the_daemon_writes_is_writable_under_the_units_sandbox() {
    let unit = shipped_unit();
    let missing = uncovered(&unit);
    assert!(
        missing.is_empty(),
        "not in ReadWritePaths=/RuntimeDirectory=: {missing:?}"
    );
    // The check can fail: without /sys/devices mdev create/remove and the VF type are lost.
    let narrowed = unit.replace("ReadWritePaths=/sys/devices ", "ReadWritePaths=");
    assert_ne!(
        narrowed, unit,
        "the unit's ReadWritePaths= line changed: update this test"
    );
    let missing = uncovered(&narrowed);
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(missing.iter().all(|m| m.starts_with("/sys/devices ")));
}

#[test]
fn sysfs_links_the_daemon_writes_through_lead_into_sys_devices() {
    // On this machine's real sysfs: every entry of the link directories the daemon writes
    // through resolves under /sys/devices, the directory the unit opens.
    let host = gvm_host_root::HostRoot::default();
    let mut seen = 0;
    for w in gvm_vgpud::sandbox::written_paths(&host)
        .iter()
        .filter(|w| w.used != w.writable)
    {
        let Ok(entries) = std::fs::read_dir(&w.used) else {
            continue;
        };
        for e in entries.flatten() {
            let target = std::fs::canonicalize(e.path()).unwrap();
            assert!(
                target.starts_with(&w.writable),
                "{} leads to {}, outside {}",
                e.path().display(),
                target.display(),
                w.writable.display()
            );
            seen += 1;
        }
    }
    if seen == 0 {
        println!("SKIP: no entries under /sys/bus/pci/devices or the mdev directories here");
    }
}

#[test]
fn the_units_exposure_is_below_5() {
    if !have_systemd_analyze() {
        println!("SKIP: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exposure = |text: &str| -> f64 {
        let unit = dir.path().join("gvm-vgpud.service");
        std::fs::write(&unit, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure line in: {text}"));
        line.rsplit(':')
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the exposure in `{line}`"))
    };
    let shipped = exposure(&shipped_unit());
    println!("systemd-analyze security: exposure {shipped}");
    assert!(shipped < 5.0, "exposure {shipped} is not below 5.0");
    // The check can fail: the same unit without its sandbox rates far worse.
    let bare: String = shipped_unit()
        .lines()
        .filter(|l| {
            !l.starts_with("Protect")
                && !l.starts_with("Restrict")
                && !l.starts_with("Private")
                && !l.starts_with("SystemCall")
                && !l.starts_with("Capability")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(exposure(&bare) > shipped + 2.0);
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    if !have_systemd_analyze() {
        println!("SKIP: systemd-analyze is not installed");
        return;
    }
    let shipped = shipped_unit();
    assert!(shipped.contains("ExecStart=/usr/bin/gvm-vgpud "));
    // `systemctl reload gvm-vgpud` reads the config file and the catalog again (docs/daemon.md,
    // "Config file" and "Catalog reload").
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

/// The package metadata (`[package.metadata.deb]`) in this crate's Cargo.toml.
fn deb_metadata() -> toml::Value {
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    manifest["package"]["metadata"]["deb"].clone()
}

/// The `assets` entries of the package metadata in this crate's Cargo.toml: (source, target).
fn deb_assets() -> Vec<(String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The packages of a Debian relationship field (`a, b (>= 1) | c`), without versions.
fn packages(field: &str) -> Vec<&str> {
    field
        .split([',', '|'])
        .filter_map(|p| p.split_whitespace().next())
        .collect()
}

#[test]
fn the_package_recommends_libvirt0_and_does_not_depend_on_it() {
    // gvm-vgpud and gvm-vgpu load libvirt at run time (crates/cli/tests/without_libvirt.rs
    // checks that no binary links it), so `$auto` (dpkg-shlibdeps) no longer adds libvirt0:
    // a plain-QEMU host installs the package without libvirt. attach/detach need it.
    let deb = deb_metadata();
    let depends = deb["depends"].as_str().unwrap();
    assert!(
        !packages(depends).iter().any(|p| p.starts_with("libvirt")),
        "Depends: {depends}"
    );
    let recommends = deb["recommends"].as_str().unwrap();
    assert!(
        packages(recommends).contains(&"libvirt0"),
        "Recommends: {recommends}"
    );
}

fn shipped_config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/gvm-vgpud.toml"),
    )
    .unwrap()
}

#[test]
fn the_package_ships_the_config_file_under_etc_as_a_conffile() {
    // cargo-deb marks every asset under etc/ as a conffile: an upgrade keeps local edits.
    let assets = deb_assets();
    assert!(
        assets
            .iter()
            .any(|(src, dst)| src == "../../packaging/gvm-vgpud.toml"
                && format!("/{dst}gvm-vgpud.toml") == gvm_vgpud::config::CONFIG_FILE),
        "no asset installs packaging/gvm-vgpud.toml as {}: {assets:?}",
        gvm_vgpud::config::CONFIG_FILE
    );
}

/// The `key = value` lines of the shipped file that are commented out (`# key = value`).
fn commented_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (key, value) = l.strip_prefix("# ")?.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-')
                .then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

#[test]
fn the_shipped_config_file_is_the_defaults_and_documents_every_option() {
    let text = shipped_config();
    let path = Path::new(gvm_vgpud::config::CONFIG_FILE);
    let defaults = gvm_vgpud::config::parse(path, "").unwrap();
    assert_eq!(gvm_vgpud::config::parse(path, &text).unwrap(), defaults);

    // Every option but the ones that say where the file is has its commented-out line …
    let settings = commented_settings(&text);
    let keys: std::collections::BTreeSet<String> =
        settings.iter().map(|(k, _)| k.clone()).collect();
    use clap::CommandFactory;
    let options: std::collections::BTreeSet<String> = gvm_vgpud::cli::Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| !["root", "state-root", "config"].contains(&l.as_str()))
        .collect();
    assert_eq!(
        keys, options,
        "the shipped file and gvm-vgpud's options differ"
    );
    assert_eq!(keys.len(), settings.len(), "a key is shown twice");

    // … and uncommented, each line is a valid setting.
    let uncommented: String = settings
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    let all = gvm_vgpud::config::parse(path, &uncommented).unwrap();
    // The check can fail: the example values are read (the group has no default) …
    assert_eq!(all.group.as_deref(), Some("gvm-vgpu"));
    // … and every value shown for a key with a default is that default.
    let mut rest = all.clone();
    rest.group = None;
    rest.metrics = None;
    rest.socket = None;
    rest.shim_socket = None;
    rest.libvirt = None;
    rest.nvml_library = None;
    if std::env::var_os("RUST_LOG").is_some() {
        // The environment's filter is the default here, not the file's `info`.
        rest.log_level.clone_from(&defaults.log_level);
    }
    assert_eq!(rest, defaults);
}
