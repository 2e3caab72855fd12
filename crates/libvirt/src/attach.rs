//! `attach` and `detach`: give a domain a vGPU through libvirt, and take it back.
//!
//! Attaching is three steps: have a vGPU (create one of a catalog type, or reuse a UUID), add
//! its mdev `<hostdev>` to the domain, and record it in gvm's metadata element (see
//! [`crate::domain_xml`]) with what is needed to create it again (parent, kernel type, catalog
//! type), whether attach created it (`created="yes"`) and whether it did so for this run of the
//! domain only (`persistent="no"`). The metadata is what lets the hook recreate the vGPU before
//! the domain starts, the hook remove a transient one after it stops, and the daemon find the
//! domain of a vGPU.
//!
//! Detaching removes the hostdev and the metadata entry, and removes the vGPU itself when the
//! metadata says attach created it ([`MetaVgpu::made_by_attach`]), unless the caller keeps it
//! ([`DetachHow::keep_vgpu`]) or a definition of this or another domain still names it. A vGPU
//! the user made and attached by UUID is never removed. That removal never blocks by surprise: the
//! kernel's remove of a held mdev waits uninterruptibly for the holder. When the domain is off,
//! a held vGPU is held by a process other than this domain's QEMU: the detach is refused
//! before anything changes. After
//! a live detach the domain's QEMU lets go once the guest released the device: detach waits up
//! to [`DETACH_GRACE`] for that, then reports [`Error::DetachedButHeld`] rather than block.
//! [`detach_waiting`] writes the remove anyway and waits.
//!
//! Placement (which parent and kernel type to create a catalog type on) is
//! [`gvm_catalog::placement::place`], shared with the CLI and the hook.
//!
//! An SR-IOV VF vGPU (docs/vendor-vfio.md) goes the same way with its own device: a UUID that
//! is no mdev but has a record ([`gvm_vf::Assignments`]) is attached as the VF's PCI hostdev
//! ([`domain_xml::vf_hostdev_xml`]), its metadata entry naming the VF type and the PF; a type
//! no mdev parent can place is created on a free VF when the host has SR-IOV GPUs. The VF must
//! hold the recorded type (one with none, after a reboot, is given it again; one with
//! another type is refused, [`Error::VfTypeChanged`]). Detach removes a VF vGPU attach
//! created through its record, which writes `0` only if the VF still holds the recorded type.

use std::time::{Duration, Instant};

use gvm_catalog::placement::place;
use gvm_catalog::Catalog;
use gvm_mdev::{MdevHost, Parent};
use gvm_vf::{Assignment, Assignments, VfHost};
use uuid::Uuid;

use crate::connection::{Apply, Connection};
use crate::domain_xml::{self, MetaVgpu};
use crate::error::{Error, Result};
use crate::hook::{vf_action, VfAction};

/// Which vGPU to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Create a new vGPU of this catalog type (or, when no catalog type has the name, of this
    /// kernel mdev type id).
    Type(String),
    /// Reuse the existing vGPU with this UUID.
    Uuid(Uuid),
}

/// What to attach, where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// Domain name.
    pub domain: String,
    /// The vGPU.
    pub target: Target,
    /// Change the persistent definition (`--persistent`, libvirt's `--config`).
    pub persistent: bool,
    /// Change the running domain (`--live`).
    pub live: bool,
    /// Restrict placement of a new vGPU to this parent.
    pub parent: Option<String>,
    /// `display='on|off'` on the hostdev.
    pub display: Option<bool>,
    /// Add the `<hostdev>` (normal). `false` only records the binding in the metadata, for a
    /// domain whose QEMU cannot open the mdev (no VFIO) but whose vGPU should follow it.
    pub hostdev: bool,
}

