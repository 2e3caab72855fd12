//! Issue 16's benchmark 3, scale: N guests (default 100), each reporting 4 CUDA processes
//! and toggling busy 20 times a second, through one release `gvm-vgpud` on the simulated
//! host. Each guest is played by this program over its vGPU's channel socket, as QEMU's
//! virtio-serial end would carry it (the daemon connects to `<root>/run/gvm-vgpu/agent/
//! <uuid>.sock`): a protocol-2 hello, an acknowledgement of every snapshot, counters for its
//! 4 processes 5 times a second, and a busy/idle transition every 50 ms, at a phase of its
//! own.
//!
//! Two modes (third argument):
//! * `fanout` (the default): one guest, the *probe*, runs at priority 2, the others at their
//!   type's (lower) priority, so every probe busy transition holds or releases every other
//!   VM: the worst case of the relay. The relay latency is, for each other VM and each probe
//!   transition, from the probe's busy line written to that VM's snapshot with the new hold
//!   read; the daemon's own share of it is read from its `gvm_vgpu_guest_relay_seconds`;
//! * `flat`: every guest at the same priority: nobody holds anybody, and the figure is what
//!   ingesting and arbitrating 100 busy VMs costs.
//!
//! The channel is a local Unix socket (a few µs), so the figure is the daemon's, not
//! virtio-serial's. Also: the daemon's CPU time over the run (of one core) and its resident
//! memory. Targets: < 5 % of a core, relay p99 < 1 ms.
//!
//! `cargo build --release -p gvm-vgpu-sim -p gvm-vgpud && cargo run --release -p gvm-vgpud --example bench_guest_scale -- 100 20 fanout`
//! (guests, seconds, mode). Needs root and /dev/fuse; prints `SKIP: reason` and exits 0 without.
//! Results and their reading: docs/results/guest-scale.md.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gvm_client::gvm_proto::{SetMode, SetParams};
use uuid::Uuid;

#[path = "common/host_rig.rs"]
mod host_rig;
#[path = "common/procstat.rs"]
mod procstat;
use host_rig::{all_managed, wait_until, SimHost};
use procstat::{cpu_ticks, rss_kib};

const HELLO: &str = r#"{"type":"hello","v":1,"agent":"bench","os":"Bench","kernel":"6.1","collector":"proc","protocol":2,"gpus":[{"index":0,"name":"G"}]}"#;
const PROCESSES: u32 = 4;
const TOGGLE: Duration = Duration::from_millis(50);
const COUNTERS_EVERY: Duration = Duration::from_millis(200);
/// vGPUs of `gvmsim-1` one simulated GPU holds.
const PER_GPU: usize = 16;

/// The probe's busy transitions: (busy, when its line was written).
type Transitions = Arc<Mutex<Vec<(bool, Instant)>>>;

