//! Errors of the joined view; each kernel ABI's own errors pass through unchanged, so their
//! messages (which name the parent, VF or UUID and the fix) and errnos reach the user.

use gvm_mdev::Holder;
use uuid::Uuid;

/// Result of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong with a vGPU of either kind.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the mdev ABI.
    #[error(transparent)]
    Mdev(#[from] gvm_mdev::Error),

    /// An error of the VF vGPU ABI or of the manager's VF records.
    #[error(transparent)]
    Vf(#[from] gvm_vf::Error),

    /// The catalog does not know the type asked for.
    #[error(transparent)]
    Catalog(#[from] gvm_catalog::Error),

    /// No mdev parent can take the type.
    #[error(transparent)]
    Placement(#[from] gvm_catalog::placement::PlacementError),

    /// Neither an mdev device nor a VF vGPU on record has this UUID.
    #[error("no vGPU {uuid} on this host: no mdev device and no VF vGPU on record has this UUID; `gvm-vgpu list` shows the vGPUs")]
    NotFound {
        /// The UUID asked for.
        uuid: Uuid,
    },

    /// A VF vGPU is on record but its VF does not carry it now (after a reboot, or another
    /// tool changed the VF).
    #[error("VF vGPU {uuid} is on record on VF {vf} of {pf}, but the VF {}: restore it (`systemctl restart gvm-vgpud`, which re-creates defined vGPUs) or drop the record with `gvm-vgpu remove {uuid}`", found_text(*.found))]
    VfVgpuNotLive {
        /// The vGPU.
        uuid: Uuid,
        /// Its PF.
        pf: String,
        /// The VF on record.
        vf: String,
        /// What the VF holds now: `None` when it does not exist, `Some(0)` when it holds
        /// no vGPU, else the type ID another tool set.
        found: Option<u32>,
    },

    /// `--parent` names neither an mdev parent nor an SR-IOV GPU.
    #[error("'{name}' is neither an mdev parent nor an SR-IOV GPU (PF) of this host{}; `gvm-vgpu parents` lists them", did_you_mean(.suggestion))]
    UnknownParent {
        /// What was asked for.
        name: String,
        /// The closest parent or PF name, if one is close.
        suggestion: Option<String>,
    },

    /// The UUID asked for is already a vGPU (of either kind) or on record.
    #[error("a vGPU with UUID {uuid} already exists on this host ({what}); pick another UUID or leave --uuid out")]
    UuidInUse {
        /// The UUID.
        uuid: Uuid,
        /// Where it is used.
        what: String,
    },

    /// A catalog type bound by mdev type id cannot bind a VF type.
    #[error("catalog type {type_name} binds the mdev type id {mdev_type:?}, which no SR-IOV VF type has: VF types bind by name; set `mdev_name = \"NVIDIA ...\"` (see `gvm-vgpu types`) in its catalog file")]
    NotVfBindable {
        /// The catalog type.
        type_name: String,
        /// Its `mdev_type` binding.
        mdev_type: String,
    },

    /// A VM (or another process) holds the VF's VFIO device open.
    #[error("vGPU {uuid} on VF {vf} is in use: held open by {}; nothing was changed. Shut down the VM or detach the VF from it (`virsh detach-device` or `gvm-vgpu detach`), then remove it", holder_list(.holders))]
    VfHeld {
        /// The vGPU.
        uuid: Uuid,
        /// Its VF.
        vf: String,
        /// The processes holding it, sorted by pid (never empty).
        holders: Vec<Holder>,
    },
}

impl Error {
    /// The raw errno behind this error, where one came from the kernel or driver.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Mdev(e) => e.errno(),
            Error::Vf(e) => e.errno(),
            _ => None,
        }
    }
}

fn found_text(found: Option<u32>) -> String {
    match found {
        None => "does not exist (VFs disabled)".to_string(),
        Some(0) => "holds no vGPU".to_string(),
        Some(id) => format!("holds type {id} set by another tool"),
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

fn holder_list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
