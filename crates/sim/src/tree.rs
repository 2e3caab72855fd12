//! The file layout of the simulated host, computed from [`SimHost`] on demand.
//!
//! The tree is never stored: listing a directory, reading an attribute or
//! storing to one resolves the path against the host's current state, so a
//! created device, a removed one or an owner that registered its GPU shows up
//! (or disappears) at once, as in sysfs. Paths are relative to the simulated
//! root DIR and given as segments (`["sys", "class", "mdev_bus"]`).
//!
//! Layout (gvm-sim model; mtty puts its parent at `sys/devices/virtual/mtty/mtty`):
//!
//! ```text
//! sys/devices/pci0000:00/<addr>/{gvm_uvm_index, mdev_supported_types/<type>/{name,description,
//!     device_api,available_instances,create,devices/<uuid>@}, <uuid>/{remove,mdev_type@,iommu_group@}}
//! sys/class/mdev_bus/<addr>@          sys/bus/mdev/devices/<uuid>@
//! sys/kernel/iommu_groups/<n>/devices/<uuid>@
//! sys/kernel/debug/nvidia-uvm/processes/{list, <pid>/<gpu>/{memory.limit, …}}
//! sys/kernel/debug/gvm-sim/{control, owners}   (the simulator's own controls, beside GVM's debugfs)
//! sys/bus/pci/devices/<PF>/{sriov_numvfs, sriov_totalvfs, virtfnN@}   (with --sriov-gpus N)
//! sys/bus/pci/devices/<VF>/{physfn@, nvidia/{creatable_vgpu_types, current_vgpu_type,
//!     vgpu_params, gpu_instance_id, placement_id}}
//! ```
//!
//! The SR-IOV PFs and VFs are directories of `sys/bus/pci/devices` itself, where the kernel
//! has links into `sys/devices/pci…/`; the links between them (`virtfnN`, `physfn`) are
//! relative to that directory, so the clients see the same paths either way.
//!
//! Symlinks are relative, like the kernel's, so they resolve inside a bind mount
//! of `DIR/sys` over `/sys`.

use crate::error::FsError;
use crate::host::{Removal, SimHost};
use crate::vf::{SriovGpus, TOTAL_VFS};

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// An attribute file with these permission bits.
    File {
        /// Permission bits (`0o444`, `0o200`, `0o644`).
        mode: u16,
    },
    /// A symbolic link with this (relative) target.
    Link(String),
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
}

const RO: Kind = Kind::File { mode: 0o444 };
const WO: Kind = Kind::File { mode: 0o200 };
const RW: Kind = Kind::File { mode: 0o644 };
const GVM: [&str; 4] = ["sys", "kernel", "debug", "nvidia-uvm"];

/// The simulator's own control directory, beside GVM's debugfs tree.
pub const SIM_CONTROL_DIR: [&str; 4] = ["sys", "kernel", "debug", "gvm-sim"];
const GVM_KNOBS: [(&str, Kind); 6] = [
    ("memory.limit", RW),
    ("memory.current", RO),
    ("memory.swap.current", RO),
    ("compute.priority", RW),
    ("compute.freeze", RW),
    ("gcgroup.stat", RO),
];
const TYPE_ATTRS: [&str; 4] = ["name", "description", "device_api", "available_instances"];
const PCI_DEVICES: [&str; 4] = ["sys", "bus", "pci", "devices"];
/// The files of a VF's `nvidia/` directory (docs/vendor-vfio.md).
const VF_NVIDIA: [(&str, Kind); 5] = [
    ("creatable_vgpu_types", RO),
    ("current_vgpu_type", RW),
    ("vgpu_params", RW),
    ("gpu_instance_id", RW),
    ("placement_id", RW),
];

fn e(name: impl Into<String>, kind: Kind) -> Entry {
    Entry {
        name: name.into(),
        kind,
    }
}

fn dir(name: impl Into<String>) -> Entry {
    e(name, Kind::Dir)
}

fn up(n: usize) -> String {
    "../".repeat(n)
}

