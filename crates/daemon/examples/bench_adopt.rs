//! Benchmark on the simulated host (needs root and /dev/fuse):
//! define + start + adopt N vGPUs over P parents with K owners each, time to all
//! tuned, steady-state daemon CPU and RSS, and retune latency p50/p99.
//!
//! `cargo build --release -p gvm-vgpu-sim -p gvm-vgpud && cargo run --release -p gvm-vgpud --example bench_adopt -- 1000 16 4`
//!
//! vGPUs are of catalog type `sim-1c` (kernel `gvmsim-6`, 64 per simulated GPU, priority
//! 12), so 16 parents hold 1,000.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gvm_client::gvm_proto::{DefineParams, SetMode, SetParams};
use gvm_client::Client;

/// Catalog type of the benchmark's vGPUs, and the priority the catalog gives it.
const TYPE: &str = "sim-1c";
const TYPE_PRIORITY: &str = "12";

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release")
        .join(name)
}

#[path = "common/procstat.rs"]
mod procstat;
use procstat::{cpu_ticks, rss_kib};

fn owners(mount: &Path) -> Vec<(u32, String, u32)> {
    std::fs::read_to_string(mount.join("sys/kernel/debug/gvm-sim/owners"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.to_string(),
                f.get(2)?.parse().ok()?,
            ))
        })
        .collect()
}

fn knob(mount: &Path, pid: u32, gpu: u32, name: &str) -> String {
    std::fs::read_to_string(mount.join(format!(
        "sys/kernel/debug/nvidia-uvm/processes/{pid}/{gpu}/{name}"
    )))
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// Owners are real processes, children of the simulator: make sure the process and
/// file limits (inherited by the simulator) leave room for them.
fn raise_limits(owners: u32) {
    for (res, name) in [
        (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
    ] {
        let want = u64::from(owners) * 2 + 4096;
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
        unsafe {
            if libc::getrlimit(res, &mut l) == 0 && l.rlim_cur < want {
                let old = l.rlim_cur;
                l.rlim_cur = want.min(l.rlim_max);
                let ok = libc::setrlimit(res, &l) == 0;
                println!("raised {name} from {old} to {} ({ok})", l.rlim_cur);
            }
        }
    }
}

fn main() {
    let per_call = std::env::args().any(|a| a == "--per-call");
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, gpus, per) = (
        *args.first().unwrap_or(&1000),
        *args.get(1).unwrap_or(&16),
        *args.get(2).unwrap_or(&4),
    );
    raise_limits(n * per);
    let dir = tempfile::tempdir().unwrap();
    // The sim mounts on ROOT/sys; ROOT/etc and ROOT/run stay real for the daemon.
    let root = dir.path().join("host");
    let mount = root.clone();
    std::fs::create_dir_all(&root).unwrap();
    let mut sim = Command::new(bin("gvm-vgpu-sim"))
        .arg("--root")
        .arg(&mount)
        .args([
            "--gpus",
            &gpus.to_string(),
            "--owners-per-vgpu",
            &per.to_string(),
            // Removing the benchmark's vGPUs kills their owners (a kernel would wait).
            "--held-remove",
            "kill",
            "--foreground",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("build gvm-vgpu-sim in release first");
    while std::fs::read_dir(mount.join("sys/class/mdev_bus"))
        .map(|r| r.count())
        .unwrap_or(0)
        < gpus as usize
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Extra daemon flags for experiments, e.g. GVM_BENCH_DAEMON_ARGS="--verify-s 120".
    let extra: Vec<String> = std::env::var("GVM_BENCH_DAEMON_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut daemon = Command::new(bin("gvm-vgpud"))
        .arg("--root")
        .arg(&root)
        .args(&extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("build gvm-vgpud in release first");
    let sock = root.join("run/gvm-vgpu/api.sock");
    let mut c = loop {
        if let Ok(mut c) = Client::connect(&sock) {
            if c.ping().is_ok() {
                break c;
            }
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            let _ = sim.kill();
            panic!("gvm-vgpud exited with {status} before answering");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let parents: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(mount.join("sys/class/mdev_bus"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };

    // 1. define + start + adopt.
    let t0 = Instant::now();
    let mut uuids = Vec::new();
    let (mut in_define, mut in_start) = (Duration::ZERO, Duration::ZERO);
    let item = |i: u32| DefineParams {
        uuid: None,
        parent: parents[i as usize % parents.len()].clone(),
        type_name: TYPE.into(),
        autostart: false,
        force: false,
        overrides: Default::default(),
        owner_uids: Vec::new(),
    };
    if per_call {
        // One `define` and one `start` call per vGPU, as a shell loop over the CLI would.
        for i in 0..n {
            let td = Instant::now();
            let d = c.define(item(i)).unwrap();
            let ts = Instant::now();
            c.start(&d.uuid.to_string()).unwrap();
            in_start += ts.elapsed();
            in_define += ts - td;
            uuids.push(d.uuid);
        }
    } else {
        // `define --from FILE --start`: batches of up to 256 with one group commit each.
        let report = c.define_batch((0..n).map(item).collect(), true).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        uuids.extend(report.started);
    }
    let started = t0.elapsed();
    let want = (n * per) as usize;
    loop {
        let o = owners(&mount);
        let tuned = o.len() >= want
            && o.iter()
                .all(|(pid, _, gpu)| knob(&mount, *pid, *gpu, "compute.priority") == TYPE_PRIORITY);
        if tuned {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            println!("gave up waiting: {} owners", o.len());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_tuned = t0.elapsed();
    if per_call {
        println!(
            "per-call API: time in define calls {:.2?}, in start calls {:.2?}",
            in_define, in_start
        );
    }
    println!(
        "define+start {n} vGPUs on {gpus} parents ({}): {:.2?} ({:.0} vGPUs/s); all {} owners tuned after {:.2?}",
        if per_call { "a define and a start call each" } else { "define_batch with start" },
        started,
        n as f64 / started.as_secs_f64(),
        want,
        all_tuned
    );

    // 2. steady state.
    let pid = daemon.id();
    std::thread::sleep(Duration::from_secs(2));
    let (c0, w0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let ticks = cpu_ticks(pid) - c0;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    println!(
        "steady state with {n} vGPUs and {} owners: {:.2}% of one core, RSS {} MiB",
        owners(&mount).len(),
        100.0 * ticks as f64 / hz / w0.elapsed().as_secs_f64(),
        rss_kib(pid) / 1024
    );

    // 3. retune latency: command → every owner's knob written (the call returns after the writes).
    let by_uuid = owners(&mount);
    let mut lat = Vec::new();
    for i in 0..200usize {
        let u = uuids[(i * 7919) % uuids.len()];
        let prio = (i % 16) as u8;
        let t = Instant::now();
        c.set(SetParams {
            target: u.to_string(),
            priority: Some(prio),
            mode: SetMode::Live,
            ..SetParams::default()
        })
        .unwrap();
        lat.push(t.elapsed());
        for (p, _, g) in by_uuid.iter().filter(|(_, uu, _)| *uu == u.to_string()) {
            assert_eq!(knob(&mount, *p, *g, "compute.priority"), prio.to_string());
        }
    }
    lat.sort();
    println!(
        "retune latency over 200 sets ({per} owners each): p50 {:.2?} p99 {:.2?}",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    // SAFETY: kill(2) on our own children.
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
        libc::kill(sim.id() as i32, libc::SIGTERM);
    }
    let _ = daemon.wait();
    let _ = sim.wait();
}
