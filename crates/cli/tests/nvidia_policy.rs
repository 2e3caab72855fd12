//! `policy set`/`policy show`, `show` and the metrics on a host with NVIDIA's vGPU manager, as
//! NVML reports it: gvm-vgpud on the simulated host with `--nvml-library` naming the
//! stand-in `libnvidia-ml.so.1` (crate `gvm-nvml-fake`), whose GPU is the sim's first mdev
//! parent, `0000:3b:00.0`. Each test writes the fake's host (`nvml-fake.json` beside the
//! library) and reads it back to see what NVML was asked to set.
//!
//! Needs root and /dev/fuse (the simulated host is a FUSE mount); prints `SKIP: <reason>`
//! without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use serde_json::{json, Value};
use support::{gvm_vgpu, stdout, succeeded, wait_up_to, Daemon};

mod support;

/// The GPU the daemon's policy commands address and the fake's GPU: the sim's first parent.
const GPU: &str = "0000:3b:00.0";
/// The vGPU the running-VM tests create on it.
const VGPU: &str = "a1b2c3d4-0000-4000-8000-0000000000a1";

/// The stand-in library, freshly built: `cargo test` does not build other packages' cdylibs,
/// so build it once per test process with the same cargo, profile and target directory (as
/// `crates/nvml/tests/fake_nvml.rs` does).
fn fake_library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/nvidia_policy-HASH -> target/<profile>/libgvm_nvml_fake.so
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

/// One pretend NVML host: a directory with `libnvidia-ml.so.1` and its `nvml-fake.json`.
struct NvmlHost {
    dir: tempfile::TempDir,
}

impl NvmlHost {
    fn new(state: &Value) -> NvmlHost {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fake_library(), dir.path().join("libnvidia-ml.so.1")).unwrap();
        let host = NvmlHost { dir };
        std::fs::write(
            host.state_path(),
            serde_json::to_string_pretty(state).unwrap(),
        )
        .unwrap();
        host
    }

    fn library(&self) -> PathBuf {
        self.dir.path().join("libnvidia-ml.so.1")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.path().join("nvml-fake.json")
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state_path()).unwrap()).unwrap()
    }
}

/// A fake host with one GPU at [`GPU`]: with the vGPU manager or not, with these VMs' vGPUs.
fn nvml_state(vgpu_manager: bool, vgpus: Vec<Value>) -> Value {
    json!({
        "driver_version": "550.127.06-fake",
        "gpus": [{"pci": GPU, "vgpu_manager": vgpu_manager, "vgpus": vgpus}],
    })
}

/// The sim with one GPU and gvm-vgpud on it, NVML from `library`.
fn start(library: &Path, metrics: Option<&str>) -> (SimHost, Daemon) {
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let daemon = Daemon::start_with(sim.root(), Stdio::null(), |c| {
        c.arg("--no-libvirt").arg("--nvml-library").arg(library);
        if let Some(addr) = metrics {
            c.arg("--metrics").arg(addr);
        }
    });
    (sim, daemon)
}

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args).output().expect("run gvm-vgpu")
}

fn json_of(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&succeeded(&cli(root, &all), &all)).unwrap()
}

/// The row of [`GPU`] in `policy show --json`.
fn gpu_row(root: &Path) -> Value {
    let v = json_of(root, &["policy", "show"]);
    v["policy"]["gpus"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["pci"] == GPU).cloned())
        .unwrap_or_else(|| panic!("policy show lists no {GPU}: {v}"))
}

fn needs_sim(test: &str) -> bool {
    skip(test, require_root_and_fuse())
}

#[test]
fn while_no_vm_runs_policy_set_sets_nvidias_scheduler_and_show_reports_it() {
    if needs_sim("while_no_vm_runs_policy_set_sets_nvidias_scheduler") {
        return;
    }
    let nvml = NvmlHost::new(&nvml_state(true, vec![]));
    let (sim, _daemon) = start(&nvml.library(), None);
    let root = sim.root();
    let args = [
        "policy",
        "set",
        "equal-share",
        "--gpu",
        "0",
        "--timeslice",
        "2ms",
    ];
    let text = succeeded(&cli(root, &args), &args);
    assert!(
        text.contains(&format!(
            "NVIDIA's vGPU scheduler on GPU {GPU} set; it now runs equal-share, slice 2000us\n"
        )),
        "{text}"
    );
    let sched = &nvml.state()["gpus"][0]["scheduler"];
    // NVML_VGPU_SCHEDULER_POLICY_EQUAL_SHARE = 2, NVML_VGPU_SCHEDULER_ARR_DISABLE = 1.
    assert_eq!(
        (&sched["policy"], &sched["arr_mode"], &sched["timeslice_ns"]),
        (&json!(2), &json!(1), &json!(2_000_000)),
        "{sched}"
    );
    let show = succeeded(&cli(root, &["policy", "show"]), &["policy", "show"]);
    assert!(
        show.contains(
            "\n  NVIDIA's vGPU scheduler: equal-share, slice 2000us (no VM running, can be set)\n"
        ),
        "{show}"
    );
    let row = gpu_row(root);
    assert_eq!(row["nvidia"]["status"], "vgpu-host", "{row}");
    assert_eq!(row["nvidia"]["policy"], "equal-share", "{row}");
    assert_eq!(row["nvidia"]["active_vgpus"], 0, "{row}");
    assert!(
        row["nvidia"].get("change").is_none(),
        "show reports no change: {row}"
    );
}