/// Split `segs` into (parent index, rest) when it lies inside a parent's device dir.
fn in_parent<'a, 'b>(host: &SimHost, segs: &'a [&'b str]) -> Option<(usize, &'a [&'b str])> {
    host.parents().iter().enumerate().find_map(|(i, p)| {
        if !host.is_registered(i) {
            return None;
        }
        let n = p.dir.len();
        (segs.len() >= n && p.dir.iter().zip(segs).all(|(a, b)| a == b)).then(|| (i, &segs[n..]))
    })
}

/// The device directory of a live device, relative to `sys/` (no leading `sys/`).
fn device_dir_in_sys(host: &SimHost, uuid: &str) -> Option<String> {
    let d = host.devices().get(uuid)?;
    let p = host.parents().get(d.parent)?;
    Some(format!("{}/{uuid}", p.dir[1..].join("/")))
}

/// The entries of the directory at `segs`, or `NotFound` if it is not a directory.
pub fn list(host: &SimHost, segs: &[&str]) -> Result<Vec<Entry>, FsError> {
    let nf = || FsError::not_found(&segs.join("/"));
    if let Some((pi, rest)) = in_parent(host, segs) {
        return list_in_parent(host, pi, rest).ok_or_else(nf);
    }
    let devs = host.devices();
    let entries = match segs {
        [] => vec![dir("sys")],
        [.., "debug", "gvm-sim"] if segs == SIM_CONTROL_DIR => {
            vec![e("control", WO), e("owners", RO)]
        }
        ["sys"] => vec![dir("bus"), dir("class"), dir("devices"), dir("kernel")],
        ["sys", "bus"] if host.sriov().is_empty() => vec![dir("mdev")],
        ["sys", "bus"] => vec![dir("mdev"), dir("pci")],
        ["sys", "bus", "pci"] if !host.sriov().is_empty() => vec![dir("devices")],
        [a, b, c, d, rest @ ..] if [*a, *b, *c, *d] == PCI_DEVICES && !host.sriov().is_empty() => {
            list_pci(host.sriov(), rest).ok_or_else(nf)?
        }
        ["sys", "bus", "mdev"] => vec![dir("devices"), dir("drivers")],
        ["sys", "bus", "mdev", "drivers"] => vec![],
        ["sys", "bus", "mdev", "devices"] => devs
            .iter()
            .filter(|(_, d)| !d.removing)
            .filter_map(|(u, _)| {
                Some(e(
                    u,
                    Kind::Link(format!("{}{}", up(3), device_dir_in_sys(host, u)?)),
                ))
            })
            .collect(),
        ["sys", "class"] => vec![dir("mdev_bus")],
        ["sys", "class", "mdev_bus"] => host
            .parents()
            .iter()
            .enumerate()
            .filter(|(i, _)| host.is_registered(*i))
            .map(|(_, p)| {
                e(
                    &p.name,
                    Kind::Link(format!("{}{}", up(2), p.dir[1..].join("/"))),
                )
            })
            .collect(),
        ["sys", "kernel"] => vec![dir("debug"), dir("iommu_groups")],
        ["sys", "kernel", "iommu_groups"] => devs
            .values()
            .map(|d| dir(d.iommu_group.to_string()))
            .collect(),
        ["sys", "kernel", "iommu_groups", n] => {
            group_device(host, n).ok_or_else(nf)?;
            vec![dir("devices")]
        }
        ["sys", "kernel", "iommu_groups", n, "devices"] => {
            let uuid = group_device(host, n).ok_or_else(nf)?;
            let target = device_dir_in_sys(host, &uuid).ok_or_else(nf)?;
            vec![e(uuid, Kind::Link(format!("{}{target}", up(4))))]
        }
        ["sys", "kernel", "debug"] => vec![dir("gvm-sim"), dir("nvidia-uvm")],
        ["sys", "kernel", "debug", "nvidia-uvm"] => vec![dir("processes")],
        [a, b, c, d, "processes", rest @ ..] if [*a, *b, *c, *d] == GVM => match rest {
            [] => {
                let mut v = vec![e("list", RO)];
                v.extend(host.registered_pids().iter().map(|p| dir(p.to_string())));
                v
            }
            [pid] => {
                let pid = pid.parse().map_err(|_| nf())?;
                let gpu = host
                    .owners()
                    .get(&pid)
                    .map(|o| o.client.gpu)
                    .ok_or_else(nf)?;
                host.client(pid, gpu).ok_or_else(nf)?;
                vec![dir(gpu.to_string())]
            }
            [pid, gpu] => {
                client_of(host, pid, gpu).ok_or_else(nf)?;
                GVM_KNOBS.iter().map(|(n, k)| e(*n, k.clone())).collect()
            }
            _ => return Err(nf()),
        },
        _ => {
            // Intermediate directories on the way to the parents (sys/devices/pci0000:00, …).
            let mut names: Vec<String> = host
                .parents()
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    host.is_registered(*i)
                        && p.dir.len() > segs.len()
                        && p.dir.iter().zip(segs).all(|(a, b)| a == b)
                })
                .map(|(_, p)| p.dir[segs.len()].clone())
                .collect();
            if names.is_empty() {
                return Err(nf());
            }
            names.dedup();
            names.into_iter().map(dir).collect()
        }
    };
    Ok(entries)
}

