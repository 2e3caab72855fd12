//! End-to-end: the built `libgvm_cuda.so` preloaded into a small C program that reaches a fake
//! `libcuda.so.1` the way the CUDA runtime does (dlopen + dlsym + cuGetProcAddress). Needs
//! `cc`; skips with a printed reason without it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use gvm_cuda::config::Knobs;
use gvm_cuda::control::ControlMap;

const MIB: u64 = 1 << 20;

struct Rig {
    dir: tempfile::TempDir,
    shim: PathBuf,
    fake: PathBuf,
    driver: PathBuf,
}

/// The cdylib, freshly built: `cargo test` builds only the rlib for its tests, so build the
/// shared object once per test process with the same cargo, profile and target directory.
fn shim_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/preload-HASH -> target/<profile>/libgvm_cuda.so
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target dir layout");
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--lib", "-p", "gvm-cuda-shim"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if let Some(target) = profile_dir.parent() {
                cargo.env("CARGO_TARGET_DIR", target);
            }
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            let st = cargo.status().expect("run cargo build");
            assert!(st.success(), "building libgvm_cuda.so failed");
            profile_dir.join("libgvm_cuda.so")
        })
        .clone()
}

fn rig() -> Option<Rig> {
    if Command::new("cc").arg("--version").output().is_err() {
        println!("SKIP: no C compiler (cc) to build the fake libcuda");
        return None;
    }
    let shim = shim_path();
    assert!(shim.exists(), "{} was not built", shim.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    let fake = dir.path().join("libcuda.so.1");
    let driver = dir.path().join("driver");
    let ok = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(&fake)
        .arg(src.join("fake_cuda.c"))
        .status()
        .expect("run cc");
    assert!(ok.success(), "building the fake libcuda failed");
    let ok = Command::new("cc")
        .arg("-o")
        .arg(&driver)
        .arg(src.join("driver.c"))
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(ok.success(), "building the driver failed");
    Some(Rig {
        dir,
        shim,
        fake,
        driver,
    })
}

impl Rig {
    fn control(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, mode: &str, control: &Path) -> Command {
        let mut c = Command::new(&self.driver);
        c.arg(&self.fake)
            .arg(mode)
            .env("LD_PRELOAD", &self.shim)
            .env("GVM_SHIM_CONTROL", control)
            .env("GVM_SHIM_ARBITER", self.dir.path().join("arbiter"))
            .env("GVM_SHIM_SOCKET", "off")
            .env("GVM_MEMORY_LIMIT", "1GiB")
            .env_remove("GVM_HOST_SWAP")
            .env_remove("GVM_PRIORITY");
        c
    }

    /// Run `driver FAKE launch` on the block at `control`, registering at the daemon socket
    /// `sock`, to its end.
    fn launch_registering_at(&self, control: &Path, sock: &Path) -> std::process::Output {
        self.command("launch", control)
            .env("GVM_SHIM_SOCKET", sock)
            .output()
            .expect("run")
    }

    /// Start `driver FAKE arb N STAY_MS GAP_MS` at `priority` with fake kernels of
    /// `kernel_ms` (launches and timing in `shape`: launches, stay, gap).
    fn spawn_arb(
        &self,
        name: &str,
        priority: u32,
        kernel_ms: i64,
        shape: (u32, u32, u32),
        extra: &[(&str, &str)],
    ) -> (std::process::Child, mpsc::Receiver<String>) {
        let (launches, stay_ms, gap_ms) = shape;
        let mut c = self.command("arb", &self.control(name));
        c.args([
            launches.to_string(),
            stay_ms.to_string(),
            gap_ms.to_string(),
        ])
        .env("GVM_PRIORITY", priority.to_string())
        .env("FAKE_KERNEL_MS", kernel_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in extra {
            c.env(k, v);
        }
        spawn_lines(c)
    }

    fn run(&self, mode: &str, control: &Path, swap: bool) -> HashMap<String, String> {
        let mut c = self.command(mode, control);
        if swap {
            c.env("GVM_HOST_SWAP", "1");
        }
        let out = c.output().expect("run the driver");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "driver {mode} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kv: HashMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            kv.get("strlen_ok").map(String::as_str),
            Some("1"),
            "plain dlsym intact"
        );
        assert_eq!(
            kv.get("same_alloc").map(String::as_str),
            Some("1"),
            "dlsym and cuGetProcAddress give the one wrapper"
        );
        assert_eq!(kv.get("ptsz_distinct").map(String::as_str), Some("1"));
        assert_eq!(
            kv.get("gpa_12000_is_v2_wrapper").map(String::as_str),
            Some("1"),
            "cuGetProcAddress asked at 12000 is the v2 wrapper"
        );
        assert_eq!(
            kv.get("gpa_11030_is_v1").map(String::as_str),
            Some("1"),
            "asked at 11030 it is the v1 wrapper"
        );
        kv
    }
}

/// Start `c` (stdout piped) and hand its output over line by line.
fn spawn_lines(mut c: Command) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = c.spawn().expect("spawn driver");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn num(kv: &HashMap<String, String>, k: &str) -> u64 {
    kv.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {k} in {kv:?}"))
}

#[test]
fn the_memory_limit_is_enforced_and_reported() {
    let Some(rig) = rig() else { return };
    let ctl = rig.control("limit");
    let kv = rig.run("limit", &ctl, false);
    assert_eq!(num(&kv, "r1"), 0, "512 MiB fits in 1 GiB");
    assert_eq!(
        num(&kv, "r2"),
        2,
        "768 MiB more is CUDA_ERROR_OUT_OF_MEMORY"
    );
    assert_eq!(num(&kv, "r3"), 0, "fits again after the free");
    assert_eq!(
        num(&kv, "total"),
        1024 * MIB,
        "cuMemGetInfo total is the limit"
    );
    assert_eq!(
        num(&kv, "free"),
        512 * MIB,
        "cuMemGetInfo free is what is left of it"
    );
    assert_eq!(num(&kv, "devtotal"), 1024 * MIB);
    assert_eq!(
        num(&kv, "driver_allocs"),
        2,
        "the refused allocation never reached the driver"
    );
    let block = ControlMap::open(&ctl).expect("the shim created its block");
    let b = block.block();
    assert!(b.is_standalone());
    assert_eq!(b.memory_limit.load(Ordering::Relaxed), 1 << 30);
    assert_eq!(b.memory_current.load(Ordering::Relaxed), 768 * MIB);
}

#[test]
fn over_limit_memory_spills_to_host_when_swap_is_allowed() {
    let Some(rig) = rig() else { return };
    let ctl = rig.control("swap");
    let kv = rig.run("swap", &ctl, true);
    assert_eq!(num(&kv, "r"), 0);
    assert_eq!(num(&kv, "managed"), 1, "placed in managed memory");
    assert_eq!(num(&kv, "advise"), 1, "advised to prefer the host");
    assert_eq!(num(&kv, "driver_allocs"), 0);
    let block = ControlMap::open(&ctl).expect("block");
    assert_eq!(
        block.block().swap_current.load(Ordering::Relaxed),
        2048 * MIB
    );
    assert_eq!(block.block().memory_current.load(Ordering::Relaxed), 0);
}

#[test]
fn launches_are_counted_per_flavour_and_ended_at_synchronise() {
    let Some(rig) = rig() else { return };
    let ctl = rig.control("launch");
    let kv = rig.run("launch", &ctl, false);
    assert_eq!(num(&kv, "launch"), 5, "flags 0 reached cuLaunchKernel");
    assert_eq!(
        num(&kv, "launch_ptsz"),
        3,
        "flags 2 reached cuLaunchKernel_ptsz"
    );
    assert_eq!(num(&kv, "launch_ex"), 2);
    assert_eq!(num(&kv, "sync"), 1);
    let block = ControlMap::open(&ctl).expect("block");
    assert_eq!(block.block().submitted.load(Ordering::Relaxed), 10);
    assert_eq!(block.block().ended.load(Ordering::Relaxed), 10);
}

#[test]
fn a_frozen_block_holds_launches_until_thawed() {
    let Some(rig) = rig() else { return };
    let ctl_path = rig.control("freeze");
    // The daemon's side: a block that exists before the process starts, already frozen.
    let ctl = ControlMap::create(&ctl_path, &Knobs::default(), 0).expect("create block");
    ctl.set_frozen(true);
    let mut c = rig.command("freeze", &ctl_path);
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    let (mut child, rx) = spawn_lines(c);
    let wait_for = |prefix: &str, secs: u64| loop {
        match rx.recv_timeout(Duration::from_secs(secs)) {
            Ok(l) if l.starts_with(prefix) => return Some(l),
            Ok(_) => continue,
            Err(_) => return None,
        }
    };
    assert!(wait_for("before", 10).is_some(), "driver started");
    assert_eq!(
        wait_for("after", 1),
        None,
        "the launch is held while frozen"
    );
    let b = ctl.block();
    assert_eq!(
        b.waiting.load(Ordering::Acquire),
        1,
        "one thread held at the gate"
    );
    assert_eq!(b.submitted.load(Ordering::Acquire), 0);
    ctl.set_frozen(false);
    let after = wait_for("after", 10).expect("the launch goes once thawed");
    assert_eq!(after, "after=1");
    assert!(child.wait().expect("wait").success());
    assert_eq!(b.submitted.load(Ordering::Acquire), 1);
    assert_eq!(b.waiting.load(Ordering::Acquire), 0);
    assert!(!b.is_standalone(), "the shim obeyed the daemon's block");
}

#[test]
fn a_non_cuda_process_runs_unchanged() {
    let shim = shim_path();
    assert!(shim.exists(), "{} was not built", shim.display());
    let st = Command::new("/bin/true")
        .env("LD_PRELOAD", &shim)
        .status()
        .expect("run /bin/true");
    assert!(st.success());
    let out = Command::new("sh")
        .args(["-c", "echo hello"])
        .env("LD_PRELOAD", &shim)
        .output()
        .expect("run sh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(
        out.stderr.is_empty(),
        "no shim chatter without CUDA: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_busy_more_important_process_holds_a_less_important_launch() {
    let Some(rig) = rig() else { return };
    // The less important process joins with a first launch and launches again 300 ms later;
    // meanwhile the important one joins and launches a 1 s "kernel".
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 0, (2, 0, 300), &[]);
    assert!(value_of(&lo_rx, "launched", 10).is_some(), "low started");
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, 1000, (1, 2000, 0), &[]);
    assert!(value_of(&hi_rx, "launched", 10).is_some(), "high started");
    let longest = value_of(&lo_rx, "longest_ms", 10).expect("low finished");
    assert!(
        (300..2500).contains(&longest),
        "the second low launch waited for the high kernel (~1 s less the 300 ms gap): {longest} ms"
    );
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    assert_eq!(b.block().arb_waits.load(Ordering::Relaxed), 1);
    assert_eq!(b.block().arb_timeouts.load(Ordering::Relaxed), 0);
    let h = ControlMap::open(&rig.control("hi")).expect("block");
    assert!(
        h.block().arb_state.load(Ordering::Relaxed) & gvm_cuda::control::ARB_HAS_LOWER != 0
            || hi.try_wait().ok().flatten().is_some(),
        "the high process saw the low one"
    );
    let _ = hi.kill();
    let _ = hi.wait();
}

