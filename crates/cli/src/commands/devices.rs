//! `create`, `remove`, `list`, `show`: live vGPUs, read and changed through mdev sysfs.

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use gvm_catalog::{Catalog, VgpuType};
use gvm_gcgroup::{GcgroupSnapshot, MemoryLimit};
use gvm_mdev::{Device, Parent};
use serde::Serialize;
use uuid::Uuid;

use super::inventory::{catalog_type_of, CatalogView};
use super::owners::owners_by_vgpu;
use super::write_json;
use crate::context::Context;
use crate::table::Table;

/// A kernel type on a parent that a catalog type is bound to.
struct Candidate<'p> {
    parent: &'p Parent,
    type_id: String,
    available: u32,
    live: usize,
}

fn candidates<'p>(
    catalog: &Catalog,
    wanted: &VgpuType,
    parents: &'p [Parent],
) -> Vec<Candidate<'p>> {
    let mut found = Vec::new();
    for parent in parents {
        for t in &parent.types {
            if catalog_type_of(catalog, t).is_some_and(|b| b.name == wanted.name) {
                found.push(Candidate {
                    parent,
                    type_id: t.id.clone(),
                    available: t.available_instances,
                    live: t.devices.len(),
                });
            }
        }
    }
    found
}

/// `gvm-vgpu create --type T [--parent P] [--uuid U]`.
pub fn create(
    ctx: &Context,
    type_name: &str,
    parent: Option<&str>,
    uuid: Option<Uuid>,
    out: &mut dyn Write,
) -> Result<()> {
    let catalog = ctx.catalog()?;
    let wanted = catalog.type_by_name(type_name)?;
    let parents = match parent {
        Some(name) => vec![ctx.mdev.parent(name)?],
        None => ctx.mdev.parents()?,
    };
    let found = candidates(&catalog, wanted, &parents);
    if found.is_empty() {
        match parent {
            Some(p) => bail!(
                "parent {p} offers no kernel type bound to catalog type {} ({}); \
                 `gvm-vgpu types --parent {p}` lists what it offers",
                wanted.name,
                wanted.binding
            ),
            None => bail!(
                "no parent on this host offers a kernel type bound to catalog type {} ({}); \
                 check the binding in {} against `gvm-vgpu types`",
                wanted.name,
                wanted.binding,
                catalog_source(&catalog, wanted)
            ),
        }
    }
    // The parent with the most free instances; on a tie the first (parents are sorted).
    let usable = found
        .iter()
        .filter(|c| c.available > 0 && (c.live as u64) < u64::from(wanted.max_instances))
        .rev()
        .max_by_key(|c| c.available);
    let Some(choice) = usable else {
        let detail: Vec<String> = found
            .iter()
            .map(|c| {
                format!(
                    "{} has {} of type {} and {} free",
                    c.parent.name, c.live, c.type_id, c.available
                )
            })
            .collect();
        bail!(
            "no free instance of catalog type {} (at most {} per GPU): {}; remove a vGPU or pick another type",
            wanted.name,
            wanted.max_instances,
            detail.join("; ")
        );
    };
    let device = ctx
        .mdev
        .create(&choice.parent.name, &choice.type_id, uuid)
        .with_context(|| format!("cannot create a vGPU of type {}", wanted.name))?;
    if ctx.json {
        return write_json(out, &view(&device, Some(wanted), Vec::new()));
    }
    writeln!(
        out,
        "Created vGPU {} of type {} ({} on {}).",
        device.uuid, wanted.name, device.type_id, device.parent
    )?;
    Ok(())
}

fn catalog_source(catalog: &Catalog, t: &VgpuType) -> String {
    catalog
        .models()
        .iter()
        .find(|m| m.model == t.model)
        .map(|m| m.source.display().to_string())
        .unwrap_or_else(|| format!("the {} catalog file", t.model))
}

/// `gvm-vgpu remove <uuid>`.
pub fn remove(ctx: &Context, uuid: &Uuid, out: &mut dyn Write) -> Result<()> {
    ctx.mdev.remove(uuid)?;
    if ctx.json {
        return write_json(out, &serde_json::json!({ "removed": uuid }));
    }
    writeln!(out, "Removed vGPU {uuid}.")?;
    Ok(())
}

/// A live vGPU as `list` and `show` report it.
#[derive(Debug, Serialize)]
pub struct VgpuView {
    /// Device UUID.
    pub uuid: Uuid,
    /// Parent device.
    pub parent: String,
    /// Kernel type id.
    pub type_id: String,
    /// IOMMU group number, if the kernel made one.
    pub iommu_group: Option<u32>,
    /// sysfs path of the device.
    pub sysfs_path: String,
    /// Whether the catalog knows the type (else the vGPU is unmanaged).
    pub managed: bool,
    /// The bound catalog type.
    pub catalog: Option<CatalogView>,
    /// GVM gcgroups of the owner processes.
    pub owners: Vec<GcgroupSnapshot>,
}

