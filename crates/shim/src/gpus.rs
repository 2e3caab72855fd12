//! The process's arbitration on each GPU it launches on.
//!
//! Arbitration is per physical GPU: each GPU has its own arbitration block, and a process
//! that uses two GPUs is a participant in both, with a slot, a busy flag and a GPU-side gate
//! word in each. A launch on one GPU waits only for more important peers busy on *that*
//! GPU, publishes busy only there, and the helper clears each GPU's busy flag when that
//! GPU's work is done (`Tracker::all_done_on`). The state of one GPU is a
//! [`GpuArbitration`]; [`PerGpu`] is the table of them, indexed by CUDA device ordinal
//! (what `cuCtxGetDevice` gives for the launching thread's context).
//!
//! Bounded: [`MAX_GPUS`] ordinals. A launch on a device beyond them is not arbitrated (said
//! once in the log); the blocks handed back to a restarted daemon are at most
//! `register::MAX_HANDED_BACK`.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::gpu_gate::GpuGate;
use crate::priority::Participant;

/// CUDA device ordinals that can take part in arbitration.
pub const MAX_GPUS: usize = 16;

/// One GPU's arbitration state in this process.
#[derive(Debug, Default)]
pub struct GpuArbitration {
    participant: OnceLock<Option<Participant>>,
    /// The GPU-side gate on this GPU's block.
    pub gate: GpuGate,
    /// The GPU (PCI bus id) and a descriptor of the daemon-made block joined, handed back at
    /// every re-registration.
    handed_back: OnceLock<(String, OwnedFd)>,
    /// This GPU's `arb_state` bits (the control block shows them OR-ed over the GPUs).
    bits: AtomicU32,
}

impl GpuArbitration {
    /// The participant on this GPU, joined with `join` on first use (`None`: not arbitrated).
    #[inline]
    pub fn participant(&self, join: impl FnOnce() -> Option<Participant>) -> Option<&Participant> {
        self.participant.get_or_init(join).as_ref()
    }

    /// The participant, if this GPU was joined already (never joins).
    pub fn joined(&self) -> Option<&Participant> {
        self.participant.get().and_then(Option::as_ref)
    }

    /// Remember that the block joined here is the daemon's block of GPU `pci`.
    pub fn set_handed_back(&self, pci: String, fd: OwnedFd) {
        let _ = self.handed_back.set((pci, fd));
    }
}

/// The table of [`GpuArbitration`]s by CUDA device ordinal.
#[derive(Debug)]
pub struct PerGpu {
    gpus: [GpuArbitration; MAX_GPUS],
    /// Whether the process sees one device only (then every launch is on ordinal 0 and the
    /// launch path need not ask the driver); unset until the driver answered.
    single_device: OnceLock<bool>,
    warned_beyond: AtomicBool,
}

impl Default for PerGpu {
    fn default() -> Self {
        PerGpu::new()
    }
}

impl PerGpu {
    /// No GPU joined.
    pub fn new() -> PerGpu {
        PerGpu {
            gpus: std::array::from_fn(|_| GpuArbitration::default()),
            single_device: OnceLock::new(),
            warned_beyond: AtomicBool::new(false),
        }
    }

    /// The state of device `device`, or `None` beyond [`MAX_GPUS`] (`warn` is then told
    /// once).
    #[inline]
    pub fn get(&self, device: i32, warn: impl FnOnce()) -> Option<&GpuArbitration> {
        let g = usize::try_from(device).ok().and_then(|d| self.gpus.get(d));
        if g.is_none() && !self.warned_beyond.swap(true, Ordering::Relaxed) {
            warn();
        }
        g
    }

    /// The device of a launch: 0 when the process sees one device (`count()` answered 1),
    /// else `current()` (the launching thread's context's device).
    #[inline]
    pub fn launch_device(
        &self,
        count: impl FnOnce() -> Option<i32>,
        current: impl FnOnce() -> i32,
    ) -> i32 {
        let single = match self.single_device.get() {
            Some(s) => *s,
            None => match count() {
                Some(n) => *self.single_device.get_or_init(|| n <= 1),
                None => false,
            },
        };
        if single {
            0
        } else {
            current()
        }
    }

