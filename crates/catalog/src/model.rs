//! The catalog's data: GPU models, the vGPU types each offers, and how a type binds to a kernel
//! mdev type.
//!
//! A kernel mdev type lives at `/sys/class/mdev_bus/<parent>/mdev_supported_types/<type-id>`.
//! Its id (`nvidia-558`, `mtty-2`) is stable only within one vendor driver release, while its
//! `name` attribute (`NVIDIA H100-20C`) usually survives upgrades; a [`Binding`] therefore names
//! either one. On Ada, Hopper and Blackwell GPUs a vGPU is an SR-IOV VF whose type NVIDIA names
//! as it names the mdev type (`NVIDIA H100-20C`): a name binding binds both kinds, an id binding
//! only mdev types. A [`VgpuType`] adds what the kernel does not know: the GVM memory limit, compute
//! priority, GPU time share, instance count and whether over-limit pages may spill to host memory.

use std::fmt;
use std::path::PathBuf;

use crate::bytesize::ByteSize;

/// How a catalog type finds its kernel mdev type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// By the directory name under `mdev_supported_types/` (`mdev_type = "nvidia-558"`).
    TypeId(String),
    /// By the type's `name` attribute (`mdev_name = "NVIDIA H100-20C"`); the same name also
    /// binds an SR-IOV VF vGPU type (a `creatable_vgpu_types` line), see
    /// [`crate::Catalog::resolve_vf`].
    TypeName(String),
}

impl Binding {
    /// Whether a kernel type with this id and (if it has one) `name` attribute matches.
    /// Surrounding whitespace (the newline sysfs puts after `name`) is ignored.
    pub fn matches(&self, type_id: &str, kernel_name: Option<&str>) -> bool {
        match self {
            Binding::TypeId(id) => id.trim() == type_id.trim(),
            Binding::TypeName(name) => kernel_name.is_some_and(|k| k.trim() == name.trim()),
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::TypeId(id) => write!(f, "type id {id}"),
            Binding::TypeName(name) => write!(f, "name {name:?}"),
        }
    }
}

/// One vGPU type: a kernel mdev type plus the GVM attributes applied to every vGPU of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VgpuType {
    /// Catalog name, unique across the catalog (what `gvm-vgpu create --type` takes).
    pub name: String,
    /// The [`GpuModel::model`] this type belongs to.
    pub model: String,
    /// The kernel mdev type it stands for.
    pub binding: Binding,
    /// GVM `memory.limit` for each owner process.
    pub memory_limit: ByteSize,
    /// GVM `compute.priority`, 0..=16, lower = higher priority (timeslice 524288 µs >> priority).
    pub priority: u8,
    /// Fixed share of GPU time, in (0, 1]; `None` means 1 / `max_instances`.
    pub share: Option<f64>,
    /// How many vGPUs of this type one GPU holds.
    pub max_instances: u32,
    /// Whether pages over the memory limit may spill to host memory.
    pub host_swap: bool,
    /// Free text for listings.
    pub description: Option<String>,
}

impl VgpuType {
    /// The fixed-share policy's share: the configured one, else 1 / `max_instances`.
    pub fn effective_share(&self) -> f64 {
        self.share
            .unwrap_or_else(|| 1.0 / f64::from(self.max_instances.max(1)))
    }

    /// The GVM timeslice this type's priority gives, in microseconds.
    pub fn timeslice_us(&self) -> u64 {
        524_288u64 >> self.priority.min(63)
    }
}

/// One GPU model: one catalog file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuModel {
    /// Model name, unique across the catalog (`H100-80GB`).
    pub model: String,
    /// Free text for listings.
    pub description: Option<String>,
    /// The card's memory, when given; no type's limit may exceed it.
    pub framebuffer: Option<ByteSize>,
    /// Whether the bindings are illustrative and must be checked by the operator.
    pub example: bool,
    /// The file the model came from.
    pub source: PathBuf,
    /// Its types, in file order.
    pub types: Vec<VgpuType>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(share: Option<f64>, max_instances: u32, priority: u8) -> VgpuType {
        VgpuType {
            name: "t".into(),
            model: "m".into(),
            binding: Binding::TypeId("x-1".into()),
            memory_limit: ByteSize::gib(1),
            priority,
            share,
            max_instances,
            host_swap: false,
            description: None,
        }
    }

    #[test]
    fn share_defaults_to_one_over_max_instances() {
        assert!((ty(None, 4, 8).effective_share() - 0.25).abs() < 1e-12);
        assert!((ty(Some(0.1), 4, 8).effective_share() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn timeslice_follows_gvm_priority() {
        assert_eq!(ty(None, 1, 8).timeslice_us(), 2048);
        assert_eq!(ty(None, 1, 0).timeslice_us(), 524_288);
        assert_eq!(ty(None, 1, 16).timeslice_us(), 8);
    }

    #[test]
    fn bindings_match_and_display() {
        let id = Binding::TypeId("nvidia-558".into());
        let name = Binding::TypeName("NVIDIA H100-20C".into());
        assert!(id.matches("nvidia-558", None));
        assert!(!id.matches("nvidia-559", Some("NVIDIA H100-20C")));
        assert!(name.matches("nvidia-1", Some("NVIDIA H100-20C\n")));
        assert!(!name.matches("nvidia-1", None));
        assert_eq!(id.to_string(), "type id nvidia-558");
        assert_eq!(name.to_string(), "name \"NVIDIA H100-20C\"");
    }
}