fn view(device: &Device, bound: Option<&VgpuType>, owners: Vec<GcgroupSnapshot>) -> VgpuView {
    VgpuView {
        uuid: device.uuid,
        parent: device.parent.clone(),
        type_id: device.type_id.clone(),
        iommu_group: device.iommu_group,
        sysfs_path: device.sysfs_path.display().to_string(),
        managed: bound.is_some(),
        catalog: bound.map(CatalogView::of),
        owners,
    }
}

fn views(ctx: &Context) -> Result<Vec<VgpuView>> {
    let catalog = ctx.catalog()?;
    let parents = ctx.mdev.parents()?;
    let mut owners = owners_by_vgpu(ctx);
    let mut out = Vec::new();
    for device in ctx.mdev.devices()? {
        let kernel_type = parents
            .iter()
            .filter(|p| p.name == device.parent)
            .flat_map(|p| &p.types)
            .find(|t| t.id == device.type_id);
        let bound = kernel_type.and_then(|t| catalog_type_of(&catalog, t));
        let own = owners.remove(&device.uuid).unwrap_or_default();
        out.push(view(&device, bound, own));
    }
    Ok(out)
}

/// `gvm-vgpu list`.
pub fn list(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let all = views(ctx)?;
    if ctx.json {
        return write_json(out, &all);
    }
    if all.is_empty() {
        writeln!(out, "No vGPUs on this host.")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "UUID",
        "PARENT",
        "TYPE ID",
        "CATALOG TYPE",
        "MEMORY",
        "PRIO",
        "OWNERS",
    ]);
    for v in &all {
        let (name, memory, prio) = match &v.catalog {
            Some(c) => (
                c.name.clone(),
                gvm_catalog::ByteSize(c.memory_limit_bytes).to_string(),
                c.priority.to_string(),
            ),
            None => ("- (unmanaged)".into(), "-".into(), "-".into()),
        };
        let pids: std::collections::BTreeSet<u32> = v.owners.iter().map(|o| o.pid).collect();
        table.row(vec![
            v.uuid.to_string(),
            v.parent.clone(),
            v.type_id.clone(),
            name,
            memory,
            prio,
            pids.len().to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

fn limit_text(l: MemoryLimit) -> String {
    match l {
        MemoryLimit::Unlimited => "unlimited".into(),
        MemoryLimit::Bytes(b) => gvm_catalog::ByteSize(b).to_string(),
    }
}

/// `gvm-vgpu show <uuid>`.
pub fn show(ctx: &Context, uuid: &Uuid, out: &mut dyn Write) -> Result<()> {
    // Ask the kernel first so an unknown UUID gets the mdev client's clear error.
    ctx.mdev.device(uuid)?;
    let Some(v) = views(ctx)?.into_iter().find(|v| v.uuid == *uuid) else {
        bail!("vGPU {uuid} disappeared while it was being read; run the command again");
    };
    if ctx.json {
        return write_json(out, &v);
    }
    writeln!(out, "vGPU {}", v.uuid)?;
    writeln!(out, "  parent:       {}", v.parent)?;
    writeln!(out, "  kernel type:  {}", v.type_id)?;
    writeln!(
        out,
        "  iommu group:  {}",
        v.iommu_group.map_or("-".to_string(), |g| g.to_string())
    )?;
    writeln!(out, "  sysfs:        {}", v.sysfs_path)?;
    match &v.catalog {
        Some(c) => {
            writeln!(out, "  catalog type: {} ({})", c.name, c.model)?;
            writeln!(
                out,
                "  limits:       memory {}, priority {}, share {:.3}, host swap {}",
                gvm_catalog::ByteSize(c.memory_limit_bytes),
                c.priority,
                c.share,
                if c.host_swap { "allowed" } else { "no" }
            )?;
        }
        None => writeln!(
            out,
            "  catalog type: none: this vGPU is unmanaged (no catalog entry binds {})",
            v.type_id
        )?,
    }
    if v.owners.is_empty() {
        writeln!(
            out,
            "  owners:       none registered with GVM (no process with GVM_VGPU_UUID={} has the GPU open)",
            v.uuid
        )?;
        return Ok(());
    }
    writeln!(out, "  owners (GVM gcgroups):")?;
    let mut table = Table::new(&[
        "    PID",
        "GPU",
        "MEM.LIMIT",
        "MEM.CURRENT",
        "SWAP",
        "PRIO",
        "FROZEN",
        "SUBMITTED",
        "ENDED",
        "PENDING",
    ]);
    for o in &v.owners {
        table.row(vec![
            format!("    {}", o.pid),
            o.gpu.to_string(),
            limit_text(o.memory_limit),
            gvm_catalog::ByteSize(o.memory_current).to_string(),
            gvm_catalog::ByteSize(o.swap_current).to_string(),
            o.priority.to_string(),
            if o.frozen { "yes" } else { "no" }.into(),
            o.stat.submitted.to_string(),
            o.stat.ended.to_string(),
            o.stat.pending.to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}