impl AttachRequest {
    /// A request with the usual defaults: hostdev on, no display, no parent restriction.
    pub fn new(domain: impl Into<String>, target: Target, persistent: bool, live: bool) -> Self {
        AttachRequest {
            domain: domain.into(),
            target,
            persistent,
            live,
            parent: None,
            display: None,
            hostdev: true,
        }
    }
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The vGPU.
    pub uuid: Uuid,
    /// Whether attach created it.
    pub created: bool,
    /// Which definitions were changed.
    pub apply: Apply,
    /// The metadata entry written.
    pub metadata: MetaVgpu,
    /// The hostdev XML attached (`None` when only the binding was recorded).
    pub hostdev_xml: Option<String>,
}

/// How [`detach`] goes about it: which definitions it changes (libvirt's "current" one when
/// neither `persistent` nor `live`), and whether a vGPU attach created stays on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DetachHow {
    /// Change the persistent definition (`--persistent`, libvirt's `--config`).
    pub persistent: bool,
    /// Change the running domain (`--live`).
    pub live: bool,
    /// Keep a vGPU that attach created (`--keep-vgpu`): only the binding goes.
    pub keep_vgpu: bool,
}

impl DetachHow {
    /// Detach from these definitions, removing a vGPU attach created.
    pub fn new(persistent: bool, live: bool) -> DetachHow {
        DetachHow {
            persistent,
            live,
            keep_vgpu: false,
        }
    }
}

/// What [`detach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// The vGPU.
    pub uuid: Uuid,
    /// Which definitions were changed.
    pub apply: Apply,
    /// Whether a hostdev was detached (else only the metadata binding was removed).
    pub hostdev: bool,
    /// Whether the metadata said attach created the vGPU.
    pub made_by_attach: bool,
    /// Whether the vGPU itself was removed (attach had created it, and nothing keeps it).
    pub removed_vgpu: bool,
    /// Other domains whose definitions still name the vGPU: a vGPU attach created is kept for
    /// them.
    pub still_used_by: Vec<String>,
}

/// The definitions to change: as asked, or libvirt's "current" (live when the domain is
/// active, its definition otherwise) when neither flag is given.
pub fn resolve_apply(persistent: bool, live: bool, active: bool) -> Apply {
    if persistent || live {
        Apply {
            config: persistent,
            live,
        }
    } else if active {
        Apply::LIVE
    } else {
        Apply::CONFIG
    }
}

/// The catalog type name of an existing device, when the catalog knows its kernel type.
fn catalog_name(
    catalog: Option<&Catalog>,
    parents: &[Parent],
    parent: &str,
    type_id: &str,
) -> Option<String> {
    let t = parents
        .iter()
        .find(|p| p.name == parent)
        .and_then(|p| p.find_type(type_id))?;
    catalog
        .and_then(|c| c.resolve(&t.id, t.name.as_deref()))
        .map(|b| b.name.clone())
}

