//! Real owner processes.
//!
//! An owner stands for a process (QEMU, a CUDA program) that holds a vGPU's GPU
//! channels. The simulator starts one as a child — by default its own binary
//! re-executed with the hidden `owner` subcommand, which just waits — with
//! `GVM_VGPU_UUID=<uuid>` in its environment, so the manager's owner
//! resolution finds it through `/proc/<pid>/environ` exactly as on a real host.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
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
            },
            children: BTreeMap::new(),
        }
    }
}

/// Starts owner processes; needs no lock, so many can start while the host serves.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Launcher {
    /// Start `program args…` with `GVM_VGPU_UUID=<uuid>`, standard streams on /dev/null.
    pub fn launch(&self, uuid: &str) -> io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .env(VGPU_UUID_ENV, uuid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }
}

impl OwnerProcs for ChildProcs {
    fn spawn(&mut self, uuid: &str) -> io::Result<u32> {
        let child = self.launcher.launch(uuid)?;
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
        let pid = match p.spawn("abc") {
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
}
