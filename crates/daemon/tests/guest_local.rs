//! Two "VMs without the VM" against the real `gvm-vgpud` on the simulated host: each is a
//! real `gvm-vgpu-agent` serving its vGPU's channel socket (`--serve-unix`, in QEMU's place)
//! and its own shim socket, with a CUDA program (the fake `libcuda.so.1` under the real
//! `LD_PRELOAD=libgvm_cuda.so`) registered to it, as it would be inside the guest. Asserted,
//! as a user sees it:
//!
//! * the vGPU's memory limit, retuned live on the host, refuses an allocation past it
//!   inside the "guest" process, and moves when retuned;
//! * `freeze` holds the guest process's launches and `show` says every process is held;
//!   `thaw` releases them;
//! * VM A at priority 2 busy holds VM B at priority 8 (B's launch waits, `show` says held),
//!   and B goes on when A's work ends;
//! * under equal-share, VM A with two busy processes and VM B with one end about as many
//!   kernels (twice as many without a policy): the budgets are charged from the guests'
//!   GPU busy time and the VM ahead is held; under fixed-share 0.2 / 0.6, A's kernels fill
//!   about 20 % of the time.
//!
//! The channel is a local Unix socket, not virtio-serial, so this measures the code and not
//! QEMU (the TCG guest tests in `tests/` cover the port). Skips (printing why) without root,
//! /dev/fuse or `cc`.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{is_managed, shim_so, skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{SetMode, SetParams};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

struct Rig {
    dir: tempfile::TempDir,
    so: PathBuf,
    fake: PathBuf,
    driver: PathBuf,
    agent: PathBuf,
}

fn rig() -> Option<Rig> {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return None;
    }
    let Some(so) = shim_so() else {
        println!("SKIP: libgvm_cuda.so could not be built");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let built = common::build_fake_cuda(dir.path()).and_then(|f| {
        let d = common::build_shim_test_program(dir.path(), "line_driver.c", "line_driver")?;
        Ok((f, d))
    });
    let (fake, driver) = match built {
        Ok(b) => b,
        Err(why) => {
            println!("SKIP: {why}");
            return None;
        }
    };
    let agent = gvm_testkit::workspace_bin_rebuilt("gvm-vgpu-agent", "gvm-vgpu-agent");
    Some(Rig {
        dir,
        so,
        fake,
        driver,
        agent,
    })
}

/// A child killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CUDA program in a "guest", driven line by line.
struct Program {
    child: Kill,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Program {
    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no answer to {cmd}"))
    }
}

/// One "VM": its agent and guest root.
struct Vm {
    _agent: Kill,
    root: PathBuf,
}

