//! Tests of the keeper: the state machine, the loop over a fake link, and the real socket
//! link against listeners that stop and start like a restarting daemon.

use super::*;
use crate::register::{GpuId, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Instant;

fn connect_error() -> RegisterError {
    RegisterError::Connect {
        path: PathBuf::from("/r/shim.sock"),
        errno: libc::ECONNREFUSED,
        source: std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
    }
}

fn refusal() -> RegisterError {
    RegisterError::Refused {
        path: PathBuf::from("/r/shim.sock"),
        message: "control: not yours".into(),
    }
}

fn ok(gpu: u32) -> Reply {
    Reply {
        ok: true,
        gpu: Some(gpu),
        error: None,
        arbiters: Vec::new(),
    }
}

#[test]
fn the_state_machine_logs_state_changes_only() {
    let sock = PathBuf::from("/r/shim.sock");
    let mut k = Keeper::after_first(sock.clone(), None);
    assert_eq!(k.state(), State::Registered);
    assert_eq!(k.retry_after(), None);
    let lost = k.on(Event::HungUp).expect("a line");
    assert!(
        lost.contains("/r/shim.sock") && lost.contains("re-registering"),
        "{lost}"
    );
    assert_eq!(k.state(), State::Lost);
    assert_eq!(k.retry_after(), Some(RETRY));
    assert_eq!(k.on(Event::Failed(&connect_error())), None);
    assert_eq!(k.on(Event::Failed(&connect_error())), None);
    assert_eq!(k.state(), State::Lost);
    let again = k.on(Event::Registered { gpu: Some(8) }).expect("a line");
    assert!(
        again.contains("registered again") && again.contains("gpu 8"),
        "{again}"
    );
    assert_eq!(k.state(), State::Registered);
    assert_eq!(k.on(Event::Registered { gpu: Some(8) }), None);

    // A refusal slows the retries down, says so once, and a later unreachable daemon speeds
    // them up again.
    k.on(Event::HungUp);
    let refused = k.on(Event::Failed(&refusal())).expect("a line");
    assert!(refused.contains("not yours"), "{refused}");
    assert_eq!(k.retry_after(), Some(RETRY_REFUSED));
    assert_eq!(k.on(Event::Failed(&refusal())), None);
    assert!(k.on(Event::Failed(&connect_error())).is_some());
    assert_eq!(k.state(), State::Lost);
    assert_eq!(k.on(Event::HungUp), None, "no connection to hang up");

    // No daemon at set-up: waiting, then a daemon that started later takes it.
    let mut w = Keeper::after_first(sock.clone(), Some(&connect_error()));
    assert_eq!(w.state(), State::Waiting);
    assert_eq!(w.retry_after(), Some(RETRY));
    assert_eq!(w.on(Event::Failed(&connect_error())), None);
    let later = w.on(Event::Registered { gpu: None }).expect("a line");
    assert!(later.contains("started after this process"), "{later}");
    assert_eq!(
        Keeper::after_first(sock, Some(&refusal())).state(),
        State::Refused
    );
}

/// A scripted link: attempts answer from `script` in order; a connection hangs up at once;
/// the process is "exiting" once the script is used up and the loop waits again.
#[derive(Default)]
struct Fake {
    script: VecDeque<Result<(u32, Reply), RegisterError>>,
    attempts: usize,
    pauses: Vec<Duration>,
    watched: Vec<u32>,
    lines: Vec<String>,
    exiting: bool,
    exit_after_pauses: Option<usize>,
}

impl Link for Fake {
    type Conn = u32;
    fn register(&mut self) -> Result<(u32, Reply), RegisterError> {
        self.attempts += 1;
        self.script
            .pop_front()
            .unwrap_or_else(|| Err(connect_error()))
    }
    fn wait_hangup(&mut self, conn: &u32) {
        self.watched.push(*conn);
        if self.script.is_empty() {
            self.exiting = true;
        }
    }
    fn pause(&mut self, d: Duration) {
        self.pauses.push(d);
        if self.exit_after_pauses == Some(self.pauses.len()) {
            self.exiting = true;
        }
    }
    fn exiting(&self) -> bool {
        self.exiting
    }
    fn log(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }
}

#[test]
fn the_loop_retries_after_each_hang_up_until_registered_again() {
    let mut f = Fake {
        script: VecDeque::from([
            Err(connect_error()),
            Err(connect_error()),
            Err(connect_error()),
            Ok((2, ok(1))),
            Err(refusal()),
            Err(refusal()),
            Ok((3, ok(1))),
        ]),
        ..Fake::default()
    };
    run(&mut f, PathBuf::from("/r/shim.sock"), Ok(1));
    assert_eq!(f.watched, vec![1, 2, 3], "each connection watched in turn");
    assert_eq!(
        f.attempts, 7,
        "no attempt while registered, none after exit"
    );
    let s = Duration::from_secs;
    assert_eq!(f.pauses, vec![s(1), s(1), s(1), s(1), s(1), s(30), s(30)]);
    // One line per state change: lost, again, lost, refused, again (none per failed retry,
    // none for the hang-up seen while exiting).
    assert_eq!(f.lines.len(), 5, "{:#?}", f.lines);
    assert!(f.lines[0].contains("closed the registration"));
    assert!(f.lines[1].contains("registered again"));
    assert!(f.lines[3].contains("refused"));
    assert!(f.lines[4].contains("registered again"));
}

#[test]
fn without_a_daemon_at_set_up_the_loop_waits_for_one() {
    let mut f = Fake {
        script: VecDeque::from([Err(connect_error()), Ok((5, ok(0)))]),
        ..Fake::default()
    };
    run(&mut f, PathBuf::from("/r/shim.sock"), Err(connect_error()));
    assert_eq!(f.watched, vec![5]);
    assert_eq!(f.pauses.len(), 2);
    assert_eq!(f.lines.len(), 1, "{:#?}", f.lines);
    assert!(f.lines[0].contains("started after this process"));
}

#[test]
fn an_exiting_process_makes_no_further_attempt() {
    let mut f = Fake {
        script: VecDeque::from([Ok((9, ok(0)))]),
        exit_after_pauses: Some(1),
        ..Fake::default()
    };
    run(&mut f, PathBuf::from("/r/shim.sock"), Err(connect_error()));
    assert_eq!(f.attempts, 0);
    assert!(f.watched.is_empty() && f.lines.is_empty());
}

#[test]
fn wait_hangup_ignores_data_and_returns_at_end_of_file() {
    let (mine, peer) = UnixStream::pair().expect("pair");
    let (tx, rx) = mpsc::channel();
    let watcher = std::thread::spawn(move || {
        sys::wait_hangup(mine.as_fd());
        let _ = tx.send(());
    });
    (&peer).write_all(b"noise\n").expect("write");
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "data is not a hang-up"
    );
    drop(peer);
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "EOF wakes it"
    );
    watcher.join().expect("watcher");
}

