//! Priority arbitration between the shim processes that share one physical GPU.
//!
//! GVM gives a higher-priority gcgroup the GPU by preempting lower ones in the driver. Without
//! the driver the shim does the next best thing at the only place it can act — the launch:
//! every shim process using a GPU registers in one shared-memory **arbitration block** per
//! physical GPU and arbitration domain: with gvm-vgpud, a sealed memfd the daemon hands over
//! at registration (one per GPU and uid, relayed across uids by the daemon,
//! `gvm_shim_host::relay_hub`); standalone, `/dev/shm/gvm-vgpu-gpu-<pci bus id>-u<euid>` under
//! the host root (processes with different `CUDA_VISIBLE_DEVICES` meet in the same block;
//! `gvm-vgpu-gpu<ordinal>-u<euid>` only when the driver cannot tell the bus id; or
//! `$GVM_SHIM_ARBITER`), in a [`Slot`]
//! carrying its pid, its priority (0..=16, lower is more important) and a `busy` flag that
//! says "launches of mine may still be running on the GPU". The header keeps, per priority,
//! how many slots are busy, so that the question a launch asks — "is anyone strictly more
//! important than me busy?" — is a handful of atomic loads in one cache line
//! ([`ArbiterBlock::higher_busy`]). If so, the launch waits ([`ArbiterBlock::wait_turn`]):
//! it sleeps on a futex word that every busy→idle transition bumps, re-checks at least every
//! [`WAIT_SLICE`], reaps the slots of dead processes and of busy flags whose heartbeat went
//! stale, and gives up after a maximum hold, so a launch is never held forever.
//!
//! **The GPU-side gate.** Holding a launch on the CPU cannot recall what a process already
//! queued: a more important process that becomes busy waits for that queue to drain. So each
//! slot also carries a word, [`Slot::gpu_hold`], that is 1 exactly while a strictly more
//! important slot is busy; a process able to do so puts a GPU wait on that word ("until it
//! is 0") in front of each of its launches, and its queued work stops at the next such wait
//! when a more important process becomes busy, and goes on by itself when it goes idle.
//! Every busy transition refreshes the words of the slots it concerns
//! ([`ArbiterBlock::refresh_gate`]: store, re-check, store again if the state moved), so
//! the last store always reflects the last transition.
//!
//! Who sets and clears `busy` and how completion is detected is the shim's business
//! (`shim.rs`); this module is only the shared data structure and its rules, free of CUDA.
//! A process learns its place among the others ([`Role`]) by scanning the slots, which it does
//! again only when the block's `generation` changed (registration, exit, priority change).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::MAX_PRIORITY;

/// `"GVMARB01"` little-endian: marks an initialised arbitration block.
pub const ARB_MAGIC: u64 = u64::from_le_bytes(*b"GVMARB01");
/// Layout version of [`ArbiterBlock`].
pub const ARB_VERSION: u32 = 4;
/// Processes per GPU that can take part.
pub const SLOTS: usize = 64;
/// Size the block file is given.
pub const ARB_FILE_LEN: usize = 8192;
/// File name prefix of a GPU's arbitration block keyed by PCI bus id (`gvm-vgpu-gpu-<pci>`).
pub const ARBITER_PCI_PREFIX: &str = "gvm-vgpu-gpu-";
/// File name prefix of the legacy block keyed by CUDA ordinal (`gvm-vgpu-gpu<N>`), used only
/// when the driver cannot give a GPU's PCI bus id.
pub const ARBITER_ORDINAL_PREFIX: &str = "gvm-vgpu-gpu";

/// What separates a standalone block's GPU from its owner uid (`gvm-vgpu-gpu-<pci>-u<uid>`).
pub const ARBITER_UID_INFIX: &str = "-u";

/// The file name of the legacy shared arbitration block of the GPU at `pci` (a normalised
/// bus id): what a daemon's scan still recognises, never what a shim creates any more.
pub fn arbiter_file_name(pci: &str) -> String {
    format!("{ARBITER_PCI_PREFIX}{pci}")
}

/// The file name of uid `uid`'s standalone arbitration block of the GPU at `pci`.
pub fn arbiter_file_name_of_uid(pci: &str, uid: u32) -> String {
    format!("{ARBITER_PCI_PREFIX}{pci}{ARBITER_UID_INFIX}{uid}")
}

/// A file name without its `-u<uid>` suffix (unchanged when it has none).
fn without_uid(name: &str) -> &str {
    match name.rsplit_once(ARBITER_UID_INFIX) {
        Some((stem, uid)) if !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => name,
    }
}

/// Which GPU an arbitration block's file name stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ArbiterKey {
    /// `gvm-vgpu-gpu-<pci>`: a physical GPU (the bus id normalised).
    Pci(String),
    /// `gvm-vgpu-gpu<N>`: a CUDA ordinal (legacy; ambiguous across processes).
    Ordinal(u32),
}

