//! The launch gate and the kernel counters.
//!
//! Every launch passes [`pass`] before it reaches the driver. When neither `frozen` nor `hold`
//! is set in the control block — the normal case — that is two atomic loads: no lock, no
//! system call. When either is set the thread sleeps on a futex on that word (shared between
//! processes, so the daemon's wake reaches it; it also re-checks every
//! [`RECHECK`] in case a writer only stored the word), counted in `waiting` meanwhile.
//! Launches already queued on the GPU keep running: the gate holds new work only.
//!
//! Counting: `submitted` grows by one for each successful launch call (a kernel, a
//! cooperative kernel, or a whole CUDA graph, whose inner kernels are not counted one by one).
//! `ended` is advanced at synchronisation points, never past `submitted`: after a successful
//! context synchronise, to the number submitted before it began; after a stream synchronise,
//! likewise but only while every launch so far went to that one stream (with several streams
//! a stream synchronise proves nothing about the others). `ended` therefore lags the truth
//! until the program synchronises; `submitted - ended` is an upper bound of pending work.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::control::ControlBlock;

/// How often a held thread re-checks its word even without a wake.
pub const RECHECK: Duration = Duration::from_millis(50);

/// How a held thread sleeps (a futex in production, anything in tests).
pub trait Parker: Sync {
    /// Sleep while `*word == expected`, for about [`RECHECK`] at most.
    fn park(&self, word: &AtomicU32, expected: u32);
}

/// Futex sleeping, shared between processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct FutexParker;

impl Parker for FutexParker {
    fn park(&self, word: &AtomicU32, expected: u32) {
        crate::ffi::futex_wait(word, expected, RECHECK);
    }
}

/// Whether a launch may go now (the fast path).
#[inline]
pub fn is_open(block: &ControlBlock) -> bool {
    block.frozen.load(Ordering::Acquire) == 0 && block.hold.load(Ordering::Acquire) == 0
}

/// Let a launch through, holding the calling thread while the block is frozen or held.
/// Returns whether it had to wait.
#[inline]
pub fn pass(block: &ControlBlock, parker: &dyn Parker) -> bool {
    if is_open(block) {
        return false;
    }
    wait_open(block, parker);
    true
}

#[cold]
fn wait_open(block: &ControlBlock, parker: &dyn Parker) {
    block.waiting.fetch_add(1, Ordering::AcqRel);
    loop {
        let f = block.frozen.load(Ordering::Acquire);
        if f != 0 {
            parker.park(&block.frozen, f);
            continue;
        }
        let h = block.hold.load(Ordering::Acquire);
        if h != 0 {
            parker.park(&block.hold, h);
            continue;
        }
        break;
    }
    block.waiting.fetch_sub(1, Ordering::AcqRel);
}

const NO_STREAM: u64 = u64::MAX;

/// Which streams launches went to, to decide what a stream synchronise proves.
#[derive(Debug)]
pub struct StreamTracker {
    first: AtomicU64,
    several: AtomicBool,
}

impl Default for StreamTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamTracker {
    /// No launch seen yet.
    pub const fn new() -> StreamTracker {
        StreamTracker {
            first: AtomicU64::new(NO_STREAM),
            several: AtomicBool::new(false),
        }
    }

    /// Count a successful launch on `stream` (a `CUstream` value; 0 is the null stream).
    #[inline]
    pub fn launched(&self, block: &ControlBlock, stream: u64) {
        block.submitted.fetch_add(1, Ordering::AcqRel);
        let first = self.first.load(Ordering::Relaxed);
        if first == stream {
            return;
        }
        if first == NO_STREAM {
            match self.first.compare_exchange(
                NO_STREAM,
                stream,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) if now == stream => return,
                Err(_) => {}
            }
        }
        if !self.several.load(Ordering::Relaxed) {
            self.several.store(true, Ordering::Relaxed);
        }
    }

    /// Take the count a synchronise that starts now will prove complete.
    pub fn snapshot(&self, block: &ControlBlock) -> u64 {
        block.submitted.load(Ordering::Acquire)
    }

    /// A context synchronise that began at `snapshot` succeeded.
    pub fn ctx_synchronized(&self, block: &ControlBlock, snapshot: u64) {
        block.ended.fetch_max(snapshot, Ordering::AcqRel);
    }

    /// A synchronise of `stream` that began at `snapshot` succeeded.
    pub fn stream_synchronized(&self, block: &ControlBlock, stream: u64, snapshot: u64) {
        if !self.several.load(Ordering::Acquire) && self.first.load(Ordering::Acquire) == stream {
            block.ended.fetch_max(snapshot, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Knobs;
    use std::sync::Arc;
    use std::time::Instant;

    struct SleepParker;
    impl Parker for SleepParker {
        fn park(&self, word: &AtomicU32, expected: u32) {
            if word.load(Ordering::Acquire) == expected {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    #[test]
    fn an_open_gate_does_not_wait() {
        let b = ControlBlock::new(&Knobs::default());
        assert!(!pass(&b, &SleepParker));
    }

    fn held_until_cleared(word: fn(&ControlBlock) -> &AtomicU32, parker: &'static dyn Parker) {
        let b = Arc::new(ControlBlock::new(&Knobs::default()));
        word(&b).store(1, Ordering::Release);
        let passed = Arc::new(AtomicBool::new(false));
        let t = {
            let (b, passed) = (b.clone(), passed.clone());
            std::thread::spawn(move || {
                let waited = pass(&b, parker);
                passed.store(true, Ordering::Release);
                waited
            })
        };
        let start = Instant::now();
        while b.waiting.load(Ordering::Acquire) == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(b.waiting.load(Ordering::Acquire), 1, "the thread is held");
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !passed.load(Ordering::Acquire),
            "held while the word is set"
        );
        word(&b).store(0, Ordering::Release);
        gvm_shim_abi::sys::futex_wake(word(&b));
        assert!(t.join().unwrap_or(false), "reports that it waited");
        assert!(passed.load(Ordering::Acquire));
        assert_eq!(b.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn frozen_holds_until_thawed() {
        held_until_cleared(|b| &b.frozen, &SleepParker);
    }

    #[test]
    fn hold_holds_until_released_with_a_real_futex() {
        held_until_cleared(|b| &b.hold, &FutexParker);
    }

    #[test]
    fn ended_follows_synchronisation_and_never_passes_submitted() {
        let b = ControlBlock::new(&Knobs::default());
        let s = StreamTracker::new();
        for _ in 0..3 {
            s.launched(&b, 0x10);
        }
        let snap = s.snapshot(&b);
        s.launched(&b, 0x10); // submitted after the synchronise began
        s.stream_synchronized(&b, 0x10, snap);
        assert_eq!(b.ended.load(Ordering::Relaxed), 3);
        s.stream_synchronized(&b, 0x20, s.snapshot(&b));
        assert_eq!(
            b.ended.load(Ordering::Relaxed),
            3,
            "another stream proves nothing"
        );
        s.launched(&b, 0x20);
        s.stream_synchronized(&b, 0x10, s.snapshot(&b));
        assert_eq!(b.ended.load(Ordering::Relaxed), 3, "two streams in use");
        s.ctx_synchronized(&b, s.snapshot(&b));
        assert_eq!(b.ended.load(Ordering::Relaxed), 5);
        s.ctx_synchronized(&b, 2);
        assert_eq!(b.ended.load(Ordering::Relaxed), 5, "never goes back");
        assert_eq!(b.submitted.load(Ordering::Relaxed), 5);
    }
}
