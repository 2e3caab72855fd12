//! `gvm-vgpud` tells systemd when it is ready (`Type=notify`): the real binary, on an empty
//! host root, sends `READY=1` on `$NOTIFY_SOCKET` once its API socket answers, brackets a
//! `SIGHUP` catalog reload with `RELOADING=1` … `READY=1`, and says `STOPPING=1` on
//! `SIGTERM`. Needs no root: the daemon runs on a temporary root without any GPU.

#![allow(missing_docs, clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification: {e}"));
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn the_daemon_notifies_ready_after_listening_and_around_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gvm-vgpud"))
        .arg("--root")
        .arg(&root)
        .args(["--no-uevents", "--no-libvirt", "--shim-socket", "none"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let log_text = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();

    assert_eq!(recv(&notify), "READY=1", "log: {}", log_text());
    // Ready means answering: the API socket takes a ping at once.
    let mut c = gvm_client::Client::connect(root.join("run/gvm-vgpu/api.sock"))
        .unwrap_or_else(|e| panic!("READY=1 before the API socket listens: {e}"));
    c.ping().unwrap();

    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloading = recv(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(recv(&notify), "READY=1", "log: {}", log_text());

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(recv(&notify), "STOPPING=1");
    assert!(child.wait().unwrap().success(), "log: {}", log_text());
}
