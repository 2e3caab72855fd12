//! `xml` and `qemu-args`: how a vGPU is handed to a VM, through libvirt or plain QEMU.
//!
//! libvirt passes an mdev with `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>`
//! naming the UUID; QEMU alone takes `-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`.
//! An SR-IOV VF vGPU (a UUID with a record in `/etc/gvm-vgpu/vf-vgpus/`, docs/vendor-vfio.md)
//! is its VF, a plain PCI device: `<hostdev type='pci' managed='no'>` with the VF's address and
//! the alias `ua-gvm-<uuid>`, or `-device vfio-pci,host=<VF>`.
//! The optional guest-agent channel is a virtio-serial port named `org.gvm.vgpu.agent.0`
//! whose host end is a Unix socket the daemon reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use gvm_libvirt::domain_xml;
use gvm_libvirt::AGENT_PORT_NAME;
use gvm_vf::{Assignment, Assignments, VfHost};
use serde::Serialize;
use uuid::Uuid;

use super::write_json;
use crate::cli::OnOff;
use crate::context::Context;

/// Default host socket for a vGPU's agent channel.
fn default_agent_socket(ctx: &Context, uuid: &Uuid) -> PathBuf {
    ctx.host
        .run_dir()
        .join("agent")
        .join(format!("{uuid}.sock"))
}

/// What a vGPU UUID names on this host.
enum Device {
    /// An mdev.
    Mdev,
    /// A VF vGPU: its record.
    Vf(Assignment),
}

