//! Errors of the mdev sysfs client, and the mapping from kernel errnos to them.
//!
//! The kernel answers a bad write to `create` or `remove` with a bare errno. The
//! functions here ([`map_create_error`], [`map_remove_error`]) are the one place
//! that turns such an errno into an [`Error`] naming the parent, type or UUID and
//! saying what to do. They are pure, so every errno is unit-tested without a kernel.
//! Every variant that came from the kernel keeps the raw errno ([`Error::errno`]):
//! a conformance suite compares it with a real kernel's.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong talking to the mdev sysfs ABI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No `/sys/class/mdev_bus/<name>` entry.
    #[error("mdev parent '{name}' is not registered{}; list parents with `ls /sys/class/mdev_bus` and check that the vendor driver is loaded", did_you_mean(.suggestion))]
    ParentNotFound {
        /// The parent name that was asked for.
        name: String,
        /// The closest registered parent name, if one is close.
        suggestion: Option<String>,
    },

    /// The parent exists but has no such type under `mdev_supported_types`.
    #[error("mdev type '{type_id}' does not exist on parent '{parent}'; its types are: {}", list_or_none(.available))]
    TypeNotFound {
        /// The parent name.
        parent: String,
        /// The type id that was asked for.
        type_id: String,
        /// The type ids the parent does offer.
        available: Vec<String>,
    },

    /// Pre-check: the type's `available_instances` is 0.
    #[error("no free instance of type '{type_id}' on parent '{parent}' (available_instances is 0; the type has {devices} device(s)): remove a device or choose another type")]
    NoFreeInstance {
        /// The parent name.
        parent: String,
        /// The full type.
        type_id: String,
        /// How many devices the type currently has.
        devices: usize,
    },

    /// No `/sys/bus/mdev/devices/<uuid>` entry.
    #[error("mdev device {uuid} does not exist; list devices with `ls /sys/bus/mdev/devices`")]
    DeviceNotFound {
        /// The device's UUID.
        uuid: Uuid,
    },

    /// The kernel rejected what was written as malformed (EINVAL).
    #[error("the kernel rejected {written:?} written to {path} as malformed (errno {errno}): write a 36-character UUID to `create` (a trailing newline is allowed) or `1` to `remove`")]
    Malformed {
        /// The attribute written.
        path: PathBuf,
        /// What was written (lossily decoded).
        written: String,
        /// The raw errno.
        errno: i32,
    },

    /// EEXIST from `create`: the UUID is taken by a device of any parent or type.
    #[error("a device with UUID {uuid} already exists: pick another UUID or remove it")]
    UuidExists {
        /// The UUID as written (trimmed, lower case where it parsed).
        uuid: String,
        /// The errno (EEXIST).
        errno: i32,
    },

    /// EUSERS or ENOSPC from `create`: the pool of the type is exhausted.
    #[error("no free instance on {parent}/{type_id} ({}): remove a device or choose another type", errno_name(*.errno))]
    NoInstanceAvailable {
        /// The parent name.
        parent: String,
        /// The type id.
        type_id: String,
        /// The errno (EUSERS or ENOSPC).
        errno: i32,
    },

    /// ENODEV: the parent is being unregistered.
    #[error("mdev parent '{parent}' is going away (ENODEV): wait until its driver registers it again, then retry")]
    ParentGone {
        /// The parent name.
        parent: String,
        /// The errno (ENODEV).
        errno: i32,
    },

    /// EACCES or EPERM writing a sysfs attribute.
    #[error("permission denied writing {path} ({}): run as root", errno_name(*.errno))]
    PermissionDenied {
        /// The attribute written.
        path: PathBuf,
        /// The errno (EACCES or EPERM).
        errno: i32,
    },

    /// EBUSY from `remove`.
    #[error("device {uuid} is in use, e.g. by QEMU: stop the VM first")]
    DeviceBusy {
        /// The device's UUID (the directory name written to).
        uuid: String,
        /// The errno (EBUSY).
        errno: i32,
    },

    /// Pre-check before `remove`: processes hold the device's VFIO node open, so the
    /// kernel's `remove` would block (uninterruptibly) until they close it.
    #[error("vGPU {uuid} is in use: held open by {}; nothing was changed. Removing it now would block until the holder lets go, and that wait cannot be interrupted. Shut down the VM, or detach the vGPU from it (`virsh detach-device` or `gvm-vgpu detach`), or pass --wait to wait for the holder to let go", holder_list(.holders))]
    Held {
        /// The device's UUID.
        uuid: Uuid,
        /// The processes holding it, sorted by pid (never empty).
        holders: Vec<crate::holders::Holder>,
    },

    /// Any other failed write; the errno is in the source.
    #[error("writing {path} failed")]
    Write {
        /// The attribute written.
        path: PathBuf,
        /// The I/O error, with its errno.
        #[source]
        source: io::Error,
    },

    /// A failed read of a sysfs file, directory or link.
    #[error("reading {path} failed")]
    Read {
        /// The path read.
        path: PathBuf,
        /// The I/O error, with its errno.
        #[source]
        source: io::Error,
    },

    /// A required attribute (`device_api`, `available_instances`) is missing.
    #[error("required attribute {path} is missing: the directory is not a complete mdev type (is the vendor driver half loaded?)")]
    MissingAttribute {
        /// The missing file.
        path: PathBuf,
    },

    /// An attribute or link did not hold what the ABI promises.
    #[error("{path} holds {content:?}, expected {expected}")]
    Parse {
        /// The file or link.
        path: PathBuf,
        /// What it held.
        content: String,
        /// What it should have held.
        expected: &'static str,
    },

    /// A parent or type name that cannot be a single sysfs directory name.
    #[error("{what} {name:?} is not a valid sysfs name (empty, `.`, `..` or containing `/`)")]
    InvalidName {
        /// "parent", "type" or "device".
        what: &'static str,
        /// The name given.
        name: String,
    },

    /// `create` succeeded but the device did not show up under `/sys/bus/mdev/devices`.
    #[error("device {uuid} was created but {path} did not appear within {waited_ms} ms: check the kernel log (dmesg)")]
    CreateTimeout {
        /// The new device's UUID.
        uuid: Uuid,
        /// The path waited for.
        path: PathBuf,
        /// How long it was waited for.
        waited_ms: u128,
    },
}