fn counters_line(n: u64) -> String {
    let procs: Vec<String> = (0..PROCESSES)
        .map(|i| {
            format!(
                r#"{{"pid":{},"name":"worker{i}","memory_current":{},"memory_swap":0,"kernels_submitted":{},"kernels_ended":{},"pending":1,"busy":true,"gpu_busy_us":{}}}"#,
                100 + i,
                1u64 << 30,
                n * 10 + 1,
                n * 10,
                n * 1000
            )
        })
        .collect();
    format!(r#"{{"type":"counters","processes":[{}]}}"#, procs.join(","))
}

/// One guest: accept the daemon, then toggle busy and send counters until `stop`; its
/// reader acknowledges snapshots and records when each hold change was read.
fn guest(
    listener: UnixListener,
    phase: Duration,
    stop: Arc<AtomicBool>,
    probe: Option<Transitions>,
    holds: Arc<Mutex<Vec<(bool, Instant)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut out = s.try_clone().unwrap();
        writeln!(out, "{HELLO}").unwrap();
        let ack_out = Arc::new(Mutex::new(s.try_clone().unwrap()));
        let reader = {
            let ack_out = Arc::clone(&ack_out);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut lines = BufReader::new(s);
                let mut hold = None;
                let mut l = String::new();
                while !stop.load(Ordering::Relaxed) {
                    l.clear();
                    match lines.read_line(&mut l) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => continue,
                    }
                    let at = Instant::now();
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                        continue;
                    };
                    let h = v["hold"].as_bool().unwrap_or(false);
                    if hold != Some(h) {
                        hold = Some(h);
                        holds.lock().unwrap().push((h, at));
                    }
                    if let Some(g) = v["generation"].as_u64() {
                        let ack = format!(
                            r#"{{"type":"ack","generation":{g},"reached":{{"frozen":false,"held":{h},"processes":{PROCESSES},"in_flight":0,"memory_limit":null,"priority":null}}}}"#
                        );
                        let _ = writeln!(ack_out.lock().unwrap(), "{ack}");
                    }
                }
            })
        };
        std::thread::sleep(phase);
        let (mut busy, mut n) = (false, 0u64);
        let mut next_counters = Instant::now();
        let mut next_toggle = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_toggle {
                busy = !busy;
                let line = format!(r#"{{"type":"busy","busy":{busy}}}"#);
                let mut o = ack_out.lock().unwrap();
                let at = Instant::now();
                if writeln!(o, "{line}").is_err() {
                    break;
                }
                drop(o);
                if let Some(p) = &probe {
                    p.lock().unwrap().push((busy, at));
                }
                next_toggle += TOGGLE;
            }
            if now >= next_counters {
                n += 1;
                let line = counters_line(n);
                if writeln!(ack_out.lock().unwrap(), "{line}").is_err() {
                    break;
                }
                next_counters += COUNTERS_EVERY;
            }
            let wake = next_toggle.min(next_counters);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        drop(out.flush());
        let _ = reader.join();
    })
}

