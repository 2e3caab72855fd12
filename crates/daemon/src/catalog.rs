//! The daemon's vGPU type catalog: where it is read from, reading it whole, and what the
//! last load or reload did (the `ping` answer carries it, `gvm-vgpu status` prints it).
//!
//! The daemon reads the built-in catalog overridden by its directories ([`CatalogSource`]:
//! `--catalog DIR`s, `$GVM_VGPU_CATALOG`, `/usr/share/gvm-vgpu/mdev-types`,
//! `/etc/gvm-vgpu/mdev-types`, under its root). A reload (`SIGHUP`, `systemctl reload
//! gvm-vgpud`) reads and checks every file first, outside the daemon's lock
//! ([`CatalogSource::load`]); only a catalog that loads whole replaces the one in use, in one
//! step (`Daemon::replace_catalog`), and a refused one leaves it in place with the reason kept
//! in [`CatalogState`] for `ping`. Nothing here touches the daemon's core.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use gvm_catalog::Catalog;
use gvm_proto::{CatalogStatus, ReloadFailure};

/// The catalog could not be loaded: the catalog's own error names the file (and line and
/// column when the file is malformed).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the vGPU type catalog from {dirs}")]
pub struct CatalogError {
    /// The directories read, in order, joined for the message.
    dirs: String,
    /// The catalog's error.
    #[source]
    source: gvm_catalog::Error,
}

/// Where the daemon's catalog is read from: the built-in catalog, then these directories in
/// order (a later one overrides a GPU model of the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSource {
    dirs: Vec<PathBuf>,
}

impl CatalogSource {
    /// Read the built-in catalog overridden by `dirs`, in order.
    pub fn new(dirs: Vec<PathBuf>) -> CatalogSource {
        CatalogSource { dirs }
    }

    /// The directories, in order; some may not exist (they are skipped).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Read and check the whole catalog now. A directory that does not exist (yet) is
    /// skipped, so one made after the start counts at the next reload.
    pub fn load(&self) -> Result<Catalog, CatalogError> {
        let present: Vec<PathBuf> = self.dirs.iter().filter(|d| d.is_dir()).cloned().collect();
        Catalog::load_with_builtin(&present).map_err(|source| CatalogError {
            dirs: if present.is_empty() {
                "the built-in types".to_string()
            } else {
                format!(
                    "the built-in types and {}",
                    present
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            source,
        })
    }
}

/// The files a catalog's models came from, in load order, each once.
pub fn files_of(catalog: &Catalog) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for m in catalog.models() {
        let f = m.source.display().to_string();
        if !files.contains(&f) {
            files.push(f);
        }
    }
    files
}

/// What the daemon tells about its catalog: where from, when loaded, the last refused reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogState {
    dirs: Vec<String>,
    files: Vec<String>,
    loaded_at: SystemTime,
    reloads: u64,
    last_failure: Option<(SystemTime, String)>,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl CatalogState {
    /// The catalog read at the start from `source`, made of `files`.
    pub fn loaded(source: &CatalogSource, files: Vec<String>, at: SystemTime) -> CatalogState {
        CatalogState {
            dirs: source
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            files,
            loaded_at: at,
            reloads: 0,
            last_failure: None,
        }
    }

    /// A reload put a catalog made of `files` in place: an earlier failure is over.
    pub fn reloaded(&mut self, files: Vec<String>, at: SystemTime) {
        self.files = files;
        self.loaded_at = at;
        self.reloads += 1;
        self.last_failure = None;
    }

    /// A reload was refused for `error` (the whole chain); the catalog in use stays.
    pub fn failed(&mut self, error: String, at: SystemTime) {
        self.last_failure = Some((at, error));
    }

    /// The `ping` answer's view.
    pub fn status(&self) -> CatalogStatus {
        CatalogStatus {
            dirs: self.dirs.clone(),
            files: self.files.clone(),
            loaded_at: unix_secs(self.loaded_at),
            reloads: self.reloads,
            last_reload_failed: self.last_failure.as_ref().map(|(at, e)| ReloadFailure {
                at: unix_secs(*at),
                error: e.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = "[gpu]\nmodel = \"GVM-SIM-80GB\"\n\n[[type]]\nname = \"sim-4c\"\n\
                        mdev_type = \"gvmsim-1\"\nmemory_limit = \"6GiB\"\npriority = 3\n\
                        max_instances = 16\nhost_swap = false\n";

    #[test]
    fn a_good_directory_overrides_the_builtin_model_and_its_file_is_listed() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temp dir");
        };
        assert!(std::fs::write(dir.path().join("gvm-sim.toml"), GOOD).is_ok());
        let missing = dir.path().join("not-there");
        let source = CatalogSource::new(vec![missing, dir.path().to_path_buf()]);
        let catalog = match source.load() {
            Ok(c) => c,
            Err(e) => panic!("{}", gvm_error_chain::error_chain(&e)),
        };
        let t = catalog
            .resolve("gvmsim-1", None)
            .map(|t| (t.memory_limit.0, t.priority));
        assert_eq!(t, Some((6 << 30, 3)));
        assert!(
            catalog.resolve("gvmsim-2", None).is_none(),
            "the model is replaced whole"
        );
        let files = files_of(&catalog);
        let ours = dir.path().join("gvm-sim.toml").display().to_string();
        assert!(files.contains(&ours), "{files:?}");
        assert_eq!(files.iter().filter(|f| **f == ours).count(), 1);
    }

    #[test]
    fn a_broken_file_fails_the_whole_load_naming_the_file() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temp dir");
        };
        assert!(std::fs::write(
            dir.path().join("a-good.toml"),
            GOOD.replace("GVM-SIM-80GB", "X")
                .replace("sim-4c", "x-4c")
                .replace("gvmsim-1", "x-1")
        )
        .is_ok());
        assert!(std::fs::write(dir.path().join("broken.toml"), "[gpu\nmodel = 1\n").is_ok());
        let source = CatalogSource::new(vec![dir.path().to_path_buf()]);
        let Err(e) = source.load() else {
            panic!("a broken file must fail the load");
        };
        let chain = gvm_error_chain::error_chain(&e);
        assert!(chain.contains("broken.toml"), "{chain}");
        assert!(
            chain.starts_with("cannot load the vGPU type catalog from the built-in types and "),
            "{chain}"
        );
    }

    #[test]
    fn a_failure_is_reported_until_the_next_good_reload() {
        let source = CatalogSource::new(vec![PathBuf::from("/etc/gvm-vgpu/mdev-types")]);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut s = CatalogState::loaded(&source, vec!["<builtin>/mdev-types/a.toml".into()], t0);
        assert_eq!(
            s.status().dirs,
            vec!["/etc/gvm-vgpu/mdev-types".to_string()]
        );
        assert_eq!(s.status().loaded_at, 1_000);
        s.failed("bad file".into(), t0 + Duration::from_secs(5));
        let st = s.status();
        assert_eq!(st.loaded_at, 1_000, "the catalog in use stays");
        assert_eq!(
            st.last_reload_failed,
            Some(ReloadFailure {
                at: 1_005,
                error: "bad file".into()
            })
        );
        s.reloaded(vec!["b.toml".into()], t0 + Duration::from_secs(9));
        let st = s.status();
        assert_eq!((st.loaded_at, st.reloads), (1_009, 1));
        assert_eq!(st.files, vec!["b.toml".to_string()]);
        assert!(st.last_reload_failed.is_none());
    }
}