/// The entries under `sys/bus/pci/devices/` (`rest` below it): the SR-IOV PFs and their
/// enabled VFs.
fn list_pci(sriov: &SriovGpus, rest: &[&str]) -> Option<Vec<Entry>> {
    let v = match rest {
        [] => sriov
            .gpus()
            .iter()
            .flat_map(|g| {
                std::iter::once(g.address()).chain((0..g.vfs.len()).map(|i| g.vf_address(i)))
            })
            .map(dir)
            .collect(),
        [dev] => {
            if let Some(g) = sriov.pf(dev).map(|i| &sriov.gpus()[i]) {
                let mut v = vec![e("sriov_numvfs", RW), e("sriov_totalvfs", RO)];
                v.extend((0..g.vfs.len()).map(|i| {
                    e(
                        format!("virtfn{i}"),
                        Kind::Link(format!("../{}", g.vf_address(i))),
                    )
                }));
                v
            } else {
                let (g, _) = sriov.vf(dev)?;
                vec![
                    e(
                        "physfn",
                        Kind::Link(format!("../{}", sriov.gpus()[g].address())),
                    ),
                    dir("nvidia"),
                ]
            }
        }
        [dev, "nvidia"] => {
            sriov.vf(dev)?;
            VF_NVIDIA.iter().map(|(n, k)| e(*n, k.clone())).collect()
        }
        _ => return None,
    };
    Some(v)
}

