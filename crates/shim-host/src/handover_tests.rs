//! Unit tests of the registration handover: every request field (sizes, versions, shapes),
//! the pid and block checks against a fake `/proc` and real files, and the per-uid bound.
//! The socket end to end is tested with its listener (gvm-vgpud's `shim_listener`).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::FLAG_STANDALONE;

use gvm_shim_abi::register::{GpuId, Request};

use super::*;

fn good() -> Value {
    json!({
        "version": 1,
        "pid": 7,
        "control": "/dev/shm/gvm-vgpu-7",
        "gpus": [{"ordinal": 0, "pci_bus_id": "0000:3B:00.0"}, {"ordinal": 1, "pci_bus_id": "00000000:af:00.0"}],
        "vgpu_uuid": "5B4F1D7C-0000-4000-8000-000000000001"
    })
}

fn with(field: &str, v: Value) -> Vec<u8> {
    let mut r = good();
    r[field] = v;
    r.to_string().into_bytes()
}

fn without(field: &str) -> Vec<u8> {
    let mut r = good();
    r.as_object_mut().unwrap().remove(field);
    r.to_string().into_bytes()
}

fn field_of(line: &[u8]) -> String {
    parse_request(line).unwrap_err().field
}

#[test]
fn a_good_request_parses_with_bus_ids_and_uuid_normalised() {
    let p = parse_request(good().to_string().as_bytes()).unwrap();
    assert_eq!(p.pid, 7);
    assert_eq!(p.control, PathBuf::from("/dev/shm/gvm-vgpu-7"));
    assert_eq!(
        p.gpus,
        vec![
            RegisteredGpu {
                ordinal: 0,
                pci_bus_id: "0000:3b:00.0".into()
            },
            RegisteredGpu {
                ordinal: 1,
                pci_bus_id: "0000:af:00.0".into()
            }
        ]
    );
    assert_eq!(
        p.vgpu_uuid.as_deref(),
        Some("5b4f1d7c-0000-4000-8000-000000000001")
    );
    // What the shim writes parses here.
    let shim_line = Request {
        version: PROTOCOL_VERSION,
        pid: 9,
        control: "/x/b\"q".into(),
        gpus: vec![GpuId {
            ordinal: 3,
            pci_bus_id: "0000:3B:00.0".into(),
        }],
        vgpu_uuid: None,
    }
    .to_line();
    let p = parse_request(shim_line.as_bytes()).unwrap();
    assert_eq!((p.pid, p.gpus[0].ordinal), (9, 3));
    assert_eq!(p.control, PathBuf::from("/x/b\"q"));
    assert_eq!(p.vgpu_uuid, None);
    // Unknown fields are tolerated within a version.
    let mut extra = good();
    extra["later"] = json!(1);
    assert!(parse_request(extra.to_string().as_bytes()).is_ok());
}

