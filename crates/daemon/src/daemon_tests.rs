//! The daemon core over in-memory ports (no sysfs, no GVM) with one QEMU owning two
//! vGPUs on different GPUs: each of the QEMU's gcgroups gets the knobs of the vGPU
//! whose parent has that GVM GPU index, a gcgroup on another GPU is left alone, and a
//! restart converges on what the gcgroups hold (a freeze left by a crash included);
//! and a `define_batch` list sent in parts is stored whole by its last part or not at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use gvm_host_root::HostRoot;
use uuid::Uuid;

use crate::backends::Backends;
use crate::daemon::{Daemon, Timing};
use crate::model::TypeSpec;
use crate::ports::{DeviceInfo, MdevPort, PortError, PortResult, TypeInfo, TypePort};
use gvm_gcgroup::{GcgroupBackend, GcgroupSnapshot, MemoryLimit, Priority};

/// Parents in the order a real host would probe them: GPU indices 0 and 8 by the
/// fallback rule (no `gvm_uvm_index` file in a fake).
const PARENTS: [&str; 2] = ["0000:1a:00.0", "0000:3c:00.0"];
const QEMU: u32 = 300;

/// (pid, gpu) → knobs as last written: (memory.limit, priority, frozen).
type Knobs = BTreeMap<(u32, u32), (u64, Option<u8>, bool)>;

#[derive(Debug, Default)]
struct Host {
    /// vGPU → (parent, kernel type).
    devices: BTreeMap<Uuid, (String, String)>,
    knobs: Knobs,
}

type Shared = Arc<Mutex<Host>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, Host> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

fn gone(uuid: Uuid) -> PortError {
    PortError::Mdev {
        op: "read device",
        object: uuid.to_string(),
        source: gvm_mdev::Error::DeviceNotFound { uuid },
    }
}

fn gc_gone(pid: u32) -> gvm_gcgroup::Error {
    gvm_gcgroup::Error::ProcessGone { pid }
}

struct Mdev(Shared);

impl Mdev {
    fn info(&self, uuid: Uuid) -> PortResult<DeviceInfo> {
        let h = lock(&self.0);
        let (parent, mdev_type) = h.devices.get(&uuid).ok_or_else(|| gone(uuid))?;
        Ok(DeviceInfo {
            uuid,
            parent: parent.clone(),
            mdev_type: mdev_type.clone(),
        })
    }
}

impl MdevPort for Mdev {
    fn parent_names(&self) -> PortResult<Vec<String>> {
        // Deliberately unsorted: the fallback sorts.
        Ok(PARENTS.iter().rev().map(|p| p.to_string()).collect())
    }
    fn parent_types(&self, _: &str) -> PortResult<Vec<TypeInfo>> {
        Ok(["t-a", "t-b"]
            .iter()
            .map(|t| TypeInfo {
                id: t.to_string(),
                name: None,
            })
            .collect())
    }
    fn device_names(&self) -> PortResult<Vec<String>> {
        Ok(lock(&self.0)
            .devices
            .keys()
            .map(|u| u.to_string())
            .collect())
    }
    fn devices(&self) -> PortResult<Vec<DeviceInfo>> {
        let uuids: Vec<Uuid> = lock(&self.0).devices.keys().copied().collect();
        uuids.into_iter().map(|u| self.info(u)).collect()
    }
    fn device(&self, uuid: Uuid) -> PortResult<DeviceInfo> {
        self.info(uuid)
    }
    fn create(&self, _: &str, _: &str, _: Uuid) -> PortResult<()> {
        Ok(())
    }
    fn remove(&self, _: Uuid) -> PortResult<()> {
        Ok(())
    }
}

struct Gc(Shared);

impl Gc {
    /// Change one (pid, gpu)'s knobs as a write would.
    fn update(
        &self,
        pid: u32,
        gpu: u32,
        f: impl FnOnce(&mut (u64, Option<u8>, bool)),
    ) -> gvm_gcgroup::Result<()> {
        let mut h = lock(&self.0);
        let slot = h.knobs.get_mut(&(pid, gpu)).ok_or_else(|| gc_gone(pid))?;
        f(slot);
        Ok(())
    }
}

