//! API errors: a stable machine-readable code plus a message for people.
//!
//! The daemon maps every internal failure onto one of six codes in one place; the
//! message names the object (UUID, parent, domain, path) and says what to do.

use serde::{Deserialize, Serialize};

/// Longest message [`crate::Request::parse_line`] puts in a refusal: what a client sent is
/// quoted as an excerpt (a name as its first 64 characters and its length, a JSON parser's
/// complaint cut in the middle), never echoed whole, so a 64 KiB line cannot make a 128 KiB
/// answer or a log line of that size.
pub const MAX_MESSAGE_BYTES: usize = 1000;

/// Most characters of a client's value that a message quotes.
const EXCERPT_CHARS: usize = 64;

/// `v` quoted as a message shows it: `'v'` escaped (`escape_debug`), or when longer than
/// 64 characters its first 64 and its length: `'abc…' (70000 bytes)`.
pub(crate) fn excerpt(v: &str) -> String {
    let mut out = String::from("'");
    for (i, c) in v.chars().enumerate() {
        if i == EXCERPT_CHARS {
            return format!("{out}…' ({} bytes)", v.len());
        }
        out.extend(c.escape_debug());
    }
    out.push('\'');
    out
}

pub(crate) use gvm_error_chain::clip_middle;

/// Stable error class of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The UUID, domain, parent or type named does not exist.
    NotFound,
    /// The request is malformed or a value is out of range; nothing was changed.
    InvalidArgument,
    /// The request contradicts current state (already defined, already running, busy).
    Conflict,
    /// The kernel (sysfs or GVM debugfs) refused a write; the message carries the errno.
    Kernel,
    /// A bug or an unexpected host failure inside the daemon.
    Internal,
    /// The caller is not allowed to use this socket or method.
    PermissionDenied,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Kernel => "kernel",
            ErrorCode::Internal => "internal",
            ErrorCode::PermissionDenied => "permission_denied",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a failed [`crate::Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Error class.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ApiError {
    /// The same error with `what: ` in front of its message (e.g. which batch item).
    pub fn context(self, what: &str) -> ApiError {
        ApiError {
            code: self.code,
            message: format!("{what}: {}", self.message),
        }
    }

    /// An error of class `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorCode::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    /// Shorthand for [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// Shorthand for [`ErrorCode::Conflict`].
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Conflict, message)
    }

    /// Shorthand for [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }
}
