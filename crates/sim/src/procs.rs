//! Real owner processes.
//!
//! An owner stands for a process (QEMU, a CUDA program) that holds a vGPU's GPU
//! channels. The simulator starts one as a child — by default its own binary
//! re-executed with the hidden `owner` subcommand, which just waits — with
//! `GVM_VGPU_UUID=<uuid>` in its environment, so the manager's owner
//! resolution finds it through `/proc/<pid>/environ` exactly as on a real host.
//!
//! Like QEMU, an owner also holds its vGPU's VFIO group open, so that the manager's
//! holder detection (`/proc/<pid>/fd` links to `/dev/vfio/<group>`, as `fuser` reads
//! them) finds it as it would on a kernel. The simulator serves no `/dev`: with
//! [`ChildProcs::with_vfio_dir`] (`DIR/dev/vfio`) it keeps one *regular file* per
//! live device, `DIR/dev/vfio/<group>`, as a stand-in for the group's character
//! device, and each owner starts with that file open as its standard input. The
//! file is created with the device and deleted with it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gvm_shim_abi::vgpu_env::VGPU_UUID_ENV;

use crate::host::OwnerProcs;

/// Owner processes started as children of the simulator.
#[derive(Debug)]
pub struct ChildProcs {
    launcher: Launcher,
    children: BTreeMap<u32, Child>,
    /// Groups whose node stand-in this table created (deleted at shutdown).
    nodes: BTreeSet<u32>,
}

impl ChildProcs {
    /// Owners run `program args…`. Installs a `SIGCHLD` handler that only sets a flag
    /// (see [`ChildProcs::reap`]).
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Self {
        watch_child_exits();
        ChildProcs {
            launcher: Launcher {
                program: program.into(),
                args,
                vfio_dir: None,
            },
            children: BTreeMap::new(),
            nodes: BTreeSet::new(),
        }
    }

    /// Keep a stand-in for each live device's `/dev/vfio/<group>` in `dir` (a regular
    /// file), and start every owner holding its device's one open.
    pub fn with_vfio_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.launcher.vfio_dir = Some(dir.into());
        self
    }
}

/// Starts owner processes; needs no lock, so many can start while the host serves.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
    vfio_dir: Option<PathBuf>,
}

impl Launcher {
    /// Start `program args…` with `GVM_VGPU_UUID=<uuid>`, standard output and error on
    /// /dev/null, and standard input the node stand-in of IOMMU group `group` (created if
    /// missing) when there is a VFIO directory, else /dev/null.
    pub fn launch(&self, uuid: &str, group: u32) -> io::Result<Child> {
        let stdin = match &self.vfio_dir {
            Some(dir) => Stdio::from(open_node(dir, group)?),
            None => Stdio::null(),
        };
        Command::new(&self.program)
            .args(&self.args)
            .env(VGPU_UUID_ENV, uuid)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    /// The node stand-in of `group`, if this launcher keeps them.
    fn node(&self, group: u32) -> Option<PathBuf> {
        self.vfio_dir.as_ref().map(|d| d.join(group.to_string()))
    }
}

/// Open (creating it and its directory if missing) the stand-in of `/dev/vfio/<group>`.
fn open_node(dir: &Path, group: u32) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(group.to_string()))
}

impl OwnerProcs for ChildProcs {
    fn spawn(&mut self, uuid: &str, group: u32) -> io::Result<u32> {
        if self.launcher.vfio_dir.is_some() {
            self.nodes.insert(group);
        }
        let child = self.launcher.launch(uuid, group)?;
        let pid = child.id();
        self.children.insert(pid, child);
        Ok(pid)
    }

    fn launcher(&self) -> Option<Launcher> {
        Some(self.launcher.clone())
    }

    fn adopt(&mut self, child: Child) {
        self.children.insert(child.id(), child);
    }

    fn group_created(&mut self, group: u32) {
        let Some(dir) = &self.launcher.vfio_dir else {
            return;
        };
        self.nodes.insert(group);
        if let Err(e) = open_node(dir, group) {
            eprintln!(
                "gvm-vgpu-sim: cannot create the VFIO group stand-in {}: {e}",
                dir.join(group.to_string()).display()
            );
        }
    }

    fn group_released(&mut self, group: u32) {
        self.nodes.remove(&group);
        if let Some(node) = self.launcher.node(group) {
            // Already gone is fine: a device of a failed start may never have had one.
            let _ = fs::remove_file(node);
        }
    }

