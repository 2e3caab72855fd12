//! The GPU-side gate: holding a yielding process's *queued* work, not only its next launch.
//!
//! Holding launches on the CPU leaves what the process already queued to run: a more
//! important process that becomes busy waits for that queue to drain, so the CPU-side
//! arbiter has to keep the queue short (a count bound), and a short queue lets the GPU run
//! dry between the small kernels of a training step. Instead, a process with a more
//! important peer pins its GPU's arbitration block for the GPU once and puts, in front of
//! each launch, a stream wait "until my slot's `gpu_hold` word is 0"
//! (`cuStreamWaitValue32`). The word is 1 exactly while a more important process is busy
//! (kept so by every busy transition, `arbiter.rs`), so the GPU stops this process's
//! stream at the next wait when the other becomes busy — behind about the kernel running,
//! whatever is queued — and goes on by itself, without a CPU round trip, when it goes idle.
//!
//! Each GPU a process launches on has its own block, so its own gate ([`GpuGate`], one
//! per GPU in `gpus.rs`). A wait on the GPU cannot time out, so one watchdog thread per
//! gated process ([`Watch`], one per gated GPU) looks at its words while they are set: it reaps dead and stale peers on the
//! arbiter's schedule (a crashed or stopped server then lets go as it would on the CPU),
//! and after the maximum hold it clears the word itself, as a CPU-side hold gives up. Where
//! the driver cannot pin the block (an old driver, no mapped-memory support), the process
//! keeps the CPU-side count bound; that is said once in the log.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use crate::arbiter::{ARB_FILE_LEN, REAP_EVERY};
use crate::driver;
use crate::priority::{Participant, RealEnv};
use crate::queue::StreamKey;

/// How often the watchdog looks at its process's word.
pub const WATCH_EVERY: Duration = Duration::from_millis(5);

/// What the watchdog should do after one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchAction {
    /// Nothing.
    None,
    /// Reap dead and stale peers (their busy flags may be what holds the word).
    Reap,
    /// The word has been set for the maximum hold: clear it.
    Release,
}

/// The watchdog's memory between looks (pure: times are passed in).
#[derive(Debug, Default, Clone, Copy)]
pub struct Watch {
    held_since_ns: Option<u64>,
    last_reap_ns: u64,
}

impl Watch {
    /// One look at `now_ns`: whether the word is `held`, and the maximum hold.
    pub fn step(&mut self, now_ns: u64, held: bool, max_hold: Duration) -> WatchAction {
        if !held {
            self.held_since_ns = None;
            return WatchAction::None;
        }
        let since = *self.held_since_ns.get_or_insert(now_ns);
        let held_for = now_ns.saturating_sub(since);
        if u128::from(held_for) >= max_hold.as_nanos() {
            self.held_since_ns = None;
            return WatchAction::Release;
        }
        if u128::from(now_ns.saturating_sub(self.last_reap_ns)) >= REAP_EVERY.as_nanos() {
            self.last_reap_ns = now_ns;
            return WatchAction::Reap;
        }
        WatchAction::None
    }
}

/// A process's GPU-side gate on one GPU: the GPU's block's address for the GPU (mapped on
/// first use).
#[derive(Debug)]
pub struct GpuGate {
    /// The device address of the arbitration block's first byte; `None` when the driver
    /// could not map it (the process then keeps the CPU-side bound).
    block_on_gpu: OnceLock<Option<u64>>,
}

impl Default for GpuGate {
    fn default() -> Self {
        GpuGate::new()
    }
}

impl GpuGate {
    /// A gate not yet mapped.
    pub const fn new() -> GpuGate {
        GpuGate {
            block_on_gpu: OnceLock::new(),
        }
    }

    /// Whether waits on this GPU's block are being queued (it was mapped).
    pub fn in_use(&self) -> bool {
        matches!(self.block_on_gpu.get(), Some(Some(_)))
    }

