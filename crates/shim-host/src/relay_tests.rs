use super::*;

const ROOT: DomainKey = DomainKey::Host { uid: 0, pid_ns: 1 };
const USER: DomainKey = DomainKey::Host {
    uid: 1000,
    pid_ns: 1,
};

fn busy(b: u32) -> Masks {
    Masks {
        busy: b,
        present: b,
    }
}

#[test]
fn a_self_declared_priority_0_counts_at_the_registered_priority() {
    // The user's slot says priority 0, but the daemon registered pid 50 at 12.
    let registered = |d: DomainKey, pid: u32| match (d, pid) {
        (USER, 50) => Some(12),
        (ROOT, 10) => Some(4),
        _ => None,
    };
    let user = domain_busy(USER, &[BusySlot { pid: 50 }], registered);
    assert_eq!(user, 1 << 12);
    let ext = external(&BTreeMap::from([(ROOT, busy(0)), (USER, busy(user))]));
    assert_eq!(
        ext[&ROOT].busy,
        1 << 12,
        "root at 4 is not held by the user's 12"
    );
    assert_eq!(ext[&ROOT].busy & ((1 << 4) - 1), 0);
}

#[test]
fn slots_of_unregistered_pids_or_of_another_domains_pids_count_nothing() {
    let registered = |d: DomainKey, pid: u32| (d == ROOT && pid == 10).then_some(4);
    assert_eq!(domain_busy(USER, &[BusySlot { pid: 999 }], registered), 0);
    assert_eq!(
        domain_busy(USER, &[BusySlot { pid: 10 }], registered),
        0,
        "root's pid written into the user's block"
    );
}

#[test]
fn two_domains_on_one_gpu_are_arbitrated_against_each_other() {
    let vm = DomainKey::Vm(Uuid::from_u128(7));
    let ext = external(&BTreeMap::from([
        (ROOT, busy(1 << 2)),
        (USER, busy(1 << 8)),
        (vm, Masks::default()),
    ]));
    assert_eq!(
        ext[&USER].busy,
        1 << 2,
        "the user's 8 yields to root's busy 2"
    );
    assert_eq!(ext[&ROOT].busy, 1 << 8);
    assert_eq!(ext[&vm].busy, (1 << 2) | (1 << 8));
    assert_eq!(ext[&vm].present, (1 << 2) | (1 << 8));

    let same_uid_other_ns = DomainKey::Host {
        uid: 1000,
        pid_ns: 2,
    };
    assert_ne!(
        USER, same_uid_other_ns,
        "pid namespaces never share a block"
    );
}

#[test]
fn an_unowned_process_cannot_count_as_more_important_than_the_default() {
    assert_eq!(counted_priority(None, 0), UNOWNED_FLOOR);
    assert_eq!(
        counted_priority(None, 12),
        12,
        "less important is its right"
    );
    assert_eq!(counted_priority(None, 99), 16);
    assert_eq!(
        counted_priority(Some(2), 16),
        2,
        "an owner counts at its vGPU's priority"
    );
    assert_eq!(counted_priority(Some(40), 0), 16);
}

#[test]
fn a_stale_busy_flag_holds_nobody_in_other_domains() {
    let stale = STALE_AFTER.as_nanos() as u64;
    assert!(counts_as_busy(1, 1_000, 1_000 + stale));
    assert!(!counts_as_busy(1, 1_000, 2_000 + stale));
    assert!(!counts_as_busy(0, 1_000, 1_000));
    assert!(
        counts_as_busy(1, 5_000, 1_000),
        "a heartbeat from the future is fresh"
    );
}

#[test]
fn a_ringing_loop_runs_the_relay_at_most_once_per_gap() {
    let mut d = Doorbell::new(1_000_000);
    let mut runs = 0;
    for t in 0..10_000u64 {
        if d.ring(t * 1_000) {
            runs += 1;
        }
    }
    // 10 ms of rings every microsecond: 10 runs, not 10,000.
    assert_eq!(runs, 10);
    assert!(d.due_at().is_some(), "the last ring is remembered");
    assert!(d.poll(10_000_000));
    assert!(!d.poll(30_000_000), "consumed");
    assert_eq!(d.due_at(), None);
}
