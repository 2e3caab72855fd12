//! A libvirtd for tests: started when it is not running (with the `libvirt-qemu` user its
//! QEMU runs as), `virsh` at [`URI`], a crash-like restart, and a TCG test domain that sits
//! in the BIOS (no disk: a domain here cannot hold an mdev, so tests bind vGPUs through gvm's
//! metadata, as `gvm-vgpu attach --metadata-only` does).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::wait_until;

/// The libvirt instance the tests use.
pub const URI: &str = "qemu:///system";

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("virsh runs")
}

pub fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn has_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(name).is_file())
            || Path::new("/usr/sbin").join(name).is_file()
    })
}

pub fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn start_libvirtd() -> Result<(), String> {
    for d in ["virtlogd", "libvirtd"] {
        if !running(d)
            && !Command::new(d)
                .arg("-d")
                .status()
                .is_ok_and(|s| s.success())
        {
            return Err(format!("`{d} -d` failed"));
        }
    }
    if wait_until(Duration::from_secs(20), || {
        virsh(&["list", "--name"]).status.success()
    }) {
        Ok(())
    } else {
        Err(format!("libvirtd did not answer at {URI} within 20 s"))
    }
}

/// `None` when libvirtd at [`URI`] answers (started when needed), else why not.
pub fn require_libvirtd() -> Option<String> {
    for cmd in [
        "virsh",
        "libvirtd",
        "virtlogd",
        "qemu-system-x86_64",
        "pgrep",
    ] {
        if !has_command(cmd) {
            return Some(format!("needs `{cmd}` (libvirt and QEMU packages)"));
        }
    }
    if virsh(&["list", "--name"]).status.success() {
        return None;
    }
    let _ = std::fs::create_dir_all("/var/log/libvirt");
    let user = Command::new("id")
        .arg("libvirt-qemu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !user.is_ok_and(|s| s.success()) {
        let made = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", "libvirt-qemu"])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            return Some("cannot create the libvirt-qemu user".into());
        }
    }
    start_libvirtd().err()
}

/// SIGKILL libvirtd (as a crash would) and start it again.
pub fn restart_libvirtd() {
    stop_libvirtd();
    start_libvirtd().expect("libvirtd restarts");
}

/// SIGKILL libvirtd (as a crash would) and wait until it is gone.
pub fn stop_libvirtd() {
    let pid: i32 = std::fs::read_to_string("/run/libvirtd.pid")
        .expect("libvirtd's pid file")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) with the pid from libvirtd's own pid file.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let alive = || {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    };
    assert!(
        wait_until(Duration::from_secs(10), || !alive()),
        "libvirtd {pid} did not die"
    );
    let _ = std::fs::remove_file("/run/libvirtd.pid");
}

/// The tests of one binary that stop and start the one libvirtd: one at a time.
static LIBVIRTD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold this while a test stops, starts or relies on libvirtd.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    LIBVIRTD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A defined TCG test domain (no disk, sits in the BIOS), destroyed and undefined on drop.
pub struct TestDomain {
    pub name: String,
    _dir: tempfile::TempDir,
}

impl TestDomain {
    pub fn define(name: &str) -> TestDomain {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        virsh_ok(&["define", file.to_str().unwrap()]);
        TestDomain {
            name: name.to_string(),
            _dir: dir,
        }
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}

/// `virsh domstate NAME`: `running`, `paused`, `shut off`, …
pub fn domstate(name: &str) -> String {
    virsh_ok(&["domstate", name]).trim().to_string()
}

/// A running TCG domain `gvmd-<pid>-<tag>` bound to a new `sim-4c` vGPU of `sim` the way
/// `gvm-vgpu attach --metadata-only --persistent` binds it (gvm's metadata, no hostdev: a
/// domain here cannot hold an mdev). Returns the domain (destroyed on drop) and the vGPU.
pub fn bound_running_domain(
    sim: &super::Sim,
    c: &mut gvm_client::Client,
    tag: &str,
) -> (TestDomain, uuid::Uuid) {
    let uuid = c
        .create(gvm_client::gvm_proto::CreateParams {
            uuid: None,
            parent: sim.parents()[0].clone(),
            type_name: "sim-4c".into(),
            define: false,
            autostart: false,
        })
        .unwrap()
        .uuid;
    let name = format!("gvmd-{}-{tag}", std::process::id());
    let dom = TestDomain::define(&name);
    let conn = gvm_libvirt::Connection::open(URI).unwrap();
    let mdev = gvm_mdev::MdevHost::new(gvm_host_root::HostRoot::new(&sim.root));
    let mut req =
        gvm_libvirt::AttachRequest::new(&name, gvm_libvirt::Target::Uuid(uuid), true, false);
    req.hostdev = false;
    gvm_libvirt::attach(&conn, &mdev, None, &req).unwrap();
    virsh_ok(&["start", &name]);
    (dom, uuid)
}
