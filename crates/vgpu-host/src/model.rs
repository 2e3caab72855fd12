//! The objects of the joined view: a vGPU of either kind and the VF types a GPU offers.

use std::fmt;
use std::path::PathBuf;

use gvm_catalog::{Catalog, VgpuType as CatalogType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which kernel ABI backs a vGPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A VFIO-mdev device.
    Mdev,
    /// An NVIDIA vGPU on an SR-IOV virtual function.
    Vf,
}

impl Kind {
    /// The name the CLI and JSON use: `mdev` or `vf`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mdev => "mdev",
            Kind::Vf => "vf",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a vGPU lives in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backing {
    /// An mdev device of `parent`'s type `mdev_type` (`nvidia-558`, `gvmsim-2`).
    Mdev {
        /// The mdev parent (`/sys/class/mdev_bus/<parent>`).
        parent: String,
        /// The kernel type id.
        mdev_type: String,
    },
    /// A VF vGPU: VF `vf` of GPU `pf` with `current_vgpu_type` = `type_id`.
    Vf {
        /// The physical function (the GPU).
        pf: String,
        /// The virtual function carrying the vGPU now.
        vf: String,
        /// The numeric type ID written to `current_vgpu_type`.
        type_id: u32,
    },
}

impl Backing {
    /// Which ABI this is.
    pub fn kind(&self) -> Kind {
        match self {
            Backing::Mdev { .. } => Kind::Mdev,
            Backing::Vf { .. } => Kind::Vf,
        }
    }

    /// The GPU: the mdev parent or the PF.
    pub fn parent(&self) -> &str {
        match self {
            Backing::Mdev { parent, .. } => parent,
            Backing::Vf { pf, .. } => pf,
        }
    }

    /// The kernel's id of the type: the mdev type id, or the VF type ID in decimal.
    pub fn kernel_type(&self) -> String {
        match self {
            Backing::Mdev { mdev_type, .. } => mdev_type.clone(),
            Backing::Vf { type_id, .. } => type_id.to_string(),
        }
    }

    /// The VF, for a VF vGPU.
    pub fn vf(&self) -> Option<&str> {
        match self {
            Backing::Vf { vf, .. } => Some(vf),
            Backing::Mdev { .. } => None,
        }
    }
}

/// One live vGPU of either kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vgpu {
    /// Its identity: the mdev UUID, or the UUID the manager gave the VF vGPU.
    pub uuid: Uuid,
    /// Where it lives.
    pub backing: Backing,
    /// The kernel's name of its type (`NVIDIA H100-20C`): the mdev type's `name` attribute
    /// where it has one, the VF type's name; what catalog `mdev_name` bindings match.
    pub kernel_name: Option<String>,
    /// Its IOMMU group (`/dev/vfio/<n>`), if it has one.
    pub iommu_group: Option<u32>,
    /// Its sysfs directory under the host root: `/sys/bus/mdev/devices/<uuid>` or
    /// `/sys/bus/pci/devices/<VF>`.
    pub sysfs_path: PathBuf,
}

impl Vgpu {
    /// Which ABI backs it.
    pub fn kind(&self) -> Kind {
        self.backing.kind()
    }

    /// The catalog type bound to its kernel type: an mdev type by id or name
    /// ([`Catalog::resolve`]), a VF type by name ([`Catalog::resolve_vf`]).
    pub fn catalog_type<'c>(&self, catalog: &'c Catalog) -> Option<&'c CatalogType> {
        match &self.backing {
            Backing::Mdev { mdev_type, .. } => {
                catalog.resolve(mdev_type, self.kernel_name.as_deref())
            }
            Backing::Vf { .. } => catalog.resolve_vf(self.kernel_name.as_deref()?),
        }
    }
}

/// One VF vGPU type a PF offers, as `gvm-vgpu types` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfTypeOffer {
    /// The PF.
    pub pf: String,
    /// The type's numeric ID.
    pub type_id: u32,
    /// The type's name (`NVIDIA H100-20C`).
    pub name: String,
    /// How many more vGPUs of this type can be created now, at most: the free VFs whose
    /// `creatable_vgpu_types` list it (each new vGPU may shrink the others' lists).
    pub creatable: u32,
    /// The live VF vGPUs of this type on the PF, by the manager's UUID.
    pub vgpus: Vec<Uuid>,
    /// VFs of the PF that carry this type but have no record (set by another tool).
    pub unrecorded: Vec<String>,
}
