//! The per-GPU policy engine: counters in, knob changes out, once per tick.
//!
//! The daemon (or the GPU model) calls [`Engine::tick`] with the current time
//! and one [`VgpuInput`] per vGPU on the GPU: pending kernels (demand), the
//! cumulative GPU time it has consumed, and its type's priority and share.
//! The engine answers with [`Action`]s that carry only the knobs whose value
//! changes — `compute.priority` and `compute.freeze` on GVM — so the caller
//! writes exactly what it gets and the number of actions is the number of
//! kernel writes.
//!
//! How each policy uses the two knobs:
//! - best-effort: priority = the vGPU's own priority; never frozen.
//! - equal-share: priority = the one whose timeslice is the policy's slice, for
//!   every vGPU, so the hardware round-robin alone is nearly fair. On top, a
//!   virtual-time account (GPU time used while having work) finds vGPUs that got
//!   ahead — e.g. because they own several channel groups, which the hardware
//!   rotates through separately — and freezes a vGPU whose lead over the
//!   furthest-behind vGPU with work exceeds a bound, thawing it when the lead
//!   has halved. The furthest-behind vGPU is never frozen, so some vGPU with
//!   work can always run. A vGPU that was idle rejoins with at most that bound
//!   of credit: idle time is given to the others, not banked.
//! - fixed-share: same priority; a token bucket per vGPU earns `share × elapsed`
//!   wall time and pays for GPU time used; a vGPU is frozen when the bucket is
//!   empty and thawed when it holds half its (small) capacity again. Others'
//!   idleness earns nothing, so idle time is not given away.
//!
//! Tolerances scale with the slice and window: the bound is
//! `max(2 × slice, window / 100)` (10 ms for the default 1 s window).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::error::SchedError;
use crate::policy::Policy;
use crate::time::{priority_for_timeslice, timeslice_of_priority, Nanos, PRIORITY_MAX};

/// A vGPU's identity, wide enough to hold its mdev UUID (`Uuid::as_u128`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VgpuId(pub u128);

impl fmt::Display for VgpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vgpu-{:x}", self.0)
    }
}

/// What the engine is told about one vGPU at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VgpuInput {
    /// Which vGPU (unique on this GPU).
    pub id: VgpuId,
    /// Kernels submitted and not yet finished (`nr_pending_kernels`); > 0 means
    /// the vGPU has work.
    pub pending_kernels: u64,
    /// Cumulative GPU time consumed. A value lower than the last one is taken
    /// as a counter reset (no time used in that tick).
    pub gpu_time: Nanos,
    /// Priority from its type or an override (0..=16, lower = longer slice);
    /// used by best-effort.
    pub priority: u8,
    /// Share of the GPU from its type or an override (0..=1); used by
    /// fixed-share. Non-finite values count as 0.
    pub share: f64,
}

/// Knob changes for one vGPU; `None` means "leave as is".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Which vGPU.
    pub id: VgpuId,
    /// New `compute.priority`.
    pub priority: Option<u8>,
    /// New `compute.freeze` (`true` = 1).
    pub freeze: Option<bool>,
}

impl Action {
    /// How many knob writes this action stands for.
    pub fn writes(&self) -> u64 {
        u64::from(self.priority.is_some()) + u64::from(self.freeze.is_some())
    }
}

/// How one vGPU stands against its policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShareReport {
    /// Which vGPU.
    pub id: VgpuId,
    /// The share the policy aims at as of the last tick: 1/N of used GPU time
    /// for equal-share, the configured share of wall time for fixed-share,
    /// the timeslice-weighted share for best-effort; 0 without work.
    pub target: f64,
    /// GPU time used over the last complete window divided by its length;
    /// `None` until a window has completed.
    pub achieved: Option<f64>,
    /// Whether the engine last wrote freeze = 1.
    pub frozen: bool,
    /// The priority last written, if any.
    pub priority: Option<u8>,
}

/// Counts kept since the engine was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Ticks processed.
    pub ticks: u64,
    /// `compute.priority` writes requested.
    pub priority_writes: u64,
    /// `compute.freeze` writes requested.
    pub freeze_writes: u64,
}

