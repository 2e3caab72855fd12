//! The guest agent end to end with a real guest: Debian's kernel boots under QEMU
//! (TCG) with the static `gvm-vgpu-agent` in a busybox initramfs; its virtio-serial
//! port is wired to `<root>/run/gvm-vgpu/agent/<uuid>.sock` (QEMU listens there,
//! exactly as `gvm-vgpu qemu-args --agent-socket` wires it) for a vGPU created on
//! the simulated host; `gvm-vgpud` on that root connects to the socket. The test
//! polls `gvm-vgpu --json stats <uuid>` until the guest's processes (by pid and
//! name) appear, and checks the Prometheus metrics say the same.
//!
//! In the guest, two `sleep`s hold `/dev/nvidia0` open (a plain file: there is no
//! NVIDIA driver, and the agent's `/proc` collector only looks at fd link names),
//! so the agent has processes to report. A second virtio-serial port is the test's
//! control line: the guest powers off when the host writes to it.
//!
//! Skips (printing `SKIP: <reason>`) when the kernel cannot be prepared, QEMU is
//! missing, or the simulated host cannot be mounted (root and /dev/fuse).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gvm_testkit::{require_command, require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vgpu_e2e::guest::{
    boot, build_host_packages, build_static, cli, kernel_or_skip, port_lookup_script, repo_root,
    virtio_serial_args, BootOptions, GuestImage, KillOnDrop,
};

const TEST: &str = "guest_agent";
const UUID: &str = "6a0e5d1c-7a3b-4c1e-9f00-00000000a9e7";
const CTL_PORT: &str = "org.gvm.test.ctl";

/// The guest's script: fake GPU holders, the agent, then wait for the host's word.
fn guest_script() -> String {
    format!(
        r#"
touch /dev/nvidia0 /dev/nvidiactl
sleep 600 < /dev/nvidia0 &
echo "GVMRESULT holder $! sleep"
sh -c 'exec 3</dev/nvidiactl 4</dev/nvidia0; exec sleep 601' &
echo "GVMRESULT holder $! sleep"
gvm-vgpu-agent --interval 500ms 2>/tmp/agent.err &
{lookup}echo "GVMRESULT ctl $ctl"
# The port reads EOF until the host connects: poll for the word, 50 s at most.
word=
exec 5<$ctl
for i in $(seq 250); do
  read -t 1 word <&5
  [ -n "$word" ] && break
  sleep 0.2
done
echo "GVMRESULT host-said $word"
while IFS= read -r l; do echo "GVMRESULT agent-stderr $l"; done < /tmp/agent.err
exit 0
"#,
        lookup = port_lookup_script("ctl", CTL_PORT)
    )
}