/// Whether `uuid` is an mdev or a VF vGPU; a VF vGPU's VF must still exist and hold the
/// recorded type, or hold none when `cleared_ok` (the libvirt hook gives it the type again).
fn find_device(ctx: &Context, uuid: &Uuid, cleared_ok: bool) -> Result<Device> {
    let not_mdev = match ctx.mdev.device(uuid) {
        Ok(_) => return Ok(Device::Mdev),
        Err(e @ gvm_mdev::Error::DeviceNotFound { .. }) => e,
        Err(e) => return Err(e.into()),
    };
    let vfs = VfHost::new(ctx.host.clone());
    let record = match Assignments::new(vfs.clone()).get(uuid) {
        Ok(r) => r,
        Err(gvm_vf::Error::NotAssigned { .. }) => {
            return Err(anyhow::Error::new(not_mdev).context(format!(
                "vGPU {uuid} does not exist: it is neither an mdev nor a VF vGPU on record;                  `gvm-vgpu list` shows the vGPUs, `gvm-vgpu create --type T` makes one"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let current = vfs
        .vf_state(&record.vf)
        .with_context(|| format!("VF vGPU {uuid} is recorded on VF {}", record.vf))?
        .current;
    if current == record.type_id || (current == 0 && cleared_ok) {
        return Ok(Device::Vf(record));
    }
    if current == 0 {
        bail!(
            "VF {} of vGPU {uuid} holds no vGPU type (cleared, e.g. by a reboot): give it its              recorded type {} ({}) with `echo {} > {}` before starting QEMU, or start the              domain through libvirt, whose gvm-vgpu hook does that",
            record.vf,
            record.type_id,
            record.type_name,
            record.type_id,
            ctx.host
                .pci_devices_dir()
                .join(&record.vf)
                .join("nvidia/current_vgpu_type")
                .display()
        );
    }
    Err(gvm_vf::Error::Stale {
        uuid: *uuid,
        vf: record.vf,
        expected: record.type_id,
        found: current,
    }
    .into())
}

/// `gvm-vgpu xml <uuid>`.
pub fn xml(
    ctx: &Context,
    uuid: &Uuid,
    display: Option<OnOff>,
    agent: Option<Option<&Path>>,
    out: &mut dyn Write,
) -> Result<()> {
    let mut text = match find_device(ctx, uuid, true)? {
        Device::Mdev => domain_xml::hostdev_xml(uuid, display.map(|d| d == OnOff::On)),
        Device::Vf(record) => {
            if display.is_some() {
                bail!(
                    "--display is an mdev hostdev's attribute; vGPU {uuid} is VF {}, a PCI                      hostdev without it: leave --display out",
                    record.vf
                );
            }
            domain_xml::vf_hostdev_xml(uuid, &record.vf)?
        }
    };
    if let Some(socket) = agent {
        let socket = socket.map_or_else(|| default_agent_socket(ctx, uuid), Path::to_path_buf);
        text.push_str(&domain_xml::agent_channel_xml(&socket)?);
    }
    if ctx.json {
        return write_json(
            out,
            "hostdev",
            &serde_json::json!({ "uuid": uuid, "xml": text }),
        );
    }
    write!(out, "{text}")?;
    Ok(())
}

/// QEMU arguments for a vGPU, one argument per element.
#[derive(Debug, Serialize)]
pub struct QemuArgs {
    /// vGPU UUID.
    pub uuid: Uuid,
    /// The arguments, in order.
    pub args: Vec<String>,
}

/// The QEMU arguments that pass `sysfs_dev` (and optionally the agent channel) to a VM.
pub fn qemu_arg_list(sysfs_dev: &Path, agent_socket: Option<&Path>) -> Result<Vec<String>> {
    let Some(dev) = sysfs_dev.to_str() else {
        bail!("device path {} is not valid UTF-8", sysfs_dev.display());
    };
    if dev.contains(',') {
        bail!("device path {dev} contains a comma, which QEMU cannot take in sysfsdev=");
    }
    with_agent(
        vec!["-device".to_string(), format!("vfio-pci,sysfsdev={dev}")],
        agent_socket,
    )
}

/// The QEMU arguments that pass PCI function `vf` (a VF vGPU; optionally the agent channel)
/// to a VM.
pub fn vf_qemu_arg_list(vf: &str, agent_socket: Option<&Path>) -> Result<Vec<String>> {
    if !gvm_vf::valid_pci_address(vf) {
        bail!("VF {vf:?} is not a PCI address like 0000:41:00.4");
    }
    with_agent(
        vec!["-device".to_string(), format!("vfio-pci,host={vf}")],
        agent_socket,
    )
}

/// `args` followed by the agent channel's arguments, when there is a socket.
fn with_agent(mut args: Vec<String>, agent_socket: Option<&Path>) -> Result<Vec<String>> {
    if let Some(socket) = agent_socket {
        let Some(sock) = socket.to_str() else {
            bail!("agent socket path {} is not valid UTF-8", socket.display());
        };
        if sock.contains(',') {
            bail!("agent socket path {sock} contains a comma, which QEMU cannot take in path=");
        }
        args.extend([
            "-chardev".to_string(),
            format!("socket,id=gvmagent0,path={sock},server=on,wait=off"),
            "-device".to_string(),
            "virtio-serial-pci,id=gvmvser0".to_string(),
            "-device".to_string(),
            format!("virtserialport,bus=gvmvser0.0,chardev=gvmagent0,name={AGENT_PORT_NAME}"),
        ]);
    }
    Ok(args)
}

/// `-qmp unix:PATH,server=on,wait=off`: the QMP socket gvm-vgpud pauses the VM through.
pub fn qmp_args(socket: &Path) -> Result<Vec<String>> {
    let Some(sock) = socket.to_str() else {
        bail!("QMP socket path {} is not valid UTF-8", socket.display());
    };
    if sock.contains(',') {
        bail!("QMP socket path {sock} contains a comma, which QEMU cannot take in -qmp");
    }
    Ok(vec![
        "-qmp".to_string(),
        format!("unix:{sock},server=on,wait=off"),
    ])
}

/// Quote an argument for a POSIX shell when it needs it.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// `gvm-vgpu qemu-args <uuid>`.
pub fn qemu_args(
    ctx: &Context,
    uuid: &Uuid,
    agent_socket: Option<&Path>,
    qmp_socket: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let mut args = match find_device(ctx, uuid, false)? {
        Device::Mdev => {
            let dev = ctx.host.mdev_devices_dir().join(uuid.to_string());
            qemu_arg_list(&dev, agent_socket)?
        }
        Device::Vf(record) => vf_qemu_arg_list(&record.vf, agent_socket)?,
    };
    if qmp_socket {
        let dir = ctx.host.run_dir().join("qmp");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the QMP socket directory {}", dir.display()))?;
        args.extend(qmp_args(&dir.join(format!("{uuid}.sock")))?);
    }
    if ctx.json {
        return write_json(out, "qemu_args", &QemuArgs { uuid: *uuid, args });
    }
    let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    writeln!(out, "{}", line.join(" "))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_args_reject_commas_and_wire_the_agent() {
        assert!(qemu_arg_list(Path::new("/sys/a,b"), None).is_err());
        let args = qemu_arg_list(
            Path::new("/sys/bus/mdev/devices/x"),
            Some(Path::new("/run/s")),
        )
        .unwrap();
        assert_eq!(args[1], "vfio-pci,sysfsdev=/sys/bus/mdev/devices/x");
        assert!(args
            .iter()
            .any(|a| a == "socket,id=gvmagent0,path=/run/s,server=on,wait=off"));
        assert!(args
            .iter()
            .any(|a| a.ends_with("name=org.gvm.vgpu.agent.0")));
    }

    #[test]
    fn a_vf_vgpu_is_passed_to_qemu_by_its_pci_address() {
        let args = vf_qemu_arg_list("0000:41:00.4", Some(Path::new("/run/s"))).unwrap();
        assert_eq!(args[..2], ["-device", "vfio-pci,host=0000:41:00.4"]);
        assert!(args
            .iter()
            .any(|a| a.ends_with("name=org.gvm.vgpu.agent.0")));
        assert!(vf_qemu_arg_list("0000:41:00.4,x=1", None).is_err());
        assert!(vf_qemu_arg_list("41:00.4", None).is_err());
    }

    #[test]
    fn the_qmp_socket_is_a_server_qemu_opens_without_waiting() {
        assert_eq!(
            qmp_args(Path::new("/run/gvm-vgpu/qmp/u.sock")).unwrap(),
            ["-qmp", "unix:/run/gvm-vgpu/qmp/u.sock,server=on,wait=off"]
        );
        assert!(qmp_args(Path::new("/a,b")).is_err());
    }

    #[test]
    fn shell_quoting_only_when_needed() {
        assert_eq!(
            shell_quote("vfio-pci,sysfsdev=/sys/x"),
            "vfio-pci,sysfsdev=/sys/x"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
