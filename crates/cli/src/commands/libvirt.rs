//! `attach` and `detach`: hand a vGPU (an mdev or an SR-IOV VF vGPU) to a libvirt domain and
//! take it back (gvm-libvirt);
//! `show DOMAIN` for a domain gvm-vgpud does not resolve, read from libvirt directly.

use std::io::Write;

use anyhow::{Context as _, Result};
use gvm_libvirt::{
    connection::uri_from_env, AttachRequest, Connection, DomainInfo, DomainState, MetaVgpu, Target,
};
use serde::Serialize;
use uuid::Uuid;

use super::{devices, managed, write_json};
use crate::cli::OnOff;
use crate::context::Context;

/// Options of `gvm-vgpu attach`.
pub struct AttachArgs<'a> {
    /// Domain name.
    pub domain: &'a str,
    /// Catalog type of a new vGPU.
    pub type_name: Option<&'a str>,
    /// Existing vGPU.
    pub uuid: Option<Uuid>,
    /// Parent for a new vGPU.
    pub parent: Option<&'a str>,
    /// libvirt --config.
    pub persistent: bool,
    /// libvirt --live.
    pub live: bool,
    /// hostdev display attribute.
    pub display: Option<OnOff>,
    /// Record the binding only.
    pub metadata_only: bool,
    /// Connection URI.
    pub connect: Option<&'a str>,
}

fn open(connect: Option<&str>) -> Result<Connection> {
    let uri = uri_from_env(connect);
    match Connection::open(&uri) {
        // No libvirt on this host: the error names the package; libvirtd is not the question.
        Err(e @ gvm_libvirt::Error::LibraryMissing { .. }) => Err(e.into()),
        opened => opened.with_context(|| {
            format!(
                "cannot connect to libvirt at {uri}: is libvirtd running? (or pass --connect URI)"
            )
        }),
    }
}

#[derive(Serialize)]
struct AttachView {
    domain: String,
    uuid: Uuid,
    created: bool,
    persistent: bool,
    live: bool,
    hostdev: bool,
}

