//! Test harness: a simulated host (`gvm-vgpu-sim`, FUSE) and a `gvm-vgpud` on it.
//!
//! The sim mounts its FUSE tree on `ROOT/sys` only, so `ROOT/etc` and `ROOT/run` are
//! ordinary directories and the daemon keeps its state and socket under the same root,
//! as on a host where /etc is not sysfs.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gvm_client::Client;
use uuid::Uuid;

// Drives libvirtd through gvm-libvirt's connection: only with the `libvirt` feature.
#[cfg(feature = "libvirt")]
pub mod libvirtd;

/// Why sim-backed tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (FUSE mount of the simulated host)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("needs /dev/fuse".into());
    }
    if sim_binary().is_none() {
        return Some("gvm-vgpu-sim could not be built".into());
    }
    None
}

/// Where the workspace's binaries are: beside this test binary's `deps/`.
fn workspace_target() -> PathBuf {
    gvm_testkit::debug_dir()
}

pub fn sim_binary() -> Option<PathBuf> {
    let p = workspace_target().join("gvm-vgpu-sim");
    if !p.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "gvm-vgpu-sim"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return None;
        }
    }
    p.exists().then_some(p)
}

/// Whether the daemon lists `uuid` as a managed vGPU now.
pub fn is_managed(c: &mut Client, uuid: &Uuid) -> bool {
    c.list(false)
        .unwrap()
        .iter()
        .any(|v| v.uuid == *uuid && v.managed)
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Set a running process's open-file limit (soft and hard) to `n`.
pub fn set_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit(2) reads the limit from a live local and writes nothing (null old).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// User + system CPU time a process (all its threads) has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub mount: PathBuf,
    pub root: PathBuf,
    child: Child,
}

impl Sim {
    pub fn start(gpus: u32) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        let mount = root.clone();
        fs::create_dir_all(&root).unwrap();
        let child = Command::new(sim_binary().unwrap())
            .args(["--root"])
            .arg(&mount)
            .args(["--gpus", &gpus.to_string(), "--foreground"])
            // These tests stop and undefine vGPUs whose owners still run and expect the
            // owners killed; a real kernel would block that `remove` until the holder
            // closes the device (docs/conformance.md).
            .args(["--held-remove", "kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bus = mount.join("sys/class/mdev_bus");
        assert!(
            wait_until(Duration::from_secs(10), || fs::read_dir(&bus)
                .map(|r| r.count() == gpus as usize)
                .unwrap_or(false)),
            "the simulated host did not come up"
        );
        Sim {
            dir,
            mount,
            root,
            child,
        }
    }

    pub fn parents(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.mount.join("sys/class/mdev_bus"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `echo UUID > .../create`, as an operator would.
    pub fn echo_create(&self, parent: &str, mdev_type: &str) -> Uuid {
        let u = Uuid::new_v4();
        let p = self
            .mount
            .join("sys/class/mdev_bus")
            .join(parent)
            .join("mdev_supported_types")
            .join(mdev_type)
            .join("create");
        fs::write(p, format!("{u}\n")).unwrap();
        u
    }

    pub fn control(&self, cmd: &str) {
        fs::write(
            self.mount.join("sys/kernel/debug/gvm-sim/control"),
            format!("{cmd}\n"),
        )
        .unwrap();
    }

    /// Spawn an owner for `uuid`; returns its pid once listed.
    pub fn spawn_owner(&self, uuid: &Uuid, gpu: u32, extra: &str) -> u32 {
        let before: Vec<u32> = self.owners().iter().map(|o| o.pid).collect();
        self.control(&format!("spawn {uuid} gpu={gpu} {extra}"));
        let mut pid = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            if let Some(o) = self
                .owners()
                .into_iter()
                .find(|o| o.uuid == *uuid && !before.contains(&o.pid))
            {
                pid = o.pid;
                true
            } else {
                false
            }
        }));
        pid
    }

