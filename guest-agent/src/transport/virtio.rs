//! Finding and opening a virtio-serial port by name.
//!
//! QEMU's `virtserialport` device gives the guest a character device per port.
//! The kernel (`virtio_console`) lists each as `/sys/class/virtio-ports/vportNpM`
//! with a `name` file (the `name=` of the QEMU device, e.g.
//! `org.gvm.vgpu.agent.0`) and a `dev` file (`major:minor`). udev links
//! `/dev/virtio-ports/<name>` to `/dev/vportNpM`; a minimal guest without udev
//! may have neither, so the agent looks the port up in sysfs and creates the node
//! itself when it is missing.
//!
//! A port can be opened by one process at a time. While the host end is not
//! connected, writes fail with `EAGAIN` and `poll` reports `POLLHUP`.

use super::LineWriter;
use crate::error::{AgentError, Result};
use gvm_agent_proto::log_safe;
use gvm_host_root::HostRoot;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The default port name.
pub const DEFAULT_PORT_NAME: &str = "org.gvm.vgpu.agent.0";

/// A port found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortLocation {
    /// The kernel's node name, e.g. `vport2p1`.
    pub node: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
}

/// Look up the port called `name` under `/sys/class/virtio-ports`.
pub fn find_port(root: &HostRoot, name: &str) -> Result<PortLocation> {
    let sysfs = root.path("/sys/class/virtio-ports");
    let entries = fs::read_dir(&sysfs).map_err(|_| AgentError::PortNotFound {
        name: name.to_owned(),
        sysfs: sysfs.clone(),
    })?;
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    for dir in dirs {
        let Ok(port_name) = fs::read_to_string(dir.join("name")) else {
            continue;
        };
        if port_name.trim_end() != name {
            continue;
        }
        let dev_file = dir.join("dev");
        let dev = fs::read_to_string(&dev_file).map_err(|source| AgentError::Read {
            path: dev_file.clone(),
            source,
        })?;
        let (major, minor) = parse_dev(&dev).ok_or_else(|| AgentError::BadDevFile {
            path: dev_file.clone(),
            found: log_safe(dev.trim_end(), 40),
        })?;
        let node = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(PortLocation { node, major, minor });
    }
    Err(AgentError::PortNotFound {
        name: name.to_owned(),
        sysfs,
    })
}

/// Parse a sysfs `dev` file: `major:minor\n`.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim_end().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The device node for a port: `/dev/virtio-ports/<name>` when udev made it,
/// else `/dev/<node>`, created with `mknod` when missing or stale.
pub fn ensure_node(root: &HostRoot, name: &str, loc: &PortLocation) -> Result<PathBuf> {
    let wanted = libc::makedev(loc.major, loc.minor);
    let matches = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.file_type().is_char_device() && m.rdev() == wanted)
            .unwrap_or(false)
    };
    let by_name = root.path("/dev/virtio-ports").join(name);
    if matches(&by_name) {
        return Ok(by_name);
    }
    let node = root.path("/dev").join(&loc.node);
    if matches(&node) {
        return Ok(node);
    }
    if fs::symlink_metadata(&node).is_ok() {
        // Stale: something else sits where the node should be.
        fs::remove_file(&node).map_err(|source| AgentError::Mknod {
            path: node.clone(),
            major: loc.major,
            minor: loc.minor,
            source,
        })?;
    }
    crate::sys::mknod_char(&node, loc.major, loc.minor).map_err(|source| AgentError::Mknod {
        path: node.clone(),
        major: loc.major,
        minor: loc.minor,
        source,
    })?;
    Ok(node)
}

/// Open the port called `name` for reading and writing (non-blocking).
pub fn open_port(root: &HostRoot, name: &str) -> Result<LineWriter> {
    let loc = find_port(root, name)?;
    let node = ensure_node(root, name, &loc)?;
    open_device(&node)
}

/// Open any writable path (a port, a FIFO, a pty) for non-blocking writes; a
/// character device (a port, a pty) is opened read-write, so the host's lines can
/// be read from it. A FIFO stays write-only: opened for reading too, the agent
/// would be its own reader (and the host's absence would go unnoticed).
pub fn open_device(path: &Path) -> Result<LineWriter> {
    let open_err = |source| AgentError::Open {
        what: path.display().to_string(),
        source,
    };
    let read = fs::metadata(path)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    let file = OpenOptions::new()
        .read(read)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(open_err)?;
    LineWriter::new(file).map_err(open_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(ports: &[(&str, &str, &str)]) -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        for (node, name, dev) in ports {
            let d = dir.path().join("sys/class/virtio-ports").join(node);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
            fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        }
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        let root = HostRoot::new(dir.path());
        (dir, root)
    }

    #[test]
    fn the_port_is_found_by_name_among_others() {
        let (_d, root) = fake_sysfs(&[
            ("vport1p1", "org.qemu.guest_agent.0", "251:1"),
            ("vport1p2", DEFAULT_PORT_NAME, "251:2"),
        ]);
        assert_eq!(
            find_port(&root, DEFAULT_PORT_NAME).unwrap(),
            PortLocation {
                node: "vport1p2".into(),
                major: 251,
                minor: 2
            }
        );
        let err = find_port(&root, "nope").unwrap_err();
        assert!(matches!(err, AgentError::PortNotFound { ref name, .. } if name == "nope"));
        assert!(err.to_string().contains("virtio_console"));
    }

    #[test]
    fn a_garbled_dev_file_is_named() {
        let (_d, root) = fake_sysfs(&[("vport0p1", "p", "garbage\x1b")]);
        let err = find_port(&root, "p").unwrap_err();
        match err {
            AgentError::BadDevFile { path, found } => {
                assert!(path.ends_with("vport0p1/dev"));
                assert_eq!(found, "garbage?");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_dev("252:3\n"), Some((252, 3)));
        assert_eq!(parse_dev("252"), None);
    }

    #[test]
    fn a_missing_node_is_created_with_the_sysfs_numbers() {
        let (_d, root) = fake_sysfs(&[("vport2p1", DEFAULT_PORT_NAME, "1:3")]);
        let loc = find_port(&root, DEFAULT_PORT_NAME).unwrap();
        match ensure_node(&root, DEFAULT_PORT_NAME, &loc) {
            Ok(node) => {
                let m = fs::metadata(&node).unwrap();
                assert!(m.file_type().is_char_device());
                assert_eq!(m.rdev(), libc::makedev(1, 3));
                assert!(node.ends_with("dev/vport2p1"));
                // 1:3 is /dev/null: the whole open path works on it.
                let mut w = open_port(&root, DEFAULT_PORT_NAME).unwrap();
                w.send(b"{}\n", std::time::Duration::from_millis(50))
                    .unwrap();
            }
            Err(AgentError::Mknod { source, .. }) => {
                println!("SKIP: mknod not permitted here: {source}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
