//! Request handling: one method per API call, on the transport-free core.
//!
//! Every handler validates everything first and changes nothing on failure;
//! persistent changes are written to the store *before* the host is touched, so a
//! crash in between is repaired by the next start's reconciliation. One function,
//! [`Daemon::handle`], maps the result to a [`Response`].

use std::collections::BTreeSet;
use std::fs;

use gvm_proto::{
    ApiError, BatchFailure, BatchReport, Call, CreateParams, DefineBatchParams, DefineParams,
    Definition, ErrorCode, ImportReport, Knobs, Overrides, OwnerInfo, Pong, ReconcileReport,
    Request, Response, SetMode, SetParams, Totals, VgpuDetail, VgpuInfo, VgpuState,
    PROTOCOL_VERSION,
};
use serde::Serialize;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::daemon::{add_totals, Daemon};
use crate::limits::check_memory_limit;
use crate::model::{effective, ObservedDevice, TypeSpec};
use crate::ports::{CatalogBinding, PortError};
use crate::store::StoreError;

type Reply = Result<serde_json::Value, ApiError>;

fn json<T: Serialize>(v: &T) -> Reply {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("cannot encode result: {e}")))
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::internal(format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    ))
}

/// The API error for a failed host operation: its whole chain, once, with the errno added
/// only where no part of the chain already states it.
fn port_err(e: PortError) -> ApiError {
    let message = gvm_error_chain::error_chain(&e);
    if e.is_gone() {
        return ApiError::not_found(message);
    }
    let code = match e.errno() {
        Some(libc::EEXIST | libc::EBUSY | libc::ENOSPC | libc::EUSERS) => ErrorCode::Conflict,
        Some(_) => ErrorCode::Kernel,
        None => ErrorCode::Internal,
    };
    match e.errno() {
        Some(n) if !message.contains("errno") => {
            ApiError::new(code, format!("{message} (errno {n})"))
        }
        _ => ApiError::new(code, message),
    }
}

/// The refusal of a `stop` of a held vGPU: who holds it (and the libvirt domain the vGPU
/// is in, when the daemon knows it) and how to end that.
pub(crate) fn held_error(
    uuid: &Uuid,
    holders: &[gvm_mdev::Holder],
    domain: Option<&str>,
) -> ApiError {
    let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
    let named = holders.iter().find_map(|h| h.domain.as_deref());
    let in_domain = match (named, domain) {
        (None, Some(d)) => format!(" (the vGPU is in libvirt domain {d})"),
        _ => String::new(),
    };
    let (shutdown, detach) = match named.or(domain) {
        Some(d) => (
            format!(" (`virsh shutdown {d}`)"),
            format!("`gvm-vgpu detach {d} --uuid {uuid}` or `virsh detach-device {d}`"),
        ),
        None => (
            String::new(),
            "`gvm-vgpu detach` or `virsh detach-device`".to_string(),
        ),
    };
    ApiError::conflict(format!(
        "vGPU {uuid} is in use: held open by {}{in_domain}; nothing was changed. Removing it now would \
         block until the holder lets go, and that wait cannot be interrupted. Shut down the \
         VM{shutdown}, or detach the vGPU from it ({detach}), or pass --wait to wait for \
         the holder to let go (errno EBUSY)",
        names.join(", ")
    ))
}

impl Daemon {
    /// Answer one request.
    pub fn handle(&mut self, req: Request) -> Response {
        let id = req.id;
        // Any request may change a policy, a share or who watches: let the scheduler's
        // next tick look (it goes idle again by itself when there is nothing to do).
        self.scheduler.wake();
        if let Err(e) = req.call.validate() {
            return Response::err(id, e);
        }
        match self.dispatch(req.call) {
            Ok(v) => Response {
                id,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(id, e),
        }
    }

    fn dispatch(&mut self, call: Call) -> Reply {
        match call {
            Call::Ping => json(&Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: PROTOCOL_VERSION,
                root: self.host.root().display().to_string(),
                vgpus: self.all_uuids().len(),
                catalog: self.catalog.as_ref().map(|c| c.status()),
                config: self.config.clone(),
            }),
            Call::List(p) => {
                let list: Vec<VgpuInfo> = self
                    .all_uuids()
                    .into_iter()
                    .filter(|u| !p.defined || self.desired.definitions.contains_key(u))
                    .map(|u| self.info(&u))
                    .collect();
                json(&list)
            }
            Call::Show(t) => {
                let uuids = self.resolve_target(&t.target)?;
                let details: Vec<VgpuDetail> = uuids.iter().map(|u| self.detail(u)).collect();
                match details.len() {
                    1 => json(&details[0]),
                    _ => Err(ApiError::invalid(format!(
                        "domain '{}' holds {} vGPUs: show one by UUID",
                        t.target,
                        details.len()
                    ))),
                }
            }
            Call::Define(p) => self.define(p).and_then(|d| json(&d)),
            Call::DefineBatch(b) => self.define_batch(b).and_then(|r| json(&r)),
            Call::Undefine(t) => {
                let uuid = self.defined_uuid(&t.target)?;
                self.store.remove_definition(&uuid).map_err(store_err)?;
                let def = self.desired.definitions.remove(&uuid);
                info!(%uuid, "definition removed");
                json(&def)
            }
            Call::Start(t) => self.start(&t.target).and_then(|i| json(&i)),
            Call::Stop(t) => self.stop(&t.target).and_then(|i| json(&i)),
            Call::Create(p) => self.create(p).and_then(|i| json(&i)),
            Call::Set(p) => self.set(p).and_then(|d| json(&d)),
            Call::Freeze(t) => self.freeze(&t.target, true).and_then(|d| json(&d)),
            Call::Thaw(t) => self.freeze(&t.target, false).and_then(|d| json(&d)),
            Call::ImportMdevctl(p) => self.import_mdevctl(&p).and_then(|r| json(&r)),
            Call::PolicyGet => json(&self.policy_status()),
            Call::PolicySet(p) => self.policy_set(p).and_then(|s| json(&s)),
            Call::Stats(p) => {
                let uuids = match &p.target {
                    Some(t) => self.resolve_target(t)?,
                    None => self.observed.devices.keys().copied().collect(),
                };
                let mut out = Vec::new();
                for u in uuids {
                    let (_, totals) = self.read_owners(&u);
                    self.totals.insert(u, totals);
                    out.push(self.info(&u));
                }
                json(&out)
            }
            Call::GuestStats(p) => self.guest_stats(p.target.as_deref()).and_then(|g| json(&g)),
            Call::Reconcile => {
                let r: ReconcileReport = self.tick(std::time::Instant::now(), true);
                json(&r)
            }
        }
    }