    pub fn owners(&self) -> Vec<Owner> {
        let text = fs::read_to_string(self.mount.join("sys/kernel/debug/gvm-sim/owners"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(Owner {
                    pid: f.first()?.parse().ok()?,
                    uuid: Uuid::try_parse(f.get(1)?).ok()?,
                    gpu: f.get(2)?.parse().ok()?,
                    gpu_time_us: f.get(5)?.parse().ok()?,
                    frozen: *f.get(6)? == "1",
                })
            })
            .collect()
    }

    pub fn knob(&self, pid: u32, gpu: u32, name: &str) -> Option<String> {
        fs::read_to_string(
            self.mount
                .join("sys/kernel/debug/nvidia-uvm/processes")
                .join(pid.to_string())
                .join(gpu.to_string())
                .join(name),
        )
        .ok()
        .map(|s| s.trim().to_string())
    }

    pub fn daemon(&self, extra: &[&str]) -> Daemon {
        Daemon::start(&self.root, extra)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Owner {
    pub pid: u32,
    pub uuid: Uuid,
    pub gpu: u32,
    pub gpu_time_us: u64,
    pub frozen: bool,
}

pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(root: &Path, extra: &[&str]) -> Daemon {
        let mut d = Daemon {
            root: root.to_path_buf(),
            socket: root.join("run/gvm-vgpu/api.sock"),
            log: root.join("daemon.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        d.restart();
        d
    }

    /// Start the daemon again: a clean stop (SIGTERM) of one still running first, so that
    /// two daemons never share the root; `kill9` before it for a crash.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gvm-vgpud"))
            .arg("--root")
            .arg(&self.root)
            .args(["--rescan-ms", "100", "--slow-rescan-ms", "300"])
            .args(&self.extra)
            .env("RUST_LOG", "gvm_vgpud=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let sock = self.socket.clone();
        assert!(
            wait_until(Duration::from_secs(10), || Client::connect(&sock)
                .and_then(|mut c| c.ping())
                .is_ok()),
            "daemon did not answer; log: {}",
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    /// Stop a running daemon cleanly (SIGTERM) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, not yet waited for.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How the daemon ended, if it has (a signal shows as `signal: N`); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Lines in the daemon's log (its stderr) so far.
    pub fn log_lines(&self) -> usize {
        fs::read(&self.log)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `libgvm_cuda.so`, built once per test process into the same target directory.
pub fn shim_so() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let debug = gvm_testkit::debug_dir();
            let target = debug.parent()?.to_path_buf();
            let ok = Command::new(env!("CARGO"))
                .args(["build", "-q", "--lib", "-p", "gvm-cuda-shim"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            let so = debug.join("libgvm_cuda.so");
            (ok && so.exists()).then_some(so)
        })
        .clone()
}

/// The shim tests' fake `libcuda.so.1` (crates/shim/tests/c/fake_cuda.c), compiled into
/// `dir`; `Err` says why not (no `cc`: the caller prints `SKIP:`).
pub fn build_fake_cuda(dir: &Path) -> Result<PathBuf, String> {
    if Command::new("cc").arg("--version").output().is_err() {
        return Err("no C compiler (cc) to build the fake libcuda".into());
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/tests/c/fake_cuda.c");
    let fake = dir.join("libcuda.so.1");
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(&fake)
        .arg(&src)
        .status()
        .map_err(|e| e.to_string())?;
    assert!(st.success(), "building the fake libcuda failed");
    Ok(fake)
}

/// The C program `src` (linked with `-ldl`), compiled into `dir` as `name`.
pub fn build_c_program(dir: &Path, src: &Path, name: &str) -> Result<PathBuf, String> {
    let prog = dir.join(name);
    let st = Command::new("cc")
        .arg("-o")
        .arg(&prog)
        .arg(src)
        .arg("-ldl")
        .status()
        .map_err(|e| e.to_string())?;
    assert!(st.success(), "building {} failed", src.display());
    Ok(prog)
}

/// A program of the shim tests' C sources (`crates/shim/tests/c/<file>`), compiled into `dir`.
pub fn build_shim_test_program(dir: &Path, file: &str, name: &str) -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shim/tests/c")
        .join(file);
    build_c_program(dir, &src, name)
}
