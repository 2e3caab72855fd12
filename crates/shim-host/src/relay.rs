//! The daemon's cross-domain arbitration relay, as pure decisions (no I/O, no clock).
//!
//! An arbitration block is shared only inside one *arbitration domain* ([`DomainKey`]: one
//! uid now, one VM later), so no domain can write what another's processes read. Processes
//! of different domains on one GPU are arbitrated through the daemon: it maps every domain's
//! block, takes each domain's busy slots, counts each at the priority of the daemon's own
//! record of that pid's registration (a slot's self-reported priority is ignored, and a slot
//! of a pid that did not register counts not at all), and writes into each domain's header
//! the priorities busy in *other* domains ([`external`]), which the shim's
//! `higher_busy` ORs with its local counts. A domain can then lie only to itself.
//!
//! It also writes the priorities merely *registered* in other domains ([`Masks::present`]),
//! so a process alone in its own block still learns that it has a less important peer on
//! the GPU (and must publish busy) or a more important one (and must yield).
//!
//! The relay is woken by a doorbell that busy transitions ring; [`Doorbell`] coalesces
//! rings and bounds how often the relay runs, so a process ringing in a loop cannot make the
//! daemon spin. This module is the decision logic; [`crate::relay_hub`] makes the blocks,
//! hands them over and runs it.

use std::collections::BTreeMap;

use gvm_shim_abi::arbiter::STALE_AFTER;
use gvm_shim_abi::config::MAX_PRIORITY;
use uuid::Uuid;

/// An arbitration domain: the processes that share one arbitration block per GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainKey {
    /// The processes of one uid in one pid namespace on the host (a slot names its process
    /// by the pid it sees, so two pid namespaces never share a block).
    Host {
        /// The processes' uid (from the socket's peer credentials).
        uid: u32,
        /// Their pid namespace's inode (`/proc/<pid>/ns/pid`).
        pid_ns: u64,
    },
    /// The processes of one VM (a later step; the guest's blocks relayed by the host).
    Vm(Uuid),
    /// What lies outside this manager (in a guest: the host), with no block here
    /// (`RelayHub::set_outside`).
    Outside,
}

/// The priority a process that owns no vGPU counts at, at best, in *other* domains: its
/// self-declared priority (`GVM_PRIORITY`) can make it less important there, never more.
/// GVM's default priority.
pub const UNOWNED_FLOOR: u32 = 8;

/// The priority the relay counts a registered process at in other domains: the one the
/// daemon assigned it (as a vGPU owner), else its self-declared one but no more important
/// than [`UNOWNED_FLOOR`].
pub fn counted_priority(assigned: Option<u32>, declared: u32) -> u32 {
    assigned
        .unwrap_or_else(|| declared.clamp(UNOWNED_FLOOR, MAX_PRIORITY))
        .min(MAX_PRIORITY)
}

/// Whether a slot's busy flag counts at `now_ns`: set, with a heartbeat no older than
/// [`STALE_AFTER`] (a stopped or hung process stops holding anyone, as in its own block).
pub fn counts_as_busy(busy: u32, heartbeat_ns: u64, now_ns: u64) -> bool {
    let stale = u64::try_from(STALE_AFTER.as_nanos()).unwrap_or(u64::MAX);
    busy != 0 && now_ns.saturating_sub(heartbeat_ns) <= stale
}

/// Priority bitmasks of one domain, or of the domains around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Masks {
    /// Bit p: a process counted at priority p is busy.
    pub busy: u32,
    /// Bit p: a process counted at priority p is registered.
    pub present: u32,
}

/// For every domain, the union of the [`Masks`] of all the *other* domains on the same GPU.
pub fn external(masks: &BTreeMap<DomainKey, Masks>) -> BTreeMap<DomainKey, Masks> {
    masks
        .keys()
        .map(|d| {
            let others =
                masks
                    .iter()
                    .filter(|(k, _)| *k != d)
                    .fold(Masks::default(), |m, (_, v)| Masks {
                        busy: m.busy | v.busy,
                        present: m.present | v.present,
                    });
            (*d, others)
        })
        .collect()
}

/// One busy slot as the relay reads it from a domain's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusySlot {
    /// The slot's pid (as written by the domain: untrusted).
    pub pid: u32,
}

/// The bitmask of priorities busy in `domain`'s slots, each counted at `registered(pid)`,
/// the priority the daemon recorded for that pid in that domain; `None` (not registered, or
/// registered in another domain) drops the slot. Priorities above 31 are ignored.
pub fn domain_busy(
    domain: DomainKey,
    busy: &[BusySlot],
    registered: impl Fn(DomainKey, u32) -> Option<u32>,
) -> u32 {
    busy.iter()
        .filter_map(|s| registered(domain, s.pid))
        .filter(|p| *p < 32)
        .fold(0, |m, p| m | (1 << p))
}

/// Coalesces doorbell rings and bounds the relay's rate: at most one run per `min_gap_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Doorbell {
    min_gap_ns: u64,
    last_run_ns: Option<u64>,
    pending: bool,
}

impl Doorbell {
    /// A doorbell that lets the relay run at most once per `min_gap_ns`.
    pub fn new(min_gap_ns: u64) -> Doorbell {
        Doorbell {
            min_gap_ns,
            last_run_ns: None,
            pending: false,
        }
    }

    /// A ring heard at `now_ns`: whether to run the relay now. A ring too soon after the last
    /// run is remembered (one, however many) and due at [`Doorbell::due_at`].
    pub fn ring(&mut self, now_ns: u64) -> bool {
        self.pending = true;
        self.poll(now_ns)
    }

    /// Whether a remembered ring is due at `now_ns` (then it is consumed).
    pub fn poll(&mut self, now_ns: u64) -> bool {
        if !self.pending {
            return false;
        }
        if let Some(last) = self.last_run_ns {
            if now_ns.saturating_sub(last) < self.min_gap_ns {
                return false;
            }
        }
        self.pending = false;
        self.last_run_ns = Some(now_ns);
        true
    }

    /// When a remembered ring will be due; `None` when none is pending.
    pub fn due_at(&self) -> Option<u64> {
        self.pending
            .then(|| self.last_run_ns.map_or(0, |l| l + self.min_gap_ns))
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