/// Attach a vGPU to a domain (see the module docs). On failure, a vGPU created here is
/// removed again and a hostdev attached here is detached again.
pub fn attach(
    conn: &Connection,
    mdev: &MdevHost,
    catalog: Option<&Catalog>,
    req: &AttachRequest,
) -> Result<Attached> {
    let active = conn.state(&req.domain)?.is_active();
    let apply = resolve_apply(req.persistent, req.live, active);
    let vfs = VfHost::new(mdev.host().clone());
    let records = Assignments::new(vfs.clone());
    let parents = mdev
        .parents()
        .map_err(|source| Error::MdevList { source })?;
    let (device, created) = match &req.target {
        Target::Uuid(uuid) => match mdev.device(uuid) {
            Ok(d) => (d, false),
            Err(gvm_mdev::Error::DeviceNotFound { .. }) => match records.get(uuid) {
                Ok(record) => return attach_vf(conn, &vfs, &records, req, apply, record, false),
                Err(gvm_vf::Error::NotAssigned { .. }) => {
                    return Err(Error::NoSuchVgpu { uuid: *uuid })
                }
                Err(source) => {
                    return Err(Error::Vf {
                        op: "find",
                        uuid: *uuid,
                        source,
                    })
                }
            },
            Err(source) => {
                return Err(Error::Mdev {
                    op: "find",
                    uuid: *uuid,
                    source,
                })
            }
        },
        Target::Type(name) => {
            let scoped: Vec<Parent> = parents
                .iter()
                .filter(|p| req.parent.as_ref().is_none_or(|want| &p.name == want))
                .cloned()
                .collect();
            let at = match place(catalog, name, &scoped) {
                Ok(at) => at,
                Err(placement) => {
                    // No mdev parent takes it: a free VF may, on a host with SR-IOV GPUs, when
                    // the type binds by name (the name the VFs list, as the catalog binds it).
                    let kernel_name = match catalog {
                        Some(c) => c.vf_kernel_name(name).ok(),
                        None => Some(name.clone()),
                    };
                    if let (Some(kernel_name), true) =
                        (kernel_name, vfs.pfs().is_ok_and(|p| !p.is_empty()))
                    {
                        let uuid = Uuid::new_v4();
                        let record = records
                            .create(req.parent.as_deref(), &kernel_name, Some(uuid))
                            .map_err(|source| Error::Vf {
                                op: "create",
                                uuid,
                                source,
                            })?;
                        return attach_vf(conn, &vfs, &records, req, apply, record, true);
                    }
                    return Err(placement.into());
                }
            };
            let uuid = Uuid::new_v4();
            let d = mdev
                .create(&at.parent, &at.mdev_type, Some(uuid))
                .map_err(|source| Error::Mdev {
                    op: "create",
                    uuid,
                    source,
                })?;
            (d, true)
        }
    };
    let entry = MetaVgpu {
        uuid: device.uuid,
        type_name: catalog_name(catalog, &parents, &device.parent, &device.type_id),
        parent: Some(device.parent.clone()),
        mdev_type: Some(device.type_id.clone()),
        // A vGPU made for a live-only attach lives as long as this run of the domain.
        persistent: !created || apply.config,
        created,
    };
    let hostdev = req
        .hostdev
        .then(|| domain_xml::hostdev_xml(&entry.uuid, req.display));
    let result = write_attachment(conn, &req.domain, &entry, hostdev, apply);
    if result.is_err() && created {
        // Roll back; the original error is the one to report.
        let _ = mdev.remove(&device.uuid);
    }
    let hostdev_xml = result?;
    Ok(Attached {
        uuid: device.uuid,
        created,
        apply,
        metadata: entry,
        hostdev_xml,
    })
}

/// Attach VF vGPU `record` (created here when `created`): make sure its VF holds the recorded
/// type, attach its PCI hostdev and record it in the metadata. On failure a vGPU created here
/// is removed and a type written here is cleared again.
fn attach_vf(
    conn: &Connection,
    vfs: &VfHost,
    records: &Assignments,
    req: &AttachRequest,
    apply: Apply,
    record: Assignment,
    created: bool,
) -> Result<Attached> {
    let uuid = record.uuid;
    let undo_create = |e: Error| {
        if created {
            let _ = records.remove(&uuid);
        }
        e
    };
    if req.display.is_some() {
        return Err(undo_create(Error::Xml {
            what: format!("hostdev of VF vGPU {uuid}"),
            detail: format!(
                "display= is an mdev hostdev's attribute; VF {} is a PCI hostdev without it: leave --display out",
                record.vf
            ),
        }));
    }
    let state = vfs.vf_state(&record.vf).map_err(|source| {
        undo_create(Error::Vf {
            op: "check the VF of",
            uuid,
            source,
        })
    })?;
    let set_here = match vf_action(&record, state.current) {
        VfAction::Ready => false,
        VfAction::SetType(id) => {
            vfs.write_type(&record.vf, id).map_err(|source| Error::Vf {
                op: "set the type of",
                uuid,
                source,
            })?;
            true
        }
        VfAction::Refuse { found } => {
            return Err(Error::VfTypeChanged {
                uuid,
                vf: record.vf,
                expected: record.type_id,
                type_name: record.type_name,
                found,
            })
        }
    };
    let entry = MetaVgpu {
        uuid,
        type_name: Some(record.type_name.clone()),
        parent: Some(record.pf.clone()),
        mdev_type: None,
        persistent: !created || apply.config,
        created,
    };
    let hostdev = match req.hostdev {
        true => Some(domain_xml::vf_hostdev_xml(&uuid, &record.vf).map_err(undo_create)?),
        false => None,
    };
    let result = write_attachment(conn, &req.domain, &entry, hostdev, apply);
    if result.is_err() {
        // Roll back; the original error is the one to report.
        if created {
            let _ = records.remove(&uuid);
        } else if set_here {
            let _ = vfs.write_type(&record.vf, 0);
        }
    }
    let hostdev_xml = result?;
    Ok(Attached {
        uuid,
        created,
        apply,
        metadata: entry,
        hostdev_xml,
    })
}

