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
use std::time::Duration;

use crate::host::OwnerProcs;

/// Environment variable that ties a process to its vGPU.
pub const UUID_ENV: &str = "GVM_VGPU_UUID";

/// Owner processes started as children of the simulator.
#[derive(Debug)]
pub struct ChildProcs {
    program: PathBuf,
    args: Vec<OsString>,
    children: BTreeMap<u32, Child>,
}

impl ChildProcs {
    /// Owners run `program args…`.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Self {
        ChildProcs {
            program: program.into(),
            args,
            children: BTreeMap::new(),
        }
    }
}

impl OwnerProcs for ChildProcs {
    fn spawn(&mut self, uuid: &str) -> io::Result<u32> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(UUID_ENV, uuid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.children.insert(pid, child);
        Ok(pid)
    }

    fn kill(&mut self, pid: u32) -> io::Result<()> {
        match self.children.get_mut(&pid) {
            Some(c) => c.kill(),
            None => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }

    fn reap(&mut self) -> Vec<u32> {
        // Called every tick: with thousands of owners, asking each child costs thousands
        // of syscalls. Peek first (one `waitid` that leaves the status in place) and scan
        // only when some child has exited.
        if !self.children.is_empty() && !any_child_exited() {
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
/// [`PARENT_CHECK`]).
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
