//! The CUDA interposer enforcing the host's knobs inside a real guest: Debian's kernel
//! boots under QEMU (TCG) with the static `gvm-vgpu-agent` in a busybox initramfs, its
//! virtio-serial port wired to `<root>/run/gvm-vgpu/agent/<uuid>.sock` for a vGPU created
//! on the simulated host, where `gvm-vgpud` connects (agent protocol 2). In the guest, the
//! agent serves the shim socket `/run/gvm-vgpu/shim.sock`, and a dynamically linked CUDA
//! "program" (`crates/shim/tests/c/line_driver.c` over the fake driver `fake_cuda.c` as
//! `libcuda.so.1`) runs under `LD_PRELOAD=libgvm_cuda.so`, the project's real interposer,
//! with the glibc pieces `ldd` names copied to the same paths. Asserted, as a user sees it:
//!
//! * `gvm-vgpu show` lists the guest's CUDA process (source guest) with its pid;
//! * a memory limit of 64 MiB set live on the host refuses `alloc 65` in the guest process
//!   (`CUDA_ERROR_OUT_OF_MEMORY`, 2) and lets `alloc 32` through;
//! * `gvm-vgpu freeze` holds the guest process's launch (no answer for 2 s), once the guest
//!   acknowledged every process held; `gvm-vgpu thaw` releases it.
//!
//! The host and the guest script take turns on a second virtio-serial port, the control
//! line: the host says a word when its side is in place, the guest answers when it has
//! done its part. Skips (printing `SKIP: <reason>`) when the kernel cannot be prepared,
//! QEMU or `cc` is missing, or the simulated host cannot be mounted (root and /dev/fuse).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vgpu_e2e::guest::{
    boot, build_host_packages, build_static, cli, kernel_or_skip, port_lookup_script, repo_root,
    shared_libraries, virtio_serial_args, BootOptions, ControlPort, GuestImage, GuestRun,
    KillOnDrop,
};

const TEST: &str = "guest_interposer";
const UUID: &str = "0c5b7a1e-3f2d-4b8a-9e61-00000000c0da";
const CTL_PORT: &str = "org.gvm.test.ctl";
/// Where the CUDA program, the fake driver and the interposer live in the guest.
const GUEST_DIR: &str = "/opt/gvm";
/// The longest the host waits for one of its steps, or for the guest's answer.
const STEP: Duration = Duration::from_secs(45);

/// The guest's script: the agent, the CUDA program on a FIFO, then the host's turns.
fn guest_script(library_path: &str) -> String {
    format!(
        r#"
mkdir -p /run/gvm-vgpu
gvm-vgpu-agent --interval 500ms 2>/tmp/agent.err &
for i in $(seq 100); do [ -S /run/gvm-vgpu/shim.sock ] && break; sleep 0.1; done
echo "GVMRESULT shim-socket $(ls /run/gvm-vgpu)"
{lookup}echo "GVMRESULT ctl $ctl"
exec 5<>$ctl
# hear WORD: wait (about a minute at most) for the host to say WORD on the control line.
# The port reads EOF until the host connects; other words are left-over repeats.
hear() {{
  t=60
  while [ $t -gt 0 ]; do
    if read -t 1 w <&5; then [ "$w" = "$1" ] && return 0; else t=$((t-1)); sleep 0.2; fi
  done
  return 1
}}
# answer N [TENTHS]: the program's Nth output line, waiting TENTHS/10 s (30 s) for it.
answer() {{
  t=${{2:-300}}
  while [ $t -gt 0 ]; do
    l=$(sed -n "$1p" /tmp/cuda.out)
    [ -n "$l" ] && echo "$l" && return 0
    t=$((t-1)); sleep 0.1
  done
  return 1
}}
mkfifo /tmp/cuda.in
LD_LIBRARY_PATH={library_path} LD_PRELOAD={GUEST_DIR}/libgvm_cuda.so \
  GVM_SHIM_SOCKET=/run/gvm-vgpu/shim.sock GVM_MEMORY_LIMIT=unlimited \
  FAKE_KERNEL_MS=0 FAKE_PCI_BUS_IDS=0000:3B:00.0 \
  {GUEST_DIR}/line_driver {GUEST_DIR}/libcuda.so.1 </tmp/cuda.in >/tmp/cuda.out 2>/tmp/cuda.err &
drv=$!
exec 6>/tmp/cuda.in
echo "GVMRESULT program $drv $(answer 1)"
hear limit && echo "GVMRESULT heard limit"
echo "alloc 65" >&6
echo "GVMRESULT alloc-65 $(answer 2)"
echo "alloc 32" >&6
echo "GVMRESULT alloc-32 $(answer 3)"
echo "did limit" >&5
hear freeze && echo "GVMRESULT heard freeze"
echo launch >&6
if answer 4 20 >/dev/null; then echo "GVMRESULT frozen-launch answered"; else echo "GVMRESULT frozen-launch held"; fi
echo "did freeze" >&5
echo "GVMRESULT thawed-launch $(answer 4)"
echo sync >&6
echo "GVMRESULT sync $(answer 5)"
echo quit >&6
wait $drv
echo "GVMRESULT program-exit $?"
while IFS= read -r l; do echo "GVMRESULT program-stderr $l"; done < /tmp/cuda.err
while IFS= read -r l; do echo "GVMRESULT agent-stderr $l"; done < /tmp/agent.err
exit 0
"#,
        lookup = port_lookup_script("ctl", CTL_PORT)
    )
}

