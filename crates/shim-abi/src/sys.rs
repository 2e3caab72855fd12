//! The operating-system primitives the control and arbitration blocks are built on: a shared
//! file mapping, sealed memfds (a block whose size its owner cannot change, so a mapping of it
//! can never fault with `SIGBUS`), descriptor passing over Unix sockets (`SCM_RIGHTS`), futex
//! wait/wake across processes, the monotonic clock and a liveness probe.
//! All `unsafe` of this crate is here, each block with its `// SAFETY:` reason.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

/// `F_SEAL_SEAL`: no seal may be added any more.
pub const SEAL_SEAL: u32 = libc::F_SEAL_SEAL as u32;
/// `F_SEAL_SHRINK`: the file cannot be made smaller (so no mapping of it can fault).
pub const SEAL_SHRINK: u32 = libc::F_SEAL_SHRINK as u32;
/// `F_SEAL_GROW`: the file cannot be made larger.
pub const SEAL_GROW: u32 = libc::F_SEAL_GROW as u32;
/// `F_SEAL_WRITE`: the file cannot be written (nor mapped writable).
pub const SEAL_WRITE: u32 = libc::F_SEAL_WRITE as u32;
/// `F_SEAL_FUTURE_WRITE`: no new writable mapping or write.
pub const SEAL_FUTURE_WRITE: u32 = libc::F_SEAL_FUTURE_WRITE as u32;

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the memfd is not executable, and stays so. Older kernels
/// refuse the flag (EINVAL), newer ones may refuse a memfd without it (`vm.memfd_noexec=2`).
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;

/// A new, empty memfd named `name` (`/proc/<pid>/fd` shows `/memfd:<name>`): close-on-exec,
/// sealing allowed, not executable where the kernel knows how to say so. Made with the raw
/// system call, so `libgvm_cuda.so` needs no glibc 2.27 for it.
pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    let create = |flags: libc::c_uint| {
        // SAFETY: memfd_create reads the NUL-terminated name we borrow for the call; the result
        // is checked below.
        unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) }
    };
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let mut rc = create(base | MFD_NOEXEC_SEAL);
    if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        rc = create(base);
    }
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Add `seals` (`SEAL_*`) to the memfd `fd` (`F_ADD_SEALS`).
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    let seals =
        libc::c_int::try_from(seals).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals of `fd` (`F_GET_SEALS`): EINVAL for a file that cannot carry seals (anything but
/// a shared-memory file); a tmpfs file not made by `memfd_create` has `SEAL_SEAL` alone.
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: F_GET_SEALS takes no argument and touches no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A memfd named `name` of exactly `len` bytes (zeroes), sealed against shrinking, growing
/// and further sealing: whoever holds it can write its bytes but never change its size.
pub fn sealed_memfd(name: &CStr, len: u64) -> io::Result<OwnedFd> {
    let file = File::from(memfd_create(name)?);
    file.set_len(len)?;
    add_seals(file.as_fd(), SEAL_SHRINK | SEAL_GROW | SEAL_SEAL)?;
    Ok(OwnedFd::from(file))
}

fn retry_eintr(mut f: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Send `bytes` on the connected stream socket `sock` with the descriptors `fds` attached
/// (one `SCM_RIGHTS` message, arriving with the first byte; at most [`MAX_RECEIVED_FDS`]).
/// Returns how many bytes went: send the rest with [`send_bytes`]. `MSG_NOSIGNAL`: a peer
/// that hung up is `EPIPE`, never `SIGPIPE` in the host program.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.is_empty() || fds.len() > MAX_RECEIVED_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let fds_len = libc::c_uint::try_from(fds.len() * std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // Room for one cmsghdr and MAX_RECEIVED_FDS ints, 8-byte aligned.
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: CMSG_SPACE and CMSG_LEN are arithmetic on their argument.
    let (space, cmsg_len) = unsafe { (libc::CMSG_SPACE(fds_len), libc::CMSG_LEN(fds_len)) };
    let space = usize::try_from(space).unwrap_or(usize::MAX);
    if space > std::mem::size_of_val(&control) {
        return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one header and `fds.len()` ints
    // (checked above), so CMSG_FIRSTHDR is non-null and the ints written from CMSG_DATA on
    // lie inside `control`; they are written unaligned-safe.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = cmsg_len as _;
        let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), fd.as_raw_fd());
        }
    }
    retry_eintr(|| {
        // SAFETY: `msg` and what it points at (`iov` over `bytes`, `control`) live on our stack
        // or are borrowed for the call; sendmsg only reads them.
        unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) }
    })
}

