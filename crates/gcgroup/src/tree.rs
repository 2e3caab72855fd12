//! [`GvmTree`] and [`Gcgroup`]: GVM's debugfs tree, read and written through the host root.
//!
//! `processes/list` names the processes that have registered with nvidia-uvm;
//! `processes/<pid>/<gpu>/` is one gcgroup with its knobs. Each read opens the
//! file afresh (a process can vanish at any time: that is
//! [`Error::ProcessGone`], not a failure); each write is one `write(2)` of a
//! decimal number and a newline, opened like `echo N > file` would.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use gvm_host_root::HostRoot;

use crate::backend::GcgroupSnapshot;
use crate::error::{map_io_error, Error, Result};
use crate::value::{
    knob_text, parse_frozen, parse_pid_list, parse_priority, parse_u64, KernelStat, MemoryLimit,
    Priority,
};

/// `memory.limit`: bytes, read/write.
pub const MEMORY_LIMIT: &str = "memory.limit";
/// `memory.current`: bytes resident on the GPU, read-only.
pub const MEMORY_CURRENT: &str = "memory.current";
/// `memory.swap.current`: bytes evicted to host memory, read-only.
pub const SWAP_CURRENT: &str = "memory.swap.current";
/// `compute.priority`: 0..=16, read/write.
pub const COMPUTE_PRIORITY: &str = "compute.priority";
/// `compute.freeze`: 0/1, read/write.
pub const COMPUTE_FREEZE: &str = "compute.freeze";
/// `gcgroup.stat`: kernel counts, read-only.
pub const GCGROUP_STAT: &str = "gcgroup.stat";

/// GVM's `nvidia-uvm/processes` debugfs tree of one host.
#[derive(Debug, Clone)]
pub struct GvmTree {
    processes_dir: PathBuf,
}

/// Read a kernel attribute file. debugfs and sysfs attributes hand over their whole
/// value in the first `read` of a page-sized buffer, so a short first read is the
/// whole content: open, one read, close — no size query and no extra read to see
/// the end (both are round trips on the simulated host). A full buffer is read on
/// to the end.
pub(crate) fn read_attribute(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match f.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if n < buf.len() {
        buf.truncate(n);
    } else {
        f.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

impl GvmTree {
    /// The tree under `host` (`/sys/kernel/debug/nvidia-uvm/processes`).
    pub fn new(host: HostRoot) -> Self {
        GvmTree {
            processes_dir: host.gvm_processes_dir(),
        }
    }

    /// The `processes/` directory.
    pub fn processes_dir(&self) -> &Path {
        &self.processes_dir
    }

    /// Whether the `processes/` directory exists (GVM loaded, debugfs mounted, readable).
    pub fn is_present(&self) -> bool {
        self.processes_dir.is_dir()
    }

    /// The pids in `processes/list`, sorted.
    pub fn processes(&self) -> Result<Vec<u32>> {
        let file = self.processes_dir.join("list");
        match fs::read_to_string(&file) {
            Ok(content) => parse_pid_list(&file, &content),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.is_present() => {
                Err(Error::NotPresent {
                    dir: self.processes_dir.clone(),
                })
            }
            Err(source) => Err(match map_io_error(source, 0, file.clone(), None) {
                // `list` itself missing in a present tree: not about any process.
                Error::ProcessGone { .. } => Error::MissingKnob { file },
                other => other,
            }),
        }
    }

    /// The GPU indexes a process has registered (numeric entries of `processes/<pid>/`), sorted.
    pub fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        let dir = self.processes_dir.join(pid.to_string());
        let entries =
            fs::read_dir(&dir).map_err(|e| self.refine(map_io_error(e, pid, dir.clone(), None)))?;
        let mut gpus = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| map_io_error(e, pid, dir.clone(), None))?;
            if let Some(gpu) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                gpus.push(gpu);
            }
        }
        gpus.sort_unstable();
        Ok(gpus)
    }

    /// The number of GPUs `pid` has registered, from the link count of
    /// `processes/<pid>/`: debugfs (like sysfs) counts a directory's subdirectories in
    /// its link count (2 + one per `<gpu>` directory), so one `stat` tells whether the
    /// set may have changed without listing it. `None` when the count is not kept
    /// (link count below 2, as some file systems report for directories).
    pub fn gpu_count(&self, pid: u32) -> Result<Option<usize>> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.processes_dir.join(pid.to_string());
        let meta = fs::metadata(&dir).map_err(|e| self.refine(map_io_error(e, pid, dir, None)))?;
        Ok(usize::try_from(meta.nlink())
            .ok()
            .and_then(|n| n.checked_sub(2)))
    }

    /// The gcgroup of `pid` on `gpu` (not checked to exist: its operations say so).
    pub fn gcgroup(&self, pid: u32, gpu: u32) -> Gcgroup {
        Gcgroup {
            pid,
            gpu,
            dir: self
                .processes_dir
                .join(pid.to_string())
                .join(gpu.to_string()),
            processes_dir: self.processes_dir.clone(),
        }
    }

    /// Turn a `ProcessGone` for a path under this tree into `NotPresent` when the whole tree is missing.
    fn refine(&self, err: Error) -> Error {
        match err {
            Error::ProcessGone { .. } if !self.is_present() => Error::NotPresent {
                dir: self.processes_dir.clone(),
            },
            other => other,
        }
    }
}