#[test]
fn an_important_process_records_no_event_per_launch_and_still_goes_idle() {
    let Some(rig) = rig() else { return };
    // The less important process joins, then launches again 100 ms later; the important one
    // launches one 500 ms "kernel" in between and stays alive 3 s. It marks the stream
    // instead of recording an event, and its helper asks the driver when the stream is done:
    // the low launch waits for the kernel, not for the process to exit.
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 0, (2, 0, 100), &[]);
    assert!(value_of(&lo_rx, "launched", 10).is_some(), "low started");
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, 500, (1, 3000, 0), &[]);
    assert!(value_of(&hi_rx, "launched", 10).is_some(), "high started");
    let records = value_of(&hi_rx, "records", 10).expect("high launched");
    assert_eq!(
        records, 0,
        "no event recorded per launch by the busy process"
    );
    let longest = value_of(&lo_rx, "longest_ms", 10).expect("low finished");
    assert!(
        (200..2500).contains(&longest),
        "the low launch waited for the 500 ms kernel, and not until the high process left: {longest} ms"
    );
    assert!(lo.wait().expect("wait").success());
    let _ = hi.kill();
    let _ = hi.wait();
}

#[test]
fn an_equal_or_less_important_busy_process_holds_nobody() {
    let Some(rig) = rig() else { return };
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 600, (1, 2000, 0), &[]);
    assert!(value_of(&lo_rx, "launched", 10).is_some());
    let (mut peer, peer_rx) = rig.spawn_arb("peer", 8, 0, (3, 0, 0), &[]);
    let longest = value_of(&peer_rx, "longest_ms", 10).expect("peer finished");
    assert!(longest < 200, "an equal peer is not held: {longest} ms");
    assert!(peer.wait().expect("wait").success());
    let _ = lo.kill();
    let _ = lo.wait();
}

