//! Two users' CUDA processes on one GPU, with a real gvm-vgpud on the simulated host and a
//! temporary second user made for the test (`useradd`, removed after).
//!
//! * **Arbitration across users** (issue 15, item 1): each user's processes share a block per
//!   GPU that the daemon made and handed over (a sealed memfd, in no directory), and the
//!   daemon's relay carries busy between them. A busy root process holds the user's less
//!   important launch, as it would a process of its own uid; without the daemon the two run
//!   side by side unarbitrated (the control that shows the relay is what holds).
//! * **A domain lies only to itself**: the user declaring priority 0 for an unowned process is
//!   counted at the default priority in root's block and holds nobody more important.
//! * **Nothing a user can pre-create**: with a daemon, no per-uid file appears in `/dev/shm`,
//!   and a file pre-created under root's standalone name changes nothing.
//!
//! Runs the built `libgvm_cuda.so` over the fake `libcuda.so.1` (no GPU). Skips (printing why)
//! without root, `/dev/fuse`, `cc` or `useradd`.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{shim_so, skip_reason, wait_until, Sim};
use gvm_testkit::temp_user::TempUser;

const GPU: &str = "0000:3B:00.0";

struct Rig {
    dir: tempfile::TempDir,
    so: PathBuf,
    fake: PathBuf,
    driver: PathBuf,
    user: TempUser,
}

fn rig() -> Option<Rig> {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return None;
    }
    let Some(built) = shim_so() else {
        println!("SKIP: libgvm_cuda.so could not be built");
        return None;
    };
    let user = match TempUser::create("gvmtwo") {
        Ok(u) => u,
        Err(why) => {
            println!("SKIP: {why}");
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    // The other user must reach the programs (a temporary directory is 0700).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let so = dir.path().join("libgvm_cuda.so");
    std::fs::copy(&built, &so).unwrap();
    let (fake, driver) = match common::build_fake_cuda(dir.path()).and_then(|f| {
        Ok((
            f,
            common::build_shim_test_program(dir.path(), "driver.c", "driver")?,
        ))
    }) {
        Ok(built) => built,
        Err(why) => {
            println!("SKIP: {why}");
            return None;
        }
    };
    Some(Rig {
        dir,
        so,
        fake,
        driver,
        user,
    })
}

/// Who runs a process.
#[derive(Clone, Copy)]
enum As {
    Root,
    User,
}

/// One `driver FAKE arb N STAY_MS GAP_MS` process and its output lines.
struct Arb {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Arb {
    fn value(&self, key: &str, secs: u64) -> Option<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            if line == key {
                return Some(0);
            }
            if let Some(v) = line.strip_prefix(&format!("{key}=")) {
                return v.parse().ok();
            }
        }
    }
}

impl Drop for Arb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rig {
    /// Start an arbitration process as `who` at `priority` with fake kernels of `kernel_ms`;
    /// `shape` is (launches, stay ms, gap ms). `socket`: the daemon's shim socket, or `off`.
    fn spawn(
        &self,
        who: As,
        root: &Path,
        socket: &str,
        priority: u32,
        kernel_ms: u32,
        shape: (u32, u32, u32),
    ) -> Arb {
        let (n, stay, gap) = shape;
        let mut c = Command::new(&self.driver);
        c.arg(&self.fake)
            .args(["arb", &n.to_string(), &stay.to_string(), &gap.to_string()])
            .env("LD_PRELOAD", &self.so)
            .env("GVM_VGPU_ROOT", root)
            .env("GVM_SHIM_SOCKET", socket)
            .env("GVM_PRIORITY", priority.to_string())
            .env("FAKE_KERNEL_MS", kernel_ms.to_string())
            .env("FAKE_PCI_BUS_IDS", GPU)
            .env("GVM_MEMORY_LIMIT", "unlimited")
            .env_remove("GVM_SHIM_ARBITER")
            .env_remove("GVM_SHIM_CONTROL")
            .env_remove("GVM_VGPU_UUID")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let As::User = who {
            c.uid(self.user.uid).gid(self.user.gid);
        }
        let mut child = c.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Arb { child, lines }
    }
}

