//! Arbitration between VMs, as pure decisions over a fake-able clock: which VMs are held
//! because a more important VM is busy, and the cap on how long one VM's busy claims may
//! hold the others.
//!
//! A VM's guest agent reports the VM's busy/idle transitions (agent protocol 2). A VM is
//! *held* (the `hold` of its state snapshot: its guest holds every launch) while another VM
//! of strictly higher priority (lower number) claims busy. VMs contend per GPU: the caller
//! ([`crate::agent_ingest::GuestTable::rearbitrate`]) applies [`holds`] and [`holders`] to the
//! VMs of each GPU apart. A guest may lie about being busy
//! — it is untrusted — so each VM's claims may hold others for at most [`HoldCap::max`] per
//! [`HoldCap::window`]: past that its busy is ignored until the window ends, the cap hit is
//! counted and the daemon says so. A VM that is idle, or whose priority is not higher than
//! anyone's, holds nobody and uses none of its cap.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The default window of [`HoldCap`].
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// The default most of a window one VM's busy claims may hold others.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_millis(900);

/// How long one VM's busy claims have held others in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCap {
    /// The window.
    pub window: Duration,
    /// The most of a window this VM may hold others.
    pub max: Duration,
    window_start: Option<Instant>,
    used: Duration,
    holding_since: Option<Instant>,
    /// The window in which the cap was last reached (a hit counts once per window).
    hit_window: Option<Instant>,
    /// Times the cap was reached.
    pub hits: u64,
}

impl Default for HoldCap {
    fn default() -> HoldCap {
        HoldCap::new(DEFAULT_WINDOW, DEFAULT_MAX_HOLD)
    }
}

impl HoldCap {
    /// A cap of `max` per `window` (`max` is clamped to the window).
    pub fn new(window: Duration, max: Duration) -> HoldCap {
        HoldCap {
            window,
            max: max.min(window),
            window_start: None,
            used: Duration::ZERO,
            holding_since: None,
            hit_window: None,
            hits: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.window {
            // Whatever was being held goes on being counted from the new window's start.
            self.window_start = Some(now);
            self.used = Duration::ZERO;
            if self.holding_since.is_some() {
                self.holding_since = Some(now);
            }
        }
    }

    fn used_at(&self, now: Instant) -> Duration {
        self.used
            + self
                .holding_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// Whether this VM's busy claim may hold others at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.used_at(now) < self.max
    }

    /// Record whether this VM holds someone from `now` on; returns true when this call found
    /// the cap reached (a hit, counted once per window).
    pub fn holding(&mut self, now: Instant, holding: bool) -> bool {
        self.roll(now);
        match (self.holding_since, holding) {
            (None, true) => self.holding_since = Some(now),
            (Some(s), false) => {
                self.used += now.saturating_duration_since(s);
                self.holding_since = None;
            }
            _ => {}
        }
        let hit = holding && self.used_at(now) >= self.max && self.hit_window != self.window_start;
        if hit {
            self.hit_window = self.window_start;
            self.hits += 1;
        }
        hit
    }

    /// This VM's busy claim, which would hold others, is ignored at `now` because the cap is
    /// reached: true the first time in this window (a hit, counted once per window, whether
    /// the cap was reached while holding or a claim came after).
    pub fn capped(&mut self, now: Instant) -> bool {
        self.roll(now);
        let hit = self.hit_window != self.window_start;
        if hit {
            self.hit_window = self.window_start;
            self.hits += 1;
        }
        hit
    }

    /// When the cap will be reached if this VM keeps holding (to re-decide then).
    pub fn reached_at(&self) -> Option<Instant> {
        let since = self.holding_since?;
        Some(since + self.max.saturating_sub(self.used))
    }

    /// When the current window ends.
    pub fn window_end(&self) -> Option<Instant> {
        self.window_start.map(|s| s + self.window)
    }
}

/// One VM as the arbitration sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vm {
    /// Its vGPU's priority, 0..=16 (lower is more important).
    pub priority: u32,
    /// Whether it claims busy and its cap still lets the claim count.
    pub busy: bool,
}

/// For every VM, whether it is held: another VM of strictly higher priority is busy. (A VM
/// is never of strictly higher priority than itself, so "another" needs no check, and the
/// answer is one pass: held iff the most important busy VM is more important.)
pub fn holds<K: Ord + Clone>(vms: &BTreeMap<K, Vm>) -> BTreeMap<K, bool> {
    let top_busy = vms.values().filter(|v| v.busy).map(|v| v.priority).min();
    vms.iter()
        .map(|(k, me)| (k.clone(), top_busy.is_some_and(|p| p < me.priority)))
        .collect()
}

/// For every VM, whether a hold may come at any time: another VM of strictly higher
/// priority shares its GPU, busy or not (one pass, as [`holds`]). The guest of such a VM
/// keeps its processes' GPU-side gate armed (agent protocol 3, `outranked`).
pub fn outranked<K: Ord + Clone>(vms: &BTreeMap<K, Vm>) -> BTreeMap<K, bool> {
    let top = vms.values().map(|v| v.priority).min();
    vms.iter()
        .map(|(k, me)| (k.clone(), top.is_some_and(|p| p < me.priority)))
        .collect()
}

/// For every VM, whether its busy claims may hold someone: another VM of strictly lower
/// priority shares its GPU (one pass, as [`holds`]). The guest of such a VM tells its busy
/// state precisely (agent protocol 3, `outranks`).
pub fn outranks<K: Ord + Clone>(vms: &BTreeMap<K, Vm>) -> BTreeMap<K, bool> {
    let lowest = vms.values().map(|v| v.priority).max();
    vms.iter()
        .map(|(k, me)| (k.clone(), lowest.is_some_and(|p| p > me.priority)))
        .collect()
}

