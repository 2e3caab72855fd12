//! `gvm-vgpud`: the gvm-vgpu host daemon.
//!
//! Adopts every vGPU on the host, keeps its owners' GVM gcgroups tuned, serves
//! the API socket the `gvm-vgpu` CLI uses, and optionally Prometheus metrics.
//! See `docs/daemon.md`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use gvm_host_root::HostRoot;
use gvm_vgpud::backends;
use gvm_vgpud::catalog::{files_of, CatalogState};
use gvm_vgpud::cli::Args;
use gvm_vgpud::config::{self, ConfigFile, Reloader};
use gvm_vgpud::daemon::Daemon;
use gvm_vgpud::ports::{CatalogTypes, SysfsMdev};
use gvm_vgpud::server::{serve, ApiLimits, RescanPeriod, ServeOptions};
use tracing_subscriber::prelude::*;

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
    let matches = Args::command().get_matches();
    let cmdline = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let explicit = config::explicit_ids(&matches);
    // The config file lives with the daemon's state; the command line overrides it.
    let state = HostRoot::new(cmdline.state_root.as_deref().unwrap_or(&cmdline.root));
    let config_file = ConfigFile::new(cmdline.config.as_deref(), &state);
    let from_file = config_file.read()?;
    let args = config::merged(&cmdline, &explicit, &from_file);

    let (filter, log_filter) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::EnvFilter::try_new(&args.log_level)
            .with_context(|| format!("log-level {}", args.log_level))?,
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    tracing::info!(
        file = %config_file.path().display(),
        found = config_file.path().is_file(),
        guest_ack_ms = args.guest_ack_ms,
        rescan_ms = args.rescan_ms,
        slow_rescan_ms = args.slow_rescan_ms,
        verify_s = args.verify_s,
        log_level = %args.log_level,
        "settings in effect"
    );

    let host = HostRoot::new(&args.root);
    let group = args.group.as_deref().map(group_id).transpose()?;
    let source = config::catalog_source(&args, &host);
    let catalog = source
        .load()
        .context("fix the catalog file named here, then start gvm-vgpud again")?;
    let catalog_state = CatalogState::loaded(&source, files_of(&catalog), SystemTime::now());
    let backends = backends::build(args.backend, &host);
    let shim_registry = backends.shim_registry.clone();
    let mut daemon = Daemon::new(
        host.clone(),
        &state,
        Box::new(SysfsMdev::new(host.clone())),
        backends,
        Box::new(CatalogTypes::new(catalog)),
        config::timing(&args),
    )
    .context("cannot open the daemon's state under /etc/gvm-vgpu and /run/gvm-vgpu")?;
    daemon.set_catalog_state(catalog_state);
    if !args.owner_uids.is_empty() {
        daemon.set_claim_policy(config::claim_policy(&host, &args.owner_uids)?);
    }
    daemon.set_guest_ack_deadline(Duration::from_millis(args.guest_ack_ms));
    daemon.use_nvml(gvm_vgpud::nvidia_sched::NvidiaScheduler::open(
        args.nvml_library.as_deref(),
        args.root != std::path::Path::new("/"),
    ));
    if let Some(uri) =
        gvm_vgpud::domains::uri_for_host(&host, args.libvirt.as_deref(), args.no_libvirt)
    {
        daemon.use_libvirt(&uri, Some(state.path(gvm_vgpud::domains::STATUS_FILE)));
    }
    let rescan = RescanPeriod::new(config::rescan_period(&args));
    let reloader = Reloader::new(
        config_file,
        host.clone(),
        cmdline,
        explicit,
        args.clone(),
        rescan.clone(),
        Some(log_filter),
    );
    daemon.set_config_status(reloader.status());
    let opts = ServeOptions {
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| state.path(gvm_proto::DEFAULT_SOCKET)),
        group,
        metrics: args.metrics,
        rescan,
        uevents: !args.no_uevents,
        api: ApiLimits {
            max_connections: args.api_max_connections,
            idle: Duration::from_secs(args.api_idle_s),
        },
        catalog: Some(source),
        settings: Some(Arc::new(Mutex::new(reloader))),
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
        // One relay for host processes and VMs alike: the guest table reports each VM's
        // priority and busy claims to it, and reads what the host's processes hold.
        let hub = gvm_shim_host::relay_hub::RelayHub::new(registry.clone());
        daemon.guest_table().set_host_relay(hub.clone());
        gvm_vgpud::shim_listener::spawn_listener(
            &rt,
            &host,
            registry,
            hub,
            args.shim_socket.as_deref(),
        );
    }
    rt.block_on(serve(daemon, opts))
}
