//! Crash-safe persistence of definitions and live state.
//!
//! Layout under the host root:
//!
//! ```text
//! /etc/gvm-vgpu/vgpus/<uuid>.json   one persistent Definition per vGPU
//! /etc/gvm-vgpu/policy.json         the scheduling policy choice
//! /run/gvm-vgpu/live/<uuid>.json    live overrides + freeze flag (gone at reboot)
//! ```
//!
//! Every file is written atomically: a temp file `.<name>.tmp` in the same
//! directory, `fsync`, `rename` over the target, `fsync` of the directory. A
//! `kill -9` at any instant therefore leaves either the old or the new file, never
//! a half-written one; stray temp files are removed by [`Store::open`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use gvm_host_root::HostRoot;
use gvm_proto::Definition;
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::model::LiveState;

/// A persistence failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, writing, syncing or renaming a file failed.
    #[error("cannot write {path}: check that the directory exists and is writable by the daemon")]
    Write {
        /// File or directory.
        path: PathBuf,
        /// Cause (carries the errno).
        #[source]
        source: std::io::Error,
    },
    /// Reading a directory or file failed.
    #[error("cannot read {path}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Removing a file failed.
    #[error("cannot remove {path}")]
    Remove {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Encoding a value failed (a bug).
    #[error("cannot encode {path}")]
    Encode {
        /// Target file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// What [`Store::open`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Definitions by UUID.
    pub definitions: BTreeMap<Uuid, Definition>,
    /// Live state by UUID.
    pub live: BTreeMap<Uuid, LiveState>,
    /// Scheduling policy, when one was chosen.
    pub policy: Option<String>,
    /// Files that could not be used, with the reason (left in place for the operator).
    pub problems: Vec<String>,
    /// Stray temp files removed.
    pub cleaned: Vec<PathBuf>,
}

/// The daemon's on-disk state.
#[derive(Debug, Clone)]
pub struct Store {
    defs_dir: PathBuf,
    live_dir: PathBuf,
    policy_file: PathBuf,
}

#[derive(Serialize, serde::Deserialize)]
struct PolicyFile {
    policy: String,
}

impl Store {
    /// The store of `host`; creates its directories, removes stray temp files and
    /// loads everything.
    pub fn open(host: &HostRoot) -> Result<(Store, Loaded), StoreError> {
        let store = Store {
            defs_dir: host.config_dir().join("vgpus"),
            live_dir: host.run_dir().join("live"),
            policy_file: host.config_dir().join("policy.json"),
        };
        for dir in [&store.defs_dir, &store.live_dir] {
            fs::create_dir_all(dir).map_err(|source| StoreError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        let mut loaded = Loaded::default();
        loaded.cleaned.extend(clean_tmp(&store.defs_dir)?);
        loaded.cleaned.extend(clean_tmp(&store.live_dir)?);
        if let Some(parent) = store.policy_file.parent() {
            loaded.cleaned.extend(clean_tmp(parent)?);
        }
        for (uuid, def, path) in load_dir::<Definition>(&store.defs_dir, &mut loaded.problems)? {
            if def.uuid != uuid {
                loaded.problems.push(format!(
                    "{}: names vGPU {} inside; rename the file or fix its uuid",
                    path.display(),
                    def.uuid
                ));
                continue;
            }
            loaded.definitions.insert(uuid, def);
        }
        for (uuid, live, _) in load_dir::<LiveState>(&store.live_dir, &mut loaded.problems)? {
            loaded.live.insert(uuid, live);
        }
        match fs::read(&store.policy_file) {
            Ok(bytes) => match serde_json::from_slice::<PolicyFile>(&bytes) {
                Ok(p) => loaded.policy = Some(p.policy),
                Err(e) => loaded
                    .problems
                    .push(format!("{}: {e}", store.policy_file.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Read {
                    path: store.policy_file.clone(),
                    source,
                })
            }
        }
        Ok((store, loaded))
    }

    /// Directory of the definition files.
    pub fn definitions_dir(&self) -> &Path {
        &self.defs_dir
    }

    /// Persist a definition (atomically replaces any previous one).
    pub fn save_definition(&self, def: &Definition) -> Result<(), StoreError> {
        write_json(&self.defs_dir.join(format!("{}.json", def.uuid)), def)
    }

    /// Persist many definitions with one group commit: every temp file is written
    /// and synced, then all are renamed and the directory is synced once. A crash
    /// part-way leaves each definition either whole or absent (never half-written);
    /// the loader deletes temp files left behind.
    pub fn save_definitions(&self, defs: &[Definition]) -> Result<(), StoreError> {
        let mut staged = Vec::with_capacity(defs.len());
        for def in defs {
            let path = self.defs_dir.join(format!("{}.json", def.uuid));
            let tmp = write_synced_tmp(&path, &json_bytes(&path, def)?)?;
            staged.push((tmp, path));
        }
        for (tmp, path) in &staged {
            fs::rename(tmp, path).map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        }
        sync_dir(&self.defs_dir)
    }

    /// Delete a definition; absent is fine.
    pub fn remove_definition(&self, uuid: &Uuid) -> Result<(), StoreError> {
        remove(&self.defs_dir.join(format!("{uuid}.json")), &self.defs_dir)
    }

    /// Persist live state; an empty state deletes the file.
    pub fn save_live(&self, uuid: &Uuid, live: &LiveState) -> Result<(), StoreError> {
        let path = self.live_dir.join(format!("{uuid}.json"));
        if live.is_empty() {
            remove(&path, &self.live_dir)
        } else {
            write_json(&path, live)
        }
    }

    /// Persist the scheduling policy choice.
    pub fn save_policy(&self, policy: &str) -> Result<(), StoreError> {
        write_json(
            &self.policy_file,
            &PolicyFile {
                policy: policy.to_string(),
            },
        )
    }
}

/// Write `value` as JSON to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    write_atomic(path, &json_bytes(path, value)?)
}

fn json_bytes<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replace `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = write_synced_tmp(path, bytes)?;
    fs::rename(&tmp, path).map_err(|source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(dir)
}

/// Write `bytes` to the temp file beside `path` (`.<name>.tmp`) and sync it.
fn write_synced_tmp(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Write { path: p, source }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    f.write_all(bytes).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    Ok(tmp)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

fn remove(path: &Path, dir: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_tmp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn clean_tmp(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut cleaned = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cleaned),
        Err(source) => {
            return Err(StoreError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_tmp(&name) {
            let path = entry.path();
            remove(&path, dir)?;
            cleaned.push(path);
        }
    }
    Ok(cleaned)
}

fn load_dir<T: DeserializeOwned>(
    dir: &Path,
    problems: &mut Vec<String>,
) -> Result<Vec<(Uuid, T, PathBuf)>, StoreError> {
    let rerr = |source| StoreError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(rerr)? {
        let entry = entry.map_err(rerr)?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(uuid) = Uuid::parse_str(stem) else {
            problems.push(format!(
                "{}: file name is not <uuid>.json; ignored",
                path.display()
            ));
            continue;
        };
        let bytes = fs::read(&path).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => out.push((uuid, v, path)),
            Err(e) => problems.push(format!(
                "{}: {e}; fix or remove the file (it is ignored)",
                path.display()
            )),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_proto::Overrides;

    fn def(n: u128) -> Definition {
        Definition {
            uuid: Uuid::from_u128(n),
            parent: "p0".into(),
            mdev_type: "gvmsim-1".into(),
            type_name: Some("sim-4c".into()),
            kind: gvm_proto::VgpuKind::Mdev,
            kernel_name: None,
            autostart: n.is_multiple_of(2),
            overrides: Overrides {
                priority: Some(3),
                ..Overrides::default()
            },
            owner_uids: Vec::new(),
        }
    }

    fn temp_host() -> Option<(tempfile::TempDir, HostRoot)> {
        let dir = tempfile::tempdir().ok()?;
        let host = HostRoot::new(dir.path());
        Some((dir, host))
    }

    #[test]
    fn definitions_live_state_and_policy_survive_reopen() {
        let Some((_d, host)) = temp_host() else {
            return;
        };
        let (store, loaded) = Store::open(&host)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loaded.definitions.is_empty());
        for n in 1..=3 {
            assert!(store.save_definition(&def(n)).is_ok());
        }
        assert!(store.remove_definition(&Uuid::from_u128(2)).is_ok());
        assert!(store.remove_definition(&Uuid::from_u128(42)).is_ok());
        let live = LiveState {
            frozen: true,
            ..LiveState::default()
        };
        assert!(store.save_live(&Uuid::from_u128(1), &live).is_ok());
        assert!(store.save_live(&Uuid::from_u128(3), &live).is_ok());
        assert!(store
            .save_live(&Uuid::from_u128(3), &LiveState::default())
            .is_ok());
        assert!(store.save_policy("equal-share").is_ok());

        let (_, loaded) = Store::open(&host)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<u128> = loaded.definitions.keys().map(|u| u.as_u128()).collect();
        assert_eq!(keys, vec![1, 3]);
        assert_eq!(loaded.definitions.get(&Uuid::from_u128(3)), Some(&def(3)));
        assert_eq!(loaded.live.len(), 1);
        assert_eq!(loaded.live.get(&Uuid::from_u128(1)), Some(&live));
        assert_eq!(loaded.policy.as_deref(), Some("equal-share"));
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    }

    #[test]
    fn stray_temp_files_are_cleaned_and_bad_files_reported_not_fatal() {
        let Some((_d, host)) = temp_host() else {
            return;
        };
        let (store, _) = Store::open(&host)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = store.definitions_dir().to_path_buf();
        let tmp = dir.join(format!(".{}.json.tmp", Uuid::from_u128(5)));
        assert!(fs::write(&tmp, b"{\"half").is_ok());
        assert!(fs::write(dir.join(format!("{}.json", Uuid::from_u128(6))), b"garbage").is_ok());
        assert!(fs::write(dir.join("notes.json"), b"{}").is_ok());
        let mut other = def(8);
        other.uuid = Uuid::from_u128(9);
        assert!(write_json(&dir.join(format!("{}.json", Uuid::from_u128(8))), &other).is_ok());

        let (_, loaded) = Store::open(&host)
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.cleaned, vec![tmp.clone()]);
        assert!(!tmp.exists());
        assert!(loaded.definitions.is_empty());
        assert_eq!(loaded.problems.len(), 3, "{:?}", loaded.problems);
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let Some((d, _)) = temp_host() else { return };
        let path = d.path().join("x.json");
        assert!(write_atomic(&path, b"one").is_ok());
        assert!(write_atomic(&path, b"two").is_ok());
        assert_eq!(fs::read(&path).ok(), Some(b"two".to_vec()));
        let names: Vec<String> = fs::read_dir(d.path())
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["x.json".to_string()]);
    }
}
