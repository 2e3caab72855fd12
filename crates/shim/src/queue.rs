//! Knowing what a process still has on the GPU: one small ring of CUDA events per stream.
//!
//! A launch returns as soon as the work is queued; the shim learns that it ran only through
//! events. When a process must track its work (it is more important than another process and
//! publishes `busy`, or it must keep its queue short), the shim records an event on the
//! launch's stream right after each launch and keeps the last few per stream in a [`Ring`]:
//!
//! * **Bounded queue** (`Tracker::outstanding`): a process that must yield (and cannot hold
//!   its queued work on the GPU itself, `gpu_gate.rs`, or is under `queue_always`) waits,
//!   before a launch, until fewer than `depth` of its recorded launches on that stream are unfinished.
//!   Its queue never holds more than `depth` launches, so a more important process that
//!   becomes busy waits for at most that much of its work to drain.
//! * **Idle detection** ([`Tracker::all_done_on`], per device): work on one stream runs in order, so the
//!   newest event of a stream completing means the stream is idle; the process is idle when
//!   every stream is. A launch that needs no event for anything else (a busy process with no
//!   queue bound: the important one) is only *marked* ([`Tracker::mark_launched`]), and the
//!   idle check asks the driver whether the marked stream finished (`cuStreamQuery`) — once
//!   per check, not an event record per launch. An eager server launches thousands of kernels
//!   per request; an event after each cost it more than the arbitration saved (issue 18,
//!   `docs/results/shim-matrix.md`). Streams only the launching thread can name (the
//!   per-thread default stream) still get events.
//! * **Queue budget in GPU time** (`Tracker::admits`): a count bound costs a job of many
//!   short kernels (a training step: ~250 launches, most of them tens of microseconds) its
//!   throughput — the CPU waits on nearly every launch and the GPU runs dry between them —
//!   while a count is what a more important process waits behind only for long kernels. So
//!   the tracker learns how long each kernel (each `CUfunction`, or CUDA graph) runs on the
//!   GPU and admits a launch beyond the count floor while the estimated work queued, this
//!   launch included, stays within a budget of GPU time. Durations come from the events
//!   themselves: when a launch was queued behind an unfinished one, the GPU time between
//!   the two events is its run time (other contexts running in between only make it look
//!   longer, the safe side). An estimate rises to a longer sample at once and falls slowly;
//!   a kernel never measured counts as the whole budget.
//!
//! This module is the bookkeeping only, over an [`Events`] trait (the driver in production,
//! a fake in tests). A query that fails counts as complete: a broken event must never keep a
//! process waiting.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::config::MAX_QUEUE_DEPTH;

/// Events kept per stream.
pub const RING: usize = MAX_QUEUE_DEPTH as usize;
/// Streams tracked per process; launches on further streams go untracked.
pub const MAX_STREAMS: usize = 64;
/// Kernels whose run time is remembered; further ones count as unknown (the whole budget).
pub const MAX_ESTIMATES: usize = 4096;
/// A run-time sample is clamped to this (µs): one stalled measurement must not poison an
/// estimate for long.
const MAX_SAMPLE_US: f32 = 1_000_000.0;

/// Which queue a launch went to: the context (and its device), the stream handle and
/// whether the stream handle is read in the per-thread default-stream flavour (`_ptsz`
/// entry points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// The CUDA device (ordinal) of `ctx`: a process busy on several GPUs goes idle on each
    /// of them on its own ([`Tracker::all_done_on`]).
    pub device: i32,
    /// `CUcontext` current at the launch.
    pub ctx: usize,
    /// `CUstream` as passed to the launch.
    pub stream: usize,
    /// Launched through a `_ptsz` entry point.
    pub ptsz: bool,
}

/// What an event query said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The work before the event is done (or the query failed).
    Done,
    /// Still running or queued.
    Pending,
}

