//! Spreading periodic per-owner work over the rescan ticks.
//!
//! Some checks must visit every owner process regularly: re-listing its GPU
//! registrations (a process may register another GPU at any time) and reading its
//! knobs back (drift, totals). Doing all of them in one tick holds the daemon's lock
//! for as long as thousands of file reads take, and every API request waits behind
//! it. A [`Sweep`] instead hands out a slice of the keys on each tick, sized so that
//! every key is visited once per period, and resumes after the last key it handed out,
//! so keys added or removed in between neither restart nor skip the round.
//!
//! Pure: the caller passes the clock and the current keys.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::time::{Duration, Instant};

/// A round-robin visit of a changing key set, once per period, spread over calls.
#[derive(Debug, Clone)]
pub struct Sweep<K> {
    period: Duration,
    last: Option<Instant>,
    cursor: Option<K>,
    /// Visits earned but not yet handed out (fractions carry over between calls).
    owed: f64,
}

impl<K: Ord + Copy> Sweep<K> {
    /// A sweep that visits every key once per `period` (at least 1 ms).
    pub fn new(period: Duration) -> Self {
        Sweep {
            period: period.max(Duration::from_millis(1)),
            last: None,
            cursor: None,
            owed: 0.0,
        }
    }

    /// Visit every key once per `period` (at least 1 ms) from now on, resuming where the
    /// round is.
    pub fn set_period(&mut self, period: Duration) {
        self.period = period.max(Duration::from_millis(1));
    }

    /// The keys of `keys` to visit now. The first call only starts the clock (the
    /// caller does a full pass at start); afterwards each call returns the share of
    /// `keys` earned by the time elapsed since the previous call, never more than all.
    pub fn take(&mut self, now: Instant, keys: &BTreeSet<K>) -> Vec<K> {
        let Some(last) = self.last.replace(now) else {
            return Vec::new();
        };
        if keys.is_empty() {
            self.owed = 0.0;
            return Vec::new();
        }
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let len = keys.len() as f64;
        self.owed = (self.owed + len * elapsed / self.period.as_secs_f64()).min(len);
        let n = self.owed.floor();
        self.owed -= n;
        let n = n as usize;
        let out: Vec<K> = match self.cursor {
            Some(c) => keys
                .range((Bound::Excluded(c), Bound::Unbounded))
                .chain(keys.range(..=c))
                .take(n)
                .copied()
                .collect(),
            None => keys.iter().take(n).copied().collect(),
        };
        if let Some(k) = out.last() {
            self.cursor = Some(*k);
        }
        out
    }

    /// Note that every key was just visited (a forced full pass): the round restarts.
    pub fn visited_all(&mut self, now: Instant) {
        self.last = Some(now);
        self.cursor = None;
        self.owed = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: std::ops::Range<u32>) -> BTreeSet<u32> {
        r.collect()
    }

    #[test]
    fn every_key_is_visited_once_per_period_in_even_slices() {
        let t0 = Instant::now();
        let mut s = Sweep::new(Duration::from_secs(1));
        let k = keys(0..1000);
        assert!(s.take(t0, &k).is_empty(), "the first call starts the clock");
        let mut seen = Vec::new();
        for i in 1..=5 {
            let got = s.take(t0 + Duration::from_millis(200 * i), &k);
            assert_eq!(got.len(), 200, "tick {i}");
            seen.extend(got);
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        // The next round starts over from the first key.
        let got = s.take(t0 + Duration::from_millis(1200), &k);
        assert_eq!(got.first(), Some(&0));
    }

    #[test]
    fn fractions_carry_over_and_a_long_gap_visits_each_key_at_most_once() {
        let t0 = Instant::now();
        let mut s = Sweep::new(Duration::from_secs(10));
        let k = keys(0..3);
        s.take(t0, &k);
        let mut total = 0;
        for i in 1..=50 {
            total += s.take(t0 + Duration::from_millis(200 * i), &k).len();
        }
        assert_eq!(
            total, 3,
            "3 keys over 10 s, visited in 10 s of 200 ms ticks"
        );
        let got = s.take(t0 + Duration::from_secs(100), &k);
        assert_eq!(got.len(), 3, "a long stall still visits each key once");
    }

    #[test]
    fn keys_added_or_removed_mid_round_neither_restart_nor_skip_it() {
        let t0 = Instant::now();
        let mut s = Sweep::new(Duration::from_secs(1));
        let mut k = keys(0..10);
        s.take(t0, &k);
        let a = s.take(t0 + Duration::from_millis(500), &k);
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        k.remove(&5);
        k.remove(&2);
        k.insert(100);
        let b = s.take(t0 + Duration::from_millis(1000), &k);
        assert_eq!(b, vec![6, 7, 8, 9], "resumes after key 4");
        let b = s.take(t0 + Duration::from_millis(1300), &k);
        assert_eq!(
            b,
            vec![100, 0, 1],
            "the new key is in this round, then it wraps"
        );
        s.visited_all(t0 + Duration::from_millis(1300));
        let c = s.take(t0 + Duration::from_millis(1500), &k);
        assert_eq!(c, vec![0]);
        let empty = BTreeSet::new();
        assert!(s.take(t0 + Duration::from_secs(5), &empty).is_empty());
    }
}
