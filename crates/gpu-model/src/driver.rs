//! Driving the model with the policy engine, the way gvm-vgpud drives a GPU.
//!
//! Every `tick` the driver reads the model's counters, hands them to the
//! engine and writes the returned knob changes back — nothing else passes
//! between the two, so the engine has to reach its shares through the same
//! priority and freeze knobs (with their latency) that the real system has.

use gvm_sched::{Engine, Nanos};

use crate::gpu::Gpu;

/// What one [`Gpu::run`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Simulated time covered.
    pub duration: Nanos,
    /// Engine ticks.
    pub ticks: u64,
    /// `compute.priority` writes made.
    pub priority_writes: u64,
    /// `compute.freeze` writes made.
    pub freeze_writes: u64,
}

impl RunStats {
    /// All knob writes per simulated second.
    pub fn writes_per_sec(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s == 0.0 {
            0.0
        } else {
            (self.priority_writes + self.freeze_writes) as f64 / s
        }
    }
}

impl Gpu {
    /// Runs for `duration` from now, ticking `engine` every `tick` (a zero tick
    /// is taken as 1 ns). The first tick happens at the current time.
    pub fn run(&mut self, engine: &mut Engine, duration: Nanos, tick: Nanos) -> RunStats {
        let tick = tick.max(Nanos(1));
        let end = self.now() + duration;
        let before = self.writes();
        let mut stats = RunStats {
            duration,
            ..RunStats::default()
        };
        let mut inputs = Vec::with_capacity(self.vgpu_count());
        let mut actions = Vec::new();
        while self.now() < end {
            self.counters_into(&mut inputs);
            engine.tick_into(self.now(), &inputs, &mut actions);
            for a in &actions {
                self.apply(a);
            }
            stats.ticks += 1;
            let next = (self.now() + tick).min(end);
            self.advance_to(next);
        }
        let after = self.writes();
        stats.priority_writes = after.priority - before.priority;
        stats.freeze_writes = after.freeze - before.freeze;
        stats
    }
}
