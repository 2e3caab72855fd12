//! Shell completions and man pages, generated from the clap definitions.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};

/// Print a completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    crate::complete::write_registration(shell, out)
        .with_context(|| format!("cannot write the {shell} completion"))
}

/// Write `gvm-vgpu.1` and one `gvm-vgpu-<sub>.1` per subcommand, nested ones too
/// (`gvm-vgpu-policy-show.1`), into `dir`.
pub fn man_pages(dir: &Path, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    for page in crate::manpage::cli_pages()? {
        let path = dir.join(page.file_name());
        std::fs::write(&path, page.roff)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}
