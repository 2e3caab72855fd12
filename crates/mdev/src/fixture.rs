//! A fake sysfs tree shaped like the kernel's, for tests.
//!
//! Links are relative, exactly as the kernel makes them, so resolving them
//! exercises the same code paths as on a real host: an NVIDIA-shaped PCI parent
//! (`0000:3b:00.0`) and the `mtty` sample parent under `devices/virtual`.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use gvm_host_root::HostRoot;
use tempfile::TempDir;
use uuid::Uuid;

pub const GPU: &str = "0000:3b:00.0";
/// The GPU's device dir, relative to `sys/`.
pub const GPU_DIR: &str = "devices/pci0000:3b/0000:3b:00.0";
pub const MTTY_DIR: &str = "devices/virtual/mtty/mtty";

pub struct Fixture {
    pub dir: TempDir,
}

pub struct TypeSpec<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub device_api: Option<&'a str>,
    pub available: Option<&'a str>,
}

impl<'a> TypeSpec<'a> {
    pub fn full(id: &'a str, name: &'a str, available: &'a str) -> Self {
        TypeSpec {
            id,
            name: Some(name),
            description: Some("num_heads=4, frl_config=60"),
            device_api: Some("vfio-pci"),
            available: Some(available),
        }
    }
}

impl Fixture {
    /// An empty root (no `sys` at all).
    pub fn empty() -> io::Result<Self> {
        Ok(Fixture {
            dir: tempfile::tempdir()?,
        })
    }

    /// A GPU parent with `nvidia-558` (2 free) and `nvidia-559` (bare, 0 free),
    /// and an mtty parent with `mtty-1` and `mtty-2`.
    pub fn standard() -> io::Result<Self> {
        let f = Fixture::empty()?;
        f.add_parent(GPU, GPU_DIR)?;
        f.add_type(GPU_DIR, &TypeSpec::full("nvidia-558", "GRID T4-2Q", "2"))?;
        f.add_type(
            GPU_DIR,
            &TypeSpec {
                id: "nvidia-559",
                name: None,
                description: None,
                device_api: Some("vfio-pci"),
                available: Some("0"),
            },
        )?;
        f.add_parent("mtty", MTTY_DIR)?;
        f.add_type(
            MTTY_DIR,
            &TypeSpec::full("mtty-1", "Single port serial", "24"),
        )?;
        f.add_type(
            MTTY_DIR,
            &TypeSpec::full("mtty-2", "Dual port serial", "12"),
        )?;
        fs::create_dir_all(f.sys().join("bus/mdev/devices"))?;
        Ok(f)
    }

    pub fn host(&self) -> HostRoot {
        HostRoot::new(self.dir.path())
    }

    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// `sys/class/mdev_bus/<name> -> ../../<dev_dir>`.
    pub fn add_parent(&self, name: &str, dev_dir: &str) -> io::Result<()> {
        fs::create_dir_all(self.sys().join(dev_dir).join("mdev_supported_types"))?;
        let bus = self.sys().join("class/mdev_bus");
        fs::create_dir_all(&bus)?;
        symlink(Path::new("../..").join(dev_dir), bus.join(name))
    }

    pub fn type_dir(&self, dev_dir: &str, id: &str) -> PathBuf {
        self.sys()
            .join(dev_dir)
            .join("mdev_supported_types")
            .join(id)
    }

    pub fn add_type(&self, dev_dir: &str, t: &TypeSpec<'_>) -> io::Result<()> {
        let dir = self.type_dir(dev_dir, t.id);
        fs::create_dir_all(dir.join("devices"))?;
        fs::write(dir.join("create"), "")?;
        let files = [
            ("name", t.name),
            ("description", t.description),
            ("device_api", t.device_api),
            ("available_instances", t.available),
        ];
        for (file, value) in files {
            if let Some(v) = value {
                fs::write(dir.join(file), format!("{v}\n"))?;
            }
        }
        Ok(())
    }

    /// A live device of `type_id` under the parent at `dev_dir`, with relative
    /// links like the kernel's, optionally in an IOMMU group.
    pub fn add_device(
        &self,
        dev_dir: &str,
        type_id: &str,
        uuid: &Uuid,
        group: Option<u32>,
    ) -> io::Result<()> {
        let dev = self.sys().join(dev_dir).join(uuid.to_string());
        fs::create_dir_all(&dev)?;
        fs::write(dev.join("remove"), "")?;
        symlink(
            Path::new("../mdev_supported_types").join(type_id),
            dev.join("mdev_type"),
        )?;
        if let Some(g) = group {
            let groups = self.sys().join("kernel/iommu_groups").join(g.to_string());
            fs::create_dir_all(groups)?;
            let depth = dev_dir.split('/').count() + 1;
            let up = "../".repeat(depth);
            symlink(
                format!("{up}kernel/iommu_groups/{g}"),
                dev.join("iommu_group"),
            )?;
        }
        let type_devices = self.type_dir(dev_dir, type_id).join("devices");
        symlink(
            Path::new("../../..").join(uuid.to_string()),
            type_devices.join(uuid.to_string()),
        )?;
        let bus = self.sys().join("bus/mdev/devices");
        fs::create_dir_all(&bus)?;
        symlink(
            Path::new("../../..").join(dev_dir).join(uuid.to_string()),
            bus.join(uuid.to_string()),
        )
    }
}
