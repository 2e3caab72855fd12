//! The vGPU scheduler of a GPU as NVML sees it, and the pure mapping from and to the
//! project's policies.
//!
//! NVIDIA's vGPU manager time-slices the vGPUs of one GPU under one of three policies
//! (`NVML_VGPU_SCHEDULER_POLICY_*`): best effort, equal share and fixed share, the same three
//! the project's engine implements (`gvm_sched::Policy`). The time slice is either fixed
//! (adaptive round robin, ARR, off: one `timeslice` in ns) or adapted by the driver (ARR on: an
//! averaging factor and a scheduling frequency), or left to the driver's default.

use gvm_sched::Policy;
use nvml_wrapper_sys::bindings::{
    NVML_VGPU_SCHEDULER_ARR_DEFAULT, NVML_VGPU_SCHEDULER_ARR_DISABLE,
    NVML_VGPU_SCHEDULER_ARR_ENABLE, NVML_VGPU_SCHEDULER_POLICY_BEST_EFFORT,
    NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE, NVML_VGPU_SCHEDULER_POLICY_FIXED_SHARE,
};
use serde::Serialize;
use thiserror::Error;

/// `NVML_VGPU_SCHEDULER_POLICY_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerPolicy {
    /// `NVML_VGPU_SCHEDULER_POLICY_BEST_EFFORT`.
    BestEffort,
    /// `NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE`.
    EqualShare,
    /// `NVML_VGPU_SCHEDULER_POLICY_FIXED_SHARE`.
    FixedShare,
}

impl SchedulerPolicy {
    /// The name, the same as the project's policy of that name (`equal-share`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulerPolicy::BestEffort => "best-effort",
            SchedulerPolicy::EqualShare => "equal-share",
            SchedulerPolicy::FixedShare => "fixed-share",
        }
    }

    /// NVML's number.
    pub const fn to_nvml(self) -> u32 {
        match self {
            SchedulerPolicy::BestEffort => NVML_VGPU_SCHEDULER_POLICY_BEST_EFFORT,
            SchedulerPolicy::EqualShare => NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE,
            SchedulerPolicy::FixedShare => NVML_VGPU_SCHEDULER_POLICY_FIXED_SHARE,
        }
    }

    /// From NVML's number; `None` for `NVML_VGPU_SCHEDULER_POLICY_UNKNOWN` and others.
    pub const fn from_nvml(n: u32) -> Option<SchedulerPolicy> {
        match n {
            NVML_VGPU_SCHEDULER_POLICY_BEST_EFFORT => Some(SchedulerPolicy::BestEffort),
            NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE => Some(SchedulerPolicy::EqualShare),
            NVML_VGPU_SCHEDULER_POLICY_FIXED_SHARE => Some(SchedulerPolicy::FixedShare),
            _ => None,
        }
    }
}

/// `NVML_VGPU_SCHEDULER_ARR_*`: whether adaptive round robin picks the time slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrMode {
    /// `NVML_VGPU_SCHEDULER_ARR_DEFAULT`.
    Default,
    /// `NVML_VGPU_SCHEDULER_ARR_DISABLE`.
    Disabled,
    /// `NVML_VGPU_SCHEDULER_ARR_ENABLE`.
    Enabled,
}

impl ArrMode {
    /// NVML's number.
    pub const fn to_nvml(self) -> u32 {
        match self {
            ArrMode::Default => NVML_VGPU_SCHEDULER_ARR_DEFAULT,
            ArrMode::Disabled => NVML_VGPU_SCHEDULER_ARR_DISABLE,
            ArrMode::Enabled => NVML_VGPU_SCHEDULER_ARR_ENABLE,
        }
    }

    /// From NVML's number.
    pub const fn from_nvml(n: u32) -> Option<ArrMode> {
        match n {
            NVML_VGPU_SCHEDULER_ARR_DEFAULT => Some(ArrMode::Default),
            NVML_VGPU_SCHEDULER_ARR_DISABLE => Some(ArrMode::Disabled),
            NVML_VGPU_SCHEDULER_ARR_ENABLE => Some(ArrMode::Enabled),
            _ => None,
        }
    }
}