#[test]
fn while_vms_run_nvidia_allows_no_change_and_the_daemons_policy_is_applied() {
    if needs_sim("while_vms_run_nvidia_allows_no_change") {
        return;
    }
    let vm = json!({
        "instance": 1,
        "uuid": VGPU,
        "vm_id": "1f1e7b2a-0000-4000-8000-000000000001",
        "fb_usage": 1u64 << 30,
    });
    let nvml = NvmlHost::new(&nvml_state(true, vec![vm]));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (sim, _daemon) = start(&nvml.library(), Some(&addr));
    let root = sim.root();
    let create = [
        "create", "--type", "sim-10c", "--uuid", VGPU, "--parent", GPU,
    ];
    succeeded(&cli(root, &create), &create);
    assert!(
        wait_up_to(std::time::Duration::from_secs(10), || cli(
            root,
            &["show", VGPU]
        )
        .status
        .success()),
        "gvm-vgpud did not report {VGPU} within 10 s"
    );
    let before = nvml.state();
    let args = ["policy", "set", "fixed-share", "--gpu", GPU];
    let text = succeeded(&cli(root, &args), &args);
    assert!(
        text.contains(&format!(
            "NVIDIA allows no change while VMs run on GPU {GPU} (1 vGPU); the policy is applied \
             through the guests' agents where they cooperate\n"
        )),
        "{text}"
    );
    assert_eq!(
        nvml.state(),
        before,
        "NVIDIA's scheduler was left as it was"
    );
    let all = ["--json", "policy", "set", "fixed-share", "--gpu", GPU];
    let answer: Value = serde_json::from_str(&succeeded(&cli(root, &all), &all)).unwrap();
    let change = &answer["policy"]["gpus"][0]["nvidia"]["change"];
    assert_eq!(change["outcome"], "vms-running", "{answer}");
    assert_eq!(nvml.state(), before);
    let row = gpu_row(root);
    assert_eq!(
        row["config"]["policy"], "fixed-share",
        "the daemon's own: {row}"
    );
    assert_eq!(
        row["nvidia"]["policy"], "best-effort",
        "NVIDIA's, unchanged: {row}"
    );
    assert_eq!(row["nvidia"]["active_vgpus"], 1, "{row}");
    let show = stdout(&cli(root, &["policy", "show"]));
    assert!(
        show.contains("NVIDIA's vGPU scheduler: best-effort, the driver's default slice (1 vGPU running: NVIDIA allows no change now)"),
        "{show}"
    );

    // Per-VM framebuffer from NVML, matched by the vGPU's UUID.
    let v = json_of(root, &["show", VGPU]);
    assert_eq!(v["vgpu"]["nvidia_fb_usage_bytes"], 1u64 << 30, "{v}");
    let text = stdout(&cli(root, &["show", VGPU]));
    assert!(
        text.contains("  framebuffer:  1GiB in use (NVIDIA's vGPU manager, NVML)\n"),
        "{text}"
    );
    let metrics = scrape(&addr);
    assert!(
        metrics.lines().any(|l| l
            .starts_with(&format!("gvm_vgpu_nvidia_fb_usage_bytes{{uuid=\"{VGPU}\""))
            && l.ends_with(&format!(" {}", 1u64 << 30))),
        "{metrics}"
    );
}

