//! `gvm-vgpud`'s command line (clap only; `main.rs` acts on it), in the library so that the
//! man page generator (`gvm-vgpu-docs`) renders the same options the binary parses.
// The doc comments are `--help` and man-page text, where `<uuid>` is a placeholder: rustdoc's
// HTML and URL lints do not apply to them.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gvm_host_root::ROOT_ENV;

use crate::backends::BackendKind;

/// The gvm-vgpu host daemon: adopts every vGPU and keeps its gcgroups tuned.
///
/// gvm-vgpud adopts every mediated vGPU on the host, however it was made (gvm-vgpu, libvirt,
/// a UUID written into an mdev create file by hand), finds the host processes that own its
/// GPU channels and keeps each owner's GVM gcgroups at the vGPU's memory limit, compute
/// priority and freeze state. It creates the vGPUs of autostart definitions when their GPU
/// appears, schedules GPU time between vGPUs, follows libvirt's domain lifecycle, reads what
/// guest agents report, and serves the API socket that gvm-vgpu uses.
///
/// Every option below can also be set in /etc/gvm-vgpu/gvm-vgpud.toml (under the state root;
/// --config names another file), by its long name: `guest-ack-ms = 250`; the command line and
/// the options' environment variables override the file.
///
/// Under systemd (Type=notify) it reports READY=1 once the API socket answers. SIGHUP
/// (systemctl reload gvm-vgpud) reads the config file and the vGPU type catalog again;
/// SIGTERM stops it.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "gvm-vgpud", version)]
pub struct Args {
    /// Host root (the simulated host's directory; `/` on a real host).
    #[arg(long, env = ROOT_ENV, default_value = "/")]
    pub root: PathBuf,
    /// API socket (default: /run/gvm-vgpu/api.sock under the state root).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where /etc/gvm-vgpu and /run/gvm-vgpu live (default: the root), for a root whose
    /// /etc is read-only.
    #[arg(long, env = "GVM_VGPUD_STATE_ROOT")]
    pub state_root: Option<PathBuf>,
    /// Config file (default: /etc/gvm-vgpu/gvm-vgpud.toml under the state root, where a
    /// missing file means the defaults; a file named here must exist). Its keys are these
    /// options' long names; SIGHUP reads it again and applies what can change while running.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Group (name or gid) whose members may read and retune through the socket.
    #[arg(long)]
    pub group: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Extra catalog directory (repeatable); the built-in catalog and the host's
    /// /usr/share/gvm-vgpu/mdev-types and /etc/gvm-vgpu/mdev-types are always read.
    /// SIGHUP (`systemctl reload gvm-vgpud`) reads them all again: a catalog that does not
    /// load whole is refused and the one in use stays (`gvm-vgpu status` says why).
    #[arg(long = "catalog")]
    pub catalogs: Vec<PathBuf>,
    /// Fast rescan period in milliseconds (devices, new owners): a vGPU made by hand or a new
    /// owner is adopted within one period (uevents, where the kernel sends them, are faster).
    #[arg(long, default_value_t = 400)]
    pub rescan_ms: u64,
    /// Period in milliseconds for re-listing every known owner's GPU registrations (a known
    /// owner registering one more GPU; new owners are found by the fast rescan). The pass is
    /// spread over the fast ticks; its cost grows with the number of owners.
    #[arg(long, default_value_t = 10_000)]
    pub slow_rescan_ms: u64,
    /// Period in seconds for reading every knob back (drift, totals in `list` and metrics;
    /// `show` and `stats` read fresh), spread over the ticks. Its cost grows with the number
    /// of owner gcgroups (4,000: about 0.5 % of a core at 60 s on the simulated host).
    #[arg(long, default_value_t = 120)]
    pub verify_s: u64,
    /// Gcgroup backend: `gvm` (GVM's debugfs tree), `shim` (control blocks of processes under
    /// libgvm_cuda.so, handed over at registration) or `auto` (GVM for the processes it
    /// registered, the shim for the rest: the shim alone on a host without GVM).
    #[arg(long, value_enum, env = "GVM_VGPUD_BACKEND", default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Socket on which CUDA processes under libgvm_cuda.so register and hand over their
    /// control blocks (default: /run/gvm-vgpu/shim.sock under the host root; `none`: only
    /// root-owned mode-0600 block files in /dev/shm are found, by the scan).
    #[arg(long, value_name = "PATH|none")]
    pub shim_socket: Option<String>,
    /// Do not listen to kernel uevents even on a real host.
    #[arg(long)]
    pub no_uevents: bool,
    /// Follow this libvirt URI's domain lifecycle (paused domains' vGPUs are frozen, domain
    /// names resolve). Default on a real host whose libvirtd socket exists: qemu:///system.
    #[arg(long, value_name = "URI", conflicts_with = "no_libvirt")]
    pub libvirt: Option<String>,
    /// Do not follow libvirt even on a real host.
    #[arg(long)]
    pub no_libvirt: bool,
    /// Guest-agent ingest limits over the defaults, as comma-separated key=value
    /// (e.g. `partial_line_timeout_ms=2000,reconnect_after_ms=10000`; see docs/agent.md).
    #[arg(long, env = "GVM_VGPUD_AGENT_LIMITS", default_value = "")]
    pub agent_limits: String,
    /// How long a VM's guest agent (protocol 2) has to acknowledge a new state, in ms:
    /// `set`, `freeze` and `thaw` answer once it did or this passed, and a freeze not
    /// acknowledged as complete by then pauses the VM through its QMP socket
    /// (<state>/run/gvm-vgpu/qmp/<uuid>.sock, from `gvm-vgpu qemu-args --qmp-socket`).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub guest_ack_ms: u64,
    /// Also let this user (a uid or a name in the host's /etc/passwd) own vGPUs by naming one
    /// in its processes' GVM_VGPU_UUID or cgroup. Repeat for several. Root, gvm-vgpud's own
    /// user and libvirt's QEMU user (libvirt-qemu or qemu) always may; any other user's claim is
    /// refused, logged once and listed by `gvm-vgpu show`.
    #[arg(long = "owner-uid", value_name = "UID|USER")]
    pub owner_uids: Vec<String>,
    /// Close an API connection that sends nothing for this many seconds (time spent on the
    /// daemon's answer does not count).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::server::DEFAULT_API_IDLE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub api_idle_s: u64,
    /// API connections open at once, all callers together; the last 8 are kept for root and
    /// the daemon's own user, and any other user may hold 32. Keep it well below the
    /// daemon's open-file limit (LimitNOFILE).
    #[arg(long, value_name = "N", default_value_t = crate::server::DEFAULT_API_MAX_CONNECTIONS,
          value_parser = api_max_connections)]
    pub api_max_connections: usize,
    /// The NVML library to load (NVIDIA's vGPU scheduler and per-vGPU framebuffer, on
    /// NVIDIA vGPU hosts). Default: the driver's libnvidia-ml.so.1 on a real host, none on a
    /// simulated one (--root other than /). Without NVML `policy show` says so and the rest
    /// works.
    #[arg(long, value_name = "PATH")]
    pub nvml_library: Option<PathBuf>,
    /// What the log (stderr, the journal under systemd) shows: a level (error, warn, info,
    /// debug, trace) or tracing directives such as `info,gvm_vgpud=debug`. SIGHUP applies a
    /// new value from the config file.
    #[arg(long, value_name = "FILTER", env = "RUST_LOG", default_value = "info",
          value_parser = log_filter)]
    pub log_level: String,
}

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| {
            format!(
                "{e}: give a level (error, warn, info, debug, trace) or directives such as \
                 info,gvm_vgpud=debug"
            )
        })
}

fn api_max_connections(s: &str) -> Result<usize, String> {
    let least = crate::server::API_ADMIN_RESERVE + 1;
    match s.parse::<usize>() {
        Ok(n) if n >= least => Ok(n),
        _ => Err(format!(
            "give a number of connections of at least {least} (the last {} are kept for root)",
            least - 1
        )),
    }
}
