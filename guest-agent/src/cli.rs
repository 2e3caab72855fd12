//! Command-line options (clap definitions only).

use crate::collect::Choice;
use clap::{ArgGroup, Parser};
use std::path::PathBuf;
use std::time::Duration;

/// Report this guest's per-process GPU use to the host.
///
/// gvm-vgpu-agent runs inside a KVM guest that has a vGPU. Every interval it
/// collects which processes use the GPU (with NVML: their GPU memory and SM /
/// memory utilization; without NVML: the processes holding /dev/nvidia* open)
/// and writes one JSON line to the host, over the virtio-serial port
/// org.gvm.vgpu.agent.0 by default, or a vsock stream. It never blocks on the
/// host: when the host end is absent or slow, reports are dropped and counted,
/// and the channel is reopened later.
///
/// It is also the guest's local daemon for the CUDA interposer (libgvm_cuda.so):
/// it serves the shim's registration socket and puts the host's knobs (memory
/// limit, priority, freeze, host swap, the arbitration hold) in force on every
/// registered process, acknowledging each snapshot and reporting per-process
/// counters (agent protocol 2).
#[derive(Debug, Parser)]
#[command(name = "gvm-vgpu-agent", version, about, long_about)]
#[command(group(ArgGroup::new("target").args(["port_name", "device", "vsock", "serve_unix", "stdout"])))]
pub struct Cli {
    /// Name of the virtio-serial port to write to (looked up in
    /// /sys/class/virtio-ports; the /dev node is created if udev did not).
    #[arg(long, value_name = "NAME", default_value = crate::transport::virtio::DEFAULT_PORT_NAME)]
    pub port_name: String,

    /// Write to this device path instead (a virtio port node, a FIFO, a pty).
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,

    /// Connect to the host over vsock on this port instead.
    #[arg(long, value_name = "PORT")]
    pub vsock: Option<u32>,

    /// vsock context id to connect to (2 is the host).
    #[arg(long, value_name = "CID", default_value_t = crate::transport::vsock::HOST_CID, requires = "vsock")]
    pub cid: u32,

    /// Listen on this Unix socket and serve one host connection at a time instead
    /// (as QEMU's chardev server does: the host daemon connects as a client; for an
    /// agent run on the host itself, in tests and benchmarks).
    #[arg(long, value_name = "PATH")]
    pub serve_unix: Option<PathBuf>,

    /// The CUDA interposer's registration socket to serve: a path, or `none` to
    /// serve none. Default: /run/gvm-vgpu/shim.sock (under --root).
    #[arg(long, value_name = "PATH|none")]
    pub shim_socket: Option<String>,

    /// Print the lines on stdout instead of sending them (for debugging).
    #[arg(long)]
    pub stdout: bool,

    /// Time between reports: 500ms, 1s, 2m, or plain seconds.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,

    /// The longest a report may wait for the host before it is dropped.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Send one hello and one report, then exit (status 1 if they were not sent).
    #[arg(long)]
    pub once: bool,

    /// Where the figures come from.
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub collector: Choice,

    /// Repeat the hello every this many reports (so a host that reconnected
    /// unnoticed learns who we are).
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub hello_every: u64,

    /// Read /sys, /dev and /etc under this directory (tests).
    #[arg(long, value_name = "DIR", env = gvm_host_root::ROOT_ENV, hide = true)]
    pub root: Option<PathBuf>,

    /// Read processes from this directory instead of /proc (tests).
    #[arg(long, value_name = "DIR", hide = true)]
    pub proc_dir: Option<PathBuf>,
}

/// Parse `500ms`, `1s`, `1.5s`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; write e.g. 500ms, 1s or 2m"))?;
    let secs = v * scale;
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("'{s}' is out of range (1ms to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn targets_are_exclusive_and_cid_needs_vsock() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["a", "--stdout", "--vsock", "5"]).is_err());
        assert!(Cli::try_parse_from(["a", "--cid", "3"]).is_err());
        assert!(Cli::try_parse_from(["a", "--serve-unix", "/x", "--vsock", "5"]).is_err());
        let c = Cli::try_parse_from(["a", "--serve-unix", "/x", "--shim-socket", "none"]).unwrap();
        assert_eq!(c.serve_unix.as_deref(), Some(std::path::Path::new("/x")));
        assert_eq!(c.shim_socket.as_deref(), Some("none"));
        let c = Cli::try_parse_from(["a", "--vsock", "5000", "--cid", "3"]).unwrap();
        assert_eq!((c.vsock, c.cid), (Some(5000), 3));
        let c = Cli::try_parse_from(["a"]).unwrap();
        assert_eq!(c.port_name, "org.gvm.vgpu.agent.0");
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.collector, Choice::Auto);
    }
}