/// The engine's memory of one vGPU.
#[derive(Debug, Clone)]
struct Slot {
    id: VgpuId,
    last_gpu_time: Nanos,
    /// Priority last written; `None` = never written or invalidated.
    written_priority: Option<u8>,
    /// Freeze last written; `None` = unknown (invalidated).
    written_frozen: Option<bool>,
    /// Equal-share virtual time: GPU time used, in ns.
    vruntime: u64,
    /// Fixed-share token bucket, in ns (may be negative: debt).
    balance: i64,
    had_work: bool,
    window_used: Nanos,
    achieved: Option<f64>,
    target: f64,
    // Per-tick scratch.
    used: Nanos,
    has_work: bool,
    want_priority: u8,
    want_frozen: bool,
}

impl Slot {
    fn new(input: &VgpuInput, vfloor: u64) -> Slot {
        Slot {
            id: input.id,
            last_gpu_time: input.gpu_time,
            written_priority: None,
            written_frozen: Some(false),
            vruntime: vfloor,
            balance: 0,
            had_work: false,
            window_used: Nanos::ZERO,
            achieved: None,
            target: 0.0,
            used: Nanos::ZERO,
            has_work: false,
            want_priority: 0,
            want_frozen: false,
        }
    }

    fn frozen(&self) -> bool {
        self.written_frozen.unwrap_or(false)
    }
}

/// One GPU's scheduler. Pure: no I/O, no clock, no threads.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: EngineConfig,
    slots: Vec<Slot>,
    last_now: Option<Nanos>,
    window_start: Option<Nanos>,
    /// Equal-share: the smallest virtual time among vGPUs with work at the last tick.
    vfloor: u64,
    /// Under [`EngineConfig::exclusive`]: the vGPU holding the GPU and since when.
    runner: Option<(VgpuId, Nanos)>,
    stats: EngineStats,
}

