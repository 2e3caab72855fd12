//! The cross-domain arbitration relay, running: the manager makes one arbitration block per
//! (GPU, domain), hands it to the domain's shim processes at registration, watches every
//! block's doorbell and writes into each the priorities busy and registered in the other
//! domains ([`crate::relay`] decides what; this module does the I/O and the threads).
//!
//! * **No memory a user controls.** Each block is a memfd this process made and sealed
//!   against resizing ([`ArbiterMap::create_sealed`]), or one a shim handed back after a
//!   daemon restart, mapped only once its seals and size are checked
//!   ([`ArbiterMap::from_handed_fd`]). Nothing is reached by path, so no user can pre-create,
//!   swap or truncate another domain's block. What a domain writes into its own block stays
//!   untrusted: only slots of pids registered in that domain count, each at the priority the
//!   manager counts it at ([`crate::relay::counted_priority`]).
//! * **No syscall on the launch path.** A shim pays one futex wake per busy *transition*,
//!   and only while its block is armed (its GPU has processes of two or more domains). One
//!   thread per block sleeps on the block's doorbell word ([`WATCH_PERIOD`] at most, to
//!   notice stale heartbeats); a GPU's relay runs at most once per [`MIN_GAP`] however often
//!   a domain rings.
//! * **Bounded.** At most [`MAX_DOMAINS_PER_GPU`] domains per GPU, [`MAX_DOMAINS_PER_UID`]
//!   per uid and GPU, and [`MAX_BLOCKS_PER_DOMAIN`] blocks per domain: past them a process
//!   gets no block and arbitrates only inside its uid (standalone block), which it is told.
//! * **Restarts.** A restarted manager gets each domain's block back from its processes'
//!   re-registration (the first valid one handed back becomes the domain's block), so a
//!   domain is not split between an old and a new block.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use gvm_shim_abi::arbiter::SLOTS;
use gvm_shim_abi::priority::{ArbiterMap, RealEnv};
use gvm_shim_abi::sys as abi_sys;

use crate::registry::ShimRegistry;
use crate::relay::{counted_priority, counts_as_busy, external, DomainKey, Doorbell, Masks};

/// The shortest time between two relay runs of one GPU.
pub const MIN_GAP: Duration = Duration::from_micros(200);
/// The longest a watcher sleeps without a ring (stale heartbeats are noticed this late).
pub const WATCH_PERIOD: Duration = Duration::from_millis(50);
/// The most arbitration domains relayed on one GPU.
pub const MAX_DOMAINS_PER_GPU: usize = 64;
/// The most domains (pid namespaces) one uid may have relayed on one GPU.
pub const MAX_DOMAINS_PER_UID: usize = 4;
/// The most blocks one domain may have on one GPU (its own plus ones handed back).
pub const MAX_BLOCKS_PER_DOMAIN: usize = 4;
/// The most GPUs of one process that get a block (the descriptors one reply can carry).
pub const MAX_GPUS_PER_PROCESS: usize = gvm_shim_abi::register::MAX_HANDED_BACK;

/// Why a process got no relayed block for a GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefusal {
    /// The GPU has [`MAX_DOMAINS_PER_GPU`] domains already.
    #[error("GPU {pci} has {MAX_DOMAINS_PER_GPU} arbitration domains already")]
    GpuFull {
        /// The GPU.
        pci: String,
    },
    /// The uid has [`MAX_DOMAINS_PER_UID`] domains on the GPU already.
    #[error("uid {uid} has {MAX_DOMAINS_PER_UID} arbitration domains on GPU {pci} already")]
    UidFull {
        /// The GPU.
        pci: String,
        /// The uid.
        uid: u32,
    },
    /// The block could not be made.
    #[error("cannot make an arbitration block for GPU {pci}: {message}")]
    Create {
        /// The GPU.
        pci: String,
        /// The error.
        message: String,
    },
}

/// One block being watched.
#[derive(Debug)]
struct Watched {
    map: Arc<ArbiterMap>,
    id: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
}

impl Watched {
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let h = &self.map.block().header;
        h.relay_armed.store(0, Ordering::SeqCst);
        h.ring.fetch_add(1, Ordering::SeqCst);
        abi_sys::futex_wake(&h.ring);
    }
}

