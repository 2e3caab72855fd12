use std::time::Instant;

use gvm_shim_abi::arbiter::ArbiterBlock;
use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::ControlMap;

use super::*;
use crate::handover::RegisteredGpu;
use crate::registry::Registration;
use crate::relay::UNOWNED_FLOOR;

const GPU: &str = "0000:3b:00.0";
const ROOT: DomainKey = DomainKey::Host { uid: 0, pid_ns: 1 };
const USER: DomainKey = DomainKey::Host {
    uid: 1000,
    pid_ns: 1,
};

/// Register `host_pid` (seeing itself as `ns_pid`) with a block declaring `declared`.
fn registered(reg: &ShimRegistry, host_pid: u32, ns_pid: u32, declared: u32) {
    let ctl = ControlMap::create_sealed(&Knobs::default(), 0).expect("block");
    ctl.block().priority.store(declared, Ordering::SeqCst);
    reg.insert(
        host_pid,
        Registration {
            connection: reg.connection_id(),
            ns_pid,
            control: "memfd".into(),
            file_id: ctl.file_id().unwrap_or_default(),
            block: Arc::new(ctl),
            gpus: vec![RegisteredGpu {
                ordinal: 0,
                pci_bus_id: GPU.into(),
            }],
            vgpu_uuid: None,
            assigned_priority: None,
            arbiter_back: Vec::new(),
        },
    );
}

/// Root's pid 100 (declaring `root.0`, given `root.1` as a vGPU owner) and the user's pid 200
/// (declaring `user`, owning nothing), registered and joined on [`GPU`]: the hub and their
/// domains' blocks.
fn root_and_user(root: (u32, u32), user: u32) -> (Arc<RelayHub>, Arc<ArbiterMap>, Arc<ArbiterMap>) {
    let reg = Arc::new(ShimRegistry::default());
    registered(&reg, 100, 100, root.0);
    reg.assign_priority(100, root.1);
    registered(&reg, 200, 200, user);
    let hub = RelayHub::new(Arc::clone(&reg));
    let r = block_of(&hub.join(100, 100, ROOT, &[GPU.into()], Vec::new()));
    let u = block_of(&hub.join(200, 200, USER, &[GPU.into()], Vec::new()));
    (hub, r, u)
}

fn block_of(j: &Joined) -> Arc<ArbiterMap> {
    match &j[0].1 {
        Ok(b) => Arc::clone(b),
        Err(e) => panic!("no block: {e}"),
    }
}

/// Wait (at most 5 s: a deadline for a loaded CI machine, not a timing goal) for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ext(b: &ArbiterBlock) -> (u32, u32) {
    (
        b.header.external_busy.load(Ordering::SeqCst),
        b.header.external_present.load(Ordering::SeqCst),
    )
}

#[test]
fn a_busy_owner_of_one_uid_holds_a_less_important_process_of_another_uid() {
    let (_hub, root, user) = root_and_user((0, 2), 8);
    assert_ne!(root.file_id(), user.file_id(), "one block per domain");
    assert_eq!(
        ext(user.block()),
        (0, 1 << 2),
        "the user sees root's owner present"
    );
    assert_eq!(ext(root.block()), (0, 1 << 8));
    assert_eq!(root.block().header.relay_armed.load(Ordering::SeqCst), 1);
    // Alone in their own blocks, both still have a role.
    let r = root.block().register(100, 2, &RealEnv).expect("slot");
    let u = user.block().register(200, 8, &RealEnv).expect("slot");
    assert!(root.block().role(r).has_lower);
    assert!(user.block().role(u).has_higher);
    // Root's owner goes busy: the ring wakes the relay, which holds the user's process.
    root.block().set_busy(r, true, &RealEnv);
    eventually("the user's process is held", || user.block().higher_busy(8));
    assert_eq!(user.block().slots[u].gpu_hold.load(Ordering::SeqCst), 1);
    root.block().set_busy(r, false, &RealEnv);
    eventually("the user's process is free again", || {
        !user.block().higher_busy(8)
    });
    // The user's process busy holds nobody at root: 8 is less important than 2.
    user.block().set_busy(u, true, &RealEnv);
    eventually("root sees the user busy", || ext(root.block()).0 == 1 << 8);
    assert!(!root.block().higher_busy(2));
}