#[test]
fn a_dead_busy_process_is_reaped_instead_of_holding_forever() {
    let Some(rig) = rig() else { return };
    // The important process's kernel never ends; it is killed while busy, between the low
    // process's two launches.
    let (mut lo, lo_rx) =
        rig.spawn_arb("lo", 8, 0, (2, 0, 600), &[("GVM_ARB_MAX_HOLD_MS", "20000")]);
    assert!(value_of(&lo_rx, "launched", 10).is_some());
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, -1, (1, 10_000, 0), &[]);
    assert!(value_of(&hi_rx, "launched", 10).is_some());
    hi.kill().expect("kill");
    hi.wait().expect("reap child");
    let longest = value_of(&lo_rx, "longest_ms", 30).expect("low finished");
    assert!(
        longest < 2000,
        "released by reaping, not by the 20 s maximum: {longest} ms"
    );
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    assert_eq!(
        b.block().arb_waits.load(Ordering::Relaxed),
        1,
        "it was held"
    );
    assert_eq!(b.block().arb_timeouts.load(Ordering::Relaxed), 0);
}

#[test]
fn a_live_process_stuck_busy_holds_at_most_the_maximum() {
    let Some(rig) = rig() else { return };
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 0, (3, 0, 200), &[("GVM_ARB_MAX_HOLD_MS", "300")]);
    assert!(value_of(&lo_rx, "launched", 10).is_some());
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, -1, (1, 5_000, 0), &[]);
    assert!(value_of(&hi_rx, "launched", 10).is_some());
    let total = value_of(&lo_rx, "total_ms", 10).expect("low finished");
    assert!(
        (950..4000).contains(&total),
        "two gaps of 200 ms and two holds of about the 300 ms maximum: {total} ms"
    );
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    assert_eq!(b.block().arb_timeouts.load(Ordering::Relaxed), 2);
    let _ = hi.kill();
    let _ = hi.wait();
}