    /// The GPUs joined so far, with their ordinals.
    pub fn joined(&self) -> impl Iterator<Item = (i32, &Participant)> {
        self.gpus
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((i32::try_from(i).ok()?, g.joined()?)))
    }

    /// The participant of ordinal `i` while its GPU-side gate is in use (for the watchdog).
    pub fn gated(&self, i: usize) -> Option<&Participant> {
        let g = self.gpus.get(i)?;
        g.gate.in_use().then(|| g.joined()).flatten()
    }

    /// Duplicates of the daemon-made blocks joined, by GPU, in ordinal order: what a
    /// re-registration hands back.
    pub fn handed_back(&self) -> Vec<(String, OwnedFd)> {
        self.gpus
            .iter()
            .filter_map(|g| {
                let (pci, fd) = g.handed_back.get()?;
                Some((pci.clone(), fd.try_clone().ok()?))
            })
            .collect()
    }

    /// Record `bits` as device `g`'s `arb_state`. Returns the bits OR-ed over every GPU
    /// when `g`'s changed, `None` when they stand (the OR then stands too: each GPU's bits
    /// change only through this call, on a launch there), so the launch path reads one word
    /// in the common case, not the whole table.
    pub fn publish(&self, g: &GpuArbitration, bits: u32) -> Option<u32> {
        if g.bits.load(Ordering::Relaxed) == bits {
            return None;
        }
        g.bits.store(bits, Ordering::Relaxed);
        Some(
            self.gpus
                .iter()
                .fold(0, |all, g| all | g.bits.load(Ordering::Relaxed)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::ArbiterMap;

    #[test]
    fn one_visible_device_skips_the_driver_and_several_ask_it() {
        let one = PerGpu::new();
        assert_eq!(one.launch_device(|| Some(1), || panic!("not asked")), 0);
        assert_eq!(
            one.launch_device(|| panic!("cached"), || panic!("not asked")),
            0
        );
        let two = PerGpu::new();
        assert_eq!(two.launch_device(|| Some(2), || 1), 1);
        assert_eq!(two.launch_device(|| panic!("cached"), || 0), 0);
        let unknown = PerGpu::new();
        assert_eq!(
            unknown.launch_device(|| None, || 3),
            3,
            "no answer: ask each time"
        );
        assert_eq!(
            unknown.launch_device(|| Some(1), || 3),
            0,
            "until it answers"
        );
    }

    #[test]
    fn devices_beyond_the_table_are_refused_once_and_each_gpu_has_its_own_state() {
        let t = PerGpu::new();
        let warned = std::cell::Cell::new(0);
        assert!(t
            .get(MAX_GPUS as i32, || warned.set(warned.get() + 1))
            .is_none());
        assert!(t.get(-1, || warned.set(warned.get() + 1)).is_none());
        assert_eq!(warned.get(), 1, "said once");
        let dir = tempfile::tempdir().expect("tempdir");
        let join = |name: &str, prio| {
            let map = ArbiterMap::open_or_create(&dir.path().join(name)).expect("map");
            Participant::join(map, std::process::id(), prio)
        };
        let g0 = t.get(0, || {}).expect("ordinal 0");
        let g1 = t.get(1, || {}).expect("ordinal 1");
        assert!(g0.participant(|| join("gpu0", 4)).is_some());
        assert!(g1.participant(|| join("gpu1", 4)).is_some());
        assert!(
            g1.participant(|| panic!("joined once")).is_some(),
            "a GPU is joined once"
        );
        let joined: Vec<i32> = t.joined().map(|(i, _)| i).collect();
        assert_eq!(joined, vec![0, 1]);
        assert_ne!(
            g0.joined().map(|p| p.path().to_path_buf()),
            g1.joined().map(|p| p.path().to_path_buf()),
            "each GPU's own block"
        );
        assert_eq!(t.publish(g0, 0b0011), Some(0b0011));
        assert_eq!(
            t.publish(g1, 0b0100),
            Some(0b0111),
            "the state is OR-ed over the GPUs"
        );
        assert_eq!(t.publish(g1, 0b0100), None, "unchanged: nothing to write");
        assert_eq!(t.publish(g0, 0), Some(0b0100));
        assert!(
            t.handed_back().is_empty(),
            "standalone blocks are not handed back"
        );
        assert!(t.gated(0).is_none(), "no gate in use");
    }
}