    /// Prometheus text for every running vGPU, with totals read fresh.
    pub fn metrics(&mut self) -> String {
        let uuids: Vec<Uuid> = self.observed.devices.keys().copied().collect();
        let mut infos = Vec::with_capacity(uuids.len());
        for u in uuids {
            let (_, totals) = self.read_owners(&u);
            self.totals.insert(u, totals);
            infos.push(self.info(&u));
        }
        let mut text = crate::metrics::render(&infos);
        let parents: BTreeSet<&str> = infos.iter().map(|i| i.parent.as_str()).collect();
        let instances = self.scheduler.nvidia().fb_usage(parents);
        let fb: std::collections::BTreeMap<Uuid, u64> = infos
            .iter()
            .filter_map(|i| {
                let domain = self.resolver.domain_uuid_of(&i.uuid);
                crate::nvidia_sched::fb_usage_of(&instances, &i.uuid, &i.parent, domain)
                    .map(|b| (i.uuid, b))
            })
            .collect();
        text.push_str(&crate::metrics::render_nvidia_fb(&infos, &fb));
        text.push_str(&self.guest_metrics());
        text
    }

    /// Live devices and definitions, sorted by UUID.
    fn all_uuids(&self) -> Vec<Uuid> {
        let set: BTreeSet<Uuid> = self
            .observed
            .devices
            .keys()
            .chain(self.desired.definitions.keys())
            .copied()
            .collect();
        set.into_iter().collect()
    }

    /// UUIDs a target names: a known UUID, or a running domain's vGPUs.
    pub(crate) fn resolve_target(&mut self, target: &str) -> Result<Vec<Uuid>, ApiError> {
        if let Ok(u) = Uuid::try_parse(target) {
            if self.observed.devices.contains_key(&u) || self.desired.definitions.contains_key(&u) {
                return Ok(vec![u]);
            }
            return Err(ApiError::not_found(format!(
                "no vGPU {u} on this host and no definition of it: see `gvm-vgpu list`"
            )));
        }
        if let Some(uuids) = self.domain_vgpus(target) {
            return Ok(uuids);
        }
        self.resolver.refresh_libvirt();
        let uuids: Vec<Uuid> = self
            .resolver
            .domains()
            .iter()
            .filter(|d| d.name == target)
            .flat_map(|d| d.uuids.iter().copied())
            .filter(|u| self.observed.devices.contains_key(u))
            .collect();
        if uuids.is_empty() {
            return Err(ApiError::not_found(format!(
                "no vGPU or running domain with vGPUs named '{target}': give a UUID from \
                 `gvm-vgpu list` or the name of a running libvirt domain"
            )));
        }
        Ok(uuids)
    }

    fn defined_uuid(&self, target: &str) -> Result<Uuid, ApiError> {
        let u = Uuid::try_parse(target).map_err(|_| {
            ApiError::invalid(format!(
                "'{target}' is not a UUID: definitions are named by UUID"
            ))
        })?;
        if !self.desired.definitions.contains_key(&u) {
            return Err(ApiError::not_found(format!(
                "vGPU {u} has no definition: see `gvm-vgpu list --defined`"
            )));
        }
        Ok(u)
    }

    fn knobs_of(&self, uuid: &Uuid) -> (Knobs, gvm_proto::Sources) {
        let def = self.desired.definitions.get(uuid);
        effective(
            self.type_spec_of(uuid).as_ref(),
            def,
            self.desired.live.get(uuid),
        )
    }

    /// The catalog type of vGPU `uuid`: the one its device was adopted with, else, for a
    /// definition whose device does not exist, its catalog type by name or its kernel type
    /// id, so a stopped vGPU shows the knobs it will start with.
    fn type_spec_of(&self, uuid: &Uuid) -> Option<TypeSpec> {
        if let Some(t) = self.type_of.get(uuid) {
            return Some(t.clone());
        }
        if self.observed.devices.contains_key(uuid) {
            return None; // running and unmanaged
        }
        let def = self.desired.definitions.get(uuid)?;
        def.type_name
            .as_deref()
            .and_then(|n| self.types.spec_by_name(n))
            .or_else(|| {
                self.types
                    .resolve_kind(def.kind, &def.mdev_type, def.kernel_name.as_deref())
            })
    }

