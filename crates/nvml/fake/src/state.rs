//! The fake's whole world: the GPUs of one pretend host, read from and written back to a JSON
//! file, so a test sets up a host by writing the file and sees what was set by reading it.
//!
//! Numbers are NVML's own: `policy` is an `NVML_VGPU_SCHEDULER_POLICY_*`, `arr_mode` an
//! `NVML_VGPU_SCHEDULER_ARR_*`, `vm_id_type` an `nvmlVgpuVmIdType_t`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The pretend host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeHost {
    /// What `nvmlSystemGetDriverVersion` reports.
    pub driver_version: String,
    /// The GPUs, in the order `nvmlDeviceGetHandleByIndex_v2` numbers them.
    pub gpus: Vec<FakeGpu>,
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    /// PCI address, `0000:3c:00.0`.
    pub pci: String,
    /// Marketing name (`nvmlDeviceGetName`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Whether NVIDIA's vGPU manager drives the GPU ("vGPU host mode" in NVML's reference).
    pub vgpu_manager: bool,
    /// MIG mode on (NVML refuses the vGPU scheduler and heterogeneous mode then).
    #[serde(default)]
    pub mig_enabled: bool,
    /// vGPU heterogeneous mode (mixed sizes with placements).
    #[serde(default)]
    pub heterogeneous: bool,
    /// The vGPU scheduler as last set.
    #[serde(default)]
    pub scheduler: FakeScheduler,
    /// What `nvmlDeviceGetVgpuSchedulerCapabilities` reports.
    #[serde(default)]
    pub capabilities: FakeCapabilities,
    /// Active vGPU instances: one per running VM's vGPU.
    #[serde(default)]
    pub vgpus: Vec<FakeVgpu>,
    /// Software-runlist log entries `nvmlDeviceGetVgpuSchedulerLog` hands out.
    #[serde(default)]
    pub log: Vec<FakeLogEntry>,
    /// Utilisation samples of guest processes (`nvmlDeviceGetVgpuProcessUtilization`).
    #[serde(default)]
    pub processes: Vec<FakeProcessSample>,
    /// The control file of a simulated host (`gvm-vgpu-sim`'s
    /// `sys/kernel/debug/gvm-sim/control`) serving this GPU's VF tree. On a real host the
    /// driver's VF tree follows NVML's heterogeneous mode; here a successful mode change also
    /// writes `vf-heterogeneous <pci> on|off` there, so the two stay one host. A test
    /// coupling, absent from NVML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_control: Option<String>,
}

fn default_name() -> String {
    "NVIDIA H200".to_owned()
}

/// The vGPU scheduler of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeScheduler {
    /// `NVML_VGPU_SCHEDULER_POLICY_*`.
    pub policy: u32,
    /// `NVML_VGPU_SCHEDULER_ARR_*`.
    pub arr_mode: u32,
    /// Time slice in ns (0: the driver's default).
    pub timeslice_ns: u32,
    /// ARR averaging factor.
    pub avg_factor: u32,
    /// ARR scheduling frequency.
    pub frequency: u32,
}

impl Default for FakeScheduler {
    /// What a freshly loaded vGPU manager runs: best effort, ARR at its default.
    fn default() -> Self {
        FakeScheduler {
            policy: nvml_wrapper_sys::bindings::NVML_VGPU_SCHEDULER_POLICY_BEST_EFFORT,
            arr_mode: nvml_wrapper_sys::bindings::NVML_VGPU_SCHEDULER_ARR_DEFAULT,
            timeslice_ns: 0,
            avg_factor: 0,
            frequency: 0,
        }
    }
}

/// The limits `nvmlDeviceGetVgpuSchedulerCapabilities` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeCapabilities {
    /// Supported `NVML_VGPU_SCHEDULER_POLICY_*` values (at most 3).
    pub supported: Vec<u32>,
    /// Shortest time slice, ns.
    pub min_timeslice_ns: u32,
    /// Longest time slice, ns.
    pub max_timeslice_ns: u32,
    /// Whether adaptive round robin can be turned on.
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

impl Default for FakeCapabilities {
    fn default() -> Self {
        FakeCapabilities {
            supported: vec![1, 2, 3],
            min_timeslice_ns: 1_000_000,
            max_timeslice_ns: 30_000_000,
            arr_supported: true,
            min_frequency: 60,
            max_frequency: 960,
            min_avg_factor: 1,
            max_avg_factor: 60,
        }
    }
}

/// One active vGPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeVgpu {
    /// The `nvmlVgpuInstance_t` (never 0).
    pub instance: u32,
    /// vGPU UUID.
    pub uuid: String,
    /// VM ID (a UUID or a domain ID, see `vm_id_type`).
    pub vm_id: String,
    /// `nvmlVgpuVmIdType_t`: 0 domain ID, 1 UUID.
    #[serde(default = "vm_id_is_uuid")]
    pub vm_id_type: u32,
    /// Framebuffer in use by the VM, bytes.
    pub fb_usage: u64,
}

fn vm_id_is_uuid() -> u32 {
    nvml_wrapper_sys::bindings::nvmlVgpuVmIdType_NVML_VGPU_VM_ID_UUID
}

/// One software-runlist log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeLogEntry {
    /// ns.
    pub timestamp: u64,
    /// ns.
    pub time_run_total: u64,
    /// ns.
    pub time_run: u64,
    /// Software runlist.
    pub sw_runlist_id: u32,
    /// ns.
    pub target_time_slice: u64,
    /// ns.
    pub cumulative_preemption_time: u64,
}

/// One guest process's utilisation sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeProcessSample {
    /// The vGPU instance the process runs on.
    pub vgpu_instance: u32,
    /// The process ID in the guest.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// CPU timestamp of the sample, µs.
    pub timestamp_us: u64,
    /// SM utilisation, percent.
    pub sm: u32,
    /// Framebuffer utilisation, percent.
    pub mem: u32,
    /// Encoder utilisation, percent.
    pub enc: u32,
    /// Decoder utilisation, percent.
    pub dec: u32,
}

/// Why the state file could not be used.
#[derive(Debug)]
pub struct StateError(pub String);

impl FakeHost {
    /// Reads the state file.
    pub fn load(path: &Path) -> Result<FakeHost, StateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StateError(format!("read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| StateError(format!("parse {}: {e}", path.display())))
    }

    /// Writes the state file back (through a sibling temporary file and a rename).
    pub fn store(&self, path: &Path) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| StateError(format!("serialise: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| StateError(format!("write {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_the_defaults_and_round_trips() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|e| StateError(e.to_string()))?;
        let path = dir.path().join("nvml-fake.json");
        std::fs::write(
            &path,
            r#"{"driver_version":"1.0","gpus":[{"pci":"0000:3c:00.0","vgpu_manager":true}]}"#,
        )
        .map_err(|e| StateError(e.to_string()))?;
        let host = FakeHost::load(&path)?;
        assert_eq!(host.gpus[0].scheduler.policy, 1);
        assert_eq!(host.gpus[0].capabilities.supported, vec![1, 2, 3]);
        host.store(&path)?;
        assert_eq!(FakeHost::load(&path)?, host);
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<FakeHost, _> =
            serde_json::from_str(r#"{"driver_version":"1","gpus":[],"gpu":[]}"#);
        assert!(r.is_err());
    }
}
