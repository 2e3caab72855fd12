//! Registration of a shim process with gvm-vgpud over the daemon's shim socket.
//!
//! The control block is how the daemon *drives* a shim process; registration is how it
//! *learns* about one, and how it *gets the block*: the request line travels with the block's
//! descriptor attached (`SCM_RIGHTS`), so the daemon maps what the process holds, never a path
//! someone could truncate or replace ([`crate::control`] says what it accepts). The line adds
//! what a descriptor cannot say: which physical GPUs the process sees (PCI bus ids with their
//! CUDA ordinals, so two processes with different `CUDA_VISIBLE_DEVICES` are told apart), the
//! pid the process sees for itself (in a container that is not the daemon's pid for it), and
//! what the block is (`control`: [`MEMFD_CONTROL`] for the default sealed memfd, else the
//! `GVM_SHIM_CONTROL` path, as a description only). The daemon takes the process's identity
//! from the socket's peer credentials, never from the message.
//!
//! The protocol, version [`PROTOCOL_VERSION`] (2): the shim connects to
//! `/run/gvm-vgpu/shim.sock` under the host root ([`SOCKET_PATH`], overridden by
//! [`SOCKET_ENV`]; `off` disables), writes one JSON line ([`Request::to_line`], at most
//! [`MAX_LINE`] bytes) whose first byte carries the block's descriptor, reads one JSON line
//! back ([`Reply::parse`]) and keeps the connection open for as long as it lives: the daemon
//! drops the registration when the connection reaches end-of-file (the process exited).
//! Everything is bounded by one deadline ([`connect_and_register`]), so a missing, slow or
//! wedged daemon costs the CUDA program at most that long, once. Version 1 sent the block's
//! path instead of its descriptor; a daemon speaking 2 refuses it (shim and daemon come from
//! the same release).
//!
//! The encoding is written by hand (the interposer carries no JSON library); the daemon
//! parses it with a real one and validates every field.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;

use crate::sys;

/// The daemon's shim socket, under the host root.
pub const SOCKET_PATH: &str = "/run/gvm-vgpu/shim.sock";
/// Environment variable naming the socket (`off` disables registration).
pub const SOCKET_ENV: &str = "GVM_SHIM_SOCKET";
/// The protocol version this crate speaks: 2, the block handed over as a descriptor.
pub const PROTOCOL_VERSION: u32 = 2;
/// The `control` description of a block that is an anonymous sealed memfd (the default).
pub const MEMFD_CONTROL: &str = "memfd";
/// The longest request or reply line, newline included.
pub const MAX_LINE: usize = 4096;
/// The most GPUs one request may list.
pub const MAX_GPUS: usize = 64;
/// The default time a shim gives the whole registration (connect, send, reply).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Where the shim registers: `None` when `$GVM_SHIM_SOCKET` is `off`, the variable's path
/// when set, else [`SOCKET_PATH`] under the host root.
pub fn socket_path(env_value: Option<&OsStr>, host: &HostRoot) -> Option<PathBuf> {
    match env_value {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => Some(host.path(SOCKET_PATH)),
    }
}

/// A PCI bus id in the kernel's sysfs form (`0000:3b:00.0`, lower case), from the CUDA
/// form (`0000:3B:00.0`, `cuDeviceGetPCIBusId`) or NVML's 8-digit domain
/// (`00000000:3B:00.0`). `None` when `text` is not a PCI bus id.
pub fn normalise_pci_bus_id(text: &str) -> Option<String> {
    let (domain, rest) = text.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let domain = match domain.len() {
        4 => domain,
        8 if domain.starts_with("0000") => &domain[4..],
        _ => return None,
    };
    if !hex(domain, 4) || !hex(bus, 2) || !hex(dev, 2) || !hex(func, 1) {
        return None;
    }
    let d = u8::from_str_radix(dev, 16).ok()?;
    let f = u8::from_str_radix(func, 16).ok()?;
    if d > 0x1f || f > 7 {
        return None;
    }
    Some(format!("{domain}:{bus}:{dev}.{func}").to_ascii_lowercase())
}

