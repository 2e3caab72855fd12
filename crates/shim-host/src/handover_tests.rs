//! Unit tests of the registration handover: every request field (sizes, versions, shapes),
//! the pid check against a fake `/proc`, the checks of the block descriptor handed over
//! (sealed memfds, root's file blocks, what a less-privileged owner could truncate), that the
//! registry keeps the mapping and never reopens a path, and the per-uid bound.
//! The socket end to end is tested with its listener (gvm-vgpud's `shim_listener`).

#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use gvm_gcgroup::{GcgroupBackend, MemoryLimit};
use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::FLAG_STANDALONE;

use gvm_shim_abi::register::{GpuId, Request};

use super::*;

fn good() -> Value {
    json!({
        "version": 2,
        "pid": 7,
        "control": "memfd",
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
    assert_eq!(p.control, "memfd");
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
        arbiters: vec!["0000:3B:00.0".into()],
    }
    .to_line();
    assert!(
        shim_line.contains("\"arbiter\":"),
        "one block handed back is sent as protocol 2 always sent it: {shim_line}"
    );
    let p = parse_request(shim_line.as_bytes()).unwrap();
    assert_eq!((p.pid, p.gpus[0].ordinal), (9, 3));
    assert_eq!(
        p.control, "/x/b\"q",
        "a file block's path, as a description"
    );
    assert_eq!(p.vgpu_uuid, None);
    assert_eq!(p.arbiters, vec!["0000:3b:00.0".to_string()]);
    // An unknown field (a typo, or a shim of another release) is refused by name.
    let mut extra = good();
    extra["later"] = json!(1);
    let e = parse_request(extra.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "request");
    assert!(e.message.contains("\"later\""), "{e}");
    // The arbitration block handed back must be of a GPU the process lists.
    let mut stray = good();
    stray["arbiter"] = json!("0000:99:00.0");
    assert_eq!(
        parse_request(stray.to_string().as_bytes())
            .unwrap_err()
            .field,
        "arbiter"
    );
}

#[test]
fn blocks_of_several_gpus_handed_back_parse_in_order_and_bad_lists_are_named() {
    let two = Request {
        version: PROTOCOL_VERSION,
        pid: 7,
        control: "memfd".into(),
        gpus: vec![
            GpuId {
                ordinal: 0,
                pci_bus_id: "0000:3B:00.0".into(),
            },
            GpuId {
                ordinal: 1,
                pci_bus_id: "0000:AF:00.0".into(),
            },
        ],
        vgpu_uuid: None,
        arbiters: vec!["0000:AF:00.0".into(), "0000:3B:00.0".into()],
    }
    .to_line();
    let p = parse_request(two.as_bytes()).unwrap();
    assert_eq!(
        p.arbiters,
        vec!["0000:af:00.0".to_string(), "0000:3b:00.0".to_string()],
        "in the order of the descriptors"
    );
    assert_eq!(
        field_of(&with("arbiters", json!(["0000:99:00.0"]))),
        "arbiters[0]"
    );
    assert_eq!(
        field_of(&with("arbiters", json!(["0000:3b:00.0", "0000:3B:00.0"]))),
        "arbiters[1]",
        "one GPU twice"
    );
    assert_eq!(field_of(&with("arbiters", json!([7]))), "arbiters[0]");
    assert_eq!(
        field_of(&with("arbiters", json!("0000:3b:00.0"))),
        "arbiters"
    );
    let many: Vec<Value> = (0..=MAX_HANDED_BACK)
        .map(|_| json!("0000:3b:00.0"))
        .collect();
    assert_eq!(field_of(&with("arbiters", Value::Array(many))), "arbiters");
    let mut both = good();
    both["arbiter"] = json!("0000:3b:00.0");
    both["arbiters"] = json!(["0000:af:00.0"]);
    let e = parse_request(both.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "arbiters");
    assert!(e.message.contains("one of them"), "{e}");
    assert_eq!(
        parse_request(&with("arbiters", Value::Null))
            .unwrap()
            .arbiters,
        Vec::<String>::new()
    );
}

#[test]
fn pid_namespaces_parse_from_their_link_text() {
    assert_eq!(pid_namespace_of_link("pid:[4026531836]"), Some(4026531836));
    for bad in ["pid:[]", "net:[1]", "pid:[x]", "pid:[1", ""] {
        assert_eq!(pid_namespace_of_link(bad), None, "{bad}");
    }
    let host = HostRoot::new("/");
    assert!(
        pid_namespace(&host, std::process::id()).is_some(),
        "this process's own namespace is readable"
    );
}

#[test]
fn every_field_is_checked_and_named() {
    assert_eq!(field_of(b"\xff\xfe"), "request");
    assert_eq!(field_of(b"not json"), "request");
    assert_eq!(field_of(b"[1,2]"), "request");
    assert_eq!(field_of(&vec![b' '; MAX_LINE + 1]), "request");

    assert_eq!(field_of(&without("version")), "version");
    assert_eq!(field_of(&with("version", json!(3))), "version");
    assert_eq!(field_of(&with("version", json!("2"))), "version");
    let e = parse_request(&with("version", json!(0))).unwrap_err();
    assert!(e.message.contains("speaks 2"), "{e}");
    // Protocol 1 named the block by path: refused, saying why and what to do.
    let e = parse_request(&with("version", json!(1))).unwrap_err();
    assert_eq!(e.field, "version");
    assert!(
        e.message.contains("by path") && e.message.contains("same release"),
        "{e}"
    );

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
    assert_eq!(field_of(&with("control", json!("memfd2"))), "control");
    assert!(parse_request(&with("control", json!("/dev/shm/ctl"))).is_ok());
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
}

/// A sealed memfd block whose header says `header_pid`, as the shim makes it.
fn sealed(header_pid: u32) -> ControlMap {
    let m = ControlMap::create_sealed(&Knobs::default(), FLAG_STANDALONE).unwrap();
    m.block().pid.store(header_pid, Ordering::Relaxed);
    m
}

/// A file block at `dir/name` whose header says `header_pid` (mode 0600, owned by us).
fn file_block(dir: &Path, name: &str, header_pid: u32) -> (PathBuf, ControlMap) {
    let path = dir.join(name);
    let m = ControlMap::create(&path, &Knobs::default(), FLAG_STANDALONE).unwrap();
    m.block().pid.store(header_pid, Ordering::Relaxed);
    (path, m)
}

/// What the daemon receives over the socket for `m`: a descriptor of its own.
fn handed(m: &ControlMap) -> OwnedFd {
    m.fd().unwrap().try_clone_to_owned().unwrap()
}

fn own_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

#[test]
fn a_sealed_memfd_is_accepted_whoever_registers_and_its_header_must_hold_the_pid() {
    let m = sealed(7);
    for uid in [own_uid(), 1234, 0] {
        let (map, id) = check_handed_block(handed(&m), 7, uid).unwrap();
        assert_eq!(Some(id), m.file_id());
        map.set_frozen(true);
        assert_eq!(
            m.block().frozen.load(Ordering::Acquire),
            1,
            "the same memory"
        );
        m.set_frozen(false);
    }
    let e = check_handed_block(handed(&m), 8, 1234).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(
        e.message.contains("pid 7") && e.message.contains("(8)"),
        "{e}"
    );
    // Not a file at all.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = check_handed_block(OwnedFd::from(a), 7, 1234).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(e.message.contains("not a regular file"), "{e}");
}

#[test]
fn an_unsealed_file_of_a_user_is_refused_naming_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (path, m) = file_block(dir.path(), "mine", 7);
    // Today's defect: a user's own file was mapped, and the user could truncate it.
    let uid = if own_uid() == 0 {
        std::os::unix::fs::chown(&path, Some(4321), None).unwrap();
        4321
    } else {
        own_uid()
    };
    let e = check_handed_block(handed(&m), 7, uid).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(
        e.message.contains("not a memfd") && e.message.contains("F_SEAL_SHRINK"),
        "names what is wrong and the fix: {e}"
    );
    // The same file handed over by root: still not root's own file.
    if own_uid() == 0 {
        let e = check_handed_block(handed(&m), 7, 0).unwrap_err();
        assert_eq!(e.field, "control");
        assert!(e.message.contains("uid 4321, not root"), "{e}");
    }
    // A sealable tmpfs file that is not sealed (where /dev/shm is tmpfs).
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        let (_p, m) = file_block(shm.path(), "tmpfs", 7);
        let e = check_handed_block(handed(&m), 7, 1234).unwrap_err();
        assert_eq!(e.field, "control");
        assert!(e.message.contains("F_SEAL_SHRINK"), "{e}");
    }
}

