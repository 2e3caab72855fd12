//! The API socket under connection floods, idle and slow clients, and at the daemon's
//! open-file limit, against the real `gvm-vgpud` on an empty host root.
//!
//! Asserted: one user's flood is capped at its share and turned away with a `busy`
//! line while root's `ping` and `list` keep being answered within a second, the daemon
//! staying under half a core and its log under 100 lines; the last slots stay root's;
//! idle connections and partial request lines are closed on time; at the open-file
//! limit the daemon backs off instead of spinning, logs the failed accepts at most once
//! a second, and serves again once descriptors are free; the metrics endpoint answers
//! `503` beyond its cap and serves again after. The floods run as temporary users made
//! for the test (`useradd`, removed after) in the daemon's `--group`, so those two need
//! root (else `SKIP:`); the others do not.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cpu_time, set_nofile, wait_until, Daemon};
use gvm_client::gvm_proto::{ErrorCode, Response};
use gvm_vgpud::server::{API_ADMIN_RESERVE, API_MAX_PER_UID, METRICS_MAX_CONNECTIONS};

const FLOOD_SOCKET: &str = "GVM_TEST_FLOOD_SOCKET";
const FLOOD_COUNT: &str = "GVM_TEST_FLOOD_COUNT";
const FLOOD_HAMMER_MS: &str = "GVM_TEST_FLOOD_HAMMER_MS";

/// What one connection got within a moment of connecting.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// Nothing: the daemon holds it open.
    Held,
    /// The `busy` line, then the end.
    Busy,
    /// Anything else (what it was).
    Other(String),
}

fn probe(s: &mut UnixStream, wait: Duration) -> Got {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    match BufReader::new(&mut *s).read_line(&mut line) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Got::Held
        }
        Err(e) => Got::Other(format!("read failed: {e}")),
        Ok(0) => Got::Other("closed without a line".into()),
        Ok(_) => match serde_json::from_str::<Response>(line.trim_end()) {
            Ok(r)
                if r.id == 0
                    && r.error.as_ref().is_some_and(|e| {
                        e.code == ErrorCode::Conflict && e.message.starts_with("busy: ")
                    }) =>
            {
                Got::Busy
            }
            _ => Got::Other(line),
        },
    }
}

