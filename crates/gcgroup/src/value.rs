//! The values of the gcgroup knobs, and their text forms (pure, no I/O).
//!
//! Every knob is a decimal number and a newline (`%zu\n`). A memory limit of
//! `18446744073709551615` (`u64::MAX`) means unlimited; GVM rejects `-1`. A
//! compute priority is 0..=16, lower is more important, and sets the process's
//! GPU timeslice to 524288 µs >> priority (2048 µs at the default 8).
//! `gcgroup.stat` holds `key: N` lines.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The value GVM reads and writes for "no memory limit".
pub const UNLIMITED: u64 = u64::MAX;

/// A gcgroup's GPU memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryLimit {
    /// No limit (`18446744073709551615` in the file).
    Unlimited,
    /// At most this many bytes resident on the GPU; the rest swaps to host memory.
    Bytes(u64),
}

impl MemoryLimit {
    /// The limit for a number read from (or meant for) the file: `u64::MAX` is unlimited.
    pub fn from_bytes(bytes: u64) -> Self {
        if bytes == UNLIMITED {
            MemoryLimit::Unlimited
        } else {
            MemoryLimit::Bytes(bytes)
        }
    }

    /// The number the file holds for this limit.
    pub fn as_bytes(self) -> u64 {
        match self {
            MemoryLimit::Unlimited => UNLIMITED,
            MemoryLimit::Bytes(b) => b,
        }
    }

    /// Whether this is no limit at all (`Bytes(u64::MAX)` counts as unlimited too).
    pub fn is_unlimited(self) -> bool {
        self.as_bytes() == UNLIMITED
    }
}

impl Default for MemoryLimit {
    /// GVM's default: unlimited.
    fn default() -> Self {
        MemoryLimit::Unlimited
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            f.write_str("unlimited")
        } else {
            write!(f, "{}", self.as_bytes())
        }
    }
}

