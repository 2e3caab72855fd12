//! Knobs from the environment, used when no daemon hands the shim a control block.
//!
//! `GVM_MEMORY_LIMIT` (bytes, or with a unit: `20GiB`, `512M`, `unlimited`), `GVM_PRIORITY`
//! (0..=16, lower is more important, as GVM's `compute.priority`), `GVM_HOST_SWAP` (`1` lets
//! allocations over the limit spill to host-preferred managed memory) and `GVM_VGPU_UUID`
//! (the vGPU this process belongs to, [`crate::vgpu_env`]). Parsing is pure: the caller passes a lookup function.

use crate::error::Error;
use crate::vgpu_env::VGPU_UUID_ENV;

/// The memory limit meaning "no limit" (GVM's `memory.limit` default).
pub const UNLIMITED: u64 = u64::MAX;
/// GVM's default `compute.priority`.
pub const DEFAULT_PRIORITY: u32 = 8;
/// The highest (least important) priority value.
pub const MAX_PRIORITY: u32 = 16;

/// The knobs a gcgroup has, as the shim enforces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knobs {
    /// Device memory limit in bytes per GPU ([`UNLIMITED`] for none).
    pub memory_limit: u64,
    /// Compute priority, 0..=16.
    pub priority: u32,
    /// Whether allocations over the limit may spill to host memory.
    pub host_swap: bool,
    /// The vGPU UUID the process belongs to, if known.
    pub vgpu_uuid: Option<String>,
    /// Take part in priority arbitration with the other shim processes on the GPU
    /// (the best-effort policy; `GVM_ARBITRATE`, default on).
    pub arbitrate: bool,
    /// Launches a process may have in flight while it must yield (`GVM_QUEUE_DEPTH`,
    /// default [`DEFAULT_QUEUE_DEPTH`]; 0 never bounds).
    pub queue_depth: u32,
    /// Bound in-flight launches always, not only while a more important process is
    /// registered (`GVM_QUEUE_ALWAYS`; makes freezes take effect within about one kernel).
    pub queue_always: bool,
    /// How long after its last launch a process still counts as busy once its GPU work is
    /// done (`GVM_ARB_LINGER_US`), so the gaps of a launch-bound loop do not let others in.
    pub linger_us: u32,
    /// The longest a launch is held by the arbiter (`GVM_ARB_MAX_HOLD_MS`).
    pub max_hold_ms: u32,
    /// GPU time (µs) a process that yields may keep queued beyond `queue_depth` launches of
    /// short kernels (`GVM_QUEUE_BUDGET_US`, default [`DEFAULT_QUEUE_BUDGET_US`] = off: the
    /// count alone). Applies to the arbitration bound, not to `queue_always` (freezes and
    /// time slices keep the strict count). It trades the more important process's latency
    /// for this one's throughput (docs/shim.md, colocation). Process-local: not part of the
    /// control block.
    pub queue_budget_us: u32,
    /// Hold this process's queued work on the GPU itself while a more important process is
    /// busy (`GVM_GPU_GATE`, default on): a stream wait on the arbitration block's word in
    /// front of each launch, so the other waits for at most the kernel running, not the
    /// whole queue, and no count bound is needed. Falls back to the CPU-side count bound when
    /// the driver cannot map the block. Process-local: not part of the control block.
    pub gpu_gate: bool,
    /// How long one registration with gvm-vgpud (or, in a guest, the agent) may take, ms
    /// (`GVM_SHIM_REGISTER_TIMEOUT_MS`, default [`DEFAULT_REGISTER_TIMEOUT_MS`], at most
    /// [`MAX_REGISTER_TIMEOUT_MS`]). The first one delays the program's first CUDA call by at
    /// most this; past it the process runs standalone until a retry a second later takes.
    /// Raise it where the manager answers slowly: an emulated (TCG) or overloaded guest.
    /// Process-local: not part of the control block.
    pub register_timeout_ms: u32,
}

/// Default bound of one registration, ms.
pub const DEFAULT_REGISTER_TIMEOUT_MS: u32 = 100;
/// The largest accepted bound of one registration, ms.
pub const MAX_REGISTER_TIMEOUT_MS: u32 = 10_000;