/// The daemon's `gvm_vgpu_guest_relay_seconds` buckets: (upper bound µs, cumulative count).
fn relay_histogram(addr: &str) -> Option<Vec<(u64, u64)>> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let buckets = text
        .lines()
        .filter_map(|l| l.strip_prefix("gvm_vgpu_guest_relay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let bound = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().ok()? * 1e6).round() as u64
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    Some(buckets)
}

/// (observations, p50 bound, p99 bound) of the observations between two readings.
fn diff_quantiles(before: &[(u64, u64)], after: &[(u64, u64)]) -> Option<(u64, u64, u64)> {
    let at = |h: &[(u64, u64)], b: u64| h.iter().find(|(x, _)| *x == b).map_or(0, |(_, c)| *c);
    let diff: Vec<(u64, u64)> = after
        .iter()
        .map(|(b, c)| (*b, c.saturating_sub(at(before, *b))))
        .collect();
    let total = diff.last()?.1;
    if total == 0 {
        return None;
    }
    let q = |f: f64| {
        let want = (f * total as f64).ceil() as u64;
        diff.iter()
            .find(|(_, c)| *c >= want)
            .map_or(u64::MAX, |(b, _)| *b)
    };
    Some((total, q(0.5), q(0.99)))
}

/// p50, p99 and max of `v`.
fn pcts(v: &mut [u64]) -> Option<(u64, u64, u64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    Some((at(50), at(99), v[v.len() - 1]))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let guests: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let fanout = match args.next().as_deref() {
        None | Some("fanout") => true,
        Some("flat") => false,
        Some(other) => {
            eprintln!("mode `{other}`: give `fanout` or `flat`");
            std::process::exit(2);
        }
    };
    if let Some(why) = host_rig::skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let bins = host_rig::bins(&["gvm-vgpu-sim", "gvm-vgpud"]);
    let dir = tempfile::tempdir().unwrap();
    let gpus = guests.div_ceil(PER_GPU).max(1) as u32;
    let sim = SimHost::start(&bins, &dir.path().join("host"), gpus);
    let uuids: Vec<Uuid> = (0..guests)
        .map(|i| sim.create(&sim.parents[i / PER_GPU], "gvmsim-1"))
        .collect();
    let agent_dir = sim.root.join("run/gvm-vgpu/agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let listeners: Vec<UnixListener> = uuids
        .iter()
        .map(|u| UnixListener::bind(agent_dir.join(format!("{u}.sock"))).unwrap())
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (daemon, mut c, log) =
        sim.daemon(&bins, &["--guest-ack-ms", "2000", "--metrics", &metrics]);
    assert!(
        wait_until(Duration::from_secs(30), || all_managed(&mut c, &uuids)),
        "the daemon did not adopt the {guests} vGPUs"
    );
    if fanout {
        c.set(SetParams {
            target: uuids[0].to_string(),
            priority: Some(2),
            mode: SetMode::Live,
            ..SetParams::default()
        })
        .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let probe: Transitions = Arc::new(Mutex::new(Vec::new()));
    let mut holds = Vec::new();
    let mut threads = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let h = Arc::new(Mutex::new(Vec::new()));
        holds.push(Arc::clone(&h));
        let phase = TOGGLE * (i as u32 % 50) / 50;
        let p = (i == 0).then(|| Arc::clone(&probe));
        threads.push(guest(l, phase, Arc::clone(&stop), p, h));
    }
    // Let every channel connect and settle, then measure.
    std::thread::sleep(Duration::from_secs(3));
    let pid = daemon.0.id();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let at_t0 = relay_histogram(&metrics);
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu1, wall) = (cpu_ticks(pid), t0.elapsed());
    let before = relay_histogram(&metrics);
    let rss = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }

    // Relay: each hold change of another VM after t0, against the latest probe transition
    // to that state written before it.
    let transitions = probe.lock().unwrap().clone();
    let mut relay_us = Vec::new();
    let mut missed = 0usize;
    let expected = if fanout {
        transitions.iter().filter(|(_, at)| *at >= t0).count() * (guests - 1)
    } else {
        0
    };
    for h in holds.iter().skip(1) {
        for &(held, at) in h.lock().unwrap().iter().filter(|(_, at)| *at >= t0) {
            match transitions
                .iter()
                .rev()
                .find(|(busy, sent)| *busy == held && *sent <= at)
            {
                Some((_, sent)) => relay_us.push(at.duration_since(*sent).as_micros() as u64),
                None => missed += 1,
            }
        }
    }
    let seen = relay_us.len();
    // The daemon's own share (gvm_vgpu_guest_relay_seconds): the settling phase's
    // observations are subtracted by taking the histogram at t0 too.
    let daemon_share = match (&at_t0, &before) {
        (Some(a), Some(b)) => Some(diff_quantiles(a, b)),
        _ => None,
    };
    let cpu_pct = (cpu1 - cpu0) as f64 / hz / wall.as_secs_f64() * 100.0;
    println!(
        "{} mode: {guests} guests × {PROCESSES} processes, busy toggled every {} ms, counters every {} ms, {:.1} s measured",
        if fanout { "fanout" } else { "flat" },
        TOGGLE.as_millis(),
        COUNTERS_EVERY.as_millis(),
        wall.as_secs_f64()
    );
    println!(
        "daemon CPU: {cpu_pct:.2} % of one core; RSS {} MiB",
        rss / 1024
    );
    match pcts(&mut relay_us) {
        Some((p50, p99, max)) => println!(
            "relay probe busy → other VM's hold read: n {seen} of {expected} expected, p50 {p50} µs, p99 {p99} µs, max {max} µs; unmatched {missed}"
        ),
        None => println!("relay: no hold changes seen (expected {expected})"),
    }
    if let Some(Some((n, p50, p99))) = daemon_share {
        println!(
            "relay, the daemon's share (busy line read → snapshot written, gvm_vgpu_guest_relay_seconds): n {n}, p50 ≤ {p50} µs, p99 ≤ {p99} µs (bucket bounds)"
        );
    }
    // Channels cut when this program ends (EPIPE, EOF) are logged too; the count is of the
    // whole run.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    println!("daemon warnings logged: {}", warnings.len());
    for w in warnings.iter().take(3) {
        println!("  {w}");
    }
}
