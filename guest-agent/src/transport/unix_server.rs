//! `--serve-unix PATH`: the agent listens on a Unix socket and serves one host
//! connection at a time, as QEMU's chardev `server=on` does for a virtio-serial
//! port. The host daemon connects to it as a client, so an agent running on the
//! host itself (tests, benchmarks) speaks to the daemon exactly as one in a VM.
//!
//! The socket is created mode 0600 (the host daemon runs as root or as the same
//! user); a stale socket file is replaced, a live one (another agent answers) is
//! refused. Further connections wait in the backlog until the current one ends.

use super::LineWriter;
use crate::error::{AgentError, Result};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The listening socket.
#[derive(Debug)]
pub struct UnixServer {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixServer {
    /// Bind `path` (creating its directory), non-blocking.
    pub fn bind(path: &Path) -> Result<UnixServer> {
        let err = |source| AgentError::Open {
            what: format!("unix socket {}", path.display()),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        if fs::symlink_metadata(path).is_ok() {
            if UnixStream::connect(path).is_ok() {
                return Err(err(io::Error::from_raw_os_error(libc::EADDRINUSE)));
            }
            fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(UnixServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The descriptor to poll for a waiting connection.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Take a waiting host connection, if there is one (never blocks).
    pub fn accept(&self) -> Result<Option<LineWriter>> {
        let err = |source| AgentError::Open {
            what: format!("host connection on {}", self.path.display()),
            source,
        };
        match self.listener.accept() {
            Ok((s, _)) => {
                let file = File::from(OwnedFd::from(s));
                LineWriter::new(file).map(Some).map_err(err)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