#[test]
fn every_field_is_checked_and_named() {
    assert_eq!(field_of(b"\xff\xfe"), "request");
    assert_eq!(field_of(b"not json"), "request");
    assert_eq!(field_of(b"[1,2]"), "request");
    assert_eq!(field_of(&vec![b' '; MAX_LINE + 1]), "request");

    assert_eq!(field_of(&without("version")), "version");
    assert_eq!(field_of(&with("version", json!(2))), "version");
    assert_eq!(field_of(&with("version", json!("1"))), "version");
    let e = parse_request(&with("version", json!(0))).unwrap_err();
    assert!(e.message.contains("speaks 1"), "{e}");

    assert_eq!(field_of(&without("pid")), "pid");
    assert_eq!(field_of(&with("pid", json!(0))), "pid");
    assert_eq!(field_of(&with("pid", json!(-5))), "pid");
    assert_eq!(field_of(&with("pid", json!(1u64 << 33))), "pid");
    assert_eq!(field_of(&with("pid", json!(1.5))), "pid");

    assert_eq!(field_of(&without("control")), "control");
    assert_eq!(field_of(&with("control", json!(5))), "control");
    assert_eq!(field_of(&with("control", json!("dev/shm/x"))), "control");
    assert_eq!(
        field_of(&with("control", json!("/dev/shm/../x"))),
        "control"
    );
    assert_eq!(field_of(&with("control", json!(""))), "control");
    let long = format!("/{}", "a".repeat(MAX_PATH));
    assert_eq!(field_of(&with("control", json!(long))), "control");

    assert_eq!(field_of(&without("gpus")), "gpus");
    assert_eq!(field_of(&with("gpus", json!({}))), "gpus");
    let many: Vec<Value> = (0..=MAX_GPUS)
        .map(|i| json!({"ordinal": i, "pci_bus_id": format!("0000:{:02x}:00.0", i)}))
        .collect();
    assert_eq!(field_of(&with("gpus", json!(many))), "gpus");
    assert_eq!(
        field_of(&with("gpus", json!([{"pci_bus_id": "0000:3b:00.0"}]))),
        "gpus[0].ordinal"
    );
    assert_eq!(
        field_of(&with(
            "gpus",
            json!([{"ordinal": 0, "pci_bus_id": "0000:3b:00.0"}, {"ordinal": 1, "pci_bus_id": "../../x"}])
        )),
        "gpus[1].pci_bus_id"
    );
    assert_eq!(
        field_of(&with(
            "gpus",
            json!([{"ordinal": 0, "pci_bus_id": "0000:3b:00.0"}, {"ordinal": 0, "pci_bus_id": "0000:af:00.0"}])
        )),
        "gpus[1].ordinal"
    );
    assert_eq!(
        field_of(&with(
            "gpus",
            json!([{"ordinal": 0, "pci_bus_id": "0000:3B:00.0"}, {"ordinal": 1, "pci_bus_id": "0000:3b:00.0"}])
        )),
        "gpus[1].pci_bus_id",
        "the same GPU twice, whatever the case"
    );
    assert!(
        parse_request(&with("gpus", json!([]))).is_ok(),
        "no GPU yet is fine"
    );

    assert!(parse_request(&without("vgpu_uuid")).is_ok());
    assert!(parse_request(&with("vgpu_uuid", Value::Null)).is_ok());
    assert_eq!(field_of(&with("vgpu_uuid", json!("vm-1"))), "vgpu_uuid");
    assert_eq!(
        field_of(&with(
            "vgpu_uuid",
            json!("5b4f1d7c000040008000000000000001")
        )),
        "vgpu_uuid",
        "36 characters only"
    );
    assert_eq!(field_of(&with("vgpu_uuid", json!(3))), "vgpu_uuid");
}

#[test]
fn the_pid_a_process_sees_comes_from_nspid() {
    assert_eq!(
        innermost_pid("Name:\tx\nNSpid:\t4242\t17\t7\n", 4242),
        Some(7)
    );
    assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4242\n", 4242), Some(4242));
    assert_eq!(innermost_pid("Name:\tx\n", 4242), Some(4242), "old kernels");
    assert_eq!(innermost_pid("NSpid:\tx\n", 1), None);
    let p = Path::new("/dev/shm/gvm-vgpu-7");
    assert_eq!(daemon_view(p, 4242, true, Path::new("/proc")), p);
    assert_eq!(
        daemon_view(p, 4242, false, Path::new("/proc")),
        PathBuf::from("/proc/4242/root/dev/shm/gvm-vgpu-7")
    );
}

fn block(dir: &Path, name: &str, header_pid: u32) -> PathBuf {
    let path = dir.join(name);
    let m = ControlMap::create(&path, &Knobs::default(), FLAG_STANDALONE).unwrap();
    m.block().pid.store(header_pid, Ordering::Relaxed);
    path
}

fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

#[test]
fn only_the_peers_own_regular_block_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let uid = own_uid();
    let ok = block(dir.path(), "mine", 7);
    let (_m, id) = check_block(&ok, 7, uid).unwrap();
    let meta = fs::metadata(&ok).unwrap();
    assert_eq!(id, (meta.dev(), meta.ino()));

    let e = check_block(&ok, 8, uid).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(
        e.message.contains("pid 7") && e.message.contains("(8)"),
        "{e}"
    );

    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&ok, &link).unwrap();
    assert!(check_block(&link, 7, uid)
        .unwrap_err()
        .message
        .contains("not a regular file"));
    assert!(check_block(dir.path(), 7, uid).is_err(), "a directory");
    assert!(check_block(&dir.path().join("none"), 7, uid).is_err());
    let junk = dir.path().join("junk");
    fs::write(&junk, vec![1u8; 4096]).unwrap();
    assert_eq!(check_block(&junk, 7, uid).unwrap_err().field, "control");

    if uid == 0 {
        // A block of another user is not the peer's, whatever its header says.
        let theirs = block(dir.path(), "theirs", 7);
        std::os::unix::fs::chown(&theirs, Some(4321), None).unwrap();
        let e = check_block(&theirs, 7, 1234).unwrap_err();
        assert!(e.message.contains("uid 4321"), "{e}");
        assert!(
            check_block(&theirs, 7, 4321).is_ok(),
            "its owner may register it"
        );
        assert!(
            check_block(&ok, 7, 1234).is_ok(),
            "root's blocks are anyone's"
        );
    } else {
        println!("SKIP (part): not root, cannot chown a block to another user");
    }
}

