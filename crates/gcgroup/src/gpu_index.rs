//! GVM's numbering of physical GPUs: the `<gpu>` of `processes/<pid>/<gpu>/`.
//!
//! GVM's UVM module numbers GPUs `0, 8, 16, …` in probe order. An mdev parent whose driver
//! knows its index says so in a `gvm_uvm_index` file beside its `mdev_supported_types`;
//! without one, the index is 8 × the parent's position among the host's PCI parents sorted
//! by address (the probe order of PCI devices). Pure functions, plus
//! [`gvm_gpu_of_pci`], which reads those files under a host root.

use std::fs;

use gvm_host_root::HostRoot;

/// Whether `name` is a PCI address (`dddd:bb:dd.f`, hex digits).
pub fn is_pci_address(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b':',
            10 => *c == b'.',
            _ => c.is_ascii_hexdigit(),
        })
}

/// GVM's index of `parent` when the parent does not say: 8 × its position among the sorted
/// PCI parents in `parents`. `None` when `parent` is not a PCI address among them.
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

/// The GVM GPU index of the physical GPU at PCI address `pci` (lower case) on `host`: its
/// mdev parent's `gvm_uvm_index`, else [`fallback_gpu_index`]. `None` when no mdev parent
/// has that address.
pub fn gvm_gpu_of_pci(host: &HostRoot, pci: &str) -> Option<u32> {
    let bus = host.mdev_bus_dir();
    let parents: Vec<String> = fs::read_dir(&bus)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_ascii_lowercase())
        .collect();
    if !parents.iter().any(|p| p == pci) {
        return None;
    }
    fs::read_to_string(bus.join(pci).join("gvm_uvm_index"))
        .ok()
        .and_then(|t| parse_gpu_index(&t))
        .or_else(|| fallback_gpu_index(pci, &parents))
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
    fn a_pci_gpu_maps_through_its_mdev_parent() {
        let Ok(d) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        let host = HostRoot::new(d.path());
        let bus = host.mdev_bus_dir();
        for p in ["0000:1a:00.0", "0000:3c:00.0"] {
            assert!(fs::create_dir_all(bus.join(p)).is_ok());
        }
        assert_eq!(gvm_gpu_of_pci(&host, "0000:3c:00.0"), Some(8));
        assert!(fs::write(bus.join("0000:3c:00.0/gvm_uvm_index"), "24\n").is_ok());
        assert_eq!(gvm_gpu_of_pci(&host, "0000:3c:00.0"), Some(24));
        assert_eq!(gvm_gpu_of_pci(&host, "0000:99:00.0"), None);
    }
}
