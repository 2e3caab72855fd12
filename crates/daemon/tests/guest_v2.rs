//! Agent protocol 2 against the real `gvm-vgpud` on the simulated host: the test plays a VM's
//! QEMU (it binds the vGPU's channel socket in the agent directory; the daemon connects) and
//! its guest agent. Asserted, as a user would see it through `gvm-vgpu show`:
//!
//! * a protocol-2 hello gets the vGPU's effective knobs as a state snapshot;
//! * `set --live` and `freeze`/`thaw` send new snapshots with higher generations;
//! * the guest's counters appear as the vGPU's guest processes, its acknowledgement as the
//!   state reached ("every process held");
//! * an acknowledgement of a generation never sent is counted as forged and ignored;
//! * a reconnect resends the current state under a new generation;
//! * a v1 agent (no `protocol` in its hello) gets nothing and `show` says enforcement none.
//!
//! Skips (printing why) without root and /dev/fuse.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::{is_managed, skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{SetMode, SetParams};
use serde_json::Value;

const HELLO_V2: &str = r#"{"type":"hello","v":1,"agent":"0.1.0","os":"Test","kernel":"6.1","collector":"proc","protocol":2,"gpus":[{"index":0,"name":"G"}]}"#;
const HELLO_V1: &str = r#"{"type":"hello","v":1,"agent":"0.1.0","os":"Test","kernel":"6.1","collector":"proc","gpus":[{"index":0,"name":"G"}]}"#;

/// The guest end of one channel connection.
struct Guest {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Guest {
    fn accept(l: &UnixListener, hello: &str) -> Guest {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut g = Guest {
            lines: BufReader::new(s.try_clone().unwrap()),
            out: s,
        };
        g.send(hello);
        g
    }

    fn send(&mut self, line: &str) {
        writeln!(self.out, "{line}").unwrap();
    }

    /// The next snapshot the host sends (fails after 10 s).
    fn snapshot(&mut self) -> Value {
        let mut l = String::new();
        self.lines.read_line(&mut l).unwrap();
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert_eq!(v["type"], "snapshot", "{l}");
        v
    }