    pub(crate) fn info(&self, uuid: &Uuid) -> VgpuInfo {
        let dev = self.observed.devices.get(uuid);
        let def = self.desired.definitions.get(uuid);
        let (knobs, _) = self.knobs_of(uuid);
        VgpuInfo {
            uuid: *uuid,
            parent: dev
                .map(|d| d.parent.clone())
                .or_else(|| def.map(|d| d.parent.clone()))
                .unwrap_or_default(),
            mdev_type: dev
                .map(|d| d.mdev_type.clone())
                .or_else(|| def.map(|d| d.mdev_type.clone()))
                .unwrap_or_default(),
            type_name: self
                .type_of
                .get(uuid)
                .map(|t| t.name.clone())
                .or_else(|| def.and_then(|d| d.type_name.clone())),
            kind: dev
                .map(|d| d.kind)
                .or_else(|| def.map(|d| d.kind))
                .unwrap_or_default(),
            vf: dev.and_then(|d| d.vf.clone()),
            state: if dev.is_some() {
                VgpuState::Running
            } else {
                VgpuState::Stopped
            },
            managed: self.type_spec_of(uuid).is_some(),
            defined: def.is_some(),
            autostart: def.is_some_and(|d| d.autostart),
            start: gvm_proto::StartMode::of(def.is_some(), def.is_some_and(|d| d.autostart)),
            owner_uids: def.map(|d| d.owner_uids.clone()).unwrap_or_default(),
            domain: self.domain_name_of(uuid),
            owners: self
                .observed
                .owners
                .get(uuid)
                .map(|o| o.keys().copied().collect())
                .unwrap_or_default(),
            knobs,
            totals: self.totals.get(uuid).copied().unwrap_or_default(),
        }
    }

    fn read_owners(&self, uuid: &Uuid) -> (Vec<OwnerInfo>, Totals) {
        let mut owners = Vec::new();
        let mut totals = Totals::default();
        for (pid, rule) in self.observed.owners.get(uuid).into_iter().flatten() {
            let mut gcgroups = Vec::new();
            for gpu in self.observed.owner_gpus(uuid, *pid) {
                if let Ok(r) = self.gc.read(*pid, gpu) {
                    add_totals(&mut totals, &r);
                    let (position, pci) = self.observed.gpu_name(gpu);
                    gcgroups.push(gvm_proto::GcgroupInfo {
                        gpu: position,
                        pci,
                        gvm_index: gpu,
                        memory_limit: r.memory_limit.as_bytes(),
                        memory_current: r.memory_current,
                        swap_current: r.swap_current,
                        priority: r.priority.get(),
                        frozen: r.frozen,
                        kernels_submitted: r.stat.submitted,
                        kernels_ended: r.stat.ended,
                        kernels_pending: r.stat.pending,
                    });
                }
            }
            owners.push(OwnerInfo {
                pid: *pid,
                rule: *rule,
                gcgroups,
            });
        }
        (owners, totals)
    }

    pub(crate) fn detail(&mut self, uuid: &Uuid) -> VgpuDetail {
        let (owners, totals) = self.read_owners(uuid);
        if self.observed.devices.contains_key(uuid) {
            self.totals.insert(*uuid, totals);
        }
        let (_, sources) = self.knobs_of(uuid);
        VgpuDetail {
            info: self.info(uuid),
            sources,
            definition: self.desired.definitions.get(uuid).cloned(),
            live_overrides: self
                .desired
                .live
                .get(uuid)
                .map(|l| l.overrides)
                .unwrap_or_default(),
            owners,
            refused_claims: self
                .observed
                .refused
                .values()
                .filter(|(u, _)| u == uuid)
                .map(|(_, r)| *r)
                .collect(),
            guest: {
                let domain = self.resolver.domain_of(uuid).map(str::to_string);
                self.guests.enforcement_of(uuid, domain.as_deref())
            },
            held_by: self.fallback.mechanism(uuid),
            nvidia_fb_usage_bytes: self.observed.devices.get(uuid).and_then(|d| {
                let instances = self.scheduler.nvidia().fb_usage([d.parent.as_str()]);
                let domain = self.resolver.domain_uuid_of(uuid);
                crate::nvidia_sched::fb_usage_of(&instances, uuid, &d.parent, domain)
            }),
        }
    }