/// One GPU a process sees: its CUDA ordinal and its PCI bus id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuId {
    /// The CUDA device ordinal in the process (after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: u32,
    /// The PCI bus id, as the driver gave it (the daemon normalises it).
    pub pci_bus_id: String,
}

/// What a shim process tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The process's pid as it sees it (its own pid namespace).
    pub pid: u32,
    /// What the block handed over is: [`MEMFD_CONTROL`], or its file's path as the process
    /// sees it (a description for logs; the daemon maps the descriptor, never the path).
    pub control: String,
    /// The GPUs it sees.
    pub gpus: Vec<GpuId>,
    /// `GVM_VGPU_UUID`, when set (informational: ownership follows the daemon's rules).
    pub vgpu_uuid: Option<String>,
    /// The PCI bus ids of the GPUs whose arbitration blocks (ones a daemon handed over
    /// earlier) travel back as the request's descriptors after the control block's, in this
    /// order: after a daemon restart, the new daemon takes the blocks the process's domain
    /// already shares instead of splitting it. At most [`MAX_HANDED_BACK`]. On the wire one
    /// is `"arbiter":"<pci>"` (what every daemon of protocol 2 reads) and several are
    /// `"arbiters":["<pci>",...]`.
    pub arbiters: Vec<String>,
}

/// The most arbitration blocks one request hands back, and one reply hands over (one per
/// GPU; a request's control block descriptor comes first, so it carries at most
/// `1 + MAX_HANDED_BACK`, within [`sys::MAX_RECEIVED_FDS`]).
pub const MAX_HANDED_BACK: usize = 8;
const _: () = assert!(MAX_HANDED_BACK < sys::MAX_RECEIVED_FDS);

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Request {
    /// The request as one JSON line, newline included.
    pub fn to_line(&self) -> String {
        let gpus: Vec<String> = self
            .gpus
            .iter()
            .map(|g| {
                format!(
                    "{{\"ordinal\":{},\"pci_bus_id\":{}}}",
                    g.ordinal,
                    json_string(&g.pci_bus_id)
                )
            })
            .collect();
        let uuid = self
            .vgpu_uuid
            .as_deref()
            .map_or_else(|| "null".to_string(), json_string);
        let arbiter = match self.arbiters.as_slice() {
            [] => String::new(),
            [one] => format!(",\"arbiter\":{}", json_string(one)),
            many => {
                let list: Vec<String> = many.iter().map(|a| json_string(a)).collect();
                format!(",\"arbiters\":[{}]", list.join(","))
            }
        };
        format!(
            "{{\"version\":{},\"pid\":{},\"control\":{},\"gpus\":[{}],\"vgpu_uuid\":{}{arbiter}}}\n",
            self.version,
            self.pid,
            json_string(&self.control),
            gpus.join(","),
            uuid
        )
    }
}

/// What the shim needs from the daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The daemon accepted the registration.
    pub ok: bool,
    /// The GVM GPU index the daemon put the process's gcgroup on, when it said.
    pub gpu: Option<u32>,
    /// The daemon's reason for refusing.
    pub error: Option<String>,
    /// The PCI bus ids of the GPUs whose arbitration blocks came with the reply, in the
    /// order of its descriptors (`"arbiters":"0000:3b:00.0,0000:af:00.0"`).
    pub arbiters: Vec<String>,
}

