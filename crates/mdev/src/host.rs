//! [`MdevHost`]: the mdev sysfs tree of one host, read and written through its root.
//!
//! Reading walks `/sys/class/mdev_bus` (parents and their types) and
//! `/sys/bus/mdev/devices` (live devices). Writing is two attributes: a type's
//! `create` (a UUID) and a device's `remove` (`1`). [`MdevHost::write_create`] is the
//! one write of a UUID that makes a device; the checked [`MdevHost::create`] wraps it
//! with pre-checks like mdevctl's, so that most mistakes get a precise message before
//! the kernel sees them, and waits for the device. The raw writers take any bytes and
//! skip every check for the conformance suite; they only translate errnos.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;
use uuid::Uuid;

use crate::attr::{self, check_name};
use crate::error::{map_create_error, map_remove_error, CreateTarget, Error, Result};
use crate::holders::{self, HolderScan};
use crate::model::{Device, MdevType, Parent};
use crate::suggest::suggest;

/// Name of the directory that holds a parent's types.
const TYPES_DIR: &str = "mdev_supported_types";
/// How long [`MdevHost::create`] waits for the new device by default.
pub const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Poll interval while waiting for a new device.
const POLL: Duration = Duration::from_millis(5);

/// The mdev sysfs tree of a host (the real one, a temp tree, or the simulated host).
#[derive(Debug, Clone)]
pub struct MdevHost {
    host: HostRoot,
    create_timeout: Duration,
}

impl MdevHost {
    /// A client for the mdev tree under `host`.
    pub fn new(host: HostRoot) -> Self {
        MdevHost {
            host,
            create_timeout: DEFAULT_CREATE_TIMEOUT,
        }
    }

    /// Change how long [`MdevHost::create`] waits for the device to appear (default 1 s).
    pub fn with_create_timeout(mut self, timeout: Duration) -> Self {
        self.create_timeout = timeout;
        self
    }

    /// The host root every path is built on.
    pub fn host(&self) -> &HostRoot {
        &self.host
    }

    /// `<mdev_bus>/<parent>/mdev_supported_types/<type_id>` (not checked to exist).
    pub fn type_path(&self, parent: &str, type_id: &str) -> PathBuf {
        self.host
            .mdev_bus_dir()
            .join(parent)
            .join(TYPES_DIR)
            .join(type_id)
    }

    /// `/sys/bus/mdev/devices/<uuid>` (not checked to exist).
    pub fn device_path(&self, uuid: &Uuid) -> PathBuf {
        self.host.mdev_devices_dir().join(uuid.to_string())
    }

