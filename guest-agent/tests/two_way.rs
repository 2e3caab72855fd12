//! The agent as the guest's local daemon, end to end, with the test playing the host over
//! `--serve-unix`: a CUDA program (the shim tests' fake `libcuda.so.1` under the real
//! `LD_PRELOAD=libgvm_cuda.so`) registers on the agent's shim socket; the host's snapshot
//! limit refuses an allocation past it inside the process; a higher generation moves it; a
//! lower one is ignored; a freeze holds launches and is acknowledged frozen with nothing in
//! flight; a thaw releases them; so do the VM-level hold and its release; the counters list the process with its pid and name, busy
//! lines follow its work; hostile host lines (oversize, invalid, unknown type) change
//! nothing; no v2 line goes to a host before it sent a snapshot; after a reconnect the hello comes again and a resent snapshot is re-acked.
//! Skips (printing `SKIP: reason`) without `cc`.

#![expect(
    clippy::unwrap_used,
    reason = "test fixtures: a failed unwrap is a failed test"
)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu-agent");
const MIB: u64 = 1 << 20;
/// CUDA_ERROR_OUT_OF_MEMORY.
const OOM: &str = "alloc=2";

/// A CUDA "program" driven line by line on stdin (crates/daemon/tests/shim_backend.rs's,
/// plus `sync`): it reaches the (fake) driver the way the CUDA runtime does (dlopen,
/// cuGetProcAddress), makes one call so the shim sets up, prints `ready`, then answers
/// `alloc MIB` with `alloc=RC`, `launch` with `launched=N`, `sync` with `synced=RC`, `quit`.
const DRIVER_C: &str = include_str!("../../crates/shim/tests/c/line_driver.c");

/// The target directory this test was built into (`<target>/debug/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// `libgvm_cuda.so`, the fake driver and the program, or why not.
fn build(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    if Command::new("cc").arg("--version").output().is_err() {
        return Err("no C compiler (cc) to build the fake libcuda".into());
    }
    let target = target_dir();
    let ok = Command::new(env!("CARGO"))
        .args(["build", "-q", "--lib", "-p", "gvm-cuda-shim"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let so = target.join("debug/libgvm_cuda.so");
    if !ok || !so.exists() {
        return Err(format!("cannot build {}", so.display()));
    }
    let fake = dir.join("libcuda.so.1");
    let fake_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/shim/tests/c/fake_cuda.c");
    let st = Command::new("cc")
        .args([
            "-shared",
            "-fPIC",
            "-Wl,-Bsymbolic",
            "-Wl,-soname,libcuda.so.1",
            "-o",
        ])
        .arg(&fake)
        .arg(&fake_src)
        .status()
        .unwrap();
    assert!(st.success(), "building the fake libcuda failed");
    let src = dir.join("driver.c");
    std::fs::write(&src, DRIVER_C).unwrap();
    let prog = dir.join("driver");
    let st = Command::new("cc")
        .arg("-o")
        .arg(&prog)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success(), "building the driver program failed");
    Ok((so, fake, prog))
}

/// A running CUDA program under the shim, registered to the agent's shim socket.
struct CudaProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl CudaProcess {
    fn start(so: &Path, fake: &Path, prog: &Path, root: &Path, socket: &Path) -> CudaProcess {
        let mut child = Command::new(prog)
            .arg(fake)
            .env("LD_PRELOAD", so)
            .env("GVM_VGPU_ROOT", root)
            .env("GVM_SHIM_SOCKET", socket)
            .env("FAKE_PCI_BUS_IDS", "0000:3B:00.0")
            .env_remove("GVM_SHIM_CONTROL")
            .env_remove("GVM_MEMORY_LIMIT")
            .env_remove("GVM_SHIM_ARBITER")
            .env_remove("GVM_PRIORITY")
            .env_remove("GVM_VGPU_UUID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = line_reader(child.stdout.take().unwrap());
        let p = CudaProcess {
            child,
            stdin,
            lines,
        };
        assert_eq!(p.next(10).as_deref(), Some("ready"), "the program started");
        p
    }

    fn ask(&mut self, cmd: &str, secs: u64) -> Option<String> {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.next(secs)
    }

    fn next(&self, secs: u64) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs(secs)).ok()
    }
}

