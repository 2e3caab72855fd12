//! Crash torture: SIGKILL the daemon at random points during define/create/set/
//! freeze/thaw/start/undefine and check after each restart that definitions parse,
//! no temp file is left, nothing acknowledged is lost, nothing is duplicated or
//! half-written, and every owner's knobs and freeze state are back at their intended
//! values within 2 s. Skips (printing why) without root and /dev/fuse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{CreateParams, DefineParams, SetMode, SetParams, VgpuInfo, VgpuState};
use uuid::Uuid;

/// Kill-and-restart rounds (about 0.3 s each: some 30 s in all).
const ROUNDS: u32 = 100;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            return None;
        }
        Some(from[self.below(from.len() as u64) as usize])
    }
}

/// One request of the worker.
#[derive(Debug, Clone)]
enum Step {
    Define {
        uuid: Uuid,
        parent: String,
        autostart: bool,
    },
    /// `create` with `define`.
    Create {
        uuid: Uuid,
        parent: String,
    },
    Set {
        uuid: Uuid,
        priority: u8,
    },
    Freeze {
        uuid: Uuid,
        frozen: bool,
    },
    Start {
        uuid: Uuid,
    },
    Undefine {
        uuid: Uuid,
    },
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::Define { .. } => "define",
            Step::Create { .. } => "create",
            Step::Set { .. } => "set",
            Step::Freeze { frozen: true, .. } => "freeze",
            Step::Freeze { frozen: false, .. } => "thaw",
            Step::Start { .. } => "start",
            Step::Undefine { .. } => "undefine",
        }
    }
}

#[derive(Debug, Clone)]
struct Def {
    parent: String,
    autostart: bool,
}

/// What the worker knows was acknowledged, and what was in flight when it died.
#[derive(Default, Debug)]
struct Ledger {
    defined: BTreeMap<Uuid, Def>,
    /// Running vGPUs: created, started, or autostarted by a restart.
    running: Vec<Uuid>,
    /// The effective priority the last acknowledged `set` gave.
    priority: BTreeMap<Uuid, u8>,
    /// The last acknowledged freeze (true) or thaw (false).
    frozen: BTreeMap<Uuid, bool>,
    in_flight: Option<Step>,
    /// vGPUs that are or may become running, per parent (each parent has 16 sim-4c
    /// instances: stay below).
    per_parent: BTreeMap<String, u32>,
    /// Acknowledged requests by kind.
    acked: BTreeMap<&'static str, u32>,
}

impl Ledger {
    /// The next request, or `None` when none of the kind `op` is possible now.
    fn choose(&mut self, op: u64, rng: &mut Rng, parents: &[String]) -> Option<Step> {
        let uuid = Uuid::new_v4();
        let parent = parents[rng.below(parents.len() as u64) as usize].clone();
        let has_room = |l: &Ledger| l.per_parent.get(&parent).copied().unwrap_or(0) < 12;
        let step = match op {
            0 if has_room(self) => Step::Define {
                uuid,
                parent,
                autostart: rng.below(2) == 0,
            },
            1 if has_room(self) => Step::Create { uuid, parent },
            2 | 3 => Step::Set {
                uuid: rng.pick(&self.running)?,
                priority: rng.below(17) as u8,
            },
            4 | 5 => Step::Freeze {
                uuid: rng.pick(&self.running)?,
                frozen: op == 4,
            },
            6 => {
                let stopped: Vec<Uuid> = self
                    .defined
                    .keys()
                    .filter(|u| !self.running.contains(u))
                    .copied()
                    .collect();
                Step::Start {
                    uuid: rng.pick(&stopped)?,
                }
            }
            // Keep a few definitions around for the checks after each restart.
            7 if self.defined.len() > 6 => {
                let defined: Vec<Uuid> = self.defined.keys().copied().collect();
                Step::Undefine {
                    uuid: rng.pick(&defined)?,
                }
            }
            _ => return None,
        };
        if let Step::Define { parent, .. } | Step::Create { parent, .. } = &step {
            *self.per_parent.entry(parent.clone()).or_default() += 1;
        }
        Some(step)
    }

