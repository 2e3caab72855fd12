//! Wire types of the live GPU time-slice scheduler (`policy_get`, `policy_set`).
//!
//! gvm-vgpud runs one scheduling engine per physical GPU. Operators name a GPU by its
//! position in PCI order (`0..N-1`, [`GpuSched::gpu`]) or its PCI address
//! ([`GpuSched::pci`]); GVM's UVM index (`0`, `8`, ...) is internal and only shown as
//! [`GpuSched::gvm_index`]. Each GPU has a policy (`best-effort`, `equal-share`,
//! `fixed-share`), a time slice and an averaging window; [`SchedStatus`] reports,
//! per GPU, that configuration, the engine's knob-write counters and, per vGPU, the
//! share the policy aims at next to the share achieved over the last window.
//! Shares are fractions of the GPU's time in `[0, 1]`.
//!
//! On a GPU driven by NVIDIA's vGPU manager the driver has a vGPU scheduler of its own;
//! [`GpuSched::nvidia`] reports it as NVML does ([`NvidiaSched`]), and
//! [`SchedStatus::without_nvml`] says why the daemon has no NVML at all. Both are optional on
//! the wire: an older daemon sends neither and an older client ignores them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A GPU's scheduling configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// `best-effort`, `equal-share` or `fixed-share`.
    pub policy: String,
    /// Configured time slice in µs; `None` = 2 ms with at most 8 vGPUs, 1 ms above.
    #[serde(default)]
    pub timeslice_us: Option<u64>,
    /// Averaging window in ms.
    pub window_ms: u64,
}

/// Scheduler counters of one GPU since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedCounters {
    /// Engine ticks run.
    pub ticks: u64,
    /// `compute.priority` writes the scheduler made (one per owner gcgroup).
    pub priority_writes: u64,
    /// `compute.freeze` writes the scheduler made (one per owner gcgroup).
    pub freeze_writes: u64,
    /// Seconds the counters cover.
    pub seconds: f64,
}

impl SchedCounters {
    /// Knob writes per second over the counters' span (0 before any time passed).
    pub fn writes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.priority_writes + self.freeze_writes) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Where one vGPU stands against its GPU's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedVgpu {
    /// The vGPU.
    pub uuid: Uuid,
    /// Catalog type name, when managed.
    #[serde(default)]
    pub type_name: Option<String>,
    /// Share the policy aims at (0 while the vGPU has no work).
    pub target: f64,
    /// Estimated share of GPU time over the last complete window; `None` until one completed.
    #[serde(default)]
    pub achieved: Option<f64>,
    /// Frozen by the operator (`gvm-vgpu freeze`) or a paused domain.
    pub frozen_by_user: bool,
    /// Frozen by the scheduler (over its share).
    pub frozen_by_scheduler: bool,
    /// Pending kernels over its owners' gcgroups on this GPU at the last tick.
    pub pending_kernels: u64,
    /// GPU memory resident over those gcgroups, in bytes.
    pub memory_current: u64,
    /// `compute.priority` the scheduler holds, when it overrides the type's.
    #[serde(default)]
    pub priority: Option<u8>,
}

/// One physical GPU's scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSched {
    /// Position of the GPU in PCI order (`0..N-1`, what `--gpu` takes); `None` for a GPU
    /// GVM numbers that no PCI mdev parent maps to.
    pub gpu: Option<u32>,
    /// PCI address of the GPU (`0000:3c:00.0`), when known.
    pub pci: Option<String>,
    /// GVM's UVM index of the GPU (internal: the `<gpu>` of GVM's debugfs paths), when
    /// known.
    pub gvm_index: Option<u32>,
    /// mdev parents whose vGPUs run on it.
    pub parents: Vec<String>,
    /// Its configuration.
    pub config: PolicyConfig,
    /// Slice in force now, in µs (after the 2 ms / 1 ms default and priority rounding).
    pub slice_us: u64,
    /// Knob writes and ticks.
    pub counters: SchedCounters,
    /// Its vGPUs, by UUID.
    pub vgpus: Vec<SchedVgpu>,
    /// NVIDIA's own vGPU scheduler on the GPU, as NVML reports it; `None` without NVML or
    /// when NVML does not know the GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvidia: Option<NvidiaSched>,
}

/// What NVML says of NVIDIA's vGPU scheduler on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NvidiaSchedStatus {
    /// The GPU is in vGPU host mode: NVML reports the scheduler.
    VgpuHost,
    /// NVML refuses the vGPU calls on the GPU (no vGPU manager, or MIG on).
    NotAvailable,
    /// NVML failed otherwise; [`NvidiaSched::reason`] says how.
    Unknown,
}

/// How a `policy set` went for NVIDIA's scheduler of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NvidiaChangeOutcome {
    /// NVML set the scheduler; [`NvidiaSched`] holds what it reads back.
    Set,
    /// NVML allows no change while VMs run on the GPU: the daemon's own scheduler and the
    /// guests' agents carry the policy.
    VmsRunning,
    /// Not set: the GPU has no NVIDIA vGPU scheduler, or the setting does not fit it.
    NotSet,
}

