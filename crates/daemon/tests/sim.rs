//! gvm-vgpud against the simulated host: adoption, owners, retune, freeze, unmanaged
//! types, API hardening. Each test skips (printing why) without root and /dev/fuse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{is_managed, skip_reason, wait_until, Sim};
use gvm_client::{gvm_proto, Error as ClientError};
use gvm_proto::{ErrorCode, SetMode, SetParams, Source, VgpuState};

macro_rules! require_sim {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIP: {why}");
            return;
        }
    };
}

const G4: u64 = 4 << 30;

#[test]
fn a_vgpu_made_by_echo_is_adopted_and_late_owners_get_its_limits() {
    require_sim!();
    let sim = Sim::start(2);
    let d = sim.daemon(&[]);
    let parent = &sim.parents()[0];

    let t0 = Instant::now();
    let uuid = sim.echo_create(parent, "gvmsim-1");
    let mut c = d.client();
    assert!(
        wait_until(Duration::from_secs(1), || is_managed(&mut c, &uuid)),
        "not adopted within 1 s"
    );
    let adopted_in = t0.elapsed();
    let info = c.show(&uuid.to_string()).unwrap().info;
    assert_eq!(info.type_name.as_deref(), Some("sim-4c"));
    assert_eq!(info.state, VgpuState::Running);
    assert!(info.owners.is_empty());

    // Owners appear after adoption, one with a delayed GPU registration.
    let a = sim.spawn_owner(&uuid, 0, "busy=1");
    let b = sim.spawn_owner(&uuid, 8, "busy=1 register_delay_ms=300");
    for (pid, gpu) in [(a, 0), (b, 8)] {
        assert!(
            wait_until(Duration::from_secs(2), || {
                sim.knob(pid, gpu, "memory.limit") == Some(G4.to_string())
                    && sim.knob(pid, gpu, "compute.priority").as_deref() == Some("10")
            }),
            "owner {pid} on GPU {gpu} not tuned"
        );
    }
    let info = c.show(&uuid.to_string()).unwrap();
    assert_eq!(info.owners.len(), 2);
    assert_eq!(info.sources.memory_limit, Source::Type);
    println!("adopted in {adopted_in:?}");
}

