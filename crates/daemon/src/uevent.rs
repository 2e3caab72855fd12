//! Kernel uevents: wake the rescan as soon as an mdev device or parent changes.
//!
//! On a real host (root `/`) the daemon listens on a `NETLINK_KOBJECT_UEVENT`
//! socket. A message is `ACTION@DEVPATH\0KEY=VALUE\0...`; mdev devices have
//! `SUBSYSTEM=mdev`, and a parent's (un)registration carries
//! `MDEV_STATE=registered|unregistered`. Any such event triggers an immediate
//! rescan; the periodic rescan remains the safety net (and is all the simulated
//! host needs).

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{debug, warn};

/// Whether a raw uevent concerns mdev devices or parents.
pub fn is_mdev_event(msg: &[u8]) -> bool {
    msg.split(|b| *b == 0).any(|kv| {
        kv == b"SUBSYSTEM=mdev" || kv.starts_with(b"MDEV_STATE=") || kv == b"DRIVER=vfio_mdev"
    })
}

/// Start a thread that notifies `wake` on every mdev uevent. Failures are logged
/// (the periodic rescan still works).
pub fn spawn_listener(wake: Arc<Notify>) {
    let r = std::thread::Builder::new()
        .name("uevent".into())
        .spawn(move || match listen(&wake) {
            Ok(()) => {}
            Err(e) => warn!("uevent listener stopped ({e}); relying on the periodic rescan"),
        });
    if let Err(e) = r {
        warn!("cannot start the uevent listener: {e}");
    }
}

fn listen(wake: &Notify) -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the returned descriptor is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = 1; // the kernel's uevent multicast group
                        // SAFETY: addr is a valid sockaddr_nl and the length passed matches its size.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: fd is an open descriptor owned by this function.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: fd is an open descriptor owned by this function.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let msg = &buf[..n as usize];
        if is_mdev_event(msg) {
            debug!("mdev uevent");
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdev_events_are_recognized() {
        let add = b"add@/devices/pci0000:00/0000:00:02.0/abc\0ACTION=add\0SUBSYSTEM=mdev\0";
        assert!(is_mdev_event(add));
        let reg =
            b"change@/devices/pci0000:00/0000:00:02.0\0ACTION=change\0MDEV_STATE=registered\0";
        assert!(is_mdev_event(reg));
        let other = b"add@/devices/virtual/net/lo\0ACTION=add\0SUBSYSTEM=net\0";
        assert!(!is_mdev_event(other));
    }
}
