//! [`VgpuHost`]: both vGPU trees of one host (mdev and SR-IOV VFs), read and written
//! through its root, with one notion of a vGPU.

use std::fs;
use std::path::PathBuf;

use gvm_catalog::placement::place;
use gvm_catalog::{Binding, Catalog};
use gvm_host_root::HostRoot;
use gvm_mdev::{HolderScan, MdevHost, Parent};
use gvm_vf::{Assignment, Assignments, Pf, VfHost};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{Backing, Vgpu};

/// What a `--parent` name is on this host.
#[derive(Debug, Clone)]
pub enum ParentKind {
    /// An mdev parent.
    Mdev(Parent),
    /// An SR-IOV physical function whose VFs carry vGPUs.
    Pf(Pf),
}

/// The vGPUs of a host, of both kinds.
#[derive(Debug, Clone)]
pub struct VgpuHost {
    mdev: MdevHost,
    vf: VfHost,
    records: Assignments,
}

impl VgpuHost {
    /// Both clients for the host under `host`.
    pub fn new(host: HostRoot) -> Self {
        Self::from_mdev(MdevHost::new(host))
    }

    /// Both clients, keeping `mdev`'s settings (its create timeout).
    pub fn from_mdev(mdev: MdevHost) -> Self {
        let vf = VfHost::new(mdev.host().clone());
        VgpuHost {
            records: Assignments::new(vf.clone()),
            vf,
            mdev,
        }
    }

    /// The mdev client.
    pub fn mdev(&self) -> &MdevHost {
        &self.mdev
    }

    /// The VF client.
    pub fn vf(&self) -> &VfHost {
        &self.vf
    }

    /// The manager's records of VF vGPUs.
    pub fn records(&self) -> &Assignments {
        &self.records
    }

    /// Every live vGPU: the mdev devices (sorted by UUID), then the VF vGPUs on record
    /// whose VF holds the recorded type (sorted by UUID). A record whose VF does not hold
    /// it now (after a reboot) is not live and not listed; [`VgpuHost::records`] has it.
    pub fn vgpus(&self) -> Result<Vec<Vgpu>> {
        let parents = self.mdev.parents()?;
        let mut out = Vec::new();
        for d in self.mdev.devices()? {
            let kernel_name = kernel_name_of(&parents, &d.parent, &d.type_id);
            out.push(Vgpu {
                uuid: d.uuid,
                backing: Backing::Mdev {
                    parent: d.parent,
                    mdev_type: d.type_id,
                },
                kernel_name,
                iommu_group: d.iommu_group,
                sysfs_path: d.sysfs_path,
            });
        }
        let records = self.records.list()?;
        if records.is_empty() {
            return Ok(out);
        }
        let pfs = self.vf.pfs()?;
        for a in records {
            let live = pfs
                .iter()
                .flat_map(|p| &p.vfs)
                .find(|v| v.address == a.vf)
                .and_then(|v| v.state.as_ref())
                .is_some_and(|s| s.current == a.type_id);
            if live {
                out.push(self.vf_vgpu(a));
            }
        }
        Ok(out)
    }

