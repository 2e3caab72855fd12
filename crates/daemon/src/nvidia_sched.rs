//! NVIDIA's own vGPU scheduler beside the daemon's, through NVML (`gvm-nvml`).
//!
//! On a GPU driven by NVIDIA's vGPU manager the driver time-slices the vGPUs itself, under
//! the same three policies as the daemon's engines. `policy set` for such a GPU also sets
//! NVIDIA's scheduler while no VM runs on it, and reads it back; while VMs run NVML allows no
//! change, which is reported, and the policy reaches the VMs through the daemon's own
//! scheduler and the guests' agents as on any GPU. `policy show` reports NVIDIA's scheduler
//! next to the daemon's, and `show` and the metrics the framebuffer NVML says each running
//! vGPU uses.
//!
//! The NVML handle is opened once at start ([`NvidiaScheduler::open`]): a host without NVML
//! (no `libnvidia-ml.so.1`, no driver) keeps the reason, logs it once and reports it in
//! `policy show`; a simulated host (`--root` other than `/`) uses NVML only when
//! `--nvml-library` names one, since the host's real NVML describes other GPUs. A GPU NVML
//! does not know (not NVIDIA's) gets no report; one without the vGPU manager reports NVML's
//! refusal as "not available".
//!
//! vGPUs are matched to NVML's vGPU instances by UUID: an instance whose vGPU UUID
//! (`nvmlVgpuInstanceGetUUID`) is the vGPU's UUID. The pure parts ([`report`], [`change`])
//! are unit-tested here; the daemon against the stand-in library in
//! `crates/cli/tests/nvidia_policy.rs`.

use std::path::Path;

use gvm_error_chain::error_chain;
use gvm_nvml::{
    project_policy, Error as NvmlError, Nvml, ProjectPolicy, ReturnCode, SchedulerSetting,
    SchedulerState,
};
use gvm_proto::{NvidiaChange, NvidiaChangeOutcome, NvidiaSched, NvidiaSchedStatus};
use tracing::{info, warn};
use uuid::Uuid;

/// The daemon's NVML, or why it has none.
pub struct NvidiaScheduler {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for NvidiaScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.nvml {
            Ok(n) => write!(f, "NvidiaScheduler({})", n.library()),
            Err(reason) => write!(f, "NvidiaScheduler(without NVML: {reason})"),
        }
    }
}

impl NvidiaScheduler {
    /// Opens NVML: the library at `library` when given, else `libnvidia-ml.so.1` on a real
    /// host (`simulated` false) and none on a simulated one. Logs the outcome once.
    pub fn open(library: Option<&Path>, simulated: bool) -> NvidiaScheduler {
        let opened = match (library, simulated) {
            (Some(path), _) => Nvml::open_at(path),
            (None, false) => Nvml::open(),
            (None, true) => {
                let reason = "a simulated host (--root other than /) uses NVML only when \
                              --nvml-library names one";
                info!("without NVML: {reason}");
                return NvidiaScheduler::without(reason);
            }
        };
        match opened {
            Ok(nvml) => {
                let driver = nvml.driver_version().unwrap_or_else(|e| error_chain(&e));
                info!(library = nvml.library(), %driver, "NVML opened: NVIDIA's vGPU scheduler is read and set");
                NvidiaScheduler { nvml: Ok(nvml) }
            }
            Err(e) => {
                let reason = error_chain(&e);
                if e.is_unavailable() {
                    info!("without NVML: {reason}");
                } else {
                    warn!("without NVML: {reason}");
                }
                NvidiaScheduler::without(reason)
            }
        }
    }

    /// No NVML, for `reason`.
    pub fn without(reason: impl Into<String>) -> NvidiaScheduler {
        NvidiaScheduler {
            nvml: Err(reason.into()),
        }
    }

    /// Why there is no NVML; `None` with NVML.
    pub fn without_nvml(&self) -> Option<&str> {
        self.nvml.as_ref().err().map(String::as_str)
    }