/// Whether process `pid` holds an arbitration block the daemon handed over (a memfd named
/// `gvm-vgpu-arbiter`).
fn holds_a_handed_block(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:gvm-vgpu-arbiter"))
            })
        })
        .unwrap_or(false)
}

/// The less important process (`lo`, priority `lo_prio`) launches, then again 300 ms later;
/// in between the other (`hi`, priority `hi_prio`) launches a 1 s kernel. Returns lo's
/// longest launch call (ms) and whether both held a daemon-made block.
#[allow(clippy::too_many_arguments)]
fn contend(
    rig: &Rig,
    root: &Path,
    socket: &str,
    lo_as: As,
    lo_prio: u32,
    hi_as: As,
    hi_prio: u32,
) -> (u64, bool) {
    let lo = rig.spawn(lo_as, root, socket, lo_prio, 0, (2, 0, 300));
    assert!(
        lo.value("launched", 10).is_some(),
        "the low process started"
    );
    let hi = rig.spawn(hi_as, root, socket, hi_prio, 1000, (1, 2000, 0));
    assert!(
        hi.value("launched", 10).is_some(),
        "the high process started"
    );
    let handed = holds_a_handed_block(lo.child.id()) && holds_a_handed_block(hi.child.id());
    let longest = lo
        .value("longest_ms", 10)
        .expect("the low process finished");
    (longest, handed)
}

#[test]
fn a_busy_root_process_holds_another_users_less_important_launch_through_the_relay() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    std::fs::create_dir_all(sim.root.join("dev/shm")).unwrap();
    std::fs::set_permissions(sim.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shm = sim.root.join("dev/shm");
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777)).unwrap();

    // The control: no daemon. Each uid has its own standalone block, so nothing holds the
    // user's process.
    let (alone, _) = contend(&rig, &sim.root, "off", As::User, 12, As::Root, 8);
    assert!(
        alone < 200,
        "without the daemon two uids are not arbitrated: {alone} ms"
    );

    let d = sim.daemon(&["--backend", "shim"]);
    let sock = sim.root.join("run/gvm-vgpu/shim.sock");
    let sock = sock.to_str().unwrap();
    assert!(wait_until(Duration::from_secs(5), || Path::new(sock).exists()));
    for f in std::fs::read_dir(&shm).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    let (held, handed) = contend(&rig, &sim.root, sock, As::User, 12, As::Root, 8);
    assert!(
        handed,
        "both processes joined a block the daemon handed over; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    assert!(
        (300..2500).contains(&held),
        "the user's second launch waited for root's 1 s kernel (~700 ms): {held} ms; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let left: Vec<String> = std::fs::read_dir(&shm)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gvm-vgpu-gpu"))
        .collect();
    assert!(
        left.is_empty(),
        "with a daemon no arbitration file is made in /dev/shm: {left:?}"
    );
}

#[test]
fn a_user_declaring_priority_0_holds_no_more_important_root_process() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    std::fs::create_dir_all(sim.root.join("dev/shm")).unwrap();
    std::fs::set_permissions(sim.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _d = sim.daemon(&["--backend", "shim"]);
    let sock = sim.root.join("run/gvm-vgpu/shim.sock");
    let sock = sock.to_str().unwrap();
    assert!(wait_until(Duration::from_secs(5), || Path::new(sock).exists()));
    // A file pre-created under root's standalone block name: with the daemon it is never used.
    let planted = sim.root.join("dev/shm/gvm-vgpu-gpu-0000:3b:00.0-u0");
    std::fs::write(&planted, vec![0u8; 8192]).unwrap();
    std::os::unix::fs::chown(&planted, Some(rig.user.uid), Some(rig.user.gid)).unwrap();
    // Root at 4 (counted at the default 8 elsewhere, being unowned), the user busy at a
    // self-declared 0: counted at 8 in root's block, so it holds nothing at 4.
    let (longest, handed) = contend(&rig, &sim.root, sock, As::Root, 4, As::User, 0);
    assert!(handed, "both joined daemon-made blocks");
    assert!(
        longest < 200,
        "the user's self-declared priority 0 held root's priority-4 launch: {longest} ms"
    );
    // The other way round the user's claim holds only itself: a root owner at 8 busy holds
    // the user's process at 12, as the first test shows; here the user's 0 is simply not
    // more important than root's 4 anywhere but in its own block.
    assert_eq!(
        std::fs::metadata(&planted).unwrap().len(),
        8192,
        "the planted file was not touched"
    );
    let _ = rig.dir.path();
}