#[test]
fn on_an_sriov_gpu_policy_set_reaches_nvidias_scheduler_while_no_vm_runs() {
    if needs_sim("on_an_sriov_gpu_policy_set_reaches_nvidias_scheduler") {
        return;
    }
    // An H100-class host: the GPU is an SR-IOV PF whose vGPUs are VFs, no mdev parent.
    const PF: &str = "0000:41:00.0";
    let nvml = NvmlHost::new(&json!({
        "driver_version": "550.127.06-fake",
        "gpus": [{"pci": PF, "vgpu_manager": true, "vgpus": []}],
    }));
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();
    let _daemon = Daemon::start_with(root, Stdio::null(), |c| {
        c.arg("--no-libvirt")
            .arg("--nvml-library")
            .arg(nvml.library());
    });
    let args = ["policy", "set", "equal-share", "--gpu", PF];
    let text = succeeded(&cli(root, &args), &args);
    assert!(
        text.contains(&format!(
            "NVIDIA's vGPU scheduler on GPU {PF} set; it now runs equal-share"
        )),
        "{text}"
    );
    assert_eq!(
        nvml.state()["gpus"][0]["scheduler"]["policy"],
        json!(2),
        "NVML was asked for equal share (2) on the PF"
    );
    let v = json_of(root, &["policy", "show"]);
    let row = v["policy"]["gpus"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["pci"] == PF).cloned())
        .unwrap_or_else(|| panic!("policy show lists the PF {PF}: {v}"));
    assert_eq!(row["nvidia"]["policy"], "equal-share", "{row}");
}

#[test]
fn after_a_reboot_nvml_sets_heterogeneous_mode_and_mixed_sizes_are_restored() {
    if needs_sim("after_a_reboot_nvml_sets_heterogeneous_mode") {
        return;
    }
    const PF: &str = "0000:41:00.0";
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();
    // The stand-in NVML drives the sim's mode, as NVML drives the driver's VF tree.
    let control = root.join("sys/kernel/debug/gvm-sim/control");
    let nvml = NvmlHost::new(&json!({
        "driver_version": "550.127.06-fake",
        "gpus": [{"pci": PF, "vgpu_manager": true, "vgpus": [],
                  "sim_control": control.display().to_string()}],
    }));
    let start = || {
        Daemon::start_with(root, Stdio::null(), |c| {
            c.arg("--no-libvirt")
                .arg("--nvml-library")
                .arg(nvml.library());
        })
    };
    // As an operator sets the host up: VFs enabled, heterogeneous mode on, two sizes.
    std::fs::write(
        sim.host_root()
            .pci_devices_dir()
            .join(PF)
            .join("sriov_numvfs"),
        "4\n",
    )
    .unwrap();
    sim.control(&format!("vf-heterogeneous {PF} on")).unwrap();
    let daemon = start();
    let (big, small) = (
        "0b5e0000-0000-4000-8000-0000000000b1",
        "0b5e0000-0000-4000-8000-0000000000b2",
    );
    for (uuid, t) in [(big, "H100-40C"), (small, "H100-20C")] {
        let define = [
            "define",
            "--type",
            t,
            "--parent",
            PF,
            "--uuid",
            uuid,
            "--autostart",
        ];
        succeeded(&cli(root, &define), &define);
        succeeded(&cli(root, &["start", uuid]), &["start"]);
    }
    // A reboot clears VFs, vGPUs and the mode; the restarted daemon enables the VFs, sets the
    // mode through NVML and re-creates both sizes.
    sim.control("vf-reset").unwrap();
    drop(daemon);
    let _daemon = start();
    let list = json_of(root, &["list", "--defined"]);
    let states: Vec<(String, String)> = list["vgpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["uuid"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (big.to_string(), "running".to_string()),
            (small.to_string(), "running".to_string())
        ],
        "{list}"
    );
    assert_eq!(
        nvml.state()["gpus"][0]["heterogeneous"],
        json!(true),
        "NVML was asked for heterogeneous mode"
    );
}

