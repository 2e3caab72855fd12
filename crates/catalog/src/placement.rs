//! Placement: which parent and kernel mdev type a new vGPU of a catalog type goes on.
//!
//! A catalog type is bound to kernel types by id or name; several parents (GPUs) may offer a
//! bound type. The candidate with the most free instances that is still under the type's
//! `max_instances` wins, the first parent on a tie. A name that is not a catalog type is taken
//! as a kernel type id, so unmanaged types can be created too. Pure: the caller lists the
//! parents (`gvm_mdev::MdevHost::parents`).

use gvm_mdev::Parent;

use crate::{Catalog, VgpuType};

/// Why no parent can take a new vGPU of a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot place a vGPU of type '{type_name}': {detail}")]
pub struct PlacementError {
    /// Catalog type name or kernel type id asked for.
    pub type_name: String,
    /// Why no candidate fits (each candidate's free count, or that none offers the type).
    pub detail: String,
}

/// Where to create a vGPU: `(parent, kernel type id, catalog type name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Parent name.
    pub parent: String,
    /// Kernel mdev type id.
    pub mdev_type: String,
    /// Catalog type name, when the kernel type is in the catalog.
    pub type_name: Option<String>,
}

/// Choose a parent and kernel type for a new vGPU of `type_name` among `parents`: catalog
/// types by name first, else kernel type ids. The candidate with the most free instances
/// wins (the first parent on a tie).
pub fn place(
    catalog: Option<&Catalog>,
    type_name: &str,
    parents: &[Parent],
) -> Result<Placement, PlacementError> {
    let wanted: Option<&VgpuType> = catalog.and_then(|c| c.type_by_name(type_name).ok());
    let mut candidates = Vec::new();
    for p in parents {
        for t in &p.types {
            let bound = catalog.and_then(|c| c.resolve(&t.id, t.name.as_deref()));
            let matches = match wanted {
                Some(w) => bound.is_some_and(|b| b.name == w.name),
                None => t.id == type_name,
            };
            if matches {
                candidates.push((p, t, bound));
            }
        }
    }
    if candidates.is_empty() {
        let detail = match wanted {
            Some(w) => format!(
                "no parent offers a kernel type bound to catalog type {} ({}); `gvm-vgpu types` lists what the host offers",
                w.name, w.binding
            ),
            None => "it is neither a catalog type nor a kernel mdev type id of any parent; `gvm-vgpu types` lists both".to_string(),
        };
        return Err(PlacementError {
            type_name: type_name.to_string(),
            detail,
        });
    }
    let best = candidates
        .iter()
        .filter(|(_, t, bound)| {
            t.available_instances > 0
                && bound.is_none_or(|b| (t.devices.len() as u64) < u64::from(b.max_instances))
        })
        .rev()
        .max_by_key(|(_, t, _)| t.available_instances);
    let Some((p, t, bound)) = best else {
        let detail = candidates
            .iter()
            .map(|(p, t, _)| {
                format!(
                    "{} has {} of {} and {} free",
                    p.name,
                    t.devices.len(),
                    t.id,
                    t.available_instances
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(PlacementError {
            type_name: type_name.to_string(),
            detail: format!("no free instance ({detail}); remove a vGPU or pick another type"),
        });
    };
    Ok(Placement {
        parent: p.name.clone(),
        mdev_type: t.id.clone(),
        type_name: bound.map(|b| b.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use gvm_mdev::{MdevType, Uuid};

    use super::*;

    fn ty(parent: &str, id: &str, free: u32, live: usize) -> MdevType {
        MdevType {
            id: id.into(),
            parent: parent.into(),
            name: None,
            description: None,
            device_api: "vfio-pci".into(),
            available_instances: free,
            devices: (0..live).map(|_| Uuid::new_v4()).collect(),
        }
    }

    fn parent(name: &str, types: Vec<MdevType>) -> Parent {
        Parent {
            name: name.into(),
            sysfs_path: PathBuf::from("/sys/class/mdev_bus").join(name),
            device_path: PathBuf::from("/sys/devices").join(name),
            types,
        }
    }

    #[test]
    fn a_catalog_type_goes_to_the_parent_with_most_free_instances() {
        let catalog = Catalog::builtin().unwrap();
        let parents = vec![
            parent(
                "gpu0",
                vec![ty("gpu0", "gvmsim-1", 2, 3), ty("gpu0", "gvmsim-2", 1, 0)],
            ),
            parent("gpu1", vec![ty("gpu1", "gvmsim-1", 5, 0)]),
        ];
        let at = place(Some(&catalog), "sim-4c", &parents).unwrap();
        assert_eq!(
            at,
            Placement {
                parent: "gpu1".into(),
                mdev_type: "gvmsim-1".into(),
                type_name: Some("sim-4c".into()),
            }
        );
    }

    #[test]
    fn ties_go_to_the_first_parent() {
        let catalog = Catalog::builtin().unwrap();
        let parents = vec![
            parent("gpu0", vec![ty("gpu0", "gvmsim-2", 3, 0)]),
            parent("gpu1", vec![ty("gpu1", "gvmsim-2", 3, 0)]),
        ];
        assert_eq!(
            place(Some(&catalog), "sim-10c", &parents).unwrap().parent,
            "gpu0"
        );
    }

    #[test]
    fn a_kernel_type_id_is_accepted_when_no_catalog_type_has_the_name() {
        let parents = vec![parent("mtty", vec![ty("mtty", "mtty-2", 1, 1)])];
        let at = place(None, "mtty-2", &parents).unwrap();
        assert_eq!(at.mdev_type, "mtty-2");
        assert_eq!(at.type_name, None);
    }

    #[test]
    fn exhausted_or_unknown_types_say_why() {
        let catalog = Catalog::builtin().unwrap();
        // sim-80c allows one instance per GPU: a live one blocks even if the kernel has room.
        let parents = vec![parent("gpu0", vec![ty("gpu0", "gvmsim-5", 1, 1)])];
        let e = place(Some(&catalog), "sim-80c", &parents)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu0 has 1 of gvmsim-5 and 1 free"), "{e}");
        let e = place(Some(&catalog), "no-such", &parents)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a catalog type"), "{e}");
        let e = place(Some(&catalog), "sim-20c", &parents)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no parent offers"), "{e}");
    }
}
