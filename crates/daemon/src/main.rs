//! `gvm-vgpud`: the gvm-vgpu host daemon.
//!
//! Adopts every vGPU on the host, keeps its owners' GVM gcgroups tuned, serves
//! the API socket the `gvm-vgpu` CLI uses, and optionally Prometheus metrics.
//! See `docs/daemon.md`.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use gvm_host_root::HostRoot;
use gvm_vgpud::backends;
use gvm_vgpud::catalog::{files_of, CatalogSource, CatalogState};
use gvm_vgpud::cli::Args;
use gvm_vgpud::daemon::{Daemon, Timing};
use gvm_vgpud::ports::{CatalogTypes, SysfsMdev};
use gvm_vgpud::server::{serve, ApiLimits, ServeOptions};

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
