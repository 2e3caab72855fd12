//! `nvml_probe`: what gvm-nvml's NVML calls return on this host, one JSON line per GPU and
//! call. Read-only unless `--try-set`, which tries `nvmlDeviceSetVgpuSchedulerState` once per
//! GPU: with the state read back from it when the read reports all of it (so a host that
//! accepts the set keeps what it had; otherwise the set is skipped), or, when that read is
//! refused, with best effort at the driver's default (which NVML refuses on a GPU without
//! NVIDIA's vGPU manager).
//!
//! ```text
//! nvml_probe [--try-set] [--library PATH]
//! ```
//!
//! Without NVML it prints one line saying so and exits 0, as the rest of the project goes on
//! without NVML.

use std::path::PathBuf;

use anyhow::{bail, Result};
use gvm_nvml::{Error, Gpu, Nvml, SchedulerPolicy, SchedulerSetting, SliceSetting};
use serde::Serialize;
use serde_json::{json, Value};

struct Args {
    try_set: bool,
    library: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        try_set: false,
        library: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--try-set" => args.try_set = true,
            "--library" => match it.next() {
                Some(p) => args.library = Some(PathBuf::from(p)),
                None => bail!("--library needs a path"),
            },
            "-h" | "--help" => {
                println!("usage: nvml_probe [--try-set] [--library PATH]");
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument '{other}': usage: nvml_probe [--try-set] [--library PATH]")
            }
        }
    }
    Ok(args)
}

/// One call's outcome as JSON: `{"ok": ...}` or `{"error": {...}}` with the code by name and
/// whether the refusal is the one expected without a vGPU manager.
fn outcome<T: Serialize>(r: &Result<T, Error>) -> Value {
    match r {
        Ok(v) => json!({"ok": v}),
        Err(e) => json!({"error": {
            "code": e.code().map(|c| c.to_string()),
            "kind": kind(e),
            "message": gvm_error_chain::error_chain(e),
        }}),
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Unavailable { .. } => "unavailable",
        Error::Init { .. } => "init",
        Error::MissingCall { .. } => "missing-call",
        Error::System { .. } | Error::Call { .. } => "call",
        Error::VmsRunning { .. } => "vms-running",
        Error::InvalidSetting { .. } => "invalid-setting",
        Error::BadAddress { .. } => "bad-address",
        Error::Malformed { .. } => "malformed",
    }
}

fn line(v: Value) {
    println!("{v}");
}

fn probe_gpu(gpu: &Gpu<'_>, try_set: bool) -> bool {
    let pci = gpu.pci().to_owned();
    let report = |call: &str, v: Value| line(json!({"gpu": pci, "call": call, "result": v}));
    report("nvmlDeviceGetName", outcome(&gpu.name()));
    let state = gpu.scheduler_state();
    report("nvmlDeviceGetVgpuSchedulerState", outcome(&state));
    report(
        "nvmlDeviceGetVgpuSchedulerCapabilities",
        outcome(&gpu.scheduler_capabilities()),
    );
    report(
        "nvmlDeviceGetVgpuSchedulerLog",
        outcome(&gpu.scheduler_log().map(
            |l| json!({"engine_id": l.engine_id, "state": l.state, "entries": l.entries.len()}),
        )),
    );
    report(
        "nvmlDeviceGetVgpuHeterogeneousMode",
        outcome(&gpu.heterogeneous_mode()),
    );
    report("nvmlDeviceGetActiveVgpus", outcome(&gpu.vgpu_instances()));
    report(
        "nvmlDeviceGetVgpuProcessUtilization",
        outcome(&gpu.vgpu_process_utilization(0)),
    );
    let mut set_refused = false;
    if try_set {
        // Without the vGPU manager the read is refused and so will the set be; with it, only
        // a state the read reports in full is sent back, so nothing changes.
        let setting = match &state {
            Ok(s) => s.as_setting(),
            Err(_) => Some(SchedulerSetting {
                policy: SchedulerPolicy::BestEffort,
                slice: SliceSetting::DriverDefault,
            }),
        };
        match setting {
            Some(setting) => {
                let r = gpu.set_scheduler_state(&setting);
                set_refused = r.is_err();
                report(
                    "nvmlDeviceSetVgpuSchedulerState",
                    json!({"setting": setting, "outcome": outcome(&r), "handled": true}),
                );
            }
            None => report(
                "nvmlDeviceSetVgpuSchedulerState",
                json!({"skipped": "the state read back cannot be sent back unchanged (ARR on, or values NVML does not define)"}),
            ),
        }
    }
    set_refused
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let opened = match &args.library {
        Some(p) => Nvml::open_at(p),
        None => Nvml::open(),
    };
    let nvml = match opened {
        Ok(n) => n,
        Err(e) if e.is_unavailable() => {
            line(json!({"nvml": "unavailable", "message": gvm_error_chain::error_chain(&e)}));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    line(json!({"nvml": "open", "library": nvml.library(),
                "driver_version": outcome(&nvml.driver_version())}));
    let gpus = nvml.gpus()?;
    let mut refused = 0;
    for pci in &gpus {
        match nvml.gpu(pci) {
            Ok(gpu) => refused += usize::from(probe_gpu(&gpu, args.try_set)),
            Err(e) => line(
                json!({"gpu": pci, "call": "nvmlDeviceGetHandleByPciBusId_v2",
                                  "result": outcome::<()>(&Err(e))}),
            ),
        }
    }
    line(
        json!({"summary": {"gpus": gpus.len(), "try_set": args.try_set,
                            "scheduler_set_refused": refused}}),
    );
    Ok(())
}