/// A compute priority, 0 (highest) to 16 (lowest); see [`Priority::timeslice_us`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// The highest priority (longest timeslice).
    pub const MIN: Priority = Priority(0);
    /// The lowest priority (shortest timeslice).
    pub const MAX: Priority = Priority(16);
    /// GVM's default (2048 µs slices), in effect until a priority is written.
    pub const DEFAULT: Priority = Priority(8);

    /// `value` as a priority, values past [`Priority::MAX`] as the lowest one. For numbers a
    /// boundary has already checked (an API request, a catalog file); untrusted text goes
    /// through [`Priority::try_from`] or [`str::parse`] instead.
    pub fn clamped(value: u8) -> Priority {
        Priority(value.min(Priority::MAX.0))
    }

    /// The priority as a number.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The GPU timeslice this priority gives, in microseconds: `524288 >> p`.
    pub fn timeslice_us(&self) -> u64 {
        524_288u64 >> self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl TryFrom<u8> for Priority {
    type Error = Error;

    fn try_from(value: u8) -> Result<Self> {
        if value <= Priority::MAX.0 {
            Ok(Priority(value))
        } else {
            Err(Error::InvalidPriority {
                value: value.to_string(),
            })
        }
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

impl FromStr for Priority {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidPriority {
            value: s.to_string(),
        };
        let n: u8 = s.trim().parse().map_err(|_| invalid())?;
        Priority::try_from(n).map_err(|_| invalid())
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Kernel counts from `gcgroup.stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStat {
    /// `nr_submitted_kernels`: kernels the process has submitted.
    pub submitted: u64,
    /// `nr_ended_kernels`: kernels that have completed.
    pub ended: u64,
    /// `nr_pending_kernels`: kernels submitted but not yet ended.
    pub pending: u64,
}

impl KernelStat {
    /// Parse `gcgroup.stat`: `key: N` lines; unknown keys are ignored, a missing
    /// or unparseable known key is [`Error::Parse`].
    pub fn parse(file: &Path, content: &str) -> Result<Self> {
        let (mut submitted, mut ended, mut pending) = (None, None, None);
        for line in content.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let slot = match key.trim() {
                "nr_submitted_kernels" => &mut submitted,
                "nr_ended_kernels" => &mut ended,
                "nr_pending_kernels" => &mut pending,
                _ => continue,
            };
            *slot = Some(value.trim().parse::<u64>().map_err(|_| Error::Parse {
                file: file.to_path_buf(),
                content: line.to_string(),
            })?);
        }
        let missing = |key: &str| Error::Parse {
            file: file.to_path_buf(),
            content: format!("{content:?} has no {key} line"),
        };
        Ok(KernelStat {
            submitted: submitted.ok_or_else(|| missing("nr_submitted_kernels"))?,
            ended: ended.ok_or_else(|| missing("nr_ended_kernels"))?,
            pending: pending.ok_or_else(|| missing("nr_pending_kernels"))?,
        })
    }
}

/// Parse a `%zu\n` knob.
pub fn parse_u64(file: &Path, content: &str) -> Result<u64> {
    content.trim().parse().map_err(|_| Error::Parse {
        file: file.to_path_buf(),
        content: content.to_string(),
    })
}

/// Parse `compute.freeze`: `0` or `1`.
pub fn parse_frozen(file: &Path, content: &str) -> Result<bool> {
    match content.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(Error::Parse {
            file: file.to_path_buf(),
            content: content.to_string(),
        }),
    }
}

/// Parse `compute.priority` as read back.
pub fn parse_priority(file: &Path, content: &str) -> Result<Priority> {
    content.trim().parse().map_err(|_| Error::Parse {
        file: file.to_path_buf(),
        content: content.to_string(),
    })
}

/// Parse `processes/list`: an optional `PID` header, then one pid a line.
/// Blank lines are skipped; the result is sorted and free of duplicates.
pub fn parse_pid_list(file: &Path, content: &str) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line == "PID") {
            continue;
        }
        pids.push(line.parse::<u32>().map_err(|_| Error::Parse {
            file: file.to_path_buf(),
            content: format!("line {}: {line}", i + 1),
        })?);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// The text written to a knob: decimal and a newline.
pub fn knob_text(value: u64) -> String {
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &str = "/p/1/0/knob";

    fn file() -> &'static Path {
        Path::new(F)
    }

    #[test]
    fn memory_limit_round_trips_through_the_file_number() {
        assert_eq!(MemoryLimit::from_bytes(u64::MAX), MemoryLimit::Unlimited);
        assert_eq!(
            MemoryLimit::Unlimited.as_bytes(),
            18_446_744_073_709_551_615
        );
        assert_eq!(
            MemoryLimit::from_bytes(6 << 30),
            MemoryLimit::Bytes(6 << 30)
        );
        assert!(MemoryLimit::Bytes(u64::MAX).is_unlimited());
        assert!(!MemoryLimit::Bytes(0).is_unlimited());
        assert_eq!(MemoryLimit::Unlimited.to_string(), "unlimited");
        assert_eq!(MemoryLimit::Bytes(4096).to_string(), "4096");
        assert_eq!(
            knob_text(MemoryLimit::Unlimited.as_bytes()),
            "18446744073709551615\n"
        );
    }

    #[test]
    fn priority_validates_and_gives_timeslices() -> Result<()> {
        assert_eq!(Priority::DEFAULT.timeslice_us(), 2048);
        assert_eq!(Priority::MIN.timeslice_us(), 524_288);
        assert_eq!(Priority::MAX.timeslice_us(), 8);
        assert_eq!(Priority::try_from(2)?.timeslice_us(), 131_072);
        assert!(matches!(
            Priority::try_from(17),
            Err(Error::InvalidPriority { .. })
        ));
        assert_eq!(" 16\n".parse::<Priority>()?, Priority::MAX);
        for bad in ["17", "-1", "x", "", "256"] {
            assert!(bad.parse::<Priority>().is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn priority_serde_rejects_out_of_range() -> std::result::Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&Priority::DEFAULT)?, "8");
        assert_eq!(serde_json::from_str::<Priority>("3")?.get(), 3);
        assert!(serde_json::from_str::<Priority>("17").is_err());
        Ok(())
    }

    #[test]
    fn stat_parses_known_keys_and_ignores_others() -> Result<()> {
        let s = KernelStat::parse(
            file(),
            "nr_submitted_kernels: 10\nnr_future_thing: 3\nnr_ended_kernels: 7\nnr_pending_kernels: 3\n",
        )?;
        assert_eq!(
            s,
            KernelStat {
                submitted: 10,
                ended: 7,
                pending: 3
            }
        );
        Ok(())
    }

    #[test]
    fn stat_missing_or_bad_key_is_a_parse_error() {
        let e = KernelStat::parse(file(), "nr_submitted_kernels: 1\nnr_ended_kernels: 1\n");
        assert!(
            matches!(e, Err(Error::Parse { ref content, .. }) if content.contains("nr_pending_kernels")),
            "{e:?}"
        );
        let e = KernelStat::parse(
            file(),
            "nr_submitted_kernels: x\nnr_ended_kernels: 1\nnr_pending_kernels: 0\n",
        );
        assert!(
            matches!(e, Err(Error::Parse { ref content, ref file }) if content == "nr_submitted_kernels: x" && file.ends_with("knob")),
            "{e:?}"
        );
    }

    #[test]
    fn numbers_and_flags_parse_strictly() -> Result<()> {
        assert_eq!(parse_u64(file(), "123\n")?, 123);
        assert!(matches!(
            parse_u64(file(), "-1\n"),
            Err(Error::Parse { .. })
        ));
        assert!(parse_u64(file(), "").is_err());
        assert!(parse_frozen(file(), "1\n")?);
        assert!(!parse_frozen(file(), "0\n")?);
        assert!(parse_frozen(file(), "2\n").is_err());
        assert_eq!(parse_priority(file(), "4\n")?.get(), 4);
        assert!(matches!(
            parse_priority(file(), "40\n"),
            Err(Error::Parse { .. })
        ));
        Ok(())
    }

    #[test]
    fn pid_list_skips_header_and_rejects_garbage_naming_the_line() -> Result<()> {
        assert_eq!(parse_pid_list(file(), "PID\n300\n12\n300\n\n")?, [12, 300]);
        assert!(parse_pid_list(file(), "PID\n")?.is_empty());
        assert!(parse_pid_list(file(), "")?.is_empty());
        match parse_pid_list(file(), "PID\n12\nabc\n") {
            Err(Error::Parse { file, content }) => {
                assert!(file.ends_with("knob"));
                assert_eq!(content, "line 3: abc");
            }
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }
}
