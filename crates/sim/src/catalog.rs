//! The simulated GPUs and their vGPU types.
//!
//! An mdev *parent* is a physical device that offers *types*; each type says how
//! much of the device one mediated device takes. Two models are simulated:
//!
//! * `gvm-sim`: N PCI GPUs with 80 GiB of framebuffer each, offering five
//!   NVIDIA-like types (`gvmsim-1`..`gvmsim-6`) that all draw on that one
//!   framebuffer, so creating a device of one type lowers every type's
//!   `available_instances`. Exhaustion fails with `EUSERS`, like the mdev core.
//! * `mtty`: the kernel's `samples/vfio-mdev/mtty.c` (6.1): one virtual parent
//!   with `mtty-1` (1 port) and `mtty-2` (2 ports) drawing on 24 ports.
//!   Exhaustion fails with `ENOSPC`, like the sample driver.
//!
//! Everything here is pure data and arithmetic; the sysfs layout lives in
//! [`crate::tree`].

use std::fmt;

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;

/// Framebuffer of one simulated `gvm-sim` GPU.
pub const GPU_FRAMEBUFFER: u64 = 80 * GIB;

/// Ports the `mtty` sample parent shares between all its devices.
pub const MTTY_TOTAL_PORTS: u64 = 24;

/// Which kind of simulated host to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Model {
    /// NVIDIA-like GPUs with GVM's gcgroup tree (`gvmsim-*` types).
    #[default]
    GvmSim,
    /// The kernel's `mtty` sample parent (`mtty-1`, `mtty-2`).
    Mtty,
}

impl Model {
    /// The name used on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::GvmSim => "gvm-sim",
            Model::Mtty => "mtty",
        }
    }

    /// The errno the vendor driver returns when a type has no free instance.
    pub fn exhausted_errno(self) -> i32 {
        match self {
            Model::GvmSim => libc::EUSERS,
            Model::Mtty => libc::ENOSPC,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One vGPU type a parent offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    /// The type id, the directory name under `mdev_supported_types/`.
    pub id: &'static str,
    /// Contents of the `name` attribute.
    pub name: &'static str,
    /// Units of the parent's shared pool one device takes (bytes of
    /// framebuffer for `gvm-sim`, ports for `mtty`).
    pub size: u64,
    /// Most devices of this type one parent can hold (`u64::MAX`: only the pool limits).
    pub max_instances: u64,
    /// Whether the type has a `description` attribute.
    pub has_description: bool,
}

const GVM_SIM_TYPES: [TypeSpec; 6] = [
    gvm_type("gvmsim-1", "SIM-80GB-4C", 4, 16),
    gvm_type("gvmsim-2", "SIM-80GB-10C", 10, 8),
    gvm_type("gvmsim-3", "SIM-80GB-20C", 20, 4),
    gvm_type("gvmsim-4", "SIM-80GB-40C", 40, 2),
    gvm_type("gvmsim-5", "SIM-80GB-80C", 80, 1),
    // Small slices for scale tests: 64 per GPU, so 16 GPUs hold 1,000 vGPUs.
    gvm_type("gvmsim-6", "SIM-80GB-1C", 1, 64),
];

const fn gvm_type(id: &'static str, name: &'static str, gib: u64, max: u64) -> TypeSpec {
    TypeSpec {
        id,
        name,
        size: gib * GIB,
        max_instances: max,
        has_description: true,
    }
}

const MTTY_TYPES: [TypeSpec; 2] = [
    TypeSpec {
        id: "mtty-1",
        name: "Single port serial",
        size: 1,
        max_instances: u64::MAX,
        has_description: false,
    },
    TypeSpec {
        id: "mtty-2",
        name: "Dual port serial",
        size: 2,
        max_instances: u64::MAX,
        has_description: false,
    },
];

impl TypeSpec {
    /// The NVIDIA-style `description` line of a `gvm-sim` type.
    pub fn description(&self) -> String {
        format!(
            "num_heads=1, frl_config=60, framebuffer={}M, max_resolution=4096x2160, max_instance={}",
            self.size / (1 << 20),
            self.max_instances
        )
    }

    /// `available_instances` given the live devices of this type and the free pool.
    pub fn available(&self, live_of_type: u64, free_pool: u64) -> u64 {
        let by_count = self.max_instances.saturating_sub(live_of_type);
        by_count.min(free_pool / self.size)
    }
}

/// One mdev parent device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentSpec {
    /// The parent's name in `sys/class/mdev_bus/` (a PCI address, or `mtty`).
    pub name: String,
    /// Its device directory relative to the root, e.g. `sys/devices/pci0000:00/0000:3b:00.0`.
    pub dir: Vec<String>,
    /// GVM's UVM GPU index of this parent (`None` for `mtty`).
    pub uvm_index: Option<u32>,
    /// Size of the pool the parent's types share.
    pub pool: u64,
    /// The types it offers.
    pub types: Vec<TypeSpec>,
}

