//! What the GPU time-slice scheduler exchanges with the protocol-2 VMs: each VM's counters as
//! it charges them ([`GuestUsage`], [`GuestTable::usage`]) and its share of the GPU back
//! ([`SchedShare`], [`GuestTable::set_sched`]), which overlays the VM's knobs and whose
//! throttle is the VM's hold.

use std::collections::BTreeMap;
use std::time::Instant;

use gvm_agent_proto::v2;
use tracing::debug;
use uuid::Uuid;

use super::{lock_entry, next_generation, ChannelEntry, GuestTable};

/// What the GPU time-slice scheduler wants of a protocol-2 VM on a GPU under equal-share or
/// fixed-share ([`crate::scheduler`]): the engine's priority (one for every vGPU on the GPU,
/// so no VM holds another by priority), whether the engine throttles the VM now (a hold, not
/// a freeze: nothing waits for in-flight kernels), and the budget's window, which makes the
/// guest send its counters ten times per window so the budget is charged as it is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedShare {
    /// The engine's priority.
    pub priority: u8,
    /// The engine throttles the VM.
    pub throttled: bool,
    /// The budget's window, ms.
    pub window_ms: u32,
    /// Under fixed-share, the VM's GPU time per window, µs.
    pub budget_us: Option<u64>,
}

impl SchedShare {
    /// `base` as this share changes it.
    pub(super) fn overlay(self, base: v2::Knobs) -> v2::Knobs {
        v2::Knobs {
            priority: Some(u32::from(self.priority)),
            share_budget_us: self.budget_us,
            window_ms: Some(self.window_ms),
            ..base
        }
    }
}

/// One protocol-2 VM's counters as the scheduler charges them: summed over its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestUsage {
    /// The vGPU.
    pub vgpu: Uuid,
    /// The PCI address of its GPU.
    pub pci: String,
    /// Kernels submitted and not yet ended.
    pub pending: u64,
    /// GPU busy time, µs (the guest's `gpu_busy_us`, summed).
    pub busy_us: u64,
}

impl GuestTable {
    /// Give each VM the scheduler's share (`shares`, by vGPU; a VM not in it has none: its
    /// GPU is under best-effort). A VM whose state changes gets a new generation; holds are
    /// decided again.
    pub fn set_sched(&self, shares: &BTreeMap<Uuid, SchedShare>) {
        let entries: Vec<ChannelEntry> = self.with(|m| m.values().cloned().collect());
        let mut changed = false;
        for e in entries {
            let mut c = lock_entry(&e);
            let Some((vgpu, _)) = c.control.placed.clone() else {
                continue;
            };
            let share = shares.get(&vgpu).copied();
            if c.control.sched == share {
                continue;
            }
            if c.control.sched.map(|s| s.throttled) != share.map(|s| s.throttled) {
                debug!(%vgpu, throttled = share.is_some_and(|s| s.throttled), "scheduler throttle of a VM");
            }
            c.control.sched = share;
            changed = true;
            let Some(base) = c.control.base_knobs else {
                continue;
            };
            let knobs = share.map_or(base, |s| s.overlay(base));
            if let Some(d) = c.control.desired.as_mut() {
                if d.knobs != knobs {
                    d.knobs = knobs;
                    c.control.generation = next_generation(c.control.generation);
                    c.control.wake.notify_one();
                }
            }
        }
        if changed {
            self.rearbitrate(Instant::now());
        }
    }

    /// What each connected protocol-2 VM's last counters say, for the scheduler.
    pub fn usage(&self) -> Vec<GuestUsage> {
        let entries: Vec<ChannelEntry> = self.with(|m| m.values().cloned().collect());
        entries
            .iter()
            .filter_map(|e| {
                let c = lock_entry(e);
                if !c.connected || c.control.protocol < 2 {
                    return None;
                }
                let (vgpu, pci) = c.control.placed.clone()?;
                let (counters, _) = c.control.processes.as_ref()?;
                let (pending, busy_us) =
                    counters.processes.iter().fold((0u64, 0u64), |(p, b), x| {
                        (
                            p.saturating_add(u64::from(x.pending)),
                            b.saturating_add(x.gpu_busy_us),
                        )
                    });
                Some(GuestUsage {
                    vgpu,
                    pci,
                    pending,
                    busy_us,
                })
            })
            .collect()
    }
}
