//! Tests of [`VfHost`] and [`crate::Assignments`] on a temporary tree shaped like the
//! kernel's (plain files: it accepts every write, so errno paths are tested in error_tests).

use std::fs;
use std::os::unix::fs::symlink;

use super::*;
use crate::{Assignments, Error};

const PF: &str = "0000:41:00.0";
const VFS: [&str; 2] = ["0000:41:00.4", "0000:41:00.5"];
const TYPES: &str = "1047 : NVIDIA H100-20C\n1048 : NVIDIA H100-40C\n";

fn tree() -> (tempfile::TempDir, VfHost) {
    let t = tempfile::tempdir().unwrap();
    let devs = t.path().join("sys/bus/pci/devices");
    fs::create_dir_all(devs.join(PF)).unwrap();
    fs::write(devs.join(PF).join("sriov_numvfs"), "2\n").unwrap();
    fs::write(devs.join(PF).join("sriov_totalvfs"), "16\n").unwrap();
    for (i, vf) in VFS.iter().enumerate() {
        let n = devs.join(vf).join("nvidia");
        fs::create_dir_all(&n).unwrap();
        fs::write(n.join("current_vgpu_type"), "0\n").unwrap();
        fs::write(n.join("creatable_vgpu_types"), TYPES).unwrap();
        symlink(format!("../{vf}"), devs.join(PF).join(format!("virtfn{i}"))).unwrap();
    }
    // A non-SR-IOV device is not a PF.
    fs::create_dir_all(devs.join("0000:00:1f.0")).unwrap();
    let h = VfHost::new(HostRoot::new(t.path()));
    (t, h)
}

fn current(t: &tempfile::TempDir, vf: &str) -> String {
    fs::read_to_string(
        t.path()
            .join(format!("sys/bus/pci/devices/{vf}/nvidia/current_vgpu_type")),
    )
    .unwrap()
}

#[test]
fn lists_pfs_their_vfs_and_types() {
    let (_t, h) = tree();
    let pfs = h.pfs().unwrap();
    assert_eq!(pfs.len(), 1);
    assert_eq!(pfs[0].address, PF);
    assert_eq!(pfs[0].total_vfs, Some(16));
    let vfs: Vec<&str> = pfs[0].vfs.iter().map(|v| v.address.as_str()).collect();
    assert_eq!(vfs, VFS);
    let st = pfs[0].vfs[0].state.as_ref().unwrap();
    assert_eq!(st.current, 0);
    assert_eq!(st.creatable[1].id, 1048);
}