/// How the time slice is chosen in a setting (`nvmlVgpuSchedulerSetParams_t` and the ARR
/// mode that says which member of it counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SliceSetting {
    /// ARR at its default, time slice 0: the driver's own default.
    DriverDefault,
    /// ARR off, this fixed time slice.
    Fixed {
        /// Time slice, ns.
        timeslice_ns: u32,
    },
    /// ARR on.
    Adaptive {
        /// Averaging factor.
        avg_factor: u32,
        /// Scheduling frequency.
        frequency: u32,
    },
}

impl SliceSetting {
    /// The ARR mode the setting is sent with.
    pub const fn arr_mode(self) -> ArrMode {
        match self {
            SliceSetting::DriverDefault => ArrMode::Default,
            SliceSetting::Fixed { .. } => ArrMode::Disabled,
            SliceSetting::Adaptive { .. } => ArrMode::Enabled,
        }
    }
}

/// What `nvmlDeviceSetVgpuSchedulerState` is asked to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchedulerSetting {
    /// The policy.
    pub policy: SchedulerPolicy,
    /// The time slice.
    pub slice: SliceSetting,
}

/// What `nvmlDeviceGetVgpuSchedulerState` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchedulerState {
    /// The policy; `None` when NVML reports one it does not define (`..._UNKNOWN`).
    pub policy: Option<SchedulerPolicy>,
    /// NVML's policy number as reported.
    pub policy_nvml: u32,
    /// The ARR mode; `None` for a number NVML does not define.
    pub arr_mode: Option<ArrMode>,
    /// Time slice, ns (0: the driver's default). NVML: "not relevant if the BEST EFFORT
    /// policy is set".
    pub timeslice_ns: u32,
    /// ARR averaging factor, with ARR on.
    pub avg_factor: Option<u32>,
}

impl SchedulerState {
    /// The setting that sets exactly this state again, when the state says all of it: a
    /// defined policy with a fixed slice (ARR off), or with ARR at its default and slice 0.
    /// `None` with ARR on (a get does not report the frequency) or anything NVML does not
    /// define.
    pub fn as_setting(&self) -> Option<SchedulerSetting> {
        let slice = match (self.arr_mode?, self.timeslice_ns) {
            (ArrMode::Disabled, timeslice_ns) if timeslice_ns != 0 => {
                SliceSetting::Fixed { timeslice_ns }
            }
            (ArrMode::Default, 0) => SliceSetting::DriverDefault,
            _ => return None,
        };
        Some(SchedulerSetting {
            policy: self.policy?,
            slice,
        })
    }
}

/// What `nvmlDeviceGetVgpuSchedulerCapabilities` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerCapabilities {
    /// The policies the GPU supports.
    pub supported: Vec<SchedulerPolicy>,
    /// Shortest time slice, ns.
    pub min_timeslice_ns: u32,
    /// Longest time slice, ns.
    pub max_timeslice_ns: u32,
    /// Whether ARR can be turned on.
    pub arr_supported: bool,
    /// ARR frequency range.
    pub min_frequency: u32,
    /// ARR frequency range.
    pub max_frequency: u32,
    /// ARR averaging factor range.
    pub min_avg_factor: u32,
    /// ARR averaging factor range.
    pub max_avg_factor: u32,
}

/// One software-runlist entry of `nvmlDeviceGetVgpuSchedulerLog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SchedulerLogEntry {
    /// When the runlist was preempted, ns.
    pub timestamp_ns: u64,
    /// Total time the runlist ran, ns.
    pub time_run_total_ns: u64,
    /// Time it ran before this preemption, ns.
    pub time_run_ns: u64,
    /// The software runlist.
    pub sw_runlist_id: u32,
    /// The time slice after deduction, ns.
    pub target_time_slice_ns: u64,
    /// Preemption time of the runlist, ns.
    pub cumulative_preemption_time_ns: u64,
}

/// What `nvmlDeviceGetVgpuSchedulerLog` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedulerLog {
    /// Engine the entries are of (`NVML_VGPU_SCHEDULER_ENGINE_TYPE_*`).
    pub engine_id: u32,
    /// The scheduler state the log was taken under.
    pub state: SchedulerState,
    /// The entries NVML filled (`entriesCount` of them, at most 200).
    pub entries: Vec<SchedulerLogEntry>,
}

