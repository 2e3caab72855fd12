//! The GPU: contexts, a round-robin hardware scheduler, knobs and counters.
//!
//! What the model does, and what it charges for:
//! - Runnable contexts (kernels queued, vGPU not frozen) are served round-robin
//!   in a fixed order. The running context keeps the GPU until its queue is
//!   empty or its timeslice (`524288 µs >> priority` of its vGPU) ends; at the
//!   slice end it is preempted mid-kernel if another context is runnable (the
//!   kernel resumes later where it stopped), else it gets a new slice.
//! - Switching to a different context costs [`ModelConfig::switch_cost`] of
//!   GPU time that nobody is credited with.
//! - `compute.freeze = 1` stops the vGPU's contexts from being picked at once,
//!   and preempts the one running after [`ModelConfig::freeze_latency`] (or at
//!   its slice end if sooner); `0` makes them runnable again immediately.
//! - `compute.priority` changes the timeslice from the next slice on.
//!
//! The model is event-driven: it jumps from one event (arrival, kernel end,
//! slice end, freeze taking effect, caller's deadline) to the next, so a
//! simulated second costs a few thousand steps, not a million.

use std::collections::VecDeque;

use gvm_sched::{timeslice_of_priority, Action, Nanos, VgpuId, VgpuInput, PRIORITY_DEFAULT};

use crate::error::ModelError;
use crate::rng::SplitMix64;
use crate::workload::{Arrival, Workload};

/// Hardware parameters of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// GPU time lost when switching between contexts (default 20 µs).
    pub switch_cost: Nanos,
    /// Delay from a freeze write to the running context being preempted
    /// (default 100 µs).
    pub freeze_latency: Nanos,
    /// Length of the accounting windows busy time is binned into (default 1 s).
    pub window: Nanos,
    /// Priority of a vGPU's contexts before one is written (GVM's 8).
    pub default_priority: u8,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            switch_cost: Nanos::from_micros(20),
            freeze_latency: Nanos::from_micros(100),
            window: Nanos::from_secs(1),
            default_priority: PRIORITY_DEFAULT,
        }
    }
}

/// One vGPU as the model's user describes it: its type's knobs and its demand.
#[derive(Debug, Clone, PartialEq)]
pub struct VgpuSpec {
    /// Identity reported to the engine.
    pub id: VgpuId,
    /// Its type's (or override's) priority, reported to the engine.
    pub priority: u8,
    /// Its type's (or override's) share, reported to the engine.
    pub share: f64,
    /// What it submits.
    pub workload: Workload,
    /// Seed of its kernel-length generator (mixed with the context index).
    pub seed: u64,
}

/// Knob writes the model has received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KnobWrites {
    /// `compute.priority` writes.
    pub priority: u64,
    /// `compute.freeze` writes.
    pub freeze: u64,
}

#[derive(Debug, Clone)]
struct Ctx {
    vgpu: usize,
    /// Remaining ns of each queued kernel; the front one may be half done.
    queue: VecDeque<u64>,
    rng: SplitMix64,
    next_event: Option<Nanos>,
}

#[derive(Debug, Clone)]
struct Vgpu {
    spec: VgpuSpec,
    priority: u8,
    frozen: bool,
    busy: Nanos,
    submitted: u64,
    ended: u64,
    windows: Vec<Nanos>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Idle,
    On {
        ctx: usize,
        /// When the switch-in finishes and the context starts computing.
        run_start: Nanos,
        slice_end: Nanos,
        /// When a pending freeze preempts it (`Nanos::MAX` = none).
        preempt_at: Nanos,
    },
}

/// A deterministic model of one GPU time-shared by vGPUs.
#[derive(Debug, Clone)]
pub struct Gpu {
    cfg: ModelConfig,
    vgpus: Vec<Vgpu>,
    ctxs: Vec<Ctx>,
    now: Nanos,
    run: Run,
    last_ctx: Option<usize>,
    overhead: Nanos,
    idle: Nanos,
    idle_with_work: Nanos,
    writes: KnobWrites,
}

