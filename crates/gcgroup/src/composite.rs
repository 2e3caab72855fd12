//! Two backends as one: the router `gvm-vgpud --backend auto` uses.
//!
//! On a host with both GVM's driver and CUDA processes under the interposer, a process GVM
//! has registered is driven through GVM, every other through the next backend. The router
//! knows nothing of either: it asks the first, and on [`Error::ProcessGone`] or
//! [`Error::NotPresent`] asks the second.

use crate::backend::{GcgroupBackend, GcgroupSnapshot};
use crate::error::{Error, Result};
use crate::value::{KernelStat, MemoryLimit, Priority};

/// Each pid goes to `primary` when `primary` has it, else to `secondary`. `primary` saying
/// its tree is missing ([`Error::NotPresent`]) counts as having no processes.
#[derive(Debug)]
pub struct Composite<P, S> {
    primary: P,
    secondary: S,
    name: &'static str,
}

impl<P: GcgroupBackend, S: GcgroupBackend> Composite<P, S> {
    /// `primary` first, then `secondary`, reported as `name`.
    pub fn new(primary: P, secondary: S, name: &'static str) -> Self {
        Composite {
            primary,
            secondary,
            name,
        }
    }

    /// Run `f` on `primary`, or on `secondary` when `primary` does not know the pid.
    fn route<T>(&self, f: impl Fn(&dyn GcgroupBackend) -> Result<T>) -> Result<T> {
        match f(&self.primary) {
            Err(Error::ProcessGone { .. } | Error::NotPresent { .. }) => f(&self.secondary),
            other => other,
        }
    }
}

impl<P: GcgroupBackend, S: GcgroupBackend> GcgroupBackend for Composite<P, S> {
    fn processes(&self) -> Result<Vec<u32>> {
        let mut pids = match self.primary.processes() {
            Ok(p) => p,
            Err(Error::NotPresent { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        pids.extend(self.secondary.processes()?);
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        self.route(|b| b.gpus(pid))
    }

    fn gpu_count(&self, pid: u32) -> Result<Option<usize>> {
        self.route(|b| b.gpu_count(pid))
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        self.route(|b| b.read(pid, gpu))
    }

    fn stat(&self, pid: u32, gpu: u32) -> Result<KernelStat> {
        self.route(|b| b.stat(pid, gpu))
    }

    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()> {
        self.route(|b| b.set_memory_limit(pid, gpu, limit))
    }

    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        self.route(|b| b.set_priority(pid, gpu, priority))
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        self.route(|b| b.set_frozen(pid, gpu, frozen))
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[test]
    fn the_composite_routes_each_pid_to_the_backend_that_has_it() {
        let gvm = MemoryBackend::new();
        gvm.register(10, 8);
        let shim = MemoryBackend::new();
        shim.register(20, 0);
        shim.register(10, 0); // seen by both: the primary wins
        let c = Composite::new(gvm, shim, "both");
        assert_eq!(c.name(), "both");
        assert_eq!(c.processes().expect("backend call"), vec![10, 20]);
        assert_eq!(c.gpus(10).expect("backend call"), vec![8]);
        assert_eq!(c.gpus(20).expect("backend call"), vec![0]);
        c.set_priority(20, 0, Priority::try_from(1).expect("priority 1"))
            .expect("backend call");
        c.set_frozen(10, 8, true).expect("backend call");
        assert_eq!(c.read(20, 0).expect("backend call").priority.get(), 1);
        assert!(c.read(10, 8).expect("backend call").frozen);
        assert!(
            !c.secondary.read(10, 0).expect("backend call").frozen,
            "secondary untouched"
        );
        assert!(c.read(30, 0).unwrap_err().is_process_gone());
    }
}
