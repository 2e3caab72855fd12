//! gvm-nvml against the stand-in `libnvidia-ml.so.1` (crate `gvm-nvml-fake`): each test copies
//! the built fake into its own directory with its own `nvml-fake.json` host, opens it with
//! `Nvml::open_at`, and reads the file back to see what NVML was asked to set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};
use gvm_nvml::{
    ArrMode, Error, Nvml, ProjectPolicy, ReturnCode, SchedulerPolicy, SchedulerSetting,
    SliceSetting, VmIdKind,
};
use gvm_sched::Policy;
use serde_json::{json, Value};

/// The fake, freshly built: `cargo test` does not build other packages' cdylibs, so build it
/// once per test process with the same cargo, profile and target directory.
fn fake_library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/fake_nvml-HASH -> target/<profile>/libgvm_nvml_fake.so
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir layout");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--lib", "-p", "gvm-nvml-fake"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(target) = profile_dir.parent() {
            cargo.env("CARGO_TARGET_DIR", target);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let st = cargo.status().expect("run cargo build");
        assert!(st.success(), "building libgvm_nvml_fake.so failed");
        profile_dir.join("libgvm_nvml_fake.so")
    })
}

/// One pretend host: a directory with `libnvidia-ml.so.1` and its `nvml-fake.json`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(state: &Value) -> Result<Host> {
        let dir = tempfile::tempdir()?;
        std::fs::copy(fake_library(), dir.path().join("libnvidia-ml.so.1"))
            .context("copy the fake library")?;
        let host = Host { dir };
        host.write(state)?;
        Ok(host)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join(gvm_nvml_fake::STATE_FILE)
    }

    fn write(&self, state: &Value) -> Result<()> {
        std::fs::write(self.state_path(), serde_json::to_string_pretty(state)?)?;
        Ok(())
    }

    fn state(&self) -> Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            self.state_path(),
        )?)?)
    }

    fn open(&self) -> Result<Nvml> {
        Ok(Nvml::open_at(&self.dir.path().join("libnvidia-ml.so.1"))?)
    }
}

const GPU: &str = "0000:3c:00.0";

fn vm(instance: u32, fb: u64) -> Value {
    json!({
        "instance": instance,
        "uuid": format!("6d5a9c0e-0000-4000-8000-00000000000{instance}"),
        "vm_id": format!("1f1e7b2a-0000-4000-8000-00000000000{instance}"),
        "fb_usage": fb,
    })
}

fn host_with(gpu: Value) -> Value {
    json!({"driver_version": "550.127.06-fake", "gpus": [gpu]})
}

fn vgpu_host(vgpus: Vec<Value>) -> Value {
    host_with(json!({"pci": GPU, "vgpu_manager": true, "vgpus": vgpus}))
}

#[test]
fn the_scheduler_is_set_and_read_back_while_no_vm_runs() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![]))?;
    let nvml = host.open()?;
    let gpu = nvml.gpu(GPU)?;
    let wanted = ProjectPolicy {
        policy: Policy::EqualShare,
        timeslice_us: Some(2000),
    };
    let set = gpu.apply_policy(wanted)?;
    assert_eq!(
        set.slice,
        SliceSetting::Fixed {
            timeslice_ns: 2_000_000
        }
    );
    let sched = &host.state()?["gpus"][0]["scheduler"];
    assert_eq!(sched["policy"], 2, "{sched}");
    assert_eq!(
        sched["arr_mode"], 1,
        "ARR disabled for a fixed slice: {sched}"
    );
    assert_eq!(sched["timeslice_ns"], 2_000_000);
    let back = gpu.scheduler_state()?;
    assert_eq!(back.policy, Some(SchedulerPolicy::EqualShare));
    assert_eq!(back.arr_mode, Some(ArrMode::Disabled));
    assert_eq!(gvm_nvml::project_policy(&back)?, wanted);
    Ok(())
}

#[test]
fn adaptive_round_robin_is_set_with_its_averaging_factor() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![]))?;
    let nvml = host.open()?;
    let gpu = nvml.gpu(GPU)?;
    gpu.set_scheduler_state(&SchedulerSetting {
        policy: SchedulerPolicy::FixedShare,
        slice: SliceSetting::Adaptive {
            avg_factor: 33,
            frequency: 480,
        },
    })?;
    let sched = &host.state()?["gpus"][0]["scheduler"];
    assert_eq!(
        (sched["avg_factor"].clone(), sched["frequency"].clone()),
        (json!(33), json!(480))
    );
    let back = gpu.scheduler_state()?;
    assert_eq!(back.arr_mode, Some(ArrMode::Enabled));
    assert_eq!(back.avg_factor, Some(33));
    Ok(())
}