    /// The GPU at `pci` through NVML: `None` without NVML or when NVML does not know it,
    /// `Some(Err)` for another failure.
    fn gpu(&self, pci: &str) -> Option<Result<gvm_nvml::Gpu<'_>, NvmlError>> {
        let nvml = self.nvml.as_ref().ok()?;
        match nvml.gpu(pci) {
            Err(e) if e.code() == Some(ReturnCode::NOT_FOUND) => None,
            Err(NvmlError::BadAddress { .. }) => None,
            other => Some(other),
        }
    }

    /// NVIDIA's scheduler on the GPU at `pci`, as NVML reports it; `None` when there is none
    /// to report (no NVML, a GPU NVML does not know).
    pub fn read(&self, pci: &str) -> Option<NvidiaSched> {
        Some(match self.gpu(pci)? {
            Err(e) => report(Err(e), None),
            Ok(gpu) => read_gpu(&gpu),
        })
    }

    /// `policy set` for the GPU at `pci`: sets NVIDIA's scheduler to `project` and reads it
    /// back; `None` when there is no NVIDIA scheduler to set (as for [`Self::read`]).
    pub fn apply(&self, pci: &str, project: ProjectPolicy) -> Option<NvidiaSched> {
        let gpu = match self.gpu(pci)? {
            Err(e) => {
                let code = e.code();
                let mut out = report(Err(e), None);
                out.change = Some(not_set(pci, code, out.reason.as_deref().unwrap_or("")));
                return Some(out);
            }
            Ok(gpu) => gpu,
        };
        let result = gpu.apply_policy(project);
        let mut out = read_gpu(&gpu);
        let c = change(pci, &result, &out);
        match c.outcome {
            NvidiaChangeOutcome::Set => {
                info!(pci, policy = ?out.policy, timeslice_us = ?out.timeslice_us, "NVIDIA's vGPU scheduler set")
            }
            _ => info!(pci, "{}", c.message),
        }
        out.change = Some(c);
        Some(out)
    }

    /// Heterogeneous mode on for the GPU at `pci` (mixed vGPU sizes with placements), for a
    /// restore whose definitions mix sizes there: `Ok` once NVML set it (or it was on), else
    /// why it could not be (no NVML, a GPU NVML does not know, NVML's refusal).
    pub fn enable_heterogeneous(&self, pci: &str) -> Result<(), String> {
        let gpu = match self.gpu(pci) {
            None => {
                return Err(match self.without_nvml() {
                    Some(why) => format!("without NVML: {why}"),
                    None => format!("NVML does not know GPU {pci}"),
                })
            }
            Some(Err(e)) => return Err(error_chain(&e)),
            Some(Ok(gpu)) => gpu,
        };
        if gpu.heterogeneous_mode().unwrap_or(false) {
            return Ok(());
        }
        gpu.set_heterogeneous_mode(true)
            .map_err(|e| error_chain(&e))?;
        info!(
            pci,
            "NVML: heterogeneous vGPU mode set, for the mixed sizes defined there"
        );
        Ok(())
    }

    /// The running vGPU instances NVML reports on the GPUs at `pcis`, with their framebuffer
    /// use, for [`fb_usage_of`]. GPUs NVML cannot answer for are left out (their vGPUs have
    /// no figure).
    pub fn fb_usage<'a>(&self, pcis: impl IntoIterator<Item = &'a str>) -> Vec<FbInstance> {
        let mut out = Vec::new();
        for pci in pcis {
            let Some(Ok(gpu)) = self.gpu(pci) else {
                continue;
            };
            let Ok(instances) = gpu.vgpu_instances() else {
                continue;
            };
            out.extend(instances.into_iter().map(|i| FbInstance {
                pci: pci.to_string(),
                vgpu_uuid: Uuid::parse_str(i.uuid.trim()).ok(),
                vm_uuid: match i.vm_id_kind {
                    gvm_nvml::VmIdKind::Uuid => Uuid::parse_str(i.vm_id.trim()).ok(),
                    gvm_nvml::VmIdKind::Domain => None,
                },
                bytes: i.fb_usage_bytes,
            }));
        }
        out
    }
}