impl ArbiterKey {
    /// Parse an arbitration block file name; `None` for anything else.
    pub fn from_file_name(name: &str) -> Option<ArbiterKey> {
        let name = without_uid(name);
        if let Some(pci) = name.strip_prefix(ARBITER_PCI_PREFIX) {
            return crate::register::normalise_pci_bus_id(pci)
                .filter(|n| n == pci)
                .map(ArbiterKey::Pci);
        }
        let digits = name.strip_prefix(ARBITER_ORDINAL_PREFIX)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(ArbiterKey::Ordinal)
    }
}

/// Environment variable naming the arbitration block path (overrides the per-GPU default).
pub const ARBITER_ENV: &str = "GVM_SHIM_ARBITER";
/// Longest single sleep of a held launch before it re-checks.
pub const WAIT_SLICE: Duration = Duration::from_millis(1);
/// How often a held launch looks for dead or stale slots.
pub const REAP_EVERY: Duration = Duration::from_millis(50);
/// A busy flag whose heartbeat is older than this is cleared by the next reaper (a process
/// stopped with SIGSTOP, a hung helper thread, a pid reused after a crash).
pub const STALE_AFTER: Duration = Duration::from_millis(500);

const PRIOS: usize = MAX_PRIORITY as usize + 1;

/// The header: identification, the generation counter, the wake word, busy counts.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ArbiterHeader {
    /// [`ARB_MAGIC`] once initialised (written last).
    pub magic: AtomicU64,
    /// [`ARB_VERSION`].
    pub version: AtomicU32,
    /// Bumped whenever a slot is taken, freed or changes priority.
    pub generation: AtomicU32,
    /// Bumped (and futex-woken) whenever a busy flag clears.
    pub wake: AtomicU32,
    /// Priorities busy in *other* arbitration domains (bit p: someone at priority p), written
    /// only by the daemon's relay (`gvm_shim_host::relay`); [`ArbiterBlock::higher_busy`]
    /// ORs it with the local counts. A domain that overwrites it only holds or frees itself.
    pub external_busy: AtomicU32,
    /// Priorities *registered* in other arbitration domains on this GPU (bit p), written only
    /// by the relay: [`ArbiterBlock::role`] counts them, so a process alone in its block still
    /// publishes `busy` when another domain holds a less important process, and still yields
    /// when another domain holds a more important one. A change bumps `generation`.
    pub external_present: AtomicU32,
    /// Nonzero while a relay watches this block: every busy transition then also bumps
    /// [`ArbiterHeader::ring`] and wakes it (one futex wake per transition, never per launch).
    pub relay_armed: AtomicU32,
    /// The relay's doorbell: bumped (and futex-woken) on busy transitions while armed.
    pub ring: AtomicU32,
    /// Busy slots per priority.
    pub busy_at: [AtomicU32; PRIOS],
}

/// One process's registration.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Slot {
    /// The owner's pid; 0 when free.
    pub pid: AtomicU32,
    /// Its priority, 0..=16.
    pub priority: AtomicU32,
    /// 1 while its launches may still run on the GPU.
    pub busy: AtomicU32,
    /// Its threads held by the arbiter now.
    pub waiting: AtomicU32,
    /// CLOCK_MONOTONIC ns of the last sign of life while busy.
    pub heartbeat_ns: AtomicU64,
    /// Launches it made.
    pub launches: AtomicU64,
    /// Launches of it that the arbiter held.
    pub held: AtomicU64,
    /// Nanoseconds its launches spent held.
    pub held_ns: AtomicU64,
    /// 1 while a strictly more important slot is busy: the word this slot's GPU waits on
    /// (see the module doc). Its own process may clear it to end an over-long hold.
    pub gpu_hold: AtomicU32,
}

/// The whole shared block.
#[repr(C)]
#[derive(Debug)]
pub struct ArbiterBlock {
    /// The header.
    pub header: ArbiterHeader,
    /// The slots.
    pub slots: [Slot; SLOTS],
}

/// Where a process stands among the registered ones on its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Role {
    /// Someone strictly more important is registered: this process must yield to it.
    pub has_higher: bool,
    /// Someone strictly less important is registered: this process must publish `busy`.
    pub has_lower: bool,
}

impl Role {
    /// Neither: arbitration costs nothing.
    pub fn is_alone(self) -> bool {
        !self.has_higher && !self.has_lower
    }
}

/// How a held launch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Nobody more important was busy: no wait.
    Free,
    /// It waited until nobody more important was busy.
    Waited(Duration),
    /// It gave up after the maximum hold.
    TimedOut(Duration),
}