#[test]
fn what_lies_outside_is_present_on_every_gpu_and_its_busy_closes_each_gate() {
    const OTHER: &str = "0000:af:00.0";
    let reg = Arc::new(ShimRegistry::default());
    registered(&reg, 100, 100, 8);
    let hub = RelayHub::new(Arc::clone(&reg));
    let a = block_of(&hub.join(100, 100, ROOT, &[GPU.into()], Vec::new()));
    let slot = a.block().register(100, 8, &RealEnv).expect("slot");
    assert!(a.block().role(slot).is_alone(), "alone in the guest");
    // The host outranks the VM: present at 0 everywhere, not busy.
    hub.set_outside(Some(Masks {
        present: 1,
        busy: 0,
    }));
    assert_eq!(ext(a.block()), (0, 1));
    assert_eq!(a.block().header.relay_armed.load(Ordering::SeqCst), 1);
    assert!(a.block().role(slot).has_higher, "the gate is armed");
    assert_eq!(a.block().slots[slot].gpu_hold.load(Ordering::SeqCst), 0);
    // A GPU joined afterwards sees it too.
    registered(&reg, 101, 101, 8);
    let b = block_of(&hub.join(101, 101, USER, &[OTHER.into()], Vec::new()));
    assert_eq!(ext(b.block()), (0, 1), "a GPU joined later");
    assert_eq!(
        hub.host_masks(GPU).busy,
        0,
        "the outside is not the host's own busy"
    );
    // The host holds the VM: every gate closes; released: open again.
    hub.set_outside(Some(Masks {
        present: 1,
        busy: 1,
    }));
    assert!(a.block().higher_busy(8));
    assert_eq!(a.block().slots[slot].gpu_hold.load(Ordering::SeqCst), 1);
    assert_eq!(ext(b.block()), (1, 1));
    hub.set_outside(Some(Masks {
        present: 1,
        busy: 0,
    }));
    assert_eq!(a.block().slots[slot].gpu_hold.load(Ordering::SeqCst), 0);
    // No longer outranked: gone, and the process is alone again.
    hub.set_outside(None);
    assert_eq!(ext(a.block()), (0, 0));
    assert!(a.block().role(slot).is_alone());
}

#[test]
fn a_domain_lies_only_to_itself() {
    // An unowned user process declaring priority 0.
    let (_hub, root, user) = root_and_user((4, 4), 0);
    assert_eq!(
        ext(root.block()).1,
        1 << UNOWNED_FLOOR,
        "counted at the floor, not at its declared 0"
    );
    let u = user.block().register(200, 0, &RealEnv).expect("slot");
    user.block().set_busy(u, true, &RealEnv);
    // A slot of a pid that never registered, and one naming root's pid, busy too.
    let stranger = user.block().register(999, 0, &RealEnv).expect("slot");
    user.block().set_busy(stranger, true, &RealEnv);
    let forged = user.block().register(100, 0, &RealEnv).expect("slot");
    user.block().set_busy(forged, true, &RealEnv);
    eventually("root sees the user's one registered process busy", || {
        ext(root.block()).0 != 0
    });
    assert_eq!(ext(root.block()).0, 1 << UNOWNED_FLOOR);
    assert!(
        !root.block().higher_busy(4),
        "root's priority-4 owner is never held by the user"
    );
    // Writing root's external words from the user's side is impossible: they are in
    // root's block, which the user's processes never get.
    assert_ne!(root.file_id(), user.file_id());
}

#[test]
fn a_stopped_busy_process_stops_holding_other_domains() {
    let (_hub, root, user) = root_and_user((8, 1), 8);
    let r = root.block().register(100, 1, &RealEnv).expect("slot");
    root.block().set_busy(r, true, &RealEnv);
    eventually("held", || user.block().higher_busy(8));
    // Its heartbeat is a second old: as if SIGSTOPped while busy.
    let old = abi_sys::monotonic_ns().saturating_sub(1_000_000_000);
    root.block().slots[r]
        .heartbeat_ns
        .store(old, Ordering::SeqCst);
    eventually("released within a watch period", || {
        !user.block().higher_busy(8)
    });
}

#[test]
fn when_one_domain_leaves_the_other_is_disarmed_and_freed() {
    let (hub, root, user) = root_and_user((8, 1), 8);
    let r = root.block().register(100, 1, &RealEnv).expect("slot");
    root.block().set_busy(r, true, &RealEnv);
    eventually("held", || user.block().higher_busy(8));
    hub.leave(100);
    assert_eq!(ext(user.block()), (0, 0));
    assert_eq!(user.block().header.relay_armed.load(Ordering::SeqCst), 0);
    assert_eq!(hub.domains_of(GPU), vec![(USER, 1)]);
    hub.leave(200);
    assert!(hub.domains_of(GPU).is_empty());
}

