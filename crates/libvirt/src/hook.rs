//! The libvirt qemu hook: vGPUs exist before a domain starts, transient ones go when it ends.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu` (and every executable in `/etc/libvirt/hooks/qemu.d/`)
//! as `qemu <domain> <operation> <sub-operation> <extra>` with the domain XML on standard input,
//! at each step of a domain's life. A non-zero exit of `prepare begin` aborts the start and
//! libvirt shows the hook's standard error to the user. A hook must not call libvirt (libvirtd
//! waits for it: calling back deadlocks), so everything here acts on sysfs only.
//!
//! - `prepare begin`: every vGPU of the domain (mdev hostdevs and gvm metadata bindings) must
//!   exist. A missing one is created from, in order: the daemon's definition
//!   `/etc/gvm-vgpu/vgpus/<uuid>.json` (parent and kernel type), the metadata entry's recorded
//!   parent and kernel type, or the metadata entry's catalog type (placed on any parent).
//!   Without any of them the start fails with [`Error::NoDefinition`].
//! - `release end`: vGPUs the metadata marks `persistent="no"` are removed.
//!
//! Deciding how to make a vGPU ([`recipe`]) is pure; [`prepare`] and [`release`] do the I/O.

use std::path::{Path, PathBuf};

use gvm_catalog::Catalog;
use gvm_host_root::HostRoot;
use gvm_mdev::MdevHost;
use gvm_proto::Definition;
use uuid::Uuid;

use crate::domain_xml::{DomainInfo, MetaVgpu};
use crate::error::{Error, Result};
use gvm_catalog::placement::place;

/// The hook steps gvm-vgpu acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOp {
    /// `prepare begin`: before libvirt allocates resources for the domain.
    Prepare,
    /// `release end`: after the domain's resources were released.
    Release,
    /// Any other step: nothing to do.
    Ignore,
}

/// Which step `operation` and `sub-operation` name.
pub fn hook_op(op: &str, subop: &str) -> HookOp {
    match (op, subop) {
        ("prepare", "begin") => HookOp::Prepare,
        ("release", "end") => HookOp::Release,
        _ => HookOp::Ignore,
    }
}

/// How to create a missing vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// On this parent with this kernel type; `from` says where that came from.
    Exact {
        /// Parent name.
        parent: String,
        /// Kernel mdev type id.
        mdev_type: String,
        /// `definition <path>` or `domain metadata`.
        from: String,
    },
    /// Any parent offering this catalog type (from the domain metadata).
    ByType(String),
    /// Nothing says how.
    Unknown,
}

/// How to create vGPU `uuid`: the daemon's definition first, then the metadata entry.
pub fn recipe(definition: Option<(&Path, &Definition)>, meta: Option<&MetaVgpu>) -> Recipe {
    if let Some((path, def)) = definition {
        return Recipe::Exact {
            parent: def.parent.clone(),
            mdev_type: def.mdev_type.clone(),
            from: format!("definition {}", path.display()),
        };
    }
    match meta {
        Some(MetaVgpu {
            parent: Some(parent),
            mdev_type: Some(mdev_type),
            ..
        }) => Recipe::Exact {
            parent: parent.clone(),
            mdev_type: mdev_type.clone(),
            from: "domain metadata".into(),
        },
        Some(MetaVgpu {
            type_name: Some(t), ..
        }) => Recipe::ByType(t.clone()),
        _ => Recipe::Unknown,
    }
}

/// What the hook did to one vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It already existed.
    Present(Uuid),
    /// It was created.
    Created {
        /// The vGPU.
        uuid: Uuid,
        /// Parent it was created on.
        parent: String,
        /// Kernel type.
        mdev_type: String,
    },
    /// It was removed (transient).
    Removed(Uuid),
    /// A transient vGPU that was already gone.
    AlreadyGone(Uuid),
}

/// `/etc/gvm-vgpu/vgpus/<uuid>.json`: the daemon's persistent definition of a vGPU.
pub fn definition_path(host: &HostRoot, uuid: &Uuid) -> PathBuf {
    host.config_dir().join("vgpus").join(format!("{uuid}.json"))
}