/// What the wait needs from the outside world (real clock, futex, `kill(pid, 0)` in
/// production; fakes in tests).
pub trait Env {
    /// CLOCK_MONOTONIC nanoseconds.
    fn now_ns(&self) -> u64;
    /// Sleep while `*word == expected`, at most `timeout`.
    fn park(&self, word: &AtomicU32, expected: u32, timeout: Duration);
    /// Wake sleepers on `word`.
    fn wake(&self, word: &AtomicU32);
    /// Whether process `pid` exists.
    fn alive(&self, pid: u32) -> bool;
}

fn prio_index(p: u32) -> usize {
    (p.min(MAX_PRIORITY)) as usize
}

impl ArbiterBlock {
    /// An empty, initialised block (tests; production maps a file and calls [`Self::initialise`]).
    pub fn new_boxed() -> Box<ArbiterBlock> {
        let b = Box::new(ArbiterBlock {
            header: ArbiterHeader {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                generation: AtomicU32::new(0),
                wake: AtomicU32::new(0),
                external_busy: AtomicU32::new(0),
                external_present: AtomicU32::new(0),
                relay_armed: AtomicU32::new(0),
                ring: AtomicU32::new(0),
                busy_at: std::array::from_fn(|_| AtomicU32::new(0)),
            },
            slots: std::array::from_fn(|_| Slot {
                pid: AtomicU32::new(0),
                priority: AtomicU32::new(0),
                busy: AtomicU32::new(0),
                waiting: AtomicU32::new(0),
                heartbeat_ns: AtomicU64::new(0),
                launches: AtomicU64::new(0),
                held: AtomicU64::new(0),
                held_ns: AtomicU64::new(0),
                gpu_hold: AtomicU32::new(0),
            }),
        });
        b.initialise();
        b
    }

    /// Initialise a zero-filled block (a freshly created file) and publish the magic.
    pub fn initialise(&self) {
        self.header.version.store(ARB_VERSION, Ordering::Relaxed);
        self.header.magic.store(ARB_MAGIC, Ordering::Release);
    }

    /// Whether the block carries this layout.
    pub fn is_valid(&self) -> bool {
        self.header.magic.load(Ordering::Acquire) == ARB_MAGIC
            && self.header.version.load(Ordering::Relaxed) == ARB_VERSION
    }

    /// The current generation (changes when the set of registrations changes).
    #[inline]
    pub fn generation(&self) -> u32 {
        self.header.generation.load(Ordering::Acquire)
    }

    fn bump_generation(&self) {
        self.header.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Take a free slot for `pid` at `priority`; reaps dead slots once if all are taken.
    /// `None`: no room (the process then runs without arbitration).
    pub fn register(&self, pid: u32, priority: u32, env: &dyn Env) -> Option<usize> {
        for attempt in 0..2 {
            for (i, s) in self.slots.iter().enumerate() {
                if s.pid
                    .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    s.priority
                        .store(priority.min(MAX_PRIORITY), Ordering::Relaxed);
                    s.busy.store(0, Ordering::Relaxed);
                    s.waiting.store(0, Ordering::Relaxed);
                    for c in [&s.launches, &s.held, &s.held_ns] {
                        c.store(0, Ordering::Relaxed);
                    }
                    s.heartbeat_ns.store(env.now_ns(), Ordering::Relaxed);
                    self.refresh_gate(s);
                    self.bump_generation();
                    return Some(i);
                }
            }
            if attempt == 0 && self.reap(env) == 0 {
                break;
            }
        }
        None
    }

    /// Give slot `i` back (process exit).
    pub fn unregister(&self, i: usize, env: &dyn Env) {
        let Some(s) = self.slots.get(i) else { return };
        self.set_busy(i, false, env);
        s.pid.store(0, Ordering::Release);
        self.bump_generation();
    }

    /// Change slot `i`'s priority, moving its busy count along.
    pub fn set_priority(&self, i: usize, priority: u32, env: &dyn Env) {
        let Some(s) = self.slots.get(i) else { return };
        let priority = priority.min(MAX_PRIORITY);
        if s.priority.load(Ordering::Relaxed) == priority {
            return;
        }
        let was_busy = self.set_busy(i, false, env);
        s.priority.store(priority, Ordering::Release);
        if was_busy {
            self.set_busy(i, true, env);
        }
        self.refresh_gate(s);
        self.bump_generation();
    }

