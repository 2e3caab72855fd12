//! How long the daemon takes to relay a VM's busy/idle transition to the VMs it holds or
//! releases: from the transition being read off its channel (or another event that changed a
//! hold) to each changed snapshot written to its VM's channel. The channel itself (virtio-
//! serial, QEMU) is outside it, so this is the daemon's share of the relay, exported as the
//! Prometheus histogram `gvm_vgpu_guest_relay_seconds`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram's buckets, µs (then `+Inf`).
pub const BUCKETS_US: [u64; 10] = [25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000];

/// A lock-free histogram of relay times.
#[derive(Debug, Default)]
pub struct RelayLatency {
    /// Observations at or below each bound of [`BUCKETS_US`] (not cumulative), then above.
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl RelayLatency {
    /// One relay took `d`.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The smallest bucket bound (µs) at or below which a fraction `q` of the observations
    /// lie; `None` with no observations, `u64::MAX` when it is past the last bound.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= want {
                return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// The Prometheus text of the histogram.
    pub fn render(&self) -> String {
        let name = "gvm_vgpu_guest_relay_seconds";
        let mut out = format!(
            "# HELP {name} From a VM's busy/idle transition read (or another event changing a hold) to each VM's changed snapshot written to its channel.\n# TYPE {name} histogram\n"
        );
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{}", *b as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets_and_render_cumulatively() {
        let h = RelayLatency::default();
        assert_eq!(h.quantile_bound_us(0.5), None);
        for us in [10, 30, 30, 400, 2000, 90_000] {
            h.observe(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.quantile_bound_us(0.5), Some(50));
        assert_eq!(h.quantile_bound_us(0.99), Some(u64::MAX));
        let text = h.render();
        assert!(
            text.contains("gvm_vgpu_guest_relay_seconds_bucket{le=\"0.000025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gvm_vgpu_guest_relay_seconds_bucket{le=\"0.0005\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("gvm_vgpu_guest_relay_seconds_bucket{le=\"+Inf\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("gvm_vgpu_guest_relay_seconds_count 6"),
            "{text}"
        );
    }
}
