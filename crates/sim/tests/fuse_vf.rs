//! The SR-IOV VF vGPU tree of the mounted simulator, driven through the client the product
//! uses (`gvm_vf::VfHost`), so every errno crosses FUSE and the client's mapping. Needs root
//! and /dev/fuse and skips otherwise.

use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};
use gvm_vf::{Assignments, Error, VfHost};

const PF: &str = "0000:41:00.0";
const VFS: [&str; 4] = [
    "0000:41:00.4",
    "0000:41:00.5",
    "0000:41:00.6",
    "0000:41:00.7",
];

fn current(vf: &VfHost, addr: &str) -> u32 {
    vf.vf_state(addr)
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .current
}

fn placement(vf: &VfHost, addr: &str) -> Option<u32> {
    vf.vf_state(addr)
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .placement_id
}

fn type_id(vf: &VfHost, addr: &str, name: &str) -> u32 {
    vf.vf_state(addr)
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .creatable
        .iter()
        .find(|t| t.matches(name))
        .map(|t| t.id)
        .unwrap_or_else(|| panic!("{name} is not creatable on {addr}"))
}

#[test]
fn vf_vgpus_through_the_client() {
    if skip("vf_vgpus_through_the_client", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start_with(SimModel::GvmSim, 1, &["--sriov-gpus", "1"]);
    let vf = VfHost::new(sim.host_root());

    // After boot: one PF, no VFs.
    let pfs = vf.pfs().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pfs.len(), 1);
    assert_eq!(
        (pfs[0].address.as_str(), pfs[0].num_vfs, pfs[0].total_vfs),
        (PF, 0, Some(20))
    );

    // Enable VFs, as sriov-manage -e does.
    vf.enable_vfs(PF, 4).unwrap_or_else(|e| panic!("{e}"));
    let pf = vf.pf(PF).unwrap_or_else(|e| panic!("{e}"));
    let addrs: Vec<&str> = pf.vfs.iter().map(|v| v.address.as_str()).collect();
    assert_eq!(addrs, VFS);
    assert_eq!(pf.vfs[0].state.as_ref().map(|s| s.creatable.len()), Some(8));
    match vf.enable_vfs(PF, 2) {
        Err(e @ Error::VfsAlreadyEnabled { .. }) => assert_eq!(e.errno(), Some(libc::EBUSY)),
        other => panic!("re-enabling another count: {other:?}"),
    }

    // Heterogeneous mode: mixed sizes, each at a placement; one written before the type.
    sim.control(&format!("vf-heterogeneous {PF} on"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, big, t40) = vf
        .create(Some(PF), "H100-40C", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (big.as_str(), t40.name.as_str()),
        (VFS[0], "NVIDIA H100-40C")
    );
    // VFs with a vGPU cannot be disabled, and the error says what to do instead.
    match vf.enable_vfs(PF, 0) {
        Err(e @ Error::VfsInUse { .. }) => {
            assert_eq!(e.errno(), Some(libc::EBUSY));
            assert!(e.to_string().contains("current_vgpu_type"), "{e}");
        }
        other => panic!("disabling VFs that carry a vGPU: {other:?}"),
    }
    let (_, mid, _) = vf
        .create(Some(PF), "H100-20C", &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mid, VFS[1]);
    let placement_file = sim
        .host_root()
        .pci_devices_dir()
        .join(VFS[2])
        .join("nvidia/placement_id");
    std::fs::write(&placement_file, "76\n").unwrap_or_else(|e| panic!("{e}"));
    let t4 = type_id(&vf, VFS[2], "H100-4C");
    vf.write_type(VFS[2], t4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        [VFS[0], VFS[1], VFS[2]].map(|a| placement(&vf, a)),
        [Some(0), Some(40), Some(76)]
    );
    assert_eq!(current(&vf, VFS[2]), t4);
    // 16 GiB are left (slots 60..76): no 20C anywhere now.
    assert!(matches!(
        vf.create(Some(PF), "H100-20C", &[]),
        Err(Error::TypeNotCreatable { .. })
    ));

    // Remove them all; the mode can be switched off only then.
    match sim.control(&format!("vf-heterogeneous {PF} off")) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EBUSY)),
        Ok(()) => panic!("the mode changed under live vGPUs"),
    }
    for a in [VFS[0], VFS[1], VFS[2]] {
        vf.write_type(a, 0).unwrap_or_else(|e| panic!("{a}: {e}"));
    }
    sim.control(&format!("vf-heterogeneous {PF} off"))
        .unwrap_or_else(|e| panic!("{e}"));

    // Homogeneous mode: once a 20C runs, a 40C is refused, by the client's pre-check and by
    // the driver (EINVAL) when written directly.
    let records = Assignments::new(vf.clone());
    let a20 = records
        .create(Some(PF), "H100-20C", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a20.vf, VFS[0]);
    match records.create(Some(PF), "H100-40C", None) {
        Err(Error::TypeNotCreatable { creatable, .. }) => {
            assert_eq!(creatable, ["NVIDIA H100-20C"])
        }
        other => panic!("a second size in homogeneous mode: {other:?}"),
    }
    match vf.write_type(VFS[1], t40.id) {
        Err(e @ Error::Rejected { .. }) => assert_eq!(e.errno(), Some(libc::EINVAL)),
        other => panic!("writing 40C beside a 20C: {other:?}"),
    }
    assert_eq!(current(&vf, VFS[1]), 0);

    // In use: a VM holds the VF, so its vGPU stays (EPERM removing, EBUSY re-typing).
    sim.control(&format!("vf-hold {}", VFS[0]))
        .unwrap_or_else(|e| panic!("{e}"));
    match records.remove(&a20.uuid) {
        Err(e @ Error::VfBusy { .. }) => assert_eq!(e.errno(), Some(libc::EPERM)),
        other => panic!("removing a held vGPU: {other:?}"),
    }
    match vf.write_type(VFS[0], a20.type_id) {
        Err(e @ Error::VfBusy { .. }) => assert_eq!(e.errno(), Some(libc::EBUSY)),
        other => panic!("re-typing a held VF: {other:?}"),
    }
    assert_eq!(current(&vf, VFS[0]), a20.type_id);
    sim.control(&format!("vf-release {}", VFS[0]))
        .unwrap_or_else(|e| panic!("{e}"));
    records.remove(&a20.uuid).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(current(&vf, VFS[0]), 0);

    // A reboot: the VFs and their vGPUs are gone; a record left behind can be dropped.
    let again = records
        .create(Some(PF), "H100-80C", None)
        .unwrap_or_else(|e| panic!("{e}"));
    sim.control("vf-reset").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vf.pf(PF).map(|p| p.num_vfs).ok(), Some(0));
    match vf.vf_state(VFS[0]) {
        Err(e @ Error::VfGone { .. }) => assert_eq!(e.errno(), Some(libc::ENOENT)),
        other => panic!("a VF after the reboot: {other:?}"),
    }
    records
        .remove(&again.uuid)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(records.list().unwrap_or_else(|e| panic!("{e}")).is_empty());
}
