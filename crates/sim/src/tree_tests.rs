//! Unit tests of the path layout: entries, modes, link targets, read/write dispatch.

use super::*;
use crate::catalog::Model;
use crate::host::tests::host;

const U1: &str = "0b2e3c4d-1111-4a2b-8c3d-000000000001";

/// Resolve a relative link target found in directory `dir` (segments), like the VFS.
fn resolve(dir: &[&str], target: &str) -> Vec<String> {
    let mut out: Vec<String> = dir.iter().map(|s| s.to_string()).collect();
    for part in target.split('/') {
        match part {
            ".." => {
                out.pop();
            }
            "" | "." => {}
            p => out.push(p.to_string()),
        }
    }
    out
}

fn link(h: &SimHost, path: &str) -> Vec<String> {
    let segs: Vec<&str> = path.split('/').collect();
    match stat(h, &segs) {
        Ok(Kind::Link(t)) => resolve(&segs[..segs.len() - 1], &t),
        other => panic!("{path}: expected a link, got {other:?}"),
    }
}

fn text(h: &SimHost, path: &str) -> String {
    let segs: Vec<&str> = path.split('/').collect();
    match read(h, &segs) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn put(h: &mut SimHost, path: &str, data: &str) -> Result<(), i32> {
    let segs: Vec<&str> = path.split('/').collect();
    let r = write(h, &segs, data.as_bytes())
        .map(|_| ())
        .map_err(|e| e.errno());
    // What the clock thread does right after a create: start the queued owners.
    h.spawn_pending(usize::MAX);
    r
}

fn names(h: &SimHost, path: &str) -> Vec<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    list(h, &segs)
        .map(|v| v.into_iter().map(|e| e.name).collect())
        .unwrap_or_default()
}

const T1: &str = "sys/devices/pci0000:00/0000:3b:00.0/mdev_supported_types/gvmsim-1";

#[test]
fn empty_host_serves_the_fixed_directories() {
    let (h, _) = host(Model::GvmSim, 0);
    assert_eq!(names(&h, ""), ["sys"]);
    assert!(names(&h, "sys/bus/mdev/devices").is_empty());
    assert_eq!(stat(&h, &["sys", "bus", "mdev", "devices"]), Ok(Kind::Dir));
    assert_eq!(names(&h, "sys/kernel/debug/nvidia-uvm/processes"), ["list"]);
    assert_eq!(
        text(&h, "sys/kernel/debug/nvidia-uvm/processes/list"),
        "PID\n"
    );
    assert_eq!(
        names(&h, "sys/devices/pci0000:00"),
        ["0000:3b:00.0", "0000:3c:00.0"]
    );
    assert_eq!(
        text(&h, "sys/devices/pci0000:00/0000:3c:00.0/gvm_uvm_index"),
        "8\n"
    );
    assert_eq!(
        link(&h, "sys/class/mdev_bus/0000:3c:00.0").join("/"),
        "sys/devices/pci0000:00/0000:3c:00.0"
    );
    assert_eq!(
        stat(&h, &["sys", "nope"]).map_err(|e| e.errno()),
        Err(libc::ENOENT)
    );
}

#[test]
fn type_attributes_and_modes() {
    let (h, _) = host(Model::GvmSim, 0);
    assert_eq!(
        names(&h, T1),
        [
            "name",
            "description",
            "device_api",
            "available_instances",
            "create",
            "devices"
        ]
    );
    assert_eq!(text(&h, &format!("{T1}/name")), "SIM-80GB-4C\n");
    assert_eq!(text(&h, &format!("{T1}/device_api")), "vfio-pci\n");
    assert_eq!(text(&h, &format!("{T1}/available_instances")), "16\n");
    let create: Vec<&str> = format!("{T1}/create").leak().split('/').collect();
    assert_eq!(stat(&h, &create), Ok(Kind::File { mode: 0o200 }));
    assert_eq!(read(&h, &create).map_err(|e| e.errno()), Err(libc::EACCES));
}

