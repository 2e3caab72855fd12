//! Tests of [`MdevHost`] against fake sysfs trees (see `fixture.rs`).

use std::fs;
use std::thread;
use std::time::Duration;

use uuid::Uuid;

use crate::fixture::{Fixture, TypeSpec, GPU, GPU_DIR, MTTY_DIR};
use crate::{Error, MdevHost};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

const U1: &str = "0f3a7c2e-5b1d-4e8a-9c6f-2d4b8e1a3c5f";
const U2: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

fn uuid(s: &str) -> Result<Uuid, uuid::Error> {
    Uuid::try_parse(s)
}

#[test]
fn no_mdev_bus_means_no_parents_and_no_devices() -> TestResult {
    let f = Fixture::empty()?;
    let m = MdevHost::new(f.host());
    assert!(m.parents()?.is_empty());
    assert!(m.devices()?.is_empty());
    Ok(())
}

#[test]
fn parents_are_sorted_with_types_and_attributes() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    let parents = m.parents()?;
    let names: Vec<&str> = parents.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, [GPU, "mtty"]);

    let gpu = &parents[0];
    assert_eq!(gpu.sysfs_path, f.sys().join("class/mdev_bus").join(GPU));
    assert_eq!(gpu.device_path, fs::canonicalize(f.sys().join(GPU_DIR))?);
    assert_eq!(gpu.type_ids(), ["nvidia-558", "nvidia-559"]);
    let t = &gpu.types[0];
    assert_eq!(t.parent, GPU);
    assert_eq!(t.name.as_deref(), Some("GRID T4-2Q"));
    assert_eq!(t.description.as_deref(), Some("num_heads=4, frl_config=60"));
    assert_eq!(t.device_api, "vfio-pci");
    assert_eq!(t.available_instances, 2);
    let bare = &gpu.types[1];
    assert_eq!(
        (bare.name.as_ref(), bare.description.as_ref()),
        (None, None)
    );
    assert_eq!(bare.available_instances, 0);

    let mtty = &parents[1];
    assert_eq!(mtty.device_path, fs::canonicalize(f.sys().join(MTTY_DIR))?);
    assert_eq!(mtty.type_ids(), ["mtty-1", "mtty-2"]);
    assert_eq!(mtty.types[1].available_instances, 12);

    let json = serde_json::to_value(&parents)?;
    assert_eq!(json[1]["types"][0]["id"], "mtty-1");
    Ok(())
}

