//! The shim socket end to end in this process: a registration with its sealed memfd is
//! listed by the shim backend and dropped at end of file; a block that is not sealed, a
//! request without a descriptor and a protocol-1 request are refused naming the field;
//! oversized and silent peers get an error and are closed.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Write};
use std::os::fd::AsFd;

use gvm_gcgroup::GcgroupBackend;
use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::{ControlMap, FLAG_STANDALONE};
use gvm_shim_abi::register::{
    connect_and_register, GpuId, Request, MEMFD_CONTROL, PROTOCOL_VERSION,
};
use gvm_shim_host::backend::ShimBackend;
use gvm_shim_host::gating::GatingModes;
use serde_json::json;
use std::sync::atomic::Ordering;

use super::*;

/// A sealed memfd block whose header says `header_pid`, as the shim makes it by default.
fn sealed_block(header_pid: u32) -> Arc<ControlMap> {
    let m = ControlMap::create_sealed(&Knobs::default(), FLAG_STANDALONE).unwrap();
    m.block().pid.store(header_pid, Ordering::Relaxed);
    Arc::new(m)
}

/// Send `line` on a new connection to `sock`, with `fd` attached when given, and read the
/// one-line reply.
fn raw_exchange(sock: &Path, line: &str, fd: Option<std::os::fd::BorrowedFd<'_>>) -> String {
    let c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    match fd {
        Some(fd) => {
            let n = gvm_shim_abi::sys::send_with_fds(c.as_fd(), line.as_bytes(), &[fd]).unwrap();
            (&c).write_all(&line.as_bytes()[n..]).unwrap();
        }
        None => (&c).write_all(line.as_bytes()).unwrap(),
    }
    let mut reply = String::new();
    std::io::BufReader::new(&c).read_line(&mut reply).unwrap();
    reply
}

