//! gvm-vgpud follows a real libvirtd: a running TCG domain bound to a vGPU of the simulated host
//! (through gvm's `<metadata>` element, as `gvm-vgpu attach --metadata-only` writes it: a
//! domain here cannot hold an mdev) is suspended and resumed with `virsh`, and the vGPU's owner
//! processes' `compute.freeze` follows; a user freeze survives a suspend/resume cycle; a
//! `kill -9` of libvirtd does not lose the next suspend; `set <domain>` resolves the domain's
//! vGPU; destroying the domain drops the binding. Also checks that the domain's real QEMU pid
//! resolves as the vGPU's owner through libvirt's run directory.
//!
//! Needs root, /dev/fuse, libvirtd, virsh and qemu-system-x86_64; skips (printing why) without.
//! In its own test binary because it kills libvirtd.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{CreateParams, ErrorCode, OwnerRule};
use gvm_host_root::HostRoot;
use gvm_libvirt::{AttachRequest, Connection, Target};

const URI: &str = "qemu:///system";

// ---- libvirtd fixture (after crates/libvirt/tests/common) ----

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("virsh runs")
}

fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(
        out.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(name).is_file())
            || Path::new("/usr/sbin").join(name).is_file()
    })
}

fn running(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-x", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_libvirtd() -> Result<(), String> {
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
fn require_libvirtd() -> Option<String> {
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
fn restart_libvirtd() {
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
    start_libvirtd().expect("libvirtd restarts");
}

/// A defined TCG test domain (no disk, sits in the BIOS), destroyed and undefined on drop.
struct TestDomain {
    name: String,
    _dir: tempfile::TempDir,
}

impl TestDomain {
    fn define(name: &str) -> TestDomain {
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

// ---- the test ----

/// Every owner's `compute.freeze` equals `want` within `timeout`; returns how long it took.
fn freeze_follows(sim: &Sim, owners: &[u32], want: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let ok = wait_until(timeout, || {
        owners
            .iter()
            .all(|p| sim.knob(*p, 0, "compute.freeze").as_deref() == Some(want))
    });
    let states: Vec<Option<String>> = owners
        .iter()
        .map(|p| sim.knob(*p, 0, "compute.freeze"))
        .collect();
    assert!(
        ok,
        "compute.freeze not {want} within {timeout:?}: {states:?}"
    );
    t0.elapsed()
}

/// The daemon's libvirt status file says `domain` is (or is not) paused.
fn status_says_paused(root: &Path, domain: &str, paused: bool) -> bool {
    let Ok(text) = std::fs::read_to_string(root.join("run/gvm-vgpu/libvirt.json")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["domains"][domain]["paused"].as_bool() == Some(paused)
}

#[test]
fn suspend_and_resume_through_libvirt_freeze_and_thaw_the_bound_vgpu() {
    if let Some(why) = skip_reason().or_else(require_libvirtd) {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let d = sim.daemon(&["--libvirt", URI]);
    let mut c = d.client();
    let parent = sim.parents()[0].clone();
    let uuid = c
        .create(CreateParams {
            uuid: None,
            parent,
            type_name: "sim-4c".into(),
            define: false,
            autostart: false,
        })
        .unwrap()
        .uuid;

    // Bind the vGPU the way `gvm-vgpu attach --metadata-only --persistent` does, then start.
    let name = format!("gvmd-{}-lifecycle", std::process::id());
    let dom = TestDomain::define(&name);
    let conn = Connection::open(URI).unwrap();
    let mdev = gvm_mdev::MdevHost::new(HostRoot::new(&sim.root));
    let mut req = AttachRequest::new(&name, Target::Uuid(uuid), true, false);
    req.hostdev = false;
    gvm_libvirt::attach(&conn, &mdev, None, &req).unwrap();
    virsh_ok(&["start", &name]);

    // The domain's real QEMU resolves as the vGPU's owner through libvirt's run directory.
    let qemu_pid: u32 = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut real = gvm_vgpud::owners::Resolver::new(HostRoot::new("/"));
    real.refresh_libvirt();
    assert_eq!(
        real.owner_of(qemu_pid, true),
        Some(gvm_vgpud::owners::Ownership {
            uuids: vec![uuid],
            rule: OwnerRule::Libvirt,
            uid: None,
        }),
        "QEMU {qemu_pid} of {name} should own {uuid}"
    );

    let owners = [
        sim.spawn_owner(&uuid, 0, "busy=1"),
        sim.spawn_owner(&uuid, 0, "busy=1"),
    ];
    assert!(
        wait_until(Duration::from_secs(5), || owners.iter().all(|p| sim
            .knob(*p, 0, "compute.priority")
            .is_some_and(|v| v != "8"))),
        "owners not tuned"
    );
    let shown = c.show(&name).unwrap().info;
    assert_eq!(
        (shown.uuid, shown.domain.as_deref()),
        (uuid, Some(name.as_str()))
    );
    freeze_follows(&sim, &owners, "0", Duration::from_secs(1));

    virsh_ok(&["suspend", &name]);
    let froze = freeze_follows(&sim, &owners, "1", Duration::from_secs(2));
    assert!(c.show(&uuid.to_string()).unwrap().info.knobs.frozen);
    virsh_ok(&["resume", &name]);
    let thawed = freeze_follows(&sim, &owners, "0", Duration::from_secs(2));
    println!("suspend → frozen in {froze:?}, resume → thawed in {thawed:?}");

    // A user freeze survives a suspend/resume cycle.
    c.freeze(&name).unwrap();
    freeze_follows(&sim, &owners, "1", Duration::from_secs(1));
    virsh_ok(&["suspend", &name]);
    assert!(wait_until(Duration::from_secs(3), || status_says_paused(
        &sim.root, &name, true
    )));
    virsh_ok(&["resume", &name]);
    assert!(wait_until(Duration::from_secs(3), || status_says_paused(
        &sim.root, &name, false
    )));
    std::thread::sleep(Duration::from_millis(500));
    freeze_follows(&sim, &owners, "1", Duration::from_millis(10));
    c.thaw(&name).unwrap();
    freeze_follows(&sim, &owners, "0", Duration::from_secs(1));

    // libvirtd crashes and comes back: the next suspend still freezes within seconds.
    let killed = Instant::now();
    restart_libvirtd();
    virsh_ok(&["suspend", &name]);
    let froze = freeze_follows(&sim, &owners, "1", Duration::from_secs(10));
    println!(
        "after a libvirtd kill: suspend → frozen in {froze:?} ({:?} after the kill)",
        killed.elapsed()
    );
    virsh_ok(&["resume", &name]);
    freeze_follows(&sim, &owners, "0", Duration::from_secs(3));
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("libvirt connection lost") && log.matches("libvirt connected").count() >= 2,
        "the daemon did not report the lost connection and the reconnect"
    );

    // Retune by domain name.
    c.set_priority(&name, 3).unwrap();
    assert!(wait_until(Duration::from_secs(1), || owners.iter().all(
        |p| sim.knob(*p, 0, "compute.priority").as_deref() == Some("3")
    )));

    // Destroy: the daemon logs it and drops the binding.
    virsh_ok(&["destroy", &name]);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&d.log)
            .is_ok_and(
                |l| l.contains("libvirt domain ended") && l.contains(&name)
            )),
        "no 'domain ended' in the daemon log"
    );
    assert!(wait_until(Duration::from_secs(2), || c
        .show(&uuid.to_string())
        .is_ok_and(|v| v.info.domain.is_none())));
    let err = c.show(&name).err().and_then(|e| e.code());
    assert_eq!(err, Some(ErrorCode::NotFound));
    drop(dom);
}