/// The contents of an attribute under `sys/bus/pci/devices/` (`rest` below it).
fn read_pci(sriov: &SriovGpus, rest: &[&str]) -> Option<String> {
    let text = match rest {
        [pf, "sriov_numvfs"] => format!("{}\n", sriov.gpus()[sriov.pf(pf)?].vfs.len()),
        [pf, "sriov_totalvfs"] => {
            sriov.pf(pf)?;
            format!("{TOTAL_VFS}\n")
        }
        [vf, "nvidia", file] => {
            let (g, i) = sriov.vf(vf)?;
            match *file {
                "creatable_vgpu_types" => sriov.creatable_text(g, i),
                "current_vgpu_type" => format!("{}\n", sriov.current_type(g, i)),
                "vgpu_params" => sriov.params_text(g, i),
                "placement_id" => sriov.placement_text(g, i),
                // No MIG on the simulated GPUs: no GPU instance (**ours**: an empty line).
                "gpu_instance_id" => "\n".to_string(),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(text)
}

/// One store to an attribute under `sys/bus/pci/devices/` (`rest` below it).
fn write_pci(sriov: &mut SriovGpus, path: &str, rest: &[&str], data: &[u8]) -> Result<(), FsError> {
    let nf = || FsError::not_found(path);
    match rest {
        [pf, "sriov_numvfs"] => {
            let g = sriov.pf(pf).ok_or_else(nf)?;
            sriov.set_num_vfs(path, g, data)
        }
        [vf, "nvidia", file] => {
            let (g, i) = sriov.vf(vf).ok_or_else(nf)?;
            match *file {
                "current_vgpu_type" => sriov.set_type(path, g, i, data),
                "placement_id" => sriov.set_placement(path, g, i, data),
                "vgpu_params" => sriov.set_params(path, g, i, data),
                // A MIG-backed vGPU names its GPU instance here; the simulated GPUs have no
                // MIG mode, so every write is refused (**ours**).
                "gpu_instance_id" => Err(FsError::invalid(
                    path,
                    "the simulated GPU is not in MIG mode: it has no GPU instances",
                )),
                _ => Err(nf()),
            }
        }
        _ => Err(nf()),
    }
}

fn group_device(host: &SimHost, n: &str) -> Option<String> {
    let n: u32 = n.parse().ok()?;
    host.devices()
        .iter()
        .find(|(_, d)| d.iommu_group == n)
        .map(|(u, _)| u.clone())
}

fn client_of<'h>(
    host: &'h SimHost,
    pid: &str,
    gpu: &str,
) -> Option<&'h crate::workload::GpuClient> {
    host.client(pid.parse().ok()?, gpu.parse().ok()?)
}

fn list_in_parent(host: &SimHost, pi: usize, rest: &[&str]) -> Option<Vec<Entry>> {
    let p = host.parents().get(pi)?;
    let v = match rest {
        [] => {
            let mut v = vec![dir("mdev_supported_types")];
            if p.uvm_index.is_some() {
                v.push(e("gvm_uvm_index", RO));
            }
            v.extend(
                host.devices()
                    .iter()
                    .filter(|(_, d)| d.parent == pi)
                    .map(|(u, _)| dir(u)),
            );
            v
        }
        ["mdev_supported_types"] => p.types.iter().map(|t| dir(t.id)).collect(),
        ["mdev_supported_types", t] => {
            let spec = p.type_spec(t)?;
            let mut v: Vec<Entry> = TYPE_ATTRS
                .iter()
                .filter(|a| **a != "description" || spec.has_description)
                .map(|a| e(*a, RO))
                .collect();
            v.push(e("create", WO));
            v.push(dir("devices"));
            v
        }
        ["mdev_supported_types", t, "devices"] => {
            p.type_spec(t)?;
            host.devices_of_type(pi, t)
                .into_iter()
                .map(|u| e(u, Kind::Link(format!("{}{u}", up(3)))))
                .collect()
        }
        [uuid] => {
            let d = host.devices().get(*uuid).filter(|d| d.parent == pi)?;
            let iommu_group = e(
                "iommu_group",
                Kind::Link(format!(
                    "{}kernel/iommu_groups/{}",
                    up(p.dir.len()),
                    d.iommu_group
                )),
            );
            if d.removing {
                // A held device being removed keeps only its directory and IOMMU group
                // (measured on 6.1: `remove` and `mdev_type` are gone while the write waits).
                return Some(vec![iommu_group]);
            }
            vec![
                e("remove", WO),
                e(
                    "mdev_type",
                    Kind::Link(format!("../mdev_supported_types/{}", d.type_id)),
                ),
                iommu_group,
            ]
        }
        _ => return None,
    };
    Some(v)
}

/// Whether `segs` is one of the directories that exist for the whole life of the mount
/// and never change kind (`sys/kernel/debug/nvidia-uvm/processes`, `sys/bus/mdev/devices`,
/// …). Their entries may be cached by the kernel; everything else may appear or vanish.
pub fn is_fixed_dir(segs: &[&str]) -> bool {
    const FIXED: [&[&str]; 14] = [
        &["sys"],
        &["sys", "bus"],
        &["sys", "bus", "mdev"],
        &["sys", "bus", "mdev", "devices"],
        &["sys", "bus", "mdev", "drivers"],
        &["sys", "class"],
        &["sys", "class", "mdev_bus"],
        &["sys", "devices"],
        &["sys", "kernel"],
        &["sys", "kernel", "iommu_groups"],
        &["sys", "kernel", "debug"],
        &SIM_CONTROL_DIR,
        &GVM,
        &["sys", "kernel", "debug", "nvidia-uvm", "processes"],
    ];
    FIXED.contains(&segs)
}

/// What `segs` names, or `NotFound`.
///
/// The hot paths (a gcgroup directory or knob, a device link, a device directory) are
/// answered directly in O(log n); everything else lists the parent directory and looks
/// the name up, which is the definition the direct answers must agree with.
pub fn stat(host: &SimHost, segs: &[&str]) -> Result<Kind, FsError> {
    if let Some(found) = stat_direct(host, segs) {
        return found.ok_or_else(|| FsError::not_found(&segs.join("/")));
    }
    stat_by_listing(host, segs)
}

/// `word` as a number, only in the canonical decimal form a listing would show.
fn number(word: &str) -> Option<u32> {
    word.parse::<u32>().ok().filter(|n| n.to_string() == word)
}

/// The direct answer for the paths that scale with the number of devices and owners:
/// `Some(Some(kind))` found, `Some(None)` absent, `None` when not such a path.
fn stat_direct(host: &SimHost, segs: &[&str]) -> Option<Option<Kind>> {
    if let [a, b, c, d, "processes", rest @ ..] = segs {
        if [*a, *b, *c, *d] != GVM {
            return None;
        }
        let registered = |pid: &str, gpu: Option<&str>| -> bool {
            let Some(pid) = number(pid) else { return false };
            let Some(owner) = host.owners().get(&pid) else {
                return false;
            };
            let gpu = match gpu {
                Some(g) => match number(g) {
                    Some(g) => g,
                    None => return false,
                },
                None => owner.client.gpu,
            };
            host.client(pid, gpu).is_some()
        };
        return match rest {
            [pid] if *pid != "list" => Some(registered(pid, None).then_some(Kind::Dir)),
            [pid, gpu] => Some(registered(pid, Some(gpu)).then_some(Kind::Dir)),
            [pid, gpu, knob] => Some(
                registered(pid, Some(gpu))
                    .then(|| GVM_KNOBS.iter().find(|(n, _)| n == knob))
                    .flatten()
                    .map(|(_, k)| k.clone()),
            ),
            _ => None,
        };
    }
    if let ["sys", "bus", "mdev", "devices", uuid] = segs {
        return Some(
            host.live_device(uuid)
                .and_then(|_| device_dir_in_sys(host, uuid))
                .map(|t| Kind::Link(format!("{}{t}", up(3)))),
        );
    }
    if let Some((pi, [uuid])) = in_parent(host, segs) {
        // Only a device directory is answered here; the parent's other entries are few.
        return host
            .devices()
            .get(*uuid)
            .filter(|d| d.parent == pi)
            .map(|_| Some(Kind::Dir));
    }
    None
}

fn stat_by_listing(host: &SimHost, segs: &[&str]) -> Result<Kind, FsError> {
    let Some((name, parent)) = segs.split_last() else {
        return Ok(Kind::Dir);
    };
    list(host, parent)?
        .into_iter()
        .find(|en| en.name == *name)
        .map(|en| en.kind)
        .ok_or_else(|| FsError::not_found(&segs.join("/")))
}

/// Check that the file at `segs` may be opened for reading and/or writing
/// (kernfs refuses with `EACCES` when the attribute has no show/store).
pub fn check_open(host: &SimHost, segs: &[&str], read: bool, write: bool) -> Result<Kind, FsError> {
    let kind = stat(host, segs)?;
    if let Kind::File { mode } = kind {
        let path = segs.join("/");
        if read && mode & 0o444 == 0 {
            return Err(FsError::Access {
                path,
                what: "write-only",
            });
        }
        if write && mode & 0o222 == 0 {
            return Err(FsError::Access {
                path,
                what: "read-only",
            });
        }
    }
    Ok(kind)
}

/// The contents of the attribute at `segs` (`value\n`).
pub fn read(host: &SimHost, segs: &[&str]) -> Result<Vec<u8>, FsError> {
    check_open(host, segs, true, false)?;
    let path = segs.join("/");
    let nf = || FsError::not_found(&path);
    let text = if let Some((pi, rest)) = in_parent(host, segs) {
        let p = host.parents().get(pi).ok_or_else(nf)?;
        match rest {
            ["gvm_uvm_index"] => format!("{}\n", p.uvm_index.ok_or_else(nf)?),
            ["mdev_supported_types", t, attr] => {
                let spec = p.type_spec(t).ok_or_else(nf)?;
                match *attr {
                    "name" => format!("{}\n", spec.name),
                    "description" => format!("{}\n", spec.description()),
                    "device_api" => "vfio-pci\n".to_string(),
                    "available_instances" => format!("{}\n", host.available(pi, t)),
                    _ => return Err(nf()),
                }
            }
            _ => return Err(nf()),
        }
    } else {
        match segs {
            ["sys", "kernel", "debug", "gvm-sim", "owners"] => host.owners_text(),
            [a, b, c, d, rest @ ..] if [*a, *b, *c, *d] == PCI_DEVICES => {
                read_pci(host.sriov(), rest).ok_or_else(nf)?
            }
            [a, b, c, d, "processes", "list"] if [*a, *b, *c, *d] == GVM => {
                let mut s = String::from("PID\n");
                for pid in host.registered_pids() {
                    s.push_str(&format!("{pid}\n"));
                }
                s
            }
            [a, b, c, d, "processes", pid, gpu, knob] if [*a, *b, *c, *d] == GVM => {
                let cl = client_of(host, pid, gpu).ok_or_else(nf)?;
                match *knob {
                    "memory.limit" => format!("{}\n", cl.memory_limit),
                    "memory.current" => format!("{}\n", cl.memory_current()),
                    "memory.swap.current" => format!("{}\n", cl.memory_swap()),
                    "compute.priority" => format!("{}\n", cl.priority),
                    "compute.freeze" => format!("{}\n", u8::from(cl.frozen)),
                    "gcgroup.stat" => cl.stat(),
                    _ => return Err(nf()),
                }
            }
            _ => return Err(nf()),
        }
    };
    Ok(text.into_bytes())
}

/// What a store did, when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Done; the write returns now.
    Done,
    /// A `remove` of a held device: the write returns once the device is gone
    /// ([`SimHost::when_removed`] with this UUID).
    RemoveWaiting(String),
}

