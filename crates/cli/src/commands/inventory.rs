//! `parents` and `types`: what the host's kernel offers, joined with the vGPU catalog: mdev
//! parents and their types, and SR-IOV GPUs (PFs) with the VF vGPU types their VFs offer.

use std::io::Write;

use anyhow::Result;
use gvm_catalog::{Catalog, VgpuType};
use gvm_mdev::{MdevType, Parent};
use gvm_proto::VgpuKind;
use gvm_vf::{Assignment, Pf};
use gvm_vgpu_host::{vf_offers, ParentKind};
use serde::Serialize;

use super::write_json;
use crate::context::Context;
use crate::table::Table;

/// `gvm-vgpu parents`: mdev parents, then SR-IOV GPUs (PFs).
pub fn parents(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let parents = ctx.mdev.parents()?;
    let pfs = ctx.vgpu.vf().pfs()?;
    let records = if pfs.is_empty() {
        Vec::new()
    } else {
        ctx.vgpu.records().list()?
    };
    if ctx.json {
        let catalog = ctx.catalog()?;
        let mut shaped: Vec<ParentJson> = parents
            .iter()
            .map(|p| ParentJson {
                name: p.name.clone(),
                kind: VgpuKind::Mdev,
                sysfs_path: p.sysfs_path.display().to_string(),
                device_path: p.device_path.display().to_string(),
                vfs_enabled: None,
                vfs_total: None,
                types: rows(&catalog, std::slice::from_ref(p), false),
            })
            .collect();
        for pf in &pfs {
            let path = pf_path(ctx, pf);
            shaped.push(ParentJson {
                name: pf.address.clone(),
                kind: VgpuKind::Vf,
                sysfs_path: path.clone(),
                device_path: path,
                vfs_enabled: Some(pf.num_vfs),
                vfs_total: pf.total_vfs,
                types: vf_rows(&catalog, std::slice::from_ref(pf), &records),
            });
        }
        return write_json(out, "parents", &shaped);
    }
    if parents.is_empty() && pfs.is_empty() {
        writeln!(
            out,
            "No mdev parent devices under {} and no SR-IOV GPUs under {}: load the GPU's vGPU driver (or start gvm-vgpu-sim).",
            ctx.host.mdev_bus_dir().display(),
            ctx.host.pci_devices_dir().display()
        )?;
        return Ok(());
    }
    let mut table = Table::new(&["PARENT", "KIND", "TYPES", "DEVICES", "VFS", "DEVICE PATH"]);
    for parent in &parents {
        let devices: usize = parent.types.iter().map(|t| t.devices.len()).sum();
        table.row(vec![
            parent.name.clone(),
            "mdev".into(),
            parent.types.len().to_string(),
            devices.to_string(),
            "-".into(),
            parent.device_path.display().to_string(),
        ]);
    }
    for pf in &pfs {
        let offers = vf_offers(std::slice::from_ref(pf), &records);
        let vgpus: usize = offers.iter().map(|o| o.vgpus.len()).sum();
        table.row(vec![
            pf.address.clone(),
            "vf".into(),
            offers.len().to_string(),
            vgpus.to_string(),
            format!(
                "{}/{}",
                pf.num_vfs,
                pf.total_vfs.map_or("?".to_string(), |t| t.to_string())
            ),
            pf_path(ctx, pf),
        ]);
    }
    table.write(out)?;
    Ok(())
}

fn pf_path(ctx: &Context, pf: &Pf) -> String {
    ctx.host
        .pci_devices_dir()
        .join(&pf.address)
        .display()
        .to_string()
}

