//! Shell completions and man pages, generated from the clap definitions.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Print a completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "gvm-vgpu", out);
    Ok(())
}

/// Write `gvm-vgpu.1` and one `gvm-vgpu-<sub>.1` per subcommand into `dir`.
pub fn man_pages(dir: &Path, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    let cmd = Cli::command();
    let mut pages = vec![("gvm-vgpu".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("gvm-vgpu-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}
