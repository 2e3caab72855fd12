//! Reconciliation as a pure planner.
//!
//! Given the observed host ([`Observed`]), the operator's intent ([`Desired`]) and
//! the catalog type of each live device, [`plan`] lists the actions that bring the
//! host to the intent: devices to create for autostart definitions whose parent is
//! present, and knob writes for every owner gcgroup whose known value differs from
//! the vGPU's effective knob. It does no I/O, so every rule is unit-tested; the
//! executor in `daemon.rs` performs the actions and updates the observed cache.
//!
//! Devices whose kernel type has no catalog entry are *unmanaged*: listed, never
//! written. Live state of devices that are gone is reported so it can be dropped.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use gvm_gcgroup::{GcgroupSnapshot, Knob, MemoryLimit, Priority};

use crate::model::{effective, Desired, GcState, Observed, TypeSpec};

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the device of an autostart definition.
    Create {
        /// UUID.
        uuid: Uuid,
        /// Parent.
        parent: String,
        /// Kernel type id.
        mdev_type: String,
    },
    /// Write one knob of one owner gcgroup.
    Write {
        /// vGPU the owner belongs to.
        uuid: Uuid,
        /// Owner pid.
        pid: u32,
        /// GPU index.
        gpu: u32,
        /// Knob and value.
        knob: Knob,
        /// Value found before, when it was known (drift report).
        found: Option<String>,
    },
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Actions in execution order.
    pub actions: Vec<Action>,
    /// Live devices with no catalog type.
    pub unmanaged: Vec<Uuid>,
    /// Live state kept for devices that no longer exist.
    pub stale_live: Vec<Uuid>,
}

/// What to plan for.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Parents on which autostart definitions should be created now (all parents
    /// at daemon start, newly registered ones later).
    pub autostart_parents: &'a BTreeSet<String>,
    /// Restrict knob writes to these vGPUs (a retune); `None` plans for all.
    pub only: Option<&'a BTreeSet<Uuid>>,
}

/// Plan the actions that bring `observed` to `desired`. `types` maps each managed
/// live device to its catalog type.
pub fn plan(
    observed: &Observed,
    desired: &Desired,
    types: &BTreeMap<Uuid, TypeSpec>,
    scope: Scope<'_>,
) -> Plan {
    let mut out = Plan::default();

    for def in desired.definitions.values() {
        if def.autostart
            && !observed.devices.contains_key(&def.uuid)
            && observed.parents.contains(&def.parent)
            && scope.autostart_parents.contains(&def.parent)
        {
            out.actions.push(Action::Create {
                uuid: def.uuid,
                parent: def.parent.clone(),
                mdev_type: def.mdev_type.clone(),
            });
        }
    }

    for uuid in desired.live.keys() {
        if !observed.devices.contains_key(uuid) {
            out.stale_live.push(*uuid);
        }
    }

    for uuid in observed.devices.keys() {
        if scope.only.is_some_and(|only| !only.contains(uuid)) {
            continue;
        }
        let Some(ty) = types.get(uuid) else {
            out.unmanaged.push(*uuid);
            continue;
        };
        let (knobs, _) = effective(
            Some(ty),
            desired.definitions.get(uuid),
            desired.live.get(uuid),
        );
        let Some(owners) = observed.owners.get(uuid) else {
            continue;
        };
        let mut freezes = Vec::new();
        for &pid in owners.keys() {
            for gpu in observed.owner_gpus(uuid, pid) {
                let state = observed.gcgroups.get(&(pid, gpu));
                let knobs =
                    crate::model::SchedKnobs::apply(desired.sched.get(&(*uuid, gpu)), knobs);
                let limit = MemoryLimit::from_bytes(knobs.memory_limit);
                let priority = Priority::clamped(knobs.priority);
                let write = |knob: Knob, found: Option<String>, to: &mut Vec<Action>| {
                    to.push(Action::Write {
                        uuid: *uuid,
                        pid,
                        gpu,
                        knob,
                        found,
                    })
                };
                match state {
                    None => {
                        // Never read: a registration made during this run (the daemon
                        // reads every gcgroup that predates its start before planning
                        // it, so one left frozen by a crash is known). Write the limit
                        // and the priority (GVM applies a priority only once written).
                        // A new gcgroup starts thawed, so a freeze is written only when
                        // one is wanted; anyone freezing it behind our back is drift,
                        // found by the next verification.
                        write(Knob::MemoryLimit(limit), None, &mut out.actions);
                        write(Knob::Priority(priority), None, &mut out.actions);
                        if knobs.frozen {
                            write(Knob::Frozen(true), None, &mut freezes);
                        }
                    }
                    Some(s) => {
                        if s.memory_limit != limit {
                            let found = Some(s.memory_limit.as_bytes().to_string());
                            write(Knob::MemoryLimit(limit), found, &mut out.actions);
                        }
                        if s.priority != Some(priority) {
                            let found = s.priority.map(|p| p.to_string());
                            write(Knob::Priority(priority), found, &mut out.actions);
                        }
                        if s.frozen != knobs.frozen {
                            let found = Some(u8::from(s.frozen).to_string());
                            write(Knob::Frozen(knobs.frozen), found, &mut freezes);
                        }
                    }
                }
            }
        }
        // Freeze after the other knobs of this vGPU so a frozen owner's limits are
        // already in place when it is thawed later.
        out.actions.append(&mut freezes);
    }
    out
}

