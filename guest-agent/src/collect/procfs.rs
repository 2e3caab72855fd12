//! The `/proc` collector: which processes hold NVIDIA device nodes open.
//!
//! Every process using an NVIDIA GPU holds `/dev/nvidiactl` and `/dev/nvidiaN`
//! (N = the GPU's device minor) open, and CUDA processes `/dev/nvidia-uvm` too.
//! Reading the links in `/proc/<pid>/fd` finds them without any NVIDIA library.
//! The GPUs come from `/proc/driver/nvidia/gpus/<pci>/information` (model, UUID,
//! device minor); without it, from the `/dev/nvidiaN` nodes. The driver version
//! comes from `/proc/driver/nvidia/version`.

use super::{identity, Collector, Sample};
use gvm_agent_proto::{clean_text, CollectorKind, GpuInfo, ProcessSample, MAX_STRING_BYTES};
use gvm_host_root::HostRoot;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// What an fd link points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NvidiaNode {
    /// `/dev/nvidiaN`: GPU with device minor N.
    Gpu(u32),
    /// Any other `/dev/nvidia*` node (`nvidiactl`, `nvidia-uvm`, …).
    Other,
}

/// Classify an fd link target.
pub fn classify(target: &Path) -> Option<NvidiaNode> {
    let s = target.to_str()?;
    let rest = s.strip_prefix("/dev/nvidia")?;
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        return rest.parse().ok().map(NvidiaNode::Gpu);
    }
    if rest.contains('/') {
        // /dev/nvidia-caps/… is still an NVIDIA node.
        return rest.starts_with("-caps/").then_some(NvidiaNode::Other);
    }
    Some(NvidiaNode::Other)
}

/// Parse one `information` file into a GPU (indexed by its device minor).
pub fn parse_information(text: &str) -> Option<GpuInfo> {
    let mut model = None;
    let mut uuid = None;
    let mut minor = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Model" => model = Some(v),
            "GPU UUID" => uuid = Some(v),
            "Device Minor" => minor = v.parse::<u32>().ok(),
            _ => {}
        }
    }
    Some(GpuInfo {
        index: minor?,
        name: clean_text(model.unwrap_or("NVIDIA GPU"), MAX_STRING_BYTES),
        uuid: uuid
            .filter(|u| !u.is_empty() && !u.contains("?"))
            .map(|u| clean_text(u, MAX_STRING_BYTES)),
        memory_total_bytes: None,
    })
}

/// The version number in `/proc/driver/nvidia/version`.
pub fn parse_driver_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    first
        .split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() >= 2
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|w| clean_text(w, MAX_STRING_BYTES))
}

/// The `/proc` collector.
#[derive(Debug, Clone)]
pub struct ProcCollector {
    root: HostRoot,
    /// The GPU indices of the last [`Collector::gpus`] call (what the hello said).
    known: Option<Vec<u32>>,
}

impl ProcCollector {
    /// A collector reading `root`'s `/proc` and `/dev`.
    pub fn new(root: HostRoot) -> Self {
        ProcCollector { root, known: None }
    }

    fn nvidia_proc(&self) -> std::path::PathBuf {
        self.root.proc_dir().join("driver/nvidia")
    }

    /// Which NVIDIA nodes `pid` holds open.
    fn holdings(&self, pid_dir: &Path) -> BTreeSet<NvidiaNode> {
        let mut out = BTreeSet::new();
        let Ok(fds) = fs::read_dir(pid_dir.join("fd")) else {
            return out;
        };
        for fd in fds.flatten() {
            if let Some(node) = fs::read_link(fd.path()).ok().and_then(|t| classify(&t)) {
                out.insert(node);
            }
        }
        out
    }
}

