//! A temporary local user for tests that need a second uid: made with `useradd` (a system
//! user, no home, no login shell) under a name unique to the test process, and removed with
//! `userdel` when dropped, even when the test failed.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A user that exists for as long as this value lives.
#[derive(Debug)]
pub struct TempUser {
    /// Its login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TempUser {
    /// Create a user whose name starts with `prefix` (at most 20 bytes of it are used).
    /// `Err` says why not (not root, no `useradd`, it failed): the caller prints `SKIP:`.
    pub fn create(prefix: &str) -> Result<TempUser, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to create a temporary user".into());
        }
        let stem: String = prefix
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(20)
            .collect();
        // Unique per test process and per call: tests of one binary run in parallel.
        static MADE: AtomicU32 = AtomicU32::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{stem}{}x{n}", std::process::id() % 100_000);
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .output()
            .map_err(|e| format!("cannot run useradd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .map_err(|e| format!("cannot run id: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| format!("id {flag} {name} gave no number"))
        };
        // Made first, so that a failure below still removes the user when dropped.
        let mut made = TempUser {
            uid: 0,
            gid: 0,
            name: name.clone(),
        };
        made.uid = id("-u")?;
        made.gid = id("-g")?;
        Ok(made)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        // Its processes first: userdel refuses a user that is logged in or running.
        let quiet = |c: &mut Command| {
            let _ = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(Command::new("pkill").args(["-KILL", "-u"]).arg(&self.name));
        quiet(Command::new("userdel").arg(&self.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_user_exists_while_held_and_is_gone_after() {
        let u = match TempUser::create("gvmtk") {
            Ok(u) => u,
            Err(why) => {
                println!("SKIP: {why}");
                return;
            }
        };
        assert_ne!(u.uid, 0);
        let name = u.name.clone();
        let seen = Command::new("id").arg(&name).status().expect("id");
        assert!(seen.success(), "{name} exists");
        drop(u);
        let gone = Command::new("id").arg(&name).output().expect("id");
        assert!(!gone.status.success(), "{name} was removed");
    }
}
