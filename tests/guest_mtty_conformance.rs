//! The kernel as referee: the mdev conformance scenario on a real 6.1 kernel with the
//! `mtty` sample parent, compared step by step with `gvm-vgpu-sim --model mtty`; and
//! the `gvm-vgpu` CLI creating, listing and removing a device on the real kernel.
//!
//! One guest boot serves both tests (it is shared through a `OnceLock`). The guest
//! script runs `gvm-mdev-conformance` (unload/load hooks: `rmmod mtty` /
//! `insmod /modules/mtty.ko`) with a `uevent` listener recording `MDEV_STATE`
//! uevents, then the CLI commands, printing everything behind `GVMRESULT` markers.
//!
//! Skips (printing `SKIP: <reason>`) only when the kernel packages cannot be fetched
//! or QEMU is not installed; the simulated-host half also needs root and /dev/fuse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gvm_vgpu_e2e::guest::conformance::{compare, StepRecord};
use gvm_vgpu_e2e::guest::{
    boot, build_static, kernel_or_skip, repo_root, BootOptions, GuestImage, GuestRun,
};

/// The UUID the CLI part creates (upper case on the command line on purpose).
const CLI_UUID: &str = "0D5C0A7E-1111-4000-8000-00000000C11A";

/// The test script run in the guest.
fn guest_script() -> String {
    let lower = CLI_UUID.to_ascii_lowercase();
    format!(
        r#"
# Record uevents; wait (up to 10 s) until the listener sees a synthetic one, so none is missed.
uevent sh -c 'echo "$ACTION $DEVPATH MDEV_STATE=$MDEV_STATE" >> /tmp/uevents' &
for i in $(seq 100); do
  echo change > /sys/devices/virtual/mtty/mtty/uevent
  [ -s /tmp/uevents ] && break
  sleep 0.1
done
{{ gvm-mdev-conformance --root / --parent mtty --unload-cmd 'rmmod mtty' --load-cmd 'insmod /modules/mtty.ko' 2>/tmp/conf.err
  echo $? > /tmp/conf.rc; }} | while IFS= read -r l; do echo "GVMRESULT conformance $l"; done
echo "GVMRESULT conformance-rc $(cat /tmp/conf.rc)"
while IFS= read -r l; do echo "GVMRESULT conformance-stderr $l"; done < /tmp/conf.err
dmesg | grep -i -e vfio -e mtty -e "in use" | while IFS= read -r l; do echo "GVMRESULT dmesg $l"; done
for i in $(seq 50); do grep -q MDEV_STATE=registered /tmp/uevents && break; sleep 0.1; done
grep MDEV_STATE=. /tmp/uevents | while IFS= read -r l; do echo "GVMRESULT uevent $l"; done
cli() {{
  name=$1; shift
  gvm-vgpu "$@" > /tmp/cli.out 2>&1
  rc=$?
  while IFS= read -r l; do echo "GVMRESULT cli $name out $l"; done < /tmp/cli.out
  echo "GVMRESULT cli $name rc $rc"
}}
cli types types --parent mtty
cli create create --type mtty-2port --parent mtty --uuid {CLI_UUID}
cli list list
cli list-json --json list
cli qemu-args qemu-args {lower}
cli xml xml {lower}
d=/sys/bus/mdev/devices/{lower}
echo "GVMRESULT sysfs link $(readlink $d)"
echo "GVMRESULT sysfs type $(basename $(readlink $d/mdev_type))"
g=$(basename $(readlink $d/iommu_group))
echo "GVMRESULT sysfs iommu_group $g"
[ -e /dev/vfio/$g ] && echo "GVMRESULT sysfs dev_vfio yes"
cli remove remove {lower}
[ -e $d ] || echo "GVMRESULT sysfs removed yes"
cli list-after list
exit 0
"#
    )
}

/// What the guest run produced, parsed once.
struct GuestOutcome {
    run: GuestRun,
    /// `GVMRESULT <kind> <rest>` lines grouped by kind, in order.
    by_kind: BTreeMap<String, Vec<String>>,
    /// Whether the CLI could be built (else why not).
    cli_built: Result<(), String>,
    /// The static conformance runner, reused on the host against the simulated host.
    runner: PathBuf,
}