impl Gpu {
    /// Builds the GPU at time zero with every vGPU's contexts and workloads.
    pub fn new(cfg: ModelConfig, specs: Vec<VgpuSpec>) -> Result<Gpu, ModelError> {
        if cfg.window == Nanos::ZERO {
            return Err(ModelError::ZeroWindow);
        }
        let mut vgpus = Vec::with_capacity(specs.len());
        let mut ctxs = Vec::new();
        for (vi, spec) in specs.into_iter().enumerate() {
            spec.workload.validate(spec.id)?;
            if vgpus.iter().any(|v: &Vgpu| v.spec.id == spec.id) {
                return Err(ModelError::DuplicateId { id: spec.id });
            }
            for c in 0..spec.workload.contexts {
                let seed = spec.seed ^ (u64::from(c) + 1).wrapping_mul(0xA076_1D64_78BD_642F);
                ctxs.push(Ctx {
                    vgpu: vi,
                    queue: VecDeque::new(),
                    rng: SplitMix64::new(seed),
                    next_event: spec.workload.next_active(Nanos::ZERO),
                });
            }
            vgpus.push(Vgpu {
                spec,
                priority: cfg.default_priority,
                frozen: false,
                busy: Nanos::ZERO,
                submitted: 0,
                ended: 0,
                windows: Vec::new(),
            });
        }
        Ok(Gpu {
            cfg,
            vgpus,
            ctxs,
            now: Nanos::ZERO,
            run: Run::Idle,
            last_ctx: None,
            overhead: Nanos::ZERO,
            idle: Nanos::ZERO,
            idle_with_work: Nanos::ZERO,
            writes: KnobWrites::default(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Simulated time.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Number of vGPUs.
    pub fn vgpu_count(&self) -> usize {
        self.vgpus.len()
    }

    /// The counters the engine reads, one per vGPU in spec order.
    pub fn counters(&self) -> Vec<VgpuInput> {
        let mut out = Vec::with_capacity(self.vgpus.len());
        self.counters_into(&mut out);
        out
    }

    /// [`Gpu::counters`] into a reused buffer.
    pub fn counters_into(&self, out: &mut Vec<VgpuInput>) {
        out.clear();
        out.extend(self.vgpus.iter().map(|v| VgpuInput {
            id: v.spec.id,
            pending_kernels: v.submitted - v.ended,
            gpu_time: v.busy,
            priority: v.spec.priority,
            share: v.spec.share,
        }));
    }

    /// Applies one engine action as the knob writes it stands for. Unknown ids
    /// are ignored (the real kernel would answer ENOENT).
    pub fn apply(&mut self, action: &Action) {
        let Some(vi) = self.vgpus.iter().position(|v| v.spec.id == action.id) else {
            return;
        };
        if let Some(p) = action.priority {
            self.writes.priority += 1;
            self.vgpus[vi].priority = p;
        }
        if let Some(f) = action.freeze {
            self.writes.freeze += 1;
            self.set_frozen(vi, f);
        }
    }

    fn set_frozen(&mut self, vi: usize, frozen: bool) {
        self.vgpus[vi].frozen = frozen;
        if let Run::On {
            ctx,
            run_start,
            slice_end,
            ref mut preempt_at,
        } = self.run
        {
            if self.ctxs[ctx].vgpu == vi {
                *preempt_at = if frozen {
                    let t = slice_end.min(self.now + self.cfg.freeze_latency);
                    t.max(run_start)
                } else {
                    Nanos::MAX
                };
            }
        }
    }

    /// Knob writes received so far.
    pub fn writes(&self) -> KnobWrites {
        self.writes
    }

    /// Total GPU time nobody had work for.
    pub fn idle_time(&self) -> Nanos {
        self.idle
    }

    /// GPU time spent idle while some context had kernels queued (all such
    /// contexts were frozen).
    pub fn idle_with_work(&self) -> Nanos {
        self.idle_with_work
    }

    /// GPU time lost to context switches.
    pub fn overhead(&self) -> Nanos {
        self.overhead
    }

    /// Cumulative GPU time of vGPU `index` (spec order).
    pub fn busy(&self, index: usize) -> Nanos {
        self.vgpus.get(index).map_or(Nanos::ZERO, |v| v.busy)
    }

    /// Kernels vGPU `index` has finished.
    pub fn kernels_ended(&self, index: usize) -> u64 {
        self.vgpus.get(index).map_or(0, |v| v.ended)
    }

    /// Windows fully elapsed so far.
    pub fn complete_windows(&self) -> usize {
        usize::try_from(self.now.0 / self.cfg.window.0).unwrap_or(usize::MAX)
    }

    /// GPU time each vGPU got inside window `w` (`[w·W, (w+1)·W)`).
    pub fn window_busy(&self, w: usize) -> Vec<Nanos> {
        self.vgpus
            .iter()
            .map(|v| v.windows.get(w).copied().unwrap_or(Nanos::ZERO))
            .collect()
    }

    /// Each vGPU's GPU time in window `w` as a fraction of the window (wall time).
    pub fn window_wall_shares(&self, w: usize) -> Vec<f64> {
        let len = self.cfg.window.0 as f64;
        self.window_busy(w)
            .into_iter()
            .map(|b| b.0 as f64 / len)
            .collect()
    }

    /// Each vGPU's GPU time in window `w` as a fraction of all vGPUs' GPU time
    /// in it (zeros if nobody ran).
    pub fn window_used_shares(&self, w: usize) -> Vec<f64> {
        let busy = self.window_busy(w);
        let total: u64 = busy.iter().map(|b| b.0).sum();
        busy.into_iter()
            .map(|b| {
                if total == 0 {
                    0.0
                } else {
                    b.0 as f64 / total as f64
                }
            })
            .collect()
    }

    /// Simulates until `target` (no-op if it is in the past).
    pub fn advance_to(&mut self, target: Nanos) {
        while self.now < target {
            self.fire_workload_events();
            if self.run == Run::Idle {
                self.pick();
            }
            if let Run::On {
                ctx,
                slice_end,
                preempt_at,
                ..
            } = self.run
            {
                if self.now >= preempt_at {
                    self.stop(ctx);
                    continue;
                }
                if self.now >= slice_end {
                    if self.runnable_other_than(ctx) {
                        self.stop(ctx);
                        continue;
                    }
                    let ts = timeslice_of_priority(self.vgpus[self.ctxs[ctx].vgpu].priority);
                    if let Run::On { slice_end, .. } = &mut self.run {
                        *slice_end = self.now + ts;
                    }
                }
            }
            let mut next = self
                .ctxs
                .iter()
                .filter_map(|c| c.next_event)
                .fold(target, Nanos::min);
            match self.run {
                Run::Idle => {
                    let dur = next - self.now;
                    self.idle += dur;
                    if self.ctxs.iter().any(|c| !c.queue.is_empty()) {
                        self.idle_with_work += dur;
                    }
                    self.now = next;
                }
                Run::On {
                    ctx,
                    run_start,
                    slice_end,
                    preempt_at,
                } => {
                    next = next.min(slice_end).min(preempt_at);
                    if self.now < run_start {
                        let e = run_start.min(next);
                        self.overhead += e - self.now;
                        self.now = e;
                    } else {
                        self.compute(ctx, next);
                    }
                }
            }
        }
    }

    fn stop(&mut self, ctx: usize) {
        self.last_ctx = Some(ctx);
        self.run = Run::Idle;
    }

    fn runnable(&self, c: usize) -> bool {
        let ctx = &self.ctxs[c];
        !ctx.queue.is_empty() && !self.vgpus[ctx.vgpu].frozen
    }

    fn runnable_other_than(&self, c: usize) -> bool {
        (0..self.ctxs.len()).any(|o| o != c && self.runnable(o))
    }

    /// Hardware round-robin: the first runnable context after the last one.
    fn pick(&mut self) {
        let n = self.ctxs.len();
        let start = self.last_ctx.map_or(0, |l| l + 1);
        let Some(c) = (0..n).map(|i| (start + i) % n).find(|&c| self.runnable(c)) else {
            return;
        };
        let cost = if self.last_ctx == Some(c) {
            Nanos::ZERO
        } else {
            self.cfg.switch_cost
        };
        let run_start = self.now + cost;
        let ts = timeslice_of_priority(self.vgpus[self.ctxs[c].vgpu].priority);
        self.run = Run::On {
            ctx: c,
            run_start,
            slice_end: run_start + ts,
            preempt_at: Nanos::MAX,
        };
    }

    /// Runs context `c` from now until `until` or until its queue empties.
    fn compute(&mut self, c: usize, until: Nanos) {
        let start = self.now;
        let vi = self.ctxs[c].vgpu;
        let mut t = start;
        while t < until {
            let Some(front) = self.ctxs[c].queue.front_mut() else {
                break;
            };
            let left = until.0 - t.0;
            if *front > left {
                *front -= left;
                t = until;
                break;
            }
            t = Nanos(t.0 + *front);
            self.ctxs[c].queue.pop_front();
            self.vgpus[vi].ended += 1;
            self.refill_on_completion(c, t);
        }
        self.add_busy(vi, start, t);
        self.now = t;
        if self.ctxs[c].queue.is_empty() {
            self.stop(c);
        }
    }

    fn refill_on_completion(&mut self, c: usize, t: Nanos) {
        let vi = self.ctxs[c].vgpu;
        let w = &self.vgpus[vi].spec.workload;
        if let Arrival::Saturating { depth } = w.arrival {
            if w.is_active(t) && self.ctxs[c].queue.len() < depth as usize {
                let k = w.kernels.sample(&mut self.ctxs[c].rng);
                self.ctxs[c].queue.push_back(k);
                self.vgpus[vi].submitted += 1;
            }
        }
    }

    /// Handles arrivals and span starts that are due.
    fn fire_workload_events(&mut self) {
        let now = self.now;
        for c in 0..self.ctxs.len() {
            if !matches!(self.ctxs[c].next_event, Some(t) if t <= now) {
                continue;
            }
            let vi = self.ctxs[c].vgpu;
            let w = &self.vgpus[vi].spec.workload;
            let ctx = &mut self.ctxs[c];
            let mut submitted = 0;
            match w.arrival {
                Arrival::Saturating { depth } => {
                    while w.is_active(now) && ctx.queue.len() < depth as usize {
                        ctx.queue.push_back(w.kernels.sample(&mut ctx.rng));
                        submitted += 1;
                    }
                    ctx.next_event = w.active.iter().map(|s| s.start).filter(|&s| s > now).min();
                }
                Arrival::Periodic { period, max_queue } => {
                    if w.is_active(now) && ctx.queue.len() < max_queue as usize {
                        ctx.queue.push_back(w.kernels.sample(&mut ctx.rng));
                        submitted += 1;
                    }
                    ctx.next_event = w.next_active(now + period);
                }
            }
            self.vgpus[vi].submitted += submitted;
        }
    }

    fn add_busy(&mut self, vi: usize, from: Nanos, to: Nanos) {
        let wlen = self.cfg.window.0;
        let v = &mut self.vgpus[vi];
        v.busy += to - from;
        let mut a = from.0;
        while a < to.0 {
            let w = usize::try_from(a / wlen).unwrap_or(usize::MAX);
            let end = to.0.min((a / wlen + 1).saturating_mul(wlen));
            if v.windows.len() <= w {
                v.windows.resize(w + 1, Nanos::ZERO);
            }
            v.windows[w] += Nanos(end - a);
            a = end;
        }
    }
}

#[cfg(test)]
#[path = "gpu_tests.rs"]
mod tests;
