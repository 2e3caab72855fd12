//! `gvm-vgpu-sim`: mount the simulated GPU host and serve it until SIGTERM/SIGINT.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use gvm_vgpu_sim::host::HeldRemove;
use gvm_vgpu_sim::mount::{ServeOptions, Server};
use gvm_vgpu_sim::procs::{owner_main, ChildProcs};
use gvm_vgpu_sim::Model;

use gvm_vgpu_sim::cli::{Cli, Command, HeldRemoveArg, ModelArg};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Owner) = cli.command {
        // The simulator blocks its stop signals; an owner must die from a plain `kill`.
        let _ = stop_signals().thread_unblock();
        owner_main();
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gvm-vgpu-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s
}

fn run(cli: Cli) -> Result<()> {
    let Some(root) = cli.root else {
        bail!("--root DIR is required (or set GVM_VGPU_ROOT)");
    };
    let opts = ServeOptions {
        root,
        model: match cli.model {
            ModelArg::GvmSim => Model::GvmSim,
            ModelArg::Mtty => Model::Mtty,
        },
        gpus: cli.gpus,
        owners_per_vgpu: cli.owners_per_vgpu,
        sriov_gpus: cli.sriov_gpus,
        held_remove: match cli.held_remove {
            HeldRemoveArg::Block => HeldRemove::Block,
            HeldRemoveArg::Kill => HeldRemove::Kill,
        },
        force_unmount_stale: cli.force_unmount_stale,
    };
    if !cli.foreground {
        return detach(&opts);
    }
    // Block the stop signals before any thread exists, so every thread inherits
    // the mask and the main thread alone receives them through sigwait.
    let signals = stop_signals();
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;
    let exe = std::env::current_exe().context("finding this program to start owner processes")?;
    let mut procs = ChildProcs::new(exe, vec![OsString::from("owner")]);
    // Owners hold their vGPU's VFIO group open (a stand-in file DIR/dev/vfio/<group>) where
    // a held remove blocks as on the kernel; with `--held-remove kill` a remove kills them
    // instead, so they are not shown as holders there.
    if opts.held_remove == HeldRemove::Block {
        let root = std::path::absolute(&opts.root).context("resolving --root")?;
        procs = procs.with_vfio_dir(root.join("dev/vfio"));
    }
    let server = Server::start(&opts, Box::new(procs))?;
    eprintln!(
        "gvm-vgpu-sim: serving {} with {} GPUs at {}",
        opts.model,
        if opts.model == Model::Mtty {
            1
        } else {
            opts.gpus
        },
        server.dir().display()
    );
    let sig = signals.wait().context("waiting for SIGTERM/SIGINT")?;
    eprintln!(
        "gvm-vgpu-sim: {sig:?} received, unmounting {}",
        server.dir().display()
    );
    server.stop()?;
    Ok(())
}

/// Start ourselves in the foreground as a detached child, wait until DIR is served, return.
fn detach(opts: &ServeOptions) -> Result<()> {
    use std::os::unix::process::CommandExt;
    gvm_vgpu_sim::mount::preflight(opts)?;
    let exe = std::env::current_exe().context("finding this program to detach")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the detached simulator")?;
    let marker = opts.root.join("sys/kernel/debug/gvm-sim/owners");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child
            .try_wait()
            .context("watching the detached simulator")?
        {
            bail!("the detached simulator exited with {status} before serving");
        }
        if marker.exists() {
            println!("{}", child.id());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the detached simulator (pid {}) did not mount {} within 10 s",
        child.id(),
        opts.root.display()
    )
}