/// Process `pid`'s daemon-made arbitration block, mapped by the test (root) through
/// `/proc/<pid>/fd` (it is in no directory).
fn handed_block_of(pid: u32) -> Option<gvm_shim_abi::priority::ArbiterMap> {
    let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p)
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:gvm-vgpu-arbiter"))
        })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fd)
        .ok()?;
    gvm_shim_abi::priority::ArbiterMap::from_handed_fd(file.into()).ok()
}

#[test]
fn after_a_daemon_restart_each_domain_keeps_its_block_and_is_relayed_again_within_2_s() {
    use std::sync::atomic::Ordering;
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    std::fs::create_dir_all(sim.root.join("dev/shm")).unwrap();
    std::fs::set_permissions(sim.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = sim.daemon(&["--backend", "shim"]);
    let sock = sim.root.join("run/gvm-vgpu/shim.sock");
    let sock = sock.to_str().unwrap();
    assert!(wait_until(Duration::from_secs(5), || Path::new(sock).exists()));
    let user = rig.spawn(As::User, &sim.root, sock, 12, 0, (1, 20_000, 0));
    assert!(user.value("launched", 10).is_some());
    let root = rig.spawn(As::Root, &sim.root, sock, 8, 0, (1, 20_000, 0));
    assert!(root.value("launched", 10).is_some());
    let block = handed_block_of(user.child.id()).expect("the user's process holds a block");
    let before = block.file_id();
    let present = |b: &gvm_shim_abi::priority::ArbiterMap| {
        b.block().header.external_present.load(Ordering::SeqCst)
    };
    assert!(
        wait_until(Duration::from_secs(2), || present(&block) == 1 << 8),
        "the relay shows root's process to the user's block: {:#x}",
        present(&block)
    );
    d.kill9();
    // What the old daemon wrote stays; wipe it, to see the new one write it again.
    block
        .block()
        .header
        .external_present
        .store(0, Ordering::SeqCst);
    d.restart();
    assert!(
        wait_until(Duration::from_secs(2), || present(&block) == 1 << 8),
        "within 2 s the new daemon relays through the block the domain already shares: {:#x}; log: {}",
        present(&block),
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    assert_eq!(
        handed_block_of(user.child.id()).and_then(|b| b.file_id()),
        before,
        "the process still holds its one block"
    );
}

#[test]
fn another_users_process_claiming_a_vgpu_through_its_environment_is_refused_and_shown() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    std::fs::create_dir_all(sim.root.join("dev/shm")).unwrap();
    std::fs::set_permissions(sim.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = sim.daemon(&["--backend", "shim"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(5), || common::is_managed(
        &mut c, &uuid
    )));
    let sock = sim.root.join("run/gvm-vgpu/shim.sock");
    let mut cmd = Command::new(&rig.driver);
    cmd.arg(&rig.fake)
        .args(["arb", "1", "20000", "0"])
        .env("LD_PRELOAD", &rig.so)
        .env("GVM_VGPU_ROOT", &sim.root)
        .env("GVM_SHIM_SOCKET", &sock)
        .env("GVM_VGPU_UUID", uuid.to_string())
        .env("FAKE_PCI_BUS_IDS", GPU)
        .env_remove("GVM_SHIM_ARBITER")
        .env_remove("GVM_SHIM_CONTROL")
        .uid(rig.user.uid)
        .gid(rig.user.gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Kill(cmd.spawn().unwrap());
    let pid = child.0.id();
    assert!(
        wait_until(Duration::from_secs(5), || c
            .show(&uuid.to_string())
            .is_ok_and(|s| s.refused_claims.iter().any(|r| r.pid == pid))),
        "the claim is refused and listed; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let shown = c.show(&uuid.to_string()).unwrap();
    assert!(!shown.info.owners.contains(&pid), "not an owner");
    let refusal = shown.refused_claims.iter().find(|r| r.pid == pid).unwrap();
    assert_eq!(refusal.uid, Some(rig.user.uid));
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert_eq!(
        log.matches("claim refused").count(),
        1,
        "logged once per process: {log}"
    );
}

/// A child killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