fn write_attachment(
    conn: &Connection,
    domain: &str,
    entry: &MetaVgpu,
    hostdev: Option<String>,
    apply: Apply,
) -> Result<Option<String>> {
    if let Some(xml) = &hostdev {
        conn.attach_device(domain, xml, apply)?;
    }
    let written = update_metadata(conn, domain, apply, |entries| {
        domain_xml::with_entry(entries, entry.clone())
    });
    if let (Err(_), Some(xml)) = (&written, &hostdev) {
        let _ = conn.detach_device(domain, xml, apply);
    }
    written.map(|()| hostdev)
}

/// Rewrite the metadata of each definition in `apply` with `change` applied to its entries.
fn update_metadata(
    conn: &Connection,
    domain: &str,
    apply: Apply,
    change: impl Fn(&[MetaVgpu]) -> Vec<MetaVgpu>,
) -> Result<()> {
    for (on, inactive, which) in [
        (apply.config, true, Apply::CONFIG),
        (apply.live, false, Apply::LIVE),
    ] {
        if on {
            let current = conn.info(domain, inactive)?;
            conn.set_vgpu_metadata(domain, &change(&current.metadata), which)?;
        }
    }
    Ok(())
}

/// What [`detach_waiting`] calls with the holders before it waits for them.
pub type Announce<'a> = dyn FnMut(&[gvm_mdev::Holder]) + 'a;

/// How long a live detach waits for the domain's QEMU to let go of the vGPU it removes.
pub const DETACH_GRACE: Duration = Duration::from_secs(5);
/// Poll interval of that wait.
const HOLDER_POLL: Duration = Duration::from_millis(100);

/// Detach vGPU `uuid` from `domain`: remove its hostdev (when it has one) and its metadata
/// entry from the chosen definitions, then remove the vGPU when attach created it, `how` does
/// not keep it, and no definition of this domain or another still names it. A held vGPU is
/// never removed (see the module documentation): refused before any change, or
/// [`Error::DetachedButHeld`].
pub fn detach(
    conn: &Connection,
    mdev: &MdevHost,
    domain: &str,
    uuid: &Uuid,
    how: DetachHow,
) -> Result<Detached> {
    detach_impl(conn, mdev, domain, uuid, how, None)
}

/// [`detach`], but a vGPU to remove that is still held after the detach is removed anyway:
/// the remove waits (uninterruptibly, in the kernel) until every holder has closed it.
/// `announce` is called with the holders first, when there are any.
pub fn detach_waiting(
    conn: &Connection,
    mdev: &MdevHost,
    domain: &str,
    uuid: &Uuid,
    how: DetachHow,
    announce: &mut Announce<'_>,
) -> Result<Detached> {
    detach_impl(conn, mdev, domain, uuid, how, Some(announce))
}

/// The holders of `uuid`; none when it is gone.
fn holders(mdev: &MdevHost, uuid: &Uuid) -> Result<Vec<gvm_mdev::Holder>> {
    match mdev.holders(uuid) {
        Ok(s) => Ok(s.holders),
        Err(gvm_mdev::Error::DeviceNotFound { .. }) => Ok(Vec::new()),
        Err(source) => Err(Error::Mdev {
            op: "find the holders of",
            uuid: *uuid,
            source,
        }),
    }
}

