//! gvm-vgpu's man pages and shell completions, generated from the binaries' clap definitions.
//!
//! `gvm-vgpu-docs OUT` writes `OUT/man/<page>.<section>` for every page and
//! `OUT/completions/{bash/<bin>, zsh/_<bin>, fish/<bin>.fish}`; `packaging/build-debs.sh` runs
//! it (OUT = `packaging/generated`) before `cargo deb`, which packs them (`[package.metadata.deb]` of `gvm-vgpud` and
//! `gvm-vgpu-agent`). Pages: `gvm-vgpu(1)` and one per subcommand, nested ones too
//! (`gvm-vgpu-policy-show(1)`), `gvm-vgpud(8)`, `gvm-vgpu-hook(8)`, `gvm-vgpu-agent(8)` and
//! `gvm-vgpu-sim(1)`, each with FILES, ENVIRONMENT, EXIT STATUS, EXAMPLES and SEE ALSO. No page
//! cites one that is not generated ([`missing_references`]; the tests check it).
//!
//! Modules: [`pages`] holds the extra sections of the binaries other than `gvm-vgpu`, whose
//! own are in `gvm_vgpu_cli::manpage`.

pub mod pages;

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
pub use gvm_vgpu_cli::manpage::Page;

/// Why generating failed.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// Rendering a page failed.
    #[error("cannot render the man pages: {0}")]
    Render(#[source] std::io::Error),
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Every man page, `gvm-vgpu`'s first.
pub fn all_pages() -> Result<Vec<Page>, DocsError> {
    use gvm_vgpu_cli::manpage::pages as render;
    let mut out = gvm_vgpu_cli::manpage::cli_pages().map_err(DocsError::Render)?;
    let more = [
        render(
            gvm_vgpud::cli::Args::command(),
            "gvm-vgpud",
            "8",
            &pages::daemon,
        ),
        render(pages::hook_command(), "gvm-vgpu-hook", "8", &pages::hook),
        render(
            gvm_vgpu_agent::cli::Cli::command(),
            "gvm-vgpu-agent",
            "8",
            &pages::agent,
        ),
        render(
            gvm_vgpu_sim::cli::Cli::command(),
            "gvm-vgpu-sim",
            "1",
            &pages::sim,
        ),
    ];
    for pages in more {
        out.extend(pages.map_err(DocsError::Render)?);
    }
    Ok(out)
}

/// The `name(N)` references of `pages` that name no page among them, as (page, reference).
pub fn missing_references(pages: &[Page]) -> Vec<(String, String)> {
    let have: Vec<String> = pages
        .iter()
        .map(|p| format!("{}({})", p.name, p.section))
        .collect();
    let mut missing = Vec::new();
    for p in pages {
        for r in gvm_vgpu_cli::manpage::references(&p.roff) {
            if !have.contains(&r) {
                missing.push((p.file_name(), r));
            }
        }
    }
    missing
}

/// The binaries that get completions, with their clap definitions.
pub fn completion_commands() -> Vec<(&'static str, clap::Command)> {
    vec![
        ("gvm-vgpu", gvm_vgpu_cli::cli::Cli::command()),
        ("gvm-vgpud", gvm_vgpud::cli::Args::command()),
        ("gvm-vgpu-agent", gvm_vgpu_agent::cli::Cli::command()),
        ("gvm-vgpu-sim", gvm_vgpu_sim::cli::Cli::command()),
    ]
}

/// Where `shell`'s completion for `bin` goes under `OUT/completions` (the package installs
/// `bash/` to /usr/share/bash-completion/completions, `zsh/` to
/// /usr/share/zsh/vendor-completions, `fish/` to /usr/share/fish/vendor_completions.d).
pub fn completion_file(shell: Shell, bin: &str) -> PathBuf {
    match shell {
        Shell::Zsh => PathBuf::from(format!("zsh/_{bin}")),
        Shell::Fish => PathBuf::from(format!("fish/{bin}.fish")),
        other => PathBuf::from(format!("{other}/{bin}")),
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DocsError> {
    let err = |source| DocsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, bytes).map_err(err)
}

/// Write every page and completion under `out`; returns the files written.
pub fn generate(out: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut written = Vec::new();
    for page in all_pages()? {
        let path = out.join("man").join(page.file_name());
        write(&path, page.roff.as_bytes())?;
        written.push(path);
    }
    for (bin, mut cmd) in completion_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut buf = Vec::new();
            if bin == "gvm-vgpu" {
                // Dynamic: the script calls gvm-vgpu back, which completes UUIDs, domains,
                // parents and types from the host (gvm_vgpu_cli::complete).
                gvm_vgpu_cli::complete::write_registration(shell, &mut buf).map_err(|source| {
                    DocsError::Write {
                        path: completion_file(shell, bin),
                        source,
                    }
                })?;
            } else {
                clap_complete::generate(shell, &mut cmd, bin, &mut buf);
            }
            let path = out.join("completions").join(completion_file(shell, bin));
            write(&path, &buf)?;
            written.push(path);
        }
    }
    Ok(written)
}
