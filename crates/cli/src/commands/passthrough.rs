//! `xml` and `qemu-args`: how a vGPU is handed to a VM, through libvirt or plain QEMU.
//!
//! libvirt passes an mdev with `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>`
//! naming the UUID; QEMU alone takes `-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`.
//! The optional guest-agent channel is a virtio-serial port named `org.gvm.vgpu.agent.0`
//! whose host end is a Unix socket the daemon reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use gvm_libvirt::domain_xml;
use gvm_libvirt::AGENT_PORT_NAME;
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

/// `gvm-vgpu xml <uuid>`.
pub fn xml(
    ctx: &Context,
    uuid: &Uuid,
    display: Option<OnOff>,
    agent: Option<Option<&Path>>,
    out: &mut dyn Write,
) -> Result<()> {
    ctx.mdev.device(uuid)?;
    let mut text = domain_xml::hostdev_xml(uuid, display.map(|d| d == OnOff::On));
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
    let mut args = vec!["-device".to_string(), format!("vfio-pci,sysfsdev={dev}")];
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
    ctx.mdev.device(uuid)?;
    let dev = ctx.host.mdev_devices_dir().join(uuid.to_string());
    let mut args = qemu_arg_list(&dev, agent_socket)?;
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
