//! What a guest can do wrong, as typed values a log line can print.
//!
//! The guest is untrusted: anything it sends that breaks the protocol becomes a
//! [`Violation`]. Guest-supplied text inside a violation (a serde message quoting a
//! field name, say) is passed through [`log_safe`] so that a log line stays short
//! and free of control characters.

/// One protocol violation by a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A line grew past the limit before its newline; the rest of it is discarded.
    #[error("line longer than {limit} bytes; discarding it up to the next newline (the agent must keep lines under the limit)")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line is not UTF-8.
    #[error("line is not UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A line is not JSON or not a message of this protocol version.
    #[error("line is not a valid protocol message: {detail}")]
    Malformed {
        /// The parser's complaint, made log-safe.
        detail: String,
    },
    /// The message's `"v"` is not a version this host speaks.
    #[error("protocol version {found} is not supported (this host speaks {supported}); install an agent matching the host's gvm-vgpu")]
    UnsupportedVersion {
        /// The version the guest sent.
        found: u64,
        /// The version this host speaks.
        supported: u32,
    },
    /// A report arrived before any hello on this connection (dropped; not held
    /// against the guest, since an agent may start writing before the host listens).
    #[error("report before hello; dropped until the agent says hello")]
    ReportBeforeHello,
    /// A protocol-2 message on a connection whose hello did not announce protocol 2
    /// (or before any hello).
    #[error("a protocol-2 {kind:?} message from an agent that did not say \"protocol\":2 in its hello; dropped")]
    NotNegotiated {
        /// The message's `"type"`.
        kind: &'static str,
    },
    /// A string field is too long.
    #[error("field {field} is {len} bytes, over the {max}-byte limit")]
    StringTooLong {
        /// Path of the field, e.g. `processes[3].cmdline`.
        field: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field contains control characters.
    #[error("field {field} contains control characters")]
    ControlCharacter {
        /// Path of the field.
        field: String,
    },
    /// A number is outside its range.
    #[error("field {field} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// Path of the field.
        field: String,
        /// The value sent.
        value: u64,
        /// Lowest accepted.
        min: u64,
        /// Highest accepted.
        max: u64,
    },
    /// A list is too long.
    #[error("field {field} has {count} entries, over the limit of {max}")]
    TooMany {
        /// Path of the field.
        field: &'static str,
        /// Entries sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A GPU index appears twice.
    #[error("field {field}: GPU index {index} appears twice")]
    DuplicateGpu {
        /// Path of the field.
        field: String,
        /// The index.
        index: u32,
    },
    /// A report names a GPU the hello did not list.
    #[error("field {field}: GPU index {index} was not listed in the hello")]
    UnknownGpu {
        /// Path of the field.
        field: String,
        /// The index.
        index: u32,
    },
    /// A report's sequence number did not increase.
    #[error("report seq {seq} does not follow {last}; sequence numbers must strictly increase")]
    SeqNotIncreasing {
        /// The sequence number sent.
        seq: u64,
        /// The previous accepted one.
        last: u64,
    },
    /// Lines arrived faster than the rate limit; `dropped` lines were discarded
    /// since the last such violation.
    #[error(
        "over the rate limit of {per_second} lines/s (burst {burst}); {dropped} lines dropped"
    )]
    RateLimited {
        /// Lines dropped since the last report of this violation.
        dropped: u64,
        /// Sustained rate allowed.
        per_second: u32,
        /// Burst allowed.
        burst: u32,
    },
    /// A partial line sat without its newline for too long; it is discarded.
    #[error("partial line of {bytes} bytes without a newline for {waited_ms} ms; discarded")]
    PartialLineTimeout {
        /// Bytes buffered (0 when the line was already being discarded).
        bytes: usize,
        /// How long it waited.
        waited_ms: u64,
    },
}

impl Violation {
    /// Whether the violation counts towards disconnecting the guest. Everything does,
    /// except a report before hello, which a well-behaved agent can cause.
    pub fn counts_against_guest(&self) -> bool {
        !matches!(self, Violation::ReportBeforeHello)
    }
}

/// Why a session was closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    /// Too many violations within the window.
    #[error("{count} protocol violations within {window_ms} ms (last: {last}); disconnecting the guest agent")]
    TooManyViolations {
        /// Violations counted in the window.
        count: usize,
        /// The window.
        window_ms: u64,
        /// The violation that tipped it.
        last: Violation,
    },
    /// Violations kept coming, however slowly, with no valid message between them.
    #[error("{count} protocol violations in a row without one valid message (last: {last}); disconnecting the guest agent")]
    NothingValid {
        /// Violations in a row.
        count: usize,
        /// The violation that tipped it.
        last: Violation,
    },
}

/// Guest text made fit for a log line: control characters replaced by `?` and at
/// most `max` characters kept (an ellipsis marks a cut).
pub fn log_safe(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_safe_strips_controls_and_clips() {
        assert_eq!(log_safe("a\x1b[2Jb\n", 100), "a?[2Jb?");
        assert_eq!(log_safe("abcdef", 3), "abc…");
    }

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let v = Violation::StringTooLong {
            field: "processes[3].name".into(),
            len: 300,
            max: 256,
        };
        assert_eq!(
            v.to_string(),
            "field processes[3].name is 300 bytes, over the 256-byte limit"
        );
        assert!(v.counts_against_guest());
        assert!(!Violation::ReportBeforeHello.counts_against_guest());
    }
}