/// One running vGPU instance as NVML names it, with its framebuffer use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FbInstance {
    /// The GPU it runs on.
    pub pci: String,
    /// NVML's vGPU UUID (`nvmlVgpuInstanceGetUUID`).
    pub vgpu_uuid: Option<Uuid>,
    /// The VM's UUID, when NVML gives the VM ID as one (libvirt's domain UUID on KVM).
    pub vm_uuid: Option<Uuid>,
    /// Framebuffer bytes the VM uses (`nvmlVgpuInstanceGetFbUsage`).
    pub bytes: u64,
}

/// The framebuffer use of vGPU `vgpu` on GPU `pci`, held by the domain whose UUID is
/// `domain`, among NVML's `instances`. NVML names a vGPU by a UUID of NVIDIA's own, which is
/// the mdev UUID on mdev hosts but not gvm-vgpu's UUID of a VF vGPU, so: NVML's vGPU UUID when
/// it is ours, else the one instance on that GPU whose VM is the domain holding the vGPU.
/// `None` when neither matches, or when the domain runs several vGPUs on that GPU (NVML's
/// figure could be any of them).
pub fn fb_usage_of(
    instances: &[FbInstance],
    vgpu: &Uuid,
    pci: &str,
    domain: Option<Uuid>,
) -> Option<u64> {
    if let Some(i) = instances.iter().find(|i| i.vgpu_uuid == Some(*vgpu)) {
        return Some(i.bytes);
    }
    let domain = domain?;
    let mut of_vm = instances
        .iter()
        .filter(|i| i.pci == pci && i.vm_uuid == Some(domain));
    match (of_vm.next(), of_vm.next()) {
        (Some(i), None) => Some(i.bytes),
        _ => None,
    }
}

/// The report of one GPU reached through NVML.
fn read_gpu(gpu: &gvm_nvml::Gpu<'_>) -> NvidiaSched {
    let state = gpu.scheduler_state();
    let active = if state.is_ok() {
        gpu.vgpu_instances().ok().map(|v| v.len())
    } else {
        None
    };
    report(state, active)
}

/// What NVML's answers say of a GPU's scheduler: the state read (or the error), and the
/// active vGPU instances when known.
pub fn report(state: Result<SchedulerState, NvmlError>, active: Option<usize>) -> NvidiaSched {
    let active_vgpus = active.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    match state {
        Ok(state) => {
            let (policy, timeslice_us) = match project_policy(&state) {
                Ok(p) => (Some(p.policy.to_string()), p.timeslice_us),
                Err(_) => (None, None),
            };
            NvidiaSched {
                status: NvidiaSchedStatus::VgpuHost,
                policy,
                timeslice_us,
                adaptive: state.arr_mode == Some(gvm_nvml::ArrMode::Enabled),
                active_vgpus,
                reason: None,
                change: None,
            }
        }
        Err(e) => NvidiaSched {
            status: if e.code() == Some(ReturnCode::NOT_SUPPORTED) {
                NvidiaSchedStatus::NotAvailable
            } else {
                NvidiaSchedStatus::Unknown
            },
            policy: None,
            timeslice_us: None,
            adaptive: false,
            active_vgpus,
            reason: Some(error_chain(&e)),
            change: None,
        },
    }
}

