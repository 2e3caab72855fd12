//! The host's side of a guest test: its binaries, the CLI, and the guest's serial ports.
//!
//! A guest test runs `gvm-vgpud` on the simulated host and wires the guest to it through
//! virtio-serial ports whose QEMU chardevs listen on Unix sockets
//! ([`virtio_serial_args`]). One port is the guest agent's channel; another is the test's
//! own control line ([`ControlPort`]), on which the host says a word and the guest answers
//! when it has done what the word asks, so the two sides can take turns.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::build::cargo_command;
use super::error::{tail, HarnessError};

/// How often [`ControlPort::say_until`] repeats its word.
const SAY_EVERY: Duration = Duration::from_millis(200);

/// A child process killed (and reaped) when this is dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Ignore errors: it may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Build these workspace packages for the host (the normal debug build, honouring
/// `CARGO_TARGET_DIR`) and return the directory their binaries and libraries are in.
pub fn build_host_packages(repo: &Path, packages: &[&str]) -> Result<PathBuf, HarnessError> {
    let mut cmd = cargo_command();
    cmd.current_dir(repo).args(["build", "-q"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let output = cmd.output().map_err(|source| HarnessError::Spawn {
        program: "cargo".into(),
        package: "rustup",
        source,
    })?;
    if !output.status.success() {
        return Err(HarnessError::CommandFailed {
            program: format!("cargo build -p {}", packages.join(" -p ")),
            status: output.status.to_string(),
            output_tail: tail(&output.stderr, 30),
        });
    }
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
        .join("debug"))
}

/// Run `gvm-vgpu --root ROOT ARGS...` from `bin`: whether it succeeded, and its standard
/// output followed by its standard error (or why it could not be run).
pub fn cli(bin: &Path, root: &Path, args: &[&str]) -> (bool, String) {
    match Command::new(bin.join("gvm-vgpu"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => (false, format!("cannot run {}/gvm-vgpu: {e}", bin.display())),
    }
}

/// QEMU arguments for one `virtio-serial-pci` controller with a port per `(socket, name)`:
/// QEMU listens on `socket` (`server=on,wait=off`: the guest boots without waiting for a
/// client) and the guest sees the port as `/sys/class/virtio-ports/*/name` = `name`.
pub fn virtio_serial_args(ports: &[(&Path, &str)]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, (socket, _)) in ports.iter().enumerate() {
        args.push("-chardev".to_string());
        args.push(format!(
            "socket,id=port{i},path={},server=on,wait=off",
            socket.display()
        ));
    }
    args.push("-device".to_string());
    args.push("virtio-serial-pci".to_string());
    for (i, (_, name)) in ports.iter().enumerate() {
        args.push("-device".to_string());
        args.push(format!("virtserialport,chardev=port{i},name={name}"));
    }
    args
}

/// A busybox `sh` snippet that waits (10 s at most) for the virtio-serial port named
/// `name` and leaves its `/dev` node in the shell variable `var` (empty when it never came).
pub fn port_lookup_script(var: &str, name: &str) -> String {
    format!(
        r#"{var}=
for i in $(seq 100); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = {name} ] && {var}=/dev/$(basename $p)
  done
  [ -n "${var}" ] && [ -e "${var}" ] && break
  sleep 0.1
done
"#
    )
}

/// The host's end of a test control port: words to the guest, answers back.
#[derive(Debug)]
pub struct ControlPort {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    partial: String,
    heard: Vec<String>,
}

impl ControlPort {
    /// Connect to QEMU's listening `socket`, retrying until `within` has passed (QEMU
    /// creates it as it starts).
    pub fn connect(socket: &Path, within: Duration) -> Result<ControlPort, HarnessError> {
        let end = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= end => {
                    return Err(HarnessError::io(
                        format!("connecting to the control port {}", socket.display()),
                        e,
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let what = |e| HarnessError::io(format!("setting up {}", socket.display()), e);
        stream.set_read_timeout(Some(SAY_EVERY)).map_err(what)?;
        let reader = BufReader::new(stream.try_clone().map_err(what)?);
        Ok(ControlPort {
            stream,
            reader,
            partial: String::new(),
            heard: Vec::new(),
        })
    }

    /// Say `word` (a line) every 200 ms until the guest answers the line `answer` or
    /// `within` passes; whether it answered. Repeated because what QEMU gets while the
    /// guest has not opened its end is dropped; the guest ignores words it is not waiting
    /// for.
    pub fn say_until(&mut self, word: &str, answer: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self
                .stream
                .write_all(format!("{word}\n").as_bytes())
                .is_err()
            {
                return false;
            }
            let until = Instant::now() + SAY_EVERY;
            while Instant::now() < until {
                match self.reader.read_line(&mut self.partial) {
                    Ok(0) => return false,
                    Ok(_) if self.partial.ends_with('\n') => {
                        let line = std::mem::take(&mut self.partial).trim().to_string();
                        let matched = line == answer;
                        self.heard.push(line);
                        if matched {
                            return true;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return false,
                }
            }
        }
        false
    }

    /// Every line the guest sent so far, for failure messages.
    pub fn heard(&self) -> &[String] {
        &self.heard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_gets_a_listening_chardev_on_one_controller() {
        let args = virtio_serial_args(&[
            (Path::new("/r/agent.sock"), "org.gvm.vgpu.agent.0"),
            (Path::new("/w/ctl.sock"), "org.gvm.test.ctl"),
        ]);
        assert_eq!(
            args.join(" "),
            "-chardev socket,id=port0,path=/r/agent.sock,server=on,wait=off \
             -chardev socket,id=port1,path=/w/ctl.sock,server=on,wait=off \
             -device virtio-serial-pci \
             -device virtserialport,chardev=port0,name=org.gvm.vgpu.agent.0 \
             -device virtserialport,chardev=port1,name=org.gvm.test.ctl"
        );
    }

    #[test]
    fn the_port_lookup_sets_the_named_variable() {
        let s = port_lookup_script("ctl", "org.gvm.test.ctl");
        assert!(s.starts_with("ctl=\n"), "{s}");
        assert!(s.contains("= org.gvm.test.ctl ] && ctl=/dev/"), "{s}");
    }

    #[test]
    fn say_until_repeats_until_the_answer_and_keeps_what_it_heard() -> Result<(), HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::io("tempdir", e))?;
        let sock = dir.path().join("ctl.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock)
            .map_err(|e| HarnessError::io("bind", e))?;
        // The "guest": answers the second `go` it reads, after some chatter.
        let guest = std::thread::spawn(move || -> std::io::Result<usize> {
            let (s, _) = listener.accept()?;
            let mut w = s.try_clone()?;
            let mut gos = 0;
            for line in BufReader::new(s).lines() {
                if line? == "go" {
                    gos += 1;
                }
                if gos == 2 {
                    w.write_all(b"noise\ngone\n")?;
                    break;
                }
            }
            Ok(gos)
        });
        let mut port = ControlPort::connect(&sock, Duration::from_secs(5))?;
        assert!(port.say_until("go", "gone", Duration::from_secs(10)));
        assert_eq!(port.heard(), ["noise", "gone"]);
        assert!(matches!(guest.join(), Ok(Ok(2))));
        // The guest hung up: nobody will answer now.
        assert!(!port.say_until("go", "gone", Duration::from_secs(2)));
        Ok(())
    }
}