    /// The live vGPU `uuid`, of either kind: [`Error::NotFound`] when there is none,
    /// [`Error::VfVgpuNotLive`] when a VF vGPU is on record but its VF does not carry it.
    pub fn vgpu(&self, uuid: &Uuid) -> Result<Vgpu> {
        match self.mdev.device(uuid) {
            Ok(d) => {
                let parents = self.mdev.parents()?;
                return Ok(Vgpu {
                    uuid: d.uuid,
                    kernel_name: kernel_name_of(&parents, &d.parent, &d.type_id),
                    backing: Backing::Mdev {
                        parent: d.parent,
                        mdev_type: d.type_id,
                    },
                    iommu_group: d.iommu_group,
                    sysfs_path: d.sysfs_path,
                });
            }
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let a = self.record(uuid)?;
        let found = match self.vf.vf_state(&a.vf) {
            Ok(s) => Some(s.current),
            Err(gvm_vf::Error::VfGone { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        if found != Some(a.type_id) {
            return Err(Error::VfVgpuNotLive {
                uuid: *uuid,
                pf: a.pf,
                vf: a.vf,
                found,
            });
        }
        Ok(self.vf_vgpu(a))
    }

    fn record(&self, uuid: &Uuid) -> Result<Assignment> {
        match self.records.get(uuid) {
            Ok(a) => Ok(a),
            Err(gvm_vf::Error::NotAssigned { .. }) => Err(Error::NotFound { uuid: *uuid }),
            Err(e) => Err(e.into()),
        }
    }

    fn vf_vgpu(&self, a: Assignment) -> Vgpu {
        let sysfs_path = self.vf.host().pci_devices_dir().join(&a.vf);
        let iommu_group = fs::read_link(sysfs_path.join("iommu_group"))
            .ok()
            .and_then(|t| t.file_name()?.to_str()?.parse().ok());
        Vgpu {
            uuid: a.uuid,
            backing: Backing::Vf {
                pf: a.pf,
                vf: a.vf,
                type_id: a.type_id,
            },
            kernel_name: Some(a.type_name),
            iommu_group,
            sysfs_path,
        }
    }

    /// What `name` is: an mdev parent or a PF. [`Error::UnknownParent`] suggests the
    /// closest of both.
    pub fn parent(&self, name: &str) -> Result<ParentKind> {
        match self.mdev.parent(name) {
            Ok(p) => return Ok(ParentKind::Mdev(p)),
            Err(gvm_mdev::Error::ParentNotFound { .. } | gvm_mdev::Error::InvalidName { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if gvm_vf::valid_pci_address(name) {
            match self.vf.pf(name) {
                Ok(pf) => return Ok(ParentKind::Pf(pf)),
                Err(gvm_vf::Error::PfNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut names: Vec<String> = self.mdev.parents()?.into_iter().map(|p| p.name).collect();
        names.extend(self.vf.pfs()?.into_iter().map(|p| p.address));
        Err(Error::UnknownParent {
            name: name.to_string(),
            suggestion: gvm_mdev::suggest(name, names.iter().map(String::as_str)),
        })
    }

    /// Create a vGPU of `type_name` (a catalog type, else a kernel type: an mdev type id or
    /// a VF type name) with `uuid` (a new v4 one if `None`).
    ///
    /// With `parent`, on that mdev parent or PF. Without, on an mdev parent when one offers
    /// the type (the catalog's placement: most free instances), else on the first free VF
    /// of any PF whose `creatable_vgpu_types` list it.
    pub fn create(
        &self,
        catalog: &Catalog,
        type_name: &str,
        parent: Option<&str>,
        uuid: Option<Uuid>,
    ) -> Result<Vgpu> {
        if let Some(u) = uuid {
            self.check_uuid_free(&u)?;
        }
        match parent {
            Some(name) => match self.parent(name)? {
                ParentKind::Mdev(p) => self.create_mdev(catalog, type_name, &[p], uuid),
                ParentKind::Pf(pf) => {
                    self.create_on_vf(catalog, type_name, Some(&pf.address), uuid)
                }
            },
            None => {
                let parents = self.mdev.parents()?;
                if mdev_offers(catalog, type_name, &parents) || self.vf.pfs()?.is_empty() {
                    self.create_mdev(catalog, type_name, &parents, uuid)
                } else {
                    self.create_on_vf(catalog, type_name, None, uuid)
                }
            }
        }
    }

    fn create_mdev(
        &self,
        catalog: &Catalog,
        type_name: &str,
        parents: &[Parent],
        uuid: Option<Uuid>,
    ) -> Result<Vgpu> {
        let at = place(Some(catalog), type_name, parents)?;
        let d = self.mdev.create(&at.parent, &at.mdev_type, uuid)?;
        self.vgpu(&d.uuid)
    }

    fn create_on_vf(
        &self,
        catalog: &Catalog,
        type_name: &str,
        pf: Option<&str>,
        uuid: Option<Uuid>,
    ) -> Result<Vgpu> {
        let kernel_name = match catalog.type_by_name(type_name) {
            Ok(t) => match &t.binding {
                Binding::TypeName(n) => n.clone(),
                Binding::TypeId(id) => {
                    return Err(Error::NotVfBindable {
                        type_name: t.name.clone(),
                        mdev_type: id.clone(),
                    })
                }
            },
            // Not a catalog type: the VF type's own name (`NVIDIA H100-20C` or `H100-20C`).
            Err(_) => type_name.to_string(),
        };
        self.create_vf(pf, &kernel_name, uuid)
    }

    /// Create a VF vGPU whose kernel type is named `kernel_name` on a free VF (of `pf`, or
    /// any), recorded as `uuid` (a new v4 one if `None`): the restore's step for one
    /// definition.
    pub fn create_vf(
        &self,
        pf: Option<&str>,
        kernel_name: &str,
        uuid: Option<Uuid>,
    ) -> Result<Vgpu> {
        if let Some(u) = uuid {
            self.check_uuid_free(&u)?;
        }
        let a = self.records.create(pf, kernel_name, uuid)?;
        Ok(self.vf_vgpu(a))
    }

    fn check_uuid_free(&self, uuid: &Uuid) -> Result<()> {
        match self.mdev.device(uuid) {
            Ok(d) => {
                return Err(Error::UuidInUse {
                    uuid: *uuid,
                    what: format!("an mdev device on {}", d.parent),
                })
            }
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self.records.get(uuid) {
            Ok(a) => Err(Error::UuidInUse {
                uuid: *uuid,
                what: format!("a VF vGPU on record on VF {} of {}", a.vf, a.pf),
            }),
            Err(gvm_vf::Error::NotAssigned { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove vGPU `uuid`, refused while a process holds it open; returns where it was.
    ///
    /// An mdev device is removed through its `remove` attribute ([`MdevHost::remove`]). A
    /// VF vGPU is removed through its record ([`Assignments::remove`]): `0` is written only
    /// if the VF still holds the recorded type (compare-before-write), and a record whose
    /// VF carries nothing (after a reboot) is just dropped.
    pub fn remove(&self, uuid: &Uuid) -> Result<Backing> {
        match self.mdev.device(uuid) {
            Ok(d) => {
                self.mdev.remove(uuid)?;
                return Ok(Backing::Mdev {
                    parent: d.parent,
                    mdev_type: d.type_id,
                });
            }
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let a = self.record(uuid)?;
        let scan = match self.vf.vfio_nodes(&a.vf) {
            Ok(nodes) => gvm_mdev::scan_holders(self.vf.host().proc_dir(), &with_resolved(nodes))?,
            Err(gvm_vf::Error::VfGone { .. }) => HolderScan::default(),
            Err(e) => return Err(e.into()),
        };
        if !scan.holders.is_empty() {
            return Err(Error::VfHeld {
                uuid: *uuid,
                vf: a.vf,
                holders: scan.holders,
            });
        }
        self.records.remove(uuid)?;
        Ok(Backing::Vf {
            pf: a.pf,
            vf: a.vf,
            type_id: a.type_id,
        })
    }

    /// The device nodes through which a process holds vGPU `uuid` open: for an mdev
    /// device [`MdevHost::vfio_nodes`]; for a VF vGPU its VF's `/dev/vfio/<group>` and
    /// `/dev/vfio/devices/vfioN` (and their resolved paths, as `/proc` shows them).
    pub fn vfio_nodes(&self, uuid: &Uuid) -> Result<Vec<PathBuf>> {
        match self.mdev.vfio_nodes(uuid) {
            Ok(n) => return Ok(n),
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let v = self.vgpu(uuid)?;
        let vf = v.backing.vf().unwrap_or_default();
        Ok(with_resolved(self.vf.vfio_nodes(vf)?))
    }

    /// The processes holding vGPU `uuid` open (a `/proc` fd scan over
    /// [`VgpuHost::vfio_nodes`]).
    pub fn holders(&self, uuid: &Uuid) -> Result<HolderScan> {
        let nodes = self.vfio_nodes(uuid)?;
        Ok(gvm_mdev::scan_holders(self.mdev.host().proc_dir(), &nodes)?)
    }
}

/// The kernel `name` attribute of `parent`'s mdev type `type_id`, if it has one.
fn kernel_name_of(parents: &[Parent], parent: &str, type_id: &str) -> Option<String> {
    parents
        .iter()
        .filter(|p| p.name == parent)
        .flat_map(|p| &p.types)
        .find(|t| t.id == type_id)
        .and_then(|t| t.name.clone())
}

/// Whether some mdev parent offers a kernel type for `type_name` (a catalog type's binding,
/// or a kernel type id).
fn mdev_offers(catalog: &Catalog, type_name: &str, parents: &[Parent]) -> bool {
    let wanted = catalog.type_by_name(type_name).ok();
    parents.iter().flat_map(|p| &p.types).any(|t| match wanted {
        Some(w) => catalog
            .resolve(&t.id, t.name.as_deref())
            .is_some_and(|b| b.name == w.name),
        None => t.id == type_name,
    })
}

/// `nodes` plus their canonical paths where those differ (`/proc` shows resolved paths).
fn with_resolved(mut nodes: Vec<PathBuf>) -> Vec<PathBuf> {
    let resolved: Vec<PathBuf> = nodes
        .iter()
        .filter_map(|n| fs::canonicalize(n).ok())
        .filter(|c| !nodes.contains(c))
        .collect();
    nodes.extend(resolved);
    nodes
}