/// An mdev parent or an SR-IOV GPU (a GPU that can host vGPUs) as `parents --json` shows it.
#[derive(Debug, Serialize)]
pub struct ParentJson {
    /// The parent's name: a PCI address such as `0000:3b:00.0`, or `mtty`.
    pub name: String,
    /// `mdev`: an mdev parent; `vf`: an SR-IOV GPU whose VFs carry vGPUs.
    pub kind: VgpuKind,
    /// `/sys/class/mdev_bus/<name>` (a PF: `/sys/bus/pci/devices/<PF>`) under the host root.
    pub sysfs_path: String,
    /// The device directory the class entry links to.
    pub device_path: String,
    /// A PF's enabled VFs (`sriov_numvfs`); `null` for an mdev parent.
    pub vfs_enabled: Option<u32>,
    /// A PF's most VFs (`sriov_totalvfs`); `null` for an mdev parent or when unknown.
    pub vfs_total: Option<u32>,
    /// Its kernel types, as `types` shows them.
    pub types: Vec<TypeRow>,
}

/// One row of `gvm-vgpu types`: a kernel type on a parent and the catalog type bound to it.
#[derive(Debug, Serialize)]
pub struct TypeRow {
    /// Parent device (a VF type: the PF), or None for a catalog type no parent offers.
    pub parent: Option<String>,
    /// `mdev` or `vf`; `null` for a catalog type no parent offers.
    pub kind: Option<VgpuKind>,
    /// Kernel type id (`<driver>-<name>`; a VF type: its ID in decimal), None for a catalog
    /// type no parent offers.
    pub mdev_type: Option<String>,
    /// The kernel's `name` attribute.
    pub kernel_name: Option<String>,
    /// The kernel's `device_api` attribute.
    pub device_api: Option<String>,
    /// Free instances as the kernel reports them (a VF type: the free VFs that list it, at
    /// most that many more can be created).
    pub available_instances: u32,
    /// UUIDs of the devices of this type on this parent.
    pub devices: Vec<uuid::Uuid>,
    /// VFs carrying this type that no gvm-vgpu record names (set by another tool).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrecorded_vfs: Vec<String>,
    /// The catalog type bound to this kernel type, if any (None: unmanaged).
    pub catalog: Option<CatalogView>,
}

/// The GVM attributes a catalog type carries.
#[derive(Debug, Serialize)]
pub struct CatalogView {
    /// Catalog type name.
    pub name: String,
    /// GPU model file it comes from.
    pub model: String,
    /// Memory limit in bytes.
    pub memory_limit: u64,
    /// Compute priority 0..=16.
    pub priority: u8,
    /// Time share (explicit or 1 / max instances).
    pub share: f64,
    /// Maximum instances per GPU.
    pub max_instances: u32,
    /// Whether over-limit memory may spill to host memory.
    pub host_swap: bool,
}

impl CatalogView {
    /// The view of a catalog type.
    pub fn of(t: &VgpuType) -> Self {
        CatalogView {
            name: t.name.clone(),
            model: t.model.clone(),
            memory_limit: t.memory_limit.0,
            priority: t.priority,
            share: t.effective_share(),
            max_instances: t.max_instances,
            host_swap: t.host_swap,
        }
    }
}

/// The catalog type bound to a kernel type.
pub fn catalog_type_of<'c>(catalog: &'c Catalog, t: &MdevType) -> Option<&'c VgpuType> {
    catalog.resolve(&t.id, t.name.as_deref())
}

/// The VF vGPU types of `pfs`, each with the catalog type bound to its name.
fn vf_rows(catalog: &Catalog, pfs: &[Pf], records: &[Assignment]) -> Vec<TypeRow> {
    vf_offers(pfs, records)
        .into_iter()
        .map(|o| TypeRow {
            parent: Some(o.pf),
            kind: Some(VgpuKind::Vf),
            mdev_type: Some(o.type_id.to_string()),
            catalog: catalog.resolve_vf(&o.name).map(CatalogView::of),
            kernel_name: Some(o.name),
            device_api: None,
            available_instances: o.creatable,
            devices: o.vgpus,
            unrecorded_vfs: o.unrecorded,
        })
        .collect()
}

fn rows(catalog: &Catalog, parents: &[Parent], all: bool) -> Vec<TypeRow> {
    rows_with(catalog, parents, Vec::new(), all)
}