/// The raw text of `key`'s value in a flat JSON object line (enough for the daemon's
/// compact replies: no nested object carries the same key before it).
fn raw_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let at = line.find(&pat)? + pat.len();
    let rest = line[at..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => return Some(&s[..i]),
                _ => escaped = false,
            }
        }
        None
    } else {
        let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

impl Reply {
    /// Parse the daemon's reply line; `None` when it is not a reply.
    pub fn parse(line: &str) -> Option<Reply> {
        let ok = match raw_value(line, "ok")? {
            "true" => true,
            "false" => false,
            _ => return None,
        };
        let arbiters = raw_value(line, "arbiters")
            .map(|list| {
                list.split(',')
                    .filter_map(normalise_pci_bus_id)
                    .take(MAX_HANDED_BACK)
                    .collect()
            })
            .unwrap_or_default();
        Some(Reply {
            ok,
            gpu: raw_value(line, "gpu").and_then(|v| v.parse().ok()),
            error: raw_value(line, "error").map(|e| e.replace("\\\"", "\"")),
            arbiters,
        })
    }
}

/// Why a registration did not happen (the shim then runs standalone).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Nothing listens at the socket, or it could not be reached.
    #[error("cannot connect to {path} (errno {errno}): start gvm-vgpud or set GVM_SHIM_SOCKET")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error number.
        errno: i32,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading the reply failed.
    #[error("talking to {path} failed (errno {errno:?}): check gvm-vgpud's log")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error number, when there is one.
        errno: Option<i32>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not answer within the deadline.
    #[error("{path} did not answer within {timeout:?}: gvm-vgpud is busy or hung")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
    /// The daemon answered with something that is not a reply.
    #[error("{path} answered {reply:?}, not a registration reply: update gvm-vgpud or the shim to the same version")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What came back (truncated).
        reply: String,
    },
    /// The daemon refused the registration.
    #[error("gvm-vgpud at {path} refused the registration: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The daemon's reason.
        message: String,
    },
}

/// A registration the daemon accepted: keep `connection` open while the process lives.
#[derive(Debug)]
pub struct Registered {
    /// The connection (close-on-exec); its end tells the daemon the process is gone.
    pub connection: OwnedFd,
    /// The daemon's answer.
    pub reply: Reply,
    /// The arbitration blocks handed over with the answer, by GPU (PCI bus id), unchecked:
    /// map them with `ArbiterMap::from_handed_fd`, which checks their seals and size.
    pub arbiters: Vec<(String, OwnedFd)>,
}

