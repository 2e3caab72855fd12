//! `gvm-vgpu policy show|set` and `gvm-vgpu top`: the live GPU time-slice scheduler.
//!
//! gvm-vgpud runs one scheduling engine per physical GPU, with a policy (`best-effort`, `equal-share`, `fixed-share`), a
//! time slice and an averaging window. `policy set` switches a GPU (or all) live and
//! the daemon persists the choice; `policy show` and `top` print, per vGPU, the share
//! of GPU time the policy aims at next to the share achieved over the last window
//! (estimated by the daemon from GVM's kernel counters). GPUs are named as operators count
//! them: by position in PCI order (`--gpu 1`) or by PCI address (`--gpu 0000:3c:00.0`);
//! GVM's own index (`0`, `8`, ...) appears only in `--json` (`gvm_index`).
//!
//! On a GPU with NVIDIA's vGPU manager the daemon also sets NVIDIA's own scheduler through
//! NVML (while no VM runs there) and reports it: `policy set` prints what NVIDIA did, and
//! `policy show` prints NVIDIA's scheduler under each GPU, or why the daemon has no NVML.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use gvm_catalog::ByteSize;
use gvm_proto::{GpuSched, NvidiaSched, NvidiaSchedStatus, PolicyParams, SchedStatus, VgpuState};
use uuid::Uuid;

use super::{gpu_label, managed, write_json};
use crate::context::Context;
use crate::table::Table;

/// Parses a duration: a number with `us`/`µs`, `ms` or `s` (no unit = ms).
/// Returns microseconds.
pub fn parse_duration_us(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = match num.parse() {
        Ok(v) => v,
        Err(_) => bail!("'{text}' is not a duration: write e.g. 2ms, 500us or 1s"),
    };
    let scale = match unit.trim() {
        "us" | "µs" => 1.0,
        "" | "ms" => 1_000.0,
        "s" => 1_000_000.0,
        other => bail!("unknown unit '{other}' in '{text}': use us, ms or s"),
    };
    let us = value * scale;
    if !(us.is_finite() && us >= 1.0 && us <= u64::MAX as f64) {
        bail!("'{text}' is out of range: give at least 1us");
    }
    Ok(us.round() as u64)
}

/// `policy show`.
pub fn show(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let status = managed::client(ctx)?.policy()?;
    if ctx.json {
        return write_json(out, "policy", &status);
    }
    write_status(&status, out)
}

/// `policy set POLICY [--gpu G] [--timeslice D] [--window D]`.
pub fn set(
    ctx: &Context,
    policy: &str,
    gpu: Option<&str>,
    timeslice: Option<&str>,
    window: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let params = PolicyParams {
        policy: policy.to_string(),
        gpu: gpu.map(str::to_string),
        timeslice_us: timeslice.map(parse_duration_us).transpose()?,
        window_ms: window
            .map(|w| parse_duration_us(w).map(|us| us.div_ceil(1_000)))
            .transpose()?,
    };
    let status = managed::client(ctx)?.set_policy_with(params)?;
    if ctx.json {
        return write_json(out, "policy", &status);
    }
    match gpu {
        Some(g) if !g.trim().eq_ignore_ascii_case("all") => writeln!(
            out,
            "Policy of GPU {} set to {policy} (live, persisted).",
            named_gpu(&status, g)
        )?,
        _ => writeln!(
            out,
            "Policy of every GPU set to {policy} (live, persisted)."
        )?,
    }
    for c in status
        .gpus
        .iter()
        .filter_map(|g| g.nvidia.as_ref()?.change.as_ref())
    {
        writeln!(out, "{}", c.message)?;
    }
    write_status(&status, out)
}

