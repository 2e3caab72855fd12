//! One module per group of subcommands; [`run`] dispatches to them.

mod devices;
mod docs;
mod inventory;
#[cfg(feature = "libvirt")]
mod libvirt;
mod managed;
mod owner_table;
mod owners;
mod passthrough;
mod sched;
mod shapes;
mod stats;

use std::io::Write;

use managed::limit_text;
pub use managed::{parse_definitions, MAX_QUOTE_BYTES};

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::context::Context;

/// Run a parsed command line, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    // Commands that need no host access.
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell, out),
        Command::Man { out_dir } => return docs::man_pages(out_dir, out),
        _ => {}
    }
    let ctx = Context::new(&cli.global)?;
    // Commands that read the kernel's sysfs themselves (not through the daemon) refuse a
    // root without a sys/ tree rather than report an empty host.
    if matches!(
        &cli.command,
        Command::Parents
            | Command::Types { .. }
            | Command::Create { .. }
            | Command::Remove { .. }
            | Command::Xml { .. }
            | Command::QemuArgs { .. }
            | Command::Attach { .. }
            | Command::Detach { .. }
    ) {
        ctx.require_sysfs()?;
    }
    match &cli.command {
        Command::Parents => inventory::parents(&ctx, out),
        Command::Types { parent, all } => inventory::types(&ctx, parent.as_deref(), *all, out),
        Command::Create {
            type_name,
            parent,
            uuid,
        } => devices::create(&ctx, type_name, parent.as_deref(), *uuid, out),
        Command::Remove { uuid, wait } => devices::remove(&ctx, uuid, *wait, out),
        Command::List { defined: false } => list(&ctx, out),
        Command::List { defined: true } => managed::list_defined(&ctx, out),
        Command::Show { target, connect } => show(&ctx, target, connect.as_deref(), out),
        Command::Define {
            type_name,
            parent,
            uuid,
            autostart,
            owner_uids,
            from,
            start,
            knobs,
        } => match (from, type_name, parent) {
            (Some(file), _, _) => managed::define_from(&ctx, file, *start, knobs, out),
            (None, Some(t), Some(p)) => {
                let how = managed::DefineHow {
                    uuid: *uuid,
                    autostart: *autostart,
                    owner_uids: owner_uids.clone(),
                };
                managed::define(&ctx, t, p, how, knobs, out)
            }
            _ => Err(anyhow::anyhow!(
                "define needs --type and --parent, or --from FILE"
            )),
        },
        Command::Undefine { uuid } => managed::undefine(&ctx, uuid, out),
        Command::Start { uuid } => managed::start_stop(&ctx, uuid, true, out),
        Command::Stop { uuid, wait } => managed::stop(&ctx, uuid, *wait, out),
        Command::Set {
            target,
            knobs,
            clear,
            live,
            persistent,
        } => {
            let mode = match (*live, *persistent) {
                (true, _) => gvm_proto::SetMode::Live,
                (_, true) => gvm_proto::SetMode::Persistent,
                _ => gvm_proto::SetMode::Both,
            };
            managed::set(&ctx, target, knobs, *clear, mode, out)
        }
        Command::Freeze { target } => managed::freeze_thaw(&ctx, target, true, out),
        Command::Thaw { target } => managed::freeze_thaw(&ctx, target, false, out),
        Command::ImportMdevctl {
            dry_run,
            remove_source,
        } => managed::import_mdevctl(
            &ctx,
            gvm_proto::ImportParams {
                dry_run: *dry_run,
                remove_source: *remove_source,
            },
            out,
        ),
        Command::Reconcile => managed::reconcile(&ctx, out),
        Command::Status => managed::status(&ctx, out),
        Command::Policy { action } => match action {
            crate::cli::PolicyAction::Show => sched::show(&ctx, out),
            crate::cli::PolicyAction::Set {
                policy,
                gpu,
                timeslice,
                window,
            } => sched::set(
                &ctx,
                policy,
                gpu.as_deref(),
                timeslice.as_deref(),
                window.as_deref(),
                out,
            ),
        },
        Command::Top { once } => sched::top(&ctx, *once, out),
        Command::Stats { target } => stats::stats(&ctx, target.as_deref(), out),
        Command::Xml {
            uuid,
            display,
            with_agent,
            agent_socket,
        } => passthrough::xml(
            &ctx,
            uuid,
            *display,
            with_agent.then_some(agent_socket.as_deref()),
            out,
        ),
        Command::QemuArgs {
            uuid,
            agent_socket,
            qmp_socket,
        } => passthrough::qemu_args(&ctx, uuid, agent_socket.as_deref(), *qmp_socket, out),
        #[cfg(not(feature = "libvirt"))]
        Command::Attach { .. } | Command::Detach { .. } => anyhow::bail!(
            "this gvm-vgpu was built without libvirt support (cargo feature `libvirt`); \
             use a build with it, or `gvm-vgpu xml` and `virsh attach-device`"
        ),
        #[cfg(feature = "libvirt")]
        Command::Attach {
            domain,
            type_name,
            uuid,
            parent,
            persistent,
            live,
            display,
            metadata_only,
            connect,
        } => libvirt::attach(
            &ctx,
            &libvirt::AttachArgs {
                domain,
                type_name: type_name.as_deref(),
                uuid: *uuid,
                parent: parent.as_deref(),
                persistent: *persistent,
                live: *live,
                display: *display,
                metadata_only: *metadata_only,
                connect: connect.as_deref(),
            },
            out,
        ),
        #[cfg(feature = "libvirt")]
        Command::Detach {
            domain,
            uuid,
            persistent,
            live,
            wait,
            keep_vgpu,
            connect,
        } => libvirt::detach(
            &ctx,
            domain,
            uuid,
            libvirt::DetachArgs {
                how: gvm_libvirt::DetachHow {
                    persistent: *persistent,
                    live: *live,
                    keep_vgpu: *keep_vgpu,
                },
                wait: *wait,
            },
            connect.as_deref(),
            out,
        ),
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// The daemon's client when it runs (`--catalog` refused then, as for every command it
/// answers), `None` when it does not: the caller then reads the kernel and GVM directly.
/// Only a daemon that is not running is a reason to fall back: a socket this user may not
/// open is an error.
fn daemon_if_running(ctx: &Context) -> Result<Option<gvm_client::Client>> {
    match gvm_client::Client::connect_host(&ctx.host) {
        Ok(mut c) => {
            managed::refuse_catalog_flag(ctx, &mut c)?;
            Ok(Some(c))
        }
        Err(gvm_client::Error::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `list`: the daemon's view of the live vGPUs (effective knobs, freeze, start mode,
/// domain) when it runs, else what the kernel and GVM report directly, said so on stderr.
fn list(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    match daemon_if_running(ctx)? {
        Some(mut c) => {
            let running: Vec<gvm_proto::VgpuInfo> = c
                .list(false)?
                .into_iter()
                .filter(|v| v.state == gvm_proto::VgpuState::Running)
                .collect();
            devices::write_list(ctx, &running, true, out)
        }
        None => {
            ctx.require_sysfs()?;
            eprintln!("gvm-vgpu: gvm-vgpud is not running: showing kernel and GVM state only");
            devices::list(ctx, out)
        }
    }
}

/// `show`: the daemon's view (effective values and their sources) when it runs, else what
/// the kernel and GVM report directly, said so on stderr. Only a daemon that is not
/// running is a reason to fall back: a socket this user may not open is an error.
///
/// A target that is not a UUID is a libvirt domain name: the daemon resolves the running
/// domains it follows; any other domain (only defined, or a daemon that does not follow
/// libvirt, or no daemon) is looked up in libvirt here ([`show_domain`]).
fn show(ctx: &Context, target: &str, connect: Option<&str>, out: &mut dyn Write) -> Result<()> {
    let is_uuid = uuid::Uuid::parse_str(target).is_ok();
    // With a daemon, --catalog is refused; without one, the direct view below uses it.
    match daemon_if_running(ctx)? {
        Some(mut c) => match c.show(target) {
            Ok(detail) => managed::show(ctx, &detail, out),
            Err(e) if !is_uuid && e.code() == Some(gvm_proto::ErrorCode::NotFound) => {
                show_domain(ctx, Some(&mut c), target, connect, out)
            }
            Err(e) => Err(e.into()),
        },
        None if !is_uuid => {
            ctx.require_sysfs()?;
            eprintln!("gvm-vgpu: gvm-vgpud is not running: showing kernel and GVM state only");
            show_domain(ctx, None, target, connect, out)
        }
        None => {
            let uuid = uuid::Uuid::parse_str(target)?;
            ctx.require_sysfs()?;
            eprintln!("gvm-vgpu: gvm-vgpud is not running: showing kernel and GVM state only");
            devices::show(ctx, &uuid, out)
        }
    }
}

/// `show DOMAIN` from libvirt itself (see [`libvirt::show_domain`]).
#[cfg(feature = "libvirt")]
fn show_domain(
    ctx: &Context,
    daemon: Option<&mut gvm_client::Client>,
    name: &str,
    connect: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    libvirt::show_domain(ctx, daemon, name, connect, out)
}

/// `show DOMAIN` needs libvirt, which this build lacks.
#[cfg(not(feature = "libvirt"))]
fn show_domain(
    _ctx: &Context,
    _daemon: Option<&mut gvm_client::Client>,
    name: &str,
    _connect: Option<&str>,
    _out: &mut dyn Write,
) -> Result<()> {
    anyhow::bail!(
        "`{name}` is not a UUID, and this gvm-vgpu was built without libvirt support (cargo \
         feature `libvirt`) to look a domain of that name up: give a vGPU UUID from \
         `gvm-vgpu list`"
    )
}

/// A GPU as text shows it: `1 [0000:3c:00.0]` (position in PCI order, PCI address);
/// `[0000:3c:00.0] (not present)` for a PCI address no registered GPU has; `? [GVM index
/// 16]` for a GPU GVM numbers that no PCI parent maps to.
pub(crate) fn gpu_label(
    position: Option<u32>,
    pci: Option<&str>,
    gvm_index: Option<u32>,
) -> String {
    match (position, pci, gvm_index) {
        (Some(p), Some(pci), _) => format!("{p} [{pci}]"),
        (Some(p), None, _) => p.to_string(),
        (None, Some(pci), _) => format!("[{pci}] (not present)"),
        (None, None, Some(g)) => format!("? [GVM index {g}]"),
        (None, None, None) => "?".into(),
    }
}

use shapes::write_json;
