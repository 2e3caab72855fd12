//! A simulated host and a release `gvm-vgpud` on it, for the guest benchmarks: the binaries
//! from the build directory above the example's, the sim's FUSE tree on `ROOT/sys` (with
//! `ROOT/etc` and `ROOT/run` real), vGPUs created by writing `create` as a user would.

#![allow(dead_code)] // each example uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gvm_client::Client;
use uuid::Uuid;

/// A child killed on drop.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Why the benchmark cannot run here, if it cannot (root and /dev/fuse for the sim).
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (FUSE mount of the simulated host)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("needs /dev/fuse".into());
    }
    None
}

/// The build directory this example runs from (`target/release` for a release build),
/// after checking that each of `needed` was built there; exits 2 naming what is missing.
pub fn bins(needed: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bins = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for b in needed {
        if !bins.join(b).exists() {
            eprintln!(
                "{} is missing: build it first (see this example's header for the command)",
                bins.join(b).display()
            );
            std::process::exit(2);
        }
    }
    bins
}

/// The simulated host with `gpus` GPUs under `root`, once its parents are listed.
pub struct SimHost {
    pub process: Kill,
    pub root: PathBuf,
    pub parents: Vec<String>,
}

impl SimHost {
    pub fn start(bins: &Path, root: &Path, gpus: u32) -> SimHost {
        std::fs::create_dir_all(root).unwrap();
        let process = Kill(
            Command::new(bins.join("gvm-vgpu-sim"))
                .arg("--root")
                .arg(root)
                .args(["--gpus", &gpus.to_string(), "--held-remove", "kill"])
                .arg("--foreground")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let bus = root.join("sys/class/mdev_bus");
        let count = || std::fs::read_dir(&bus).map(|r| r.count()).unwrap_or(0);
        assert!(
            wait_until(Duration::from_secs(10), || count() == gpus as usize),
            "the simulated host did not come up"
        );
        let mut parents: Vec<String> = std::fs::read_dir(&bus)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        parents.sort();
        SimHost {
            process,
            root: root.to_path_buf(),
            parents,
        }
    }

    /// A vGPU of `mdev_type` on `parent`, created by writing its UUID to `create`.
    pub fn create(&self, parent: &str, mdev_type: &str) -> Uuid {
        let u = Uuid::new_v4();
        let path = self
            .root
            .join("sys/class/mdev_bus")
            .join(parent)
            .join("mdev_supported_types")
            .join(mdev_type)
            .join("create");
        std::fs::write(path, format!("{u}\n")).unwrap();
        u
    }

    /// A release daemon on this host with `extra` flags, logging at `warn` to
    /// `ROOT/daemon.log`, and a client once it answers.
    pub fn daemon(&self, bins: &Path, extra: &[&str]) -> (Kill, Client, PathBuf) {
        let log = self.root.join("daemon.log");
        let daemon = Kill(
            Command::new(bins.join("gvm-vgpud"))
                .arg("--root")
                .arg(&self.root)
                .args(["--rescan-ms", "100", "--slow-rescan-ms", "300"])
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let sock = self.root.join("run/gvm-vgpu/api.sock");
        let mut c = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                c = Client::connect(&sock).ok();
                c.as_mut().is_some_and(|c| c.ping().is_ok())
            }),
            "the daemon did not answer"
        );
        (daemon, c.unwrap(), log)
    }
}

/// Whether the daemon manages every one of `uuids`.
pub fn all_managed(c: &mut Client, uuids: &[Uuid]) -> bool {
    let Ok(list) = c.list(false) else {
        return false;
    };
    uuids
        .iter()
        .all(|u| list.iter().any(|v| v.uuid == *u && v.managed))
}
