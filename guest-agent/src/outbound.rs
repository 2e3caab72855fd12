//! When the agent sends its v2 messages: busy transitions, rate-bounded and
//! coalesced, and snapshot acknowledgements, re-sent (bounded) as the state
//! reached changes.
//!
//! Pure decisions over a caller-supplied clock; [`crate::agent`] sends the lines.
//!
//! - **Busy**: a transition of the VM's busy state is sent at once unless the last
//!   busy line went less than [`BUSY_MIN_GAP`] ago (at most 100 a second); then the
//!   state at the end of the gap is sent, if it differs from the last sent. A
//!   busy-idle-busy flicker inside one gap sends nothing. A new connection starts
//!   with nothing sent, so its first look sends the current state.
//! - **Ack**: every applied snapshot is acknowledged at once. While the state
//!   reached differs in what the host waits for (frozen, held, the process count,
//!   and for a freeze whether nothing is in flight) it is acknowledged again, at
//!   most every [`ACK_MIN_GAP`] and [`MAX_ACKS_PER_GENERATION`] times per
//!   generation. A snapshot already applied (or older) is answered with the
//!   current acknowledgement, at most every [`ACK_MIN_GAP`] (repeats inside the
//!   gap get one acknowledgement at its end).

use gvm_agent_proto::v2::{Ack, Reached};
use std::time::{Duration, Instant};

/// Shortest time between two busy lines (at most 100 a second: half the host's bucket for
/// protocol-2 lines, docs/agent.md). It is also how long a VM's idle may wait to be said
/// after its busy, so how long a held VM may stay held after the work that held it.
pub const BUSY_MIN_GAP: Duration = Duration::from_millis(10);
/// Shortest time between two acknowledgements.
pub const ACK_MIN_GAP: Duration = Duration::from_millis(2);
/// The most acknowledgements sent for one generation.
pub const MAX_ACKS_PER_GENERATION: u32 = 64;

/// The busy line's rate bound.
#[derive(Debug, Default)]
pub struct BusyTracker {
    sent: Option<bool>,
    at: Option<Instant>,
}

impl BusyTracker {
    /// A new connection: nothing sent on it yet.
    pub fn reset(&mut self) {
        *self = BusyTracker::default();
    }

    /// The VM is `busy` now: the busy line to send, if one is due.
    pub fn poll(&mut self, now: Instant, busy: bool) -> Option<bool> {
        if self.sent == Some(busy) {
            return None;
        }
        if self
            .at
            .is_some_and(|at| now.duration_since(at) < BUSY_MIN_GAP)
        {
            return None;
        }
        self.sent = Some(busy);
        self.at = Some(now);
        Some(busy)
    }

    /// When the pending transition may go, if one is held back.
    pub fn due(&self, busy: bool) -> Option<Instant> {
        (self.sent != Some(busy)).then(|| self.at.map(|a| a + BUSY_MIN_GAP))?
    }
}

/// What of a [`Reached`] the host waits on.
fn key(r: &Reached) -> (bool, bool, u32, bool) {
    (r.frozen, r.held, r.processes, r.frozen && r.in_flight == 0)
}

/// The acknowledgements of the snapshot in force.
#[derive(Debug, Default)]
pub struct AckTracker {
    generation: u64,
    sent: Option<Reached>,
    count: u32,
    at: Option<Instant>,
    /// A repeat came within the gap: acknowledge once the gap is over.
    owed: bool,
}

impl AckTracker {
    fn gap_ok(&self, now: Instant) -> bool {
        self.at
            .is_none_or(|at| now.duration_since(at) >= ACK_MIN_GAP)
    }

    fn record(&mut self, now: Instant, generation: u64, reached: Reached) -> Ack {
        self.sent = Some(reached);
        self.count = self.count.saturating_add(1);
        self.at = Some(now);
        self.owed = false;
        Ack {
            generation,
            reached,
        }
    }

    /// A new snapshot was applied: its acknowledgement, at once.
    pub fn applied(&mut self, now: Instant, generation: u64, reached: Reached) -> Ack {
        self.generation = generation;
        self.count = 0;
        self.record(now, generation, reached)
    }