#[test]
fn the_queue_bound_keeps_one_launch_in_flight() {
    let Some(rig) = rig() else { return };
    let extra = [("GVM_QUEUE_ALWAYS", "1"), ("GVM_QUEUE_DEPTH", "1")];
    let (mut p, rx) = rig.spawn_arb("q", 8, 60, (4, 0, 0), &extra);
    let total = value_of(&rx, "total_ms", 10).expect("finished");
    assert!(
        total >= 170,
        "each launch waited for the previous 60 ms kernel: {total} ms"
    );
    assert!(p.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("q")).expect("block");
    assert_eq!(b.block().queue_waits.load(Ordering::Relaxed), 3);
    assert_eq!(b.block().launches[0].load(Ordering::Relaxed), 4);
}

#[test]
fn short_kernels_fill_the_queue_budget_beyond_the_count_floor() {
    let Some(rig) = rig() else { return };
    // 4 ms fake kernels, back to back: the fake GPU's queued work right after a launch is
    // what the shim let this process queue.
    const KERNEL_MS: i64 = 4;
    const KERNEL_US: u64 = 4_000;
    // A more important process that stays registered: the low one yields, so its queue is
    // bounded (at the default count floor of 2, and by the budget beyond it).
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, 0, (1, 20_000, 0), &[]);
    assert!(value_of(&hi_rx, "launched", 10).is_some(), "high started");
    // 40 launches with no gap; (queued µs after the last launch, the most after any launch).
    let run = |name: &str, extra: &[(&str, &str)]| {
        let (mut lo, rx) = rig.spawn_arb(name, 8, KERNEL_MS, (40, 0, 0), extra);
        let last = value_of(&rx, "queued_us", 30).expect("low finished");
        let most = value_of(&rx, "max_queued_us", 5).expect("low finished");
        assert!(lo.wait().expect("wait").success());
        let b = ControlMap::open(&rig.control(name)).expect("block");
        let state = b.block().arb_state.load(Ordering::Relaxed);
        assert!(
            state & gvm_cuda::control::ARB_HAS_HIGHER != 0,
            "{name}: the low process saw the high one ({state:#x})"
        );
        assert!(
            b.block().queue_waits.load(Ordering::Relaxed) > 0,
            "{name}: the queue bound held some launches"
        );
        (last, most)
    };
    // The count floor alone: at most the kernel still running and the one just launched.
    let (last, most) = run("floor", &[("GVM_QUEUE_BUDGET_US", "0")]);
    println!("budget 0: queued_us={last} max_queued_us={most}");
    assert!(
        most <= 2 * KERNEL_US + 500,
        "the count floor keeps two kernels queued: {most} µs (last {last} µs)"
    );
    // A budget of 6.5 kernels: once the kernel's 4 ms is learned, up to 6 are queued.
    let (last, most) = run("budget", &[("GVM_QUEUE_BUDGET_US", "26000")]);
    println!("budget 26000: queued_us={last} max_queued_us={most}");
    assert!(
        most >= 4 * KERNEL_US,
        "short kernels fill the budget beyond the floor: {most} µs (last {last} µs)"
    );
    assert!(
        most <= 26_000 + 500,
        "never more than the budget: {most} µs (last {last} µs)"
    );
    // Under GVM_QUEUE_ALWAYS the count is the bound: the budget does not apply.
    let always = [
        ("GVM_QUEUE_ALWAYS", "1"),
        ("GVM_QUEUE_DEPTH", "1"),
        ("GVM_QUEUE_BUDGET_US", "26000"),
    ];
    let (last, most) = run("always", &always);
    println!("always, depth 1, budget 26000: queued_us={last} max_queued_us={most}");
    assert!(
        most <= KERNEL_US + 500,
        "one kernel in flight under GVM_QUEUE_ALWAYS: {most} µs (last {last} µs)"
    );
    let _ = hi.kill();
    let _ = hi.wait();
}

