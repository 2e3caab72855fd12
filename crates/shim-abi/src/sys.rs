//! The operating-system primitives the control and arbitration blocks are built on: a shared
//! file mapping, futex wait/wake across processes, the monotonic clock and a liveness probe.
//! All `unsafe` of this crate is here, each block with its `// SAFETY:` reason.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleep while `*word == expected`, at most `timeout` (a futex shared between processes, so a
/// daemon writing the control block can wake it). Spurious returns are fine: callers re-check.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(i32::try_from(timeout.subsec_nanos()).unwrap_or(0)),
    };
    // SAFETY: FUTEX_WAIT reads the 4-byte aligned word (an AtomicU32 we borrow) and the
    // timespec on our stack; neither outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wake every thread (in any process) sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the word's address as a key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// A `MAP_SHARED` read-write mapping of the start of a file.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics in control.rs.
unsafe impl Send for SharedMapping {}
// SAFETY: as above, shared references only ever perform atomic operations.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Map the first `len` bytes of `file` (which must be at least that long).
    pub fn map(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel over an open descriptor; no existing
        // memory is touched. The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>())
            .map(|ptr| SharedMapping { ptr, len })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
    }

    /// The start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mmap returned; nothing borrows it past this point
        // because borrows are tied to the owner's lifetime.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// View a control-block mapping as the block.
pub fn control_block_of(map: &SharedMapping) -> &crate::control::ControlBlock {
    const _: () =
        assert!(std::mem::size_of::<crate::control::ControlBlock>() <= crate::control::FILE_LEN);
    // SAFETY: the mapping is FILE_LEN bytes (checked above to hold a ControlBlock), page
    // aligned, and lives as long as `map`; the block has only atomic fields, for which any bit
    // pattern is valid and concurrent access from other processes is sound.
    unsafe { &*map.as_ptr().cast::<crate::control::ControlBlock>() }
}

/// View an arbitration-block mapping as the block.
pub fn arbiter_block_of(map: &SharedMapping) -> &crate::arbiter::ArbiterBlock {
    const _: () = assert!(
        std::mem::size_of::<crate::arbiter::ArbiterBlock>() <= crate::arbiter::ARB_FILE_LEN
    );
    // SAFETY: the mapping is ARB_FILE_LEN bytes (checked above to hold the block), page
    // aligned (enough for the block's 64-byte alignment), and lives as long as `map`; the
    // block has only atomic fields, valid for any bit pattern and for concurrent access from
    // other processes.
    unsafe { &*map.as_ptr().cast::<crate::arbiter::ArbiterBlock>() }
}

/// Whether process `pid` exists (signal 0; EPERM still means it exists).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// CLOCK_MONOTONIC in nanoseconds (shared by all processes of the host).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec of ours.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// A connected, close-on-exec Unix stream socket to `path`, without blocking longer than
/// about `timeout` (a daemon whose backlog is full is retried until then, never waited on
/// indefinitely). The socket is left non-blocking.
pub fn unix_connect(path: &std::path::Path, timeout: Duration) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes on our stack.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc == 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The listener's backlog is full: try again shortly, until the deadline.
            Some(libc::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Some(libc::EAGAIN) => return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
            _ => return Err(e),
        }
    }
}

/// Block until the peer of the connected stream socket `fd` hangs up: end-of-file, a reset,
/// or an error on the descriptor. Sleeps in `poll(2)` with no timeout (no busy loop); bytes
/// the peer sends are read and discarded so they cannot wake the loop again.
pub fn wait_hangup(fd: std::os::fd::BorrowedFd<'_>) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let mut sink = [0u8; 256];
    loop {
        pfd.revents = 0;
        // SAFETY: one pollfd of ours on the stack, count 1; it does not outlive the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
        if rc < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return; // Cannot watch it any more: treat as gone.
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP | libc::POLLNVAL) != 0 {
            return;
        }
        if pfd.revents & libc::POLLIN != 0 {
            // SAFETY: reads at most `sink.len()` bytes into our buffer; MSG_DONTWAIT keeps it
            // from blocking whatever the descriptor's mode.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    sink.as_mut_ptr().cast(),
                    sink.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return;
            }
            if n < 0 {
                let e = io::Error::last_os_error().raw_os_error();
                if !matches!(e, Some(libc::EINTR | libc::EAGAIN)) {
                    return;
                }
            }
        }
    }
}

/// Run `f` with every blockable signal blocked in the calling thread, then restore its mask.
/// A thread spawned inside `f` starts with all signals blocked, so the host program's
/// process-directed signals are never delivered to it.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; sigfillset initialises it fully before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are ours, on the stack; pthread_sigmask only reads `all` and writes
    // `old`. SIGKILL/SIGSTOP cannot be blocked (the kernel ignores them in the set).
    let saved = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0
    };
    let r = f();
    if saved {
        // SAFETY: restores the mask saved above; `old` is ours.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
    }
    r
}

/// Start a thread named `name` running `body` the first time `once` is passed; `on_error`
/// hears why it could not be started. Later calls do nothing.
pub fn spawn_once(
    once: &std::sync::Once,
    name: &str,
    body: fn(),
    on_error: impl FnOnce(io::Error),
) {
    once.call_once(|| {
        if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(body) {
            on_error(e);
        }
    });
}
