//! Prometheus text exposition of per-vGPU knobs and totals ([`render`]) and of the guest
//! agents' channels and processes ([`render_guests`]).
//!
//! One sample per running vGPU and metric, labelled `uuid`, `parent`, `type` (the
//! catalog type, or the kernel type when unmanaged) and `domain` (empty when no
//! libvirt domain holds it). An unlimited memory limit is exported as `+Inf`.

use std::collections::BTreeMap;
use std::fmt::Write;

use gvm_proto::{GuestAgentInfo, VgpuInfo, VgpuState, UNLIMITED};
use uuid::Uuid;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

type Getter = fn(&VgpuInfo) -> String;

const METRICS: [(&str, &str, &str, Getter); 9] = [
    (
        "gvm_vgpu_memory_limit_bytes",
        "gauge",
        "Effective GPU memory limit of the vGPU's owners.",
        |v| {
            if v.knobs.memory_limit == UNLIMITED {
                "+Inf".to_string()
            } else {
                v.knobs.memory_limit.to_string()
            }
        },
    ),
    (
        "gvm_vgpu_memory_current_bytes",
        "gauge",
        "GPU memory resident, summed over owners.",
        |v| v.totals.memory_current.to_string(),
    ),
    (
        "gvm_vgpu_swap_bytes",
        "gauge",
        "Memory evicted to host, summed over owners.",
        |v| v.totals.swap_current.to_string(),
    ),
    (
        "gvm_vgpu_priority",
        "gauge",
        "Effective GVM compute priority (0 = most GPU time).",
        |v| v.knobs.priority.to_string(),
    ),
    (
        "gvm_vgpu_frozen",
        "gauge",
        "1 when the vGPU's GPU work is frozen.",
        |v| u8::from(v.knobs.frozen).to_string(),
    ),
    (
        "gvm_vgpu_kernels_submitted_total",
        "counter",
        "Kernels submitted by current owners.",
        |v| v.totals.kernels_submitted.to_string(),
    ),
    (
        "gvm_vgpu_kernels_pending",
        "gauge",
        "Kernels submitted and not yet ended.",
        |v| v.totals.kernels_pending.to_string(),
    ),
    (
        "gvm_vgpu_owners",
        "gauge",
        "Owner processes of the vGPU.",
        |v| v.owners.len().to_string(),
    ),
    (
        "gvm_vgpu_managed",
        "gauge",
        "1 when the catalog knows the vGPU's type.",
        |v| u8::from(v.managed).to_string(),
    ),
];

/// Render running vGPUs as Prometheus text.
pub fn render(vgpus: &[VgpuInfo]) -> String {
    let mut out = String::new();
    for (name, kind, help, get) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for v in vgpus.iter().filter(|v| v.state == VgpuState::Running) {
            let ty = v.type_name.as_deref().unwrap_or(&v.mdev_type);
            let _ = writeln!(
                out,
                "{name}{{uuid=\"{}\",parent=\"{}\",type=\"{}\",domain=\"{}\"}} {}",
                v.uuid,
                escape(&v.parent),
                escape(ty),
                escape(v.domain.as_deref().unwrap_or("")),
                get(v)
            );
        }
    }
    out
}

/// `gvm_vgpu_nvidia_fb_usage_bytes` for each running vGPU in `vgpus` that `fb` (NVML's
/// framebuffer use by vGPU UUID) has a figure for; nothing (not even the HELP) when none has.
pub fn render_nvidia_fb(vgpus: &[VgpuInfo], fb: &BTreeMap<Uuid, u64>) -> String {
    let mut out = String::new();
    let rows: Vec<(&VgpuInfo, u64)> = vgpus
        .iter()
        .filter(|v| v.state == VgpuState::Running)
        .filter_map(|v| Some((v, *fb.get(&v.uuid)?)))
        .collect();
    if rows.is_empty() {
        return out;
    }
    let name = "gvm_vgpu_nvidia_fb_usage_bytes";
    let _ = writeln!(
        out,
        "# HELP {name} Framebuffer the VM uses as NVIDIA's vGPU manager reports it (NVML)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (v, bytes) in rows {
        let ty = v.type_name.as_deref().unwrap_or(&v.mdev_type);
        let _ = writeln!(
            out,
            "{name}{{uuid=\"{}\",parent=\"{}\",type=\"{}\",domain=\"{}\"}} {bytes}",
            v.uuid,
            escape(&v.parent),
            escape(ty),
            escape(v.domain.as_deref().unwrap_or(""))
        );
    }
    out
}