    /// For a `parent` that is an SR-IOV GPU (PF): the VF type `type_name` means there (a
    /// catalog type bound by name, or a VF type's own name), as its ID, its kernel name and
    /// its catalog name. `None` when `parent` is not a PF.
    fn vf_type(&self, parent: &str, type_name: &str) -> Result<Option<VfTypeChoice>, ApiError> {
        let pfs = self.mdev.pfs().map_err(port_err)?;
        let Some(pf) = pfs.iter().find(|p| p.address == parent) else {
            return Ok(None);
        };
        let (kernel_name, catalog_name) = match self.types.binding_of(type_name) {
            Some(CatalogBinding::TypeName(n)) => (n, Some(type_name.to_string())),
            Some(CatalogBinding::TypeId(id)) => {
                return Err(ApiError::invalid(format!(
                    "catalog type '{type_name}' binds the mdev type id {id:?}, which no SR-IOV                      VF type of {parent} has: VF types bind by name; set `mdev_name` in its                      catalog file (see `gvm-vgpu types --parent {parent}`)"
                )))
            }
            None => (
                type_name.to_string(),
                self.types.resolve_vf(type_name).map(|t| t.name),
            ),
        };
        let matches = |name: &str| {
            gvm_vf::VgpuType {
                id: 0,
                name: name.to_string(),
            }
            .matches(&kernel_name)
        };
        let live = self.mdev.vf_vgpus().map_err(port_err)?;
        let found = pf
            .creatable
            .iter()
            .find(|(_, n)| matches(n))
            .map(|(id, n)| (*id, n.clone()))
            .or_else(|| {
                live.iter()
                    .find(|v| v.pf == parent && matches(&v.kernel_name))
                    .map(|v| (v.type_id, v.kernel_name.clone()))
            });
        let Some((id, name)) = found else {
            let offered: Vec<&str> = pf.creatable.iter().map(|(_, n)| n.as_str()).collect();
            return Err(ApiError::not_found(format!(
                "no VF of SR-IOV GPU {parent} offers the vGPU type {kernel_name:?} now (VF types                  offered: {}); enable its VFs (`sriov-manage -e {parent}`) or choose one of                  `gvm-vgpu types --parent {parent}`",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            )));
        };
        Ok(Some(VfTypeChoice {
            type_id: id.to_string(),
            catalog_name: catalog_name.or_else(|| self.types.resolve_vf(&name).map(|t| t.name)),
            kernel_name: name,
        }))
    }

    /// Kernel type id and catalog name for `type_name` on `parent` (which must be registered).
    fn resolve_type(
        &mut self,
        parent: &str,
        type_name: &str,
    ) -> Result<(String, Option<String>), ApiError> {
        let types = self
            .types_of_parent(parent)
            .map(<[_]>::to_vec)
            .map_err(|e| {
                if e.is_gone() {
                    ApiError::not_found(format!(
                        "mdev parent '{parent}' is not registered: see `gvm-vgpu parents`"
                    ))
                } else {
                    port_err(e)
                }
            })?;
        if let Some(t) = types.iter().find(|t| t.id == type_name) {
            let name = self.types.resolve(&t.id, t.name.as_deref()).map(|s| s.name);
            return Ok((t.id.clone(), name));
        }
        for t in &types {
            if self.types.binds(type_name, &t.id, t.name.as_deref()) == Some(true) {
                return Ok((t.id.clone(), Some(type_name.to_string())));
            }
        }
        let ids: Vec<&str> = types.iter().map(|t| t.id.as_str()).collect();
        Err(ApiError::not_found(format!(
            "parent '{parent}' offers no type '{type_name}' (kernel types: {}); \
             give a kernel type id or a catalog type bound to one of them",
            ids.join(", ")
        )))
    }

    /// Kernel type id and catalog name for `type_name` on a parent that is not present:
    /// a kernel type id as given, or a catalog type bound by id. A catalog type bound by the
    /// kernel type's `name` attribute is refused: only the parent's own types can say which
    /// id that name has, and storing the catalog name as the kernel type would make the
    /// definition fail at every start.
    fn absent_parent_type(
        &self,
        parent: &str,
        type_name: &str,
    ) -> Result<(String, Option<String>), ApiError> {
        match self.types.binding_of(type_name) {
            Some(CatalogBinding::TypeId(id)) => Ok((id, Some(type_name.to_string()))),
            Some(CatalogBinding::TypeName(kernel_name)) => Err(ApiError::invalid(format!(
                "mdev parent '{parent}' is not registered, and catalog type '{type_name}' binds \
                 to a kernel type by its name ({kernel_name:?}), which only the parent can \
                 resolve: give the kernel type id (the directory under \
                 mdev_supported_types/, see `gvm-vgpu types` once the parent is there) or \
                 define it when the parent is registered"
            ))),
            None => {
                let name = self.types.resolve(type_name, None).map(|s| s.name);
                Ok((type_name.to_string(), name))
            }
        }
    }

    fn define(&mut self, p: DefineParams) -> Result<Definition, ApiError> {
        let def = self.prepare_definition(p)?;
        self.store.save_definition(&def).map_err(store_err)?;
        info!(uuid = %def.uuid, parent = %def.parent, mdev_type = %def.mdev_type, "vGPU defined");
        self.desired.definitions.insert(def.uuid, def.clone());
        self.retune(&[def.uuid]);
        Ok(def)
    }

    /// `define_batch`: check every item, store them all with one group commit, then
    /// (with `start`) create each vGPU, reporting creations that failed one by one. A
    /// part of a longer list is checked and held until the last part (`batches.rs`).
    fn define_batch(&mut self, b: DefineBatchParams) -> Result<BatchReport, ApiError> {
        let Some(part) = b.part else {
            // UUIDs given twice in one call were refused by `Call::validate`.
            return self.define_list(b.items, b.start);
        };
        let part_err = |e: crate::batches::PartError| ApiError::new(e.code(), e.to_string());
        let mut list = self
            .batches
            .take(&part, std::time::Instant::now())
            .map_err(part_err)?;
        // Check this part's items now, so the error answers the part that holds the
        // bad item; the last part checks the whole list again against what changed.
        for (n, p) in b.items.iter().enumerate() {
            self.prepare_definition(p.clone())
                .map_err(|e| e.context(&format!("item {}", part.offset + n)))?;
        }
        list.extend(b.items).map_err(part_err)?;
        if part.more {
            self.batches
                .hold(part.batch, list, std::time::Instant::now());
            return Ok(BatchReport::default());
        }
        self.define_list(list.items, b.start)
    }

