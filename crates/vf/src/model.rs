//! The objects of the VF vGPU ABI: physical functions, their VFs, vGPU types and VF state.

use serde::{Deserialize, Serialize};

/// One vGPU type as a VF offers it: a line `ID : name` of `creatable_vgpu_types`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuType {
    /// The numeric ID written to `current_vgpu_type`.
    pub id: u32,
    /// The name, e.g. `NVIDIA H100-20C`.
    pub name: String,
}

impl VgpuType {
    /// Whether `wanted` names this type: the whole name, or the name without its
    /// vendor prefix (`H100-20C` for `NVIDIA H100-20C`), case-insensitively.
    pub fn matches(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        self.name.eq_ignore_ascii_case(wanted)
            || self
                .name
                .rsplit(' ')
                .next()
                .is_some_and(|short| short.eq_ignore_ascii_case(wanted))
    }
}

/// What one VF holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfState {
    /// `current_vgpu_type`: 0 when the VF has no vGPU.
    pub current: u32,
    /// `creatable_vgpu_types`: what could be set on it now.
    pub creatable: Vec<VgpuType>,
    /// `placement_id`, where present and numeric.
    pub placement_id: Option<u32>,
    /// `gpu_instance_id`, where present and numeric.
    pub gpu_instance_id: Option<u32>,
}

/// One virtual function of a PF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vf {
    /// Its index N (the `virtfnN` link of the PF).
    pub index: u32,
    /// Its PCI address, e.g. `0000:41:00.4`.
    pub address: String,
    /// Its vGPU state; `None` when the VF has no `nvidia/` directory (vGPU manager absent).
    pub state: Option<VfState>,
}

/// One SR-IOV physical function (a GPU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pf {
    /// Its PCI address.
    pub address: String,
    /// `sriov_numvfs`.
    pub num_vfs: u32,
    /// `sriov_totalvfs`, where present.
    pub total_vfs: Option<u32>,
    /// Its enabled VFs, by index.
    pub vfs: Vec<Vf>,
}