impl GcgroupBackend for Gc {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn processes(&self) -> gvm_gcgroup::Result<Vec<u32>> {
        let mut p: Vec<u32> = lock(&self.0).knobs.keys().map(|k| k.0).collect();
        p.dedup();
        Ok(p)
    }
    fn gpus(&self, pid: u32) -> gvm_gcgroup::Result<Vec<u32>> {
        let h = lock(&self.0);
        Ok(h.knobs.keys().filter(|k| k.0 == pid).map(|k| k.1).collect())
    }
    fn read(&self, pid: u32, gpu: u32) -> gvm_gcgroup::Result<GcgroupSnapshot> {
        let h = lock(&self.0);
        let (memory_limit, priority, frozen) = h
            .knobs
            .get(&(pid, gpu))
            .copied()
            .ok_or_else(|| gc_gone(pid))?;
        Ok(GcgroupSnapshot {
            memory_limit: MemoryLimit::from_bytes(memory_limit),
            priority: Priority::clamped(priority.unwrap_or(8)),
            frozen,
            ..GcgroupSnapshot::default()
        })
    }
    fn set_memory_limit(&self, pid: u32, gpu: u32, limit: MemoryLimit) -> gvm_gcgroup::Result<()> {
        self.update(pid, gpu, |slot| slot.0 = limit.as_bytes())
    }
    fn set_priority(&self, pid: u32, gpu: u32, priority: Priority) -> gvm_gcgroup::Result<()> {
        self.update(pid, gpu, |slot| slot.1 = Some(priority.get()))
    }
    fn set_frozen(&self, pid: u32, gpu: u32, frozen: bool) -> gvm_gcgroup::Result<()> {
        self.update(pid, gpu, |slot| slot.2 = frozen)
    }
}

/// Type `t-a`: 4 GiB, priority 4; `t-b`: 2 GiB, priority 9.
struct Types;

