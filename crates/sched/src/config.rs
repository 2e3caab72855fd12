//! Engine configuration: the policy, the time slice and the averaging window.
//!
//! The time slice is what every vGPU's hardware timeslice is set to under
//! equal-share and fixed-share (through `compute.priority`). Unset, it follows
//! NVIDIA's vGPU scheduler: 2 ms with at most 8 vGPUs on the GPU, 1 ms above.
//! The window is the period over which shares are accounted and reported
//! (1 s by default, like NVIDIA's averaging factor or GVT-g's balance period);
//! the engine's tolerances scale with it.

use serde::{Deserialize, Serialize};

use crate::error::SchedError;
use crate::policy::Policy;
use crate::time::{timeslice_of_priority, Nanos, PRIORITY_MAX, PRIORITY_MIN};

/// Slice used by default when at most [`SMALL_GPU_VGPUS`] vGPUs share the GPU.
pub const DEFAULT_SLICE_SMALL: Nanos = Nanos::from_millis(2);
/// Slice used by default when more vGPUs share the GPU.
pub const DEFAULT_SLICE_LARGE: Nanos = Nanos::from_millis(1);
/// The least time a vGPU keeps the GPU under [`EngineConfig::exclusive`] when the
/// daemon turns it on.
pub const DEFAULT_EXCLUSIVE_SLICE: Nanos = Nanos::from_millis(20);
/// The vGPU count up to which [`DEFAULT_SLICE_SMALL`] applies.
pub const SMALL_GPU_VGPUS: usize = 8;
/// The default averaging window.
pub const DEFAULT_WINDOW: Nanos = Nanos::from_secs(1);
/// The longest accounting window accepted: one minute. Shares are balanced within one window;
/// a longer one only delays fairness, and an unbounded one (`window_ms` of 2^63) would make
/// the engine's arithmetic saturate.
pub const MAX_WINDOW: Nanos = Nanos::from_secs(60);

/// How one GPU's engine schedules its vGPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The policy in force.
    pub policy: Policy,
    /// The time slice; `None` = 2 ms with ≤ 8 vGPUs on the GPU, else 1 ms.
    #[serde(default)]
    pub timeslice: Option<Nanos>,
    /// The accounting/averaging window.
    #[serde(default = "default_window")]
    pub window: Nanos,
    /// Equal-share and fixed-share only: let one vGPU at a time run, each for at least
    /// this long before another may take over (`None`: every vGPU within its share runs,
    /// and the hardware time-slices between them). For GPUs where nothing below the
    /// engine preempts cheaply — the CUDA shim on a stock driver, whose concurrent
    /// contexts lose ~11 % of the GPU to context time-slicing (`docs/shim.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<Nanos>,
}

fn default_window() -> Nanos {
    DEFAULT_WINDOW
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            policy: Policy::default(),
            timeslice: None,
            window: DEFAULT_WINDOW,
            exclusive: None,
        }
    }
}

impl EngineConfig {
    /// A default configuration running `policy`.
    pub fn with_policy(policy: Policy) -> EngineConfig {
        EngineConfig {
            policy,
            ..EngineConfig::default()
        }
    }

    /// Checks that the slice is expressible by `compute.priority` and that the
    /// window holds at least one (largest possible) slice.
    pub fn validate(&self) -> Result<(), SchedError> {
        if let Some(ts) = self.timeslice {
            let lo = timeslice_of_priority(PRIORITY_MAX);
            let hi = timeslice_of_priority(PRIORITY_MIN);
            if ts < lo || ts > hi {
                return Err(SchedError::TimesliceOutOfRange { timeslice: ts });
            }
        }
        let slice = self.timeslice.unwrap_or(DEFAULT_SLICE_SMALL);
        if self.window < slice || self.window == Nanos::ZERO {
            return Err(SchedError::WindowTooShort {
                window: self.window,
                timeslice: slice,
            });
        }
        if self.window > MAX_WINDOW {
            return Err(SchedError::WindowTooLong {
                window: self.window,
                max: MAX_WINDOW,
            });
        }
        Ok(())
    }

    /// The configured slice, or the default for `vgpus` vGPUs on the GPU.
    pub fn slice_for(&self, vgpus: usize) -> Nanos {
        match self.timeslice {
            Some(ts) => ts,
            None if vgpus <= SMALL_GPU_VGPUS => DEFAULT_SLICE_SMALL,
            None => DEFAULT_SLICE_LARGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_slice_depends_on_vgpu_count() {
        let c = EngineConfig::default();
        assert_eq!(c.slice_for(1), Nanos::from_millis(2));
        assert_eq!(c.slice_for(8), Nanos::from_millis(2));
        assert_eq!(c.slice_for(9), Nanos::from_millis(1));
        let fixed = EngineConfig {
            timeslice: Some(Nanos::from_micros(500)),
            ..c
        };
        assert_eq!(fixed.slice_for(16), Nanos::from_micros(500));
    }

    #[test]
    fn a_window_past_a_minute_is_refused_naming_the_limit() {
        let long = EngineConfig {
            window: Nanos::from_millis(1 << 63),
            ..EngineConfig::default()
        };
        let e = long.validate();
        assert!(matches!(e, Err(SchedError::WindowTooLong { .. })), "{e:?}");
        assert!(e
            .err()
            .map(|e| e.to_string())
            .is_some_and(|m| m.contains("60")));
        let minute = EngineConfig {
            window: MAX_WINDOW,
            ..EngineConfig::default()
        };
        assert_eq!(minute.validate(), Ok(()));
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert_eq!(EngineConfig::default().validate(), Ok(()));
        let tiny = EngineConfig {
            timeslice: Some(Nanos::from_micros(1)),
            ..EngineConfig::default()
        };
        assert!(matches!(
            tiny.validate(),
            Err(SchedError::TimesliceOutOfRange { .. })
        ));
        let short = EngineConfig {
            window: Nanos::from_micros(100),
            ..EngineConfig::default()
        };
        assert!(matches!(
            short.validate(),
            Err(SchedError::WindowTooShort { .. })
        ));
    }

    #[test]
    fn deserializes_with_defaults() -> Result<(), serde_json::Error> {
        let c: EngineConfig = serde_json::from_str(r#"{"policy":"fixed-share"}"#)?;
        assert_eq!(c, EngineConfig::with_policy(Policy::FixedShare));
        assert!(serde_json::from_str::<EngineConfig>(r#"{"policy":"x"}"#).is_err());
        Ok(())
    }
}
