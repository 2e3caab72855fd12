//! gvm-vgpu-agent: report this guest's per-process GPU use to the host.

use clap::Parser;
use gvm_error_chain::error_chain;
use gvm_host_root::HostRoot;
use gvm_vgpu_agent::agent::{Agent, Options, StepOutcome, Target};
use gvm_vgpu_agent::cli::Cli;
use gvm_vgpu_agent::collect;
use gvm_vgpu_agent::local::{listener, LocalDaemon};
use std::path::PathBuf;
use std::process::ExitCode;

/// The shim socket from `--shim-socket`: `none` disables, a path is taken as
/// given, nothing means the default under the root.
fn shim_socket(root: &HostRoot, flag: Option<&str>) -> Option<PathBuf> {
    match flag {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(root.path(gvm_shim_host::handover::SOCKET_PATH)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut root = HostRoot::new(cli.root.clone().unwrap_or_else(|| "/".into()));
    if let Some(p) = &cli.proc_dir {
        root = root.with_proc_dir(p);
    }
    let target = if cli.stdout {
        Target::Stdout
    } else if let Some(path) = &cli.serve_unix {
        Target::ServeUnix(path.clone())
    } else if let Some(port) = cli.vsock {
        Target::Vsock { cid: cli.cid, port }
    } else if let Some(path) = &cli.device {
        Target::Device(path.clone())
    } else {
        Target::Port(cli.port_name.clone())
    };
    let (collector, why_not_nvml) = match collect::open(cli.collector, &root) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gvm-vgpu-agent: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(why) = why_not_nvml {
        eprintln!("gvm-vgpu-agent: using the /proc collector ({why})");
    }
    let opts = Options {
        target,
        interval: cli.interval,
        timeout: cli.timeout,
        hello_every: cli.hello_every,
    };
    let mut agent = Agent::new(opts, root.clone(), collector);
    match shim_socket(&root, cli.shim_socket.as_deref()) {
        None => eprintln!("gvm-vgpu-agent: shim registration socket disabled (--shim-socket none): the host's knobs reach no CUDA process in this guest"),
        Some(path) => {
            let local = LocalDaemon::new(root.clone());
            match listener::spawn(&path, local.clone()) {
                Ok(()) => {
                    eprintln!(
                        "gvm-vgpu-agent: serving CUDA shim registrations on {}",
                        path.display()
                    );
                    agent = agent.with_local(local);
                }
                Err(e) => eprintln!(
                    "gvm-vgpu-agent: {}; the host's knobs reach no CUDA process in this guest",
                    error_chain(&e)
                ),
            }
        }
    }
    if cli.once {
        return match agent.step() {
            StepOutcome::Sent => ExitCode::SUCCESS,
            StepOutcome::Dropped => ExitCode::FAILURE,
        };
    }
    agent.run()
}