impl TypePort for Types {
    fn resolve(&self, mdev_type: &str, _: Option<&str>) -> Option<TypeSpec> {
        let (memory_limit, priority) = match mdev_type {
            "t-a" => (4 << 30, 4),
            "t-b" => (2 << 30, 9),
            _ => return None,
        };
        Some(TypeSpec {
            name: mdev_type.into(),
            memory_limit,
            priority,
            share: None,
            host_swap: false,
        })
    }
    fn binds(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
}

const UNTOUCHED: (u64, Option<u8>, bool) = (u64::MAX, None, false);

/// vGPUs A (type `t-a`, first parent) and B (`t-b`, second parent), both held by the
/// libvirt domain `vm` whose QEMU is [`QEMU`].
fn a_and_b() -> (Uuid, Uuid) {
    (Uuid::from_u128(0xa), Uuid::from_u128(0xb))
}

/// A host root where libvirt's run directory names QEMU 300 with both mdevs, and the
/// fake host with A and B live and the QEMU's gcgroups on `gpus` at `knobs`.
fn qemu_host(
    dir: &std::path::Path,
    gpus: &[u32],
    knobs: (u64, Option<u8>, bool),
) -> (HostRoot, Shared) {
    let (a, b) = a_and_b();
    let host = HostRoot::new(dir).with_proc_dir(dir.join("proc"));
    write_libvirt_run_dir(&host);
    let shared = Arc::new(Mutex::new(Host::default()));
    {
        let mut h = lock(&shared);
        h.devices.insert(a, (PARENTS[0].into(), "t-a".into()));
        h.devices.insert(b, (PARENTS[1].into(), "t-b".into()));
        for gpu in gpus {
            h.knobs.insert((QEMU, *gpu), knobs);
        }
    }
    (host, shared)
}

/// libvirt's run directory: domain `vm`, QEMU [`QEMU`], both mdevs.
fn write_libvirt_run_dir(host: &HostRoot) {
    let (a, b) = a_and_b();
    let lv = host.libvirt_run_dir();
    assert!(std::fs::create_dir_all(&lv).is_ok());
    assert!(std::fs::write(lv.join("vm.pid"), format!("{QEMU}\n")).is_ok());
    let xml = format!(
        "<domain><devices>\
         <hostdev mode='subsystem' type='mdev'><source><address uuid='{a}'/></source></hostdev>\
         <hostdev mode='subsystem' type='mdev'><source><address uuid='{b}'/></source></hostdev>\
         </devices></domain>"
    );
    assert!(std::fs::write(lv.join("vm.xml"), xml).is_ok());
}

/// A daemon over the fake ports of `shared`, its state under `host` (a restart is a
/// second call over the same host and fake).
fn daemon_over(host: &HostRoot, shared: &Shared) -> Daemon {
    let daemon = Daemon::new(
        host.clone(),
        host,
        Box::new(Mdev(shared.clone())),
        Backends::of(Box::new(Gc(shared.clone()))),
        Box::new(Types),
        Timing::default(),
    );
    match daemon {
        Ok(d) => d,
        Err(e) => panic!("daemon over fake ports: {e:?}"),
    }
}

#[test]
fn a_qemu_owning_two_vgpus_gets_each_vgpus_knobs_on_its_gpu_only() {
    let (a, b) = a_and_b();
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let (host, shared) = qemu_host(dir.path(), &[0, 8, 16], UNTOUCHED);
    let mut daemon = daemon_over(&host, &shared);
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let knobs = lock(&shared).knobs.clone();
    assert_eq!(
        knobs.get(&(QEMU, 0)),
        Some(&(4 << 30, Some(4), false)),
        "A's"
    );
    assert_eq!(
        knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), false)),
        "B's"
    );
    assert_eq!(
        knobs.get(&(QEMU, 16)),
        Some(&UNTOUCHED),
        "no vGPU on GPU 16"
    );
    assert_eq!(
        report.writes, 4,
        "limit and priority of each gcgroup (new ones start thawed)"
    );

    // Both vGPUs list the QEMU as owner, each with its own gcgroup only.
    for (uuid, gpu) in [(a, 0), (b, 8)] {
        let info = daemon.info(&uuid);
        assert_eq!(info.owners, vec![QEMU]);
        assert_eq!(
            info.totals.gcgroups, 1,
            "{uuid} counts gcgroup {QEMU}/{gpu} only"
        );
    }

    // A retune of B reaches only B's gcgroup.
    let resp = daemon.handle(gvm_proto::Request {
        id: 1,
        call: gvm_proto::Call::Set(gvm_proto::SetParams {
            target: b.to_string(),
            memory_limit: None,
            priority: Some(2),
            share: None,
            clear: false,
            mode: gvm_proto::SetMode::Live,
            force: false,
        }),
    });
    assert!(resp.error.is_none(), "{:?}", resp.error);
    let knobs = lock(&shared).knobs.clone();
    assert_eq!(knobs.get(&(QEMU, 8)).map(|k| k.1), Some(Some(2)));
    assert_eq!(knobs.get(&(QEMU, 0)).map(|k| k.1), Some(Some(4)));
    assert_eq!(knobs.get(&(QEMU, 16)), Some(&UNTOUCHED));
}