    /// The arbitration block's address as the GPU sees it, or `None` when the gate cannot be
    /// used (maps the block on the first call, with the calling thread's context current, and
    /// logs a failure once).
    pub fn block_on_gpu(&self, p: &Participant, log: fn(&str)) -> Option<u64> {
        *self.block_on_gpu.get_or_init(|| {
            let base = std::ptr::from_ref(p.block()).cast::<u8>().cast_mut();
            match driver::map_for_gpu(base, ARB_FILE_LEN) {
                Ok(addr) => Some(addr),
                Err((call, rc)) => {
                    log(&format!(
                        "the GPU cannot read the arbitration block {} ({call}: CUDA error {rc}); \
                         queued work is bounded on the CPU instead (GVM_QUEUE_DEPTH)",
                        p.path().display()
                    ));
                    None
                }
            }
        })
    }

    /// Put a wait for this process's `gpu_hold` word in front of the next launch on `key`'s
    /// stream, the block being at `block_on_gpu` for the GPU. Whether it was queued (if not,
    /// the launch goes ungated on the GPU).
    pub fn hold_point(&self, p: &Participant, key: StreamKey, block_on_gpu: u64) -> bool {
        let block = p.block();
        let word = std::ptr::from_ref(&block.slots[p.slot()].gpu_hold) as u64;
        let offset = word - std::ptr::from_ref(block) as u64;
        driver::stream_wait_zero(key, block_on_gpu + offset)
    }
}

/// The watchdog's loop over the participants `gated(i)` for `i` in `0..n` (a GPU whose gate
/// is not in use gives `None`; see the module doc); `max_hold` is read anew on every look,
/// `released` hears of every hold it ended.
pub fn watch<'a>(
    n: usize,
    gated: impl Fn(usize) -> Option<&'a Participant>,
    max_hold: impl Fn() -> Duration,
    released: impl Fn(Duration),
) -> ! {
    let mut watches = vec![Watch::default(); n];
    loop {
        std::thread::sleep(WATCH_EVERY);
        let limit = max_hold();
        for (i, w) in watches.iter_mut().enumerate() {
            let Some(p) = gated(i) else { continue };
            let block = p.block();
            let word = &block.slots[p.slot()].gpu_hold;
            let now = gvm_shim_abi::sys::monotonic_ns();
            match w.step(now, word.load(Ordering::Acquire) != 0, limit) {
                WatchAction::None => {}
                WatchAction::Reap => {
                    block.reap(&RealEnv);
                }
                WatchAction::Release => {
                    word.store(0, Ordering::SeqCst);
                    released(limit);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn an_open_gate_needs_nothing_and_a_held_one_is_reaped_then_released() {
        let mut w = Watch::default();
        let max = Duration::from_millis(200);
        assert_eq!(w.step(1_000 * MS, false, max), WatchAction::None);
        assert_eq!(
            w.step(1_005 * MS, true, max),
            WatchAction::Reap,
            "first look while held"
        );
        assert_eq!(w.step(1_010 * MS, true, max), WatchAction::None);
        assert_eq!(
            w.step(1_055 * MS, true, max),
            WatchAction::Reap,
            "every REAP_EVERY"
        );
        assert_eq!(w.step(1_100 * MS, true, max), WatchAction::None);
        assert_eq!(
            w.step(1_205 * MS, true, max),
            WatchAction::Release,
            "held 200 ms"
        );
        assert_eq!(
            w.step(1_210 * MS, true, max),
            WatchAction::Reap,
            "a new hold (the word set again) counts from now"
        );
        assert_eq!(w.step(1_215 * MS, false, max), WatchAction::None);
        assert_eq!(w.step(1_220 * MS, true, max), WatchAction::None);
        assert_eq!(
            w.step(1_400 * MS, true, max),
            WatchAction::Reap,
            "an opening in between restarts the hold"
        );
        assert_eq!(w.step(1_420 * MS, true, max), WatchAction::Release);
    }

    #[test]
    fn a_zero_maximum_releases_at_the_first_look() {
        let mut w = Watch::default();
        assert_eq!(w.step(5 * MS, true, Duration::ZERO), WatchAction::Release);
    }
}
