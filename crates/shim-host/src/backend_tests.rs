//! Unit tests of the shim backend: file-name rules, the block → snapshot mapping, the scan
//! over a temporary host root (fake `/proc` entries stand for live processes), writes seen
//! through a second mapping as the shim would see them, and the shim behind the GVM tree
//! (`--backend auto` on a host without GVM).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;

use gvm_shim_abi::config::Knobs;
use gvm_shim_abi::control::{ControlMap, FLAG_STANDALONE};
use gvm_shim_abi::priority::{ArbiterMap, RealEnv};

use super::*;
use crate::blocks::{arbiter_pids, snapshot};
use gvm_gcgroup::KernelStat;

const UUID: &str = "5b4f1d7c-0000-4000-8000-000000000001";

#[test]
fn block_names_are_pids_and_arbiter_names_are_gpus() {
    assert_eq!(block_pid("gvm-vgpu-4242"), Some(4242));
    assert_eq!(block_pid("gvm-vgpu-gpu0"), None);
    assert_eq!(block_pid("gvm-vgpu-"), None);
    assert_eq!(block_pid("gvm-vgpu-0"), None);
    assert_eq!(block_pid("gvm-vgpu-12.tmp"), None);
    assert_eq!(block_pid("gvm-vgpu-+12"), None);
    assert_eq!(block_pid("other-12"), None);
    assert_eq!(block_pid("gvm-vgpu-gpu-0000:3b:00.0"), None);
}

#[test]
fn a_block_reads_as_a_gcgroup() {
    let knobs = Knobs {
        memory_limit: 6 << 30,
        priority: 3,
        ..Knobs::default()
    };
    let b = gvm_shim_abi::control::ControlBlock::new(&knobs);
    b.memory_current.store(1 << 30, Ordering::Relaxed);
    b.swap_current.store(5, Ordering::Relaxed);
    b.submitted.store(10, Ordering::Relaxed);
    b.ended.store(7, Ordering::Relaxed);
    b.frozen.store(1, Ordering::Relaxed);
    let s = snapshot(&b, 42, 1);
    assert_eq!((s.pid, s.gpu), (42, 1));
    assert_eq!(s.memory_limit, MemoryLimit::Bytes(6 << 30));
    assert_eq!(s.memory_current, 1 << 30);
    assert_eq!(s.swap_current, 5);
    assert_eq!(s.priority.get(), 3);
    assert!(s.frozen);
    assert_eq!(
        s.stat,
        KernelStat {
            submitted: 10,
            ended: 7,
            pending: 3
        }
    );
    b.memory_limit.store(u64::MAX, Ordering::Relaxed);
    b.priority.store(99, Ordering::Relaxed);
    b.ended.store(11, Ordering::Relaxed);
    let s = snapshot(&b, 42, 1);
    assert_eq!(s.memory_limit, MemoryLimit::Unlimited);
    assert_eq!(
        s.priority,
        Priority::MAX,
        "out of range reads as the lowest"
    );
    assert_eq!(
        s.stat.pending, 0,
        "ended ahead of submitted is not negative"
    );
}

/// A temporary host root with `/dev/shm` and a fake `/proc`.
struct Host {
    dir: tempfile::TempDir,
    host: HostRoot,
    reg: Arc<ShimRegistry>,
    gating: Arc<GatingModes>,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("root/dev/shm")).unwrap();
        fs::create_dir_all(dir.path().join("proc")).unwrap();
        let host = HostRoot::new(dir.path().join("root")).with_proc_dir(dir.path().join("proc"));
        Host {
            dir,
            host,
            reg: Arc::default(),
            gating: Arc::default(),
        }
    }

    /// The shim backend of this host, with its registry and gating handle.
    fn backend(&self) -> ShimBackend {
        ShimBackend::new(self.host.clone(), self.reg.clone(), self.gating.clone())
    }

    fn shm(&self, name: &str) -> PathBuf {
        self.host.path(SHM_DIR).join(name)
    }

    /// A live process `pid` with a block made by its shim (standalone, from `knobs`).
    fn shim_process(&self, pid: u32, knobs: &Knobs) -> ControlMap {
        self.set_alive(pid, true);
        ControlMap::create(
            &self.shm(&format!("gvm-vgpu-{pid}")),
            knobs,
            FLAG_STANDALONE,
        )
        .unwrap()
    }

    fn set_alive(&self, pid: u32, alive: bool) {
        let p = self.dir.path().join("proc").join(pid.to_string());
        if alive {
            fs::create_dir_all(p).unwrap();
        } else {
            fs::remove_dir_all(p).unwrap();
        }
    }
}