/// The fake driver and the CUDA program, compiled with the host's `cc` into `dir`.
fn build_cuda_program(repo: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let c = repo.join("crates/shim/tests/c");
    let fake = dir.join("libcuda.so.1");
    let driver = dir.join("line_driver");
    let compile = |args: &[&str], out: &Path, src: &Path| -> Result<(), String> {
        let st = Command::new("cc")
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(src)
            .status()
            .map_err(|e| format!("cannot run cc: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("cc failed on {}: {st}", src.display()))
        }
    };
    compile(
        &[
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            "-Wl,-soname,libcuda.so.1",
        ],
        &fake,
        &c.join("fake_cuda.c"),
    )?;
    compile(&["-ldl"], &driver, &c.join("line_driver.c"))?;
    Ok((fake, driver))
}

/// The `guest` member of `gvm-vgpu --json show UUID`'s vGPU, when the daemon answers.
fn guest_state(bin: &Path, root: &Path) -> Option<serde_json::Value> {
    let (ok, out) = cli(bin, root, &["--json", "show", UUID]);
    let v: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    Some(v["vgpu"]["guest"].clone()).filter(|g| g.is_object())
}

/// Whether the guest acknowledged the latest state sent, newer than generation `after`.
fn acked_after(g: &serde_json::Value, after: u64) -> bool {
    let sent = g["generation_sent"].as_u64();
    sent.is_some_and(|s| s > after) && g["generation_acked"].as_u64() == sent
}

/// Poll the guest state until `done` holds, `STEP` at most; the last state seen otherwise.
fn wait_state(
    bin: &Path,
    root: &Path,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let end = Instant::now() + STEP;
    let mut last = None;
    while Instant::now() < end {
        if let Some(g) = guest_state(bin, root) {
            if done(&g) {
                return Ok(g);
            }
            last = Some(g);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "{what}: not within {STEP:?}; last guest state: {last:?}"
    ))
}

/// The host's turns, in order; the first that fails says why.
fn host_steps(bin: &Path, root: &Path, ctl_sock: &Path) -> Result<serde_json::Value, String> {
    let mut ctl = ControlPort::connect(ctl_sock, STEP).map_err(|e| e.to_string())?;
    let registered = wait_state(bin, root, "the guest process registered", |g| {
        g["connected"] == true
            && g["protocol"] == 2
            && g["processes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "line_driver"))
    })?;
    let generation = registered["generation_sent"].as_u64().unwrap_or(0);
    let (ok, out) = cli(
        bin,
        root,
        &["set", "--live", "--memory-limit", "64MiB", UUID],
    );
    if !ok {
        return Err(format!("set --live --memory-limit failed: {out}"));
    }
    let limited = wait_state(bin, root, "the guest acknowledged the limit", |g| {
        acked_after(g, generation)
    })?;
    if !ctl.say_until("limit", "did limit", STEP) {
        return Err(format!(
            "the guest never did its allocations: {:?}",
            ctl.heard()
        ));
    }
    let (ok, out) = cli(bin, root, &["freeze", UUID]);
    if !ok {
        return Err(format!("freeze failed: {out}"));
    }
    let generation = limited["generation_sent"].as_u64().unwrap_or(0);
    wait_state(bin, root, "the guest acknowledged the freeze", |g| {
        acked_after(g, generation) && g["frozen_reached"] == true
    })?;
    if !ctl.say_until("freeze", "did freeze", STEP) {
        return Err(format!(
            "the guest never tried its launch: {:?}",
            ctl.heard()
        ));
    }
    let (ok, out) = cli(bin, root, &["thaw", UUID]);
    if !ok {
        return Err(format!("thaw failed: {out}"));
    }
    Ok(registered)
}

/// The last `n` characters of the console, for failure messages.
fn console_tail(run: &GuestRun, n: usize) -> String {
    let skip = run.console.chars().count().saturating_sub(n);
    run.console.chars().skip(skip).collect()
}

#[test]
fn the_hosts_knobs_reach_a_cuda_process_in_a_real_guest() {
    let t0 = Instant::now();
    let repo = repo_root();
    if skip(TEST, require_command("qemu-system-x86_64"))
        || skip(TEST, require_command("cc"))
        || skip(TEST, require_command("ldd"))
        || skip(TEST, require_root_and_fuse())
    {
        return;
    }
    let kernel = match kernel_or_skip(&repo) {
        Ok(Ok(k)) => k,
        Ok(Err(why)) => {
            skip(TEST, Some(why));
            return;
        }
        Err(e) => panic!("preparing the guest kernel failed: {e}"),
    };
    let agent = build_static(&repo, "gvm-vgpu-agent", "gvm-vgpu-agent")
        .unwrap_or_else(|e| panic!("static agent build failed: {e}"));
    let bin = build_host_packages(
        &repo,
        &["gvm-vgpud", "gvm-vgpu-cli", "gvm-vgpu-sim", "gvm-cuda-shim"],
    )
    .unwrap_or_else(|e| panic!("host build failed: {e}"));
    let shim = bin.join("libgvm_cuda.so");
    let work = tempfile::tempdir().expect("tempdir");
    let (fake, driver) = build_cuda_program(&repo, work.path())
        .unwrap_or_else(|e| panic!("building the CUDA program failed: {e}"));
    let libraries = shared_libraries(&[&driver, &fake, &shim])
        .unwrap_or_else(|e| panic!("collecting the C library failed: {e}"));
    println!(
        "built in {:.1} s; the guest gets {libraries:?}",
        t0.elapsed().as_secs_f64()
    );

    // The host: simulated GPUs, the daemon, one vGPU.
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root().to_path_buf();
    let log_path = root.join("gvm-vgpud.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let _daemon = KillOnDrop(
        Command::new(bin.join("gvm-vgpud"))
            .arg("--root")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("gvm-vgpud starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(&bin, &root, &["list", "--defined"]).0 {
        assert!(Instant::now() < deadline, "gvm-vgpud did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, out) = cli(&bin, &root, &["create", "--type", "sim-4c", "--uuid", UUID]);
    assert!(ok, "create failed: {out}");

    // The guest: the agent, the program, the interposer, and the C library they load.
    let mut library_dirs: Vec<String> = Vec::new();
    let mut image = GuestImage::new(&kernel)
        .module("virtio_ring")
        .module("virtio")
        .module("virtio_pci_legacy_dev")
        .module("virtio_pci_modern_dev")
        .module("virtio_pci")
        .module("virtio_console")
        .binary(&agent, "gvm-vgpu-agent")
        .host_file(&driver, &format!("{GUEST_DIR}/line_driver"), 0o755)
        .host_file(&fake, &format!("{GUEST_DIR}/libcuda.so.1"), 0o755)
        .host_file(&shim, &format!("{GUEST_DIR}/libgvm_cuda.so"), 0o755);
    for lib in &libraries {
        image = image.host_file(lib, &lib.to_string_lossy(), 0o755);
        if let Some(dir) = lib.parent().map(|d| d.display().to_string()) {
            if !library_dirs.contains(&dir) {
                library_dirs.push(dir);
            }
        }
    }
    let initrd = image
        .init_script(&guest_script(&library_dirs.join(":")))
        .build(work.path())
        .expect("initramfs");
    let agent_sock = root.join(format!("run/gvm-vgpu/agent/{UUID}.sock"));
    std::fs::create_dir_all(agent_sock.parent().expect("a parent")).expect("agent dir");
    let ctl_sock = work.path().join("ctl.sock");
    let opts = BootOptions::new(kernel.vmlinuz(), &initrd)
        .timeout(Duration::from_secs(150))
        .args(virtio_serial_args(&[
            (&agent_sock, "org.gvm.vgpu.agent.0"),
            (&ctl_sock, CTL_PORT),
        ]));
    let booted = Instant::now();
    let guest = std::thread::spawn(move || boot(&opts));

    let steps = host_steps(&bin, &root, &ctl_sock);
    let steps_took = booted.elapsed();
    let (text_ok, text) = cli(&bin, &root, &["show", UUID]);
    let run = guest
        .join()
        .expect("boot thread")
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let results = run.results();
    let daemon_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let registered = steps.unwrap_or_else(|why| {
        panic!(
            "{why}\nguest results: {results:?}\nconsole tail: {}\ndaemon log:\n{daemon_log}",
            console_tail(&run, 3000)
        )
    });
    println!(
        "host steps done {:.1} s after QEMU started; guest ran {:.1} s; whole test {:.1} s",
        steps_took.as_secs_f64(),
        run.elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!("guest results: {results:?}");
    let result = |key: &str| -> String {
        results
            .iter()
            .find_map(|r| r.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no `{key}` result: {results:?}"))
            .to_string()
    };

    // The guest's program registered and is the process `show` lists (source guest).
    let program = result("program");
    let (pid, ready) = program.split_once(' ').unwrap_or((&program, ""));
    assert_eq!(ready, "ready", "{results:?}");
    let pid: u64 = pid.parse().unwrap_or_else(|_| panic!("{results:?}"));
    let listed = registered["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "line_driver"))
        .unwrap_or_else(|| panic!("{registered}"));
    assert_eq!(listed["pid"].as_u64(), Some(pid), "{registered}");
    assert!(text_ok, "{text}");
    assert!(text.contains("guest processes (source guest):"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&pid.to_string()) && l.contains("line_driver")),
        "`gvm-vgpu show` text lacks {pid}:\n{text}"
    );

    // The host's live limit holds inside the guest process.
    assert_eq!(
        result("alloc-65"),
        "alloc=2",
        "past the 64 MiB limit: out of memory"
    );
    assert_eq!(result("alloc-32"), "alloc=0", "within the limit");
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("program-stderr gvm-cuda[")
                && r.contains("of the 67108864-byte limit")),
        "the interposer says it refused for the host's 64 MiB: {results:?}"
    );

    // Freeze holds the guest's launch; thaw releases it.
    assert_eq!(result("frozen-launch"), "held", "{results:?}");
    assert_eq!(result("thawed-launch"), "launched=1", "{results:?}");
    assert_eq!(result("sync"), "synced=0", "{results:?}");
    assert_eq!(result("program-exit"), "0", "{results:?}");
    assert!(
        run.succeeded(),
        "{:?}: {}",
        run.exit,
        console_tail(&run, 2000)
    );
}
