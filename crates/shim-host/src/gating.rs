//! Who gates the shim processes of each GPU: their own priority arbitration, or the
//! scheduler's freezes.
//!
//! Under best-effort the shims' priority arbitration between the processes of a GPU does the
//! work (`arbitrate` on, following the block's priority live). Under equal-share and
//! fixed-share the scheduler's freezes are the mechanism: the scheduler marks the GPU
//! daemon-driven, and every read or write of a block on it turns `arbitrate` off (two gating
//! mechanisms would fight) and `queue_always` on (a freeze then waits for at most
//! `queue_depth` queued launches, not the driver's ~1,024); back under best-effort both are
//! restored ([`crate::blocks::apply_gating`]).
//!
//! One [`GatingModes`] is made with the backend and shared, as an `Arc`, with the scheduler
//! that decides: the choice travels through that handle, not through process-wide state.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::info;

/// The GPUs (GVM indexes) whose shim processes the scheduler drives itself.
#[derive(Debug, Default)]
pub struct GatingModes {
    driven: Mutex<BTreeSet<u32>>,
}

impl GatingModes {
    /// Every GPU left to the shims' own arbitration.
    pub fn new() -> GatingModes {
        GatingModes::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.driven.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says whether the scheduler drives the shim processes of `gpu` itself (equal-share,
    /// fixed-share: `true`) or leaves gating to the shims' priority arbitration (best-effort:
    /// `false`, the default). Blocks follow at their next read or write.
    pub fn set_daemon_driven(&self, gpu: u32, driven: bool) {
        let changed = if driven {
            self.lock().insert(gpu)
        } else {
            self.lock().remove(&gpu)
        };
        if changed {
            info!(
                gpu,
                driven,
                "CUDA shim gating: {}",
                if driven {
                    "the scheduler's freezes (arbitration off, bounded queues)"
                } else {
                    "the shims' priority arbitration"
                }
            );
        }
    }

    /// Whether [`GatingModes::set_daemon_driven`] marked `gpu` as driven by the scheduler.
    pub fn is_daemon_driven(&self, gpu: u32) -> bool {
        self.lock().contains(&gpu)
    }
}
