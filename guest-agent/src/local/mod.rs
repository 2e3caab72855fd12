//! The guest's local daemon: the agent drives the CUDA interposer's processes in
//! the guest as gvm-vgpud drives them on a host, through the same crates.
//!
//! A CUDA process under `libgvm_cuda.so` registers on the shim socket
//! ([`listener`]) with [`gvm_shim_host::handover::register`] and lands in a
//! [`ShimRegistry`]; its control block is then written with the host's snapshot
//! ([`LocalDaemon::apply`], and at once for each new registration:
//! [`LocalDaemon::adopt`]) and read for the acknowledgement and the counters the
//! agent sends back ([`observe`]). Processes of several uids in the guest are
//! arbitrated through a [`RelayHub`], as on a host; processes of one uid share one
//! arbitration block and arbitrate among themselves through the shim's own
//! arbitration.
//!
//! What the snapshot sets in each block: `memory_limit` (none = unlimited),
//! `priority` (none = [`DEFAULT_PRIORITY`]), `frozen` and the VM-level `hold`
//! (through [`ControlMap::set_frozen`] / [`ControlMap::set_hold`], which wake
//! threads held at the launch gate) and `host_swap`. Without a snapshot a block is
//! left as its process made it (knobs from its environment).
//!
//! Modules:
//! - [`busy_clock`]: each process's GPU busy time, integrated over the agent's polls;
//! - [`listener`]: the shim socket served by plain threads, bounded as on a host;
//! - [`observe`]: what the blocks say: counters, busy, the state reached.

pub mod busy_clock;
pub mod listener;
pub mod observe;

use gvm_agent_proto::v2::Snapshot;
use gvm_host_root::HostRoot;
use gvm_shim_abi::config::{DEFAULT_PRIORITY, MAX_PRIORITY, UNLIMITED};
use gvm_shim_abi::control::ControlMap;
use gvm_shim_host::registry::ShimRegistry;
use gvm_shim_host::relay::Masks;
use gvm_shim_host::relay_hub::RelayHub;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The local daemon's shared state: the registered processes and the snapshot in force.
#[derive(Debug)]
pub struct LocalDaemon {
    root: HostRoot,
    registry: Arc<ShimRegistry>,
    hub: Arc<RelayHub>,
    /// The snapshot applied; held while applying, so a registration and a new
    /// snapshot never interleave.
    applied: Mutex<Option<Snapshot>>,
    /// Bumped at every registration and unregistration.
    changes: AtomicU64,
    /// Each registered process's GPU busy time.
    busy_clocks: Mutex<busy_clock::BusyClocks>,
}

/// Write the snapshot's knobs into one block.
pub fn apply_to(map: &ControlMap, s: &Snapshot) {
    let b = map.block();
    b.memory_limit
        .store(s.knobs.memory_limit.unwrap_or(UNLIMITED), Ordering::Release);
    b.priority.store(applied_priority(s), Ordering::Release);
    b.host_swap
        .store(u32::from(s.knobs.host_swap), Ordering::Release);
    // Frozen last among the knobs: a thaw releases launches under the new limits.
    map.set_hold(s.hold);
    map.set_frozen(s.knobs.frozen);
}

/// The host as the in-guest relay presents it to the guest's processes: while the VM is
/// outranked, a peer of priority 0 registered on every GPU, busy while the host holds the
/// VM. So the processes keep their GPU-side gate armed (a wait in front of each launch,
/// `gpu_gate.rs`) and a hold stops what they already queued, at the next kernel boundary,
/// not only their next launch. A process at priority 0 is not outranked by it: a hold of a
/// VM of priority 0 (by a share scheduler) stops its launches only.
///
/// While the VM outranks someone, the host is also present at the least important
/// priority: the processes then publish busy precisely (`observe.rs`), which the VM's
/// busy claims are made of.
pub fn outside_of(s: &Snapshot) -> Option<Masks> {
    let present = u32::from(s.outranked) | (u32::from(s.outranks) << MAX_PRIORITY);
    (present != 0).then_some(Masks {
        present,
        busy: u32::from(s.outranked && s.hold),
    })
}

/// The priority a snapshot puts in force.
pub fn applied_priority(s: &Snapshot) -> u32 {
    s.knobs.priority.unwrap_or(DEFAULT_PRIORITY)
}