/// The GPU `arg` (a position or a PCI address) named, as `1 [0000:3c:00.0]` when the
/// status lists it, else `arg` as given.
fn named_gpu(status: &SchedStatus, arg: &str) -> String {
    let arg = arg.trim();
    let pci = gvm_shim_abi::register::normalise_pci_bus_id(arg);
    let position: Option<u32> = arg.parse().ok();
    status
        .gpus
        .iter()
        .find(|g| {
            (position.is_some() && g.gpu == position)
                || (pci.is_some() && g.pci.as_deref() == pci.as_deref())
        })
        .map_or_else(
            || arg.to_string(),
            |g| gpu_label(g.gpu, g.pci.as_deref(), g.gvm_index),
        )
}

/// `top [--once]`: redraws every second until interrupted, or prints once.
pub fn top(ctx: &Context, once: bool, out: &mut dyn Write) -> Result<()> {
    let mut client = managed::client(ctx)?;
    loop {
        let status = if once {
            first_figures(&mut client)?
        } else {
            client.policy()?
        };
        if ctx.json {
            write_json(out, "top", &top_rows(&status))?;
        } else {
            if !once {
                // Clear the screen and home the cursor, then redraw.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write_top(&status, out)?;
        }
        out.flush()?;
        if once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How often `top --once` asks again while the daemon has no figures yet.
const FIRST_FIGURES_POLL: Duration = Duration::from_millis(100);

/// How long past one averaging window `top --once` waits for the first figures.
const FIRST_FIGURES_SLACK: Duration = Duration::from_secs(1);

/// The scheduler's status once it has figures for every running managed vGPU with owners.
///
/// gvm-vgpud samples best-effort GPUs only while someone looks (`WATCH_FOR` after each
/// `policy show` or `top`), and an achieved share needs one averaging window of samples:
/// the first look after the daemon started (or after a pause) finds no rows at all. So
/// this asks once (which starts the sampling), then again every [`FIRST_FIGURES_POLL`]
/// until each such vGPU has its achieved share, for at most the longest window plus
/// [`FIRST_FIGURES_SLACK`]; an answer that already has them is returned at once.
fn first_figures(client: &mut gvm_client::Client) -> Result<SchedStatus> {
    let mut status = client.policy()?;
    let busy: BTreeSet<Uuid> = client
        .list(false)?
        .into_iter()
        .filter(|v| v.state == VgpuState::Running && v.managed && !v.owners.is_empty())
        .map(|v| v.uuid)
        .collect();
    let window_ms = status
        .gpus
        .iter()
        .map(|g| g.config.window_ms)
        .chain([status.default.window_ms])
        .max()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(window_ms) + FIRST_FIGURES_SLACK;
    while !has_figures(&status, &busy) && Instant::now() < deadline {
        std::thread::sleep(FIRST_FIGURES_POLL);
        status = client.policy()?;
    }
    Ok(status)
}

/// Whether `status` gives an achieved share for each vGPU of `vgpus` (on some GPU).
fn has_figures(status: &SchedStatus, vgpus: &BTreeSet<Uuid>) -> bool {
    vgpus.iter().all(|u| {
        status
            .gpus
            .iter()
            .flat_map(|g| &g.vgpus)
            .any(|v| v.uuid == *u && v.achieved.is_some())
    })
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn slice_text(cfg_us: Option<u64>, in_force_us: u64) -> String {
    match cfg_us {
        Some(us) => format!("{us}us"),
        None => format!("auto ({in_force_us}us)"),
    }
}

fn frozen_text(user: bool, sched: bool) -> &'static str {
    match (user, sched) {
        (true, true) => "user+sched",
        (true, false) => "user",
        (false, true) => "sched",
        (false, false) => "-",
    }
}

/// The `policy show` text.
pub fn write_status(status: &SchedStatus, out: &mut dyn Write) -> Result<()> {
    let d = &status.default;
    writeln!(
        out,
        "Default: {}, slice {}, window {}ms",
        d.policy,
        d.timeslice_us.map_or_else(
            || "auto (2ms up to 8 vGPUs, 1ms above)".to_string(),
            |t| format!("{t}us")
        ),
        d.window_ms
    )?;
    if status.gpus.is_empty() {
        writeln!(out, "No GPU has vGPUs with owner processes yet.")?;
    }
    for g in &status.gpus {
        writeln!(out)?;
        write_gpu(g, out)?;
    }
    for u in &status.unmapped {
        writeln!(out)?;
        writeln!(
            out,
            "Kept aside: {}, slice {}, window {}ms, stored by an older gvm-vgpud for GVM GPU \
             index {}, which is no GPU of this host: not applied (`policy set` for every GPU \
             drops it)",
            u.config.policy,
            u.config
                .timeslice_us
                .map_or_else(|| "auto".to_string(), |t| format!("{t}us")),
            u.config.window_ms,
            u.gvm_index
        )?;
    }
    if let Some(reason) = &status.without_nvml {
        writeln!(out)?;
        writeln!(out, "NVIDIA's vGPU scheduler: without NVML ({reason})")?;
    }
    Ok(())
}

/// The line under a GPU saying what NVIDIA's own vGPU scheduler runs there.
fn nvidia_text(n: &NvidiaSched) -> String {
    let reason = n.reason.as_deref().unwrap_or("no reason given");
    match n.status {
        NvidiaSchedStatus::VgpuHost => {
            let policy = n.policy.as_deref().unwrap_or("an unknown policy");
            let slice = match (n.adaptive, n.timeslice_us) {
                (true, _) => "adaptive slices".to_string(),
                (false, Some(us)) => format!("slice {us}us"),
                (false, None) => "the driver's default slice".to_string(),
            };
            let vms = match n.active_vgpus {
                Some(0) => "no VM running, can be set".to_string(),
                Some(1) => "1 vGPU running: NVIDIA allows no change now".to_string(),
                Some(k) => format!("{k} vGPUs running: NVIDIA allows no change now"),
                None => "running vGPUs unknown".to_string(),
            };
            format!("  NVIDIA's vGPU scheduler: {policy}, {slice} ({vms})")
        }
        NvidiaSchedStatus::NotAvailable => {
            format!("  NVIDIA's vGPU scheduler: not available on this GPU ({reason})")
        }
        NvidiaSchedStatus::Unknown => format!("  NVIDIA's vGPU scheduler: unknown ({reason})"),
    }
}

fn write_gpu(g: &GpuSched, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "GPU {}: {}, slice {}, window {}ms, {} knob writes ({:.1}/s)",
        gpu_label(g.gpu, g.pci.as_deref(), g.gvm_index),
        g.config.policy,
        slice_text(g.config.timeslice_us, g.slice_us),
        g.config.window_ms,
        g.counters.priority_writes + g.counters.freeze_writes,
        g.counters.writes_per_second()
    )?;
    if let Some(n) = &g.nvidia {
        writeln!(out, "{}", nvidia_text(n))?;
    }
    if g.vgpus.is_empty() {
        return Ok(());
    }
    let mut t = Table::new(&["  VGPU", "TYPE", "TARGET", "ACHIEVED", "FROZEN"]);
    for v in &g.vgpus {
        t.row(vec![
            format!("  {}", v.uuid),
            v.type_name.clone().unwrap_or_else(|| "-".into()),
            pct(v.target),
            v.achieved.map_or_else(|| "-".into(), pct),
            frozen_text(v.frozen_by_user, v.frozen_by_scheduler).into(),
        ]);
    }
    t.write(out)?;
    Ok(())
}

/// One `top` line, also its JSON form.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopRow {
    /// Position of the GPU in PCI order; `None` when no PCI GPU has its GVM index.
    pub gpu: Option<u32>,
    /// PCI address of the GPU, when known.
    pub pci: Option<String>,
    /// GVM's UVM index of the GPU, when known.
    pub gvm_index: Option<u32>,
    /// Policy of that GPU.
    pub policy: String,
    /// vGPU UUID.
    pub uuid: uuid::Uuid,
    /// Target share.
    pub target: f64,
    /// Achieved share over the last window.
    pub achieved: Option<f64>,
    /// Frozen by the operator.
    pub frozen_by_user: bool,
    /// Frozen by the scheduler.
    pub frozen_by_scheduler: bool,
    /// Pending kernels.
    pub pending_kernels: u64,
    /// Resident GPU memory in bytes.
    pub memory_current: u64,
}

/// Flattens the status into one row per vGPU and GPU.
pub fn top_rows(status: &SchedStatus) -> Vec<TopRow> {
    status
        .gpus
        .iter()
        .flat_map(|g| {
            g.vgpus.iter().map(|v| TopRow {
                gpu: g.gpu,
                pci: g.pci.clone(),
                gvm_index: g.gvm_index,
                policy: g.config.policy.clone(),
                uuid: v.uuid,
                target: v.target,
                achieved: v.achieved,
                frozen_by_user: v.frozen_by_user,
                frozen_by_scheduler: v.frozen_by_scheduler,
                pending_kernels: v.pending_kernels,
                memory_current: v.memory_current,
            })
        })
        .collect()
}

/// The `top` table.
pub fn write_top(status: &SchedStatus, out: &mut dyn Write) -> Result<()> {
    let mut t = Table::new(&[
        "GPU", "PCI", "POLICY", "VGPU", "TARGET", "ACHIEVED", "FROZEN", "PENDING", "MEMORY",
    ]);
    for r in top_rows(status) {
        t.row(vec![
            r.gpu.map_or_else(|| "?".into(), |p| p.to_string()),
            r.pci.clone().unwrap_or_else(|| "-".into()),
            r.policy,
            r.uuid.to_string(),
            pct(r.target),
            r.achieved.map_or_else(|| "-".into(), pct),
            frozen_text(r.frozen_by_user, r.frozen_by_scheduler).into(),
            r.pending_kernels.to_string(),
            ByteSize(r.memory_current).to_string(),
        ]);
    }
    if t.is_empty() {
        writeln!(out, "No vGPU with GPU owner processes.")?;
        return Ok(());
    }
    t.write(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_proto::{PolicyConfig, SchedCounters, SchedVgpu};

    fn status() -> SchedStatus {
        let cfg = |p: &str| PolicyConfig {
            policy: p.into(),
            timeslice_us: None,
            window_ms: 1000,
        };
        SchedStatus {
            default: cfg("best-effort"),
            gpus: vec![GpuSched {
                gpu: Some(1),
                pci: Some("0000:02:00.0".into()),
                gvm_index: Some(8),
                parents: vec!["0000:02:00.0".into()],
                config: cfg("equal-share"),
                slice_us: 2048,
                counters: SchedCounters {
                    ticks: 100,
                    priority_writes: 2,
                    freeze_writes: 8,
                    seconds: 1.0,
                },
                vgpus: vec![SchedVgpu {
                    uuid: uuid::Uuid::from_u128(1),
                    type_name: Some("sim-4c".into()),
                    target: 0.5,
                    achieved: Some(0.4875),
                    frozen_by_user: false,
                    frozen_by_scheduler: true,
                    pending_kernels: 4,
                    memory_current: 1 << 30,
                    priority: Some(8),
                }],
                nvidia: None,
            }],
            unmapped: Vec::new(),
            without_nvml: None,
        }
    }

    #[test]
    fn set_names_the_gpu_it_changed_by_position_and_pci_address_whatever_form_was_typed() {
        for arg in ["1", "0000:02:00.0", "00000000:02:00.0", "0000:02:00.0 "] {
            assert_eq!(named_gpu(&status(), arg), "1 [0000:02:00.0]", "{arg}");
        }
        assert_eq!(named_gpu(&status(), "5"), "5");
    }

    #[test]
    fn figures_are_there_once_every_busy_vgpu_has_an_achieved_share() {
        let known = uuid::Uuid::from_u128(1);
        let other = uuid::Uuid::from_u128(2);
        let busy = |u: &[uuid::Uuid]| u.iter().copied().collect::<BTreeSet<_>>();
        assert!(has_figures(&status(), &busy(&[known])));
        assert!(has_figures(&status(), &busy(&[])));
        assert!(!has_figures(&status(), &busy(&[known, other])));
        let mut fresh = status();
        fresh.gpus[0].vgpus[0].achieved = None;
        assert!(!has_figures(&fresh, &busy(&[known])), "no window yet");
        fresh.gpus.clear();
        assert!(!has_figures(&fresh, &busy(&[known])), "not sampled yet");
    }

    #[test]
    fn durations_take_units_and_refuse_garbage() {
        assert_eq!(parse_duration_us("2ms").ok(), Some(2_000));
        assert_eq!(parse_duration_us("500us").ok(), Some(500));
        assert_eq!(parse_duration_us("1.5s").ok(), Some(1_500_000));
        assert_eq!(parse_duration_us("3").ok(), Some(3_000));
        for bad in ["", "ms", "2h", "0us", "-1ms", "1e3ms"] {
            assert!(parse_duration_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn show_prints_each_gpu_with_target_and_achieved() -> Result<()> {
        let mut out = Vec::new();
        write_status(&status(), &mut out)?;
        let text = String::from_utf8(out)?;
        assert!(
            text.starts_with("Default: best-effort, slice auto"),
            "{text}"
        );
        assert!(
            text.contains("GPU 1 [0000:02:00.0]: equal-share, slice auto (2048us), window 1000ms, 10 knob writes (10.0/s)"),
            "{text}"
        );
        assert!(
            text.contains("50.0%") && text.contains("48.8%") && text.contains("sched"),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn top_has_one_row_per_vgpu_with_pending_and_memory() -> Result<()> {
        let rows = top_rows(&status());
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].gpu, rows[0].pending_kernels), (Some(1), 4));
        assert_eq!(rows[0].pci.as_deref(), Some("0000:02:00.0"));
        let mut out = Vec::new();
        write_top(&status(), &mut out)?;
        let text = String::from_utf8(out)?;
        let line = text.lines().nth(1).unwrap_or_default();
        assert!(line.starts_with("1    0000:02:00.0  equal-share"), "{text}");
        assert!(line.ends_with("sched   4        1GiB"), "{text}");
        let mut out = Vec::new();
        write_top(
            &SchedStatus {
                gpus: Vec::new(),
                ..status()
            },
            &mut out,
        )?;
        assert!(String::from_utf8(out)?.contains("No vGPU"));
        Ok(())
    }

    #[test]
    fn show_prints_nvidias_scheduler_under_its_gpu_or_why_there_is_no_nvml() -> Result<()> {
        let mut s = status();
        s.gpus[0].nvidia = Some(NvidiaSched {
            status: NvidiaSchedStatus::VgpuHost,
            policy: Some("fixed-share".into()),
            timeslice_us: Some(2000),
            adaptive: false,
            active_vgpus: Some(2),
            reason: None,
            change: None,
        });
        let mut out = Vec::new();
        write_status(&s, &mut out)?;
        let text = String::from_utf8(out)?;
        assert!(
            text.contains("\n  NVIDIA's vGPU scheduler: fixed-share, slice 2000us (2 vGPUs running: NVIDIA allows no change now)\n"),
            "{text}"
        );
        assert!(!text.contains("without NVML"), "{text}");
        s.gpus[0].nvidia = None;
        s.without_nvml = Some("libnvidia-ml.so.1 not found".into());
        let mut out = Vec::new();
        write_status(&s, &mut out)?;
        let text = String::from_utf8(out)?;
        assert!(
            text.ends_with(
                "\nNVIDIA's vGPU scheduler: without NVML (libnvidia-ml.so.1 not found)\n"
            ),
            "{text}"
        );
        Ok(())
    }
}
