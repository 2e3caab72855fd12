//! The names operators use for physical GPUs: their position in PCI order and their PCI
//! address.
//!
//! GVM numbers GPUs `0, 8, 16, …` ([`crate::gpu_index`]); that index is what the debugfs
//! tree and the daemon's engines are keyed by, but nobody types it. Operators count GPUs
//! like `nvidia-smi` does, `0..N-1` in PCI address order, or name one by its PCI address.
//! A [`HostGpus`] table is the host's PCI mdev parents sorted by address, each with its
//! position and, where known, its GVM index; [`HostGpus::resolve`] turns what an operator
//! typed (`1`, `0000:3C:00.0`, NVML's `00000000:3c:00.0`) into one of them, or says which
//! GPUs exist. Pure, apart from [`HostGpus::read`], which lists the parents under a host
//! root.

use std::fs;

use gvm_host_root::HostRoot;
use gvm_shim_abi::register::normalise_pci_bus_id;

use crate::gpu_index::{fallback_gpu_index, is_pci_address, parse_gpu_index};

/// One physical GPU as operators name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    /// Position in PCI address order, `0..N-1` (what `--gpu 1` means).
    pub position: u32,
    /// PCI address in sysfs form (`0000:3c:00.0`, lower case).
    pub pci: String,
    /// GVM's UVM index, when known.
    pub gvm_index: Option<u32>,
}

/// A `--gpu` that names no GPU of this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuNameError {
    /// No GPU has that position or address.
    #[error("no GPU '{arg}' on this host: give a position or a PCI address of one of: {known}")]
    Unknown {
        /// What was given.
        arg: String,
        /// The GPUs that exist, as `0 (0000:3b:00.0), 1 (0000:3c:00.0)`.
        known: String,
    },
    /// The host has no PCI GPU registered as an mdev parent.
    #[error(
        "no GPU '{arg}' on this host: no PCI GPU is registered as an mdev parent \
         (see `gvm-vgpu parents`)"
    )]
    NoGpus {
        /// What was given.
        arg: String,
    },
}

/// The host's GPUs in PCI order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGpus {
    gpus: Vec<HostGpu>,
}

