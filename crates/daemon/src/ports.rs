//! The daemon's interfaces to the host that are not gcgroups, and their real implementations.
//!
//! Two ports: [`MdevPort`] (mdev parents and devices in sysfs) and [`TypePort`] (the catalog
//! that gives a kernel mdev type its default knobs). The gcgroup knobs have no port here: the
//! core drives `gvm_gcgroup::GcgroupBackend` directly, the one seam every gcgroup backend
//! (GVM's debugfs tree, the CUDA shim's control blocks, tests' in-memory table) implements.
//! The core only sees these traits, so unit tests run it against in-memory fakes (the
//! `Fake*` types in `domains_tests.rs` and `daemon_tests.rs`).
//!
//! Real implementations: [`SysfsMdev`] (over `gvm_vgpu_host::VgpuHost`: mdev devices and, beside
//! them, NVIDIA vGPUs on SR-IOV VFs, which [`MdevPort`]'s `vf_*` methods reach) and
//! [`CatalogTypes`] (over `gvm_catalog::Catalog`).

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use gvm_gcgroup::gpu_index::{fallback_gpu_index, parse_gpu_index};
use gvm_host_root::HostRoot;
use uuid::Uuid;

use crate::model::TypeSpec;

/// A host operation that failed: what was being done, on which object, and the typed error
/// underneath (which carries the errno and says what to do).
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The mdev sysfs client failed.
    #[error("{op} {object}")]
    Mdev {
        /// What was being done (`create`, `read parent`, ...).
        op: &'static str,
        /// The parent, device or UUID.
        object: String,
        /// The mdev client's error.
        #[source]
        source: gvm_mdev::Error,
    },
    /// A gcgroup backend failed.
    #[error("{op} gcgroup {pid}/{gpu}")]
    Gcgroup {
        /// What was being done (`write memory.limit`, `read`, ...).
        op: String,
        /// The process.
        pid: u32,
        /// The GVM GPU index.
        gpu: u32,
        /// The backend's error.
        #[source]
        source: gvm_gcgroup::Error,
    },
    /// The SR-IOV VF vGPU client (or the manager's VF records) failed.
    #[error("{op} {object}")]
    Vf {
        /// What was being done (`create`, `enable VFs on`, ...).
        op: &'static str,
        /// The PF, VF or UUID.
        object: String,
        /// The client's error (it names the VF and the fix); boxed, as it is large.
        #[source]
        source: Box<gvm_vgpu_host::Error>,
    },
    /// A plain file system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A parent's `gvm_uvm_index` file does not hold a GPU index.
    #[error("read GVM GPU index {}: {text:?} is not a GPU index (errno EINVAL): check the GVM driver that provides the file", path.display())]
    BadGpuIndex {
        /// The file.
        path: PathBuf,
        /// What it holds, trimmed.
        text: String,
    },
}

impl PortError {
    /// An error from an `io::Error` on `path`.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> PortError {
        PortError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// A gcgroup backend's error while doing `op` on (`pid`, `gpu`).
    pub fn gcgroup(
        op: impl Into<String>,
        pid: u32,
        gpu: u32,
        source: gvm_gcgroup::Error,
    ) -> PortError {
        PortError::Gcgroup {
            op: op.into(),
            pid,
            gpu,
            source,
        }
    }

    /// The errno, when the kernel gave one. The mdev client's pre-check reports an exhausted
    /// pool without one: it gets the kernel's (ENOSPC), so callers see a conflict rather than
    /// an internal error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PortError::Mdev { source, .. } => source.errno().or(match source {
                gvm_mdev::Error::NoFreeInstance { .. } => Some(libc::ENOSPC),
                _ => None,
            }),
            PortError::Gcgroup { source, .. } => source.errno(),
            PortError::Vf { source, .. } => source.errno().or(match source.as_ref() {
                gvm_vgpu_host::Error::Vf(
                    gvm_vf::Error::TypeNotCreatable { .. } | gvm_vf::Error::NoFreeVf { .. },
                ) => Some(libc::ENOSPC),
                gvm_vgpu_host::Error::UuidInUse { .. } => Some(libc::EEXIST),
                gvm_vgpu_host::Error::VfHeld { .. } => Some(libc::EBUSY),
                gvm_vgpu_host::Error::NotFound { .. } => Some(libc::ENOENT),
                _ => None,
            }),
            PortError::Io { source, .. } => source.raw_os_error(),
            PortError::BadGpuIndex { .. } => Some(libc::EINVAL),
        }
    }

    /// The object vanished (device removed, process exited): not worth reporting.
    pub fn is_gone(&self) -> bool {
        match self {
            PortError::Mdev { source, .. } => matches!(
                source,
                gvm_mdev::Error::DeviceNotFound { .. } | gvm_mdev::Error::ParentNotFound { .. }
            ),
            PortError::Gcgroup { source, .. } => source.is_process_gone(),
            PortError::Vf { source, .. } => matches!(
                source.as_ref(),
                gvm_vgpu_host::Error::NotFound { .. } | gvm_vgpu_host::Error::VfVgpuNotLive { .. }
            ),
            PortError::Io { source, .. } => source.kind() == ErrorKind::NotFound,
            PortError::BadGpuIndex { .. } => false,
        }
    }
}