    fn acknowledge(&mut self, step: &Step) {
        *self.acked.entry(step.kind()).or_default() += 1;
        match step {
            Step::Define {
                uuid,
                parent,
                autostart,
            } => {
                self.defined.insert(
                    *uuid,
                    Def {
                        parent: parent.clone(),
                        autostart: *autostart,
                    },
                );
            }
            Step::Create { uuid, parent } => {
                self.defined.insert(
                    *uuid,
                    Def {
                        parent: parent.clone(),
                        autostart: false,
                    },
                );
                self.running.push(*uuid);
            }
            Step::Set { uuid, priority } => {
                self.priority.insert(*uuid, *priority);
            }
            Step::Freeze { uuid, frozen } => {
                self.frozen.insert(*uuid, *frozen);
            }
            Step::Start { uuid } => self.running.push(*uuid),
            Step::Undefine { uuid } => {
                // The definition's overrides go with it; a live device stays.
                self.priority.remove(uuid);
                if let Some(def) = self.defined.remove(uuid) {
                    if !self.running.contains(uuid) {
                        if let Some(n) = self.per_parent.get_mut(&def.parent) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
            }
        }
    }
}

fn run(c: &mut gvm_client::Client, step: &Step) -> gvm_client::Result<()> {
    match step {
        Step::Define {
            uuid,
            parent,
            autostart,
        } => c
            .define(DefineParams {
                uuid: Some(*uuid),
                parent: parent.clone(),
                type_name: "sim-4c".into(),
                autostart: *autostart,
                force: false,
                overrides: Default::default(),
                owner_uids: Vec::new(),
            })
            .map(drop),
        Step::Create { uuid, parent } => c
            .create(CreateParams {
                uuid: Some(*uuid),
                parent: parent.clone(),
                type_name: "gvmsim-1".into(),
                define: true,
                autostart: false,
            })
            .map(drop),
        Step::Set { uuid, priority } => c
            .set(SetParams {
                target: uuid.to_string(),
                priority: Some(*priority),
                mode: SetMode::Both,
                ..SetParams::default()
            })
            .map(drop),
        Step::Freeze { uuid, frozen: true } => c.freeze(&uuid.to_string()).map(drop),
        Step::Freeze {
            uuid,
            frozen: false,
        } => c.thaw(&uuid.to_string()).map(drop),
        Step::Start { uuid } => c.start(&uuid.to_string()).map(drop),
        Step::Undefine { uuid } => c.undefine(&uuid.to_string()).map(drop),
    }
}

/// Send requests until one fails (the daemon was killed: every request it makes is
/// valid against the ledger).
fn worker(
    socket: std::path::PathBuf,
    sim_parents: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let Ok(mut c) = gvm_client::Client::connect(&socket) else {
        return;
    };
    loop {
        let op = rng.below(8);
        let step = ledger.lock().unwrap().choose(op, &mut rng, &sim_parents);
        let Some(step) = step else {
            // Nothing of this kind to do now: a cheap call still notices the kill.
            if c.ping().is_err() {
                return;
            }
            continue;
        };
        ledger.lock().unwrap().in_flight = Some(step.clone());
        if run(&mut c, &step).is_err() {
            return;
        }
        let mut l = ledger.lock().unwrap();
        l.acknowledge(&step);
        l.in_flight = None;
    }
}

/// Check what the restarted daemon lists against the ledger, then take the in-flight
/// request as acknowledged when it happened.
fn check_against_ledger(round: u32, l: &mut Ledger, list: &[VgpuInfo]) {
    let find = |u: &Uuid| list.iter().find(|v| v.uuid == *u);
    let defined = |u: &Uuid| find(u).is_some_and(|v| v.defined);
    let in_flight = l.in_flight.take();

    // Nothing acknowledged is lost; nothing appears that was never asked for.
    for u in l.defined.keys() {
        let undefining = matches!(&in_flight, Some(Step::Undefine { uuid }) if uuid == u);
        assert!(
            defined(u) || undefining,
            "round {round}: lost definition {u}"
        );
    }
    for v in list.iter().filter(|v| v.defined) {
        let defining = matches!(&in_flight,
            Some(Step::Define { uuid, .. } | Step::Create { uuid, .. }) if *uuid == v.uuid);
        assert!(
            l.defined.contains_key(&v.uuid) || defining,
            "round {round}: unexpected definition {}",
            v.uuid
        );
    }
    for u in &l.running {
        assert!(
            find(u).is_some_and(|v| v.state == VgpuState::Running),
            "round {round}: {u} is no longer running"
        );
    }
    // Acknowledged priorities and freezes are the daemon's intent (or the in-flight
    // request won).
    for (u, prio) in &l.priority {
        let Some(v) = find(u) else {
            panic!("round {round}: retuned vGPU {u} is gone");
        };
        let ok = v.knobs.priority == *prio
            || matches!(&in_flight, Some(Step::Set { uuid, priority })
                if uuid == u && *priority == v.knobs.priority)
            || matches!(&in_flight, Some(Step::Undefine { uuid }) if uuid == u && !v.defined);
        assert!(
            ok,
            "round {round}: {u} priority {}, acknowledged {prio}",
            v.knobs.priority
        );
    }
    for u in &l.running {
        let Some(v) = find(u) else { continue };
        let acked = l.frozen.get(u).copied().unwrap_or(false);
        let ok = v.knobs.frozen == acked
            || matches!(&in_flight, Some(Step::Freeze { uuid, frozen })
                if uuid == u && *frozen == v.knobs.frozen);
        assert!(
            ok,
            "round {round}: {u} frozen {}, acknowledged {acked}",
            v.knobs.frozen
        );
    }

    // The in-flight request that made it is now simply acknowledged.
    match in_flight {
        Some(
            ref
            step @ (Step::Define { uuid, .. } | Step::Create { uuid, .. } | Step::Start { uuid }),
        ) => {
            if let Some(v) = find(&uuid) {
                if v.defined && !l.defined.contains_key(&uuid) {
                    l.defined.insert(
                        uuid,
                        Def {
                            parent: v.parent.clone(),
                            autostart: v.autostart,
                        },
                    );
                }
                if v.state == VgpuState::Running && !l.running.contains(&uuid) {
                    l.running.push(uuid);
                }
                *l.acked.entry(step.kind()).or_default() += 1;
            }
        }
        Some(ref step @ Step::Set { uuid, priority })
            if find(&uuid).is_some_and(|v| v.knobs.priority == priority) =>
        {
            l.acknowledge(step)
        }
        Some(ref step @ Step::Freeze { uuid, frozen })
            if find(&uuid).is_some_and(|v| v.knobs.frozen == frozen) =>
        {
            l.acknowledge(step)
        }
        Some(ref step @ Step::Undefine { uuid }) if !defined(&uuid) => l.acknowledge(step),
        _ => {}
    }
    // Autostart definitions are running again (checked below): from now on they are
    // running vGPUs like the others.
    let autostarted: Vec<Uuid> = l
        .defined
        .iter()
        .filter(|(u, d)| d.autostart && !l.running.contains(u))
        .filter(|(u, _)| find(u).is_some_and(|v| v.state == VgpuState::Running))
        .map(|(u, _)| *u)
        .collect();
    l.running.extend(autostarted);
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_restores_every_knob_and_freeze() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(2);
    let parents = sim.parents();
    let mut d = sim.daemon(&[]);
    let defs_dir = d.root.join("etc/gvm-vgpu/vgpus");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let seed = std::env::var("GVM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|t| t.as_nanos() as u64)
                .unwrap_or(7)
        });
    let mut rng = Rng(seed | 1);
    println!("seed {seed} (GVM_CRASH_SEED={seed} replays it)");
    let mut owned: Vec<Uuid> = Vec::new();
    let mut worst = Duration::ZERO;
    let started = Instant::now();

    for round in 0..ROUNDS {
        let (s, p, l) = (d.socket.clone(), parents.clone(), ledger.clone());
        let w_seed = rng.next();
        let w = std::thread::spawn(move || worker(s, p, l, w_seed));
        std::thread::sleep(Duration::from_millis(30 + rng.below(250)));
        d.kill9();
        w.join().unwrap();
        let t0 = Instant::now();
        d.restart();
        let mut c = d.client();

        // No half-written or stray files; every file is a definition the daemon loaded.
        let names: Vec<String> = std::fs::read_dir(&defs_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".json") && !n.starts_with('.')),
            "round {round}: {names:?}"
        );
        let list = c.list(false).unwrap();
        assert_eq!(
            list.iter().filter(|v| v.defined).count(),
            names.len(),
            "round {round}: a definition file was not loadable"
        );