/// The driver calls the tracker needs.
pub trait Events {
    /// Create an event in `key`'s context (the caller's current one); `None` on failure.
    fn create(&self, key: StreamKey) -> Option<usize>;
    /// Record `event` on `key`'s stream; false on failure.
    fn record(&self, event: usize, key: StreamKey) -> bool;
    /// Query `event` (of `key`'s context).
    fn query(&self, event: usize, key: StreamKey) -> Query;
    /// Whether [`Events::query_stream`] can tell, from the thread that checks for idle,
    /// whether `key`'s stream has finished everything queued on it.
    fn can_query_stream(&self, key: StreamKey) -> bool;
    /// Whether `key`'s stream has finished all its work (`cuStreamQuery`).
    fn query_stream(&self, key: StreamKey) -> Query;
    /// GPU time in microseconds from `earlier` to `later`, both complete events of `key`'s
    /// stream; `None` when the driver cannot tell (events without timing, an error).
    fn elapsed_us(&self, earlier: usize, later: usize, key: StreamKey) -> Option<f32>;
}

/// What a stream has queued: unfinished tracked launches and their estimated GPU time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Queued {
    /// Unfinished launches.
    pub count: usize,
    /// Their estimated run time, µs (unknown kernels at the budget).
    pub work_us: f32,
}

/// Whether one more launch (estimated `next_us`) may join a queue holding `q`: always below
/// `floor` launches; beyond it only while the queued work plus this launch stays within
/// `budget_us` (0: the floor alone), and never past the events a stream keeps.
pub fn admits(q: Queued, next_us: f32, floor: usize, budget_us: u32) -> bool {
    if q.count < floor {
        return true;
    }
    budget_us > 0 && q.count < RING && q.work_us + next_us <= budget_us as f32
}

/// Learned run times per kernel.
#[derive(Debug, Default)]
struct Estimates {
    us: HashMap<usize, f32>,
}

impl Estimates {
    /// A new sample for `work`: a longer one is taken at once, a shorter one moves the
    /// estimate an eighth of the way (so the estimate stays near the recent longest run).
    fn observe(&mut self, work: usize, sample_us: f32) {
        let sample = sample_us.clamp(0.0, MAX_SAMPLE_US);
        if let Some(e) = self.us.get_mut(&work) {
            *e = if sample >= *e {
                sample
            } else {
                *e + (sample - *e) / 8.0
            };
        } else if self.us.len() < MAX_ESTIMATES {
            self.us.insert(work, sample);
        }
    }

    fn get(&self, work: usize) -> Option<f32> {
        self.us.get(&work).copied()
    }
}

/// What the ring knows of the launch before one of its events.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// The kernel (or graph) launched.
    work: usize,
    /// Its estimated run time when launched, µs.
    est_us: f32,
    /// Queued behind an unfinished launch: its event's time minus the previous event's is
    /// its run time. False when the stream was idle (the difference would include the gap).
    behind: bool,
}

/// The recorded, not yet known complete events of one stream, oldest first.
#[derive(Debug)]
pub struct Ring {
    key: StreamKey,
    /// Every event made for this stream (reused round-robin).
    events: Vec<usize>,
    /// The launch before each event, by the same index.
    entries: Vec<Entry>,
    /// Index in `events` of the oldest pending one.
    head: usize,
    /// How many are pending.
    len: usize,
    /// Index of the most recently completed event while it is not yet recorded again (the
    /// start of the next one's run time).
    last_done: Option<usize>,
}

impl Ring {
    fn new(key: StreamKey) -> Ring {
        Ring {
            key,
            events: Vec::new(),
            entries: Vec::new(),
            head: 0,
            len: 0,
            last_done: None,
        }
    }