    /// Check every item of a whole list, store them all with one group commit, then
    /// (with `start`) create each vGPU.
    fn define_list(
        &mut self,
        items: Vec<DefineParams>,
        start: bool,
    ) -> Result<BatchReport, ApiError> {
        let mut defs: Vec<Definition> = Vec::with_capacity(items.len());
        for (i, p) in items.into_iter().enumerate() {
            let def = self
                .prepare_definition(p)
                .map_err(|e| e.context(&format!("item {i}")))?;
            defs.push(def);
        }
        self.store.save_definitions(&defs).map_err(store_err)?;
        info!(count = defs.len(), start, "vGPUs defined in one batch");
        let uuids: Vec<Uuid> = defs.iter().map(|d| d.uuid).collect();
        for def in &defs {
            self.desired.definitions.insert(def.uuid, def.clone());
        }
        self.retune(&uuids);
        let mut report = BatchReport {
            defined: defs,
            ..BatchReport::default()
        };
        if start {
            for def in &report.defined {
                if self.observed.devices.contains_key(&def.uuid) {
                    continue;
                }
                let uuid = def.uuid;
                match self.create_defined(def) {
                    Ok(()) => report.started.push(uuid),
                    Err(e) => {
                        warn!(%uuid, "batch start failed: {}", e.message);
                        report.failed.push(BatchFailure {
                            uuid,
                            error: e.message,
                        });
                    }
                }
            }
        }
        Ok(report)
    }

    /// Check a definition request against the host and the store and resolve its
    /// type, without writing anything.
    fn prepare_definition(&mut self, p: DefineParams) -> Result<Definition, ApiError> {
        let uuid = p.uuid.unwrap_or_else(Uuid::new_v4);
        if self.desired.definitions.contains_key(&uuid) {
            return Err(ApiError::conflict(format!(
                "vGPU {uuid} is already defined: undefine it first or use `set --persistent`"
            )));
        }
        let vf = self.vf_type(&p.parent, &p.type_name)?;
        let (mdev_type, type_name) = if let Some(v) = &vf {
            (v.type_id.clone(), v.catalog_name.clone())
        } else if self.observed.parents.contains(&p.parent) {
            self.resolve_type(&p.parent, &p.type_name)?
        } else {
            // Like mdevctl, a definition may name a parent that is not present yet; then
            // the kernel type id must be known without it.
            self.absent_parent_type(&p.parent, &p.type_name)?
        };
        if let Some(name) = &type_name {
            check_memory_limit(
                &format!("vGPU {uuid}"),
                name,
                p.overrides.memory_limit,
                self.types.framebuffer(name).as_ref(),
                p.force,
            )?;
        }
        if let Some(d) = self.observed.devices.get(&uuid) {
            if d.parent != p.parent || d.mdev_type != mdev_type {
                return Err(ApiError::conflict(format!(
                    "vGPU {uuid} is running as {}/{}, not {}/{mdev_type}",
                    d.parent, d.mdev_type, p.parent
                )));
            }
        }
        let def = Definition {
            uuid,
            parent: p.parent,
            mdev_type,
            type_name,
            kind: if vf.is_some() {
                gvm_proto::VgpuKind::Vf
            } else {
                gvm_proto::VgpuKind::Mdev
            },
            kernel_name: vf.map(|v| v.kernel_name),
            autostart: p.autostart,
            overrides: p.overrides,
            owner_uids: checked_owner_uids(p.owner_uids)?,
        };
        Ok(def)
    }

    fn start(&mut self, target: &str) -> Result<VgpuInfo, ApiError> {
        let uuid = self.defined_uuid(target)?;
        if self.observed.devices.contains_key(&uuid) {
            return Err(ApiError::conflict(format!(
                "vGPU {uuid} is already running"
            )));
        }
        let def = self.desired.definitions.get(&uuid).cloned();
        let Some(def) = def else {
            return Err(ApiError::not_found(format!(
                "vGPU {uuid} has no definition"
            )));
        };
        self.create_defined(&def)?;
        Ok(self.info(&uuid))
    }

    /// Create the device of definition `def`, through the ABI its kind names.
    fn create_defined(&mut self, def: &Definition) -> Result<(), ApiError> {
        match def.kind {
            gvm_proto::VgpuKind::Mdev => self.create_device(def.uuid, &def.parent, &def.mdev_type),
            gvm_proto::VgpuKind::Vf => {
                let name = def.kernel_name.as_deref().unwrap_or(&def.mdev_type);
                self.create_vf_device(def.uuid, &def.parent, name)
            }
        }
    }

