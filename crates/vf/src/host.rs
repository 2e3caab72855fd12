//! [`VfHost`]: the PF/VF sysfs tree of one host, read and written through its root.
//!
//! Reading walks `/sys/bus/pci/devices` for functions with `sriov_numvfs` (PFs; not those whose
//! `vendor` is another vendor's, such as SR-IOV network cards), their
//! `virtfnN` links and each VF's `nvidia/` files. Writing is `sriov_numvfs` and
//! `current_vgpu_type`; each write's errno becomes an [`Error`] that names the VF and the fix.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use gvm_host_root::HostRoot;

use crate::error::{map_type_write_error, Error, Result};
use crate::model::{Pf, Vf, VfState, VgpuType};
use crate::parse::{parse_creatable, parse_current, valid_pci_address};

/// NVIDIA's PCI vendor ID as sysfs writes it.
const NVIDIA_VENDOR: &str = "0x10de";

/// The most VFs read per PF (NVIDIA GPUs offer at most a few dozen).
const MAX_VFS: u32 = 256;

/// The VF vGPU tree of a host (the real one, a temp tree, or the simulated host).
#[derive(Debug, Clone)]
pub struct VfHost {
    host: HostRoot,
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn opt_u32(s: Option<String>) -> Option<u32> {
    s.and_then(|s| s.parse().ok())
}

fn write_attr(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // O_TRUNC is ignored by sysfs; it keeps plain-file fixtures exact.
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(bytes)
}

impl VfHost {
    /// A client for the VF tree under `host`.
    pub fn new(host: HostRoot) -> Self {
        VfHost { host }
    }

    /// The host root.
    pub fn host(&self) -> &HostRoot {
        &self.host
    }

    fn dev(&self, addr: &str) -> PathBuf {
        self.host.pci_devices_dir().join(addr)
    }

    fn check(what: &'static str, addr: &str) -> Result<()> {
        if valid_pci_address(addr) {
            Ok(())
        } else {
            Err(Error::InvalidAddress {
                what,
                value: addr.to_string(),
            })
        }
    }

    /// Every SR-IOV PF with its VFs, sorted by address; empty when there is none.
    pub fn pfs(&self) -> Result<Vec<Pf>> {
        self.pf_addresses()?.iter().map(|a| self.pf(a)).collect()
    }

    /// The PCI addresses of the SR-IOV GPUs (PFs), sorted, without reading their VFs: what
    /// a periodic scan needs to name the host's GPUs.
    pub fn pf_addresses(&self) -> Result<Vec<String>> {
        let dir = self.host.pci_devices_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Read { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| valid_pci_address(n))
            .collect();
        names.sort();
        let mut pfs = Vec::new();
        for n in names {
            if self.dev(&n).join("sriov_numvfs").exists() && self.maybe_nvidia(&n)? {
                pfs.push(n);
            }
        }
        Ok(pfs)
    }

    /// Whether function `addr` may be an NVIDIA GPU: its PCI `vendor` is NVIDIA's (0x10de),
    /// or it has no `vendor` file (test trees, the simulated host). Other SR-IOV functions
    /// (network cards) are not vGPU parents.
    fn maybe_nvidia(&self, addr: &str) -> Result<bool> {
        Ok(read_opt(&self.dev(addr).join("vendor"))?
            .is_none_or(|v| v.eq_ignore_ascii_case(NVIDIA_VENDOR)))
    }

    /// One PF by address; [`Error::PfNotFound`] suggests the closest one.
    pub fn pf(&self, addr: &str) -> Result<Pf> {
        Self::check("PF", addr)?;
        let p = self.dev(addr);
        let Some(num) = read_opt(&p.join("sriov_numvfs"))? else {
            let all: Vec<String> = self.pfs_names()?;
            return Err(Error::PfNotFound {
                pf: addr.to_string(),
                suggestion: gvm_mdev::suggest(addr, all.iter().map(String::as_str)),
            });
        };
        let num_vfs = parse_current(&num).map_err(|detail| Error::Parse {
            path: p.join("sriov_numvfs"),
            detail,
        })?;
        let total_vfs = opt_u32(read_opt(&p.join("sriov_totalvfs"))?);
        let mut vfs = Vec::new();
        for index in 0..num_vfs.min(MAX_VFS) {
            let link = p.join(format!("virtfn{index}"));
            let target = match fs::read_link(&link) {
                Ok(t) => t,
                // Disabled between reading sriov_numvfs and the link.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(Error::Read { path: link, source }),
            };
            let address = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !valid_pci_address(&address) {
                return Err(Error::Parse {
                    path: link,
                    detail: format!("links to {target:?}, not a PCI function"),
                });
            }
            let state = self.vf_state_opt(&address)?;
            vfs.push(Vf {
                index,
                address,
                state,
            });
        }
        Ok(Pf {
            address: addr.to_string(),
            num_vfs,
            total_vfs,
            vfs,
        })
    }

    fn pfs_names(&self) -> Result<Vec<String>> {
        Ok(self.pfs()?.into_iter().map(|p| p.address).collect())
    }

    fn vf_state_opt(&self, vf: &str) -> Result<Option<VfState>> {
        let n = self.dev(vf).join("nvidia");
        let Some(cur) = read_opt(&n.join("current_vgpu_type"))? else {
            return Ok(None);
        };
        let current = parse_current(&cur).map_err(|detail| Error::Parse {
            path: n.join("current_vgpu_type"),
            detail,
        })?;
        let creatable_text = read_opt(&n.join("creatable_vgpu_types"))?.unwrap_or_default();
        let creatable = parse_creatable(&creatable_text).map_err(|detail| Error::Parse {
            path: n.join("creatable_vgpu_types"),
            detail,
        })?;
        Ok(Some(VfState {
            current,
            creatable,
            placement_id: opt_u32(read_opt(&n.join("placement_id"))?),
            gpu_instance_id: opt_u32(read_opt(&n.join("gpu_instance_id"))?),
        }))
    }

