//! The allocation ledger: which device memory the process holds, per GPU, against its limit.
//!
//! Every allocation path reserves its size first ([`Ledger::try_reserve`], a lock-free
//! compare-and-swap on the device's total that fails when the limit would be passed), then
//! either commits the reservation under the pointer or handle the driver returned, or cancels
//! it when the driver failed. Frees look the pointer up and give its bytes back. Allocations
//! placed in host-preferred managed memory because the process was over its limit are
//! recorded as swap: they count in `memory.swap.current`, not against the limit.
//!
//! What is counted: `cuMemAlloc`, pitch, managed, async and pool allocations (the bytes asked
//! for; memory a pool keeps cached after a free is not seen), and physical `cuMemCreate`
//! allocations on a device (mapping them with `cuMemMap` adds nothing). Device ordinals from
//! [`MAX_DEVICES`] up share the last slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Devices tracked separately.
pub const MAX_DEVICES: usize = 64;

/// What an allocation is keyed by: a device pointer, or a physical allocation handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A `CUdeviceptr` from `cuMemAlloc*`.
    Ptr(u64),
    /// A `CUmemGenericAllocationHandle` from `cuMemCreate`.
    Handle(u64),
}

/// How the memory was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `cuMemAlloc`/`cuMemAllocPitch`.
    Device,
    /// `cuMemAllocManaged` asked for by the program (counted as device memory: it may
    /// all become resident).
    Managed,
    /// Stream-ordered `cuMemAllocAsync`/`cuMemAllocFromPoolAsync`.
    Async,
    /// Physical memory from `cuMemCreate`.
    Physical,
    /// Over-limit memory the shim placed in host-preferred managed memory.
    Swap,
}

/// One live allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The device ordinal.
    pub device: i32,
    /// Bytes.
    pub size: u64,
    /// How it was obtained.
    pub kind: Kind,
}

/// Bytes set aside for an allocation in flight; commit or cancel it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "commit or cancel the reservation"]
pub struct Reservation {
    device: i32,
    size: u64,
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// The device ordinal.
    pub device: i32,
    /// Bytes held on it now.
    pub current: u64,
    /// The requested size.
    pub size: u64,
    /// The limit.
    pub limit: u64,
}

/// The per-process ledger.
#[derive(Debug)]
pub struct Ledger {
    per_device: [AtomicU64; MAX_DEVICES],
    swap: AtomicU64,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

fn slot(device: i32) -> usize {
    usize::try_from(device).unwrap_or(0).min(MAX_DEVICES - 1)
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger {
            per_device: std::array::from_fn(|_| AtomicU64::new(0)),
            swap: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent
        // enough for accounting: keep going rather than failing every later call.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set `size` bytes aside on `device` if that keeps it within `limit`.
    pub fn try_reserve(
        &self,
        device: i32,
        size: u64,
        limit: u64,
    ) -> Result<Reservation, OverLimit> {
        let cell = &self.per_device[slot(device)];
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let next = match current.checked_add(size) {
                Some(n) if n <= limit => n,
                _ => {
                    return Err(OverLimit {
                        device,
                        current,
                        size,
                        limit,
                    })
                }
            };
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Reservation { device, size }),
                Err(now) => current = now,
            }
        }
    }

    /// Give a reservation back (the driver call failed).
    pub fn cancel(&self, r: Reservation) {
        self.per_device[slot(r.device)].fetch_sub(r.size, Ordering::AcqRel);
    }

    /// Record the allocation the reservation was for, under `key`, with its final size
    /// (`actual`, e.g. a pitched allocation's padded size).
    pub fn commit(&self, r: Reservation, key: Key, kind: Kind, actual: u64) {
        let cell = &self.per_device[slot(r.device)];
        if actual > r.size {
            cell.fetch_add(actual - r.size, Ordering::AcqRel);
        } else {
            cell.fetch_sub(r.size - actual, Ordering::AcqRel);
        }
        let entry = Entry {
            device: r.device,
            size: actual,
            kind,
        };
        let old = self.entries().insert(key, entry);
        if let Some(old) = old {
            // The driver reused an address whose free we never saw: drop the stale entry.
            self.forget(&old);
        }
    }

    /// Record over-limit memory placed in host-preferred managed memory.
    pub fn record_swap(&self, key: Key, device: i32, size: u64) {
        self.swap.fetch_add(size, Ordering::AcqRel);
        let entry = Entry {
            device,
            size,
            kind: Kind::Swap,
        };
        if let Some(old) = self.entries().insert(key, entry) {
            self.forget(&old);
        }
    }

    /// Forget the allocation under `key` (it was freed); returns it if it was known.
    pub fn release(&self, key: Key) -> Option<Entry> {
        let e = self.entries().remove(&key)?;
        self.forget(&e);
        Some(e)
    }

    fn forget(&self, e: &Entry) {
        let cell = if e.kind == Kind::Swap {
            &self.swap
        } else {
            &self.per_device[slot(e.device)]
        };
        // Saturating: never wrap below zero even if the books were already off.
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(e.size))
        });
    }

    /// Bytes held on `device` (reservations in flight included).
    pub fn device_current(&self, device: i32) -> u64 {
        self.per_device[slot(device)].load(Ordering::Acquire)
    }

    /// Bytes held on all devices.
    pub fn total_current(&self) -> u64 {
        self.per_device
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .fold(0u64, u64::saturating_add)
    }

    /// Bytes placed in host memory over the limit.
    pub fn swap_current(&self) -> u64 {
        self.swap.load(Ordering::Acquire)
    }

    /// Number of live allocations.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no allocation is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `cuMemGetInfo` should report: the card's numbers shrunk to the limit, so that