impl Engine {
    /// An engine for one GPU; fails if the configuration is invalid.
    pub fn new(cfg: EngineConfig) -> Result<Engine, SchedError> {
        cfg.validate()?;
        Ok(Engine {
            cfg,
            slots: Vec::new(),
            last_now: None,
            window_start: None,
            vfloor: 0,
            runner: None,
            stats: EngineStats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Switches policy live. Accounting restarts from the next tick; knobs are
    /// rewritten there as the new policy needs (e.g. best-effort thaws all).
    pub fn set_policy(&mut self, policy: Policy) {
        if policy == self.cfg.policy {
            return;
        }
        self.cfg.policy = policy;
        self.reset_accounting();
    }

    /// Replaces the whole configuration (policy, slice, window) live.
    pub fn set_config(&mut self, cfg: EngineConfig) -> Result<(), SchedError> {
        cfg.validate()?;
        self.cfg = cfg;
        self.reset_accounting();
        Ok(())
    }

    /// Forgets what was written to `id`'s knobs, so the next tick writes both
    /// again (call it when the vGPU's owners created new GPU contexts, which a
    /// priority written earlier does not reach). Returns whether `id` is known.
    pub fn invalidate(&mut self, id: VgpuId) -> bool {
        match self.slots.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.written_priority = None;
                s.written_frozen = None;
                true
            }
            None => false,
        }
    }

    /// The slice the policy uses for `vgpus` vGPUs, and the priority realising it.
    pub fn slice_for(&self, vgpus: usize) -> (Nanos, u8) {
        let slice = self.cfg.slice_for(vgpus);
        let prio = priority_for_timeslice(slice);
        (timeslice_of_priority(prio), prio)
    }

    /// Counters since construction.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Where each known vGPU stands, in the order of the last tick's inputs.
    pub fn report(&self) -> Vec<ShareReport> {
        self.slots
            .iter()
            .map(|s| ShareReport {
                id: s.id,
                target: s.target,
                achieved: s.achieved,
                frozen: s.frozen(),
                priority: s.written_priority,
            })
            .collect()
    }

    /// Runs one tick at time `now` and returns the knob changes.
    pub fn tick(&mut self, now: Nanos, inputs: &[VgpuInput]) -> Vec<Action> {
        let mut out = Vec::new();
        self.tick_into(now, inputs, &mut out);
        out
    }

    /// [`Engine::tick`] writing into a reused buffer (cleared first).
    ///
    /// vGPUs missing from `inputs` are forgotten; new ones start with no credit
    /// and no debt, and get their priority written.
    pub fn tick_into(&mut self, now: Nanos, inputs: &[VgpuInput], out: &mut Vec<Action>) {
        out.clear();
        let dt = self.last_now.map_or(Nanos::ZERO, |t| now - t);
        self.last_now = Some(now);
        self.align(inputs);
        for (s, inp) in self.slots.iter_mut().zip(inputs) {
            s.used = if inp.gpu_time >= s.last_gpu_time {
                inp.gpu_time - s.last_gpu_time
            } else {
                Nanos::ZERO
            };
            s.last_gpu_time = inp.gpu_time;
            s.has_work = inp.pending_kernels > 0;
            s.window_used += s.used;
        }
        let (slice, slice_prio) = self.slice_for(inputs.len());
        let bound = tolerance(slice, self.cfg.window);
        match self.cfg.policy {
            Policy::BestEffort => best_effort(&mut self.slots, inputs),
            Policy::EqualShare => {
                self.vfloor = equal_share(&mut self.slots, self.vfloor, bound, slice_prio);
            }
            Policy::FixedShare => {
                // One at a time, a vGPU waits while the others run their slices: its
                // credit must outlast that wait, or a large share loses what it earns
                // meanwhile to the cap.
                let cap = match self.cfg.exclusive {
                    Some(ex) => {
                        let n = u64::try_from(inputs.len()).unwrap_or(u64::MAX);
                        Nanos(bound.0.max(ex.0.saturating_mul(n)))
                    }
                    None => bound,
                };
                fixed_share(
                    &mut self.slots,
                    inputs,
                    dt,
                    cap,
                    self.cfg.window,
                    slice_prio,
                )
            }
        }
        if let Some(slice) = self.cfg.exclusive {
            if self.cfg.policy != Policy::BestEffort {
                self.one_at_a_time(now, slice);
            }
        }
        for s in &mut self.slots {
            let priority = (s.written_priority != Some(s.want_priority)).then_some(s.want_priority);
            let freeze = (s.written_frozen != Some(s.want_frozen)).then_some(s.want_frozen);
            s.written_priority = Some(s.want_priority);
            s.written_frozen = Some(s.want_frozen);
            s.had_work = s.has_work;
            if priority.is_some() || freeze.is_some() {
                let a = Action {
                    id: s.id,
                    priority,
                    freeze,
                };
                self.stats.priority_writes += u64::from(priority.is_some());
                self.stats.freeze_writes += u64::from(freeze.is_some());
                out.push(a);
            }
        }
        self.roll_window(now);
        self.stats.ticks += 1;
    }

    /// Exclusive mode: of the vGPUs the policy lets run (work, not frozen), only one
    /// runs. The current one keeps the GPU for at least `slice` while the policy lets
    /// it; then the one furthest behind takes over (equal-share: least virtual time;
    /// fixed-share: largest balance). The others are frozen; their accounting goes on
    /// as usual, so the shares come out as without the mode, minus the hardware's
    /// switching between concurrent contexts.
    fn one_at_a_time(&mut self, now: Nanos, slice: Nanos) {
        let runnable = |s: &Slot| s.has_work && !s.want_frozen;
        let keep = self
            .runner
            .filter(|(_, since)| now - *since < slice)
            .map(|(id, _)| id)
            .filter(|id| self.slots.iter().any(|s| s.id == *id && runnable(s)));
        let equal = self.cfg.policy == Policy::EqualShare;
        let pick = keep.or_else(|| {
            self.slots
                .iter()
                .filter(|s| runnable(s))
                .min_by_key(|s| {
                    if equal {
                        i128::from(s.vruntime)
                    } else {
                        -i128::from(s.balance)
                    }
                })
                .map(|s| s.id)
        });
        for s in &mut self.slots {
            if runnable(s) && Some(s.id) != pick {
                s.want_frozen = true;
            }
        }
        self.runner = match pick {
            Some(id) if keep == Some(id) => self.runner,
            Some(id) => Some((id, now)),
            None => None,
        };
    }

    fn reset_accounting(&mut self) {
        self.vfloor = 0;
        for s in &mut self.slots {
            s.vruntime = 0;
            s.balance = 0;
            s.had_work = false;
        }
    }

    /// Makes `slots[i]` describe `inputs[i]`, keeping state of known ids.
    fn align(&mut self, inputs: &[VgpuInput]) {
        let same = self.slots.len() == inputs.len()
            && self.slots.iter().zip(inputs).all(|(s, i)| s.id == i.id);
        if same {
            return;
        }
        let mut old: Vec<Option<Slot>> = self.slots.drain(..).map(Some).collect();
        for inp in inputs {
            let known = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|s| s.id == inp.id))
                .and_then(Option::take);
            let slot = known.unwrap_or_else(|| Slot::new(inp, self.vfloor));
            self.slots.push(slot);
        }
    }

    fn roll_window(&mut self, now: Nanos) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now - start;
        if elapsed < self.cfg.window || elapsed == Nanos::ZERO {
            return;
        }
        for s in &mut self.slots {
            s.achieved = Some(s.window_used.0 as f64 / elapsed.0 as f64);
            s.window_used = Nanos::ZERO;
        }
        self.window_start = Some(now);
    }
}