impl Error {
    /// The raw errno the kernel (or the file system) answered with, if this error came from one.
    ///
    /// The "not found" family reports `ENOENT`, the errno the kernel gives for a
    /// missing sysfs path; pre-check failures that never reached the kernel
    /// ([`Error::NoFreeInstance`], [`Error::InvalidName`], parse errors) report `None`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::ParentNotFound { .. }
            | Error::TypeNotFound { .. }
            | Error::DeviceNotFound { .. } => Some(libc::ENOENT),
            Error::Malformed { errno, .. }
            | Error::UuidExists { errno, .. }
            | Error::NoInstanceAvailable { errno, .. }
            | Error::ParentGone { errno, .. }
            | Error::PermissionDenied { errno, .. }
            | Error::DeviceBusy { errno, .. } => Some(*errno),
            Error::Held { .. } => Some(libc::EBUSY),
            Error::Write { source, .. } | Error::Read { source, .. } => source.raw_os_error(),
            Error::NoFreeInstance { .. }
            | Error::MissingAttribute { .. }
            | Error::Parse { .. }
            | Error::InvalidName { .. }
            | Error::CreateTimeout { .. } => None,
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

/// `pid 1 (qemu), pid 2 (qemu)` for a refusal message.
pub(crate) fn holder_list(holders: &[crate::holders::Holder]) -> String {
    let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
    list_or_none(&names)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// The symbolic name of the errnos this crate talks about, for messages.
pub(crate) fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EUSERS => "EUSERS",
        libc::ENOSPC => "ENOSPC",
        libc::ENODEV => "ENODEV",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EBUSY => "EBUSY",
        libc::ENOENT => "ENOENT",
        other => return format!("errno {other}"),
    };
    name.to_string()
}

/// Where a write to a type's `create` attribute went.
#[derive(Debug, Clone, Copy)]
pub struct CreateTarget<'a> {
    /// The parent name.
    pub parent: &'a str,
    /// The type id.
    pub type_id: &'a str,
    /// The `create` file.
    pub path: &'a std::path::Path,
    /// The bytes written.
    pub written: &'a [u8],
}

/// The UUID part of what was written: the first 36 bytes, lower case if it parses.
fn written_uuid(written: &[u8]) -> String {
    let text = String::from_utf8_lossy(written);
    let trimmed = text.trim();
    match Uuid::try_parse(trimmed) {
        Ok(u) => u.to_string(),
        Err(_) => trimmed.to_string(),
    }
}

