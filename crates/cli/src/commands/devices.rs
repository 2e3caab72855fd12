//! `create`, `remove`, `list`, `show`: live vGPUs of both kinds (mdev devices and SR-IOV VF
//! vGPUs), read and changed through sysfs by `gvm-vgpu-host`.

use std::io::Write;

use anyhow::{bail, Result};
use gvm_catalog::{Catalog, VgpuType};
use gvm_gcgroup::host_gpus::HostGpus;
use gvm_gcgroup::{GcgroupSnapshot, KernelStat, MemoryLimit, Priority};
use gvm_proto::{
    GcgroupInfo, Knobs, Overrides, OwnerInfo, OwnerRule, Source, Sources, StartMode, Totals,
    VgpuDetail, VgpuInfo, VgpuKind, VgpuState,
};
use gvm_shim_abi::vgpu_env::VGPU_UUID_ENV;
use gvm_vgpu_host::{Backing, Vgpu};
use uuid::Uuid;

use super::inventory::CatalogView;
use super::owner_table::OwnerTable;
use super::owners::owners_by_vgpu;
use super::shapes::{DeviceJson, VgpuJson};
use super::write_json;
use crate::context::Context;
use crate::table::Table;

/// `gvm-vgpu create --type T [--parent P] [--uuid U]`: on an mdev parent that offers the
/// type, else on a free VF of an SR-IOV GPU whose creatable types list it.
pub fn create(
    ctx: &Context,
    type_name: &str,
    parent: Option<&str>,
    uuid: Option<Uuid>,
    out: &mut dyn Write,
) -> Result<()> {
    let catalog = ctx.catalog()?;
    let wanted = catalog.type_by_name(type_name)?;
    let vgpu = ctx
        .vgpu
        .create(&catalog, &wanted.name, parent, uuid)
        .map_err(|e| match e {
            gvm_vgpu_host::Error::Placement(p) => anyhow::anyhow!(
                "{p} (the type is defined in {})",
                catalog_source(&catalog, wanted)
            ),
            other => anyhow::Error::new(other)
                .context(format!("cannot create a vGPU of type {}", wanted.name)),
        })?;
    daemon_rescans(ctx);
    if ctx.json {
        return write_json(
            out,
            "vgpu",
            &direct_info(&view(&vgpu, Some(wanted), Vec::new()), Some(wanted)),
        );
    }
    match &vgpu.backing {
        Backing::Mdev { parent, mdev_type } => writeln!(
            out,
            "Created vGPU {} of type {} ({mdev_type} on {parent}).",
            vgpu.uuid, wanted.name
        )?,
        Backing::Vf { pf, vf, type_id } => writeln!(
            out,
            "Created vGPU {} of type {} ({} {type_id} on VF {vf} of {pf}).",
            vgpu.uuid,
            wanted.name,
            vgpu.kernel_name.as_deref().unwrap_or("VF type"),
        )?,
    }
    Ok(())
}

/// After `create` or `remove` changed sysfs directly: a running gvm-vgpud rescans now, so the
/// new vGPU is adopted with its type's limits (or the removed one dropped) before the command
/// returns, and the next `list` or `show` agrees with the kernel. On a real host the kernel's
/// uevent would tell it soon; the simulated host sends none, and either way the command
/// should not return before the daemon knows. A daemon that does not run is nothing to tell;
/// one that fails to rescan is said on stderr (the change itself is done, and its periodic
/// scan will find it).
fn daemon_rescans(ctx: &Context) {
    match gvm_client::Client::connect_host(&ctx.host) {
        Ok(mut c) => {
            if let Err(e) = c.reconcile() {
                eprintln!(
                    "gvm-vgpu: warning: gvm-vgpud did not rescan ({}); it finds the change at \
                     its next periodic scan",
                    gvm_error_chain::error_chain(&e)
                );
            }
        }
        Err(gvm_client::Error::NotRunning { .. }) => {}
        Err(e) => eprintln!(
            "gvm-vgpu: warning: cannot tell gvm-vgpud to rescan ({}); it finds the change at its \
             next periodic scan",
            gvm_error_chain::error_chain(&e)
        ),
    }
}

fn catalog_source(catalog: &Catalog, t: &VgpuType) -> String {
    catalog
        .models()
        .iter()
        .find(|m| m.model == t.model)
        .map(|m| m.source.display().to_string())
        .unwrap_or_else(|| format!("the {} catalog file", t.model))
}