impl Drop for CudaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The agent, killed at the end.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test as the host: one connection to the agent's `--serve-unix` socket.
struct Host {
    stream: UnixStream,
    lines: mpsc::Receiver<String>,
}

impl Host {
    fn connect(path: &Path) -> Host {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("the agent never listened on {}: {e}", path.display()),
            }
        };
        let lines = line_reader(stream.try_clone().unwrap());
        Host { stream, lines }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn snapshot(&mut self, generation: u64, limit_mib: Option<u64>, frozen: bool) {
        self.snapshot_held(generation, limit_mib, frozen, false);
    }

    fn snapshot_held(&mut self, generation: u64, limit_mib: Option<u64>, frozen: bool, hold: bool) {
        let line = serde_json::json!({
            "type": "snapshot",
            "generation": generation,
            "knobs": {
                "memory_limit": limit_mib.map(|m| m * MIB),
                "priority": 4,
                "frozen": frozen,
                "host_swap": false,
                "share_budget_us": null,
                "window_ms": null
            },
            "hold": hold
        });
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// The first message of `kind` for which `pick` holds, within `secs`.
    fn wait_for(&self, kind: &str, secs: u64, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the agent sent a line that is not JSON ({e}): {line}"));
            if v["type"] == kind && pick(&v) {
                return Some(v);
            }
        }
    }

    fn ack(&self, generation: u64, secs: u64, pick: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_for("ack", secs, |v| {
            v["generation"] == generation && pick(&v["reached"])
        })
    }
}