    fn ack(&mut self, generation: u64, frozen: bool) {
        self.send(&format!(
            r#"{{"type":"ack","generation":{generation},"reached":{{"frozen":{frozen},"held":false,"processes":1,"in_flight":0,"memory_limit":null,"priority":null}}}}"#
        ));
    }
}

/// Play QEMU for `uuid`'s VM: bind its channel socket in the daemon's agent directory.
fn channel_of(sim: &Sim, uuid: &uuid::Uuid) -> UnixListener {
    let agent_dir = sim.root.join("run/gvm-vgpu/agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    UnixListener::bind(agent_dir.join(format!("{uuid}.sock"))).unwrap()
}

fn guest_of(
    c: &mut gvm_client::Client,
    uuid: &str,
) -> Option<gvm_client::gvm_proto::GuestEnforcement> {
    c.show(uuid).ok()?.guest
}

#[test]
fn a_protocol_2_guest_gets_the_vgpus_state_and_its_answers_are_shown() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    let u = uuid.to_string();
    let l = channel_of(&sim, &uuid);
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &uuid
    )));

    let mut g = Guest::accept(&l, HELLO_V2);
    let s1 = g.snapshot();
    let info = c.show(&u).unwrap().info;
    assert_eq!(s1["knobs"]["memory_limit"], info.knobs.memory_limit);
    assert_eq!(s1["knobs"]["priority"], u64::from(info.knobs.priority));
    assert_eq!(s1["knobs"]["frozen"], false);
    assert_eq!(s1["hold"], false);
    let g1 = s1["generation"].as_u64().unwrap();

    // The guest applies it, says so, and reports its one CUDA process.
    g.ack(g1, false);
    g.send(r#"{"type":"counters","processes":[{"pid":41,"name":"train","memory_current":4096,"memory_swap":0,"kernels_submitted":10,"kernels_ended":9,"pending":1,"busy":true,"gpu_busy_us":1500}]}"#);
    assert!(
        wait_until(Duration::from_secs(5), || guest_of(&mut c, &u).is_some_and(
            |e| e.generation_acked == Some(g1) && e.processes.len() == 1
        )),
        "show: {:?}",
        guest_of(&mut c, &u)
    );
    let e = guest_of(&mut c, &u).unwrap();
    assert_eq!((e.protocol, e.connected, e.in_sync()), (2, true, true));
    assert_eq!(e.processes[0].pid, 41);
    assert_eq!(e.processes[0].name, "train");

    // A live retune sends a new state.
    c.set(SetParams {
        target: u.clone(),
        memory_limit: Some(1 << 30),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
    let s2 = g.snapshot();
    assert_eq!(s2["knobs"]["memory_limit"], 1u64 << 30);
    let g2 = s2["generation"].as_u64().unwrap();
    assert!(g2 > g1, "generations only grow: {g1} then {g2}");

    // freeze: a snapshot saying frozen; the ack of it reports every process held.
    c.freeze(&u).unwrap();
    let s3 = g.snapshot();
    assert_eq!(s3["knobs"]["frozen"], true);
    let g3 = s3["generation"].as_u64().unwrap();
    assert!(g3 > g2);
    g.ack(g3, true);
    assert!(wait_until(Duration::from_secs(5), || guest_of(&mut c, &u)
        .is_some_and(
            |e| e.generation_acked == Some(g3) && e.frozen_reached == Some(true)
        )));
    let shown = std::process::Command::new(gvm_testkit::workspace_bin("gvm-vgpu-cli", "gvm-vgpu"))
        .arg("--root")
        .arg(&sim.root)
        .args(["show", &u])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("enforcement:  guest agent (protocol 2, connected)")
            && text.contains("every process held")
            && text.contains("guest processes (source guest)"),
        "{text}"
    );

    // A forged acknowledgement (a generation never sent) is counted and changes nothing.
    g.ack(g3 + 1_000_000, false);
    assert!(wait_until(Duration::from_secs(5), || guest_of(&mut c, &u)
        .is_some_and(|e| e.forged_acks == 1)));
    assert_eq!(guest_of(&mut c, &u).unwrap().generation_acked, Some(g3));

    c.thaw(&u).unwrap();
    let s4 = g.snapshot();
    assert_eq!(s4["knobs"]["frozen"], false);

    // A reconnect (QEMU restarted the chardev, or the guest agent restarted) gets the
    // current state again under a new generation.
    drop(g);
    let mut g = Guest::accept(&l, HELLO_V2);
    let s5 = g.snapshot();
    assert_eq!(s5["knobs"]["memory_limit"], 1u64 << 30);
    assert!(s5["generation"].as_u64().unwrap() > s4["generation"].as_u64().unwrap());

    // A v1 agent gets nothing, and show says the guest enforces nothing.
    drop(g);
    let (s, _) = l.accept().unwrap();
    let mut v1 = s.try_clone().unwrap();
    writeln!(v1, "{HELLO_V1}").unwrap();
    assert!(wait_until(Duration::from_secs(5), || guest_of(&mut c, &u)
        .is_some_and(|e| e.protocol == 1 && e.connected)));
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = String::new();
    let got = BufReader::new(s).read_line(&mut buf);
    assert!(
        got.is_err() || buf.is_empty(),
        "a v1 agent was sent {buf:?}"
    );
    let shown = std::process::Command::new(gvm_testkit::workspace_bin("gvm-vgpu-cli", "gvm-vgpu"))
        .arg("--root")
        .arg(&sim.root)
        .args(["show", &u])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("enforcement:  none (agent v1"), "{text}");
}

/// A real QEMU (no machine) serving QMP where the daemon looks for `uuid`'s VM.
fn qemu_for(root: &std::path::Path, uuid: &uuid::Uuid) -> Option<std::process::Child> {
    let dir = root.join("run/gvm-vgpu/qmp");
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join(format!("{uuid}.sock"));
    let child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-nographic",
            "-display",
            "none",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&sock).is_ok()
    })
    .then_some(child)
}