/// A fake `/proc/<pid>` with `GVM_VGPU_UUID=uuid` in its environment, running as `uid`.
fn claiming_process(proc_dir: &std::path::Path, pid: u32, uuid: Uuid, uid: u32) {
    let p = proc_dir.join(pid.to_string());
    assert!(std::fs::create_dir_all(&p).is_ok());
    assert!(std::fs::write(p.join("environ"), format!("GVM_VGPU_UUID={uuid}\0")).is_ok());
    assert!(std::fs::write(
        p.join("status"),
        format!("Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    )
    .is_ok());
}

#[test]
fn another_users_environment_claim_is_refused_and_shown_until_the_user_is_allowed() {
    let a = Uuid::from_u128(0xa);
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let proc_dir = dir.path().join("proc");
    let host = HostRoot::new(dir.path()).with_proc_dir(&proc_dir);
    claiming_process(&proc_dir, 500, a, 1000);
    claiming_process(&proc_dir, 501, a, 0);
    let shared = Arc::new(Mutex::new(Host::default()));
    {
        let mut h = lock(&shared);
        h.devices.insert(a, (PARENTS[0].into(), "t-a".into()));
        h.knobs.insert((500, 0), UNTOUCHED);
        h.knobs.insert((501, 0), UNTOUCHED);
    }
    let mut daemon = daemon_over(&host, &shared);
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(daemon.info(&a).owners, vec![501], "root's claim only");
    assert_eq!(
        lock(&shared).knobs.get(&(500, 0)),
        Some(&UNTOUCHED),
        "not tuned"
    );
    assert_eq!(
        lock(&shared).knobs.get(&(501, 0)),
        Some(&(4 << 30, Some(4), false))
    );
    let refused = daemon.detail(&a).refused_claims;
    assert_eq!(
        refused,
        vec![gvm_proto::RefusedClaim {
            pid: 500,
            uid: Some(1000),
            rule: gvm_proto::OwnerRule::Environment,
        }]
    );

    daemon.set_claim_policy(crate::owners::ClaimPolicy::new([1000]));
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(daemon.info(&a).owners, vec![500, 501]);
    assert_eq!(
        lock(&shared).knobs.get(&(500, 0)),
        Some(&(4 << 30, Some(4), false)),
        "tuned once allowed"
    );
    assert!(daemon.detail(&a).refused_claims.is_empty());
}

#[test]
fn a_definitions_owner_uids_allow_that_users_claim_of_that_vgpu_only() {
    let (a, b) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let proc_dir = dir.path().join("proc");
    let host = HostRoot::new(dir.path()).with_proc_dir(&proc_dir);
    claiming_process(&proc_dir, 500, a, 1000);
    claiming_process(&proc_dir, 502, b, 1000);
    let shared = Arc::new(Mutex::new(Host::default()));
    {
        let mut h = lock(&shared);
        h.devices.insert(a, (PARENTS[0].into(), "t-a".into()));
        h.devices.insert(b, (PARENTS[0].into(), "t-a".into()));
        h.knobs.insert((500, 0), UNTOUCHED);
        h.knobs.insert((502, 0), UNTOUCHED);
    }
    let mut daemon = daemon_over(&host, &shared);
    daemon.desired.definitions.insert(
        a,
        gvm_proto::Definition {
            uuid: a,
            parent: PARENTS[0].into(),
            mdev_type: "t-a".into(),
            type_name: None,
            kind: gvm_proto::VgpuKind::Mdev,
            kernel_name: None,
            autostart: false,
            overrides: gvm_proto::Overrides::default(),
            owner_uids: vec![1000],
        },
    );
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        daemon.info(&a).owners,
        vec![500],
        "allowed by a's definition"
    );
    assert!(
        daemon.info(&b).owners.is_empty(),
        "b's definition allows nobody more"
    );
    assert_eq!(daemon.detail(&b).refused_claims.len(), 1);
    assert_eq!(
        lock(&shared).knobs.get(&(502, 0)),
        Some(&UNTOUCHED),
        "the refused claim is not tuned"
    );
}

/// Answer one call, panicking with the error (the fakes never fail a valid call).
fn call<T: serde::de::DeserializeOwned>(daemon: &mut Daemon, call: gvm_proto::Call) -> T {
    let resp = daemon.handle(gvm_proto::Request { id: 1, call });
    match resp.into_result() {
        Ok(v) => v,
        Err(e) => panic!("call failed: {e}"),
    }
}

fn target(uuid: Uuid) -> gvm_proto::Target {
    gvm_proto::Target {
        target: uuid.to_string(),
    }
}

/// `compute.freeze` of each of `uuid`'s gcgroups as `show` reports it.
fn shown_frozen(daemon: &mut Daemon, uuid: Uuid) -> Vec<bool> {
    let d: gvm_proto::VgpuDetail = call(daemon, gvm_proto::Call::Show(target(uuid)));
    d.owners
        .iter()
        .flat_map(|o| o.gcgroups.iter().map(|g| g.frozen))
        .collect()
}

/// What `freeze`/`thaw` answer for `uuid`: (gcgroups frozen, gcgroups).
fn answered(infos: &[gvm_proto::VgpuInfo], uuid: Uuid) -> Option<(u32, u32)> {
    infos
        .iter()
        .find(|i| i.uuid == uuid)
        .map(|i| (i.totals.frozen_gcgroups, i.totals.gcgroups))
}

fn backend_frozen(shared: &Shared, pid: u32, gpu: u32) -> Option<bool> {
    lock(shared).knobs.get(&(pid, gpu)).map(|k| k.2)
}

#[test]
fn a_gcgroup_left_frozen_by_a_crash_is_thawed_by_the_first_tick_and_freeze_thaw_show_agree() {
    let (a, b) = a_and_b();
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let (host, shared) = qemu_host(dir.path(), &[0, 8], UNTOUCHED);

    // The run before the crash: A and B frozen; then a thaw of A stored its intent and
    // the daemon died before writing compute.freeze.
    {
        let mut before = daemon_over(&host, &shared);
        before.tick(Instant::now(), true);
        let _: Vec<gvm_proto::VgpuInfo> = call(&mut before, gvm_proto::Call::Freeze(target(a)));
        let _: Vec<gvm_proto::VgpuInfo> = call(&mut before, gvm_proto::Call::Freeze(target(b)));
        let store = crate::store::Store::open(&host).map(|s| s.0);
        let Ok(store) = store else {
            panic!("store: {:?}", store.err());
        };
        assert!(store.save_live(&a, &Default::default()).is_ok());
    }
    assert_eq!(backend_frozen(&shared, QEMU, 0), Some(true));
    assert_eq!(backend_frozen(&shared, QEMU, 8), Some(true));

    // The restart: its first tick reads the gcgroups it finds and converges on them.
    let mut daemon = daemon_over(&host, &shared);
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let knobs = lock(&shared).knobs.clone();
    assert_eq!(
        knobs.get(&(QEMU, 0)),
        Some(&(4 << 30, Some(4), false)),
        "A is not frozen in the stored intent: thawed"
    );
    assert_eq!(
        knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), true)),
        "B stays frozen"
    );
    assert_eq!(
        report.writes, 3,
        "A's thaw and each priority (applied by GVM only once written); limits already right"
    );
    assert_eq!(answered(&[daemon.info(&a)], a), Some((0, 1)));
    assert_eq!(answered(&[daemon.info(&b)], b), Some((1, 1)));
    assert_eq!(shown_frozen(&mut daemon, a), vec![false]);
    assert_eq!(shown_frozen(&mut daemon, b), vec![true]);

    // freeze, thaw and show say what the backend holds.
    for frozen in [true, false, false, true, false] {
        let c = if frozen {
            gvm_proto::Call::Freeze(target(a))
        } else {
            gvm_proto::Call::Thaw(target(a))
        };
        let infos: Vec<gvm_proto::VgpuInfo> = call(&mut daemon, c);
        assert_eq!(backend_frozen(&shared, QEMU, 0), Some(frozen));
        assert_eq!(answered(&infos, a), Some((u32::from(frozen), 1)));
        assert_eq!(shown_frozen(&mut daemon, a), vec![frozen]);
    }
}