/// A host whose `/proc` is a fake holding one process's status.
fn fake_host(dir: &Path, host_pid: u32, nspid: &str) -> HostRoot {
    let proc_dir = dir.join("proc");
    fs::create_dir_all(proc_dir.join(host_pid.to_string())).unwrap();
    fs::write(
        proc_dir.join(host_pid.to_string()).join("status"),
        format!("Name:\tpython\nNSpid:\t{nspid}\n"),
    )
    .unwrap();
    fs::create_dir_all(dir.join("root/sys/class/mdev_bus/0000:3b:00.0")).unwrap();
    HostRoot::new(dir.join("root")).with_proc_dir(proc_dir)
}

#[test]
fn a_peer_registers_itself_and_never_another_pid() {
    let dir = tempfile::tempdir().unwrap();
    let host = fake_host(dir.path(), 900, "900\t7");
    let reg = ShimRegistry::default();
    let peer = Peer {
        pid: 900,
        uid: own_uid(),
    };
    let mine = block(dir.path(), "mine", 7);
    let other = block(dir.path(), "other", 8);
    let line = |pid: u32, control: &Path| {
        let mut r = good();
        r["pid"] = json!(pid);
        r["control"] = json!(control.to_str().unwrap());
        r.to_string().into_bytes()
    };

    // Claiming the pid of another process: refused, nothing recorded.
    let e = register(&host, &reg, peer, 1, &line(8, &other)).unwrap_err();
    assert_eq!(e.field, "pid");
    // Its own pid with another process's block: refused.
    let e = register(&host, &reg, peer, 1, &line(7, &other)).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(reg.all().is_empty(), "refusals change nothing");
    // A peer whose status cannot be read (gone already).
    let gone = Peer { pid: 901, ..peer };
    assert_eq!(
        register(&host, &reg, gone, 1, &line(7, &mine))
            .unwrap_err()
            .field,
        "pid"
    );

    let (r, reply) = register(&host, &reg, peer, 3, &line(7, &mine)).unwrap();
    assert_eq!((r.ns_pid, r.connection), (7, 3));
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(reply["host_pid"], json!(900));
    assert_eq!(reply["gpu"], json!(0), "the only PCI parent");
    assert!(reply["gpu_source"]
        .as_str()
        .unwrap()
        .contains("0000:3b:00.0"));
    assert_eq!(reg.get(900).map(|r| r.control), Some(mine.clone()));
    // The second GPU first: no mdev parent, so its CUDA ordinal, said in the reply.
    let mut swapped = good();
    swapped["control"] = json!(mine.to_str().unwrap());
    swapped["gpus"] = json!([{"ordinal": 1, "pci_bus_id": "0000:af:00.0"}]);
    let (_, reply) = register(&host, &reg, peer, 4, swapped.to_string().as_bytes()).unwrap();
    assert_eq!(reply["gpu"], json!(1));
    assert!(reply["gpu_source"]
        .as_str()
        .unwrap()
        .contains("no mdev parent"));
    assert!(!reg.remove(900, 3), "replaced by the newer connection");
    assert!(reg.remove(900, 4));
}

#[test]
fn one_user_cannot_hold_every_registration_slot() {
    let slots = UidSlots::new(2);
    let a = slots.take(1000).expect("first");
    let b = slots.take(1000).expect("second");
    assert!(
        slots.take(1000).is_none(),
        "the third of one uid is refused"
    );
    assert!(slots.take(1001).is_some(), "another uid is not affected");
    let roots: Vec<_> = (0..5).map(|_| slots.take(0).expect("root")).collect();
    assert_eq!(slots.held(0), 5, "root is not bounded per uid");
    drop(a);
    assert_eq!(slots.held(1000), 1);
    let c = slots.take(1000).expect("a slot given back is free again");
    drop((b, c, roots));
    assert_eq!(slots.held(1000), 0);
    assert_eq!(slots.held(0), 0);
}