/// `gvm-vgpu remove <uuid> [--wait]`: refused while the vGPU is held (the error names
/// the holders); with `--wait`, says on stderr whom it waits for, then writes and waits.
/// A VF vGPU is removed through its record (compare-before-write); `--wait` does not apply
/// to it, since the driver refuses (EPERM), rather than blocks, while a VM holds the VF.
pub fn remove(ctx: &Context, uuid: &Uuid, wait: bool, out: &mut dyn Write) -> Result<()> {
    let is_mdev = ctx.mdev.device(uuid).is_ok();
    if !is_mdev {
        ctx.vgpu.remove(uuid)?;
    } else if wait {
        let scan = ctx.mdev.holders(uuid)?;
        if !scan.holders.is_empty() {
            let names: Vec<String> = scan.holders.iter().map(ToString::to_string).collect();
            eprintln!(
                "gvm-vgpu: vGPU {uuid} is held open by {}: waiting until {} it \
                 (the kernel's remove cannot be interrupted: Ctrl-C will not end this wait)",
                names.join(", "),
                if names.len() == 1 {
                    "it closes"
                } else {
                    "they all close"
                }
            );
        }
        ctx.mdev.remove_waiting(uuid)?;
    } else {
        ctx.mdev.remove(uuid)?;
    }
    daemon_rescans(ctx);
    if ctx.json {
        return write_json(out, "removed", uuid);
    }
    writeln!(out, "Removed vGPU {uuid}.")?;
    Ok(())
}

/// A live vGPU as the CLI reads it itself, for `list` and `show` without the daemon.
#[derive(Debug)]
pub struct VgpuView {
    /// Device UUID.
    pub uuid: Uuid,
    /// Which kernel ABI backs it.
    pub kind: VgpuKind,
    /// Parent device (a VF vGPU: its PF).
    pub parent: String,
    /// A VF vGPU's VF.
    pub vf: Option<String>,
    /// Kernel type id (a VF vGPU: the VF type ID in decimal).
    pub type_id: String,
    /// The kernel's name of the type (`NVIDIA H100-20C`), when it has one.
    pub kernel_name: Option<String>,
    /// IOMMU group number, if the kernel made one.
    pub iommu_group: Option<u32>,
    /// sysfs path of the device.
    pub sysfs_path: String,
    /// The bound catalog type.
    pub catalog: Option<CatalogView>,
    /// GVM gcgroups of the owner processes.
    pub owners: Vec<OwnerView>,
}

/// One owner gcgroup as read from GVM's files, its GPU named by position in PCI order and
/// PCI address.
#[derive(Debug)]
pub struct OwnerView {
    /// The process id.
    pub pid: u32,
    /// Position of the GPU in PCI order; `None` when no PCI GPU has its GVM index.
    pub gpu: Option<u32>,
    /// PCI address of the GPU, when known.
    pub pci: Option<String>,
    /// GVM's UVM index of the GPU.
    pub gvm_index: u32,
    /// `memory.limit`.
    pub memory_limit: MemoryLimit,
    /// `memory.current`.
    pub memory_current: u64,
    /// `memory.swap.current`.
    pub swap_current: u64,
    /// `compute.priority`.
    pub priority: Priority,
    /// `compute.freeze`.
    pub frozen: bool,
    /// `gcgroup.stat`.
    pub stat: KernelStat,
    snapshot: GcgroupSnapshot,
}

impl OwnerView {
    fn of(s: GcgroupSnapshot, gpus: &HostGpus) -> OwnerView {
        let named = gpus.by_gvm_index(s.gpu);
        OwnerView {
            pid: s.pid,
            gpu: named.map(|g| g.position),
            pci: named.map(|g| g.pci.clone()),
            gvm_index: s.gpu,
            memory_limit: s.memory_limit,
            memory_current: s.memory_current,
            swap_current: s.swap_current,
            priority: s.priority,
            frozen: s.frozen,
            stat: s.stat,
            snapshot: s,
        }
    }
}

fn kind_of(v: &Vgpu) -> VgpuKind {
    match v.kind() {
        gvm_vgpu_host::Kind::Mdev => VgpuKind::Mdev,
        gvm_vgpu_host::Kind::Vf => VgpuKind::Vf,
    }
}

