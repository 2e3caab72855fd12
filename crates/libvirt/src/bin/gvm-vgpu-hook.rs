//! `gvm-vgpu-hook`: libvirt's qemu hook for gvm-vgpu.
//!
//! Installed as `/etc/libvirt/hooks/qemu.d/gvm-vgpu` (a script that runs
//! `gvm-vgpu-hook qemu "$@"`), libvirt runs it as `qemu <domain> <op> <subop> <extra>` with the
//! domain XML on standard input. `prepare begin` creates the domain's missing vGPUs and gives
//! its VF vGPUs' VFs their recorded type (failing the start with a message on standard error
//! when one cannot be made ready); `release end` removes the transient ones. Every other step exits 0 at once. It never calls libvirt.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use gvm_catalog::Catalog;
use gvm_error_chain::error_chain;
use gvm_host_root::{HostRoot, ROOT_ENV};
use gvm_libvirt::domain_xml;
use gvm_libvirt::hook::{self, HookOp, Outcome};
use gvm_mdev::MdevHost;

const USAGE: &str = "usage: gvm-vgpu-hook [--root DIR] qemu <domain> <operation> <sub-operation> [extra] < domain.xml";

struct Args {
    root: Option<PathBuf>,
    object: String,
    domain: String,
    op: String,
    subop: String,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args> {
    let mut root = None;
    let mut positional = Vec::new();
    while let Some(a) = argv.next() {
        match a.as_str() {
            "--root" => {
                root = Some(PathBuf::from(
                    argv.next().context("--root needs a directory")?,
                ))
            }
            "-h" | "--help" => bail!("{USAGE}"),
            _ => match a.strip_prefix("--root=") {
                Some(dir) => root = Some(PathBuf::from(dir)),
                None => positional.push(a),
            },
        }
    }
    let mut it = positional.into_iter();
    let (Some(object), Some(domain), Some(op), Some(subop)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        bail!("{USAGE}");
    };
    Ok(Args {
        root,
        object,
        domain,
        op,
        subop,
    })
}

/// Read the rest of standard input, so that libvirt's write of the domain XML never meets a
/// closed pipe, whatever this hook decides to do with it.
fn drain_stdin() {
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

fn run() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    if args.object != "qemu" {
        // Only the qemu driver's hook concerns vGPUs.
        drain_stdin();
        return Ok(());
    }
    let op = hook::hook_op(&args.op, &args.subop);
    if op == HookOp::Ignore {
        drain_stdin();
        return Ok(());
    }
    let root = args
        .root
        .or_else(|| std::env::var_os(ROOT_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"));
    let host = HostRoot::new(root);
    let mut xml = String::new();
    std::io::stdin()
        .read_to_string(&mut xml)
        .context("cannot read the domain XML from standard input")?;
    let info = domain_xml::parse(&xml).with_context(|| {
        format!(
            "cannot read the XML libvirt passed for domain '{}'",
            args.domain
        )
    })?;
    let mdev = MdevHost::new(host.clone());
    let outcomes = match op {
        HookOp::Prepare => {
            let catalog_host = host.clone();
            let mut catalog = move || {
                let env = std::env::var_os(gvm_catalog::CATALOG_ENV);
                Catalog::load_with_builtin(&Catalog::dirs_with_env(&catalog_host, env.as_deref()))
                    .ok()
            };
            hook::prepare(&host, &mdev, &mut catalog, &info)
                .with_context(|| format!("gvm-vgpu: cannot start domain '{}'", info.name))?
        }
        HookOp::Release => hook::release(&mdev, &info).with_context(|| {
            format!(
                "gvm-vgpu: cannot release the vGPUs of domain '{}'",
                info.name
            )
        })?,
        HookOp::Ignore => Vec::new(),
    };
    for o in outcomes {
        // libvirt logs the hook's output; keep it to what changed.
        match o {
            Outcome::Created {
                uuid,
                parent,
                mdev_type,
            } => eprintln!(
                "gvm-vgpu: created vGPU {uuid} ({mdev_type} on {parent}) for domain '{}'",
                info.name
            ),
            Outcome::VfTypeSet {
                uuid,
                vf,
                type_name,
            } => eprintln!(
                "gvm-vgpu: set VF {vf} to type {type_name} for vGPU {uuid} of domain '{}'",
                info.name
            ),
            Outcome::Removed(uuid) => eprintln!(
                "gvm-vgpu: removed transient vGPU {uuid} of domain '{}'",
                info.name
            ),
            Outcome::Present(_) | Outcome::AlreadyGone(_) => {}
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}