enum Setup {
    Skip(String),
    Ready(Box<GuestOutcome>),
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
    let runner = build_static(&repo, "gvm-vgpu-e2e", "gvm-mdev-conformance")?;
    let cli = build_static(&repo, "gvm-vgpu-cli", "gvm-vgpu");
    println!("static builds took {:.1?}", t.elapsed());
    let work = tempfile::tempdir()?;
    let mut image = GuestImage::new(&kernel)
        .module("vfio")
        .module("vfio_iommu_type1")
        .module("mdev")
        .module("mtty")
        .binary(&runner, "gvm-mdev-conformance")
        .init_script(&guest_script());
    let cli_built = match &cli {
        Ok(path) => {
            image = image.binary(path, "gvm-vgpu");
            Ok(())
        }
        Err(e) => Err(format!("{e}")),
    };
    let initrd = image.build(work.path())?;
    let run = boot(&BootOptions::new(kernel.vmlinuz(), &initrd).timeout(Duration::from_secs(120)))?;
    println!(
        "guest (kernel {}) ran {:.1?} from QEMU start to power-off ({:?})",
        kernel.abi(),
        run.elapsed,
        run.exit
    );
    // Kept for reading after a failure (and as a CI artifact).
    let log_dir = repo.join("target").join("guest");
    std::fs::create_dir_all(&log_dir)?;
    std::fs::write(log_dir.join("mtty-console.log"), &run.console)?;
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in run.results() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        by_kind
            .entry(kind.to_string())
            .or_default()
            .push(rest.to_string());
    }
    Ok(Setup::Ready(Box::new(GuestOutcome {
        run,
        by_kind,
        cli_built,
        runner,
    })))
}

/// The guest outcome, or `None` after printing SKIP.
fn outcome() -> Option<&'static GuestOutcome> {
    match setup() {
        Err(e) => panic!("preparing or booting the guest failed: {e}"),
        Ok(Setup::Skip(why)) => {
            println!("SKIP: {why}");
            None
        }
        Ok(Setup::Ready(o)) => {
            if !o.run.succeeded() {
                // Both tests fail on this; only the first prints the console.
                static PRINTED: AtomicBool = AtomicBool::new(false);
                let console = if PRINTED.swap(true, Ordering::SeqCst) {
                    "(printed by the other test)"
                } else {
                    o.run.console.as_str()
                };
                panic!(
                    "the guest did not run its script to the end ({:?}, script status {:?}); console:\n{console}",
                    o.run.exit,
                    o.run.script_status(),
                );
            }
            Some(o)
        }
    }
}

impl GuestOutcome {
    fn lines(&self, kind: &str) -> &[String] {
        self.by_kind.get(kind).map_or(&[], Vec::as_slice)
    }

    /// Output lines and exit status of one CLI call in the guest.
    fn cli(&self, name: &str) -> (Vec<String>, Option<i32>) {
        let mut out = Vec::new();
        let mut rc = None;
        for l in self.lines("cli") {
            let Some(rest) = l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) else {
                continue;
            };
            if let Some(o) = rest.strip_prefix("out ") {
                out.push(o.to_string());
            } else if let Some(r) = rest.strip_prefix("rc ") {
                rc = r.trim().parse().ok();
            }
        }
        (out, rc)
    }

    fn sysfs(&self, key: &str) -> Option<String> {
        self.lines("sysfs")
            .iter()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    }
}

#[test]
fn kernel_and_simulated_host_agree_on_every_mdev_step() {
    let Some(o) = outcome() else { return };
    assert_eq!(
        o.lines("conformance-rc"),
        ["0"],
        "the runner failed in the guest: {:?}",
        o.lines("conformance-stderr")
    );
    let kernel = match StepRecord::parse_lines(o.lines("conformance").iter().map(String::as_str)) {
        Ok(r) => r,
        Err(e) => panic!(
            "the guest printed a bad record ({e}): {:?}",
            o.lines("conformance")
        ),
    };
    assert!(
        !kernel.is_empty(),
        "no records from the guest; console:\n{}",
        o.run.console
    );
    // The kernel ran every step, hooks included, and the uevents of the reload came.
    assert!(kernel.iter().all(|r| r.skipped.is_none()), "{kernel:?}");
    let uevents = o.lines("uevent").join("\n");
    assert!(
        uevents.contains("MDEV_STATE=unregistered"),
        "uevents: {uevents}"
    );
    assert!(
        uevents.contains("MDEV_STATE=registered"),
        "uevents: {uevents}"
    );
    println!("kernel uevents:\n{uevents}");
    println!("kernel log (vfio, mtty):\n{}", o.lines("dmesg").join("\n"));
    print_held("kernel", &kernel);

    let sim = match run_against_sim(&o.runner) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => panic!("running the scenario against gvm-vgpu-sim failed: {e:#}"),
    };
    print_held("sim", &sim);
    let cmp = compare(&kernel, &sim);
    println!("kernel vs gvm-vgpu-sim --model mtty: {cmp}");
    assert!(
        cmp.is_match(),
        "the simulated host differs from the kernel:\n{cmp}"
    );
}

/// Print what the held-device steps saw, with their (uncompared) timings.
fn print_held(target: &str, records: &[StepRecord]) {
    for r in records.iter().filter(|r| r.op == "remove_held") {
        println!(
            "{target} {}: ok={:?} errno={:?} {} [{}]",
            r.name,
            r.ok,
            r.errno,
            r.result.as_deref().or(r.error.as_deref()).unwrap_or(""),
            r.detail.as_deref().unwrap_or("")
        );
        println!("{target} {} during: {:?}", r.name, r.during);
    }
}

