//! The few raw system calls the agent needs, each behind a safe function.
//!
//! All `unsafe` of the agent lives here: `poll(2)` for bounded waits, `mknod(2)`
//! for a virtio-serial node udev did not create, `uname(2)`, an `AF_VSOCK`
//! stream connect with a timeout (the standard library has no vsock), and the
//! peer credentials of a Unix socket (`SO_PEERCRED`; unstable in std).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// What a bounded wait for writability found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A write will make progress.
    Writable,
    /// The peer is gone (virtio-serial: the host end is not connected).
    Hangup,
    /// Nothing happened within the timeout.
    TimedOut,
}

/// Poll `fd` alone for `events`, at most `timeout`, retrying on EINTR: the `revents`
/// seen, or `None` when the time ran out.
fn poll_one(
    fd: libc::c_int,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<Option<libc::c_short>> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // ppoll, not poll: poll's millisecond timeout truncates a sub-millisecond wait to 0,
    // and the agent's watch loop (1 ms) then spun on the CPU until its deadline.
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    loop {
        // SAFETY: `pfd` is a valid, initialised pollfd, we pass a count of 1, `ts` is a valid
        // timespec and a null signal mask keeps the thread's own.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok((n > 0).then_some(pfd.revents));
    }
}

/// Whether `revents` says the peer is gone.
fn hung_up(revents: libc::c_short) -> bool {
    revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Wait at most `timeout` for `file` to become writable.
pub fn wait_writable(file: &File, timeout: Duration) -> io::Result<Readiness> {
    Ok(match poll_one(file.as_raw_fd(), libc::POLLOUT, timeout)? {
        Some(r) if r & libc::POLLOUT != 0 => Readiness::Writable,
        Some(r) if hung_up(r) => Readiness::Hangup,
        _ => Readiness::TimedOut,
    })
}

/// What a bounded wait for readability found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReadiness {
    /// A read will return data (or end of file on a stream).
    Readable,
    /// The peer is gone, nothing left to read (virtio-serial: host end not connected).
    Hangup,
    /// Nothing happened within the timeout.
    TimedOut,
}

/// Wait at most `timeout` for `fd` to become readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<ReadReadiness> {
    Ok(match poll_one(fd.as_raw_fd(), libc::POLLIN, timeout)? {
        Some(r) if r & libc::POLLIN != 0 => ReadReadiness::Readable,
        Some(r) if hung_up(r) => ReadReadiness::Hangup,
        _ => ReadReadiness::TimedOut,
    })
}

/// The peer of a connected Unix socket as the kernel tells it: (pid, uid).
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain old data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = u32::try_from(cred.pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid == 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok((pid, cred.uid))
}

/// Make `file` non-blocking.
pub fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Create a character device node `path` for `major:minor`, mode 0600.
pub fn mknod_char(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Connect an `AF_VSOCK` stream to `cid:port`, waiting at most `timeout`; the
/// returned file is non-blocking.
pub fn vsock_connect(cid: u32, port: u32, timeout: Duration) -> io::Result<File> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and the length matches its size.
    let r = unsafe {
        libc::connect(
            file.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(file);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(e);
    }
    match wait_writable(&file, timeout)? {
        Readiness::TimedOut => return Err(io::Error::from(io::ErrorKind::TimedOut)),
        Readiness::Writable | Readiness::Hangup => {}
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            file.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_not_empty() {
        let r = kernel_release().unwrap();
        assert!(
            !r.is_empty() && r.chars().next().unwrap().is_ascii_digit(),
            "{r}"
        );
    }

    #[test]
    fn peer_credentials_and_readability_of_a_socketpair() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (pid, uid) = peer_cred(a.as_fd()).unwrap();
        assert_eq!(pid, std::process::id());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(uid, unsafe { libc::geteuid() });
        let short = Duration::from_millis(10);
        assert_eq!(
            wait_readable(a.as_fd(), short).unwrap(),
            ReadReadiness::TimedOut
        );
        b.write_all(b"x").unwrap();
        assert_eq!(
            wait_readable(a.as_fd(), short).unwrap(),
            ReadReadiness::Readable
        );
    }

    #[test]
    fn an_unreachable_vsock_peer_fails_quickly() {
        // CID 2 (host) port 1 from the host itself: nothing listens there.
        let start = std::time::Instant::now();
        let r = vsock_connect(2, 1, Duration::from_millis(300));
        assert!(r.is_err(), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
