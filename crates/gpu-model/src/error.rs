//! Errors in a model description (the model itself cannot fail once built).

use gvm_sched::{Nanos, VgpuId};

/// A [`crate::Gpu`] could not be built from its description.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A workload has no contexts (channel groups) to run kernels in.
    #[error("{id}: a workload needs at least one context (channel group)")]
    NoContexts {
        /// The vGPU.
        id: VgpuId,
    },
    /// A kernel length distribution is empty or inverted.
    #[error("{id}: kernel lengths must satisfy 0 < min <= max (got {min}..{max})")]
    BadKernelLengths {
        /// The vGPU.
        id: VgpuId,
        /// The lower bound given.
        min: Nanos,
        /// The upper bound given.
        max: Nanos,
    },
    /// A periodic arrival with period zero, or a saturating one with depth zero.
    #[error("{id}: arrivals need a period > 0 and a queue depth > 0")]
    BadArrival {
        /// The vGPU.
        id: VgpuId,
    },
    /// An active span ends before it starts.
    #[error("{id}: active span {start}..{end} ends before it starts")]
    BadSpan {
        /// The vGPU.
        id: VgpuId,
        /// Span start.
        start: Nanos,
        /// Span end.
        end: Nanos,
    },
    /// Two vGPUs share an id.
    #[error("{id} appears twice: give every vGPU its own id")]
    DuplicateId {
        /// The repeated id.
        id: VgpuId,
    },
    /// The accounting window is zero.
    #[error("the accounting window must be longer than zero")]
    ZeroWindow,
}