/// The project's configuration of a GPU's scheduler (`gvm_proto::PolicyConfig`'s `policy` and
/// `timeslice_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProjectPolicy {
    /// `best-effort`, `equal-share` or `fixed-share`.
    pub policy: Policy,
    /// Configured time slice in µs; `None`: the default.
    pub timeslice_us: Option<u64>,
}

/// A setting that cannot be mapped or is outside what the GPU takes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    /// A time slice NVML's 32-bit ns field cannot hold.
    #[error("time slice {timeslice_us} µs does not fit NVML's field (at most 4294967 µs): give a shorter one")]
    TimesliceTooLong {
        /// The slice asked for.
        timeslice_us: u64,
    },
    /// NVML reports a policy it does not define.
    #[error("NVML reports scheduler policy {policy_nvml}, which it does not define")]
    UnknownPolicy {
        /// NVML's number.
        policy_nvml: u32,
    },
    /// A policy the GPU does not list.
    #[error("the GPU does not support the {policy:?} vGPU scheduler (it supports {supported:?})")]
    PolicyUnsupported {
        /// The policy asked for.
        policy: SchedulerPolicy,
        /// What the GPU lists.
        supported: Vec<SchedulerPolicy>,
    },
    /// A fixed slice outside the GPU's range.
    #[error(
        "time slice {timeslice_ns} ns is outside the GPU's {min_ns}..={max_ns} ns: pick one inside"
    )]
    TimesliceOutOfRange {
        /// The slice asked for.
        timeslice_ns: u32,
        /// The GPU's shortest.
        min_ns: u32,
        /// The GPU's longest.
        max_ns: u32,
    },
    /// ARR asked for on a GPU without it.
    #[error("the GPU does not support adaptive round robin: set a fixed time slice instead")]
    ArrUnsupported,
    /// ARR parameters outside the GPU's ranges.
    #[error("ARR averaging factor {avg_factor} / frequency {frequency} outside the GPU's {min_avg_factor}..={max_avg_factor} / {min_frequency}..={max_frequency}")]
    ArrOutOfRange {
        /// Asked for.
        avg_factor: u32,
        /// Asked for.
        frequency: u32,
        /// The GPU's range.
        min_avg_factor: u32,
        /// The GPU's range.
        max_avg_factor: u32,
        /// The GPU's range.
        min_frequency: u32,
        /// The GPU's range.
        max_frequency: u32,
    },
}

/// The NVML setting for the project's policy: the same policy; a configured time slice as a
/// fixed slice (ARR off); no configured slice as the driver's default.
pub fn setting_for(project: ProjectPolicy) -> Result<SchedulerSetting, SettingError> {
    let policy = match project.policy {
        Policy::BestEffort => SchedulerPolicy::BestEffort,
        Policy::EqualShare => SchedulerPolicy::EqualShare,
        Policy::FixedShare => SchedulerPolicy::FixedShare,
    };
    let slice = match project.timeslice_us {
        None => SliceSetting::DriverDefault,
        Some(us) => SliceSetting::Fixed {
            timeslice_ns: us
                .checked_mul(1000)
                .and_then(|ns| u32::try_from(ns).ok())
                .ok_or(SettingError::TimesliceTooLong { timeslice_us: us })?,
        },
    };
    Ok(SchedulerSetting { policy, slice })
}

/// The project's policy for what NVML reports: a fixed slice (ARR off or default, slice not 0)
/// in whole µs, rounded down; ARR on or slice 0 as no configured slice.
pub fn project_policy(state: &SchedulerState) -> Result<ProjectPolicy, SettingError> {
    let policy = match state.policy {
        Some(SchedulerPolicy::BestEffort) => Policy::BestEffort,
        Some(SchedulerPolicy::EqualShare) => Policy::EqualShare,
        Some(SchedulerPolicy::FixedShare) => Policy::FixedShare,
        None => {
            return Err(SettingError::UnknownPolicy {
                policy_nvml: state.policy_nvml,
            })
        }
    };
    let adaptive = state.arr_mode == Some(ArrMode::Enabled);
    let timeslice_us =
        (!adaptive && state.timeslice_ns != 0).then_some(u64::from(state.timeslice_ns) / 1000);
    Ok(ProjectPolicy {
        policy,
        timeslice_us,
    })
}