/// One store (one `write()` call) to the attribute at `segs`.
pub fn write(host: &mut SimHost, segs: &[&str], data: &[u8]) -> Result<Stored, FsError> {
    check_open(host, segs, false, true)?;
    let path = segs.join("/");
    if let Some((pi, rest)) = in_parent(host, segs) {
        return match rest {
            ["mdev_supported_types", t, "create"] => {
                host.create(&path, pi, t, data).map(|_| Stored::Done)
            }
            [uuid, "remove"] => match host.remove(&path, uuid, data)? {
                Removal::Done => Ok(Stored::Done),
                Removal::Waiting => Ok(Stored::RemoveWaiting((*uuid).to_string())),
            },
            _ => Err(FsError::not_found(&path)),
        };
    }
    match segs {
        ["sys", "kernel", "debug", "gvm-sim", "control"] => {
            host.control(&path, data).map(|()| Stored::Done)
        }
        [a, b, c, d, rest @ ..] if [*a, *b, *c, *d] == PCI_DEVICES => {
            write_pci(host.sriov_mut(), &path, rest, data).map(|()| Stored::Done)
        }
        [a, b, c, d, "processes", pid, gpu, knob] if [*a, *b, *c, *d] == GVM => {
            let pid = pid.parse().map_err(|_| FsError::not_found(&path))?;
            let gpu = gpu.parse().map_err(|_| FsError::not_found(&path))?;
            host.gvm_store(&path, pid, gpu, knob, data)
                .map(|()| Stored::Done)
        }
        _ => Err(FsError::not_found(&path)),
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