impl Rig {
    fn vm(&self, sim: &Sim, uuid: &Uuid, name: &str) -> Vm {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(root.join("run/gvm-vgpu")).unwrap();
        let channel = sim.root.join(format!("run/gvm-vgpu/agent/{uuid}.sock"));
        std::fs::create_dir_all(channel.parent().unwrap()).unwrap();
        let agent = Command::new(&self.agent)
            .arg("--serve-unix")
            .arg(&channel)
            .arg("--root")
            .arg(&root)
            .args([
                "--proc-dir",
                "/proc",
                "--collector",
                "proc",
                "--interval",
                "200ms",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let shim = root.join("run/gvm-vgpu/shim.sock");
        assert!(
            wait_until(Duration::from_secs(10), || shim.exists()
                && channel.exists()),
            "the agent did not come up"
        );
        Vm {
            _agent: Kill(agent),
            root,
        }
    }

    fn program(&self, vm: &Vm, kernel_ms: u32) -> Program {
        self.program_at(&vm.root, kernel_ms, None, "0000:3B:00.0", false)
    }

    /// A program in `vm` whose driver can map host memory for the GPU, so that the shim can
    /// put GPU-side waits in front of its launches (`gate` says how many it did).
    fn program_gated(&self, vm: &Vm, kernel_ms: u32) -> Program {
        self.program_with(
            &vm.root,
            kernel_ms,
            None,
            "0000:3B:00.0",
            false,
            &[("FAKE_HOST_REGISTER", "1")],
        )
    }

    /// A program in `vm` whose `sync` waits for its fake kernel, as a real one does.
    fn program_waiting(&self, vm: &Vm, kernel_ms: u32) -> Program {
        self.program_at(&vm.root, kernel_ms, None, "0000:3B:00.0", true)
    }

    /// A CUDA program registering on the shim socket under `root` (a guest's, or the host's),
    /// seeing the GPU at `pci`, claiming vGPU `uuid` through its environment when given;
    /// with `sync_waits`, a `sync` sleeps until the fake kernel would have ended.
    fn program_at(
        &self,
        root: &std::path::Path,
        kernel_ms: u32,
        uuid: Option<&Uuid>,
        pci: &str,
        sync_waits: bool,
    ) -> Program {
        self.program_with(root, kernel_ms, uuid, pci, sync_waits, &[])
    }

    fn program_with(
        &self,
        root: &std::path::Path,
        kernel_ms: u32,
        uuid: Option<&Uuid>,
        pci: &str,
        sync_waits: bool,
        env: &[(&str, &str)],
    ) -> Program {
        let mut cmd = Command::new(&self.driver);
        cmd.arg(&self.fake)
            .env("LD_PRELOAD", &self.so)
            .env("GVM_VGPU_ROOT", root)
            .env("GVM_SHIM_SOCKET", root.join("run/gvm-vgpu/shim.sock"))
            .env("GVM_MEMORY_LIMIT", "unlimited")
            .env("FAKE_KERNEL_MS", kernel_ms.to_string())
            .env("FAKE_PCI_BUS_IDS", pci)
            .env("FAKE_SYNC_WAITS", if sync_waits { "1" } else { "0" })
            .env_remove("GVM_SHIM_ARBITER")
            .env_remove("GVM_SHIM_CONTROL")
            .env_remove("GVM_VGPU_UUID")
            .env_remove("GVM_PRIORITY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(u) = uuid {
            cmd.env("GVM_VGPU_UUID", u.to_string());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let p = Program {
            child: Kill(child),
            stdin,
            lines,
        };
        assert_eq!(p.next(Duration::from_secs(10)).as_deref(), Some("ready"));
        p
    }
}

fn guest(c: &mut gvm_client::Client, u: &Uuid) -> Option<gvm_client::gvm_proto::GuestEnforcement> {
    c.show(&u.to_string()).ok()?.guest
}

/// Two vGPUs of one parent of `sim` (`gvmsim-1`, created as a user would), a daemon on it,
/// its client, once it manages both.
fn two_managed_vgpus(sim: &Sim) -> (common::Daemon, gvm_client::Client, Uuid, Uuid) {
    let parent = sim.parents()[0].clone();
    let (ua, ub) = (
        sim.echo_create(&parent, "gvmsim-1"),
        sim.echo_create(&parent, "gvmsim-1"),
    );
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &ua
    ) && is_managed(
        &mut c, &ub
    )));
    (d, c, ua, ub)
}

/// `u`'s guest is connected at protocol 2 and acknowledged the state it was sent.
fn synced(c: &mut gvm_client::Client, u: &Uuid) -> bool {
    guest(c, u).is_some_and(|g| g.in_sync() && g.connected && g.protocol >= 2)
}