/// Whether the GPU takes `setting`, by its capabilities.
pub fn check_setting(
    setting: &SchedulerSetting,
    caps: &SchedulerCapabilities,
) -> Result<(), SettingError> {
    if !caps.supported.contains(&setting.policy) {
        return Err(SettingError::PolicyUnsupported {
            policy: setting.policy,
            supported: caps.supported.clone(),
        });
    }
    match setting.slice {
        SliceSetting::DriverDefault => Ok(()),
        SliceSetting::Fixed { timeslice_ns } => {
            if (caps.min_timeslice_ns..=caps.max_timeslice_ns).contains(&timeslice_ns) {
                Ok(())
            } else {
                Err(SettingError::TimesliceOutOfRange {
                    timeslice_ns,
                    min_ns: caps.min_timeslice_ns,
                    max_ns: caps.max_timeslice_ns,
                })
            }
        }
        SliceSetting::Adaptive {
            avg_factor,
            frequency,
        } => {
            if !caps.arr_supported {
                return Err(SettingError::ArrUnsupported);
            }
            let avg_ok = (caps.min_avg_factor..=caps.max_avg_factor).contains(&avg_factor);
            let freq_ok = (caps.min_frequency..=caps.max_frequency).contains(&frequency);
            if avg_ok && freq_ok {
                Ok(())
            } else {
                Err(SettingError::ArrOutOfRange {
                    avg_factor,
                    frequency,
                    min_avg_factor: caps.min_avg_factor,
                    max_avg_factor: caps.max_avg_factor,
                    min_frequency: caps.min_frequency,
                    max_frequency: caps.max_frequency,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> SchedulerCapabilities {
        SchedulerCapabilities {
            supported: vec![SchedulerPolicy::BestEffort, SchedulerPolicy::EqualShare],
            min_timeslice_ns: 1_000_000,
            max_timeslice_ns: 30_000_000,
            arr_supported: false,
            min_frequency: 60,
            max_frequency: 960,
            min_avg_factor: 1,
            max_avg_factor: 60,
        }
    }

    fn state_of(setting: SchedulerSetting) -> SchedulerState {
        let (timeslice_ns, avg_factor) = match setting.slice {
            SliceSetting::DriverDefault => (0, None),
            SliceSetting::Fixed { timeslice_ns } => (timeslice_ns, None),
            SliceSetting::Adaptive { avg_factor, .. } => (0, Some(avg_factor)),
        };
        SchedulerState {
            policy: Some(setting.policy),
            policy_nvml: setting.policy.to_nvml(),
            arr_mode: Some(setting.slice.arr_mode()),
            timeslice_ns,
            avg_factor,
        }
    }

    #[test]
    fn every_project_policy_maps_to_nvml_and_back() -> Result<(), SettingError> {
        for policy in Policy::ALL {
            for timeslice_us in [None, Some(2000), Some(1024)] {
                let project = ProjectPolicy {
                    policy,
                    timeslice_us,
                };
                let setting = setting_for(project)?;
                assert_eq!(setting.policy.as_str(), policy.as_str());
                assert_eq!(project_policy(&state_of(setting))?, project);
            }
        }
        Ok(())
    }

    #[test]
    fn a_configured_slice_is_a_fixed_slice_in_ns_and_none_is_the_driver_default(
    ) -> Result<(), SettingError> {
        let s = setting_for(ProjectPolicy {
            policy: Policy::EqualShare,
            timeslice_us: Some(2000),
        })?;
        assert_eq!(
            s,
            SchedulerSetting {
                policy: SchedulerPolicy::EqualShare,
                slice: SliceSetting::Fixed {
                    timeslice_ns: 2_000_000
                },
            }
        );
        assert_eq!(
            s.slice.arr_mode().to_nvml(),
            NVML_VGPU_SCHEDULER_ARR_DISABLE
        );
        let d = setting_for(ProjectPolicy {
            policy: Policy::FixedShare,
            timeslice_us: None,
        })?;
        assert_eq!(d.slice, SliceSetting::DriverDefault);
        assert_eq!(d.policy.to_nvml(), NVML_VGPU_SCHEDULER_POLICY_FIXED_SHARE);
        Ok(())
    }

    #[test]
    fn a_slice_nvml_cannot_hold_is_refused() {
        let r = setting_for(ProjectPolicy {
            policy: Policy::EqualShare,
            timeslice_us: Some(5_000_000),
        });
        assert_eq!(
            r,
            Err(SettingError::TimesliceTooLong {
                timeslice_us: 5_000_000
            })
        );
    }

    #[test]
    fn adaptive_round_robin_reads_back_as_no_configured_slice() -> Result<(), SettingError> {
        let state = SchedulerState {
            policy: Some(SchedulerPolicy::EqualShare),
            policy_nvml: 2,
            arr_mode: Some(ArrMode::Enabled),
            timeslice_ns: 3_000_000,
            avg_factor: Some(33),
        };
        assert_eq!(project_policy(&state)?.timeslice_us, None);
        let unknown = SchedulerState {
            policy: None,
            policy_nvml: 0,
            ..state
        };
        assert_eq!(
            project_policy(&unknown),
            Err(SettingError::UnknownPolicy { policy_nvml: 0 })
        );
        Ok(())
    }

    #[test]
    fn settings_are_checked_against_the_capabilities() {
        let c = caps();
        let fixed = |policy, timeslice_ns| SchedulerSetting {
            policy,
            slice: SliceSetting::Fixed { timeslice_ns },
        };
        assert_eq!(
            check_setting(&fixed(SchedulerPolicy::EqualShare, 2_000_000), &c),
            Ok(())
        );
        assert!(matches!(
            check_setting(&fixed(SchedulerPolicy::FixedShare, 2_000_000), &c),
            Err(SettingError::PolicyUnsupported { .. })
        ));
        assert!(matches!(
            check_setting(&fixed(SchedulerPolicy::EqualShare, 500), &c),
            Err(SettingError::TimesliceOutOfRange { .. })
        ));
        let arr = SchedulerSetting {
            policy: SchedulerPolicy::EqualShare,
            slice: SliceSetting::Adaptive {
                avg_factor: 33,
                frequency: 480,
            },
        };
        assert_eq!(check_setting(&arr, &c), Err(SettingError::ArrUnsupported));
        let with_arr = SchedulerCapabilities {
            arr_supported: true,
            ..c
        };
        assert_eq!(check_setting(&arr, &with_arr), Ok(()));
    }

    #[test]
    fn only_a_fully_reported_state_gives_a_setting_back() {
        let fixed = SchedulerSetting {
            policy: SchedulerPolicy::FixedShare,
            slice: SliceSetting::Fixed {
                timeslice_ns: 4_000_000,
            },
        };
        assert_eq!(state_of(fixed).as_setting(), Some(fixed));
        let default = SchedulerSetting {
            policy: SchedulerPolicy::BestEffort,
            slice: SliceSetting::DriverDefault,
        };
        assert_eq!(state_of(default).as_setting(), Some(default));
        let adaptive = SchedulerSetting {
            policy: SchedulerPolicy::EqualShare,
            slice: SliceSetting::Adaptive {
                avg_factor: 33,
                frequency: 480,
            },
        };
        assert_eq!(
            state_of(adaptive).as_setting(),
            None,
            "the frequency is not reported"
        );
        let unknown = SchedulerState {
            policy: None,
            ..state_of(default)
        };
        assert_eq!(unknown.as_setting(), None);
    }

    #[test]
    fn nvml_numbers_round_trip() {
        for p in [
            SchedulerPolicy::BestEffort,
            SchedulerPolicy::EqualShare,
            SchedulerPolicy::FixedShare,
        ] {
            assert_eq!(SchedulerPolicy::from_nvml(p.to_nvml()), Some(p));
        }
        assert_eq!(SchedulerPolicy::from_nvml(0), None);
        for a in [ArrMode::Default, ArrMode::Disabled, ArrMode::Enabled] {
            assert_eq!(ArrMode::from_nvml(a.to_nvml()), Some(a));
        }
        assert_eq!(ArrMode::from_nvml(3), None);
    }
}
