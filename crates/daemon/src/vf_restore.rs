//! Restoring defined SR-IOV VF vGPUs at daemon start (after a reboot, VFs and their vGPUs are
//! gone: docs/vendor-vfio.md): which PFs need their VFs enabled, in which order the vGPUs are
//! re-created, and which cannot be restored and why. Pure; the core executes the plan.
//!
//! The order is largest first (by the catalog type's memory limit, then UUID), so the big
//! vGPUs that need aligned placements get them before small ones fragment the GPU.
//!
//! Mixed sizes on one GPU need heterogeneous mode, a setting of the GPU that only NVML
//! (or `nvidia-smi vgpu`) can make and that re-enabling the VFs clears. A PF whose
//! definitions mix sizes is marked [`RestorePlan::mixed`]: the daemon sets the mode there
//! through NVML (`nvidia_sched.rs`) after enabling the VFs and before creating. Without NVML
//! (or when NVML refuses) each creation is still tried (the mode may have been set by
//! another tool), and a refusal of a later size is reported as "mixed sizes need
//! heterogeneous mode", with why NVML could not set it, rather than as a bare driver error.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::ports::PfInfo;

/// One autostart VF definition whose vGPU is not live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfToRestore {
    /// The vGPU.
    pub uuid: Uuid,
    /// Its PF.
    pub pf: String,
    /// The VF type name it is created by (`NVIDIA H100-20C`).
    pub kernel_name: String,
    /// Its catalog type's memory limit in bytes (0 when unknown): the order key.
    pub memory: u64,
}

/// What to do to restore the VF vGPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// PFs whose VFs to enable first, with how many (the PF's total, as `sriov-manage -e`).
    pub enable: Vec<(String, u32)>,
    /// The vGPUs to create, in order.
    pub create: Vec<VfToRestore>,
    /// PFs whose definitions (with the live VF vGPUs there) mix sizes.
    pub mixed: BTreeSet<String>,
    /// vGPUs that cannot be restored at all, with why (their PF is not on this host).
    pub refused: Vec<(Uuid, String)>,
}

/// Plan the restore of `wanted` on `pfs`, given the kernel type names of the VF vGPUs live on
/// each PF now (`live_types`: PF → names).
pub fn plan_restore(
    wanted: &[VfToRestore],
    pfs: &[PfInfo],
    live_types: &BTreeMap<String, BTreeSet<String>>,
) -> RestorePlan {
    let mut plan = RestorePlan::default();
    let mut by_pf: BTreeMap<&str, Vec<&VfToRestore>> = BTreeMap::new();
    for w in wanted {
        by_pf.entry(w.pf.as_str()).or_default().push(w);
    }
    for (pf, defs) in by_pf {
        let Some(info) = pfs.iter().find(|p| p.address == pf) else {
            for d in defs {
                plan.refused.push((
                    d.uuid,
                    format!(
                        "its GPU {pf} is not an SR-IOV GPU of this host now (no sriov_numvfs): \
                         check that NVIDIA's vGPU manager is loaded, or redefine the vGPU on a \
                         GPU `gvm-vgpu parents` lists"
                    ),
                ));
            }
            continue;
        };
        let needed = u32::try_from(defs.len()).unwrap_or(u32::MAX);
        if info.num_vfs == 0 {
            plan.enable
                .push((pf.to_string(), info.total_vfs.unwrap_or(needed).max(1)));
        }
        let mut sizes: BTreeSet<&str> = defs.iter().map(|d| d.kernel_name.as_str()).collect();
        if let Some(live) = live_types.get(pf) {
            sizes.extend(live.iter().map(String::as_str));
        }
        if sizes.len() > 1 {
            plan.mixed.insert(pf.to_string());
        }
        plan.create.extend(defs.into_iter().cloned());
    }
    plan.create
        .sort_by(|a, b| b.memory.cmp(&a.memory).then(a.uuid.cmp(&b.uuid)));
    plan
}

/// Why a creation on a mixed PF was refused: the message the restore reports.
/// `enabled_now`: the restore enabled the PF's VFs itself, which cleared the mode; `nvml`:
/// why NVML did not set the mode.
pub fn mixed_sizes_message(pf: &str, kernel_name: &str, enabled_now: bool, nvml: &str) -> String {
    format!(
        "{kernel_name} cannot be created on {pf} beside the other sizes defined there: mixed \
         sizes on one GPU need heterogeneous mode{}, and gvm-vgpud could not set it ({nvml}); \
         set it (`nvidia-smi vgpu` or NVML's nvmlDeviceSetVgpuHeterogeneousMode) and run \
         `gvm-vgpu start` for this vGPU, or redefine the GPU's vGPUs with one size",
        if enabled_now {
            " (enabling the VFs cleared it)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
#[path = "vf_restore_tests.rs"]
mod tests;