#[test]
fn a_process_from_before_the_start_found_an_owner_later_is_read_before_it_is_planned() {
    let (a, _) = a_and_b();
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    // Frozen by the run before; libvirt's files are not there yet, so nothing owns it.
    let (host, shared) = qemu_host(dir.path(), &[0], (4 << 30, Some(4), true));
    assert!(std::fs::remove_dir_all(host.libvirt_run_dir()).is_ok());
    let mut daemon = daemon_over(&host, &shared);
    let t0 = Instant::now();
    let report = daemon.tick(t0, true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.writes, 0, "an unowned process is left alone");

    write_libvirt_run_dir(&host);
    let report = daemon.tick(t0 + std::time::Duration::from_secs(2), false);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 0)),
        Some(&(4 << 30, Some(4), false))
    );
    assert_eq!(report.writes, 2, "the thaw and the priority");
    assert_eq!(answered(&[daemon.info(&a)], a), Some((0, 1)));
    assert_eq!(shown_frozen(&mut daemon, a), vec![false]);
}

/// Definitions on disk, as a restart would load them.
fn stored_definitions(host: &HostRoot) -> usize {
    match crate::store::Store::open(host) {
        Ok((_, loaded)) => loaded.definitions.len(),
        Err(e) => panic!("store: {e:?}"),
    }
}

