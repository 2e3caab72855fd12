//! The daemon's interfaces to the host, and their real implementations.
//!
//! Three ports: [`MdevPort`] (mdev parents and devices in sysfs), [`GcgroupPort`]
//! (GVM gcgroup knobs: per owner process × GPU) and [`TypePort`] (the catalog that
//! gives a kernel mdev type its default knobs). The core only sees these traits, so
//! unit tests run it against in-memory fakes ([`crate::fake`]) and a CUDA-shim
//! gcgroup backend can slot in beside the debugfs one.
//!
//! Real implementations: [`SysfsMdev`] (over `gvm_mdev::MdevHost`),
//! [`BackendGcgroups`] (any `gvm_gcgroup::GcgroupBackend`, e.g. the GVM debugfs tree) and
//! [`CatalogTypes`] (over `gvm_catalog::Catalog`).

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use gvm_host_root::HostRoot;
use uuid::Uuid;

use crate::model::TypeSpec;
use crate::plan::KnobWrite;

/// A host operation that failed, naming the object and carrying the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {object}: {message}")]
pub struct PortError {
    /// What was being done (`create`, `write memory.limit`, ...).
    pub op: String,
    /// The object: a path, UUID or parent.
    pub object: String,
    /// The errno, when the kernel gave one.
    pub errno: Option<i32>,
    /// Human explanation (includes what to do where known).
    pub message: String,
    /// The object vanished (device removed, process exited): not worth reporting.
    pub gone: bool,
}

impl PortError {
    /// An error from an `io::Error` on `path`.
    pub fn io(op: impl Into<String>, path: &Path, e: &std::io::Error) -> PortError {
        PortError {
            op: op.into(),
            object: path.display().to_string(),
            errno: e.raw_os_error(),
            message: e.to_string(),
            gone: e.kind() == ErrorKind::NotFound,
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
    /// Remove a device.
    fn remove(&self, uuid: Uuid) -> PortResult<()>;
    /// The GVM GPU index of a parent (the `gpu` of its gcgroups), `None` when it cannot
    /// be told. The default numbers PCI parents in probe order (see
    /// [`fallback_gpu_index`]); [`SysfsMdev`] prefers the parent's `gvm_uvm_index` file.
    fn parent_gpu_index(&self, parent: &str) -> PortResult<Option<u32>> {
        Ok(fallback_gpu_index(parent, &self.parent_names()?))
    }
}

/// Whether `name` is a PCI address (`dddd:bb:dd.f`, hex digits).
fn is_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b':',
            10 => *c == b'.',
            _ => c.is_ascii_hexdigit(),
        })
}

/// GVM's numbering of physical GPUs when the parent does not say: GVM numbers them
/// 0, 8, 16, ... in probe order, i.e. 8 × the parent's position among the sorted PCI
/// parents in `parents`. `None` when `parent` is not one of them.
pub fn fallback_gpu_index(parent: &str, parents: &[String]) -> Option<u32> {
    if !is_pci_address(parent) {
        return None;
    }
    let mut pci: Vec<String> = parents
        .iter()
        .filter(|p| is_pci_address(p))
        .map(|p| p.to_ascii_lowercase())
        .collect();
    pci.sort();
    pci.dedup();
    let pos = pci.iter().position(|p| *p == parent.to_ascii_lowercase())?;
    u32::try_from(pos).ok()?.checked_mul(8)
}

/// The GPU index in a `gvm_uvm_index` file's text.
pub fn parse_gpu_index(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

/// Everything one gcgroup directory reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcRead {
    /// `memory.limit`.
    pub memory_limit: u64,
    /// `memory.current`.
    pub memory_current: u64,
    /// `memory.swap.current`.
    pub swap_current: u64,
    /// `compute.priority`.
    pub priority: u8,
    /// `compute.freeze`.
    pub frozen: bool,
    /// `nr_submitted_kernels`.
    pub submitted: u64,
    /// `nr_ended_kernels`.
    pub ended: u64,
    /// `nr_pending_kernels`.
    pub pending: u64,
}

/// The GVM gcgroup ABI (debugfs, or a shim backend with the same knobs).
pub trait GcgroupPort: Send {
    /// Backend name for logs.
    fn name(&self) -> &'static str;
    /// Pids with a gcgroup tree.
    fn processes(&self) -> PortResult<Vec<u32>>;
    /// GPU indexes a process has registered (empty when it is gone).
    fn gpus(&self, pid: u32) -> PortResult<Vec<u32>>;
    /// How many GPUs a process has registered, when a backend can tell it without a
    /// listing (`None`: list to know; `Some(0)` when it is gone).
    fn gpu_count(&self, _pid: u32) -> PortResult<Option<usize>> {
        Ok(None)
    }
    /// Read one gcgroup.
    fn read(&self, pid: u32, gpu: u32) -> PortResult<GcRead>;
    /// Read only a gcgroup's kernel counters `(ended, pending)` (the scheduler's poll).
    fn read_counters(&self, pid: u32, gpu: u32) -> PortResult<(u64, u64)> {
        self.read(pid, gpu).map(|r| (r.ended, r.pending))
    }
    /// Write one knob.
    fn write(&self, pid: u32, gpu: u32, knob: KnobWrite) -> PortResult<()>;
}

