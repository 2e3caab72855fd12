//! `gvm-vgpud` on a real kernel: adoption and autostart driven by real uevents.
//!
//! The guest (Debian's kernel under QEMU/TCG, busybox, the `mtty` sample parent; see
//! `tests/guest/`) runs the statically linked daemon with `--root / --rescan-ms 60000`.
//! That rescan period is far longer than anything measured here, so every reaction
//! within the limits below can only have come from the daemon's netlink
//! `NETLINK_KOBJECT_UEVENT` listener (crates/daemon/src/uevent.rs), not from a
//! periodic rescan. The guest has no udev: the kernel's own multicast is all there is.
//!
//! The script, after the daemon logs that its uevent socket is bound:
//! 1. echoes a UUID into `mtty-2/create` and polls `gvm-vgpu --json show` (which goes
//!    through the daemon) every 50 ms until the vGPU is managed as `mtty-2port`;
//! 2. defines an autostart `mtty-1port` vGPU, `rmmod`s mtty (its devices vanish, the
//!    parent unregisters), `insmod`s it again and polls for the device in
//!    `/sys/bus/mdev/devices` every 50 ms: the daemon must create it when the
//!    `MDEV_STATE=registered` uevent arrives;
//! 3. runs `gvm-vgpu qemu-args` on that device.
//!
//! Times are measured in the guest from `/proc/uptime` (10 ms resolution) and printed
//! on `GVMRESULT` lines; the host asserts on them. The daemon's log (with every mdev
//! uevent it received, at debug level) comes back the same way and is printed when
//! an assertion fails.
//!
//! Skips (printing `SKIP: <reason>`) only when the kernel packages cannot be fetched
//! or QEMU is not installed.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gvm_vgpu_e2e::guest::{
    boot, build_static, kernel_or_skip, repo_root, BootOptions, GuestImage, GuestRun,
};

/// The vGPU created by `echo` (adoption).
const ECHO_UUID: &str = "0d5c0a7e-2222-4000-8000-0000000ec401";
/// The defined autostart vGPU.
const AUTO_UUID: &str = "0d5c0a7e-3333-4000-8000-00000000a570";
/// Adoption must be faster than this.
const ADOPT_LIMIT_MS: u64 = 1000;
/// Autostart, counted from the start of `insmod` (which itself takes part of it).
const AUTOSTART_LIMIT_MS: u64 = 2000;
/// The daemon's periodic rescan in the guest: far beyond both limits.
const RESCAN_MS: u64 = 60_000;

/// The test script run in the guest (`@ECHO@`, `@AUTO@`, `@RESCAN@` substituted).
const SCRIPT: &str = r#"
# Centiseconds since boot (busybox date has no %N).
now_cs() { read up rest < /proc/uptime; echo "${up%.*}${up#*.}"; }
# wait_log PATTERN MAX_POLLS: poll the daemon log every 50 ms.
wait_log() {
  i=0
  while [ $i -lt $2 ]; do grep -q "$1" /tmp/daemon.log && return 0; sleep 0.05; i=$((i+1)); done
  return 1
}
out() { while IFS= read -r l; do echo "GVMRESULT $1 $l"; done < $2; }
mkdir -p /run /etc
RUST_LOG=info,gvm_vgpud::uevent=debug gvm-vgpud --root / --rescan-ms @RESCAN@ > /tmp/daemon.log 2>&1 &
DPID=$!
if wait_log 'listening to kernel uevents' 400 && wait_log 'API listening' 100; then
  echo "GVMRESULT ready yes"
else
  echo "GVMRESULT ready no"
fi

# 1. Adoption of a vGPU made by echo.
T=/sys/class/mdev_bus/mtty/mdev_supported_types
polls=0
t0=$(now_cs)
echo @ECHO@ > $T/mtty-2/create
adopted=no
while [ $(( $(now_cs) - t0 )) -lt 500 ]; do
  polls=$((polls+1))
  if gvm-vgpu --json show @ECHO@ > /tmp/show.json 2> /tmp/show.err && grep -q '"managed": true' /tmp/show.json; then
    adopted=yes; break
  fi
  sleep 0.05
done
t1=$(now_cs)
echo "GVMRESULT adopt $adopted $(( (t1 - t0) * 10 )) $polls"
out show /tmp/show.json
out show-err /tmp/show.err

