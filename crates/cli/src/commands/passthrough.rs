//! `xml` and `qemu-args`: how a vGPU is handed to a VM, through libvirt or plain QEMU.
//!
//! libvirt passes an mdev with `<hostdev mode='subsystem' type='mdev' model='vfio-pci'>`
//! naming the UUID; QEMU alone takes `-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`.
//! The optional guest-agent channel is a virtio-serial port named `org.gvm.vgpu.agent.0`
//! whose host end is a Unix socket the daemon reads.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;
use uuid::Uuid;

use super::write_json;
use crate::cli::OnOff;
use crate::context::Context;

/// Name of the guest agent's virtio-serial port.
pub const AGENT_PORT_NAME: &str = "org.gvm.vgpu.agent.0";

/// Default host socket for a vGPU's agent channel.
fn default_agent_socket(ctx: &Context, uuid: &Uuid) -> PathBuf {
    ctx.host
        .run_dir()
        .join("agent")
        .join(format!("{uuid}.sock"))
}

/// Escape text for an XML attribute value in single quotes.
fn xml_attr(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '\'' => s.push_str("&apos;"),
            '"' => s.push_str("&quot;"),
            c => s.push(c),
        }
    }
    s
}

/// The libvirt `<hostdev>` element for an mdev vGPU.
pub fn hostdev_xml(uuid: &Uuid, display: Option<OnOff>) -> String {
    let display = display.map_or(String::new(), |d| format!(" display='{}'", d.as_str()));
    format!(
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'{display}>\n  <source>\n    <address uuid='{uuid}'/>\n  </source>\n</hostdev>\n"
    )
}

/// The libvirt `<channel>` element for the guest agent.
pub fn agent_channel_xml(socket: &Path) -> Result<String> {
    let Some(path) = socket.to_str() else {
        bail!("agent socket path {} is not valid UTF-8", socket.display());
    };
    Ok(format!(
        "<channel type='unix'>\n  <source mode='bind' path='{}'/>\n  <target type='virtio' name='{AGENT_PORT_NAME}'/>\n</channel>\n",
        xml_attr(path)
    ))
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
    let mut text = hostdev_xml(uuid, display);
    if let Some(socket) = agent {
        let socket = socket.map_or_else(|| default_agent_socket(ctx, uuid), Path::to_path_buf);
        text.push_str(&agent_channel_xml(&socket)?);
    }
    if ctx.json {
        return write_json(out, &serde_json::json!({ "uuid": uuid, "xml": text }));
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
    out: &mut dyn Write,
) -> Result<()> {
    ctx.mdev.device(uuid)?;
    let dev = ctx.host.mdev_devices_dir().join(uuid.to_string());
    let args = qemu_arg_list(&dev, agent_socket)?;
    if ctx.json {
        return write_json(out, &QemuArgs { uuid: *uuid, args });
    }
    let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    writeln!(out, "{}", line.join(" "))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "4b20d080-1b54-4048-85b3-a6a62d165c01";

    #[test]
    fn hostdev_names_the_uuid_and_display() {
        let uuid = Uuid::parse_str(U).unwrap();
        let x = hostdev_xml(&uuid, Some(OnOff::Off));
        assert!(
            x.starts_with("<hostdev mode='subsystem' type='mdev' model='vfio-pci' display='off'>")
        );
        assert!(x.contains(&format!("<address uuid='{U}'/>")));
    }

    #[test]
    fn channel_escapes_the_socket_path() {
        let x = agent_channel_xml(Path::new("/run/a'b&c.sock")).unwrap();
        assert!(x.contains("path='/run/a&apos;b&amp;c.sock'"));
        assert!(x.contains("name='org.gvm.vgpu.agent.0'"));
    }

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
    fn shell_quoting_only_when_needed() {
        assert_eq!(
            shell_quote("vfio-pci,sysfsdev=/sys/x"),
            "vfio-pci,sysfsdev=/sys/x"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
