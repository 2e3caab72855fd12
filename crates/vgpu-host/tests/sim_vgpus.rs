//! Both kinds of vGPU on the mounted simulator (`--gpus 1 --sriov-gpus 1`), through
//! [`gvm_vgpu_host::VgpuHost`]: created by catalog type, listed and found by UUID, removed,
//! and the bad cases (homogeneous mode, a held VF, a reboot, another tool's write) refused
//! with an error that names the VF and leaves everything as it was. Needs root and
//! /dev/fuse and skips otherwise.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use gvm_catalog::Catalog;
use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vgpu_host::{Backing, Error, Kind, ParentKind, Uuid, VgpuHost};

const PF: &str = "0000:41:00.0";
const VFS: [&str; 3] = ["0000:41:00.4", "0000:41:00.5", "0000:41:00.6"];

fn kinds(host: &VgpuHost) -> Vec<(Kind, String)> {
    host.vgpus()
        .unwrap()
        .into_iter()
        .map(|v| (v.kind(), v.kernel_name.unwrap_or_default()))
        .collect()
}

#[test]
fn mdev_and_vf_vgpus_side_by_side() {
    if skip("mdev_and_vf_vgpus_side_by_side", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let host = VgpuHost::new(sim.host_root());
    let catalog = Catalog::builtin().unwrap();

    // --parent names either kind; a typo gets a suggestion from both.
    assert!(matches!(
        host.parent("0000:3b:00.0"),
        Ok(ParentKind::Mdev(_))
    ));
    assert!(matches!(host.parent(PF), Ok(ParentKind::Pf(_))));
    match host.parent("0000:41:00.1") {
        Err(e @ Error::UnknownParent { .. }) => {
            assert!(e.to_string().contains("did you mean '0000:41:00.0'"), "{e}")
        }
        other => panic!("a mistyped PF: {other:?}"),
    }

    // A VF type before the VFs are enabled: nothing offers it, and the error says why.
    match host.create(&catalog, "H100-20C", None, None) {
        Err(Error::Vf(gvm_vf::Error::TypeNotCreatable { creatable, .. })) => {
            assert!(creatable.is_empty())
        }
        other => panic!("a VF type with no VFs: {other:?}"),
    }
    assert!(host.records().list().unwrap().is_empty());

    // An mdev vGPU by catalog type, and VF vGPUs of mixed sizes in heterogeneous mode.
    let mdev = host.create(&catalog, "sim-20c", None, None).unwrap();
    assert_eq!(mdev.kind(), Kind::Mdev);
    host.vf().enable_vfs(PF, 4).unwrap();
    sim.control(&format!("vf-heterogeneous {PF} on")).unwrap();
    let wanted = Uuid::new_v4();
    let big = host
        .create(&catalog, "H100-40C", Some(PF), Some(wanted))
        .unwrap();
    assert_eq!(big.uuid, wanted);
    assert_eq!(
        big.backing,
        Backing::Vf {
            pf: PF.into(),
            vf: VFS[0].into(),
            type_id: 1048
        }
    );
    let small = host.create(&catalog, "H100-20C", None, None).unwrap();
    assert_eq!(small.backing.vf(), Some(VFS[1]));
    // mdev devices first, then the VF vGPUs.
    let listed = kinds(&host);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], (Kind::Mdev, "SIM-80GB-20C".to_string()));
    let mut vf_names: Vec<String> = listed[1..]
        .iter()
        .map(|(k, n)| {
            assert_eq!(*k, Kind::Vf);
            n.clone()
        })
        .collect();
    vf_names.sort();
    assert_eq!(vf_names, ["NVIDIA H100-20C", "NVIDIA H100-40C"]);
    assert_eq!(host.vgpu(&big.uuid).unwrap(), big);
    assert_eq!(
        host.vgpu(&big.uuid).unwrap().sysfs_path,
        sim.host_root().pci_devices_dir().join(VFS[0])
    );

    // A UUID already in use, of either kind, is refused before anything is written.
    for used in [mdev.uuid, big.uuid] {
        match host.create(&catalog, "H100-20C", None, Some(used)) {
            Err(e @ Error::UuidInUse { .. }) => assert!(e.to_string().contains("--uuid"), "{e}"),
            other => panic!("a used UUID: {other:?}"),
        }
    }
    assert_eq!(host.vf().vf_state(VFS[2]).unwrap().current, 0);

    // Removing: the mdev one through its remove attribute, a VF one through its record.
    host.remove(&mdev.uuid).unwrap();
    host.remove(&small.uuid).unwrap();
    assert!(matches!(
        host.vgpu(&small.uuid),
        Err(Error::NotFound { .. })
    ));
    host.remove(&big.uuid).unwrap();
    assert!(host.vgpus().unwrap().is_empty());

    // Homogeneous mode: a second size is refused, with the sizes that are creatable.
    sim.control(&format!("vf-heterogeneous {PF} off")).unwrap();
    let a20 = host.create(&catalog, "H100-20C", None, None).unwrap();
    match host.create(&catalog, "H100-40C", None, None) {
        Err(e @ Error::Vf(gvm_vf::Error::TypeNotCreatable { .. })) => {
            let text = e.to_string();
            assert!(text.contains("homogeneous mode"), "{text}");
            assert!(text.contains("NVIDIA H100-20C"), "{text}");
        }
        other => panic!("a second size in homogeneous mode: {other:?}"),
    }
    assert_eq!(host.records().list().unwrap().len(), 1);

    // In use: the VM holding the VF keeps its vGPU, and the record stays.
    sim.control(&format!("vf-hold {}", VFS[0])).unwrap();
    match host.remove(&a20.uuid) {
        Err(e @ Error::Vf(gvm_vf::Error::VfBusy { .. })) => {
            assert_eq!(e.errno(), Some(libc::EPERM));
            assert!(e.to_string().contains(VFS[0]), "{e}");
        }
        other => panic!("removing a held VF vGPU: {other:?}"),
    }
    assert_eq!(host.vgpu(&a20.uuid).unwrap().uuid, a20.uuid);
    sim.control(&format!("vf-release {}", VFS[0])).unwrap();

    // A reboot: the VF vanished; the record stays, reported as not live, then dropped.
    sim.control("vf-reset").unwrap();
    match host.vgpu(&a20.uuid) {
        Err(e @ Error::VfVgpuNotLive { found: None, .. }) => {
            assert!(e.to_string().contains(VFS[0]), "{e}")
        }
        other => panic!("a VF vGPU after a reboot: {other:?}"),
    }
    assert!(host.vgpus().unwrap().is_empty());

    // Another tool set a different type on the recorded VF: the record is stale and a
    // remove leaves that VF alone.
    host.vf().enable_vfs(PF, 4).unwrap();
    let t40 = host
        .vf()
        .vf_state(VFS[0])
        .unwrap()
        .creatable
        .iter()
        .find(|t| t.matches("H100-40C"))
        .map(|t| t.id)
        .unwrap();
    host.vf().write_type(VFS[0], t40).unwrap();
    assert!(matches!(
        host.vgpu(&a20.uuid),
        Err(Error::VfVgpuNotLive {
            found: Some(1048),
            ..
        })
    ));
    match host.remove(&a20.uuid) {
        Err(Error::Vf(gvm_vf::Error::Stale { vf, .. })) => assert_eq!(vf, VFS[0]),
        other => panic!("a stale remove: {other:?}"),
    }
    assert_eq!(host.vf().vf_state(VFS[0]).unwrap().current, t40);
    host.vf().write_type(VFS[0], 0).unwrap();
    host.remove(&a20.uuid).unwrap();
    assert!(host.records().list().unwrap().is_empty());
}