#[test]
fn the_scan_lists_live_valid_blocks_and_removes_those_of_dead_processes() {
    let h = Host::new();
    let _a = h.shim_process(42, &Knobs::default());
    let _b = h.shim_process(43, &Knobs::default());
    // Killed before its shim could remove the block.
    drop(h.shim_process(55, &Knobs::default()));
    h.set_alive(55, false);
    // Not a block of this layout (a root-owned 0600 file, so the scan looks inside).
    h.set_alive(77, true);
    fs::write(h.shm("gvm-vgpu-77"), vec![7u8; 4096]).unwrap();
    fs::set_permissions(h.shm("gvm-vgpu-77"), fs::Permissions::from_mode(0o600)).unwrap();
    // An arbitration block and an unrelated file are not processes.
    ArbiterMap::open_or_create(&h.shm("gvm-vgpu-gpu0")).unwrap();
    fs::write(h.shm("something-else"), b"x").unwrap();

    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42, 43]);
    assert!(
        !h.shm("gvm-vgpu-55").exists(),
        "dead process's block removed"
    );
    assert!(h.shm("gvm-vgpu-77").exists(), "a bad block is left alone");
    assert!(h.shm("gvm-vgpu-gpu0").exists());

    h.set_alive(43, false);
    assert_eq!(shim.processes().unwrap(), vec![42]);
    assert!(shim.read(43, 0).unwrap_err().is_process_gone());
    assert!(shim.gpus(99).unwrap_err().is_process_gone());
    let e = shim.read(77, 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Backend {
                backend: "shim",
                ..
            }
        ),
        "a bad block is an error naming the backend: {e:?}"
    );
    let msg = error_chain(&e);
    assert!(
        msg.contains("gvm-vgpu-77") && msg.contains("process 77"),
        "{msg}"
    );
}

#[test]
fn no_shm_directory_means_no_processes() {
    let dir = tempfile::tempdir().unwrap();
    let shim = ShimBackend::new(HostRoot::new(dir.path()), Arc::default(), Arc::default());
    assert_eq!(shim.processes().unwrap(), Vec::<u32>::new());
}

#[test]
fn the_gpu_is_the_arbitration_block_holding_the_pid() {
    let h = Host::new();
    let _a = h.shim_process(42, &Knobs::default());
    let _b = h.shim_process(43, &Knobs::default());
    let arb = ArbiterMap::open_or_create(&h.shm("gvm-vgpu-gpu2")).unwrap();
    assert!(arb.block().register(42, 8, &RealEnv).is_some());
    let bytes = fs::read(h.shm("gvm-vgpu-gpu2")).unwrap();
    assert_eq!(arbiter_pids(&bytes), vec![42]);
    assert_eq!(arbiter_pids(&[0u8; 64]), Vec::<u32>::new());

    let shim = h.backend();
    assert_eq!(shim.gpus(42).unwrap(), vec![2]);
    assert_eq!(shim.gpus(43).unwrap(), vec![0], "not yet arbitrated: GPU 0");
}

#[test]
fn writes_reach_the_block_the_shim_maps() {
    let h = Host::new();
    let knobs = Knobs {
        vgpu_uuid: Some(UUID.into()),
        arbitrate: false,
        ..Knobs::default()
    };
    let shim_side = h.shim_process(42, &knobs);
    let b = shim_side.block();
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42]);

    shim.set_memory_limit(42, 0, MemoryLimit::Bytes(4 << 30))
        .unwrap();
    shim.set_priority(42, 0, Priority::try_from(2).unwrap())
        .unwrap();
    shim.set_frozen(42, 0, true).unwrap();
    assert_eq!(b.memory_limit.load(Ordering::Acquire), 4 << 30);
    assert_eq!(b.priority.load(Ordering::Acquire), 2);
    assert_eq!(b.arbitrate.load(Ordering::Acquire), 1, "priority gating on");
    assert_eq!(b.frozen.load(Ordering::Acquire), 1);
    let s = shim.read(42, 0).unwrap();
    assert_eq!(s.memory_limit, MemoryLimit::Bytes(4 << 30));
    assert!(s.frozen);
    shim.set_frozen(42, 0, false).unwrap();
    shim.set_memory_limit(42, 0, MemoryLimit::Unlimited)
        .unwrap();
    assert_eq!(b.frozen.load(Ordering::Acquire), 0);
    assert_eq!(b.memory_limit.load(Ordering::Acquire), u64::MAX);
    assert_eq!(b.knobs().vgpu_uuid.as_deref(), Some(UUID), "identity kept");
}