/// The answer of NVIDIA's scheduler to one `policy set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvidiaChange {
    /// How it went.
    pub outcome: NvidiaChangeOutcome,
    /// The same in words, for the operator.
    pub message: String,
}

/// NVIDIA's vGPU scheduler on one GPU (NVIDIA vGPU hosts, through NVML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvidiaSched {
    /// Whether NVML reports it.
    pub status: NvidiaSchedStatus,
    /// The policy it runs (`best-effort`, `equal-share`, `fixed-share`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its fixed time slice in µs; `None`: the driver's default or adaptive round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeslice_us: Option<u64>,
    /// Adaptive round robin (the driver picks the slices) is on.
    #[serde(default)]
    pub adaptive: bool,
    /// vGPU instances (one per running VM's vGPU) NVML reports on the GPU, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_vgpus: Option<u32>,
    /// Why the scheduler is not reported (NVML's error), when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In the answer to `policy set` for this GPU: what NVIDIA's scheduler did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<NvidiaChange>,
}

/// The answer to `policy_get` and `policy_set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedStatus {
    /// Configuration of GPUs without their own (and of GPUs not seen yet).
    pub default: PolicyConfig,
    /// Every GPU that has vGPUs with owners, or its own configuration.
    pub gpus: Vec<GpuSched>,
    /// Stored per-GPU configurations of an older daemon, keyed by a GVM index that maps to
    /// no GPU of this host: kept aside in the policy file, not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmapped: Vec<UnmappedPolicy>,
    /// Why the daemon has no NVML (no `libnvidia-ml.so.1`, no driver, a simulated host):
    /// NVIDIA's vGPU scheduler is then neither read nor set. `None` with NVML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_nvml: Option<String>,
}

/// A stored per-GPU configuration whose GPU could not be found (see
/// [`SchedStatus::unmapped`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmappedPolicy {
    /// The GVM index it was stored under.
    pub gvm_index: u32,
    /// The configuration.
    pub config: PolicyConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_give_a_rate_and_status_round_trips() -> Result<(), serde_json::Error> {
        let c = SchedCounters {
            ticks: 100,
            priority_writes: 4,
            freeze_writes: 16,
            seconds: 2.0,
        };
        assert_eq!(c.writes_per_second(), 10.0);
        assert_eq!(SchedCounters::default().writes_per_second(), 0.0);
        let s = SchedStatus {
            default: PolicyConfig {
                policy: "best-effort".into(),
                timeslice_us: None,
                window_ms: 1000,
            },
            gpus: vec![GpuSched {
                gpu: Some(1),
                pci: Some("0000:02:00.0".into()),
                gvm_index: Some(8),
                parents: vec!["0000:02:00.0".into()],
                config: PolicyConfig {
                    policy: "equal-share".into(),
                    timeslice_us: Some(1024),
                    window_ms: 500,
                },
                slice_us: 1024,
                counters: c,
                vgpus: vec![SchedVgpu {
                    uuid: Uuid::nil(),
                    type_name: Some("sim-4c".into()),
                    target: 0.5,
                    achieved: Some(0.49),
                    frozen_by_user: false,
                    frozen_by_scheduler: true,
                    pending_kernels: 4,
                    memory_current: 1 << 30,
                    priority: Some(9),
                }],
                nvidia: Some(NvidiaSched {
                    status: NvidiaSchedStatus::VgpuHost,
                    policy: Some("equal-share".into()),
                    timeslice_us: Some(2000),
                    adaptive: false,
                    active_vgpus: Some(1),
                    reason: None,
                    change: Some(NvidiaChange {
                        outcome: NvidiaChangeOutcome::VmsRunning,
                        message: "NVIDIA allows no change".into(),
                    }),
                }),
            }],
            unmapped: vec![UnmappedPolicy {
                gvm_index: 16,
                config: PolicyConfig {
                    policy: "fixed-share".into(),
                    timeslice_us: None,
                    window_ms: 1000,
                },
            }],
            without_nvml: None,
        };
        let back: SchedStatus = serde_json::from_str(&serde_json::to_string(&s)?)?;
        assert_eq!(back, s);
        Ok(())
    }

    #[test]
    fn an_older_daemons_status_without_the_nvidia_fields_still_reads(
    ) -> Result<(), serde_json::Error> {
        let old = r#"{"default":{"policy":"best-effort","window_ms":1000},"gpus":[{"gpu":0,
            "pci":"0000:3b:00.0","gvm_index":0,"parents":[],"config":{"policy":"equal-share",
            "window_ms":1000},"slice_us":2000,"counters":{"ticks":0,"priority_writes":0,
            "freeze_writes":0,"seconds":0.0},"vgpus":[]}]}"#;
        let s: SchedStatus = serde_json::from_str(old)?;
        assert_eq!(
            (s.gpus[0].nvidia.clone(), s.without_nvml.clone()),
            (None, None)
        );
        let text = serde_json::to_string(&s)?;
        assert!(
            !text.contains("nvidia") && !text.contains("without_nvml"),
            "{text}"
        );
        Ok(())
    }
}
