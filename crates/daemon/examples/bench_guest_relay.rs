//! Issue 16's benchmark 1, relay and freeze latency, without emulation: the guest side runs
//! on the host over a local socket (as `tests/guest_local.rs` does). A simulated host
//! (`gvm-vgpu-sim`), a real `gvm-vgpud` (`--guest-ack-ms 2000`, so the QMP fallback never
//! acts), two real `gvm-vgpu-agent --serve-unix` processes in place of two VMs (A at priority
//! 2, B at priority 8), and in each "VM" a CUDA program (`line_driver.c` over the fake
//! `libcuda.so.1`, under `LD_PRELOAD=libgvm_cuda.so`, `FAKE_SYNC_WAITS=1`). For fake kernels
//! of 0, 1 and 10 ms, N rounds each, p50/p90/max in µs:
//!
//! * `set` round trip: a live priority change of A (2 ↔ 3) answered after A's guest
//!   acknowledged it: the channel round trip plus the daemon's and the agent's handling;
//! * freeze, idle: `freeze` A issued → returned with the guest's "every process held";
//! * freeze, in flight: A `launch`ed one kernel, then `freeze` → returned (then `sync`);
//! * relay, hold: A's `launch` returned → `show` (polled without pause) says B held, and B
//!   acknowledged that state;
//! * relay, release: A's `sync` returned → B's held `launch` returned.
//!
//! Plus the daemon's and the agents' CPU time (utime + stime, /proc/PID/stat). The figures
//! are mostly polling intervals: the agent looks at its processes every 2 ms
//! (`WATCH_PERIOD`, guest-agent/src/agent.rs) and sends at most one busy line per 10 ms
//! (`BUSY_MIN_GAP`, guest-agent/src/outbound.rs); the daemon rearbitrates at once on a busy
//! line and otherwise every 20 ms (`REARBITRATE_PERIOD`, crates/daemon/src/agent_ingest.rs).
//! Results and their reading: docs/results/guest-relay.md.
//!
//! `cargo build --release -p gvm-vgpu-sim -p gvm-vgpud -p gvm-vgpu-agent -p gvm-cuda-shim && cargo run --release -p gvm-vgpud --example bench_guest_relay -- 30`
//!
//! The binaries are taken from the directory above this example's (`target/release` for a
//! release build). Needs root, /dev/fuse and `cc`; prints `SKIP: reason` and exits 0 without.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gvm_client::gvm_proto::{GuestEnforcement, SetMode, SetParams};
use gvm_client::Client;
use uuid::Uuid;

#[path = "common/host_rig.rs"]
mod host_rig;
#[path = "common/procstat.rs"]
mod procstat;
use host_rig::{all_managed, wait_until, Kill, SimHost};
use procstat::{cpu_ticks, rss_kib};

const KERNELS_MS: [u32; 3] = [0, 1, 10];

fn skip_reason() -> Option<String> {
    host_rig::skip_reason().or_else(|| {
        Command::new("cc")
            .arg("--version")
            .output()
            .is_err()
            .then(|| "no C compiler (cc) to build the fake libcuda".to_string())
    })
}

/// A CUDA program in a "guest", driven line by line (`crates/shim/tests/c/line_driver.c`).
struct Program {
    child: Kill,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(String, Instant)>,
}

impl Program {
    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line, and when it was read.
    fn next(&self, within: Duration) -> Option<(String, Instant)> {
        self.lines.recv_timeout(within).ok()
    }

    fn expect(&self, prefix: &str) -> Instant {
        let (l, t) = self
            .next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no {prefix} line"));
        assert!(l.starts_with(prefix), "wanted {prefix}, got {l}");
        t
    }
}

struct Rig {
    dir: tempfile::TempDir,
    bins: PathBuf,
    fake: PathBuf,
    driver: PathBuf,
}

