//! One module per group of subcommands; [`run`] dispatches to them.

mod devices;
mod docs;
mod inventory;
mod owners;
mod passthrough;

use std::io::Write;

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
    match &cli.command {
        Command::Parents => inventory::parents(&ctx, out),
        Command::Types { parent, all } => inventory::types(&ctx, parent.as_deref(), *all, out),
        Command::Create {
            type_name,
            parent,
            uuid,
        } => devices::create(&ctx, type_name, parent.as_deref(), *uuid, out),
        Command::Remove { uuid } => devices::remove(&ctx, uuid, out),
        Command::List => devices::list(&ctx, out),
        Command::Show { uuid } => devices::show(&ctx, uuid, out),
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
        Command::QemuArgs { uuid, agent_socket } => {
            passthrough::qemu_args(&ctx, uuid, agent_socket.as_deref(), out)
        }
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// Write `value` as pretty JSON followed by a newline.
fn write_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