#[test]
fn the_hosts_snapshots_reach_a_cuda_process_in_the_guest_and_it_reports_back() {
    let dir = tempfile::tempdir().unwrap();
    let (so, fake, prog) = match build(dir.path()) {
        Ok(b) => b,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev/shm")).unwrap();
    let channel = dir.path().join("agent.sock");
    // The default shim socket, under the root.
    let shim_socket = root.join("run/gvm-vgpu/shim.sock");
    let _agent = AgentProcess(
        Command::new(BIN)
            .arg("--serve-unix")
            .arg(&channel)
            .arg("--root")
            .arg(&root)
            .args(["--collector", "proc", "--interval", "200ms"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut host = Host::connect(&channel);
    let hello = host.wait_for("hello", 10, |_| true).unwrap();
    assert_eq!(
        hello["protocol"], 3,
        "this agent speaks protocol 3: {hello}"
    );
    // Until the host sends a snapshot it may be a v1 host: v1 lines only.
    for _ in 0..3 {
        let line = host.lines.recv_timeout(Duration::from_secs(5)).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["type"] == "report" || v["type"] == "hello", "{line}");
    }

    // The snapshot comes before the process: it is put in force at its registration.
    host.snapshot(1, Some(64), false);
    let ack = host.ack(1, 5, |_| true).expect("snapshot 1 acknowledged");
    assert_eq!(ack["reached"]["processes"], 0);
    assert_eq!(ack["reached"]["memory_limit"], 64 * MIB);
    assert_eq!(ack["reached"]["priority"], 4);

    let mut p = CudaProcess::start(&so, &fake, &prog, &root, &shim_socket);
    let pid = p.child.id();
    let counters = host
        .wait_for("counters", 10, |v| {
            v["processes"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["pid"] == pid))
        })
        .expect("the counters list the process");
    let entry = counters["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pid"] == pid)
        .unwrap()
        .clone();
    assert_eq!(entry["name"], "driver", "{entry}");
    assert_eq!(p.ask("alloc 32", 10).as_deref(), Some("alloc=0"));
    assert_eq!(p.ask("alloc 48", 10).as_deref(), Some(OOM), "64 MiB limit");
    let counters = host
        .wait_for("counters", 10, |v| {
            v["processes"][0]["memory_current"] == 32 * MIB
        })
        .expect("the counters show the memory held");
    assert_eq!(counters["processes"][0]["pid"], pid);

    // A higher generation moves the limit; a lower one is ignored.
    host.snapshot(2, Some(128), false);
    host.ack(2, 5, |r| {
        r["processes"] == 1 && r["memory_limit"] == 128 * MIB
    })
    .expect("snapshot 2 acknowledged, with the process");
    assert_eq!(
        p.ask("alloc 48", 10).as_deref(),
        Some("alloc=0"),
        "128 MiB now"
    );
    host.snapshot(1, Some(16), false);
    let re = host
        .wait_for("ack", 5, |_| true)
        .expect("a stale snapshot is re-acked");
    assert_eq!(re["generation"], 2, "with the generation in force: {re}");
    assert_eq!(
        p.ask("alloc 16", 10).as_deref(),
        Some("alloc=0"),
        "16 MiB ignored"
    );
    assert_eq!(p.ask("alloc 64", 10).as_deref(), Some(OOM), "still 128 MiB");

    // Work shows as busy, its end as idle.
    assert_eq!(p.ask("launch", 10).as_deref(), Some("launched=1"));
    host.wait_for("busy", 5, |v| v["busy"] == true)
        .expect("busy after a launch");
    assert_eq!(p.ask("sync", 10).as_deref(), Some("synced=0"));
    host.wait_for("busy", 5, |v| v["busy"] == false)
        .expect("idle after the synchronise");

    // Freeze: acknowledged frozen with nothing in flight; launches are held.
    host.snapshot(3, Some(128), true);
    let ack = host
        .ack(3, 5, |r| r["frozen"] == true && r["in_flight"] == 0)
        .expect("the freeze is acknowledged complete");
    assert_eq!(ack["reached"]["processes"], 1);
    assert_eq!(p.ask("launch", 1), None, "a launch is held while frozen");
    host.wait_for("counters", 5, |v| {
        v["processes"][0]["pending"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    })
    .expect("the held launch shows as pending");
    host.snapshot(4, Some(128), false);
    host.ack(4, 5, |r| r["frozen"] == false)
        .expect("thaw acknowledged");
    assert_eq!(p.next(5).as_deref(), Some("launched=2"), "thaw releases it");

    // The VM-level hold (a more important VM is busy) holds launches the same way.
    host.snapshot_held(6, Some(128), false, true);
    host.ack(6, 5, |r| r["held"] == true && r["frozen"] == false)
        .expect("the hold is acknowledged");
    assert_eq!(p.ask("launch", 1), None, "a launch is held by the hold");
    host.snapshot(7, Some(128), false);
    host.ack(7, 5, |r| r["held"] == false).expect("hold lifted");
    assert_eq!(
        p.next(5).as_deref(),
        Some("launched=3"),
        "the lifted hold releases it"
    );

    // Hostile host lines change nothing and do not stop the agent.
    let mut oversize = vec![b'x'; 100 * 1024];
    oversize.push(b'\n');
    host.send_raw(&oversize);
    host.send_raw(b"{not json\n");
    host.send_raw(b"{\"type\":\"knobs\",\"generation\":9}\n");
    host.send_raw(&[0xff, 0xfe, b'\n']);
    host.send_raw(br#"{"type":"snapshot","generation":9,"knobs":{"memory_limit":1,"priority":99,"frozen":true,"host_swap":false,"share_budget_us":null,"window_ms":null},"hold":false}"#);
    host.send_raw(b"\n");
    assert_eq!(
        p.ask("alloc 1", 10).as_deref(),
        Some("alloc=0"),
        "nothing applied"
    );
    host.snapshot(8, Some(256), false);
    host.ack(8, 5, |r| r["memory_limit"] == 256 * MIB)
        .expect("the agent still serves the host after hostile lines");

    // A reconnect: hello again, and the resent snapshot is re-acked, not re-applied.
    drop(host);
    let mut host = Host::connect(&channel);
    let hello = host
        .wait_for("hello", 10, |_| true)
        .expect("hello on reconnect");
    assert_eq!(hello["protocol"], 3);
    host.snapshot(8, Some(256), false);
    host.ack(8, 5, |_| true)
        .expect("the resent snapshot is re-acked");
    assert_eq!(p.ask("alloc 64", 10).as_deref(), Some("alloc=0"));
    assert_eq!(p.ask("quit", 1), None);
}
