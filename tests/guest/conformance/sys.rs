//! Every system call of the held-device steps that std does not wrap: the VFIO ioctls
//! that open an mdev device the way QEMU does, `gettid`/`tgkill` to signal the thread
//! blocked in a `remove` write, and a no-op `SIGUSR1` handler.
//!
//! The ioctl numbers are those of `include/uapi/linux/vfio.h` (`VFIO_TYPE` `';'`,
//! `VFIO_BASE` 100; all `_IO`, so the number is `(';' << 8) | nr`).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `VFIO_API_VERSION`.
const VFIO_API_VERSION: libc::c_int = 0;
/// `VFIO_TYPE1_IOMMU`.
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
/// `VFIO_GROUP_FLAGS_VIABLE`.
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((b';' as libc::c_ulong) << 8) | nr as libc::c_ulong
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(100);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(101);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(102);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(103);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(104);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(106);

/// `struct vfio_group_status`.
#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// A failed step of opening a device through VFIO: what was done to which object, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// A system call failed.
    #[error("{what} on {object}: {source}")]
    Os {
        /// The call (`open`, `VFIO_GROUP_SET_CONTAINER`, …).
        what: &'static str,
        /// The file or device it was made on.
        object: String,
        /// The error, with its errno.
        #[source]
        source: io::Error,
    },
    /// The kernel answered, but not what a usable setup needs.
    #[error("{object}: {what}")]
    Unusable {
        /// What is wrong.
        what: String,
        /// The file or device.
        object: String,
    },
}

impl VfioError {
    /// The errno, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            VfioError::Os { source, .. } => source.raw_os_error(),
            VfioError::Unusable { .. } => None,
        }
    }
}

fn os<'a>(what: &'static str, object: &'a Path) -> impl FnOnce(io::Error) -> VfioError + 'a {
    move |source| VfioError::Os {
        what,
        object: object.display().to_string(),
        source,
    }
}

/// An mdev device held open through VFIO: container, group and device fds.
/// Dropping it (or [`VfioHold::release`]) closes the device fd first, as QEMU does.
#[derive(Debug)]
pub struct VfioHold {
    device: Option<OwnedFd>,
    group: Option<File>,
    container: Option<File>,
}

impl VfioHold {
    /// Open `uuid` (whose IOMMU group is `group`) under `dev_vfio` (`/dev/vfio`): a
    /// type1 container, the group set to it, then `VFIO_GROUP_GET_DEVICE_FD`.
    pub fn open(dev_vfio: &Path, group: u32, uuid: &str) -> Result<VfioHold, VfioError> {
        let container_path = dev_vfio.join("vfio");
        let container = rw(&container_path)?;
        let cfd = container.as_raw_fd();
        // SAFETY: VFIO_GET_API_VERSION takes no argument; cfd is an open fd we own.
        let version = unsafe { libc::ioctl(cfd, VFIO_GET_API_VERSION) };
        if version != VFIO_API_VERSION {
            return Err(VfioError::Unusable {
                what: format!("API version {version}, expected {VFIO_API_VERSION}"),
                object: container_path.display().to_string(),
            });
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes the extension number by value.
        let type1 = unsafe { libc::ioctl(cfd, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) };
        if type1 <= 0 {
            return Err(VfioError::Unusable {
                what: "no type1 IOMMU extension (is vfio_iommu_type1 loaded?)".into(),
                object: container_path.display().to_string(),
            });
        }
        let group_path = dev_vfio.join(group.to_string());
        let group_file = rw(&group_path)?;
        let gfd = group_file.as_raw_fd();
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: the argument points to a live vfio_group_status with argsz set; the
        // kernel writes at most argsz bytes into it.
        let r = unsafe { libc::ioctl(gfd, VFIO_GROUP_GET_STATUS, &mut status as *mut GroupStatus) };
        if r < 0 {
            return Err(os("VFIO_GROUP_GET_STATUS", &group_path)(
                io::Error::last_os_error(),
            ));
        }
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::Unusable {
                what: "group is not viable".into(),
                object: group_path.display().to_string(),
            });
        }
        // SAFETY: the argument points to an int holding the container fd, which stays
        // open for the call; the kernel only reads it.
        let r = unsafe { libc::ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &cfd as *const libc::c_int) };
        if r < 0 {
            return Err(os("VFIO_GROUP_SET_CONTAINER", &group_path)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
        let r = unsafe { libc::ioctl(cfd, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) };
        if r < 0 {
            return Err(os("VFIO_SET_IOMMU(type1)", &container_path)(
                io::Error::last_os_error(),
            ));
        }
        let name = CString::new(uuid).map_err(|_| VfioError::Unusable {
            what: "device name contains a NUL byte".into(),
            object: uuid.to_string(),
        })?;
        // SAFETY: the argument is a NUL-terminated string that outlives the call.
        let dfd = unsafe { libc::ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) };
        if dfd < 0 {
            return Err(os("VFIO_GROUP_GET_DEVICE_FD", &group_path)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a non-negative return is a new fd that nothing else owns.
        let device = unsafe { OwnedFd::from_raw_fd(dfd) };
        Ok(VfioHold {
            device: Some(device),
            group: Some(group_file),
            container: Some(container),
        })
    }

    /// Close the device fd (what the blocked `remove` waits for), then group and container.
    pub fn release(&mut self) {
        self.device.take();
        self.group.take();
        self.container.take();
    }
}

impl Drop for VfioHold {
    fn drop(&mut self) {
        self.release();
    }
}

fn rw(path: &Path) -> Result<File, VfioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(os("open", path))
}

/// The IOMMU group number of the device whose sysfs directory is `dev_dir`.
pub fn iommu_group(dev_dir: &Path) -> Result<u32, VfioError> {
    let link: PathBuf = dev_dir.join("iommu_group");
    let target = std::fs::read_link(&link).map_err(os("readlink", &link))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| VfioError::Unusable {
            what: format!("link target {} does not end in a number", target.display()),
            object: link.display().to_string(),
        })
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Send `SIGUSR1` to thread `tid` of this process.
pub fn signal_thread(tid: i32) -> io::Result<()> {
    // SAFETY: tgkill only sends a signal; SIGUSR1 has a handler installed by
    // [`catch_sigusr1`] first (the caller's duty), so it cannot end the process.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR1) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Install a handler for `SIGUSR1` that does nothing, without `SA_RESTART`, so that a
/// blocked system call it interrupts returns `EINTR` if the kernel lets it.
pub fn catch_sigusr1() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
    // async-signal-safe function that does nothing; sigemptyset gets a valid pointer.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        act.sa_flags = 0;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
