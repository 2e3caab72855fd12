//! The NVML collector: NVIDIA's management library, loaded at run time.
//!
//! `nvml-wrapper` `dlopen`s `libnvidia-ml.so.1`, which the NVIDIA driver installs.
//! Per GPU it reads the running compute processes (pid and GPU memory, the same
//! figures `nvidia-smi --query-compute-apps` prints), the per-process utilization
//! samples taken since the previous call (SM and memory-bandwidth percent), the
//! whole-GPU utilization and the memory in use. Names and command lines come
//! from `/proc`.

use super::{identity, Collector, Sample};
use crate::error::{AgentError, Result};
use gvm_agent_proto::{
    clean_text, CollectorKind, GpuInfo, GpuSample, ProcessSample, MAX_GPUS, MAX_STRING_BYTES,
};
use gvm_host_root::HostRoot;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use std::collections::BTreeMap;

/// The NVML collector.
pub struct NvmlCollector {
    nvml: Nvml,
    root: HostRoot,
    /// Per device index: the newest utilization sample timestamp seen.
    last_seen: BTreeMap<u32, u64>,
}

impl NvmlCollector {
    /// Load and initialise NVML.
    pub fn open(root: HostRoot) -> Result<Self> {
        let nvml = Nvml::init().map_err(|e| AgentError::Nvml {
            reason: e.to_string(),
        })?;
        Ok(NvmlCollector {
            nvml,
            root,
            last_seen: BTreeMap::new(),
        })
    }

    fn count(&self) -> u32 {
        self.nvml.device_count().unwrap_or(0).min(MAX_GPUS as u32)
    }
}

/// Per-process utilization over the samples returned: the highest of each.
fn max_util(samples: &[(u32, u64, u32, u32)]) -> BTreeMap<u32, (u32, u32, u64)> {
    let mut out: BTreeMap<u32, (u32, u32, u64)> = BTreeMap::new();
    for &(pid, ts, sm, mem) in samples {
        let e = out.entry(pid).or_insert((0, 0, 0));
        e.0 = e.0.max(sm.min(100));
        e.1 = e.1.max(mem.min(100));
        e.2 = e.2.max(ts);
    }
    out
}

impl Collector for NvmlCollector {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Nvml
    }

    fn driver(&self) -> Option<String> {
        self.nvml
            .sys_driver_version()
            .ok()
            .map(|v| clean_text(&v, MAX_STRING_BYTES))
    }

    fn gpus(&mut self) -> Vec<GpuInfo> {
        (0..self.count())
            .filter_map(|index| {
                let d = self.nvml.device_by_index(index).ok()?;
                Some(GpuInfo {
                    index,
                    name: clean_text(&d.name().unwrap_or_default(), MAX_STRING_BYTES),
                    uuid: d.uuid().ok().map(|u| clean_text(&u, MAX_STRING_BYTES)),
                    memory_total_bytes: d.memory_info().ok().map(|m| m.total),
                })
            })
            .collect()
    }

    fn sample(&mut self) -> Sample {
        let mut sample = Sample::default();
        for index in 0..self.count() {
            let Ok(d) = self.nvml.device_by_index(index) else {
                continue;
            };
            let util = d.utilization_rates().ok();
            sample.gpus.push(GpuSample {
                index,
                util_sm_pct: util.as_ref().map(|u| u.gpu.min(100)),
                util_mem_pct: util.as_ref().map(|u| u.memory.min(100)),
                memory_used_bytes: d.memory_info().ok().map(|m| m.used),
            });
            let since = self.last_seen.get(&index).copied();
            let samples: Vec<(u32, u64, u32, u32)> = d
                .process_utilization_stats(since)
                .unwrap_or_default()
                .iter()
                .map(|s| (s.pid, s.timestamp, s.sm_util, s.mem_util))
                .collect();
            let util = max_util(&samples);
            if let Some(newest) = util.values().map(|u| u.2).max() {
                self.last_seen.insert(index, newest);
            }
            for p in d.running_compute_processes().unwrap_or_default() {
                let Some((name, cmdline)) = identity(self.root.proc_dir(), p.pid) else {
                    continue;
                };
                let u = util.get(&p.pid);
                sample.processes.push(ProcessSample {
                    pid: p.pid,
                    name,
                    cmdline,
                    gpu: Some(index),
                    memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                    // No sample since the last call means no activity.
                    sm_pct: Some(u.map_or(0, |u| u.0)),
                    mem_pct: Some(u.map_or(0, |u| u.1)),
                });
            }
        }
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_keeps_the_highest_sample_per_process_and_the_newest_time() {
        let u = max_util(&[(1, 10, 30, 5), (1, 20, 10, 50), (2, 15, 250, 0)]);
        assert_eq!(u[&1], (30, 50, 20));
        assert_eq!(u[&2], (100, 0, 15), "clamped to 100");
    }

    #[test]
    fn opening_without_a_driver_fails_cleanly() {
        match NvmlCollector::open(HostRoot::default()) {
            Ok(_) => println!("SKIP: NVML is present on this machine"),
            Err(e) => assert!(e.to_string().starts_with("NVML is not usable")),
        }
    }
}