impl Rig {
    fn agent(&self, root: &Path, uuid: &Uuid, name: &str) -> (Kill, PathBuf) {
        let guest = self.dir.path().join(name);
        std::fs::create_dir_all(guest.join("run/gvm-vgpu")).unwrap();
        let channel = root.join(format!("run/gvm-vgpu/agent/{uuid}.sock"));
        std::fs::create_dir_all(channel.parent().unwrap()).unwrap();
        let child = Command::new(self.bins.join("gvm-vgpu-agent"))
            .arg("--serve-unix")
            .arg(&channel)
            .arg("--root")
            .arg(&guest)
            .args(["--proc-dir", "/proc", "--collector", "proc"])
            .args(["--interval", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let shim = guest.join("run/gvm-vgpu/shim.sock");
        assert!(
            wait_until(Duration::from_secs(10), || shim.exists()
                && channel.exists()),
            "the agent did not come up"
        );
        (Kill(child), guest)
    }

    fn program(&self, guest: &Path, kernel_ms: u32) -> Program {
        let mut child = Command::new(&self.driver)
            .arg(&self.fake)
            .env("LD_PRELOAD", self.bins.join("libgvm_cuda.so"))
            .env("GVM_VGPU_ROOT", guest)
            .env("GVM_SHIM_SOCKET", guest.join("run/gvm-vgpu/shim.sock"))
            .env("GVM_MEMORY_LIMIT", "unlimited")
            .env("FAKE_KERNEL_MS", kernel_ms.to_string())
            .env("FAKE_SYNC_WAITS", "1")
            .env("FAKE_PCI_BUS_IDS", "0000:3B:00.0")
            .env_remove("GVM_SHIM_ARBITER")
            .env_remove("GVM_SHIM_CONTROL")
            .env_remove("GVM_VGPU_UUID")
            .env_remove("GVM_PRIORITY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((l, Instant::now())).is_err() {
                    break;
                }
            }
        });
        let p = Program {
            child: Kill(child),
            stdin,
            lines,
        };
        p.expect("ready");
        p
    }
}

fn guest(c: &mut Client, u: &Uuid) -> Option<GuestEnforcement> {
    c.show(&u.to_string()).ok()?.guest
}

