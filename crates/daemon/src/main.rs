//! `gvm-vgpud`: the gvm-vgpu host daemon.
//!
//! Adopts every vGPU on the host, keeps its owners' GVM gcgroups tuned, serves
//! the API socket the `gvm-vgpu` CLI uses, and optionally Prometheus metrics.
//! See `docs/daemon.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use gvm_host_root::{HostRoot, ROOT_ENV};
use gvm_vgpud::backends::{self, BackendKind};
use gvm_vgpud::catalog::{files_of, CatalogSource, CatalogState};
use gvm_vgpud::daemon::{Daemon, Timing};
use gvm_vgpud::ports::{CatalogTypes, SysfsMdev};
use gvm_vgpud::server::{serve, ApiLimits, ServeOptions};

/// The gvm-vgpu host daemon: adopts every vGPU and keeps its gcgroups tuned.
#[derive(Debug, Parser)]
#[command(name = "gvm-vgpud", version)]
struct Args {
    /// Host root (the simulated host's directory; `/` on a real host).
    #[arg(long, env = ROOT_ENV, default_value = "/")]
    root: PathBuf,
    /// API socket (default: /run/gvm-vgpu/api.sock under the state root).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Where /etc/gvm-vgpu and /run/gvm-vgpu live (default: the root), for a root whose
    /// /etc is read-only.
    #[arg(long, env = "GVM_VGPUD_STATE_ROOT")]
    state_root: Option<PathBuf>,
    /// Group (name or gid) whose members may read and retune through the socket.
    #[arg(long)]
    group: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Extra catalog directory (repeatable); the built-in catalog and the host's
    /// /usr/share/gvm-vgpu/mdev-types and /etc/gvm-vgpu/mdev-types are always read.
    /// SIGHUP (`systemctl reload gvm-vgpud`) reads them all again: a catalog that does not
    /// load whole is refused and the one in use stays (`gvm-vgpu status` says why).
    #[arg(long = "catalog")]
    catalogs: Vec<PathBuf>,
    /// Fast rescan period in milliseconds (devices, new owners): a vGPU made by hand or a new
    /// owner is adopted within one period (uevents, where the kernel sends them, are faster).
    #[arg(long, default_value_t = 400)]
    rescan_ms: u64,
    /// Period in milliseconds for re-listing every known owner's GPU registrations (a known
    /// owner registering one more GPU; new owners are found by the fast rescan). The pass is
    /// spread over the fast ticks; its cost grows with the number of owners.
    #[arg(long, default_value_t = 10_000)]
    slow_rescan_ms: u64,
    /// Period in seconds for reading every knob back (drift, totals in `list` and metrics;
    /// `show` and `stats` read fresh), spread over the ticks. Its cost grows with the number
    /// of owner gcgroups (4,000: about 0.5 % of a core at 60 s on the simulated host).
    #[arg(long, default_value_t = 120)]
    verify_s: u64,
    /// Gcgroup backend: `gvm` (GVM's debugfs tree), `shim` (control blocks of processes under
    /// libgvm_cuda.so, handed over at registration) or `auto` (GVM for the processes it
    /// registered, the shim for the rest: the shim alone on a host without GVM).
    #[arg(long, value_enum, env = "GVM_VGPUD_BACKEND", default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Socket on which CUDA processes under libgvm_cuda.so register and hand over their
    /// control blocks (default: /run/gvm-vgpu/shim.sock under the host root; `none`: only
    /// root-owned mode-0600 block files in /dev/shm are found, by the scan).
    #[arg(long, value_name = "PATH|none")]
    shim_socket: Option<String>,
    /// Do not listen to kernel uevents even on a real host.
    #[arg(long)]
    no_uevents: bool,
    /// Follow this libvirt URI's domain lifecycle (paused domains' vGPUs are frozen, domain
    /// names resolve). Default on a real host whose libvirtd socket exists: qemu:///system.
    #[arg(long, value_name = "URI", conflicts_with = "no_libvirt")]
    libvirt: Option<String>,
    /// Do not follow libvirt even on a real host.
    #[arg(long)]
    no_libvirt: bool,
    /// Guest-agent ingest limits over the defaults, as comma-separated key=value
    /// (e.g. `partial_line_timeout_ms=2000,reconnect_after_ms=10000`; see docs/agent.md).
    #[arg(long, env = "GVM_VGPUD_AGENT_LIMITS", default_value = "")]
    agent_limits: String,
    /// How long a VM's guest agent (protocol 2) has to acknowledge a new state, in ms:
    /// `set`, `freeze` and `thaw` answer once it did or this passed, and a freeze not
    /// acknowledged as complete by then pauses the VM through its QMP socket
    /// (<state>/run/gvm-vgpu/qmp/<uuid>.sock, from `gvm-vgpu qemu-args --qmp-socket`).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    guest_ack_ms: u64,
    /// Also let this user (a uid or a name in the host's /etc/passwd) own vGPUs by naming one
    /// in its processes' GVM_VGPU_UUID or cgroup. Repeat for several. Root, gvm-vgpud's own
    /// user and libvirt's QEMU user (libvirt-qemu or qemu) always may; any other user's claim is
    /// refused, logged once and listed by `gvm-vgpu show`.
    #[arg(long = "owner-uid", value_name = "UID|USER")]
    owner_uids: Vec<String>,
    /// Close an API connection that sends nothing for this many seconds (time spent on the
    /// daemon's answer does not count).
    #[arg(long, value_name = "SECONDS", default_value_t = gvm_vgpud::server::DEFAULT_API_IDLE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    api_idle_s: u64,
    /// API connections open at once, all callers together; the last 8 are kept for root and
    /// the daemon's own user, and any other user may hold 32. Keep it well below the
    /// daemon's open-file limit (LimitNOFILE).
    #[arg(long, value_name = "N", default_value_t = gvm_vgpud::server::DEFAULT_API_MAX_CONNECTIONS,
          value_parser = api_max_connections)]
    api_max_connections: usize,
}

