//! The libvirt qemu hook: vGPUs exist before a domain starts, transient ones go when it ends.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu` (and every executable in `/etc/libvirt/hooks/qemu.d/`)
//! as `qemu <domain> <operation> <sub-operation> <extra>` with the domain XML on standard input,
//! at each step of a domain's life. A non-zero exit of `prepare begin` aborts the start and
//! libvirt shows the hook's standard error to the user. A hook must not call libvirt (libvirtd
//! waits for it: calling back deadlocks), so everything here acts on sysfs only.
//!
//! - `prepare begin`: every vGPU of the domain (mdev hostdevs, VF hostdevs and gvm metadata
//!   bindings) must exist. A missing mdev is created from, in order: the daemon's definition
//!   `/etc/gvm-vgpu/vgpus/<uuid>.json` (parent and kernel type), the metadata entry's recorded
//!   parent and kernel type, or the metadata entry's catalog type (placed on any parent).
//!   Without any of them the start fails with [`Error::NoDefinition`].
//!   A VF vGPU (one with a record `/etc/gvm-vgpu/vf-vgpus/<uuid>.json`, see [`gvm_vf::Assignments`])
//!   is made ready instead ([`vf_action`]): a VF with no type (after a reboot re-enabled the
//!   VFs) gets the recorded one, a VF that has it is left alone (never reset: writing the
//!   type again would fail or clear its parameters), and a VF that holds another type fails
//!   the start with [`Error::VfTypeChanged`]. Every VF vGPU is checked before anything is
//!   written, so a refused start changes no VF.
//! - `release end`: vGPUs the metadata marks `persistent="no"` are removed (a VF vGPU through
//!   its record's compare-before-write).
//!
//! A domain with none of these passes whatever is missing on the host. Deciding how to make a
//! vGPU ([`recipe`], [`vf_action`]) is pure; [`prepare`] and [`release`] do the I/O.

use std::path::{Path, PathBuf};

use gvm_catalog::Catalog;
use gvm_host_root::HostRoot;
use gvm_mdev::MdevHost;
use gvm_proto::Definition;
use gvm_vf::{Assignment, Assignments, VfHost};
use uuid::Uuid;

use crate::domain_xml::{DomainInfo, MetaVgpu};
use crate::error::{Error, Result};
use gvm_catalog::placement::place;

/// The hook steps gvm-vgpu acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOp {
    /// `prepare begin`: before libvirt allocates resources for the domain.
    Prepare,
    /// `release end`: after the domain's resources were released.
    Release,
    /// Any other step: nothing to do.
    Ignore,
}

/// Which step `operation` and `sub-operation` name.
pub fn hook_op(op: &str, subop: &str) -> HookOp {
    match (op, subop) {
        ("prepare", "begin") => HookOp::Prepare,
        ("release", "end") => HookOp::Release,
        _ => HookOp::Ignore,
    }
}

/// How to create a missing vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// On this parent with this kernel type; `from` says where that came from.
    Exact {
        /// Parent name.
        parent: String,
        /// Kernel mdev type id.
        mdev_type: String,
        /// `definition <path>` or `domain metadata`.
        from: String,
    },
    /// Any parent offering this catalog type (from the domain metadata).
    ByType(String),
    /// Nothing says how.
    Unknown,
}

/// How to create vGPU `uuid`: the daemon's definition first, then the metadata entry.
pub fn recipe(definition: Option<(&Path, &Definition)>, meta: Option<&MetaVgpu>) -> Recipe {
    if let Some((path, def)) = definition {
        return Recipe::Exact {
            parent: def.parent.clone(),
            mdev_type: def.mdev_type.clone(),
            from: format!("definition {}", path.display()),
        };
    }
    match meta {
        Some(MetaVgpu {
            parent: Some(parent),
            mdev_type: Some(mdev_type),
            ..
        }) => Recipe::Exact {
            parent: parent.clone(),
            mdev_type: mdev_type.clone(),
            from: "domain metadata".into(),
        },
        Some(MetaVgpu {
            type_name: Some(t), ..
        }) => Recipe::ByType(t.clone()),
        _ => Recipe::Unknown,
    }
}

/// What a VF vGPU's VF needs before its domain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfAction {
    /// It holds the recorded type: nothing to write.
    Ready,
    /// It holds no type (`current_vgpu_type` is 0): write the recorded ID.
    SetType(u32),
    /// It holds another type, set by someone else: refuse, leave it alone.
    Refuse {
        /// The type ID found.
        found: u32,
    },
}

