//! The real binary against host-side readers: a FIFO standing in for the
//! virtio-serial port, and stdout. What it writes goes through the host's
//! `IngestSession`, so these tests prove the agent and the host agree.

#![expect(
    clippy::unwrap_used,
    reason = "test fixtures: a failed unwrap is a failed test"
)]

use gvm_agent_proto::{Event, IngestSession};
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu-agent");

/// A fake guest: one process holding /dev/nvidia0, one GPU in the driver's proc files.
fn fake_guest() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let proc_dir = dir.path().join("proc");
    let gpu = proc_dir.join("driver/nvidia/gpus/0000:01:00.0");
    fs::create_dir_all(&gpu).unwrap();
    fs::write(
        gpu.join("information"),
        "Model: \t NVIDIA H100\nGPU UUID: \t GPU-abc\nDevice Minor: \t 0\n",
    )
    .unwrap();
    fs::write(
        proc_dir.join("driver/nvidia/version"),
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Release Build\n",
    )
    .unwrap();
    let p = proc_dir.join("4242");
    fs::create_dir_all(p.join("fd")).unwrap();
    fs::write(p.join("comm"), "python3\n").unwrap();
    fs::write(p.join("cmdline"), "python3\0train.py\0").unwrap();
    symlink("/dev/nvidia0", p.join("fd/5")).unwrap();
    symlink("/dev/nvidiactl", p.join("fd/6")).unwrap();
    (dir, proc_dir)
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn ingest(bytes: &[u8]) -> (IngestSession, Vec<Event>) {
    let mut s = IngestSession::default();
    let ev = s.feed(Instant::now(), bytes);
    (s, ev)
}

#[test]
fn reports_over_a_device_path_are_accepted_by_the_host_session() {
    let (dir, proc_dir) = fake_guest();
    let fifo = dir.path().join("port");
    mkfifo(&fifo);
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--shim-socket", "none"])
        .args(["--device", fifo.to_str().unwrap(), "--collector", "proc"])
        .args(["--interval", "100ms", "--hello-every", "3"])
        .arg("--proc-dir")
        .arg(&proc_dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut session = IngestSession::default();
    let mut events = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(10) {
        match reader.read(&mut buf) {
            Ok(n) => events.extend(session.feed(Instant::now(), &buf[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
        if session.counters().reports >= 5 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let violations: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Violation { .. } | Event::Disconnect { .. }))
        .collect();
    assert!(violations.is_empty(), "{violations:?}");
    let stats = session.stats().expect("a hello arrived");
    assert!(stats.counters.reports >= 5, "{:?}", stats.counters);
    assert!(
        stats.counters.hellos >= 2,
        "hello is repeated: {:?}",
        stats.counters
    );
    assert_eq!(stats.hello.driver.as_deref(), Some("580.65.06"));
    assert_eq!(stats.hello.gpus[0].uuid.as_deref(), Some("GPU-abc"));
    let report = stats.last_report.unwrap();
    assert_eq!(report.processes.len(), 1);
    let p = &report.processes[0];
    assert_eq!(
        (p.pid, p.name.as_str(), p.cmdline.as_str(), p.gpu),
        (4242, "python3", "python3 train.py", Some(0))
    );
}

#[test]
fn once_without_a_host_fails_fast_instead_of_blocking() {
    let (dir, proc_dir) = fake_guest();
    let fifo = dir.path().join("port");
    mkfifo(&fifo);
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["--shim-socket", "none"])
        .args([
            "--device",
            fifo.to_str().unwrap(),
            "--once",
            "--collector",
            "proc",
        ])
        .arg("--proc-dir")
        .arg(&proc_dir)
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not open") && err.contains("will retry"),
        "{err}"
    );
}

#[test]
fn once_to_stdout_prints_a_hello_and_a_report() {
    let (_dir, proc_dir) = fake_guest();
    let out = Command::new(BIN)
        .args(["--shim-socket", "none"])
        .args(["--stdout", "--once", "--collector", "proc"])
        .arg("--proc-dir")
        .arg(&proc_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_s, ev) = ingest(&out.stdout);
    match &ev[..] {
        [Event::Hello(_), Event::Report(r)] => {
            // The very first report already maps /dev/nvidia0 to GPU 0.
            assert_eq!(r.processes[0].gpu, Some(0), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_virtio_port_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--shim-socket", "none"])
        .args([
            "--once",
            "--collector",
            "proc",
            "--port-name",
            "org.example.nope",
        ])
        .env("GVM_VGPU_ROOT", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no virtio-serial port named 'org.example.nope'"),
        "{err}"
    );
}

#[test]
fn help_describes_every_transport() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port-name",
        "--device",
        "--vsock",
        "--cid",
        "--stdout",
        "--interval",
        "--once",
        "--collector",
        "--serve-unix",
        "--shim-socket",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(!help.contains("--proc-dir"), "test options stay hidden");
}

#[test]
fn after_the_host_goes_away_and_returns_the_first_line_is_a_hello() {
    let (dir, proc_dir) = fake_guest();
    let fifo = dir.path().join("port");
    mkfifo(&fifo);
    let open_reader = || {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    let read_for = |reader: &mut fs::File, session: &mut IngestSession, until_reports: u64| {
        let start = Instant::now();
        let mut events = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(10)
            && session.counters().reports < until_reports
        {
            match reader.read(&mut buf) {
                Ok(n) => events.extend(session.feed(Instant::now(), &buf[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        events
    };
    let mut reader = open_reader();
    let mut child = Command::new(BIN)
        .args(["--shim-socket", "none"])
        .args(["--device", fifo.to_str().unwrap(), "--collector", "proc"])
        .args(["--interval", "100ms", "--hello-every", "1000"])
        .arg("--proc-dir")
        .arg(&proc_dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = IngestSession::default();
    read_for(&mut reader, &mut first, 2);
    assert!(first.counters().reports >= 2);
    // The host goes away for a while, then a new host session starts.
    drop(reader);
    std::thread::sleep(Duration::from_millis(500));
    let mut reader = open_reader();
    let mut second = IngestSession::default();
    let events = read_for(&mut reader, &mut second, 2);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(events.first(), Some(Event::Hello(_))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Violation { .. })),
        "{events:?}"
    );
    assert!(second.counters().reports >= 2);
}
