//! Guest-agent ingest benchmark: N simulated guests (threads playing QEMU's end of
//! each agent channel) send R reports a second with P processes each to a real
//! `gvm-vgpud`; measured: the daemon's CPU (utime + stime over 10 s with nobody
//! polling), its RSS, and report-to-visible latency (from writing report `seq` to
//! `guest_stats` showing it, probing one guest at a time, polling every 1 ms).
//!
//! `cargo build --release -p gvm-vgpud && cargo run --release -p gvm-vgpud --example bench_ingest -- 100 10 50`
//!
//! `GVM_BENCH_DAEMON=/path/to/gvm-vgpud` benchmarks another build (run two builds
//! turn about to compare them on a shared machine).
//!
//! Targets (issue "Guest agent"): under 5% of one core, under 64 MiB RSS, p99 under 50 ms.
//! Needs no root: the daemon runs on an empty host root.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gvm_client::Client;
use uuid::Uuid;

/// The daemon under test: `$GVM_BENCH_DAEMON` when set (to compare two builds
/// turn about on a busy machine), else the workspace's release build.
fn daemon_bin() -> PathBuf {
    match std::env::var_os("GVM_BENCH_DAEMON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/gvm-vgpud"),
    }
}

#[path = "common/procstat.rs"]
mod procstat;
use procstat::{cpu_ticks, rss_kib};

/// What a guest last wrote: (seq, when).
type Sent = Arc<Mutex<(u64, Instant)>>;

fn guest(
    listener: UnixListener,
    per_second: u32,
    processes: u32,
    sent: Sent,
    stop: Arc<AtomicBool>,
) {
    let Ok((mut s, _)) = listener.accept() else {
        return;
    };
    let hello = r#"{"type":"hello","v":1,"agent":"0.1.0","os":"Bench","kernel":"6.1","collector":"nvml","driver":"580.65","gpus":[{"index":0,"name":"NVIDIA H100 80GB HBM3","memory_total_bytes":85520809984}]}"#;
    if writeln!(s, "{hello}").is_err() {
        return;
    }
    let period = Duration::from_secs(1) / per_second.max(1);
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let procs: Vec<String> = (0..processes)
            .map(|i| {
                format!(
                    r#"{{"pid":{},"name":"python3","cmdline":"python3 train.py --rank {i}","gpu":0,"memory_bytes":{},"sm_pct":{},"mem_pct":{}}}"#,
                    1000 + i,
                    (u64::from(i) + 1) << 24,
                    i % 101,
                    (i * 7) % 101
                )
            })
            .collect();
        let line = format!(
            r#"{{"type":"report","v":1,"seq":{seq},"ts_ms":{seq},"gpus":[{{"index":0,"util_sm_pct":80,"util_mem_pct":40,"memory_used_bytes":4294967296}}],"processes":[{}]}}"#,
            procs.join(",")
        );
        let at = Instant::now();
        if writeln!(s, "{line}").is_err() {
            return;
        }
        *sent.lock().unwrap() = (seq, at);
        next += period;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<u32> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench_ingest: {e}: arguments are GUESTS REPORTS_PER_S PROCESSES (numbers)");
            std::process::exit(2);
        }
    };
    let guests = args.first().copied().unwrap_or(100);
    let rate = args.get(1).copied().unwrap_or(10);
    let processes = args.get(2).copied().unwrap_or(50);
    let daemon_bin = daemon_bin();
    assert!(
        daemon_bin.exists(),
        "{}: build it first: cargo build --release -p gvm-vgpud",
        daemon_bin.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    let agent_dir = root.join("run/gvm-vgpu/agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut uuids = Vec::new();
    let mut sent = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..guests {
        let u = Uuid::new_v4();
        let l = UnixListener::bind(agent_dir.join(format!("{u}.sock"))).unwrap();
        let s: Sent = Arc::new(Mutex::new((0, Instant::now())));
        let (s2, stop2) = (s.clone(), stop.clone());
        threads.push(thread::spawn(move || guest(l, rate, processes, s2, stop2)));
        uuids.push(u);
        sent.push(s);
    }

    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = Command::new(&daemon_bin)
        .arg("--root")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let sock = root.join("run/gvm-vgpu/api.sock");
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(mut c) = Client::connect(&sock) {
            if c.ping().is_ok() {
                break c;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "daemon did not start"
        );
        thread::sleep(Duration::from_millis(50));
    };
    // Every guest visible.
    loop {
        let all = c.guest_stats(None).unwrap_or_default();
        let ready = all
            .iter()
            .filter(|i| i.stats.as_ref().is_some_and(|s| s.last_report.is_some()))
            .count();
        if ready == guests as usize {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "only {ready} of {guests} guests visible after 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{guests} guests x {rate} reports/s x {processes} processes: all visible after {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    // Phase 1: CPU and RSS over 10 s, nobody polling.
    thread::sleep(Duration::from_secs(2));
    let hz = 100.0; // USER_HZ on Linux
    let (c0, w0) = (cpu_ticks(pid), Instant::now());
    thread::sleep(Duration::from_secs(10));
    let (c1, w1) = (cpu_ticks(pid), Instant::now());
    let cpu_pct = (c1 - c0) as f64 / hz / (w1 - w0).as_secs_f64() * 100.0;
    let rss = rss_kib(pid);

    // Phase 2: report-to-visible latency, one guest at a time.
    let mut lat_ms = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    let mut k = 0;
    while Instant::now() < end && lat_ms.len() < 1000 {
        let (u, s) = (&uuids[k % uuids.len()], &sent[k % uuids.len()]);
        k += 1;
        let (seq0, _) = *s.lock().unwrap();
        // Wait for the next report to be written, then for it to show.
        let (seq, at) = loop {
            let v = *s.lock().unwrap();
            if v.0 > seq0 {
                break v;
            }
            thread::sleep(Duration::from_micros(200));
        };
        loop {
            let g = c.guest_stats(Some(&u.to_string())).unwrap().remove(0);
            let seen = g.stats.and_then(|s| s.last_report).map_or(0, |r| r.seq);
            if seen >= seq {
                lat_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
    lat_ms.sort_by(f64::total_cmp);
    let all = c.guest_stats(None).unwrap();
    let violations: u64 = all.iter().map(|i| i.violations).sum();
    let disconnects: u64 = all.iter().map(|i| i.disconnects).sum();

    println!("daemon CPU: {cpu_pct:.2}% of one core (target < 5%)");
    println!(
        "daemon RSS: {:.1} MiB (target < 64 MiB)",
        rss as f64 / 1024.0
    );
    println!(
        "report-to-visible latency over {} samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 50 ms)",
        lat_ms.len(),
        percentile(&lat_ms, 0.5),
        percentile(&lat_ms, 0.99),
        lat_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!("violations {violations}, disconnects {disconnects} (expected 0, 0)");

    stop.store(true, Ordering::Relaxed);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    for t in threads {
        let _ = t.join();
    }
}
