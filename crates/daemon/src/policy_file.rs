//! `/etc/gvm-vgpu/policy.json`: the scheduling policy the daemon restores at start.
//!
//! The file holds a default configuration (policy, slice, window) and per-GPU ones keyed
//! by the GPU's PCI address (`"0000:3c:00.0"`), which stays the same across reboots and
//! driver reloads. Daemons before issue 19 keyed them by GVM's UVM index (`"8"`);
//! [`PolicyFile::migrate`] rekeys such entries through the host's GPU table at start, and
//! keeps an entry whose index maps to no GPU aside in `unmapped` (reported by
//! `policy show`, never applied, retried at every start and when a GPU registers) rather
//! than dropping it.
//! Everything here is pure; the scheduler reads and writes the file (atomically).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gvm_gcgroup::host_gpus::HostGpus;
use gvm_proto::PolicyConfig;
use gvm_sched::{EngineConfig, Nanos, Policy, DEFAULT_WINDOW};
use gvm_shim_abi::register::normalise_pci_bus_id;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// A scheduler failure, naming the file or GPU.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The configuration file exists but cannot be read.
    #[error("cannot read {path}: check its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause (carries the errno).
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid JSON of the expected shape.
    #[error(
        "{path} is not a valid policy file: fix or remove it (the default, best-effort, is used)"
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Saving the configuration failed.
    #[error("cannot save the scheduling policy")]
    Save(#[source] StoreError),
    /// A per-GPU entry is keyed by neither a PCI address nor (an older daemon's) GVM index.
    #[error(
        "the policy file has an entry for '{key}', which is neither a PCI address \
         (0000:3c:00.0) nor a GVM GPU index: fix or remove it"
    )]
    BadKey {
        /// The key.
        key: String,
    },
    /// A stored or requested configuration is out of range.
    #[error("scheduling configuration for {what} is invalid")]
    Invalid {
        /// `GPU 0000:3c:00.0`, `the default`.
        what: String,
        /// What is wrong, and what to do.
        #[source]
        source: gvm_sched::SchedError,
    },
}

/// One GPU's configuration as stored (µs and ms, for people editing the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredConfig {
    /// Policy name.
    pub policy: Policy,
    /// Slice in µs; absent = 2 ms / 1 ms default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeslice_us: Option<u64>,
    /// Window in ms.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
}

fn default_window_ms() -> u64 {
    DEFAULT_WINDOW.as_nanos() / 1_000_000
}

impl StoredConfig {
    /// As an engine configuration (not validated).
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            policy: self.policy,
            timeslice: self.timeslice_us.map(Nanos::from_micros),
            window: Nanos::from_millis(self.window_ms),
            exclusive: None,
        }
    }

    /// From an engine configuration.
    pub fn of(cfg: &EngineConfig) -> StoredConfig {
        StoredConfig {
            policy: cfg.policy,
            timeslice_us: cfg.timeslice.map(|t| t.as_nanos() / 1_000),
            window_ms: cfg.window.as_nanos() / 1_000_000,
        }
    }

    /// The wire form.
    pub fn wire(&self) -> PolicyConfig {
        PolicyConfig {
            policy: self.policy.to_string(),
            timeslice_us: self.timeslice_us,
            window_ms: self.window_ms,
        }
    }
}

/// `/etc/gvm-vgpu/policy.json`: the default (top level, so a file holding only
/// `{"policy": "..."}` still reads) and per-GPU choices keyed by PCI address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// Default for every GPU without its own entry.
    #[serde(flatten)]
    pub default: StoredConfig,
    /// Per-GPU configurations by PCI address (an older file: by GVM index, see
    /// [`PolicyFile::migrate`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpus: BTreeMap<String, StoredConfig>,
    /// An older file's per-GPU configurations whose GVM index maps to no GPU of this host:
    /// kept, not applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unmapped: BTreeMap<u32, StoredConfig>,
}

impl Default for PolicyFile {
    fn default() -> PolicyFile {
        PolicyFile {
            default: StoredConfig::of(&EngineConfig::default()),
            gpus: BTreeMap::new(),
            unmapped: BTreeMap::new(),
        }
    }
}

/// What [`PolicyFile::migrate`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migration {
    /// Entries rekeyed: (GVM index, position, PCI address).
    pub moved: Vec<(u32, u32, String)>,
    /// GVM indexes that map to no GPU, now (or still) in `unmapped`.
    pub unmapped: Vec<u32>,
    /// GVM indexes whose GPU already had an entry by PCI address: the PCI entry is kept,
    /// the old one goes to `unmapped`.
    pub shadowed: Vec<u32>,
}

/// A per-GPU key as written: a PCI address (normalised) or an older daemon's GVM index.
enum Key {
    Pci(String),
    Gvm(u32),
}

fn key(text: &str) -> Option<Key> {
    if let Some(pci) = normalise_pci_bus_id(text) {
        return Some(Key::Pci(pci));
    }
    text.parse().ok().map(Key::Gvm)
}