/// frameworks size their pools to it. Returns `(free, total)`.
pub fn visible_mem_info(real_free: u64, real_total: u64, used: u64, limit: u64) -> (u64, u64) {
    if limit == u64::MAX {
        return (real_free, real_total);
    }
    let total = real_total.min(limit);
    let free = real_free.min(total.saturating_sub(used));
    (free, total)
}

/// Whether an over-limit allocation of `size` may go to managed memory: never ask for more
/// managed memory than the card has free (that can hang a GPU).
pub fn swap_fits(size: u64, card_free: u64) -> bool {
    size <= card_free
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_limit_is_enforced_and_frees_give_bytes_back() {
        let l = Ledger::new();
        let r = l.try_reserve(0, GIB, 2 * GIB).expect("first fits");
        l.commit(r, Key::Ptr(0x1000), Kind::Device, GIB);
        let over = l
            .try_reserve(0, 2 * GIB, 2 * GIB)
            .expect_err("over the limit");
        assert_eq!(over.current, GIB);
        assert_eq!(
            l.device_current(0),
            GIB,
            "a failed reservation changes nothing"
        );
        // Another device has its own budget.
        let r1 = l.try_reserve(1, 2 * GIB, 2 * GIB).expect("other device");
        l.cancel(r1);
        assert_eq!(l.device_current(1), 0);
        assert_eq!(l.release(Key::Ptr(0x1000)).map(|e| e.size), Some(GIB));
        assert_eq!(l.release(Key::Ptr(0x1000)), None, "double free is ignored");
        assert_eq!(l.total_current(), 0);
        let r = l
            .try_reserve(0, 2 * GIB, 2 * GIB)
            .expect("fits after the free");
        l.cancel(r);
    }

    #[test]
    fn handles_and_pointers_do_not_collide_and_pitch_adjusts() {
        let l = Ledger::new();
        let r = l.try_reserve(0, 100, u64::MAX).expect("unlimited");
        l.commit(r, Key::Ptr(7), Kind::Device, 128);
        let r = l.try_reserve(0, 50, u64::MAX).expect("unlimited");
        l.commit(r, Key::Handle(7), Kind::Physical, 50);
        assert_eq!(l.device_current(0), 178);
        assert_eq!(
            l.release(Key::Handle(7)).map(|e| e.kind),
            Some(Kind::Physical)
        );
        assert_eq!(l.device_current(0), 128);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn swap_is_counted_apart_from_device_memory() {
        let l = Ledger::new();
        l.record_swap(Key::Ptr(0x9000), 0, 3 * GIB);
        assert_eq!(l.swap_current(), 3 * GIB);
        assert_eq!(l.device_current(0), 0);
        l.release(Key::Ptr(0x9000));
        assert_eq!(l.swap_current(), 0);
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let l = std::sync::Arc::new(Ledger::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| l.try_reserve(0, 1, 1000).is_ok())
                        .count()
                })
            })
            .collect();
        let granted: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(granted, 1000);
        assert_eq!(l.device_current(0), 1000);
    }

    #[test]
    fn mem_info_reports_the_limit() {
        assert_eq!(visible_mem_info(70, 80, 0, u64::MAX), (70, 80));
        assert_eq!(
            visible_mem_info(70 * GIB, 80 * GIB, GIB, 4 * GIB),
            (3 * GIB, 4 * GIB)
        );
        assert_eq!(
            visible_mem_info(GIB, 80 * GIB, 0, 4 * GIB),
            (GIB, 4 * GIB),
            "card nearly full"
        );
        assert_eq!(
            visible_mem_info(70, 80, 10, 5),
            (0, 5),
            "over the limit shows nothing free"
        );
        assert!(swap_fits(5, 5) && !swap_fits(6, 5));
    }
}
