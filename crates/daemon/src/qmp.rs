//! A small QMP client: the hard fallback that pauses a plain-QEMU VM (`stop`) when its guest
//! does not acknowledge a freeze in time, and resumes it (`cont`) at thaw.
//!
//! QMP is QEMU's JSON line protocol on a Unix socket the VM was started with
//! (`-qmp unix:<state>/run/gvm-vgpu/qmp/<uuid>.sock,server=on,wait=off`, which
//! `gvm-vgpu qemu-args --qmp-socket` prints). A session is: QEMU's greeting (`{"QMP":…}`),
//! `qmp_capabilities`, then commands, each answered by `{"return":…}` or `{"error":…}`;
//! asynchronous `{"event":…}` lines may come in between and are skipped. Every read is
//! bounded ([`MAX_LINE`]) and every step has the caller's deadline, so a wedged QEMU costs
//! at most that long.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest QMP line read.
pub const MAX_LINE: usize = 64 * 1024;

/// What went wrong talking to a VM's QMP socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("cannot connect to the QMP socket {path} (errno {errno}): start the VM with `gvm-vgpu qemu-args --qmp-socket`")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed, or the deadline passed.
    #[error("talking to the QMP socket {path} failed (errno {errno:?})")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error number.
        errno: Option<i32>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU said something that is not QMP.
    #[error("the QMP socket {path} answered {detail}: is it a QEMU monitor?")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong (truncated).
        detail: String,
    },
    /// QEMU refused a command.
    #[error("QEMU at {path} refused {command}: {class}: {desc}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
}

/// One QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    out: UnixStream,
    lines: BufReader<UnixStream>,
    deadline: Instant,
}

impl Qmp {
    /// Connect to `path`, read the greeting and leave capabilities negotiation, all before
    /// `timeout` has passed; later commands share the same deadline.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            errno: source.raw_os_error().unwrap_or(0),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            errno: None,
            source,
        };
        let reader = stream.try_clone().map_err(io)?;
        let mut q = Qmp {
            path: path.to_path_buf(),
            out: stream,
            lines: BufReader::new(reader),
            deadline: Instant::now() + timeout,
        };
        let greeting = q.read_value()?;
        if greeting.get("QMP").is_none() {
            return Err(q.protocol(format!("{greeting:.200}")));
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            detail: detail.chars().take(200).collect(),
        }
    }

    fn io(&self, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            errno: source.raw_os_error(),
            source,
        }
    }

    fn left(&self) -> Result<Duration, QmpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.io(std::io::ErrorKind::TimedOut.into()));
        }
        Ok(left)
    }

    /// The next JSON line (events included), bounded by [`MAX_LINE`] and the deadline.
    fn read_value(&mut self) -> Result<Value, QmpError> {
        let left = self.left()?;
        self.lines
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| self.io(e))?;
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        let n = (&mut self.lines)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(self.protocol("end of file".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
        }
        serde_json::from_slice(&line)
            .map_err(|e| self.protocol(format!("{e}: {}", String::from_utf8_lossy(&line))))
    }

    /// Run `command` (no arguments) and return its `return` value, skipping events.
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let left = self.left()?;
        self.out
            .set_write_timeout(Some(left))
            .map_err(|e| self.io(e))?;
        let line = format!("{}\n", serde_json::json!({ "execute": command }));
        self.out
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))?;
        loop {
            let v = self.read_value()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Refused {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(self.protocol(format!("{v:.200}")));
        }
    }

    /// Whether the VM runs (`query-status`).
    pub fn running(&mut self) -> Result<bool, QmpError> {
        let r = self.execute("query-status")?;
        r.get("running")
            .and_then(Value::as_bool)
            .ok_or_else(|| self.protocol(format!("query-status returned {r:.200}")))
    }
}

/// Pause (`stop`) or resume (`cont`) the VM whose QMP socket is `path`, within `timeout`.
pub fn set_running(path: &Path, running: bool, timeout: Duration) -> Result<(), QmpError> {
    let mut q = Qmp::connect(path, timeout)?;
    q.execute(if running { "cont" } else { "stop" })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A real QEMU with no machine, serving QMP at `path`; `None` when QEMU is missing.
    fn qemu(path: &Path) -> Option<std::process::Child> {
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "none",
                "-nodefaults",
                "-nographic",
                "-display",
                "none",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(path).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    }

    #[test]
    fn a_real_qemu_is_paused_and_resumed_over_qmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let Some(mut child) = qemu(&sock) else {
            println!("SKIP: qemu-system-x86_64 is not installed");
            return;
        };
        let t = Duration::from_secs(5);
        assert!(Qmp::connect(&sock, t)
            .and_then(|mut q| q.running())
            .expect("status"));
        set_running(&sock, false, t).expect("stop");
        assert!(!Qmp::connect(&sock, t)
            .and_then(|mut q| q.running())
            .expect("status"));
        set_running(&sock, true, t).expect("cont");
        assert!(Qmp::connect(&sock, t)
            .and_then(|mut q| q.running())
            .expect("status"));
        let refused = Qmp::connect(&sock, t)
            .and_then(|mut q| q.execute("no-such-command"))
            .expect_err("an unknown command");
        assert!(matches!(refused, QmpError::Refused { .. }), "{refused}");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_socket_that_is_not_qmp_or_says_nothing_fails_within_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("mute.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let _ = s.write_all(b"HTTP/1.0 200 OK\n");
            let (s2, _) = l.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(600));
            drop(s2);
        });
        let e = Qmp::connect(&sock, Duration::from_secs(2)).expect_err("not QMP");
        assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
        let t = Instant::now();
        let e = Qmp::connect(&sock, Duration::from_millis(200)).expect_err("silent");
        assert!(matches!(e, QmpError::Io { .. }), "{e}");
        assert!(
            t.elapsed() < Duration::from_millis(550),
            "{:?}",
            t.elapsed()
        );
        let e = Qmp::connect(&dir.path().join("none.sock"), Duration::from_secs(1))
            .expect_err("nothing there");
        assert!(e.to_string().contains("qemu-args --qmp-socket"), "{e}");
        let _ = server.join();
    }
}
