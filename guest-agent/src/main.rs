//! gvm-vgpu-agent: report this guest's per-process GPU use to the host.

use clap::Parser;
use gvm_error_chain::error_chain;
use gvm_host_root::HostRoot;
use gvm_vgpu_agent::agent::{Agent, Options, StepOutcome, Target};
use gvm_vgpu_agent::cli::Cli;
use gvm_vgpu_agent::collect;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut root = HostRoot::new(cli.root.clone().unwrap_or_else(|| "/".into()));
    if let Some(p) = &cli.proc_dir {
        root = root.with_proc_dir(p);
    }
    let target = if cli.stdout {
        Target::Stdout
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
    let mut agent = Agent::new(opts, root, collector);
    if cli.once {
        return match agent.step() {
            StepOutcome::Sent => ExitCode::SUCCESS,
            StepOutcome::Dropped => ExitCode::FAILURE,
        };
    }
    agent.run()
}