fn live(c: &mut gvm_client::Client, u: &Uuid, memory: Option<u64>, priority: Option<u8>) {
    c.set(SetParams {
        target: u.to_string(),
        memory_limit: memory,
        priority,
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
}

#[test]
fn a_vms_knobs_reach_its_guest_processes_and_a_busy_vm_holds_a_less_important_one() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    let (d, mut c, ua, ub) = two_managed_vgpus(&sim);
    live(&mut c, &ua, None, Some(2));
    live(&mut c, &ub, None, Some(8));
    let vm_a = rig.vm(&sim, &ua, "vm-a");
    let vm_b = rig.vm(&sim, &ub, "vm-b");
    assert!(
        wait_until(Duration::from_secs(10), || synced(&mut c, &ua)
            && synced(&mut c, &ub)),
        "both guests acknowledged their state: {:?} / {:?}; log: {}",
        guest(&mut c, &ua),
        guest(&mut c, &ub),
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );

    // Memory: the host's live limit holds inside the guest process, and moves.
    let mut a = rig.program_gated(&vm_a, 600);
    live(&mut c, &ua, Some(64 * MIB), None);
    assert!(wait_until(Duration::from_secs(5), || synced(&mut c, &ua)));
    assert_eq!(
        a.ask("alloc 65"),
        "alloc=2",
        "past the 64 MiB limit: out of memory"
    );
    assert_eq!(a.ask("alloc 32"), "alloc=0");
    live(&mut c, &ua, Some(256 * MIB), None);
    assert!(wait_until(Duration::from_secs(5), || synced(&mut c, &ua)));
    assert_eq!(
        a.ask("alloc 100"),
        "alloc=0",
        "the retuned limit lets it through"
    );
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ua).is_some_and(
            |g| g.processes.iter().any(|p| p.pid == a.child.0.id())
        )),
        "show lists the guest process: {:?}",
        guest(&mut c, &ua)
    );

    // Freeze: the guest holds the process's launches; show says so; thaw releases them.
    c.freeze(&ua.to_string()).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ua)
            .is_some_and(|g| g.in_sync() && g.frozen_reached == Some(true))),
        "the guest acknowledged the freeze: {:?}",
        guest(&mut c, &ua)
    );
    a.send("launch");
    assert_eq!(
        a.next(Duration::from_millis(500)),
        None,
        "a frozen launch is held"
    );
    c.thaw(&ua.to_string()).unwrap();
    assert_eq!(
        a.next(Duration::from_secs(5)).as_deref(),
        Some("launched=1"),
        "thaw released it"
    );
    assert_eq!(a.ask("sync"), "synced=0");

    // Arbitration between VMs: A (2) busy with a 600 ms kernel holds B (8).
    let mut b = rig.program_gated(&vm_b, 0);
    assert!(wait_until(Duration::from_secs(5), || synced(&mut c, &ub)));
    assert_eq!(b.ask("launch"), "launched=1", "B runs while A is idle");
    assert_eq!(b.ask("sync"), "synced=0");
    // B is outranked (A is more important, on the same GPU): its guest keeps B's GPU-side
    // gate armed, so a hold will stop what B queued too; A's launches carry no wait.
    assert_eq!(
        b.ask("gate"),
        "waits=1",
        "B's launch carried a GPU-side wait"
    );
    assert_eq!(a.ask("gate"), "waits=0", "nobody outranks A");
    let t = Instant::now();
    a.send("launch");
    assert_eq!(
        a.next(Duration::from_secs(5)).as_deref(),
        Some("launched=2")
    );
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ub)
            .is_some_and(|g| g.held && g.in_sync())),
        "B is held while A is busy, and acknowledged it: {:?}",
        guest(&mut c, &ub)
    );
    b.send("launch");
    assert_eq!(
        b.next(Duration::from_millis(200)),
        None,
        "B's launch waits while A's kernel runs"
    );
    a.send("sync");
    assert_eq!(a.next(Duration::from_secs(5)).as_deref(), Some("synced=0"));
    assert_eq!(
        b.next(Duration::from_secs(5)).as_deref(),
        Some("launched=2"),
        "B goes on once A is idle"
    );
    println!(
        "B was held {:?} behind A's 600 ms kernel (channel: local socket)",
        t.elapsed()
    );
    assert!(wait_until(Duration::from_secs(5), || guest(&mut c, &ub)
        .is_some_and(|g| !g.held)));

    // A outranks B: its guest tells A's busy state from the shim's own busy flags, so A's
    // claim ends once its kernel is done, not at its next synchronise (A never syncs here).
    a.send("launch");
    assert_eq!(
        a.next(Duration::from_secs(5)).as_deref(),
        Some("launched=3")
    );
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ua)
            .is_some_and(|g| g.busy == Some(true))),
        "A busy while its kernel runs: {:?}",
        guest(&mut c, &ua)
    );
    assert!(
        wait_until(Duration::from_secs(10), || guest(&mut c, &ua)
            .is_some_and(|g| g.busy == Some(false))),
        "A idle once its kernel ended, without a synchronise: {:?}",
        guest(&mut c, &ua)
    );
}

#[test]
fn vms_and_host_processes_on_one_gpu_are_arbitrated_in_one_order() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    let parent = sim.parents()[0].clone();
    let (uh, ub) = (
        sim.echo_create(&parent, "gvmsim-1"),
        sim.echo_create(&parent, "gvmsim-1"),
    );
    let d = sim.daemon(&[]);
    let mut c = d.client();
    assert!(wait_until(Duration::from_secs(5), || is_managed(
        &mut c, &uh
    ) && is_managed(
        &mut c, &ub
    )));
    live(&mut c, &uh, None, Some(2));
    live(&mut c, &ub, None, Some(8));
    let vm_b = rig.vm(&sim, &ub, "vm-b");
    // A host CUDA process owning the priority-2 vGPU, registered with the daemon itself.
    let mut host = rig.program_at(&sim.root, 600, Some(&uh), &parent, false);
    let host_pid = host.child.0.id();
    assert!(
        wait_until(Duration::from_secs(5), || c
            .show(&uh.to_string())
            .is_ok_and(|s| s.info.owners.contains(&host_pid))),
        "the host process owns its vGPU; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let mut b = rig.program(&vm_b, 0);
    assert!(wait_until(Duration::from_secs(5), || guest(&mut c, &ub)
        .is_some_and(|g| g.in_sync() && g.connected)));
    assert_eq!(b.ask("launch"), "launched=1");
    assert_eq!(b.ask("sync"), "synced=0");

    // The host process (2) busy with a 600 ms kernel holds the VM (8).
    host.send("launch");
    assert_eq!(
        host.next(Duration::from_secs(5)).as_deref(),
        Some("launched=1")
    );
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ub)
            .is_some_and(|g| g.held)),
        "the VM is held while the host process is busy: {:?}",
        guest(&mut c, &ub)
    );
    b.send("launch");
    assert_eq!(
        b.next(Duration::from_millis(200)),
        None,
        "the VM's launch waits"
    );
    host.send("sync");
    assert_eq!(
        host.next(Duration::from_secs(5)).as_deref(),
        Some("synced=0")
    );
    assert_eq!(
        b.next(Duration::from_secs(5)).as_deref(),
        Some("launched=2"),
        "the VM goes on once the host process is idle"
    );
}