/// Turn the error of a write to `create` into an [`Error`] that names the parent/type/UUID.
///
/// An `ENOENT` (the `create` file vanished) maps to [`Error::TypeNotFound`] with an
/// empty list: the caller that knows the parent's types should fill them in.
pub fn map_create_error(err: io::Error, target: CreateTarget<'_>) -> Error {
    let Some(errno) = err.raw_os_error() else {
        return Error::Write {
            path: target.path.to_path_buf(),
            source: err,
        };
    };
    match errno {
        libc::EINVAL => Error::Malformed {
            path: target.path.to_path_buf(),
            written: String::from_utf8_lossy(target.written).into_owned(),
            errno,
        },
        libc::EEXIST => Error::UuidExists {
            uuid: written_uuid(target.written),
            errno,
        },
        libc::EUSERS | libc::ENOSPC => Error::NoInstanceAvailable {
            parent: target.parent.to_string(),
            type_id: target.type_id.to_string(),
            errno,
        },
        libc::ENODEV => Error::ParentGone {
            parent: target.parent.to_string(),
            errno,
        },
        libc::EACCES | libc::EPERM => Error::PermissionDenied {
            path: target.path.to_path_buf(),
            errno,
        },
        libc::ENOENT => Error::TypeNotFound {
            parent: target.parent.to_string(),
            type_id: target.type_id.to_string(),
            available: Vec::new(),
        },
        _ => Error::Write {
            path: target.path.to_path_buf(),
            source: err,
        },
    }
}

