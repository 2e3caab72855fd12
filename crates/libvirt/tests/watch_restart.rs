//! The lifecycle watch survives a libvirtd crash: after `kill -9` and a restart it reconnects,
//! resyncs, and delivers the next suspend/resume within seconds. In its own test binary
//! because it kills the daemon the other tests use.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use gvm_libvirt::{DomainState, EventKind, WatchEvent, WatchOptions};
use gvm_testkit::skip;

#[test]
fn watch_reconnects_after_libvirtd_is_killed_and_restarted() {
    if skip(
        "watch_reconnects_after_libvirtd_is_killed_and_restarted",
        require_libvirtd(),
    ) {
        return;
    }
    let name = unique_name("restart");
    let _dom = TestDomain::define(&name, &domain_xml(&name, "", ""));
    virsh_ok(&["start", &name]);

    let (tx, rx) = mpsc::channel();
    let options = WatchOptions {
        keepalive_interval: 1,
        keepalive_count: 2,
        retry: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        poll: Duration::from_millis(200),
    };
    let handle = gvm_libvirt::watch_with(URI, options, move |ev| {
        let _ = tx.send(ev);
    })
    .unwrap();
    wait_for(&rx, Duration::from_secs(10), "Connected", |e| {
        matches!(e, WatchEvent::Connected { .. })
    });
    let is = |kind: EventKind, name: String| move |e: &WatchEvent| matches!(e, WatchEvent::Domain(d) if d.domain == name && d.kind == kind);
    virsh_ok(&["suspend", &name]);
    wait_for(
        &rx,
        Duration::from_secs(10),
        "Suspended",
        is(EventKind::Suspended, name.clone()),
    );

    let killed = Instant::now();
    restart_libvirtd().unwrap();
    wait_for(&rx, Duration::from_secs(10), "Disconnected", |e| {
        matches!(e, WatchEvent::Disconnected { .. })
    });
    // The resync after reconnecting shows the domain as it is now: still paused.
    let ev = wait_for(
        &rx,
        Duration::from_secs(15),
        "Connected after restart",
        |e| matches!(e, WatchEvent::Connected { .. }),
    );
    let WatchEvent::Connected { domains } = ev else {
        unreachable!()
    };
    let me = domains.iter().find(|d| d.domain == name).unwrap();
    assert_eq!(me.state, DomainState::Paused);
    println!("reconnected {:?} after the kill", killed.elapsed());

    virsh_ok(&["resume", &name]);
    wait_for(
        &rx,
        Duration::from_secs(5),
        "Resumed after restart",
        is(EventKind::Resumed, name.clone()),
    );
    virsh_ok(&["suspend", &name]);
    wait_for(
        &rx,
        Duration::from_secs(5),
        "Suspended after restart",
        is(EventKind::Suspended, name.clone()),
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "recovery took {:?}",
        killed.elapsed()
    );
    handle.stop();
}
