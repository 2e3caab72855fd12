//! `SIGHUP` reloads gvm-vgpud's catalog on the simulated host: a good catalog changes the
//! type values `show` reports and re-applies them to the owners; a broken one is refused
//! whole, the old catalog stays and `ping` says why (logged once); reloads during a stream of
//! requests lose none of them. Each test skips (printing why) without root and /dev/fuse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{skip_reason, wait_until, Sim};
use gvm_client::gvm_proto;
use gvm_proto::{CatalogStatus, CreateParams, DefineParams, SetMode, SetParams, Source};

macro_rules! require_sim {
    () => {
        if let Some(why) = skip_reason() {
            println!("SKIP: {why}");
            return;
        }
    };
}

const G4: u64 = 4 << 30;
const G6: u64 = 6 << 30;

/// The shipped simulated-host catalog file.
fn shipped_sim_catalog() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mdev-types/gvm-sim.toml"),
    )
    .unwrap()
}

/// The shipped file with `sim-4c` at `memory` and `priority`.
fn sim_catalog_with_4c(memory: &str, priority: u8) -> String {
    let shipped = shipped_sim_catalog();
    let old = "memory_limit = \"4GiB\"\npriority = 10\n";
    assert!(
        shipped.contains(old),
        "the shipped sim-4c changed: update this test"
    );
    shipped.replacen(
        old,
        &format!("memory_limit = \"{memory}\"\npriority = {priority}\n"),
        1,
    )
}

/// The host's local catalog directory, where an operator overrides a shipped model.
fn local_catalog(root: &Path) -> PathBuf {
    let dir = root.join("etc/gvm-vgpu/mdev-types");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write `text` as the local `gvm-sim.toml`, whole (temp file, rename), as an editor would.
fn write_catalog(root: &Path, text: &str) {
    let dir = local_catalog(root);
    let tmp = dir.join(".gvm-sim.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("gvm-sim.toml")).unwrap();
}

fn hangup(pid: u32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

fn catalog_status(d: &common::Daemon) -> CatalogStatus {
    d.client()
        .ping()
        .unwrap()
        .catalog
        .expect("ping names the catalog")
}

fn log_text(d: &common::Daemon) -> String {
    std::fs::read_to_string(&d.log).unwrap_or_default()
}

#[test]
fn a_good_reload_retunes_running_vgpus_and_a_broken_one_keeps_the_old_catalog_saying_why() {
    require_sim!();
    let sim = Sim::start(1);
    let d = sim.daemon(&[]);
    let parent = sim.parents()[0].clone();
    let mut c = d.client();

    let st = catalog_status(&d);
    let local = local_catalog(&sim.root).display().to_string();
    assert!(st.dirs.contains(&local), "{st:?}");
    assert_eq!(st.reloads, 0);
    assert!(st.last_reload_failed.is_none());
    assert!(
        st.files
            .iter()
            .any(|f| f.ends_with("<builtin>/mdev-types/gvm-sim.toml")),
        "{st:?}"
    );

    let v = c
        .create(CreateParams {
            uuid: None,
            parent,
            type_name: "sim-4c".into(),
            define: false,
            autostart: false,
        })
        .unwrap();
    let uuid = v.uuid.to_string();
    let pid = sim.spawn_owner(&v.uuid, 0, "busy=1");
    let tuned = |mem: u64, prio: &str| {
        wait_until(Duration::from_secs(3), || {
            sim.knob(pid, 0, "memory.limit") == Some(mem.to_string())
                && sim.knob(pid, 0, "compute.priority").as_deref() == Some(prio)
        })
    };
    assert!(tuned(G4, "10"), "the owner never got sim-4c's values");

    // Editing the file alone changes nothing: the daemon reads it on SIGHUP.
    write_catalog(&sim.root, &sim_catalog_with_4c("6GiB", 3));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.show(&uuid).unwrap().info.knobs.memory_limit, G4);

    hangup(d.pid().unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || catalog_status(&d).reloads == 1),
        "no reload; log: {}",
        log_text(&d)
    );
    let shown = c.show(&uuid).unwrap();
    assert_eq!(shown.info.knobs.memory_limit, G6);
    assert_eq!(shown.info.knobs.priority, 3);
    assert_eq!(shown.sources.memory_limit, Source::Type);
    assert!(tuned(G6, "3"), "the reload did not reach the owner");
    let st = catalog_status(&d);
    let ours = local_catalog(&sim.root)
        .join("gvm-sim.toml")
        .display()
        .to_string();
    assert!(st.files.contains(&ours), "{st:?}");
    let loaded_at = st.loaded_at;

    // A broken file: refused whole, the catalog in use stays, ping says why.
    write_catalog(
        &sim.root,
        "[gpu]\nmodel = \"GVM-SIM-80GB\"\n\n[[type]\nname = 1\n",
    );
    hangup(d.pid().unwrap());
    assert!(
        wait_until(Duration::from_secs(5), || catalog_status(&d)
            .last_reload_failed
            .is_some()),
        "no failure reported; log: {}",
        log_text(&d)
    );
    let st = catalog_status(&d);
    let failure = st.last_reload_failed.clone().unwrap();
    assert!(failure.error.contains(&format!("{ours}:4:")), "{failure:?}");
    assert!(
        failure
            .error
            .starts_with("cannot load the vGPU type catalog from "),
        "{failure:?}"
    );
    assert_eq!(
        (st.reloads, st.loaded_at),
        (1, loaded_at),
        "the catalog in use stays"
    );
    assert!(st.files.contains(&ours));
    assert_eq!(c.show(&uuid).unwrap().info.knobs.memory_limit, G6);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sim.knob(pid, 0, "memory.limit"), Some(G6.to_string()));
    // The daemon itself still runs and answers, and the reason is logged once, whole.
    let log = log_text(&d);
    assert_eq!(log.matches("catalog reload refused").count(), 1, "{log}");
    assert_eq!(log.matches(&format!("{ours}:4:")).count(), 1, "{log}");

    // Fixed again: the failure is over, back to the shipped values.
    std::fs::remove_file(local_catalog(&sim.root).join("gvm-sim.toml")).unwrap();
    hangup(d.pid().unwrap());
    assert!(wait_until(Duration::from_secs(5), || {
        let st = catalog_status(&d);
        st.reloads == 2 && st.last_reload_failed.is_none()
    }));
    assert!(
        tuned(G4, "10"),
        "the owner did not go back to the shipped values"
    );
}