/// The lead/bucket bound: `max(2 × slice, window / 100)`.
fn tolerance(slice: Nanos, window: Nanos) -> Nanos {
    Nanos((2 * slice.0).max(window.0 / 100))
}

fn best_effort(slots: &mut [Slot], inputs: &[VgpuInput]) {
    let total: u64 = slots
        .iter()
        .zip(inputs)
        .filter(|(s, _)| s.has_work)
        .map(|(_, i)| timeslice_of_priority(i.priority).0)
        .sum();
    for (s, inp) in slots.iter_mut().zip(inputs) {
        s.want_priority = inp.priority.min(PRIORITY_MAX);
        s.want_frozen = false;
        s.target = if s.has_work && total > 0 {
            timeslice_of_priority(inp.priority).0 as f64 / total as f64
        } else {
            0.0
        };
    }
}

/// Equal-share decisions; returns the new virtual-time floor.
fn equal_share(slots: &mut [Slot], vfloor: u64, bound: Nanos, prio: u8) -> u64 {
    let rejoin_floor = vfloor.saturating_sub(bound.0);
    let mut vmin: Option<u64> = None;
    let mut n_work = 0usize;
    for s in slots.iter_mut() {
        if s.has_work && !s.had_work {
            s.vruntime = s.vruntime.max(rejoin_floor);
        }
        s.vruntime = s.vruntime.saturating_add(s.used.0);
        if s.has_work {
            n_work += 1;
            vmin = Some(vmin.map_or(s.vruntime, |m| m.min(s.vruntime)));
        }
    }
    let Some(vmin) = vmin else {
        for s in slots.iter_mut() {
            s.want_priority = prio;
            s.want_frozen = s.frozen();
            s.target = 0.0;
        }
        return vfloor;
    };
    let thaw = bound.0 / 2;
    for s in slots.iter_mut() {
        s.want_priority = prio;
        if s.has_work {
            let lead = s.vruntime - vmin;
            s.want_frozen = if s.frozen() {
                lead > thaw
            } else {
                lead > bound.0
            };
            s.target = 1.0 / n_work as f64;
        } else {
            s.want_frozen = s.frozen();
            s.target = 0.0;
        }
    }
    vmin
}

fn fixed_share(
    slots: &mut [Slot],
    inputs: &[VgpuInput],
    dt: Nanos,
    bound: Nanos,
    window: Nanos,
    prio: u8,
) {
    let cap = i64::try_from(bound.0).unwrap_or(i64::MAX);
    let floor = -i64::try_from(window.0).unwrap_or(i64::MAX);
    let thaw = cap / 2;
    for (s, inp) in slots.iter_mut().zip(inputs) {
        let share = sanitize_share(inp.share);
        let earned = (dt.0 as f64 * share) as i64;
        let spent = i64::try_from(s.used.0).unwrap_or(i64::MAX);
        s.balance = s
            .balance
            .saturating_add(earned)
            .saturating_sub(spent)
            .clamp(floor, cap);
        s.want_priority = prio;
        s.want_frozen = if !s.has_work {
            s.frozen()
        } else if s.frozen() {
            s.balance < thaw
        } else {
            s.balance < 0
        };
        s.target = share;
    }
}

fn sanitize_share(share: f64) -> f64 {
    if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