#[test]
fn retune_and_freeze_reach_every_owner_and_a_frozen_owner_makes_no_progress() {
    require_sim!();
    let sim = Sim::start(2);
    let d = sim.daemon(&[]);
    let parent = sim.parents()[0].clone();
    let mut c = d.client();
    let v = c
        .create(gvm_proto::CreateParams {
            uuid: None,
            parent: parent.clone(),
            type_name: "sim-10c".into(),
            define: true,
            autostart: false,
        })
        .unwrap();
    let uuid = v.uuid;
    let pids: Vec<u32> = (0..3)
        .map(|_| sim.spawn_owner(&uuid, 0, "busy=1"))
        .collect();
    assert!(wait_until(Duration::from_secs(2), || c
        .show(&uuid.to_string())
        .unwrap()
        .owners
        .len()
        == 3));

    let t0 = Instant::now();
    let details = c
        .set(SetParams {
            target: uuid.to_string(),
            memory_limit: Some(1 << 30),
            priority: Some(2),
            mode: SetMode::Live,
            ..SetParams::default()
        })
        .unwrap();
    let answered = t0.elapsed();
    for &pid in &pids {
        assert_eq!(
            sim.knob(pid, 0, "memory.limit"),
            Some((1u64 << 30).to_string())
        );
        assert_eq!(sim.knob(pid, 0, "compute.priority").as_deref(), Some("2"));
    }
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    assert_eq!(details[0].sources.priority, Source::Live);
    assert_eq!(details[0].sources.memory_limit, Source::Live);

    // Persistent change: stored in the definition, and applied.
    c.set(SetParams {
        target: uuid.to_string(),
        priority: Some(5),
        mode: SetMode::Both,
        ..SetParams::default()
    })
    .unwrap();
    let show = c.show(&uuid.to_string()).unwrap();
    assert_eq!(show.sources.priority, Source::Persistent);
    assert_eq!(show.definition.map(|d| d.overrides.priority), Some(Some(5)));
    assert_eq!(
        sim.knob(pids[0], 0, "compute.priority").as_deref(),
        Some("5")
    );

    // The answer counts the gcgroups as they are after the writes, not before.
    let frozen = c.freeze(&uuid.to_string()).unwrap();
    let t = frozen[0].totals;
    assert_eq!((t.frozen_gcgroups, t.gcgroups), (3, 3), "{t:?}");
    for &pid in &pids {
        assert_eq!(sim.knob(pid, 0, "compute.freeze").as_deref(), Some("1"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before: Vec<u64> = sim.owners().iter().map(|o| o.gpu_time_us).collect();
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<u64> = sim.owners().iter().map(|o| o.gpu_time_us).collect();
    assert_eq!(before, after, "a frozen owner made progress");

    let thawed = c.thaw(&uuid.to_string()).unwrap();
    let t = thawed[0].totals;
    assert_eq!((t.frozen_gcgroups, t.gcgroups), (0, 3), "{t:?}");
    assert!(wait_until(Duration::from_secs(2), || {
        let now: Vec<u64> = sim.owners().iter().map(|o| o.gpu_time_us).collect();
        now.iter().zip(&after).all(|(n, a)| n > a)
    }));
    // A new owner joining a frozen vGPU is frozen too.
    c.freeze(&uuid.to_string()).unwrap();
    let late = sim.spawn_owner(&uuid, 0, "busy=1");
    assert!(wait_until(Duration::from_secs(1), || sim
        .knob(late, 0, "compute.freeze")
        .as_deref()
        == Some("1")));
}

#[test]
fn a_type_missing_from_the_catalog_stays_unmanaged_and_untouched() {
    require_sim!();
    let sim = Sim::start(1);
    // A catalog layer that replaces the built-in sim model with one type only.
    let cat = sim.dir.path().join("catalog");
    std::fs::create_dir_all(&cat).unwrap();
    std::fs::write(
        cat.join("gvm-sim.toml"),
        "[gpu]\nmodel = \"GVM-SIM-80GB\"\n\n[[type]]\nname = \"sim-4c\"\nmdev_type = \"gvmsim-1\"\n\
         memory_limit = \"4GiB\"\npriority = 10\nmax_instances = 16\nhost_swap = false\n",
    )
    .unwrap();
    let d = sim.daemon(&["--catalog", cat.to_str().unwrap()]);
    let parent = sim.parents()[0].clone();
    let uuid = sim.echo_create(&parent, "gvmsim-5");
    let pid = sim.spawn_owner(&uuid, 0, "busy=1");
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(1), || c
        .list(false)
        .unwrap()
        .iter()
        .any(|v| v.uuid == uuid && !v.managed)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sim.knob(pid, 0, "memory.limit"), Some(u64::MAX.to_string()));
    assert_eq!(sim.knob(pid, 0, "compute.priority").as_deref(), Some("8"));
    let e = c.set_priority(&uuid.to_string(), 1).err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::Conflict));
    assert_eq!(sim.knob(pid, 0, "compute.priority").as_deref(), Some("8"));
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    require_sim!();
    let sim = Sim::start(1);
    let d = sim.daemon(&[]);
    let parent = sim.parents()[0].clone();
    let uuid = sim.echo_create(&parent, "gvmsim-1");
    let pid = sim.spawn_owner(&uuid, 0, "busy=0");
    assert!(wait_until(Duration::from_secs(2), || sim
        .knob(pid, 0, "compute.priority")
        .as_deref()
        == Some("10")));
    let mut c = d.client();
    let defs_dir = d.root.join("etc/gvm-vgpu/vgpus");
    let count = || std::fs::read_dir(&defs_dir).map(|r| r.count()).unwrap_or(0);
    let before = count();

    // A misspelt field is refused, not ignored (it would define without autostart).
    let typo = format!(
        "{{\"id\":5,\"method\":\"define\",\"params\":{{\"parent\":\"{parent}\",\
         \"type\":\"sim-4c\",\"autostrat\":true}}}}"
    );
    for line in [
        "garbage",
        "{\"id\":1}",
        "{\"id\":2,\"method\":\"launch\"}",
        "{\"id\":3,\"method\":\"set\",\"params\":{\"target\":\"x\",\"priority\":99}}",
        "{\"id\":4,\"method\":\"define\",\"params\":{\"parent\":\"p\"}}",
        typo.as_str(),
    ] {
        let r = c.raw(line).unwrap();
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{line}: {}", e.message);
        assert!(!e.message.is_empty());
        if line.contains("autostrat") {
            assert!(e.message.contains("`autostrat`"), "{}", e.message);
        }
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    for e in [
        c.show(&unknown).err(),
        c.set_priority(&unknown, 1).err(),
        c.freeze("no-such-domain").err(),
        c.start(&unknown).err(),
        c.stop(&unknown).err(),
        c.undefine(&unknown).err(),
    ] {
        assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::NotFound));
    }
    let e = c.set_priority(&uuid.to_string(), 17).err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::InvalidArgument));
    let e = c
        .define(gvm_proto::DefineParams {
            uuid: None,
            parent: parent.clone(),
            type_name: "sim-9000c".into(),
            autostart: false,
            force: false,
            overrides: Default::default(),
            owner_uids: Vec::new(),
        })
        .err();
    assert_eq!(e.and_then(|e| e.code()), Some(ErrorCode::NotFound));
    // An over-long line is refused and the connection closed; the daemon lives on.
    let long = format!(
        "{{\"id\":9,\"method\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let r = c.raw(&long).unwrap();
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::InvalidArgument));

    let mut c = d.client();
    assert!(c.ping().is_ok());
    assert_eq!(count(), before, "a failed request wrote a definition");
    assert_eq!(sim.knob(pid, 0, "compute.priority").as_deref(), Some("10"));
    assert_eq!(sim.knob(pid, 0, "compute.freeze").as_deref(), Some("0"));
}