fn http_get(port: u16) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn the_daemon_shows_a_real_guests_processes() {
    let t0 = Instant::now();
    let repo = repo_root();
    if skip(TEST, require_command("qemu-system-x86_64")) || skip(TEST, require_root_and_fuse()) {
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
    let bin = build_host_packages(&repo, &["gvm-vgpud", "gvm-vgpu-cli", "gvm-vgpu-sim"])
        .unwrap_or_else(|e| panic!("host build failed: {e}"));
    println!("built in {:.1} s", t0.elapsed().as_secs_f64());

    // The host: simulated GPUs, the daemon with metrics, one vGPU.
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let root = sim.root().to_path_buf();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let log_path = root.join("gvm-vgpud.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let _daemon = KillOnDrop(
        Command::new(bin.join("gvm-vgpud"))
            .arg("--root")
            .arg(&root)
            .args(["--metrics", &format!("127.0.0.1:{port}")])
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

    // The guest, its agent port on the vGPU's default agent socket.
    let work = tempfile::tempdir().expect("tempdir");
    let initrd = GuestImage::new(&kernel)
        .module("virtio_ring")
        .module("virtio")
        .module("virtio_pci_legacy_dev")
        .module("virtio_pci_modern_dev")
        .module("virtio_pci")
        .module("virtio_console")
        .binary(&agent, "gvm-vgpu-agent")
        .init_script(&guest_script())
        .build(work.path())
        .expect("initramfs");
    let agent_sock = root.join(format!("run/gvm-vgpu/agent/{UUID}.sock"));
    std::fs::create_dir_all(agent_sock.parent().expect("a parent")).expect("agent dir");
    let ctl_sock = work.path().join("ctl.sock");
    let opts = BootOptions::new(kernel.vmlinuz(), &initrd)
        .timeout(Duration::from_secs(90))
        .args(virtio_serial_args(&[
            (&agent_sock, "org.gvm.vgpu.agent.0"),
            (&ctl_sock, CTL_PORT),
        ]));
    let booted = Instant::now();
    let guest = std::thread::spawn(move || boot(&opts));

    // Poll `gvm-vgpu --json stats <uuid>` until both holders are reported.
    let mut last = String::new();
    let mut seen: Option<serde_json::Value> = None;
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline && !guest.is_finished() {
        let (ok, out) = cli(&bin, &root, &["--json", "stats", UUID]);
        if ok {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
                let n = v["channels"][0]["stats"]["last_report"]["processes"]
                    .as_array()
                    .map_or(0, Vec::len);
                if n >= 2 {
                    seen = Some(v);
                    break;
                }
            }
        }
        last = out;
        std::thread::sleep(Duration::from_millis(250));
    }
    let visible_after = booted.elapsed();
    let metrics = http_get(port);
    let (text_ok, text) = cli(&bin, &root, &["stats", UUID]);

    // Tell the guest to power off, then collect its console.
    // (Repeated: what QEMU gets while the guest's port is closed is dropped.)
    if let Ok(mut s) = UnixStream::connect(&ctl_sock) {
        let end = Instant::now() + Duration::from_secs(20);
        while !guest.is_finished() && Instant::now() < end {
            let _ = s.write_all(b"stop\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let run = guest
        .join()
        .expect("boot thread")
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let results = run.results();
    let daemon_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let Some(v) = seen else {
        panic!(
            "the guest's processes never showed in `gvm-vgpu stats` (last answer: {last})\n\
             guest results: {results:?}\nconsole tail: {}\ndaemon log:\n{daemon_log}",
            run.console
                .chars()
                .rev()
                .take(3000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
    };
    println!(
        "processes visible {:.1} s after QEMU started; whole test {:.1} s",
        visible_after.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    // The guest printed the pids of its two holders; the daemon must show exactly those.
    let holders: Vec<u64> = results
        .iter()
        .filter_map(|r| r.strip_prefix("holder "))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(holders.len(), 2, "guest results: {results:?}");
    let info = &v["channels"][0];
    assert_eq!(info["uuid"], UUID);
    assert_eq!(info["connected"], true);
    assert_eq!(info["violations"], 0, "{info}");
    assert_eq!(info["stats"]["hello"]["collector"], "proc");
    let procs = info["stats"]["last_report"]["processes"]
        .as_array()
        .expect("processes");
    for pid in &holders {
        let p = procs
            .iter()
            .find(|p| p["pid"].as_u64() == Some(*pid))
            .unwrap_or_else(|| panic!("holder {pid} not reported: {procs:?}"));
        assert_eq!(p["name"], "sleep", "{p}");
    }
    assert!(text_ok, "{text}");
    for pid in &holders {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{pid} ")) && l.contains("sleep")),
            "`gvm-vgpu stats` text lacks {pid}:\n{text}"
        );
    }
    for pid in &holders {
        let line = format!("gvm_vgpu_guest_process_info{{domain=\"\",uuid=\"{UUID}\",pid=\"{pid}\",name=\"sleep\"}} 1");
        assert!(metrics.contains(&line), "metrics lack {line}:\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        "gvm_vgpu_guest_agent_connected{{domain=\"\",uuid=\"{UUID}\"}} 1"
    )));
    assert!(
        daemon_log.contains("guest agent said hello"),
        "daemon log:\n{daemon_log}"
    );
    assert!(results.iter().any(|r| r == "host-said stop"), "{results:?}");
}