fn detach_impl(
    conn: &Connection,
    mdev: &MdevHost,
    domain: &str,
    uuid: &Uuid,
    how: DetachHow,
    wait: Option<&mut Announce<'_>>,
) -> Result<Detached> {
    let active = conn.state(domain)?.is_active();
    let apply = resolve_apply(how.persistent, how.live, active);
    let vfs = VfHost::new(mdev.host().clone());
    let records = Assignments::new(vfs.clone());
    let record = match records.get(uuid) {
        Ok(r) => Some(r),
        Err(gvm_vf::Error::NotAssigned { .. }) => None,
        Err(source) => {
            return Err(Error::Vf {
                op: "read the record of",
                uuid: *uuid,
                source,
            })
        }
    };
    let to_remove = || -> Result<bool> {
        Ok(!how.keep_vgpu
            && conn
                .info(domain, true)?
                .meta(uuid)
                .is_some_and(MetaVgpu::made_by_attach))
    };
    match &record {
        // A VF vGPU to remove whose VF holds another type would be refused by the record's
        // compare-before-write after the detach: refuse it before changing anything.
        Some(r) => {
            if to_remove()? {
                refuse_changed_vf(&vfs, r)?;
            }
        }
        // A shut-off domain's QEMU holds nothing, and no detach will make a holder let go:
        // refuse an mdev to remove that is held before changing anything (with a wait, the
        // remove below waits instead). On a running domain a config-only detach leaves the
        // live domain naming the vGPU, so it is not removed at all.
        None => {
            if wait.is_none() && !active && to_remove()? {
                let held = holders(mdev, uuid)?;
                if !held.is_empty() {
                    return Err(Error::Mdev {
                        op: "remove",
                        uuid: *uuid,
                        source: gvm_mdev::Error::Held {
                            uuid: *uuid,
                            holders: held,
                        },
                    });
                }
            }
        }
    }
    // Hand-written VF hostdevs are found through the records; unreadable ones tie nothing.
    let (hostdev, made_by_attach) = unbind(
        conn,
        domain,
        uuid,
        apply,
        &records.list().unwrap_or_default(),
    )?;
    let mut removed_vgpu = false;
    let removable = made_by_attach && !how.keep_vgpu && !still_named(conn, domain, uuid, active)?;
    // Attached to another domain too (by UUID): it stays for that one.
    let still_used_by: Vec<String> = if removable {
        conn.domains_of(uuid)?
            .into_iter()
            .filter(|d| d != domain)
            .collect()
    } else {
        Vec::new()
    };
    if removable && still_used_by.is_empty() {
        if record.is_some() {
            remove_vf(&records, uuid, active && apply.live)?;
            removed_vgpu = true;
        } else {
            removed_vgpu = remove_mdev(mdev, domain, uuid, wait, active && apply.live)?;
        }
    }
    Ok(Detached {
        uuid: *uuid,
        apply,
        hostdev,
        made_by_attach,
        removed_vgpu,
        still_used_by,
    })
}

/// Remove `uuid`'s hostdev (mdev, or the VF one, aliased or tied by `records`) and metadata
/// entry from each definition in `apply`; returns (a hostdev went, the metadata said attach
/// created the vGPU). [`Error::NotAttached`] when no definition named it.
fn unbind(
    conn: &Connection,
    domain: &str,
    uuid: &Uuid,
    apply: Apply,
    records: &[Assignment],
) -> Result<(bool, bool)> {
    let mut found = false;
    let mut hostdev = false;
    let mut made_by_attach = false;
    for (on, inactive, which) in [
        (apply.config, true, Apply::CONFIG),
        (apply.live, false, Apply::LIVE),
    ] {
        if !on {
            continue;
        }
        let mut info = conn.info(domain, inactive)?;
        info.bind_vf_records(records);
        let xml = match (
            info.hostdevs.iter().find(|h| h.uuid == *uuid),
            info.vf_hostdev(uuid),
        ) {
            (Some(h), _) => Some(domain_xml::hostdev_xml(uuid, h.display)),
            (None, Some(h)) => Some(domain_xml::vf_hostdev_xml(uuid, &h.address)?),
            (None, None) => None,
        };
        if let Some(xml) = xml {
            conn.detach_device(domain, &xml, which)?;
            found = true;
            hostdev = true;
        }
        if let Some(m) = info.meta(uuid) {
            made_by_attach |= m.made_by_attach();
            conn.set_vgpu_metadata(
                domain,
                &domain_xml::without_entry(&info.metadata, uuid),
                which,
            )?;
            found = true;
        }
    }
    if !found {
        return Err(Error::NotAttached {
            domain: domain.to_string(),
            uuid: *uuid,
        });
    }
    Ok((hostdev, made_by_attach))
}

