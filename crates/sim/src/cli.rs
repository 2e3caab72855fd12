//! Command-line definition of `gvm-vgpu-sim` (clap only; `main.rs` dispatches).
// The doc comments are `--help` and man-page text, where `<uuid>` is a placeholder: rustdoc's
// HTML and URL lints do not apply to them.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Serve a simulated GPU host (mdev sysfs + GVM debugfs) under DIR with FUSE.
///
/// gvm-vgpu-sim mounts a FUSE filesystem at DIR that behaves like the parts of a
/// KVM host's /sys that gvm-vgpu uses: mdev parents and vGPU types under
/// DIR/sys/class/mdev_bus, devices under DIR/sys/bus/mdev/devices, IOMMU groups,
/// and GVM's gcgroup tree under DIR/sys/kernel/debug/nvidia-uvm/processes, with
/// the kernel's errno values. Point gvm-vgpu at it with --root DIR (or
/// GVM_VGPU_ROOT=DIR); run mdevctl against it in a private mount namespace with
/// DIR/sys bind-mounted over /sys. Only DIR/sys is the FUSE mount: DIR/etc and
/// DIR/run stay ordinary directories, so gvm-vgpud --root DIR keeps its
/// definitions and socket under the same root.
///
/// With --sriov-gpus N it also serves NVIDIA's SR-IOV vGPUs (docs/vendor-vfio.md):
/// PFs DIR/sys/bus/pci/devices/0000:41:00.0, ... with sriov_numvfs, sriov_totalvfs
/// and virtfnN, and each enabled VF with physfn and nvidia/{creatable_vgpu_types,
/// current_vgpu_type, vgpu_params, gpu_instance_id, placement_id}.
///
/// Owner processes (children carrying GVM_VGPU_UUID=<uuid>), parent drivers and
/// what is not sysfs on an SR-IOV host (NVML's mode, a VM holding a VF, a reboot)
/// are driven through DIR/sys/kernel/debug/gvm-sim/control, one command per write:
///   spawn <uuid> [gpu=<uvm index>] [memory=<bytes>] [busy=0|1] [register_delay_ms=<n>]
///   kill <pid>
///   set <pid> memory=<bytes>|busy=0|1
///   unregister <parent>     (like rmmod: its devices go, it leaves mdev_bus)
///   register <parent>       (like insmod)
///   vf-heterogeneous <PF> on|off   (NVML's mixed-size mode; VFs enabled, none with a vGPU)
///   vf-hold <VF>            (a VM opens the VF: its vGPU cannot be removed)
///   vf-release <VF>         (the VM closes it)
///   vf-reset                (a reboot of the SR-IOV GPUs: VFs, vGPUs and modes gone)
/// and listed in DIR/sys/kernel/debug/gvm-sim/owners as
///   pid uuid gpu busy memory_wanted gpu_time_us frozen
///
/// It runs until SIGTERM or SIGINT, then kills its owners and unmounts. Needs root
/// and /dev/fuse.
///
/// Examples:
///   gvm-vgpu-sim --root /tmp/sim --foreground &
///   echo $(uuidgen) > /tmp/sim/sys/class/mdev_bus/0000:3b:00.0/mdev_supported_types/gvmsim-1/create
#[derive(Debug, Parser)]
#[command(
    name = "gvm-vgpu-sim",
    version,
    verbatim_doc_comment,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Directory to mount the simulated host on (must exist).
    #[arg(long, value_name = "DIR", env = "GVM_VGPU_ROOT", required = true)]
    pub root: Option<PathBuf>,

    /// Number of simulated GPUs (mdev parents 0000:3b:00.0, 0000:3c:00.0, ...; UVM indices 0, 8, ...).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus: u32,

    /// Number of simulated SR-IOV GPUs whose VFs carry vGPUs (PFs 0000:41:00.0, 0000:42:00.0,
    /// ...; H100-like, 80 GiB, 20 VFs, types H100-4C..H100-80C). 0 serves no SR-IOV tree.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub sriov_gpus: u32,

    /// Which host to simulate.
    #[arg(long, value_enum, default_value_t = ModelArg::GvmSim)]
    pub model: ModelArg,

    /// Owner processes to start automatically for every created vGPU.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub owners_per_vgpu: u32,

    /// What writing 1 to `remove` does to a device that owner processes still hold:
    /// `block` waits until they are gone, as the kernel does (measured on 6.1 with mtty and
    /// VFIO, see docs/conformance.md), and each owner holds the device's VFIO group open
    /// (DIR/dev/vfio/<group>, a regular file standing in for the kernel's node) so that
    /// holder detection finds it; `kill` kills them and removes it at once, and owners do
    /// not hold the group open.
    #[arg(long, value_enum, default_value_t = HeldRemoveArg::Block)]
    pub held_remove: HeldRemoveArg,

    /// Stay in the foreground; without it the simulator detaches once DIR is mounted.
    #[arg(long)]
    pub foreground: bool,

    /// If DIR is a stale FUSE mount from a crashed run, lazily unmount it first.
    #[arg(long)]
    pub force_unmount_stale: bool,

    /// Internal subcommands.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Internal subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Body of an owner process: wait until killed (started by the simulator itself).
    #[command(hide = true)]
    Owner,
}

/// `--held-remove` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeldRemoveArg {
    /// The write waits until the owners are gone (the kernel's behaviour).
    Block,
    /// The owners are killed and the device removed at once.
    Kill,
}

/// `--model` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// N NVIDIA-like GPUs with 80 GiB each, types gvmsim-1..6, GVM gcgroup tree.
    GvmSim,
    /// The kernel's mtty sample (6.1): one parent `mtty`, types mtty-1/mtty-2 sharing 24 ports.
    Mtty,
}