#[test]
fn a_block_replaced_under_the_same_name_is_mapped_again() {
    let h = Host::new();
    let old = h.shim_process(42, &Knobs::default());
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42]);
    // The process exec'd (same pid) after its file was removed: a new file, a new block.
    fs::remove_file(h.shm("gvm-vgpu-42")).unwrap();
    let new = h.shim_process(42, &Knobs::default());
    assert_eq!(shim.processes().unwrap(), vec![42]);
    shim.set_frozen(42, 0, true).unwrap();
    assert_eq!(new.block().frozen.load(Ordering::Acquire), 1);
    assert_eq!(old.block().frozen.load(Ordering::Acquire), 0);
}

#[test]
fn auto_without_a_gvm_tree_is_the_shim_alone() {
    let h = Host::new();
    let _a = h.shim_process(42, &Knobs::default());
    let c = gvm_gcgroup::Composite::new(
        gvm_gcgroup::GvmTree::new(h.host.clone()),
        h.backend(),
        "gvm+shim",
    );
    assert_eq!(c.processes().unwrap(), vec![42]);
    assert_eq!(c.gpus(42).unwrap(), vec![0]);
    c.set_memory_limit(42, 0, MemoryLimit::Bytes(1 << 30))
        .unwrap();
    assert_eq!(
        c.read(42, 0).unwrap().memory_limit,
        MemoryLimit::Bytes(1 << 30)
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn links_and_blocks_planted_by_another_user_are_not_processes() {
    let h = Host::new();
    let real = h.shim_process(42, &Knobs::default());
    h.set_alive(43, true);
    std::os::unix::fs::symlink(real.path().unwrap(), h.shm("gvm-vgpu-43")).unwrap();
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42], "a link is not a block");
    assert!(shim.read(43, 0).unwrap_err().is_process_gone());
    if !is_root() {
        println!("SKIP (part): the ownership half needs root to chown");
        return;
    }
    // A block owned by a user other than root.
    let _planted = h.shim_process(44, &Knobs::default());
    std::os::unix::fs::chown(h.shm("gvm-vgpu-44"), Some(54321), None).unwrap();
    assert_eq!(shim.processes().unwrap(), vec![42]);
    assert!(shim.set_frozen(44, 0, true).unwrap_err().is_process_gone());
}

#[test]
fn a_user_owned_block_file_of_a_live_pid_is_not_mapped_even_by_its_own_user() {
    if !is_root() {
        println!("SKIP: needs root to chown a block to another user");
        return;
    }
    let h = Host::new();
    // The process runs as uid 54321 and its block is its own: that user can truncate the
    // file under any mapping of it, killing the mapper with SIGBUS. Today's defect.
    let theirs = h.shim_process(44, &Knobs::default());
    std::os::unix::fs::chown(h.shm("gvm-vgpu-44"), Some(54321), None).unwrap();
    std::os::unix::fs::chown(h.dir.path().join("proc/44"), Some(54321), None).unwrap();
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), Vec::<u32>::new());
    assert!(shim.read(44, 0).unwrap_err().is_process_gone());
    assert!(shim.set_frozen(44, 0, true).unwrap_err().is_process_gone());
    assert_eq!(
        theirs.block().frozen.load(Ordering::Acquire),
        0,
        "never written"
    );
    // Truncated now: nothing of the manager's maps it, so nothing faults.
    fs::OpenOptions::new()
        .write(true)
        .open(h.shm("gvm-vgpu-44"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(shim.processes().unwrap(), Vec::<u32>::new());
    assert!(shim.read(44, 0).unwrap_err().is_process_gone());
}

#[test]
fn a_root_owned_0600_block_file_is_mapped_and_a_0644_one_is_not() {
    if !is_root() {
        println!("SKIP: needs root for root-owned files");
        return;
    }
    let h = Host::new();
    let ok = h.shim_process(42, &Knobs::default());
    let open = h.shim_process(43, &Knobs::default());
    let mode = fs::metadata(h.shm("gvm-vgpu-42"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the shim makes file blocks 0600");
    fs::set_permissions(h.shm("gvm-vgpu-43"), fs::Permissions::from_mode(0o644)).unwrap();
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42]);
    shim.set_frozen(42, 0, true).unwrap();
    assert_eq!(ok.block().frozen.load(Ordering::Acquire), 1);
    assert!(shim.set_frozen(43, 0, true).unwrap_err().is_process_gone());
    assert_eq!(open.block().frozen.load(Ordering::Acquire), 0);
    // A FIFO under a block's name neither hangs the scan nor counts.
    h.set_alive(45, true);
    let fifo = h.shm("gvm-vgpu-45");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(shim.processes().unwrap(), vec![42]);
        assert!(shim.read(45, 0).unwrap_err().is_process_gone());
    }
}