/// Result of a port call.
pub type PortResult<T> = Result<T, PortError>;

/// One live device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// UUID.
    pub uuid: Uuid,
    /// Parent name.
    pub parent: String,
    /// Kernel type id.
    pub mdev_type: String,
}

/// One live VF vGPU: the manager's UUID and where it lives now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfVgpu {
    /// The manager's UUID (its identity).
    pub uuid: Uuid,
    /// The PF (the GPU).
    pub pf: String,
    /// The VF carrying it now.
    pub vf: String,
    /// The VF type ID.
    pub type_id: u32,
    /// The VF type's name (`NVIDIA H100-20C`), what the catalog binds.
    pub kernel_name: String,
}

/// One SR-IOV GPU as the restore needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfInfo {
    /// Its PCI address.
    pub address: String,
    /// VFs enabled now.
    pub num_vfs: u32,
    /// The most VFs it offers, where known.
    pub total_vfs: Option<u32>,
    /// The names of the VF types some VF lists as creatable now, with their IDs.
    pub creatable: Vec<(u32, String)>,
}

/// One kernel type a parent offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Type id.
    pub id: String,
    /// Its `name` attribute.
    pub name: Option<String>,
}

/// The mdev sysfs ABI.
pub trait MdevPort: Send {
    /// Names of registered parents (a cheap directory listing).
    fn parent_names(&self) -> PortResult<Vec<String>>;
    /// The types a parent offers.
    fn parent_types(&self, parent: &str) -> PortResult<Vec<TypeInfo>>;
    /// Names under `/sys/bus/mdev/devices` (a cheap directory listing).
    fn device_names(&self) -> PortResult<Vec<String>>;
    /// Every live device with parent and type.
    fn devices(&self) -> PortResult<Vec<DeviceInfo>>;
    /// One live device.
    fn device(&self, uuid: Uuid) -> PortResult<DeviceInfo>;
    /// Create a device.
    fn create(&self, parent: &str, mdev_type: &str, uuid: Uuid) -> PortResult<()>;
    /// Remove a device; refused (EBUSY, `gvm_mdev::Error::Held`) while a process holds it
    /// open, since the kernel's remove would then block uninterruptibly.
    fn remove(&self, uuid: Uuid) -> PortResult<()>;
    /// The processes holding a device open (an fd on its VFIO group node). The default,
    /// for fakes without processes: none.
    fn holders(&self, _uuid: Uuid) -> PortResult<Vec<gvm_mdev::Holder>> {
        Ok(Vec::new())
    }
    /// The live VF vGPUs (records whose VF holds the recorded type). The default, for
    /// fakes without SR-IOV GPUs: none.
    fn vf_vgpus(&self) -> PortResult<Vec<VfVgpu>> {
        Ok(Vec::new())
    }
    /// The device nodes through which a process holds VF vGPU `uuid` open (its VF's
    /// `/dev/vfio/<group>` and VFIO cdev), for the VFIO owner rule. Default: none.
    fn vf_vfio_nodes(&self, _uuid: Uuid) -> PortResult<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    /// The SR-IOV GPUs (PFs). Default: none.
    fn pfs(&self) -> PortResult<Vec<PfInfo>> {
        Ok(Vec::new())
    }
    /// The PCI addresses of the SR-IOV GPUs, without their VFs (the periodic scan's view).
    /// Default: those of [`Self::pfs`].
    fn pf_addresses(&self) -> PortResult<Vec<String>> {
        Ok(self.pfs()?.into_iter().map(|p| p.address).collect())
    }
    /// Enable `n` VFs on `pf` (`sriov_numvfs`, what `sriov-manage -e` does).
    fn enable_vfs(&self, pf: &str, _n: u32) -> PortResult<()> {
        Err(no_sriov(pf))
    }
    /// Create VF vGPU `uuid` of the VF type named `kernel_name` on a free VF of `pf`.
    fn create_vf(&self, pf: &str, _kernel_name: &str, _uuid: Uuid) -> PortResult<VfVgpu> {
        Err(no_sriov(pf))
    }
    /// Drop the record of VF vGPU `uuid` whose VF does not carry it (after a reboot),
    /// through the records' compare-before-write: a VF another tool changed is left alone
    /// and refused. No record: nothing to do.
    fn drop_vf_record(&self, _uuid: Uuid) -> PortResult<()> {
        Ok(())
    }
    /// Drop the records of VF vGPUs whose VF holds no vGPU any more, except `keep`'s (the
    /// defined ones, which the restore handles); returns the dropped UUIDs. Default: none.
    fn prune_gone_vf_records(
        &self,
        _keep: &std::collections::BTreeSet<Uuid>,
    ) -> PortResult<Vec<Uuid>> {
        Ok(Vec::new())
    }
    /// The GVM GPU index of a parent (the `gpu` of its gcgroups), `None` when it cannot
    /// be told. The default numbers PCI parents in probe order (see
    /// [`fallback_gpu_index`]); [`SysfsMdev`] prefers the parent's `gvm_uvm_index` file.
    fn parent_gpu_index(&self, parent: &str) -> PortResult<Option<u32>> {
        Ok(fallback_gpu_index(parent, &self.parent_names()?))
    }
}