#[test]
fn reloads_during_a_stream_of_requests_lose_none_of_them() {
    require_sim!();
    let sim = Sim::start(1);
    let mut d = sim.daemon(&[]);
    let parent = sim.parents()[0].clone();
    let v = d
        .client()
        .create(CreateParams {
            uuid: None,
            parent: parent.clone(),
            type_name: "sim-4c".into(),
            define: false,
            autostart: false,
        })
        .unwrap();
    let pid = sim.spawn_owner(&v.uuid, 0, "busy=1");

    // Three clients: definitions, live retunes, listings, each call checked.
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let socket = d.socket.clone();
            let parent = parent.clone();
            let target = v.uuid.to_string();
            std::thread::spawn(move || {
                let mut c = gvm_client::Client::connect(&socket).unwrap();
                let mut defined = Vec::new();
                for i in 0..60u32 {
                    match w {
                        0 => {
                            let def = c
                                .define(DefineParams {
                                    uuid: None,
                                    parent: parent.clone(),
                                    type_name: "sim-4c".into(),
                                    autostart: false,
                                    overrides: Default::default(),
                                    owner_uids: Vec::new(),
                                    force: false,
                                })
                                .unwrap_or_else(|e| panic!("define {i}: {e}"));
                            defined.push(def.uuid);
                        }
                        1 => {
                            c.set(SetParams {
                                target: target.clone(),
                                memory_limit: None,
                                priority: Some((i % 16) as u8),
                                share: None,
                                clear: false,
                                mode: SetMode::Live,
                                force: false,
                            })
                            .unwrap_or_else(|e| panic!("set {i}: {e}"));
                        }
                        _ => {
                            let list = c.list(false).unwrap_or_else(|e| panic!("list {i}: {e}"));
                            assert!(list.iter().any(|x| x.uuid == v.uuid && x.managed));
                        }
                    }
                }
                defined
            })
        })
        .collect();

    // Meanwhile, 20 reloads alternating between two good catalogs, the last at 6 GiB.
    for i in 0..20 {
        let mem = if i % 2 == 0 { "5GiB" } else { "6GiB" };
        write_catalog(&sim.root, &sim_catalog_with_4c(mem, 10));
        hangup(d.pid().unwrap());
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut defined = Vec::new();
    for w in workers {
        defined.extend(w.join().expect("a client's call failed during the reloads"));
    }
    assert!(d.exited().is_none(), "the daemon ended");
    assert_eq!(defined.len(), 60);
    let stored = d.client().list(true).unwrap();
    for u in &defined {
        assert!(
            stored.iter().any(|x| x.uuid == *u && x.defined),
            "definition {u} lost"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || sim.knob(pid, 0, "memory.limit")
            == Some(G6.to_string())),
        "the last catalog was not applied; log: {}",
        log_text(&d)
    );
    let st = catalog_status(&d);
    assert!(st.reloads >= 1 && st.last_reload_failed.is_none(), "{st:?}");
    // The live priority set last (59 % 16) stays over the type's.
    assert_eq!(
        d.client()
            .show(&v.uuid.to_string())
            .unwrap()
            .info
            .knobs
            .priority,
        11
    );
    d.kill9();
}
