//! Knowing what a process still has on the GPU: one small ring of CUDA events per stream.
//!
//! A launch returns as soon as the work is queued; the shim learns that it ran only through
//! events. When a process must track its work (it is more important than another process and
//! publishes `busy`, or it must keep its queue short), the shim records an event on the
//! launch's stream right after each launch and keeps the last few per stream in a [`Ring`]:
//!
//! * **Bounded queue** ([`Tracker::outstanding`]): a process that must yield waits, before a
//!   launch, until fewer than `depth` of its recorded launches on that stream are unfinished.
//!   Its queue never holds more than `depth` launches, so a more important process that
//!   becomes busy waits for at most that much of its work to drain.
//! * **Idle detection** ([`Tracker::all_done`]): work on one stream runs in order, so the
//!   newest event of a stream completing means the stream is idle; the process is idle when
//!   every stream is.
//!
//! This module is the bookkeeping only, over an [`Events`] trait (the driver in production,
//! a fake in tests). A query that fails counts as complete: a broken event must never keep a
//! process waiting.

use std::sync::{Mutex, MutexGuard};

use crate::config::MAX_QUEUE_DEPTH;

/// Events kept per stream.
pub const RING: usize = MAX_QUEUE_DEPTH as usize;
/// Streams tracked per process; launches on further streams go untracked.
pub const MAX_STREAMS: usize = 64;

/// Which queue a launch went to: the context, the stream handle and whether the stream
/// handle is read in the per-thread default-stream flavour (`_ptsz` entry points).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
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
}

/// The recorded, not yet known complete events of one stream, oldest first.
#[derive(Debug)]
pub struct Ring {
    key: StreamKey,
    /// Every event made for this stream (reused round-robin).
    events: Vec<usize>,
    /// Index in `events` of the oldest pending one.
    head: usize,
    /// How many are pending.
    len: usize,
}

impl Ring {
    fn new(key: StreamKey) -> Ring {
        Ring {
            key,
            events: Vec::new(),
            head: 0,
            len: 0,
        }
    }

    fn pop_done(&mut self, ev: &dyn Events) {
        while self.len > 0 {
            let e = self.events[self.head];
            if ev.query(e, self.key) == Query::Pending {
                return;
            }
            self.head = (self.head + 1) % self.events.len();
            self.len -= 1;
        }
    }

    /// An event to record next: a fresh one while the ring grows, else the oldest (dropping
    /// it from the pending ones: a newer event on the same stream covers it).
    fn next_slot(&mut self, ev: &dyn Events) -> Option<usize> {
        let cap = self.events.len();
        if self.len < cap {
            return Some((self.head + self.len) % cap);
        }
        if cap < RING {
            let e = ev.create(self.key)?;
            // Insert at the logical end: rotate so that head is 0 first.
            self.events.rotate_left(self.head);
            self.head = 0;
            self.events.push(e);
            return Some(self.events.len() - 1);
        }
        // Full: recycle the oldest.
        let i = self.head;
        self.head = (self.head + 1) % cap;
        self.len -= 1;
        Some(i)
    }
}

/// The per-process tracker.
#[derive(Debug, Default)]
pub struct Tracker {
    rings: Mutex<Vec<Ring>>,
}

impl Tracker {
    /// Nothing tracked.
    pub const fn new() -> Tracker {
        Tracker {
            rings: Mutex::new(Vec::new()),
        }
    }

    fn rings(&self) -> MutexGuard<'_, Vec<Ring>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A launch on `key` succeeded: record an event after it. Returns whether it is tracked.
    pub fn launched(&self, key: StreamKey, ev: &dyn Events) -> bool {
        let mut rings = self.rings();
        let idx = match rings.iter().position(|r| r.key == key) {
            Some(i) => i,
            None if rings.len() < MAX_STREAMS => {
                rings.push(Ring::new(key));
                rings.len() - 1
            }
            None => return false,
        };
        let ring = &mut rings[idx];
        ring.pop_done(ev);
        let Some(slot) = ring.next_slot(ev) else {
            return false;
        };
        if !ev.record(ring.events[slot], key) {
            return false;
        }
        ring.len += 1;
        true
    }