#[test]
fn an_unknown_pf_suggests_the_close_one() {
    let (_t, h) = tree();
    match h.pf("0000:41:00.1") {
        Err(Error::PfNotFound { suggestion, .. }) => assert_eq!(suggestion.as_deref(), Some(PF)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(h.pf("../x"), Err(Error::InvalidAddress { .. })));
}

#[test]
fn create_picks_the_first_free_vf_and_records_a_uuid() {
    let (t, h) = tree();
    let a = Assignments::new(h.clone());
    let one = a.create(None, "H100-20C", None).unwrap();
    assert_eq!(
        (one.pf.as_str(), one.vf.as_str(), one.type_id),
        (PF, VFS[0], 1047)
    );
    assert_eq!(current(&t, VFS[0]).trim(), "1047");
    let two = a.create(Some(PF), "h100-20c", None).unwrap();
    assert_eq!(two.vf, VFS[1]);
    assert_ne!(one.uuid, two.uuid);
    assert_eq!(a.list().unwrap().len(), 2);
    match a.create(Some(PF), "H100-20C", None) {
        Err(Error::NoFreeVf { pf, .. }) => assert_eq!(pf, PF),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_uncreatable_type_lists_what_is_creatable() {
    let (_t, h) = tree();
    let e = Assignments::new(h)
        .create(None, "H100-80C", None)
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("NVIDIA H100-20C, NVIDIA H100-40C"), "{msg}");
    assert!(msg.contains("homogeneous"), "{msg}");
}

#[test]
fn remove_clears_the_vf_and_the_record() {
    let (t, h) = tree();
    let a = Assignments::new(h);
    let one = a.create(None, "H100-20C", None).unwrap();
    a.remove(&one.uuid).unwrap();
    assert_eq!(current(&t, VFS[0]).trim(), "0");
    assert!(matches!(
        a.remove(&one.uuid),
        Err(Error::NotAssigned { .. })
    ));
}

#[test]
fn a_stale_remove_leaves_a_later_assignment_alone() {
    let (t, h) = tree();
    let a = Assignments::new(h);
    let one = a.create(None, "H100-20C", None).unwrap();
    // Another tool re-typed the VF since.
    fs::write(
        t.path().join(format!(
            "sys/bus/pci/devices/{}/nvidia/current_vgpu_type",
            VFS[0]
        )),
        "1048\n",
    )
    .unwrap();
    match a.remove(&one.uuid) {
        Err(Error::Stale {
            expected, found, ..
        }) => assert_eq!((expected, found), (1047, 1048)),
        other => panic!("{other:?}"),
    }
    assert_eq!(current(&t, VFS[0]).trim(), "1048");
    assert!(
        a.get(&one.uuid).is_ok(),
        "the record stays for the operator to see"
    );
}

#[test]
fn a_vanished_vf_is_reported_and_its_record_can_be_dropped() {
    let (t, h) = tree();
    let a = Assignments::new(h.clone());
    let one = a.create(None, "H100-20C", None).unwrap();
    fs::remove_dir_all(t.path().join(format!("sys/bus/pci/devices/{}", VFS[0]))).unwrap();
    match h.vf_state(VFS[0]) {
        Err(e @ Error::VfGone { .. }) => assert!(e.to_string().contains(VFS[0])),
        other => panic!("{other:?}"),
    }
    a.remove(&one.uuid).unwrap();
    assert!(a.list().unwrap().is_empty());
}

#[test]
fn enabling_vfs_writes_sriov_numvfs_only_when_it_changes() {
    let (t, h) = tree();
    let p = t
        .path()
        .join(format!("sys/bus/pci/devices/{PF}/sriov_numvfs"));
    h.enable_vfs(PF, 2).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "2\n");
    h.enable_vfs(PF, 0).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "0\n");
}

#[test]
fn vfio_nodes_are_the_group_and_the_cdev() {
    let (t, h) = tree();
    let dir = t.path().join("sys/bus/pci/devices").join(VFS[0]);
    assert_eq!(
        h.vfio_nodes(VFS[0]).unwrap(),
        Vec::<std::path::PathBuf>::new()
    );
    symlink("../../../kernel/iommu_groups/17", dir.join("iommu_group")).unwrap();
    fs::create_dir_all(dir.join("vfio-dev/vfio3")).unwrap();
    assert_eq!(
        h.vfio_nodes(VFS[0]).unwrap(),
        [
            t.path().join("dev/vfio/17"),
            t.path().join("dev/vfio/devices/vfio3")
        ]
    );
    assert!(matches!(
        h.vfio_nodes("0000:41:00.7"),
        Err(Error::VfGone { .. })
    ));
}

#[test]
fn an_sr_iov_function_of_another_vendor_is_not_a_pf() {
    let (t, h) = tree();
    let devs = t.path().join("sys/bus/pci/devices");
    // An SR-IOV network card (Intel) beside the GPU.
    fs::create_dir_all(devs.join("0000:18:00.0")).unwrap();
    fs::write(devs.join("0000:18:00.0/sriov_numvfs"), "0\n").unwrap();
    fs::write(devs.join("0000:18:00.0/vendor"), "0x8086\n").unwrap();
    fs::write(devs.join(PF).join("vendor"), "0x10de\n").unwrap();
    let pfs: Vec<String> = h.pfs().unwrap().into_iter().map(|p| p.address).collect();
    assert_eq!(pfs, [PF]);
}
