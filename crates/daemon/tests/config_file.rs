//! gvm-vgpud's config file, `/etc/gvm-vgpu/gvm-vgpud.toml` under its root, with a real daemon
//! on the simulated host: the file's values apply, a flag overrides the file, an unknown key
//! or a bad value stops the start naming the file and the key, and `SIGHUP` applies a changed
//! value (the log filter: debug lines appear), reports a setting that needs a restart, and
//! keeps every setting in use when the file is broken.
//!
//! The tests with a simulated host need root and /dev/fuse, and skip (printing why) without.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::CreateParams;
use gvm_client::Client;

/// A gvm-vgpud started here, with its stderr in `log`; SIGTERMed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Start gvm-vgpud on `root` with `args`, and no `RUST_LOG` (the file's `log-level` is then
    /// the one in effect).
    fn spawn(root: &Path, args: &[&str]) -> Daemon {
        let log = root.join(format!("daemon-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let child = Command::new(env!("CARGO_BIN_EXE_gvm-vgpud"))
            .arg("--root")
            .arg(root)
            .arg("--no-libvirt")
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Started and answering on `socket`.
    fn serving(root: &Path, args: &[&str], socket: &Path) -> Daemon {
        let d = Daemon::spawn(root, args);
        assert!(
            wait_until(Duration::from_secs(10), || Client::connect(socket)
                .and_then(|mut c| c.ping())
                .is_ok()),
            "daemon did not answer on {}; log: {}",
            socket.display(),
            d.log_text()
        );
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, count: usize) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.log_text().matches(what).count() >= count
        })
    }

    fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Its exit status, once it ended within 10 s.
    fn ended(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn config_path(root: &Path) -> PathBuf {
    root.join("etc/gvm-vgpu/gvm-vgpud.toml")
}

fn write_config(root: &Path, text: &str) {
    let path = config_path(root);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn default_socket(root: &Path) -> PathBuf {
    root.join("run/gvm-vgpu/api.sock")
}

/// The last log line containing `what`.
fn last_line(log: &str, what: &str) -> String {
    log.lines()
        .rfind(|l| l.contains(what))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_files_values_apply_and_a_flag_overrides_them() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let from_file = sim.dir.path().join("from-file.sock");
    write_config(
        &sim.root,
        &format!(
            "# the operator's settings\nsocket = \"{}\"\nguest-ack-ms = 250\nverify-s = 7\n",
            from_file.display()
        ),
    );
    {
        let d = Daemon::serving(&sim.root, &[], &from_file);
        assert!(
            !default_socket(&sim.root).exists(),
            "the file's socket is used"
        );
        let line = last_line(&d.log_text(), "settings in effect");
        assert!(
            line.contains("guest_ack_ms=250") && line.contains("verify_s=7"),
            "{line}"
        );
    }
    // The command line wins, setting by setting: the file's verify-s stays.
    let flagged = sim.dir.path().join("flag.sock");
    let d = Daemon::serving(
        &sim.root,
        &[
            "--socket",
            flagged.to_str().unwrap(),
            "--guest-ack-ms",
            "300",
        ],
        &flagged,
    );
    assert!(!from_file.exists(), "the flag's socket replaces the file's");
    let line = last_line(&d.log_text(), "settings in effect");
    assert!(
        line.contains("guest_ack_ms=300") && line.contains("verify_s=7"),
        "{line}"
    );
}

#[test]
fn an_unknown_key_or_a_bad_value_stops_the_start_naming_the_file_and_the_key() {
    // An empty root: the daemon must stop before it looks at the host.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let file = config_path(root);
    for (text, says) in [
        ("guest-ack = 250\n", "unknown field `guest-ack`"),
        ("guest-ack-ms = 0\n", "`guest-ack-ms`"),
        ("rescan-ms = \"fast\"\n", "invalid type"),
        ("root = \"/srv\"\n", "`root` says where this file is"),
    ] {
        write_config(root, text);
        let mut d = Daemon::spawn(root, &[]);
        let status = d.ended().expect("the daemon refuses to start");
        assert!(!status.success(), "{text}: {status}");
        let log = d.log_text();
        assert!(
            log.contains(&file.display().to_string()) && log.contains(says),
            "{text}: the message names the file and says `{says}`: {log}"
        );
        assert!(!default_socket(root).exists(), "{text}: nothing served");
    }
    // A file named by --config must exist.
    std::fs::remove_file(&file).unwrap();
    let missing = root.join("missing.toml");
    let mut d = Daemon::spawn(root, &["--config", missing.to_str().unwrap()]);
    assert!(!d.ended().expect("the daemon refuses to start").success());
    assert!(d.log_text().contains("missing.toml"), "{}", d.log_text());
}

#[test]
fn sighup_applies_a_changed_value_and_a_broken_file_keeps_the_settings_in_use() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let socket = default_socket(&sim.root);
    write_config(&sim.root, "guest-ack-ms = 250\nlog-level = \"info\"\n");
    let d = Daemon::serving(&sim.root, &["--rescan-ms", "100"], &socket);
    let mut c = Client::connect(&socket).unwrap();
    let status = c
        .ping()
        .unwrap()
        .config
        .expect("the daemon reports its config file");
    assert!(
        status.file.ends_with("gvm-vgpud.toml") && status.exists,
        "{status:?}"
    );
    assert_eq!((status.reloads, status.last_reload.is_none()), (0, true));
    let uuid = c
        .create(CreateParams {
            uuid: None,
            parent: sim.parents()[0].clone(),
            type_name: "sim-4c".into(),
            define: false,
            autostart: false,
        })
        .unwrap()
        .uuid;
    // Debug lines (a new owner's GPU registration) show only once the filter allows them.
    const DEBUG_LINE: &str = "GPU registration appeared";
    let mut owners = 0;
    let mut new_owner = || {
        let pid = sim.spawn_owner(&uuid, 0, "");
        owners += 1;
        assert!(wait_until(Duration::from_secs(5), || c
            .show(&uuid.to_string())
            .is_ok_and(|s| s.info.owners.contains(&pid))));
    };
    new_owner();
    assert!(!d.log_text().contains(DEBUG_LINE), "info only at first");

    // A changed live value applies; a changed socket waits for a restart.
    write_config(
        &sim.root,
        "guest-ack-ms = 400\nlog-level = \"info,gvm_vgpud=debug\"\nsocket = \"/elsewhere.sock\"\n",
    );
    d.hangup();
    assert!(d.wait_log("config reloaded", 1), "{}", d.log_text());
    let log = d.log_text();
    let line = last_line(&log, "config reloaded");
    assert!(
        line.contains("guest_ack_ms=400") && line.contains("log-level"),
        "{line}"
    );
    assert!(
        log.contains("`socket` changed: it needs a restart"),
        "{log}"
    );
    // `ping` (`gvm-vgpu status`) says the same as the log.
    let config_status = || {
        let mut c = Client::connect(&socket).unwrap();
        c.ping().unwrap().config.expect("config status")
    };
    let status = config_status();
    let last = status.last_reload.expect("a reload happened");
    assert_eq!(status.reloads, 1);
    assert_eq!(last.applied, ["guest-ack-ms", "log-level"], "{last:?}");
    assert_eq!(last.need_restart, ["socket"], "{last:?}");
    assert!(last.error.is_none() && last.at > 0, "{last:?}");
    assert!(Client::connect(&socket).and_then(|mut c| c.ping()).is_ok());
    new_owner();
    assert!(
        d.wait_log(DEBUG_LINE, 1),
        "debug lines now: {}",
        d.log_text()
    );

    // A broken file: refused with its reason, and nothing of it applies, not even its valid
    // log-level.
    write_config(&sim.root, "log-level = \"warn\"\nguest-ack-ms = 0\n");
    d.hangup();
    assert!(d.wait_log("config reload refused", 1), "{}", d.log_text());
    let line = last_line(&d.log_text(), "config reload refused");
    assert!(
        line.contains("gvm-vgpud.toml") && line.contains("guest-ack-ms"),
        "{line}"
    );
    let status = config_status();
    let last = status.last_reload.expect("a reload happened");
    assert_eq!(status.reloads, 1, "a refused reload is not counted");
    let why = last.error.clone().expect("refused, with the reason");
    assert!(why.contains("guest-ack-ms"), "{why}");
    assert!(
        last.applied.is_empty() && last.need_restart.is_empty(),
        "{last:?}"
    );
    let seen = d.log_text().matches(DEBUG_LINE).count();
    new_owner();
    assert!(
        d.wait_log(DEBUG_LINE, seen + 1),
        "still debug: {}",
        d.log_text()
    );

    // The settings in use are the last good file's: reading it again changes nothing.
    write_config(
        &sim.root,
        "guest-ack-ms = 400\nlog-level = \"info,gvm_vgpud=debug\"\nsocket = \"/elsewhere.sock\"\n",
    );
    d.hangup();
    assert!(d.wait_log("config reloaded", 2), "{}", d.log_text());
    let line = last_line(&d.log_text(), "config reloaded");
    assert!(line.contains("applied=[]"), "{line}");
    assert_eq!(owners, 3);
}