#[test]
fn setting_the_scheduler_while_a_vm_runs_is_refused_clearly() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![vm(1, 1 << 30)]))?;
    let before = host.state()?;
    let nvml = host.open()?;
    let gpu = nvml.gpu(GPU)?;
    let err = gpu
        .apply_policy(ProjectPolicy {
            policy: Policy::FixedShare,
            timeslice_us: Some(4000),
        })
        .err()
        .context("a set while a VM runs must fail")?;
    match &err {
        Error::VmsRunning {
            pci, code, active, ..
        } => {
            assert_eq!(pci, GPU);
            assert_eq!(*code, ReturnCode::NOT_SUPPORTED);
            assert_eq!(*active, 1);
        }
        other => anyhow::bail!("wanted VmsRunning, got {other:?}"),
    }
    assert!(err.to_string().contains("shut its VMs down"), "{err}");
    assert_eq!(host.state()?, before, "nothing changed");
    Ok(())
}

#[test]
fn a_setting_outside_the_capabilities_is_refused_before_nvml_is_called() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![]))?;
    let before = host.state()?;
    let nvml = host.open()?;
    let err = nvml
        .gpu(GPU)?
        .apply_policy(ProjectPolicy {
            policy: Policy::EqualShare,
            timeslice_us: Some(100),
        })
        .err()
        .context("100 µs is below the fake's 1 ms minimum")?;
    ensure!(
        matches!(err, Error::InvalidSetting { .. }),
        "wanted InvalidSetting, got {err:?}"
    );
    let chain = gvm_error_chain::error_chain(&err);
    assert!(
        chain.contains("GPU 0000:3c:00.0")
            && chain.contains("outside the GPU's 1000000..=30000000 ns"),
        "{chain}"
    );
    assert_eq!(host.state()?, before);
    Ok(())
}

#[test]
fn without_the_vgpu_manager_the_vgpu_calls_are_not_supported() -> Result<()> {
    let host = Host::new(&host_with(json!({"pci": GPU, "vgpu_manager": false})))?;
    let nvml = host.open()?;
    let gpu = nvml.gpu("00000000:3C:00.0")?;
    assert_eq!(gpu.pci(), GPU);
    let not_supported = |r: Result<(), Error>, call: &str| -> Result<()> {
        match r {
            Err(Error::Call { pci, call: c, code }) => {
                assert_eq!(
                    (pci.as_str(), c, code),
                    (GPU, call, ReturnCode::NOT_SUPPORTED)
                );
                Ok(())
            }
            other => anyhow::bail!("{call}: wanted NOT_SUPPORTED, got {other:?}"),
        }
    };
    not_supported(
        gpu.scheduler_state().map(drop),
        "nvmlDeviceGetVgpuSchedulerState",
    )?;
    not_supported(
        gpu.scheduler_capabilities().map(drop),
        "nvmlDeviceGetVgpuSchedulerCapabilities",
    )?;
    not_supported(
        gpu.scheduler_log().map(drop),
        "nvmlDeviceGetVgpuSchedulerLog",
    )?;
    not_supported(
        gpu.heterogeneous_mode().map(drop),
        "nvmlDeviceGetVgpuHeterogeneousMode",
    )?;
    not_supported(
        gpu.set_scheduler_state(&SchedulerSetting {
            policy: SchedulerPolicy::BestEffort,
            slice: SliceSetting::DriverDefault,
        }),
        "nvmlDeviceSetVgpuSchedulerState",
    )?;
    not_supported(gpu.vm_running().map(drop), "nvmlDeviceGetActiveVgpus")?;
    assert_eq!(gpu.name()?, "NVIDIA H200", "plain GPU calls still work");
    Ok(())
}

#[test]
fn heterogeneous_mode_is_set_read_back_and_refused_while_a_vgpu_exists() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![]))?;
    {
        let nvml = host.open()?;
        let gpu = nvml.gpu(GPU)?;
        assert!(!gpu.heterogeneous_mode()?);
        gpu.set_heterogeneous_mode(true)?;
        assert!(gpu.heterogeneous_mode()?);
        assert_eq!(host.state()?["gpus"][0]["heterogeneous"], true);
    }
    let mut state = host.state()?;
    state["gpus"][0]["vgpus"] = json!([vm(3, 0)]);
    host.write(&state)?;
    let nvml = host.open()?;
    let err = nvml
        .gpu(GPU)?
        .set_heterogeneous_mode(false)
        .err()
        .context("NVML refuses while a vGPU is active")?;
    match err {
        Error::VmsRunning { code, active, .. } => {
            assert_eq!((code, active), (ReturnCode::IN_USE, 1));
        }
        other => anyhow::bail!("wanted VmsRunning, got {other:?}"),
    }
    assert_eq!(host.state()?["gpus"][0]["heterogeneous"], true);
    Ok(())
}