fn view(v: &Vgpu, bound: Option<&VgpuType>, owners: Vec<OwnerView>) -> VgpuView {
    VgpuView {
        uuid: v.uuid,
        kind: kind_of(v),
        parent: v.backing.parent().to_string(),
        vf: v.backing.vf().map(str::to_string),
        type_id: v.backing.kernel_type(),
        kernel_name: v.kernel_name.clone(),
        iommu_group: v.iommu_group,
        sysfs_path: v.sysfs_path.display().to_string(),
        catalog: bound.map(CatalogView::of),
        owners,
    }
}

fn views(ctx: &Context) -> Result<Vec<VgpuView>> {
    let catalog = ctx.catalog()?;
    let mut owners = owners_by_vgpu(ctx);
    let gpus = HostGpus::read(&ctx.host);
    let mut out = Vec::new();
    for v in ctx.vgpu.vgpus()? {
        let bound = v.catalog_type(&catalog);
        let own = owners
            .remove(&v.uuid)
            .unwrap_or_default()
            .into_iter()
            .map(|s| OwnerView::of(s, &gpus))
            .collect();
        out.push(view(&v, bound, own));
    }
    Ok(out)
}

/// A live vGPU read directly (no daemon) in the shape the daemon lists it: the catalog
/// type's knobs, frozen when any owner gcgroup is, no definition or domain known.
fn direct_info(v: &VgpuView, catalog: Option<&VgpuType>) -> VgpuInfo {
    let mut totals = Totals::default();
    for o in &v.owners {
        totals.memory_current += o.memory_current;
        totals.swap_current += o.swap_current;
        totals.kernels_submitted += o.stat.submitted;
        totals.kernels_ended += o.stat.ended;
        totals.kernels_pending += o.stat.pending;
        totals.gcgroups += 1;
        totals.frozen_gcgroups += u32::from(o.frozen);
    }
    let mut knobs = Knobs::default();
    if let Some(t) = catalog {
        knobs.memory_limit = t.memory_limit.0;
        knobs.priority = t.priority;
        knobs.share = t.share;
    }
    knobs.frozen = totals.frozen_gcgroups > 0;
    let pids: std::collections::BTreeSet<u32> = v.owners.iter().map(|o| o.pid).collect();
    VgpuInfo {
        uuid: v.uuid,
        parent: v.parent.clone(),
        mdev_type: v.type_id.clone(),
        type_name: catalog.map(|t| t.name.clone()),
        kind: v.kind,
        vf: v.vf.clone(),
        state: VgpuState::Running,
        managed: catalog.is_some(),
        defined: false,
        autostart: false,
        start: StartMode::NotDefined,
        owner_uids: Vec::new(),
        domain: None,
        owners: pids.into_iter().collect(),
        knobs,
        totals,
    }
}

/// A live vGPU read directly in the shape the daemon's `show` gives it: the catalog type
/// as every knob's source, owners found by their environment, one gcgroup per GPU.
fn direct_detail(v: &VgpuView, catalog: Option<&VgpuType>) -> VgpuDetail {
    let from_type = if catalog.is_some() {
        Source::Type
    } else {
        Source::Default
    };
    let mut owners: Vec<OwnerInfo> = Vec::new();
    for o in &v.owners {
        let gcgroup = GcgroupInfo {
            gpu: o.gpu,
            pci: o.pci.clone(),
            gvm_index: o.gvm_index,
            memory_limit: o.memory_limit.as_bytes(),
            memory_current: o.memory_current,
            swap_current: o.swap_current,
            priority: o.priority.get(),
            frozen: o.frozen,
            kernels_submitted: o.stat.submitted,
            kernels_ended: o.stat.ended,
            kernels_pending: o.stat.pending,
        };
        match owners.iter_mut().find(|known| known.pid == o.pid) {
            Some(known) => known.gcgroups.push(gcgroup),
            None => owners.push(OwnerInfo {
                pid: o.pid,
                rule: OwnerRule::Environment,
                gcgroups: vec![gcgroup],
            }),
        }
    }
    VgpuDetail {
        info: direct_info(v, catalog),
        sources: Sources {
            memory_limit: from_type,
            priority: from_type,
            share: if catalog.is_some_and(|t| t.share.is_some()) {
                Source::Type
            } else {
                Source::Default
            },
        },
        definition: None,
        live_overrides: Overrides::default(),
        owners,
        refused_claims: Vec::new(),
        guest: None,
        held_by: None,
        nvidia_fb_usage_bytes: None,
    }
}