/// The vGPU type catalog.
pub trait TypePort: Send {
    /// The catalog type of a kernel type (`None`: unmanaged).
    fn resolve(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<TypeSpec>;
    /// Whether catalog type `name` binds to this kernel type; `None` if no such name.
    fn binds(&self, name: &str, mdev_type: &str, kernel_name: Option<&str>) -> Option<bool>;
    /// The fixed-share policy's share of the type (its `share`, else 1 / max instances).
    fn default_share(&self, _mdev_type: &str, _kernel_name: Option<&str>) -> Option<f64> {
        None
    }
}

/// [`MdevPort`] over `gvm_mdev::MdevHost`.
#[derive(Debug)]
pub struct SysfsMdev {
    host: gvm_mdev::MdevHost,
}

impl SysfsMdev {
    /// The mdev tree of `root`.
    pub fn new(root: HostRoot) -> SysfsMdev {
        SysfsMdev {
            host: gvm_mdev::MdevHost::new(root),
        }
    }
}

fn mdev_err(op: &str, object: String, e: gvm_mdev::Error) -> PortError {
    let gone = matches!(
        e,
        gvm_mdev::Error::DeviceNotFound { .. } | gvm_mdev::Error::ParentNotFound { .. }
    );
    // The library's pre-check reports an exhausted pool without an errno: give it
    // the kernel's, so callers see a conflict rather than an internal error.
    let errno = e.errno().or(match e {
        gvm_mdev::Error::NoFreeInstance { .. } => Some(libc::ENOSPC),
        _ => None,
    });
    PortError {
        op: op.to_string(),
        object,
        errno,
        message: e.to_string(),
        gone,
    }
}

fn list_dir(dir: &Path) -> PortResult<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(PortError::io("list", dir, &e)),
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
        self.host
            .remove(&uuid)
            .map_err(|e| mdev_err("remove", uuid.to_string(), e))
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
                None => Err(PortError {
                    op: "read GVM GPU index".to_string(),
                    object: file.display().to_string(),
                    errno: Some(libc::EINVAL),
                    message: format!(
                        "{:?} is not a GPU index: check the GVM driver that provides the file",
                        text.trim()
                    ),
                    gone: false,
                }),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Ok(fallback_gpu_index(parent, &self.parent_names()?))
            }
            Err(e) => Err(PortError::io("read GVM GPU index", &file, &e)),
        }
    }
}

/// [`GcgroupPort`] over any `gvm_gcgroup::GcgroupBackend`: the GVM debugfs tree
/// (`gvm_gcgroup::GvmTree`), the in-memory backend, or later the CUDA shim.
#[derive(Debug)]
pub struct BackendGcgroups<B> {
    backend: B,
}

impl<B: gvm_gcgroup::GcgroupBackend> BackendGcgroups<B> {
    /// Wrap a backend.
    pub fn new(backend: B) -> Self {
        BackendGcgroups { backend }
    }
}

/// The GVM debugfs tree of `root` as a [`GcgroupPort`].
pub fn gvm_tree(root: &HostRoot) -> BackendGcgroups<gvm_gcgroup::GvmTree> {
    BackendGcgroups::new(gvm_gcgroup::GvmTree::new(root.clone()))
}

fn gc_err(op: &str, pid: u32, gpu: Option<u32>, e: gvm_gcgroup::Error) -> PortError {
    PortError {
        op: op.to_string(),
        object: match gpu {
            Some(g) => format!("gcgroup {pid}/{g}"),
            None => format!("process {pid}"),
        },
        errno: e.errno(),
        gone: e.is_process_gone(),
        message: e.to_string(),
    }
}