/// The flood, in a child process running as another uid: open `FLOOD_COUNT`
/// connections, report how many the daemon held and how many it turned away, then
/// connect again every 5 ms for `FLOOD_HAMMER_MS` (each should be turned away), report
/// that, and hold the first connections until stdin closes. The flood tests re-run their own
/// test binary, filtered to themselves, with `FLOOD_SOCKET` set: then the test body is this
/// child instead ([`as_flood_child`]).
fn flood_child(socket: String) {
    let n: usize = std::env::var(FLOOD_COUNT).unwrap().parse().unwrap();
    let hammer = Duration::from_millis(std::env::var(FLOOD_HAMMER_MS).unwrap().parse().unwrap());
    let mut conns: Vec<UnixStream> = (0..n)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<Got> = conns
        .iter_mut()
        .map(|s| probe(s, Duration::from_millis(20)))
        .collect();
    let count = |g: &Got| got.iter().filter(|x| *x == g).count();
    let other: Vec<&Got> = got.iter().filter(|g| matches!(g, Got::Other(_))).collect();
    // Straight to stdout: the test harness captures `println!`.
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
    say(format!(
        "FLOOD held={} busy={} other={other:?}",
        count(&Got::Held),
        count(&Got::Busy)
    ));
    let end = Instant::now() + hammer;
    let (mut busy, mut other) = (0, Vec::new());
    while Instant::now() < end {
        let mut s = UnixStream::connect(&socket).unwrap();
        match probe(&mut s, Duration::from_secs(2)) {
            Got::Busy => busy += 1,
            g => other.push(g),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    say(format!("HAMMER busy={busy} other={other:?}"));
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(conns);
}

/// Whether this process is a flood child (its parent test set `FLOOD_SOCKET`); if so, the
/// flood has run when this returns.
fn as_flood_child() -> bool {
    match std::env::var(FLOOD_SOCKET) {
        Ok(socket) => {
            flood_child(socket);
            true
        }
        Err(_) => false,
    }
}

/// A running flood child.
struct Flood {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Flood {
    /// Re-run this test binary's `test` as a flood child of `uid` in group `gid`.
    fn start(
        test: &str,
        socket: &Path,
        (uid, gid): (u32, u32),
        count: usize,
        hammer: Duration,
    ) -> Flood {
        use std::os::unix::process::CommandExt;
        let exe = gvm_testkit::runnable_by_others(&std::env::current_exe().unwrap());
        let mut child = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(FLOOD_SOCKET, socket)
            .env(FLOOD_COUNT, count.to_string())
            .env(FLOOD_HAMMER_MS, hammer.as_millis().to_string())
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Flood { child, lines }
    }

    /// The rest of the next line holding `prefix` (its `key=value` fields).
    fn report(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the flood child ended or said nothing for 30 s");
            // The harness may have written `test <name> ... ` before it.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_string();
            }
        }
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn field(report: &str, key: &str) -> usize {
    report
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in '{report}'"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An empty host root, one other uids can reach the socket under (a tempdir is 0700).
fn open_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    std::fs::create_dir_all(root.join("run/gvm-vgpu")).unwrap();
    for p in [
        dir.path(),
        &root,
        &root.join("run"),
        &root.join("run/gvm-vgpu"),
    ] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    (dir, root)
}

/// Call `f` and the time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

#[test]
fn one_users_idle_flood_is_capped_and_root_is_still_answered_within_a_second() {
    if as_flood_child() {
        return;
    }
    if !is_root() {
        println!("SKIP: needs root (the flood runs as a temporary user)");
        return;
    }
    let user = match gvm_testkit::temp_user::TempUser::create("gvmflood") {
        Ok(u) => u,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let (_dir, root) = open_root();
    let group = user.gid.to_string();
    let d = Daemon::start(&root, &["--group", &group]);
    let pid = d.pid().unwrap();
    // Without a cap, 400 connections would take every descriptor the daemon has.
    set_nofile(pid, 256);

    let mut flood = Flood::start(
        "one_users_idle_flood_is_capped_and_root_is_still_answered_within_a_second",
        &d.socket,
        (user.uid, user.gid),
        400,
        Duration::from_secs(4),
    );
    let opened = flood.report("FLOOD ");
    // The flood holds its share and keeps connecting every 5 ms: measure meanwhile.
    let (lines0, cpu0, t0) = (d.log_lines(), cpu_time(pid), Instant::now());
    let mut slowest = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(2) {
        let (r, took) = timed(|| d.client().ping().map(|_| ()));
        r.unwrap();
        slowest = slowest.max(took);
        let (r, took) = timed(|| d.client().list(false).map(|_| ()));
        r.unwrap();
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = (cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let lines = d.log_lines() - lines0;
    let hammered = flood.report("HAMMER ");
    println!(
        "flood: {opened}; {hammered}; slowest root call {slowest:?}, daemon CPU {:.1} %, \
         log +{lines} lines",
        cpu * 100.0
    );
    flood.stop();

    assert_eq!(field(&opened, "held"), API_MAX_PER_UID, "{opened}");
    assert_eq!(field(&opened, "busy"), 400 - API_MAX_PER_UID, "{opened}");
    assert!(opened.ends_with("other=[]"), "{opened}");
    assert!(field(&hammered, "busy") > 50, "{hammered}");
    assert!(hammered.ends_with("other=[]"), "{hammered}");
    assert!(
        slowest < Duration::from_secs(1),
        "a root call took {slowest:?}"
    );
    assert!(cpu < 0.5, "the daemon used {:.0} % of a core", cpu * 100.0);
    assert!(
        lines < 100,
        "the log grew by {lines} lines during the flood"
    );
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(
        log.contains(&format!("API connection refused: uid {} holds", user.uid)),
        "{log}"
    );
    assert!(
        log.contains("more suppressed"),
        "refusals are not rate limited: {log}"
    );
}

const SLOTS_TEST: &str = "the_last_slots_are_roots_when_other_users_hold_the_rest";

#[test]
fn the_last_slots_are_roots_when_other_users_hold_the_rest() {
    if as_flood_child() {
        return;
    }
    if !is_root() {
        println!("SKIP: needs root (the floods run as two temporary users)");
        return;
    }
    let users = (
        gvm_testkit::temp_user::TempUser::create("gvmfla"),
        gvm_testkit::temp_user::TempUser::create("gvmflb"),
    );
    let (ua, ub) = match users {
        (Ok(a), Ok(b)) => (a, b),
        (Err(why), _) | (_, Err(why)) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let (_dir, root) = open_root();
    let max = API_ADMIN_RESERVE + 4;
    let group = ua.gid.to_string();
    let d = Daemon::start(
        &root,
        &["--group", &group, "--api-max-connections", &max.to_string()],
    );
    // Two users want 20 each: together they get what the reserve leaves.
    let mut a = Flood::start(SLOTS_TEST, &d.socket, (ua.uid, ua.gid), 20, Duration::ZERO);
    let got_a = a.report("FLOOD ");
    let mut b = Flood::start(SLOTS_TEST, &d.socket, (ub.uid, ua.gid), 20, Duration::ZERO);
    let got_b = b.report("FLOOD ");
    assert_eq!(
        field(&got_a, "held") + field(&got_b, "held"),
        4,
        "{got_a} / {got_b}"
    );
    assert_eq!(
        field(&got_a, "busy") + field(&got_b, "busy"),
        36,
        "{got_a} / {got_b}"
    );

    // Root gets the reserve, and then is capped too.
    let mut roots: Vec<gvm_client::Client> = Vec::new();
    for _ in 0..API_ADMIN_RESERVE {
        let mut c = d.client();
        c.ping().unwrap();
        roots.push(c);
    }
    let mut one_more = UnixStream::connect(&d.socket).unwrap();
    assert_eq!(probe(&mut one_more, Duration::from_secs(2)), Got::Busy);
    // The client library says why.
    let e = d.client().ping().unwrap_err();
    assert!(e.to_string().starts_with("busy: "), "{e}");
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    drop(roots);
    a.stop();
    b.stop();
    assert!(wait_until(Duration::from_secs(2), || d
        .client()
        .ping()
        .is_ok()));
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (_dir, root) = open_root();
    let d = Daemon::start(&root, &["--api-idle-s", "1"]);
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    // Meanwhile a client that calls every 300 ms is never idle that long.
    let mut busy = d.client();
    let keeper = std::thread::spawn(move || {
        for _ in 0..10 {
            busy.ping().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let n = idle.read(&mut [0u8; 64]).unwrap();
    let closed_after = t.elapsed();
    assert_eq!(n, 0, "an idle connection gets no data, only the end");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}, not about 1 s"
    );
    keeper.join().unwrap();
}

#[test]
fn a_partial_request_line_is_dropped_after_the_request_timeout() {
    let (_dir, root) = open_root();
    let d = Daemon::start(&root, &[]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    s.write_all(br#"{"id":1,"method":"pi"#).unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(&mut s);
    r.read_line(&mut line).unwrap();
    let took = t.elapsed();
    let resp: Response = serde_json::from_str(line.trim_end()).unwrap();
    let e = resp.error.unwrap();
    assert_eq!((resp.id, e.code), (0, ErrorCode::InvalidArgument), "{line}");
    assert!(e.message.contains("not complete"), "{line}");
    assert_eq!(r.read(&mut [0u8; 8]).unwrap(), 0, "closed after the answer");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "dropped after {took:?}, not about 5 s"
    );
}

/// Bring a daemon started with the caps lifted to its open-file limit (128) with
/// connections it accepts until it cannot; they hold it there until dropped.
fn exhaust(d: &Daemon) -> Vec<UnixStream> {
    set_nofile(d.pid().unwrap(), 128);
    let conns: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    let log_has = |s: &str| std::fs::read_to_string(&d.log).unwrap().contains(s);
    assert!(
        wait_until(Duration::from_secs(5), || log_has("Too many open files")),
        "the daemon never reached its open-file limit"
    );
    conns
}

#[test]
fn accepts_at_the_open_file_limit_back_off_with_a_rate_limited_log() {
    let (_dir, root) = open_root();
    // The caps would keep the daemon below its limit: lift them to reach it.
    let d = Daemon::start(&root, &["--api-max-connections", "100000"]);
    let pid = d.pid().unwrap();
    let conns = exhaust(&d);
    let log_has = |s: &str| std::fs::read_to_string(&d.log).unwrap().contains(s);
    let (lines0, cpu0, t0) = (d.log_lines(), cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = (cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let lines = d.log_lines() - lines0;
    println!(
        "at the fd limit: daemon CPU {:.1} %, log +{lines} lines in 3 s",
        cpu * 100.0
    );
    assert!(
        cpu < 0.5,
        "the daemon used {:.0} % of a core at its fd limit",
        cpu * 100.0
    );
    assert!(
        lines < 100,
        "the log grew by {lines} lines in 3 s at the fd limit"
    );
    assert!(
        log_has("more suppressed"),
        "failed accepts are not rate limited"
    );
    // Descriptors freed, it serves again (the pause is at most a second).
    drop(conns);
    assert!(
        wait_until(Duration::from_secs(5), || d.client().ping().is_ok()),
        "the daemon did not serve again once descriptors were free"
    );
}

#[test]
fn a_guest_agent_channel_is_not_dropped_when_the_daemon_runs_out_of_descriptors() {
    let (_dir, root) = open_root();
    // Play QEMU for one VM: the daemon connects to its channel socket.
    let agent_dir = root.join("run/gvm-vgpu/agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let channel = agent_dir.join(format!("{}.sock", uuid::Uuid::new_v4()));
    let qemu = std::os::unix::net::UnixListener::bind(&channel).unwrap();
    let d = Daemon::start(&root, &["--api-max-connections", "100000"]);
    let (_vm, _) = qemu.accept().unwrap();
    let log = || std::fs::read_to_string(&d.log).unwrap();
    assert!(wait_until(Duration::from_secs(5), || log()
        .contains("guest-agent channel connected")));
    let conns = exhaust(&d);
    // Discovery runs every 500 ms: several rounds fail to list the directory.
    std::thread::sleep(Duration::from_secs(2));
    let text = log();
    assert!(
        !text.contains("guest-agent channel gone"),
        "an unreadable agent directory was taken for an empty one: {text}"
    );
    assert!(
        text.contains("cannot list the guest-agent channels"),
        "{text}"
    );
    drop(conns);
    let mut c = d.client();
    let infos = c.guest_stats(None).unwrap();
    assert_eq!(infos.len(), 1, "{infos:?}");
    assert!(infos[0].connected && infos[0].connections == 1, "{infos:?}");
}

#[test]
fn the_metrics_endpoint_answers_503_beyond_its_cap_and_serves_again_after() {
    let (_dir, root) = open_root();
    let d = Daemon::start(&root, &["--metrics", "127.0.0.1:0"]);
    let log = std::fs::read_to_string(&d.log).unwrap();
    let addr: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.split("metrics listening addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"));
    let get = || -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get().starts_with("HTTP/1.0 200 OK"));
    // Clients that connect and say nothing hold every slot (for up to 5 s each).
    let idle: Vec<std::net::TcpStream> = (0..METRICS_MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut one_more = std::net::TcpStream::connect(addr).unwrap();
    one_more
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut answer = String::new();
    let _ = one_more.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.0 503"), "{answer:?}");
    drop(idle);
    assert!(
        wait_until(Duration::from_secs(3), || get()
            .starts_with("HTTP/1.0 200 OK")),
        "the metrics endpoint did not serve again"
    );
}
