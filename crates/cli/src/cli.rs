//! The command line, as clap definitions only: every subcommand, flag and help text.
//!
//! Nothing here does work; `commands` does. Keeping the definitions apart lets the
//! completions and man pages be generated from exactly what the parser accepts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

/// Manage GVM vGPUs (VFIO mediated devices with GPU memory limits and priorities) on a KVM host.
///
/// gvm-vgpu lists the host's mdev parents and types, joins them with the vGPU type catalog
/// (mdev-types/*.toml: memory limit, compute priority, time share), creates and removes vGPUs,
/// and prints the libvirt XML or QEMU arguments that hand a vGPU to a VM.
///
/// Every host path is read under --root (default /), so the same commands work on a real
/// host and on the simulated host started by `gvm-vgpu-sim --root DIR`.
///
/// Exit status: 0 on success, 1 when an operation failed, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(
    name = "gvm-vgpu",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[expect(
        missing_docs,
        reason = "a doc comment here would change clap's help text"
    )]
    #[command(flatten)]
    pub global: GlobalArgs,

    #[expect(
        missing_docs,
        reason = "a doc comment here would change clap's help text"
    )]
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Host root every kernel and config path is read under (the simulated host's DIR, or /).
    #[arg(
        long,
        global = true,
        env = "GVM_VGPU_ROOT",
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    /// Extra vGPU type catalog directory, searched after the built-in catalog, /usr/share and
    /// /etc (repeatable; a later directory overrides a GPU model of the same name).
    #[arg(long = "catalog", global = true, value_name = "DIR")]
    pub catalog_dirs: Vec<PathBuf>,

    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List registered mdev parent devices (GPUs that can host vGPUs) and their types.
    Parents,

    /// List kernel mdev types joined with the vGPU catalog and live availability.
    ///
    /// Each row is one kernel type on one parent: its id, its kernel name, the catalog type it is
    /// bound to (or "-" when the catalog does not know it: such vGPUs stay unmanaged), the GVM
    /// limits that type carries, and how many more instances the kernel says can be created.
    Types {
        /// Only this parent (e.g. 0000:3b:00.0 or mtty).
        #[arg(long, value_name = "PARENT")]
        parent: Option<String>,
        /// Also list catalog types that no parent on this host offers.
        #[arg(long)]
        all: bool,
    },

    /// Create a vGPU of a catalog type.
    ///
    /// Picks the parent with the most free instances of the type unless --parent is given, and
    /// a random UUID unless --uuid is given. The kernel type is found through the catalog binding
    /// (type id or kernel name).
    Create {
        /// Catalog type name (see `gvm-vgpu types`).
        #[arg(long = "type", short = 't', value_name = "TYPE")]
        type_name: String,
        /// Parent device to create it on.
        #[arg(long, short = 'p', value_name = "PARENT")]
        parent: Option<String>,
        /// UUID of the new vGPU (upper case is accepted; devices are named in lower case).
        #[arg(long, short = 'u', value_name = "UUID")]
        uuid: Option<Uuid>,
    },

    /// Remove a vGPU (it must not be in use by a running VM).
    Remove {
        /// UUID of the vGPU.
        uuid: Uuid,
    },

    /// List live vGPUs with their catalog type and owner processes.
    List,

    /// Show one vGPU: kernel device, catalog type, and the GVM gcgroup knobs of its owners.
    Show {
        /// UUID of the vGPU.
        uuid: Uuid,
    },

    /// Print the libvirt <hostdev> element that passes a vGPU to a domain.
    Xml {
        /// UUID of the vGPU.
        uuid: Uuid,
        /// Value of the hostdev's display attribute.
        #[arg(long, value_enum)]
        display: Option<OnOff>,
        /// Also print the virtio-serial <channel> for the gvm-vgpu guest agent.
        #[arg(long)]
        with_agent: bool,
        /// Host socket path of the agent channel (default: /run/gvm-vgpu/agent/<uuid>.sock).
        #[arg(long, value_name = "PATH", requires = "with_agent")]
        agent_socket: Option<PathBuf>,
    },

    /// Print the QEMU arguments that pass a vGPU to a VM started without libvirt.
    QemuArgs {
        /// UUID of the vGPU.
        uuid: Uuid,
        /// Also wire the guest agent's virtio-serial port to this host Unix socket.
        #[arg(long, value_name = "PATH")]
        agent_socket: Option<PathBuf>,
    },

    /// Print a shell completion script.
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },

    /// Write man pages (one per subcommand) into a directory.
    Man {
        /// Output directory (created if missing).
        #[arg(value_name = "DIR")]
        out_dir: PathBuf,
    },
}

/// A libvirt on/off attribute value.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OnOff {
    /// `on`
    On,
    /// `off`
    Off,
}

impl OnOff {
    /// The attribute text.
    pub fn as_str(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}
