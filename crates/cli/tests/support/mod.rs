//! What the CLI's integration tests share: reading a command's output, the `--json`
//! payload check, and a `gvm-vgpud` serving a test root.

#![allow(dead_code)] // each test binary uses part of it

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const CLI_BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu");

/// `gvm-vgpu --root ROOT ARGS…`, without a catalog directory from the caller's environment.
pub fn gvm_vgpu(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(CLI_BIN);
    c.arg("--root")
        .arg(root)
        .args(args)
        .env_remove("GVM_VGPU_CATALOG");
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stdout of `o`, after checking that `gvm-vgpu ARGS` succeeded.
pub fn succeeded(o: &Output, args: &[&str]) -> String {
    assert!(
        o.status.success(),
        "gvm-vgpu {args:?} failed: {}",
        stderr(o)
    );
    stdout(o)
}

/// The payload of a `--json` object, checking its schema and that it has one other member.
pub fn payload(v: &Value) -> Value {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(obj.get("schema"), Some(&Value::from(1)), "{v}");
    assert_eq!(obj.len(), 2, "schema and one member: {v}");
    obj.iter()
        .find(|(k, _)| *k != "schema")
        .map(|(_, p)| p.clone())
        .unwrap()
}

/// Poll `f` every 50 ms until it holds (true) or `timeout` passes (its last answer).
pub fn wait_up_to(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// `gvm-vgpud --no-libvirt` (or as [`Daemon::start_with`] says) serving a test root, killed
/// on drop (its store is crash-safe).
pub struct Daemon(pub std::process::Child);

impl Daemon {
    pub fn start(root: &Path) -> Daemon {
        Self::start_logging(root, Stdio::null())
    }

    /// [`Daemon::start`] with the daemon's log (stderr) going to `log`.
    pub fn start_logging(root: &Path, log: impl Into<Stdio>) -> Daemon {
        Self::start_with(root, log, |c| {
            c.arg("--no-libvirt");
        })
    }

    /// `gvm-vgpud --root ROOT`, changed by `adjust` (its libvirt flag, environment), with its
    /// log going to `log`.
    pub fn start_with(
        root: &Path,
        log: impl Into<Stdio>,
        adjust: impl FnOnce(&mut Command),
    ) -> Daemon {
        let bin = gvm_testkit::workspace_bin_rebuilt("gvm-vgpud", "gvm-vgpud");
        let mut command = Command::new(bin);
        command
            .arg("--root")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(log);
        adjust(&mut command);
        let child = command.spawn().expect("start gvm-vgpud");
        let daemon = Daemon(child);
        let socket = root.join("run/gvm-vgpu/api.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "gvm-vgpud did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// `systemctl reload gvm-vgpud`: SIGHUP.
    pub fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, libc::SIGHUP) }, 0);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
