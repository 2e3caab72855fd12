//! The hard fallback on a libvirt domain: a `freeze` of a vGPU whose domain has no
//! protocol-2 guest agent suspends the domain through libvirt (a real libvirtd and a real
//! TCG domain bound to a vGPU of the simulated host through gvm's `<metadata>`, as
//! `gvm-vgpu attach --metadata-only` writes it), `show` says libvirt holds it, a daemon
//! restart keeps it held and the thaw after the restart resumes it. A domain the operator
//! paused is held by the freeze without a pause of the daemon's, and the thaw leaves it
//! paused.
//!
//! Needs root, /dev/fuse, libvirtd, virsh and qemu-system-x86_64; skips (printing why)
//! without.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::libvirtd::{bound_running_domain, domstate, require_libvirtd, virsh_ok, URI};
use common::{skip_reason, wait_until, Sim};

#[test]
fn freeze_without_a_guest_agent_suspends_the_libvirt_domain_and_thaw_resumes_it() {
    if let Some(why) = skip_reason().or_else(require_libvirtd) {
        println!("SKIP: {why}");
        return;
    }
    let sim = Sim::start(1);
    let mut d = sim.daemon(&["--libvirt", URI, "--guest-ack-ms", "300"]);
    let mut c = d.client();
    let (dom, uuid) = bound_running_domain(&sim, &mut c, "fallback");
    let name = dom.name.clone();
    assert!(
        wait_until(Duration::from_secs(5), || c
            .show(&uuid.to_string())
            .is_ok_and(|s| s.info.domain.as_deref() == Some(name.as_str()))),
        "the daemon did not bind {uuid} to domain {name}"
    );

    // No agent in the domain: the freeze suspends it through libvirt.
    c.freeze(&uuid.to_string()).unwrap();
    assert_eq!(
        domstate(&name),
        "paused",
        "the freeze did not suspend {name}"
    );
    let held = c.show(&uuid.to_string()).unwrap().held_by;
    assert!(
        held.as_deref()
            .is_some_and(|h| h.contains("libvirt domain") && h.contains(&name)),
        "show does not say libvirt holds the VM: {held:?}"
    );

    // A restarted daemon keeps it so, and its thaw resumes the domain.
    d.restart();
    let mut c = d.client();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(domstate(&name), "paused", "a daemon restart resumed {name}");
    assert!(c.show(&uuid.to_string()).unwrap().held_by.is_some());
    c.thaw(&uuid.to_string()).unwrap();
    assert_eq!(domstate(&name), "running", "the thaw did not resume {name}");
    assert_eq!(c.show(&uuid.to_string()).unwrap().held_by, None);
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains("no protocol-2 guest agent") && log.contains("suspended"),
        "the daemon did not log why and how it paused the VM"
    );

    // A domain the operator paused: the freeze holds it as it is, the thaw does not resume it.
    virsh_ok(&["suspend", &name]);
    c.freeze(&uuid.to_string()).unwrap();
    assert_eq!(c.show(&uuid.to_string()).unwrap().held_by, None);
    c.thaw(&uuid.to_string()).unwrap();
    assert_eq!(
        domstate(&name),
        "paused",
        "the thaw resumed a domain the operator paused"
    );
    virsh_ok(&["resume", &name]);
    drop(dom);
}