static EXITING: AtomicBool = AtomicBool::new(false);
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(line: &str) {
    LINES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(line.to_string());
}

fn keeper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == THREAD_NAME)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Accept one registration on `l` within `within`, answer it, return the line, the
/// (device, inode) of the descriptor that came with it and the connection (kept open by the
/// caller).
fn serve_one(l: &UnixListener, within: Duration) -> (String, Option<(u64, u64)>, UnixStream) {
    l.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no registration within {within:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; crate::register::MAX_LINE];
    let (n, handed) = crate::sys::recv_with_fd(s.as_fd(), &mut buf).expect("request");
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    let id = handed.map(|h| {
        let m = std::fs::File::from(h).metadata().expect("fstat");
        (m.dev(), m.ino())
    });
    (&s).write_all(b"{\"ok\":true,\"gpu\":4}\n").expect("reply");
    (line, id, s)
}

#[test]
fn the_socket_link_finds_a_late_daemon_and_a_restarted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shim.sock");
    let request = Request {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        control: crate::register::MEMFD_CONTROL.into(),
        gpus: vec![GpuId {
            ordinal: 0,
            pci_bus_id: "0000:3b:00.0".into(),
        }],
        vgpu_uuid: None,
        arbiters: Vec::new(),
    };
    let block = crate::control::ControlMap::create_sealed(&crate::config::Knobs::default(), 0)
        .expect("block");
    let fd = block.fd().expect("descriptor");
    let link = SocketLink {
        socket: path.clone(),
        request: request.clone(),
        control: fd.try_clone_to_owned().expect("dup"),
        timeout: Duration::from_millis(100),
        exiting: &EXITING,
        log: record,
        joined_arbiters: Vec::new,
        on_arbiters: |_| {},
    };
    // No daemon at set-up.
    let first = connect_and_register(&path, &request, fd, &[], Duration::from_millis(100))
        .map(|r| r.connection);
    assert!(matches!(first, Err(RegisterError::Connect { .. })));
    spawn(link, &path, first).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    while keeper_threads() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(keeper_threads(), 1, "one named keeper thread");

    // A daemon starts: registered within a retry interval (and some slack for load).
    let l1 = UnixListener::bind(&path).expect("bind");
    let (line1, id1, conn1) = serve_one(&l1, Duration::from_secs(5));
    assert_eq!(line1, request.to_line());
    assert_eq!(
        id1,
        block.file_id(),
        "the block's descriptor came with the line"
    );

    // It dies (kill -9: the listener and the connection close; the socket file stays).
    drop(conn1);
    drop(l1);
    std::fs::remove_file(&path).expect("stale socket");
    let l2 = UnixListener::bind(&path).expect("bind again");
    let (line2, id2, conn2) = serve_one(&l2, Duration::from_secs(5));
    assert_eq!(line2, line1, "the same request again");
    assert_eq!(id2, id1, "with the same block's descriptor again");
    let lines = LINES.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("started after this process"))
            && lines.iter().any(|l| l.contains("closed the registration")),
        "{lines:#?}"
    );

    // The process exits: the thread stops at the next wake-up without another attempt.
    EXITING.store(true, Ordering::Release);
    drop(conn2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while keeper_threads() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(keeper_threads(), 0, "the keeper thread ended");
    l2.set_nonblocking(true).expect("nonblocking");
    assert!(l2.accept().is_err(), "no attempt after exit");
}
