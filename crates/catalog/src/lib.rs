//! The vGPU type catalog: which kernel mdev types gvm-vgpu knows, and the GVM limits each carries.
//!
//! A vendor driver (or the simulated host) registers *mdev types* under
//! `/sys/class/mdev_bus/<parent>/mdev_supported_types/<type-id>/`: the kernel knows how many
//! instances a type allows and, through the vendor, how much framebuffer it has. GVM's gcgroups
//! add what the kernel does not enforce — a per-process GPU memory limit, a compute priority, a
//! share of GPU time, and whether over-limit memory may spill to the host. The catalog binds the
//! two: `mdev-types/<GPU model>.toml`, one file per GPU model, each `[[type]]` naming a kernel type
//! (by type id, or by its `name` attribute since vendor type ids change between driver releases)
//! and the GVM attributes of every vGPU created with it.
//!
//! ```toml
//! [gpu]
//! model = "H100-80GB"                 # unique across the catalog
//! description = "NVIDIA H100 SXM5 80GB"
//! framebuffer = "80GiB"               # optional; no type may exceed it
//! example = true                      # optional: bindings are illustrative, operators edit them
//!
//! [[type]]
//! name = "H100-20C"                   # catalog name, unique across the catalog
//! mdev_name = "NVIDIA H100-20C"       # bind by the kernel `name` attribute ...
//! # mdev_type = "nvidia-558"          # ... or by type id (exactly one of the two)
//! memory_limit = "20GiB"
//! priority = 8                        # 0..=16, lower = higher priority
//! share = 0.25                        # optional, (0, 1]; default 1/max_instances
//! max_instances = 4
//! host_swap = false                   # required: may over-limit pages spill to host memory
//! description = "..."                 # optional
//! ```
//!
//! Unknown keys are errors, and every error in a file names the file, line, column and field.
//! [`Catalog::load_dirs`] reads directories in order so an operator's directory overrides shipped
//! models; [`Catalog::builtin`] holds the files shipped in this repository's `mdev-types/`.
//!
//! ```
//! use gvm_catalog::{ByteSize, Catalog};
//! let catalog = Catalog::builtin().expect("the shipped catalog is valid");
//! let t = catalog.resolve("gvmsim-3", Some("SIM-80GB-20C")).expect("bound");
//! assert_eq!(t.name, "sim-20c");
//! assert_eq!(t.memory_limit, ByteSize::gib(20));
//! assert_eq!(t.effective_share(), 0.25);
//! ```
//!
//! Modules:
//! - `bytesize`: byte quantities written the way operators write them (`20GiB`, `512M`);
//! - `catalog`: the whole catalog: every GPU model file found, checked together;
//! - `error`: unreadable files, invalid files (with the exact place), unknown types;
//! - `model`: GPU models, the vGPU types each offers, and how a type binds to a kernel mdev type;
//! - `parse`: reading one catalog file, TOML text to a validated GPU model with positions kept;
//! - [`placement`]: which parent and kernel mdev type a new vGPU of a catalog type goes on.

mod bytesize;
mod catalog;
mod error;
mod model;
mod parse;
pub mod placement;

pub use bytesize::{ByteSize, ParseByteSizeError, VALID_UNITS};
pub use catalog::{Catalog, CATALOG_ENV};
pub use error::{Error, Result};
pub use model::{Binding, GpuModel, VgpuType};
pub use parse::MAX_PRIORITY;

/// The catalog files shipped in the repository's `mdev-types/`, compiled in: `(file name, text)`.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    (
        "A100-40GB.toml",
        include_str!("../../../mdev-types/A100-40GB.toml"),
    ),
    (
        "A100-80GB.toml",
        include_str!("../../../mdev-types/A100-80GB.toml"),
    ),
    (
        "H100-80GB.toml",
        include_str!("../../../mdev-types/H100-80GB.toml"),
    ),
    (
        "H200-141GB.toml",
        include_str!("../../../mdev-types/H200-141GB.toml"),
    ),
    ("L40S.toml", include_str!("../../../mdev-types/L40S.toml")),
    (
        "gvm-sim.toml",
        include_str!("../../../mdev-types/gvm-sim.toml"),
    ),
    ("mtty.toml", include_str!("../../../mdev-types/mtty.toml")),
];

impl Catalog {
    /// The shipped catalog compiled into the binary (sources named `<builtin>/mdev-types/<file>`),
    /// for the simulated host and for hosts where the package's catalog is not installed.
    pub fn builtin() -> Result<Catalog> {
        let paths: Vec<std::path::PathBuf> = BUILTIN_FILES
            .iter()
            .map(|(name, _)| std::path::Path::new("<builtin>/mdev-types").join(name))
            .collect();
        Catalog::from_texts(
            paths
                .iter()
                .zip(BUILTIN_FILES)
                .map(|(p, (_, text))| (p.as_path(), *text)),
        )
    }
}

#[cfg(test)]
mod tests;
