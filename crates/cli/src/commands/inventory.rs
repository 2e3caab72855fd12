//! `parents` and `types`: what the host's kernel offers, joined with the vGPU catalog.

use std::io::Write;

use anyhow::Result;
use gvm_catalog::{Catalog, VgpuType};
use gvm_mdev::{MdevType, Parent};
use serde::Serialize;

use super::write_json;
use crate::context::Context;
use crate::table::Table;

/// `gvm-vgpu parents`.
pub fn parents(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let parents = ctx.mdev.parents()?;
    if ctx.json {
        let catalog = ctx.catalog()?;
        let shaped: Vec<ParentJson> = parents
            .iter()
            .map(|p| ParentJson {
                name: p.name.clone(),
                sysfs_path: p.sysfs_path.display().to_string(),
                device_path: p.device_path.display().to_string(),
                types: rows(&catalog, std::slice::from_ref(p), false),
            })
            .collect();
        return write_json(out, "parents", &shaped);
    }
    if parents.is_empty() {
        writeln!(
            out,
            "No mdev parent devices under {}: load the GPU's vGPU driver (or start gvm-vgpu-sim).",
            ctx.host.mdev_bus_dir().display()
        )?;
        return Ok(());
    }
    let mut table = Table::new(&["PARENT", "TYPES", "DEVICES", "DEVICE PATH"]);
    for parent in &parents {
        let devices: usize = parent.types.iter().map(|t| t.devices.len()).sum();
        table.row(vec![
            parent.name.clone(),
            parent.types.len().to_string(),
            devices.to_string(),
            parent.device_path.display().to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// An mdev parent (a GPU that can host vGPUs) as `parents --json` shows it.
#[derive(Debug, Serialize)]
pub struct ParentJson {
    /// The parent's name: a PCI address such as `0000:3b:00.0`, or `mtty`.
    pub name: String,
    /// `/sys/class/mdev_bus/<name>` under the host root.
    pub sysfs_path: String,
    /// The device directory the class entry links to.
    pub device_path: String,
    /// Its kernel types, as `types` shows them.
    pub types: Vec<TypeRow>,
}

/// One row of `gvm-vgpu types`: a kernel type on a parent and the catalog type bound to it.
#[derive(Debug, Serialize)]
pub struct TypeRow {
    /// Parent device, or None for a catalog type no parent offers.
    pub parent: Option<String>,
    /// Kernel type id (`<driver>-<name>`), None for a catalog type no parent offers.
    pub mdev_type: Option<String>,
    /// The kernel's `name` attribute.
    pub kernel_name: Option<String>,
    /// The kernel's `device_api` attribute.
    pub device_api: Option<String>,
    /// Free instances as the kernel reports them.
    pub available_instances: u32,
    /// UUIDs of the devices of this type on this parent.
    pub devices: Vec<uuid::Uuid>,
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

fn rows(catalog: &Catalog, parents: &[Parent], all: bool) -> Vec<TypeRow> {
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
                mdev_type: Some(t.id.clone()),
                kernel_name: t.name.clone(),
                device_api: Some(t.device_api.clone()),
                available_instances: t.available_instances,
                devices: t.devices.clone(),
                catalog: bound.map(CatalogView::of),
            });
        }
    }
    if all {
        for t in catalog.types().filter(|t| !offered.contains(&t.name)) {
            rows.push(TypeRow {
                parent: None,
                mdev_type: None,
                kernel_name: None,
                device_api: None,
                available_instances: 0,
                devices: Vec::new(),
                catalog: Some(CatalogView::of(t)),
            });
        }
    }
    rows
}

/// `gvm-vgpu types [--parent P] [--all]`.
pub fn types(ctx: &Context, parent: Option<&str>, all: bool, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let parents = match parent {
        Some(name) => vec![ctx.mdev.parent(name)?],
        None => ctx.mdev.parents()?,
    };
    let rows = rows(&catalog, &parents, all);
    if ctx.json {
        return write_json(out, "types", &rows);
    }
    let mut table = Table::new(&[
        "PARENT",
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
        writeln!(out, "No mdev types on this host.")?;
        return Ok(());
    }
    table.write(out)?;
    Ok(())
}