/// `gvm-vgpu list` without the daemon: what the kernel and GVM report.
pub fn list(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let all: Vec<VgpuInfo> = views(ctx)?
        .iter()
        .map(|v| {
            let bound = v
                .catalog
                .as_ref()
                .and_then(|c| catalog.type_by_name(&c.name).ok());
            direct_info(v, bound)
        })
        .collect();
    write_list(ctx, &all, false, out)
}

/// The `list` table (or JSON) of live vGPUs, from the daemon (`from_daemon`) or read
/// directly, when the start mode and domain are unknown (shown as `-`).
pub fn write_list(
    ctx: &Context,
    all: &[VgpuInfo],
    from_daemon: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if ctx.json {
        return write_json(out, "vgpus", &all);
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
        "FROZEN",
        "START",
        "DOMAIN",
        "OWNERS",
        "KIND",
    ]);
    for v in all {
        let (name, memory, prio) = match (&v.type_name, v.managed) {
            (Some(name), true) => (
                name.clone(),
                super::limit_text(v.knobs.memory_limit),
                v.knobs.priority.to_string(),
            ),
            _ => ("- (unmanaged)".into(), "-".into(), "-".into()),
        };
        table.row(vec![
            v.uuid.to_string(),
            v.parent.clone(),
            v.mdev_type.clone(),
            name,
            memory,
            prio,
            if v.knobs.frozen { "yes" } else { "no" }.into(),
            if from_daemon {
                v.start.as_text().into()
            } else {
                "-".into()
            },
            v.domain
                .as_deref()
                .map_or_else(|| "-".into(), |d| crate::text::guest_text(d).into_owned()),
            v.owners.len().to_string(),
            v.kind.as_text().into(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// `gvm-vgpu show <uuid>`.
pub fn show(ctx: &Context, uuid: &Uuid, out: &mut dyn Write) -> Result<()> {
    let v = live_view(ctx, uuid)?;
    if ctx.json {
        return write_json(out, "vgpu", &vgpu_json(ctx, &v)?);
    }
    write_view(ctx, &v, out)
}

/// The live vGPU `v` in the one JSON shape of a vGPU (`show UUID --json`'s `vgpu`), as the
/// kernel and GVM report it.
pub fn vgpu_json(ctx: &Context, v: &VgpuView) -> Result<serde_json::Value> {
    let catalog = ctx.catalog()?;
    let bound = v
        .catalog
        .as_ref()
        .and_then(|c| catalog.type_by_name(&c.name).ok());
    let detail = direct_detail(v, bound);
    let device = DeviceJson {
        iommu_group: v.iommu_group,
        sysfs_path: v.sysfs_path.clone(),
    };
    Ok(serde_json::to_value(VgpuJson::of(&detail, Some(&device)))?)
}

/// The live vGPU `uuid` as `show` reports it; an unknown UUID, or a VF vGPU on record that
/// its VF does not carry now, is `gvm-vgpu-host`'s clear error.
pub fn live_view(ctx: &Context, uuid: &Uuid) -> Result<VgpuView> {
    // Ask the kernel first so an unknown UUID gets the client's clear error.
    ctx.vgpu.vgpu(uuid)?;
    let Some(v) = views(ctx)?.into_iter().find(|v| v.uuid == *uuid) else {
        bail!("vGPU {uuid} disappeared while it was being read; run the command again");
    };
    Ok(v)
}

/// `show`'s text for one live vGPU.
pub fn write_view(ctx: &Context, v: &VgpuView, out: &mut dyn Write) -> Result<()> {
    writeln!(out, "vGPU {}", v.uuid)?;
    writeln!(out, "  parent:       {}", v.parent)?;
    if let Some(vf) = &v.vf {
        writeln!(out, "  vf:           {vf} (SR-IOV virtual function)")?;
        writeln!(
            out,
            "  kernel type:  {} ({})",
            v.type_id,
            v.kernel_name.as_deref().unwrap_or("-")
        )?;
    } else {
        writeln!(out, "  kernel type:  {}", v.type_id)?;
    }
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
                gvm_catalog::ByteSize(c.memory_limit),
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
            "  owners:       none registered with GVM (no process with {VGPU_UUID_ENV}={} has the GPU open)",
            v.uuid
        )?;
        return Ok(());
    }
    writeln!(out, "  owners (GVM gcgroups):")?;
    let gpus = HostGpus::read(&ctx.host);
    let snapshots: Vec<GcgroupSnapshot> = v.owners.iter().map(|o| o.snapshot).collect();
    OwnerTable::of_snapshots(&snapshots, &gpus).write(out)?;
    Ok(())
}