/// Default in-flight bound while yielding.
pub const DEFAULT_QUEUE_DEPTH: u32 = 2;
/// The largest in-flight bound (events kept per stream).
pub const MAX_QUEUE_DEPTH: u32 = 16;
/// Default linger after the last launch.
pub const DEFAULT_LINGER_US: u32 = 2_000;
/// Default maximum hold of one launch.
pub const DEFAULT_MAX_HOLD_MS: u32 = 1_000;
/// Default GPU-time budget of a yielding process's queue beyond its count floor: off, so
/// a more important process waits behind at most `queue_depth` launches (the latency
/// promise of priority); a batch job may opt in (1000 µs gave it +4 points of throughput
/// for +2 % on the other's median TTFT on an H200).
pub const DEFAULT_QUEUE_BUDGET_US: u32 = 0;
/// The largest accepted queue budget.
pub const MAX_QUEUE_BUDGET_US: u32 = 100_000;

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            memory_limit: UNLIMITED,
            priority: DEFAULT_PRIORITY,
            host_swap: false,
            vgpu_uuid: None,
            arbitrate: true,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            queue_always: false,
            linger_us: DEFAULT_LINGER_US,
            max_hold_ms: DEFAULT_MAX_HOLD_MS,
            queue_budget_us: DEFAULT_QUEUE_BUDGET_US,
            gpu_gate: true,
            register_timeout_ms: DEFAULT_REGISTER_TIMEOUT_MS,
        }
    }
}

impl Knobs {
    /// Read the knobs through `get` (normally `std::env::var`). Bad values are skipped (the
    /// default stays) and returned as errors for the caller to log.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> (Knobs, Vec<Error>) {
        let mut knobs = Knobs::default();
        let mut errors = Vec::new();
        if let Some(v) = get("GVM_MEMORY_LIMIT") {
            match parse_bytes(&v) {
                Some(b) => knobs.memory_limit = b,
                None => errors.push(bad(
                    "GVM_MEMORY_LIMIT",
                    v,
                    "use bytes or a size such as 20GiB, 512MiB, 6G, or 'unlimited'",
                )),
            }
        }
        if let Some(v) = get("GVM_PRIORITY") {
            match v.trim().parse::<u32>() {
                Ok(p) if p <= MAX_PRIORITY => knobs.priority = p,
                _ => errors.push(bad(
                    "GVM_PRIORITY",
                    v,
                    "use an integer from 0 (highest) to 16",
                )),
            }
        }
        if let Some(v) = get("GVM_HOST_SWAP") {
            match parse_bool(&v) {
                Some(b) => knobs.host_swap = b,
                None => errors.push(bad("GVM_HOST_SWAP", v, "use 1 or 0")),
            }
        }
        if let Some(v) = get(VGPU_UUID_ENV) {
            if is_uuid(v.trim()) {
                knobs.vgpu_uuid = Some(v.trim().to_ascii_lowercase());
            } else {
                errors.push(bad(VGPU_UUID_ENV, v, "use a 36-character UUID"));
            }
        }
        for (var, cell) in [
            ("GVM_ARBITRATE", &mut knobs.arbitrate),
            ("GVM_QUEUE_ALWAYS", &mut knobs.queue_always),
            ("GVM_GPU_GATE", &mut knobs.gpu_gate),
        ] {
            if let Some(v) = get(var) {
                match parse_bool(&v) {
                    Some(b) => *cell = b,
                    None => errors.push(bad(var, v, "use 1 or 0")),
                }
            }
        }
        let numbers: [(&'static str, &mut u32, u32, &'static str); 4] = [
            (
                "GVM_QUEUE_DEPTH",
                &mut knobs.queue_depth,
                MAX_QUEUE_DEPTH,
                "use a count of launches from 0 (unbounded) to 16",
            ),
            (
                "GVM_ARB_LINGER_US",
                &mut knobs.linger_us,
                1_000_000,
                "use microseconds from 0 to 1000000",
            ),
            (
                "GVM_ARB_MAX_HOLD_MS",
                &mut knobs.max_hold_ms,
                600_000,
                "use milliseconds from 0 to 600000",
            ),
            (
                "GVM_QUEUE_BUDGET_US",
                &mut knobs.queue_budget_us,
                MAX_QUEUE_BUDGET_US,
                "use microseconds of GPU time from 0 (count only) to 100000",
            ),
        ];
        for (var, cell, max, reason) in numbers {
            if let Some(v) = get(var) {
                match v.trim().parse::<u32>() {
                    Ok(n) if n <= max => *cell = n,
                    _ => errors.push(bad(var, v, reason)),
                }
            }
        }
        if let Some(v) = get("GVM_SHIM_REGISTER_TIMEOUT_MS") {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_REGISTER_TIMEOUT_MS).contains(&n) => {
                    knobs.register_timeout_ms = n
                }
                _ => errors.push(bad(
                    "GVM_SHIM_REGISTER_TIMEOUT_MS",
                    v,
                    "use milliseconds from 1 to 10000",
                )),
            }
        }
        (knobs, errors)
    }
}