impl LocalDaemon {
    /// A daemon for the guest at `root` (its `/proc` gives names and pid namespaces).
    pub fn new(root: HostRoot) -> Arc<LocalDaemon> {
        let registry = Arc::new(ShimRegistry::default());
        let hub = RelayHub::new(registry.clone());
        Arc::new(LocalDaemon {
            root,
            registry,
            hub,
            applied: Mutex::new(None),
            changes: AtomicU64::new(0),
            busy_clocks: Mutex::new(busy_clock::BusyClocks::default()),
        })
    }

    /// The registered processes.
    pub fn registry(&self) -> &Arc<ShimRegistry> {
        &self.registry
    }

    /// The in-guest arbitration relay.
    pub fn hub(&self) -> &Arc<RelayHub> {
        &self.hub
    }

    /// The guest's root.
    pub fn root(&self) -> &HostRoot {
        &self.root
    }

    /// How many registrations and unregistrations happened so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Option<Snapshot> {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Put `s` in force on every registered process; returns how many.
    pub fn apply(&self, s: Snapshot) -> usize {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        *applied = Some(s);
        // Before the blocks' hold: a process that sees the hold finds its GPU-side gate
        // closed too.
        self.hub.set_outside(outside_of(&s));
        let all = self.registry.all();
        for (host_pid, reg) in &all {
            apply_to(&reg.block, &s);
            self.registry
                .assign_priority(*host_pid, applied_priority(&s));
        }
        all.len()
    }

    /// A process just registered (`host_pid`, the agent's pid for it): put the
    /// snapshot in force on its block at once. Returns whether there was one.
    pub fn adopt(&self, host_pid: u32, block: &ControlMap) -> bool {
        let applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        match *applied {
            Some(s) => {
                apply_to(block, &s);
                self.registry
                    .assign_priority(host_pid, applied_priority(&s));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_presented_above_when_outranked_and_below_when_it_outranks() {
        let s = |outranked, outranks, hold| Snapshot {
            generation: 1,
            knobs: Knobs::default(),
            hold,
            outranked,
            outranks,
        };
        assert_eq!(
            outside_of(&s(false, false, false)),
            None,
            "nobody to yield to or hold"
        );
        assert_eq!(
            outside_of(&s(true, false, true)),
            Some(Masks {
                present: 1,
                busy: 1
            }),
            "held: a busy peer of priority 0"
        );
        assert_eq!(
            outside_of(&s(false, true, false)),
            Some(Masks {
                present: 1 << MAX_PRIORITY,
                busy: 0
            }),
            "outranks: a peer at the least important priority, never busy"
        );
        assert_eq!(
            outside_of(&s(true, true, false)),
            Some(Masks {
                present: 1 | 1 << MAX_PRIORITY,
                busy: 0
            })
        );
        assert_eq!(
            outside_of(&s(false, true, true)).map(|m| m.busy),
            Some(0),
            "a hold without outranked (a share scheduler's) holds no GPU gate"
        );
    }
    use gvm_agent_proto::v2::Knobs;
    use gvm_shim_abi::config::Knobs as ShimKnobs;

    #[test]
    fn a_snapshot_reaches_every_knob_of_a_block() {
        let map = ControlMap::local(&ShimKnobs::default());
        let s = Snapshot {
            generation: 1,
            knobs: Knobs {
                memory_limit: Some(64 << 20),
                priority: Some(2),
                frozen: true,
                host_swap: true,
                ..Knobs::default()
            },
            hold: true,
            outranked: false,
            outranks: false,
        };
        apply_to(&map, &s);
        let b = map.block();
        assert_eq!(b.memory_limit.load(Ordering::Relaxed), 64 << 20);
        assert_eq!(b.priority.load(Ordering::Relaxed), 2);
        assert_eq!(b.frozen.load(Ordering::Relaxed), 1);
        assert_eq!(b.hold.load(Ordering::Relaxed), 1);
        assert_eq!(b.host_swap.load(Ordering::Relaxed), 1);
        let none = Snapshot {
            generation: 2,
            knobs: Knobs::default(),
            hold: false,
            outranked: false,
            outranks: false,
        };
        apply_to(&map, &none);
        assert_eq!(b.memory_limit.load(Ordering::Relaxed), UNLIMITED);
        assert_eq!(b.priority.load(Ordering::Relaxed), DEFAULT_PRIORITY);
        assert_eq!(b.frozen.load(Ordering::Relaxed), 0);
        assert_eq!(b.hold.load(Ordering::Relaxed), 0);
        assert_eq!(b.host_swap.load(Ordering::Relaxed), 0);
    }
}