    /// Create VF vGPU `uuid` of the VF type `kernel_name` on a free VF of `pf`, after
    /// dropping a record of it whose VF no longer carries it (after a reboot).
    fn create_vf_device(
        &mut self,
        uuid: Uuid,
        pf: &str,
        kernel_name: &str,
    ) -> Result<(), ApiError> {
        self.mdev.drop_vf_record(uuid).map_err(port_err)?;
        let v = self
            .mdev
            .create_vf(pf, kernel_name, uuid)
            .map_err(port_err)?;
        let mut report = ReconcileReport::default();
        self.adopt(crate::daemon::observed_vf(v), &mut report);
        self.retune(&[uuid]);
        Ok(())
    }

    fn create_device(&mut self, uuid: Uuid, parent: &str, mdev_type: &str) -> Result<(), ApiError> {
        self.mdev
            .create(parent, mdev_type, uuid)
            .map_err(port_err)?;
        let kernel_name = self.kernel_name(parent, mdev_type);
        let mut report = ReconcileReport::default();
        self.adopt(
            ObservedDevice {
                uuid,
                parent: parent.to_string(),
                mdev_type: mdev_type.to_string(),
                kernel_name,
                kind: gvm_proto::VgpuKind::Mdev,
                vf: None,
            },
            &mut report,
        );
        self.retune(&[uuid]);
        Ok(())
    }

    fn stop(&mut self, target: &str) -> Result<VgpuInfo, ApiError> {
        let uuid = Uuid::try_parse(target)
            .map_err(|_| ApiError::invalid(format!("'{target}' is not a UUID")))?;
        if !self.observed.devices.contains_key(&uuid) {
            return Err(ApiError::not_found(format!("vGPU {uuid} is not running")));
        }
        // Taken before the device is forgotten: a vGPU that was never defined has nothing
        // else left to name its parent and type by.
        let was = self.info(&uuid);
        let holders = self.holders_of(&uuid)?;
        if !holders.is_empty() {
            return Err(held_error(
                &uuid,
                &holders,
                self.domain_name_of(&uuid).as_deref(),
            ));
        }
        // The port checks again right before its write, so a holder that came meanwhile
        // still gets a refusal (EBUSY, a conflict), never a blocked daemon.
        self.mdev.remove(uuid).map_err(port_err)?;
        info!(%uuid, "vGPU stopped");
        self.forget_device(&uuid);
        Ok(VgpuInfo {
            parent: was.parent,
            mdev_type: was.mdev_type,
            type_name: was.type_name,
            ..self.info(&uuid)
        })
    }

    /// Who holds vGPU `uuid` open, sorted by pid: the processes with an fd on its VFIO
    /// group (the kernel's own answer), and the QEMU of the libvirt domain the daemon
    /// knows holds it (observed owners found by the libvirt rule), once each, with the
    /// domain named. Owners found by environment or cgroup run GPU work for the vGPU
    /// but need not have the device open, so they do not count here.
    pub(crate) fn holders_of(&self, uuid: &Uuid) -> Result<Vec<gvm_mdev::Holder>, ApiError> {
        let mut holders = self.mdev.holders(*uuid).map_err(port_err)?;
        let qemu: Vec<u32> = self
            .observed
            .owners
            .get(uuid)
            .into_iter()
            .flatten()
            .filter(|(_, rule)| **rule == gvm_proto::OwnerRule::Libvirt)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &qemu {
            if !holders.iter().any(|h| h.pid == *pid) {
                holders.push(gvm_mdev::Holder {
                    pid: *pid,
                    comm: fs::read_to_string(self.host.proc_dir().join(format!("{pid}/comm")))
                        .ok()
                        .map(|c| c.trim_end().to_string())
                        .filter(|c| !c.is_empty()),
                    domain: None,
                });
            }
        }
        let domain = self.domain_name_of(uuid);
        for h in &mut holders {
            if qemu.contains(&h.pid) {
                h.domain.clone_from(&domain);
            }
        }
        holders.sort_by_key(|h| h.pid);
        Ok(holders)
    }

    fn create(&mut self, p: CreateParams) -> Result<VgpuInfo, ApiError> {
        let uuid = p.uuid.unwrap_or_else(Uuid::new_v4);
        if self.observed.devices.contains_key(&uuid) {
            return Err(ApiError::conflict(format!("vGPU {uuid} already exists")));
        }
        let vf = self.vf_type(&p.parent, &p.type_name)?;
        if vf.is_none() && !self.observed.parents.contains(&p.parent) {
            return Err(ApiError::not_found(format!(
                "'{}' is neither a registered mdev parent nor an SR-IOV GPU: see `gvm-vgpu parents`",
                p.parent
            )));
        }
        let (mdev_type, type_name) = match &vf {
            Some(v) => (v.type_id.clone(), v.catalog_name.clone()),
            None => self.resolve_type(&p.parent, &p.type_name)?,
        };
        if p.define {
            if self.desired.definitions.contains_key(&uuid) {
                return Err(ApiError::conflict(format!(
                    "vGPU {uuid} is already defined"
                )));
            }
            let def = Definition {
                uuid,
                parent: p.parent.clone(),
                mdev_type: mdev_type.clone(),
                type_name,
                kind: if vf.is_some() {
                    gvm_proto::VgpuKind::Vf
                } else {
                    gvm_proto::VgpuKind::Mdev
                },
                kernel_name: vf.as_ref().map(|v| v.kernel_name.clone()),
                autostart: p.autostart,
                overrides: Overrides::default(),
                owner_uids: Vec::new(),
            };
            self.store.save_definition(&def).map_err(store_err)?;
            self.desired.definitions.insert(uuid, def);
        }
        match &vf {
            Some(v) => self.create_vf_device(uuid, &p.parent, &v.kernel_name)?,
            None => self.create_device(uuid, &p.parent, &mdev_type)?,
        }
        info!(%uuid, parent = %p.parent, %mdev_type, "vGPU created");
        Ok(self.info(&uuid))
    }