/// [`Error::VfTypeChanged`] when `record`'s VF holds another type than the record (a VF
/// that is gone or holds none is fine: removing the vGPU then drops the record only).
fn refuse_changed_vf(vfs: &VfHost, record: &Assignment) -> Result<()> {
    match vfs.vf_state(&record.vf) {
        Ok(st) if st.current != 0 && st.current != record.type_id => Err(Error::VfTypeChanged {
            uuid: record.uuid,
            vf: record.vf.clone(),
            expected: record.type_id,
            type_name: record.type_name.clone(),
            found: st.current,
        }),
        _ => Ok(()),
    }
}

/// Remove VF vGPU `uuid` through its record. After a live detach (`live_detach`) QEMU lets
/// go of the VF once the guest released it, and until then the driver refuses the `0`
/// (EBUSY/EPERM): that is retried for up to [`DETACH_GRACE`].
fn remove_vf(records: &Assignments, uuid: &Uuid, live_detach: bool) -> Result<()> {
    let start = Instant::now();
    loop {
        match records.remove(uuid) {
            Ok(()) => return Ok(()),
            Err(gvm_vf::Error::VfBusy { .. }) if live_detach && start.elapsed() < DETACH_GRACE => {
                std::thread::sleep(HOLDER_POLL);
            }
            Err(source) => {
                return Err(Error::Vf {
                    op: "remove",
                    uuid: *uuid,
                    source,
                })
            }
        }
    }
}

/// Remove mdev `uuid` after its detach: with `wait`, announce its holders and wait for them;
/// without, give them [`DETACH_GRACE`] after a live detach, then report
/// [`Error::DetachedButHeld`] rather than block. Returns whether it was there to remove.
fn remove_mdev(
    mdev: &MdevHost,
    domain: &str,
    uuid: &Uuid,
    wait: Option<&mut Announce<'_>>,
    live_detach: bool,
) -> Result<bool> {
    let result = match wait {
        Some(announce) => {
            let held = holders(mdev, uuid)?;
            if !held.is_empty() {
                announce(&held);
            }
            mdev.remove_waiting(uuid)
        }
        None => {
            let held = wait_for_release(mdev, uuid, live_detach)?;
            if !held.is_empty() {
                return Err(Error::DetachedButHeld {
                    domain: domain.to_string(),
                    uuid: *uuid,
                    holders: held,
                    waited_s: DETACH_GRACE.as_secs(),
                });
            }
            mdev.remove(uuid)
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(gvm_mdev::Error::DeviceNotFound { .. }) => Ok(false),
        Err(source) => Err(Error::Mdev {
            op: "remove",
            uuid: *uuid,
            source,
        }),
    }
}

/// The holders of `uuid` once they let go or, after a live detach, once [`DETACH_GRACE`]
/// has passed (without one, at once).
fn wait_for_release(
    mdev: &MdevHost,
    uuid: &Uuid,
    live_detach: bool,
) -> Result<Vec<gvm_mdev::Holder>> {
    let start = Instant::now();
    loop {
        let held = holders(mdev, uuid)?;
        if held.is_empty() || !live_detach || start.elapsed() >= DETACH_GRACE {
            return Ok(held);
        }
        std::thread::sleep(HOLDER_POLL);
    }
}

fn still_named(conn: &Connection, domain: &str, uuid: &Uuid, active: bool) -> Result<bool> {
    let mut named = conn.info(domain, true)?.vgpus().contains(uuid);
    if active {
        named |= conn.info(domain, false)?.vgpus().contains(uuid);
    }
    Ok(named)
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
