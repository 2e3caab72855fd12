//! Kernel uevents: wake the rescan as soon as an mdev device or parent changes.
//!
//! On a real host (root `/`) the daemon listens on a `NETLINK_KOBJECT_UEVENT`
//! socket bound to multicast group 1, where the kernel itself broadcasts every
//! uevent (udev, when there is one, re-broadcasts on group 2; busybox guests have
//! none, so group 1 is the one that always works). A message is
//! `ACTION@DEVPATH\0ACTION=..\0DEVPATH=..\0SUBSYSTEM=..\0KEY=VALUE\0...`.
//!
//! What the kernel sends for mdev (captured by the daemon in the real-kernel guest,
//! Debian's 6.1 kernel with the `mtty` sample parent; the messages are in this
//! module's tests):
//! - writing a UUID to `create`: `add@/devices/virtual/mtty/mtty/<uuid>` with
//!   `SUBSYSTEM=mdev` (no type in the message), then `bind@` of the same device with
//!   `DRIVER=mtty` when the vendor driver probes it. Both come *before* the kernel
//!   creates the device's `mdev_type` link: in the guest, the rescans woken by them
//!   both found the device half made, and the follow-up rescan adopted it;
//! - a parent (un)registering: `change@<parent devpath>` with the parent's own
//!   subsystem (`SUBSYSTEM=mtty`) and `MDEV_STATE=registered|unregistered`, sent
//!   after the parent's type directories exist (respectively after they are gone);
//! - removing a device (or unloading its parent): `unbind@` and `remove@` with
//!   `SUBSYSTEM=mdev`.
//!
//! Any such event triggers an immediate rescan, and a second one [`SETTLE`] after
//! the last event of a burst, so that a device the first pass found half made is
//! read again without waiting for the periodic rescan (without it, an echoed
//! device waited for the next periodic rescan). The periodic rescan remains
//! the safety net (and is all the simulated host needs). If the socket's buffer
//! overflows (`ENOBUFS`: events were dropped) the listener rescans and carries on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// How long after the last mdev uevent of a burst the follow-up rescan runs.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The kernel's uevent multicast group (udev's re-broadcast is group 2).
const KERNEL_GROUP: u32 = 1;

/// Receive buffer asked for, so a burst (hundreds of devices) is not dropped.
const RCVBUF_BYTES: libc::c_int = 4 * 1024 * 1024;

/// The parts of one kernel uevent the daemon looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uevent<'a> {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, ...
    pub action: &'a str,
    /// The device path under `/sys`, e.g. `/devices/virtual/mtty/mtty/<uuid>`.
    pub devpath: &'a str,
    /// `SUBSYSTEM=` (`mdev` for mdev devices; the parent's own subsystem otherwise).
    pub subsystem: Option<&'a str>,
    /// `MDEV_STATE=` of a parent's (un)registration.
    pub mdev_state: Option<&'a str>,
    /// `DRIVER=` of a `bind`/`unbind`.
    pub driver: Option<&'a str>,
}

impl Uevent<'_> {
    /// Whether the event is about an mdev device or an mdev parent.
    pub fn concerns_mdev(&self) -> bool {
        self.subsystem == Some("mdev")
            || self.mdev_state.is_some()
            || self.driver == Some("vfio_mdev")
    }
}

/// Parse a raw kernel uevent; `None` when it is not one (no `ACTION@DEVPATH`
/// header, e.g. a `libudev` monitor message, or text that is not UTF-8).
pub fn parse(msg: &[u8]) -> Option<Uevent<'_>> {
    let mut fields = msg
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(std::str::from_utf8);
    let header = fields.next()?.ok()?;
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || !devpath.starts_with('/') {
        return None;
    }
    let mut ev = Uevent {
        action,
        devpath,
        subsystem: None,
        mdev_state: None,
        driver: None,
    };
    for kv in fields {
        let Ok(kv) = kv else { continue };
        let Some((key, value)) = kv.split_once('=') else {
            continue;
        };
        match key {
            "SUBSYSTEM" => ev.subsystem = Some(value),
            "MDEV_STATE" => ev.mdev_state = Some(value),
            "DRIVER" => ev.driver = Some(value),
            _ => {}
        }
    }
    Some(ev)
}

/// Whether a raw uevent concerns mdev devices or parents.
pub fn is_mdev_event(msg: &[u8]) -> bool {
    parse(msg).is_some_and(|e| e.concerns_mdev())
}

