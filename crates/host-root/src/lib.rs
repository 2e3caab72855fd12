//! Where things live on the host, relative to one root.
//!
//! Every file the gvm-vgpu manager touches on a host — the mdev sysfs tree, the GVM
//! debugfs tree, its own configuration and runtime state — is found through a
//! [`HostRoot`]. Production code uses `/`; tests point the same code at a temporary
//! tree; the simulated host (`gvm-vgpu-sim`) serves a FUSE tree under a directory
//! and every tool is run with `--root DIR` (or `GVM_VGPU_ROOT=DIR`).
//!
//! Process information (`/proc`) is the exception: the owners of a vGPU are real
//! processes even on the simulated host, so [`HostRoot::proc_dir`] is the real
//! `/proc` unless a test overrides it with [`HostRoot::with_proc_dir`].
//!
//! ```
//! use gvm_host_root::HostRoot;
//! let host = HostRoot::new("/tmp/simhost");
//! assert_eq!(host.mdev_bus_dir(), std::path::Path::new("/tmp/simhost/sys/class/mdev_bus"));
//! assert_eq!(host.proc_dir(), std::path::Path::new("/proc"));
//! ```

use std::path::{Path, PathBuf};

/// Name of the environment variable that overrides the host root for every binary.
pub const ROOT_ENV: &str = "GVM_VGPU_ROOT";

/// The root every host path is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
    proc_dir: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        Self::new("/")
    }
}

impl HostRoot {
    /// A host rooted at `root` (`/` for the real host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot {
            root: root.into(),
            proc_dir: PathBuf::from("/proc"),
        }
    }

    /// Replace the directory processes are read from (tests only; default `/proc`).
    pub fn with_proc_dir(mut self, proc_dir: impl Into<PathBuf>) -> Self {
        self.proc_dir = proc_dir.into();
        self
    }

    /// The root itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the real host (`/`).
    pub fn is_real_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Join an absolute host path (`/sys/...`) onto the root.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let p = host_path.as_ref();
        let rel = p.strip_prefix("/").unwrap_or(p);
        self.root.join(rel)
    }

    /// `/sys`.
    pub fn sys_dir(&self) -> PathBuf {
        self.path("/sys")
    }

    /// `/sys/class/mdev_bus`: one entry (a link to the device) per registered mdev parent.
    pub fn mdev_bus_dir(&self) -> PathBuf {
        self.path("/sys/class/mdev_bus")
    }

    /// `/sys/bus/mdev/devices`: one entry per live mediated device, named by UUID.
    pub fn mdev_devices_dir(&self) -> PathBuf {
        self.path("/sys/bus/mdev/devices")
    }

    /// `/sys/bus/pci/devices`: PCI functions, among them SR-IOV PFs and their VFs.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.path("/sys/bus/pci/devices")
    }

    /// `/sys/kernel/debug/nvidia-uvm/processes`: GVM's per-process gcgroup tree.
    pub fn gvm_processes_dir(&self) -> PathBuf {
        self.path("/sys/kernel/debug/nvidia-uvm/processes")
    }

    /// `/sys/fs/cgroup`: the cgroup v2 hierarchy (UUID-named cgroups own vGPUs).
    pub fn cgroup_dir(&self) -> PathBuf {
        self.path("/sys/fs/cgroup")
    }

    /// `/etc/gvm-vgpu`: persistent vGPU definitions and policy choices.
    pub fn config_dir(&self) -> PathBuf {
        self.path("/etc/gvm-vgpu")
    }

    /// `/etc/mdevctl.d`: mdevctl's persistent definitions (read by `import-mdevctl`).
    pub fn mdevctl_config_dir(&self) -> PathBuf {
        self.path("/etc/mdevctl.d")
    }

    /// `/run/gvm-vgpu`: the daemon's socket and runtime state.
    pub fn run_dir(&self) -> PathBuf {
        self.path("/run/gvm-vgpu")
    }

    /// `/run/libvirt/qemu`: libvirt's per-domain pid files and live XML.
    pub fn libvirt_run_dir(&self) -> PathBuf {
        self.path("/run/libvirt/qemu")
    }

    /// The catalog of vGPU types shipped with the package: `/usr/share/gvm-vgpu/mdev-types`.
    pub fn shipped_catalog_dir(&self) -> PathBuf {
        self.path("/usr/share/gvm-vgpu/mdev-types")
    }

    /// Operator-edited vGPU types: `/etc/gvm-vgpu/mdev-types`.
    pub fn local_catalog_dir(&self) -> PathBuf {
        self.config_dir().join("mdev-types")
    }

    /// The directory processes are read from (`/proc` unless overridden).
    pub fn proc_dir(&self) -> &Path {
        &self.proc_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_host_paths_are_absolute_kernel_paths() {
        let h = HostRoot::default();
        assert!(h.is_real_host());
        assert_eq!(h.mdev_devices_dir(), PathBuf::from("/sys/bus/mdev/devices"));
        assert_eq!(
            h.gvm_processes_dir(),
            PathBuf::from("/sys/kernel/debug/nvidia-uvm/processes")
        );
    }

    #[test]
    fn a_temp_root_prefixes_every_path() {
        let h = HostRoot::new("/tmp/x");
        assert!(!h.is_real_host());
        assert_eq!(
            h.path("/etc/gvm-vgpu"),
            PathBuf::from("/tmp/x/etc/gvm-vgpu")
        );
        assert_eq!(h.path("relative"), PathBuf::from("/tmp/x/relative"));
        assert_eq!(
            h.local_catalog_dir(),
            PathBuf::from("/tmp/x/etc/gvm-vgpu/mdev-types")
        );
    }

    #[test]
    fn proc_dir_is_real_unless_overridden() {
        let h = HostRoot::new("/tmp/x");
        assert_eq!(h.proc_dir(), Path::new("/proc"));
        let h = h.with_proc_dir("/tmp/fakeproc");
        assert_eq!(h.proc_dir(), Path::new("/tmp/fakeproc"));
    }
}
