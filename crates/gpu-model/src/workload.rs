//! What a vGPU's guest submits: kernel lengths, arrival pattern, active spans.
//!
//! A workload runs in one or more *contexts* (GPU channel groups, one per owner
//! process); the hardware rotates through contexts, not vGPUs, so a vGPU with
//! three contexts gets three turns per round unless the scheduler intervenes.
//! Each context has its own queue of kernels and its own seeded generator.

use gvm_sched::{Nanos, VgpuId};

use crate::error::ModelError;
use crate::rng::SplitMix64;

/// How long each kernel runs on the GPU when it has the GPU to itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelDist {
    /// Every kernel takes this long.
    Fixed(Nanos),
    /// Uniform between the bounds.
    Uniform {
        /// Shortest kernel.
        min: Nanos,
        /// Longest kernel.
        max: Nanos,
    },
    /// Log-uniform between the bounds: as many 10–100 µs kernels as 1–10 ms ones.
    LogUniform {
        /// Shortest kernel.
        min: Nanos,
        /// Longest kernel.
        max: Nanos,
    },
}

impl KernelDist {
    fn bounds(self) -> (Nanos, Nanos) {
        match self {
            KernelDist::Fixed(n) => (n, n),
            KernelDist::Uniform { min, max } | KernelDist::LogUniform { min, max } => (min, max),
        }
    }

    /// Draws one kernel length (ns, at least 1).
    pub fn sample(self, rng: &mut SplitMix64) -> u64 {
        let v = match self {
            KernelDist::Fixed(n) => n.0,
            KernelDist::Uniform { min, max } => {
                min.0 + (rng.next_f64() * (max.0 - min.0) as f64) as u64
            }
            KernelDist::LogUniform { min, max } => {
                let (lo, hi) = ((min.0 as f64).ln(), (max.0 as f64).ln());
                (lo + rng.next_f64() * (hi - lo)).exp() as u64
            }
        };
        v.max(1)
    }
}

/// When kernels are submitted while the workload is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Closed loop: each context keeps `depth` kernels queued, submitting a new
    /// one as each finishes (a busy training or inference loop).
    Saturating {
        /// Kernels kept in flight per context.
        depth: u32,
    },
    /// Open loop: one kernel per context every `period`; a submission finding
    /// `max_queue` kernels queued is skipped (the launch queue is full).
    Periodic {
        /// Time between submissions.
        period: Nanos,
        /// Queue bound per context.
        max_queue: u32,
    },
}

/// A half-open interval `[start, end)` of simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First instant inside.
    pub start: Nanos,
    /// First instant after.
    pub end: Nanos,
}

/// A vGPU's demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Contexts (channel groups) the work is spread over; at least 1.
    pub contexts: u32,
    /// Kernel lengths.
    pub kernels: KernelDist,
    /// Submission pattern.
    pub arrival: Arrival,
    /// When the workload submits; empty = always. Sorted, non-overlapping.
    pub active: Vec<Span>,
}

impl Workload {
    /// A single-context, always-busy workload with kernels from `kernels`.
    pub fn busy(kernels: KernelDist) -> Workload {
        Workload {
            contexts: 1,
            kernels,
            arrival: Arrival::Saturating { depth: 2 },
            active: Vec::new(),
        }
    }

    /// This workload, submitting only inside `spans`.
    pub fn during(mut self, spans: Vec<Span>) -> Workload {
        self.active = spans;
        self
    }

    /// This workload spread over `contexts` channel groups.
    pub fn with_contexts(mut self, contexts: u32) -> Workload {
        self.contexts = contexts;
        self
    }

    pub(crate) fn validate(&self, id: VgpuId) -> Result<(), ModelError> {
        if self.contexts == 0 {
            return Err(ModelError::NoContexts { id });
        }
        let (min, max) = self.kernels.bounds();
        if min == Nanos::ZERO || min > max {
            return Err(ModelError::BadKernelLengths { id, min, max });
        }
        match self.arrival {
            Arrival::Saturating { depth: 0 }
            | Arrival::Periodic {
                max_queue: 0,
                period: _,
            } => return Err(ModelError::BadArrival { id }),
            Arrival::Periodic { period, .. } if period == Nanos::ZERO => {
                return Err(ModelError::BadArrival { id })
            }
            _ => {}
        }
        if let Some(s) = self.active.iter().find(|s| s.end < s.start) {
            return Err(ModelError::BadSpan {
                id,
                start: s.start,
                end: s.end,
            });
        }
        Ok(())
    }

    /// Whether the workload submits at `t`.
    pub fn is_active(&self, t: Nanos) -> bool {
        self.active.is_empty() || self.active.iter().any(|s| s.start <= t && t < s.end)
    }

    /// The first instant `>= t` at which the workload is active, if any.
    pub fn next_active(&self, t: Nanos) -> Option<Nanos> {
        if self.is_active(t) {
            return Some(t);
        }
        self.active
            .iter()
            .filter(|s| s.start >= t && s.start < s.end)
            .map(|s| s.start)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Nanos = Nanos::from_millis;

    #[test]
    fn samples_stay_in_bounds() {
        let mut rng = SplitMix64::new(3);
        let lu = KernelDist::LogUniform {
            min: Nanos::from_micros(10),
            max: MS(5),
        };
        let xs: Vec<u64> = (0..5_000).map(|_| lu.sample(&mut rng)).collect();
        assert!(xs.iter().all(|&x| (10_000..=5_000_000).contains(&x)));
        // Log-uniform: about half the kernels are under the geometric mean (~224 µs).
        let short = xs.iter().filter(|&&x| x < 223_607).count();
        assert!((2_300..2_700).contains(&short), "{short}");
        assert_eq!(KernelDist::Fixed(MS(1)).sample(&mut rng), 1_000_000);
    }

    #[test]
    fn spans_answer_activity() {
        let w = Workload::busy(KernelDist::Fixed(MS(1))).during(vec![
            Span {
                start: MS(10),
                end: MS(20),
            },
            Span {
                start: MS(30),
                end: MS(40),
            },
        ]);
        assert!(!w.is_active(MS(5)));
        assert!(w.is_active(MS(10)));
        assert!(!w.is_active(MS(20)));
        assert_eq!(w.next_active(MS(5)), Some(MS(10)));
        assert_eq!(w.next_active(MS(15)), Some(MS(15)));
        assert_eq!(w.next_active(MS(25)), Some(MS(30)));
        assert_eq!(w.next_active(MS(45)), None);
        assert_eq!(
            Workload::busy(KernelDist::Fixed(MS(1))).next_active(MS(7)),
            Some(MS(7))
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let id = VgpuId(9);
        let w = Workload::busy(KernelDist::Uniform {
            min: MS(2),
            max: MS(1),
        });
        assert!(matches!(
            w.validate(id),
            Err(ModelError::BadKernelLengths { .. })
        ));
        let w = Workload::busy(KernelDist::Fixed(MS(1))).with_contexts(0);
        assert_eq!(w.validate(id), Err(ModelError::NoContexts { id }));
        let mut w = Workload::busy(KernelDist::Fixed(MS(1)));
        w.arrival = Arrival::Periodic {
            period: Nanos::ZERO,
            max_queue: 4,
        };
        assert_eq!(w.validate(id), Err(ModelError::BadArrival { id }));
    }
}