/// The byte offset of slot `i`'s GPU-side gate word in an arbitration block.
fn gate_word_offset(i: usize) -> u64 {
    use gvm_cuda::arbiter::{ArbiterBlock, Slot};
    (std::mem::offset_of!(ArbiterBlock, slots)
        + i * std::mem::size_of::<Slot>()
        + std::mem::offset_of!(Slot, gpu_hold)) as u64
}

#[test]
fn a_yielding_process_holds_its_queued_work_on_the_gpu_instead_of_bounding_it() {
    let Some(rig) = rig() else { return };
    const KERNEL_MS: i64 = 4;
    const KERNEL_US: u64 = 4_000;
    let gpu = [("FAKE_HOST_REGISTER", "1")];
    // Alone on the GPU: nothing to yield to, so no waits.
    let (mut solo, rx) = rig.spawn_arb("solo", 8, KERNEL_MS, (5, 0, 0), &gpu);
    assert_eq!(value_of(&rx, "waits", 30), Some(0), "alone: no GPU waits");
    assert!(solo.wait().expect("wait").success());
    // A more important process registered first (slot 0), idle: the low one (slot 1) puts a
    // wait on its own gate word in front of every launch, records no events and keeps no
    // count bound: its 40 kernels of 4 ms all queue.
    let (mut hi, hi_rx) = rig.spawn_arb("hi", 0, 0, (1, 20_000, 0), &gpu);
    assert!(value_of(&hi_rx, "launched", 10).is_some(), "high started");
    let (mut lo, rx) = rig.spawn_arb("lo", 8, KERNEL_MS, (40, 0, 0), &gpu);
    // In the order the driver prints them.
    let records = value_of(&rx, "records", 30).expect("low finished");
    let most = value_of(&rx, "max_queued_us", 5).expect("low finished");
    let waits = value_of(&rx, "waits", 5).expect("low finished");
    let bad = value_of(&rx, "wait_bad", 5).expect("low finished");
    let offset = value_of(&rx, "wait_offset", 5).expect("a wait was queued");
    assert!(lo.wait().expect("wait").success());
    assert_eq!((waits, bad), (40, 0), "one well-formed wait per launch");
    assert_eq!(
        offset,
        gate_word_offset(1),
        "the wait reads the low slot's own word"
    );
    assert_eq!(
        records, 0,
        "no events: nothing to bound, not busy for anyone"
    );
    assert!(
        most >= 30 * KERNEL_US,
        "no count bound: the queue holds the launches ({most} µs)"
    );
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    assert_eq!(
        b.block().queue_waits.load(Ordering::Relaxed),
        0,
        "never waited on the queue"
    );
    // GVM_GPU_GATE=0 turns it off: the CPU-side count bound again.
    let off = [("FAKE_HOST_REGISTER", "1"), ("GVM_GPU_GATE", "0")];
    let (mut lo, rx) = rig.spawn_arb("off", 8, KERNEL_MS, (40, 0, 0), &off);
    assert_eq!(value_of(&rx, "waits", 30), Some(0), "gate off: no waits");
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("off")).expect("block");
    assert!(
        b.block().queue_waits.load(Ordering::Relaxed) > 0,
        "bounded on the CPU"
    );
    // A driver that cannot map the block for the GPU: the same CPU-side fallback.
    let (mut lo, rx) = rig.spawn_arb("nomap", 8, KERNEL_MS, (40, 0, 0), &[]);
    assert_eq!(value_of(&rx, "waits", 30), Some(0), "no mapping: no waits");
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("nomap")).expect("block");
    assert!(
        b.block().queue_waits.load(Ordering::Relaxed) > 0,
        "bounded on the CPU"
    );
    let _ = hi.kill();
    let _ = hi.wait();
}

