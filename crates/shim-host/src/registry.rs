//! The registered shim processes of one host root, each with its mapped control block: what
//! the registration listener writes and the shim backend reads.
//!
//! One [`ShimRegistry`] is made by whoever runs the manager (gvm-vgpud's `main`, a test, the
//! guest agent) and handed, as an `Arc`, to both the listener and
//! [`crate::backend::ShimBackend`]: there is no process-wide registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gvm_shim_abi::control::ControlMap;

use crate::handover::RegisteredGpu;

/// A registered shim process.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The connection it came on (a newer registration of the same pid replaces it).
    pub connection: u64,
    /// The pid the process sees for itself (differs from the daemon's in a container).
    pub ns_pid: u32,
    /// What the process said its block is (`memfd`, or its file's path): for logs only.
    pub control: String,
    /// The block itself, mapped from the descriptor the process handed over once its size
    /// was found sealed (or root's alone to change): the manager reads and writes it here and
    /// never reopens anything by path.
    pub block: Arc<ControlMap>,
    /// The block's (device, inode).
    pub file_id: (u64, u64),
    /// The GPUs it sees.
    pub gpus: Vec<RegisteredGpu>,
    /// The UUID it was given (informational).
    pub vgpu_uuid: Option<String>,
    /// The priority the manager last gave it as a vGPU owner ([`ShimRegistry::assign_priority`]);
    /// `None` while it owns none. The arbitration relay counts it at this priority in other
    /// domains, whatever the process writes into its own block.
    pub assigned_priority: Option<u32>,
    /// The GPUs whose arbitration blocks (made by an earlier manager) the process handed
    /// back with this registration, as it said, in the order of the descriptors.
    pub arbiter_back: Vec<String>,
}

/// The registered shim processes of one host root, by the daemon's pid for them.
#[derive(Debug, Default)]
pub struct ShimRegistry {
    by_pid: Mutex<BTreeMap<u32, Registration>>,
    next_connection: AtomicU64,
}

impl ShimRegistry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Registration>> {
        self.by_pid.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection id.
    pub fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Record `reg` for `host_pid` (replacing an older one).
    pub fn insert(&self, host_pid: u32, reg: Registration) {
        self.lock().insert(host_pid, reg);
    }

    /// Drop the registration of `host_pid` made on `connection` (a newer one stays).
    /// Returns whether one was dropped.
    pub fn remove(&self, host_pid: u32, connection: u64) -> bool {
        let mut m = self.lock();
        if m.get(&host_pid).is_some_and(|r| r.connection == connection) {
            m.remove(&host_pid);
            return true;
        }
        false
    }

    /// Drop the registration of `host_pid`, whatever its connection (the process is gone).
    pub fn forget(&self, host_pid: u32) {
        self.lock().remove(&host_pid);
    }

    /// The registration of `host_pid`.
    pub fn get(&self, host_pid: u32) -> Option<Registration> {
        self.lock().get(&host_pid).cloned()
    }

    /// Record that the manager gave `host_pid` the priority `priority` (as a vGPU owner).
    pub fn assign_priority(&self, host_pid: u32, priority: u32) {
        if let Some(r) = self.lock().get_mut(&host_pid) {
            r.assigned_priority = Some(priority);
        }
    }

    /// Every registration.
    pub fn all(&self) -> Vec<(u32, Registration)> {
        self.lock().iter().map(|(p, r)| (*p, r.clone())).collect()
    }
}