#[test]
fn a_root_peers_root_owned_0600_file_is_accepted_and_a_0644_one_is_refused() {
    if own_uid() != 0 {
        println!("SKIP: not root, so no file here is root-owned");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, m) = file_block(dir.path(), "roots", 7);
    let (map, _) = check_handed_block(handed(&m), 7, 0).unwrap();
    assert_eq!(map.block().pid.load(Ordering::Relaxed), 7);
    // Only from a root peer: another user hands over memfds.
    let e = check_handed_block(handed(&m), 7, 1234).unwrap_err();
    assert_eq!(e.field, "control");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let e = check_handed_block(handed(&m), 7, 0).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(
        e.message.contains("0644") && e.message.contains("0600"),
        "{e}"
    );
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
    let mine = sealed(7);
    let other = sealed(8);
    let line = |pid: u32| {
        let mut r = good();
        r["pid"] = json!(pid);
        r.to_string().into_bytes()
    };

    // Claiming the pid of another process: refused, nothing recorded.
    let e = register(&host, &reg, peer, 1, &line(8), Some(handed(&other))).unwrap_err();
    assert_eq!(e.field, "pid");
    // Its own pid with another process's block: refused.
    let e = register(&host, &reg, peer, 1, &line(7), Some(handed(&other))).unwrap_err();
    assert_eq!(e.field, "control");
    // No block handed over (a protocol-1 shim, or a hand-made client): refused.
    let e = register(&host, &reg, peer, 1, &line(7), None).unwrap_err();
    assert_eq!(e.field, "control");
    assert!(e.message.contains("no descriptor"), "{e}");
    assert!(reg.all().is_empty(), "refusals change nothing");
    // A peer whose status cannot be read (gone already).
    let gone = Peer { pid: 901, ..peer };
    assert_eq!(
        register(&host, &reg, gone, 1, &line(7), Some(handed(&mine)))
            .unwrap_err()
            .field,
        "pid"
    );

    let (r, reply) = register(&host, &reg, peer, 3, &line(7), Some(handed(&mine))).unwrap();
    assert_eq!((r.ns_pid, r.connection), (7, 3));
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(reply["host_pid"], json!(900));
    assert_eq!(reply["gpu"], json!(0), "the only PCI parent");
    assert!(reply["gpu_source"]
        .as_str()
        .unwrap()
        .contains("0000:3b:00.0"));
    let got = reg.get(900).unwrap();
    assert_eq!(got.control, "memfd");
    assert_eq!(Some(got.file_id), mine.file_id(), "the block handed over");
    // The second GPU first: no mdev parent, so its CUDA ordinal, said in the reply.
    let mut swapped = good();
    swapped["gpus"] = json!([{"ordinal": 1, "pci_bus_id": "0000:af:00.0"}]);
    let (_, reply) = register(
        &host,
        &reg,
        peer,
        4,
        swapped.to_string().as_bytes(),
        Some(handed(&mine)),
    )
    .unwrap();
    assert_eq!(reply["gpu"], json!(1));
    assert!(reply["gpu_source"]
        .as_str()
        .unwrap()
        .contains("no mdev parent"));
    assert!(!reg.remove(900, 3), "replaced by the newer connection");
    assert!(reg.remove(900, 4));
}

