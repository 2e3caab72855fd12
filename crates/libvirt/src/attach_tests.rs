//! Unit tests of placement and impact resolution (pure; the libvirt round trips are in
//! `tests/libvirt_real.rs`).

use std::path::PathBuf;

use gvm_mdev::MdevType;

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

#[test]
fn no_flag_means_current_state() {
    assert_eq!(resolve_apply(false, false, true), Apply::LIVE);
    assert_eq!(resolve_apply(false, false, false), Apply::CONFIG);
    assert_eq!(resolve_apply(true, false, true), Apply::CONFIG);
    assert_eq!(resolve_apply(true, true, false), Apply::BOTH);
    assert_eq!(resolve_apply(false, true, false), Apply::LIVE);
}