    /// Drop the completed events from the front, learning the run time of each launch that
    /// was queued behind the one before it.
    fn pop_done(&mut self, ev: &dyn Events, learn: &mut Estimates) {
        while self.len > 0 {
            let i = self.head;
            let e = self.events[i];
            if ev.query(e, self.key) == Query::Pending {
                return;
            }
            let entry = self.entries[i];
            if let (Some(prev), true) = (self.last_done, entry.behind) {
                if let Some(us) = ev.elapsed_us(self.events[prev], e, self.key) {
                    learn.observe(entry.work, us);
                }
            }
            self.last_done = Some(i);
            self.head = (self.head + 1) % self.events.len();
            self.len -= 1;
        }
    }

    /// Add the fresh event `e` right after the pending ones; returns its index.
    fn insert(&mut self, e: usize) -> usize {
        let cap = self.events.len();
        // Rotate so that head is 0: the pending events are then 0..len.
        self.events.rotate_left(self.head);
        self.entries.rotate_left(self.head);
        if let Some(d) = self.last_done {
            let d = (d + cap - self.head) % cap;
            self.last_done = Some(if d >= self.len { d + 1 } else { d });
        }
        self.head = 0;
        self.events.insert(self.len, e);
        self.entries.insert(self.len, Entry::default());
        self.len
    }

    fn queued(&self) -> Queued {
        let cap = self.events.len().max(1);
        let work_us = (0..self.len)
            .map(|k| self.entries[(self.head + k) % cap].est_us)
            .sum();
        Queued {
            count: self.len,
            work_us,
        }
    }

    /// An event to record next: a fresh one while the ring grows, else the oldest (dropping
    /// it from the pending ones: a newer event on the same stream covers it). While the ring
    /// may grow, the last completed event is not reused as long as a launch is pending: it
    /// is where the oldest pending launch's run time starts (a queue held at a count floor
    /// would otherwise reuse exactly that event every time and never learn a run time).
    fn next_slot(&mut self, ev: &dyn Events) -> Option<usize> {
        let cap = self.events.len();
        if self.len < cap {
            let i = (self.head + self.len) % cap;
            if self.len > 0 && self.last_done == Some(i) && cap < RING {
                if let Some(e) = ev.create(self.key) {
                    return Some(self.insert(e));
                }
            }
            if self.last_done == Some(i) {
                self.last_done = None; // about to be recorded again
            }
            return Some(i);
        }
        if cap < RING {
            let e = ev.create(self.key)?;
            return Some(self.insert(e));
        }
        // Full: recycle the oldest (its end, and so the next one's start, goes unseen).
        let i = self.head;
        self.head = (self.head + 1) % cap;
        self.len -= 1;
        self.last_done = None;
        Some(i)
    }
}

/// The per-process tracker.
#[derive(Debug, Default)]
pub struct Tracker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    rings: Vec<Ring>,
    estimates: Estimates,
    /// Streams launched on (without an event) since the idle check last saw them finished.
    marked: Vec<StreamKey>,
}

impl Tracker {
    /// Nothing tracked.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A launch of `work` (a `CUfunction` or graph handle) on `key` succeeded: record an
    /// event after it. `unknown_us` is the estimate of a kernel never measured. Returns
    /// whether it is tracked.
    pub fn launched(&self, key: StreamKey, work: usize, unknown_us: f32, ev: &dyn Events) -> bool {
        let mut st = self.state();
        let State {
            rings, estimates, ..
        } = &mut *st;
        let idx = match rings.iter().position(|r| r.key == key) {
            Some(i) => i,
            None if rings.len() < MAX_STREAMS => {
                rings.push(Ring::new(key));
                rings.len() - 1
            }
            None => return false,
        };
        let ring = &mut rings[idx];
        ring.pop_done(ev, estimates);
        let behind = ring.len > 0;
        let Some(slot) = ring.next_slot(ev) else {
            return false;
        };
        if !ev.record(ring.events[slot], key) {
            return false;
        }
        ring.entries[slot] = Entry {
            work,
            est_us: estimates.get(work).unwrap_or(unknown_us),
            behind,
        };
        ring.len += 1;
        true
    }