fn no_sriov(pf: &str) -> PortError {
    PortError::Vf {
        op: "use SR-IOV GPU",
        object: pf.to_string(),
        source: Box::new(
            gvm_vf::Error::PfNotFound {
                pf: pf.to_string(),
                suggestion: None,
            }
            .into(),
        ),
    }
}

/// How a catalog type names its kernel type, as far as a definition for an absent parent
/// needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogBinding {
    /// By kernel type id (`mdev_type = "..."`): the id is known without the parent.
    TypeId(String),
    /// By the kernel type's `name` attribute (`mdev_name = "..."`): only a present parent's
    /// types can say which id that is.
    TypeName(String),
}

/// The vGPU type catalog.
pub trait TypePort: Send {
    /// The catalog type of a kernel type (`None`: unmanaged).
    fn resolve(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<TypeSpec>;
    /// The catalog type of an SR-IOV VF vGPU type, bound by name only (`None`: unmanaged).
    fn resolve_vf(&self, _kernel_name: &str) -> Option<TypeSpec> {
        None
    }
    /// The catalog type of a vGPU of either kind: [`TypePort::resolve`] for mdev,
    /// [`TypePort::resolve_vf`] for a VF vGPU (whose numeric type ID binds nothing).
    fn resolve_kind(
        &self,
        kind: gvm_proto::VgpuKind,
        mdev_type: &str,
        kernel_name: Option<&str>,
    ) -> Option<TypeSpec> {
        match kind {
            gvm_proto::VgpuKind::Mdev => self.resolve(mdev_type, kernel_name),
            gvm_proto::VgpuKind::Vf => self.resolve_vf(kernel_name?),
        }
    }
    /// Whether catalog type `name` binds to this kernel type; `None` if no such name.
    fn binds(&self, name: &str, mdev_type: &str, kernel_name: Option<&str>) -> Option<bool>;
    /// How catalog type `name` finds its kernel type without a parent to look at:
    /// `None` if no catalog type has that name.
    fn binding_of(&self, _name: &str) -> Option<CatalogBinding> {
        None
    }
    /// Catalog type `name`'s default knobs, found by name alone: a definition whose device
    /// does not exist has no parent to resolve its kernel type on. `None` if no such name.
    fn spec_by_name(&self, _name: &str) -> Option<TypeSpec> {
        None
    }
    /// The fixed-share policy's share of the type (its `share`, else 1 / max instances).
    fn default_share(&self, _mdev_type: &str, _kernel_name: Option<&str>) -> Option<f64> {
        None
    }
    /// The framebuffer of the GPU model catalog type `name` belongs to, when the model
    /// gives one (memory limits above it need `force`).
    fn framebuffer(&self, _name: &str) -> Option<crate::limits::Framebuffer> {
        None
    }
}

/// [`MdevPort`] over `gvm_vgpu_host::VgpuHost`: the mdev tree, and the SR-IOV VF vGPUs.
#[derive(Debug)]
pub struct SysfsMdev {
    host: gvm_mdev::MdevHost,
    vgpus: gvm_vgpu_host::VgpuHost,
}

impl SysfsMdev {
    /// The mdev and SR-IOV trees of `root`.
    pub fn new(root: HostRoot) -> SysfsMdev {
        let host = gvm_mdev::MdevHost::new(root);
        SysfsMdev {
            vgpus: gvm_vgpu_host::VgpuHost::from_mdev(host.clone()),
            host,
        }
    }