/// The daemon's definition of `uuid`, if there is one.
pub fn read_definition(host: &HostRoot, uuid: &Uuid) -> Result<Option<(PathBuf, Definition)>> {
    let path = definition_path(host, uuid);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Definition {
                path,
                source: Box::new(e),
            })
        }
    };
    let def: Definition = serde_json::from_slice(&bytes).map_err(|e| Error::Definition {
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok(Some((path, def)))
}

/// `prepare begin`: make every vGPU of the domain exist. `catalog` is only called when a
/// vGPU has to be placed by catalog type. Stops at the first vGPU that cannot be made.
pub fn prepare(
    host: &HostRoot,
    mdev: &MdevHost,
    catalog: &mut dyn FnMut() -> Option<Catalog>,
    info: &DomainInfo,
) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for uuid in info.vgpus() {
        match mdev.device(&uuid) {
            Ok(_) => {
                out.push(Outcome::Present(uuid));
                continue;
            }
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(source) => {
                return Err(Error::Mdev {
                    op: "look up",
                    uuid,
                    source,
                })
            }
        }
        let def = read_definition(host, &uuid)?;
        let how = recipe(
            def.as_ref().map(|(p, d)| (p.as_path(), d)),
            info.meta(&uuid),
        );
        let (parent, mdev_type) = match how {
            Recipe::Exact {
                parent, mdev_type, ..
            } => (parent, mdev_type),
            Recipe::ByType(name) => {
                let parents = mdev
                    .parents()
                    .map_err(|source| Error::MdevList { source })?;
                let at = place(catalog().as_ref(), &name, &parents)?;
                (at.parent, at.mdev_type)
            }
            Recipe::Unknown => {
                return Err(Error::NoDefinition {
                    domain: info.name.clone(),
                    uuid,
                    definition: definition_path(host, &uuid),
                })
            }
        };
        mdev.create(&parent, &mdev_type, Some(uuid))
            .map_err(|source| Error::Mdev {
                op: "create",
                uuid,
                source,
            })?;
        out.push(Outcome::Created {
            uuid,
            parent,
            mdev_type,
        });
    }
    Ok(out)
}

/// `release end`: remove the vGPUs the domain's metadata marks transient. Tries all of them
/// and returns the first error after that.
pub fn release(mdev: &MdevHost, info: &DomainInfo) -> Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let mut first_err = None;
    for m in info.metadata.iter().filter(|m| !m.persistent) {
        match mdev.remove(&m.uuid) {
            Ok(()) => out.push(Outcome::Removed(m.uuid)),
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => out.push(Outcome::AlreadyGone(m.uuid)),
            Err(source) => {
                first_err.get_or_insert(Error::Mdev {
                    op: "remove",
                    uuid: m.uuid,
                    source,
                });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(parent: Option<&str>, mdev_type: Option<&str>, type_name: Option<&str>) -> MetaVgpu {
        MetaVgpu {
            uuid: Uuid::nil(),
            type_name: type_name.map(str::to_string),
            parent: parent.map(str::to_string),
            mdev_type: mdev_type.map(str::to_string),
            persistent: true,
            created: false,
        }
    }

    #[test]
    fn only_prepare_begin_and_release_end_act() {
        assert_eq!(hook_op("prepare", "begin"), HookOp::Prepare);
        assert_eq!(hook_op("release", "end"), HookOp::Release);
        assert_eq!(hook_op("prepare", "end"), HookOp::Ignore);
        assert_eq!(hook_op("started", "begin"), HookOp::Ignore);
    }

    #[test]
    fn the_daemon_definition_wins_over_metadata() {
        let def: Definition = serde_json::from_value(serde_json::json!({
            "uuid": Uuid::nil(), "parent": "gpu1", "mdev_type": "gvmsim-2"
        }))
        .unwrap();
        let m = meta(Some("gpu0"), Some("gvmsim-1"), Some("sim-4c"));
        let r = recipe(
            Some((Path::new("/etc/gvm-vgpu/vgpus/x.json"), &def)),
            Some(&m),
        );
        assert_eq!(
            r,
            Recipe::Exact {
                parent: "gpu1".into(),
                mdev_type: "gvmsim-2".into(),
                from: "definition /etc/gvm-vgpu/vgpus/x.json".into(),
            }
        );
    }

    #[test]
    fn metadata_gives_exact_placement_then_type_then_nothing() {
        let exact = meta(Some("gpu0"), Some("gvmsim-1"), Some("sim-4c"));
        assert!(
            matches!(recipe(None, Some(&exact)), Recipe::Exact { parent, .. } if parent == "gpu0")
        );
        let by_type = meta(None, Some("gvmsim-1"), Some("sim-4c"));
        assert_eq!(
            recipe(None, Some(&by_type)),
            Recipe::ByType("sim-4c".into())
        );
        assert_eq!(recipe(None, Some(&meta(None, None, None))), Recipe::Unknown);
        assert_eq!(recipe(None, None), Recipe::Unknown);
    }

    #[test]
    fn definitions_are_read_through_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let u = Uuid::new_v4();
        assert!(read_definition(&host, &u).unwrap().is_none());
        let path = definition_path(&host, &u);
        assert!(path.starts_with(dir.path()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        let e = read_definition(&host, &u).unwrap_err().to_string();
        assert!(e.contains(&u.to_string()), "{e}");
        std::fs::write(
            &path,
            serde_json::json!({"uuid": u, "parent": "p", "mdev_type": "t"}).to_string(),
        )
        .unwrap();
        let (_, def) = read_definition(&host, &u).unwrap().unwrap();
        assert_eq!(def.mdev_type, "t");
    }
}