/// One domain on one GPU: its blocks (the first is the one handed to newcomers) and its
/// registered processes (the pid each sees for itself → the manager's pid for it).
#[derive(Debug, Default)]
struct Domain {
    blocks: Vec<Watched>,
    members: BTreeMap<u32, u32>,
}

#[derive(Debug)]
struct GpuRelay {
    domains: BTreeMap<DomainKey, Domain>,
    /// VMs on this GPU as the daemon's VM arbitration reports them (their processes are in
    /// their guests: no block here), by vGPU.
    vms: BTreeMap<uuid::Uuid, Masks>,
    /// The priorities busy in the host's domains at the last run (what holds a VM).
    host_busy: u32,
    /// The priorities registered in the host's domains at the last run (what may hold a VM).
    host_present: u32,
    doorbell: Doorbell,
}

impl Default for GpuRelay {
    fn default() -> GpuRelay {
        GpuRelay {
            domains: BTreeMap::new(),
            vms: BTreeMap::new(),
            host_busy: 0,
            host_present: 0,
            doorbell: Doorbell::new(u64::try_from(MIN_GAP.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

/// What [`RelayHub::join`] gives a process: per GPU, its domain's block, or why none.
pub type Joined = Vec<(String, Result<Arc<ArbiterMap>, RelayRefusal>)>;

/// What [`RelayHub::join_registration`] gives a registered process to send in its reply.
#[derive(Debug, Default)]
pub struct Handover {
    /// The GPUs whose blocks go with the reply, in the order of `blocks`.
    pub gpus: Vec<String>,
    /// The blocks to attach.
    pub blocks: Vec<Arc<ArbiterMap>>,
    /// Why some GPU got no block (the last refusal), for the reply and the log.
    pub note: Option<String>,
}

/// The relay of one manager: every relayed GPU's domains and blocks.
#[derive(Debug)]
pub struct RelayHub {
    gpus: Mutex<BTreeMap<String, GpuRelay>>,
    registry: Arc<ShimRegistry>,
    me: Weak<RelayHub>,
    /// Bumped whenever the busy priorities of some GPU's host domains change
    /// ([`RelayHub::host_epoch`]).
    host_epoch: std::sync::atomic::AtomicU64,
    /// What lies outside this manager and outranks its domains on every GPU
    /// ([`RelayHub::set_outside`]): `present | busy << 32`, 0 for nothing.
    outside: std::sync::atomic::AtomicU64,
}

impl RelayHub {
    /// A relay counting registered processes of `registry`.
    pub fn new(registry: Arc<ShimRegistry>) -> Arc<RelayHub> {
        Arc::new_cyclic(|me| RelayHub {
            gpus: Mutex::new(BTreeMap::new()),
            registry,
            me: me.clone(),
            host_epoch: std::sync::atomic::AtomicU64::new(0),
            outside: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A counter that changes whenever [`RelayHub::host_masks`] of any GPU does: a caller
    /// that polls the host's busy state (the VM arbitration) skips its work while it stands.
    pub fn host_epoch(&self) -> u64 {
        self.host_epoch.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, GpuRelay>> {
        self.gpus.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Process `host_pid` (seeing itself as `ns_pid`) of `domain` registered, using the GPUs
    /// `gpus` (normalised PCI bus ids; the first [`MAX_GPUS_PER_PROCESS`] are relayed), and
    /// handed back `handed` (the blocks, by GPU, it joined under an earlier manager). Returns
    /// its domain's block per GPU. A handed-back block that fails the checks is ignored, and
    /// so is one for a GPU not in `gpus` or a second one for the same GPU.
    pub fn join(
        &self,
        host_pid: u32,
        ns_pid: u32,
        domain: DomainKey,
        gpus: &[String],
        handed: Vec<(String, OwnedFd)>,
    ) -> Joined {
        let mut handed: Vec<(String, ArbiterMap)> = handed
            .into_iter()
            .take(MAX_GPUS_PER_PROCESS)
            .filter_map(|(pci, fd)| match ArbiterMap::from_handed_fd(fd) {
                Ok(m) => Some((pci, m)),
                Err(e) => {
                    tracing::info!(
                        pid = host_pid,
                        gpu = %pci,
                        "ignoring the arbitration block handed back: {e}"
                    );
                    None
                }
            })
            .collect();
        let mut out = Vec::new();
        let mut started = Vec::new();
        {
            let mut all = self.lock();
            for pci in gpus.iter().take(MAX_GPUS_PER_PROCESS) {
                let back = handed
                    .iter()
                    .position(|(p, _)| p == pci)
                    .map(|i| handed.swap_remove(i).1);
                let gpu = all.entry(pci.clone()).or_default();
                let got = Self::join_gpu(gpu, pci, domain, back, &mut started);
                if let Ok(block) = &got {
                    if let Some(d) = gpu.domains.get_mut(&domain) {
                        d.members.insert(ns_pid, host_pid);
                    }
                    out.push((pci.clone(), Ok(Arc::clone(block))));
                } else {
                    out.push((pci.clone(), got));
                }
            }
            for pci in gpus.iter().take(MAX_GPUS_PER_PROCESS) {
                if let Some(gpu) = all.get_mut(pci) {
                    self.run(gpu);
                }
            }
        }
        for (pci, map, stop) in started {
            self.watch(pci, map, stop);
        }
        out
    }

    /// Put the registered process `reg` (the manager's pid `host_pid`, of `domain`) into the
    /// relay, with `back`, the descriptors after its control block's (the blocks it handed
    /// back, in the order `reg.arbiter_back` names them). Returns what its reply carries.
    pub fn join_registration(
        &self,
        host_pid: u32,
        reg: &crate::registry::Registration,
        domain: DomainKey,
        back: Vec<OwnedFd>,
    ) -> Handover {
        let gpus: Vec<String> = reg.gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
        let handed = reg.arbiter_back.iter().cloned().zip(back).collect();
        let mut out = Handover::default();
        for (pci, got) in self.join(host_pid, reg.ns_pid, domain, &gpus, handed) {
            match got {
                Ok(b) if b.fd().is_some() => {
                    out.gpus.push(pci);
                    out.blocks.push(b);
                }
                Ok(_) => {}
                Err(e) => out.note = Some(e.to_string()),
            }
        }
        out
    }

    /// Add `h` to a registration's JSON reply: `"arbiters"` (the GPUs whose blocks come with
    /// it, in the order of the descriptors) and `"arbiter_note"` (why a GPU got none).
    pub fn reply_with(h: &Handover, reply: &mut serde_json::Value) {
        if let Some(o) = reply.as_object_mut() {
            if let Some(n) = &h.note {
                o.insert("arbiter_note".into(), serde_json::Value::String(n.clone()));
            }
            o.insert(
                "arbiters".into(),
                serde_json::Value::String(h.gpus.join(",")),
            );
        }
    }

    fn join_gpu(
        gpu: &mut GpuRelay,
        pci: &str,
        domain: DomainKey,
        back: Option<ArbiterMap>,
        started: &mut Vec<(String, Arc<ArbiterMap>, Arc<AtomicBool>)>,
    ) -> Result<Arc<ArbiterMap>, RelayRefusal> {
        if !gpu.domains.contains_key(&domain) {
            if gpu.domains.len() >= MAX_DOMAINS_PER_GPU {
                return Err(RelayRefusal::GpuFull { pci: pci.into() });
            }
            if let DomainKey::Host { uid, .. } = domain {
                let of_uid = gpu
                    .domains
                    .keys()
                    .filter(|k| matches!(k, DomainKey::Host { uid: u, .. } if *u == uid))
                    .count();
                if of_uid >= MAX_DOMAINS_PER_UID {
                    return Err(RelayRefusal::UidFull {
                        pci: pci.into(),
                        uid,
                    });
                }
            }
        }
        let d = gpu.domains.entry(domain).or_default();
        let mut add = |map: ArbiterMap, d: &mut Domain| {
            let watched = Watched {
                id: map.file_id(),
                map: Arc::new(map),
                stop: Arc::new(AtomicBool::new(false)),
            };
            started.push((
                pci.to_string(),
                Arc::clone(&watched.map),
                Arc::clone(&watched.stop),
            ));
            d.blocks.push(watched);
        };
        if let Some(map) = back {
            let id = map.file_id();
            let known = id.is_some() && d.blocks.iter().any(|w| w.id == id);
            if !known && d.blocks.len() < MAX_BLOCKS_PER_DOMAIN {
                add(map, d);
            }
        }
        if d.blocks.is_empty() {
            match ArbiterMap::create_sealed() {
                Ok(map) => add(map, d),
                Err(e) => {
                    if d.members.is_empty() {
                        gpu.domains.remove(&domain);
                    }
                    return Err(RelayRefusal::Create {
                        pci: pci.into(),
                        message: e.to_string(),
                    });
                }
            }
        }
        d.blocks
            .first()
            .map(|w| Arc::clone(&w.map))
            .ok_or_else(|| RelayRefusal::Create {
                pci: pci.into(),
                message: "no block".into(),
            })
    }

    /// Process `host_pid` is gone (its registration connection closed): it no longer counts,
    /// and a domain left without processes has its blocks' watchers stopped.
    pub fn leave(&self, host_pid: u32) {
        let mut all = self.lock();
        for gpu in all.values_mut() {
            let mut changed = false;
            gpu.domains.retain(|_, d| {
                let before = d.members.len();
                d.members.retain(|_, h| *h != host_pid);
                changed |= d.members.len() != before;
                if d.members.is_empty() {
                    d.blocks.iter().for_each(Watched::halt);
                    return false;
                }
                true
            });
            if changed {
                self.run(gpu);
            }
        }
        all.retain(|_, g| !g.domains.is_empty() || !g.vms.is_empty());
    }

    /// Something outside this manager — in a guest: the host, whose VMs and processes may
    /// hold this VM — is registered at, and busy at, the priorities of `masks` on every GPU
    /// (`None`: nothing). Every domain's processes then yield to it as to another domain, on
    /// the CPU and, with the GPU-side gate, on the GPU: a guest agent presents the host's
    /// hold this way while its VM is outranked, so that a hold also stops what the guest's
    /// processes already queued. Runs every GPU's relay when that changes anything.
    pub fn set_outside(&self, masks: Option<Masks>) {
        let packed = masks.map_or(0, |m| u64::from(m.present) | (u64::from(m.busy) << 32));
        if self.outside.swap(packed, Ordering::AcqRel) == packed {
            return;
        }
        let mut all = self.lock();
        for gpu in all.values_mut() {
            self.run(gpu);
        }
    }

    fn outside(&self) -> Option<Masks> {
        let packed = self.outside.load(Ordering::Acquire);
        (packed != 0).then_some(Masks {
            present: (packed & u64::from(u32::MAX)) as u32,
            busy: (packed >> 32) as u32,
        })
    }

    /// The VM of vGPU `vm` on the GPU at `pci` is registered at, and claims busy at, the
    /// priorities of `masks` (`None`: it is gone). Host processes on that GPU then yield to it
    /// as to another domain. Runs the GPU's relay when that changes anything.
    pub fn set_vm(&self, pci: &str, vm: uuid::Uuid, masks: Option<Masks>) {
        // Called for every VM at every arbitration: the common case (the GPU known, the
        // masks unchanged) allocates nothing and walks no other GPU.
        let mut all = self.lock();
        let changed = match masks {
            Some(m) => match all.get_mut(pci) {
                Some(gpu) => gpu.vms.insert(vm, m) != Some(m),
                None => {
                    all.entry(pci.to_string()).or_default().vms.insert(vm, m);
                    true
                }
            },
            None => all
                .get_mut(pci)
                .is_some_and(|g| g.vms.remove(&vm).is_some()),
        };
        if changed {
            if let Some(gpu) = all.get_mut(pci) {
                self.run(gpu);
            }
            if masks.is_none() {
                all.retain(|_, g| !g.domains.is_empty() || !g.vms.is_empty());
            }
        }
    }

    /// Whether a process of this manager's own domains is busy on any GPU (at the last
    /// relay run of each).
    pub fn busy_anywhere(&self) -> bool {
        self.lock().values().any(|g| g.host_busy != 0)
    }

    /// The priorities busy and registered in the host's own domains on the GPU at `pci`, in
    /// one look (a VM is held by a more important busy one, may be held by a more important
    /// registered one, and holds the less important ones).
    pub fn host_masks(&self, pci: &str) -> Masks {
        self.lock().get(pci).map_or(Masks::default(), |g| Masks {
            busy: g.host_busy,
            present: g.host_present,
        })
    }

    /// The domains relayed on the GPU at `pci` now, with their member counts (for `show`
    /// and tests).
    pub fn domains_of(&self, pci: &str) -> Vec<(DomainKey, usize)> {
        self.lock()
            .get(pci)
            .map(|g| {
                g.domains
                    .iter()
                    .map(|(k, d)| (*k, d.members.len()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A ring from one of `pci`'s blocks: run its relay now, or once [`MIN_GAP`] after the
    /// last run.
    fn ring(&self, pci: &str) {
        let wait = {
            let mut all = self.lock();
            let Some(gpu) = all.get_mut(pci) else { return };
            if gpu.doorbell.ring(abi_sys::monotonic_ns()) {
                self.run(gpu);
                return;
            }
            gpu.doorbell.due_at()
        };
        let Some(due) = wait else { return };
        let now = abi_sys::monotonic_ns();
        std::thread::sleep(Duration::from_nanos(due.saturating_sub(now)));
        let mut all = self.lock();
        if let Some(gpu) = all.get_mut(pci) {
            if gpu.doorbell.poll(abi_sys::monotonic_ns()) {
                self.run(gpu);
            }
        }
    }

    /// Read every domain's blocks of `gpu` and write the other domains' masks into each.
    fn run(&self, gpu: &mut GpuRelay) {
        let now = abi_sys::monotonic_ns();
        let counted = |host_pid: u32| {
            self.registry.get(host_pid).map(|r| {
                let declared = r.block.block().priority.load(Ordering::Relaxed);
                counted_priority(r.assigned_priority, declared)
            })
        };
        let bit = |p: u32| 1u32.checked_shl(p).unwrap_or(0);
        let mut masks = BTreeMap::new();
        for (key, d) in &gpu.domains {
            let mut m = Masks::default();
            let mut counted_at = BTreeMap::new();
            for (ns_pid, host_pid) in &d.members {
                if let Some(p) = counted(*host_pid) {
                    m.present |= bit(p);
                    counted_at.insert(*ns_pid, p);
                }
            }
            let mut seen = BTreeSet::new();
            for w in &d.blocks {
                let b = w.map.block();
                for s in b.slots.iter().take(SLOTS) {
                    let pid = s.pid.load(Ordering::Acquire);
                    let busy = s.busy.load(Ordering::Acquire);
                    let hb = s.heartbeat_ns.load(Ordering::Acquire);
                    if !counts_as_busy(busy, hb, now) || !seen.insert(pid) {
                        continue;
                    }
                    if let Some(p) = counted_at.get(&pid) {
                        m.busy |= bit(*p);
                    }
                }
            }
            masks.insert(*key, m);
        }
        let host_busy = masks.values().fold(0, |b, m| b | m.busy);
        let host_present = masks.values().fold(0, |b, m| b | m.present);
        if host_busy != gpu.host_busy || host_present != gpu.host_present {
            gpu.host_busy = host_busy;
            gpu.host_present = host_present;
            self.host_epoch.fetch_add(1, Ordering::AcqRel);
        }
        for (vm, m) in &gpu.vms {
            masks.insert(DomainKey::Vm(*vm), *m);
        }
        let outside = self.outside();
        if let Some(m) = outside {
            masks.insert(DomainKey::Outside, m);
        }
        let parties = gpu.domains.len() + gpu.vms.len() + usize::from(outside.is_some());
        let armed = u32::from(parties >= 2);
        for (key, ext) in external(&masks) {
            if let Some(d) = gpu.domains.get(&key) {
                for w in &d.blocks {
                    let b = w.map.block();
                    b.header.relay_armed.store(armed, Ordering::SeqCst);
                    b.set_external(ext.busy, ext.present, &RealEnv);
                }
            }
        }
    }

    /// Start the watcher thread of one block of `pci`.
    fn watch(&self, pci: String, map: Arc<ArbiterMap>, stop: Arc<AtomicBool>) {
        let hub = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("gvm-relay".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let word = &map.block().header.ring;
                let seen = word.load(Ordering::SeqCst);
                match hub.upgrade() {
                    Some(h) => h.ring(&pci),
                    None => break,
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                abi_sys::futex_wait(word, seen, WATCH_PERIOD);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start an arbitration relay thread: {e}; the GPU's domains are relayed only when processes come and go");
        }
    }
}

#[cfg(test)]
#[path = "relay_hub_tests.rs"]
mod tests;