#[test]
fn threads_held_at_the_gate_count_as_pending() {
    let b = gvm_shim_abi::control::ControlBlock::new(&Knobs::default());
    b.submitted.store(5, Ordering::Relaxed);
    b.ended.store(5, Ordering::Relaxed);
    assert_eq!(snapshot(&b, 1, 0).stat.pending, 0, "synchronised, not held");
    b.frozen.store(1, Ordering::Relaxed);
    b.waiting.store(2, Ordering::Relaxed);
    let s = snapshot(&b, 1, 0);
    assert_eq!(s.stat.pending, 2, "a frozen process still has work");
    assert_eq!((s.stat.submitted, s.stat.ended), (5, 5));
}

#[test]
fn a_daemon_driven_gpu_turns_arbitration_off_and_bounds_the_queue() {
    let h = Host::new();
    let plain = h.shim_process(42, &Knobs::default());
    let own_bound = h.shim_process(
        43,
        &Knobs {
            queue_always: true,
            ..Knobs::default()
        },
    );
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![42, 43]);
    let (p, o) = (plain.block(), own_bound.block());
    assert_eq!(o.queue_always.load(Ordering::Acquire), 1);

    // Best-effort (the default): arbitration on, queues as the processes chose.
    shim.read(42, 0).unwrap();
    shim.read(43, 0).unwrap();
    assert_eq!(p.arbitrate.load(Ordering::Acquire), 1);
    assert_eq!(p.queue_always.load(Ordering::Acquire), 0);

    // Another backend's gating handle is not this one's.
    let other = GatingModes::new();
    other.set_daemon_driven(0, true);
    shim.read(42, 0).unwrap();
    assert_eq!(p.arbitrate.load(Ordering::Acquire), 1);

    h.gating.set_daemon_driven(0, true);
    assert!(h.gating.is_daemon_driven(0) && !h.gating.is_daemon_driven(1));
    shim.read(42, 0).unwrap();
    shim.set_frozen(43, 0, true).unwrap();
    for b in [p, o] {
        assert_eq!(b.arbitrate.load(Ordering::Acquire), 0, "the freezes gate");
        assert_eq!(b.queue_always.load(Ordering::Acquire), 1, "bounded queue");
    }
    assert_eq!(o.frozen.load(Ordering::Acquire), 1);
    // A priority write under the driven policy keeps arbitration off.
    shim.set_priority(42, 0, Priority::try_from(3).unwrap())
        .unwrap();
    assert_eq!(p.arbitrate.load(Ordering::Acquire), 0);
    assert_eq!(p.priority.load(Ordering::Acquire), 3);

    h.gating.set_daemon_driven(0, false);
    shim.set_priority(42, 0, Priority::try_from(4).unwrap())
        .unwrap();
    shim.read(43, 0).unwrap();
    assert_eq!(p.arbitrate.load(Ordering::Acquire), 1);
    assert_eq!(
        p.queue_always.load(Ordering::Acquire),
        0,
        "our bound undone"
    );
    assert_eq!(o.arbitrate.load(Ordering::Acquire), 1);
    assert_eq!(
        o.queue_always.load(Ordering::Acquire),
        1,
        "the process's own bound stays"
    );
    other.set_daemon_driven(0, false);
}