#[test]
fn a_vf_vgpus_framebuffer_is_found_by_its_vm_when_nvidia_names_the_vgpu_its_own_way() {
    if needs_sim("a_vf_vgpus_framebuffer_is_found_by_its_vm") {
        return;
    }
    const PF: &str = "0000:41:00.0";
    const DOMAIN_UUID: &str = "1f1e7b2a-0000-4000-8000-0000000000d1";
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();
    std::fs::write(
        sim.host_root()
            .pci_devices_dir()
            .join(PF)
            .join("sriov_numvfs"),
        "4\n",
    )
    .unwrap();
    let uuid = "0b5e0000-0000-4000-8000-0000000000c1";
    let made = json_of(root, &["create", "--type", "H100-20C", "--uuid", uuid]);
    let vf = made["vgpu"]["vf"].as_str().expect("a VF vGPU").to_string();
    // A running domain holding the VF, as libvirt's status file shows it.
    let (bus, rest) = vf["0000:".len()..].split_once(':').unwrap();
    let (slot, function) = rest.split_once('.').unwrap();
    let status_dir = root.join("run/libvirt/qemu");
    std::fs::create_dir_all(&status_dir).unwrap();
    std::fs::write(
        status_dir.join("vm1.xml"),
        format!(
            "<domstatus state='running' pid='1'><domain type='kvm'><name>vm1</name>\
             <uuid>{DOMAIN_UUID}</uuid><devices><hostdev mode='subsystem' type='pci' \
             managed='no'><source><address domain='0x0000' bus='0x{bus}' slot='0x{slot}' \
             function='0x{function}'/></source><alias name='ua-gvm-{uuid}'/></hostdev>\
             </devices></domain></domstatus>"
        ),
    )
    .unwrap();
    // NVIDIA's vGPU manager names the vGPU by a UUID of its own, and the VM by the domain's.
    let nvml = NvmlHost::new(&json!({
        "driver_version": "550.127.06-fake",
        "gpus": [{"pci": PF, "vgpu_manager": true, "vgpus": [{
            "instance": 3,
            "uuid": "7e57ab1e-0000-4000-8000-0000000000e1",
            "vm_id": DOMAIN_UUID,
            "fb_usage": 2u64 << 30,
        }]}],
    }));
    let _daemon = Daemon::start_with(root, Stdio::null(), |c| {
        c.arg("--no-libvirt")
            .arg("--nvml-library")
            .arg(nvml.library());
    });
    let mut shown = Value::Null;
    assert!(
        wait_up_to(std::time::Duration::from_secs(10), || {
            shown = json_of(root, &["show", uuid]);
            shown["vgpu"]["nvidia_fb_usage_bytes"] == json!(2u64 << 30)
        }),
        "show reports NVML's framebuffer figure of the domain's one vGPU: {shown}"
    );
}

#[test]
fn on_a_gpu_without_the_vgpu_manager_nvidias_scheduler_is_not_available() {
    if needs_sim("on_a_gpu_without_the_vgpu_manager") {
        return;
    }
    let nvml = NvmlHost::new(&nvml_state(false, vec![]));
    let (sim, _daemon) = start(&nvml.library(), None);
    let root = sim.root();
    // Before any set the daemon's scheduler has no row for the GPU: NVML's report adds one.
    assert_eq!(gpu_row(root)["nvidia"]["status"], "not-available");
    let before = nvml.state();
    let args = ["policy", "set", "equal-share", "--gpu", "0"];
    let text = succeeded(&cli(root, &args), &args);
    assert!(
        text.contains(&format!(
            "NVIDIA's vGPU scheduler: not available on this GPU (GPU {GPU}: "
        )) && text.contains("NVML_ERROR_NOT_SUPPORTED"),
        "{text}"
    );
    assert_eq!(nvml.state(), before);
    let row = gpu_row(root);
    assert_eq!(row["config"]["policy"], "equal-share", "{row}");
    assert_eq!(row["nvidia"]["status"], "not-available", "{row}");
    let show = stdout(&cli(root, &["policy", "show"]));
    assert!(
        show.contains("  NVIDIA's vGPU scheduler: not available on this GPU (GPU "),
        "{show}"
    );
}

#[test]
fn without_nvml_policy_set_works_and_show_says_so() {
    if needs_sim("without_nvml_policy_set_works") {
        return;
    }
    let gone = tempfile::tempdir().unwrap();
    let (sim, _daemon) = start(&gone.path().join("libnvidia-ml.so.1"), None);
    let root = sim.root();
    let args = ["policy", "set", "equal-share", "--gpu", "0"];
    let text = succeeded(&cli(root, &args), &args);
    assert!(
        text.contains("\nNVIDIA's vGPU scheduler: without NVML (NVML not available ("),
        "{text}"
    );
    let v = json_of(root, &["policy", "show"]);
    let reason = v["policy"]["without_nvml"].as_str().unwrap_or_default();
    assert!(reason.starts_with("NVML not available ("), "{v}");
    assert_eq!(gpu_row(root)["config"]["policy"], "equal-share");
    assert!(gpu_row(root).get("nvidia").is_none());
}

/// A TCP port free now on the loopback.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The metrics endpoint's text, once it answers.
fn scrape(addr: &str) -> String {
    let mut text = String::new();
    let answered = wait_up_to(std::time::Duration::from_secs(10), || {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        text.clear();
        s.write_all(request.as_bytes()).is_ok() && s.read_to_string(&mut text).is_ok()
    });
    assert!(answered, "no metrics on {addr}");
    text
}