    /// Set or clear slot `i`'s busy flag, keeping the per-priority counts exact (only the
    /// caller that flips the flag changes the count). Returns the previous state.
    pub fn set_busy(&self, i: usize, busy: bool, env: &dyn Env) -> bool {
        let Some(s) = self.slots.get(i) else {
            return false;
        };
        if busy {
            s.heartbeat_ns.store(env.now_ns(), Ordering::Release);
        }
        let prev = s.busy.swap(u32::from(busy), Ordering::SeqCst) != 0;
        let priority = s.priority.load(Ordering::Acquire);
        let count = &self.header.busy_at[prio_index(priority)];
        match (prev, busy) {
            (false, true) => {
                count.fetch_add(1, Ordering::SeqCst);
                self.refresh_gates_below(priority);
                self.ring_relay(env);
            }
            (true, false) => {
                let _ = count.fetch_update(Ordering::SeqCst, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
                self.refresh_gates_below(priority);
                self.header.wake.fetch_add(1, Ordering::SeqCst);
                env.wake(&self.header.wake);
                self.ring_relay(env);
            }
            _ => {}
        }
        prev
    }

    /// Tell a watching relay that a busy flag moved (nothing when none watches).
    #[inline]
    fn ring_relay(&self, env: &dyn Env) {
        if self.header.relay_armed.load(Ordering::Relaxed) != 0 {
            self.header.ring.fetch_add(1, Ordering::SeqCst);
            env.wake(&self.header.ring);
        }
    }

    /// The relay's write: the priorities `busy` and `present` (registered) in the *other*
    /// domains on this GPU. Brings every slot's GPU-side gate up to date, wakes held launches
    /// when a busy priority went away, and bumps the generation when `present` changed (so
    /// cached roles are recomputed). Priorities above [`MAX_PRIORITY`] are dropped.
    pub fn set_external(&self, busy: u32, present: u32, env: &dyn Env) {
        let mask = (1u32 << PRIOS) - 1;
        let (busy, present) = (busy & mask, present & mask);
        let old_present = self.header.external_present.swap(present, Ordering::SeqCst);
        let old_busy = self.header.external_busy.swap(busy, Ordering::SeqCst);
        if old_busy != busy {
            for s in &self.slots {
                if s.pid.load(Ordering::Acquire) != 0 {
                    self.refresh_gate(s);
                }
            }
            if old_busy & !busy != 0 {
                self.header.wake.fetch_add(1, Ordering::SeqCst);
                env.wake(&self.header.wake);
            }
        }
        if old_present != present {
            self.bump_generation();
        }
    }

    /// Bring the GPU-side gate of every slot less important than `priority` up to date (a
    /// slot at `priority` busy or idle changed only theirs).
    fn refresh_gates_below(&self, priority: u32) {
        for s in &self.slots {
            if s.pid.load(Ordering::Acquire) != 0 && s.priority.load(Ordering::Acquire) > priority {
                self.refresh_gate(s);
            }
        }
    }

    /// Make `s.gpu_hold` say whether a strictly more important slot is busy. Store, then
    /// re-check: if a transition slipped in between, store again. A transition that comes
    /// after the re-check refreshes the word itself, after this store, so the last store
    /// always matches the last transition.
    pub fn refresh_gate(&self, s: &Slot) {
        let priority = s.priority.load(Ordering::Acquire);
        let mut want = self.higher_busy(priority);
        loop {
            s.gpu_hold.store(u32::from(want), Ordering::SeqCst);
            let now = self.higher_busy(priority);
            if now == want {
                return;
            }
            want = now;
        }
    }

    /// Record a sign of life of busy slot `i`.
    #[inline]
    pub fn heartbeat(&self, i: usize, now_ns: u64) {
        if let Some(s) = self.slots.get(i) {
            s.heartbeat_ns.store(now_ns, Ordering::Release);
        }
    }

    /// Whether a slot strictly more important than `priority` is busy (atomic loads only).
    #[inline]
    pub fn higher_busy(&self, priority: u32) -> bool {
        // Sequentially consistent (a plain load on x86): `refresh_gate` relies on the order.
        let below = (1u32 << prio_index(priority)) - 1;
        if self.header.external_busy.load(Ordering::SeqCst) & below != 0 {
            return true;
        }
        self.header.busy_at[..prio_index(priority)]
            .iter()
            .any(|c| c.load(Ordering::SeqCst) != 0)
    }

    /// Where slot `i` stands among the registered slots.
    pub fn role(&self, i: usize) -> Role {
        let Some(me) = self.slots.get(i) else {
            return Role::default();
        };
        let mine = me.priority.load(Ordering::Acquire);
        let present = self.header.external_present.load(Ordering::Acquire);
        let below = (1u32 << prio_index(mine)) - 1;
        let mut role = Role {
            has_higher: present & below != 0,
            has_lower: present & !below & !(1u32 << prio_index(mine)) != 0,
        };
        for (j, s) in self.slots.iter().enumerate() {
            if j == i || s.pid.load(Ordering::Acquire) == 0 {
                continue;
            }
            let p = s.priority.load(Ordering::Acquire);
            role.has_higher |= p < mine;
            role.has_lower |= p > mine;
        }
        role
    }

    /// Free the slots of processes that no longer exist and clear busy flags whose heartbeat
    /// is older than [`STALE_AFTER`]. Returns how many slots were freed or cleared.
    pub fn reap(&self, env: &dyn Env) -> usize {
        let now = env.now_ns();
        let stale = u64::try_from(STALE_AFTER.as_nanos()).unwrap_or(u64::MAX);
        let mut n = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let pid = s.pid.load(Ordering::Acquire);
            if pid == 0 {
                continue;
            }
            if !env.alive(pid) {
                // Claim the slot for reaping so that only one reaper frees it.
                if s.pid
                    .compare_exchange(pid, u32::MAX, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.set_busy(i, false, env);
                    s.pid.store(0, Ordering::Release);
                    self.bump_generation();
                    n += 1;
                }
                continue;
            }
            let hb = s.heartbeat_ns.load(Ordering::Acquire);
            if s.busy.load(Ordering::Acquire) != 0
                && now.saturating_sub(hb) > stale
                && self.set_busy(i, false, env)
            {
                n += 1;
            }
        }
        n
    }