/// Knobs whose read-back value differs from what the daemon last wrote (`cached`):
/// `(file, found, written)`. A priority the daemon never wrote is not compared (the
/// kernel's default means nothing until written).
pub fn drift(cached: &GcState, read: &GcgroupSnapshot) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut differs = |found: Knob, written: Knob| {
        if found != written {
            out.push((written.file(), found.text(), written.text()));
        }
    };
    differs(
        Knob::MemoryLimit(read.memory_limit),
        Knob::MemoryLimit(cached.memory_limit),
    );
    if let Some(p) = cached.priority {
        differs(Knob::Priority(read.priority), Knob::Priority(p));
    }
    differs(Knob::Frozen(read.frozen), Knob::Frozen(cached.frozen));
    out
}

#[cfg(test)]
mod drift_tests {
    use super::*;

    #[test]
    fn only_values_that_differ_from_the_last_write_are_drift() {
        let cached = GcState {
            memory_limit: MemoryLimit::from_bytes(4 << 30),
            priority: Some(Priority::clamped(10)),
            frozen: false,
        };
        let same = GcgroupSnapshot {
            memory_limit: MemoryLimit::from_bytes(4 << 30),
            priority: Priority::clamped(10),
            ..Default::default()
        };
        assert!(drift(&cached, &same).is_empty());
        let changed = GcgroupSnapshot {
            memory_limit: MemoryLimit::from_bytes(1),
            priority: Priority::clamped(3),
            frozen: true,
            ..same
        };
        let d = drift(&cached, &changed);
        assert_eq!(
            d,
            vec![
                ("memory.limit", "1".to_string(), (4u64 << 30).to_string()),
                ("compute.priority", "3".to_string(), "10".to_string()),
                ("compute.freeze", "1".to_string(), "0".to_string()),
            ]
        );
        let unwritten = GcState {
            priority: None,
            ..cached
        };
        let default_read = GcgroupSnapshot {
            priority: Priority::clamped(8),
            ..same
        };
        assert!(
            drift(&unwritten, &default_read).is_empty(),
            "an unwritten priority is not drift"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_knobs::{mem, prio};
    use crate::model::{LiveState, ObservedDevice};
    use gvm_proto::{Definition, Overrides, OwnerRule};

    fn u(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn ty(prio: u8) -> TypeSpec {
        TypeSpec {
            name: "sim-4c".into(),
            memory_limit: 4 << 30,
            priority: prio,
            share: None,
            host_swap: false,
        }
    }

    fn host_with(uuid: Uuid, owners: &[(u32, &[u32])]) -> Observed {
        let mut o = Observed::default();
        o.parents.insert("p0".into());
        o.devices.insert(
            uuid,
            ObservedDevice {
                uuid,
                parent: "p0".into(),
                mdev_type: "gvmsim-1".into(),
                kernel_name: None,
                kind: gvm_proto::VgpuKind::Mdev,
                vf: None,
            },
        );
        let mut m = BTreeMap::new();
        for (pid, gpus) in owners {
            m.insert(*pid, OwnerRule::Environment);
            o.gpus.insert(*pid, gpus.iter().copied().collect());
        }
        o.owners.insert(uuid, m);
        o
    }

    fn all() -> BTreeSet<String> {
        ["p0".to_string()].into_iter().collect()
    }

    fn writes(p: &Plan) -> Vec<(u32, u32, Knob)> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::Write { pid, gpu, knob, .. } => Some((*pid, *gpu, *knob)),
                Action::Create { .. } => None,
            })
            .collect()
    }