/// What a `policy set` did to NVIDIA's scheduler of the GPU at `pci`: `result` of the set,
/// `after` the state read back.
pub fn change(
    pci: &str,
    result: &Result<SchedulerSetting, NvmlError>,
    after: &NvidiaSched,
) -> NvidiaChange {
    match result {
        Ok(_) => NvidiaChange {
            outcome: NvidiaChangeOutcome::Set,
            message: format!(
                "NVIDIA's vGPU scheduler on GPU {pci} set; it now runs {}",
                running_text(after)
            ),
        },
        Err(NvmlError::VmsRunning { active, .. }) => NvidiaChange {
            outcome: NvidiaChangeOutcome::VmsRunning,
            message: format!(
                "NVIDIA allows no change while VMs run on GPU {pci} ({active} vGPU{}); the \
                 policy is applied through the guests' agents where they cooperate",
                if *active == 1 { "" } else { "s" }
            ),
        },
        Err(e) => not_set(pci, e.code(), &error_chain(e)),
    }
}

/// The change for a set NVML refused (`code`) or failed, for `reason`.
fn not_set(pci: &str, code: Option<ReturnCode>, reason: &str) -> NvidiaChange {
    NvidiaChange {
        outcome: NvidiaChangeOutcome::NotSet,
        message: if code == Some(ReturnCode::NOT_SUPPORTED) {
            format!("NVIDIA's vGPU scheduler: not available on this GPU ({reason})")
        } else {
            format!("NVIDIA's vGPU scheduler on GPU {pci} not set: {reason}")
        },
    }
}