/// Make `pci` mdev parents under `h`'s sysfs.
fn parents(h: &Host, pci: &[&str]) {
    for p in pci {
        fs::create_dir_all(h.host.mdev_bus_dir().join(p)).unwrap();
    }
}

#[test]
fn a_pci_keyed_arbitration_block_maps_through_the_mdev_parent() {
    let h = Host::new();
    parents(&h, &["0000:1a:00.0", "0000:3b:00.0"]);
    let _a = h.shim_process(42, &Knobs::default());
    let _b = h.shim_process(43, &Knobs::default());
    let arb = ArbiterMap::open_or_create(&h.shm("gvm-vgpu-gpu-0000:3b:00.0")).unwrap();
    assert!(arb.block().register(42, 8, &RealEnv).is_some());
    let other = ArbiterMap::open_or_create(&h.shm("gvm-vgpu-gpu-0000:99:00.0")).unwrap();
    assert!(other.block().register(43, 8, &RealEnv).is_some());

    let shim = h.backend();
    assert_eq!(
        shim.processes().unwrap(),
        vec![42, 43],
        "arbiters are not processes"
    );
    assert_eq!(
        shim.gpus(42).unwrap(),
        vec![8],
        "second PCI parent in probe order"
    );
    assert_eq!(
        shim.gpus(43).unwrap(),
        vec![0],
        "no parent with that address: the old behaviour"
    );
    fs::write(
        h.host.mdev_bus_dir().join("0000:3b:00.0/gvm_uvm_index"),
        "16\n",
    )
    .unwrap();
    assert_eq!(
        shim.gpus(42).unwrap(),
        vec![16],
        "the parent's own index wins"
    );
    assert_eq!(
        gvm_gcgroup::gpu_index::gvm_gpu_of_pci(&h.host, "0000:1a:00.0"),
        Some(0)
    );
    assert_eq!(
        gvm_gcgroup::gpu_index::gvm_gpu_of_pci(&h.host, "0000:99:00.0"),
        None
    );
}

#[test]
fn a_registered_process_is_listed_with_its_own_block_until_unregistered() {
    use crate::handover::RegisteredGpu;
    use crate::registry::Registration;
    let h = Host::new();
    parents(&h, &["0000:3b:00.0", "0000:af:00.0"]);
    // A process the daemon knows as 500 that sees itself as 7 (a container), whose block is
    // a sealed memfd it handed over: in no directory the scan could look at.
    h.set_alive(500, true);
    let ctl = ControlMap::create_sealed(&Knobs::default(), FLAG_STANDALONE).unwrap();
    ctl.block().pid.store(7, Ordering::Relaxed);
    let handed = ctl.fd().unwrap().try_clone_to_owned().unwrap();
    let mapped = ControlMap::from_handed_fd(handed).unwrap();
    let reg = h.reg.clone();
    let conn = reg.connection_id();
    reg.insert(
        500,
        Registration {
            connection: conn,
            ns_pid: 7,
            control: "memfd".into(),
            block: Arc::new(mapped),
            file_id: ctl.file_id().unwrap(),
            gpus: vec![RegisteredGpu {
                ordinal: 0,
                pci_bus_id: "0000:af:00.0".into(),
            }],
            vgpu_uuid: None,
            assigned_priority: None,
            arbiter_back: Vec::new(),
        },
    );
    let shim = h.backend();
    assert_eq!(shim.processes().unwrap(), vec![500]);
    assert_eq!(shim.gpus(500).unwrap(), vec![8], "its first GPU's parent");
    // Once it joins a GPU's arbitration block (under the pid it sees), that GPU counts.
    let arb = ArbiterMap::open_or_create(&h.shm("gvm-vgpu-gpu-0000:3b:00.0")).unwrap();
    assert!(arb.block().register(7, 8, &RealEnv).is_some());
    assert_eq!(shim.gpus(500).unwrap(), vec![0]);
    shim.set_memory_limit(500, 0, MemoryLimit::Bytes(1 << 30))
        .unwrap();
    assert_eq!(ctl.block().memory_limit.load(Ordering::Acquire), 1 << 30);
    assert!(
        !reg.remove(500, conn + 1),
        "another connection's end changes nothing"
    );
    assert!(reg.remove(500, conn));
    assert_eq!(shim.processes().unwrap(), Vec::<u32>::new(), "gone at once");
}
