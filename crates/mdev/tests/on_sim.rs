//! The mdev client against the simulated host's FUSE sysfs: the kernel's answers, through
//! real syscalls, mapped to the client's errors. Needs root and /dev/fuse (else SKIP).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use gvm_mdev::{Error, MdevHost, Uuid};
use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};

fn uuid(n: u32) -> Uuid {
    Uuid::parse_str(&format!("5a5a5a5a-0000-4000-8000-{n:012}")).unwrap()
}

#[test]
fn gpu_parents_create_remove_and_every_error() {
    if skip(
        "mdev gpu_parents_create_remove_and_every_error",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let mdev = MdevHost::new(sim.host_root());

    let parents = mdev.parents().unwrap();
    assert_eq!(
        parents.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["0000:3b:00.0", "0000:3c:00.0"]
    );
    let t = parents[0].find_type("gvmsim-4").unwrap();
    assert_eq!(t.name.as_deref(), Some("SIM-80GB-40C"));
    assert_eq!(t.device_api, "vfio-pci");
    assert_eq!(t.available_instances, 2);
    assert!(t
        .description
        .as_deref()
        .unwrap_or("")
        .contains("framebuffer"));

    let d = mdev
        .create("0000:3b:00.0", "gvmsim-4", Some(uuid(1)))
        .unwrap();
    assert_eq!(d.uuid, uuid(1));
    assert_eq!(d.parent, "0000:3b:00.0");
    assert_eq!(d.type_id, "gvmsim-4");
    assert!(d.iommu_group.is_some());
    assert_eq!(mdev.devices().unwrap().len(), 1);
    let generated = mdev.create("0000:3b:00.0", "gvmsim-4", None).unwrap();

    // Duplicate (in another type and parent too): EEXIST.
    let e = mdev
        .create("0000:3c:00.0", "gvmsim-1", Some(uuid(1)))
        .unwrap_err();
    assert!(matches!(e, Error::UuidExists { .. }), "{e}");
    assert_eq!(e.errno(), Some(libc::EEXIST));
    // The pre-check refuses a full type before writing.
    let e = mdev
        .create("0000:3b:00.0", "gvmsim-4", Some(uuid(2)))
        .unwrap_err();
    assert!(matches!(e, Error::NoFreeInstance { .. }), "{e}");
    // The kernel's own answer to a full type, bypassing the pre-check: EUSERS.
    let e = mdev
        .write_create_raw("0000:3b:00.0", "gvmsim-4", uuid(2).to_string().as_bytes())
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EUSERS), "{e}");
    // Malformed: EINVAL, naming what was written.
    let e = mdev
        .write_create_raw("0000:3c:00.0", "gvmsim-1", b"not-a-uuid")
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    // Unknown parent and type: named, with suggestions.
    let e = mdev.create("0000:3b:00.1", "gvmsim-1", None).unwrap_err();
    assert!(
        e.to_string().contains("0000:3b:00.0"),
        "suggests the real parent: {e}"
    );
    let e = mdev.create("0000:3b:00.0", "gvmsim-9", None).unwrap_err();
    assert!(e.to_string().contains("gvmsim-1"), "lists the types: {e}");

    // remove: 0 does nothing, garbage is EINVAL, 1 removes; unknown is DeviceNotFound.
    mdev.write_remove_raw(&uuid(1).to_string(), b"0").unwrap();
    assert_eq!(mdev.devices().unwrap().len(), 2);
    let e = mdev
        .write_remove_raw(&uuid(1).to_string(), b"yes")
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    mdev.remove(&uuid(1)).unwrap();
    mdev.remove(&generated.uuid).unwrap();
    let e = mdev.remove(&uuid(1)).unwrap_err();
    assert!(matches!(e, Error::DeviceNotFound { .. }), "{e}");
    assert!(mdev.devices().unwrap().is_empty());
    assert_eq!(
        mdev.parent("0000:3b:00.0")
            .unwrap()
            .find_type("gvmsim-4")
            .unwrap()
            .available_instances,
        2
    );
}