#[test]
fn vgpu_instances_list_each_vm_and_its_framebuffer_use() -> Result<()> {
    let host = Host::new(&vgpu_host(vec![vm(1, 512 << 20), vm(2, 3 << 30)]))?;
    let nvml = host.open()?;
    let gpu = nvml.gpu(GPU)?;
    assert!(gpu.vm_running()?);
    let list = gpu.vgpu_instances()?;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].uuid, "6d5a9c0e-0000-4000-8000-000000000001");
    assert_eq!(list[1].vm_id, "1f1e7b2a-0000-4000-8000-000000000002");
    assert_eq!(list[1].vm_id_kind, VmIdKind::Uuid);
    assert_eq!(
        list.iter().map(|v| v.fb_usage_bytes).collect::<Vec<_>>(),
        [512 << 20, 3 << 30]
    );
    Ok(())
}

#[test]
fn guest_process_utilisation_names_the_vgpu_instance_and_filters_by_time() -> Result<()> {
    let sample = |pid: u32, t: u64, sm: u32| {
        json!({"vgpu_instance": 2, "pid": pid, "name": "python3", "timestamp_us": t,
               "sm": sm, "mem": 5, "enc": 0, "dec": 0})
    };
    let mut state = vgpu_host(vec![vm(1, 0), vm(2, 0)]);
    state["gpus"][0]["processes"] = json!([sample(100, 10, 40), sample(101, 20, 55)]);
    let host = Host::new(&state)?;
    let nvml = host.open()?;
    let gpu = nvml.gpu(GPU)?;
    let all = gpu.vgpu_process_utilization(0)?;
    assert_eq!(all.iter().map(|p| p.pid).collect::<Vec<_>>(), [100, 101]);
    assert_eq!(all[1].sm_percent, 55);
    assert_eq!(all[1].name, "python3");
    let instances = gpu.vgpu_instances()?;
    let owner = instances
        .iter()
        .find(|v| v.instance == all[0].vgpu_instance)
        .context("the sample's vGPU instance is listed")?;
    assert_eq!(owner.uuid, "6d5a9c0e-0000-4000-8000-000000000002");
    let newer = gpu.vgpu_process_utilization(15)?;
    assert_eq!(newer.len(), 1);
    assert!(
        gpu.vgpu_process_utilization(20)?.is_empty(),
        "no samples is an empty list"
    );
    Ok(())
}

#[test]
fn the_scheduler_log_holds_the_entries_nvml_filled() -> Result<()> {
    let entry = |t: u64| {
        json!({"timestamp": t, "time_run_total": 2 * t, "time_run": 1000, "sw_runlist_id": 4,
               "target_time_slice": 2_000_000, "cumulative_preemption_time": 7})
    };
    let mut state = vgpu_host(vec![]);
    state["gpus"][0]["log"] = json!([entry(10), entry(20), entry(30)]);
    let host = Host::new(&state)?;
    let nvml = host.open()?;
    let log = nvml.gpu(GPU)?.scheduler_log()?;
    assert_eq!(log.entries.len(), 3, "entriesCount, not the 200 slots");
    assert_eq!(log.entries[2].timestamp_ns, 30);
    assert_eq!(log.entries[2].time_run_total_ns, 60);
    assert_eq!(log.state.policy, Some(SchedulerPolicy::BestEffort));
    Ok(())
}

#[test]
fn gpus_are_listed_and_found_by_pci_address_only() -> Result<()> {
    let host = Host::new(&json!({"driver_version": "550.127.06-fake", "gpus": [
        {"pci": GPU, "vgpu_manager": true},
        {"pci": "0000:9a:00.0", "vgpu_manager": false},
    ]}))?;
    let nvml = host.open()?;
    assert_eq!(nvml.driver_version()?, "550.127.06-fake");
    assert_eq!(nvml.gpus()?, [GPU, "0000:9a:00.0"]);
    match nvml.gpu("0000:77:00.0").err() {
        Some(Error::Call { code, .. }) => assert_eq!(code, ReturnCode::NOT_FOUND),
        other => anyhow::bail!("wanted NOT_FOUND, got {other:?}"),
    }
    ensure!(matches!(
        nvml.gpu("gpu0").err(),
        Some(Error::BadAddress { .. })
    ));
    Ok(())
}

#[test]
fn a_missing_library_means_without_nvml() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = Nvml::open_at(&dir.path().join("libnvidia-ml.so.1"))
        .err()
        .context("no library there")?;
    assert!(err.is_unavailable(), "{err:?}");
    ensure!(matches!(err, Error::Unavailable { .. }));
    assert!(err.to_string().starts_with("NVML not available ("), "{err}");
    Ok(())
}

#[test]
fn a_broken_state_is_a_driver_that_is_not_loaded() -> Result<()> {
    let host = Host::new(&json!({"no": "host"}))?;
    let err = host.open().err().context("init must fail")?;
    let err = err.downcast::<Error>()?;
    assert_eq!(err.code(), Some(ReturnCode::DRIVER_NOT_LOADED));
    assert!(err.is_unavailable());
    Ok(())
}