/// One gcgroup: `processes/<pid>/<gpu>/`.
#[derive(Debug, Clone)]
pub struct Gcgroup {
    pid: u32,
    gpu: u32,
    dir: PathBuf,
    processes_dir: PathBuf,
}

impl Gcgroup {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// UVM's GPU index.
    pub fn gpu(&self) -> u32 {
        self.gpu
    }

    /// `processes/<pid>/<gpu>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the gcgroup directory exists now.
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// `memory.limit`.
    pub fn memory_limit(&self) -> Result<MemoryLimit> {
        let (file, content) = self.read(MEMORY_LIMIT)?;
        parse_u64(&file, &content).map(MemoryLimit::from_bytes)
    }

    /// Write `memory.limit` (blocks while GVM evicts down to a lower limit).
    pub fn set_memory_limit(&self, limit: MemoryLimit) -> Result<()> {
        self.write(MEMORY_LIMIT, limit.as_bytes())
    }

    /// `memory.current`: bytes resident on the GPU.
    pub fn memory_current(&self) -> Result<u64> {
        let (file, content) = self.read(MEMORY_CURRENT)?;
        parse_u64(&file, &content)
    }

    /// `memory.swap.current`: bytes evicted to host memory.
    pub fn swap_current(&self) -> Result<u64> {
        let (file, content) = self.read(SWAP_CURRENT)?;
        parse_u64(&file, &content)
    }

    /// `compute.priority`.
    pub fn priority(&self) -> Result<Priority> {
        let (file, content) = self.read(COMPUTE_PRIORITY)?;
        parse_priority(&file, &content)
    }

    /// Write `compute.priority` (reaches only the channel groups that exist now).
    pub fn set_priority(&self, p: Priority) -> Result<()> {
        self.write(COMPUTE_PRIORITY, u64::from(p.get()))
    }

    /// `compute.freeze`.
    pub fn frozen(&self) -> Result<bool> {
        let (file, content) = self.read(COMPUTE_FREEZE)?;
        parse_frozen(&file, &content)
    }

    /// Freeze (preempt and stop scheduling) or thaw the process's GPU work.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.write(COMPUTE_FREEZE, u64::from(frozen))
    }

    /// `gcgroup.stat`.
    pub fn stat(&self) -> Result<KernelStat> {
        let (file, content) = self.read(GCGROUP_STAT)?;
        KernelStat::parse(&file, &content)
    }

    /// Every knob at once.
    pub fn snapshot(&self) -> Result<GcgroupSnapshot> {
        Ok(GcgroupSnapshot {
            pid: self.pid,
            gpu: self.gpu,
            memory_limit: self.memory_limit()?,
            memory_current: self.memory_current()?,
            swap_current: self.swap_current()?,
            priority: self.priority()?,
            frozen: self.frozen()?,
            stat: self.stat()?,
        })
    }

    fn read(&self, knob: &str) -> Result<(PathBuf, String)> {
        let file = self.dir.join(knob);
        match read_attribute(&file) {
            Ok(bytes) => {
                let content = String::from_utf8_lossy(&bytes).into_owned();
                Ok((file, content))
            }
            Err(e) => Err(self.refine(map_io_error(e, self.pid, file.clone(), None), file)),
        }
    }

    fn write(&self, knob: &str, value: u64) -> Result<()> {
        let file = self.dir.join(knob);
        let text = knob_text(value);
        let result = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        result.map_err(|e| self.refine(map_io_error(e, self.pid, file.clone(), Some(&text)), file))
    }

    /// A `ProcessGone` is only true if the gcgroup directory is gone; otherwise
    /// the tree or the knob is what is missing.
    fn refine(&self, err: Error, file: PathBuf) -> Error {
        match err {
            Error::ProcessGone { .. } if !self.processes_dir.is_dir() => Error::NotPresent {
                dir: self.processes_dir.clone(),
            },
            Error::ProcessGone { .. } if self.dir.is_dir() => Error::MissingKnob { file },
            other => other,
        }
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
