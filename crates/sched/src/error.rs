//! Errors of the scheduling crate: bad policy names and bad engine configuration.
//!
//! The engine itself never fails at run time (it only computes); these errors
//! come from parsing what an operator typed or configured.

use crate::time::Nanos;

/// What went wrong while parsing a policy or building an [`crate::Engine`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The policy name is not one of the three known policies.
    #[error(
        "unknown scheduling policy '{input}': use one of best-effort, equal-share, fixed-share"
    )]
    UnknownPolicy {
        /// The text that failed to parse.
        input: String,
    },
    /// The averaging window is zero or shorter than the time slice.
    #[error(
        "averaging window {window} is shorter than the time slice {timeslice}: \
         configure a window of at least one slice (the default is 1s)"
    )]
    WindowTooShort {
        /// The configured window.
        window: Nanos,
        /// The time slice it was compared with.
        timeslice: Nanos,
    },
    /// The accounting window is longer than the scheduler supports.
    #[error(
        "accounting window {window} is longer than the {max} the scheduler supports: shares are \
         balanced within one window, so a longer one only delays fairness; use at most {max}"
    )]
    WindowTooLong {
        /// The configured window.
        window: Nanos,
        /// The longest window accepted ([`crate::MAX_WINDOW`]).
        max: Nanos,
    },
    /// The configured time slice cannot be expressed by GVM's priority knob.
    #[error(
        "time slice {timeslice} is outside what compute.priority can express (8µs..524288µs): \
         pick a slice in that range, or leave it unset for the 2ms/1ms default"
    )]
    TimesliceOutOfRange {
        /// The configured slice.
        timeslice: Nanos,
    },
}
