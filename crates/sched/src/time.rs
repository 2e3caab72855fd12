//! Time as a value, and the GVM priority ↔ hardware timeslice mapping.
//!
//! The engine never reads a clock: every instant and duration is a [`Nanos`]
//! that the caller passes in (the daemon's monotonic clock, or the GPU model's
//! simulated time). GVM's `compute.priority` knob takes 0..=16 and gives the
//! process's channel groups a hardware timeslice of `524288 µs >> priority`
//! (priority 8 = 2048 µs, 9 = 1024 µs); [`timeslice_of_priority`] and
//! [`priority_for_timeslice`] convert between the two.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

/// A duration or an instant in nanoseconds (instants count from any fixed origin).
///
/// Arithmetic saturates instead of wrapping: a clock that goes backwards yields
/// a zero interval, never a huge one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero time.
    pub const ZERO: Nanos = Nanos(0);
    /// The largest representable time (used as "never").
    pub const MAX: Nanos = Nanos(u64::MAX);

    /// `us` microseconds.
    pub const fn from_micros(us: u64) -> Nanos {
        Nanos(us.saturating_mul(1_000))
    }

    /// `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// `s` seconds.
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s.saturating_mul(1_000_000_000))
    }

    /// The value in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The value in (fractional) seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// `self - rhs`, or zero if `rhs` is later.
    pub const fn saturating_sub(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(rhs.0))
    }
}

impl Add for Nanos {
    type Output = Nanos;
    fn add(self, rhs: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Nanos {
    fn add_assign(&mut self, rhs: Nanos) {
        *self = *self + rhs;
    }
}

impl Sub for Nanos {
    type Output = Nanos;
    fn sub(self, rhs: Nanos) -> Nanos {
        self.saturating_sub(rhs)
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n % 1_000_000_000 == 0 {
            write!(f, "{}s", n / 1_000_000_000)
        } else if n != 0 && n % 1_000_000 == 0 {
            write!(f, "{}ms", n / 1_000_000)
        } else if n != 0 && n % 1_000 == 0 {
            write!(f, "{}µs", n / 1_000)
        } else {
            write!(f, "{n}ns")
        }
    }
}

/// The lowest (strongest) GVM compute priority.
pub const PRIORITY_MIN: u8 = 0;
/// The highest (weakest) GVM compute priority.
pub const PRIORITY_MAX: u8 = 16;
/// GVM's priority before anything is written (2048 µs timeslice).
pub const PRIORITY_DEFAULT: u8 = 8;

/// Timeslice at priority 0: 524288 µs.
const BASE_TIMESLICE: Nanos = Nanos::from_micros(524_288);

/// The hardware timeslice GVM gives channel groups at `priority`
/// (`524288 µs >> priority`; values above 16 are treated as 16).
pub fn timeslice_of_priority(priority: u8) -> Nanos {
    Nanos(BASE_TIMESLICE.0 >> priority.min(PRIORITY_MAX))
}

/// The priority whose timeslice is nearest to `slice` (ties go to the shorter
/// slice); slices beyond the table's ends map to 0 or 16.
pub fn priority_for_timeslice(slice: Nanos) -> u8 {
    let mut best = PRIORITY_MIN;
    let mut best_err = u64::MAX;
    for p in PRIORITY_MIN..=PRIORITY_MAX {
        let err = timeslice_of_priority(p).0.abs_diff(slice.0);
        if err <= best_err {
            best = p;
            best_err = err;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_table_matches_gvm() {
        assert_eq!(timeslice_of_priority(0), Nanos::from_micros(524_288));
        assert_eq!(timeslice_of_priority(8), Nanos::from_micros(2_048));
        assert_eq!(timeslice_of_priority(9), Nanos::from_micros(1_024));
        assert_eq!(timeslice_of_priority(16), Nanos::from_micros(8));
        assert_eq!(timeslice_of_priority(200), timeslice_of_priority(16));
    }

    #[test]
    fn nearest_priority_for_common_slices() {
        assert_eq!(priority_for_timeslice(Nanos::from_millis(2)), 8);
        assert_eq!(priority_for_timeslice(Nanos::from_millis(1)), 9);
        assert_eq!(priority_for_timeslice(Nanos::from_secs(10)), 0);
        assert_eq!(priority_for_timeslice(Nanos::ZERO), 16);
        for p in PRIORITY_MIN..=PRIORITY_MAX {
            assert_eq!(priority_for_timeslice(timeslice_of_priority(p)), p);
        }
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Nanos(3) - Nanos(5), Nanos::ZERO);
        assert_eq!(Nanos::MAX + Nanos(1), Nanos::MAX);
        assert_eq!(Nanos::from_millis(2).as_secs_f64(), 0.002);
        assert_eq!(Nanos::from_micros(1_500).to_string(), "1500µs");
        assert_eq!(Nanos::from_secs(2).to_string(), "2s");
        assert_eq!(Nanos::from_millis(2).to_string(), "2ms");
        assert_eq!(Nanos(17).to_string(), "17ns");
    }
}
