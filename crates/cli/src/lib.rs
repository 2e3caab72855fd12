//! The `gvm-vgpu` command-line tool as a library.
//!
//! `main.rs` only parses arguments and maps the result to an exit code; everything else lives
//! here so tests can run any command against a temporary host root and read what it printed
//! from a buffer. Commands write to the `&mut dyn Write` they are given and never to stdout.
//!
//! Modules:
//! - [`cli`]: the command line, as clap definitions only;
//! - [`manpage`]: man pages from the clap definitions, with FILES, ENVIRONMENT, EXIT STATUS,
//!   EXAMPLES and SEE ALSO (also used by `gvm-vgpu-docs` for the other binaries);
//! - `commands`: one module per group of subcommands, and the dispatch to them;
//! - [`complete`]: the values shells complete dynamically (UUIDs, domains, parents, types);
//! - [`json_error`]: a failure under `--json` as one object on stdout;
//! - `context`: what every command needs: the host root, the clients built on it, the catalog;
//! - `table`: plain-text tables for people;
//! - `text`: guest-supplied strings made safe to print (bidi, zero-width and control
//!   characters escaped as `\u{…}`), used for every guest string in text output.
// The clap definitions' doc comments are `--help` and man-page text, where `<hostdev>` and
// `<uuid>` are placeholders and URLs are plain text: rustdoc's HTML and URL lints do not
// apply to them.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

pub mod cli;
mod commands;
pub mod complete;
mod context;
pub mod json_error;
pub mod manpage;
mod table;
mod text;

pub use commands::{parse_definitions, run, MAX_QUOTE_BYTES};
pub use context::Context;