/// Whether the VM behind `uuid`'s QMP socket runs.
fn vm_running(root: &std::path::Path, uuid: &uuid::Uuid) -> bool {
    let sock = root.join(format!("run/gvm-vgpu/qmp/{uuid}.sock"));
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = s.try_clone().unwrap();
    let mut lines = BufReader::new(s);
    let mut l = String::new();
    lines.read_line(&mut l).unwrap(); // greeting
    for cmd in ["qmp_capabilities", "query-status"] {
        writeln!(out, "{{\"execute\":\"{cmd}\"}}").unwrap();
        loop {
            l.clear();
            lines.read_line(&mut l).unwrap();
            if !l.contains("\"event\"") {
                break;
            }
        }
    }
    let v: Value = serde_json::from_str(&l).unwrap();
    v["return"]["running"].as_bool().unwrap()
}

#[test]
fn a_freeze_the_guest_does_not_acknowledge_pauses_the_vm_through_qmp_and_thaw_resumes_it() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    let u = uuid.to_string();
    let Some(mut qemu) = qemu_for(&sim.root, &uuid) else {
        println!("SKIP: qemu-system-x86_64 is not installed");
        return;
    };
    let l = channel_of(&sim, &uuid);
    let mut d = sim.daemon(&["--guest-ack-ms", "300"]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &uuid
    )));
    // A guest that acknowledges every state but never reaches a freeze (a kernel that
    // never ends, or a guest that lies by omission).
    let mut g = Guest::accept(&l, HELLO_V2);
    let s1 = g.snapshot();
    g.ack(s1["generation"].as_u64().unwrap(), false);
    assert!(vm_running(&sim.root, &uuid));

    c.freeze(&u).unwrap();
    let s2 = g.snapshot();
    assert_eq!(s2["knobs"]["frozen"], true);
    g.ack(s2["generation"].as_u64().unwrap(), false);
    assert!(
        !vm_running(&sim.root, &uuid),
        "the freeze answered only once the VM was paused"
    );
    let held = c.show(&u).unwrap().held_by;
    assert!(
        held.as_deref()
            .is_some_and(|h| h.contains("paused through QMP")),
        "show names the mechanism: {held:?}"
    );

    // A daemon restart keeps the VM as it was (frozen, so paused), and a thaw after it
    // still resumes it.
    d.kill9();
    d.restart();
    let mut c = d.client();
    drop(g);
    let mut g = Guest::accept(&l, HELLO_V2);
    let s3 = g.snapshot();
    assert_eq!(
        s3["knobs"]["frozen"], true,
        "still frozen after the restart"
    );
    assert!(
        !vm_running(&sim.root, &uuid),
        "still paused after the restart"
    );
    c.thaw(&u).unwrap();
    assert!(vm_running(&sim.root, &uuid), "thaw resumed the VM");
    assert_eq!(c.show(&u).unwrap().held_by, None);

    // Without any guest agent (the channel gone), a freeze pauses the VM at once.
    drop(g);
    drop(l);
    std::fs::remove_file(sim.root.join(format!("run/gvm-vgpu/agent/{uuid}.sock"))).unwrap();
    assert!(wait_until(Duration::from_secs(5), || c
        .show(&u)
        .is_ok_and(|s| s.guest.is_none_or(|g| !g.connected))));
    c.freeze(&u).unwrap();
    assert!(!vm_running(&sim.root, &uuid), "no agent: paused");
    c.thaw(&u).unwrap();
    assert!(vm_running(&sim.root, &uuid));
    let _ = qemu.kill();
    let _ = qemu.wait();
}

