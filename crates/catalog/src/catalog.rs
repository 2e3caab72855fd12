//! The whole catalog: every GPU model file found in the catalog directories, checked together.
//!
//! Directories are read in order, each one's `*.toml` files sorted by name. A model defined in a
//! later directory replaces the earlier model of the same name, which is how operators override a
//! shipped file (`/etc/gvm-vgpu/mdev-types` after `/usr/share/gvm-vgpu/mdev-types`); a file that
//! keeps the model name and lists no types hides it. Within one directory a model name may appear
//! once. After overrides, type names and kernel bindings must be unique across the catalog.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use gvm_host_root::HostRoot;

use crate::error::{Error, Result};
use crate::model::{GpuModel, VgpuType};
use crate::parse::{binding_field, parse_file, ParsedFile, Pos};

/// Environment variable listing extra catalog directories (colon-separated), read before the
/// shipped and local ones.
pub const CATALOG_ENV: &str = "GVM_VGPU_CATALOG";

/// All known vGPU types, by GPU model.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: Vec<GpuModel>,
}

impl Catalog {
    /// Load every `*.toml` in each directory (sorted by file name); later directories override an
    /// earlier model with the same `model`. A missing directory is skipped.
    pub fn load_dirs(dirs: &[PathBuf]) -> Result<Catalog> {
        let mut files = Vec::new();
        for (layer, dir) in dirs.iter().enumerate() {
            for path in toml_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                files.push((layer, parse_file(&path, &text)?));
            }
        }
        Self::from_layers(files)
    }

    /// The built-in catalog (layer 0) overridden by every `*.toml` in `dirs`, in order: what the
    /// CLI and the daemon load, so a host needs no installed catalog and an operator's file in
    /// `/etc/gvm-vgpu/mdev-types` replaces the shipped model of the same name.
    pub fn load_with_builtin(dirs: &[PathBuf]) -> Result<Catalog> {
        let mut files = Vec::new();
        for (name, text) in crate::BUILTIN_FILES {
            let path = Path::new("<builtin>/mdev-types").join(name);
            files.push((0, parse_file(&path, text)?));
        }
        for (layer, dir) in dirs.iter().enumerate() {
            for path in toml_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                files.push((layer + 1, parse_file(&path, &text)?));
            }
        }
        Self::from_layers(files)
    }

    /// Parse and validate one file's text; `file` is only used in messages and as the source.
    pub fn parse_str(file: &Path, text: &str) -> Result<GpuModel> {
        parse_file(file, text).map(|p| p.model)
    }

    /// Build a catalog from in-memory files, all in one layer (no overrides between them).
    pub fn from_texts<'a>(files: impl IntoIterator<Item = (&'a Path, &'a str)>) -> Result<Catalog> {
        let mut layers = Vec::new();
        for (path, text) in files {
            layers.push((0, parse_file(path, text)?));
        }
        Self::from_layers(layers)
    }

    /// The catalog directories of a host: those in `$GVM_VGPU_CATALOG` (colon-separated) if set,
    /// then [`HostRoot::shipped_catalog_dir`], then [`HostRoot::local_catalog_dir`].
    pub fn default_dirs(host: &HostRoot) -> Vec<PathBuf> {
        Self::dirs_with_env(host, std::env::var_os(CATALOG_ENV).as_deref())
    }

    /// [`Catalog::default_dirs`] with the environment value passed in.
    pub fn dirs_with_env(host: &HostRoot, env: Option<&OsStr>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = env
            .map(|v| {
                std::env::split_paths(v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        dirs.push(host.shipped_catalog_dir());
        dirs.push(host.local_catalog_dir());
        dirs
    }

    /// The GPU models, in load order.
    pub fn models(&self) -> &[GpuModel] {
        &self.models
    }

    /// The model with this name.
    pub fn model(&self, model: &str) -> Option<&GpuModel> {
        self.models.iter().find(|m| m.model == model)
    }

    /// Every type of every model.
    pub fn types(&self) -> impl Iterator<Item = &VgpuType> {
        self.models.iter().flat_map(|m| m.types.iter())
    }

    /// The type with this catalog name; the error suggests a close name.
    pub fn type_by_name(&self, name: &str) -> Result<&VgpuType> {
        if let Some(t) = self.types().find(|t| t.name == name) {
            return Ok(t);
        }
        Err(Error::UnknownType {
            name: name.to_string(),
            suggestion: suggest(name, self.types().map(|t| t.name.as_str())).map(str::to_string),
        })
    }

    /// The catalog type for a kernel mdev type with this id and (if it has one) `name` attribute.
    /// A binding by type id wins over a binding by name.
    pub fn resolve(&self, type_id: &str, kernel_name: Option<&str>) -> Option<&VgpuType> {
        let by_id = self.types().find(|t| {
            matches!(t.binding, crate::Binding::TypeId(_)) && t.binding.matches(type_id, None)
        });
        by_id.or_else(|| {
            self.types().find(|t| {
                matches!(t.binding, crate::Binding::TypeName(_))
                    && t.binding.matches(type_id, kernel_name)
            })
        })
    }

    /// The catalog type for an SR-IOV VF vGPU type with this name (`NVIDIA H100-20C`, a line
    /// of the VF's `creatable_vgpu_types`). VF types bind by name only: their numeric IDs are
    /// renumbered between driver releases and share nothing with mdev type ids, so a
    /// `mdev_type` binding never matches a VF. NVIDIA gives a profile the same name on both
    /// paths, so one `mdev_name` binds the mdev type on older GPUs and the VF type on
    /// Ada/Hopper/Blackwell.
    pub fn resolve_vf(&self, kernel_name: &str) -> Option<&VgpuType> {
        self.types().find(|t| {
            matches!(t.binding, crate::Binding::TypeName(_))
                && t.binding.matches("", Some(kernel_name))
        })
    }

    fn from_layers(files: Vec<(usize, ParsedFile)>) -> Result<Catalog> {
        // Overrides: a later layer replaces an earlier model; the same layer may not repeat one.
        let mut kept: Vec<(usize, ParsedFile)> = Vec::new();
        for (layer, parsed) in files {
            match kept
                .iter()
                .position(|(_, k)| k.model.model == parsed.model.model)
            {
                Some(i) if kept[i].0 == layer => {
                    let first = &kept[i].1;
                    return Err(invalid(
                        &parsed.model.source,
                        parsed.model_pos,
                        "gpu.model",
                        format!(
                            "model '{}' is already defined in {}:{}; model names must be unique \
                             (to override a shipped model, put the file in a later catalog directory)",
                            parsed.model.model,
                            first.model.source.display(),
                            first.model_pos.line
                        ),
                    ));
                }
                Some(i) => kept[i] = (layer, parsed),
                None => kept.push((layer, parsed)),
            }
        }
        check_unique_across_models(&kept)?;
        Ok(Catalog {
            models: kept.into_iter().map(|(_, p)| p.model).collect(),
        })
    }
}

/// Type names and bindings unique across models; the error points at the second occurrence.
fn check_unique_across_models(files: &[(usize, ParsedFile)]) -> Result<()> {
    let entries: Vec<(&ParsedFile, usize)> = files
        .iter()
        .flat_map(|(_, p)| (0..p.model.types.len()).map(move |i| (p, i)))
        .collect();
    for (n, &(file, i)) in entries.iter().enumerate() {
        let ty = &file.model.types[i];
        for &(prev_file, j) in &entries[..n] {
            if std::ptr::eq(prev_file, file) {
                continue; // checked within the file already
            }
            let prev = &prev_file.model.types[j];
            let prev_pos = &prev_file.type_pos[j];
            if prev.name == ty.name {
                return Err(invalid(
                    &file.model.source,
                    file.type_pos[i].name,
                    &format!("type[{i}].name"),
                    format!(
                        "type name '{}' is already used by model '{}' at {}:{}; type names must be unique across the catalog",
                        ty.name,
                        prev.model,
                        prev_file.model.source.display(),
                        prev_pos.name.line
                    ),
                ));
            }
            if prev.binding == ty.binding {
                return Err(invalid(
                    &file.model.source,
                    file.type_pos[i].binding,
                    &binding_field(&format!("type[{i}]"), &ty.binding),
                    format!(
                        "{} is already bound by type '{}' of model '{}' at {}:{}; each kernel type may be bound once",
                        ty.binding,
                        prev.name,
                        prev.model,
                        prev_file.model.source.display(),
                        prev_pos.binding.line
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn invalid(file: &Path, pos: Pos, field: &str, message: String) -> Error {
    Error::invalid(file, pos.line, pos.column, field, &message)
}

/// The `*.toml` regular files of `dir`, sorted; none if `dir` does not exist.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let read_dir_err = |source: io::Error| Error::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_dir_err(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_dir_err)?.path();
        if path.extension() == Some(OsStr::new("toml")) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The candidate closest to `name`: a case-insensitive match, else the one within a small edit
/// distance (about a third of the name's length, at least 2).
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (name.chars().count() / 3).max(2);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c.to_lowercase() == lower {
            return Some(c);
        }
        let d = edit_distance(&lower, &c.to_lowercase());
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
