//! The objects the mdev ABI exposes: parents, their types, and live devices.
//!
//! A *parent* is a physical device whose driver registered with the mdev core
//! (an NVIDIA GPU's PCI function, or the `mtty` sample). It offers *types*
//! (`nvidia-558`, `mtty-2`), each a recipe for a mediated device with a pool of
//! `available_instances`. A *device* is one live instance, named by UUID, that
//! QEMU opens through VFIO. These are plain snapshots: reading them again gives
//! the current state.

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

/// A registered mdev parent (`/sys/class/mdev_bus/<name>`).
#[derive(Debug, Clone, Serialize)]
pub struct Parent {
    /// The entry's name: a PCI address such as `0000:3b:00.0`, or `mtty`.
    pub name: String,
    /// `/sys/class/mdev_bus/<name>` under the host root.
    pub sysfs_path: PathBuf,
    /// The canonical device directory the class entry links to.
    pub device_path: PathBuf,
    /// The types it offers, sorted by id.
    pub types: Vec<MdevType>,
}

impl Parent {
    /// The type with this id, if the parent offers it.
    pub fn find_type(&self, type_id: &str) -> Option<&MdevType> {
        self.types.iter().find(|t| t.id == type_id)
    }

    /// The ids of every type the parent offers.
    pub fn type_ids(&self) -> Vec<String> {
        self.types.iter().map(|t| t.id.clone()).collect()
    }
}

/// One type under `<parent>/mdev_supported_types/<id>`.
#[derive(Debug, Clone, Serialize)]
pub struct MdevType {
    /// The type id, `<driver>-<name>` (e.g. `nvidia-558`).
    pub id: String,
    /// The parent's name.
    pub parent: String,
    /// The optional `name` attribute (e.g. `GRID T4-2Q`).
    pub name: Option<String>,
    /// The optional `description` attribute.
    pub description: Option<String>,
    /// The `device_api` attribute (e.g. `vfio-pci`).
    pub device_api: String,
    /// How many more devices of this type can be created now.
    pub available_instances: u32,
    /// The UUIDs of the type's live devices, sorted.
    pub devices: Vec<Uuid>,
}

/// A live mediated device (`/sys/bus/mdev/devices/<uuid>`).
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    /// The device's UUID.
    pub uuid: Uuid,
    /// The name of its parent (the `/sys/class/mdev_bus` entry).
    pub parent: String,
    /// Its type id.
    pub type_id: String,
    /// Its IOMMU group number (`/dev/vfio/<n>`), if it has one.
    pub iommu_group: Option<u32>,
    /// `/sys/bus/mdev/devices/<uuid>` under the host root.
    pub sysfs_path: PathBuf,
}
