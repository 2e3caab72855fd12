//! The extra man page sections of gvm-vgpud, gvm-vgpu-hook, gvm-vgpu-agent and gvm-vgpu-sim,
//! and the hook's command line as a clap definition (the hook parses its arguments by hand:
//! libvirt gives them positionally).

use clap::{Arg, Command};
use gvm_vgpu_cli::manpage::Extras;

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn refs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `gvm-vgpud(8)`.
pub fn daemon(_page: &str, _path: &[String]) -> Extras {
    Extras {
        files: pairs(&[
            ("/etc/gvm-vgpu/gvm-vgpud.toml", "Settings: the long options by name (guest-ack-ms = 250); the command line overrides it; read again on SIGHUP (--config names another file)."),
            ("/run/gvm-vgpu/api.sock", "The API socket (mode 0660 with --group, else 0600)."),
            ("/run/gvm-vgpu/shim.sock", "Registration socket of processes under libgvm_cuda.so."),
            ("/run/gvm-vgpu/agent/<uuid>.sock", "Guest-agent channel sockets of vGPU <uuid>."),
            ("/etc/gvm-vgpu/vgpus/*.json", "Persistent vGPU definitions."),
            ("/etc/gvm-vgpu/policy.json", "The time-slice policy of each GPU."),
            ("/etc/gvm-vgpu/mdev-types/*.toml, /usr/share/gvm-vgpu/mdev-types/*.toml", "The vGPU type catalog; read again on SIGHUP."),
            ("/sys/class/mdev_bus, /sys/bus/mdev/devices, /sys/bus/pci/devices", "mdev parents, types and devices, SR-IOV VFs: written through links into /sys/devices."),
            ("/sys/kernel/debug/nvidia-uvm/processes", "GVM's per-process gcgroup knobs."),
            ("/dev/shm", "Control blocks of processes under libgvm_cuda.so."),
            ("/usr/lib/systemd/system/gvm-vgpud.service", "The systemd unit (Type=notify, sandboxed)."),
        ]),
        environment: pairs(&[
            (gvm_host_root::ROOT_ENV, "Host root, as --root."),
            ("GVM_VGPUD_STATE_ROOT", "Where /etc/gvm-vgpu and /run/gvm-vgpu live, as --state-root."),
            ("GVM_VGPUD_BACKEND", "Gcgroup backend, as --backend."),
            ("GVM_VGPUD_AGENT_LIMITS", "Guest-agent ingest limits, as --agent-limits."),
            (gvm_catalog::CATALOG_ENV, "Extra catalog directories, colon-separated, read first."),
            ("GVM_LIBVIRT_LIBRARY", "The file loaded for libvirt's client library instead of libvirt.so.0 (package libvirt0, loaded at run time, not linked: without it the daemon does not follow libvirt, as with --no-libvirt)."),
            ("NOTIFY_SOCKET", "Set by systemd: READY=1 is sent there once the API socket answers, RELOADING=1 and READY=1 around a reload."),
            ("RUST_LOG", "Log filter (default info), e.g. gvm_vgpud=debug, as --log-level (over the config file's log-level)."),
        ]),
        exit_status: pairs(&[
            ("0", "Stopped by SIGTERM or SIGINT."),
            ("1", "Could not start: a config file or catalog file that does not load, a socket that cannot be bound, state that cannot be read (the message names it)."),
            ("2", "Usage error."),
        ]),
        examples: pairs(&[
            ("systemctl enable --now gvm-vgpud", "Start the daemon under systemd, now and at boot."),
            ("systemctl reload gvm-vgpud", "Read the config file and the catalog again after editing /etc/gvm-vgpu/gvm-vgpud.toml or /etc/gvm-vgpu/mdev-types."),
            ("gvm-vgpud --root /tmp/simhost --no-libvirt", "Run on a simulated host started with gvm-vgpu-sim --root /tmp/simhost."),
        ]),
        see_also: refs(&["gvm-vgpu(1)", "gvm-vgpu-hook(8)", "gvm-vgpu-agent(8)", "gvm-vgpu-sim(1)"]),
    }
}

/// The hook's command line, for its page only.
pub fn hook_command() -> Command {
    Command::new("gvm-vgpu-hook")
        .version(env!("CARGO_PKG_VERSION"))
        .about("libvirt's qemu hook for gvm-vgpu: creates a domain's vGPUs before it starts")
        .long_about(
            "libvirt runs /etc/libvirt/hooks/qemu.d/gvm-vgpu, a script that runs \
             gvm-vgpu-hook qemu DOMAIN OPERATION SUB-OPERATION EXTRA with the domain XML on \
             standard input. On prepare begin it creates the domain's missing vGPUs (from its \
             mdev hostdevs, its gvm-vgpu metadata and the stored definitions), gives each VF \
             vGPU's VF its recorded type when the VF holds none (never rewriting one that holds \
             it), and fails the start with a message on standard error when one cannot be made \
             ready (a VF that holds another type, a VF gone, a VF vGPU without record); on \
             release end it removes the transient ones. Every other step exits 0 at once. It \
             never calls libvirt back. A domain without gvm-vgpu devices passes even when the \
             binary is missing: the script then checks only that the vGPUs the domain names \
             are ready.",
        )
        .arg(
            Arg::new("root")
                .long("root")
                .value_name("DIR")
                .help("Host root every path is read under (default /, or GVM_VGPU_ROOT)"),
        )
        .arg(
            Arg::new("object")
                .value_name("OBJECT")
                .required(true)
                .help("The hook's object: qemu"),
        )
        .arg(
            Arg::new("domain")
                .value_name("DOMAIN")
                .required(true)
                .help("The domain's name"),
        )
        .arg(
            Arg::new("operation")
                .value_name("OPERATION")
                .required(true)
                .help("libvirt's operation: prepare, start, started, stopped, release, ..."),
        )
        .arg(
            Arg::new("sub_operation")
                .value_name("SUB-OPERATION")
                .required(true)
                .help("begin or end"),
        )
        .arg(
            Arg::new("extra")
                .value_name("EXTRA")
                .help("libvirt's extra argument (ignored)"),
        )
}