    /// A launch on `key` succeeded and needs no event (see the module doc): remember the
    /// stream for the idle check. False when `MAX_STREAMS` streams are marked already (the
    /// caller then records an event instead).
    pub fn mark_launched(&self, key: StreamKey) -> bool {
        let mut st = self.state();
        if st.marked.contains(&key) {
            return true;
        }
        if st.marked.len() >= MAX_STREAMS {
            return false;
        }
        st.marked.push(key);
        true
    }

    /// Unfinished tracked launches on `key` now, and their estimated GPU time.
    pub fn queued(&self, key: StreamKey, ev: &dyn Events) -> Queued {
        let mut st = self.state();
        let State {
            rings, estimates, ..
        } = &mut *st;
        match rings.iter_mut().find(|r| r.key == key) {
            Some(r) => {
                r.pop_done(ev, estimates);
                r.queued()
            }
            None => Queued::default(),
        }
    }

    /// The learned run time of `work`, µs, if it was measured.
    pub fn estimate_us(&self, work: usize) -> Option<f32> {
        self.state().estimates.get(work)
    }

    /// Whether every tracked stream of `device` is idle (its newest event complete).
    pub fn all_done_on(&self, device: i32, ev: &dyn Events) -> bool {
        let mut st = self.state();
        for r in st.rings.iter_mut().filter(|r| r.key.device == device) {
            if r.len == 0 {
                continue;
            }
            let newest = (r.head + r.len - 1) % r.events.len();
            if ev.query(r.events[newest], r.key) == Query::Pending {
                return false;
            }
            r.head = (newest + 1) % r.events.len();
            r.len = 0;
            r.last_done = Some(newest);
        }
        // Under the lock, so a launch marked meanwhile is either seen here or marked after.
        st.marked
            .retain(|k| k.device != device || ev.query_stream(*k) == Query::Pending);
        !st.marked.iter().any(|k| k.device == device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Each stream completes its recorded work when told to; an event is done when the
    /// stream's completed count reached the count at which it was recorded.
    #[derive(Default)]
    struct FakeGpu {
        next: AtomicUsize,
        created: AtomicUsize,
        state: Mutex<FakeState>,
    }
    #[derive(Default)]
    struct FakeState {
        submitted: HashMap<usize, u64>,
        completed: HashMap<usize, u64>,
        recorded_at: HashMap<usize, (usize, u64)>,
        /// GPU clock (µs) per stream and the time each launch (by count) ended.
        clock: HashMap<usize, f32>,
        ended_at: HashMap<(usize, u64), f32>,
    }

    impl FakeGpu {
        fn submit(&self, stream: usize) {
            let mut s = self.state.lock().expect("fake");
            *s.submitted.entry(stream).or_default() += 1;
        }
        /// The next `n` launches of `stream` run `us` each, back to back.
        fn run(&self, stream: usize, n: u64, us: f32) {
            let mut s = self.state.lock().expect("fake");
            let sub = s.submitted.get(&stream).copied().unwrap_or(0);
            for _ in 0..n {
                let c = s.completed.get(&stream).copied().unwrap_or(0);
                if c >= sub {
                    break;
                }
                let t = s.clock.get(&stream).copied().unwrap_or(0.0) + us;
                s.clock.insert(stream, t);
                s.ended_at.insert((stream, c + 1), t);
                s.completed.insert(stream, c + 1);
            }
        }
        fn complete(&self, stream: usize, n: u64) {
            self.run(stream, n, 1.0);
        }
        /// The stream idles for `us`.
        fn idle(&self, stream: usize, us: f32) {
            let mut s = self.state.lock().expect("fake");
            *s.clock.entry(stream).or_default() += us;
        }
    }

    impl Events for FakeGpu {
        fn create(&self, _k: StreamKey) -> Option<usize> {
            self.created.fetch_add(1, Ordering::Relaxed);
            Some(self.next.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, e: usize, k: StreamKey) -> bool {
            let mut s = self.state.lock().expect("fake");
            let at = s.submitted.get(&k.stream).copied().unwrap_or(0);
            s.recorded_at.insert(e, (k.stream, at));
            true
        }
        fn query(&self, e: usize, _k: StreamKey) -> Query {
            let s = self.state.lock().expect("fake");
            match s.recorded_at.get(&e) {
                Some((st, at)) if s.completed.get(st).copied().unwrap_or(0) < *at => Query::Pending,
                _ => Query::Done,
            }
        }
        fn can_query_stream(&self, k: StreamKey) -> bool {
            !k.ptsz
        }
        fn query_stream(&self, k: StreamKey) -> Query {
            let s = self.state.lock().expect("fake");
            let sub = s.submitted.get(&k.stream).copied().unwrap_or(0);
            if s.completed.get(&k.stream).copied().unwrap_or(0) < sub {
                Query::Pending
            } else {
                Query::Done
            }
        }
        fn elapsed_us(&self, a: usize, b: usize, _k: StreamKey) -> Option<f32> {
            let s = self.state.lock().expect("fake");
            let when = |e: usize| -> Option<f32> {
                let (st, at) = *s.recorded_at.get(&e)?;
                if at == 0 {
                    return Some(0.0);
                }
                s.ended_at.get(&(st, at)).copied()
            };
            Some(when(b)? - when(a)?)
        }
    }

    fn key(stream: usize) -> StreamKey {
        StreamKey {
            device: 0,
            ctx: 1,
            stream,
            ptsz: false,
        }
    }

    const UNKNOWN: f32 = 1000.0;

    fn launch(t: &Tracker, g: &FakeGpu, stream: usize) {
        launch_work(t, g, stream, 0);
    }

    fn launch_work(t: &Tracker, g: &FakeGpu, stream: usize, work: usize) {
        g.submit(stream);
        assert!(t.launched(key(stream), work, UNKNOWN, g));
    }

    fn outstanding(t: &Tracker, g: &FakeGpu, stream: usize) -> usize {
        t.queued(key(stream), g).count
    }

    #[test]
    fn outstanding_counts_unfinished_launches_per_stream() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..3 {
            launch(&t, &g, 7);
        }
        launch(&t, &g, 9);
        assert_eq!(outstanding(&t, &g, 7), 3);
        assert_eq!(outstanding(&t, &g, 9), 1);
        g.complete(7, 2);
        assert_eq!(outstanding(&t, &g, 7), 1);
        assert!(!t.all_done_on(0, &g));
        g.complete(7, 1);
        assert!(!t.all_done_on(0, &g), "stream 9 still runs");
        g.complete(9, 1);
        assert!(t.all_done_on(0, &g));
        assert_eq!(outstanding(&t, &g, 42), 0, "unknown streams have nothing");
    }

    #[test]
    fn each_device_goes_idle_on_its_own() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        let on = |device: i32, stream: usize| StreamKey {
            device,
            ctx: 1 + device as usize,
            stream,
            ptsz: false,
        };
        // Device 0: an event-tracked launch; device 1: one tracked and one only marked.
        g.submit(7);
        assert!(t.launched(on(0, 7), 0, UNKNOWN, &g));
        g.submit(8);
        assert!(t.launched(on(1, 8), 0, UNKNOWN, &g));
        g.submit(9);
        assert!(t.mark_launched(on(1, 9)));
        g.complete(7, 1);
        assert!(t.all_done_on(0, &g), "device 0 is idle while device 1 runs");
        assert!(!t.all_done_on(1, &g));
        g.complete(8, 1);
        assert!(
            !t.all_done_on(1, &g),
            "the marked stream of device 1 still runs"
        );
        assert!(
            t.all_done_on(0, &g),
            "device 0's check leaves device 1's mark alone"
        );
        g.complete(9, 1);
        assert!(t.all_done_on(1, &g));
        assert!(t.all_done_on(5, &g), "a device never launched on is idle");
    }

    #[test]
    fn a_full_ring_recycles_its_oldest_event_and_stays_correct() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..(RING + 5) {
            launch(&t, &g, 3);
        }
        assert_eq!(g.created.load(Ordering::Relaxed), RING, "events are reused");
        assert_eq!(outstanding(&t, &g, 3), RING);
        g.complete(3, (RING + 4) as u64);
        assert!(!t.all_done_on(0, &g), "the newest launch is still pending");
        assert!(outstanding(&t, &g, 3) >= 1);
        g.complete(3, 1);
        assert_eq!(outstanding(&t, &g, 3), 0);
        assert!(t.all_done_on(0, &g));
    }

