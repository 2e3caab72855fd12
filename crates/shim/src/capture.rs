//! Stream captures in progress, so that the shim's helper thread never touches a stream
//! while the program is capturing a CUDA graph.
//!
//! A busy process's helper asks the driver whether the streams it launched on are done
//! (`cuStreamQuery`, `queue.rs`). Querying a stream that is being captured — or the legacy
//! default stream while any blocking stream is — is illegal and invalidates the capture
//! (CUDA programming guide, "Prohibited and unhandled operations"); a graph server then
//! fails at start-up with `cudaErrorStreamCaptureInvalidated`, as one did on an H200. So the
//! shim wraps the calls that begin and end a capture ([`Captures::begin`],
//! [`Captures::end`]) and the helper looks at streams only while no capture is in progress
//! ([`Captures::unless_capturing`]). A read/write lock closes the race between the helper's
//! look and a capture beginning: a capture begins only once a look in progress has
//! finished, and a look never starts while one is in progress.
//!
//! While a capture is in progress the process stays busy (its helper does not look), so a
//! less important peer may wait up to its maximum hold; captures are usually made once, at
//! start-up. A capture a program begins and never ends keeps it so.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::ffi::{CuResult, CUDA_SUCCESS};

/// `CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED` .. `CUDA_ERROR_CAPTURED_EVENT`: an end-capture
/// answered with one of these still ended the capture (invalidated, or never valid).
const CAPTURE_ERRORS: std::ops::RangeInclusive<CuResult> = 900..=907;

/// The captures the program has in progress.
#[derive(Debug, Default)]
pub struct Captures {
    lock: RwLock<()>,
    active: AtomicU32,
}

impl Captures {
    /// None in progress.
    pub const fn new() -> Captures {
        Captures {
            lock: RwLock::new(()),
            active: AtomicU32::new(0),
        }
    }

    /// Begin a capture with `real` (the driver's begin-capture call): counted in progress
    /// from before the driver starts it, unless the driver refuses.
    pub fn begin(&self, real: impl FnOnce() -> CuResult) -> CuResult {
        let _no_look = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        self.active.fetch_add(1, Ordering::SeqCst);
        let rc = real();
        if rc != CUDA_SUCCESS {
            self.release();
        }
        rc
    }

    /// A capture ended with `rc` (the driver's end-capture answer): no longer counted, unless
    /// the answer says no capture was ended (not capturing, a bad handle).
    pub fn end(&self, rc: CuResult) {
        if rc == CUDA_SUCCESS || CAPTURE_ERRORS.contains(&rc) {
            self.release();
        }
    }

    fn release(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// How many are in progress.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }

    /// Run `look` (which may query streams) unless a capture is in progress (`None` then).
    pub fn unless_capturing<R>(&self, look: impl FnOnce() -> R) -> Option<R> {
        let _looking = self.lock.read().unwrap_or_else(PoisonError::into_inner);
        (self.active.load(Ordering::SeqCst) == 0).then(look)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_in_progress_stops_the_looks_until_it_ends() {
        let c = Captures::new();
        assert_eq!(c.unless_capturing(|| 7), Some(7), "no capture: look");
        assert_eq!(c.begin(|| CUDA_SUCCESS), CUDA_SUCCESS);
        assert_eq!(c.unless_capturing(|| 7), None, "capturing: no look");
        assert_eq!(c.begin(|| CUDA_SUCCESS), CUDA_SUCCESS);
        c.end(CUDA_SUCCESS);
        assert_eq!(
            c.unless_capturing(|| 7),
            None,
            "one of two still in progress"
        );
        c.end(901); // invalidated: still ended
        assert_eq!(c.unless_capturing(|| 7), Some(7));
        assert_eq!(c.active(), 0);
    }

    #[test]
    fn a_refused_begin_and_an_end_of_nothing_change_nothing() {
        let c = Captures::new();
        assert_eq!(c.begin(|| 400), 400, "the driver's answer goes back");
        assert_eq!(c.active(), 0, "a refused begin is not in progress");
        c.end(401); // not capturing
        c.end(CUDA_SUCCESS); // more ends than begins
        assert_eq!(c.active(), 0, "never below zero");
        assert!(c.begin(|| CUDA_SUCCESS) == CUDA_SUCCESS && c.active() == 1);
        c.end(401);
        assert_eq!(c.active(), 1, "an end the driver refused ended nothing");
    }

    #[test]
    fn a_capture_cannot_begin_during_a_look() {
        let c = std::sync::Arc::new(Captures::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let looker = {
            let c = std::sync::Arc::clone(&c);
            std::thread::spawn(move || {
                c.unless_capturing(|| {
                    tx.send(()).expect("send");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    c.active()
                })
            })
        };
        rx.recv().expect("the look started");
        assert_eq!(c.begin(|| CUDA_SUCCESS), CUDA_SUCCESS);
        assert_eq!(
            looker.join().expect("looker"),
            Some(0),
            "the capture began only after the look"
        );
        assert_eq!(c.active(), 1);
    }
}
