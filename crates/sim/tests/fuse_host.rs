//! End-to-end tests of the mounted simulator: a real FUSE mount, a real shell,
//! real owner processes. They need root and /dev/fuse and skip otherwise.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gvm_shim_abi::vgpu_env::vgpu_uuid_in_environ;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu-sim");

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse unusable: {e}"));
    }
    None
}

fn mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(d.as_ref()))
}

/// A running simulator; dropping it stops it and makes sure nothing stays mounted.
struct Sim {
    child: Option<Child>,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dir = tmp.path().to_path_buf();
        let child = Command::new(BIN)
            .arg("--root")
            .arg(&dir)
            .arg("--foreground")
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
        let sim = Sim {
            child: Some(child),
            dir,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sim.p("sys/kernel/debug/gvm-sim/owners").exists() {
            assert!(
                Instant::now() < deadline,
                "simulator did not mount within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sim
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.p(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    /// One write(2) of `data`; the errno on failure.
    fn write(&self, rel: &str, data: &str) -> Result<(), Option<i32>> {
        let mut f = OpenOptions::new()
            .write(true)
            .open(self.p(rel))
            .map_err(|e| e.raw_os_error())?;
        f.write(data.as_bytes())
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
    }

    fn sh(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("D", &self.dir)
            .output()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        assert!(
            out.status.success(),
            "sh -c {script:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(
            Pid::from_raw(i32::try_from(child.id()).ok()?),
            Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
        let mount_point = self.dir.join("sys");
        if mounted(&mount_point) {
            let _ = Command::new("umount").arg("-l").arg(&mount_point).status();
        }
    }
}

fn uuid(n: u32) -> String {
    format!("5a7c0de0-0000-4000-8000-{n:012}")
}

fn stat_of(sim: &Sim, pid: &str) -> (u64, u64) {
    let s = sim.read(&format!(
        "sys/kernel/debug/nvidia-uvm/processes/{pid}/0/gcgroup.stat"
    ));
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {s:?}"))
    };
    (field("nr_ended_kernels:"), field("nr_pending_kernels:"))
}

const T: &str = "sys/class/mdev_bus/0000:3b:00.0/mdev_supported_types";

#[test]
fn gvm_sim_host_end_to_end() {
    if let Some(r) = skip_reason() {
        println!("SKIP: {r}");
        return;
    }
    let mut sim = Sim::start(&["--gpus", "2"]);
    let d = sim.dir.display().to_string();
    assert_eq!(
        sim.sh("readlink -f $D/sys/class/mdev_bus/0000:3c:00.0"),
        format!("{d}/sys/devices/pci0000:00/0000:3c:00.0")
    );
    assert_eq!(
        sim.read("sys/devices/pci0000:00/0000:3c:00.0/gvm_uvm_index"),
        "8\n"
    );

    // Create from a real shell; available_instances moves on every type of the GPU.
    let u1 = uuid(1);
    assert_eq!(
        sim.read(&format!("{T}/gvmsim-4/available_instances")),
        "2\n"
    );
    sim.sh(&format!("echo {u1} > $D/{T}/gvmsim-4/create"));
    assert_eq!(
        sim.read(&format!("{T}/gvmsim-4/available_instances")),
        "1\n"
    );
    assert_eq!(
        sim.read(&format!("{T}/gvmsim-1/available_instances")),
        "10\n"
    );
    let devdir = format!("{d}/sys/devices/pci0000:00/0000:3b:00.0/{u1}");
    assert_eq!(
        sim.sh(&format!("readlink -f $D/sys/bus/mdev/devices/{u1}")),
        devdir
    );
    assert_eq!(
        sim.sh(&format!(
            "readlink -f $D/sys/bus/mdev/devices/{u1}/mdev_type"
        )),
        format!("{d}/sys/devices/pci0000:00/0000:3b:00.0/mdev_supported_types/gvmsim-4")
    );
    let group = sim.sh(&format!(
        "readlink -f $D/sys/bus/mdev/devices/{u1}/iommu_group"
    ));
    assert!(
        group.starts_with(&format!("{d}/sys/kernel/iommu_groups/")),
        "{group}"
    );
    assert!(Path::new(&group).is_dir());

    // Every errno case of create and remove.
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-1/create"), &u1),
        Err(Some(libc::EEXIST))
    );
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-1/create"), &u1.to_uppercase()),
        Err(Some(libc::EEXIST))
    );
    assert_eq!(
        sim.write(
            &format!("{T}/gvmsim-1/create"),
            "not-a-uuid-at-all-but-36-chars-long!"
        ),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-1/create"), &format!("{}\n\n", uuid(2))),
        Err(Some(libc::EINVAL))
    );
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-5/create"), &uuid(3)),
        Err(Some(libc::EUSERS))
    );
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-1/available_instances"), "3"),
        Err(Some(libc::EACCES))
    );
    let upper = uuid(4).to_uppercase();
    assert_eq!(
        sim.write(&format!("{T}/gvmsim-1/create"), &format!("{upper}x")),
        Ok(())
    );
    assert!(
        sim.p(&format!("sys/bus/mdev/devices/{}", uuid(4))).exists(),
        "named in lower case"
    );
    assert_eq!(
        sim.write(&format!("sys/bus/mdev/devices/{}/remove", uuid(4)), "0"),
        Ok(())
    );
    assert!(
        sim.p(&format!("sys/bus/mdev/devices/{}", uuid(4))).exists(),
        "0 keeps the device"
    );
    assert_eq!(
        sim.write(&format!("sys/bus/mdev/devices/{}/remove", uuid(4)), "abc"),
        Err(Some(libc::EINVAL))
    );
    sim.sh(&format!(
        "echo 1 > $D/sys/bus/mdev/devices/{}/remove",
        uuid(4)
    ));
    assert!(!sim.p(&format!("sys/bus/mdev/devices/{}", uuid(4))).exists());