    /// Whether `uuid` is a live mdev device (else it may be a VF vGPU).
    fn is_mdev(&self, uuid: &Uuid) -> bool {
        self.host.device_path(uuid).exists()
    }
}

fn vf_err(op: &'static str, object: String, source: impl Into<gvm_vgpu_host::Error>) -> PortError {
    PortError::Vf {
        op,
        object,
        source: Box::new(source.into()),
    }
}

fn vf_vgpu(v: gvm_vgpu_host::Vgpu) -> Option<VfVgpu> {
    match v.backing {
        gvm_vgpu_host::Backing::Vf { pf, vf, type_id } => Some(VfVgpu {
            uuid: v.uuid,
            pf,
            vf,
            type_id,
            kernel_name: v.kernel_name.unwrap_or_default(),
        }),
        gvm_vgpu_host::Backing::Mdev { .. } => None,
    }
}

fn mdev_err(op: &'static str, object: String, source: gvm_mdev::Error) -> PortError {
    PortError::Mdev { op, object, source }
}

fn list_dir(dir: &Path) -> PortResult<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(PortError::io("list", dir, e)),
    }
}

impl MdevPort for SysfsMdev {
    fn parent_names(&self) -> PortResult<Vec<String>> {
        list_dir(&self.host.host().mdev_bus_dir())
    }

    fn parent_types(&self, parent: &str) -> PortResult<Vec<TypeInfo>> {
        let p = self
            .host
            .parent(parent)
            .map_err(|e| mdev_err("read parent", parent.to_string(), e))?;
        Ok(p.types
            .into_iter()
            .map(|t| TypeInfo {
                id: t.id,
                name: t.name,
            })
            .collect())
    }

    fn device_names(&self) -> PortResult<Vec<String>> {
        list_dir(&self.host.host().mdev_devices_dir())
    }

    fn devices(&self) -> PortResult<Vec<DeviceInfo>> {
        let devs = self
            .host
            .devices()
            .map_err(|e| mdev_err("list devices", "mdev bus".to_string(), e))?;
        Ok(devs
            .into_iter()
            .map(|d| DeviceInfo {
                uuid: d.uuid,
                parent: d.parent,
                mdev_type: d.type_id,
            })
            .collect())
    }

    fn device(&self, uuid: Uuid) -> PortResult<DeviceInfo> {
        let d = self
            .host
            .device(&uuid)
            .map_err(|e| mdev_err("read device", uuid.to_string(), e))?;
        Ok(DeviceInfo {
            uuid: d.uuid,
            parent: d.parent,
            mdev_type: d.type_id,
        })
    }

    fn create(&self, parent: &str, mdev_type: &str, uuid: Uuid) -> PortResult<()> {
        // The parent and type are known: gvm-mdev's one create write, without the checked
        // create's re-read of the parent and its wait for the device. The kernel's store is
        // synchronous and its errno (EEXIST, ENOSPC/EUSERS, ENODEV) says everything the
        // pre-check would have.
        self.host
            .write_create(parent, mdev_type, &uuid)
            .map_err(|e| mdev_err("create", format!("{uuid} on {parent}/{mdev_type}"), e))
    }

    fn remove(&self, uuid: Uuid) -> PortResult<()> {
        if !self.is_mdev(&uuid) && self.vgpus.records().get(&uuid).is_ok() {
            return self
                .vgpus
                .remove(&uuid)
                .map(|_| ())
                .map_err(|e| vf_err("remove", uuid.to_string(), e));
        }
        self.host
            .remove(&uuid)
            .map_err(|e| mdev_err("remove", uuid.to_string(), e))
    }

