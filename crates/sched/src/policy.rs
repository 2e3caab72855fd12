//! The three scheduling policies and their names.
//!
//! - **best-effort**: work-conserving; each vGPU runs at its type's (or
//!   override's) priority, so the hardware's round-robin gives it time in
//!   proportion to its timeslice; the engine never freezes anything.
//! - **equal-share**: GPU time is split equally among the vGPUs that have work;
//!   idle vGPUs' time goes to the others; one that got ahead is frozen until
//!   the others catch up.
//! - **fixed-share**: each vGPU gets its configured share of wall time and never
//!   more, even when the GPU is otherwise idle (not work-conserving).
//!
//! Names on the command line, in configuration files and on the wire are the
//! kebab-case forms `best-effort`, `equal-share`, `fixed-share`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::SchedError;

/// A per-GPU time-slice policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Work-conserving, each vGPU at its own priority (the default).
    #[default]
    BestEffort,
    /// Equal split of GPU time among vGPUs with work.
    EqualShare,
    /// Each vGPU capped at its configured share of wall time.
    FixedShare,
}

impl Policy {
    /// All policies, in documentation order.
    pub const ALL: [Policy; 3] = [Policy::BestEffort, Policy::EqualShare, Policy::FixedShare];

    /// The kebab-case name (`best-effort`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::BestEffort => "best-effort",
            Policy::EqualShare => "equal-share",
            Policy::FixedShare => "fixed-share",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = SchedError;

    /// Parses the kebab-case name; case and surrounding blanks are ignored.
    fn from_str(s: &str) -> Result<Policy, SchedError> {
        let t = s.trim();
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| SchedError::UnknownPolicy {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.to_string().parse::<Policy>(), Ok(p));
        }
        assert_eq!(" Equal-Share\n".parse::<Policy>(), Ok(Policy::EqualShare));
    }

    #[test]
    fn unknown_name_is_reported_with_the_choices() {
        let err = "round-robin".parse::<Policy>().err();
        let Some(err) = err else {
            panic!("round-robin parsed as a policy");
        };
        assert_eq!(
            err,
            SchedError::UnknownPolicy {
                input: "round-robin".into()
            }
        );
        assert!(err.to_string().contains("equal-share"));
    }

    #[test]
    fn serde_uses_kebab_case() -> Result<(), serde_json::Error> {
        assert_eq!(
            serde_json::to_string(&Policy::FixedShare)?,
            "\"fixed-share\""
        );
        let p: Policy = serde_json::from_str("\"best-effort\"")?;
        assert_eq!(p, Policy::BestEffort);
        assert!(serde_json::from_str::<Policy>("\"fair\"").is_err());
        Ok(())
    }
}
