//! Arbitration of the VMs behind the guest-agent channels: which VMs are held because a more
//! important VM (or host process) on their GPU is busy, decided over the whole table
//! ([`GuestTable::rearbitrate`]), on a VM's busy line ([`GuestTable::on_busy`]) and
//! periodically ([`GuestTable::tick`]). The decisions themselves are pure
//! ([`crate::vm_arbiter`]); this module gathers the channels' state for them and carries the
//! holds out as new snapshot generations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{lock_entry, next_generation, ChannelEntry, ChannelState, GuestTable};
use crate::vm_arbiter::{holders, holds, outranked, outranks, Vm};
use gvm_shim_host::relay::Masks;

/// When the VMs were last arbitrated, what the host relay's busy state was then, and whether
/// anybody held anybody: while nobody does and the host's state stands, a periodic
/// arbitration has nothing to change (caps and windows only matter while someone holds).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LastArbitration {
    at: Option<Instant>,
    host_epoch: u64,
    active: bool,
}

/// How often the VMs are arbitrated again when nothing says they need it (a safety net).
pub const IDLE_REARBITRATE_PERIOD: Duration = Duration::from_millis(500);

impl GuestTable {
    /// Decide again which VMs are held ([`crate::vm_arbiter`]): a connected protocol-2 VM
    /// is held while another on the same GPU of strictly higher priority claims busy (and is not frozen, and
    /// its cap allows the claim), or, with a host relay, while a host process of strictly
    /// higher priority on its GPU is busy; and the VM's own priority and busy claim are given
    /// to the host relay, so host processes of lower priority yield to it. Channels whose hold
    /// changed get a new generation.
    pub fn rearbitrate(&self, now: Instant) {
        // Keyed by position in `entries`: comparing socket paths was most of the cost.
        let entries: Vec<(PathBuf, ChannelEntry)> =
            self.with(|m| m.iter().map(|(p, e)| (p.clone(), Arc::clone(e))).collect());
        let mut vms = BTreeMap::new();
        // VMs contend per GPU: grouped by their vGPU's GPU (its parent's PCI address; VMs of
        // a GPU not known form one group).
        let mut groups: BTreeMap<Option<String>, BTreeMap<usize, Vm>> = BTreeMap::new();
        // VMs whose busy claim the cap ignores now: with nobody less important it holds
        // nobody anyway; otherwise it is a cap hit (counted once per window).
        let mut capped = BTreeSet::new();
        for (i, (_, e)) in entries.iter().enumerate() {
            let mut c = lock_entry(e);
            let Some((vm, over_cap)) = arbitrated(&mut c, now) else {
                continue;
            };
            if over_cap {
                capped.insert(i);
            }
            vms.insert(i, vm);
            let gpu = c.control.placed.as_ref().map(|(_, pci)| pci.clone());
            groups.entry(gpu).or_default().insert(i, vm);
        }
        let (mut held, mut holding, mut under, mut over) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        // The least important priority on each VM's GPU: a claim holds someone only below it.
        let mut gpu_lowest = BTreeMap::new();
        for members in groups.values() {
            held.extend(holds(members));
            holding.extend(holders(members));
            under.extend(outranked(members));
            over.extend(outranks(members));
            let low = members
                .values()
                .map(|v| v.priority)
                .max()
                .unwrap_or(u32::MAX);
            gpu_lowest.extend(members.keys().map(|i| (*i, low)));
        }
        // Across every GPU, for `on_busy`: a VM at it holds nobody anywhere.
        let lowest = vms.values().map(|v| v.priority).max().unwrap_or(u32::MAX);
        self.lowest_priority
            .store(lowest, std::sync::atomic::Ordering::Relaxed);
        let relay = self.host_relay.get();
        let host_epoch = relay.map_or(0, |r| r.host_epoch());
        let mut active = held.values().chain(holding.values()).any(|h| *h);
        if let Some(relay) = relay {
            // A VM that left (disconnected, or a v1 agent now) no longer counts on its GPU.
            for (i, (_, e)) in entries.iter().enumerate() {
                if vms.contains_key(&i) {
                    continue;
                }
                if let Some((vgpu, pci)) = lock_entry(e).control.placed.clone() {
                    relay.set_vm(&pci, vgpu, None);
                }
            }
        }
        for (i, (path, e)) in entries.iter().enumerate() {
            let Some(h) = held.get(&i) else { continue };
            let (placed, vm) = {
                let c = lock_entry(e);
                (c.control.placed.clone(), vms.get(&i).copied())
            };
            // Host processes on the VM's GPU: they hold it, and it holds them, in one order.
            let mut h = *h;
            let mut o = under.get(&i).copied().unwrap_or(false);
            let mut a = over.get(&i).copied().unwrap_or(false);
            if let (Some(relay), Some((vgpu, pci)), Some(vm)) = (relay, &placed, vm) {
                let masks = relay_masks(vm);
                relay.set_vm(pci, *vgpu, Some(masks));
                let below = masks.present.wrapping_sub(1);
                let host = relay.host_masks(pci);
                h |= host.busy & below != 0;
                o |= host.present & below != 0;
                // Host processes less important than the VM: its claims hold them.
                a |= host.present & !(below | masks.present) != 0;
            }
            let mut c = lock_entry(e);
            // The scheduler's throttle holds the VM whatever the priorities say, and may
            // come whenever a scheduler meters it.
            h |= c.control.sched.is_some_and(|s| s.throttled);
            o |= h || c.control.sched.is_some();
            active |= h;
            let h = &h;
            let would_hold =
                vm.is_some_and(|v| gpu_lowest.get(&i).is_some_and(|l| v.priority < *l));
            let reached = c
                .control
                .cap
                .holding(now, holding.get(&i).copied().unwrap_or(false))
                || (capped.contains(&i) && would_hold && c.control.cap.capped(now));
            if reached {
                warn!(socket = %path.display(), who = ?c.attribution,
                      max_ms = c.control.cap.max.as_millis() as u64,
                      window_ms = c.control.cap.window.as_millis() as u64,
                      "a VM's busy claims reached the cap on holding other VMs; ignored for the rest of the window");
                c.last_problem = Some(format!(
                    "busy claims held other VMs for {} ms of a {} ms window (the cap): ignored until the window ends",
                    c.control.cap.max.as_millis(),
                    c.control.cap.window.as_millis()
                ));
            }
            let control = &mut c.control;
            if let Some(d) = control.desired.as_mut() {
                if d.hold != *h || d.outranked != o || d.outranks != a {
                    if d.hold != *h {
                        control.hold_changed_at = Some(now);
                    }
                    d.hold = *h;
                    d.outranked = o;
                    d.outranks = a;
                    control.generation = next_generation(control.generation);
                    control.wake.notify_one();
                }
            }
        }
        *self
            .last_arbitration
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = LastArbitration {
            at: Some(now),
            host_epoch,
            active,
        };
    }