/// `gvm-vgpu attach`.
pub fn attach(ctx: &Context, args: &AttachArgs<'_>, out: &mut dyn Write) -> Result<()> {
    let target = match (args.type_name, args.uuid) {
        (Some(t), _) => Target::Type(t.to_string()),
        (None, Some(u)) => Target::Uuid(u),
        (None, None) => anyhow::bail!("give --type T (a new vGPU) or --uuid U (an existing one)"),
    };
    let catalog = ctx.catalog()?;
    let conn = open(args.connect)?;
    let mut req = AttachRequest::new(args.domain, target, args.persistent, args.live);
    req.parent = args.parent.map(str::to_string);
    req.display = args.display.map(|d| d == OnOff::On);
    req.hostdev = !args.metadata_only;
    let done = gvm_libvirt::attach(&conn, &ctx.mdev, Some(&catalog), &req)
        .with_context(|| format!("cannot attach a vGPU to domain {}", args.domain))?;
    let view = AttachView {
        domain: args.domain.to_string(),
        uuid: done.uuid,
        created: done.created,
        persistent: done.apply.config,
        live: done.apply.live,
        hostdev: done.hostdev_xml.is_some(),
    };
    if ctx.json {
        return write_json(out, "attach", &view);
    }
    writeln!(
        out,
        "{} vGPU {} to domain {} ({}{}{}).",
        if done.created {
            "Created and attached"
        } else {
            "Attached"
        },
        done.uuid,
        args.domain,
        match (done.apply.config, done.apply.live) {
            (true, true) => "definition and running domain",
            (true, false) => "definition",
            _ => "running domain",
        },
        if view.hostdev { "" } else { ", metadata only" },
        if done.created {
            ", removed again on detach unless --keep-vgpu"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// Options of `gvm-vgpu detach`.
pub struct DetachArgs {
    /// Definitions to change, and `--keep-vgpu`.
    pub how: gvm_libvirt::DetachHow,
    /// `--wait`: remove a held vGPU anyway, waiting for its holders.
    pub wait: bool,
}

/// `gvm-vgpu detach`.
pub fn detach(
    ctx: &Context,
    domain: &str,
    uuid: &Uuid,
    args: DetachArgs,
    connect: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let DetachArgs { how, wait } = args;
    let conn = open(connect)?;
    let done = if wait {
        let mut announce = |holders: &[gvm_mdev::Holder]| {
            let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
            eprintln!(
                "gvm-vgpu: vGPU {uuid} is still held open by {}: waiting for it to be closed \
                 before removing it (the kernel's remove cannot be interrupted: Ctrl-C will not \
                 end this wait)",
                names.join(", ")
            );
        };
        gvm_libvirt::detach_waiting(&conn, &ctx.mdev, domain, uuid, how, &mut announce)
    } else {
        gvm_libvirt::detach(&conn, &ctx.mdev, domain, uuid, how)
    }
    .map_err(|e| match e {
        // It was detached: only the removal did not happen, as the message says.
        e @ gvm_libvirt::Error::DetachedButHeld { .. } => anyhow::Error::new(e),
        // Refused before any change: the vGPU attach created would be removed, and is held.
        e @ gvm_libvirt::Error::Mdev {
            source: gvm_mdev::Error::Held { .. },
            ..
        } => anyhow::Error::new(e).context(format!(
            "cannot detach vGPU {uuid} from domain {domain}: attach created it, so detach \
             removes it, and a process holds it open; pass --keep-vgpu to detach it and leave \
             the vGPU on the host, or --wait to remove it once the holder lets go"
        )),
        e => {
            anyhow::Error::new(e).context(format!("cannot detach vGPU {uuid} from domain {domain}"))
        }
    })?;
    if ctx.json {
        return write_json(
            out,
            "detach",
            &serde_json::json!({
                "domain": domain,
                "uuid": done.uuid,
                "hostdev": done.hostdev,
                "created_by_attach": done.made_by_attach,
                "removed_vgpu": done.removed_vgpu,
                "still_used_by": done.still_used_by,
            }),
        );
    }
    let present = vgpu_present(ctx, &done.uuid);
    writeln!(
        out,
        "{}",
        detached_text(domain, &done, how.keep_vgpu, present)
    )?;
    Ok(())
}

/// The record of VF vGPU `uuid`, if it is one.
fn vf_record(ctx: &Context, uuid: &Uuid) -> Option<gvm_vf::Assignment> {
    gvm_vf::Assignments::new(gvm_vf::VfHost::new(ctx.host.clone()))
        .get(uuid)
        .ok()
}

/// Whether vGPU `uuid` exists on the host: an mdev, or a VF vGPU on record.
fn vgpu_present(ctx: &Context, uuid: &Uuid) -> bool {
    ctx.mdev.device(uuid).is_ok() || vf_record(ctx, uuid).is_some()
}

/// `detach`'s sentence: what went, and why a vGPU attach created stayed, if it did
/// (`present`: it still exists on the host).
fn detached_text(
    domain: &str,
    done: &gvm_libvirt::Detached,
    keep_vgpu: bool,
    present: bool,
) -> String {
    let uuid = done.uuid;
    let head = format!("Detached vGPU {uuid} from domain {domain}");
    if done.removed_vgpu {
        return format!("{head} and removed it (attach had created it).");
    }
    if !done.made_by_attach {
        return format!("{head}; the vGPU stays (attach did not create it).");
    }
    if !present {
        return format!("{head}; the vGPU attach created does not exist (nothing to remove).");
    }
    if keep_vgpu {
        return format!(
            "{head}; kept the vGPU attach created (--keep-vgpu): `gvm-vgpu remove {uuid}` \
             removes it."
        );
    }
    if !done.still_used_by.is_empty() {
        return format!(
            "{head}; the vGPU stays: domain {} still names it.",
            done.still_used_by.join(", ")
        );
    }
    format!(
        "{head}; the vGPU stays while the other definition of {domain} still names it \
         (detach with --persistent --live to remove it)."
    )
}

/// How a domain names one of its vGPUs, as `show DOMAIN --json` reports it.
#[derive(Debug, Serialize)]
struct DomainVgpuView {
    uuid: Uuid,
    /// The domain has a `<hostdev>` for it.
    hostdev: bool,
    /// Its gvm metadata entry, when the domain has one.
    metadata: Option<MetaView>,
    /// The vGPU exists on the host now.
    present: bool,
    /// gvm-vgpud's view of it, when the daemon runs and knows it (for the text).
    #[serde(skip)]
    daemon: Option<gvm_proto::VgpuDetail>,
    /// The kernel's view of it, when it exists and the daemon does not know it (for the text).
    #[serde(skip)]
    kernel: Option<devices::VgpuView>,
    /// Its record, when it is a VF vGPU (for the text).
    #[serde(skip)]
    vf: Option<gvm_vf::Assignment>,
    /// Either view as `show UUID --json` prints its `vgpu` (one shape for a vGPU).
    #[serde(rename = "vgpu")]
    shown: Option<serde_json::Value>,
}

/// A gvm metadata entry, as `show DOMAIN --json` reports it.
#[derive(Debug, Serialize)]
struct MetaView {
    type_name: Option<String>,
    parent: Option<String>,
    mdev_type: Option<String>,
    persistent: bool,
    created_by_attach: bool,
}

impl MetaView {
    fn of(m: &MetaVgpu) -> MetaView {
        MetaView {
            type_name: m.type_name.clone(),
            parent: m.parent.clone(),
            mdev_type: m.mdev_type.clone(),
            persistent: m.persistent,
            created_by_attach: m.created,
        }
    }
}

/// `show DOMAIN --json` when the domain is read from libvirt.
#[derive(Debug, Serialize)]
struct DomainView {
    domain: String,
    state: String,
    /// Read from the running domain's XML (`false`: from its definition).
    live_xml: bool,
    vgpus: Vec<DomainVgpuView>,
}

/// `gvm-vgpu show DOMAIN` for a domain gvm-vgpud did not resolve (it does not follow
/// libvirt, the domain only is defined, or no daemon runs): the domain's vGPUs (its mdev
/// hostdevs and gvm metadata entries) read from libvirt, each shown as the daemon (`daemon`,
/// when it runs) or the kernel sees it, or from the metadata when it does not exist.
pub fn show_domain(
    ctx: &Context,
    mut daemon: Option<&mut gvm_client::Client>,
    name: &str,
    connect: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let uri = uri_from_env(connect);
    let daemon_runs = daemon.is_some();
    let not_ours = || {
        format!(
            "`{name}` is not a vGPU UUID{}",
            if daemon_runs {
                " nor a running domain gvm-vgpud follows"
            } else {
                ""
            }
        )
    };
    let conn = open(connect).with_context(|| {
        format!(
            "{}, and it cannot be looked up as a libvirt domain",
            not_ours()
        )
    })?;
    let state = match conn.state(name) {
        Ok(s) => s,
        Err(gvm_libvirt::Error::DomainNotFound { .. }) => anyhow::bail!(
            "{}, and libvirt at {uri} has no domain named '{name}': list the domains with \
             `virsh -c {uri} list --all`, the vGPUs with `gvm-vgpu list`",
            not_ours()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read domain '{name}'")),
    };
    let live_xml = state.is_active();
    let info = conn
        .info(name, !live_xml)
        .with_context(|| format!("cannot read domain '{name}'"))?;
    let uuids = info.vgpus();
    if uuids.is_empty() {
        anyhow::bail!(
            "domain '{name}' ({state}) has no vGPU: no mdev <hostdev> and no gvm metadata \
             entry; give it one with `gvm-vgpu attach {name} --type TYPE`"
        );
    }
    let mut views = Vec::with_capacity(uuids.len());
    for uuid in &uuids {
        let detail = match daemon.as_deref_mut() {
            Some(c) => match c.show(&uuid.to_string()) {
                Ok(mut d) => {
                    d.info.domain.get_or_insert_with(|| name.to_string());
                    Some(d)
                }
                Err(e) if e.code() == Some(gvm_proto::ErrorCode::NotFound) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let present = vgpu_present(ctx, uuid);
        let kernel = match (&detail, present && ctx.mdev.device(uuid).is_ok()) {
            (None, true) => Some(devices::live_view(ctx, uuid)?),
            _ => None,
        };
        let shown = match (&detail, &kernel) {
            (Some(d), _) => Some(serde_json::to_value(
                crate::commands::shapes::VgpuJson::of(d, None),
            )?),
            (None, Some(k)) => Some(devices::vgpu_json(ctx, k)?),
            (None, None) => None,
        };
        views.push(DomainVgpuView {
            uuid: *uuid,
            hostdev: info.has_hostdev(uuid),
            metadata: info.meta(uuid).map(MetaView::of),
            present,
            daemon: detail,
            kernel,
            vf: vf_record(ctx, uuid),
            shown,
        });
    }
    let view = DomainView {
        domain: name.to_string(),
        state: state.to_string(),
        live_xml,
        vgpus: views,
    };
    if ctx.json {
        return write_json(out, "domain", &view);
    }
    write_domain_text(ctx, &view, &info, state, out)
}

fn write_domain_text(
    ctx: &Context,
    view: &DomainView,
    info: &DomainInfo,
    state: DomainState,
    out: &mut dyn Write,
) -> Result<()> {
    writeln!(
        out,
        "Domain {} ({state}, read from its {}): {} vGPU{}",
        view.domain,
        if view.live_xml {
            "running XML"
        } else {
            "definition"
        },
        view.vgpus.len(),
        if view.vgpus.len() == 1 { "" } else { "s" }
    )?;
    for v in &view.vgpus {
        if let Some(d) = &v.daemon {
            managed::show(ctx, d, out)?;
        } else if let Some(k) = &v.kernel {
            devices::write_view(ctx, k, out)?;
        } else if let Some(r) = &v.vf {
            writeln!(
                out,
                "vGPU {}: VF {} ({} on {})",
                v.uuid, r.vf, r.type_name, r.pf
            )?;
        } else {
            writeln!(out, "vGPU {}", v.uuid)?;
        }
        for line in binding_lines(
            &view.domain,
            &v.uuid,
            v.present,
            info.meta(&v.uuid),
            v.hostdev,
        ) {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

/// The `show DOMAIN` lines that say how `domain` names a vGPU (a `<hostdev>`, a gvm metadata
/// entry, or both) and, for one that does not exist (`present` false), how it comes to be.
fn binding_lines(
    domain: &str,
    uuid: &Uuid,
    present: bool,
    meta: Option<&MetaVgpu>,
    hostdev: bool,
) -> Vec<String> {
    let how = match (hostdev, meta.is_some()) {
        (true, true) => "<hostdev> and gvm metadata",
        (true, false) => "<hostdev> only (no gvm metadata: the libvirt hook does not recreate it)",
        (false, _) => "gvm metadata only (no <hostdev>: attached with --metadata-only)",
    };
    let mut lines = vec![format!("attached:     to {domain} by {how}")];
    if let Some(m) = meta {
        let lifetime = if !m.persistent {
            "created by attach for this run of the domain: removed when it stops or on detach"
        } else if m.created {
            "created by attach: removed on detach (unless --keep-vgpu)"
        } else {
            "attached by UUID: kept when the domain stops and on detach"
        };
        lines.push(format!("lifetime:     {lifetime}"));
    }
    if present {
        return lines;
    }
    match meta {
        Some(m) if m.parent.is_some() || m.mdev_type.is_some() || m.type_name.is_some() => {
            lines.push(format!(
                "state:        not created: the libvirt hook creates it when {domain} starts"
            ));
            if let Some(t) = &m.type_name {
                lines.push(format!("catalog type: {t}"));
            }
            if let Some(p) = &m.parent {
                lines.push(format!("parent:       {p}"));
            }
            if let Some(t) = &m.mdev_type {
                lines.push(format!("kernel type:  {t}"));
            }
        }
        _ => lines.push(format!(
            "state:        not on this host, and no gvm metadata says how to create it: \
             `gvm-vgpu create --type TYPE --uuid {uuid}`, or `gvm-vgpu detach {domain} --uuid {uuid}`"
        )),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(persistent: bool) -> MetaVgpu {
        MetaVgpu {
            uuid: Uuid::nil(),
            type_name: Some("sim-4c".into()),
            parent: Some("0000:3b:00.0".into()),
            mdev_type: Some("gvmsim-1".into()),
            persistent,
            created: false,
        }
    }

    #[test]
    fn binding_lines_say_how_the_domain_names_the_vgpu_and_how_a_missing_one_comes_to_be() {
        let uuid = Uuid::nil();
        let present = binding_lines("web1", &uuid, true, Some(&meta(true)), true);
        assert_eq!(
            present,
            vec![
                "attached:     to web1 by <hostdev> and gvm metadata".to_string(),
                "lifetime:     attached by UUID: kept when the domain stops and on detach"
                    .to_string(),
            ]
        );
        let made = MetaVgpu {
            created: true,
            ..meta(true)
        };
        let lines = binding_lines("web1", &uuid, true, Some(&made), true);
        assert!(
            lines[1].contains("removed on detach (unless --keep-vgpu)"),
            "{lines:?}"
        );
        let missing = binding_lines("web1", &uuid, false, Some(&meta(false)), false);
        assert!(missing[0].contains("gvm metadata only"), "{missing:?}");
        assert!(missing[1].contains("removed when it stops"), "{missing:?}");
        assert!(
            missing.contains(
                &"state:        not created: the libvirt hook creates it when web1 starts"
                    .to_string()
            ),
            "{missing:?}"
        );
        assert!(
            missing.contains(&"kernel type:  gvmsim-1".to_string()),
            "{missing:?}"
        );
        let unknown = binding_lines("web1", &uuid, false, None, true);
        assert!(
            unknown
                .iter()
                .any(|l| l.contains("no gvm metadata says how to create it")
                    && l.contains(&format!("gvm-vgpu detach web1 --uuid {uuid}"))),
            "{unknown:?}"
        );
    }

    #[test]
    fn detach_says_why_a_vgpu_attach_created_stays() {
        let done = |made_by_attach, removed_vgpu, still_used_by: &[&str]| gvm_libvirt::Detached {
            uuid: Uuid::nil(),
            apply: gvm_libvirt::Apply::CONFIG,
            hostdev: true,
            made_by_attach,
            removed_vgpu,
            still_used_by: still_used_by.iter().map(|d| d.to_string()).collect(),
        };
        let text =
            |d: &gvm_libvirt::Detached, keep, present| detached_text("web1", d, keep, present);
        assert!(text(&done(true, true, &[]), false, false)
            .ends_with("and removed it (attach had created it)."));
        assert!(text(&done(false, false, &[]), false, true).contains("attach did not create it"));
        assert!(text(&done(true, false, &[]), true, true).contains("--keep-vgpu"));
        assert!(
            text(&done(true, false, &["db1"]), false, true).contains("domain db1 still names it")
        );
        assert!(text(&done(true, false, &[]), false, false).contains("does not exist"));
        assert!(text(&done(true, false, &[]), false, true).contains("--persistent --live"));
    }
}