    #[test]
    fn new_gcgroups_get_their_types_limit_and_priority_and_stay_thawed_unwritten() {
        let obs = host_with(u(1), &[(100, &[0, 8]), (101, &[])]);
        let types = [(u(1), ty(4))].into_iter().collect();
        let none = BTreeSet::new();
        let p = plan(
            &obs,
            &Desired::default(),
            &types,
            Scope {
                autostart_parents: &none,
                only: None,
            },
        );
        let w = writes(&p);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w.contains(&(100, 8, mem(4 << 30))));
        assert!(w.contains(&(100, 0, prio(4))));
        // A new gcgroup starts thawed: no write of compute.freeze = 0.
        assert!(!w.iter().any(|(_, _, k)| matches!(k, Knob::Frozen(_))));
        assert!(!w.iter().any(|(pid, _, _)| *pid == 101));
    }

    #[test]
    fn known_values_equal_to_intent_need_no_write_and_drift_is_reported() {
        let mut obs = host_with(u(1), &[(100, &[0])]);
        let good = GcState {
            memory_limit: MemoryLimit::from_bytes(4 << 30),
            priority: Some(Priority::clamped(4)),
            frozen: false,
        };
        obs.gcgroups.insert((100, 0), good);
        let types = [(u(1), ty(4))].into_iter().collect();
        let none = BTreeSet::new();
        let scope = Scope {
            autostart_parents: &none,
            only: None,
        };
        assert!(plan(&obs, &Desired::default(), &types, scope)
            .actions
            .is_empty());

        obs.gcgroups.insert(
            (100, 0),
            GcState {
                memory_limit: MemoryLimit::from_bytes(1),
                ..good
            },
        );
        let p = plan(&obs, &Desired::default(), &types, scope);
        assert_eq!(
            p.actions,
            vec![Action::Write {
                uuid: u(1),
                pid: 100,
                gpu: 0,
                knob: mem(4 << 30),
                found: Some("1".into()),
            }]
        );
    }

    #[test]
    fn a_gcgroup_found_frozen_at_start_is_thawed_and_its_priority_written_once() {
        let mut obs = host_with(u(1), &[(100, &[0])]);
        let read = GcgroupSnapshot {
            memory_limit: MemoryLimit::from_bytes(4 << 30),
            priority: Priority::clamped(4),
            frozen: true,
            ..GcgroupSnapshot::default()
        };
        obs.gcgroups.insert((100, 0), GcState::found(&read));
        let types = [(u(1), ty(4))].into_iter().collect();
        let none = BTreeSet::new();
        let scope = Scope {
            autostart_parents: &none,
            only: None,
        };
        let p = plan(&obs, &Desired::default(), &types, scope);
        assert_eq!(
            writes(&p),
            vec![(100, 0, prio(4)), (100, 0, Knob::Frozen(false))],
            "the limit already right is not written"
        );
    }

    #[test]
    fn live_overrides_and_freeze_reach_every_owner_freeze_last() {
        let mut obs = host_with(u(1), &[(100, &[0]), (200, &[8])]);
        for k in [(100, 0), (200, 8)] {
            obs.gcgroups.insert(
                k,
                GcState {
                    memory_limit: MemoryLimit::from_bytes(4 << 30),
                    priority: Some(Priority::clamped(4)),
                    frozen: false,
                },
            );
        }
        let mut desired = Desired::default();
        desired.live.insert(
            u(1),
            LiveState {
                overrides: Overrides {
                    priority: Some(1),
                    ..Overrides::default()
                },
                frozen: true,
                paused: false,
            },
        );
        let types = [(u(1), ty(4))].into_iter().collect();
        let none = BTreeSet::new();
        let p = plan(
            &obs,
            &desired,
            &types,
            Scope {
                autostart_parents: &none,
                only: None,
            },
        );
        let w = writes(&p);
        assert_eq!(
            w,
            vec![
                (100, 0, prio(1)),
                (200, 8, prio(1)),
                (100, 0, Knob::Frozen(true)),
                (200, 8, Knob::Frozen(true)),
            ]
        );
    }

    #[test]
    fn unmanaged_devices_are_reported_and_never_written() {
        let obs = host_with(u(7), &[(100, &[0])]);
        let none = BTreeSet::new();
        let p = plan(
            &obs,
            &Desired::default(),
            &BTreeMap::new(),
            Scope {
                autostart_parents: &none,
                only: None,
            },
        );
        assert_eq!(p.unmanaged, vec![u(7)]);
        assert!(p.actions.is_empty());
    }

    #[test]
    fn autostart_only_for_present_parents_in_scope_and_absent_devices() {
        let obs = host_with(u(1), &[]);
        let mut desired = Desired::default();
        for (n, parent, auto) in [
            (1, "p0", true),
            (2, "p0", true),
            (3, "p9", true),
            (4, "p0", false),
        ] {
            desired.definitions.insert(
                u(n),
                Definition {
                    uuid: u(n),
                    parent: parent.into(),
                    mdev_type: "gvmsim-1".into(),
                    type_name: None,
                    kind: gvm_proto::VgpuKind::Mdev,
                    kernel_name: None,
                    autostart: auto,
                    overrides: Overrides::default(),
                    owner_uids: Vec::new(),
                },
            );
        }
        let types = [(u(1), ty(4))].into_iter().collect();
        let p = plan(
            &obs,
            &desired,
            &types,
            Scope {
                autostart_parents: &all(),
                only: None,
            },
        );
        let creates: Vec<Uuid> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { uuid, .. } => Some(*uuid),
                Action::Write { .. } => None,
            })
            .collect();
        assert_eq!(creates, vec![u(2)]);
        let none = BTreeSet::new();
        let p = plan(
            &obs,
            &desired,
            &types,
            Scope {
                autostart_parents: &none,
                only: None,
            },
        );
        assert!(p.actions.is_empty());
    }

    #[test]
    fn an_owner_of_two_vgpus_gives_each_only_the_gcgroup_on_its_parents_gpu() {
        // QEMU pid 300 owns A (parent with GPU index 0) and B (index 8) and has
        // gcgroups on GPUs 0, 8 and 16; nothing of it sits on 16.
        let (a, b) = (u(0xa), u(0xb));
        let mut obs = Observed::default();
        for (uuid, parent, gpu) in [(a, "0000:1a:00.0", 0), (b, "0000:3c:00.0", 8)] {
            obs.parents.insert(parent.into());
            obs.parent_gpu.insert(parent.into(), gpu);
            obs.devices.insert(
                uuid,
                ObservedDevice {
                    uuid,
                    parent: parent.into(),
                    mdev_type: "gvmsim-1".into(),
                    kernel_name: None,
                    kind: gvm_proto::VgpuKind::Mdev,
                    vf: None,
                },
            );
            obs.owners
                .insert(uuid, [(300, OwnerRule::Libvirt)].into_iter().collect());
        }
        obs.gpus.insert(300, [0, 8, 16].into_iter().collect());
        obs.split_owners.insert(300, vec![a, b]);
        let ty_b = TypeSpec {
            memory_limit: 2 << 30,
            ..ty(9)
        };
        let types = [(a, ty(4)), (b, ty_b)].into_iter().collect();
        let none = BTreeSet::new();
        let scope = Scope {
            autostart_parents: &none,
            only: None,
        };
        let p = plan(&obs, &Desired::default(), &types, scope);
        let by: Vec<(Uuid, u32, Knob)> = p
            .actions
            .iter()
            .filter_map(|x| match x {
                Action::Write {
                    uuid, gpu, knob, ..
                } => Some((*uuid, *gpu, *knob)),
                Action::Create { .. } => None,
            })
            .collect();
        assert_eq!(
            by,
            vec![
                (a, 0, mem(4 << 30)),
                (a, 0, prio(4)),
                (b, 8, mem(2 << 30)),
                (b, 8, prio(9)),
            ]
        );
        assert_eq!(obs.stray_gpus(300), vec![16]);

        // An unknown GPU index gives that vGPU nothing rather than a guess.
        obs.parent_gpu.remove("0000:3c:00.0");
        let p = plan(&obs, &Desired::default(), &types, scope);
        assert!(writes(&p).iter().all(|(_, gpu, _)| *gpu == 0));
        assert_eq!(writes(&p).len(), 2);

        // The same pid owning one vGPU only (not split) keeps every gcgroup for it.
        obs.split_owners.clear();
        obs.owners.remove(&b);
        let p = plan(&obs, &Desired::default(), &types, scope);
        let gpus: BTreeSet<u32> = writes(&p).iter().map(|w| w.1).collect();
        assert_eq!(gpus, [0, 8, 16].into_iter().collect());
    }

    #[test]
    fn a_retune_scope_plans_only_its_vgpus_and_stale_live_state_is_found() {
        let mut obs = host_with(u(1), &[(100, &[0])]);
        let extra = host_with(u(2), &[(200, &[0])]);
        obs.devices.extend(extra.devices);
        obs.owners.extend(extra.owners);
        obs.gpus.extend(extra.gpus);
        let types = [(u(1), ty(4)), (u(2), ty(4))].into_iter().collect();
        let mut desired = Desired::default();
        desired.live.insert(
            u(9),
            LiveState {
                frozen: true,
                ..LiveState::default()
            },
        );
        let none = BTreeSet::new();
        let only: BTreeSet<Uuid> = [u(2)].into_iter().collect();
        let p = plan(
            &obs,
            &desired,
            &types,
            Scope {
                autostart_parents: &none,
                only: Some(&only),
            },
        );
        assert!(writes(&p).iter().all(|(pid, _, _)| *pid == 200));
        assert_eq!(writes(&p).len(), 2);
        assert_eq!(p.stale_live, vec![u(9)]);
    }
}