/// Send `bytes` on the connected socket `sock` (`MSG_NOSIGNAL`, see [`send_with_fds`]);
/// returns how many went.
pub fn send_bytes(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: send reads at most `bytes.len()` bytes of the slice we borrow for the call.
        unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// The most descriptors one [`recv_with_fd`] makes room for; the kernel discards (closes)
/// any beyond, and any beyond the first are closed here.
pub const MAX_RECEIVED_FDS: usize = 16;

/// Room for one `cmsghdr` (16 bytes) and [`MAX_RECEIVED_FDS`] ints, in 8-byte words.
const CMSG_WORDS: usize = 2 + MAX_RECEIVED_FDS / 2;

/// Receive into `buf` from the stream socket `sock`: the byte count (0 at end of file) and
/// the first descriptor that came with those bytes, if any. Every other descriptor received
/// is closed at once; all are close-on-exec from the start (`MSG_CMSG_CLOEXEC`). Blocks or
/// not as the socket does (`WouldBlock` on a non-blocking one with nothing to read).
pub fn recv_with_fd(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf, 1)?;
    Ok((n, fds.into_iter().next()))
}

/// Receive into `buf` from the stream socket `sock`: the byte count (0 at end of file) and
/// the first `keep` descriptors (at most [`MAX_RECEIVED_FDS`]) that came with those bytes, in
/// the order sent. Every other descriptor received is closed at once; all are close-on-exec
/// from the start (`MSG_CMSG_CLOEXEC`).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    keep: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let fds_len = (MAX_RECEIVED_FDS * std::mem::size_of::<libc::c_int>()) as libc::c_uint;
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = usize::try_from(unsafe { libc::CMSG_SPACE(fds_len) }).unwrap_or(usize::MAX);
    let space = space.min(std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = retry_eintr(|| {
        // SAFETY: recvmsg writes at most `buf.len()` bytes into `buf` and at most
        // `msg_controllen` bytes into `control`, both ours for the call.
        unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) }
    })?;
    let mut kept: Vec<OwnedFd> = Vec::new();
    // SAFETY: the kernel filled `control` up to `msg_controllen` with well-formed cmsg
    // headers; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it (null at its end), each header's data
    // of `cmsg_len` bytes lies inside it, and every int of SCM_RIGHTS data is a descriptor
    // newly installed for us, which we own from here on.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let bytes = ((*c).cmsg_len as usize)
                    .saturating_sub((data as usize).saturating_sub(c as usize));
                let count = bytes / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    if raw < 0 {
                        continue;
                    }
                    let owned = OwnedFd::from_raw_fd(raw);
                    if kept.len() < keep.min(MAX_RECEIVED_FDS) {
                        kept.push(owned);
                    }
                    // Any other: dropped here, which closes it.
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// How many descriptors of this process point at a memfd named `name`.
    fn open_memfds(name: &str) -> usize {
        let want = format!("/memfd:{name} (deleted)");
        std::fs::read_dir("/proc/self/fd")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_descriptor_travels_with_the_first_bytes_and_extra_ones_are_closed() {
        let (a, b) = UnixStream::pair().expect("pair");
        let one = sealed_memfd(c"gvm-sys-test-one", 4096).expect("memfd");
        let name = format!("gvm-sys-test-extra-{}", std::process::id());
        let cname = std::ffi::CString::new(name.clone()).expect("name");
        let extras: Vec<OwnedFd> = (0..3)
            .map(|_| memfd_create(&cname).expect("memfd"))
            .collect();
        assert_eq!(
            send_with_fds(a.as_fd(), b"hello\n", &[one.as_fd()]).expect("send"),
            6
        );
        let all: Vec<BorrowedFd<'_>> = extras.iter().map(AsFd::as_fd).collect();
        assert_eq!(send_with_fds(a.as_fd(), b"more", &all).expect("send"), 4);
        assert_eq!(send_bytes(a.as_fd(), b"!").expect("send"), 1);
        drop(extras);
        assert_eq!(open_memfds(&name), 0, "in flight: held by the socket only");

        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(
            &buf[..n],
            b"hello\n",
            "bytes with another descriptor are not merged"
        );
        let fd = fd.expect("the descriptor came with the first bytes");
        assert_eq!(
            get_seals(fd.as_fd()).expect("seals") & (SEAL_SHRINK | SEAL_GROW),
            SEAL_SHRINK | SEAL_GROW
        );
        // SAFETY: F_GETFD reads the descriptor's flags only.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "close-on-exec");
        let (n, first) = recv_with_fd(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"more");
        assert!(first.is_some());
        assert_eq!(open_memfds(&name), 1, "only the first of three is kept");
        drop(first);
        assert_eq!(open_memfds(&name), 0);
        let (n, none) = recv_with_fd(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((&buf[..n], none.is_none()), (&b"!"[..], true));
        drop(a);
        let (n, none) = recv_with_fd(b.as_fd(), &mut buf).expect("eof");
        assert_eq!((n, none.is_none()), (0, true), "end of file");
        assert_eq!(
            send_with_fds(b.as_fd(), b"x", &[])
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
    }
}