fn bad(var: &'static str, value: String, reason: &'static str) -> Error {
    Error::BadEnv { var, value, reason }
}

/// Parse a byte size: plain bytes, or a number with a unit. `K/M/G/T` and `KiB/MiB/GiB/TiB`
/// are powers of 1024 (as the CLI's `--memory-limit 6G`), `KB/MB/GB/TB` powers of 1000;
/// `unlimited`, `max` and GVM's 18446744073709551615 mean no limit.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") || s.eq_ignore_ascii_case("max") {
        return Some(UNLIMITED);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse `1/0/true/false/yes/no/on/off`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("1073741824"), Some(1 << 30));
        assert_eq!(parse_bytes("20GiB"), Some(20 << 30));
        assert_eq!(parse_bytes("6G"), Some(6 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("unlimited"), Some(UNLIMITED));
        assert_eq!(parse_bytes("18446744073709551615"), Some(UNLIMITED));
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("12XB"), None);
        assert_eq!(parse_bytes("99999999999T"), None, "overflow is rejected");
    }

    #[test]
    fn env_knobs_are_read_and_bad_values_reported() {
        let (k, errs) = Knobs::from_lookup(lookup(&[
            ("GVM_MEMORY_LIMIT", "4GiB"),
            ("GVM_PRIORITY", "2"),
            ("GVM_HOST_SWAP", "1"),
            ("GVM_VGPU_UUID", "5B4F1D7C-0000-4000-8000-000000000001"),
        ]));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(k.memory_limit, 4 << 30);
        assert_eq!(k.priority, 2);
        assert!(k.host_swap);
        assert_eq!(
            k.vgpu_uuid.as_deref(),
            Some("5b4f1d7c-0000-4000-8000-000000000001")
        );

        let (k, errs) = Knobs::from_lookup(lookup(&[
            ("GVM_MEMORY_LIMIT", "lots"),
            ("GVM_PRIORITY", "17"),
            ("GVM_VGPU_UUID", "nope"),
        ]));
        assert_eq!(k, Knobs::default());
        assert_eq!(errs.len(), 3);
        assert!(errs[0].to_string().contains("GVM_MEMORY_LIMIT"));

        let (k, errs) = Knobs::from_lookup(lookup(&[
            ("GVM_ARBITRATE", "0"),
            ("GVM_QUEUE_DEPTH", "1"),
            ("GVM_QUEUE_ALWAYS", "yes"),
            ("GVM_ARB_LINGER_US", "500"),
            ("GVM_ARB_MAX_HOLD_MS", "20"),
            ("GVM_QUEUE_BUDGET_US", "1000"),
            ("GVM_GPU_GATE", "0"),
            ("GVM_SHIM_REGISTER_TIMEOUT_MS", "2000"),
        ]));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(k.register_timeout_ms, 2000);
        assert!(!k.arbitrate && k.queue_always && !k.gpu_gate);
        assert!(Knobs::default().gpu_gate, "on unless turned off");
        assert_eq!((k.queue_depth, k.linger_us, k.max_hold_ms), (1, 500, 20));
        assert_eq!(k.queue_budget_us, 1000);
        let (k, errs) = Knobs::from_lookup(lookup(&[
            ("GVM_QUEUE_DEPTH", "17"),
            ("GVM_ARBITRATE", "maybe"),
            ("GVM_QUEUE_BUDGET_US", "100001"),
            ("GVM_GPU_GATE", "sometimes"),
            ("GVM_SHIM_REGISTER_TIMEOUT_MS", "0"),
        ]));
        assert_eq!(k, Knobs::default());
        assert_eq!(errs.len(), 5);
        assert!(errs
            .iter()
            .any(|e| e.to_string().contains("GVM_SHIM_REGISTER_TIMEOUT_MS")));
        assert!(errs.iter().any(|e| e.to_string().contains("GVM_GPU_GATE")));
        assert!(errs
            .iter()
            .any(|e| e.to_string().contains("GVM_QUEUE_BUDGET_US")));
        assert!(errs
            .iter()
            .any(|e| e.to_string().contains("GVM_QUEUE_DEPTH")));
    }
}