    fn holders(&self, uuid: Uuid) -> PortResult<Vec<gvm_mdev::Holder>> {
        if !self.is_mdev(&uuid) && self.vgpus.records().get(&uuid).is_ok() {
            return self
                .vgpus
                .holders(&uuid)
                .map(|s| s.holders)
                .map_err(|e| vf_err("find the holders of", uuid.to_string(), e));
        }
        self.host
            .holders(&uuid)
            .map(|s| s.holders)
            .map_err(|e| mdev_err("find the holders of", uuid.to_string(), e))
    }

    fn vf_vgpus(&self) -> PortResult<Vec<VfVgpu>> {
        let records = self
            .vgpus
            .records()
            .list()
            .map_err(|e| vf_err("list", "VF vGPU records".to_string(), e))?;
        // Only the VFs on record are read (each rescan does this): a record is live when
        // its VF holds the recorded type; a VF gone with its GPU's VFs is not live.
        let mut live = Vec::new();
        for a in records {
            let current = match self.vgpus.vf().vf_state(&a.vf) {
                Ok(state) => state.current,
                Err(gvm_vf::Error::VfGone { .. } | gvm_vf::Error::NoVgpuManager { .. }) => 0,
                Err(e) => return Err(vf_err("read", format!("VF {}", a.vf), e)),
            };
            if current == a.type_id {
                live.push(VfVgpu {
                    uuid: a.uuid,
                    pf: a.pf,
                    vf: a.vf,
                    type_id: a.type_id,
                    kernel_name: a.type_name,
                });
            }
        }
        Ok(live)
    }

    fn vf_vfio_nodes(&self, uuid: Uuid) -> PortResult<Vec<PathBuf>> {
        self.vgpus
            .vfio_nodes(&uuid)
            .map_err(|e| vf_err("find the VFIO nodes of", uuid.to_string(), e))
    }

    fn pfs(&self) -> PortResult<Vec<PfInfo>> {
        let pfs = self
            .vgpus
            .vf()
            .pfs()
            .map_err(|e| vf_err("list", "SR-IOV GPUs".to_string(), e))?;
        Ok(pfs
            .into_iter()
            .map(|p| {
                let mut creatable: Vec<(u32, String)> = Vec::new();
                for t in p
                    .vfs
                    .iter()
                    .filter_map(|v| v.state.as_ref())
                    .flat_map(|s| &s.creatable)
                {
                    if !creatable.iter().any(|(id, _)| *id == t.id) {
                        creatable.push((t.id, t.name.clone()));
                    }
                }
                PfInfo {
                    address: p.address,
                    num_vfs: p.num_vfs,
                    total_vfs: p.total_vfs,
                    creatable,
                }
            })
            .collect())
    }

    fn pf_addresses(&self) -> PortResult<Vec<String>> {
        self.vgpus
            .vf()
            .pf_addresses()
            .map_err(|e| vf_err("list", "SR-IOV GPUs".to_string(), e))
    }

    fn enable_vfs(&self, pf: &str, n: u32) -> PortResult<()> {
        self.vgpus
            .vf()
            .enable_vfs(pf, n)
            .map_err(|e| vf_err("enable VFs on", pf.to_string(), e))
    }

    fn create_vf(&self, pf: &str, kernel_name: &str, uuid: Uuid) -> PortResult<VfVgpu> {
        let v = self
            .vgpus
            .create_vf(Some(pf), kernel_name, Some(uuid))
            .map_err(|e| vf_err("create", format!("{uuid} ({kernel_name} on {pf})"), e))?;
        // create_vf makes VF vGPUs only; an mdev answer would be a bug of that crate.
        vf_vgpu(v).ok_or_else(|| {
            vf_err(
                "create",
                format!("{uuid} ({kernel_name} on {pf})"),
                gvm_vgpu_host::Error::NotFound { uuid },
            )
        })
    }

    fn prune_gone_vf_records(
        &self,
        keep: &std::collections::BTreeSet<Uuid>,
    ) -> PortResult<Vec<Uuid>> {
        self.vgpus
            .records()
            .prune_gone(|u| keep.contains(u))
            .map(|gone| gone.into_iter().map(|a| a.uuid).collect())
            .map_err(|e| vf_err("prune", "the VF vGPU records".to_string(), e))
    }

