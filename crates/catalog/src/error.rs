//! Errors of the catalog: unreadable files, invalid files (with the exact place), unknown types.
//!
//! Every complaint about a file's content is an [`Error::Invalid`] carrying the file, the 1-based
//! line and column, and the field in path form (`gpu.model`, `type[2].priority`, with `type[N]`
//! counting the `[[type]]` tables of the file from 0), so an operator can jump straight to it.
//! What the file holds is quoted as an excerpt, never whole: the field is cut to 64 characters
//! and the message to 512 bytes, so a 60 KiB key or value makes a short log line.

use std::io;
use std::path::PathBuf;

/// Result of catalog operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while loading or querying the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A catalog file could not be read.
    #[error(
        "cannot read catalog file {} (errno {}); check that it exists and is readable",
        path.display(),
        errno_text(source)
    )]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error (its errno is in `raw_os_error()`).
        #[source]
        source: io::Error,
    },

    /// A catalog directory exists but could not be listed.
    #[error(
        "cannot list catalog directory {} (errno {}); check that it is a readable directory",
        dir.display(),
        errno_text(source)
    )]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error (its errno is in `raw_os_error()`).
        #[source]
        source: io::Error,
    },

    /// A catalog file is malformed TOML or breaks a rule of the catalog format.
    #[error("{}:{line}:{column}: {}{message}", file.display(), field_prefix(field))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value (or key, or table).
        line: usize,
        /// 1-based column (in characters) of the offending value.
        column: usize,
        /// The field in path form, e.g. `type[2].priority`; empty when no field applies.
        field: String,
        /// What is wrong and what to write instead.
        message: String,
    },

    /// No catalog type has this name.
    #[error(
        "unknown vGPU type '{name}'.{} List the known types with `gvm-vgpu types`",
        suggestion.as_ref().map(|s| format!(" Did you mean '{s}'?")).unwrap_or_default()
    )]
    UnknownType {
        /// The name asked for.
        name: String,
        /// The closest catalog type name, if any is close.
        suggestion: Option<String>,
    },
}

impl Error {
    /// The place an [`Error::Invalid`] points at: `(file, line, column, field)`.
    pub fn location(&self) -> Option<(&std::path::Path, usize, usize, &str)> {
        match self {
            Error::Invalid {
                file,
                line,
                column,
                field,
                ..
            } => Some((file, *line, *column, field)),
            _ => None,
        }
    }

    /// The errno behind an I/O failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::ReadFile { source, .. } | Error::ReadDir { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Most characters of a field path an [`Error::Invalid`] shows (a path is built from the
/// file's keys, and a key can be 60 KiB long).
const MAX_FIELD_CHARS: usize = 64;

/// Most bytes of an [`Error::Invalid`] message; with the field and the place the whole line
/// stays under 1 KiB for a short file name, whatever the file holds.
pub(crate) const MAX_MESSAGE_BYTES: usize = 512;

impl Error {
    /// An [`Error::Invalid`], its field and message cut to a size fit for a log line: a
    /// catalog file's values and keys are quoted as excerpts, never whole.
    pub(crate) fn invalid(
        file: &std::path::Path,
        line: usize,
        column: usize,
        field: &str,
        message: &str,
    ) -> Error {
        let message = if message.trim().is_empty() {
            "invalid here".to_string()
        } else {
            clip_middle(message, MAX_MESSAGE_BYTES)
        };
        Error::Invalid {
            file: file.to_path_buf(),
            line,
            column,
            field: excerpt(field, MAX_FIELD_CHARS),
            message,
        }
    }
}

/// `s`, or when longer than `max_chars` characters its first `max_chars` and `…`.
pub(crate) fn excerpt(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

use gvm_error_chain::clip_middle;

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

fn errno_text(e: &io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| "unknown".to_string(), |n| n.to_string())
}