fn priority(c: &mut Client, u: &Uuid, p: u8) {
    c.set(SetParams {
        target: u.to_string(),
        priority: Some(p),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
}

fn synced(c: &mut Client, u: &Uuid) -> bool {
    guest(c, u).is_some_and(|g| g.in_sync() && g.connected && g.protocol >= 2)
}

/// p50, p90 and max of `v`, µs.
fn stats(v: &mut [i64]) -> Option<(i64, i64, i64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some((v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1]))
}

fn us(d: Duration) -> i64 {
    d.as_micros() as i64
}

/// Signed `b - a`, µs.
fn us_between(a: Instant, b: Instant) -> i64 {
    if b >= a {
        us(b - a)
    } else {
        -us(a - b)
    }
}

struct Row {
    kernel_ms: u32,
    what: &'static str,
    samples: Vec<i64>,
    missed: usize,
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let bins = host_rig::bins(&[
        "gvm-vgpu-sim",
        "gvm-vgpud",
        "gvm-vgpu-agent",
        "libgvm_cuda.so",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shim/tests/c");
    let fake = dir.path().join("libcuda.so.1");
    let driver = dir.path().join("line_driver");
    let cc = |args: &[&std::ffi::OsStr]| {
        assert!(Command::new("cc").args(args).status().unwrap().success());
    };
    cc(&[
        "-shared".as_ref(),
        "-fPIC".as_ref(),
        "-Wl,-Bsymbolic".as_ref(),
        "-Wl,-soname,libcuda.so.1".as_ref(),
        "-o".as_ref(),
        fake.as_os_str(),
        src.join("fake_cuda.c").as_os_str(),
    ]);
    cc(&[
        "-o".as_ref(),
        driver.as_os_str(),
        src.join("line_driver.c").as_os_str(),
        "-ldl".as_ref(),
    ]);
    let rig = Rig {
        dir,
        bins,
        fake,
        driver,
    };

    // The simulated host (FUSE on ROOT/sys; ROOT/etc and ROOT/run stay real) and the daemon.
    let root = rig.dir.path().join("host");
    let sim = SimHost::start(&rig.bins, &root, 1);
    let (ua, ub) = (
        sim.create(&sim.parents[0], "gvmsim-1"),
        sim.create(&sim.parents[0], "gvmsim-1"),
    );
    let (daemon, mut c, log) = sim.daemon(&rig.bins, &["--guest-ack-ms", "2000"]);
    let sock = root.join("run/gvm-vgpu/api.sock");
    assert!(wait_until(Duration::from_secs(10), || all_managed(
        &mut c,
        &[ua, ub]
    )));
    priority(&mut c, &ua, 2);
    priority(&mut c, &ub, 8);
    let (agent_a, guest_a) = rig.agent(&root, &ua, "vm-a");
    let (agent_b, guest_b) = rig.agent(&root, &ub, "vm-b");
    assert!(
        wait_until(Duration::from_secs(10), || synced(&mut c, &ua)
            && synced(&mut c, &ub)),
        "both guests acknowledged their state; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pids = [
        ("gvm-vgpud", daemon.0.id()),
        ("agent A", agent_a.0.id()),
        ("agent B", agent_b.0.id()),
        ("gvm-vgpu-sim", sim.process.0.id()),
    ];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = || pids.map(|(_, p)| cpu_ticks(p));

    let mut rows: Vec<Row> = Vec::new();
    let mut fallback_seen = 0usize;
    let mut stuck = 0usize;
    let mut idle_cpu = None;
    let (cpu0, wall0) = (cpu(), Instant::now());
    for &k in &KERNELS_MS {
        let mut a = rig.program(&guest_a, k);
        let mut b = rig.program(&guest_b, 0);
        let (pa, pb) = (a.child.0.id(), b.child.0.id());
        let listed = wait_until(Duration::from_secs(10), || {
            let ga = guest(&mut c, &ua);
            let gb = guest(&mut c, &ub);
            ga.is_some_and(|g| g.processes.iter().any(|p| p.pid == pa))
                && gb.is_some_and(|g| g.processes.iter().any(|p| p.pid == pb))
        });
        if !listed {
            eprintln!(
                "the agents did not list their programs in 10 s: {:?} / {:?}",
                guest(&mut c, &ua),
                guest(&mut c, &ub)
            );
        }
        if idle_cpu.is_none() {
            // Both guests with one registered idle program each, nobody calling the API.
            let (c0, w0) = (cpu(), Instant::now());
            std::thread::sleep(Duration::from_secs(5));
            let c1 = cpu();
            let secs = w0.elapsed().as_secs_f64();
            idle_cpu = Some(
                (0..pids.len())
                    .map(|i| 100.0 * (c1[i] - c0[i]) as f64 / hz / secs)
                    .collect::<Vec<f64>>(),
            );
        }

        // The channel round trip: a live `set` answers after the guest's acknowledgement.
        let mut rt = Vec::new();
        for i in 0..rounds {
            let t = Instant::now();
            priority(&mut c, &ua, if i % 2 == 0 { 3 } else { 2 });
            rt.push(us(t.elapsed()));
        }
        priority(&mut c, &ua, 2);
        rows.push(Row {
            kernel_ms: k,
            what: "set round trip (snapshot → ack)",
            samples: rt,
            missed: 0,
        });

        // Freeze, the program idle and with one kernel in flight.
        for in_flight in [false, true] {
            let mut v = Vec::new();
            for _ in 0..rounds {
                std::thread::sleep(Duration::from_millis(30));
                if in_flight {
                    // `launch`, `freeze`, `sync`: the shim counts a kernel ended when the
                    // program synchronises (or queries an event), so the freeze, which
                    // waits for nothing in flight, completes after the sync.
                    a.send("launch");
                    a.expect("launched=");
                    let mut c2 = Client::connect(&sock).unwrap();
                    let target = ua.to_string();
                    let (tx, rx) = mpsc::channel();
                    let freezer = std::thread::spawn(move || {
                        let t = Instant::now();
                        tx.send(()).unwrap();
                        c2.freeze(&target).unwrap();
                        t.elapsed()
                    });
                    rx.recv().unwrap();
                    a.send("sync");
                    a.expect("synced=");
                    v.push(us(freezer.join().unwrap()));
                } else {
                    let t = Instant::now();
                    c.freeze(&ua.to_string()).unwrap();
                    v.push(us(t.elapsed()));
                }
                let s = c.show(&ua.to_string()).unwrap();
                let g = s.guest.unwrap();
                if s.held_by.is_some() || g.frozen_reached != Some(true) {
                    fallback_seen += 1;
                    eprintln!(
                        "freeze not acknowledged by the guest: held_by {:?}, {g:?}",
                        s.held_by
                    );
                }
                c.thaw(&ua.to_string()).unwrap();
            }
            rows.push(Row {
                kernel_ms: k,
                what: if in_flight {
                    "freeze, one kernel in flight"
                } else {
                    "freeze, program idle"
                },
                samples: v,
                missed: 0,
            });
        }

        // Relay: A (2) busy holds B (8), A idle releases it.
        let (mut decided, mut acked, mut released) = (Vec::new(), Vec::new(), Vec::new());
        let (mut missed, mut not_released) = (0, 0);
        for _ in 0..rounds {
            // Past the agent's busy-line gap (BUSY_MIN_GAP), B released and acknowledged.
            std::thread::sleep(Duration::from_millis(50));
            if !wait_until(Duration::from_secs(5), || {
                guest(&mut c, &ub).is_some_and(|g| !g.held && g.in_sync())
            }) {
                eprintln!(
                    "B not released and in sync 5 s on: {:?}",
                    guest(&mut c, &ub)
                );
                stuck += 1;
            }
            a.send("launch");
            let t0 = a.expect("launched=");
            let (mut t_dec, mut t_ack) = (None, None);
            let deadline = t0 + Duration::from_millis(u64::from(k) + 200);
            while Instant::now() < deadline {
                let Some(g) = guest(&mut c, &ub) else {
                    continue;
                };
                if g.held {
                    let now = Instant::now();
                    t_dec.get_or_insert(now);
                    if g.in_sync() {
                        t_ack = Some(now);
                        break;
                    }
                }
            }
            if let Some(t) = t_dec {
                decided.push(us_between(t0, t));
            }
            let Some(t) = t_ack else {
                missed += 1;
                a.send("sync");
                a.expect("synced=");
                continue;
            };
            acked.push(us_between(t0, t));
            b.send("launch");
            a.send("sync");
            let t_sync = a.expect("synced=");
            let t_b = b.expect("launched=");
            if t_b < t_sync {
                not_released += 1;
            }
            released.push(us_between(t_sync, t_b));
            b.send("sync");
            b.expect("synced=");
        }
        let undecided = rounds - decided.len();
        rows.push(Row {
            kernel_ms: k,
            what: "relay: A launched → B held (decided)",
            samples: decided,
            missed: undecided,
        });
        rows.push(Row {
            kernel_ms: k,
            what: "relay: A launched → B held (acked)",
            samples: acked,
            missed,
        });
        rows.push(Row {
            kernel_ms: k,
            what: "relay: A synced → B's launch returned",
            samples: released,
            missed: not_released,
        });
    }
    let (cpu1, wall) = (cpu(), wall0.elapsed().as_secs_f64());

    println!(
        "relay and freeze latency, guest side on the host over local sockets; {rounds} rounds; \
         daemon --guest-ack-ms 2000"
    );
    println!("| kernel | measure | n | p50 µs | p90 µs | max µs | missed | ≥ 2 s |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &mut rows {
        let n = r.samples.len();
        let late = r.samples.iter().filter(|&&v| v >= 2_000_000).count();
        match stats(&mut r.samples) {
            Some((p50, p90, max)) => println!(
                "| {} ms | {} | {n} | {p50} | {p90} | {max} | {} | {late} |",
                r.kernel_ms, r.what, r.missed
            ),
            None => println!(
                "| {} ms | {} | 0 | – | – | – | {} | 0 |",
                r.kernel_ms, r.what, r.missed
            ),
        }
    }
    println!(
        "missed: for 'held' rows, rounds where show never said B held (acked) within kernel + 200 ms; \
         for the release row, rounds where B's launch returned before A's sync did"
    );
    println!(
        "≥ 2 s: calls that waited out the daemon's --guest-ack-ms 2000 (the guest did not \
         acknowledge the snapshot in time)"
    );
    println!("relay rounds that began with B not released and in sync after 5 s: {stuck}");
    println!(
        "freezes not acknowledged by the guest (fallback held_by set or frozen_reached not true): {fallback_seen}"
    );
    println!("CPU, % of one core (utime + stime from /proc/PID/stat):");
    let idle = idle_cpu.unwrap_or_default();
    for (i, (name, _)) in pids.iter().enumerate() {
        println!(
            "  {name}: {:.2} % over the whole run ({:.1} s, {:.2} s CPU; the relay rounds poll show without pause); {:.2} % idle (5 s, one idle program per guest); RSS {} MiB",
            100.0 * (cpu1[i] - cpu0[i]) as f64 / hz / wall,
            wall,
            (cpu1[i] - cpu0[i]) as f64 / hz,
            idle.get(i).copied().unwrap_or(0.0),
            rss_kib(pids[i].1) / 1024
        );
    }
    println!(
        "The figures are mostly polling intervals: the agent looks at its processes every 2 ms \
         (busy and idle, freeze completion), sends at most one busy line per 10 ms, and the \
         daemon rearbitrates on each busy line and otherwise every 20 ms."
    );
}
