//! systemd readiness notification (`sd_notify`), without libsystemd.
//!
//! Under `Type=notify` systemd waits for `READY=1` on the datagram socket named by
//! `$NOTIFY_SOCKET` before it counts the daemon as started, so units ordered after
//! `gvm-vgpud.service` (and `systemctl start`) wait until the API socket answers. Around a
//! `SIGHUP` catalog reload the daemon sends `RELOADING=1` (with `MONOTONIC_USEC`, which
//! systemd 253 and later want) and then `READY=1` again, so `systemctl reload` returns once
//! the reload is over.
//!
//! `$NOTIFY_SOCKET` is a filesystem path (`/run/systemd/notify`) or, starting with `@`, a
//! Linux abstract socket name. Without the variable (started by hand, in tests) every call
//! does nothing. A notification that cannot be sent is an error for the caller to log: it
//! must never stop the daemon.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is set but names no usable socket address.
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name)")]
    BadAddress(String),
    /// The socket could not be made or the datagram was not sent whole.
    #[error("cannot notify systemd on {addr}: {source}")]
    Send {
        /// The address from `$NOTIFY_SOCKET`.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where notifications go: parsed from `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (`@name` in the variable; the name without the `@`).
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    /// Parse a `$NOTIFY_SOCKET` value; `None` for an empty one (nothing to notify).
    pub fn parse(value: &str) -> Result<Option<NotifyAddr>, NotifyError> {
        if value.is_empty() {
            return Ok(None);
        }
        if let Some(name) = value.strip_prefix('@') {
            if name.is_empty() {
                return Err(NotifyError::BadAddress(value.to_string()));
            }
            return Ok(Some(NotifyAddr::Abstract(name.as_bytes().to_vec())));
        }
        if value.starts_with('/') {
            return Ok(Some(NotifyAddr::Path(PathBuf::from(value))));
        }
        Err(NotifyError::BadAddress(value.to_string()))
    }

    /// Send one notification message (`KEY=VALUE` lines) as a single datagram.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let err = |source| NotifyError::Send {
            addr: self.to_string(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(err)?;
        let sent = match self {
            NotifyAddr::Path(p) => sock.send_to(message.as_bytes(), p),
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
                sock.send_to_addr(message.as_bytes(), &addr)
            }
        }
        .map_err(err)?;
        if sent != message.len() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", message.len()),
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for NotifyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyAddr::Path(p) => write!(f, "{}", p.display()),
            NotifyAddr::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// Send `message` to `$NOTIFY_SOCKET`; `Ok(false)` when the variable is unset or empty.
pub fn notify(message: &str) -> Result<bool, NotifyError> {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    let value = value.to_string_lossy();
    match NotifyAddr::parse(&value)? {
        Some(addr) => addr.send(message).map(|()| true),
        None => Ok(false),
    }
}

/// `READY=1`: start-up (or a reload) is done; the API socket answers.
pub const READY: &str = "READY=1";

/// The message that starts a reload: `RELOADING=1` and the `CLOCK_MONOTONIC` time in
/// microseconds, which systemd 253 and later require with it.
pub fn reloading_message() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// `STOPPING=1`: shutting down.
pub const STOPPING: &str = "STOPPING=1";

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn parses_paths_abstract_names_and_refuses_the_rest() {
        assert_eq!(NotifyAddr::parse("").unwrap(), None);
        assert_eq!(
            NotifyAddr::parse("/run/systemd/notify").unwrap(),
            Some(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifyAddr::parse("@/org/freedesktop/systemd1/notify/1").unwrap(),
            Some(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/1".to_vec()
            ))
        );
        assert!(matches!(
            NotifyAddr::parse("relative/sock"),
            Err(NotifyError::BadAddress(_))
        ));
        assert!(matches!(
            NotifyAddr::parse("@"),
            Err(NotifyError::BadAddress(_))
        ));
    }

    #[test]
    fn ready_reaches_a_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let addr = NotifyAddr::parse(path.to_str().unwrap()).unwrap().unwrap();
        addr.send(READY).unwrap();
        assert_eq!(recv(&listener), "READY=1");
    }

    #[test]
    fn reloading_reaches_an_abstract_socket_with_a_monotonic_time() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("gvm-vgpud-notify-test-{}", std::process::id());
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&sa).unwrap();
        let addr = NotifyAddr::parse(&format!("@{name}")).unwrap().unwrap();
        addr.send(&reloading_message()).unwrap();
        let got = recv(&listener);
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let addr = NotifyAddr::Path(dir.path().join("absent"));
        let e = addr.send(READY).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
    }
}
