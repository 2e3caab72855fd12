//! `gvm-vgpu` end to end against the simulated host: what an operator types, what a script
//! parses, and what Debian's own `mdevctl` sees of the same tree.
//!
//! Every test needs root and /dev/fuse (the simulated host is a FUSE mount) and prints
//! `SKIP: <reason>` without them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use serde_json::Value;
use support::{gvm_vgpu, payload, stderr, stdout, succeeded, wait_up_to, Daemon, CLI_BIN};

mod support;

fn cli(root: &Path, args: &[&str]) -> Output {
    gvm_vgpu(root, args).output().expect("run gvm-vgpu")
}

fn ok(root: &Path, args: &[&str]) -> String {
    succeeded(&cli(root, args), args)
}

/// What `gvm-vgpu --json ARGS` printed: one object, `{"schema": 1, "<member>": payload}`;
/// returns the payload.
fn json(root: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&ok(root, &all)).expect("valid JSON");
    payload(&v)
}

fn uuids_listed(root: &Path) -> Vec<String> {
    let list = json(root, &["list"]);
    let mut uuids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["uuid"].as_str().unwrap().to_string())
        .collect();
    uuids.sort();
    uuids
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh")
}

#[test]
fn shell_echo_into_create_and_remove_is_seen_by_list_json() {
    if skip("shell_echo_into_create_and_remove", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    assert!(uuids_listed(root).is_empty());

    let types = root.join("sys/class/mdev_bus/0000:3b:00.0/mdev_supported_types");
    let uuid = "6f1d3a1e-0c1b-4a53-9e0e-7a3f6b2c9d10";
    let out = sh(&format!(
        "echo {uuid} > '{}/gvmsim-3/create'",
        types.display()
    ));
    assert!(
        out.status.success(),
        "echo > create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let list = json(root, &["list"]);
    let entry = &list.as_array().unwrap()[0];
    assert_eq!(entry["uuid"], uuid);
    assert_eq!(entry["parent"], "0000:3b:00.0");
    assert_eq!(entry["mdev_type"], "gvmsim-3");
    assert_eq!(entry["managed"], true);
    assert_eq!(entry["type_name"], "sim-20c");
    assert_eq!(entry["knobs"]["memory_limit"], 20u64 << 30);
    assert_eq!(entry["start"], "not_defined");

    let out = sh(&format!(
        "echo 1 > '{}/sys/bus/mdev/devices/{uuid}/remove'",
        root.display()
    ));
    assert!(
        out.status.success(),
        "echo 1 > remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(uuids_listed(root).is_empty());
}

#[test]
fn create_show_xml_qemu_args_remove_round_trip() {
    if skip(
        "create_show_xml_qemu_args_remove_round_trip",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let uuid = "0a6a4e1c-5f51-4c48-8f0b-9d1d7b0e2c33";

    let created = json(root, &["create", "--type", "sim-10c", "--uuid", uuid]);
    assert_eq!(created["uuid"], uuid);
    assert_eq!(created["mdev_type"], "gvmsim-2");
    assert_eq!(created["type_name"], "sim-10c");
    // The catalog's type joined with the live kernel count.
    let types = json(
        root,
        &["types", "--parent", created["parent"].as_str().unwrap()],
    );
    let row = types
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mdev_type"] == "gvmsim-2")
        .unwrap();
    assert_eq!(row["devices"], serde_json::json!([uuid]));
    assert_eq!(row["available_instances"], 7);

    // An owner process appears in the GVM tree and `show` reports its knobs.
    sim.control(&format!("spawn {uuid} memory=1073741824"))
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let shown = loop {
        let shown = json(root, &["show", uuid]);
        if !shown["owners"].as_array().unwrap().is_empty() || std::time::Instant::now() > deadline {
            break shown;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // The shape the daemon's `show` has: owner pids, then each owner's gcgroups.
    assert_eq!(shown["knobs"]["memory_limit"], 10u64 << 30, "{shown}");
    assert_eq!(shown["sources"]["memory_limit"], "type", "{shown}");
    assert_eq!(shown["owner_details"][0]["rule"], "environment", "{shown}");
    assert_eq!(shown["owners"][0], shown["owner_details"][0]["pid"]);
    let owner = &shown["owner_details"][0]["gcgroups"][0];
    assert_eq!(owner["gpu"], 0, "the first GPU in PCI order");
    assert_eq!(owner["pci"], "0000:3b:00.0");
    assert_eq!(owner["gvm_index"], 0);
    assert_eq!(owner["memory_current"], 1u64 << 30);

    let xml = ok(root, &["xml", uuid]);
    assert!(xml.contains(&format!("<address uuid='{uuid}'/>")), "{xml}");
    let args = json(root, &["qemu-args", uuid]);
    assert_eq!(
        args["args"][1],
        format!(
            "vfio-pci,sysfsdev={}/sys/bus/mdev/devices/{uuid}",
            root.display()
        )
    );

    ok(root, &["remove", uuid]);
    assert!(uuids_listed(root).is_empty());
}

#[test]
fn bad_input_fails_clearly_and_changes_nothing() {
    if skip(
        "bad_input_fails_clearly_and_changes_nothing",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let uuid = "3e5b1b8e-7a7e-4f55-8f5f-1c2b3d4e5f60";
    ok(root, &["create", "--type", "sim-40c", "--uuid", uuid]);
    let before = json(root, &["types"]);

    // Usage errors exit 2.
    let o = cli(
        root,
        &["create", "--type", "sim-4c", "--uuid", "not-a-uuid"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = cli(root, &["remove"]);
    assert_eq!(o.status.code(), Some(2));

    // Operation failures exit 1 and name the thing and the fix.
    let o = cli(root, &["create", "--type", "sim-40c", "--uuid", uuid]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(uuid),
        "duplicate names the UUID: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let o = cli(root, &["create", "--type", "sim-4C"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("sim-4c"),
        "suggests the right name: {}",
        stderr(&o)
    );

    let o = cli(root, &["create", "--type", "sim-80c"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no free instance"), "{}", stderr(&o));

    let o = cli(
        root,
        &["create", "--type", "sim-4c", "--parent", "0000:99:00.0"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0000:99:00.0"), "{}", stderr(&o));

    let o = cli(root, &["remove", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("00000000-0000-4000-8000-000000000000"),
        "{}",
        stderr(&o)
    );

    let o = cli(root, &["show", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(o.status.code(), Some(1));

    // A broken catalog file is reported with file, line and column; nothing changes.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("broken.toml"),
        "[gpu]\nmodel = \"X\"\n\n[[type]]\nname = \"x\"\nmdev_type = \"gvmsim-1\"\nmemory_limit = \"1GiB\"\npriority = 17\nmax_instances = 1\nhost_swap = false\n",
    )
    .unwrap();
    let o = cli(
        root,
        &[
            "--catalog",
            bad.path().to_str().unwrap(),
            "create",
            "--type",
            "x",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("broken.toml:8:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("priority"), "{}", stderr(&o));

    assert_eq!(
        json(root, &["types"]),
        before,
        "failed commands changed the host"
    );
    assert_eq!(uuids_listed(root), vec![uuid.to_string()]);
}

/// Run mdevctl in a private mount namespace with the simulated /sys bind-mounted over /sys.
fn mdevctl(root: &Path, args: &str) -> Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{}/sys' /sys && mdevctl {args}",
            root.display()
        ))
        .output()
        .expect("run unshare")
}

#[test]
fn debian_mdevctl_sees_the_same_types_and_devices_and_can_start_and_stop() {
    let reason = require_root_and_fuse()
        .or_else(|| require_command("mdevctl"))
        .or_else(|| require_command("unshare"));
    if skip("debian_mdevctl_sees_the_same_types_and_devices", reason) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let made_by_cli = "9b0c1f7e-3a2d-4c5b-8e6f-0a1b2c3d4e5f";
    ok(
        root,
        &[
            "create",
            "--type",
            "sim-20c",
            "--uuid",
            made_by_cli,
            "--parent",
            "0000:3c:00.0",
        ],
    );

    // Types: every (parent, type id, available instances) gvm-vgpu reports, mdevctl reports.
    let o = mdevctl(root, "types --dumpjson");
    assert!(o.status.success(), "mdevctl types: {}", stderr(&o));
    let theirs: Value = serde_json::from_slice(&o.stdout).expect("mdevctl JSON");
    let ours = json(root, &["types"]);
    let mut compared = 0;
    for row in ours.as_array().unwrap() {
        let parent = row["parent"].as_str().unwrap();
        let type_id = row["mdev_type"].as_str().unwrap();
        let found = theirs
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.get(parent))
            .flat_map(|types| types.as_array().unwrap().iter())
            .find_map(|t| t.get(type_id))
            .unwrap_or_else(|| panic!("mdevctl lacks {parent}/{type_id}: {theirs}"));
        assert_eq!(
            found["available_instances"], row["available_instances"],
            "{parent}/{type_id}"
        );
        assert_eq!(found["device_api"], "vfio-pci");
        assert_eq!(found["name"], row["kernel_name"]);
        compared += 1;
    }
    assert_eq!(compared, 12, "2 parents x 6 types");

    // Devices: mdevctl lists the vGPU the CLI made, with its parent and type.
    let o = mdevctl(root, "list");
    assert!(o.status.success(), "mdevctl list: {}", stderr(&o));
    let listed = stdout(&o);
    assert!(
        listed.contains(&format!("{made_by_cli} 0000:3c:00.0 gvmsim-3")),
        "mdevctl list: {listed}"
    );

    // mdevctl start makes a device gvm-vgpu sees; mdevctl stop removes it.
    let by_mdevctl = "c3d2e1f0-a9b8-4c7d-8e6f-5a4b3c2d1e0f";
    let o = mdevctl(
        root,
        &format!("start -u {by_mdevctl} -p 0000:3b:00.0 -t gvmsim-1"),
    );
    assert!(
        o.status.success(),
        "mdevctl start: {} {}",
        stdout(&o),
        stderr(&o)
    );
    let list = json(root, &["list"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["uuid"] == by_mdevctl)
        .unwrap_or_else(|| panic!("gvm-vgpu does not list the mdevctl-made device: {list}"));
    assert_eq!(entry["type_name"], "sim-4c");
    let o = mdevctl(root, &format!("stop -u {by_mdevctl}"));
    assert!(o.status.success(), "mdevctl stop: {}", stderr(&o));
    assert_eq!(uuids_listed(root), vec![made_by_cli.to_string()]);
}

#[test]
fn define_from_a_file_refuses_bad_files_unknown_fields_and_flag_mixes_before_calling_the_daemon() {
    // No daemon and no simulated host needed: every refusal happens before a call.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let file = |name: &str, text: &str| {
        let p = root.join(name);
        std::fs::write(&p, text).expect("write test file");
        p.to_string_lossy().into_owned()
    };
    let missing = root.join("missing.json").to_string_lossy().into_owned();
    let not_json = file("broken.json", "[{\"parent\": ");
    let not_array = file("object.json", "{\"parent\": \"p\", \"type\": \"t\"}");
    let no_type = file("no-type.json", "[{\"parent\": \"p\"}]");
    let empty = file("empty.json", "[]");
    let good = file("good.json", "[{\"parent\": \"p\", \"type\": \"sim-4c\"}]");
    let typo = file(
        "typo.json",
        "[{\"parent\": \"p\", \"type\": \"sim-4c\"},\n \
         {\"parent\": \"p\", \"type\": \"sim-4c\", \"autostrat\": true}]",
    );
    let knob_typo = file(
        "knob-typo.json",
        "[{\"parent\": \"p\", \"type\": \"sim-4c\", \"overrides\": {\"priorty\": 3}}]",
    );

    for (args, want) in [
        (vec!["define", "--from", &missing], "missing.json"),
        (vec!["define", "--from", &not_json], "broken.json"),
        (vec!["define", "--from", &not_array], "object.json"),
        (vec!["define", "--from", &no_type], "no-type.json"),
        (vec!["define", "--from", &empty], "lists no definitions"),
        // Unknown fields are refused, naming the item and the field.
        (
            vec!["define", "--from", &typo],
            "item 1: unknown field `autostrat`",
        ),
        (
            vec!["define", "--from", &knob_typo],
            "item 0: unknown field `priorty`",
        ),
        (
            vec!["define", "--from", &good, "--priority", "3"],
            "per item there",
        ),
    ] {
        let o = cli(root, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // Usage errors: --start without --from, --from with --type, neither given.
    for args in [
        vec!["define", "--type", "sim-4c", "--parent", "p", "--start"],
        vec!["define", "--from", &good, "--type", "sim-4c"],
        vec!["define"],
    ] {
        let o = cli(root, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // A well-formed file without a daemon: the daemon's absence is what is reported.
    let o = cli(root, &["define", "--from", &good]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("gvm-vgpud"), "{}", stderr(&o));
}

#[test]
fn a_root_that_does_not_exist_or_has_no_sys_tree_is_an_error_naming_the_path_and_the_fix() {
    // No simulated host: these are the roots a typo or a stopped simulator leaves.
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nonexistent");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let no_sys = dir.path().join("no-sys");
    std::fs::create_dir(&no_sys).unwrap();
    let empty_sys = dir.path().join("stopped-sim");
    std::fs::create_dir_all(empty_sys.join("sys")).unwrap();

    for (root, wants) in [
        (&missing, ["does not exist", "--root"]),
        (&file, ["is not a directory", "--root"]),
        (&no_sys, ["has no sys/ tree", "gvm-vgpu-sim --root"]),
        (&empty_sys, ["has no sys/ tree", "gvm-vgpu-sim --root"]),
    ] {
        for args in [
            &["list"][..],
            &["--json", "list"],
            &["parents"],
            &["types"],
            &["show", "0a6a4e1c-5f51-4c48-8f0b-9d1d7b0e2c33"],
        ] {
            let o = cli(root, args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{root:?} {args:?}: {err}");
            if args[0] == "--json" {
                // Under --json the failure is one error object on stdout.
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                assert_eq!(v["schema"], 1, "{v}");
                assert!(v["error"]["message"].is_string(), "{v}");
            } else {
                assert!(
                    stdout(&o).is_empty(),
                    "{root:?} {args:?} printed: {}",
                    stdout(&o)
                );
            }
            assert!(
                err.contains(&root.display().to_string()),
                "{root:?} {args:?}: {err}"
            );
            for want in wants {
                assert!(err.contains(want), "{root:?} {args:?}: {err}");
            }
            assert_eq!(
                err.matches("gvm-vgpu: error:").count(),
                1,
                "the chain once: {err}"
            );
        }
    }
}

#[test]
fn define_from_300_items_with_item_299_bad_stores_nothing_and_names_item_299() {
    if skip("define_from_300_items", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let defs = root.join("etc/gvm-vgpu/vgpus");
    let stored = || std::fs::read_dir(&defs).map(|d| d.count()).unwrap_or(0);
    let items = |last_type: &str| {
        let mut items: Vec<Value> = (0..300)
            .map(|_| serde_json::json!({"parent": "0000:3b:00.0", "type": "sim-4c"}))
            .collect();
        items[299]["type"] = Value::from(last_type);
        let p = root.join(format!("{last_type}.json"));
        std::fs::write(&p, Value::from(items).to_string()).expect("write the list");
        p.to_string_lossy().into_owned()
    };

    // Item 299 is only found bad by the daemon (no such type on that parent), after
    // the first 256 items were sent and checked.
    let o = cli(root, &["define", "--from", &items("sim-9000c")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("item 299: "), "{}", stderr(&o));
    assert!(!stdout(&o).contains("Defined"), "{}", stdout(&o));
    assert_eq!(stored(), 0, "a refused list stores nothing");

    // The same list made good is stored whole.
    let o = cli(root, &["define", "--from", &items("sim-4c")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("Defined vGPU").count(), 300);
    assert_eq!(stored(), 300);
}

#[test]
fn define_for_an_absent_parent_stores_a_kernel_type_id_never_a_catalog_name() {
    if skip("define_for_an_absent_parent", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let absent = "0000:99:00.0";
    let stored_type = |uuid: &str| -> Option<String> {
        let list = json(root, &["list", "--defined"]);
        let items = list.as_array().cloned().unwrap_or_default();
        items
            .iter()
            .find(|d| d["uuid"] == uuid)
            .map(|d| d["mdev_type"].as_str().unwrap_or_default().to_string())
    };

    // A catalog type bound by kernel type id: the id is stored, not the catalog name.
    let a = "0b0e0000-0000-4000-8000-00000000000a";
    ok(
        root,
        &[
            "define", "--uuid", a, "--parent", absent, "--type", "sim-4c",
        ],
    );
    assert_eq!(stored_type(a).as_deref(), Some("gvmsim-1"));

    // A kernel type id the catalog does not know is kept as given (mdevctl does the same).
    let b = "0b0e0000-0000-4000-8000-00000000000b";
    ok(
        root,
        &[
            "define",
            "--uuid",
            b,
            "--parent",
            absent,
            "--type",
            "nvidia-558",
        ],
    );
    assert_eq!(stored_type(b).as_deref(), Some("nvidia-558"));

    // A catalog type bound by the kernel type's name cannot be resolved without the
    // parent: refused, naming the fix, and nothing is stored.
    let c = "0b0e0000-0000-4000-8000-00000000000c";
    let o = cli(
        root,
        &[
            "define", "--uuid", c, "--parent", absent, "--type", "A100-4C",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("binds to a kernel type by its name"), "{err}");
    assert!(err.contains("kernel type id"), "{err}");
    assert_eq!(stored_type(c), None, "a refused definition is not stored");
}

/// The shipped simulated-host catalog with `sim-4c` at 6 GiB and priority 3.
fn sim_catalog_4c_at_6g() -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mdev-types/gvm-sim.toml"),
    )
    .unwrap();
    let old = "memory_limit = \"4GiB\"\npriority = 10\n";
    assert!(
        shipped.contains(old),
        "the shipped sim-4c changed: update this test"
    );
    shipped.replacen(old, "memory_limit = \"6GiB\"\npriority = 3\n", 1)
}

/// What the daemon's `show --json` says of `uuid`: (memory limit, priority).
fn daemon_knobs(root: &Path, uuid: &str) -> (u64, u64) {
    let shown = json(root, &["show", uuid]);
    let knobs = &shown["knobs"];
    (
        knobs["memory_limit"].as_u64().unwrap(),
        knobs["priority"].as_u64().unwrap(),
    )
}

fn wait_for(f: impl FnMut() -> bool) -> bool {
    wait_up_to(std::time::Duration::from_secs(5), f)
}

#[test]
fn catalog_is_refused_by_daemon_commands_naming_the_daemons_catalog_and_reload_is_how_to_change_it()
{
    if skip(
        "catalog_is_refused_by_daemon_commands",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let daemon = Daemon::start(root);
    let uuid = "0c0a0000-0000-4000-8000-000000000001";
    ok(root, &["create", "--type", "sim-4c", "--uuid", uuid]);
    assert!(wait_for(|| cli(root, &["show", uuid]).status.success()));
    assert_eq!(daemon_knobs(root, uuid), (4 << 30, 10));

    let alt = tempfile::tempdir().unwrap();
    std::fs::write(alt.path().join("gvm-sim.toml"), sim_catalog_4c_at_6g()).unwrap();
    let alt_dir = alt.path().to_str().unwrap();
    let daemons_dir = root.join("etc/gvm-vgpu/mdev-types");
    for args in [
        vec!["show", uuid],
        vec!["list", "--defined"],
        vec!["set", uuid, "--priority", "3"],
        vec!["status"],
        vec!["define", "--type", "sim-4c", "--parent", "0000:3b:00.0"],
    ] {
        let mut all = vec!["--catalog", alt_dir];
        all.extend_from_slice(&args);
        let o = cli(root, &all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
        for want in [
            format!("--catalog {alt_dir} does not reach gvm-vgpud"),
            daemons_dir.display().to_string(),
            "systemctl reload gvm-vgpud".into(),
            "SIGHUP".into(),
        ] {
            assert!(err.contains(&want), "{args:?}: {err}");
        }
        assert_eq!(err.matches("gvm-vgpu: error:").count(), 1, "{err}");
    }
    // Nothing was done: no retune, no definition.
    assert_eq!(daemon_knobs(root, uuid), (4 << 30, 10));
    assert!(json(root, &["list", "--defined"])
        .as_array()
        .unwrap()
        .is_empty());
    // A command gvm-vgpu answers itself still reads --catalog.
    let types = json(root, &["--catalog", alt_dir, "types"]);
    let row = types
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mdev_type"] == "gvmsim-1")
        .cloned()
        .unwrap();
    assert_eq!(row["catalog"]["memory_limit"], 6u64 << 30);

    // `status` names what the daemon loaded.
    let status = ok(root, &["status"]);
    assert!(status.contains("catalog: loaded from "), "{status}");
    assert!(
        status.contains("<builtin>/mdev-types/gvm-sim.toml"),
        "{status}"
    );
    assert!(status.contains("(reloads: 0)"), "{status}");
    assert!(
        status.contains(&daemons_dir.display().to_string()),
        "{status}"
    );
    assert!(!status.contains("last reload failed"), "{status}");

    // The daemon's catalog changed and reloaded: `show` and `status` follow.
    std::fs::create_dir_all(&daemons_dir).unwrap();
    let ours = daemons_dir.join("gvm-sim.toml");
    std::fs::write(&ours, sim_catalog_4c_at_6g()).unwrap();
    daemon.hangup();
    assert!(wait_for(|| ok(root, &["status"]).contains("(reloads: 1)")));
    assert_eq!(daemon_knobs(root, uuid), (6 << 30, 3));
    assert!(ok(root, &["status"]).contains(&ours.display().to_string()));
    let types = json(root, &["types"]);
    let row = types
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mdev_type"] == "gvmsim-1")
        .cloned();
    assert_eq!(row.unwrap()["catalog"]["memory_limit"], 6u64 << 30);

    // A broken one: refused, the old one stays, `status` says why.
    std::fs::write(&ours, "[gpu]\nmodel = \"GVM-SIM-80GB\"\n\n[[type]\n").unwrap();
    daemon.hangup();
    assert!(wait_for(
        || ok(root, &["status"]).contains("last reload failed at ")
    ));
    let status = ok(root, &["status"]);
    assert!(
        status.contains(&format!("{}:4:", ours.display())),
        "{status}"
    );
    assert!(status.contains("stays in use"), "{status}");
    assert!(status.contains("(reloads: 1)"), "{status}");
    assert_eq!(daemon_knobs(root, uuid), (6 << 30, 3));
    let o = cli(root, &["--json", "status"]);
    let pong = payload(&serde_json::from_slice(&o.stdout).unwrap());
    assert!(pong["catalog"]["last_reload_failed"]["error"]
        .as_str()
        .unwrap()
        .contains("gvm-sim.toml:4:"));

    // Without a daemon, `show` is answered here and uses --catalog (the host's own local
    // catalog, broken above, would fail it: that file goes).
    drop(daemon);
    std::fs::remove_file(&ours).unwrap();
    let o = cli(root, &["--catalog", alt_dir, "--json", "show", uuid]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("gvm-vgpud is not running"),
        "{}",
        stderr(&o)
    );
    let shown = payload(&serde_json::from_slice(&o.stdout).unwrap());
    assert_eq!(shown["knobs"]["memory_limit"], 6u64 << 30);
    assert_eq!(shown["type_name"], "sim-4c");
}

#[test]
fn stop_of_a_running_vgpu_that_was_never_defined_names_its_parent() {
    if skip(
        "stop_of_a_running_vgpu_that_was_never_defined",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let uuid = "0c0a0000-0000-4000-8000-000000000002";
    let created = json(root, &["create", "--type", "sim-4c", "--uuid", uuid]);
    let parent = created["parent"].as_str().unwrap().to_string();
    assert!(wait_for(|| cli(root, &["show", uuid]).status.success()));
    let out = ok(root, &["stop", uuid]);
    assert_eq!(out, format!("Stopped vGPU {uuid} on {parent}.\n"));
    assert!(uuids_listed(root).is_empty());
}

#[test]
fn define_owner_uid_is_stored_with_the_definition_from_flags_and_from_files() {
    if skip("define_owner_uid", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let parent = "0000:99:00.0";
    let a = "0b0e0000-0000-4000-8000-0000000000a1";
    ok(
        root,
        &[
            "define",
            "--uuid",
            a,
            "--parent",
            parent,
            "--type",
            "gvmsim-1",
            "--owner-uid",
            "1000",
            "--owner-uid",
            "1001",
            "--owner-uid",
            "1000",
        ],
    );
    let file = root.join("defs.json");
    let b = "0b0e0000-0000-4000-8000-0000000000b1";
    std::fs::write(
        &file,
        format!(
            r#"[{{"uuid": "{b}", "parent": "{parent}", "type": "gvmsim-1", "owner_uids": [2000]}}]"#
        ),
    )
    .unwrap();
    ok(root, &["define", "--from", file.to_str().unwrap()]);
    let list = json(root, &["list", "--defined"]);
    let uids = |uuid: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["uuid"] == uuid)
            .map(|d| d["owner_uids"].clone())
    };
    assert_eq!(
        uids(a),
        Some(serde_json::json!([1000, 1001])),
        "sorted, once each"
    );
    assert_eq!(uids(b), Some(serde_json::json!([2000])));
    // More uids than a definition may carry is refused, storing nothing.
    let many: Vec<String> = (0..65).map(|u| format!("{}", 3000 + u)).collect();
    let items: Vec<serde_json::Value> = vec![serde_json::json!({
        "parent": parent, "type": "gvmsim-1", "owner_uids": many.iter().map(|u| u.parse::<u32>().unwrap()).collect::<Vec<_>>()
    })];
    std::fs::write(&file, serde_json::to_string(&items).unwrap()).unwrap();
    let o = cli(root, &["define", "--from", file.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("owner_uids lists 65 uids, at most 64"),
        "{err}"
    );
    assert_eq!(
        json(root, &["list", "--defined"]).as_array().unwrap().len(),
        2
    );
}

#[test]
fn a_memory_limit_above_the_gpu_framebuffer_is_refused_by_set_and_define_unless_forced() {
    if skip(
        "a_memory_limit_above_the_framebuffer",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let parent = "0000:3b:00.0";
    let stored_limit = |uuid: &str| -> Option<u64> {
        let list = json(root, &["list", "--defined"]);
        let items = list.as_array().cloned().unwrap_or_default();
        let d = items.iter().find(|d| d["uuid"] == uuid)?;
        d["knobs"]["memory_limit"].as_u64()
    };
    let refused = |args: &[&str], limit: &str| {
        let o = cli(root, args);
        assert_eq!(o.status.code(), Some(1), "{args:?} was accepted");
        let err = stderr(&o);
        for part in [
            limit,
            "80GiB framebuffer",
            "GVM-SIM-80GB",
            "sim-20c",
            "--force",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
    };

    // define: 100G on an 80 GiB card is refused and nothing is stored.
    let a = "0f0e0000-0000-4000-8000-00000000000a";
    let define_a = [
        "define",
        "--uuid",
        a,
        "--parent",
        parent,
        "--type",
        "sim-20c",
        "--memory-limit",
        "100G",
    ];
    refused(&define_a, "100GiB");
    assert_eq!(stored_limit(a), None, "a refused definition is not stored");
    // With --force it is stored as asked.
    let mut forced = define_a.to_vec();
    forced.push("--force");
    ok(root, &forced);
    assert_eq!(stored_limit(a), Some(100 << 30));

    // set on the running vGPU: above the card refused (the definition keeps its value),
    // the card's size itself accepted, above it with --force accepted.
    ok(root, &["start", a]);
    refused(&["set", a, "--memory-limit", "90G"], "90GiB");
    assert_eq!(stored_limit(a), Some(100 << 30), "a refused set changed it");
    ok(root, &["set", a, "--memory-limit", "80G"]);
    assert_eq!(stored_limit(a), Some(80 << 30));
    ok(root, &["set", a, "--memory-limit", "90G", "--force"]);
    assert_eq!(stored_limit(a), Some(90 << 30));
    // `unlimited` is not a size and needs no --force.
    ok(root, &["set", a, "--memory-limit", "unlimited"]);

    // define --from: the whole list is refused, naming the item; --force lets it through.
    let (b, c) = (
        "0f0e0000-0000-4000-8000-00000000000b",
        "0f0e0000-0000-4000-8000-00000000000c",
    );
    let file = root.join("defs.json");
    std::fs::write(
        &file,
        format!(
            r#"[{{"uuid":"{b}","parent":"{parent}","type":"sim-20c"}},
                {{"uuid":"{c}","parent":"{parent}","type":"sim-20c",
                  "overrides":{{"memory_limit":{}}}}}]"#,
            200u64 << 30
        ),
    )
    .unwrap();
    let from = file.to_str().unwrap();
    let o = cli(root, &["define", "--from", from]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("item 1") && err.contains("200GiB"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!((stored_limit(b), stored_limit(c)), (None, None));
    ok(root, &["define", "--from", from, "--force"]);
    assert_eq!(stored_limit(c), Some(200 << 30));
}

/// The simulated host's GPUs: position 0 is 0000:3b:00.0 (GVM index 0), position 1 is
/// 0000:3c:00.0 (GVM index 8).
const GPU1_PCI: &str = "0000:3c:00.0";

fn policy_file(root: &Path) -> String {
    std::fs::read_to_string(root.join("etc/gvm-vgpu/policy.json")).unwrap_or_default()
}

/// The `policy show --json` entry of the GPU at `position`.
fn policy_of(root: &Path, position: u64) -> Value {
    let st = json(root, &["policy", "show"]);
    st["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gpu"] == position)
        .cloned()
        .unwrap_or_else(|| panic!("no GPU {position} in {st}"))
}

#[test]
fn policy_set_names_a_gpu_by_position_or_pci_address_and_refuses_an_unknown_one_storing_nothing() {
    if skip("policy_set_names_a_gpu", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let _daemon = Daemon::start(root);

    // By position: GPU 1 is the second in PCI order, stored by its PCI address.
    let said = ok(root, &["policy", "set", "fixed-share", "--gpu", "1"]);
    assert!(
        said.contains("Policy of GPU 1 [0000:3c:00.0] set to fixed-share"),
        "{said}"
    );
    let g = policy_of(root, 1);
    assert_eq!(g["pci"], GPU1_PCI, "{g}");
    assert_eq!(g["gvm_index"], 8, "{g}");
    assert_eq!(g["config"]["policy"], "fixed-share", "{g}");
    let file = policy_file(root);
    assert!(file.contains(&format!("\"{GPU1_PCI}\"")), "{file}");
    assert!(!file.contains("\"8\""), "GVM's index is not stored: {file}");

    // By PCI address, in any case and in NVML's 8-digit domain form.
    ok(
        root,
        &["policy", "set", "equal-share", "--gpu", "0000:3B:00.0"],
    );
    assert_eq!(policy_of(root, 0)["config"]["policy"], "equal-share");
    ok(
        root,
        &["policy", "set", "best-effort", "--gpu", "00000000:3c:00.0"],
    );
    assert_eq!(policy_of(root, 1)["config"]["policy"], "best-effort");
    let text = ok(root, &["policy", "show"]);
    assert!(text.contains("GPU 0 [0000:3b:00.0]: equal-share"), "{text}");
    assert!(text.contains("GPU 1 [0000:3c:00.0]: best-effort"), "{text}");

    // GVM's index 8 and an absent address name no GPU: refused, listing the GPUs that
    // exist, with the file untouched.
    let before = policy_file(root);
    for bad in ["8", "2", "0000:99:00.0"] {
        let o = cli(root, &["policy", "set", "fixed-share", "--gpu", bad]);
        assert_eq!(o.status.code(), Some(1), "--gpu {bad} was accepted");
        let err = stderr(&o);
        assert!(err.contains(&format!("no GPU '{bad}'")), "{err}");
        assert!(
            err.contains("0 (0000:3b:00.0), 1 (0000:3c:00.0)"),
            "the GPUs that exist are named: {err}"
        );
        assert_eq!(policy_file(root), before, "--gpu {bad} changed the file");
    }
}

#[test]
fn show_and_top_name_an_owners_gpu_by_position_and_pci_address() {
    if skip("show_and_top_name_an_owners_gpu", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let uuid = "0c0e0000-0000-4000-8000-000000000001";
    ok(
        root,
        &[
            "create", "--type", "sim-4c", "--parent", GPU1_PCI, "--uuid", uuid,
        ],
    );
    // The owner registers on its parent's GPU: GVM index 8, the second GPU in PCI order.
    sim.control(&format!("spawn {uuid} busy=1")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let gcgroup = loop {
        // The daemon adopts the vGPU the CLI made through sysfs at its next rescan.
        let o = cli(root, &["--json", "show", uuid]);
        let shown: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let g = shown["vgpu"]["owner_details"][0]["gcgroups"][0].clone();
        if !g.is_null() || std::time::Instant::now() > deadline {
            break g;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(gcgroup["gpu"], 1, "{gcgroup}");
    assert_eq!(gcgroup["pci"], GPU1_PCI, "{gcgroup}");
    assert_eq!(gcgroup["gvm_index"], 8, "{gcgroup}");
    let text = ok(root, &["show", uuid]);
    let row = text
        .lines()
        .find(|l| l.contains(GPU1_PCI) && l.contains("4GiB"))
        .unwrap_or_else(|| panic!("no owner row naming {GPU1_PCI}: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(cells.windows(2).any(|w| w == ["1", GPU1_PCI]), "{row}");

    // `top` (the daemon samples best-effort GPUs once someone looks).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let rows = json(root, &["top", "--once"]);
        if !rows.as_array().unwrap().is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let r = &rows[0];
    assert_eq!(
        (r["gpu"].clone(), r["pci"].clone()),
        (1.into(), GPU1_PCI.into()),
        "{rows}"
    );
    let text = ok(root, &["top", "--once"]);
    let line = text.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with(&format!("1    {GPU1_PCI}  best-effort")),
        "{text}"
    );
}

#[test]
fn a_policy_file_keyed_by_gvm_index_is_migrated_at_daemon_start_and_an_unknown_index_kept_aside() {
    if skip("a_policy_file_keyed_by_gvm_index", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    // As an older gvm-vgpud wrote it: GPU 8 (here 0000:3c:00.0) and GPU 24 (no such GPU).
    let etc = root.join("etc/gvm-vgpu");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("policy.json"),
        r#"{"policy":"best-effort","window_ms":1000,"gpus":{
            "8":{"policy":"fixed-share","window_ms":250},
            "24":{"policy":"equal-share","window_ms":1000}}}"#,
    )
    .unwrap();
    let log_path = root.join("gvm-vgpud.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon::start_logging(root, log);

    let file: Value = serde_json::from_str(&policy_file(root)).expect("valid policy file");
    assert_eq!(file["gpus"][GPU1_PCI]["policy"], "fixed-share", "{file}");
    assert_eq!(file["gpus"][GPU1_PCI]["window_ms"], 250, "{file}");
    assert!(file["gpus"].get("8").is_none(), "{file}");
    assert_eq!(
        file["unmapped"]["24"]["policy"], "equal-share",
        "kept aside: {file}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&etc)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // In force for GPU 1, and reported.
    let g = policy_of(root, 1);
    assert_eq!(g["config"]["policy"], "fixed-share", "{g}");
    assert_eq!(g["config"]["window_ms"], 250, "{g}");
    let st = json(root, &["policy", "show"]);
    assert_eq!(st["unmapped"][0]["gvm_index"], 24, "{st}");
    let text = ok(root, &["policy", "show"]);
    assert!(text.contains("GPU 1 [0000:3c:00.0]: fixed-share"), "{text}");
    assert!(text.contains("Kept aside: equal-share"), "{text}");
    assert!(text.contains("index 24"), "{text}");

    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("GVM GPU index 8 migrated to GPU 1 (0000:3c:00.0)"),
        "{log}"
    );
    assert!(log.contains("GVM GPU index 24 maps to no GPU"), "{log}");

    // The next start has nothing to rekey, and still reports what is kept aside.
    drop(daemon);
    let migrated = policy_file(root);
    let log = std::fs::File::create(&log_path).unwrap();
    let _daemon = Daemon::start_logging(root, log);
    assert_eq!(policy_file(root), migrated);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("migrated to GPU"), "{log}");
    assert!(log.contains("GVM GPU index 24 maps to no GPU"), "{log}");
}

#[test]
fn a_kept_aside_policy_moves_to_its_gpu_when_that_gpu_registers_after_the_daemon_started() {
    if skip(
        "a_kept_aside_policy_moves_to_its_gpu",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let root = sim.root();
    // GVM's GPU 8 (0000:3c:00.0) is not registered when the daemon starts.
    sim.control(&format!("unregister {GPU1_PCI}")).unwrap();
    let etc = root.join("etc/gvm-vgpu");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("policy.json"),
        r#"{"policy":"best-effort","gpus":{"8":{"policy":"fixed-share","window_ms":250}}}"#,
    )
    .unwrap();
    let _daemon = Daemon::start(root);
    let st = json(root, &["policy", "show"]);
    assert_eq!(st["unmapped"][0]["gvm_index"], 8, "{st}");

    sim.control(&format!("register {GPU1_PCI}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let file = loop {
        let file: Value = serde_json::from_str(&policy_file(root)).unwrap_or_default();
        if !file["gpus"][GPU1_PCI].is_null() || std::time::Instant::now() > deadline {
            break file;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(file["gpus"][GPU1_PCI]["policy"], "fixed-share", "{file}");
    assert!(file.get("unmapped").is_none(), "{file}");
    let g = policy_of(root, 1);
    assert_eq!(g["config"]["policy"], "fixed-share", "{g}");
    assert!(json(root, &["policy", "show"]).get("unmapped").is_none());
}

/// Start an owner of `uuid` through the simulator's control file and return its pid.
fn spawn_owner(sim: &SimHost, uuid: &str) -> String {
    sim.control(&format!("spawn {uuid}")).unwrap();
    let mut pid = None;
    assert!(wait_for(|| {
        pid = sim
            .owners()
            .into_iter()
            .find(|o| o.get(1).map(String::as_str) == Some(uuid))
            .and_then(|o| o.first().cloned());
        pid.is_some()
    }));
    pid.unwrap()
}

#[test]
fn remove_of_a_held_vgpu_is_refused_naming_the_holder_and_wait_removes_it_once_the_holder_goes() {
    if skip("remove_of_a_held_vgpu", require_root_and_fuse()) {
        return;
    }
    // As on the kernel: the holder's remove would block (the sim's default).
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--held-remove", "block"]);
    let root = sim.root();
    let held = "0c0a0000-0000-4000-8000-0000000000a1";
    let free = "0c0a0000-0000-4000-8000-0000000000a2";
    ok(root, &["create", "--type", "sim-4c", "--uuid", held]);
    ok(root, &["create", "--type", "sim-4c", "--uuid", free]);
    let pid = spawn_owner(&sim, held);

    let o = cli(root, &["remove", held]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("pid {pid} (gvm-vgpu-sim)")), "{err}");
    assert!(err.contains(held) && err.contains("in use"), "{err}");
    assert!(
        err.contains("--wait") && err.contains("gvm-vgpu detach") && err.contains("Shut down"),
        "{err}"
    );
    assert_eq!(uuids_listed(root), [held, free], "nothing removed");

    // An unheld vGPU goes at once, as before.
    let started = std::time::Instant::now();
    ok(root, &["remove", free]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(uuids_listed(root), [held]);

    // --wait says whom it waits for, then returns once the holder is gone.
    let mut waiting = Command::new(CLI_BIN)
        .arg("--root")
        .arg(root)
        .args(["remove", "--wait", held])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "--wait returned while held"
    );
    sim.control(&format!("kill {pid}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waiting.wait_with_output());
    });
    let o = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("--wait returns once the holder is gone")
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("held open by pid {pid} (gvm-vgpu-sim): waiting")),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), format!("Removed vGPU {held}.\n"));
    assert!(uuids_listed(root).is_empty());
}

#[test]
fn daemon_stop_of_a_held_vgpu_is_refused_naming_the_holder_and_stop_wait_stops_it_once_the_holder_goes(
) {
    if skip("daemon_stop_of_a_held_vgpu", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--held-remove", "block"]);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let held = "0c0a0000-0000-4000-8000-0000000000b1";
    let free = "0c0a0000-0000-4000-8000-0000000000b2";
    ok(root, &["create", "--type", "sim-4c", "--uuid", held]);
    ok(root, &["create", "--type", "sim-4c", "--uuid", free]);
    assert!(wait_for(|| cli(root, &["show", held]).status.success()));
    assert!(wait_for(|| cli(root, &["show", free]).status.success()));
    let pid = spawn_owner(&sim, held);

    let o = cli(root, &["stop", held]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("pid {pid} (gvm-vgpu-sim)")), "{err}");
    assert!(
        err.contains("nothing was changed") && err.contains("--wait"),
        "{err}"
    );
    assert_eq!(uuids_listed(root), [held, free], "nothing stopped");

    // Unheld: stopped at once, as before.
    ok(root, &["stop", free]);
    assert_eq!(uuids_listed(root), [held]);

    let mut waiting = Command::new(CLI_BIN)
        .arg("--root")
        .arg(root)
        .args(["stop", "--wait", held])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "stop --wait returned while held"
    );
    assert_eq!(uuids_listed(root), [held], "still there while held");
    sim.control(&format!("kill {pid}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waiting.wait_with_output());
    });
    let o = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("stop --wait returns once the holder is gone")
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("waiting for pid {pid} (gvm-vgpu-sim) to let go")),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).starts_with(&format!("Stopped vGPU {held}")),
        "{}",
        stdout(&o)
    );
    assert!(uuids_listed(root).is_empty());
}

/// The `list` row of `uuid`, split into its cells.
fn list_row(root: &Path, uuid: &str) -> Vec<String> {
    let text = ok(root, &["list"]);
    text.lines()
        .find(|l| l.starts_with(uuid))
        .unwrap_or_else(|| panic!("no row of {uuid}: {text}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn list_shows_the_effective_knobs_the_freeze_and_the_start_mode_the_daemon_holds() {
    if skip("list_shows_the_effective_knobs", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let live = "0c0f0000-0000-4000-8000-000000000001";
    let auto = "0c0f0000-0000-4000-8000-000000000002";
    ok(root, &["create", "--type", "sim-4c", "--uuid", live]);
    ok(
        root,
        &[
            "define",
            "--type",
            "sim-4c",
            "--parent",
            "0000:3b:00.0",
            "--uuid",
            auto,
            "--autostart",
        ],
    );
    ok(root, &["start", auto]);
    assert!(wait_for(|| cli(root, &["show", live]).status.success()));
    ok(
        root,
        &[
            "set",
            "--live",
            "--memory-limit",
            "6GiB",
            "--priority",
            "2",
            live,
        ],
    );
    ok(root, &["freeze", live]);

    let header = ok(root, &["list"]);
    let header = header.lines().next().unwrap_or_default();
    for column in ["FROZEN", "START", "DOMAIN"] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(
        list_row(root, live)[3..9],
        ["sim-4c", "6GiB", "2", "yes", "not defined", "-"],
        "the effective knobs, not the type's 4GiB and 10"
    );
    assert_eq!(
        list_row(root, auto)[3..9],
        ["sim-4c", "4GiB", "10", "no", "auto", "-"]
    );

    let list = json(root, &["list"]);
    let entry = |uuid: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["uuid"] == uuid)
            .cloned()
            .unwrap_or_else(|| panic!("{uuid} not listed: {list}"))
    };
    let v = entry(live);
    assert_eq!(v["knobs"]["memory_limit"], 6u64 << 30, "{v}");
    assert_eq!(v["knobs"]["priority"], 2, "{v}");
    assert_eq!(v["knobs"]["frozen"], true, "{v}");
    assert_eq!(v["start"], "not_defined", "{v}");
    assert!(v["domain"].is_null(), "{v}");
    assert_eq!(entry(auto)["start"], "auto");

    // A stopped definition is not a live vGPU: `list --defined` has it, `list` does not.
    ok(root, &["stop", auto]);
    assert!(!ok(root, &["list"]).contains(auto));
}

#[test]
fn a_stopped_definition_shows_its_catalog_types_knobs_not_gvms_defaults() {
    if skip("a_stopped_definition_shows", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let uuid = "0c0f0000-0000-4000-8000-000000000003";
    ok(
        root,
        &[
            "define",
            "--type",
            "sim-4c",
            "--parent",
            "0000:3b:00.0",
            "--uuid",
            uuid,
        ],
    );
    let text = ok(root, &["show", uuid]);
    assert!(
        text.contains("memory limit: 4GiB (from type)"),
        "the type's knobs: {text}"
    );
    assert!(text.contains("priority:     10 (from type)"), "{text}");
    let shown = json(root, &["show", uuid]);
    assert_eq!(shown["knobs"]["memory_limit"], 4u64 << 30);
    assert_eq!(shown["start"], "manual");
    let defined = ok(root, &["list", "--defined"]);
    let row = defined.lines().find(|l| l.starts_with(uuid)).unwrap();
    assert!(
        row.contains("4GiB") && row.contains(" 10"),
        "not unlimited 8: {row}"
    );
    // A persistent override is layered on the type, as it will be at start.
    ok(root, &["set", "--persistent", "--priority", "3", uuid]);
    let text = ok(root, &["show", uuid]);
    assert!(text.contains("memory limit: 4GiB (from type)"), "{text}");
    assert!(
        text.contains("priority:     3 (from persistent override)"),
        "{text}"
    );
}

#[test]
fn define_from_start_that_partly_fails_under_json_prints_one_object_with_the_batch_and_the_error() {
    if skip(
        "define_from_start_that_partly_fails",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    // One sim-80c fills the GPU: the second cannot be created.
    let file = root.join("two-80c.json");
    let item = serde_json::json!({"parent": "0000:3b:00.0", "type": "sim-80c"});
    std::fs::write(&file, Value::from(vec![item.clone(), item]).to_string()).unwrap();
    let o = cli(
        root,
        &[
            "--json",
            "define",
            "--from",
            file.to_str().unwrap(),
            "--start",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {}", stdout(&o)));
    assert_eq!(v["schema"], 1, "{v}");
    assert_eq!(
        v["error"]["message"], "1 of 2 vGPUs were defined but not started",
        "{v}"
    );
    assert_eq!(v["batch"]["defined"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["batch"]["started"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["batch"]["failed"].as_array().unwrap().len(), 1, "{v}");
}

/// The member names of a JSON object.
fn keys(v: &Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_command_prints_a_vgpu_a_definition_and_a_gcgroup_in_one_shape_under_schema_1() {
    if skip("every_command_prints_one_shape", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let uuid = "0c100000-0000-4000-8000-000000000001";
    // Read directly, without a daemon: the start mode is not known.
    let created = json(root, &["create", "--type", "sim-4c", "--uuid", uuid]);
    let row = list_row(root, uuid);
    assert_eq!(
        row[3..9],
        ["sim-4c", "4GiB", "10", "no", "-", "-"],
        "{row:?}"
    );
    sim.control(&format!("spawn {uuid}")).unwrap();
    let direct_list = json(root, &["list"])[0].clone();
    let direct_show = json(root, &["show", uuid]);
    assert_eq!(keys(&created), keys(&direct_list));

    let _daemon = Daemon::start(root);
    assert!(wait_for(|| cli(root, &["show", uuid]).status.success()));
    let vgpu = json(root, &["list"])[0].clone();
    let shown = json(root, &["show", uuid]);
    let frozen = json(root, &["freeze", uuid])[0].clone();
    let set = json(root, &["set", "--live", "--priority", "3", uuid])[0].clone();
    let stopped = json(root, &["stop", uuid]);
    let defined = json(
        root,
        &["define", "--type", "sim-4c", "--parent", "0000:3b:00.0"],
    );
    let def_uuid = defined["uuid"].as_str().unwrap().to_string();
    let started = json(root, &["start", &def_uuid]);
    let listed_defined = json(root, &["list", "--defined"])[0].clone();
    let shown_defined = json(root, &["show", &def_uuid]);
    let undefined = json(root, &["undefine", &def_uuid]);

    // A vGPU: the same members from every command, with or without the daemon; `show` and
    // `set` add their detail members beside them.
    let vgpu_keys = keys(&vgpu);
    for (what, v) in [
        ("create", &created),
        ("direct list", &direct_list),
        ("freeze", &frozen),
        ("stop", &stopped),
        ("start", &started),
        ("list --defined", &listed_defined),
    ] {
        assert_eq!(keys(v), vgpu_keys, "{what}: {v}");
    }
    for (what, v) in [
        ("show", &shown),
        ("set", &set),
        ("direct show", &direct_show),
    ] {
        assert!(keys(v).is_superset(&vgpu_keys), "{what}: {v}");
        for member in ["sources", "definition", "live_overrides", "owner_details"] {
            assert!(v.get(member).is_some(), "{what} lacks {member}: {v}");
        }
    }
    for old in ["type_id", "catalog", "info", "memory_limit_bytes"] {
        assert!(vgpu.get(old).is_none() && shown.get(old).is_none(), "{old}");
    }
    // A gcgroup: the same members whether GVM's files were read here or by the daemon.
    let gcgroup = |v: &Value| v["owner_details"][0]["gcgroups"][0].clone();
    assert_eq!(keys(&gcgroup(&direct_show)), keys(&gcgroup(&shown)));
    for member in ["gpu", "pci", "gvm_index", "memory_limit", "kernels_ended"] {
        assert!(gcgroup(&shown).get(member).is_some(), "{member}");
    }
    // A definition: `define`, `undefine` and `show`'s `definition` agree.
    assert_eq!(keys(&defined), keys(&undefined));
    assert_eq!(keys(&defined), keys(&shown_defined["definition"]));
    assert_eq!(defined["mdev_type"], vgpu["mdev_type"]);
    // Kernel types: `types` rows and `parents`' types are one shape, naming the kernel type
    // as a vGPU does.
    let types = json(root, &["types"]);
    let parents = json(root, &["parents"]);
    assert_eq!(keys(&types[0]), keys(&parents[0]["types"][0]));
    assert!(types[0].get("mdev_type").is_some(), "{}", types[0]);
    assert_eq!(
        types[0]["catalog"]["memory_limit"].as_u64(),
        Some(4u64 << 30),
        "{}",
        types[0]
    );
}

#[test]
fn top_once_right_after_the_daemon_starts_prints_the_busy_owners_figures() {
    if skip(
        "top_once_right_after_the_daemon_starts",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let uuids = [
        "0c110000-0000-4000-8000-000000000001",
        "0c110000-0000-4000-8000-000000000002",
    ];
    for uuid in uuids {
        ok(root, &["create", "--type", "sim-4c", "--uuid", uuid]);
        sim.control(&format!("spawn {uuid} busy=1")).unwrap();
    }
    let _daemon = Daemon::start(root);
    // The daemon knows both owners' gcgroups; nobody has asked for shares yet.
    for uuid in uuids {
        assert!(wait_for(|| {
            let o = cli(root, &["--json", "show", uuid]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            !v["vgpu"]["owner_details"][0]["gcgroups"][0].is_null()
        }));
    }

    // The first look: the figures of both, not an empty table.
    let rows = json(root, &["top", "--once"]);
    let rows = rows.as_array().unwrap();
    for uuid in uuids {
        let row = rows
            .iter()
            .find(|r| r["uuid"] == uuid)
            .unwrap_or_else(|| panic!("no row of {uuid}: {rows:?}"));
        assert_eq!(row["policy"], "best-effort", "{row}");
        let achieved = row["achieved"].as_f64();
        assert!(
            achieved.is_some_and(|a| (0.0..=1.0).contains(&a)),
            "an achieved share: {row}"
        );
    }
    let text = ok(root, &["top", "--once"]);
    for uuid in uuids {
        assert!(text.contains(uuid), "{text}");
    }
}

/// `chattr +i` on a file for as long as it lives: even root cannot delete it then.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn set(path: &'a Path) -> Immutable<'a> {
        let o = Command::new("chattr").arg("+i").arg(path).output().unwrap();
        assert!(o.status.success(), "chattr +i: {}", stderr(&o));
        Immutable(path)
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

fn defined_uuids(root: &Path) -> Vec<String> {
    json(root, &["list", "--defined"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["uuid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn import_mdevctl_says_mdevctl_still_defines_it_and_remove_source_hands_it_over_after_storing_ours()
{
    let name = "import_mdevctl_hands_over";
    if skip(
        name,
        require_root_and_fuse().or_else(|| require_command("chattr")),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    let _daemon = Daemon::start(root);
    let dir = root.join("etc/mdevctl.d/0000:3b:00.0");
    std::fs::create_dir_all(&dir).unwrap();
    let mdevctl_def = r#"{"mdev_type": "gvmsim-1", "start": "manual", "attrs": []}"#;
    let first = "2d6a0f4e-51c3-4b8e-9a07-3c5e1f2b7d90";
    let first_file = dir.join(first);
    std::fs::write(&first_file, mdevctl_def).unwrap();

    // A plain import leaves mdevctl's definition and says what to do about it.
    let text = ok(root, &["import-mdevctl"]);
    assert!(text.contains(&format!("Imported {first}")), "{text}");
    assert!(
        text.contains(&format!("mdevctl still defines {first}"))
            && text.contains(&format!("`mdevctl undefine --uuid {first}`"))
            && text.contains("--remove-source"),
        "{text}"
    );
    assert!(first_file.exists());

    // The file cannot be removed: ours stays, the error says what to run, exit status 1.
    {
        let _pinned = Immutable::set(&first_file);
        let o = cli(root, &["import-mdevctl", "--remove-source"]);
        assert!(!o.status.success(), "{}", stdout(&o));
        let text = stdout(&o);
        assert!(
            text.contains("Error: cannot remove")
                && text.contains(&format!("`mdevctl undefine --uuid {first}`")),
            "{text}"
        );
        assert!(
            stderr(&o).contains("1 mdevctl definition could not be removed"),
            "{}",
            stderr(&o)
        );
        assert!(first_file.exists());
        assert!(defined_uuids(root).contains(&first.to_string()));
    }

    // Already imported the same way: --remove-source now hands it over.
    let text = ok(root, &["import-mdevctl", "--remove-source"]);
    assert!(
        text.contains(&format!(
            "Removed mdevctl's definition {}",
            first_file.display()
        )),
        "{text}"
    );
    assert!(!first_file.exists(), "mdevctl's definition is gone");
    assert!(defined_uuids(root).contains(&first.to_string()));

    // A new definition is imported and handed over in one run.
    let second = "8e4b2c1a-7d3f-4a6e-b5c9-0f1e2d3c4b5a";
    let second_file = dir.join(second);
    std::fs::write(&second_file, mdevctl_def).unwrap();
    let v = json(root, &["import-mdevctl", "--remove-source"]);
    assert_eq!(v["imported"][0]["uuid"], second, "{v}");
    assert_eq!(v["mdevctl_sources"][0]["uuid"], second, "{v}");
    assert_eq!(v["mdevctl_sources"][0]["removed"], true, "{v}");
    assert!(!second_file.exists());
    let defined = defined_uuids(root);
    assert!(defined.contains(&first.to_string()) && defined.contains(&second.to_string()));

    // --dry-run and --remove-source do not mix.
    let o = cli(root, &["import-mdevctl", "--dry-run", "--remove-source"]);
    assert!(!o.status.success());
}

#[test]
fn create_and_remove_beside_a_running_daemon_are_in_its_list_when_they_return() {
    if skip(
        "create_and_remove_beside_a_running_daemon",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root();
    // A daemon whose own scan would not see the change for a minute: what `list` shows right
    // after `create` / `remove` is what those commands told it.
    let _daemon = Daemon::start_with(root, std::process::Stdio::null(), |c| {
        c.args(["--no-libvirt", "--rescan-ms", "60000"]);
    });
    let uuid = "6f1d3a1e-0c1b-4a53-9e0e-7a3f6b2c9d11";
    succeeded(
        &gvm_vgpu(root, &["create", "--type", "sim-4c", "--uuid", uuid])
            .output()
            .unwrap(),
        &["create"],
    );
    let list = json(root, &["list"]);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["uuid"] == uuid)
        .unwrap_or_else(|| panic!("the daemon lists the new vGPU at once: {list}"));
    assert_eq!(
        entry["type_name"], "sim-4c",
        "adopted with its catalog type: {entry}"
    );
    succeeded(
        &gvm_vgpu(root, &["remove", uuid]).output().unwrap(),
        &["remove"],
    );
    assert!(
        uuids_listed(root).is_empty(),
        "the removed vGPU is gone from the daemon's list at once"
    );
}