/// What VF vGPU `record` needs, its VF's `current_vgpu_type` being `current`.
pub fn vf_action(record: &Assignment, current: u32) -> VfAction {
    if current == record.type_id {
        VfAction::Ready
    } else if current == 0 {
        VfAction::SetType(record.type_id)
    } else {
        VfAction::Refuse { found: current }
    }
}

/// What the hook did to one vGPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It already existed.
    Present(Uuid),
    /// It was created.
    Created {
        /// The vGPU.
        uuid: Uuid,
        /// Parent it was created on.
        parent: String,
        /// Kernel type.
        mdev_type: String,
    },
    /// A VF vGPU's VF was given its recorded type.
    VfTypeSet {
        /// The vGPU.
        uuid: Uuid,
        /// The VF.
        vf: String,
        /// The type name on record.
        type_name: String,
    },
    /// It was removed (transient).
    Removed(Uuid),
    /// A transient vGPU that was already gone.
    AlreadyGone(Uuid),
}

/// `/etc/gvm-vgpu/vgpus/<uuid>.json`: the daemon's persistent definition of a vGPU.
pub fn definition_path(host: &HostRoot, uuid: &Uuid) -> PathBuf {
    host.config_dir().join("vgpus").join(format!("{uuid}.json"))
}

/// The daemon's definition of `uuid`, if there is one.
pub fn read_definition(host: &HostRoot, uuid: &Uuid) -> Result<Option<(PathBuf, Definition)>> {
    let path = definition_path(host, uuid);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Definition {
                path,
                source: Box::new(e),
            })
        }
    };
    let def: Definition = serde_json::from_slice(&bytes).map_err(|e| Error::Definition {
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok(Some((path, def)))
}

/// `prepare begin`: make every vGPU of the domain exist. `catalog` is only called when a
/// vGPU has to be placed by catalog type. Stops at the first vGPU that cannot be made.
pub fn prepare(
    host: &HostRoot,
    mdev: &MdevHost,
    catalog: &mut dyn FnMut() -> Option<Catalog>,
    info: &DomainInfo,
) -> Result<Vec<Outcome>> {
    let records = Assignments::new(VfHost::new(host.clone()));
    let vfs = VfHost::new(host.clone());
    let mut info = info.clone();
    if info.pci_hostdevs.iter().any(|h| h.uuid.is_none()) {
        // Hand-written VF hostdevs: tied by their one record. Records that cannot be read
        // tie nothing, so a domain whose PCI devices are not vGPUs is not refused for them.
        if let Ok(all) = records.list() {
            info.bind_vf_records(&all);
        }
    }
    // First every VF vGPU is checked (reads only), so a refusal writes nothing.
    let mut vf_plan = Vec::new();
    for uuid in info.vgpus() {
        if let Some(step) = vf_step(&records, &vfs, &info, &uuid)? {
            vf_plan.push(step);
        }
    }
    let mut out = Vec::new();
    for uuid in info.vgpus() {
        if let Some((record, action)) = vf_plan.iter().find(|(r, _)| r.uuid == uuid) {
            if let VfAction::SetType(id) = action {
                vfs.write_type(&record.vf, *id)
                    .map_err(|source| Error::Vf {
                        op: "set the type of",
                        uuid,
                        source,
                    })?;
                out.push(Outcome::VfTypeSet {
                    uuid,
                    vf: record.vf.clone(),
                    type_name: record.type_name.clone(),
                });
            } else {
                out.push(Outcome::Present(uuid));
            }
            continue;
        }
        match mdev.device(&uuid) {
            Ok(_) => {
                out.push(Outcome::Present(uuid));
                continue;
            }
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => {}
            Err(source) => {
                return Err(Error::Mdev {
                    op: "look up",
                    uuid,
                    source,
                })
            }
        }
        let def = read_definition(host, &uuid)?;
        let how = recipe(
            def.as_ref().map(|(p, d)| (p.as_path(), d)),
            info.meta(&uuid),
        );
        let (parent, mdev_type) = match how {
            Recipe::Exact {
                parent, mdev_type, ..
            } => (parent, mdev_type),
            Recipe::ByType(name) => {
                let parents = mdev
                    .parents()
                    .map_err(|source| Error::MdevList { source })?;
                let at = place(catalog().as_ref(), &name, &parents)?;
                (at.parent, at.mdev_type)
            }
            Recipe::Unknown => {
                return Err(Error::NoDefinition {
                    domain: info.name.clone(),
                    uuid,
                    definition: definition_path(host, &uuid),
                })
            }
        };
        mdev.create(&parent, &mdev_type, Some(uuid))
            .map_err(|source| Error::Mdev {
                op: "create",
                uuid,
                source,
            })?;
        out.push(Outcome::Created {
            uuid,
            parent,
            mdev_type,
        });
    }
    Ok(out)
}

/// The record of VF vGPU `uuid` and what its VF needs; `None` when `uuid` is no VF vGPU (no
/// record, no VF hostdev tied to it). Refuses a VF vGPU whose record is missing, whose VF
/// vanished or holds another type, or whose hostdev names another VF than its record.
fn vf_step(
    records: &Assignments,
    vfs: &VfHost,
    info: &DomainInfo,
    uuid: &Uuid,
) -> Result<Option<(Assignment, VfAction)>> {
    let hostdev = info.vf_hostdev(uuid);
    let record = match records.get(uuid) {
        Ok(r) => r,
        Err(gvm_vf::Error::NotAssigned { .. }) => {
            return match hostdev {
                Some(h) => Err(Error::VfNotRecorded {
                    domain: info.name.clone(),
                    uuid: *uuid,
                    vf: h.address.clone(),
                }),
                None => Ok(None),
            }
        }
        Err(source) => {
            return Err(Error::Vf {
                op: "read the record of",
                uuid: *uuid,
                source,
            })
        }
    };
    if let Some(h) = hostdev.filter(|h| h.address != record.vf) {
        return Err(Error::Xml {
            what: format!("VF hostdev of vGPU {uuid} in domain '{}'", info.name),
            detail: format!(
                "it names VF {}, but the vGPU is on VF {}: detach it (`gvm-vgpu detach {} --uuid {uuid}`) and attach it again",
                h.address, record.vf, info.name
            ),
        });
    }
    let state = vfs.vf_state(&record.vf).map_err(|source| Error::Vf {
        op: "check the VF of",
        uuid: *uuid,
        source,
    })?;
    match vf_action(&record, state.current) {
        VfAction::Refuse { found } => Err(Error::VfTypeChanged {
            uuid: *uuid,
            vf: record.vf,
            expected: record.type_id,
            type_name: record.type_name,
            found,
        }),
        action => Ok(Some((record, action))),
    }
}

/// `release end`: remove the vGPUs the domain's metadata marks transient. Tries all of them
/// and returns the first error after that.
pub fn release(mdev: &MdevHost, info: &DomainInfo) -> Result<Vec<Outcome>> {
    let records = Assignments::new(VfHost::new(mdev.host().clone()));
    let mut out = Vec::new();
    let mut first_err = None;
    for m in info.metadata.iter().filter(|m| !m.persistent) {
        match records.remove(&m.uuid) {
            Ok(()) => {
                out.push(Outcome::Removed(m.uuid));
                continue;
            }
            Err(gvm_vf::Error::NotAssigned { .. }) => {}
            Err(source) => {
                first_err.get_or_insert(Error::Vf {
                    op: "remove",
                    uuid: m.uuid,
                    source,
                });
                continue;
            }
        }
        match mdev.remove(&m.uuid) {
            Ok(()) => out.push(Outcome::Removed(m.uuid)),
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => out.push(Outcome::AlreadyGone(m.uuid)),
            Err(source) => {
                first_err.get_or_insert(Error::Mdev {
                    op: "remove",
                    uuid: m.uuid,
                    source,
                });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(parent: Option<&str>, mdev_type: Option<&str>, type_name: Option<&str>) -> MetaVgpu {
        MetaVgpu {
            uuid: Uuid::nil(),
            type_name: type_name.map(str::to_string),
            parent: parent.map(str::to_string),
            mdev_type: mdev_type.map(str::to_string),
            persistent: true,
            created: false,
        }
    }

    const VF: &str = "0000:41:00.4";
    const VF2: &str = "0000:41:00.5";

    /// A temp host with two VFs (plain files: every write succeeds) and no mdev parent.
    fn vf_host(current: &[(&str, u32)]) -> (tempfile::TempDir, HostRoot) {
        let dir = tempfile::tempdir().unwrap();
        for (vf, id) in current {
            let n = dir
                .path()
                .join("sys/bus/pci/devices")
                .join(vf)
                .join("nvidia");
            std::fs::create_dir_all(&n).unwrap();
            std::fs::write(n.join("current_vgpu_type"), format!("{id}\n")).unwrap();
            std::fs::write(n.join("creatable_vgpu_types"), "1047 : NVIDIA H100-20C\n").unwrap();
        }
        let host = HostRoot::new(dir.path());
        (dir, host)
    }

    fn record(host: &HostRoot, uuid: Uuid, vf: &str) -> Assignment {
        let a = Assignment {
            uuid,
            pf: "0000:41:00.0".into(),
            vf: vf.into(),
            type_id: 1047,
            type_name: "NVIDIA H100-20C".into(),
        };
        let dir = host.config_dir().join("vf-vgpus");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{uuid}.json")),
            serde_json::to_vec(&a).unwrap(),
        )
        .unwrap();
        a
    }

    fn current(host: &HostRoot, vf: &str) -> String {
        std::fs::read_to_string(
            host.pci_devices_dir()
                .join(vf)
                .join("nvidia/current_vgpu_type"),
        )
        .unwrap()
        .trim()
        .to_string()
    }

    fn domain_with(devices: &str) -> DomainInfo {
        crate::domain_xml::parse(&format!(
            "<domain><name>vm1</name><devices>{devices}</devices></domain>"
        ))
        .unwrap()
    }

    fn run_prepare(host: &HostRoot, info: &DomainInfo) -> Result<Vec<Outcome>> {
        let mdev = MdevHost::new(host.clone());
        prepare(host, &mdev, &mut || None, info)
    }

    #[test]
    fn a_vf_gets_its_recorded_type_only_when_it_has_none() {
        let r = Assignment {
            uuid: Uuid::nil(),
            pf: "p".into(),
            vf: VF.into(),
            type_id: 1047,
            type_name: "NVIDIA H100-20C".into(),
        };
        assert_eq!(vf_action(&r, 0), VfAction::SetType(1047));
        assert_eq!(vf_action(&r, 1047), VfAction::Ready);
        assert_eq!(vf_action(&r, 1048), VfAction::Refuse { found: 1048 });
    }

    #[test]
    fn prepare_sets_a_cleared_vf_and_leaves_a_ready_one_alone() {
        let (_dir, host) = vf_host(&[(VF, 0), (VF2, 1047)]);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        record(&host, a, VF);
        record(&host, b, VF2);
        let devices = format!(
            "{}{}",
            crate::domain_xml::vf_hostdev_xml(&a, VF).unwrap(),
            crate::domain_xml::vf_hostdev_xml(&b, VF2).unwrap()
        );
        let out = run_prepare(&host, &domain_with(&devices)).unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::VfTypeSet {
                    uuid: a,
                    vf: VF.into(),
                    type_name: "NVIDIA H100-20C".into()
                },
                Outcome::Present(b),
            ]
        );
        assert_eq!(current(&host, VF), "1047");
        // Idempotent: the second start writes nothing.
        let again = run_prepare(&host, &domain_with(&devices)).unwrap();
        assert_eq!(again, vec![Outcome::Present(a), Outcome::Present(b)]);
    }

    #[test]
    fn a_vf_with_another_type_refuses_the_start_before_any_vf_is_written() {
        let (_dir, host) = vf_host(&[(VF, 0), (VF2, 1048)]);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        record(&host, a, VF);
        record(&host, b, VF2);
        let devices = format!(
            "{}{}",
            crate::domain_xml::vf_hostdev_xml(&a, VF).unwrap(),
            crate::domain_xml::vf_hostdev_xml(&b, VF2).unwrap()
        );
        let e = run_prepare(&host, &domain_with(&devices)).unwrap_err();
        assert!(
            matches!(e, Error::VfTypeChanged { found: 1048, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(VF2) && text.contains("1048") && text.contains("current_vgpu_type"),
            "{text}"
        );
        assert_eq!(current(&host, VF), "0", "nothing half-done");
        assert_eq!(current(&host, VF2), "1048", "the other tool's type stays");
    }

    #[test]
    fn a_vf_vgpu_without_record_or_vf_fails_naming_both() {
        let (_dir, host) = vf_host(&[(VF, 0)]);
        let u = Uuid::from_u128(7);
        let hostdev = crate::domain_xml::vf_hostdev_xml(&u, VF).unwrap();
        let e = run_prepare(&host, &domain_with(&hostdev)).unwrap_err();
        assert!(matches!(e, Error::VfNotRecorded { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&u.to_string()) && text.contains(VF) && text.contains("vm1"));

        // The record's VF vanished (VFs disabled): the error names the VF and the fix.
        record(&host, u, "0000:41:00.6");
        let moved = crate::domain_xml::vf_hostdev_xml(&u, "0000:41:00.6").unwrap();
        let e = run_prepare(&host, &domain_with(&moved)).unwrap_err();
        let chain = gvm_error_chain::error_chain(&e);
        assert!(
            matches!(
                e,
                Error::Vf {
                    source: gvm_vf::Error::VfGone { .. },
                    ..
                }
            ) && chain.contains("0000:41:00.6")
                && chain.contains("sriov-manage"),
            "{chain}"
        );
        // A hostdev that names another VF than the record.
        let e = run_prepare(&host, &domain_with(&hostdev))
            .unwrap_err()
            .to_string();
        assert!(e.contains(VF) && e.contains("0000:41:00.6"), "{e}");
    }

    #[test]
    fn hand_written_vf_hostdevs_are_found_by_record_and_foreign_ones_pass() {
        let (_dir, host) = vf_host(&[(VF, 0)]);
        let nic = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source></hostdev>";
        assert_eq!(run_prepare(&host, &domain_with(nic)).unwrap(), vec![]);
        let u = Uuid::from_u128(9);
        record(&host, u, VF);
        let plain = "<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source></hostdev>";
        let out = run_prepare(&host, &domain_with(&format!("{nic}{plain}"))).unwrap();
        assert!(
            matches!(&out[..], [Outcome::VfTypeSet { uuid, .. }] if *uuid == u),
            "{out:?}"
        );
        assert_eq!(current(&host, VF), "1047");
    }

    #[test]
    fn release_removes_a_transient_vf_vgpu_through_its_record() {
        let (_dir, host) = vf_host(&[(VF, 1047)]);
        let u = Uuid::from_u128(3);
        record(&host, u, VF);
        let mut info = domain_with("");
        info.metadata.push(MetaVgpu {
            persistent: false,
            uuid: u,
            ..meta(Some("0000:41:00.0"), None, Some("NVIDIA H100-20C"))
        });
        let mdev = MdevHost::new(host.clone());
        assert_eq!(release(&mdev, &info).unwrap(), vec![Outcome::Removed(u)]);
        assert_eq!(current(&host, VF), "0");
        assert!(Assignments::new(VfHost::new(host.clone()))
            .list()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn only_prepare_begin_and_release_end_act() {
        assert_eq!(hook_op("prepare", "begin"), HookOp::Prepare);
        assert_eq!(hook_op("release", "end"), HookOp::Release);
        assert_eq!(hook_op("prepare", "end"), HookOp::Ignore);
        assert_eq!(hook_op("started", "begin"), HookOp::Ignore);
    }

    #[test]
    fn the_daemon_definition_wins_over_metadata() {
        let def: Definition = serde_json::from_value(serde_json::json!({
            "uuid": Uuid::nil(), "parent": "gpu1", "mdev_type": "gvmsim-2"
        }))
        .unwrap();
        let m = meta(Some("gpu0"), Some("gvmsim-1"), Some("sim-4c"));
        let r = recipe(
            Some((Path::new("/etc/gvm-vgpu/vgpus/x.json"), &def)),
            Some(&m),
        );
        assert_eq!(
            r,
            Recipe::Exact {
                parent: "gpu1".into(),
                mdev_type: "gvmsim-2".into(),
                from: "definition /etc/gvm-vgpu/vgpus/x.json".into(),
            }
        );
    }

    #[test]
    fn metadata_gives_exact_placement_then_type_then_nothing() {
        let exact = meta(Some("gpu0"), Some("gvmsim-1"), Some("sim-4c"));
        assert!(
            matches!(recipe(None, Some(&exact)), Recipe::Exact { parent, .. } if parent == "gpu0")
        );
        let by_type = meta(None, Some("gvmsim-1"), Some("sim-4c"));
        assert_eq!(
            recipe(None, Some(&by_type)),
            Recipe::ByType("sim-4c".into())
        );
        assert_eq!(recipe(None, Some(&meta(None, None, None))), Recipe::Unknown);
        assert_eq!(recipe(None, None), Recipe::Unknown);
    }

    #[test]
    fn definitions_are_read_through_the_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let u = Uuid::new_v4();
        assert!(read_definition(&host, &u).unwrap().is_none());
        let path = definition_path(&host, &u);
        assert!(path.starts_with(dir.path()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        let e = read_definition(&host, &u).unwrap_err().to_string();
        assert!(e.contains(&u.to_string()), "{e}");
        std::fs::write(
            &path,
            serde_json::json!({"uuid": u, "parent": "p", "mdev_type": "t"}).to_string(),
        )
        .unwrap();
        let (_, def) = read_definition(&host, &u).unwrap().unwrap();
        assert_eq!(def.mdev_type, "t");
    }
}
