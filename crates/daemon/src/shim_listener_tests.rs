//! The shim socket end to end in this process: a registration is listed by the shim
//! backend and dropped at end of file; oversized and silent peers get an error and are
//! closed.

#![allow(clippy::unwrap_used)]

use gvm_gcgroup::GcgroupBackend;
use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::{ControlMap, FLAG_STANDALONE};
use gvm_shim_abi::register::{connect_and_register, GpuId, Request, PROTOCOL_VERSION};
use gvm_shim_host::backend::ShimBackend;
use gvm_shim_host::gating::GatingModes;
use std::sync::atomic::Ordering;

use super::*;

fn block(dir: &Path, name: &str, header_pid: u32) -> PathBuf {
    let path = dir.join(name);
    let m = ControlMap::create(&path, &Knobs::default(), FLAG_STANDALONE).unwrap();
    m.block().pid.store(header_pid, Ordering::Relaxed);
    path
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
    tokio::spawn(serve(listener, host.clone(), reg.clone()));

    // This test process is the "shim": its block at a non-default path.
    let me = std::process::id();
    let path = block(dir.path(), "custom-block", me);
    let request = Request {
        version: PROTOCOL_VERSION,
        pid: me,
        control: path.to_str().unwrap().into(),
        gpus: vec![GpuId {
            ordinal: 0,
            pci_bus_id: "0000:3B:00.0".into(),
        }],
        vgpu_uuid: None,
    };
    let (s2, r2) = (sock.clone(), request.clone());
    let registered =
        tokio::task::spawn_blocking(move || connect_and_register(&s2, &r2, Duration::from_secs(2)))
            .await
            .unwrap()
            .unwrap();
    assert!(registered.reply.ok);
    let backend = ShimBackend::new(host.clone(), reg.clone(), Arc::new(GatingModes::new()));
    assert_eq!(backend.processes().unwrap(), vec![me]);
    assert_eq!(
        backend.gpus(me).unwrap(),
        vec![0],
        "no mdev parent: the ordinal"
    );

    // Another pid's claim on the same socket is refused, naming the field.
    let mut lie = request.clone();
    lie.pid = me + 1;
    let s3 = sock.clone();
    let e = tokio::task::spawn_blocking(move || {
        connect_and_register(&s3, &lie, Duration::from_secs(2))
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
async fn oversized_and_silent_peers_get_an_error_and_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostRoot::new(dir.path().join("root"));
    let sock = dir.path().join("s.sock");
    tokio::spawn(serve(bind(&sock).unwrap(), host, Arc::default()));
    let s = sock.clone();
    let replies = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Write};
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