        let mut l = ledger.lock().unwrap();
        check_against_ledger(round, &mut l, &list);
        let autos: Vec<Uuid> = l
            .defined
            .iter()
            .filter(|(_, d)| d.autostart)
            .map(|(u, _)| *u)
            .collect();
        let running = l.running.clone();
        drop(l);
        for u in &running {
            if !owned.contains(u) {
                sim.spawn_owner(u, 0, "busy=0");
                owned.push(*u);
            }
        }

        // Knobs and freezes converge on the daemon's intent; what it counts frozen is
        // what the backend holds.
        let mut last = String::new();
        let all_right = wait_until(Duration::from_secs(2), || {
            let list = c.list(false).unwrap();
            let find = |u: &Uuid| list.iter().find(|v| v.uuid == *u);
            let autos_up = autos
                .iter()
                .all(|u| find(u).is_some_and(|v| v.state == VgpuState::Running));
            let owners = sim.owners();
            let mut frozen_owners: BTreeMap<Uuid, u32> = BTreeMap::new();
            let knobs_ok = owners.iter().all(|o| {
                let Some(v) = find(&o.uuid) else {
                    last = format!("owner {} of unlisted {}", o.pid, o.uuid);
                    return false;
                };
                let freeze = sim.knob(o.pid, o.gpu, "compute.freeze");
                if freeze.as_deref() == Some("1") {
                    *frozen_owners.entry(o.uuid).or_default() += 1;
                }
                let ok = sim.knob(o.pid, o.gpu, "compute.priority")
                    == Some(v.knobs.priority.to_string())
                    && sim.knob(o.pid, o.gpu, "memory.limit")
                        == Some(v.knobs.memory_limit.to_string())
                    && freeze == Some(u8::from(v.knobs.frozen).to_string());
                if !ok {
                    last = format!(
                        "owner {} of {}: {:?} freeze {freeze:?}",
                        o.pid, o.uuid, v.knobs
                    );
                }
                ok
            });
            let counted_ok = owned.iter().all(|u| {
                let held = frozen_owners.get(u).copied().unwrap_or(0);
                let counted = find(u).map(|v| v.totals.frozen_gcgroups);
                if counted != Some(held) {
                    last = format!("{u}: {counted:?} gcgroups counted frozen, {held} frozen");
                }
                counted == Some(held)
            });
            autos_up && knobs_ok && counted_ok
        });
        let took = t0.elapsed();
        worst = worst.max(took);
        assert!(
            all_right,
            "round {round}: host not reconciled within 2 s of restart (seed {seed}): {last}"
        );
    }
    let l = ledger.lock().unwrap();
    println!(
        "{ROUNDS} rounds in {:?}; worst restart-to-reconciled: {worst:?}; {} definitions, \
         {} running, acknowledged {:?}",
        started.elapsed(),
        l.defined.len(),
        l.running.len(),
        l.acked
    );
    for kind in [
        "define", "create", "set", "freeze", "thaw", "start", "undefine",
    ] {
        assert!(
            l.acked.get(kind).is_some_and(|n| *n > 0),
            "the worker never got a {kind} through: {:?}",
            l.acked
        );
    }
}