    fn kill(&mut self, pid: u32) -> io::Result<()> {
        match self.children.get_mut(&pid) {
            Some(c) => c.kill(),
            None => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn reap(&mut self) -> Vec<u32> {
        // Called every tick: with thousands of owners, asking each child costs thousands
        // of syscalls, and even one `waitid(P_ALL)` peek walks every child in the kernel.
        // Look only after a SIGCHLD (the flag is cleared before the scan, so an exit
        // during the scan is seen at the next tick), and then peek before scanning.
        let some_exited =
            self.children.is_empty() || (child_exit_signalled() && any_child_exited());
        if !some_exited {
            return Vec::new();
        }
        let gone: Vec<u32> = self
            .children
            .iter_mut()
            .filter_map(|(p, c)| (!matches!(c.try_wait(), Ok(None))).then_some(*p))
            .collect();
        for p in &gone {
            self.children.remove(p);
        }
        gone
    }

    fn kill_all(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            // Already-exited children make kill fail; wait reaps them either way.
            let _ = c.kill();
            let _ = c.wait();
        }
        for group in std::mem::take(&mut self.nodes) {
            if let Some(node) = self.launcher.node(group) {
                let _ = fs::remove_file(node);
            }
        }
    }
}

/// Set by the `SIGCHLD` handler; starts `true` so the first reap looks.
static CHILD_EXITED: AtomicBool = AtomicBool::new(true);

extern "C" fn on_sigchld(_: libc::c_int) {
    CHILD_EXITED.store(true, Ordering::Release);
}

/// Install the `SIGCHLD` handler (idempotent). If it cannot be installed, the flag is
/// left set for good and every tick peeks, as before.
fn watch_child_exits() {
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
    // is async-signal-safe; SA_RESTART keeps interrupted system calls transparent.
    let ok = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) == 0
    };
    if !ok {
        CHILD_EXITED.store(true, Ordering::Release);
        STICKY.store(true, Ordering::Release);
    }
}

/// The handler could not be installed: never trust a cleared flag.
static STICKY: AtomicBool = AtomicBool::new(false);

/// Whether a SIGCHLD arrived since the last call (clears the flag), or the handler could
/// not be installed and every call must look.
fn child_exit_signalled() -> bool {
    CHILD_EXITED.swap(false, Ordering::AcqRel) || STICKY.load(Ordering::Acquire)
}

/// Whether some child of this process has exited and waits to be reaped (the
/// status is left in place for `Child::try_wait`). Errors (no children) say no.
fn any_child_exited() -> bool {
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value to pass in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t for the kernel to fill; P_ALL ignores the id.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: after a successful waitid the pid field is initialized (0 when none exited).
    rc == 0 && unsafe { info.si_pid() } != 0
}

/// How often an owner checks that the simulator that started it still lives.
/// Thousands of owners run at once in scale tests, so each must cost next to
/// nothing while it waits; the simulator kills them itself when it stops.
const PARENT_CHECK: Duration = Duration::from_secs(2);

/// The body of an owner process: wait until killed, or until the simulator
/// that started it is gone (it is then re-parented, and this notices within
/// `PARENT_CHECK`).
pub fn owner_main() {
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(PARENT_CHECK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_owner_carries_the_uuid_and_is_reaped_after_kill() {
        let mut p = ChildProcs::new(
            "sh",
            vec![
                "-c".into(),
                "test \"$GVM_VGPU_UUID\" = abc && sleep 30".into(),
            ],
        );
        let pid = match p.spawn("abc", 0) {
            Ok(pid) => pid,
            Err(e) => {
                println!("SKIP: cannot run sh: {e}");
                return;
            }
        };
        assert!(p.reap().is_empty(), "owner exited early: env var missing?");
        assert!(p.kill(pid).is_ok());
        let mut reaped = Vec::new();
        for _ in 0..100 {
            reaped = p.reap();
            if !reaped.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(reaped, vec![pid]);
        assert_eq!(
            p.kill(pid).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESRCH))
        );
    }

    #[test]
    fn owners_hold_their_group_node_open_and_the_node_goes_with_the_device() {
        let Ok(d) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let vfio = d.path().join("dev/vfio");
        let mut p =
            ChildProcs::new("sh", vec!["-c".into(), "sleep 30".into()]).with_vfio_dir(&vfio);
        p.group_created(3);
        let node = vfio.join("3");
        assert!(node.is_file(), "the stand-in is made with the device");
        let pid = match p.spawn("abc", 3) {
            Ok(pid) => pid,
            Err(e) => {
                println!("SKIP: cannot run sh: {e}");
                return;
            }
        };
        let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0"));
        assert_eq!(fd0.ok(), Some(node.clone()), "stdin is the group node");
        p.group_released(3);
        assert!(!node.exists(), "the stand-in goes with the device");
        p.group_created(4);
        p.kill_all();
        assert!(!vfio.join("4").exists(), "shutdown drops every stand-in");
    }
}