    fn set(&mut self, p: SetParams) -> Result<Vec<VgpuDetail>, ApiError> {
        let uuids = self.resolve_target(&p.target)?;
        let new = Overrides {
            memory_limit: p.memory_limit,
            priority: p.priority,
            share: p.share,
        };
        // Check every target before changing anything.
        for u in &uuids {
            let defined = self.desired.definitions.contains_key(u);
            let running = self.observed.devices.contains_key(u);
            match p.mode {
                SetMode::Persistent if !defined => {
                    return Err(ApiError::invalid(format!(
                        "vGPU {u} has no definition to change: use --live, or define it first"
                    )))
                }
                SetMode::Live if !running => {
                    return Err(ApiError::conflict(format!(
                        "vGPU {u} is not running: use --persistent to change its definition"
                    )))
                }
                _ => {}
            }
            if running && !self.type_of.contains_key(u) && p.mode != SetMode::Persistent {
                return Err(ApiError::conflict(format!(
                    "vGPU {u} is unmanaged (its kernel type has no catalog entry): add the \
                     type to the catalog before tuning it"
                )));
            }
            let type_name = self.type_of.get(u).map(|t| t.name.clone()).or_else(|| {
                self.desired
                    .definitions
                    .get(u)
                    .and_then(|d| d.type_name.clone())
            });
            if let Some(name) = type_name {
                check_memory_limit(
                    &format!("vGPU {u}"),
                    &name,
                    p.memory_limit,
                    self.types.framebuffer(&name).as_ref(),
                    p.force,
                )?;
            }
        }
        for u in &uuids {
            let persist = p.mode != SetMode::Live && self.desired.definitions.contains_key(u);
            if persist {
                if let Some(def) = self.desired.definitions.get(u) {
                    let mut def = def.clone();
                    let base = if p.clear {
                        Overrides::default()
                    } else {
                        def.overrides
                    };
                    def.overrides = base.merged_with(&new);
                    self.store.save_definition(&def).map_err(store_err)?;
                    self.desired.definitions.insert(*u, def);
                }
            }
            let running = self.observed.devices.contains_key(u);
            if running && p.mode != SetMode::Persistent {
                let mut live = self.desired.live.get(u).copied().unwrap_or_default();
                if p.clear {
                    live.overrides = Overrides::default();
                }
                if persist {
                    // The definition now carries the value: drop a live override that would hide it.
                    if new.memory_limit.is_some() {
                        live.overrides.memory_limit = None;
                    }
                    if new.priority.is_some() {
                        live.overrides.priority = None;
                    }
                    if new.share.is_some() {
                        live.overrides.share = None;
                    }
                } else {
                    live.overrides = live.overrides.merged_with(&new);
                }
                self.store.save_live(u, &live).map_err(store_err)?;
                self.desired.live.insert(*u, live);
            }
            info!(uuid = %u, ?new, mode = ?p.mode, "retuned");
        }
        let errors = self.retune(&uuids);
        if let Some(e) = errors.first() {
            return Err(ApiError::new(
                ErrorCode::Kernel,
                format!("stored, but not applied everywhere: {e}"),
            ));
        }
        self.settle_guests(&uuids, None);
        Ok(uuids.iter().map(|u| self.detail(u)).collect())
    }

    fn freeze(&mut self, target: &str, frozen: bool) -> Result<Vec<VgpuInfo>, ApiError> {
        let uuids = self.resolve_target(target)?;
        for u in &uuids {
            if !self.observed.devices.contains_key(u) {
                return Err(ApiError::conflict(format!("vGPU {u} is not running")));
            }
            if !self.type_of.contains_key(u) {
                return Err(ApiError::conflict(format!(
                    "vGPU {u} is unmanaged (its kernel type has no catalog entry)"
                )));
            }
        }
        for u in &uuids {
            let mut live = self.desired.live.get(u).copied().unwrap_or_default();
            live.frozen = frozen;
            self.store.save_live(u, &live).map_err(store_err)?;
            self.desired.live.insert(*u, live);
            info!(uuid = %u, frozen, "freeze state set");
        }
        let errors = self.retune(&uuids);
        if let Some(e) = errors.first() {
            return Err(ApiError::new(ErrorCode::Kernel, e.clone()));
        }
        self.settle_guests(&uuids, Some(frozen));
        Ok(uuids.iter().map(|u| self.info(u)).collect())
    }

    /// After a retune of `uuids`: wait for their guests to acknowledge the new state, and,
    /// for a freeze or thaw (`frozen`), pause or resume a VM whose guest cannot be relied
    /// on ([`crate::fallback`]). Each outcome is logged.
    fn settle_guests(&mut self, uuids: &[Uuid], frozen: Option<bool>) {
        for u in uuids {
            let domain = self.domain_of(u);
            let want_frozen = frozen.unwrap_or_else(|| self.info(u).knobs.frozen);
            let outcome =
                if frozen.is_some() || self.guests.enforcement_of(u, domain.as_deref()).is_some() {
                    let vm = crate::fallback::VmRef {
                        domain: domain.as_deref(),
                        libvirt_uri: self.libvirt.uri(),
                    };
                    self.fallback.settle(&self.guests, u, vm, want_frozen)
                } else {
                    crate::fallback::Settled::NoGuest
                };
            debug!(uuid = %u, ?outcome, "guest state settled");
        }
    }

