//! Getting lines to the host without ever blocking the guest.
//!
//! The agent writes to a virtio-serial port ([`virtio`]), a vsock stream
//! ([`vsock`]), any writable path given with `--device` (a character device, a
//! FIFO, a pty), or stdout. Every descriptor is non-blocking and every wait is a
//! `poll(2)` with a timeout, so a host that is gone, slow or never reads costs the
//! guest at most the timeout per report:
//!
//! - nothing of a line could be written (virtio-serial says EAGAIN/POLLHUP while
//!   the host end is not connected): the line is dropped and counted;
//! - part of a line was written when the time ran out: the rest is kept (at most
//!   one line, 64 KiB) and finished before anything else, so the host never sees
//!   two lines run together; a new line that arrives meanwhile is dropped;
//! - the peer hung up or the write failed: the channel must be reopened.
//!
//! The same descriptor carries the host's lines back (protocol v2): a
//! virtio-serial port is opened read-write, a vsock or `--serve-unix` stream is
//! read as it is written; [`lines`] frames what arrives, bounded.

pub mod lines;
pub mod unix_server;
pub mod virtio;
pub mod vsock;

use crate::sys::{self, Readiness};
use std::fs::File;
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// Why a line was not (fully) sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer is not there (virtio-serial host end unconnected); nothing was
    /// written and the line was dropped.
    #[error("the host end is not connected; report dropped")]
    NotConnected,
    /// The peer did not take the line within the timeout; `kept` bytes of a
    /// started line are kept for the next send, the rest was dropped.
    #[error("the host did not read within {timeout_ms} ms; report dropped ({kept} bytes of a started line kept)")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
        /// Bytes of a partly written line still pending.
        kept: usize,
    },
    /// The channel failed; reopen it.
    #[error("writing to the host failed; reopening the channel")]
    Broken(#[source] io::Error),
}

impl SendError {
    /// Whether the channel must be closed and reopened.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, SendError::Broken(_))
    }
}

/// A non-blocking line writer over one open descriptor.
#[derive(Debug)]
pub struct LineWriter {
    file: File,
    /// The unsent tail of a started line.
    pending: Vec<u8>,
}

impl LineWriter {
    /// Wrap `file`, making it non-blocking.
    pub fn new(file: File) -> io::Result<Self> {
        sys::set_nonblocking(&file)?;
        Ok(LineWriter {
            file,
            pending: Vec::new(),
        })
    }

    /// The descriptor (to poll it for the host's lines).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// Read what the host sent, without blocking: `Ok(0)` is end of file (a stream
    /// peer gone; a virtio-serial port whose host end is not connected), a
    /// `WouldBlock` error means nothing is there yet.
    pub fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Bytes of a started line still waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Forget a started line (the peer it was meant for is gone).
    pub fn drop_pending(&mut self) {
        self.pending.clear();
    }

    /// Send one line (`line` must end with `\n`), waiting at most `timeout` in
    /// total. See the module docs for what happens on each failure.
    pub fn send(&mut self, line: &[u8], timeout: Duration) -> Result<(), SendError> {
        let deadline = Instant::now() + timeout;
        let timeout_ms = timeout.as_millis() as u64;
        if !self.pending.is_empty() {
            let tail = std::mem::take(&mut self.pending);
            match self.write_until(&tail, deadline)? {
                n if n == tail.len() => {}
                n => {
                    self.pending = tail[n..].to_vec();
                    return Err(SendError::Timeout {
                        timeout_ms,
                        kept: self.pending.len(),
                    });
                }
            }
        }
        match self.write_until(line, deadline)? {
            n if n == line.len() => Ok(()),
            0 => Err(SendError::Timeout {
                timeout_ms,
                kept: 0,
            }),
            n => {
                self.pending = line[n..].to_vec();
                Err(SendError::Timeout {
                    timeout_ms,
                    kept: self.pending.len(),
                })
            }
        }
    }

    /// Write as much of `buf` as possible before `deadline`; returns how much.
    fn write_until(&mut self, buf: &[u8], deadline: Instant) -> Result<usize, SendError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.write(&buf[done..]) {
                Ok(0) => return Err(SendError::Broken(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    done += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if done == 0 && is_not_connected(&e) => return Err(SendError::NotConnected),
                Err(e) => return Err(SendError::Broken(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(done);
            }
            match sys::wait_writable(&self.file, left).map_err(SendError::Broken)? {
                Readiness::Writable => {}
                Readiness::TimedOut => return Ok(done),
                Readiness::Hangup if done == 0 => return Err(SendError::NotConnected),
                Readiness::Hangup => {
                    // The peer went away mid-line: what was written is lost with it.
                    return Err(SendError::Broken(io::ErrorKind::BrokenPipe.into()));
                }
            }
        }
        Ok(done)
    }
}

fn is_not_connected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ENXIO) | Some(libc::ECONNREFUSED)
    )
}

#[cfg(test)]
mod tests;