/// The message with its `\0` separators shown as spaces, for logs.
pub fn printable(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// When to wake the rescan: at once on an mdev event, and once more [`SETTLE`]
/// after the last one of a burst. Pure, so the timing is unit-tested.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waker {
    follow_up: Option<Instant>,
}

impl Waker {
    /// An mdev event arrived at `now`: wake now, and (again) [`SETTLE`] later.
    pub fn on_event(&mut self, now: Instant) -> bool {
        self.follow_up = Some(now + SETTLE);
        true
    }

    /// How long the listener may block before [`Waker::on_timeout`] is due;
    /// `None`: until the next event.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.follow_up.map(|t| t.saturating_duration_since(now))
    }

    /// The wait ended without an event at `now`: whether the follow-up wake is due.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        match self.follow_up {
            Some(t) if now >= t => {
                self.follow_up = None;
                true
            }
            _ => false,
        }
    }
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

/// An owned socket descriptor, closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: self.0 is an open descriptor owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn open_socket() -> std::io::Result<Fd> {
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
    let fd = Fd(fd);
    let size = RCVBUF_BYTES;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is open; the option value points at a c_int of the length passed.
    let forced = unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            len,
        )
    };
    if forced < 0 {
        // Without CAP_NET_ADMIN: the unprivileged option, capped by rmem_max. A
        // failure only means the default buffer, and ENOBUFS is handled anyway.
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                fd.0,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::addr_of!(size).cast(),
                len,
            )
        };
    }
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = KERNEL_GROUP;
    // SAFETY: addr is a valid sockaddr_nl and the length passed matches its size.
    let rc = unsafe {
        libc::bind(
            fd.0,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Wait up to `timeout` (`None`: forever) for the socket to be readable.
fn wait_readable(fd: &Fd, timeout: Option<Duration>) -> std::io::Result<bool> {
    let ms = timeout.map_or(-1, |t| {
        // Round up so a sub-millisecond remainder does not spin.
        libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    });
    let mut pfd = libc::pollfd {
        fd: fd.0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd and the count passed is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n > 0)
}

fn listen(wake: &Notify) -> std::io::Result<()> {
    let fd = open_socket()?;
    info!("listening to kernel uevents (netlink group {KERNEL_GROUP})");
    let mut waker = Waker::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let readable = match wait_readable(&fd, waker.timeout(Instant::now())) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !readable {
            if waker.on_timeout(Instant::now()) {
                debug!("uevent: follow-up rescan after a burst");
                wake.notify_one();
            }
            continue;
        }
        // SAFETY: buf is valid for buf.len() bytes for the duration of the call.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN) => continue,
                Some(libc::ENOBUFS) => {
                    warn!("uevent socket overflowed: events were lost; rescanning");
                    if waker.on_event(Instant::now()) {
                        wake.notify_one();
                    }
                    continue;
                }
                _ => return Err(e),
            }
        }
        let msg = &buf[..n.unsigned_abs()];
        match parse(msg) {
            Some(ev) if ev.concerns_mdev() => {
                debug!(uevent = %printable(msg), "mdev uevent: rescanning");
                if waker.on_event(Instant::now()) {
                    wake.notify_one();
                }
            }
            _ => {}
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

    /// A message as the kernel sends it, from its `printable` form (the fields
    /// contain no spaces).
    fn raw(printed: &str) -> Vec<u8> {
        let mut m: Vec<u8> = printed.replace(' ', "\0").into_bytes();
        m.push(0);
        m
    }

    /// Received by gvm-vgpud in the guest (Debian 6.1.0-56, mtty): echo into
    /// `mtty-2/create`, `rmmod mtty`, `insmod mtty.ko` with an autostart definition.
    const CAPTURED: [&str; 8] = [
        "add@/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 ACTION=add DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 SUBSYSTEM=mdev SEQNUM=641",
        "bind@/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 ACTION=bind DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 SUBSYSTEM=mdev DRIVER=mtty SEQNUM=644",
        "unbind@/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 ACTION=unbind DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 SUBSYSTEM=mdev SEQNUM=647",
        "remove@/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 ACTION=remove DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-2222-4000-8000-0000000ec401 SUBSYSTEM=mdev SEQNUM=648",
        "change@/devices/virtual/mtty/mtty ACTION=change DEVPATH=/devices/virtual/mtty/mtty SUBSYSTEM=mtty MDEV_STATE=unregistered SEQNUM=649",
        "change@/devices/virtual/mtty/mtty ACTION=change DEVPATH=/devices/virtual/mtty/mtty SUBSYSTEM=mtty MDEV_STATE=registered SEQNUM=657",
        "add@/devices/virtual/mtty/mtty/0d5c0a7e-3333-4000-8000-00000000a570 ACTION=add DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-3333-4000-8000-00000000a570 SUBSYSTEM=mdev SEQNUM=658",
        "bind@/devices/virtual/mtty/mtty/0d5c0a7e-3333-4000-8000-00000000a570 ACTION=bind DEVPATH=/devices/virtual/mtty/mtty/0d5c0a7e-3333-4000-8000-00000000a570 SUBSYSTEM=mdev DRIVER=mtty SEQNUM=662",
    ];

    #[test]
    fn captured_kernel_messages_all_concern_mdev_and_parse_exactly() {
        for printed in CAPTURED {
            let msg = raw(printed);
            assert_eq!(printable(&msg), printed, "round trip");
            let ev = parse(&msg);
            assert!(ev.is_some_and(|e| e.concerns_mdev()), "{printed}: {ev:?}");
        }
        let reg = raw(CAPTURED[5]);
        assert_eq!(
            parse(&reg),
            Some(Uevent {
                action: "change",
                devpath: "/devices/virtual/mtty/mtty",
                subsystem: Some("mtty"),
                mdev_state: Some("registered"),
                driver: None,
            })
        );
        let bind = raw(CAPTURED[1]);
        assert_eq!(parse(&bind).and_then(|e| e.driver), Some("mtty"));
        assert_eq!(parse(&bind).map(|e| e.action), Some("bind"));
    }

    #[test]
    fn the_parents_own_events_without_mdev_state_are_ignored() {
        // Written in the kernel's format (not captured: the daemon logs only mdev
        // events): what `insmod mtty` also sends for the parent's class device and
        // the module. They carry no mdev information: no rescan for them.
        let class_add = raw("add@/devices/virtual/mtty/mtty ACTION=add DEVPATH=/devices/virtual/mtty/mtty SUBSYSTEM=mtty MAJOR=240 MINOR=0 DEVNAME=mtty SEQNUM=651");
        assert!(!is_mdev_event(&class_add));
        let module =
            raw("add@/module/mtty ACTION=add DEVPATH=/module/mtty SUBSYSTEM=module SEQNUM=650");
        assert!(!is_mdev_event(&module));
    }

    #[test]
    fn non_kernel_messages_are_not_uevents() {
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"add@relative\0SUBSYSTEM=mdev\0"), None);
        assert!(!is_mdev_event(b"SUBSYSTEM=mdev\0MDEV_STATE=registered\0"));
    }

    #[test]
    fn fields_are_parsed() {
        let msg = b"bind@/devices/virtual/mtty/mtty/u\0ACTION=bind\0DEVPATH=/devices/virtual/mtty/mtty/u\0SUBSYSTEM=mdev\0DRIVER=mtty\0SEQNUM=9\0";
        let ev = parse(msg);
        assert_eq!(
            ev,
            Some(Uevent {
                action: "bind",
                devpath: "/devices/virtual/mtty/mtty/u",
                subsystem: Some("mdev"),
                mdev_state: None,
                driver: Some("mtty"),
            })
        );
        assert_eq!(
            printable(b"a@/x\0K=V\0"),
            "a@/x K=V",
            "separators become spaces"
        );
    }

    #[test]
    fn waker_wakes_at_once_and_once_more_after_the_burst() {
        let t0 = Instant::now();
        let mut w = Waker::default();
        assert_eq!(w.timeout(t0), None, "idle: block until an event");
        assert!(w.on_event(t0));
        assert_eq!(w.timeout(t0), Some(SETTLE));
        // A second event of the burst pushes the follow-up back.
        let t1 = t0 + SETTLE / 2;
        assert!(w.on_event(t1));
        assert_eq!(w.timeout(t1), Some(SETTLE));
        assert!(!w.on_timeout(t0 + SETTLE), "not yet due: pushed back by t1");
        assert!(w.on_timeout(t1 + SETTLE));
        assert_eq!(w.timeout(t1 + SETTLE), None, "one follow-up only");
        assert!(!w.on_timeout(t1 + SETTLE * 3));
    }
}