    /// Every registered parent with its types, sorted by name; empty if there is no mdev bus.
    pub fn parents(&self) -> Result<Vec<Parent>> {
        let names = attr::dir_names(&self.host.mdev_bus_dir())?.unwrap_or_default();
        let mut parents = Vec::with_capacity(names.len());
        for name in names {
            match self.read_parent(&name) {
                Ok(p) => parents.push(p),
                // Unregistered between listing and reading: not an error.
                Err(Error::ParentNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(parents)
    }

    /// One parent by name; [`Error::ParentNotFound`] suggests the closest registered name.
    pub fn parent(&self, name: &str) -> Result<Parent> {
        check_name("parent", name)?;
        self.read_parent(name)
    }

    /// Every live device, sorted by UUID. Entries that are not UUIDs are ignored.
    pub fn devices(&self) -> Result<Vec<Device>> {
        let names = attr::dir_names(&self.host.mdev_devices_dir())?.unwrap_or_default();
        let index = self.parent_index()?;
        let mut uuids: Vec<Uuid> = names
            .iter()
            .filter_map(|n| Uuid::try_parse(n).ok())
            .collect();
        uuids.sort();
        let mut devices = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            match self.read_device(&uuid, &index) {
                Ok(d) => devices.push(d),
                // Removed between listing and reading.
                Err(Error::DeviceNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(devices)
    }

    /// One live device; [`Error::DeviceNotFound`] if there is none with this UUID.
    pub fn device(&self, uuid: &Uuid) -> Result<Device> {
        let index = self.parent_index()?;
        self.read_device(uuid, &index)
    }

    /// Create a device of `parent`/`type_id` with `uuid` (a random v4 one if `None`).
    ///
    /// Pre-checks that the parent is registered, the type exists and has a free
    /// instance; writes the UUID; waits for the device to appear; returns it.
    pub fn create(&self, parent: &str, type_id: &str, uuid: Option<Uuid>) -> Result<Device> {
        check_name("type", type_id)?;
        let p = self.parent(parent)?;
        let Some(t) = p.find_type(type_id) else {
            return Err(Error::TypeNotFound {
                parent: p.name.clone(),
                type_id: type_id.to_string(),
                available: p.type_ids(),
            });
        };
        if t.available_instances == 0 {
            return Err(Error::NoFreeInstance {
                parent: p.name.clone(),
                type_id: t.id.clone(),
                devices: t.devices.len(),
            });
        }
        let uuid = uuid.unwrap_or_else(Uuid::new_v4);
        self.write_create(&p.name, type_id, &uuid)?;
        self.wait_for_device(&uuid)?;
        self.device(&uuid)
    }

    /// Make a device of `parent`/`type_id` with `uuid`: write it (lower case, one line) to
    /// the type's `create` attribute, the one write that creates an mdev.
    ///
    /// No pre-check and no wait: for a caller that already knows the parent and type (the
    /// kernel's store is synchronous, and its errno says what a pre-check would have). The
    /// errno is kept in the error ([`Error::errno`]); a missing `create` file becomes
    /// [`Error::ParentNotFound`] or [`Error::TypeNotFound`]. [`MdevHost::create`] is this
    /// write with the pre-checks before it and the wait for the device after it.
    pub fn write_create(&self, parent: &str, type_id: &str, uuid: &Uuid) -> Result<()> {
        self.write_create_raw(parent, type_id, format!("{uuid}\n").as_bytes())
    }

    /// Remove a live device by writing `1` to its `remove` attribute, unless a process
    /// holds it open.
    ///
    /// The kernel's `remove` of a held device blocks, uninterruptibly, until the holder
    /// closes it; so this first looks for holders ([`MdevHost::holders`]) and, if there
    /// are any, changes nothing and returns [`Error::Held`] naming them.
    /// [`MdevHost::remove_waiting`] writes anyway and waits.
    pub fn remove(&self, uuid: &Uuid) -> Result<()> {
        let scan = self.holders(uuid)?;
        if !scan.holders.is_empty() {
            return Err(Error::Held {
                uuid: *uuid,
                holders: scan.holders,
            });
        }
        self.write_remove_raw(&uuid.to_string(), b"1\n")
    }

    /// Remove a live device by writing `1` to its `remove` attribute even if it is held:
    /// the call then returns only once every holder has closed the device, and no signal
    /// ends that wait.
    pub fn remove_waiting(&self, uuid: &Uuid) -> Result<()> {
        if !attr::exists(&self.device_path(uuid))? {
            return Err(Error::DeviceNotFound { uuid: *uuid });
        }
        self.write_remove_raw(&uuid.to_string(), b"1\n")
    }

    /// The device nodes through which a process holds device `uuid`: its IOMMU group's
    /// `/dev/vfio/<N>` and, where the kernel gives it a VFIO cdev (`vfio-dev/vfioX`),
    /// `/dev/vfio/devices/vfioX`, each under the host root (and canonicalized, when
    /// that differs, since `/proc` shows resolved paths).
    pub fn vfio_nodes(&self, uuid: &Uuid) -> Result<Vec<PathBuf>> {
        let dir = self.device_path(uuid);
        if !attr::exists(&dir)? {
            return Err(Error::DeviceNotFound { uuid: *uuid });
        }
        let mut nodes = Vec::new();
        if let Some(group) = attr::read_link_number(&dir.join("iommu_group"))? {
            nodes.push(self.host.path(format!("/dev/vfio/{group}")));
        }
        for name in attr::dir_names(&dir.join("vfio-dev"))?.unwrap_or_default() {
            check_name("vfio device", &name)?;
            nodes.push(self.host.path(format!("/dev/vfio/devices/{name}")));
        }
        let resolved: Vec<PathBuf> = nodes
            .iter()
            .filter_map(|n| fs::canonicalize(n).ok())
            .filter(|c| !nodes.contains(c))
            .collect();
        nodes.extend(resolved);
        Ok(nodes)
    }

    /// The processes holding device `uuid` open: those with an fd on one of its
    /// [`MdevHost::vfio_nodes`], found by scanning the host's proc directory like `fuser`.
    pub fn holders(&self, uuid: &Uuid) -> Result<HolderScan> {
        let nodes = self.vfio_nodes(uuid)?;
        holders::scan(self.host.proc_dir(), &nodes)
    }

    /// Write `bytes` to `<parent>/mdev_supported_types/<type_id>/create` with no pre-check.
    ///
    /// Only the errno is translated (see [`crate::map_create_error`]); a missing
    /// `create` file becomes [`Error::ParentNotFound`] or [`Error::TypeNotFound`].
    pub fn write_create_raw(&self, parent: &str, type_id: &str, bytes: &[u8]) -> Result<()> {
        check_name("parent", parent)?;
        check_name("type", type_id)?;
        let path = self.type_path(parent, type_id).join("create");
        write_attr(&path, bytes).map_err(|e| {
            let mapped = map_create_error(
                e,
                CreateTarget {
                    parent,
                    type_id,
                    path: &path,
                    written: bytes,
                },
            );
            match mapped {
                Error::TypeNotFound { .. } => self.missing_type_error(parent, type_id),
                other => other,
            }
        })
    }

    /// Write `bytes` to `/sys/bus/mdev/devices/<uuid_dir_name>/remove` with no pre-check.
    pub fn write_remove_raw(&self, uuid_dir_name: &str, bytes: &[u8]) -> Result<()> {
        check_name("device", uuid_dir_name)?;
        let path = self
            .host
            .mdev_devices_dir()
            .join(uuid_dir_name)
            .join("remove");
        write_attr(&path, bytes).map_err(|e| map_remove_error(e, uuid_dir_name, &path, bytes))
    }

    /// The precise "not found" error for a `create` file that is missing.
    fn missing_type_error(&self, parent: &str, type_id: &str) -> Error {
        match self.read_parent(parent) {
            Ok(p) => Error::TypeNotFound {
                parent: p.name.clone(),
                type_id: type_id.to_string(),
                available: p.type_ids(),
            },
            Err(e) => e,
        }
    }

    fn wait_for_device(&self, uuid: &Uuid) -> Result<()> {
        let path = self.device_path(uuid);
        let start = Instant::now();
        loop {
            if attr::exists(&path)? {
                return Ok(());
            }
            if start.elapsed() >= self.create_timeout {
                return Err(Error::CreateTimeout {
                    uuid: *uuid,
                    path,
                    waited_ms: self.create_timeout.as_millis(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn read_parent(&self, name: &str) -> Result<Parent> {
        let bus = self.host.mdev_bus_dir();
        let sysfs_path = bus.join(name);
        let device_path = match fs::canonicalize(&sysfs_path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let names = attr::dir_names(&bus)?.unwrap_or_default();
                return Err(Error::ParentNotFound {
                    name: name.to_string(),
                    suggestion: suggest(name, names.iter().map(String::as_str)),
                });
            }
            Err(source) => {
                return Err(Error::Read {
                    path: sysfs_path,
                    source,
                })
            }
        };
        let types_dir = sysfs_path.join(TYPES_DIR);
        let mut types = Vec::new();
        for id in attr::dir_names(&types_dir)?.unwrap_or_default() {
            types.push(read_type(name, &id, &types_dir.join(&id))?);
        }
        Ok(Parent {
            name: name.to_string(),
            sysfs_path,
            device_path,
            types,
        })
    }

    /// (canonical device dir, class entry name) for every registered parent.
    fn parent_index(&self) -> Result<Vec<(PathBuf, String)>> {
        let bus = self.host.mdev_bus_dir();
        let mut index = Vec::new();
        for name in attr::dir_names(&bus)?.unwrap_or_default() {
            if let Ok(p) = fs::canonicalize(bus.join(&name)) {
                index.push((p, name));
            }
        }
        Ok(index)
    }

    fn read_device(&self, uuid: &Uuid, index: &[(PathBuf, String)]) -> Result<Device> {
        let sysfs_path = self.device_path(uuid);
        if !attr::exists(&sysfs_path)? {
            return Err(Error::DeviceNotFound { uuid: *uuid });
        }
        let type_link = sysfs_path.join("mdev_type");
        let type_dir = match fs::canonicalize(&type_link) {
            Ok(p) => p,
            Err(_) if !attr::exists(&sysfs_path)? => {
                return Err(Error::DeviceNotFound { uuid: *uuid })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingAttribute { path: type_link })
            }
            Err(source) => {
                return Err(Error::Read {
                    path: type_link,
                    source,
                })
            }
        };
        let (parent_dir, type_id) = split_type_dir(&type_link, &type_dir)?;
        let parent = parent_name(index, parent_dir);
        let iommu_group = attr::read_link_number(&sysfs_path.join("iommu_group"))?;
        Ok(Device {
            uuid: *uuid,
            parent,
            type_id,
            iommu_group,
            sysfs_path,
        })
    }
}

/// Read one type directory.
fn read_type(parent: &str, id: &str, dir: &Path) -> Result<MdevType> {
    let mut devices: Vec<Uuid> = attr::dir_names(&dir.join("devices"))?
        .unwrap_or_default()
        .iter()
        .filter_map(|n| Uuid::try_parse(n).ok())
        .collect();
    devices.sort();
    Ok(MdevType {
        id: id.to_string(),
        parent: parent.to_string(),
        name: attr::read_optional(&dir.join("name"))?,
        description: attr::read_optional(&dir.join("description"))?,
        device_api: attr::read_required(&dir.join("device_api"))?,
        available_instances: attr::read_required_u32(&dir.join("available_instances"))?,
        devices,
    })
}

/// Split a resolved `<parent dir>/mdev_supported_types/<type>` into the parent dir and type id.
pub(crate) fn split_type_dir<'a>(link: &Path, type_dir: &'a Path) -> Result<(&'a Path, String)> {
    let bad = || Error::Parse {
        path: link.to_path_buf(),
        content: type_dir.to_string_lossy().into_owned(),
        expected: "a link to <parent>/mdev_supported_types/<type>",
    };
    let type_id = type_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(bad)?;
    let types_dir = type_dir.parent().ok_or_else(bad)?;
    if types_dir.file_name().and_then(|n| n.to_str()) != Some(TYPES_DIR) {
        return Err(bad());
    }
    let parent_dir = types_dir.parent().ok_or_else(bad)?;
    Ok((parent_dir, type_id))
}

/// The class entry whose canonical path is `parent_dir`, else the directory's own name.
pub(crate) fn parent_name(index: &[(PathBuf, String)], parent_dir: &Path) -> String {
    index
        .iter()
        .find(|(p, _)| p == parent_dir)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| {
            parent_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// One `write(2)` of a sysfs attribute (opened for writing, never created or truncated).
fn write_attr(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