/// The rows of `parents`' mdev types, then `vf_rows`, then (with `all`) every catalog type
/// neither offers.
fn rows_with(
    catalog: &Catalog,
    parents: &[Parent],
    vf_rows: Vec<TypeRow>,
    all: bool,
) -> Vec<TypeRow> {
    let mut rows = Vec::new();
    let mut offered = std::collections::BTreeSet::new();
    for parent in parents {
        for t in &parent.types {
            let bound = catalog_type_of(catalog, t);
            if let Some(b) = bound {
                offered.insert(b.name.clone());
            }
            rows.push(TypeRow {
                parent: Some(parent.name.clone()),
                kind: Some(VgpuKind::Mdev),
                mdev_type: Some(t.id.clone()),
                kernel_name: t.name.clone(),
                device_api: Some(t.device_api.clone()),
                available_instances: t.available_instances,
                devices: t.devices.clone(),
                unrecorded_vfs: Vec::new(),
                catalog: bound.map(CatalogView::of),
            });
        }
    }
    for row in vf_rows {
        if let Some(c) = &row.catalog {
            offered.insert(c.name.clone());
        }
        rows.push(row);
    }
    if all {
        for t in catalog.types().filter(|t| !offered.contains(&t.name)) {
            rows.push(TypeRow {
                parent: None,
                kind: None,
                mdev_type: None,
                kernel_name: None,
                device_api: None,
                available_instances: 0,
                devices: Vec::new(),
                unrecorded_vfs: Vec::new(),
                catalog: Some(CatalogView::of(t)),
            });
        }
    }
    rows
}

/// `gvm-vgpu types [--parent P] [--all]`.
pub fn types(ctx: &Context, parent: Option<&str>, all: bool, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let (parents, pfs) = match parent {
        Some(name) => match ctx.vgpu.parent(name)? {
            ParentKind::Mdev(p) => (vec![p], Vec::new()),
            ParentKind::Pf(pf) => (Vec::new(), vec![pf]),
        },
        None => (ctx.mdev.parents()?, ctx.vgpu.vf().pfs()?),
    };
    let records = if pfs.is_empty() {
        Vec::new()
    } else {
        ctx.vgpu.records().list()?
    };
    let vf = vf_rows(&catalog, &pfs, &records);
    let rows = rows_with(&catalog, &parents, vf, all);
    if ctx.json {
        return write_json(out, "types", &rows);
    }
    let mut table = Table::new(&[
        "PARENT",
        "KIND",
        "TYPE ID",
        "KERNEL NAME",
        "CATALOG TYPE",
        "MEMORY",
        "PRIO",
        "SHARE",
        "SWAP",
        "AVAIL",
        "USED",
    ]);
    for row in &rows {
        let dash = || "-".to_string();
        let (name, memory, prio, share, swap) = match &row.catalog {
            Some(c) => (
                c.name.clone(),
                gvm_catalog::ByteSize(c.memory_limit).to_string(),
                c.priority.to_string(),
                format!("{:.3}", c.share),
                if c.host_swap { "yes" } else { "no" }.to_string(),
            ),
            None => ("- (unmanaged)".into(), dash(), dash(), dash(), dash()),
        };
        table.row(vec![
            row.parent.clone().unwrap_or_else(dash),
            row.kind.map_or_else(dash, |k| k.as_text().to_string()),
            row.mdev_type.clone().unwrap_or_else(dash),
            row.kernel_name.clone().unwrap_or_else(dash),
            name,
            memory,
            prio,
            share,
            swap,
            row.available_instances.to_string(),
            row.devices.len().to_string(),
        ]);
    }
    if table.is_empty() {
        writeln!(
            out,
            "No mdev types and no SR-IOV VF vGPU types on this host (an SR-IOV GPU offers types once its VFs are enabled: `sriov-manage -e <PF>`)."
        )?;
        return Ok(());
    }
    table.write(out)?;
    Ok(())
}