/// Run the scenario against `gvm-vgpu-sim --model mtty`; `None` after printing SKIP.
fn run_against_sim(runner: &Path) -> anyhow::Result<Option<Vec<StepRecord>>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        println!("SKIP: the simulated-host half needs root and /dev/fuse (kernel half ran)");
        return Ok(None);
    }
    // The simulated host runs here on the host: the ordinary debug build will do, rebuilt
    // so that a binary left by an older build is never what is compared.
    let sim_bin = gvm_testkit::workspace_bin_rebuilt("gvm-vgpu-sim", "gvm-vgpu-sim");
    let mnt = tempfile::tempdir()?;
    let child = Command::new(&sim_bin)
        .arg("--root")
        .arg(mnt.path())
        .args(["--model", "mtty", "--foreground"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut sim = SimGuard(Some(child));
    let ready = mnt.path().join("sys/class/mdev_bus/mtty");
    let start = Instant::now();
    while !ready.exists() {
        if start.elapsed() > Duration::from_secs(15) {
            anyhow::bail!("gvm-vgpu-sim did not mount {} within 15 s", ready.display());
        }
        if let Some(c) = sim.0.as_mut() {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("gvm-vgpu-sim exited early with {status}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The simulator's control file stands in for rmmod/insmod of the parent driver.
    let control = mnt.path().join("sys/kernel/debug/gvm-sim/control");
    let out = Command::new(runner)
        .arg("--root")
        .arg(mnt.path())
        .args(["--parent", "mtty"])
        .arg("--unload-cmd")
        .arg(format!("echo unregister mtty > '{}'", control.display()))
        .arg("--load-cmd")
        .arg(format!("echo register mtty > '{}'", control.display()))
        .arg("--sim-control")
        .arg(&control)
        .output()?;
    sim.stop();
    anyhow::ensure!(
        out.status.success(),
        "gvm-mdev-conformance against the simulated host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(StepRecord::parse_lines(text.lines())?))
}

/// Stops the simulator this test started (SIGTERM makes it unmount) on every path out.
struct SimGuard(Option<Child>);

impl SimGuard {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SimGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn cli_creates_lists_and_removes_on_a_real_kernel() {
    let Some(o) = outcome() else { return };
    if let Err(e) = &o.cli_built {
        panic!("the gvm-vgpu CLI could not be built statically: {e}");
    }
    let lower = CLI_UUID.to_ascii_lowercase();
    for name in [
        "types",
        "create",
        "list",
        "list-json",
        "qemu-args",
        "xml",
        "remove",
        "list-after",
    ] {
        let (out, rc) = o.cli(name);
        assert_eq!(
            rc,
            Some(0),
            "gvm-vgpu {name} failed in the guest: {}",
            out.join("\n")
        );
    }
    let types = o.cli("types").0.join("\n");
    assert!(
        types.contains("mtty-1") && types.contains("mtty-2"),
        "{types}"
    );
    let list = o.cli("list").0.join("\n");
    assert!(
        list.contains(&lower),
        "list does not show the device: {list}"
    );
    // The guest captures stderr with stdout: without a daemon, `list` says so on stderr
    // first (a notice, not JSON).
    let json = o
        .cli("list-json")
        .0
        .into_iter()
        .filter(|l| !l.starts_with("gvm-vgpu: gvm-vgpud is not running"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        serde_json::from_str::<serde_json::Value>(&json).is_ok(),
        "list --json: {json}"
    );
    assert!(json.contains(&lower), "{json}");
    // The generated QEMU arguments and XML name the device the kernel made.
    let qemu = o.cli("qemu-args").0.join("\n");
    assert!(
        qemu.contains(&format!("sysfsdev=/sys/bus/mdev/devices/{lower}")),
        "{qemu}"
    );
    let xml = o.cli("xml").0.join("\n");
    assert!(
        xml.contains(&format!("uuid='{lower}'")) || xml.contains(&format!("uuid=\"{lower}\"")),
        "{xml}"
    );
    let link = o.sysfs("link").unwrap_or_default();
    assert!(
        link.ends_with(&format!("mtty/{lower}")),
        "sysfs link: {link}"
    );
    assert_eq!(o.sysfs("type").as_deref(), Some("mtty-2"));
    assert!(o
        .sysfs("iommu_group")
        .is_some_and(|g| g.parse::<u32>().is_ok()));
    assert_eq!(o.sysfs("dev_vfio").as_deref(), Some("yes"));
    assert_eq!(o.sysfs("removed").as_deref(), Some("yes"));
    let after = o.cli("list-after").0.join("\n");
    assert!(
        !after.contains(&lower),
        "still listed after remove: {after}"
    );
}
