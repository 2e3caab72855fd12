//! Tests of [`GvmTree`] and [`Gcgroup`] on a temporary tree of plain files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use gvm_host_root::HostRoot;
use tempfile::TempDir;

use crate::{
    Error, GcgroupBackend, GvmTree, KernelStat, MemoryLimit, Priority, COMPUTE_FREEZE,
    COMPUTE_PRIORITY, GCGROUP_STAT, MEMORY_CURRENT, MEMORY_LIMIT, SWAP_CURRENT,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

struct Tree {
    dir: TempDir,
}

impl Tree {
    fn empty() -> std::io::Result<Self> {
        Ok(Tree {
            dir: tempfile::tempdir()?,
        })
    }

    /// A tree listing `pids`, each with gcgroups on GPUs 0 and 8 at GVM's defaults.
    fn with(pids: &[u32]) -> std::io::Result<Self> {
        let t = Tree::empty()?;
        let mut list = String::from("PID\n");
        for pid in pids {
            list.push_str(&format!("{pid}\n"));
            for gpu in [0, 8] {
                t.add_gcgroup(*pid, gpu)?;
            }
        }
        fs::create_dir_all(t.processes())?;
        fs::write(t.processes().join("list"), list)?;
        Ok(t)
    }

    fn host(&self) -> HostRoot {
        HostRoot::new(self.dir.path())
    }

    fn gvm(&self) -> GvmTree {
        GvmTree::new(self.host())
    }

    fn processes(&self) -> PathBuf {
        self.host().gvm_processes_dir()
    }

    fn knob(&self, pid: u32, gpu: u32, knob: &str) -> PathBuf {
        self.processes()
            .join(pid.to_string())
            .join(gpu.to_string())
            .join(knob)
    }

    fn add_gcgroup(&self, pid: u32, gpu: u32) -> std::io::Result<()> {
        let dir = self.processes().join(pid.to_string()).join(gpu.to_string());
        fs::create_dir_all(&dir)?;
        let files = [
            (MEMORY_LIMIT, "18446744073709551615\n"),
            (MEMORY_CURRENT, "0\n"),
            (SWAP_CURRENT, "0\n"),
            (COMPUTE_PRIORITY, "8\n"),
            (COMPUTE_FREEZE, "0\n"),
            (
                GCGROUP_STAT,
                "nr_submitted_kernels: 0\nnr_ended_kernels: 0\nnr_pending_kernels: 0\n",
            ),
        ];
        for (name, content) in files {
            fs::write(dir.join(name), content)?;
        }
        Ok(())
    }
}

#[test]
fn a_missing_tree_is_not_present_everywhere() -> TestResult {
    let t = Tree::empty()?;
    let gvm = t.gvm();
    assert!(!gvm.is_present());
    match gvm.processes() {
        Err(e @ Error::NotPresent { .. }) => {
            assert!(e.to_string().contains("nvidia-uvm/processes"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(gvm.gpus(1), Err(Error::NotPresent { .. })));
    assert!(matches!(
        gvm.gcgroup(1, 0).memory_limit(),
        Err(Error::NotPresent { .. })
    ));
    assert!(matches!(
        gvm.gcgroup(1, 0).set_frozen(true),
        Err(Error::NotPresent { .. })
    ));
    Ok(())
}

#[test]
fn processes_parses_the_list_and_names_a_bad_line() -> TestResult {
    let t = Tree::with(&[4242, 17])?;
    let gvm = t.gvm();
    assert!(gvm.is_present());
    assert_eq!(gvm.processes()?, [17, 4242]);
    let list = t.processes().join("list");
    fs::write(&list, "PID\n17\nnot-a-pid\n")?;
    match gvm.processes() {
        Err(Error::Parse { file, content }) => {
            assert_eq!(file, list);
            assert_eq!(content, "line 3: not-a-pid");
        }
        other => panic!("unexpected {other:?}"),
    }
    fs::remove_file(&list)?;
    assert!(matches!(gvm.processes(), Err(Error::MissingKnob { file }) if file == list));
    Ok(())
}

#[test]
fn gpus_lists_numeric_entries_sorted() -> TestResult {
    let t = Tree::with(&[100])?;
    t.add_gcgroup(100, 16)?;
    fs::create_dir_all(t.processes().join("100/not-a-gpu"))?;
    assert_eq!(t.gvm().gpus(100)?, [0, 8, 16]);
    assert!(matches!(
        t.gvm().gpus(101),
        Err(Error::ProcessGone { pid: 101 })
    ));
    Ok(())
}

#[test]
fn defaults_read_back_as_gvm_defines_them() -> TestResult {
    let t = Tree::with(&[5])?;
    let g = t.gvm().gcgroup(5, 8);
    assert_eq!((g.pid(), g.gpu()), (5, 8));
    assert_eq!(g.dir(), t.processes().join("5/8"));
    assert_eq!(g.memory_limit()?, MemoryLimit::Unlimited);
    assert_eq!(g.memory_current()?, 0);
    assert_eq!(g.swap_current()?, 0);
    assert_eq!(g.priority()?, Priority::DEFAULT);
    assert!(!g.frozen()?);
    assert_eq!(g.stat()?, KernelStat::default());
    Ok(())
}

#[test]
fn every_writable_knob_writes_decimal_and_newline() -> TestResult {
    let t = Tree::with(&[5])?;
    let g = t.gvm().gcgroup(5, 0);

    g.set_memory_limit(MemoryLimit::Bytes(6 << 30))?;
    assert_eq!(
        fs::read_to_string(t.knob(5, 0, MEMORY_LIMIT))?,
        "6442450944\n"
    );
    assert_eq!(g.memory_limit()?, MemoryLimit::Bytes(6 << 30));
    g.set_memory_limit(MemoryLimit::Unlimited)?;
    assert_eq!(
        fs::read_to_string(t.knob(5, 0, MEMORY_LIMIT))?,
        "18446744073709551615\n"
    );
    assert_eq!(g.memory_limit()?, MemoryLimit::Unlimited);

    g.set_priority(Priority::try_from(2)?)?;
    assert_eq!(fs::read_to_string(t.knob(5, 0, COMPUTE_PRIORITY))?, "2\n");
    assert_eq!(g.priority()?.timeslice_us(), 131_072);

    g.set_frozen(true)?;
    assert_eq!(fs::read_to_string(t.knob(5, 0, COMPUTE_FREEZE))?, "1\n");
    assert!(g.frozen()?);
    g.set_frozen(false)?;
    assert_eq!(fs::read_to_string(t.knob(5, 0, COMPUTE_FREEZE))?, "0\n");

    // The other GPU's gcgroup is untouched.
    assert!(!t.gvm().gcgroup(5, 8).frozen()?);
    assert_eq!(t.gvm().gcgroup(5, 8).priority()?, Priority::DEFAULT);
    Ok(())
}

#[test]
fn read_only_counters_parse() -> TestResult {
    let t = Tree::with(&[5])?;
    fs::write(t.knob(5, 0, MEMORY_CURRENT), "1048576\n")?;
    fs::write(t.knob(5, 0, SWAP_CURRENT), "4096\n")?;
    fs::write(
        t.knob(5, 0, GCGROUP_STAT),
        "nr_submitted_kernels: 12\nnr_ended_kernels: 9\nnr_pending_kernels: 3\n",
    )?;
    let snap = t.gvm().gcgroup(5, 0).snapshot()?;
    assert_eq!(snap.memory_current, 1_048_576);
    assert_eq!(snap.swap_current, 4096);
    assert_eq!(
        snap.stat,
        KernelStat {
            submitted: 12,
            ended: 9,
            pending: 3
        }
    );
    let json = serde_json::to_value(snap)?;
    assert_eq!(json["stat"]["pending"], 3);
    assert_eq!(json["memory_limit"], "Unlimited");
    assert_eq!(json["priority"], 8);
    Ok(())
}

#[test]
fn garbage_in_any_knob_is_a_parse_error_naming_file_and_content() -> TestResult {
    let t = Tree::with(&[5])?;
    let g = t.gvm().gcgroup(5, 0);
    let cases: [(&str, &str); 6] = [
        (MEMORY_LIMIT, "-1\n"),
        (MEMORY_CURRENT, "lots\n"),
        (SWAP_CURRENT, "\n"),
        (COMPUTE_PRIORITY, "17\n"),
        (COMPUTE_FREEZE, "yes\n"),
        (GCGROUP_STAT, "nr_submitted_kernels: 1\n"),
    ];
    for (knob, garbage) in cases {
        let path = t.knob(5, 0, knob);
        let saved = fs::read(&path)?;
        fs::write(&path, garbage)?;
        let err = match knob {
            MEMORY_LIMIT => g.memory_limit().err(),
            MEMORY_CURRENT => g.memory_current().err(),
            SWAP_CURRENT => g.swap_current().err(),
            COMPUTE_PRIORITY => g.priority().err(),
            COMPUTE_FREEZE => g.frozen().err(),
            _ => g.stat().err(),
        };
        match err {
            Some(Error::Parse { file, content }) => {
                assert_eq!(file, path);
                assert!(content.contains(garbage.trim_end()), "{knob}: {content:?}");
            }
            other => panic!("{knob}: unexpected {other:?}"),
        }
        assert!(g.snapshot().is_err(), "{knob}");
        fs::write(&path, saved)?;
    }
    assert!(g.snapshot().is_ok());
    Ok(())
}

#[test]
fn a_process_that_goes_away_between_calls_is_process_gone() -> TestResult {
    let t = Tree::with(&[77])?;
    let gvm = t.gvm();
    let g = gvm.gcgroup(77, 8);
    assert_eq!(g.memory_limit()?, MemoryLimit::Unlimited);
    fs::remove_dir_all(t.processes().join("77"))?;
    let reads = [
        g.memory_limit().err(),
        g.memory_current().err(),
        g.swap_current().err(),
        g.priority().err(),
        g.frozen().err(),
        g.stat().err(),
        g.snapshot().err(),
        g.set_memory_limit(MemoryLimit::Bytes(1)).err(),
        g.set_priority(Priority::MAX).err(),
        g.set_frozen(true).err(),
        gvm.gpus(77).err(),
    ];
    for err in reads {
        match err {
            Some(e @ Error::ProcessGone { pid: 77 }) => {
                assert!(e.is_process_gone());
                assert_eq!(e.errno(), Some(libc::ENOENT));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The write did not create anything.
    assert!(!g.exists());
    Ok(())
}

#[test]
fn a_missing_knob_in_a_live_gcgroup_is_not_process_gone() -> TestResult {
    let t = Tree::with(&[77])?;
    let path = t.knob(77, 0, COMPUTE_FREEZE);
    fs::remove_file(&path)?;
    let g = t.gvm().gcgroup(77, 0);
    assert!(matches!(g.frozen(), Err(Error::MissingKnob { ref file }) if *file == path));
    assert!(matches!(g.set_frozen(true), Err(Error::MissingKnob { .. })));
    Ok(())
}

#[test]
fn other_errnos_are_kept_with_the_file() -> TestResult {
    let t = Tree::with(&[9])?;
    let path = t.knob(9, 0, COMPUTE_PRIORITY);
    fs::remove_file(&path)?;
    fs::create_dir(&path)?;
    match t.gvm().gcgroup(9, 0).set_priority(Priority::MIN) {
        Err(e @ Error::Io { .. }) => {
            assert_eq!(e.errno(), Some(libc::EISDIR));
            assert!(e.to_string().contains("compute.priority"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn a_read_only_knob_refuses_writes_as_needs_root() -> TestResult {
    let t = Tree::with(&[9])?;
    let path = t.knob(9, 0, MEMORY_LIMIT);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444))?;
    if fs::OpenOptions::new().write(true).open(&path).is_ok() {
        println!("SKIP: running with CAP_DAC_OVERRIDE (root), file modes are not enforced");
        return Ok(());
    }
    match t
        .gvm()
        .gcgroup(9, 0)
        .set_memory_limit(MemoryLimit::Bytes(1))
    {
        Err(e @ Error::PermissionDenied { .. }) => {
            assert_eq!(e.errno(), Some(libc::EACCES));
            assert!(e.to_string().contains("run as root"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[test]
fn the_tree_is_a_backend_named_gvm() -> TestResult {
    let t = Tree::with(&[3, 4])?;
    let gvm = t.gvm();
    let backend: &dyn GcgroupBackend = &gvm;
    assert_eq!(backend.name(), "gvm");
    assert_eq!(backend.processes()?, [3, 4]);
    assert_eq!(backend.gpus(4)?, [0, 8]);
    backend.set_priority(4, 8, Priority::MAX)?;
    backend.set_memory_limit(4, 8, MemoryLimit::Bytes(512))?;
    backend.set_frozen(4, 8, true)?;
    let snap = backend.read(4, 8)?;
    assert_eq!((snap.pid, snap.gpu), (4, 8));
    assert_eq!(snap.priority, Priority::MAX);
    assert_eq!(snap.memory_limit, MemoryLimit::Bytes(512));
    assert!(snap.frozen);
    assert_eq!(snap, gvm.gcgroup(4, 8).snapshot()?);
    Ok(())
}

#[test]
fn backends_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<GvmTree>();
    assert_send_sync::<crate::MemoryBackend>();
    assert_send_sync::<dyn GcgroupBackend>();
    let boxed: std::sync::Arc<dyn GcgroupBackend> =
        std::sync::Arc::new(crate::MemoryBackend::new());
    assert_eq!(boxed.name(), "memory");
}