    /// Unfinished tracked launches on `key` now.
    pub fn outstanding(&self, key: StreamKey, ev: &dyn Events) -> usize {
        let mut rings = self.rings();
        match rings.iter_mut().find(|r| r.key == key) {
            Some(r) => {
                r.pop_done(ev);
                r.len
            }
            None => 0,
        }
    }

    /// Whether every tracked stream is idle (its newest event complete).
    pub fn all_done(&self, ev: &dyn Events) -> bool {
        let mut rings = self.rings();
        for r in rings.iter_mut() {
            if r.len == 0 {
                continue;
            }
            let newest = r.events[(r.head + r.len - 1) % r.events.len()];
            if ev.query(newest, r.key) == Query::Pending {
                return false;
            }
            r.len = 0;
        }
        true
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
    }

    impl FakeGpu {
        fn submit(&self, stream: usize) {
            let mut s = self.state.lock().expect("fake");
            *s.submitted.entry(stream).or_default() += 1;
        }
        fn complete(&self, stream: usize, n: u64) {
            let mut s = self.state.lock().expect("fake");
            let sub = s.submitted.get(&stream).copied().unwrap_or(0);
            let c = s.completed.entry(stream).or_default();
            *c = (*c + n).min(sub);
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
    }

    fn key(stream: usize) -> StreamKey {
        StreamKey {
            ctx: 1,
            stream,
            ptsz: false,
        }
    }

    fn launch(t: &Tracker, g: &FakeGpu, stream: usize) {
        g.submit(stream);
        assert!(t.launched(key(stream), g));
    }

    #[test]
    fn outstanding_counts_unfinished_launches_per_stream() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..3 {
            launch(&t, &g, 7);
        }
        launch(&t, &g, 9);
        assert_eq!(t.outstanding(key(7), &g), 3);
        assert_eq!(t.outstanding(key(9), &g), 1);
        g.complete(7, 2);
        assert_eq!(t.outstanding(key(7), &g), 1);
        assert!(!t.all_done(&g));
        g.complete(7, 1);
        assert!(!t.all_done(&g), "stream 9 still runs");
        g.complete(9, 1);
        assert!(t.all_done(&g));
        assert_eq!(
            t.outstanding(key(42), &g),
            0,
            "unknown streams have nothing"
        );
    }

    #[test]
    fn a_full_ring_recycles_its_oldest_event_and_stays_correct() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..(RING + 5) {
            launch(&t, &g, 3);
        }
        assert_eq!(g.created.load(Ordering::Relaxed), RING, "events are reused");
        assert_eq!(t.outstanding(key(3), &g), RING);
        g.complete(3, (RING + 4) as u64);
        assert!(!t.all_done(&g), "the newest launch is still pending");
        assert!(t.outstanding(key(3), &g) >= 1);
        g.complete(3, 1);
        assert_eq!(t.outstanding(key(3), &g), 0);
        assert!(t.all_done(&g));
    }

    #[test]
    fn events_are_reused_once_complete() {
        let (t, g) = (Tracker::new(), FakeGpu::default());
        for _ in 0..50 {
            launch(&t, &g, 1);
            g.complete(1, 1);
        }
        assert_eq!(g.created.load(Ordering::Relaxed), 1, "one event suffices");
        assert!(t.all_done(&g));
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
    }

    #[test]
    fn a_driver_without_events_leaves_launches_untracked_not_stuck() {
        let t = Tracker::new();
        assert!(!t.launched(key(1), &Broken));
        assert_eq!(t.outstanding(key(1), &Broken), 0);
        assert!(t.all_done(&Broken));
    }
}