#[test]
fn socket_options() {
    let h = HostRoot::new("/tmp/r");
    assert_eq!(
        socket_option(&h, None),
        Some(PathBuf::from("/tmp/r/run/gvm-vgpu/shim.sock"))
    );
    assert_eq!(socket_option(&h, Some("none")), None);
    assert_eq!(
        socket_option(&h, Some("/x.sock")),
        Some(PathBuf::from("/x.sock"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_process_is_listed_and_dropped_at_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostRoot::new(dir.path().join("root"));
    fs::create_dir_all(host.path("/dev/shm")).unwrap();
    let sock = host.path(SOCKET_PATH);
    let listener = bind(&sock).unwrap();
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "any CUDA process may register");
    let reg = Arc::new(ShimRegistry::default());
    let hub = gvm_shim_host::relay_hub::RelayHub::new(reg.clone());
    tokio::spawn(serve(listener, host.clone(), reg.clone(), hub));

    // This test process is the "shim": its block a sealed memfd, handed over.
    let me = std::process::id();
    let block = sealed_block(me);
    let request = Request {
        version: PROTOCOL_VERSION,
        pid: me,
        control: MEMFD_CONTROL.into(),
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
        arbiters: Vec::new(),
    };
    let (s2, r2, b2) = (sock.clone(), request.clone(), block.clone());
    let registered = tokio::task::spawn_blocking(move || {
        connect_and_register(&s2, &r2, b2.fd().unwrap(), &[], Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(registered.reply.ok);
    // Its domain's arbitration block of each GPU came with the reply, as a sealed memfd.
    assert_eq!(registered.reply.arbiters, ["0000:3b:00.0", "0000:af:00.0"]);
    let handed: Vec<_> = registered
        .arbiters
        .iter()
        .map(|(pci, fd)| {
            let m = gvm_shim_abi::priority::ArbiterMap::from_handed_fd(fd.try_clone().unwrap())
                .expect("a sealed arbitration block");
            (pci.clone(), m)
        })
        .collect();
    assert_eq!(handed[0].0, "0000:3b:00.0");
    assert_ne!(
        handed[0].1.file_id(),
        handed[1].1.file_id(),
        "one block per GPU"
    );
    let backend = ShimBackend::new(host.clone(), reg.clone(), Arc::new(GatingModes::new()));
    assert_eq!(backend.processes().unwrap(), vec![me]);
    assert_eq!(
        backend.gpus(me).unwrap(),
        vec![0],
        "no mdev parent: the first GPU's ordinal"
    );
    assert_eq!(
        reg.get(me).map(|r| r.file_id),
        block.file_id(),
        "the registry holds the block that came over the socket"
    );
    backend.set_frozen(me, 0, true).unwrap();
    assert_eq!(block.block().frozen.load(Ordering::Acquire), 1);

    // Registering again (as after a daemon restart) handing both blocks back, in the other
    // order, keeps each on its GPU.
    let mut again = request.clone();
    again.arbiters = vec!["0000:af:00.0".into(), "0000:3b:00.0".into()];
    let back: Vec<OwnedFd> = handed
        .iter()
        .rev()
        .map(|(_, m)| m.fd().unwrap().try_clone_to_owned().unwrap())
        .collect();
    let (s4, b4) = (sock.clone(), block.clone());
    let second = tokio::task::spawn_blocking(move || {
        let fds: Vec<_> = back.iter().map(|f| f.as_fd()).collect();
        connect_and_register(&s4, &again, b4.fd().unwrap(), &fds, Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(second.arbiters.len(), 2);
    for ((pci, fd), (was_pci, was)) in second.arbiters.iter().zip(&handed) {
        let same =
            gvm_shim_abi::priority::ArbiterMap::from_handed_fd(fd.try_clone().unwrap()).unwrap();
        assert_eq!(pci, was_pci);
        assert_eq!(
            same.file_id(),
            was.file_id(),
            "one block per domain and GPU"
        );
    }
    drop(second);

    // Another pid's claim on the same socket is refused, naming the field.
    let mut lie = request.clone();
    lie.pid = me + 1;
    let (s3, b3) = (sock.clone(), block.clone());
    let e = tokio::task::spawn_blocking(move || {
        connect_and_register(&s3, &lie, b3.fd().unwrap(), &[], Duration::from_secs(2))
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        e.to_string().contains("is not the registering process"),
        "{e}"
    );

    // End of file: the registration goes at once.
    drop(registered);
    let mut gone = false;
    for _ in 0..100 {
        if reg.get(me).is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "dropped within a second of the connection closing");
    assert_eq!(backend.processes().unwrap(), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsealed_blocks_missing_descriptors_and_protocol_1_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostRoot::new(dir.path().join("root"));
    let sock = dir.path().join("s.sock");
    let reg = Arc::new(ShimRegistry::default());
    let hub = gvm_shim_host::relay_hub::RelayHub::new(reg.clone());
    tokio::spawn(serve(bind(&sock).unwrap(), host, reg.clone(), hub));
    let me = std::process::id();
    // A file block whose owner could truncate it (mode 0644: not even root's own is taken).
    let path = dir.path().join("file-block");
    let file = ControlMap::create(&path, &Knobs::default(), FLAG_STANDALONE).unwrap();
    file.block().pid.store(me, Ordering::Relaxed);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let line = |version: u32, control: &str| {
        format!("{{\"version\":{version},\"pid\":{me},\"control\":\"{control}\",\"gpus\":[],\"vgpu_uuid\":null}}\n")
    };
    let p = path.to_str().unwrap().to_string();
    let (s, l2, l1, l0) = (
        sock.clone(),
        line(2, &p),
        line(1, &p),
        line(2, MEMFD_CONTROL),
    );
    let replies = tokio::task::spawn_blocking(move || {
        [
            raw_exchange(&s, &l2, Some(file.fd().unwrap())),
            raw_exchange(&s, &l1, None),
            raw_exchange(&s, &l0, None),
        ]
    })
    .await
    .unwrap();
    for (r, field, says) in [
        (&replies[0], "control", "F_SEAL_SHRINK"),
        (&replies[1], "version", "protocol 1"),
        (&replies[2], "control", "no descriptor"),
    ] {
        let v: Value = serde_json::from_str(r).unwrap();
        assert_eq!(v["ok"], json!(false), "{r}");
        assert_eq!(v["field"], json!(field), "{r}");
        assert!(v["error"].as_str().unwrap().contains(says), "{r}");
    }
    assert!(reg.all().is_empty(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_silent_peers_get_an_error_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostRoot::new(dir.path().join("root"));
    let sock = dir.path().join("s.sock");
    let reg: Arc<ShimRegistry> = Arc::default();
    let hub = gvm_shim_host::relay_hub::RelayHub::new(reg.clone());
    tokio::spawn(serve(bind(&sock).unwrap(), host, reg, hub));
    let s = sock.clone();
    let replies = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut c = std::os::unix::net::UnixStream::connect(&s).unwrap();
        c.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&c).read_line(&mut line).unwrap();
        out.push(line);
        let c = std::os::unix::net::UnixStream::connect(&s).unwrap();
        let t = std::time::Instant::now();
        let mut line = String::new();
        std::io::BufReader::new(&c).read_line(&mut line).unwrap();
        out.push(line);
        (out, t.elapsed())
    })
    .await
    .unwrap();
    let (lines, waited) = replies;
    assert!(
        lines[0].contains("\"ok\":false") && lines[0].contains("4096"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("no request line"), "{}", lines[1]);
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3));
}
