//! Collectors: where the agent's figures come from.
//!
//! - [`nvml`] (cargo feature `nvml`): NVIDIA's management library, loaded at run
//!   time from `libnvidia-ml.so.1`. Running compute processes with their GPU
//!   memory, per-process SM/memory utilization samples, per-GPU totals.
//! - [`procfs`]: no library at all. Processes that hold a `/dev/nvidia*` node open
//!   (found through `/proc/<pid>/fd` links), with their name and command line; the
//!   GPUs from `/proc/driver/nvidia/gpus`. No memory or utilization figures.
//!
//! `auto` picks NVML when it loads and `/proc` otherwise. A statically linked
//! agent never loads NVML: a shared library in a static glibc program is
//! unreliable, and on a real GPU guest the attempt crashed (see `docs/agent.md`).

#[cfg(feature = "nvml")]
pub mod nvml;
pub mod procfs;

use crate::error::Result;
use gvm_agent_proto::{
    clean_text, CollectorKind, GpuInfo, GpuSample, ProcessSample, MAX_CMDLINE_BYTES,
    MAX_STRING_BYTES,
};
use gvm_host_root::HostRoot;
use std::path::Path;

/// One sample of GPU use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Per-GPU figures.
    pub gpus: Vec<GpuSample>,
    /// Per-process figures.
    pub processes: Vec<ProcessSample>,
}

/// A source of GPU figures.
pub trait Collector {
    /// Which collector this is.
    fn kind(&self) -> CollectorKind;
    /// The NVIDIA driver version, when known.
    fn driver(&self) -> Option<String>;
    /// The GPUs the guest sees.
    fn gpus(&mut self) -> Vec<GpuInfo>;
    /// Take one sample.
    fn sample(&mut self) -> Sample;
}

/// Which collector the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// NVML when it loads, else /proc.
    Auto,
    /// NVML only (fail when it does not load).
    Nvml,
    /// /proc only.
    Proc,
}

/// Whether this binary is statically linked.
pub const STATIC_BUILD: bool = cfg!(target_feature = "crt-static");

/// Open the collector for `choice`. Returns the collector and, for `auto`, why
/// NVML was not used (for a log line).
pub fn open(choice: Choice, root: &HostRoot) -> Result<(Box<dyn Collector>, Option<String>)> {
    let proc = || Box::new(procfs::ProcCollector::new(root.clone())) as Box<dyn Collector>;
    match choice {
        Choice::Proc => Ok((proc(), None)),
        Choice::Nvml if STATIC_BUILD => Err(crate::error::AgentError::Nvml {
            reason: "this agent is statically linked and cannot load libnvidia-ml.so.1 safely (a forced attempt crashed on a real GPU guest); install the dynamically linked build".into(),
        }),
        Choice::Nvml => Ok((open_nvml(root)?, None)),
        Choice::Auto if STATIC_BUILD => Ok((
            proc(),
            Some("statically linked build: NVML cannot be loaded; use the dynamically linked agent for NVML figures".into()),
        )),
        Choice::Auto => match open_nvml(root) {
            Ok(c) => Ok((c, None)),
            Err(e) => Ok((proc(), Some(e.to_string()))),
        },
    }
}

#[cfg(feature = "nvml")]
fn open_nvml(root: &HostRoot) -> Result<Box<dyn Collector>> {
    Ok(Box::new(nvml::NvmlCollector::open(root.clone())?))
}

#[cfg(not(feature = "nvml"))]
fn open_nvml(_root: &HostRoot) -> Result<Box<dyn Collector>> {
    Err(crate::error::AgentError::Nvml {
        reason: "this agent was built without the `nvml` feature".into(),
    })
}

/// The name (`comm`) and command line of a process, cleaned and clipped for the
/// protocol; `None` when the process is gone.
pub fn identity(proc_dir: &Path, pid: u32) -> Option<(String, String)> {
    let dir = proc_dir.join(pid.to_string());
    let comm = std::fs::read(dir.join("comm")).ok()?;
    let comm = String::from_utf8_lossy(&comm);
    let name = clean_text(comm.trim_end_matches('\n'), MAX_STRING_BYTES);
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let cmdline = clean_text(cmdline.trim_end_matches('\0'), MAX_CMDLINE_BYTES);
    Some((name, cmdline))
}