    // An owner registers, carries its UUID in its environment, and runs.
    assert_eq!(
        sim.write(
            "sys/kernel/debug/gvm-sim/control",
            &format!("spawn {u1} memory=4096")
        ),
        Ok(())
    );
    let line = sim.read("sys/kernel/debug/gvm-sim/owners");
    let pid = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(line.starts_with(&format!("{pid} {u1} 0 1 4096 ")), "{line}");
    assert_eq!(
        sim.read("sys/kernel/debug/nvidia-uvm/processes/list"),
        format!("PID\n{pid}\n")
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert_eq!(
        vgpu_uuid_in_environ(&environ),
        Some(u1.as_str()),
        "the owner's environ names its vGPU as the daemon reads it"
    );
    std::thread::sleep(Duration::from_millis(150));
    let (e1, _) = stat_of(&sim, &pid);
    std::thread::sleep(Duration::from_millis(150));
    let (e2, pending) = stat_of(&sim, &pid);
    assert!(
        e2 > e1 && pending > 0,
        "busy owner makes progress: {e1} -> {e2}, pending {pending}"
    );

    // Frozen: progress stops, pending stays; thawed: it resumes.
    let knob = format!("sys/kernel/debug/nvidia-uvm/processes/{pid}/0/compute.freeze");
    sim.sh(&format!("echo 1 > $D/{knob}"));
    let (f1, _) = stat_of(&sim, &pid);
    std::thread::sleep(Duration::from_millis(150));
    let (f2, pending) = stat_of(&sim, &pid);
    assert_eq!((f1, pending > 0), (f2, true), "frozen owner made progress");
    assert_eq!(sim.write(&knob, "2"), Err(Some(libc::EINVAL)));
    assert_eq!(sim.write(&knob, "0\n"), Ok(()));
    std::thread::sleep(Duration::from_millis(150));
    assert!(stat_of(&sim, &pid).0 > f2);

    // Killed by someone else: reaped and gone from the GVM tree.
    let pid_n: i32 = pid.parse().unwrap_or(0);
    assert!(kill(Pid::from_raw(pid_n), Signal::SIGTERM).is_ok());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.read("sys/kernel/debug/gvm-sim/owners").contains(&pid) {
        assert!(Instant::now() < deadline, "killed owner not reaped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        sim.read("sys/kernel/debug/nvidia-uvm/processes/list"),
        "PID\n"
    );
    assert_eq!(sim.write(&knob, "1"), Err(Some(libc::ENOENT)));

    // SIGTERM unmounts cleanly.
    assert_eq!(sim.stop(), Some(0));
    assert!(!mounted(&sim.dir.join("sys")), "mount left behind");
}

#[test]
fn mtty_host_and_mdevctl() {
    if let Some(r) = skip_reason() {
        println!("SKIP: {r}");
        return;
    }
    let mut sim = Sim::start(&["--model", "mtty", "--owners-per-vgpu", "1"]);
    let t = "sys/class/mdev_bus/mtty/mdev_supported_types";
    assert_eq!(sim.read(&format!("{t}/mtty-2/name")), "Dual port serial\n");
    assert!(!sim.p(&format!("{t}/mtty-2/description")).exists());
    for i in 0..12 {
        assert_eq!(
            sim.write(&format!("{t}/mtty-2/create"), &uuid(i)),
            Ok(()),
            "device {i}"
        );
    }
    assert_eq!(sim.read(&format!("{t}/mtty-1/available_instances")), "0\n");
    assert_eq!(
        sim.write(&format!("{t}/mtty-1/create"), &uuid(99)),
        Err(Some(libc::ENOSPC))
    );
    // Owners start just after their create returns (as QEMU after the mdev exists).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sim.read("sys/kernel/debug/gvm-sim/owners").lines().count() < 12
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        sim.read("sys/kernel/debug/gvm-sim/owners").lines().count(),
        12,
        "one owner per vGPU"
    );
    // Removing a held vGPU waits for its owner, as the kernel's remove waits for the
    // last VFIO device fd (docs/conformance.md): the device leaves the bus and its type,
    // keeps its ports, and the write returns once the owner is gone.
    let remove = sim.p(&format!("sys/bus/mdev/devices/{}/remove", uuid(0)));
    let dev_dir = sim.p(&format!("sys/class/mdev_bus/mtty/{}", uuid(0)));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = OpenOptions::new()
            .write(true)
            .open(&remove)
            .and_then(|mut f| f.write(b"1\n"))
            .map_err(|e| e.raw_os_error());
        let _ = tx.send(r);
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "remove of a held device returned at once"
    );
    assert!(!sim.p(&format!("sys/bus/mdev/devices/{}", uuid(0))).exists());
    assert!(dev_dir.is_dir());
    assert!(!dev_dir.join("remove").exists());
    assert!(!dev_dir.join("mdev_type").exists());
    assert!(dev_dir.join("iommu_group").exists());
    assert_eq!(sim.read(&format!("{t}/mtty-1/available_instances")), "0\n");
    let owners = sim.read("sys/kernel/debug/gvm-sim/owners");
    let pid = owners
        .lines()
        .find(|l| l.contains(&uuid(0)))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_default();
    assert_eq!(
        sim.write("sys/kernel/debug/gvm-sim/control", &format!("kill {pid}")),
        Ok(())
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)), Ok(Ok(2)));
    assert!(!dev_dir.exists());
    assert_eq!(sim.read(&format!("{t}/mtty-1/available_instances")), "2\n");
    assert_eq!(
        sim.read("sys/kernel/debug/gvm-sim/owners").lines().count(),
        11
    );

    if Command::new("sh")
        .args(["-c", "command -v mdevctl && command -v unshare"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        let out = sim.sh("unshare -m --propagation private sh -c 'mount --bind $D/sys /sys && mdevctl types && mdevctl list'");
        assert!(
            out.contains("mtty-2") && out.contains("Dual port serial"),
            "{out}"
        );
        assert!(out.contains(&format!("{} mtty mtty-2", uuid(1))), "{out}");
    } else {
        println!("SKIP: mdevctl or unshare not installed; mdevctl part not run");
    }
    assert_eq!(sim.stop(), Some(0));
    assert!(!mounted(&sim.dir.join("sys")));
}

