//! Test support shared by the integration tests of every gvm-vgpu crate.
//!
//! - [`workspace_bin`] finds (building it when missing) one of the workspace's binaries, so a
//!   test in one package can run another package's program.
//! - [`SimHost`] starts `gvm-vgpu-sim` on a fresh temporary directory and, when dropped, stops it
//!   and makes sure no FUSE mount is left behind, even when the test failed.
//! - [`temp_user`]: [`temp_user::TempUser`] makes a second local user for two-uid tests and removes it after.
//! - [`require_root_and_fuse`] and [`require_command`] decide whether a test can run here; a test
//!   that cannot prints `SKIP: <reason>` and returns, so plain `cargo test` needs nothing special.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;

pub mod temp_user;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory the tests run from.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The profile directory (`<target>/debug`) this test binary was built into: the parent of
/// its `deps/` directory, so binaries are found beside it whatever `CARGO_TARGET_DIR` was when
/// the tests were built. Falls back to `<target dir>/debug`.
pub fn debug_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| target_dir().join("debug"))
}

/// Path of a workspace binary in the debug target dir, building its package when the file is
/// missing. Panics (failing the test) with cargo's output when the build fails.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let path = debug_dir().join(bin);
    if !path.exists() {
        build_bin(package, bin);
    }
    path
}

/// [`workspace_bin`], built whatever is there: for a binary of another package whose
/// behaviour the test depends on (a file left by an older build would be tested instead).
/// Cargo's check of an up-to-date binary takes about a second.
pub fn workspace_bin_rebuilt(package: &str, bin: &str) -> PathBuf {
    build_bin(package, bin);
    target_dir().join("debug").join(bin)
}

fn build_bin(package: &str, bin: &str) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    assert!(
        out.status.success(),
        "building {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `path` (a built program or library) for a test that runs it as another user: `path`
/// itself when every directory above it lets others in, else a copy (mode 0755) in a
/// directory of its own under the temporary directory. A checkout under `/root` (mode 0700 on
/// Debian) is not another user's to reach. Panics (failing the test) when it cannot copy.
pub fn runnable_by_others(path: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let others_enter =
        |d: &Path| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    if path.ancestors().skip(1).all(others_enter) {
        return path.to_path_buf();
    }
    let dir = std::env::temp_dir().join(format!("gvm-test-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a directory for a copy of a test program");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("open it to other users");
    let name = path.file_name().expect("a program's path has a file name");
    let copy = dir.join(name);
    // A copy made by an earlier call in this process may be running: copy beside it, then
    // rename over it.
    let fresh = dir.join(format!(".{}.new", name.to_string_lossy()));
    std::fs::copy(path, &fresh)
        .unwrap_or_else(|e| panic!("copy {} for another user: {e}", path.display()));
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755))
        .expect("make the copy runnable by other users");
    std::fs::rename(&fresh, &copy).expect("put the copy in place");
    copy
}

/// `Some(reason)` when this process cannot mount FUSE filesystems (not root, no /dev/fuse).
pub fn require_root_and_fuse() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to mount the simulated host (FUSE)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing (modprobe fuse)".into());
    }
    None
}

/// `Some(reason)` when `name` is not on PATH.
pub fn require_command(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    (!found).then(|| format!("`{name}` is not installed (bash .ci/run installs it)"))
}

/// Print the skip line for `test` and return true when `reason` is set.
pub fn skip(test: &str, reason: Option<String>) -> bool {
    match reason {
        Some(r) => {
            println!("SKIP: {test}: {r}");
            true
        }
        None => false,
    }
}

/// Which parent model the simulated host serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimModel {
    /// GPU parents with `gvmsim-1..5` types sharing a framebuffer.
    GvmSim,
    /// One `mtty` parent mirroring the kernel's sample driver.
    Mtty,
}

/// A running simulated host on a temporary directory; dropping it stops it and unmounts.
pub struct SimHost {
    dir: tempdir::TempDir,
    child: Option<Child>,
}