/// `gvm-vgpu-hook(8)`.
pub fn hook(_page: &str, _path: &[String]) -> Extras {
    Extras {
        files: pairs(&[
            ("/etc/libvirt/hooks/qemu.d/gvm-vgpu", "The hook script libvirt runs; it runs gvm-vgpu-hook."),
            ("/etc/gvm-vgpu/vgpus/*.json", "Definitions of the vGPUs a domain names."),
            ("/etc/gvm-vgpu/vf-vgpus/*.json", "Records of the VF vGPUs: UUID, PF, VF and vGPU type."),
            ("/usr/share/gvm-vgpu/mdev-types/*.toml, /etc/gvm-vgpu/mdev-types/*.toml", "The vGPU type catalog."),
        ]),
        environment: pairs(&[
            (gvm_host_root::ROOT_ENV, "Host root, as --root."),
            ("GVM_VGPU_HOOK", "Read by the script: the hook binary to run (default gvm-vgpu-hook on PATH)."),
            (gvm_catalog::CATALOG_ENV, "Extra catalog directories, colon-separated."),
        ]),
        exit_status: pairs(&[
            ("0", "Nothing to do, or the domain's vGPUs exist now: libvirt goes on."),
            ("1", "A vGPU the domain needs could not be made: libvirt refuses to start the domain and shows the message."),
        ]),
        examples: pairs(&[(
            "gvm-vgpu-hook qemu vm1 prepare begin - < /etc/libvirt/qemu/vm1.xml",
            "Create vm1's vGPUs as libvirt would before starting it.",
        )]),
        see_also: refs(&["gvm-vgpu(1)", "gvm-vgpu-attach(1)", "gvm-vgpud(8)"]),
    }
}

/// `gvm-vgpu-agent(8)`.
pub fn agent(_page: &str, _path: &[String]) -> Extras {
    Extras {
        files: pairs(&[
            (
                "/dev/virtio-ports/org.gvm.vgpu.agent.0",
                "The virtio-serial port to the host (the default target).",
            ),
            (
                "/proc/<pid>/fd",
                "Which processes hold the GPU's device files (the /proc collector).",
            ),
            (
                "/usr/lib/gvm-vgpu/libgvm_cuda.so",
                "The CUDA interposer, for guest enforcement (package gvm-vgpu-agent).",
            ),
            (
                "/etc/ld.so.preload",
                "Lists the interposer to load it into every process.",
            ),
            (
                "/usr/lib/systemd/system/gvm-vgpu-agent.service",
                "The agent's systemd unit.",
            ),
        ]),
        environment: pairs(&[(
            "LD_LIBRARY_PATH",
            "Where libnvidia-ml.so.1 is searched for by the NVML collector.",
        )]),
        exit_status: pairs(&[
            ("0", "--once: the report was sent."),
            ("1", "--once: the report was dropped (no host end)."),
            (
                "2",
                "Usage error, or the chosen collector cannot be opened.",
            ),
        ]),
        examples: pairs(&[
            (
                "systemctl enable --now gvm-vgpu-agent",
                "Report this guest's GPU use to the host every second.",
            ),
            (
                "gvm-vgpu-agent --once --stdout",
                "Print one report instead of sending it.",
            ),
        ]),
        see_also: refs(&["gvm-vgpud(8)", "gvm-vgpu-stats(1)"]),
    }
}

/// `gvm-vgpu-sim(1)`.
pub fn sim(_page: &str, _path: &[String]) -> Extras {
    Extras {
        files: pairs(&[
            (
                "DIR/sys/class/mdev_bus, DIR/sys/bus/mdev/devices",
                "The simulated mdev parents, types and devices.",
            ),
            (
                "DIR/sys/kernel/debug/nvidia-uvm/processes",
                "The simulated GVM gcgroup tree.",
            ),
            (
                "DIR/sys/bus/pci/devices",
                "With --sriov-gpus: the SR-IOV PFs and VFs, each VF's nvidia/ vGPU files.",
            ),
            (
                "DIR/sys/kernel/debug/gvm-sim/control",
                "Commands: spawn, kill, set, unregister, register, vf-heterogeneous, vf-hold, vf-release, vf-reset.",
            ),
            (
                "DIR/sys/kernel/debug/gvm-sim/owners",
                "The owner processes and their simulated GPU work.",
            ),
            ("/dev/fuse", "Needed, with root, to mount DIR/sys."),
        ]),
        environment: pairs(&[(gvm_host_root::ROOT_ENV, "The directory, as --root.")]),
        exit_status: pairs(&[
            ("0", "Stopped by SIGTERM or SIGINT and unmounted."),
            ("1", "Could not mount or serve (the message says why)."),
            ("2", "Usage error."),
        ]),
        examples: pairs(&[(
            "gvm-vgpu-sim --root /tmp/simhost --gpus 2 & gvm-vgpu --root /tmp/simhost types",
            "Serve a two-GPU host and list its vGPU types.",
        )]),
        see_also: refs(&["gvm-vgpu(1)", "gvm-vgpud(8)"]),
    }
}