#[test]
fn a_hostile_guests_protocol_2_lines_stay_on_its_own_channel() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let parent = sim.parents()[0].clone();
    let (bad, good) = (
        sim.echo_create(&parent, "gvmsim-1"),
        sim.echo_create(&parent, "gvmsim-1"),
    );
    let lb = channel_of(&sim, &bad);
    let lg = channel_of(&sim, &good);
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &bad
    ) && is_managed(
        &mut c, &good
    )));
    let mut gg = Guest::accept(&lg, HELLO_V2);
    let good_gen = gg.snapshot()["generation"].as_u64().unwrap();
    gg.ack(good_gen, false);
    let mut gb = Guest::accept(&lb, HELLO_V2);
    let bad_gen = gb.snapshot()["generation"].as_u64().unwrap();
    // A knob message from the guest (a snapshot of its own), a claim about another VM's
    // processes is not a message at all; forged and out-of-range acks; an oversize counters
    // line; a busy flood.
    gb.send(&format!(
        r#"{{"type":"snapshot","generation":{},"knobs":{{"memory_limit":null,"priority":0,"frozen":false,"host_swap":true,"share_budget_us":null,"window_ms":null}},"hold":false}}"#,
        bad_gen + 1
    ));
    gb.ack(bad_gen + 5, true);
    gb.send(r#"{"type":"ack","generation":0,"reached":{"frozen":true,"held":false,"processes":1,"in_flight":0,"memory_limit":null,"priority":0}}"#);
    let huge = format!(
        r#"{{"type":"counters","processes":[{}]}}"#,
        vec![r#"{"pid":1,"name":"x","memory_current":0,"memory_swap":0,"kernels_submitted":0,"kernels_ended":0,"pending":0,"busy":false,"gpu_busy_us":0}"#; 700].join(",")
    );
    gb.send(&huge);
    for i in 0..2000 {
        gb.send(&format!(r#"{{"type":"busy","busy":{}}}"#, i % 2 == 0));
    }
    // The good VM is unaffected: its state and acknowledgement stand, and it still gets
    // new states.
    c.set(SetParams {
        target: good.to_string(),
        memory_limit: Some(2 << 30),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
    let s = gg.snapshot();
    assert_eq!(s["knobs"]["memory_limit"], 2u64 << 30);
    gg.ack(s["generation"].as_u64().unwrap(), false);
    assert!(wait_until(Duration::from_secs(5), || guest_of(
        &mut c,
        &good.to_string()
    )
    .is_some_and(|e| e.in_sync() && e.forged_acks == 0 && !e.held)));
    // The bad VM's own record: nothing it claimed was taken.
    let e = guest_of(&mut c, &bad.to_string()).unwrap();
    assert_eq!(e.forged_acks, 1, "{e:?}");
    assert_eq!(
        e.generation_acked, None,
        "no forged or invalid ack was taken"
    );
    assert!(e.processes.is_empty(), "the oversize counters were refused");
    let info = c.show(&bad.to_string()).unwrap().info;
    assert_ne!(info.knobs.priority, 0, "a guest cannot set its own knobs");
    let stats = c.guest_stats(Some(&bad.to_string())).unwrap();
    assert!(
        stats[0].violations >= 3,
        "the bad lines were counted on the bad channel: {:?}",
        stats[0]
    );
    let good_stats = c.guest_stats(Some(&good.to_string())).unwrap();
    assert_eq!(good_stats[0].violations, 0, "{:?}", good_stats[0]);
}

fn counters(submitted: u64) -> String {
    format!(
        r#"{{"type":"counters","processes":[{{"pid":41,"name":"train","memory_current":4096,"memory_swap":0,"kernels_submitted":{submitted},"kernels_ended":{submitted},"pending":0,"busy":false,"gpu_busy_us":0}}]}}"#
    )
}

#[test]
fn a_guest_whose_kernels_go_on_after_it_acknowledged_a_freeze_is_paused() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    let u = uuid.to_string();
    let Some(mut qemu) = qemu_for(&sim.root, &uuid) else {
        println!("SKIP: qemu-system-x86_64 is not installed");
        return;
    };
    let l = channel_of(&sim, &uuid);
    let d = sim.daemon(&["--guest-ack-ms", "2000"]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &uuid
    )));
    let mut g = Guest::accept(&l, HELLO_V2);
    let s1 = g.snapshot();
    g.ack(s1["generation"].as_u64().unwrap(), false);
    g.send(&counters(10));
    // The freeze is acknowledged as complete in time: no pause.
    let t = std::thread::spawn(move || {
        let s2 = g.snapshot();
        assert_eq!(s2["knobs"]["frozen"], true);
        g.ack(s2["generation"].as_u64().unwrap(), true);
        g
    });
    c.freeze(&u).unwrap();
    let mut g = t.join().unwrap();
    assert!(
        vm_running(&sim.root, &uuid),
        "an acknowledged freeze needs no pause"
    );
    assert_eq!(c.show(&u).unwrap().held_by, None);
    // The same counts again change nothing; a rise means the guest does not keep the freeze.
    g.send(&counters(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(vm_running(&sim.root, &uuid));
    g.send(&counters(25));
    assert!(
        wait_until(Duration::from_secs(5), || !vm_running(&sim.root, &uuid)),
        "the lying guest's VM is paused"
    );
    assert!(c.show(&u).unwrap().held_by.is_some());
    c.thaw(&u).unwrap();
    assert!(vm_running(&sim.root, &uuid), "thaw resumes it");
    let _ = qemu.kill();
    let _ = qemu.wait();
}

#[test]
fn a_vm_claiming_busy_without_end_holds_another_only_up_to_the_cap_and_says_so() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let parent = sim.parents()[0].clone();
    let (ua, ub) = (
        sim.echo_create(&parent, "gvmsim-1"),
        sim.echo_create(&parent, "gvmsim-1"),
    );
    let (la, lb) = (channel_of(&sim, &ua), channel_of(&sim, &ub));
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &ua
    ) && is_managed(
        &mut c, &ub
    )));
    c.set_priority(&ua.to_string(), 2).unwrap();
    c.set_priority(&ub.to_string(), 8).unwrap();
    let mut a = Guest::accept(&la, HELLO_V2);
    let _b = Guest::accept(&lb, HELLO_V2);
    a.snapshot();
    let (a_id, b_id) = (ua.to_string(), ub.to_string());
    assert!(wait_until(Duration::from_secs(5), || guest_of(
        &mut c, &b_id
    )
    .is_some_and(|g| g.protocol == 2 && !g.held)));
    // A claims busy and never says idle: B is held, then let go by the cap (900 ms of a
    // second) while A's claim stands; A's channel counts the hit and the daemon says so.
    a.send(r#"{"type":"busy","busy":true}"#);
    assert!(
        wait_until(Duration::from_secs(2), || guest_of(&mut c, &b_id)
            .is_some_and(|g| g.held)),
        "B is held while A claims busy"
    );
    assert!(
        wait_until(Duration::from_secs(3), || guest_of(&mut c, &b_id)
            .is_some_and(|g| !g.held)),
        "the cap lets B go although A still claims busy"
    );
    let hits = guest_of(&mut c, &a_id).map(|g| g.hold_cap_hits);
    assert!(
        hits.is_some_and(|h| h >= 1),
        "A's channel counts the cap hit: {hits:?}"
    );
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("reached the cap on holding other VMs"),
        "the daemon says why it let B go"
    );
}