/// Turn the error of a write to a device's `remove` attribute into an [`Error`].
///
/// `uuid_dir` is the device directory's name; `ENOENT` becomes
/// [`Error::DeviceNotFound`] when that name is a UUID.
pub fn map_remove_error(
    err: io::Error,
    uuid_dir: &str,
    path: &std::path::Path,
    written: &[u8],
) -> Error {
    let Some(errno) = err.raw_os_error() else {
        return Error::Write {
            path: path.to_path_buf(),
            source: err,
        };
    };
    match errno {
        libc::EBUSY => Error::DeviceBusy {
            uuid: uuid_dir.to_ascii_lowercase(),
            errno,
        },
        libc::ENOENT => match Uuid::try_parse(uuid_dir) {
            Ok(uuid) => Error::DeviceNotFound { uuid },
            Err(_) => Error::Write {
                path: path.to_path_buf(),
                source: err,
            },
        },
        libc::EINVAL => Error::Malformed {
            path: path.to_path_buf(),
            written: String::from_utf8_lossy(written).into_owned(),
            errno,
        },
        libc::EACCES | libc::EPERM => Error::PermissionDenied {
            path: path.to_path_buf(),
            errno,
        },
        _ => Error::Write {
            path: path.to_path_buf(),
            source: err,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const U: &str = "0f3a7c2e-5b1d-4e8a-9c6f-2d4b8e1a3c5f";

    fn create_err(errno: i32, written: &[u8]) -> Error {
        map_create_error(
            io::Error::from_raw_os_error(errno),
            CreateTarget {
                parent: "0000:3b:00.0",
                type_id: "nvidia-558",
                path: Path::new(
                    "/sys/class/mdev_bus/0000:3b:00.0/mdev_supported_types/nvidia-558/create",
                ),
                written,
            },
        )
    }

    #[test]
    fn create_einval_is_malformed_and_keeps_what_was_written() {
        let e = create_err(libc::EINVAL, b"not-a-uuid\n");
        assert!(matches!(e, Error::Malformed { ref written, .. } if written == "not-a-uuid\n"));
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains("nvidia-558/create"), "{e}");
    }

    #[test]
    fn create_eexist_names_the_uuid_in_lower_case() {
        let upper = format!("{}\n", U.to_ascii_uppercase());
        let e = create_err(libc::EEXIST, upper.as_bytes());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let msg = e.to_string();
        assert!(msg.contains(U), "{msg}");
        assert!(msg.contains("pick another UUID or remove it"), "{msg}");
    }

    #[test]
    fn create_eusers_and_enospc_name_parent_and_type() {
        for errno in [libc::EUSERS, libc::ENOSPC] {
            let e = create_err(errno, U.as_bytes());
            assert!(matches!(e, Error::NoInstanceAvailable { .. }), "{e:?}");
            assert_eq!(e.errno(), Some(errno));
            let msg = e.to_string();
            assert!(msg.contains("0000:3b:00.0/nvidia-558"), "{msg}");
            assert!(msg.contains(&errno_name(errno)), "{msg}");
            assert!(msg.contains("remove a device"), "{msg}");
        }
    }

    #[test]
    fn create_enodev_says_parent_going_away() {
        let e = create_err(libc::ENODEV, U.as_bytes());
        assert!(matches!(e, Error::ParentGone { ref parent, .. } if parent == "0000:3b:00.0"));
        assert_eq!(e.errno(), Some(libc::ENODEV));
    }

    #[test]
    fn create_eacces_and_eperm_say_run_as_root() {
        for errno in [libc::EACCES, libc::EPERM] {
            let e = create_err(errno, U.as_bytes());
            assert_eq!(e.errno(), Some(errno));
            assert!(e.to_string().contains("run as root"), "{e}");
        }
    }

    #[test]
    fn create_enoent_is_type_not_found() {
        let e = create_err(libc::ENOENT, U.as_bytes());
        assert!(matches!(e, Error::TypeNotFound { ref type_id, .. } if type_id == "nvidia-558"));
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn create_other_errno_is_kept() {
        let e = create_err(libc::EIO, U.as_bytes());
        assert!(matches!(e, Error::Write { .. }));
        assert_eq!(e.errno(), Some(libc::EIO));
    }

    #[test]
    fn an_error_without_errno_stays_a_write_error() {
        let e = map_create_error(
            io::Error::new(io::ErrorKind::WriteZero, "short write"),
            CreateTarget {
                parent: "p",
                type_id: "t",
                path: Path::new("/x/create"),
                written: b"",
            },
        );
        assert!(matches!(e, Error::Write { .. }));
        assert_eq!(e.errno(), None);
    }

    fn remove_err(errno: i32, dir: &str) -> Error {
        map_remove_error(
            io::Error::from_raw_os_error(errno),
            dir,
            Path::new("/sys/bus/mdev/devices/x/remove"),
            b"1\n",
        )
    }

    #[test]
    fn remove_ebusy_says_stop_the_vm() {
        let e = remove_err(libc::EBUSY, U);
        assert_eq!(e.errno(), Some(libc::EBUSY));
        let msg = e.to_string();
        assert!(
            msg.contains(U) && msg.contains("stop the VM first"),
            "{msg}"
        );
    }

    #[test]
    fn remove_enoent_is_device_not_found_for_a_uuid_name() {
        let e = remove_err(libc::ENOENT, &U.to_ascii_uppercase());
        match e {
            Error::DeviceNotFound { uuid } => assert_eq!(uuid.to_string(), U),
            other => panic!("unexpected {other:?}"),
        }
        let e = remove_err(libc::ENOENT, "garbage");
        assert!(matches!(e, Error::Write { .. }));
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn remove_einval_eperm_and_others() {
        assert!(matches!(
            remove_err(libc::EINVAL, U),
            Error::Malformed { errno, .. } if errno == libc::EINVAL
        ));
        assert!(matches!(
            remove_err(libc::EPERM, U),
            Error::PermissionDenied { .. }
        ));
        assert_eq!(remove_err(libc::EIO, U).errno(), Some(libc::EIO));
    }

    #[test]
    fn parent_not_found_message_suggests() {
        let e = Error::ParentNotFound {
            name: "0000:3b:00.1".into(),
            suggestion: Some("0000:3b:00.0".into()),
        };
        assert!(
            e.to_string().contains("did you mean '0000:3b:00.0'?"),
            "{e}"
        );
        let e = Error::ParentNotFound {
            name: "x".into(),
            suggestion: None,
        };
        assert!(!e.to_string().contains("did you mean"), "{e}");
    }

    #[test]
    fn type_not_found_lists_types() {
        let e = Error::TypeNotFound {
            parent: "mtty".into(),
            type_id: "mtty-3".into(),
            available: vec!["mtty-1".into(), "mtty-2".into()],
        };
        assert!(
            e.to_string().ends_with("its types are: mtty-1, mtty-2"),
            "{e}"
        );
    }
}