#[test]
fn the_gpu_gate_closes_while_the_other_is_busy_and_its_watchdog_ends_an_endless_hold() {
    let Some(rig) = rig() else { return };
    let gpu = [("FAKE_HOST_REGISTER", "1"), ("GVM_ARB_MAX_HOLD_MS", "300")];
    // A bystander at the lowest priority gives the next process someone to be busy for.
    let (by, by_rx) = rig.spawn_arb("by", 16, 0, (1, 10_000, 0), &gpu[..1]);
    assert!(value_of(&by_rx, "launched", 10).is_some());
    // A more important process becomes busy and stays so (its kernel never ends, its
    // heartbeat stays fresh); then a low one registers: its gate word is set at once.
    let (hi, hi_rx) = rig.spawn_arb("hi", 0, -1, (1, 10_000, 0), &gpu[..1]);
    assert!(value_of(&hi_rx, "launched", 10).is_some());
    // Each of its 3 launches is held on the CPU for the 300 ms maximum, then goes with a
    // wait that finds the word set (a GPU would stop there); the watchdog clears the word
    // once it has been set for the maximum.
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 0, (3, 1_500, 0), &gpu);
    let waits = value_of(&lo_rx, "waits", 20).expect("low finished");
    let held = value_of(&lo_rx, "waits_held", 5).expect("low finished");
    assert_eq!(waits, 3);
    assert!(
        held >= 1,
        "a wait queued while the other was busy found the word set"
    );
    assert_eq!(
        value_of(&lo_rx, "wait_word_end", 10),
        Some(0),
        "the watchdog ended the GPU hold after the maximum"
    );
    assert!(lo.wait().expect("wait").success());
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    assert!(
        b.block().arb_timeouts.load(Ordering::Relaxed) >= 4,
        "three CPU holds and at least one GPU hold ended at the maximum"
    );
    for mut p in [hi, by] {
        let _ = p.kill();
        let _ = p.wait();
    }
}

/// Read `key=value` lines from `rx` until `key` appears (at most `secs`).
fn value_of(rx: &mpsc::Receiver<String>, key: &str, secs: u64) -> Option<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        if line == key {
            return Some(0);
        }
        if let Some(v) = line.strip_prefix(&format!("{key}=")) {
            return v.parse().ok();
        }
    }
}

/// A one-shot fake gvm-vgpud on `path`: accepts one connection, hands back the request line
/// and the descriptor that came with it, answers `reply`, then reports when the connection
/// ends (the process exited).
fn fake_daemon(
    path: &Path,
    reply: &'static str,
) -> (
    mpsc::Receiver<(String, Option<OwnedFd>)>,
    mpsc::Receiver<()>,
) {
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind the fake daemon");
    let (line_tx, line_rx) = mpsc::channel();
    let (eof_tx, eof_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut line = Vec::new();
        let mut handed = None;
        let mut buf = [0u8; 4096];
        while !line.contains(&b'\n') {
            match gvm_cuda::sys::recv_with_fd(s.as_fd(), &mut buf) {
                Ok((0, _)) | Err(_) => return,
                Ok((n, fd)) => {
                    if handed.is_none() {
                        handed = fd;
                    }
                    line.extend_from_slice(&buf[..n]);
                }
            }
        }
        let _ = line_tx.send((String::from_utf8_lossy(&line).into_owned(), handed));
        let _ = std::io::Write::write_all(&mut &s, reply.as_bytes());
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &s, &mut rest);
        let _ = eof_tx.send(());
    });
    (line_rx, eof_rx)
}

#[test]
fn the_shim_registers_its_block_and_gpus_and_holds_the_connection_until_exit() {
    let Some(rig) = rig() else { return };
    let sock = rig.dir.path().join("shim.sock");
    let (lines, eof) = fake_daemon(&sock, "{\"ok\":true,\"host_pid\":1,\"gpu\":8}\n");
    let ctl = rig.control("registered");
    let mut c = rig.command("arb", &ctl);
    c.args(["1", "300"])
        .env("GVM_SHIM_SOCKET", &sock)
        .env("FAKE_PCI_BUS_IDS", "0000:AF:00.0,0000:3B:00.0")
        .env("GVM_VGPU_UUID", "6f6b0f4e-6a43-4a4e-9d5c-1b8f3c2a9e10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn driver");
    let pid = child.id();
    let (line, handed) = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the shim registered");
    assert!(line.ends_with('\n') && line.len() < 4096);
    assert!(line.contains(&format!("\"pid\":{pid},")), "{line}");
    assert!(line.contains("\"version\":2,"), "{line}");
    assert!(
        line.contains(&format!("\"control\":\"{}\"", ctl.display())),
        "a file block is described by its path: {line}"
    );
    assert!(
        line.contains("\"gpus\":[{\"ordinal\":0,\"pci_bus_id\":\"0000:AF:00.0\"},{\"ordinal\":1,\"pci_bus_id\":\"0000:3B:00.0\"}]"),
        "{line}"
    );
    assert!(line.contains("\"vgpu_uuid\":\"6f6b0f4e-6a43-4a4e-9d5c-1b8f3c2a9e10\""));
    // The block file's own descriptor came with the line.
    let handed = std::fs::File::from(handed.expect("a descriptor with the line"));
    let (a, b) = (
        handed.metadata().expect("fstat"),
        std::fs::metadata(&ctl).expect("stat"),
    );
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!(
        b.permissions().mode() & 0o777,
        0o600,
        "a file block is made 0600"
    );
    assert!(
        eof.recv_timeout(Duration::from_millis(150)).is_err(),
        "the connection stays open while the process lives"
    );
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    eof.recv_timeout(Duration::from_secs(5))
        .expect("the connection ends with the process");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("no daemon"),
        "registered, so no warning: {err}"
    );
}

