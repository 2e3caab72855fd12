//! `attach` and `detach`: hand a vGPU to a libvirt domain and take it back (gvm-libvirt).

use std::io::Write;

use anyhow::{Context as _, Result};
use gvm_libvirt::{connection::uri_from_env, AttachRequest, Connection, Target};
use serde::Serialize;
use uuid::Uuid;

use super::write_json;
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
    Connection::open(&uri).with_context(|| {
        format!("cannot connect to libvirt at {uri}: is libvirtd running? (or pass --connect URI)")
    })
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
        if done.created && !args.persistent {
            ", removed again on detach"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// `gvm-vgpu detach`.
pub fn detach(
    ctx: &Context,
    domain: &str,
    uuid: &Uuid,
    (persistent, live, wait): (bool, bool, bool),
    connect: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
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
        gvm_libvirt::detach_waiting(
            &conn,
            &ctx.mdev,
            domain,
            uuid,
            (persistent, live),
            &mut announce,
        )
    } else {
        gvm_libvirt::detach(&conn, &ctx.mdev, domain, uuid, persistent, live)
    }
    .map_err(|e| match e {
        // It was detached: only the removal did not happen, as the message says.
        e @ gvm_libvirt::Error::DetachedButHeld { .. } => anyhow::Error::new(e),
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
                "removed_vgpu": done.removed_vgpu,
            }),
        );
    }
    writeln!(
        out,
        "Detached vGPU {} from domain {}{}.",
        done.uuid,
        domain,
        if done.removed_vgpu {
            " and removed it"
        } else {
            ""
        }
    )?;
    Ok(())
}