#[test]
fn a_list_sent_in_parts_is_stored_by_its_last_part_only_and_dropped_on_any_error() {
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let (host, shared) = qemu_host(dir.path(), &[], UNTOUCHED);
    let mut daemon = daemon_over(&host, &shared);
    daemon.tick(Instant::now(), true);
    let item = |n: u128| gvm_proto::DefineParams {
        uuid: Some(Uuid::from_u128(0x100 + n)),
        parent: PARENTS[0].into(),
        type_name: "t-a".into(),
        autostart: false,
        force: false,
        overrides: Default::default(),
        owner_uids: Vec::new(),
    };
    let part = |batch: u128, offset: usize, more: bool, items: Vec<gvm_proto::DefineParams>| {
        gvm_proto::Call::DefineBatch(gvm_proto::DefineBatchParams {
            items,
            start: false,
            part: Some(gvm_proto::BatchPart {
                batch: Uuid::from_u128(batch),
                offset,
                more,
            }),
        })
    };
    let answer = |daemon: &mut Daemon, c| daemon.handle(gvm_proto::Request { id: 1, call: c });

    let r = answer(&mut daemon, part(1, 0, true, vec![item(0), item(1)]));
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(
        stored_definitions(&host),
        0,
        "a part that is not the last stores nothing"
    );
    // The last part repeats item 0's UUID: refused, naming both, and nothing is stored.
    let r = answer(&mut daemon, part(1, 2, false, vec![item(2), item(0)]));
    let e = r.error.map(|e| e.message).unwrap_or_default();
    assert!(
        e.starts_with("item 3: ") && e.contains("first as item 0"),
        "{e}"
    );
    assert_eq!(stored_definitions(&host), 0);
    assert!(daemon.desired.definitions.is_empty());
    // The list is gone with its error.
    let r = answer(&mut daemon, part(1, 2, false, vec![item(2)]));
    let e = r.error.map(|e| e.message).unwrap_or_default();
    assert!(e.contains("is not open"), "{e}");

    // A bad item in a later part is named by its index in the list.
    let r = answer(&mut daemon, part(2, 0, true, vec![item(0), item(1)]));
    assert!(r.error.is_none(), "{:?}", r.error);
    let mut bad = item(3);
    bad.type_name = "t-z".into();
    let r = answer(&mut daemon, part(2, 2, false, vec![item(2), bad]));
    let e = r.error.map(|e| e.message).unwrap_or_default();
    assert!(e.starts_with("item 3: "), "{e}");
    assert_eq!(stored_definitions(&host), 0);

    // In order and good: the last part stores the whole list and reports it.
    let r = answer(&mut daemon, part(3, 0, true, vec![item(0), item(1)]));
    assert!(r.error.is_none(), "{:?}", r.error);
    let report: gvm_proto::BatchReport = call(&mut daemon, part(3, 2, false, vec![item(2)]));
    assert_eq!(report.defined.len(), 3);
    assert_eq!(stored_definitions(&host), 3);
}