impl HostGpus {
    /// The table of `parents` (mdev parent names, each with its GVM index when known):
    /// those that are PCI addresses, sorted, numbered from 0. Other parents (`mtty`) are
    /// not GPUs and are left out; a parent given twice counts once.
    pub fn new<'a>(parents: impl IntoIterator<Item = (&'a str, Option<u32>)>) -> HostGpus {
        let mut pci: Vec<(String, Option<u32>)> = parents
            .into_iter()
            .filter(|(p, _)| is_pci_address(p))
            .map(|(p, g)| (p.to_ascii_lowercase(), g))
            .collect();
        pci.sort();
        pci.dedup_by(|a, b| a.0 == b.0);
        let gpus = pci
            .into_iter()
            .zip(0u32..)
            .map(|((pci, gvm_index), position)| HostGpu {
                position,
                pci,
                gvm_index,
            })
            .collect();
        HostGpus { gpus }
    }

    /// The table of the mdev parents under `host`, each with its `gvm_uvm_index` file's
    /// index, else GVM's probe-order numbering. Empty when the bus cannot be listed.
    pub fn read(host: &HostRoot) -> HostGpus {
        let bus = host.mdev_bus_dir();
        let names: Vec<String> = fs::read_dir(&bus)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let indexed: Vec<(String, Option<u32>)> = names
            .iter()
            .map(|p| {
                let file = fs::read_to_string(bus.join(p).join("gvm_uvm_index")).ok();
                let gvm = file
                    .and_then(|t| parse_gpu_index(&t))
                    .or_else(|| fallback_gpu_index(p, &names));
                (p.clone(), gvm)
            })
            .collect();
        HostGpus::new(indexed.iter().map(|(p, g)| (p.as_str(), *g)))
    }

    /// Every GPU, in PCI order.
    pub fn all(&self) -> &[HostGpu] {
        &self.gpus
    }

    /// Whether the host has no PCI GPU.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// The GPU GVM numbers `gvm_index`.
    pub fn by_gvm_index(&self, gvm_index: u32) -> Option<&HostGpu> {
        self.gpus.iter().find(|g| g.gvm_index == Some(gvm_index))
    }

    /// The GPU at PCI address `pci` (any case, either domain form).
    pub fn by_pci(&self, pci: &str) -> Option<&HostGpu> {
        let pci = normalise_pci_bus_id(pci.trim())?;
        self.gpus.iter().find(|g| g.pci == pci)
    }

    /// The GPU an operator named: a position (`1`) or a PCI address (`0000:3c:00.0`,
    /// any case, also NVML's 8-digit domain `00000000:3c:00.0`).
    pub fn resolve(&self, arg: &str) -> Result<&HostGpu, GpuNameError> {
        let t = arg.trim();
        let found = match t.parse::<u32>() {
            Ok(pos) => self.gpus.iter().find(|g| g.position == pos),
            Err(_) => self.by_pci(t),
        };
        found.ok_or_else(|| {
            if self.gpus.is_empty() {
                GpuNameError::NoGpus { arg: arg.into() }
            } else {
                GpuNameError::Unknown {
                    arg: arg.into(),
                    known: self.names(),
                }
            }
        })
    }

    /// The GPUs as a message lists them: `0 (0000:3b:00.0), 1 (0000:3c:00.0)`.
    pub fn names(&self) -> String {
        self.gpus
            .iter()
            .map(|g| format!("{} ({})", g.position, g.pci))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HostGpus {
        HostGpus::new([
            ("0000:3c:00.0", Some(8)),
            ("mtty", None),
            ("0000:3B:00.0", Some(0)),
            ("0000:af:00.0", None),
        ])
    }

    #[test]
    fn gpus_are_numbered_in_pci_order_and_non_pci_parents_left_out() {
        let t = table();
        let rows: Vec<(u32, &str, Option<u32>)> = t
            .all()
            .iter()
            .map(|g| (g.position, g.pci.as_str(), g.gvm_index))
            .collect();
        assert_eq!(
            rows,
            [
                (0, "0000:3b:00.0", Some(0)),
                (1, "0000:3c:00.0", Some(8)),
                (2, "0000:af:00.0", None)
            ]
        );
        assert_eq!(t.by_gvm_index(8).map(|g| g.position), Some(1));
        assert_eq!(t.by_gvm_index(16), None);
    }

    #[test]
    fn a_gpu_is_named_by_position_or_by_pci_address_in_any_case_or_domain_form() {
        let t = table();
        for arg in [
            "1",
            " 1 ",
            "0000:3c:00.0",
            "0000:3C:00.0",
            "00000000:3c:00.0",
            "00000000:3C:00.0",
        ] {
            assert_eq!(
                t.resolve(arg).map(|g| g.pci.as_str()),
                Ok("0000:3c:00.0"),
                "{arg}"
            );
        }
    }

    #[test]
    fn an_unknown_gpu_is_refused_naming_the_gpus_that_exist() {
        let t = table();
        for arg in ["3", "8", "0000:99:00.0", "mtty", "gpu1", "-1"] {
            let Err(e) = t.resolve(arg) else {
                panic!("{arg} resolved");
            };
            let text = e.to_string();
            assert!(text.contains(&format!("'{arg}'")), "{text}");
            assert!(
                text.contains("0 (0000:3b:00.0), 1 (0000:3c:00.0), 2 (0000:af:00.0)"),
                "{text}"
            );
        }
        let none = HostGpus::new([("mtty", None)]);
        assert_eq!(
            none.resolve("0"),
            Err(GpuNameError::NoGpus { arg: "0".into() })
        );
    }

    #[test]
    fn the_table_of_a_host_root_reads_each_parents_gvm_index() {
        let Ok(d) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let host = HostRoot::new(d.path());
        let bus = host.mdev_bus_dir();
        for p in ["0000:1a:00.0", "0000:3c:00.0", "mtty"] {
            assert!(fs::create_dir_all(bus.join(p)).is_ok());
        }
        assert!(fs::write(bus.join("0000:3c:00.0/gvm_uvm_index"), "24\n").is_ok());
        let t = HostGpus::read(&host);
        assert_eq!(
            t.by_gvm_index(0).map(|g| g.pci.as_str()),
            Some("0000:1a:00.0")
        );
        assert_eq!(t.by_gvm_index(24).map(|g| g.position), Some(1));
        assert_eq!(t.all().len(), 2);
    }
}
