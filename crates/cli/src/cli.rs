//! The command line, as clap definitions only: every subcommand, flag and help text.
//!
//! Nothing here does work; `commands` does. Keeping the definitions apart lets the
//! completions and man pages be generated from exactly what the parser accepts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCandidates;
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
    ///
    /// Only for commands gvm-vgpu answers itself (parents, types, create, remove, and list
    /// and show without a daemon). Commands gvm-vgpud answers use the daemon's own catalog and refuse
    /// --catalog: edit the daemon's catalog (`gvm-vgpu status` names it) and run
    /// `systemctl reload gvm-vgpud` (or send it SIGHUP).
    #[arg(long = "catalog", global = true, value_name = "DIR")]
    pub catalog_dirs: Vec<PathBuf>,

    /// Print machine-readable JSON instead of tables.
    ///
    /// Every command then prints one object, {"schema": 1, "<member>": ...}, and a failure
    /// {"schema": 1, "error": {"message", "causes", "hint", "code"}} with the usual exit
    /// status (docs/cli-json.md describes every shape).
    ///
    /// Strings are exactly what the host or the guest supplied: JSON escapes control
    /// characters but not bidi or zero-width ones (U+202E, U+200B, ...), which tables and
    /// text output show escaped as \u{202e}; a program printing guest strings from the
    /// JSON must render them safely itself.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the GPUs that can host vGPUs: registered mdev parents, and SR-IOV GPUs (PFs) with
    /// their VFs enabled/total.
    Parents,

    /// List kernel vGPU types (mdev and SR-IOV VF) joined with the vGPU catalog and live
    /// availability.
    ///
    /// Each row is one kernel type on one parent or PF: its kind (mdev or vf), its id, its kernel
    /// name, the catalog type it is bound to (or "-" when the catalog does not know it: such
    /// vGPUs stay unmanaged), the GVM limits that type carries, and how many more instances the
    /// kernel says can be created (a VF type: the free VFs that list it, at most).
    Types {
        /// Only this parent or PF (e.g. 0000:3b:00.0, mtty or 0000:41:00.0).
        #[arg(long, value_name = "PARENT")]
        #[arg(add = ArgValueCandidates::new(crate::complete::parents))]
        parent: Option<String>,
        /// Also list catalog types that no parent on this host offers.
        #[arg(long)]
        all: bool,
    },

    /// Create a vGPU of a catalog type.
    ///
    /// Picks the mdev parent with the most free instances of the type, else (on Ada, Hopper and
    /// Blackwell hosts) the first free SR-IOV VF whose creatable types list it, unless --parent
    /// is given; and a random UUID unless --uuid is given. The kernel type is found through the
    /// catalog binding (type id or kernel name; VF types by name). A VF vGPU's UUID is gvm-vgpu's
    /// own, kept with the VF it was put on under /etc/gvm-vgpu/vf-vgpus.
    Create {
        /// Catalog type name (see `gvm-vgpu types`).
        #[arg(long = "type", short = 't', value_name = "TYPE")]
        #[arg(add = ArgValueCandidates::new(crate::complete::type_names))]
        type_name: String,
        /// Parent device (mdev parent or SR-IOV PF) to create it on.
        #[arg(long, short = 'p', value_name = "PARENT")]
        #[arg(add = ArgValueCandidates::new(crate::complete::parents))]
        parent: Option<String>,
        /// UUID of the new vGPU (upper case is accepted; devices are named in lower case).
        #[arg(long, short = 'u', value_name = "UUID")]
        uuid: Option<Uuid>,
    },

    /// Remove a vGPU; refused while a process (QEMU) holds it open.
    ///
    /// A held vGPU cannot be removed: the kernel's remove would block until the holder closes
    /// the device, and no signal ends that wait. So remove first looks for processes with the
    /// vGPU's VFIO group (/dev/vfio/N) open and, if there are any, names them (pid and command)
    /// and changes nothing. Shut the VM down or detach the vGPU from it first, or pass --wait.
    /// A VF vGPU is cleared only if its VF still holds the type gvm-vgpu put there (another
    /// tool's change is left alone); a VM holding the VF makes the driver refuse.
    Remove {
        /// UUID of the vGPU.
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
        /// Remove it even while it is held: wait until every holder has closed it. The wait
        /// happens in the kernel and cannot be interrupted (Ctrl-C does not end it).
        #[arg(long)]
        wait: bool,
    },

    /// List live vGPUs with their catalog type, knobs, freeze, start mode and owner processes.
    ///
    /// With gvm-vgpud running, the knobs are the effective ones (the type's, under persistent
    /// and live overrides), FROZEN is the operator's freeze, START says how the vGPU comes
    /// back (manual: `gvm-vgpu start`; auto: autostart; not defined) and DOMAIN names the
    /// libvirt domain holding it; without the daemon, the catalog type's knobs and what GVM
    /// reports, with the start mode and domain unknown.
    ///
    /// With --defined, list the persistent definitions kept by gvm-vgpud (needs the daemon).
    List {
        /// List persistent definitions (running or not) instead of live devices.
        #[arg(long)]
        defined: bool,
    },

    /// Show one vGPU: kernel device, catalog type, effective knobs and their owners' gcgroups.
    ///
    /// With gvm-vgpud running, also says where each effective value comes from (type,
    /// persistent or live override) and which rule found each owner process; without it,
    /// shows what the kernel and GVM report directly. Each owner gcgroup's GPU is shown by its
    /// position in PCI order and its PCI address.
    ///
    /// A libvirt domain name shows the domain's vGPUs: those of its <hostdev>s and of its gvm
    /// metadata (what `attach`, `attach --metadata-only` included, records), read from the
    /// running domain or, for a domain that is only defined, from its definition. A vGPU the
    /// domain names that does not exist yet (the libvirt hook creates it when the domain
    /// starts) is shown from the metadata. This works without gvm-vgpud, and with a gvm-vgpud
    /// that does not follow libvirt: the domain is then looked up in libvirt directly.
    Show {
        /// UUID of the vGPU, or the name of a libvirt domain (running or only defined).
        #[arg(add = ArgValueCandidates::new(crate::complete::targets))]
        target: String,
        /// libvirt connection URI to look a domain name up at (default: $LIBVIRT_DEFAULT_URI,
        /// else qemu:///system). Not used for a UUID.
        #[arg(long, short = 'c', value_name = "URI")]
        connect: Option<String>,
    },

    /// Store a persistent vGPU definition (created now by `start`, at boot with --autostart).
    ///
    /// With --from FILE, stores many definitions at once: FILE (or `-` for standard input)
    /// is a JSON array of objects with the fields `parent`, `type`, and optionally `uuid`,
    /// `autostart`, `overrides` (`memory_limit` in bytes, `priority`, `share`), `owner_uids`
    /// and `force`, e.g.
    /// `[{"parent": "0000:3b:00.0", "type": "H100-20C", "autostart": true}]`; any other
    /// field is refused. The list is stored whole or not at all, whatever its length (over
    /// 256 items it goes in parts the daemon holds until the last), with one sync of the
    /// daemon's directory; an error names the item by its index in FILE. Items without a
    /// UUID get a random one.
    /// --start then creates each vGPU; one that cannot be created is reported and keeps its
    /// definition (exit status 1).
    Define {
        /// Catalog type name (or kernel type id).
        #[arg(
            long = "type",
            short = 't',
            value_name = "TYPE",
            required_unless_present = "from"
        )]
        #[arg(add = ArgValueCandidates::new(crate::complete::type_names))]
        type_name: Option<String>,
        /// Parent device to create it on.
        #[arg(
            long,
            short = 'p',
            value_name = "PARENT",
            required_unless_present = "from"
        )]
        #[arg(add = ArgValueCandidates::new(crate::complete::parents))]
        parent: Option<String>,
        /// UUID (random when absent).
        #[arg(long, short = 'u', value_name = "UUID", conflicts_with = "from")]
        uuid: Option<Uuid>,
        /// Create the vGPU whenever the daemon starts or the parent registers.
        #[arg(long, conflicts_with = "from")]
        autostart: bool,
        /// Let processes of this uid claim the vGPU through their own environment
        /// (GVM_VGPU_UUID) or cgroup, besides root, libvirt's QEMU user and the daemon's
        /// --owner-uid list (repeatable; numeric, `id -u NAME` gives it). Other users'
        /// claims are refused, logged once and listed by `show`.
        #[arg(long = "owner-uid", value_name = "UID", conflicts_with = "from")]
        owner_uids: Vec<u32>,
        /// Define every vGPU listed in this JSON file (`-`: standard input).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["type_name", "parent"])]
        from: Option<std::path::PathBuf>,
        /// With --from: create each vGPU once all are defined.
        #[arg(long, requires = "from", conflicts_with_all = ["type_name", "parent"])]
        start: bool,
        #[expect(
            missing_docs,
            reason = "a doc comment here would change clap's help text"
        )]
        #[command(flatten)]
        knobs: KnobArgs,
    },

    /// Delete a persistent definition (a running vGPU keeps running).
    Undefine {
        /// UUID of the definition.
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
    },

    /// Create the vGPU of a stored definition now.
    Start {
        /// UUID of the definition.
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
    },

    /// Remove a defined vGPU's device, keeping its definition; refused while it is held.
    ///
    /// While a process (QEMU) holds the vGPU open, the kernel's remove would block until it
    /// closes the device, so gvm-vgpud refuses, naming each holder (pid, command, libvirt
    /// domain) and changing nothing. Shut the VM down or detach the vGPU first, or pass --wait.
    Stop {
        /// UUID of the vGPU.
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
        /// While it is held, wait (here, polling; Ctrl-C ends the wait and changes nothing)
        /// until every holder has let go, then stop it. The daemon itself never blocks.
        #[arg(long)]
        wait: bool,
    },

    /// Retune a vGPU's memory limit, priority or share; reaches every owner within a second.
    ///
    /// By default the change applies to the running owners and, when the vGPU is defined, to
    /// its definition; --live changes only the running vGPU, --persistent only the definition.
    Set {
        /// UUID or libvirt domain name.
        #[arg(add = ArgValueCandidates::new(crate::complete::targets))]
        target: String,
        #[expect(
            missing_docs,
            reason = "a doc comment here would change clap's help text"
        )]
        #[command(flatten)]
        knobs: KnobArgs,
        /// Drop this scope's earlier overrides first, so unset knobs fall back to the type.
        #[arg(long)]
        clear: bool,
        /// Only the running vGPU (until it is removed).
        #[arg(long, conflicts_with = "persistent")]
        live: bool,
        /// Only the stored definition (applies at the next start).
        #[arg(long)]
        persistent: bool,
    },

    /// Stop all GPU work of a vGPU's owners, live (GVM compute.freeze = 1).
    Freeze {
        /// UUID or libvirt domain name.
        #[arg(add = ArgValueCandidates::new(crate::complete::targets))]
        target: String,
    },

    /// Resume GPU work frozen by `freeze`.
    Thaw {
        /// UUID or libvirt domain name.
        #[arg(add = ArgValueCandidates::new(crate::complete::targets))]
        target: String,
    },

    /// Adopt mdevctl's persistent definitions (/etc/mdevctl.d) as gvm-vgpu definitions.
    ///
    /// An imported vGPU stays defined by mdevctl too, and both would create it (mdevctl's
    /// at boot when its start is auto): the output names each such mdevctl definition and
    /// the command that removes it. With --remove-source, gvm-vgpud deletes mdevctl's file
    /// (/etc/mdevctl.d/PARENT/UUID under the host root, what `mdevctl undefine` removes) once
    /// the gvm-vgpu definition is stored, also for a vGPU an earlier import stored with the
    /// same parent and type. When a file cannot be removed, the gvm-vgpu definition stays,
    /// the error names the file and the command to run, and the exit status is 1.
    ImportMdevctl {
        /// Show what would be imported; write nothing.
        #[arg(long, conflicts_with = "remove_source")]
        dry_run: bool,
        /// Hand the vGPUs over: delete mdevctl's definition of each vGPU gvm-vgpu now
        /// defines the same way, after storing ours.
        #[arg(long)]
        remove_source: bool,
    },

    /// Ask gvm-vgpud to reconcile the host with its state now and report drift.
    Reconcile,

    /// Show gvm-vgpud's status: version, host root, vGPUs, and the catalog it uses.
    ///
    /// The catalog lines say which files the daemon loaded and when, and, when the last
    /// reload (`systemctl reload gvm-vgpud`, SIGHUP) was refused, why: the catalog loaded
    /// before it stays in use until a reload succeeds.
    Status,

    /// Show what a VM's guest agent reports: its channel, the agent, and the guest's GPU
    /// processes (pid, name, GPU, memory, utilization), as validated by gvm-vgpud.
    ///
    /// Needs the daemon and a VM whose agent port is wired (`xml --with-agent` or
    /// `qemu-args --agent-socket`). Without a target, every channel is shown.
    Stats {
        /// vGPU UUID or libvirt domain name.
        target: Option<String>,
    },

    /// Print the libvirt <hostdev> element that passes a vGPU to a domain.
    Xml {
        /// UUID of the vGPU.
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
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
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
        /// Also wire the guest agent's virtio-serial port to this host Unix socket.
        #[arg(long, value_name = "PATH")]
        agent_socket: Option<PathBuf>,
        /// Also give the VM a QMP socket where gvm-vgpud finds it
        /// (/run/gvm-vgpu/qmp/<uuid>.sock under --root, directory created): a freeze its guest
        /// does not acknowledge in time then pauses the VM (`stop`), and the thaw resumes it.
        #[arg(long)]
        qmp_socket: bool,
    },

    /// Give a libvirt domain a vGPU: create (--type) or reuse (--uuid) it, attach its
    /// <hostdev>, and record it in the domain's gvm metadata.
    ///
    /// The metadata element (namespace https://gvm-vgpu.dev/xmlns/libvirt/1) is what lets the
    /// libvirt hook recreate the vGPU before the domain starts and lets gvm-vgpud map the
    /// domain to its vGPU, so `set`, `freeze` and `thaw` accept the domain name. With neither
    /// --persistent nor --live, libvirt's "current" rule applies: the running domain if it
    /// runs, its definition otherwise.
    Attach {
        /// Domain name.
        #[arg(add = ArgValueCandidates::new(crate::complete::domains))]
        domain: String,
        /// Create a new vGPU of this catalog type.
        #[arg(
            long = "type",
            short = 't',
            value_name = "TYPE",
            required_unless_present = "uuid",
            conflicts_with = "uuid"
        )]
        #[arg(add = ArgValueCandidates::new(crate::complete::type_names))]
        type_name: Option<String>,
        /// Reuse the existing vGPU with this UUID.
        #[arg(long, short = 'u', value_name = "UUID")]
        uuid: Option<Uuid>,
        /// Create the new vGPU on this parent.
        #[arg(long, short = 'p', value_name = "PARENT", requires = "type_name")]
        #[arg(add = ArgValueCandidates::new(crate::complete::parents))]
        parent: Option<String>,
        /// Change the domain's persistent definition (libvirt --config).
        #[arg(long)]
        persistent: bool,
        /// Change the running domain (libvirt --live).
        #[arg(long)]
        live: bool,
        /// Value of the hostdev's display attribute.
        #[arg(long, value_enum)]
        display: Option<OnOff>,
        /// Only record the binding in the metadata, without a <hostdev> (for domains whose
        /// QEMU cannot open an mdev, e.g. hosts without VFIO).
        #[arg(long)]
        metadata_only: bool,
        /// libvirt connection URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).
        #[arg(long, short = 'c', value_name = "URI")]
        connect: Option<String>,
    },

    /// Take a vGPU from a libvirt domain: detach its <hostdev>, drop its metadata entry, and
    /// remove the vGPU when `attach` created it.
    ///
    /// `attach --type` records in the domain's gvm metadata that it created the vGPU
    /// (created="yes"); detach then removes that vGPU from the host, unless --keep-vgpu is
    /// given or a definition still names it (the running domain after a --persistent-only
    /// detach, or another domain it was attached to by UUID). A vGPU attached with --uuid, or
    /// by an attach older than that record, is the user's and is never removed.
    ///
    /// A vGPU to remove that a process holds open is never removed by surprise (the kernel's
    /// remove would block until the holder closes it): for a shut-off domain the detach is
    /// refused first, naming the holders; after a live detach it waits up to 5 s for the
    /// domain's QEMU to let go, then leaves the vGPU in place and says so. --wait removes it
    /// anyway, waiting (uninterruptibly) for the holders.
    Detach {
        /// Domain name.
        #[arg(add = ArgValueCandidates::new(crate::complete::domains))]
        domain: String,
        /// UUID of the vGPU.
        #[arg(long, short = 'u', value_name = "UUID")]
        #[arg(add = ArgValueCandidates::new(crate::complete::vgpu_uuids))]
        uuid: Uuid,
        /// Change the domain's persistent definition (libvirt --config).
        #[arg(long)]
        persistent: bool,
        /// Change the running domain (libvirt --live).
        #[arg(long)]
        live: bool,
        /// Remove a vGPU attach created even while it is held: wait until every holder has
        /// closed it. The wait happens in the kernel and cannot be interrupted.
        #[arg(long, conflicts_with = "keep_vgpu")]
        wait: bool,
        /// Keep the vGPU on the host even though `attach` created it: only its <hostdev> and
        /// metadata entry go. `gvm-vgpu remove UUID` removes it later.
        #[arg(long)]
        keep_vgpu: bool,
        /// libvirt connection URI (default: $LIBVIRT_DEFAULT_URI, else qemu:///system).
        #[arg(long, short = 'c', value_name = "URI")]
        connect: Option<String>,
    },

    /// Show or switch the GPU time-slice scheduling policy of gvm-vgpud (live, persisted).
    ///
    /// GPUs are numbered by position in PCI address order (0..N-1, as `policy show` and `top`
    /// print them, next to each GPU's PCI address); the choice is stored by PCI address.
    Policy {
        #[expect(
            missing_docs,
            reason = "a doc comment here would change clap's help text"
        )]
        #[command(subcommand)]
        action: PolicyAction,
    },

    /// Each vGPU's achieved share of GPU time next to its policy's target, every second.
    ///
    /// GPUs are shown by position in PCI order and PCI address.
    Top {
        /// Print once and exit (for scripts). Right after gvm-vgpud started, or when nobody
        /// looked for 30 s, the daemon has no figures yet: this then waits for them, at most
        /// one averaging window and a second.
        #[arg(long)]
        once: bool,
    },

    /// Print a shell completion script.
    ///
    /// The script is dynamic: it calls gvm-vgpu back (with COMPLETE set) for each command
    /// line, which completes subcommands and flags and, from the host at that moment, vGPU
    /// UUIDs (live and defined), the libvirt domains gvm-vgpud follows, mdev parents and
    /// catalog type names. The host root comes from GVM_VGPU_ROOT (else /), not --root. The
    /// Debian package installs it for bash, zsh and fish.
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