#[test]
fn stopping_a_running_vgpu_that_was_never_defined_answers_its_parent_and_type() {
    let (a, _) = a_and_b();
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let (host, shared) = qemu_host(dir.path(), &[0], UNTOUCHED);
    let mut daemon = daemon_over(&host, &shared);
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The running domain's QEMU holds it: refused, naming it, and nothing changes.
    let resp = daemon.handle(gvm_proto::Request {
        id: 1,
        call: gvm_proto::Call::Stop(target(a)),
    });
    let Some(e) = resp.error else {
        panic!("stopped a vGPU under a running domain's QEMU");
    };
    assert_eq!(e.code, gvm_proto::ErrorCode::Conflict);
    assert!(
        e.message
            .contains(&format!("pid {QEMU} (libvirt domain vm)")),
        "{}",
        e.message
    );
    assert!(lock(&shared).devices.contains_key(&a));
    // The domain shuts down: its QEMU, pid file and status XML go.
    let lv = host.libvirt_run_dir();
    assert!(std::fs::remove_file(lv.join("vm.pid")).is_ok());
    assert!(std::fs::remove_file(lv.join("vm.xml")).is_ok());
    lock(&shared).knobs.retain(|(pid, _), _| *pid != QEMU);
    daemon.tick(Instant::now(), true);
    let info: gvm_proto::VgpuInfo = call(&mut daemon, gvm_proto::Call::Stop(target(a)));
    assert_eq!(info.uuid, a);
    assert_eq!(info.parent, PARENTS[0], "the answer names the parent");
    assert_eq!(info.mdev_type, "t-a");
    assert_eq!(info.type_name.as_deref(), Some("t-a"));
    assert_eq!(info.state, gvm_proto::VgpuState::Stopped);
    assert!(!info.defined);
}

/// A catalog that knows the kernel types in its table: type → (memory limit, priority).
struct TableTypes(BTreeMap<&'static str, (u64, u8)>);

impl TypePort for TableTypes {
    fn resolve(&self, mdev_type: &str, _: Option<&str>) -> Option<TypeSpec> {
        let (memory_limit, priority) = *self.0.get(mdev_type)?;
        Some(TypeSpec {
            name: mdev_type.into(),
            memory_limit,
            priority,
            share: None,
            host_swap: false,
        })
    }
    fn binds(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
}

#[test]
fn a_replaced_catalog_reapplies_changed_types_only_and_leaves_a_dropped_type_untouched() {
    let (a, b) = a_and_b();
    let Ok(dir) = tempfile::tempdir() else {
        panic!("no temp dir for the test root");
    };
    let (host, shared) = qemu_host(dir.path(), &[0, 8], UNTOUCHED);
    let mut daemon = daemon_over(&host, &shared);
    let report = daemon.tick(Instant::now(), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 0)),
        Some(&(4 << 30, Some(4), false))
    );
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), false))
    );

    // t-a changes, t-b stays: only A is re-applied.
    let table = BTreeMap::from([("t-a", (6 << 30, 2)), ("t-b", (2 << 30, 9))]);
    let swap = daemon.replace_catalog(
        Box::new(TableTypes(table)),
        vec!["new.toml".into()],
        std::time::SystemTime::now(),
    );
    assert_eq!(swap.changed, vec![a]);
    assert!(
        swap.unmanaged.is_empty() && swap.errors.is_empty(),
        "{swap:?}"
    );
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 0)),
        Some(&(6 << 30, Some(2), false))
    );
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), false))
    );
    let shown: gvm_proto::VgpuDetail = call(&mut daemon, gvm_proto::Call::Show(target(a)));
    assert_eq!(shown.info.knobs.memory_limit, 6 << 30);
    assert_eq!(shown.info.knobs.priority, 2);

    // t-b leaves the catalog: B is unmanaged, its owner keeps what it has.
    let table = BTreeMap::from([("t-a", (6 << 30, 2))]);
    let swap = daemon.replace_catalog(
        Box::new(TableTypes(table)),
        vec!["newer.toml".into()],
        std::time::SystemTime::now(),
    );
    assert_eq!((swap.changed, swap.unmanaged), (vec![b], vec![b]));
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), false))
    );
    assert!(!daemon.info(&b).managed);
    let report = daemon.tick(Instant::now() + std::time::Duration::from_secs(60), true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        lock(&shared).knobs.get(&(QEMU, 8)),
        Some(&(2 << 30, Some(9), false))
    );
}