    /// Hold the calling launch (of slot `i`, at `priority`) while a more important slot is
    /// busy, at most `max_hold`. Never blocks longer than that, whatever the other processes do.
    pub fn wait_turn(
        &self,
        i: usize,
        priority: u32,
        max_hold: Duration,
        env: &dyn Env,
    ) -> WaitOutcome {
        if !self.higher_busy(priority) {
            return WaitOutcome::Free;
        }
        let me = self.slots.get(i);
        if let Some(s) = me {
            s.waiting.fetch_add(1, Ordering::AcqRel);
        }
        let start = env.now_ns();
        let max_ns = u64::try_from(max_hold.as_nanos()).unwrap_or(u64::MAX);
        let reap_ns = u64::try_from(REAP_EVERY.as_nanos()).unwrap_or(u64::MAX);
        let mut last_reap = start;
        let outcome = loop {
            let seen = self.header.wake.load(Ordering::Acquire);
            if !self.higher_busy(priority) {
                break WaitOutcome::Waited(Duration::from_nanos(env.now_ns() - start));
            }
            let now = env.now_ns();
            let waited = now.saturating_sub(start);
            if waited >= max_ns {
                break WaitOutcome::TimedOut(Duration::from_nanos(waited));
            }
            if now.saturating_sub(last_reap) >= reap_ns {
                last_reap = now;
                self.reap(env);
                continue;
            }
            let left = Duration::from_nanos(max_ns - waited);
            env.park(&self.header.wake, seen, WAIT_SLICE.min(left));
        };
        if let Some(s) = me {
            s.waiting.fetch_sub(1, Ordering::AcqRel);
            let d = match outcome {
                WaitOutcome::Waited(d) | WaitOutcome::TimedOut(d) => d,
                WaitOutcome::Free => Duration::ZERO,
            };
            s.held.fetch_add(1, Ordering::Relaxed);
            s.held_ns.fetch_add(
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Called on every park with the park count (to change the world mid-wait).
    type OnPark = Box<dyn Fn(&Fake, u32) + Sync>;

    /// A fake world: a clock that advances on every park, a set of live pids.
    struct Fake {
        now: AtomicU64,
        dead: Mutex<HashSet<u32>>,
        parks: AtomicU32,
        on_park: Option<OnPark>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                now: AtomicU64::new(1_000_000_000),
                dead: Mutex::new(HashSet::new()),
                parks: AtomicU32::new(0),
                on_park: None,
            }
        }
        fn kill(&self, pid: u32) {
            self.dead.lock().map(|mut d| d.insert(pid)).ok();
        }
        fn advance(&self, d: Duration) {
            self.now.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    impl Env for Fake {
        fn now_ns(&self) -> u64 {
            self.now.load(Ordering::Relaxed)
        }
        fn park(&self, _w: &AtomicU32, _e: u32, timeout: Duration) {
            let n = self.parks.fetch_add(1, Ordering::Relaxed) + 1;
            self.advance(timeout);
            if let Some(f) = &self.on_park {
                f(self, n);
            }
        }
        fn wake(&self, _w: &AtomicU32) {}
        fn alive(&self, pid: u32) -> bool {
            !self.dead.lock().map(|d| d.contains(&pid)).unwrap_or(false)
        }
    }

    #[test]
    fn file_names_key_gpus_by_pci_bus_id() {
        let name = arbiter_file_name("0000:3b:00.0");
        assert_eq!(name, "gvm-vgpu-gpu-0000:3b:00.0");
        assert_eq!(
            ArbiterKey::from_file_name(&name),
            Some(ArbiterKey::Pci("0000:3b:00.0".into()))
        );
        assert_eq!(
            ArbiterKey::from_file_name("gvm-vgpu-gpu7"),
            Some(ArbiterKey::Ordinal(7))
        );
        let per_uid = arbiter_file_name_of_uid("0000:3b:00.0", 1000);
        assert_eq!(per_uid, "gvm-vgpu-gpu-0000:3b:00.0-u1000");
        assert_eq!(
            ArbiterKey::from_file_name(&per_uid),
            Some(ArbiterKey::Pci("0000:3b:00.0".into()))
        );
        assert_eq!(
            ArbiterKey::from_file_name("gvm-vgpu-gpu7-u0"),
            Some(ArbiterKey::Ordinal(7))
        );
        for other in [
            "gvm-vgpu-gpu-0000:3B:00.0",
            "gvm-vgpu-gpu-",
            "gvm-vgpu-gpu",
            "gvm-vgpu-gpux",
            "gvm-vgpu-123",
        ] {
            assert_eq!(ArbiterKey::from_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn registration_takes_distinct_slots_and_roles_follow_priorities() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        assert!(b.is_valid());
        let g0 = b.generation();
        let hi = b.register(100, 0, &env).expect("slot");
        let lo = b.register(200, 8, &env).expect("slot");
        let peer = b.register(300, 8, &env).expect("slot");
        assert_ne!(hi, lo);
        assert_ne!(lo, peer);
        assert!(b.generation() != g0, "registration bumps the generation");
        assert_eq!(
            b.role(hi),
            Role {
                has_higher: false,
                has_lower: true
            }
        );
        assert_eq!(
            b.role(lo),
            Role {
                has_higher: true,
                has_lower: false
            }
        );
        b.unregister(hi, &env);
        assert!(b.role(lo).is_alone(), "an equal peer is neither");
        b.set_priority(peer, 3, &env);
        assert!(b.role(lo).has_higher);
    }

    #[test]
    fn only_strictly_higher_busy_slots_hold_a_launch() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let hi = b.register(1, 2, &env).expect("slot");
        let lo = b.register(2, 8, &env).expect("slot");
        assert!(!b.higher_busy(8));
        b.set_busy(lo, true, &env);
        assert!(!b.higher_busy(2), "a less important busy slot holds nobody");
        assert!(!b.higher_busy(8), "nor an equal one");
        b.set_busy(hi, true, &env);
        b.set_busy(hi, true, &env);
        assert_eq!(b.header.busy_at[2].load(Ordering::Relaxed), 1, "idempotent");
        assert!(b.higher_busy(8));
        assert!(!b.higher_busy(2));
        b.set_priority(hi, 5, &env);
        assert_eq!(b.header.busy_at[2].load(Ordering::Relaxed), 0);
        assert_eq!(
            b.header.busy_at[5].load(Ordering::Relaxed),
            1,
            "busy moved along"
        );
        let w = b.header.wake.load(Ordering::Relaxed);
        b.set_busy(hi, false, &env);
        assert!(!b.higher_busy(8));
        assert!(
            b.header.wake.load(Ordering::Relaxed) > w,
            "clearing wakes waiters"
        );
    }

    #[test]
    fn a_held_launch_goes_when_the_higher_slot_goes_idle() {
        let mut env = Fake::new();
        let b: &'static ArbiterBlock = Box::leak(ArbiterBlock::new_boxed());
        let hi = b.register(1, 0, &env).expect("slot");
        let lo = b.register(2, 8, &env).expect("slot");
        b.set_busy(hi, true, &env);
        // The high process finishes after the low one has slept 5 times.
        env.on_park = Some(Box::new(move |e: &Fake, n| {
            if n == 5 {
                b.heartbeat(hi, e.now_ns());
                b.set_busy(hi, false, e);
            }
        }));
        let out = b.wait_turn(lo, 8, Duration::from_secs(1), &env);
        assert_eq!(out, WaitOutcome::Waited(Duration::from_millis(5)));
        assert_eq!(b.slots[lo].held.load(Ordering::Relaxed), 1);
        assert_eq!(b.slots[lo].waiting.load(Ordering::Relaxed), 0);
        assert_eq!(
            b.wait_turn(lo, 8, Duration::from_secs(1), &env),
            WaitOutcome::Free
        );
    }

    #[test]
    fn a_stuck_busy_flag_never_holds_longer_than_the_maximum() {
        let mut env = Fake::new();
        let b: &'static ArbiterBlock = Box::leak(ArbiterBlock::new_boxed());
        let hi = b.register(1, 0, &env).expect("slot");
        let lo = b.register(2, 8, &env).expect("slot");
        b.set_busy(hi, true, &env);
        // A live process that stays busy and keeps its heartbeat fresh: only the maximum
        // hold lets the launch go.
        env.on_park = Some(Box::new(move |e: &Fake, _| b.heartbeat(hi, e.now_ns())));
        match b.wait_turn(lo, 8, Duration::from_millis(200), &env) {
            WaitOutcome::TimedOut(d) => {
                assert!(d >= Duration::from_millis(200) && d < Duration::from_millis(210))
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(b.higher_busy(8), "the flag itself is left to its owner");
    }

    #[test]
    fn dead_and_stale_slots_are_reaped_and_release_their_waiters() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let dead = b.register(10, 0, &env).expect("slot");
        let stopped = b.register(11, 1, &env).expect("slot");
        let lo = b.register(12, 8, &env).expect("slot");
        b.set_busy(dead, true, &env);
        b.set_busy(stopped, true, &env);
        env.kill(10);
        let g = b.generation();
        // The dead one goes at the first reap; the stopped one once its heartbeat is stale.
        let out = b.wait_turn(lo, 8, Duration::from_secs(5), &env);
        match out {
            WaitOutcome::Waited(d) => assert!(
                d > STALE_AFTER && d < STALE_AFTER + REAP_EVERY * 2,
                "released after the heartbeat went stale: {d:?}"
            ),
            other => panic!("expected release by reaping, got {other:?}"),
        }
        assert_eq!(
            b.slots[dead].pid.load(Ordering::Relaxed),
            0,
            "dead slot freed"
        );
        assert_eq!(
            b.slots[stopped].pid.load(Ordering::Relaxed),
            11,
            "live slot kept"
        );
        assert!(b.generation() != g);
        assert!(b
            .header
            .busy_at
            .iter()
            .all(|c| c.load(Ordering::Relaxed) == 0));
    }

    fn gates(b: &ArbiterBlock, slots: &[usize]) -> Vec<u32> {
        slots
            .iter()
            .map(|&i| b.slots[i].gpu_hold.load(Ordering::Relaxed))
            .collect()
    }

    #[test]
    fn the_gpu_gate_of_a_slot_is_closed_exactly_while_someone_more_important_is_busy() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let hi = b.register(1, 0, &env).expect("slot");
        let mid = b.register(2, 4, &env).expect("slot");
        let lo = b.register(3, 8, &env).expect("slot");
        let all = [hi, mid, lo];
        assert_eq!(gates(&b, &all), [0, 0, 0]);
        b.set_busy(hi, true, &env);
        assert_eq!(gates(&b, &all), [0, 1, 1], "the top one holds both others");
        b.set_busy(mid, true, &env);
        b.set_busy(hi, false, &env);
        assert_eq!(
            gates(&b, &all),
            [0, 0, 1],
            "the middle one still holds the low one"
        );
        b.set_busy(lo, true, &env);
        assert_eq!(gates(&b, &all), [0, 0, 1], "a busy low slot holds nobody");
        b.set_priority(lo, 2, &env);
        assert_eq!(
            gates(&b, &all),
            [0, 1, 0],
            "now more important than the busy middle one, and busy itself: it holds that one"
        );
        b.set_priority(lo, 8, &env);
        assert_eq!(gates(&b, &all), [0, 0, 1]);
        let late = b.register(4, 9, &env).expect("slot");
        assert_eq!(
            gates(&b, &[late]),
            [1],
            "a slot taken while others are busy is held at once"
        );
        b.unregister(mid, &env);
        assert_eq!(
            gates(&b, &[hi, lo, late]),
            [0, 0, 1],
            "the low one, busy, still holds the latecomer"
        );
        b.set_busy(lo, false, &env);
        assert_eq!(gates(&b, &[hi, lo, late]), [0, 0, 0]);
    }

    #[test]
    fn reaping_a_dead_busy_slot_opens_the_gates_it_held() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let hi = b.register(10, 0, &env).expect("slot");
        let lo = b.register(11, 8, &env).expect("slot");
        b.set_busy(hi, true, &env);
        assert_eq!(gates(&b, &[lo]), [1]);
        env.kill(10);
        assert_eq!(b.reap(&env), 1);
        assert_eq!(
            gates(&b, &[lo]),
            [0],
            "a GPU waiting on a dead process is let go"
        );
    }

    #[test]
    fn racing_transitions_leave_every_gate_matching_the_final_state() {
        let env = Fake::new();
        let b: &'static ArbiterBlock = Box::leak(ArbiterBlock::new_boxed());
        let togglers: Vec<usize> = (0..4)
            .map(|p| b.register(100 + p, p, &env).expect("slot"))
            .collect();
        let held: Vec<usize> = (0..4)
            .map(|k| b.register(200 + k, 5 + k, &env).expect("slot"))
            .collect();
        for round in 0..20u32 {
            let threads: Vec<_> = togglers
                .iter()
                .enumerate()
                .map(|(t, &i)| {
                    std::thread::spawn(move || {
                        let env = Fake::new();
                        for n in 0..2_000u32 {
                            b.set_busy(i, (n + t as u32).is_multiple_of(3), &env);
                        }
                        // Each round leaves exactly one toggler busy (a different one).
                        b.set_busy(i, t as u32 == round % 4, &env);
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("toggler");
            }
            assert_eq!(gates(b, &held), [1, 1, 1, 1], "round {round}");
            let busy = togglers[(round % 4) as usize];
            b.set_busy(busy, false, &env);
            assert_eq!(gates(b, &held), [0, 0, 0, 0], "round {round}");
            assert_eq!(gates(b, &togglers), [0, 0, 0, 0], "round {round}");
        }
    }

    #[test]
    fn another_domains_busy_priorities_hold_only_less_important_slots() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let lo = b.register(2, 8, &env).expect("slot");
        assert!(!b.higher_busy(8));
        b.header.external_busy.store(1 << 3, Ordering::SeqCst);
        assert!(
            b.higher_busy(8),
            "priority 3 busy elsewhere holds priority 8 here"
        );
        assert!(!b.higher_busy(3), "but not an equal one");
        assert!(!b.higher_busy(0));
        b.refresh_gate(&b.slots[lo]);
        assert_eq!(gates(&b, &[lo]), [1]);
        b.header.external_busy.store(0, Ordering::SeqCst);
        b.refresh_gate(&b.slots[lo]);
        assert_eq!(gates(&b, &[lo]), [0]);
    }

    #[test]
    fn the_relays_write_opens_and_closes_gates_and_wakes_held_launches() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let lo = b.register(2, 8, &env).expect("slot");
        let eq = b.register(3, 3, &env).expect("slot");
        b.set_external(1 << 3, 1 << 3, &env);
        assert_eq!(
            gates(&b, &[lo, eq]),
            [1, 0],
            "only the less important gate closes"
        );
        assert!(b.higher_busy(8) && !b.higher_busy(3));
        let wake = b.header.wake.load(Ordering::SeqCst);
        b.set_external(0, 1 << 3, &env);
        assert_eq!(gates(&b, &[lo, eq]), [0, 0]);
        assert_ne!(
            b.header.wake.load(Ordering::SeqCst),
            wake,
            "a busy priority that went away wakes the held launches"
        );
        b.set_external(u32::MAX, u32::MAX, &env);
        assert_eq!(
            b.header.external_busy.load(Ordering::SeqCst),
            (1 << PRIOS) - 1,
            "bits past the last priority are dropped"
        );
    }

    #[test]
    fn another_domains_registered_priorities_give_a_lone_slot_its_role() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let me = b.register(2, 4, &env).expect("slot");
        assert!(b.role(me).is_alone());
        let g = b.generation();
        b.set_external(0, 1 << 8, &env);
        assert_ne!(
            b.generation(),
            g,
            "a change of presence bumps the generation"
        );
        assert_eq!(
            b.role(me),
            Role {
                has_higher: false,
                has_lower: true
            },
            "a less important process elsewhere makes this one publish busy"
        );
        b.set_external(0, 1 << 1, &env);
        assert_eq!(
            b.role(me),
            Role {
                has_higher: true,
                has_lower: false
            }
        );
        b.set_external(0, 1 << 4, &env);
        assert!(
            b.role(me).is_alone(),
            "an equal priority elsewhere is neither"
        );
        let g = b.generation();
        b.set_external(1 << 4, 1 << 4, &env);
        assert_eq!(b.generation(), g, "busy alone does not change roles");
    }

    #[test]
    fn busy_transitions_ring_the_relay_only_while_armed() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        let s = b.register(2, 4, &env).expect("slot");
        b.set_busy(s, true, &env);
        b.set_busy(s, false, &env);
        assert_eq!(b.header.ring.load(Ordering::SeqCst), 0, "nobody watches");
        b.header.relay_armed.store(1, Ordering::SeqCst);
        b.set_busy(s, true, &env);
        b.set_busy(s, true, &env);
        b.set_busy(s, false, &env);
        assert_eq!(
            b.header.ring.load(Ordering::SeqCst),
            2,
            "one ring per transition, none for a repeated state"
        );
    }

    #[test]
    fn a_full_block_reaps_before_refusing() {
        let env = Fake::new();
        let b = ArbiterBlock::new_boxed();
        for pid in 1..=SLOTS as u32 {
            assert!(b.register(pid, 8, &env).is_some());
        }
        assert_eq!(b.register(999, 8, &env), None, "no room, nobody dead");
        env.kill(7);
        assert!(
            b.register(999, 8, &env).is_some(),
            "the dead one's slot is reused"
        );
    }
}