#[test]
fn the_socket_refuses_unprivileged_users() {
    if let Ok(path) = std::env::var("GVM_TEST_CONNECT_AS_NOBODY") {
        // Child side: runs as uid 65534.
        match gvm_client::Client::connect(&path).and_then(|mut c| c.ping()) {
            Err(ClientError::Permission { .. }) => std::process::exit(10),
            Err(ClientError::Api { error, .. }) if error.code == ErrorCode::PermissionDenied => {
                std::process::exit(11)
            }
            Ok(_) => std::process::exit(12),
            Err(_) => std::process::exit(13),
        }
    }
    require_sim!();
    let sim = Sim::start(1);
    let d = sim.daemon(&[]);
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(
        mode(&d.socket),
        0o600,
        "socket must be 0600 without --group"
    );
    let as_nobody = |path: &std::path::Path| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(gvm_testkit::runnable_by_others(
            &std::env::current_exe().unwrap(),
        ))
        .args([
            "--exact",
            "the_socket_refuses_unprivileged_users",
            "--nocapture",
        ])
        .env("GVM_TEST_CONNECT_AS_NOBODY", path)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .code()
    };
    // Path permissions refuse first.
    let _ = std::fs::set_permissions(
        sim.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    assert_eq!(as_nobody(&d.socket), Some(10));
    // Even with the file opened up, SO_PEERCRED refuses the peer.
    for p in [
        d.root.as_path(),
        &d.root.join("run"),
        &d.root.join("run/gvm-vgpu"),
    ] {
        let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    }
    let _ = std::fs::set_permissions(
        &d.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    );
    assert_eq!(as_nobody(&d.socket), Some(11));
}

#[test]
fn a_define_batch_is_checked_whole_then_stored_and_started_item_by_item() {
    require_sim!();
    let sim = Sim::start(2);
    let d = sim.daemon(&[]);
    let parents = sim.parents();
    let mut c = d.client();
    let defs_dir = d.root.join("etc/gvm-vgpu/vgpus");
    let stored = || std::fs::read_dir(&defs_dir).map(|r| r.count()).unwrap_or(0);
    let item = |parent: &str, t: &str| gvm_proto::DefineParams {
        uuid: Some(uuid::Uuid::new_v4()),
        parent: parent.to_string(),
        type_name: t.into(),
        autostart: false,
        force: false,
        overrides: Default::default(),
        owner_uids: Vec::new(),
    };

    // One unknown type among good items: the call fails naming the item, nothing stored.
    let bad = vec![
        item(&parents[0], "sim-4c"),
        item(&parents[1], "sim-4c"),
        item(&parents[0], "sim-9000c"),
    ];
    let e = c.define_batch(bad, true).err().unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(e.to_string().contains("item 2"), "{e}");
    assert_eq!(stored(), 0);
    assert!(c.list(true).unwrap().is_empty());
    assert!(
        c.list(false).unwrap().is_empty(),
        "a failed batch created a device"
    );

    // The same UUID twice, or one already defined: refused whole.
    let twice = item(&parents[0], "sim-4c");
    let e = c
        .define_batch(vec![twice.clone(), twice.clone()], false)
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    c.define(twice.clone()).unwrap();
    let e = c
        .define_batch(vec![item(&parents[1], "sim-4c"), twice], false)
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::Conflict), "{e}");
    assert_eq!(stored(), 1);

    // Three sim-40c on one parent (the kernel holds two): all three are stored, two
    // start, the third is reported with the kernel's refusal and keeps its definition.
    let big: Vec<_> = (0..3).map(|_| item(&parents[0], "sim-40c")).collect();
    let want: Vec<uuid::Uuid> = big.iter().filter_map(|i| i.uuid).collect();
    let r = c.define_batch(big, true).unwrap();
    assert_eq!(r.defined.len(), 3);
    assert_eq!(r.started.len(), 2, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].uuid, want[2]);
    assert!(!r.failed[0].error.is_empty());
    assert_eq!(stored(), 4);
    let live = c.list(false).unwrap();
    for u in &want[..2] {
        assert!(live
            .iter()
            .any(|v| v.uuid == *u && v.state == VgpuState::Running && v.managed));
    }
    let third = live.iter().find(|v| v.uuid == want[2]).unwrap();
    assert_eq!(third.state, VgpuState::Stopped);
    assert!(third.defined);
    // Nothing half-written was left behind by the group commit.
    let tmp = std::fs::read_dir(&defs_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(tmp, 0);

    // Over the per-call bound: refused before anything happens.
    let many: Vec<_> = (0..=gvm_proto::MAX_BATCH)
        .map(|_| item(&parents[1], "sim-1c"))
        .collect();
    let r = c.raw(
        &serde_json::json!({"id": 1, "method": "define_batch",
            "params": {"items": many, "start": false}})
        .to_string(),
    );
    match r {
        Ok(resp) => assert_eq!(resp.error.map(|e| e.code), Some(ErrorCode::InvalidArgument)),
        // The line itself may exceed the protocol's line bound: refused all the same.
        Err(e) => println!("oversized batch refused at the line bound: {e}"),
    }
    assert_eq!(stored(), 4);
}