/// Kernels each program completes (launch, then sync) in `for`, looping on its own thread.
fn completions(programs: Vec<Program>, r#for: Duration) -> (Vec<u64>, Vec<Program>) {
    let handles: Vec<_> = programs
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                let end = Instant::now() + r#for;
                let mut n = 0u64;
                while Instant::now() < end {
                    p.send("launch");
                    if p.next(Duration::from_secs(10)).is_none() {
                        break;
                    }
                    p.send("sync");
                    if p.next(Duration::from_secs(10)).is_none() {
                        break;
                    }
                    n += 1;
                }
                (n, p)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).unzip()
}

#[test]
fn equal_and_fixed_share_are_charged_from_the_guests_busy_time() {
    let Some(rig) = rig() else { return };
    let sim = Sim::start(1);
    let (_daemon, mut c, ua, ub) = two_managed_vgpus(&sim);
    let vm_a = rig.vm(&sim, &ua, "vm-a");
    let vm_b = rig.vm(&sim, &ub, "vm-b");
    assert!(wait_until(Duration::from_secs(10), || synced(&mut c, &ua)
        && synced(&mut c, &ub)));
    // VM A runs two CUDA processes, VM B one, all busy with 2 ms kernels: on their own,
    // A gets twice B's kernels through.
    let programs = vec![
        rig.program_waiting(&vm_a, 2),
        rig.program_waiting(&vm_a, 2),
        rig.program_waiting(&vm_b, 2),
    ];
    let window = Duration::from_secs(3);
    let (free, programs) = completions(programs, window);
    let free_ratio = (free[0] + free[1]) as f64 / free[2].max(1) as f64;

    c.set_policy("equal-share").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || guest(&mut c, &ua)
            .is_some_and(|g| g.in_sync())),
        "A acknowledged the scheduler's state"
    );
    let (_, programs) = completions(programs, Duration::from_secs(1));
    let (shared, programs) = completions(programs, window);
    let shared_ratio = (shared[0] + shared[1]) as f64 / shared[2].max(1) as f64;
    println!(
        "kernels A:B best-effort {free:?} ({free_ratio:.2}), equal-share {shared:?} ({shared_ratio:.2})"
    );
    assert!(
        free_ratio > 1.6,
        "without a policy, A's two processes get about twice B's one: {free:?}"
    );
    assert!(
        shared_ratio < 1.4 && shared_ratio < free_ratio - 0.3,
        "equal-share evens A and B out (A held while ahead): {shared:?} vs {free:?}"
    );

    // Fixed-share: A gets 20 % of the GPU, B 60 %. A's budget is charged with both its
    // processes' busy time, so A's kernels (2 ms each) fill about 20 % of the wall time.
    let share = |c: &mut gvm_client::Client, u: &Uuid, share: f64| {
        c.set(SetParams {
            target: u.to_string(),
            share: Some(share),
            mode: SetMode::Live,
            ..SetParams::default()
        })
        .unwrap();
    };
    share(&mut c, &ua, 0.2);
    share(&mut c, &ub, 0.6);
    c.set_policy("fixed-share").unwrap();
    let (_, programs) = completions(programs, Duration::from_secs(1));
    let (fixed, _programs) = completions(programs, window);
    let fixed_ratio = (fixed[0] + fixed[1]) as f64 / fixed[2].max(1) as f64;
    let busy_of = |kernels: u64| kernels as f64 * 0.002 / window.as_secs_f64();
    let (a_busy, b_busy) = (busy_of(fixed[0] + fixed[1]), busy_of(fixed[2]));
    println!(
        "fixed-share 0.2 / 0.6: kernels A:B {fixed:?} ({fixed_ratio:.2}); kernel time A {a_busy:.2}, B {b_busy:.2} of the wall time"
    );
    assert!(
        fixed_ratio < 0.8 && (0.1..0.3).contains(&a_busy),
        "fixed-share holds A to its 20 % however many processes it runs: {fixed:?} (A {a_busy:.2})"
    );
}