/// The shim backend over `host` and `reg`, with `/dev/shm` present.
fn backend_of(host: &HostRoot, reg: &Arc<ShimRegistry>) -> crate::backend::ShimBackend {
    fs::create_dir_all(host.path("/dev/shm")).unwrap();
    crate::backend::ShimBackend::new(host.clone(), reg.clone(), Arc::default())
}

#[test]
fn a_registered_sealed_memfd_is_read_and_written_by_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let host = fake_host(dir.path(), 900, "900\t7");
    let reg = Arc::new(ShimRegistry::default());
    let peer = Peer {
        pid: 900,
        uid: 1234,
    };
    let shim_side = sealed(7);
    shim_side
        .block()
        .memory_current
        .store(5 << 20, Ordering::Relaxed);
    register(
        &host,
        &reg,
        peer,
        1,
        &good().to_string().into_bytes(),
        Some(handed(&shim_side)),
    )
    .unwrap();
    let backend = backend_of(&host, &reg);
    assert_eq!(backend.processes().unwrap(), vec![900]);
    assert_eq!(backend.read(900, 0).unwrap().memory_current, 5 << 20);
    backend
        .set_memory_limit(900, 0, MemoryLimit::Bytes(1 << 30))
        .unwrap();
    backend.set_frozen(900, 0, true).unwrap();
    let b = shim_side.block();
    assert_eq!(b.memory_limit.load(Ordering::Acquire), 1 << 30);
    assert_eq!(b.frozen.load(Ordering::Acquire), 1);
    // Its owner still writes what it likes: the reads stay in range.
    b.priority.store(u32::MAX, Ordering::Relaxed);
    b.ended.store(u64::MAX, Ordering::Relaxed);
    let s = backend.read(900, 0).unwrap();
    assert_eq!(s.priority, gvm_gcgroup::Priority::MAX);
    assert_eq!(s.stat.pending, 0);
}

#[test]
fn the_registry_keeps_the_mapping_and_never_reopens_a_path() {
    if own_uid() != 0 {
        println!("SKIP: a file block is taken from a root peer only, and this is not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = fake_host(dir.path(), 900, "900\t7");
    let reg = Arc::new(ShimRegistry::default());
    let peer = Peer { pid: 900, uid: 0 };
    let (path, shim_side) = file_block(dir.path(), "block", 7);
    let mut line = good();
    line["control"] = json!(path.to_str().unwrap());
    register(
        &host,
        &reg,
        peer,
        1,
        line.to_string().as_bytes(),
        Some(handed(&shim_side)),
    )
    .unwrap();
    // The name now leads somewhere else entirely: a junk file, then nothing.
    let junk = dir.path().join("junk");
    fs::write(&junk, [0u8; 10]).unwrap();
    fs::rename(&junk, &path).unwrap();
    let backend = backend_of(&host, &reg);
    assert_eq!(backend.processes().unwrap(), vec![900]);
    backend.set_frozen(900, 0, true).unwrap();
    assert_eq!(
        shim_side.block().frozen.load(Ordering::Acquire),
        1,
        "written through the mapping made at registration"
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        vec![0u8; 10],
        "the path is not touched"
    );
    fs::remove_file(&path).unwrap();
    assert!(backend.read(900, 0).unwrap().frozen);
    drop(shim_side);
    // The registry's own mapping outlives the shim's and any name.
    assert!(backend.read(900, 0).unwrap().frozen);
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
