//! `gvm-vgpu` on SR-IOV VF vGPUs of the simulated host (`--sriov-gpus 1`), beside its mdev
//! parent: `parents`, `types`, `create`, `list`, `show` and `remove` read the host
//! themselves; every refusal exits 1, names the VF or GPU and the fix, and leaves the host
//! as it was. Needs root and /dev/fuse and prints `SKIP: <reason>` without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;

use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use serde_json::Value;
use support::{gvm_vgpu, payload, stderr, succeeded};

mod support;

const PF: &str = "0000:41:00.0";
const VFS: [&str; 2] = ["0000:41:00.4", "0000:41:00.5"];

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args).output().expect("run gvm-vgpu")
}

fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(&cli(root, args), args)
}

fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    payload(&serde_json::from_str(&ok(root, &all)).expect("valid JSON"))
}

/// `gvm-vgpu ARGS` fails with exit 1 and a message holding every one of `needles`.
fn refused(root: &Path, args: &[&str], needles: &[&str]) {
    let o = cli(root, args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    for n in needles {
        assert!(
            stderr(&o).contains(n),
            "{args:?} should say {n:?}: {}",
            stderr(&o)
        );
    }
}

fn vf_vgpus(root: &Path) -> Vec<(String, String)> {
    json(root, &["list"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "vf")
        .map(|v| {
            (
                v["uuid"].as_str().unwrap().to_string(),
                v["vf"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn enable_vfs(sim: &SimHost, n: u32) {
    // What NVIDIA's `sriov-manage -e` does.
    std::fs::write(
        sim.host_root()
            .pci_devices_dir()
            .join(PF)
            .join("sriov_numvfs"),
        format!("{n}\n"),
    )
    .unwrap();
}

#[test]
fn vf_vgpus_beside_mdev_ones_without_a_daemon() {
    if skip(
        "vf_vgpus_beside_mdev_ones_without_a_daemon",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();

    // parents: the mdev parent and the PF, with its VFs enabled/total.
    let text = ok(root, &["parents"]);
    assert!(text.contains("KIND"), "{text}");
    let pf_line = text.lines().find(|l| l.starts_with(PF)).expect("the PF");
    assert!(
        pf_line.contains(" vf ") && pf_line.contains("0/20"),
        "{text}"
    );
    let parents = json(root, &["parents"]);
    let pf = parents
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == PF)
        .unwrap();
    assert_eq!(
        (&pf["kind"], &pf["vfs_enabled"], &pf["vfs_total"]),
        (&Value::from("vf"), &Value::from(0), &Value::from(20))
    );

    // No VFs yet: a VF type is not creatable, and the error says how to get some.
    refused(
        root,
        &["create", "--type", "H100-20C"],
        &["H100-20C", "creatable"],
    );
    enable_vfs(&sim, 2);

    // types: each VF type bound to the catalog by name, with how many more fit.
    let types = json(root, &["types", "--parent", PF]);
    let rows = types.as_array().unwrap();
    assert_eq!(rows.len(), 8, "{types}");
    let t20 = rows
        .iter()
        .find(|r| r["kernel_name"] == "NVIDIA H100-20C")
        .unwrap();
    assert_eq!(t20["kind"], "vf");
    assert_eq!(t20["mdev_type"], "1047");
    assert_eq!(t20["catalog"]["name"], "H100-20C");
    assert_eq!(t20["available_instances"], 2);
    refused(
        root,
        &["types", "--parent", "0000:41:00.1"],
        &["did you mean '0000:41:00.0'"],
    );

    // An unknown type is refused before the host is touched, with a close name.
    refused(
        root,
        &["create", "--type", "H100-21C"],
        &["H100-21C", "Did you mean 'H100-20C'"],
    );
    assert!(vf_vgpus(root).is_empty());

    // Mixed sizes in heterogeneous mode.
    sim.control(&format!("vf-heterogeneous {PF} on")).unwrap();
    let text = ok(root, &["create", "--type", "H100-40C"]);
    assert!(
        text.contains(&format!("on VF {} of {PF}", VFS[0])),
        "{text}"
    );
    let uuid = "3e5b1b8e-7a7e-4f55-8f5f-1c2b3d4e5f61";
    let made = json(
        root,
        &[
            "create", "--type", "H100-20C", "--parent", PF, "--uuid", uuid,
        ],
    );
    assert_eq!(
        (
            &made["uuid"],
            &made["kind"],
            &made["vf"],
            &made["mdev_type"]
        ),
        (
            &Value::from(uuid),
            &Value::from("vf"),
            &Value::from(VFS[1]),
            &Value::from("1047")
        )
    );
    assert_eq!(made["type_name"], "H100-20C");
    assert_eq!(made["knobs"]["memory_limit"], 20u64 << 30);
    let mut listed = vf_vgpus(root);
    listed.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1], (uuid.to_string(), VFS[1].to_string()));
    let table = ok(root, &["list"]);
    let row = table.lines().find(|l| l.starts_with(uuid)).expect("listed");
    assert!(row.ends_with(" vf") && row.contains(PF), "{table}");
    let shown = ok(root, &["show", uuid]);
    assert!(
        shown.contains(&format!("vf:           {}", VFS[1])),
        "{shown}"
    );
    assert!(shown.contains("catalog type: H100-20C"), "{shown}");
    let types = json(root, &["types", "--parent", PF]);
    let t20 = types
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kernel_name"] == "NVIDIA H100-20C")
        .cloned()
        .unwrap();
    assert_eq!(t20["devices"], serde_json::json!([uuid]));

    // A full GPU (both VFs used) refuses with the VF count as the fix.
    refused(
        root,
        &["create", "--type", "H100-4C", "--parent", PF],
        &[PF],
    );

    // Remove both; back to homogeneous mode: a second size is refused, saying why.
    for (u, _) in vf_vgpus(root) {
        ok(root, &["remove", &u]);
    }
    assert!(vf_vgpus(root).is_empty());
    sim.control(&format!("vf-heterogeneous {PF} off")).unwrap();
    ok(root, &["create", "--type", "H100-20C", "--uuid", uuid]);
    refused(
        root,
        &["create", "--type", "H100-40C"],
        &["homogeneous mode", "NVIDIA H100-20C"],
    );
    assert_eq!(vf_vgpus(root).len(), 1);

    // In use: the VM holding the VF keeps its vGPU.
    sim.control(&format!("vf-hold {}", VFS[0])).unwrap();
    refused(root, &["remove", uuid], &[VFS[0], "stop the VM"]);
    assert_eq!(vf_vgpus(root).len(), 1);
    sim.control(&format!("vf-release {}", VFS[0])).unwrap();

    // The VF vanished (a reboot): show says so and how to restore; remove drops the record.
    sim.control("vf-reset").unwrap();
    refused(root, &["show", uuid], &[VFS[0], "restore"]);
    assert!(vf_vgpus(root).is_empty());
    ok(root, &["remove", uuid]);
    refused(root, &["remove", uuid], &[uuid, "gvm-vgpu list"]);
}

/// The vGPUs `list --defined` shows through the daemon: (uuid, state, vf).
fn defined(root: &Path) -> Vec<(String, String, Option<String>)> {
    let mut all: Vec<_> = json(root, &["list", "--defined"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["uuid"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
                v["vf"].as_str().map(str::to_string),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn defined_vf_vgpus_are_restored_after_a_reboot() {
    if skip(
        "defined_vf_vgpus_are_restored_after_a_reboot",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();
    let log_path = root.join("gvm-vgpud.log");
    let log = || std::fs::File::create(&log_path).unwrap();
    enable_vfs(&sim, 4);
    sim.control(&format!("vf-heterogeneous {PF} on")).unwrap();
    let daemon = support::Daemon::start_logging(root, log());

    // Mixed sizes, defined with autostart and started through the daemon.
    let (big, small, other) = (
        "0b5e0000-0000-4000-8000-000000000001",
        "0b5e0000-0000-4000-8000-000000000002",
        "0b5e0000-0000-4000-8000-000000000003",
    );
    for (uuid, t) in [(big, "H100-40C"), (small, "H100-20C")] {
        let def = json(
            root,
            &[
                "define",
                "--type",
                t,
                "--parent",
                PF,
                "--uuid",
                uuid,
                "--autostart",
            ],
        );
        assert_eq!(
            (&def["kind"], &def["mdev_type"]),
            (&Value::from("vf"), &def["mdev_type"])
        );
        ok(root, &["start", uuid]);
    }
    // A VF vGPU the CLI created is made persistent by defining its UUID.
    ok(root, &["create", "--type", "H100-20C", "--uuid", other]);
    // The daemon adopts it at its next rescan; `reconcile` is one now.
    ok(root, &["reconcile"]);
    ok(
        root,
        &[
            "define",
            "--type",
            "H100-20C",
            "--parent",
            PF,
            "--uuid",
            other,
            "--autostart",
        ],
    );
    let running = defined(root);
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(
        running
            .iter()
            .all(|(_, s, vf)| s == "running" && vf.is_some()),
        "{running:?}"
    );
    let shown = ok(root, &["show", big]);
    assert!(shown.contains("vf:           0000:41:00."), "{shown}");
    let list = json(root, &["list"]);
    assert!(
        list.as_array().unwrap().iter().all(|v| v["kind"] == "vf"),
        "{list}"
    );

    // Held by a VM: stop is refused, naming the VF, and the vGPU stays.
    let held = running
        .iter()
        .find(|(u, _, _)| u == big)
        .unwrap()
        .2
        .clone()
        .unwrap();
    sim.control(&format!("vf-hold {held}")).unwrap();
    refused(root, &["stop", big], &[&held]);
    assert!(defined(root)
        .iter()
        .any(|(u, s, _)| u == big && s == "running"));
    sim.control(&format!("vf-release {held}")).unwrap();

    // A reboot: VFs, vGPUs and the heterogeneous mode are gone. Without NVML the restarted
    // daemon re-enables the VFs and restores the largest size, and says per vGPU that the
    // other size needs heterogeneous mode.
    sim.control("vf-reset").unwrap();
    // The running daemon sees the VFs vanish at its next rescan: every one is stopped.
    ok(root, &["reconcile"]);
    assert!(
        defined(root)
            .iter()
            .all(|(_, s, vf)| s == "stopped" && vf.is_none()),
        "{:?}",
        defined(root)
    );
    drop(daemon);
    let daemon = support::Daemon::start_logging(root, log());
    let after = defined(root);
    let state = |u: &str| after.iter().find(|(x, _, _)| x == u).unwrap().1.clone();
    assert_eq!(
        [state(big), state(small), state(other)],
        ["running", "stopped", "stopped"],
        "{after:?}"
    );
    let text = std::fs::read_to_string(&log_path).unwrap();
    for u in [small, other] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("restore vGPU {u}")))
            .unwrap_or_else(|| panic!("no restore report for {u}: {text}"));
        assert!(
            line.contains("heterogeneous mode") && line.contains("NVML"),
            "{line}"
        );
    }

    // One size only: after the next reboot, autostart restores every defined vGPU.
    for u in [small, other] {
        ok(root, &["undefine", u]);
    }
    let second = "0b5e0000-0000-4000-8000-000000000004";
    ok(
        root,
        &[
            "define",
            "--type",
            "H100-40C",
            "--parent",
            PF,
            "--uuid",
            second,
            "--autostart",
        ],
    );
    ok(root, &["start", second]);
    sim.control("vf-reset").unwrap();
    drop(daemon);
    let _daemon = support::Daemon::start_logging(root, log());
    let after = defined(root);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after
            .iter()
            .all(|(_, s, vf)| s == "running" && vf.is_some()),
        "{after:?}"
    );
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains("restore vGPU"), "{text}");
}

#[test]
fn after_a_reboot_the_record_of_a_gone_transient_vf_vgpu_frees_its_vf() {
    if skip(
        "after_a_reboot_the_record_of_a_gone_transient_vf_vgpu_frees_its_vf",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let root = sim.root();
    enable_vfs(&sim, 4);
    // Made by the CLI and never defined: only its record knows it.
    let transient = "0b5e0000-0000-4000-8000-00000000000f";
    ok(root, &["create", "--type", "H100-80C", "--uuid", transient]);
    let record = root.join(format!("etc/gvm-vgpu/vf-vgpus/{transient}.json"));
    assert!(record.exists(), "create records the VF vGPU");
    // A reboot takes the VFs and the vGPU; the daemon's start drops the record, so the VF
    // (and the GPU's whole framebuffer) is free for a new vGPU.
    sim.control("vf-reset").unwrap();
    let log_path = root.join("gvm-vgpud.log");
    let _daemon = support::Daemon::start_logging(root, std::fs::File::create(&log_path).unwrap());
    assert!(
        support::wait_up_to(std::time::Duration::from_secs(10), || !record.exists()),
        "the gone vGPU's record was dropped at start"
    );
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("dropped the record of a VF vGPU that is gone"),
        "{text}"
    );
    enable_vfs(&sim, 4);
    ok(root, &["create", "--type", "H100-80C"]);
}