#[test]
fn created_device_appears_everywhere_with_resolving_links() {
    let (mut h, _) = host(Model::GvmSim, 0);
    assert_eq!(
        put(&mut h, &format!("{T1}/create"), &format!("{U1}\n")),
        Ok(())
    );
    let devdir = format!("sys/devices/pci0000:00/0000:3b:00.0/{U1}");
    assert_eq!(
        link(&h, &format!("sys/bus/mdev/devices/{U1}")).join("/"),
        devdir
    );
    assert_eq!(link(&h, &format!("{T1}/devices/{U1}")).join("/"), devdir);
    assert_eq!(link(&h, &format!("{devdir}/mdev_type")).join("/"), T1);
    let group = link(&h, &format!("{devdir}/iommu_group"));
    assert_eq!(group.join("/"), "sys/kernel/iommu_groups/0");
    let segs: Vec<&str> = group.iter().map(String::as_str).collect();
    assert_eq!(stat(&h, &segs), Ok(Kind::Dir));
    assert_eq!(
        link(&h, &format!("sys/kernel/iommu_groups/0/devices/{U1}")).join("/"),
        devdir
    );
    assert_eq!(text(&h, &format!("{T1}/available_instances")), "15\n");
    // Writes to read-only attributes are EACCES, to missing ones ENOENT.
    assert_eq!(
        put(&mut h, &format!("{T1}/available_instances"), "1"),
        Err(libc::EACCES)
    );
    assert_eq!(
        put(&mut h, &format!("{devdir}/remove"), "nah"),
        Err(libc::EINVAL)
    );
    assert_eq!(put(&mut h, &format!("{devdir}/remove"), "1\n"), Ok(()));
    assert_eq!(
        put(&mut h, &format!("{devdir}/remove"), "1\n"),
        Err(libc::ENOENT)
    );
    assert!(names(&h, "sys/bus/mdev/devices").is_empty());
    assert!(names(&h, "sys/kernel/iommu_groups").is_empty());
}

#[test]
fn mtty_layout_links_reach_sys() {
    let (mut h, _) = host(Model::Mtty, 0);
    let t = "sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2";
    assert_eq!(
        names(&h, t),
        [
            "name",
            "device_api",
            "available_instances",
            "create",
            "devices"
        ]
    );
    assert_eq!(text(&h, &format!("{t}/name")), "Dual port serial\n");
    assert_eq!(
        link(&h, "sys/class/mdev_bus/mtty").join("/"),
        "sys/devices/virtual/mtty/mtty"
    );
    assert_eq!(put(&mut h, &format!("{t}/create"), U1), Ok(()));
    let devdir = format!("sys/devices/virtual/mtty/mtty/{U1}");
    assert_eq!(
        link(&h, &format!("{devdir}/iommu_group")).join("/"),
        "sys/kernel/iommu_groups/0"
    );
    assert_eq!(
        link(&h, &format!("sys/bus/mdev/devices/{U1}")).join("/"),
        devdir
    );
    assert_eq!(
        text(
            &h,
            "sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/available_instances"
        ),
        "22\n"
    );
}

#[test]
fn gvm_tree_follows_owners() {
    let (mut h, _) = host(Model::GvmSim, 0);
    // Removing the vGPU below kills its owner (the default would wait for it).
    h.set_held_remove(crate::host::HeldRemove::Kill);
    assert_eq!(
        put(
            &mut h,
            "sys/devices/pci0000:00/0000:3c:00.0/mdev_supported_types/gvmsim-5/create",
            U1
        ),
        Ok(())
    );
    assert_eq!(
        put(
            &mut h,
            "sys/kernel/debug/gvm-sim/control",
            &format!("spawn {U1} memory=3000")
        ),
        Ok(())
    );
    let pid = h.registered_pids()[0];
    let base = format!("sys/kernel/debug/nvidia-uvm/processes/{pid}");
    assert_eq!(
        text(&h, "sys/kernel/debug/nvidia-uvm/processes/list"),
        format!("PID\n{pid}\n")
    );
    assert_eq!(names(&h, &base), ["8"]);
    assert_eq!(
        names(&h, &format!("{base}/8")),
        [
            "memory.limit",
            "memory.current",
            "memory.swap.current",
            "compute.priority",
            "compute.freeze",
            "gcgroup.stat"
        ]
    );
    assert_eq!(
        text(&h, &format!("{base}/8/memory.limit")),
        "18446744073709551615\n"
    );
    assert_eq!(text(&h, &format!("{base}/8/compute.priority")), "8\n");
    assert_eq!(
        put(&mut h, &format!("{base}/8/memory.limit"), "1000\n"),
        Ok(())
    );
    assert_eq!(text(&h, &format!("{base}/8/memory.current")), "1000\n");
    assert_eq!(text(&h, &format!("{base}/8/memory.swap.current")), "2000\n");
    assert!(text(&h, &format!("{base}/8/gcgroup.stat"))
        .starts_with("nr_submitted_kernels: 4\nnr_ended_kernels: 0\n"));
    assert_eq!(
        put(&mut h, &format!("{base}/0/compute.freeze"), "1"),
        Err(libc::ENOENT)
    );
    assert_eq!(
        put(&mut h, "sys/kernel/debug/gvm-sim/owners", "x"),
        Err(libc::EACCES)
    );
    assert_eq!(
        put(
            &mut h,
            &format!("sys/devices/pci0000:00/0000:3c:00.0/{U1}/remove"),
            "1"
        ),
        Ok(())
    );
    assert_eq!(
        put(&mut h, &format!("{base}/8/compute.freeze"), "1"),
        Err(libc::ENOENT)
    );
    assert_eq!(names(&h, "sys/kernel/debug/nvidia-uvm/processes"), ["list"]);
}