/// Prometheus text for the guest agents' channels and processes.
pub fn render_guests(infos: &[GuestAgentInfo]) -> String {
    let mut out = String::new();
    let labels = |i: &GuestAgentInfo| {
        format!(
            "domain=\"{}\",uuid=\"{}\"",
            escape(i.domain.as_deref().unwrap_or("")),
            i.uuid.map(|u| u.to_string()).unwrap_or_default()
        )
    };
    type Get = fn(&GuestAgentInfo) -> Option<u64>;
    let channel: [(&str, &str, &str, Get); 6] = [
        (
            "gvm_vgpu_guest_agent_connected",
            "gauge",
            "1 while the daemon is connected to the VM's agent channel.",
            |i| Some(u64::from(i.connected)),
        ),
        (
            "gvm_vgpu_guest_processes",
            "gauge",
            "GPU processes in the guest's latest report.",
            |i| {
                i.stats
                    .as_ref()
                    .and_then(|s| s.last_report.as_ref())
                    .map(|r| r.processes.len() as u64)
            },
        ),
        (
            "gvm_vgpu_guest_reports_total",
            "counter",
            "Reports accepted from the guest agent (current connection).",
            |i| i.stats.as_ref().map(|s| s.counters.reports),
        ),
        (
            "gvm_vgpu_guest_violations_total",
            "counter",
            "Protocol violations by the guest agent.",
            |i| Some(i.violations),
        ),
        (
            "gvm_vgpu_guest_disconnects_total",
            "counter",
            "Times the guest agent was cut off for misbehaving.",
            |i| Some(i.disconnects),
        ),
        (
            "gvm_vgpu_guest_report_age_seconds",
            "gauge",
            "Seconds since the latest accepted report.",
            |i| i.report_age_ms.map(|ms| ms / 1000),
        ),
    ];
    for (name, kind, help, get) in channel {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for i in infos {
            if let Some(v) = get(i) {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels(i));
            }
        }
    }
    type V2Get = fn(&gvm_proto::GuestEnforcement) -> u64;
    let v2: [(&str, &str, &str, V2Get); 4] = [
        (
            "gvm_vgpu_guest_held",
            "gauge",
            "1 while the VM is held because a more important VM or host process is busy (agent protocol 2).",
            |e| u64::from(e.held),
        ),
        (
            "gvm_vgpu_guest_state_acknowledged",
            "gauge",
            "1 when the guest acknowledged the latest state sent (agent protocol 2).",
            |e| u64::from(e.in_sync()),
        ),
        (
            "gvm_vgpu_guest_forged_acks_total",
            "counter",
            "Acknowledgements of states never sent, ignored.",
            |e| e.forged_acks,
        ),
        (
            "gvm_vgpu_guest_hold_cap_hits_total",
            "counter",
            "Times the VM's busy claims reached the cap on holding other VMs.",
            |e| e.hold_cap_hits,
        ),
    ];
    for (name, kind, help, get) in v2 {
        let _ = writeln!(
            out,
            "# HELP {name} {help}
# TYPE {name} {kind}"
        );
        for i in infos {
            if let Some(e) = i.enforcement.as_ref().filter(|e| e.protocol >= 2) {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(i), get(e));
            }
        }
    }
    type GuestProcGet = fn(&gvm_proto::GuestProcess) -> u64;
    let guest_process: [(&str, &str, &str, GuestProcGet); 5] = [
        (
            "gvm_vgpu_guest_cuda_memory_bytes",
            "gauge",
            "GPU memory of a CUDA process in the guest, from its interposer (agent protocol 2).",
            |p| p.memory_current,
        ),
        (
            "gvm_vgpu_guest_cuda_swap_bytes",
            "gauge",
            "Of it, spilled to host memory.",
            |p| p.memory_swap,
        ),
        (
            "gvm_vgpu_guest_cuda_kernels_submitted_total",
            "counter",
            "Kernels the guest CUDA process submitted.",
            |p| p.kernels_submitted,
        ),
        (
            "gvm_vgpu_guest_cuda_kernels_ended_total",
            "counter",
            "Kernels of the guest CUDA process that ended.",
            |p| p.kernels_ended,
        ),
        (
            "gvm_vgpu_guest_cuda_busy",
            "gauge",
            "1 while the guest CUDA process has GPU work.",
            |p| u64::from(p.busy),
        ),
    ];
    for (name, kind, help, get) in guest_process {
        let _ = writeln!(
            out,
            "# HELP {name} {help}
# TYPE {name} {kind}"
        );
        for i in infos {
            let Some(e) = i.enforcement.as_ref() else {
                continue;
            };
            for p in &e.processes {
                let _ = writeln!(
                    out,
                    "{name}{{{},pid=\"{}\",name=\"{}\"}} {}",
                    labels(i),
                    p.pid,
                    escape(&p.name),
                    get(p)
                );
            }
        }
    }
    type ProcGet = fn(&gvm_proto::ProcessSample) -> Option<u64>;
    let process: [(&str, &str, ProcGet); 3] = [
        (
            "gvm_vgpu_guest_process_memory_bytes",
            "GPU memory of a guest process (NVML collector).",
            |p| p.memory_bytes,
        ),
        (
            "gvm_vgpu_guest_process_sm_percent",
            "SM utilization of a guest process over the last interval.",
            |p| p.sm_pct.map(u64::from),
        ),
        (
            "gvm_vgpu_guest_process_info",
            "1 for each guest process using a GPU (any collector).",
            |_| Some(1),
        ),
    ];
    for (name, help, get) in process {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for i in infos {
            let Some(r) = i.stats.as_ref().and_then(|s| s.last_report.as_ref()) else {
                continue;
            };
            for p in &r.processes {
                if let Some(v) = get(p) {
                    let _ = writeln!(
                        out,
                        "{name}{{{},pid=\"{}\",name=\"{}\"}} {v}",
                        labels(i),
                        p.pid,
                        escape(&p.name)
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_proto::{Knobs, Totals};

    fn vgpu(state: VgpuState, limit: u64) -> VgpuInfo {
        VgpuInfo {
            uuid: Uuid::from_u128(1),
            parent: "0000:00:08.0".into(),
            mdev_type: "gvmsim-1".into(),
            type_name: Some("sim-4c".into()),
            kind: gvm_proto::VgpuKind::Mdev,
            vf: None,
            state,
            managed: true,
            defined: false,
            autostart: false,
            start: gvm_proto::StartMode::NotDefined,
            domain: Some("vm\"1".into()),
            owners: vec![10, 11],
            knobs: Knobs {
                memory_limit: limit,
                priority: 3,
                share: None,
                frozen: true,
            },
            totals: Totals {
                kernels_submitted: 42,
                ..Totals::default()
            },
            owner_uids: Vec::new(),
        }
    }

    #[test]
    fn running_vgpus_are_exported_with_labels() {
        let text = render(&[
            vgpu(VgpuState::Running, 4 << 30),
            vgpu(VgpuState::Stopped, 1),
        ]);
        let u = Uuid::from_u128(1);
        let labels =
            format!("{{uuid=\"{u}\",parent=\"0000:00:08.0\",type=\"sim-4c\",domain=\"vm\\\"1\"}}");
        assert!(
            text.contains(&format!(
                "gvm_vgpu_memory_limit_bytes{labels} {}",
                4u64 << 30
            )),
            "{text}"
        );
        assert!(text.contains(&format!("gvm_vgpu_kernels_submitted_total{labels} 42")));
        assert!(text.contains(&format!("gvm_vgpu_frozen{labels} 1")));
        assert!(text.contains(&format!("gvm_vgpu_owners{labels} 2")));
        assert!(text.contains("# TYPE gvm_vgpu_kernels_submitted_total counter"));
        assert_eq!(
            text.matches("gvm_vgpu_priority{").count(),
            1,
            "stopped vGPUs are not exported"
        );
        let text = render(&[vgpu(VgpuState::Running, UNLIMITED)]);
        assert!(text.contains("} +Inf"));
    }

    #[test]
    fn nvidias_framebuffer_use_is_exported_only_for_running_vgpus_nvml_reports() {
        let u = Uuid::from_u128(1);
        let fb = BTreeMap::from([(u, 3u64 << 30)]);
        let text = render_nvidia_fb(&[vgpu(VgpuState::Running, 1)], &fb);
        assert!(
            text.contains("# TYPE gvm_vgpu_nvidia_fb_usage_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gvm_vgpu_nvidia_fb_usage_bytes{{uuid=\"{u}\",parent=\"0000:00:08.0\",type=\"sim-4c\",domain=\"vm\\\"1\"}} {}",
                3u64 << 30
            )),
            "{text}"
        );
        assert_eq!(render_nvidia_fb(&[vgpu(VgpuState::Stopped, 1)], &fb), "");
        assert_eq!(
            render_nvidia_fb(&[vgpu(VgpuState::Running, 1)], &BTreeMap::new()),
            ""
        );
    }
}