/// Connect to `path`, send `request` with the control block's descriptor `control` (and
/// the arbitration blocks `arbiters`, one per GPU `request.arbiters` names, in its order)
/// attached and read
/// the reply, with the arbitration blocks that come with it, all within `timeout`. Never
/// blocks longer than about `timeout`; holds no lock.
pub fn connect_and_register(
    path: &Path,
    request: &Request,
    control: BorrowedFd<'_>,
    arbiters: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<Registered, RegisterError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || RegisterError::Timeout {
        path: path.to_path_buf(),
        timeout,
    };
    let io_err = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return timed_out();
        }
        RegisterError::Io {
            path: path.to_path_buf(),
            errno: source.raw_os_error(),
            source,
        }
    };
    let fd = sys::unix_connect(path, timeout).map_err(|source| RegisterError::Connect {
        path: path.to_path_buf(),
        errno: source.raw_os_error().unwrap_or(0),
        source,
    })?;
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(io_err)?;
    let at_least = |d: Duration| d.max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(at_least(left())))
        .map_err(io_err)?;
    let line = request.to_line();
    let mut rest = line.as_bytes();
    let mut fds = vec![control];
    if arbiters.len() == request.arbiters.len() {
        fds.extend(arbiters.iter().take(MAX_HANDED_BACK).copied());
    }
    let sent = sys::send_with_fds(stream.as_fd(), rest, &fds).map_err(io_err)?;
    rest = rest.get(sent..).unwrap_or_default();
    while !rest.is_empty() {
        match sys::send_bytes(stream.as_fd(), rest).map_err(io_err)? {
            0 => return Err(io_err(std::io::ErrorKind::WriteZero.into())),
            n => rest = rest.get(n..).unwrap_or_default(),
        }
    }
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let mut handed: Vec<OwnedFd> = Vec::new();
    while !buf.contains(&b'\n') {
        if left().is_zero() {
            return Err(timed_out());
        }
        stream
            .set_read_timeout(Some(at_least(left())))
            .map_err(io_err)?;
        let (n, fds) = sys::recv_with_fds(stream.as_fd(), &mut chunk, sys::MAX_RECEIVED_FDS)
            .map_err(io_err)?;
        handed.extend(fds);
        if n == 0 || buf.len() + n > MAX_LINE {
            let text = String::from_utf8_lossy(&buf).chars().take(200).collect();
            return Err(RegisterError::BadReply {
                path: path.to_path_buf(),
                reply: text,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let reply = Reply::parse(line).ok_or_else(|| RegisterError::BadReply {
        path: path.to_path_buf(),
        reply: line.chars().take(200).collect(),
    })?;
    if !reply.ok {
        return Err(RegisterError::Refused {
            path: path.to_path_buf(),
            message: reply
                .error
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        });
    }
    let arbiters = reply.arbiters.iter().cloned().zip(handed).collect();
    Ok(Registered {
        connection: OwnedFd::from(stream),
        reply,
        arbiters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    #[test]
    fn pci_bus_ids_normalise_to_the_sysfs_form() {
        assert_eq!(
            normalise_pci_bus_id("0000:3B:00.0").as_deref(),
            Some("0000:3b:00.0")
        );
        assert_eq!(
            normalise_pci_bus_id("00000000:AF:1f.7").as_deref(),
            Some("0000:af:1f.7")
        );
        for bad in [
            "",
            "0000:3b:00",
            "0000:3b:20.0",
            "0000:3b:00.8",
            "000:3b:00.0",
            "10000000:3b:00.0",
            "0000:3g:00.0",
            "0000:3b:00.0 ",
            "../../etc",
        ] {
            assert_eq!(normalise_pci_bus_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn socket_path_follows_the_environment() {
        let h = HostRoot::new("/tmp/r");
        assert_eq!(
            socket_path(None, &h),
            Some(PathBuf::from("/tmp/r/run/gvm-vgpu/shim.sock"))
        );
        assert_eq!(socket_path(Some(OsStr::new("off")), &h), None);
        assert_eq!(
            socket_path(Some(OsStr::new("/x/s.sock")), &h),
            Some(PathBuf::from("/x/s.sock"))
        );
    }

    #[test]
    fn requests_encode_as_one_json_line_with_escapes() {
        let r = Request {
            version: PROTOCOL_VERSION,
            pid: 42,
            control: "/dev/shm/a\"b\\c\n".into(),
            gpus: vec![GpuId {
                ordinal: 1,
                pci_bus_id: "0000:3B:00.0".into(),
            }],
            vgpu_uuid: None,
            arbiters: Vec::new(),
        };
        let line = r.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert_eq!(
            line,
            "{\"version\":2,\"pid\":42,\"control\":\"/dev/shm/a\\\"b\\\\c\\u000a\",\"gpus\":[{\"ordinal\":1,\"pci_bus_id\":\"0000:3B:00.0\"}],\"vgpu_uuid\":null}\n"
        );
    }

    #[test]
    fn replies_parse_ok_gpu_and_errors() {
        assert_eq!(
            Reply::parse("{\"ok\":true,\"host_pid\":7,\"gpu\":8,\"gpu_source\":\"x\"}"),
            Some(Reply {
                ok: true,
                gpu: Some(8),
                error: None,
                arbiters: Vec::new(),
            })
        );
        let r = Reply::parse(
            "{\"ok\":true,\"gpu\":8,\"arbiters\":\"0000:3B:00.0,bogus,0000:af:00.0\"}",
        )
        .expect("reply");
        assert_eq!(
            r.arbiters,
            ["0000:3b:00.0", "0000:af:00.0"],
            "bus ids normalised, anything else dropped"
        );
        let r =
            Reply::parse("{\"ok\":false,\"field\":\"control\",\"error\":\"not \\\"yours\\\"\"}")
                .expect("reply");
        assert!(!r.ok);
        assert_eq!(r.error.as_deref(), Some("not \"yours\""));
        assert_eq!(Reply::parse("HTTP/1.0 200 OK"), None);
        assert_eq!(Reply::parse("{\"ok\":maybe}"), None);
    }

    fn request() -> Request {
        Request {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            control: MEMFD_CONTROL.into(),
            gpus: Vec::new(),
            vgpu_uuid: None,
            arbiters: Vec::new(),
        }
    }

    fn block() -> crate::control::ControlMap {
        crate::control::ControlMap::create_sealed(&crate::config::Knobs::default(), 0)
            .expect("sealed block")
    }

    fn fd(b: &crate::control::ControlMap) -> BorrowedFd<'_> {
        b.fd().expect("shared block")
    }

    #[test]
    fn a_missing_daemon_fails_fast_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.sock");
        let t = Instant::now();
        let e = connect_and_register(&path, &request(), fd(&block()), &[], DEFAULT_TIMEOUT)
            .expect_err("no daemon");
        assert!(t.elapsed() < Duration::from_millis(100));
        assert!(matches!(e, RegisterError::Connect { errno, .. } if errno == libc::ENOENT));
        assert!(e.to_string().contains("none.sock"));
    }

    #[test]
    fn a_silent_daemon_costs_at_most_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mute.sock");
        let _l = UnixListener::bind(&path).expect("bind");
        let t = Instant::now();
        let b = block();
        let e = connect_and_register(&path, &request(), fd(&b), &[], Duration::from_millis(80))
            .expect_err("no answer");
        let took = t.elapsed();
        assert!(matches!(e, RegisterError::Timeout { .. }), "{e:?}");
        assert!(took >= Duration::from_millis(70) && took < Duration::from_millis(300));
    }

    #[test]
    fn an_answering_daemon_gets_the_line_and_keeps_the_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut buf = [0u8; MAX_LINE];
            let (n, handed) = sys::recv_with_fd(s.as_fd(), &mut buf).expect("read");
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            let id = handed.map(|h| {
                let m = std::fs::File::from(h).metadata().expect("fstat");
                (m.dev(), m.ino())
            });
            (&s).write_all(b"{\"ok\":true,\"gpu\":16}\n")
                .expect("write");
            let mut rest = Vec::new();
            // Returns at EOF: when the client drops its connection.
            (&s).read_to_end(&mut rest).expect("eof");
            (line, id)
        });
        let b = block();
        let reg = connect_and_register(&path, &request(), fd(&b), &[], Duration::from_secs(2))
            .expect("ok");
        assert_eq!(reg.reply.gpu, Some(16));
        drop(reg);
        let (line, id) = server.join().expect("server");
        assert!(line.starts_with("{\"version\":2,"), "{line}");
        assert!(
            line.ends_with('\n'),
            "the whole line came with the descriptor"
        );
        assert_eq!(
            id,
            b.file_id(),
            "the block's own descriptor came with the line"
        );
    }

    #[test]
    fn the_blocks_of_two_gpus_are_handed_back_with_the_control_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("two.sock");
        let l = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut buf = [0u8; MAX_LINE];
            let (n, handed) = sys::recv_with_fds(s.as_fd(), &mut buf, 8).expect("read");
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ids: Vec<(u64, u64)> = handed
                .into_iter()
                .map(|h| {
                    let m = std::fs::File::from(h).metadata().expect("fstat");
                    (m.dev(), m.ino())
                })
                .collect();
            (&s).write_all(b"{\"ok\":true}\n").expect("write");
            (line, ids)
        });
        let (b, a0, a1) = (block(), block(), block());
        let mut req = request();
        req.arbiters = vec!["0000:3b:00.0".into(), "0000:af:00.0".into()];
        let reg = connect_and_register(
            &path,
            &req,
            fd(&b),
            &[fd(&a0), fd(&a1)],
            Duration::from_secs(2),
        )
        .expect("ok");
        drop(reg);
        let (line, ids) = server.join().expect("server");
        assert!(
            line.contains("\"arbiters\":[\"0000:3b:00.0\",\"0000:af:00.0\"]"),
            "{line}"
        );
        assert!(!line.contains("\"arbiter\":"), "{line}");
        let want: Vec<(u64, u64)> = [&b, &a0, &a1]
            .iter()
            .map(|m| m.file_id().expect("memfd"))
            .collect();
        assert_eq!(
            ids, want,
            "the control block first, then each GPU's in order"
        );
    }

    #[test]
    fn a_refusal_carries_the_daemons_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no.sock");
        let l = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                let _ = (&s).write_all(b"{\"ok\":false,\"field\":\"pid\",\"error\":\"bad pid\"}\n");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let b = block();
        match connect_and_register(&path, &request(), fd(&b), &[], Duration::from_secs(2)) {
            Err(RegisterError::Refused { message, .. }) => assert_eq!(message, "bad pid"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
