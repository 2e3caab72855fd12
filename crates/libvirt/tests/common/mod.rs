//! Fixture for tests against a real libvirtd: start one when possible, else say why not, and
//! transient test domains that are always cleaned up.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the fixture"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gvm_libvirt::WatchEvent;

/// The libvirt URI every test uses.
pub const URI: &str = "qemu:///system";

static START: Mutex<()> = Mutex::new(());

/// Run `virsh -c URI args…`.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run virsh: {e}"))
}

/// Run virsh and fail the test with its stderr unless it succeeds; returns stdout.
pub fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn daemon_answers() -> bool {
    virsh(&["list", "--name"]).status.success()
}

fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Start `libvirtd -d` (and `virtlogd -d`) if needed and wait until it answers.
pub fn start_libvirtd() -> Result<(), String> {
    if !running("virtlogd") {
        let st = Command::new("virtlogd").arg("-d").status();
        if !st.is_ok_and(|s| s.success()) {
            return Err("`virtlogd -d` failed".into());
        }
    }
    if !running("libvirtd") {
        let st = Command::new("libvirtd").arg("-d").status();
        if !st.is_ok_and(|s| s.success()) {
            return Err("`libvirtd -d` failed".into());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon_answers() {
        if Instant::now() > deadline {
            return Err(format!(
                "libvirtd did not answer `virsh -c {URI} version` within 20 s (`virsh list`)"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// `None` when a libvirtd at [`URI`] is usable (starting one, idempotently, when this process
/// is root and the binaries exist), else the reason to skip.
pub fn require_libvirtd() -> Option<String> {
    let _guard = START.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to start and use libvirtd (qemu:///system)".into());
    }
    for cmd in ["virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"] {
        if let Some(r) = gvm_testkit::require_command(cmd) {
            return Some(r);
        }
    }
    if daemon_answers() {
        return None;
    }
    // The set-up a packaged install (with systemd) would have done.
    let _ = std::fs::create_dir_all("/var/log/libvirt");
    if let Err(r) = ensure_qemu_user() {
        return Some(r);
    }
    start_libvirtd().err()
}

fn id_groups(user: &str) -> Option<String> {
    let out = Command::new("id")
        .args(["-nG", user])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_ok(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd).args(args).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{cmd} {}` exited with {s}", args.join(" "))),
        Err(e) => Err(format!("cannot run {cmd}: {e}")),
    }
}

/// The `libvirt-qemu` user QEMU runs as, in group `kvm` when that exists: without it libvirtd
/// finds /dev/kvm unusable for QEMU, discards its capability cache on every lookup and each
/// `virsh define` takes ~30 s. A running libvirtd caches that verdict, so it is restarted
/// when the membership had to be added.
fn ensure_qemu_user() -> Result<(), String> {
    const USER: &str = "libvirt-qemu";
    let kvm_group = Path::new("/dev/kvm").exists()
        && Command::new("getent")
            .args(["group", "kvm"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    match id_groups(USER) {
        None => {
            let mut args = vec![
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ];
            if kvm_group {
                args.extend(["--groups", "kvm"]);
            }
            args.push(USER);
            run_ok("useradd", &args)
        }
        Some(groups) if kvm_group && !groups.split_whitespace().any(|g| g == "kvm") => {
            run_ok("usermod", &["-a", "-G", "kvm", USER])?;
            if running("libvirtd") {
                restart_libvirtd()?;
            }
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// The pid of the running libvirtd, from its pid file.
pub fn libvirtd_pid() -> Option<i32> {
    std::fs::read_to_string("/run/libvirtd.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Kill libvirtd (SIGKILL, as a crash would) and start it again.
pub fn restart_libvirtd() -> Result<(), String> {
    let pid = libvirtd_pid().ok_or("no /run/libvirtd.pid")?;
    // SAFETY: kill(2) with a pid read from libvirtd's own pid file.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            return Err(format!("libvirtd {pid} did not die"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file("/run/libvirtd.pid");
    start_libvirtd()
}

/// A domain name unique to this process and call.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "gvmtest-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCG domain with no disk and no kernel: it starts and sits in the BIOS, enough to be
/// suspended and resumed. `devices` is spliced into `<devices>`, `metadata` into `<metadata>`.
pub fn domain_xml(name: &str, devices: &str, metadata: &str) -> String {
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n  <vcpu>1</vcpu>\n  <metadata>{metadata}</metadata>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <features><acpi/></features>\n  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n{devices}  </devices>\n</domain>\n"
    )
}

/// A defined test domain, destroyed and undefined on drop.
pub struct TestDomain {
    pub name: String,
    _dir: tempfile::TempDir,
}

impl TestDomain {
    /// `virsh define` a domain from `xml`.
    pub fn define(name: &str, xml: &str) -> TestDomain {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("domain.xml");
        std::fs::write(&file, xml).expect("the domain XML file is written");
        virsh_ok(&["define", path_str(&file)]);
        TestDomain {
            name: name.to_string(),
            _dir: dir,
        }
    }

    /// `virsh dumpxml` (`--inactive` when asked).
    pub fn dumpxml(&self, inactive: bool) -> String {
        if inactive {
            virsh_ok(&["dumpxml", "--inactive", &self.name])
        } else {
            virsh_ok(&["dumpxml", &self.name])
        }
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Receive events until one satisfies `want` (returning it) or `timeout` passes (failing the
/// test with everything seen).
pub fn wait_for(
    rx: &Receiver<WatchEvent>,
    timeout: Duration,
    what: &str,
    want: impl Fn(&WatchEvent) -> bool,
) -> WatchEvent {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if want(&ev) => return ev,
            Ok(ev) => seen.push(ev),
            Err(_) => panic!("no {what} within {timeout:?}; saw {seen:#?}"),
        }
    }
}
