//! Tests of the adaptive linger with a fake clock (nanosecond counters passed in).
use super::*;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;

/// An eager server: kernels 300 us apart (Python between them), batch kernels of 5 ms.
#[test]
fn eager_gaps_beside_long_batch_kernels_keep_the_hold() {
    let mut l = Linger::new(50 * US, 10 * MS);
    let mut t = 0;
    for _ in 0..50 {
        l.on_launch(t);
        t += 300 * US;
    }
    l.on_batch_kernel(5 * MS);
    assert!(l.linger_ns() >= 300 * US, "linger {}", l.linger_ns());
    // 300 us after the last launch the fixed 50 us linger would have opened the hold.
    assert!(l.holding(t - 300 * US + 299 * US));
}

/// A graph server: bursts 5 us apart, then an idle gap of 100 ms that is not learned.
#[test]
fn graph_bursts_keep_the_short_default_and_release_between_requests() {
    let mut l = Linger::new(50 * US, 10 * MS);
    let mut t = 0;
    for _ in 0..3 {
        for _ in 0..20 {
            l.on_launch(t);
            t += 5 * US;
        }
        t += 100 * MS;
    }
    l.on_batch_kernel(5 * MS);
    assert!(
        l.gap_ns().is_some_and(|g| g < 20 * US),
        "gap {:?}",
        l.gap_ns()
    );
    assert_eq!(l.linger_ns(), 50 * US);
    assert!(!l.holding(t));
}

/// Short batch kernels: a released kernel ends before the next server launch, so no extra hold.
#[test]
fn short_batch_kernels_do_not_extend_the_hold() {
    let mut l = Linger::new(50 * US, 10 * MS);
    for i in 0..20 {
        l.on_launch(i * 300 * US);
    }
    l.on_batch_kernel(100 * US);
    assert_eq!(l.linger_ns(), 50 * US);
}

/// Long gaps and kernels never push the linger past its cap.
#[test]
fn the_linger_is_capped() {
    let mut l = Linger::new(50 * US, 2 * MS);
    for i in 0..20 {
        l.on_launch(i * 1_900 * US);
    }
    l.on_batch_kernel(50 * MS);
    assert_eq!(l.linger_ns(), 2 * MS);
}