fn user_id(host: &HostRoot, spec: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = spec.parse() {
        return Ok(uid);
    }
    let path = host.path("/etc/passwd");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} to look up --owner-uid {spec}",
            path.display()
        )
    })?;
    gvm_vgpud::owners::id_in_db(&text, spec).with_context(|| {
        format!(
            "--owner-uid {spec}: no such user in {}: give a uid or a user name",
            path.display()
        )
    })
}

fn api_max_connections(s: &str) -> Result<usize, String> {
    let least = gvm_vgpud::server::API_ADMIN_RESERVE + 1;
    match s.parse::<usize>() {
        Ok(n) if n >= least => Ok(n),
        _ => Err(format!(
            "give a number of connections of at least {least} (the last {} are kept for root)",
            least - 1
        )),
    }
}

fn group_id(spec: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    gvm_vgpud::owners::id_in_db(&text, spec)
        .with_context(|| format!("no group named '{spec}' in /etc/group: give a name or gid"))
}

fn main() -> anyhow::Result<()> {
    // A SIGHUP (`systemctl reload`) before `serve` installs its handler must not end the
    // daemon (the default action): until then there is nothing to reload, the catalog is
    // being read for the first time.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread is started.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let host = HostRoot::new(&args.root);
    let group = args.group.as_deref().map(group_id).transpose()?;
    let mut dirs = args.catalogs.clone();
    dirs.extend(gvm_catalog::Catalog::default_dirs(&host));
    let source = CatalogSource::new(dirs);
    let catalog = source
        .load()
        .context("fix the catalog file named here, then start gvm-vgpud again")?;
    let catalog_state = CatalogState::loaded(&source, files_of(&catalog), SystemTime::now());
    let state = HostRoot::new(args.state_root.as_deref().unwrap_or(&args.root));
    let backends = backends::build(args.backend, &host);
    let shim_registry = backends.shim_registry.clone();
    let mut daemon = Daemon::new(
        host.clone(),
        &state,
        Box::new(SysfsMdev::new(host.clone())),
        backends,
        Box::new(CatalogTypes::new(catalog)),
        Timing {
            slow_rescan: Duration::from_millis(args.slow_rescan_ms.max(10)),
            verify: Duration::from_secs(args.verify_s.max(1)),
        },
    )
    .context("cannot open the daemon's state under /etc/gvm-vgpu and /run/gvm-vgpu")?;
    daemon.set_catalog_state(catalog_state);
    if !args.owner_uids.is_empty() {
        let uids = args
            .owner_uids
            .iter()
            .map(|u| user_id(&host, u))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        daemon.set_claim_policy(
            gvm_vgpud::owners::ClaimPolicy::default_for(&host, gvm_vgpud::owners::own_uid())
                .with(uids),
        );
    }
    daemon.set_guest_ack_deadline(std::time::Duration::from_millis(args.guest_ack_ms));
    if let Some(uri) =
        gvm_vgpud::domains::uri_for_host(&host, args.libvirt.as_deref(), args.no_libvirt)
    {
        daemon.use_libvirt(&uri, Some(state.path(gvm_vgpud::domains::STATUS_FILE)));
    }
    let opts = ServeOptions {
        socket: args
            .socket
            .unwrap_or_else(|| state.path(gvm_proto::DEFAULT_SOCKET)),
        group,
        metrics: args.metrics,
        rescan: Duration::from_millis(args.rescan_ms.max(10)),
        uevents: !args.no_uevents,
        api: ApiLimits {
            max_connections: args.api_max_connections,
            idle: Duration::from_secs(args.api_idle_s),
        },
        catalog: Some(source),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut agents = gvm_vgpud::agent_ingest::AgentConfig::new(&host, &state);
    agents.limits = gvm_vgpud::agent_ingest::parse_limits(&args.agent_limits)?;
    rt.spawn(gvm_vgpud::agent_ingest::run(daemon.guest_table(), agents));
    if let Some(registry) = shim_registry {
        gvm_vgpud::shim_listener::spawn_listener(&rt, &host, registry, args.shim_socket.as_deref());
    }
    rt.block_on(serve(daemon, opts))
}