#[test]
fn a_busy_vm_holds_less_important_vms_on_its_own_gpu_only() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(2);
    let parents = sim.parents();
    // A and C share the first GPU, B is alone on the second.
    let ua = sim.echo_create(&parents[0], "gvmsim-1");
    let uc = sim.echo_create(&parents[0], "gvmsim-1");
    let ub = sim.echo_create(&parents[1], "gvmsim-1");
    let (la, lb, lc) = (
        channel_of(&sim, &ua),
        channel_of(&sim, &ub),
        channel_of(&sim, &uc),
    );
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || [ua, ub, uc]
        .iter()
        .all(|u| is_managed(&mut c, u))));
    c.set_priority(&ua.to_string(), 2).unwrap();
    c.set_priority(&ub.to_string(), 8).unwrap();
    c.set_priority(&uc.to_string(), 8).unwrap();
    let mut a = Guest::accept(&la, HELLO_V2);
    let (_b, _c) = (Guest::accept(&lb, HELLO_V2), Guest::accept(&lc, HELLO_V2));
    a.snapshot();
    let (b_id, c_id) = (ub.to_string(), uc.to_string());
    assert!(wait_until(Duration::from_secs(5), || [&b_id, &c_id]
        .iter()
        .all(|u| guest_of(&mut c, u).is_some_and(|g| g.protocol == 2))));
    a.send(r#"{"type":"busy","busy":true}"#);
    assert!(
        wait_until(Duration::from_secs(2), || guest_of(&mut c, &c_id)
            .is_some_and(|g| g.held)),
        "C, on A's GPU, is held while A is busy"
    );
    let b = guest_of(&mut c, &b_id).unwrap();
    assert!(!b.held, "B, on another GPU, is not held by A: {b:?}");
    a.send(r#"{"type":"busy","busy":false}"#);
    assert!(wait_until(Duration::from_secs(2), || guest_of(
        &mut c, &c_id
    )
    .is_some_and(|g| !g.held)));
}