    /// The vGPU state of one VF; [`Error::VfGone`] or [`Error::NoVgpuManager`] if it has none.
    pub fn vf_state(&self, vf: &str) -> Result<VfState> {
        Self::check("VF", vf)?;
        if !self.dev(vf).exists() {
            return Err(Error::VfGone {
                vf: vf.to_string(),
                errno: libc::ENOENT,
            });
        }
        self.vf_state_opt(vf)?
            .ok_or_else(|| Error::NoVgpuManager { vf: vf.to_string() })
    }

    /// The device nodes through which a process (QEMU) holds VF `vf`: its IOMMU group's
    /// `/dev/vfio/<N>` (the last component of `<VF>/iommu_group`) and, where the kernel gives
    /// it a VFIO cdev (`<VF>/vfio-dev/vfioX`), `/dev/vfio/devices/vfioX`, under the host root.
    /// [`Error::VfGone`] when the VF does not exist.
    pub fn vfio_nodes(&self, vf: &str) -> Result<Vec<PathBuf>> {
        Self::check("VF", vf)?;
        let dir = self.dev(vf);
        if !dir.exists() {
            return Err(Error::VfGone {
                vf: vf.to_string(),
                errno: libc::ENOENT,
            });
        }
        let mut nodes = Vec::new();
        let group_link = dir.join("iommu_group");
        match fs::read_link(&group_link) {
            Ok(target) => {
                let group = target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| Error::Parse {
                        path: group_link.clone(),
                        detail: format!("links to {target:?}, not an IOMMU group number"),
                    })?;
                nodes.push(self.host.path(format!("/dev/vfio/{group}")));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Read {
                    path: group_link,
                    source,
                })
            }
        }
        let cdevs = dir.join("vfio-dev");
        match fs::read_dir(&cdevs) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("vfio") && !n.contains('/'))
                    .collect();
                names.sort();
                for n in names {
                    nodes.push(self.host.path(format!("/dev/vfio/devices/{n}")));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Read {
                    path: cdevs,
                    source,
                })
            }
        }
        Ok(nodes)
    }

    /// Enable `n` VFs on `pf` (what `sriov-manage -e` does); a no-op if exactly `n` are.
    pub fn enable_vfs(&self, pf: &str, n: u32) -> Result<()> {
        let cur = self.pf(pf)?;
        if cur.num_vfs == n {
            return Ok(());
        }
        let path = self.dev(pf).join("sriov_numvfs");
        write_attr(&path, format!("{n}\n").as_bytes()).map_err(|e| match e.raw_os_error() {
            Some(errno) if errno == libc::EBUSY && n == 0 => Error::VfsInUse {
                pf: pf.to_string(),
                errno,
            },
            Some(errno) if errno == libc::EBUSY => Error::VfsAlreadyEnabled {
                pf: pf.to_string(),
                current: cur.num_vfs,
                errno,
            },
            Some(errno) if errno == libc::EACCES || errno == libc::EPERM => {
                Error::PermissionDenied {
                    path: path.clone(),
                    errno,
                }
            }
            _ => Error::Write {
                path: path.clone(),
                source: e,
            },
        })
    }

    /// Write `id` (0 removes) to the VF's `current_vgpu_type`, no pre-check.
    pub fn write_type(&self, vf: &str, id: u32) -> Result<()> {
        Self::check("VF", vf)?;
        let path = self.dev(vf).join("nvidia/current_vgpu_type");
        let bytes = format!("{id}\n");
        write_attr(&path, bytes.as_bytes())
            .map_err(|e| map_type_write_error(e, vf, &path, bytes.as_bytes()))
    }

    /// Pick a VF that can take the type `wanted` (by name) and set it.
    ///
    /// Looks at the PF given, or every PF in address order; takes the first VF with no vGPU
    /// whose creatable list has the type, skipping VFs in `reserved` (VFs on record for another
    /// vGPU that is not live now). Returns (PF, VF, type).
    pub fn create(
        &self,
        pf: Option<&str>,
        wanted: &str,
        reserved: &[String],
    ) -> Result<(String, String, VgpuType)> {
        let pfs = match pf {
            Some(p) => vec![self.pf(p)?],
            None => self.pfs()?,
        };
        let mut creatable: Vec<String> = Vec::new();
        for p in &pfs {
            let mut offered = false;
            for vf in &p.vfs {
                let Some(st) = &vf.state else { continue };
                for t in &st.creatable {
                    if !creatable.contains(&t.name) {
                        creatable.push(t.name.clone());
                    }
                }
                let Some(t) = st.creatable.iter().find(|t| t.matches(wanted)) else {
                    continue;
                };
                offered = true;
                if st.current != 0 || reserved.contains(&vf.address) {
                    continue;
                }
                self.write_type(&vf.address, t.id)?;
                return Ok((p.address.clone(), vf.address.clone(), t.clone()));
            }
            if offered && pf.is_some() {
                return Err(Error::NoFreeVf {
                    pf: p.address.clone(),
                    wanted: wanted.to_string(),
                });
            }
        }
        Err(Error::TypeNotCreatable {
            pf: pf.unwrap_or("any GPU").to_string(),
            wanted: wanted.to_string(),
            creatable,
        })
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