impl<B: gvm_gcgroup::GcgroupBackend> GcgroupPort for BackendGcgroups<B> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }

    fn processes(&self) -> PortResult<Vec<u32>> {
        self.backend
            .processes()
            .map_err(|e| gc_err("list processes", 0, None, e))
    }

    fn gpu_count(&self, pid: u32) -> PortResult<Option<usize>> {
        match self.backend.gpu_count(pid) {
            Ok(n) => Ok(n),
            Err(e) if e.is_process_gone() => Ok(Some(0)),
            Err(e) => Err(gc_err("count gpus", pid, None, e)),
        }
    }

    fn gpus(&self, pid: u32) -> PortResult<Vec<u32>> {
        match self.backend.gpus(pid) {
            Ok(g) => Ok(g),
            Err(e) if e.is_process_gone() => Ok(Vec::new()),
            Err(e) => Err(gc_err("list gpus", pid, None, e)),
        }
    }

    fn read(&self, pid: u32, gpu: u32) -> PortResult<GcRead> {
        let s = self
            .backend
            .read(pid, gpu)
            .map_err(|e| gc_err("read", pid, Some(gpu), e))?;
        Ok(GcRead {
            memory_limit: s.memory_limit.as_bytes(),
            memory_current: s.memory_current,
            swap_current: s.swap_current,
            priority: s.priority.get(),
            frozen: s.frozen,
            submitted: s.stat.submitted,
            ended: s.stat.ended,
            pending: s.stat.pending,
        })
    }

    fn read_counters(&self, pid: u32, gpu: u32) -> PortResult<(u64, u64)> {
        let s = self
            .backend
            .stat(pid, gpu)
            .map_err(|e| gc_err("read", pid, Some(gpu), e))?;
        Ok((s.ended, s.pending))
    }

    fn write(&self, pid: u32, gpu: u32, knob: KnobWrite) -> PortResult<()> {
        let op = format!("write {}", knob.file());
        let r = match knob {
            KnobWrite::MemoryLimit(v) => {
                self.backend
                    .set_memory_limit(pid, gpu, gvm_gcgroup::MemoryLimit::from_bytes(v))
            }
            KnobWrite::Priority(p) => match gvm_gcgroup::Priority::try_from(p) {
                Ok(p) => self.backend.set_priority(pid, gpu, p),
                Err(e) => Err(e),
            },
            KnobWrite::Frozen(f) => self.backend.set_frozen(pid, gpu, f),
        };
        r.map_err(|e| gc_err(&op, pid, Some(gpu), e))
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
    }
}

impl TypePort for CatalogTypes {
    fn resolve(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<TypeSpec> {
        self.catalog.resolve(mdev_type, kernel_name).map(spec)
    }

    fn binds(&self, name: &str, mdev_type: &str, kernel_name: Option<&str>) -> Option<bool> {
        let t = self.catalog.type_by_name(name).ok()?;
        Some(t.binding.matches(mdev_type, kernel_name))
    }

    fn default_share(&self, mdev_type: &str, kernel_name: Option<&str>) -> Option<f64> {
        self.catalog
            .resolve(mdev_type, kernel_name)
            .map(|t| t.effective_share())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_index_falls_back_to_probe_order_of_pci_parents() {
        let parents: Vec<String> = ["0000:3c:00.0", "mtty", "0000:1a:00.0", "0000:AF:00.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(fallback_gpu_index("0000:1a:00.0", &parents), Some(0));
        assert_eq!(fallback_gpu_index("0000:3c:00.0", &parents), Some(8));
        assert_eq!(fallback_gpu_index("0000:af:00.0", &parents), Some(16));
        assert_eq!(fallback_gpu_index("mtty", &parents), None);
        assert_eq!(fallback_gpu_index("0000:99:00.0", &parents), None);
        assert_eq!(parse_gpu_index("8\n"), Some(8));
        assert_eq!(parse_gpu_index("x"), None);
    }

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
        assert_eq!(e.and_then(|e| e.errno), Some(libc::EINVAL));
    }

    #[test]
    fn the_gcgroup_backend_adapter_reads_writes_and_reports_gone() {
        let mem = gvm_gcgroup::MemoryBackend::new();
        mem.register(42, 8);
        let port = BackendGcgroups::new(mem);
        assert_eq!(port.processes().ok(), Some(vec![42]));
        assert_eq!(port.gpus(42).ok(), Some(vec![8]));
        assert_eq!(port.gpus(7).ok(), Some(vec![]));
        assert!(port.write(42, 8, KnobWrite::Priority(3)).is_ok());
        assert!(port.write(42, 8, KnobWrite::MemoryLimit(1 << 30)).is_ok());
        assert!(port.write(42, 8, KnobWrite::Frozen(true)).is_ok());
        let r = port.read(42, 8).ok();
        assert_eq!(
            r.map(|r| (r.priority, r.memory_limit, r.frozen)),
            Some((3, 1 << 30, true))
        );
        let e = port.write(7, 0, KnobWrite::Frozen(true)).err();
        assert_eq!(e.map(|e| e.gone), Some(true));
        assert!(port.write(42, 8, KnobWrite::Priority(17)).is_err());
    }
}