#[test]
fn mtty_pool_is_shared_and_exhaustion_is_enospc() {
    if skip(
        "mdev mtty_pool_is_shared_and_exhaustion_is_enospc",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::Mtty, 1);
    let mdev = MdevHost::new(sim.host_root());
    // 11 dual-port devices use 22 of 24 ports.
    for n in 0..11 {
        mdev.create("mtty", "mtty-2", Some(uuid(100 + n))).unwrap();
    }
    let p = mdev.parent("mtty").unwrap();
    assert_eq!(p.find_type("mtty-1").unwrap().available_instances, 2);
    assert_eq!(p.find_type("mtty-2").unwrap().available_instances, 1);
    mdev.create("mtty", "mtty-1", Some(uuid(200))).unwrap();
    mdev.create("mtty", "mtty-1", Some(uuid(201))).unwrap();
    let e = mdev
        .write_create_raw("mtty", "mtty-1", uuid(202).to_string().as_bytes())
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOSPC), "{e}");
    // Upper case is accepted and named lower case.
    mdev.remove(&uuid(200)).unwrap();
    let upper = uuid(300).to_string().to_uppercase();
    mdev.write_create_raw("mtty", "mtty-1", upper.as_bytes())
        .unwrap();
    assert!(mdev.device(&uuid(300)).is_ok());
    // Unloading the parent removes its devices; reloading brings back the whole pool.
    sim.control("unregister mtty").unwrap();
    assert!(mdev.parents().unwrap().is_empty());
    assert!(mdev.devices().unwrap().is_empty());
    sim.control("register mtty").unwrap();
    let p = mdev.parent("mtty").unwrap();
    assert_eq!(p.find_type("mtty-1").unwrap().available_instances, 24);
}

/// The pid of the simulator's owner of `u` (from its owner table), once it has started.
fn owner_pid(sim: &SimHost, u: &Uuid) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(pid) = sim
            .owners()
            .iter()
            .find(|o| o.get(1).map(String::as_str) == Some(&u.to_string()))
            .and_then(|o| o.first()?.parse().ok())
        {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "no owner of {u}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_held_device_is_found_through_its_vfio_group_and_its_remove_refused() {
    if skip(
        "mdev a_held_device_is_found_through_its_vfio_group_and_its_remove_refused",
        require_root_and_fuse(),
    ) {
        return;
    }
    // The kernel's behaviour: remove blocks while an owner holds the device.
    let sim = SimHost::start_with(SimModel::Mtty, 1, &["--held-remove", "block"]);
    let mdev = MdevHost::new(sim.host_root());
    let d = mdev.create("mtty", "mtty-1", Some(uuid(7))).unwrap();
    let group = d.iommu_group.unwrap();
    assert!(sim.root().join(format!("dev/vfio/{group}")).is_file());
    assert!(mdev.holders(&d.uuid).unwrap().holders.is_empty());
    sim.control(&format!("spawn {}", d.uuid)).unwrap();
    let pid = owner_pid(&sim, &d.uuid);

    let scan = mdev.holders(&d.uuid).unwrap();
    assert_eq!(
        scan.holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
        [pid]
    );
    assert_eq!(scan.holders[0].comm.as_deref(), Some("gvm-vgpu-sim"));
    let e = mdev.remove(&d.uuid).unwrap_err();
    assert!(matches!(e, Error::Held { .. }), "{e}");
    assert!(e.to_string().contains(&format!("pid {pid}")), "{e}");
    assert!(mdev.device(&d.uuid).is_ok(), "a refused remove leaves it");

    // remove_waiting writes and returns once the holder is gone.
    let (tx, rx) = std::sync::mpsc::channel();
    let m2 = mdev.clone();
    let u = d.uuid;
    std::thread::spawn(move || {
        let _ = tx.send(m2.remove_waiting(&u).map_err(|e| e.to_string()));
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "the write waits for the holder");
    sim.control(&format!("kill {pid}")).unwrap();
    let r = rx.recv_timeout(std::time::Duration::from_secs(5));
    assert_eq!(r, Ok(Ok(())));
    assert!(matches!(
        mdev.device(&d.uuid),
        Err(Error::DeviceNotFound { .. })
    ));
    assert!(!sim.root().join(format!("dev/vfio/{group}")).exists());
}