mod tempdir {
    //! A minimal temporary directory (removed on drop) so this crate needs no extra dependency.
    use std::path::{Path, PathBuf};

    /// A directory removed (when empty) on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Create `/tmp/<prefix>.<pid>.<n>`.
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path =
                std::env::temp_dir().join(format!("{prefix}.{}.{n}.{nanos}", std::process::id()));
            std::fs::create_dir_all(&path)?;
            Ok(TempDir(path))
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

impl SimHost {
    /// Start `gvm-vgpu-sim --foreground` with `gpus` GPUs (ignored for mtty) and wait until its
    /// tree is served. Panics with the simulator's output when it does not come up in 10 s.
    pub fn start(model: SimModel, gpus: u32) -> SimHost {
        Self::start_with(model, gpus, &[])
    }

    /// [`SimHost::start`] with extra command-line arguments.
    pub fn start_with(model: SimModel, gpus: u32, extra: &[&str]) -> SimHost {
        let sim = workspace_bin("gvm-vgpu-sim", "gvm-vgpu-sim");
        let dir = TempDir_new();
        let model_arg = match model {
            SimModel::GvmSim => "gvm-sim",
            SimModel::Mtty => "mtty",
        };
        let child = Command::new(&sim)
            .arg("--root")
            .arg(dir.path())
            .args([
                "--model",
                model_arg,
                "--gpus",
                &gpus.to_string(),
                "--foreground",
            ])
            // The daemon and CLI tests end vGPUs whose owners still run and expect the
            // owners killed: keep the simulator's old shortcut for them. A real kernel
            // blocks that `remove` until the holder closes the device (docs/conformance.md);
            // a test that wants that passes `--held-remove block` itself.
            .args(if extra.contains(&"--held-remove") {
                &[][..]
            } else {
                &["--held-remove", "kill"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sim.display()));
        let mut host = SimHost {
            dir,
            child: Some(child),
        };
        let ready = host.dir.path().join("sys/kernel/debug/gvm-sim/owners");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Some(child) = host.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("gvm-vgpu-sim exited early with {status}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "gvm-vgpu-sim did not serve {} within 10 s",
                host.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// The directory the host is served at (pass it as `--root`).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A [`HostRoot`] for it.
    pub fn host_root(&self) -> HostRoot {
        HostRoot::new(self.dir.path())
    }

    /// Send one command to the simulator's control file (`spawn <uuid> ...`, `kill <pid>`).
    pub fn control(&self, command: &str) -> std::io::Result<()> {
        std::fs::write(
            self.dir.path().join("sys/kernel/debug/gvm-sim/control"),
            format!("{command}\n"),
        )
    }

    /// The simulator's owner table (`pid uuid gpu busy memory_wanted gpu_time_us frozen` lines).
    pub fn owners(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.dir.path().join("sys/kernel/debug/gvm-sim/owners"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .filter(|f: &Vec<String>| f.first().is_some_and(|p| p.parse::<u32>().is_ok()))
            .collect()
    }

    /// Stop the simulator with SIGTERM and wait for it; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Whether `DIR/sys` is still a mount point in this mount namespace.
    pub fn is_mounted(&self) -> bool {
        is_mount_point(&self.dir.path().join("sys"))
    }
}

#[expect(non_snake_case, reason = "reads like the type it makes")]
fn TempDir_new() -> tempdir::TempDir {
    tempdir::TempDir::new("gvm-sim-test")
        .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

/// Remove what tests, the daemon and the simulator wrote beside the mount (`etc/`, `run/`,
/// the VFIO group stand-ins in `dev/`) and the empty
/// mount point, so the temporary root can go.
fn remove_state_dirs(root: &Path) {
    for sub in ["etc", "run", "dev"] {
        let _ = std::fs::remove_dir_all(root.join(sub));
    }
    let _ = std::fs::remove_dir(root.join("sys"));
}

/// Whether `dir` appears as a mount point in /proc/self/mountinfo.
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = dir.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == wanted)
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.stop();
        if self.is_mounted() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path().join("sys"))
                .status();
        }
        remove_state_dirs(self.dir.path());
    }
}