# 2. Autostart of a defined vGPU when the parent registers.
gvm-vgpu define --type mtty-1port --parent mtty --uuid @AUTO@ --autostart > /tmp/def.out 2>&1
echo "GVMRESULT define-rc $?"
out define /tmp/def.out
t0=$(now_cs)
rmmod mtty
if wait_log 'mdev parent unregistered' 100; then seen=yes; else seen=no; fi
t1=$(now_cs)
echo "GVMRESULT unregistered $seen $(( (t1 - t0) * 10 ))"
[ -e /sys/bus/mdev/devices/@ECHO@ ] || echo "GVMRESULT echo-gone yes"
[ -e /sys/bus/mdev/devices/@AUTO@ ] || echo "GVMRESULT auto-absent-before yes"
t0=$(now_cs)
insmod /modules/mtty.ko
ti=$(now_cs)
started=no
while [ $(( $(now_cs) - t0 )) -lt 500 ]; do
  [ -e /sys/bus/mdev/devices/@AUTO@ ] && { started=yes; break; }
  sleep 0.05
done
t1=$(now_cs)
echo "GVMRESULT autostart $started $(( (t1 - t0) * 10 )) $(( (ti - t0) * 10 ))"
echo "GVMRESULT auto-type $(basename "$(readlink /sys/bus/mdev/devices/@AUTO@/mdev_type)")"

# 3. QEMU arguments name the real sysfs device.
gvm-vgpu qemu-args @AUTO@ > /tmp/qemu.out 2>&1
echo "GVMRESULT qemu-rc $?"
out qemu /tmp/qemu.out

kill $DPID
i=0; while [ $i -lt 40 ] && kill -0 $DPID 2>/dev/null; do sleep 0.05; i=$((i+1)); done
out log /tmp/daemon.log
exit 0
"#;

fn guest_script() -> String {
    SCRIPT
        .replace("@ECHO@", ECHO_UUID)
        .replace("@AUTO@", AUTO_UUID)
        .replace("@RESCAN@", &RESCAN_MS.to_string())
}

/// What the guest run produced, parsed once.
struct Outcome {
    run: GuestRun,
    /// `GVMRESULT <kind> <rest>` lines grouped by kind, in order.
    by_kind: BTreeMap<String, Vec<String>>,
}

enum Setup {
    Skip(String),
    Ready(Box<Outcome>),
}

fn setup() -> &'static Result<Setup, String> {
    static ONCE: OnceLock<Result<Setup, String>> = OnceLock::new();
    ONCE.get_or_init(|| run_guest().map_err(|e| format!("{e:#}")))
}

fn run_guest() -> anyhow::Result<Setup> {
    let repo = repo_root();
    let kernel = match kernel_or_skip(&repo)? {
        Ok(k) => k,
        Err(why) => return Ok(Setup::Skip(why)),
    };
    let t = Instant::now();
    let daemon = build_static(&repo, "gvm-vgpud", "gvm-vgpud")?;
    let cli = build_static(&repo, "gvm-vgpu-cli", "gvm-vgpu")?;
    println!("static builds took {:.1?}", t.elapsed());
    let work = tempfile::tempdir()?;
    let initrd = GuestImage::new(&kernel)
        .module("vfio")
        .module("vfio_iommu_type1")
        .module("mdev")
        .module("mtty")
        .binary(&daemon, "gvm-vgpud")
        .binary(&cli, "gvm-vgpu")
        .init_script(&guest_script())
        .build(work.path())?;
    let run = boot(&BootOptions::new(kernel.vmlinuz(), &initrd).timeout(Duration::from_secs(60)))?;
    println!(
        "guest (kernel {}) ran {:.1?} from QEMU start to power-off ({:?})",
        kernel.abi(),
        run.elapsed,
        run.exit
    );
    // Kept for reading after a failure (and as a CI artifact).
    let log_dir = repo.join("target").join("guest");
    std::fs::create_dir_all(&log_dir)?;
    std::fs::write(log_dir.join("daemon-console.log"), &run.console)?;
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in run.results() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        by_kind
            .entry(kind.to_string())
            .or_default()
            .push(rest.to_string());
    }
    Ok(Setup::Ready(Box::new(Outcome { run, by_kind })))
}