#[test]
fn a_block_handed_back_after_a_restart_stays_the_domains_block() {
    let reg = Arc::new(ShimRegistry::default());
    registered(&reg, 100, 100, 8);
    registered(&reg, 101, 101, 8);
    // The block an earlier manager made, which the processes still share.
    let earlier = ArbiterMap::create_sealed().expect("block");
    let back = earlier
        .fd()
        .expect("memfd")
        .try_clone_to_owned()
        .expect("dup");
    let hub = RelayHub::new(Arc::clone(&reg));
    let first = block_of(&hub.join(100, 100, ROOT, &[GPU.into()], vec![(GPU.into(), back)]));
    assert_eq!(
        first.file_id(),
        earlier.file_id(),
        "the handed-back block is kept"
    );
    let second = block_of(&hub.join(101, 101, ROOT, &[GPU.into()], Vec::new()));
    assert_eq!(
        second.file_id(),
        earlier.file_id(),
        "and handed to newcomers"
    );
    // A resizable memfd handed back is ignored: a fresh block is made instead.
    let loose = abi_sys::memfd_create(c"loose").expect("memfd");
    std::fs::File::from(loose.try_clone().expect("dup"))
        .set_len(8192)
        .expect("size");
    registered(&reg, 200, 200, 8);
    let user = block_of(&hub.join(200, 200, USER, &[GPU.into()], vec![(GPU.into(), loose)]));
    assert!(user.fd().is_some());
    assert_ne!(user.file_id(), earlier.file_id());
}

#[test]
fn blocks_of_two_gpus_handed_back_are_each_kept_on_their_own_gpu() {
    const OTHER: &str = "0000:af:00.0";
    let reg = Arc::new(ShimRegistry::default());
    registered(&reg, 100, 100, 8);
    let dup = |m: &ArbiterMap| m.fd().expect("memfd").try_clone_to_owned().expect("dup");
    let (on_gpu, on_other, stray) = (
        ArbiterMap::create_sealed().expect("block"),
        ArbiterMap::create_sealed().expect("block"),
        ArbiterMap::create_sealed().expect("block"),
    );
    let hub = RelayHub::new(Arc::clone(&reg));
    // Handed back in the other order than the GPUs are listed, with one for a GPU the
    // process does not use.
    let got = hub.join(
        100,
        100,
        ROOT,
        &[GPU.into(), OTHER.into()],
        vec![
            (OTHER.into(), dup(&on_other)),
            ("0000:99:00.0".into(), dup(&stray)),
            (GPU.into(), dup(&on_gpu)),
        ],
    );
    let ids: Vec<_> = got
        .iter()
        .map(|(pci, b)| (pci.as_str(), b.as_ref().expect("a block").file_id()))
        .collect();
    assert_eq!(
        ids,
        vec![(GPU, on_gpu.file_id()), (OTHER, on_other.file_id())],
        "each GPU keeps the block handed back for it"
    );
}

#[test]
fn one_uid_cannot_fill_a_gpu_with_pid_namespaces() {
    let reg = Arc::new(ShimRegistry::default());
    let hub = RelayHub::new(Arc::clone(&reg));
    for ns in 0..MAX_DOMAINS_PER_UID as u64 {
        let pid = 300 + ns as u32;
        registered(&reg, pid, 1, 8);
        let d = DomainKey::Host {
            uid: 1000,
            pid_ns: ns,
        };
        assert!(hub.join(pid, 1, d, &[GPU.into()], Vec::new())[0].1.is_ok());
    }
    registered(&reg, 399, 1, 8);
    let d = DomainKey::Host {
        uid: 1000,
        pid_ns: 99,
    };
    let got = hub.join(399, 1, d, &[GPU.into()], Vec::new());
    assert!(
        matches!(&got[0].1, Err(RelayRefusal::UidFull { uid: 1000, .. })),
        "{got:?}"
    );
    // Another uid still gets in.
    registered(&reg, 400, 1, 8);
    assert!(hub.join(400, 1, ROOT, &[GPU.into()], Vec::new())[0]
        .1
        .is_ok());
}
