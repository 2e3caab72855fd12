//! Errors of the guest harness: each names the file, command or step that failed.

use std::io;
use std::path::PathBuf;

/// What went wrong preparing, packing or booting a test guest.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or directory operation failed.
    #[error("{what} failed")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The I/O error, with its errno.
        #[source]
        source: io::Error,
    },

    /// A helper program could not be started (not installed?).
    #[error("could not run {program}: install it (Debian: {package})")]
    Spawn {
        /// The program.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// Why it could not be started (ENOENT when missing).
        #[source]
        source: io::Error,
    },

    /// A helper program ran and failed.
    #[error("{program} failed with {status}; its output ends with:\n{output_tail}")]
    CommandFailed {
        /// The command, as typed.
        program: String,
        /// Its exit status.
        status: String,
        /// The last lines of its standard error (or output).
        output_tail: String,
    },

    /// A module the image asks for was not prepared.
    #[error("kernel module {name} is not in {dir}: add it to MODULES in scripts/guest/prepare.sh")]
    MissingModule {
        /// The module name.
        name: String,
        /// The prepared modules directory.
        dir: PathBuf,
    },

    /// A path placed in the guest is not a plain absolute path.
    #[error("guest path {path:?} must be absolute and must not contain `..`")]
    BadGuestPath {
        /// The path given.
        path: String,
    },

    /// `cargo build` did not leave the expected binary behind.
    #[error("cargo built {package} but {path} does not exist")]
    BinaryMissing {
        /// The package built.
        package: String,
        /// Where the binary was expected.
        path: PathBuf,
    },
}

impl HarnessError {
    /// An [`HarnessError::Io`] describing `what`.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The last `lines` lines of a command's output, for error messages.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_last_lines_only() {
        assert_eq!(tail(b"a\nb\nc\nd\n", 2), "c\nd");
        assert_eq!(tail(b"only", 5), "only");
        assert_eq!(tail(b"", 3), "");
    }
}
