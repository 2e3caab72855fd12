//! On a machine with an NVIDIA GPU: the NVML collector reports a PyTorch process with the right
//! pid and a memory figure within 5% of what `nvidia-smi --query-compute-apps` says.
//!
//! Skips (printing `SKIP:`) without `nvidia-smi`, a working GPU, or Python with torch.
//! Run on a GPU host with `cargo test -p gvm-vgpu-agent --test nvml_gpu -- --nocapture`.

#![expect(
    clippy::unwrap_used,
    reason = "test fixtures: a failed unwrap is a failed test"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu-agent");

/// A PyTorch process holding about 6 GiB of GPU memory until killed.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("GVM_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn gpu_available() -> Option<String> {
    let smi = Command::new("nvidia-smi").arg("-L").output();
    match smi {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => None,
        Ok(_) => Some("nvidia-smi lists no GPU".into()),
        Err(_) => Some("nvidia-smi is not installed (no NVIDIA GPU here)".into()),
    }
}

/// `pid -> used MiB` from nvidia-smi.
fn smi_apps() -> Vec<(u32, u64)> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(str::trim);
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn nvml_collector_matches_nvidia_smi_for_a_pytorch_process() {
    if let Some(reason) = gpu_available() {
        println!("SKIP: nvml_collector_matches_nvidia_smi: {reason}");
        return;
    }
    let script = "import torch,sys,time\n\
                  x=torch.empty(6<<30,dtype=torch.uint8,device='cuda')\n\
                  torch.cuda.synchronize()\n\
                  print('ready',flush=True)\n\
                  time.sleep(120)\n";
    let child = Command::new(python())
        .args(["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let Ok(mut child) = child else {
        println!(
            "SKIP: nvml_collector_matches_nvidia_smi: cannot run {}",
            python()
        );
        return;
    };
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    let holder = Holder(child);
    if BufReader::new(stdout).read_line(&mut line).unwrap_or(0) == 0 || line.trim() != "ready" {
        println!(
            "SKIP: nvml_collector_matches_nvidia_smi: python with torch and CUDA did not start"
        );
        return;
    }
    let pid = holder.0.id();

    // nvidia-smi's figure for our process (it may take a moment to show up).
    let deadline = Instant::now() + Duration::from_secs(10);
    let smi_mib = loop {
        if let Some((_, mib)) = smi_apps().into_iter().find(|(p, _)| *p == pid) {
            break mib;
        }
        assert!(
            Instant::now() < deadline,
            "nvidia-smi never listed pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // GVM_AGENT_BIN lets the test binary run on a GPU host where the build tree is elsewhere.
    let bin = std::env::var("GVM_AGENT_BIN").unwrap_or_else(|_| BIN.to_string());
    let out = Command::new(bin)
        .args(["--stdout", "--once", "--collector", "nvml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("agent output:\n{text}");
    let report = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "report")
        .expect("a report line");
    let proc_entry = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("the agent did not report pid {pid}: {report}"));
    let agent_bytes = proc_entry["memory_bytes"].as_u64().expect("memory_bytes");
    let smi_bytes = smi_mib * 1024 * 1024;
    let diff = (agent_bytes as f64 - smi_bytes as f64).abs() / smi_bytes as f64;
    println!(
        "pid {pid}: agent {agent_bytes} B, nvidia-smi {smi_mib} MiB ({smi_bytes} B): {:.3}% apart",
        diff * 100.0
    );
    assert!(
        diff <= 0.05,
        "memory figures differ by {:.1}%",
        diff * 100.0
    );
}
