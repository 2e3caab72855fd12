//! A hostile guest agent against the real `gvm-vgpud`: the test plays QEMU for two
//! VMs (it binds the channel sockets in the agent directory; the daemon connects
//! to them). One VM's "agent" sends good reports the whole time; the other sends,
//! one connection after another, an endless line, invalid UTF-8, invalid JSON,
//! absurd numbers, a flood of 10,000 lines a second and a slowloris trickle.
//!
//! Asserted: every attack ends with the daemon cutting the bad channel off (and
//! reconnecting later), the violations and disconnects are counted on that channel
//! only and said in the log, the good VM's stats keep updating throughout (its
//! latest report is never more than a second old), and the daemon's RSS stays
//! under a fixed bound. Needs no root: an empty host root is enough.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use uuid::Uuid;

/// The daemon's RSS must stay under this whatever the guest sends.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const HELLO: &str = r#"{"type":"hello","v":1,"agent":"0.1.0","os":"Test","kernel":"6.1","collector":"proc","gpus":[{"index":0,"name":"G"}]}"#;

fn report(seq: u64, pid: u32, name: &str) -> String {
    format!(
        r#"{{"type":"report","v":1,"seq":{seq},"ts_ms":{seq},"gpus":[],"processes":[{{"pid":{pid},"name":"{name}","cmdline":"{name} --run","gpu":0}}]}}"#
    )
}