impl ParentSpec {
    /// The type with this id, if the parent offers it.
    pub fn type_spec(&self, id: &str) -> Option<&TypeSpec> {
        self.types.iter().find(|t| t.id == id)
    }
}

/// The parents a model with `gpus` GPUs presents (`mtty` always has one parent).
pub fn parents(model: Model, gpus: u32) -> Vec<ParentSpec> {
    match model {
        Model::GvmSim => (0..gpus)
            .map(|i| {
                let name = format!("0000:{:02x}:00.0", 0x3b + i);
                ParentSpec {
                    dir: vec![
                        "sys".into(),
                        "devices".into(),
                        "pci0000:00".into(),
                        name.clone(),
                    ],
                    name,
                    uvm_index: Some(8 * i),
                    pool: GPU_FRAMEBUFFER,
                    types: GVM_SIM_TYPES.to_vec(),
                }
            })
            .collect(),
        Model::Mtty => vec![ParentSpec {
            name: "mtty".into(),
            dir: ["sys", "devices", "virtual", "mtty", "mtty"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            uvm_index: None,
            pool: MTTY_TOTAL_PORTS,
            types: MTTY_TYPES.to_vec(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvm_sim_parents_are_consecutive_pci_buses_with_uvm_indices_8_apart() {
        let p = parents(Model::GvmSim, 3);
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["0000:3b:00.0", "0000:3c:00.0", "0000:3d:00.0"]);
        let idx: Vec<_> = p.iter().map(|p| p.uvm_index).collect();
        assert_eq!(idx, [Some(0), Some(8), Some(16)]);
        assert_eq!(p[1].dir.join("/"), "sys/devices/pci0000:00/0000:3c:00.0");
    }

    #[test]
    fn gvm_sim_available_is_bounded_by_count_and_framebuffer() {
        let p = &parents(Model::GvmSim, 1)[0];
        let t1 = p
            .type_spec("gvmsim-1")
            .cloned()
            .unwrap_or_else(|| panic!("gvmsim-1"));
        assert_eq!(t1.available(0, GPU_FRAMEBUFFER), 16);
        assert_eq!(t1.available(16, GPU_FRAMEBUFFER), 0);
        // 40 GiB taken by another type: 10 x 4 GiB still fit.
        assert_eq!(t1.available(0, 40 * GIB), 10);
        let t5 = p
            .type_spec("gvmsim-5")
            .cloned()
            .unwrap_or_else(|| panic!("gvmsim-5"));
        assert_eq!(t5.available(0, 76 * GIB), 0);
        assert!(t1.description().contains("framebuffer=4096M"));
        assert!(t1.description().contains("max_instance=16"));
        let t6 = p
            .type_spec("gvmsim-6")
            .cloned()
            .unwrap_or_else(|| panic!("gvmsim-6"));
        assert_eq!(t6.name, "SIM-80GB-1C");
        assert_eq!(t6.available(0, GPU_FRAMEBUFFER), 64);
        // The framebuffer pool still applies: 20 GiB free leaves room for 20.
        assert_eq!(t6.available(10, 20 * GIB), 20);
        let ids: Vec<&str> = p.types.iter().map(|t| t.id).collect();
        assert_eq!(
            ids,
            ["gvmsim-1", "gvmsim-2", "gvmsim-3", "gvmsim-4", "gvmsim-5", "gvmsim-6"]
        );
    }

    #[test]
    fn mtty_types_share_24_ports() {
        let p = &parents(Model::Mtty, 7);
        assert_eq!(p.len(), 1);
        let t2 = p[0]
            .type_spec("mtty-2")
            .cloned()
            .unwrap_or_else(|| panic!("mtty-2"));
        assert_eq!(t2.available(0, 24), 12);
        assert_eq!(t2.available(3, 1), 0);
        assert_eq!(Model::Mtty.exhausted_errno(), libc::ENOSPC);
        assert_eq!(Model::GvmSim.exhausted_errno(), libc::EUSERS);
    }
}