/// `equal-share, slice 2000us` / `best-effort, driver's slice` / `fixed-share, adaptive`.
pub fn running_text(s: &NvidiaSched) -> String {
    let policy = s.policy.as_deref().unwrap_or("an unknown policy");
    match (s.adaptive, s.timeslice_us) {
        (true, _) => format!("{policy}, adaptive slices"),
        (false, Some(us)) => format!("{policy}, slice {us}us"),
        (false, None) => format!("{policy}, the driver's default slice"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framebuffer_use_is_matched_by_nvidias_vgpu_uuid_else_by_the_one_vgpu_of_the_vm() {
        let (vgpu, vm, other_vm) = (Uuid::from_u128(1), Uuid::from_u128(10), Uuid::from_u128(11));
        let gpu = "0000:41:00.0";
        let inst = |vgpu_uuid: Option<Uuid>, vm_uuid: Option<Uuid>, bytes: u64| FbInstance {
            pci: gpu.into(),
            vgpu_uuid,
            vm_uuid,
            bytes,
        };
        // NVML's vGPU UUID is ours (an mdev host): that instance, whatever the domain.
        let by_uuid = [
            inst(Some(Uuid::from_u128(99)), Some(vm), 5),
            inst(Some(vgpu), None, 7),
        ];
        assert_eq!(fb_usage_of(&by_uuid, &vgpu, gpu, None), Some(7));
        // A VF vGPU: NVIDIA's UUID is its own; the VM's one instance on that GPU.
        let nvidia_own = [
            inst(Some(Uuid::from_u128(99)), Some(other_vm), 5),
            inst(Some(Uuid::from_u128(98)), Some(vm), 3),
        ];
        assert_eq!(fb_usage_of(&nvidia_own, &vgpu, gpu, Some(vm)), Some(3));
        assert_eq!(
            fb_usage_of(&nvidia_own, &vgpu, gpu, None),
            None,
            "no domain known"
        );
        assert_eq!(
            fb_usage_of(&nvidia_own, &vgpu, "0000:42:00.0", Some(vm)),
            None,
            "the VM's vGPU on another GPU is not this one"
        );
        // Two vGPUs of one VM on one GPU: NVML's figures cannot be told apart.
        let two = [
            inst(Some(Uuid::from_u128(98)), Some(vm), 3),
            inst(Some(Uuid::from_u128(97)), Some(vm), 4),
        ];
        assert_eq!(fb_usage_of(&two, &vgpu, gpu, Some(vm)), None);
    }
    use gvm_nvml::{ArrMode, SchedulerPolicy, SliceSetting};

    fn state(policy: SchedulerPolicy, arr: ArrMode, timeslice_ns: u32) -> SchedulerState {
        SchedulerState {
            policy: Some(policy),
            policy_nvml: policy.to_nvml(),
            arr_mode: Some(arr),
            timeslice_ns,
            avg_factor: None,
        }
    }

    #[test]
    fn a_vgpu_host_reports_nvidias_policy_slice_and_instances() {
        let r = report(
            Ok(state(
                SchedulerPolicy::EqualShare,
                ArrMode::Disabled,
                2_000_000,
            )),
            Some(2),
        );
        assert_eq!(r.status, NvidiaSchedStatus::VgpuHost);
        assert_eq!(r.policy.as_deref(), Some("equal-share"));
        assert_eq!(
            (r.timeslice_us, r.adaptive, r.active_vgpus),
            (Some(2000), false, Some(2))
        );
        assert_eq!(running_text(&r), "equal-share, slice 2000us");
        let arr = report(
            Ok(state(SchedulerPolicy::FixedShare, ArrMode::Enabled, 0)),
            None,
        );
        assert_eq!(running_text(&arr), "fixed-share, adaptive slices");
    }

    #[test]
    fn a_gpu_without_the_vgpu_manager_is_not_available_and_says_why() {
        let refused = NvmlError::Call {
            pci: "0000:3b:00.0".into(),
            call: "nvmlDeviceGetVgpuSchedulerState",
            code: ReturnCode::NOT_SUPPORTED,
        };
        let r = report(Err(refused), None);
        assert_eq!(r.status, NvidiaSchedStatus::NotAvailable);
        let reason = r.reason.clone().unwrap_or_default();
        assert!(reason.contains("NVML_ERROR_NOT_SUPPORTED"), "{reason}");
        let c = not_set("0000:3b:00.0", Some(ReturnCode::NOT_SUPPORTED), &reason);
        assert_eq!(c.outcome, NvidiaChangeOutcome::NotSet);
        assert!(
            c.message.starts_with(
                "NVIDIA's vGPU scheduler: not available on this GPU (GPU 0000:3b:00.0: "
            ),
            "{}",
            c.message
        );
        let other = report(
            Err(NvmlError::Call {
                pci: "0000:3b:00.0".into(),
                call: "nvmlDeviceGetVgpuSchedulerState",
                code: ReturnCode::UNKNOWN,
            }),
            None,
        );
        assert_eq!(other.status, NvidiaSchedStatus::Unknown);
    }

    #[test]
    fn a_refusal_while_vms_run_says_nvidia_allows_no_change_and_names_the_gpu() {
        let after = report(
            Ok(state(SchedulerPolicy::BestEffort, ArrMode::Default, 0)),
            Some(1),
        );
        let refused = Err(NvmlError::VmsRunning {
            pci: "0000:3b:00.0".into(),
            call: "nvmlDeviceSetVgpuSchedulerState",
            code: ReturnCode::NOT_SUPPORTED,
            active: 1,
        });
        let c = change("0000:3b:00.0", &refused, &after);
        assert_eq!(c.outcome, NvidiaChangeOutcome::VmsRunning);
        assert_eq!(
            c.message,
            "NVIDIA allows no change while VMs run on GPU 0000:3b:00.0 (1 vGPU); the policy is \
             applied through the guests' agents where they cooperate"
        );
        let set = Ok(SchedulerSetting {
            policy: SchedulerPolicy::BestEffort,
            slice: SliceSetting::DriverDefault,
        });
        let c = change("0000:3b:00.0", &set, &after);
        assert_eq!(c.outcome, NvidiaChangeOutcome::Set);
        assert_eq!(
            c.message,
            "NVIDIA's vGPU scheduler on GPU 0000:3b:00.0 set; it now runs best-effort, the \
             driver's default slice"
        );
    }

    #[test]
    fn a_simulated_host_without_a_named_library_has_no_nvml_and_says_why() {
        let n = NvidiaScheduler::open(None, true);
        assert!(n
            .without_nvml()
            .is_some_and(|r| r.contains("--nvml-library")));
        assert_eq!(n.read("0000:3b:00.0"), None);
        assert!(n.fb_usage(["0000:3b:00.0"]).is_empty());
    }
}