/// Write until the daemon closes the connection (true) or `limit` passes (false).
fn attack(
    s: &mut UnixStream,
    limit: Duration,
    mut next: impl FnMut(u64) -> (Vec<u8>, Duration),
) -> bool {
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut i = 0;
    while Instant::now() < end {
        let (bytes, pause) = next(i);
        i += 1;
        match s.write_all(&bytes) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
    false
}

type Attack = (
    &'static str,
    Box<dyn FnMut(u64) -> (Vec<u8>, Duration) + Send>,
);

fn attacks() -> Vec<Attack> {
    let hello_then = |f: fn(u64) -> Vec<u8>| {
        move |i: u64| {
            if i == 0 {
                (format!("{HELLO}\n").into_bytes(), Duration::from_millis(20))
            } else {
                (f(i), Duration::from_millis(20))
            }
        }
    };
    vec![
        (
            "endless line",
            Box::new(|_| (vec![b'x'; 256 * 1024], Duration::ZERO)),
        ),
        (
            "invalid UTF-8",
            Box::new(|_| {
                (
                    b"{\"type\":\"hello\xff\xfe\"}\n".to_vec(),
                    Duration::from_millis(20),
                )
            }),
        ),
        (
            "invalid JSON",
            Box::new(|_| {
                (
                    b"{\"type\":\"report\",,,\n".to_vec(),
                    Duration::from_millis(20),
                )
            }),
        ),
        (
            "absurd numbers",
            Box::new(hello_then(|i| {
                format!(
                    r#"{{"type":"report","v":1,"seq":{},"ts_ms":1,"gpus":[{{"index":0,"util_sm_pct":1000}}],"processes":[{{"pid":0,"name":"x","cmdline":"","memory_bytes":18446744073709551615}}]}}"#,
                    i + 1
                )
                .into_bytes()
                .into_iter()
                .chain(*b"\n")
                .collect()
            })),
        ),
        (
            "10,000 lines/s",
            Box::new(|i| {
                // Valid lines, far too many: 100 lines every 10 ms.
                let mut b = Vec::new();
                if i == 0 {
                    b.extend_from_slice(HELLO.as_bytes());
                    b.push(b'\n');
                }
                for k in 0..100 {
                    b.extend_from_slice(report(i * 100 + k + 1, 5, "flood").as_bytes());
                    b.push(b'\n');
                }
                (b, Duration::from_millis(10))
            }),
        ),
        (
            "slowloris",
            Box::new(|_| (b"{".to_vec(), Duration::from_millis(50))),
        ),
    ]
}

#[test]
fn a_hostile_guest_is_cut_off_and_the_others_are_not_affected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    let agent_dir = root.join("run/gvm-vgpu/agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let (good, bad) = (Uuid::new_v4(), Uuid::new_v4());
    let good_l = UnixListener::bind(agent_dir.join(format!("{good}.sock"))).unwrap();
    let bad_l = UnixListener::bind(agent_dir.join(format!("{bad}.sock"))).unwrap();
    let d = Daemon::start(
        &root,
        &[
            "--agent-limits",
            "partial_line_timeout_ms=300,rate_violation_interval_ms=200,reconnect_after_ms=500",
        ],
    );
    let pid = d.pid().unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // The good VM: hello, then a report every 100 ms.
    let stop_good = stop.clone();
    let good_thread = thread::spawn(move || {
        let (mut s, _) = good_l.accept().unwrap();
        writeln!(s, "{HELLO}").unwrap();
        let mut seq = 0;
        while !stop_good.load(Ordering::Relaxed) {
            seq += 1;
            writeln!(s, "{}", report(seq, 4242, "good-trainer")).unwrap();
            thread::sleep(Duration::from_millis(100));
        }
        seq
    });

    // The bad VM: one attack per connection; the daemon reconnects after each cut.
    let bad_thread = thread::spawn(move || {
        let mut outcome = Vec::new();
        for (name, mut next) in attacks() {
            let (mut s, _) = bad_l.accept().unwrap();
            let t = Instant::now();
            let cut = attack(&mut s, Duration::from_secs(10), &mut next);
            outcome.push((name, cut, t.elapsed()));
        }
        outcome
    });

    let mut c = d.client();
    assert!(
        wait_until(Duration::from_secs(10), || c
            .guest_stats(Some(&good.to_string()))
            .is_ok_and(|g| g[0]
                .stats
                .as_ref()
                .is_some_and(|s| s.last_report.is_some()))),
        "the good guest's first report never showed"
    );
    let (mut max_rss, mut max_age, mut last_seq, mut polls) = (0u64, 0u64, 0u64, 0u32);
    while !bad_thread.is_finished() {
        let g = c.guest_stats(Some(&good.to_string())).unwrap().remove(0);
        max_age = max_age.max(g.report_age_ms.unwrap_or(u64::MAX));
        let seq = g.stats.unwrap().last_report.unwrap().seq;
        assert!(seq >= last_seq);
        last_seq = seq;
        max_rss = max_rss.max(rss_kib(pid).unwrap_or(0));
        polls += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let outcome = bad_thread.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = good_thread.join().unwrap();

    for (name, cut, took) in &outcome {
        println!("attack {name}: cut off {cut} after {took:?}");
        assert!(*cut, "the daemon did not cut off the '{name}' attack");
    }
    println!("good guest: {sent} reports sent, last seen seq {last_seq}, max age {max_age} ms over {polls} polls; daemon max RSS {max_rss} KiB");
    assert!(
        max_age < 1000,
        "the good guest's stats went stale: {max_age} ms"
    );
    assert!(
        last_seq + 20 >= sent,
        "the good guest's reports fell behind: {last_seq} of {sent}"
    );
    assert!(
        max_rss > 0 && max_rss < RSS_BOUND_KIB,
        "daemon RSS {max_rss} KiB"
    );

    let all = c.guest_stats(None).unwrap();
    let g = all.iter().find(|i| i.uuid == Some(good)).unwrap();
    let b = all.iter().find(|i| i.uuid == Some(bad)).unwrap();
    assert_eq!(
        (g.violations, g.disconnects, g.connections),
        (0, 0, 1),
        "{g:?}"
    );
    assert!(b.disconnects >= outcome.len() as u64, "{b:?}");
    assert!(b.violations >= 6 * outcome.len() as u64, "{b:?}");
    assert!(b
        .last_problem
        .as_deref()
        .is_some_and(|p| p.contains("disconnecting")));

    let log = std::fs::read_to_string(&d.log).unwrap();
    let bad_sock = format!("{bad}.sock");
    for needle in [
        "is not UTF-8",
        "is not a valid protocol message",
        "outside",
        "over the rate limit",
        "partial line",
        "line longer than",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&bad_sock) && l.contains(needle)),
            "the log does not say '{needle}' for the bad channel:\n{log}"
        );
    }
    assert!(!log
        .lines()
        .any(|l| l.contains(&format!("{good}.sock")) && l.contains("protocol")));

    // The metrics endpoint is not part of this daemon; the API still answers.
    assert!(c.ping().is_ok());
}