impl PolicyFile {
    /// Parses and validates a file's bytes.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<PolicyFile, SchedulerError> {
        let f: PolicyFile =
            serde_json::from_slice(bytes).map_err(|source| SchedulerError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        f.validate()?;
        Ok(f)
    }

    /// Checks every key and configuration.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        let check = |what: String, c: &StoredConfig| {
            c.engine()
                .validate()
                .map_err(|source| SchedulerError::Invalid { what, source })
        };
        check("the default".into(), &self.default)?;
        for (g, c) in &self.gpus {
            if key(g).is_none() {
                return Err(SchedulerError::BadKey { key: g.clone() });
            }
            check(format!("GPU {g}"), c)?;
        }
        for (g, c) in &self.unmapped {
            check(format!("GVM GPU index {g} (unmapped)"), c)?;
        }
        Ok(())
    }

    /// Rekeys an older daemon's entries (by GVM index) by the PCI address of the GPU
    /// `gpus` says has that index, normalises PCI keys, and moves entries whose index maps
    /// to no GPU into `unmapped` (an entry already there moves back once its GPU is
    /// found). Returns the new file and what changed.
    pub fn migrate(&self, gpus: &HostGpus) -> (PolicyFile, Migration) {
        let mut next = PolicyFile {
            default: self.default,
            gpus: BTreeMap::new(),
            unmapped: BTreeMap::new(),
        };
        let mut m = Migration::default();
        let mut legacy: Vec<(u32, StoredConfig)> = Vec::new();
        for (k, c) in &self.gpus {
            match key(k) {
                Some(Key::Pci(pci)) => {
                    next.gpus.insert(pci, *c);
                }
                Some(Key::Gvm(g)) => legacy.push((g, *c)),
                // `validate` refused such a file; keep what cannot be read as it is.
                None => {
                    next.gpus.insert(k.clone(), *c);
                }
            }
        }
        legacy.extend(self.unmapped.iter().map(|(g, c)| (*g, *c)));
        for (g, c) in legacy {
            match gpus.by_gvm_index(g) {
                Some(gpu) if next.gpus.contains_key(&gpu.pci) => {
                    m.shadowed.push(g);
                    next.unmapped.insert(g, c);
                }
                Some(gpu) => {
                    m.moved.push((g, gpu.position, gpu.pci.clone()));
                    next.gpus.insert(gpu.pci.clone(), c);
                }
                None => {
                    m.unmapped.push(g);
                    next.unmapped.insert(g, c);
                }
            }
        }
        (next, m)
    }

    /// The configuration of the GPU at PCI address `pci` (the default for `None`, a GPU
    /// without a PCI address).
    pub fn for_pci(&self, pci: Option<&str>) -> StoredConfig {
        pci.and_then(|p| self.gpus.get(p))
            .copied()
            .unwrap_or(self.default)
    }

    /// Applies a `policy set`: `gpus` (PCI addresses) = `None` changes the default and
    /// drops every per-GPU entry, `unmapped` ones included (the operator chose for every
    /// GPU); otherwise those GPUs get their own. Absent slice and window keep each GPU's
    /// current values. Returns the new file (validated).
    pub fn with_change(
        &self,
        policy: Policy,
        timeslice_us: Option<u64>,
        window_ms: Option<u64>,
        gpus: Option<&[String]>,
    ) -> Result<PolicyFile, SchedulerError> {
        let change = |c: StoredConfig| StoredConfig {
            policy,
            timeslice_us: timeslice_us.or(c.timeslice_us),
            window_ms: window_ms.unwrap_or(c.window_ms),
        };
        let mut next = self.clone();
        match gpus {
            None => {
                next.default = change(self.default);
                next.gpus.clear();
                next.unmapped.clear();
            }
            Some(list) => {
                for g in list {
                    next.gpus.insert(g.clone(), change(self.for_pci(Some(g))));
                }
            }
        }
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_error_chain::error_chain;

    const A: &str = "0000:3b:00.0";
    const B: &str = "0000:3c:00.0";

    fn host() -> HostGpus {
        HostGpus::new([(A, Some(0)), (B, Some(8))])
    }

    fn fixed(window_ms: u64) -> StoredConfig {
        StoredConfig {
            policy: Policy::FixedShare,
            timeslice_us: None,
            window_ms,
        }
    }

    #[test]
    fn a_default_only_file_reads_and_per_gpu_entries_round_trip_by_pci_address(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let p = Path::new("/etc/gvm-vgpu/policy.json");
        let legacy = PolicyFile::parse(p, br#"{"policy":"equal-share"}"#)?;
        assert_eq!(legacy.default.policy, Policy::EqualShare);
        assert_eq!(legacy.default.window_ms, 1000);
        assert_eq!(legacy.for_pci(Some(B)).policy, Policy::EqualShare);

        let f = legacy.with_change(
            Policy::FixedShare,
            Some(1024),
            Some(500),
            Some(&[B.to_string()]),
        )?;
        assert_eq!(f.for_pci(Some(A)).policy, Policy::EqualShare);
        assert_eq!(f.for_pci(None).policy, Policy::EqualShare);
        let b = f.for_pci(Some(B));
        assert_eq!(
            (b.policy, b.timeslice_us, b.window_ms),
            (Policy::FixedShare, Some(1024), 500)
        );
        let text = serde_json::to_string(&f)?;
        assert!(text.contains(&format!("\"{B}\"")), "{text}");
        assert_eq!(PolicyFile::parse(p, text.as_bytes())?, f);

        // No GPU: the default changes and per-GPU entries go, kept-aside ones too.
        let mut with_unmapped = f.clone();
        with_unmapped.unmapped.insert(16, fixed(1000));
        let all = with_unmapped.with_change(Policy::BestEffort, None, None, None)?;
        assert!(all.gpus.is_empty() && all.unmapped.is_empty());
        assert_eq!(all.default.window_ms, 1000);
        assert_eq!(all.for_pci(Some(B)).policy, Policy::BestEffort);
        Ok(())
    }

    #[test]
    fn bad_files_keys_and_values_are_refused_naming_what() {
        let p = Path::new("/x/policy.json");
        let e = PolicyFile::parse(p, b"{\"policy\":\"fair\"}").err();
        assert!(matches!(e, Some(SchedulerError::Parse { .. })), "{e:?}");
        let e = PolicyFile::parse(
            p,
            br#"{"policy":"equal-share","gpus":{"0000:3c:00.0":{"policy":"fixed-share","window_ms":0}}}"#,
        )
        .err();
        let Some(e) = e else {
            panic!("a zero window was accepted");
        };
        assert!(
            error_chain(&e).contains("GPU 0000:3c:00.0"),
            "{}",
            error_chain(&e)
        );
        let e = PolicyFile::parse(
            p,
            br#"{"policy":"equal-share","gpus":{"gpu1":{"policy":"fixed-share"}}}"#,
        )
        .err();
        assert!(
            matches!(&e, Some(SchedulerError::BadKey { key }) if key == "gpu1"),
            "{e:?}"
        );
        let f = PolicyFile::default();
        assert!(f
            .with_change(Policy::EqualShare, Some(1), None, None)
            .is_err());
        assert!(f
            .with_change(Policy::EqualShare, Some(2000), Some(1), None)
            .is_err());
    }

    #[test]
    fn an_older_file_keyed_by_gvm_index_is_rekeyed_by_pci_address_and_unknown_indexes_kept_aside(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let p = Path::new("/etc/gvm-vgpu/policy.json");
        let old = PolicyFile::parse(
            p,
            br#"{"policy":"best-effort","window_ms":1000,
                 "gpus":{"8":{"policy":"fixed-share","window_ms":250},
                         "16":{"policy":"equal-share","window_ms":1000}}}"#,
        )?;
        let (next, m) = old.migrate(&host());
        assert_eq!(m.moved, vec![(8, 1, B.to_string())]);
        assert_eq!(m.unmapped, vec![16]);
        assert_eq!(next.for_pci(Some(B)), fixed(250));
        assert_eq!(next.for_pci(Some(A)).policy, Policy::BestEffort);
        assert_eq!(
            next.unmapped.get(&16).map(|c| c.policy),
            Some(Policy::EqualShare)
        );
        assert!(next.gpus.keys().all(|k| k.contains(':')), "{:?}", next.gpus);
        // What was written reads back the same, and migrating again changes nothing.
        let again = PolicyFile::parse(p, serde_json::to_string(&next)?.as_bytes())?;
        assert_eq!(again, next);
        let (same, m2) = again.migrate(&host());
        assert_eq!(same, next);
        assert!(m2.moved.is_empty());
        // Once a GPU with index 16 appears, the kept-aside entry moves to it.
        let bigger = HostGpus::new([(A, Some(0)), (B, Some(8)), ("0000:af:00.0", Some(16))]);
        let (later, m3) = next.migrate(&bigger);
        assert_eq!(m3.moved, vec![(16, 2, "0000:af:00.0".to_string())]);
        assert!(later.unmapped.is_empty());
        Ok(())
    }

    #[test]
    fn a_pci_entry_wins_over_an_old_index_entry_for_the_same_gpu_which_is_kept_aside() {
        let mut f = PolicyFile::default();
        f.gpus.insert("0000:3C:00.0".into(), fixed(500));
        f.gpus.insert("8".into(), fixed(250));
        let (next, m) = f.migrate(&host());
        assert_eq!(next.for_pci(Some(B)), fixed(500), "keys are normalised");
        assert_eq!(m.shadowed, vec![8]);
        assert_eq!(next.unmapped.get(&8), Some(&fixed(250)));
    }
}