/// The guest outcome, or `None` after printing SKIP.
fn outcome() -> Option<&'static Outcome> {
    match setup() {
        Err(e) => panic!("preparing or booting the guest failed: {e}"),
        Ok(Setup::Skip(why)) => {
            println!("SKIP: {why}");
            None
        }
        Ok(Setup::Ready(o)) => {
            assert!(
                o.run.succeeded(),
                "the guest did not run its script to the end ({:?}, script status {:?}); console:\n{}",
                o.run.exit,
                o.run.script_status(),
                o.run.console
            );
            Some(o)
        }
    }
}

impl Outcome {
    fn lines(&self, kind: &str) -> &[String] {
        self.by_kind.get(kind).map_or(&[], Vec::as_slice)
    }

    /// The first line of a kind, split into words.
    fn words(&self, kind: &str) -> Vec<&str> {
        self.lines(kind)
            .first()
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// The daemon's log, for failure messages.
    fn log(&self) -> String {
        let log = self.lines("log");
        let tail = &log[log.len().saturating_sub(60)..];
        format!(
            "gvm-vgpud log (last {} lines):\n{}",
            tail.len(),
            tail.join("\n")
        )
    }

    /// Milliseconds between the first daemon log lines containing `from` and `to`
    /// (both with `uuid_or_key`), from the log's own timestamps.
    fn log_gap_ms(&self, from: &str, to: &str, key: &str) -> Option<i64> {
        let at = |needle: &str| {
            self.lines("log")
                .iter()
                .find(|l| l.contains(needle) && l.contains(key))
                .and_then(|l| log_time_us(l))
        };
        Some((at(to)? - at(from)?) / 1000)
    }

    /// `<kind> yes|no <ms> ...`: whether it happened, and the milliseconds numbers.
    fn timed(&self, kind: &str) -> (bool, Vec<u64>) {
        let w = self.words(kind);
        let ok = w.first() == Some(&"yes");
        let numbers = w.iter().skip(1).filter_map(|n| n.parse().ok()).collect();
        (ok, numbers)
    }

    fn assert_ready(&self) {
        assert_eq!(
            self.words("ready"),
            ["yes"],
            "gvm-vgpud did not bind its uevent socket and API socket in the guest\n{}",
            self.log()
        );
    }
}

/// Microseconds since midnight of a `tracing` log line (`2026-11-22T00:49:19.566156Z ...`).
fn log_time_us(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.strip_suffix('Z')?;
    let (hms, frac) = time.split_once('.')?;
    let mut secs = 0i64;
    for part in hms.split(':') {
        secs = secs * 60 + part.parse::<i64>().ok()?;
    }
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    Some(secs * 1_000_000 + frac.parse::<i64>().ok()?)
}

#[test]
fn log_times_are_read_from_tracing_lines() {
    let a = log_time_us("2026-11-22T00:49:19.566156Z DEBUG gvm_vgpud::uevent: x");
    let b = log_time_us("2026-11-22T00:49:20.0637Z  INFO gvm_vgpud::daemon: y");
    assert_eq!(a, Some((49 * 60 + 19) * 1_000_000 + 566_156));
    assert_eq!(b.zip(a).map(|(b, a)| b - a), Some(497_544));
    assert_eq!(log_time_us("no time here"), None);
}

#[test]
fn daemon_adopts_an_echoed_vgpu_through_uevents_within_a_second() {
    let Some(o) = outcome() else { return };
    o.assert_ready();
    let (adopted, numbers) = o.timed("adopt");
    let ms = numbers.first().copied().unwrap_or(u64::MAX);
    println!(
        "adoption of an echoed vGPU: {ms} ms ({} polls of `gvm-vgpu show`), daemon rescan period {RESCAN_MS} ms",
        numbers.get(1).copied().unwrap_or(0)
    );
    println!(
        "  in the daemon's log: adopted {:?} ms after the kernel's add uevent",
        o.log_gap_ms("add@", "adopted vGPU", ECHO_UUID)
    );
    assert!(
        adopted,
        "not adopted within 5 s; last `show`: {:?} {:?}\n{}",
        o.lines("show"),
        o.lines("show-err"),
        o.log()
    );
    assert!(
        ms < ADOPT_LIMIT_MS,
        "adopted after {ms} ms, the limit is {ADOPT_LIMIT_MS} ms\n{}",
        o.log()
    );
    let show = o.lines("show").join("\n");
    let detail: serde_json::Value = match serde_json::from_str(&show) {
        Ok(v) => v,
        Err(e) => panic!("`gvm-vgpu --json show` printed bad JSON ({e}): {show}"),
    };
    assert_eq!(detail["schema"], 1, "{show}");
    let info = &detail["vgpu"];
    assert_eq!(info["uuid"], ECHO_UUID, "{show}");
    assert_eq!(info["parent"], "mtty", "{show}");
    assert_eq!(info["mdev_type"], "mtty-2", "{show}");
    assert_eq!(info["type_name"], "mtty-2port", "{show}");
    assert_eq!(info["managed"], true, "{show}");
    // The daemon woke for the kernel's own uevent of this device.
    let log = o.lines("log").join("\n");
    assert!(
        log.contains(&format!("add@/devices/virtual/mtty/mtty/{ECHO_UUID}")),
        "the daemon logged no add uevent for the device\n{}",
        o.log()
    );
    assert!(
        log.contains("adopted vGPU") && log.contains(ECHO_UUID),
        "{}",
        o.log()
    );
}

#[test]
fn daemon_autostarts_a_defined_vgpu_when_insmod_registers_the_parent() {
    let Some(o) = outcome() else { return };
    o.assert_ready();
    assert_eq!(
        o.lines("define-rc"),
        ["0"],
        "gvm-vgpu define failed: {:?}\n{}",
        o.lines("define"),
        o.log()
    );
    let (unregistered, unreg_ms) = o.timed("unregistered");
    assert!(
        unregistered,
        "the daemon did not notice `rmmod mtty` within 5 s\n{}",
        o.log()
    );
    assert_eq!(
        o.lines("echo-gone"),
        ["yes"],
        "rmmod left the echoed device"
    );
    assert_eq!(
        o.lines("auto-absent-before"),
        ["yes"],
        "the autostart device existed before insmod, so this run proves nothing"
    );
    let (started, numbers) = o.timed("autostart");
    let ms = numbers.first().copied().unwrap_or(u64::MAX);
    let insmod_ms = numbers.get(1).copied().unwrap_or(0);
    println!(
        "rmmod noticed after {} ms; autostart after insmod: {ms} ms (insmod itself {insmod_ms} ms), \
         daemon rescan period {RESCAN_MS} ms",
        unreg_ms.first().copied().unwrap_or(0)
    );
    let registered = o
        .lines("log")
        .iter()
        .find(|l| l.contains("MDEV_STATE=registered"))
        .and_then(|l| log_time_us(l));
    let created = o
        .lines("log")
        .iter()
        .find(|l| l.contains("autostarted defined vGPU") && l.contains(AUTO_UUID))
        .and_then(|l| log_time_us(l));
    println!(
        "  in the daemon's log: created {:?} ms after the MDEV_STATE=registered uevent",
        created.zip(registered).map(|(c, r)| (c - r) / 1000)
    );
    assert!(
        started,
        "the defined vGPU was not created within 5 s of insmod\n{}",
        o.log()
    );
    assert!(
        ms < AUTOSTART_LIMIT_MS,
        "autostarted after {ms} ms, the limit is {AUTOSTART_LIMIT_MS} ms\n{}",
        o.log()
    );
    assert_eq!(o.lines("auto-type"), ["mtty-1"], "{}", o.log());
    let log = o.lines("log").join("\n");
    assert!(
        log.contains("MDEV_STATE=registered"),
        "the daemon logged no registration uevent\n{}",
        o.log()
    );
    assert!(
        log.contains("autostarted defined vGPU") && log.contains(AUTO_UUID),
        "{}",
        o.log()
    );
}

#[test]
fn qemu_args_name_the_autostarted_device() {
    let Some(o) = outcome() else { return };
    let qemu = o.lines("qemu").join("\n");
    assert_eq!(o.lines("qemu-rc"), ["0"], "{qemu}");
    assert!(
        qemu.contains(&format!("sysfsdev=/sys/bus/mdev/devices/{AUTO_UUID}")),
        "{qemu}"
    );
}