#[test]
fn by_default_the_block_is_a_sealed_memfd_handed_over_and_no_file_in_dev_shm() {
    let Some(rig) = rig() else { return };
    let root = rig.dir.path().join("root");
    std::fs::create_dir_all(root.join("dev/shm")).expect("shm dir");
    let sock = rig.dir.path().join("memfd.sock");
    let (lines, eof) = fake_daemon(&sock, "{\"ok\":true,\"host_pid\":1,\"gpu\":0}\n");
    let mut c = rig.command("arb", &rig.control("unused"));
    c.args(["1", "300"])
        .env_remove("GVM_SHIM_CONTROL")
        .env("GVM_VGPU_ROOT", &root)
        .env("GVM_SHIM_SOCKET", &sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn driver");
    let pid = child.id();
    let (line, handed) = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the shim registered");
    assert!(
        line.contains("\"version\":2,") && line.contains("\"control\":\"memfd\""),
        "{line}"
    );
    let handed = handed.expect("the block's descriptor came with the line");
    let seals = gvm_cuda::sys::get_seals(handed.as_fd()).expect("a memfd has seals");
    let size = gvm_cuda::sys::SEAL_SHRINK | gvm_cuda::sys::SEAL_GROW;
    assert_eq!(seals & size, size, "sealed against shrinking and growing");
    let dup = handed.try_clone().expect("dup");
    let e = std::fs::File::from(dup)
        .set_len(0)
        .expect_err("cannot be shrunk");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    // What a manager maps: the process's own live block.
    let block = ControlMap::from_handed_fd(handed).expect("a manager maps it");
    assert_eq!(block.block().pid.load(Ordering::Relaxed), pid);
    assert_eq!(block.block().memory_limit.load(Ordering::Relaxed), 1 << 30);
    assert!(block.block().is_standalone());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    eof.recv_timeout(Duration::from_secs(5))
        .expect("the connection ends with the process");
    assert_eq!(
        block.block().submitted.load(Ordering::Relaxed),
        1,
        "the launch counted in the block the manager maps"
    );
    let left: Vec<_> = std::fs::read_dir(root.join("dev/shm"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().starts_with("gvm-vgpu-gpu"))
        .collect();
    assert!(left.is_empty(), "no control block file: {left:?}");
}

#[test]
fn without_a_daemon_one_line_says_so_and_the_program_runs() {
    let Some(rig) = rig() else { return };
    let sock = rig.dir.path().join("nobody.sock");
    let ctl = rig.control("alone");
    let out = rig.launch_registering_at(&ctl, &sock);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("no daemon")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with(&format!("gvm-vgpu: no daemon at {} (", sock.display()))
            && warnings[0].contains("running standalone with limits from the environment"),
        "{}",
        warnings[0]
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("launch=5"));
}

#[test]
fn a_refusing_daemon_leaves_the_process_standalone() {
    let Some(rig) = rig() else { return };
    let sock = rig.dir.path().join("refuse.sock");
    let (_lines, _eof) = fake_daemon(
        &sock,
        "{\"ok\":false,\"field\":\"control\",\"error\":\"not yours\"}\n",
    );
    let ctl = rig.control("refused");
    let out = rig.launch_registering_at(&ctl, &sock);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the registration: not yours"), "{err}");
    let block = ControlMap::open(&ctl).expect("the shim's own block");
    assert!(
        block.block().is_standalone(),
        "standalone after the refusal"
    );
}

#[test]
fn arbitration_blocks_are_keyed_by_pci_bus_id_not_ordinal() {
    let Some(rig) = rig() else { return };
    let root = rig.dir.path().join("root");
    std::fs::create_dir_all(root.join("dev/shm")).expect("shm dir");
    // Both processes launch on their CUDA device 0, which is a different physical GPU for
    // each, and the same physical GPU is device 1 of the first.
    for (name, visible) in [
        ("a", "0000:AF:00.0,0000:3B:00.0"),
        ("b", "0000:3B:00.0,0000:AF:00.0"),
    ] {
        let out = rig
            .command("arb", &rig.control(name))
            .env_remove("GVM_SHIM_ARBITER")
            .env("GVM_VGPU_ROOT", &root)
            .env("FAKE_PCI_BUS_IDS", visible)
            .args(["1", "0"])
            .output()
            .expect("run");
        assert!(out.status.success());
    }
    let mut names: Vec<String> = std::fs::read_dir(root.join("dev/shm"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let me = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(root.join("dev/shm").join(&names[0])).expect("stat"),
    );
    assert_eq!(
        names,
        vec![
            format!("gvm-vgpu-gpu-0000:3b:00.0-u{me}"),
            format!("gvm-vgpu-gpu-0000:af:00.0-u{me}")
        ],
        "one block per physical GPU and per uid"
    );
}

/// `key=value` lines from `rx` until `done` (at most `secs`), as numbers.
fn values_until_done(rx: &mpsc::Receiver<String>, secs: u64) -> HashMap<String, u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut out = HashMap::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line == "done" => break,
            Ok(line) => {
                if let Some((k, v)) = line.split_once('=') {
                    if let Ok(n) = v.parse() {
                        out.insert(k.to_string(), n);
                    }
                }
            }
            Err(_) => break,
        }
    }
    out
}