    /// Apply the current intent to the owners of `uuids` now; returns the errors.
    pub(crate) fn retune(&mut self, uuids: &[Uuid]) -> Vec<String> {
        let only: BTreeSet<Uuid> = uuids.iter().copied().collect();
        let mut report = ReconcileReport::default();
        self.reconcile(&BTreeSet::new(), Some(&only), &mut report);
        report.errors
    }

    /// Adopt mdevctl's definitions; with `remove_source`, delete each mdevctl file once its
    /// gvm-vgpu definition is stored (synced), so that a failure leaves ours in place.
    fn import_mdevctl(&mut self, p: &gvm_proto::ImportParams) -> Result<ImportReport, ApiError> {
        let dry_run = p.dry_run;
        let dir = self.host.mdevctl_config_dir();
        let mut report = ImportReport::default();
        let parents = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "cannot read {}: {e}",
                    dir.display()
                )))
            }
        };
        let mut found = Vec::new();
        for p in parents.flatten() {
            let parent = p.file_name().to_string_lossy().into_owned();
            if parent == "scripts.d" || !p.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(p.path()).into_iter().flatten().flatten() {
                found.push((parent.clone(), f.path()));
            }
        }
        found.sort();
        for (parent, path) in found {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(uuid) = Uuid::try_parse(&name) else {
                report
                    .skipped
                    .push(format!("{}: not named by a UUID", path.display()));
                continue;
            };
            let parsed = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| crate::mdevctl::parse(&t));
            let cfg = match parsed {
                Ok(c) => c,
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if let Some(ours) = self.desired.definitions.get(&uuid) {
                if ours.parent == parent && ours.mdev_type == cfg.mdev_type {
                    report.skipped.push(format!("{uuid}: already defined"));
                    let removing = p.remove_source && !dry_run;
                    report
                        .mdevctl_sources
                        .push(mdevctl_source(uuid, &path, removing));
                } else {
                    report.skipped.push(format!(
                        "{uuid}: already defined as {} on {}, which mdevctl's {} ({} on {parent}) \
                         contradicts: both stay; `gvm-vgpu undefine {uuid}` or `mdevctl undefine \
                         --uuid {uuid}` settles it",
                        ours.mdev_type,
                        ours.parent,
                        path.display(),
                        cfg.mdev_type
                    ));
                }
                continue;
            }
            let type_name = self.types.resolve(&cfg.mdev_type, None).map(|t| t.name);
            let def = Definition {
                uuid,
                parent,
                mdev_type: cfg.mdev_type,
                type_name,
                kind: gvm_proto::VgpuKind::Mdev,
                kernel_name: None,
                autostart: cfg.autostart,
                overrides: Overrides::default(),
                owner_uids: Vec::new(),
            };
            if !dry_run {
                self.store.save_definition(&def).map_err(store_err)?;
                self.desired.definitions.insert(uuid, def.clone());
                info!(%uuid, "imported mdevctl definition");
            }
            report.imported.push(def);
            let removing = p.remove_source && !dry_run;
            report
                .mdevctl_sources
                .push(mdevctl_source(uuid, &path, removing));
        }
        Ok(report)
    }
}

/// mdevctl's definition file `path` of `uuid`, which gvm-vgpu now defines too: deleted when
/// `remove` (the caller has stored ours first), the failure recorded, never returned: our
/// definition stays and the report says what to run.
fn mdevctl_source(uuid: Uuid, path: &std::path::Path, remove: bool) -> gvm_proto::MdevctlSource {
    let mut source = gvm_proto::MdevctlSource {
        uuid,
        path: path.display().to_string(),
        removed: false,
        error: None,
    };
    if remove {
        match fs::remove_file(path) {
            Ok(()) => {
                source.removed = true;
                info!(%uuid, path = %path.display(), "removed mdevctl's definition");
            }
            // Gone since it was read: what was asked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => source.removed = true,
            Err(e) => source.error = Some(format!("cannot remove {}: {e}", path.display())),
        }
    }
    source
}

/// What a type name means on an SR-IOV GPU (see `Daemon::vf_type`).
struct VfTypeChoice {
    /// The VF type ID, in decimal.
    type_id: String,
    /// The VF type's name, by which it is created.
    kernel_name: String,
    /// The catalog type bound to it.
    catalog_name: Option<String>,
}

/// A definition's `owner_uids`, sorted and without repeats; refused beyond
/// [`gvm_proto::MAX_OWNER_UIDS`].
fn checked_owner_uids(mut uids: Vec<u32>) -> Result<Vec<u32>, ApiError> {
    uids.sort_unstable();
    uids.dedup();
    if uids.len() > gvm_proto::MAX_OWNER_UIDS {
        return Err(ApiError::invalid(format!(
            "owner_uids lists {} uids, at most {}: allow a group of users with gvm-vgpud --owner-uid instead",
            uids.len(),
            gvm_proto::MAX_OWNER_UIDS
        )));
    }
    Ok(uids)
}
