//! Active vGPU instances and their guests' processes, as NVML reports them.

use serde::Serialize;

/// How a VM's ID is written (`nvmlVgpuVmIdType_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmIdKind {
    /// A domain ID.
    Domain,
    /// A UUID (libvirt's domain UUID on KVM).
    Uuid,
}

/// One active vGPU instance: one running VM's vGPU on the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgpuInstance {
    /// NVML's `nvmlVgpuInstance_t`, what process samples name the vGPU by.
    pub instance: u32,
    /// The vGPU's UUID (`nvmlVgpuInstanceGetUUID`).
    pub uuid: String,
    /// The VM's ID (`nvmlVgpuInstanceGetVmID`).
    pub vm_id: String,
    /// How `vm_id` is written.
    pub vm_id_kind: VmIdKind,
    /// Framebuffer the VM uses, bytes (`nvmlVgpuInstanceGetFbUsage`).
    pub fb_usage_bytes: u64,
}

/// One guest process's recent utilisation of its vGPU
/// (`nvmlVgpuProcessUtilizationSample_t`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VgpuProcessSample {
    /// The vGPU instance ([`VgpuInstance::instance`]) the process runs on.
    pub vgpu_instance: u32,
    /// Its process ID in the guest.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// CPU timestamp of the sample, µs.
    pub timestamp_us: u64,
    /// SM (3D/compute) utilisation, percent.
    pub sm_percent: u32,
    /// Framebuffer utilisation, percent.
    pub mem_percent: u32,
    /// Video encoder utilisation, percent.
    pub enc_percent: u32,
    /// Video decoder utilisation, percent.
    pub dec_percent: u32,
}