    #[test]
    fn events_are_reused_once_complete() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..50 {
            launch(&t, &g, 1);
            g.complete(1, 1);
        }
        assert_eq!(g.created.load(Ordering::Relaxed), 1, "one event suffices");
        assert!(t.all_done_on(0, &g));
    }

    struct Broken;
    impl Events for Broken {
        fn create(&self, _k: StreamKey) -> Option<usize> {
            None
        }
        fn record(&self, _e: usize, _k: StreamKey) -> bool {
            false
        }
        fn query(&self, _e: usize, _k: StreamKey) -> Query {
            Query::Done
        }
        fn can_query_stream(&self, _k: StreamKey) -> bool {
            false
        }
        fn query_stream(&self, _k: StreamKey) -> Query {
            Query::Done
        }
        fn elapsed_us(&self, _a: usize, _b: usize, _k: StreamKey) -> Option<f32> {
            None
        }
    }

    #[test]
    fn a_marked_stream_is_idle_only_once_the_driver_says_it_finished() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..3 {
            g.submit(1);
            assert!(t.mark_launched(key(1)));
        }
        g.submit(2);
        assert!(t.mark_launched(key(2)));
        assert_eq!(
            g.created.load(Ordering::Relaxed),
            0,
            "no event for a marked launch"
        );
        assert!(!t.all_done_on(0, &g), "three launches queued on stream 1");
        g.complete(1, 3);
        assert!(!t.all_done_on(0, &g), "stream 2 still runs");
        g.complete(2, 1);
        assert!(t.all_done_on(0, &g));
        // Seen finished, the marks are gone: a later launch is tracked afresh.
        g.submit(1);
        assert!(t.mark_launched(key(1)));
        assert!(!t.all_done_on(0, &g));
        g.complete(1, 1);
        assert!(t.all_done_on(0, &g));
    }

    #[test]
    fn marks_and_events_together_are_idle_when_both_are() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        launch(&t, &g, 1);
        g.submit(2);
        assert!(t.mark_launched(key(2)));
        g.complete(2, 1);
        assert!(!t.all_done_on(0, &g), "the evented stream still runs");
        g.complete(1, 1);
        assert!(t.all_done_on(0, &g));
    }

    #[test]
    fn marks_are_bounded_and_a_full_set_falls_back_to_events() {
        let t = Tracker::new();
        for s in 0..MAX_STREAMS {
            assert!(t.mark_launched(key(s + 10)));
        }
        assert!(
            t.mark_launched(key(10)),
            "an already marked stream stays marked"
        );
        assert!(!t.mark_launched(key(9_999)), "one stream too many");
    }

    #[test]
    fn a_driver_without_events_leaves_launches_untracked_not_stuck() {
        let t = Tracker::new();
        assert!(!t.launched(key(1), 5, UNKNOWN, &Broken));
        assert_eq!(t.queued(key(1), &Broken), Queued::default());
        assert!(t.all_done_on(0, &Broken));
        assert_eq!(t.estimate_us(5), None);
    }

    #[test]
    fn run_times_are_learned_from_launches_queued_behind_others() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        // Kernel 1 (40 µs) and kernel 2 (800 µs) alternate, always queued behind another.
        for _ in 0..4 {
            launch_work(&t, &g, 1, 1);
            launch_work(&t, &g, 1, 2);
        }
        for i in 0..8 {
            g.run(1, 1, if i % 2 == 0 { 40.0 } else { 800.0 });
        }
        assert_eq!(outstanding(&t, &g, 1), 0);
        let (e1, e2) = (t.estimate_us(1), t.estimate_us(2));
        assert_eq!(e1, Some(40.0), "kernel 1: {e1:?}");
        assert_eq!(e2, Some(800.0), "kernel 2: {e2:?}");
        // Queued work is the sum of the estimates; a kernel never seen counts as unknown.
        launch_work(&t, &g, 1, 1);
        launch_work(&t, &g, 1, 2);
        launch_work(&t, &g, 1, 3);
        let q = t.queued(key(1), &g);
        assert_eq!(q.count, 3);
        assert!((q.work_us - (40.0 + 800.0 + UNKNOWN)).abs() < 1e-3, "{q:?}");
    }

    #[test]
    fn run_times_are_learned_at_the_count_floor() {
        // What a yielding process does before anything is learned: two launches queued, then
        // one more each time the oldest ends (the queue never grows past the floor of 2).
        let (t, g) = (Tracker::new(), FakeGpu::default());
        launch_work(&t, &g, 1, 7);
        launch_work(&t, &g, 1, 7);
        for _ in 0..6 {
            g.run(1, 1, 300.0);
            assert_eq!(outstanding(&t, &g, 1), 1);
            launch_work(&t, &g, 1, 7);
        }
        assert_eq!(
            t.estimate_us(7),
            Some(300.0),
            "each launch queued behind the previous one is timed"
        );
    }

    #[test]
    fn a_launch_on_an_idle_stream_is_not_timed_across_the_gap() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        launch_work(&t, &g, 1, 1);
        g.run(1, 1, 50.0);
        assert_eq!(outstanding(&t, &g, 1), 0, "the stream went idle");
        g.idle(1, 10_000.0);
        launch_work(&t, &g, 1, 2); // started on an idle stream: its time includes the gap
        g.run(1, 1, 30.0);
        assert_eq!(outstanding(&t, &g, 1), 0);
        assert_eq!(
            t.estimate_us(2),
            None,
            "the 10 ms gap must not be taken as run time"
        );
    }

    #[test]
    fn an_estimate_rises_at_once_and_falls_slowly() {
        let mut e = Estimates::default();
        e.observe(7, 100.0);
        e.observe(7, 900.0);
        assert_eq!(e.get(7), Some(900.0));
        e.observe(7, 100.0);
        assert_eq!(e.get(7), Some(800.0));
        e.observe(7, f32::INFINITY);
        assert_eq!(e.get(7), Some(MAX_SAMPLE_US), "clamped");
        for w in 0..(MAX_ESTIMATES + 10) {
            e.observe(1000 + w, 1.0);
        }
        assert!(e.us.len() <= MAX_ESTIMATES, "bounded");
    }

    #[test]
    fn admission_keeps_the_floor_and_fills_the_budget_with_short_kernels() {
        let q = |count, work_us| Queued { count, work_us };
        // Below the floor: always (even unknown or long kernels), as the count bound did.
        assert!(admits(q(0, 0.0), 5000.0, 2, 1000));
        assert!(admits(q(1, 800.0), 800.0, 2, 1000));
        // At the floor: long kernels wait ...
        assert!(!admits(q(2, 1600.0), 800.0, 2, 1000));
        // ... short ones join while the budget holds.
        assert!(admits(q(2, 80.0), 40.0, 2, 1000));
        assert!(admits(q(10, 900.0), 100.0, 2, 1000));
        assert!(!admits(q(10, 900.0), 101.0, 2, 1000));
        // Never past the ring, and a zero budget is the floor alone.
        assert!(!admits(q(RING, 0.0), 0.0, 2, 1000));
        assert!(!admits(q(2, 0.0), 0.0, 2, 0));
    }
}