    fn drop_vf_record(&self, uuid: Uuid) -> PortResult<()> {
        match self.vgpus.records().remove(&uuid) {
            Ok(()) | Err(gvm_vf::Error::NotAssigned { .. }) => Ok(()),
            Err(e) => Err(vf_err("drop the record of", uuid.to_string(), e)),
        }
    }

    fn parent_gpu_index(&self, parent: &str) -> PortResult<Option<u32>> {
        let file = self
            .host
            .host()
            .mdev_bus_dir()
            .join(parent)
            .join("gvm_uvm_index");
        match fs::read_to_string(&file) {
            Ok(text) => match parse_gpu_index(&text) {
                Some(i) => Ok(Some(i)),
                None => Err(PortError::BadGpuIndex {
                    path: file,
                    text: text.trim().to_string(),
                }),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(fallback_gpu_index(parent, &self.parent_names()?))
            }
            Err(e) => Err(PortError::io("read GVM GPU index", &file, e)),
        }
    }
}

/// [`TypePort`] over the catalog files.
#[derive(Debug)]
pub struct CatalogTypes {
    catalog: gvm_catalog::Catalog,
}

impl CatalogTypes {
    /// Wrap a loaded catalog.
    pub fn new(catalog: gvm_catalog::Catalog) -> CatalogTypes {
        CatalogTypes { catalog }
    }
}

fn spec(t: &gvm_catalog::VgpuType) -> TypeSpec {
    TypeSpec {
        name: t.name.clone(),
        memory_limit: t.memory_limit.0,
        priority: t.priority,
        share: t.share,
        host_swap: t.host_swap,
    }
}

impl TypePort for CatalogTypes {
    fn resolve(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<TypeSpec> {
        self.catalog.resolve(mdev_type, kernel_name).map(spec)
    }

    fn resolve_vf(&self, kernel_name: &str) -> Option<TypeSpec> {
        self.catalog.resolve_vf(kernel_name).map(spec)
    }

    fn binds(&self, name: &str, mdev_type: &str, kernel_name: Option<&str>) -> Option<bool> {
        let t = self.catalog.type_by_name(name).ok()?;
        Some(t.binding.matches(mdev_type, kernel_name))
    }

    fn spec_by_name(&self, name: &str) -> Option<TypeSpec> {
        self.catalog.type_by_name(name).ok().map(spec)
    }

    fn binding_of(&self, name: &str) -> Option<CatalogBinding> {
        Some(match &self.catalog.type_by_name(name).ok()?.binding {
            gvm_catalog::Binding::TypeId(id) => CatalogBinding::TypeId(id.clone()),
            gvm_catalog::Binding::TypeName(n) => CatalogBinding::TypeName(n.clone()),
        })
    }

    fn default_share(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<f64> {
        self.catalog
            .resolve(mdev_type, kernel_name)
            .map(|t| t.effective_share())
    }

    fn framebuffer(&self, name: &str) -> Option<crate::limits::Framebuffer> {
        let t = self.catalog.type_by_name(name).ok()?;
        let m = self.catalog.model(&t.model)?;
        Some(crate::limits::Framebuffer {
            model: m.model.clone(),
            bytes: m.framebuffer?.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_gpu_index_prefers_the_parent_file() {
        let Ok(d) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let host = HostRoot::new(d.path());
        let bus = host.mdev_bus_dir();
        for (p, idx) in [("0000:1a:00.0", None), ("0000:3c:00.0", Some("16\n"))] {
            assert!(fs::create_dir_all(bus.join(p)).is_ok());
            if let Some(i) = idx {
                assert!(fs::write(bus.join(p).join("gvm_uvm_index"), i).is_ok());
            }
        }
        let port = SysfsMdev::new(host);
        assert_eq!(port.parent_gpu_index("0000:3c:00.0").ok(), Some(Some(16)));
        assert_eq!(port.parent_gpu_index("0000:1a:00.0").ok(), Some(Some(0)));
        assert!(fs::write(bus.join("0000:1a:00.0").join("gvm_uvm_index"), "zz").is_ok());
        let e = port.parent_gpu_index("0000:1a:00.0").err();
        assert_eq!(e.and_then(|e| e.errno()), Some(libc::EINVAL));
    }
}