/// `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Per GPU (position in PCI order and PCI address): policy, slice, window, knob writes,
    /// and each vGPU's target and achieved share.
    ///
    /// On a GPU with NVIDIA's vGPU manager it also shows NVIDIA's own vGPU scheduler as NVML
    /// reports it, or says why it cannot (no vGPU manager on the GPU, gvm-vgpud without NVML).
    Show,
    /// Switch a GPU (default: every GPU) to a policy without restarting any VM.
    ///
    /// On a GPU with NVIDIA's vGPU manager it also sets NVIDIA's own vGPU scheduler through
    /// NVML while no VM runs there; while VMs run NVIDIA allows no change, which is said, and
    /// the policy reaches the VMs through gvm-vgpud's scheduler and their guest agents.
    Set {
        /// best-effort, equal-share or fixed-share.
        #[arg(value_parser = ["best-effort", "equal-share", "fixed-share"])]
        policy: String,
        /// The GPU: its position in PCI order (0, 1, ...) or its PCI address (0000:3c:00.0,
        /// any case, also 00000000:3c:00.0); every GPU when absent or `all`.
        #[arg(long, value_name = "GPU")]
        gpu: Option<String>,
        /// Time slice (e.g. 2ms, 500us); kept when absent (default: 2ms, 1ms above 8 vGPUs).
        #[arg(long, value_name = "DURATION")]
        timeslice: Option<String>,
        /// Averaging window (e.g. 1s, 250ms); kept when absent (default: 1s).
        #[arg(long, value_name = "DURATION")]
        window: Option<String>,
    },
}

