//! Crash torture: SIGKILL the daemon at random points during define/create/set and
//! check after each restart that nothing acknowledged is lost, nothing is
//! duplicated or half-written, and every owner's knobs are back at their intended
//! values within 2 s. Skips (printing why) without root and /dev/fuse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{CreateParams, DefineParams, SetMode, SetParams, VgpuState};
use uuid::Uuid;

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
}

/// What the worker knows was acknowledged, and what was in flight when it died.
#[derive(Default, Debug)]
struct Ledger {
    defined: BTreeMap<Uuid, bool>,
    running: Vec<Uuid>,
    priority: BTreeMap<Uuid, u8>,
    in_flight: Option<(Uuid, Option<u8>)>,
    /// Definitions per parent (each parent has 16 sim-4c instances: stay below).
    per_parent: BTreeMap<String, u32>,
}

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
        let mut op = rng.below(3);
        let parent = sim_parents[rng.below(sim_parents.len() as u64) as usize].clone();
        if op < 2 {
            let mut l = ledger.lock().unwrap();
            let n = l.per_parent.entry(parent.clone()).or_default();
            if *n >= 12 {
                op = 2;
            } else {
                *n += 1;
            }
        }
        let uuid = Uuid::new_v4();
        match op {
            0 => {
                let auto = rng.below(2) == 0;
                ledger.lock().unwrap().in_flight = Some((uuid, None));
                let r = c.define(DefineParams {
                    uuid: Some(uuid),
                    parent,
                    type_name: "sim-4c".into(),
                    autostart: auto,
                    overrides: Default::default(),
                });
                if r.is_err() {
                    return;
                }
                let mut l = ledger.lock().unwrap();
                l.defined.insert(uuid, auto);
                l.in_flight = None;
            }
            1 => {
                ledger.lock().unwrap().in_flight = Some((uuid, None));
                let r = c.create(CreateParams {
                    uuid: Some(uuid),
                    parent,
                    type_name: "gvmsim-1".into(),
                    define: true,
                    autostart: false,
                });
                if r.is_err() {
                    return;
                }
                let mut l = ledger.lock().unwrap();
                l.defined.insert(uuid, false);
                l.running.push(uuid);
                l.in_flight = None;
            }
            _ => {
                let target = {
                    let l = ledger.lock().unwrap();
                    if l.running.is_empty() {
                        continue;
                    }
                    l.running[rng.below(l.running.len() as u64) as usize]
                };
                let prio = rng.below(17) as u8;
                ledger.lock().unwrap().in_flight = Some((target, Some(prio)));
                let r = c.set(SetParams {
                    target: target.to_string(),
                    priority: Some(prio),
                    mode: SetMode::Both,
                    ..SetParams::default()
                });
                if r.is_err() {
                    return;
                }
                let mut l = ledger.lock().unwrap();
                l.priority.insert(target, prio);
                l.in_flight = None;
            }
        }
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_restores_every_knob() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(2);
    let parents = sim.parents();
    let mut d = sim.daemon(&[]);
    let defs_dir = d.root.join("etc/gvm-vgpu/vgpus");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(7);
    let mut rng = Rng(seed | 1);
    println!("seed {seed}");
    let mut owned: Vec<Uuid> = Vec::new();
    let rounds = 10;
    let mut worst = Duration::ZERO;

    for round in 0..rounds {
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
            "{names:?}"
        );
        let defined = c.list(true).unwrap();
        assert_eq!(
            defined.len(),
            names.len(),
            "a definition file was not loadable"
        );

        let mut l = ledger.lock().unwrap();
        // Nothing acknowledged is lost; nothing appears that was never asked for.
        for u in l.defined.keys() {
            assert!(
                defined.iter().any(|v| v.uuid == *u),
                "round {round}: lost definition {u}"
            );
        }
        let in_flight = l.in_flight.map(|f| f.0);
        for v in &defined {
            assert!(
                l.defined.contains_key(&v.uuid) || Some(v.uuid) == in_flight,
                "round {round}: unexpected definition {}",
                v.uuid
            );
        }
        // An in-flight define/create that made it is now simply acknowledged.
        if let Some((u, None)) = l.in_flight {
            if let Some(v) = defined.iter().find(|v| v.uuid == u) {
                l.defined.insert(u, v.autostart);
                if v.state == VgpuState::Running {
                    l.running.push(u);
                }
            }
        }
        // Acknowledged priorities are stored (or the in-flight one won).
        for (u, prio) in &l.priority {
            let show = c.show(&u.to_string()).unwrap();
            let stored = show.definition.and_then(|d| d.overrides.priority);
            let ok = stored == Some(*prio) || l.in_flight.map(|f| (f.0, f.1)) == Some((*u, stored));
            assert!(
                ok,
                "round {round}: {u} priority {stored:?}, acknowledged {prio}"
            );
        }
        if let Some((u, Some(p))) = l.in_flight {
            let show = c.show(&u.to_string()).unwrap();
            if show.definition.and_then(|d| d.overrides.priority) == Some(p) {
                l.priority.insert(u, p);
            }
        }
        l.in_flight = None;
        // Autostart definitions are running again.
        let autos: Vec<Uuid> = l
            .defined
            .iter()
            .filter(|(_, a)| **a)
            .map(|(u, _)| *u)
            .collect();
        for u in &l.running {
            if !owned.contains(u) {
                sim.spawn_owner(u, 0, "busy=0");
                owned.push(*u);
            }
        }
        drop(l);
        let all_right = wait_until(Duration::from_secs(2), || {
            let list = c.list(false).unwrap();
            let autos_up = autos.iter().all(|u| {
                list.iter()
                    .any(|v| v.uuid == *u && v.state == VgpuState::Running)
            });
            let knobs_ok = sim.owners().iter().all(|o| {
                let Some(v) = list.iter().find(|v| v.uuid == o.uuid) else {
                    return false;
                };
                sim.knob(o.pid, o.gpu, "compute.priority") == Some(v.knobs.priority.to_string())
                    && sim.knob(o.pid, o.gpu, "memory.limit")
                        == Some(v.knobs.memory_limit.to_string())
            });
            autos_up && knobs_ok
        });
        let took = t0.elapsed();
        worst = worst.max(took);
        assert!(
            all_right,
            "round {round}: host not reconciled within 2 s of restart"
        );
    }
    let l = ledger.lock().unwrap();
    println!(
        "worst restart-to-reconciled: {worst:?}; {} definitions, {} running, {} retuned",
        l.defined.len(),
        l.running.len(),
        l.priority.len()
    );
    assert!(
        !l.defined.is_empty(),
        "the worker never got a request through"
    );
}
