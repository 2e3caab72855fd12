//! The manager's records of VF vGPUs: UUID → (PF, VF, type), one JSON file each.
//!
//! A VF address is not an identity (VFs are reused), so the manager names each VF vGPU by a
//! UUID of its own and keeps where it put it in `/etc/gvm-vgpu/vf-vgpus/<uuid>.json`.
//! [`Assignments::remove`] compares the VF's `current_vgpu_type` with the record before it
//! writes `0`: a stale remove (the record says type A, the VF now holds B because another
//! tool or a later assignment set it) leaves the VF alone and reports [`Error::Stale`].

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::host::VfHost;

/// Where one VF vGPU was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The vGPU's identity.
    pub uuid: Uuid,
    /// Its GPU.
    pub pf: String,
    /// Its VF.
    pub vf: String,
    /// The type ID written.
    pub type_id: u32,
    /// The type name.
    pub type_name: String,
}

/// The records under a host's config dir.
#[derive(Debug, Clone)]
pub struct Assignments {
    vf: VfHost,
    dir: PathBuf,
}

impl Assignments {
    /// The records of `vf`'s host.
    pub fn new(vf: VfHost) -> Self {
        let dir = vf.host().config_dir().join("vf-vgpus");
        Assignments { vf, dir }
    }

    fn path(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    /// Every record, sorted by UUID; files that are not records are skipped.
    pub fn list(&self) -> Result<Vec<Assignment>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Read {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(u) = name
                .strip_suffix(".json")
                .and_then(|u| Uuid::try_parse(u).ok())
            else {
                continue;
            };
            out.push(self.get(&u)?);
        }
        out.sort_by_key(|a| a.uuid);
        Ok(out)
    }

    /// One record.
    pub fn get(&self, uuid: &Uuid) -> Result<Assignment> {
        let path = self.path(uuid);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotAssigned { uuid: *uuid })
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            path,
            detail: e.to_string(),
        })
    }

    /// Create a vGPU of type `wanted` on a free VF (of `pf`, or any) and record it as `uuid`
    /// (a new v4 UUID if `None`). If the record cannot be written the type is cleared again,
    /// so nothing half-done is left.
    pub fn create(&self, pf: Option<&str>, wanted: &str, uuid: Option<Uuid>) -> Result<Assignment> {
        let uuid = uuid.unwrap_or_else(Uuid::new_v4);
        let reserved: Vec<String> = self.list()?.into_iter().map(|a| a.vf).collect();
        let (pf, vf, t) = self.vf.create(pf, wanted, &reserved)?;
        let a = Assignment {
            uuid,
            pf,
            vf,
            type_id: t.id,
            type_name: t.name,
        };
        if let Err(e) = self.store(&a) {
            let _ = self.vf.write_type(&a.vf, 0);
            return Err(e);
        }
        Ok(a)
    }

    fn store(&self, a: &Assignment) -> Result<()> {
        let path = self.path(&a.uuid);
        let write = || -> io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{}.tmp", a.uuid));
            fs::write(
                &tmp,
                serde_json::to_vec_pretty(a).map_err(io::Error::other)?,
            )?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| Error::Write { path, source })
    }

    /// Drop the records whose VF holds no vGPU any more (VFs disabled by a reboot, or the
    /// vGPU removed by another tool), except those `keep` names; returns the dropped ones.
    /// Nothing is written to a VF. A record whose VF holds another type is kept: that VF
    /// is in use, and the record says by whom it was meant to be.
    pub fn prune_gone(&self, keep: impl Fn(&Uuid) -> bool) -> Result<Vec<Assignment>> {
        let mut dropped = Vec::new();
        for a in self.list()? {
            if keep(&a.uuid) {
                continue;
            }
            let found = match self.vf.vf_state(&a.vf) {
                Ok(st) => st.current,
                Err(Error::VfGone { .. }) => 0,
                Err(e) => return Err(e),
            };
            if found == 0 {
                let path = self.path(&a.uuid);
                fs::remove_file(&path).map_err(|source| Error::Write { path, source })?;
                dropped.push(a);
            }
        }
        Ok(dropped)
    }

    /// Remove vGPU `uuid`: compare the VF with the record, write `0` only if it still holds
    /// the recorded type, then drop the record. A VF that already holds no vGPU (e.g. after a
    /// reboot) just drops the record.
    pub fn remove(&self, uuid: &Uuid) -> Result<()> {
        let a = self.get(uuid)?;
        let found = match self.vf.vf_state(&a.vf) {
            Ok(st) => st.current,
            Err(Error::VfGone { .. }) => 0,
            Err(e) => return Err(e),
        };
        let later = self
            .list()?
            .into_iter()
            .any(|o| o.uuid != *uuid && o.vf == a.vf);
        if found != 0 && (found != a.type_id || later) {
            return Err(Error::Stale {
                uuid: *uuid,
                vf: a.vf,
                expected: a.type_id,
                found,
            });
        }
        if found != 0 {
            self.vf.write_type(&a.vf, 0)?;
        }
        let path = self.path(uuid);
        fs::remove_file(&path).map_err(|source| Error::Write { path, source })
    }
}
