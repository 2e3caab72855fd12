//! [`MemoryBackend`]: an in-memory [`GcgroupBackend`] for tests of the daemon and scheduler.
//!
//! It behaves like GVM's tree as seen through the trait: unknown pids are
//! [`Error::ProcessGone`], a new gcgroup starts at GVM's defaults (unlimited,
//! priority 8, not frozen, zero counts), and writes show up in later reads.
//! Tests play the kernel with [`MemoryBackend::register`],
//! [`MemoryBackend::unregister`] and [`MemoryBackend::update`].

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::backend::{GcgroupBackend, GcgroupSnapshot};
use crate::error::{Error, Result};
use crate::value::{KernelStat, MemoryLimit, Priority};

/// Gcgroups kept in a table, keyed by (pid, gpu).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    table: Mutex<BTreeMap<(u32, u32), GcgroupSnapshot>>,
}

impl MemoryBackend {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(u32, u32), GcgroupSnapshot>> {
        // A panicking test thread must not hide the table from the others.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Make `pid` register `gpu`, with GVM's defaults (no-op if it already has).
    pub fn register(&self, pid: u32, gpu: u32) {
        self.lock().entry((pid, gpu)).or_insert(GcgroupSnapshot {
            pid,
            gpu,
            memory_limit: MemoryLimit::Unlimited,
            memory_current: 0,
            swap_current: 0,
            priority: Priority::DEFAULT,
            frozen: false,
            stat: KernelStat::default(),
        });
    }

    /// Make `pid` exit: every gcgroup of it disappears.
    pub fn unregister(&self, pid: u32) {
        self.lock().retain(|(p, _), _| *p != pid);
    }

    /// Change a gcgroup as the kernel would (memory use, kernel counts).
    pub fn update(&self, pid: u32, gpu: u32, f: impl FnOnce(&mut GcgroupSnapshot)) -> Result<()> {
        let mut table = self.lock();
        let snap = table
            .get_mut(&(pid, gpu))
            .ok_or(Error::ProcessGone { pid })?;
        f(snap);
        Ok(())
    }
}

impl GcgroupBackend for MemoryBackend {
    fn processes(&self) -> Result<Vec<u32>> {
        let mut pids: Vec<u32> = self.lock().keys().map(|(p, _)| *p).collect();
        pids.dedup();
        Ok(pids)
    }

    fn gpus(&self, pid: u32) -> Result<Vec<u32>> {
        let gpus: Vec<u32> = self
            .lock()
            .keys()
            .filter(|(p, _)| *p == pid)
            .map(|(_, g)| *g)
            .collect();
        if gpus.is_empty() {
            return Err(Error::ProcessGone { pid });
        }
        Ok(gpus)
    }

    fn read(&self, pid: u32, gpu: u32) -> Result<GcgroupSnapshot> {
        self.lock()
            .get(&(pid, gpu))
            .copied()
            .ok_or(Error::ProcessGone { pid })
    }

    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> Result<()> {
        self.update(pid, gpu, |s| {
            s.memory_limit = MemoryLimit::from_bytes(limit.as_bytes())
        })
    }

    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> Result<()> {
        self.update(pid, gpu, |s| s.priority = priority)
    }

    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> Result<()> {
        self.update(pid, gpu, |s| s.frozen = frozen)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_gcgroups_start_at_gvm_defaults_and_take_writes() -> Result<()> {
        let b = MemoryBackend::new();
        b.register(20, 8);
        b.register(10, 0);
        b.register(10, 8);
        assert_eq!(b.processes()?, [10, 20]);
        assert_eq!(b.gpus(10)?, [0, 8]);
        let s = b.read(10, 8)?;
        assert_eq!(
            (s.memory_limit, s.priority, s.frozen),
            (MemoryLimit::Unlimited, Priority::DEFAULT, false)
        );

        b.set_memory_limit(10, 8, MemoryLimit::Bytes(1 << 30))?;
        b.set_priority(10, 8, Priority::MIN)?;
        b.set_frozen(10, 8, true)?;
        b.update(10, 8, |s| s.stat.submitted = 5)?;
        let s = b.read(10, 8)?;
        assert_eq!(s.memory_limit, MemoryLimit::Bytes(1 << 30));
        assert_eq!(s.priority, Priority::MIN);
        assert!(s.frozen);
        assert_eq!(s.stat.submitted, 5);
        // The other GPU is untouched.
        assert!(!b.read(10, 0)?.frozen);
        assert_eq!(b.name(), "memory");
        Ok(())
    }

    #[test]
    fn an_exited_process_is_gone() {
        let b = MemoryBackend::new();
        b.register(7, 0);
        b.unregister(7);
        assert!(matches!(b.gpus(7), Err(Error::ProcessGone { pid: 7 })));
        assert!(matches!(b.read(7, 0), Err(Error::ProcessGone { pid: 7 })));
        assert!(matches!(
            b.set_frozen(7, 0, true),
            Err(Error::ProcessGone { pid: 7 })
        ));
        assert!(b.processes().is_ok_and(|p| p.is_empty()));
    }
}