    /// The host offered a snapshot already applied (a resend, a reconnect): the
    /// current acknowledgement again; if one went just now, once the gap is over
    /// ([`AckTracker::poll`]), however many repeats came meanwhile.
    pub fn repeat(&mut self, now: Instant, reached: Reached) -> Option<Ack> {
        if self.generation == 0 {
            return None;
        }
        if !self.gap_ok(now) {
            self.owed = true;
            return None;
        }
        Some(self.record(now, self.generation, reached))
    }

    /// The state reached now: an acknowledgement to re-send, if it changed in what
    /// the host waits on and the bounds allow.
    pub fn poll(&mut self, now: Instant, reached: Reached) -> Option<Ack> {
        let sent = self.sent?;
        if !self.gap_ok(now) {
            return None;
        }
        let changed = key(&sent) != key(&reached) && self.count < MAX_ACKS_PER_GENERATION;
        if !changed && !self.owed {
            return None;
        }
        Some(self.record(now, self.generation, reached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reached(frozen: bool, in_flight: u32) -> Reached {
        Reached {
            frozen,
            held: false,
            processes: 1,
            in_flight,
            memory_limit: None,
            priority: Some(8),
        }
    }

    #[test]
    fn busy_transitions_are_bounded_and_coalesced() {
        let mut b = BusyTracker::default();
        let t = Instant::now();
        assert_eq!(
            b.poll(t, false),
            Some(false),
            "a new connection hears the state"
        );
        assert_eq!(b.poll(t, false), None);
        // Within the gap: held back, then sent once the gap is over.
        assert_eq!(b.poll(t + Duration::from_millis(1), true), None);
        assert_eq!(b.due(true), Some(t + BUSY_MIN_GAP));
        assert_eq!(b.poll(t + BUSY_MIN_GAP, true), Some(true));
        // A flicker inside one gap sends nothing.
        let t2 = t + BUSY_MIN_GAP;
        assert_eq!(b.poll(t2 + Duration::from_millis(5), false), None);
        assert_eq!(b.poll(t2 + Duration::from_millis(30), true), None);
        // A flood of 1000 flips in one second sends at most one line per gap.
        let mut sent = 0;
        for i in 0..1000u64 {
            if b.poll(
                t + Duration::from_secs(1) + Duration::from_millis(i),
                i % 2 == 0,
            )
            .is_some()
            {
                sent += 1;
            }
        }
        let most = 1000 / BUSY_MIN_GAP.as_millis() + 1;
        assert!(sent as u128 <= most, "{sent} lines, at most {most}");
        b.reset();
        assert_eq!(b.poll(t, true), Some(true));
    }

    #[test]
    fn a_freeze_is_acked_again_when_nothing_is_in_flight_and_acks_are_bounded() {
        let mut a = AckTracker::default();
        let t = Instant::now();
        assert!(a.poll(t, reached(true, 3)).is_none(), "nothing applied yet");
        let first = a.applied(t, 5, reached(true, 3));
        assert_eq!(first.generation, 5);
        assert!(!first.freeze_complete());
        let later = t + Duration::from_millis(10);
        assert!(
            a.poll(later, reached(true, 2)).is_none(),
            "in-flight count alone"
        );
        let done = a.poll(later, reached(true, 0)).unwrap();
        assert!(done.freeze_complete() && done.generation == 5);
        assert!(a
            .poll(later + Duration::from_millis(10), reached(true, 0))
            .is_none());
        // Repeats answer with the current generation, rate-bounded.
        let r = a
            .repeat(later + Duration::from_millis(20), reached(true, 0))
            .unwrap();
        assert_eq!(r.generation, 5);
        assert!(a
            .repeat(later + Duration::from_millis(20), reached(true, 0))
            .is_none());
        // A state flapping forever is acked a bounded number of times.
        let mut n = 0;
        for i in 0..1000u64 {
            let at = later + Duration::from_millis(100 + 10 * i);
            if a.poll(at, reached(true, u32::from(i % 2 == 0))).is_some() {
                n += 1;
            }
        }
        assert!(n <= MAX_ACKS_PER_GENERATION, "{n}");
    }
}