#[test]
fn direct_stat_answers_agree_with_the_listings() {
    let (mut h, _) = host(Model::GvmSim, 1);
    let c = format!("{T1}/create");
    assert_eq!(put(&mut h, &c, U1), Ok(()));
    assert_eq!(
        put(
            &mut h,
            "sys/kernel/debug/gvm-sim/control",
            &format!("spawn {U1} gpu=8 register_delay_ms=50")
        ),
        Ok(())
    );
    let pids: Vec<u32> = h.owners().keys().copied().collect();
    assert_eq!(pids.len(), 2);
    let (on, late) = (pids[0], pids[1]);
    assert_eq!(
        h.registered_pids(),
        vec![on],
        "the delayed owner is not listed yet"
    );
    let p = "sys/kernel/debug/nvidia-uvm/processes";
    let parent = "sys/devices/pci0000:00/0000:3b:00.0";
    let mut paths = vec![
        format!("{p}/list"),
        format!("{p}/{on}"),
        format!("{p}/0{on}"),
        format!("{p}/{on}/0"),
        format!("{p}/{on}/00"),
        format!("{p}/{on}/8"),
        format!("{p}/{on}/0/compute.priority"),
        format!("{p}/{on}/0/gcgroup.stat"),
        format!("{p}/{on}/0/nope"),
        format!("{p}/{on}/0/compute.priority/x"),
        format!("{p}/{late}"),
        format!("{p}/{late}/8"),
        format!("{p}/{late}/8/memory.limit"),
        format!("{p}/424242/0"),
        format!("sys/bus/mdev/devices/{U1}"),
        "sys/bus/mdev/devices/0b2e3c4d-1111-4a2b-8c3d-00000000000f".to_string(),
        format!("{parent}/{U1}"),
        format!("{parent}/{U1}/remove"),
        format!("{parent}/mdev_supported_types"),
        format!("{parent}/gvm_uvm_index"),
        format!("sys/devices/pci0000:00/0000:3c:00.0/{U1}"),
    ];
    let check = |h: &SimHost, paths: &[String]| {
        for path in paths {
            let segs: Vec<&str> = path.split('/').collect();
            assert_eq!(
                stat(h, &segs).map_err(|e| e.errno()),
                stat_by_listing(h, &segs).map_err(|e| e.errno()),
                "{path}"
            );
        }
    };
    check(&h, &paths);
    assert!(matches!(
        stat(&h, &["sys", "bus", "mdev", "devices", U1]),
        Ok(Kind::Link(_))
    ));
    // Once registered, the late owner's tree appears in both answers alike.
    h.advance(60_000);
    paths.push(format!("{p}/{late}/8/compute.freeze"));
    check(&h, &paths);
    assert_eq!(
        stat(
            &h,
            &p.split('/')
                .chain([late.to_string().as_str(), "8"])
                .collect::<Vec<_>>()
        ),
        Ok(Kind::Dir)
    );
}

#[test]
fn fixed_directories_are_always_directories_and_nothing_else_is_fixed() {
    let (mut h, _) = host(Model::GvmSim, 1);
    let fixed = [
        "sys",
        "sys/bus/mdev/devices",
        "sys/class/mdev_bus",
        "sys/kernel/debug/nvidia-uvm/processes",
        "sys/kernel/debug/gvm-sim",
    ];
    for path in fixed {
        let segs: Vec<&str> = path.split('/').collect();
        assert!(is_fixed_dir(&segs), "{path}");
        assert_eq!(stat(&h, &segs), Ok(Kind::Dir), "{path}");
    }
    assert_eq!(put(&mut h, &format!("{T1}/create"), U1), Ok(()));
    let pid = h.registered_pids()[0];
    for path in [
        format!("sys/kernel/debug/nvidia-uvm/processes/{pid}"),
        format!("sys/bus/mdev/devices/{U1}"),
        "sys/class/mdev_bus/0000:3b:00.0".to_string(),
        "sys/kernel/debug/nvidia-uvm/processes/list".to_string(),
    ] {
        let segs: Vec<&str> = path.split('/').collect();
        assert!(
            !is_fixed_dir(&segs),
            "{path} can vanish: it must not be cached"
        );
    }
}

