//! The GVM gcgroup client against the simulated host's debugfs: every knob read and written
//! through real syscalls, the simulated GPU work responding, and the kernel's errors.
//! Needs root and /dev/fuse (else SKIP).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use gvm_gcgroup::{Error, GvmTree, MemoryLimit, Priority};
use gvm_mdev::MdevHost;
use gvm_testkit::{require_root_and_fuse, skip, SimHost, SimModel};

const GIB: u64 = 1 << 30;

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn knobs_read_write_and_the_simulated_gpu_responds() {
    if skip("gcgroup knobs_read_write", require_root_and_fuse()) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 2);
    let mdev = MdevHost::new(sim.host_root());
    let gvm = GvmTree::new(sim.host_root());
    assert!(gvm.is_present());
    assert!(gvm.processes().unwrap().is_empty());

    let a = mdev.create("0000:3c:00.0", "gvmsim-2", None).unwrap();
    sim.control(&format!("spawn {} memory={}", a.uuid, 3 * GIB))
        .unwrap();
    let pid = wait_for("the owner to register", || {
        gvm.processes().ok()?.first().copied()
    });
    assert_eq!(
        gvm.gpus(pid).unwrap(),
        vec![8],
        "second GPU has GVM index 8"
    );
    let g = gvm.gcgroup(pid, 8);
    // The link count of processes/<pid> counts its GPU directories, as debugfs keeps it.
    assert_eq!(gvm.gpu_count(pid).unwrap(), Some(1));

    // Defaults as the kernel reports them.
    let s = g.snapshot().unwrap();
    assert_eq!(s.memory_limit, MemoryLimit::Unlimited);
    assert_eq!(s.memory_current, 3 * GIB);
    assert_eq!(s.swap_current, 0);
    assert_eq!(s.priority, Priority::DEFAULT);
    assert!(!s.frozen);

    // Lowering the limit below current moves the excess to host memory (swap), and back.
    g.set_memory_limit(MemoryLimit::Bytes(GIB)).unwrap();
    assert_eq!(g.memory_limit().unwrap(), MemoryLimit::Bytes(GIB));
    assert_eq!(g.memory_current().unwrap(), GIB);
    assert_eq!(g.swap_current().unwrap(), 2 * GIB);
    g.set_memory_limit(MemoryLimit::Unlimited).unwrap();
    assert_eq!(g.swap_current().unwrap(), 0);

    g.set_priority(Priority::try_from(2).unwrap()).unwrap();
    assert_eq!(g.priority().unwrap().get(), 2);

    // Frozen: no kernel ends; thawed: they end again.
    wait_for("kernels to run", || {
        (g.stat().ok()?.ended > 0).then_some(())
    });
    g.set_frozen(true).unwrap();
    assert!(g.frozen().unwrap());
    std::thread::sleep(Duration::from_millis(50));
    let before = g.stat().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = g.stat().unwrap();
    assert_eq!(before.ended, after.ended, "a frozen owner made progress");
    assert!(after.pending > 0);
    g.set_frozen(false).unwrap();
    wait_for("progress after thaw", || {
        (g.stat().ok()?.ended > after.ended).then_some(())
    });

    // The kernel's EINVAL for values the client would never send.
    let raw = g.dir().join("compute.priority");
    let e = std::fs::write(&raw, "17\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = std::fs::write(g.dir().join("memory.limit"), "-1\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = std::fs::write(g.dir().join("compute.freeze"), "2\n").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(
        g.priority().unwrap().get(),
        2,
        "a rejected write changed the knob"
    );

    // The process goes away: ProcessGone, not a bug.
    sim.control(&format!("kill {pid}")).unwrap();
    wait_for("the owner to leave the tree", || {
        (!gvm.processes().ok()?.contains(&pid)).then_some(())
    });
    let e = g.set_priority(Priority::DEFAULT).unwrap_err();
    assert!(matches!(e, Error::ProcessGone { .. }), "{e}");
    assert!(matches!(
        gvm.gpus(pid).unwrap_err(),
        Error::ProcessGone { .. }
    ));
    assert!(matches!(
        gvm.gpu_count(pid).unwrap_err(),
        Error::ProcessGone { .. }
    ));
}

#[test]
fn priority_sets_the_time_share_between_owners_of_one_gpu() {
    if skip(
        "gcgroup priority_sets_the_time_share",
        require_root_and_fuse(),
    ) {
        return;
    }
    let sim = SimHost::start(SimModel::GvmSim, 1);
    let mdev = MdevHost::new(sim.host_root());
    let gvm = GvmTree::new(sim.host_root());
    let a = mdev.create("0000:3b:00.0", "gvmsim-1", None).unwrap();
    let b = mdev.create("0000:3b:00.0", "gvmsim-1", None).unwrap();
    sim.control(&format!("spawn {}", a.uuid)).unwrap();
    sim.control(&format!("spawn {}", b.uuid)).unwrap();
    let pids = wait_for("two owners", || {
        let p = gvm.processes().ok()?;
        (p.len() == 2).then_some(p)
    });
    // Priority 7 has twice the timeslice of priority 8.
    gvm.gcgroup(pids[0], 0)
        .set_priority(Priority::try_from(7).unwrap())
        .unwrap();
    gvm.gcgroup(pids[1], 0)
        .set_priority(Priority::try_from(8).unwrap())
        .unwrap();
    let ended = |pid| gvm.gcgroup(pid, 0).stat().unwrap().ended;
    let (a0, b0) = (ended(pids[0]), ended(pids[1]));
    std::thread::sleep(Duration::from_millis(600));
    let (da, db) = (ended(pids[0]) - a0, ended(pids[1]) - b0);
    let ratio = da as f64 / db.max(1) as f64;
    assert!(
        (1.6..2.5).contains(&ratio),
        "share ratio {ratio} ({da} vs {db} kernels)"
    );
}