impl Collector for ProcCollector {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Proc
    }

    fn driver(&self) -> Option<String> {
        let text = fs::read_to_string(self.nvidia_proc().join("version")).ok()?;
        parse_driver_version(&text)
    }

    fn gpus(&mut self) -> Vec<GpuInfo> {
        let mut gpus: Vec<GpuInfo> = fs::read_dir(self.nvidia_proc().join("gpus"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| fs::read_to_string(e.path().join("information")).ok())
                    .filter_map(|t| parse_information(&t))
                    .collect()
            })
            .unwrap_or_default();
        if gpus.is_empty() {
            // No driver proc files: fall back to the device nodes.
            if let Ok(dev) = fs::read_dir(self.root.path("/dev")) {
                for e in dev.flatten() {
                    let name = e.file_name();
                    let path = Path::new("/dev").join(&name);
                    if let Some(NvidiaNode::Gpu(minor)) = classify(&path) {
                        gpus.push(GpuInfo {
                            index: minor,
                            name: "NVIDIA GPU".into(),
                            uuid: None,
                            memory_total_bytes: None,
                        });
                    }
                }
            }
        }
        gpus.sort_by_key(|g| g.index);
        gpus.dedup_by_key(|g| g.index);
        gpus.truncate(gvm_agent_proto::MAX_GPUS);
        self.known = Some(gpus.iter().map(|g| g.index).collect());
        gpus
    }

    fn sample(&mut self) -> Sample {
        let proc_dir = self.root.proc_dir().to_owned();
        let mut pids: Vec<u32> = fs::read_dir(&proc_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        pids.sort_unstable();
        if self.known.is_none() {
            self.gpus();
        }
        let known = self.known.clone().unwrap_or_default();
        let mut processes = Vec::new();
        for pid in pids {
            let held = self.holdings(&proc_dir.join(pid.to_string()));
            if held.is_empty() {
                continue;
            }
            let Some((name, cmdline)) = identity(&proc_dir, pid) else {
                continue;
            };
            let gpus: Vec<u32> = held
                .iter()
                .filter_map(|n| match n {
                    NvidiaNode::Gpu(m) if known.contains(m) => Some(*m),
                    _ => None,
                })
                .collect();
            let entry = |gpu| ProcessSample {
                pid,
                name: name.clone(),
                cmdline: cmdline.clone(),
                gpu,
                memory_bytes: None,
                sm_pct: None,
                mem_pct: None,
            };
            if gpus.is_empty() {
                processes.push(entry(None));
            } else {
                processes.extend(gpus.into_iter().map(|g| entry(Some(g))));
            }
        }
        Sample {
            gpus: Vec::new(),
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const INFORMATION: &str = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\nGPU UUID: \t GPU-5a6b7c8d-0000-1111-2222-333344445555\nVideo BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 0\nGPU Excluded:\t No\n";

    struct Fake {
        _dir: tempfile::TempDir,
        root: HostRoot,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let proc_dir = dir.path().join("proc");
            fs::create_dir_all(proc_dir.join("driver/nvidia/gpus/0000:01:00.0")).unwrap();
            fs::create_dir_all(dir.path().join("dev")).unwrap();
            let root = HostRoot::new(dir.path()).with_proc_dir(&proc_dir);
            Fake { _dir: dir, root }
        }

        fn proc(&self) -> &Path {
            self.root.proc_dir()
        }

        fn process(&self, pid: u32, comm: &str, cmdline: &[u8], fds: &[&str]) {
            let d = self.proc().join(pid.to_string());
            fs::create_dir_all(d.join("fd")).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(d.join("cmdline"), cmdline).unwrap();
            for (i, t) in fds.iter().enumerate() {
                symlink(t, d.join("fd").join(i.to_string())).unwrap();
            }
        }
    }

    #[test]
    fn holders_of_nvidia_nodes_are_found_with_name_and_cmdline() {
        let f = Fake::new();
        fs::write(
            f.proc().join("driver/nvidia/gpus/0000:01:00.0/information"),
            INFORMATION,
        )
        .unwrap();
        f.process(
            1234,
            "python3",
            b"python3\0train.py\0--epochs\x1b\0",
            &[
                "/dev/null",
                "/dev/nvidiactl",
                "/dev/nvidia0",
                "/dev/nvidia-uvm",
                "socket:[123]",
            ],
        );
        f.process(55, "bash", b"bash\0", &["/dev/pts/0", "/dev/null"]);
        f.process(77, "nvidia-smi", b"nvidia-smi\0", &["/dev/nvidiactl"]);
        f.process(88, "odd", b"odd\0", &["/dev/nvidia7"]);
        fs::create_dir_all(f.proc().join("self")).unwrap();
        // A first sample before any hello still maps /dev/nvidia0 to GPU 0.
        let first = ProcCollector::new(f.root.clone()).sample();
        assert_eq!(first.processes.last().map(|p| p.gpu), Some(Some(0)));
        let mut c = ProcCollector::new(f.root.clone());
        let gpus = c.gpus();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].index, 0);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            gpus[0].uuid.as_deref(),
            Some("GPU-5a6b7c8d-0000-1111-2222-333344445555")
        );
        let s = c.sample();
        let got: Vec<(u32, &str, Option<u32>)> = s
            .processes
            .iter()
            .map(|p| (p.pid, p.name.as_str(), p.gpu))
            .collect();
        // pid 88 holds a GPU node of a GPU the driver does not list: no index.
        assert_eq!(
            got,
            vec![
                (77, "nvidia-smi", None),
                (88, "odd", None),
                (1234, "python3", Some(0))
            ]
        );
        assert_eq!(s.processes[2].cmdline, "python3 train.py --epochs?");
        assert!(s.processes.iter().all(|p| p.memory_bytes.is_none()));
    }

    #[test]
    fn without_driver_proc_files_gpus_come_from_dev_nodes() {
        let f = Fake::new();
        for n in ["nvidia1", "nvidiactl", "nvidia0", "nvidia-uvm", "null"] {
            fs::write(f.root.path("/dev").join(n), "").unwrap();
        }
        let mut c = ProcCollector::new(f.root.clone());
        let idx: Vec<u32> = c.gpus().iter().map(|g| g.index).collect();
        assert_eq!(idx, vec![0, 1]);
        assert_eq!(c.driver(), None);
    }

    #[test]
    fn driver_version_and_node_classification() {
        let v = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 13.3.0\n";
        assert_eq!(parse_driver_version(v).as_deref(), Some("580.65.06"));
        assert_eq!(
            classify(Path::new("/dev/nvidia3")),
            Some(NvidiaNode::Gpu(3))
        );
        assert_eq!(
            classify(Path::new("/dev/nvidia-uvm")),
            Some(NvidiaNode::Other)
        );
        assert_eq!(
            classify(Path::new("/dev/nvidia-caps/nvidia-cap1")),
            Some(NvidiaNode::Other)
        );
        assert_eq!(classify(Path::new("/dev/nvme0")), None);
        assert_eq!(classify(Path::new("/tmp/dev/nvidia0")), None);
        assert!(
            parse_information("Model: X\n").is_none(),
            "no minor, no GPU"
        );
    }
}
