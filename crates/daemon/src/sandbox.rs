//! Every place on the host the daemon writes, in one list, for the systemd unit's sandbox.
//!
//! `packaging/gvm-vgpud.service` mounts the whole file system read-only
//! (`ProtectSystem=strict`, `ProtectKernelTunables=yes`) and opens only the paths in its
//! `ReadWritePaths=` (and `RuntimeDirectory=`) again. A write the unit does not allow fails
//! with `EROFS` on a real host and nowhere else, so the list lives here, next to the code,
//! and `tests/packaging.rs` checks that the unit covers each entry.
//!
//! sysfs files are written through `/sys/class/mdev_bus`, `/sys/bus/mdev/devices` and
//! `/sys/bus/pci/devices`, whose entries are symbolic links into `/sys/devices`: the kernel
//! resolves the link before the write, so the mount that decides is the one of `/sys/devices`.

use std::path::PathBuf;

use gvm_host_root::HostRoot;

/// One place the daemon writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPath {
    /// The path the code names (under the host root).
    pub used: PathBuf,
    /// The directory whose mount must be writable: `used` itself, or for a sysfs link
    /// directory where its entries lead (`/sys/devices`).
    pub writable: PathBuf,
    /// What is written there.
    pub what: &'static str,
}

/// The places the daemon writes on `host` (`/` on a real host).
pub fn written_paths(host: &HostRoot) -> Vec<WrittenPath> {
    let devices = host.path("/sys/devices");
    let linked = |used: PathBuf, what| WrittenPath {
        used,
        writable: devices.clone(),
        what,
    };
    let direct = |used: PathBuf, what| WrittenPath {
        writable: used.clone(),
        used,
        what,
    };
    vec![
        linked(
            host.mdev_bus_dir(),
            "mdev `create` (mdev_supported_types/<type>/create)",
        ),
        linked(host.mdev_devices_dir(), "mdev `remove`"),
        linked(
            host.pci_devices_dir(),
            "SR-IOV VF vGPU type (nvidia/current_vgpu_type) and enabled VFs (sriov_numvfs)",
        ),
        direct(
            host.gvm_processes_dir(),
            "GVM gcgroup knobs (memory limit, priority, freeze) in debugfs",
        ),
        direct(
            host.path(gvm_shim_host::blocks::SHM_DIR),
            "shim control blocks (knobs of processes under libgvm_cuda.so)",
        ),
        direct(
            host.run_dir(),
            "API and shim sockets, libvirt status (RuntimeDirectory)",
        ),
        direct(
            host.config_dir(),
            "vGPU definitions (vgpus/*.json), VF vGPU records (vf-vgpus/*.json) and policy.json",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_entry_points_are_written_through_sys_devices_and_the_rest_directly() {
        let list = written_paths(&HostRoot::default());
        for w in &list {
            assert!(w.used.is_absolute(), "{w:?}");
            if w.used.starts_with("/sys/class") || w.used.starts_with("/sys/bus") {
                assert_eq!(w.writable, PathBuf::from("/sys/devices"), "{w:?}");
            } else {
                assert_eq!(w.writable, w.used, "{w:?}");
            }
        }
        let writable: Vec<_> = list.iter().map(|w| w.writable.clone()).collect();
        for p in [
            "/sys/devices",
            "/sys/kernel/debug/nvidia-uvm/processes",
            "/dev/shm",
            "/run/gvm-vgpu",
            "/etc/gvm-vgpu",
        ] {
            assert!(writable.contains(&PathBuf::from(p)), "{p} missing");
        }
    }
}