#[test]
fn a_missing_required_attribute_names_the_file() -> TestResult {
    let f = Fixture::standard()?;
    f.add_type(
        MTTY_DIR,
        &TypeSpec {
            id: "mtty-9",
            name: None,
            description: None,
            device_api: None,
            available: Some("1"),
        },
    )?;
    let err = MdevHost::new(f.host()).parent("mtty").err();
    match err {
        Some(Error::MissingAttribute { path }) => assert!(path.ends_with("mtty-9/device_api")),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn an_unparseable_count_names_the_file() -> TestResult {
    let f = Fixture::standard()?;
    fs::write(
        f.type_dir(GPU_DIR, "nvidia-558")
            .join("available_instances"),
        "lots\n",
    )?;
    let err = MdevHost::new(f.host()).parents().err();
    match err {
        Some(e @ Error::Parse { .. }) => {
            assert!(
                e.to_string().contains("nvidia-558/available_instances"),
                "{e}"
            );
            assert_eq!(e.errno(), None);
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn an_unknown_parent_suggests_the_closest() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    match m.parent("3b:00.0") {
        Err(Error::ParentNotFound { name, suggestion }) => {
            assert_eq!(name, "3b:00.0");
            assert_eq!(suggestion.as_deref(), Some(GPU));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        m.parent("../../etc"),
        Err(Error::InvalidName { what: "parent", .. })
    ));
    Ok(())
}

#[test]
fn devices_resolve_type_parent_and_group_from_relative_links() -> TestResult {
    let f = Fixture::standard()?;
    f.add_device(GPU_DIR, "nvidia-558", &uuid(U2)?, Some(12))?;
    f.add_device(MTTY_DIR, "mtty-2", &uuid(U1)?, None)?;
    // Something that is not a device must be ignored.
    fs::create_dir_all(f.sys().join("bus/mdev/devices/not-a-uuid"))?;
    let m = MdevHost::new(f.host());

    let devices = m.devices()?;
    assert_eq!(devices.len(), 2);
    // Sorted by UUID: U1 (0f..) before U2 (83..).
    assert_eq!(devices[0].uuid.to_string(), U1);
    assert_eq!(devices[0].parent, "mtty");
    assert_eq!(devices[0].type_id, "mtty-2");
    assert_eq!(devices[0].iommu_group, None);
    assert_eq!(devices[1].parent, GPU);
    assert_eq!(devices[1].type_id, "nvidia-558");
    assert_eq!(devices[1].iommu_group, Some(12));
    assert_eq!(
        devices[1].sysfs_path,
        f.sys().join("bus/mdev/devices").join(U2)
    );

    let gpu = m.parent(GPU)?;
    assert_eq!(
        gpu.find_type("nvidia-558").map(|t| t.devices.clone()),
        Some(vec![uuid(U2)?])
    );
    // Upper case input names the same device.
    assert_eq!(
        m.device(&uuid(&U1.to_ascii_uppercase())?)?.type_id,
        "mtty-2"
    );
    Ok(())
}

#[test]
fn an_unregistered_parent_falls_back_to_its_directory_name() -> TestResult {
    let f = Fixture::standard()?;
    f.add_device(GPU_DIR, "nvidia-558", &uuid(U1)?, None)?;
    fs::remove_file(f.sys().join("class/mdev_bus").join(GPU))?;
    let d = MdevHost::new(f.host()).device(&uuid(U1)?)?;
    assert_eq!(d.parent, "0000:3b:00.0");
    Ok(())
}

#[test]
fn a_missing_device_is_device_not_found() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    let u = uuid(U1)?;
    assert!(matches!(m.device(&u), Err(Error::DeviceNotFound { uuid }) if uuid == u));
    match m.remove(&u) {
        Err(e @ Error::DeviceNotFound { .. }) => assert_eq!(e.errno(), Some(libc::ENOENT)),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn a_mdev_type_link_outside_a_types_dir_is_a_parse_error() -> TestResult {
    let f = Fixture::standard()?;
    let u = uuid(U1)?;
    f.add_device(GPU_DIR, "nvidia-558", &u, None)?;
    let link = f.sys().join(GPU_DIR).join(U1).join("mdev_type");
    fs::remove_file(&link)?;
    std::os::unix::fs::symlink("..", &link)?;
    let err = MdevHost::new(f.host()).device(&u).err();
    assert!(
        matches!(err, Some(Error::Parse { ref path, .. }) if *path == f.sys().join("bus/mdev/devices").join(U1).join("mdev_type")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn create_prechecks_parent_type_and_free_instances() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    assert!(matches!(
        m.create("0000:3b:00.1", "nvidia-558", None),
        Err(Error::ParentNotFound { suggestion: Some(ref s), .. }) if s == GPU
    ));
    match m.create(GPU, "nvidia-999", None) {
        Err(e @ Error::TypeNotFound { .. }) => {
            assert!(e.to_string().contains("nvidia-558, nvidia-559"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    f.add_device(GPU_DIR, "nvidia-559", &uuid(U2)?, None)?;
    match m.create(GPU, "nvidia-559", None) {
        Err(e @ Error::NoFreeInstance { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("'nvidia-559'") && msg.contains("1 device(s)"),
                "{msg}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // None of the failed pre-checks wrote anything.
    let written = fs::read(f.type_dir(GPU_DIR, "nvidia-559").join("create"))?;
    assert!(written.is_empty());
    Ok(())
}

#[test]
fn create_writes_lower_case_uuid_and_waits_for_the_device() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    let u = uuid(&U1.to_ascii_uppercase())?;
    let create = f.type_dir(MTTY_DIR, "mtty-2").join("create");
    let (created, kernel) = thread::scope(|s| {
        // Play the kernel: once the UUID is written, make the device appear, late.
        let kernel = s.spawn(|| -> std::io::Result<String> {
            for _ in 0..400 {
                let text = fs::read_to_string(&create)?;
                if !text.is_empty() {
                    thread::sleep(Duration::from_millis(30));
                    f.add_device(MTTY_DIR, "mtty-2", &u, Some(3))?;
                    return Ok(text);
                }
                thread::sleep(Duration::from_millis(5));
            }
            Ok(String::new())
        });
        (m.create("mtty", "mtty-2", Some(u)), kernel.join())
    });
    let written = kernel.map_err(|_| "kernel thread panicked")??;
    assert_eq!(written, format!("{U1}\n"));
    let d = created?;
    assert_eq!(d.uuid.to_string(), U1);
    assert_eq!((d.parent.as_str(), d.type_id.as_str()), ("mtty", "mtty-2"));
    assert_eq!(d.iommu_group, Some(3));
    Ok(())
}

#[test]
fn create_times_out_when_the_device_never_appears() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host()).with_create_timeout(Duration::from_millis(50));
    match m.create(GPU, "nvidia-558", None) {
        Err(Error::CreateTimeout { uuid, path, .. }) => {
            assert!(path.ends_with(uuid.to_string()));
            let written = fs::read_to_string(f.type_dir(GPU_DIR, "nvidia-558").join("create"))?;
            assert_eq!(written, format!("{uuid}\n"));
            assert_eq!(written.len(), 37);
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn write_create_writes_the_uuid_line_without_pre_check_or_wait() -> TestResult {
    let f = Fixture::standard()?;
    // A long wait would show: write_create must not wait for the device.
    let m = MdevHost::new(f.host()).with_create_timeout(Duration::from_secs(30));
    let u = uuid(&U1.to_ascii_uppercase())?;
    // nvidia-559 has no free instance: the checked create refuses, write_create leaves
    // that to the kernel.
    assert!(matches!(
        m.create(GPU, "nvidia-559", Some(u)),
        Err(Error::NoFreeInstance { .. })
    ));
    let started = std::time::Instant::now();
    m.write_create(GPU, "nvidia-559", &u)?;
    assert!(started.elapsed() < Duration::from_secs(5), "it waited");
    let written = fs::read_to_string(f.type_dir(GPU_DIR, "nvidia-559").join("create"))?;
    assert_eq!(written, format!("{U1}\n"));
    match m.write_create("mty", "mtty-1", &u) {
        Err(e @ Error::ParentNotFound { .. }) => assert_eq!(e.errno(), Some(libc::ENOENT)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        m.write_create("mtty", "mtty-3", &u),
        Err(Error::TypeNotFound { ref available, .. }) if available.len() == 2
    ));
    Ok(())
}

#[test]
fn raw_create_writes_bytes_unchecked_and_maps_missing_files() -> TestResult {
    let f = Fixture::standard()?;
    let m = MdevHost::new(f.host());
    // nvidia-559 has no free instance, but the raw writer does not pre-check.
    m.write_create_raw(GPU, "nvidia-559", b"garbage")?;
    let written = fs::read(f.type_dir(GPU_DIR, "nvidia-559").join("create"))?;
    assert_eq!(written, b"garbage");
    match m.write_create_raw("mty", "mtty-1", b"x") {
        Err(e @ Error::ParentNotFound { .. }) => {
            assert_eq!(e.errno(), Some(libc::ENOENT));
            assert!(e.to_string().contains("did you mean 'mtty'"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        m.write_create_raw("mtty", "mtty-3", b"x"),
        Err(Error::TypeNotFound { ref available, .. }) if available.len() == 2
    ));
    Ok(())
}

#[test]
fn remove_writes_one_and_raw_remove_maps_missing_devices() -> TestResult {
    let f = Fixture::standard()?;
    let u = uuid(U1)?;
    f.add_device(GPU_DIR, "nvidia-558", &u, None)?;
    let m = MdevHost::new(f.host());
    m.remove(&u)?;
    assert_eq!(
        fs::read(f.sys().join(GPU_DIR).join(U1).join("remove"))?,
        b"1\n"
    );
    // No upper-case entry exists: ENOENT names the device by its lower-case UUID.
    match m.write_remove_raw(&U1.to_ascii_uppercase(), b"0") {
        Err(Error::DeviceNotFound { uuid }) => assert_eq!(uuid, u),
        other => panic!("unexpected {other:?}"),
    }
    match m.write_remove_raw("not-a-uuid", b"1") {
        Err(e @ Error::Write { .. }) => assert_eq!(e.errno(), Some(libc::ENOENT)),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn the_client_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<MdevHost>();
    assert_send_sync::<crate::Device>();
}

#[test]
fn remove_of_a_held_device_is_refused_naming_the_holder_and_writes_nothing() -> TestResult {
    let f = Fixture::standard()?;
    let u = uuid(U1)?;
    f.add_device(GPU_DIR, "nvidia-558", &u, Some(5))?;
    let node = f.host().path("/dev/vfio/5");
    // A fake /proc: pid 4242 (qemu-system-x86) has the group node open as fd 20.
    let proc_dir = f.host().path("/fakeproc");
    fs::create_dir_all(proc_dir.join("4242/fd"))?;
    fs::write(proc_dir.join("4242/comm"), "qemu-system-x86\n")?;
    std::os::unix::fs::symlink(&node, proc_dir.join("4242/fd/20"))?;
    let m = MdevHost::new(f.host().with_proc_dir(&proc_dir));
    assert_eq!(m.vfio_nodes(&u)?, vec![node.clone()]);
    let err = match m.remove(&u) {
        Err(e @ Error::Held { .. }) => e,
        other => panic!("expected Held, got {other:?}"),
    };
    let text = err.to_string();
    assert!(text.contains("pid 4242 (qemu-system-x86)"), "{text}");
    assert!(
        text.contains("--wait") && text.contains("gvm-vgpu detach"),
        "{text}"
    );
    assert_eq!(err.errno(), Some(libc::EBUSY));
    assert_eq!(
        fs::read(f.sys().join(GPU_DIR).join(U1).join("remove"))?,
        b"",
        "nothing written"
    );
    // remove_waiting writes regardless (on a kernel it would block until the holder goes).
    m.remove_waiting(&u)?;
    assert_eq!(
        fs::read(f.sys().join(GPU_DIR).join(U1).join("remove"))?,
        b"1\n"
    );
    Ok(())
}

#[test]
fn holders_are_found_in_the_real_proc() -> TestResult {
    let f = Fixture::standard()?;
    let u = uuid(U1)?;
    f.add_device(GPU_DIR, "nvidia-558", &u, Some(9))?;
    let node = f.host().path("/dev/vfio/9");
    fs::create_dir_all(node.parent().ok_or("no parent")?)?;
    let m = MdevHost::new(f.host());
    let open = fs::File::create(&node)?;
    let scan = m.holders(&u)?;
    let me = std::process::id();
    assert!(scan.holders.iter().any(|h| h.pid == me), "{scan:?}");
    drop(open);
    assert!(!m.holders(&u)?.holders.iter().any(|h| h.pid == me));
    // No group, no node, no holders.
    let u2 = uuid(U2)?;
    f.add_device(GPU_DIR, "nvidia-558", &u2, None)?;
    assert!(m.vfio_nodes(&u2)?.is_empty());
    assert!(m.holders(&u2)?.holders.is_empty());
    Ok(())
}