#[test]
fn a_process_on_two_gpus_waits_only_for_the_gpu_it_launches_on() {
    let Some(rig) = rig() else { return };
    let root = rig.dir.path().join("root2");
    std::fs::create_dir_all(root.join("dev/shm")).expect("shm dir");
    const GPUS: &str = "0000:3B:00.0,0000:AF:00.0";
    let spawn =
        |name: &str, priority: u32, kernel_ms: u32, plan: &str, gap_ms: u32, stay_ms: u32| {
            let mut c = rig.command("devices", &rig.control(name));
            c.args([plan.to_string(), gap_ms.to_string(), stay_ms.to_string()])
                .env_remove("GVM_SHIM_ARBITER")
                .env("GVM_VGPU_ROOT", &root)
                .env("FAKE_PCI_BUS_IDS", GPUS)
                .env("GVM_PRIORITY", priority.to_string())
                .env("FAKE_KERNEL_MS", kernel_ms.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            spawn_lines(c)
        };
    // The important process keeps device 1 (0000:af:00.0) busy for seconds: 150 ms kernels
    // launched every 100 ms. The less important one uses both devices, starting on device 0:
    // its launches on device 0 must go at once, those on device 1 wait.
    let plan_hi = vec!["1"; 30].join(",");
    let (mut hi, hi_rx) = spawn("hi", 0, 150, &plan_hi, 100, 2_000);
    assert!(value_of(&hi_rx, "launched", 10).is_some(), "high started");
    let (mut lo, lo_rx) = spawn("lo", 8, 0, "0,1,0,1,0", 500, 0);
    let t = values_until_done(&lo_rx, 30);
    assert!(lo.wait().expect("wait").success(), "low ran: {t:?}");
    for k in ["launch0_dev0_ms", "launch2_dev0_ms", "launch4_dev0_ms"] {
        let ms = *t.get(k).unwrap_or_else(|| panic!("no {k} in {t:?}"));
        assert!(
            ms < 100,
            "{k}: nobody is busy on device 0, yet it waited {ms} ms"
        );
    }
    let held = *t.get("launch3_dev1_ms").unwrap_or_else(|| panic!("{t:?}"));
    assert!(
        held >= 300,
        "the launch on device 1 waited for the busy process there: {held} ms ({t:?})"
    );
    let b = ControlMap::open(&rig.control("lo")).expect("block");
    let waits = b.block().arb_waits.load(Ordering::Relaxed);
    assert!(
        (1..=2).contains(&waits),
        "only device-1 launches waited: {waits}"
    );
    // One block per physical GPU, and the low process is in both.
    let mut names: Vec<String> = std::fs::read_dir(root.join("dev/shm"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("gvm-vgpu-gpu-0000:3b:00.0-u"),
        "{names:?}"
    );
    assert!(
        names[1].starts_with("gvm-vgpu-gpu-0000:af:00.0-u"),
        "{names:?}"
    );
    let _ = hi.kill();
    let _ = hi.wait();
}

#[test]
fn a_busy_process_never_queries_a_stream_while_it_captures_a_graph() {
    let Some(rig) = rig() else { return };
    // A less important peer makes the process busy; its 400 ms kernel keeps the stream
    // pending, so the helper would query it all through the 200 ms capture.
    let (mut lo, lo_rx) = rig.spawn_arb("lo", 8, 0, (1, 5_000, 0), &[]);
    assert!(value_of(&lo_rx, "launched", 10).is_some(), "low started");
    let mut c = rig.command("capture", &rig.control("cap"));
    c.arg("200")
        .env("GVM_PRIORITY", "0")
        .env("FAKE_KERNEL_MS", "400")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = c.output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let kv: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(num(&kv, "begin_rc"), 0, "{text}");
    assert_eq!(num(&kv, "end_rc"), 0, "{text}");
    assert_eq!(
        num(&kv, "queries_in_capture"),
        0,
        "no stream queried during the capture: {text}"
    );
    assert!(
        num(&kv, "stream_queries_after") > num(&kv, "stream_queries"),
        "the helper looks again once the capture ended: {text}"
    );
    let _ = lo.kill();
    let _ = lo.wait();
}