const PCI: &str = "sys/bus/pci/devices";

#[test]
fn no_sriov_gpus_no_pci_tree() {
    let (h, _) = host(Model::GvmSim, 0);
    assert_eq!(names(&h, "sys/bus"), ["mdev"]);
    assert_eq!(
        stat(&h, &["sys", "bus", "pci"]).map_err(|e| e.errno()),
        Err(libc::ENOENT)
    );
}

#[test]
fn sriov_pfs_and_vfs_are_served_with_links_modes_and_errnos() {
    let (mut h, _) = host(Model::GvmSim, 0);
    h.set_sriov_gpus(2);
    assert_eq!(names(&h, "sys/bus"), ["mdev", "pci"]);
    assert_eq!(names(&h, PCI), ["0000:41:00.0", "0000:42:00.0"]);
    let pf = format!("{PCI}/0000:41:00.0");
    assert_eq!(names(&h, &pf), ["sriov_numvfs", "sriov_totalvfs"]);
    assert_eq!(text(&h, &format!("{pf}/sriov_totalvfs")), "20\n");
    assert_eq!(
        put(&mut h, &format!("{pf}/sriov_totalvfs"), "4"),
        Err(libc::EACCES)
    );
    assert_eq!(put(&mut h, &format!("{pf}/sriov_numvfs"), "2\n"), Ok(()));
    assert_eq!(text(&h, &format!("{pf}/sriov_numvfs")), "2\n");
    assert_eq!(
        put(&mut h, &format!("{pf}/sriov_numvfs"), "3"),
        Err(libc::EBUSY)
    );
    assert_eq!(
        names(&h, PCI),
        [
            "0000:41:00.0",
            "0000:41:00.4",
            "0000:41:00.5",
            "0000:42:00.0"
        ]
    );
    assert_eq!(
        link(&h, &format!("{pf}/virtfn1")).join("/"),
        format!("{PCI}/0000:41:00.5")
    );
    let vf = format!("{PCI}/0000:41:00.5");
    assert_eq!(link(&h, &format!("{vf}/physfn")).join("/"), pf);
    let nvidia = format!("{vf}/nvidia");
    assert_eq!(
        names(&h, &nvidia),
        [
            "creatable_vgpu_types",
            "current_vgpu_type",
            "vgpu_params",
            "gpu_instance_id",
            "placement_id"
        ]
    );
    let creatable: Vec<&str> = format!("{nvidia}/creatable_vgpu_types")
        .leak()
        .split('/')
        .collect();
    assert_eq!(stat(&h, &creatable), Ok(Kind::File { mode: 0o444 }));
    assert_eq!(text(&h, &format!("{nvidia}/current_vgpu_type")), "0\n");
    assert_eq!(
        put(&mut h, &format!("{nvidia}/current_vgpu_type"), "1047\n"),
        Ok(())
    );
    assert_eq!(text(&h, &format!("{nvidia}/current_vgpu_type")), "1047\n");
    assert_eq!(text(&h, &format!("{nvidia}/placement_id")), "0\n");
    assert_eq!(
        text(
            &h,
            &format!("{PCI}/0000:41:00.4/nvidia/creatable_vgpu_types")
        ),
        "    1047 : NVIDIA H100-20C\n"
    );
    assert_eq!(
        put(&mut h, &format!("{nvidia}/current_vgpu_type"), "nope"),
        Err(libc::EINVAL)
    );
    assert_eq!(
        put(&mut h, &format!("{nvidia}/gpu_instance_id"), "1"),
        Err(libc::EINVAL)
    );
    assert_eq!(
        put(
            &mut h,
            "sys/kernel/debug/gvm-sim/control",
            "vf-hold 0000:41:00.5"
        ),
        Ok(())
    );
    assert_eq!(
        put(&mut h, &format!("{nvidia}/current_vgpu_type"), "0"),
        Err(libc::EPERM)
    );
    // Disabling the VFs removes their directories: a vanished VF is ENOENT.
    assert_eq!(
        put(&mut h, "sys/kernel/debug/gvm-sim/control", "vf-reset"),
        Ok(())
    );
    assert_eq!(
        put(&mut h, &format!("{nvidia}/current_vgpu_type"), "1047"),
        Err(libc::ENOENT)
    );
    assert_eq!(names(&h, &pf), ["sriov_numvfs", "sriov_totalvfs"]);
}