/// For every VM, whether its busy claim holds anyone now: it is busy and some VM is of
/// strictly lower priority (one pass, as [`holds`]).
pub fn holders<K: Ord + Clone>(vms: &BTreeMap<K, Vm>) -> BTreeMap<K, bool> {
    let lowest = vms.values().map(|v| v.priority).max();
    vms.iter()
        .map(|(k, me)| {
            (
                k.clone(),
                me.busy && lowest.is_some_and(|p| p > me.priority),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vms(list: &[(&'static str, u32, bool)]) -> BTreeMap<&'static str, Vm> {
        list.iter()
            .map(|(k, p, b)| {
                (
                    *k,
                    Vm {
                        priority: *p,
                        busy: *b,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_busy_more_important_vm_holds_the_less_important_ones_only() {
        let h = holds(&vms(&[
            ("a", 2, true),
            ("b", 8, false),
            ("c", 2, false),
            ("d", 12, true),
        ]));
        assert!(h["b"], "8 yields to a busy 2");
        assert!(h["d"]);
        assert!(!h["c"], "an equal priority is never held");
        assert!(!h["a"], "nobody more important is busy");
        let idle = holds(&vms(&[("a", 2, false), ("b", 8, false)]));
        assert!(idle.values().all(|h| !h), "idle VMs hold nobody");
        let who = holders(&vms(&[("a", 2, true), ("b", 8, false), ("c", 0, true)]));
        assert_eq!((who["a"], who["b"], who["c"]), (true, false, true));
        let alone = holders(&vms(&[("a", 2, true)]));
        assert!(!alone["a"], "a VM alone holds nobody");
    }

    #[test]
    fn the_one_pass_answers_agree_with_the_definition_for_every_small_case() {
        // Every assignment of priorities 0..3 and busy flags to three VMs.
        for code in 0..(4u32 * 2).pow(3) {
            let mut m = BTreeMap::new();
            for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
                let c = (code >> (3 * i)) & 7;
                m.insert(
                    k,
                    Vm {
                        priority: c >> 1,
                        busy: c & 1 == 1,
                    },
                );
            }
            let (h, who, out, over) = (holds(&m), holders(&m), outranked(&m), outranks(&m));
            for (k, me) in &m {
                let held = m
                    .iter()
                    .any(|(o, v)| o != k && v.busy && v.priority < me.priority);
                let holding = me.busy && m.iter().any(|(o, v)| o != k && v.priority > me.priority);
                let under = m.iter().any(|(o, v)| o != k && v.priority < me.priority);
                let above = m.iter().any(|(o, v)| o != k && v.priority > me.priority);
                assert_eq!(
                    (h[k], who[k], out[k], over[k]),
                    (held, holding, under, above),
                    "{m:?}, VM {k}"
                );
                assert!(!who[k] || over[k], "a VM holding someone outranks them");
                assert!(!h[k] || out[k], "a held VM is outranked");
            }
        }
    }

    #[test]
    fn a_vm_claiming_busy_forever_holds_others_at_most_the_cap_per_window() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut cap = HoldCap::new(Duration::from_millis(1000), Duration::from_millis(300));
        assert!(cap.allows(ms(0)));
        assert!(!cap.holding(ms(0), true));
        assert_eq!(cap.reached_at(), Some(ms(300)));
        assert!(cap.allows(ms(299)));
        assert!(
            !cap.allows(ms(300)),
            "the cap is reached after 300 ms of holding"
        );
        assert!(cap.holding(ms(300), true), "the hit is reported once");
        assert!(!cap.holding(ms(400), true));
        assert_eq!(cap.hits, 1);
        assert_eq!(cap.window_end(), Some(ms(1000)));
        assert!(cap.allows(ms(1000)), "a new window lets it hold again");
        assert!(!cap.allows(ms(1300)));
    }

    #[test]
    fn a_claim_ignored_for_the_cap_is_one_hit_per_window() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut cap = HoldCap::new(Duration::from_millis(1000), Duration::from_millis(300));
        cap.holding(ms(0), true);
        cap.holding(ms(300), false); // released just as the cap was reached: no hit yet
        assert_eq!(cap.hits, 0);
        assert!(!cap.allows(ms(400)));
        assert!(cap.capped(ms(400)), "the ignored claim is the window's hit");
        assert!(!cap.capped(ms(500)), "once per window");
        assert_eq!(cap.hits, 1);
        assert!(cap.allows(ms(1000)));
        cap.holding(ms(1000), true);
        assert!(
            cap.holding(ms(1300), true),
            "reached while holding: the next window's hit"
        );
        assert!(!cap.capped(ms(1400)), "and not twice");
        assert_eq!(cap.hits, 2);
    }

    #[test]
    fn holding_in_short_bursts_adds_up_within_a_window() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut cap = HoldCap::new(Duration::from_millis(1000), Duration::from_millis(300));
        for i in 0..3u64 {
            cap.holding(ms(i * 200), true);
            cap.holding(ms(i * 200 + 90), false);
        }
        assert!(cap.allows(ms(700)), "270 ms used");
        cap.holding(ms(700), true);
        assert!(!cap.allows(ms(730)), "300 ms used");
        cap.holding(ms(750), false);
        assert!(cap.allows(ms(1000)));
    }
}