    /// The periodic arbitration: [`GuestTable::rearbitrate`] when someone holds someone
    /// (caps and windows), when the host's busy state changed, or when
    /// [`IDLE_REARBITRATE_PERIOD`] passed; otherwise nothing would change.
    pub fn tick(&self, now: Instant) {
        let last = *self
            .last_arbitration
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let epoch = self.host_relay.get().map_or(0, |r| r.host_epoch());
        let due = last.active
            || epoch != last.host_epoch
            || last
                .at
                .is_none_or(|t| now.saturating_duration_since(t) >= IDLE_REARBITRATE_PERIOD);
        if due {
            self.rearbitrate(now);
        }
    }

    /// `entry`'s VM sent a busy/idle transition. When the VM is more important than another
    /// (its claim may hold someone), every VM's hold is decided again; otherwise only the
    /// host relay hears of it, so host processes of lower priority on its GPU follow it. (A
    /// hundred VMs toggling busy twenty times a second would otherwise each time lock every
    /// channel.) A change of who is arbitrated (a knob, a hello, a disconnect) goes through
    /// [`GuestTable::rearbitrate`], which keeps the lowest priority current.
    pub fn on_busy(&self, entry: &Mutex<ChannelState>, now: Instant) {
        let lowest = self
            .lowest_priority
            .load(std::sync::atomic::Ordering::Relaxed);
        let (vm, placed) = {
            let mut c = lock_entry(entry);
            let Some((vm, _)) = arbitrated(&mut c, now) else {
                return;
            };
            (vm, c.control.placed.clone())
        };
        if vm.priority < lowest {
            return self.rearbitrate(now);
        }
        if let (Some(relay), Some((vgpu, pci))) = (self.host_relay.get(), placed) {
            relay.set_vm(&pci, vgpu, Some(relay_masks(vm)));
        }
    }
}

/// The channel's VM as the arbitration sees it at `now` (a connected protocol-2 VM with a
/// state to be in; `None` otherwise), and whether its busy claim is ignored for the cap.
fn arbitrated(c: &mut ChannelState, now: Instant) -> Option<(Vm, bool)> {
    let d = c.control.desired?;
    if !c.connected || c.control.protocol < 2 {
        return None;
    }
    let claims = c.control.busy == Some(true) && !d.knobs.frozen;
    let busy = claims && c.control.cap.allows(now);
    let priority = d.knobs.priority.unwrap_or(8);
    Some((Vm { priority, busy }, claims && !busy))
}

/// `vm` as the host relay counts it: present at its priority, busy while its claim counts.
fn relay_masks(vm: Vm) -> Masks {
    let bit = 1u32.checked_shl(vm.priority).unwrap_or(0);
    Masks {
        busy: if vm.busy { bit } else { 0 },
        present: bit,
    }
}