#[test]
fn stale_mount_is_reported_with_the_fix() {
    if let Some(r) = skip_reason() {
        println!("SKIP: {r}");
        return;
    }
    let sim = Sim::start(&[]);
    let out = Command::new(BIN)
        .arg("--root")
        .arg(&sim.dir)
        .arg("--foreground")
        .output();
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("umount -l") && err.contains("fusermount3 -u"),
        "{err}"
    );
}

/// Runs `script` with `sh -c` as uid/gid 65534 (nobody); returns (success, stderr).
fn as_nobody(script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap_or_else(|e| panic!("running sh as nobody: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn another_user_reads_the_simulated_sysfs_but_cannot_create_remove_or_freeze() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(&["--gpus", "1"]);
    // tempfile's directory is 0700: let the other user walk to the mount, as on a real host.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sim.dir, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", sim.dir.display()));
    let types = sim.p("sys/class/mdev_bus/0000:3b:00.0/mdev_supported_types");
    let ty = std::fs::read_dir(&types)
        .ok()
        .and_then(|mut rd| rd.next())
        .and_then(|e| e.ok())
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no type under {}", types.display()));
    let (ok, err) = as_nobody(&format!("cat {}/available_instances", ty.display()));
    assert!(ok, "reading an attribute as another user: {err}");
    let u = uuid(77);
    let (ok, err) = as_nobody(&format!("echo {u} > {}/create", ty.display()));
    assert!(
        !ok && err.contains("Permission denied"),
        "create as nobody: ok={ok} {err}"
    );
    assert!(!sim.p(&format!("sys/bus/mdev/devices/{u}")).exists());

    // Root creates one and starts an owner; nobody can neither freeze it nor remove the device.
    std::fs::write(ty.join("create"), format!("{u}\n")).unwrap_or_else(|e| panic!("create: {e}"));
    std::fs::write(
        sim.p("sys/kernel/debug/gvm-sim/control"),
        format!("spawn {u}\n"),
    )
    .unwrap_or_else(|e| panic!("spawn: {e}"));
    let procs = sim.p("sys/kernel/debug/nvidia-uvm/processes");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let pid = std::fs::read_dir(&procs).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.bytes().all(|b| b.is_ascii_digit()))
        });
        if let Some(p) = pid {
            break p;
        }
        assert!(Instant::now() < deadline, "no owner process appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    let freeze = procs.join(&pid).join("0/compute.freeze");
    let (ok, err) = as_nobody(&format!("echo 1 > {}", freeze.display()));
    assert!(
        !ok && err.contains("Permission denied"),
        "freeze as nobody: ok={ok} {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&freeze)
            .map(|s| s.trim().to_string())
            .ok(),
        Some("0".to_string()),
        "still thawed"
    );
    let (ok, err) = as_nobody(&format!(
        "echo 1 > {}/remove",
        sim.p(&format!("sys/bus/mdev/devices/{u}")).display()
    ));
    assert!(
        !ok && err.contains("Permission denied"),
        "remove as nobody: ok={ok} {err}"
    );
    assert!(sim.p(&format!("sys/bus/mdev/devices/{u}")).exists());
}