/// Knob values given on the command line (`define`, `set`).
#[derive(Debug, Args, Default)]
pub struct KnobArgs {
    /// GPU memory limit: bytes with an optional unit (6G, 20GiB, 512MiB) or `unlimited`.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    pub memory_limit: Option<u64>,
    /// Compute priority 0..=16 (lower = longer timeslice = more GPU time).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=16))]
    pub priority: Option<u8>,
    /// Fixed share of the GPU's time, in (0, 1] (used by the fixed-share policy).
    #[arg(long, value_name = "F", value_parser = parse_share)]
    pub share: Option<f64>,
    /// Accept a --memory-limit above the framebuffer of the type's GPU model (refused
    /// without it; with --from, for every item).
    #[arg(long)]
    pub force: bool,
}

/// `unlimited` or a size with units, as bytes (`u64::MAX` for unlimited, as GVM writes it).
pub fn parse_memory_limit(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let size: gvm_catalog::ByteSize = text.parse().map_err(|e| format!("{e}"))?;
    if size.0 == 0 {
        return Err(
            "a memory limit of 0 bytes would stop the VM's GPU work; use freeze for that".into(),
        );
    }
    Ok(size.0)
}

/// A share in (0, 1].
pub fn parse_share(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number; give a share such as 0.25"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("share {v} is outside (0, 1]"));
    }
    Ok(v)
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
