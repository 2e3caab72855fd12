//! gvm-vgpud `--backend shim|auto` end to end: a process running under `LD_PRELOAD=
//! libgvm_cuda.so` (over a fake `libcuda.so.1`, no GPU) with `GVM_VGPU_UUID` of a vGPU on the
//! simulated host registers, handing over its control block (a sealed memfd), and is adopted
//! as that vGPU's owner; the type's memory limit reaches its block (an allocation past it
//! fails inside the process); `freeze` holds its launches and `thaw` releases them; `set`
//! retunes it; `show` and `stats` list it. A process whose block is a `GVM_SHIM_CONTROL`
//! file is driven the same way; after `kill -9` of the daemon its shim registers again with
//! the new one, which adopts it within 2 s; one started before any daemon registers once a
//! daemon starts. Truncating every file a process could make in the root's `/dev/shm`
//! changes nothing and the daemon lives; a hostile client (another uid) that offers a file by
//! path or hands over an unsealed file it then truncates is refused, and the daemon lives.
//! Skips (printing why) without root and /dev/fuse (the simulated host) or without `cc`.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{is_managed, shim_so, skip_reason, wait_until, Sim};
use gvm_client::gvm_proto::{OwnerRule, SetMode, SetParams};
use gvm_shim_abi::control::ControlMap;
use uuid::Uuid;

const MIB: u64 = 1 << 20;

/// A CUDA "program" driven line by line on stdin: it reaches the (fake) driver the way the
/// CUDA runtime does (dlopen, cuGetProcAddress), makes one call so the shim sets up, prints
/// `ready`, then answers `alloc MIB` with `alloc=RC`, `launch` with `launched=N`, `quit`.
const DRIVER_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long);
typedef CUresult (*gpa2_t)(const char *, void **, int, unsigned long long, int *);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*info_t)(size_t *, size_t *);
typedef CUresult (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, void *, void **, void **);
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen_error=%s\n", dlerror()); return 2; }
    gpa_t gpa = (gpa_t)dlsym(h, "cuGetProcAddress");
    gpa2_t gpa2 = NULL;
    int st = 0;
    if (!gpa || gpa("cuGetProcAddress", (void **)&gpa2, 13000, 0) != 0 || !gpa2) return 2;
    alloc_t alloc = NULL; info_t info = NULL; launch_t launch = NULL;
    gpa2("cuMemAlloc", (void **)&alloc, 13000, 0, &st);
    gpa2("cuMemGetInfo", (void **)&info, 13000, 0, &st);
    gpa2("cuLaunchKernel", (void **)&launch, 13000, 0, &st);
    if (!alloc || !info || !launch) return 2;
    size_t f = 0, t = 0;
    info(&f, &t);
    printf("ready\n");
    fflush(stdout);
    char line[128];
    int launches = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "alloc ", 6)) {
            CUdeviceptr p = 0;
            int r = alloc(&p, strtoull(line + 6, NULL, 10) << 20);
            printf("alloc=%d\n", r);
        } else if (!strncmp(line, "launch", 6)) {
            launch(0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0);
            printf("launched=%d\n", ++launches);
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
        fflush(stdout);
    }
    return 0;
}
"#;

/// `libgvm_cuda.so`, built once per test process with the same cargo and the target
/// directory this test binary was built into (a dependent's build makes the rlib only).
/// The fake driver and the program, compiled into `dir`.
fn build_c(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let fake = common::build_fake_cuda(dir)?;
    let src = dir.join("driver.c");
    std::fs::write(&src, DRIVER_C).unwrap();
    let prog = common::build_c_program(dir, &src, "driver")?;
    Ok((fake, prog))
}

/// A running CUDA program under the shim.
struct ShimProcess {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ShimProcess {
    fn start(so: &Path, fake: &Path, prog: &Path, root: &Path, uuid: &Uuid) -> ShimProcess {
        Self::start_at(so, fake, prog, root, uuid, None)
    }

    /// As [`Self::start`], with the control block at `control` (`GVM_SHIM_CONTROL`) when given.
    fn start_at(
        so: &Path,
        fake: &Path,
        prog: &Path,
        root: &Path,
        uuid: &Uuid,
        control: Option<&Path>,
    ) -> ShimProcess {
        let mut cmd = Command::new(prog);
        if let Some(c) = control {
            cmd.env("GVM_SHIM_CONTROL", c);
        } else {
            cmd.env_remove("GVM_SHIM_CONTROL");
        }
        let mut child = cmd
            .arg(fake)
            .env("LD_PRELOAD", so)
            .env("GVM_VGPU_UUID", uuid.to_string())
            .env("GVM_VGPU_ROOT", root)
            .env("GVM_MEMORY_LIMIT", "unlimited")
            .env("FAKE_PCI_BUS_IDS", "0000:3B:00.0")
            .env_remove("GVM_SHIM_SOCKET")
            .env_remove("GVM_SHIM_ARBITER")
            .env_remove("GVM_PRIORITY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let p = ShimProcess {
            child,
            stdin,
            lines,
        };
        assert_eq!(p.next(10).as_deref(), Some("ready"), "the program started");
        p
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&self, secs: u64) -> Option<String> {
        self.lines.recv_timeout(Duration::from_secs(secs)).ok()
    }

    fn alloc(&mut self, mib: u64) -> Option<String> {
        self.send(&format!("alloc {mib}"));
        self.next(10)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the tests need, or the reason to skip.
fn rig() -> Option<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return None;
    }
    let Some(so) = shim_so() else {
        println!("SKIP: libgvm_cuda.so could not be built");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    match build_c(dir.path()) {
        Ok((fake, prog)) => Some((dir, so, fake, prog)),
        Err(why) => {
            println!("SKIP: {why}");
            None
        }
    }
}

/// `set --live --memory-limit MIB`: the block takes it and an allocation of one MiB more
/// fails inside the process.
fn set_live_limit_and_see_it_hold(
    c: &mut gvm_client::Client,
    p: &mut ShimProcess,
    ctl: &ControlMap,
    uuid: &Uuid,
    mib: u64,
) {
    c.set(SetParams {
        target: uuid.to_string(),
        memory_limit: Some(mib * MIB),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
    assert_eq!(ctl.block().memory_limit.load(Ordering::Acquire), mib * MIB);
    assert_eq!(
        p.alloc(mib + 1).as_deref(),
        Some("alloc=2"),
        "the limit of {mib} MiB holds inside"
    );
}

/// The process quits cleanly and the daemon drops it as an owner within 3 s.
fn quit_and_see_the_owner_dropped(p: &mut ShimProcess, c: &mut gvm_client::Client, uuid: &Uuid) {
    p.send("quit");
    assert!(p.child.wait().unwrap().success());
    assert!(wait_until(Duration::from_secs(3), || c
        .show(&uuid.to_string())
        .unwrap()
        .owners
        .is_empty()));
}

/// A simulated host with one GPU and a `/dev/shm` for shim control blocks.
fn shim_sim() -> Sim {
    let sim = Sim::start(1);
    std::fs::create_dir_all(sim.root.join("dev/shm")).unwrap();
    sim
}

/// Process `pid`'s control block, as the test (root) sees it: the memfd the shim holds, opened
/// through `/proc/<pid>/fd` (it is in no directory).
fn block_of(pid: u32) -> ControlMap {
    let fd = memfd_of(pid).expect("the shim holds its block as a memfd");
    ControlMap::open(&fd).unwrap()
}

/// The `/proc/<pid>/fd/N` of process `pid`'s control block memfd, if it holds one.
fn memfd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p)
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:gvm-vgpu-control"))
        })
}

#[test]
fn a_shim_process_is_adopted_limited_frozen_thawed_and_shown() {
    let Some((_dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let d = sim.daemon(&["--backend", "shim"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(2), || is_managed(
        &mut c, &uuid
    )));
    let knobs = c.show(&uuid.to_string()).unwrap().info.knobs;
    assert!(knobs.memory_limit < 64 << 30, "the type has a memory limit");

    let mut p = ShimProcess::start(&so, &fake, &prog, &sim.root, &uuid);
    let pid = p.pid();
    let ctl = block_of(pid);
    let b = ctl.block();
    assert!(b.is_standalone(), "the shim made its own block");
    assert_eq!(b.memory_limit.load(Ordering::Relaxed), u64::MAX);

    // Adopted as the vGPU's owner, and the type's limit written into its block.
    assert!(
        wait_until(Duration::from_secs(3), || {
            b.memory_limit.load(Ordering::Acquire) == knobs.memory_limit
        }),
        "the type's memory limit did not reach the control block; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    assert_eq!(
        u8::try_from(b.priority.load(Ordering::Acquire)).ok(),
        Some(knobs.priority)
    );
    let detail = c.show(&uuid.to_string()).unwrap();
    let owner = detail.owners.iter().find(|o| o.pid == pid).unwrap();
    assert_eq!(owner.rule, OwnerRule::Environment);
    assert_eq!(owner.gcgroups.len(), 1);
    assert_eq!(owner.gcgroups[0].memory_limit, knobs.memory_limit);

    // The limit holds inside the process: past it CUDA_ERROR_OUT_OF_MEMORY (2).
    let limit_mib = knobs.memory_limit / MIB;
    assert_eq!(p.alloc(limit_mib + 1).as_deref(), Some("alloc=2"));
    assert_eq!(p.alloc(64).as_deref(), Some("alloc=0"));

    // Freeze holds the next launch; thaw lets it go.
    c.freeze(&uuid.to_string()).unwrap();
    assert_eq!(b.frozen.load(Ordering::Acquire), 1);
    p.send("launch");
    assert_eq!(p.next(1), None, "the launch is held while frozen");
    assert_eq!(b.waiting.load(Ordering::Acquire), 1, "held at the gate");
    let shown = c.show(&uuid.to_string()).unwrap();
    assert!(shown.info.knobs.frozen);
    assert!(shown.owners[0].gcgroups[0].frozen);
    c.thaw(&uuid.to_string()).unwrap();
    assert_eq!(p.next(5).as_deref(), Some("launched=1"));
    assert_eq!(b.frozen.load(Ordering::Acquire), 0);

    // set retunes the block; show and stats report what the shim counted.
    c.set(SetParams {
        target: uuid.to_string(),
        memory_limit: Some(128 * MIB),
        priority: Some(2),
        mode: SetMode::Live,
        ..SetParams::default()
    })
    .unwrap();
    assert_eq!(b.memory_limit.load(Ordering::Acquire), 128 * MIB);
    assert_eq!(b.priority.load(Ordering::Acquire), 2);
    assert_eq!(b.arbitrate.load(Ordering::Acquire), 1);
    assert_eq!(
        p.alloc(65).as_deref(),
        Some("alloc=2"),
        "64 MiB held + 65 > 128"
    );
    let stats = c.stats(Some(&uuid.to_string())).unwrap();
    let t = stats[0].totals;
    assert_eq!(t.memory_current, 64 * MIB);
    assert_eq!(t.kernels_submitted, 1);
    assert_eq!(t.gcgroups, 1);
    let listed = c.list(false).unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|v| v.uuid == uuid)
            .map(|v| v.owners.clone()),
        Some(vec![pid])
    );

    // Exit: the block goes with the process (a memfd), the daemon drops the owner.
    quit_and_see_the_owner_dropped(&mut p, &mut c, &uuid);
}

#[test]
fn auto_drives_gvm_owners_and_shim_owners_of_one_vgpu() {
    let Some((_dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let d = sim.daemon(&["--backend", "auto"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(2), || is_managed(
        &mut c, &uuid
    )));
    let limit = c.show(&uuid.to_string()).unwrap().info.knobs.memory_limit;
    let gvm_pid = sim.spawn_owner(&uuid, 0, "busy=1");
    let p = ShimProcess::start(&so, &fake, &prog, &sim.root, &uuid);
    let ctl = block_of(p.pid());
    assert!(
        wait_until(Duration::from_secs(3), || {
            sim.knob(gvm_pid, 0, "memory.limit") == Some(limit.to_string())
                && ctl.block().memory_limit.load(Ordering::Acquire) == limit
        }),
        "both owners limited; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    c.freeze(&uuid.to_string()).unwrap();
    assert_eq!(sim.knob(gvm_pid, 0, "compute.freeze").as_deref(), Some("1"));
    assert_eq!(ctl.block().frozen.load(Ordering::Acquire), 1);
    let mut owners = c.list(false).unwrap()[0].owners.clone();
    owners.sort_unstable();
    let mut want = vec![gvm_pid, p.pid()];
    want.sort_unstable();
    assert_eq!(owners, want);
    c.thaw(&uuid.to_string()).unwrap();
    assert_eq!(ctl.block().frozen.load(Ordering::Acquire), 0);
}

#[test]
fn a_registered_shim_process_at_a_custom_block_path_is_listed_retuned_and_dropped() {
    let Some((dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let d = sim.daemon(&["--backend", "shim"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(2), || is_managed(
        &mut c, &uuid
    )));
    assert!(
        sim.root.join("run/gvm-vgpu/shim.sock").exists(),
        "the daemon serves the shim socket under the host root"
    );
    // A block the /dev/shm scan cannot find: only registration tells the daemon about it.
    let custom = dir.path().join("custom-block");
    let mut p = ShimProcess::start_at(&so, &fake, &prog, &sim.root, &uuid, Some(&custom));
    let pid = p.pid();
    let ctl = ControlMap::open(&custom).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || c
            .list(false)
            .unwrap()
            .iter()
            .any(|v| v.uuid == uuid && v.owners.contains(&pid))),
        "the registered process is the vGPU's owner; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(log.contains("CUDA shim process registered"), "{log}");
    set_live_limit_and_see_it_hold(&mut c, &mut p, &ctl, &uuid, 96);
    // Exit: the connection closes and the owner goes (the block file stays: it was given).
    quit_and_see_the_owner_dropped(&mut p, &mut c, &uuid);
    assert!(custom.exists());
}

#[test]
fn a_shim_process_outside_dev_shm_registers_again_after_the_daemon_is_killed() {
    registers_again_after_the_daemon_is_killed(true);
}

#[test]
fn a_shim_process_hands_its_memfd_again_after_the_daemon_is_killed() {
    registers_again_after_the_daemon_is_killed(false);
}

/// `kill -9` of the daemon and a new one on the same root: the process (its block a
/// `GVM_SHIM_CONTROL` file when `file_block`, else the default sealed memfd) registers again
/// with the same block and is adopted within 2 s.
fn registers_again_after_the_daemon_is_killed(file_block: bool) {
    let Some((dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let mut d = sim.daemon(&["--backend", "shim"]);
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    let owned = |c: &mut gvm_client::Client, pid: u32| {
        c.list(false)
            .map(|l| l.iter().any(|v| v.uuid == uuid && v.owners.contains(&pid)))
            .unwrap_or(false)
    };
    let registrations = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("CUDA shim process registered")
            .count()
    };
    {
        let mut c = d.client();
        assert!(wait_until(Duration::from_secs(2), || is_managed(
            &mut c, &uuid
        )));
    }
    // A block the /dev/shm scan cannot find: only registration tells a daemon about it.
    let custom = dir.path().join("custom-block");
    let at = file_block.then_some(custom.as_path());
    let mut p = ShimProcess::start_at(&so, &fake, &prog, &sim.root, &uuid, at);
    let pid = p.pid();
    let ctl = match at {
        Some(path) => ControlMap::open(path).unwrap(),
        None => block_of(pid),
    };
    {
        let mut c = d.client();
        assert!(
            wait_until(Duration::from_secs(3), || owned(&mut c, pid)),
            "registered and adopted; log: {}",
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
    }
    assert_eq!(registrations(&d.log), 1);

    // kill -9: no clean shutdown, the socket file stays behind. A new daemon on the same
    // root must learn of the process again, from the process.
    d.kill9();
    d.restart();
    let up = Instant::now();
    let mut c = d.client();
    let adopted = wait_until(Duration::from_secs(2), || owned(&mut c, pid));
    let took = up.elapsed();
    assert!(
        adopted,
        "not re-adopted within 2 s of the new daemon answering; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    println!("re-registered and adopted {took:?} after the new daemon answered");
    assert_eq!(
        registrations(&d.log),
        2,
        "the shim registered again (once); log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let detail = c.show(&uuid.to_string()).unwrap();
    assert!(detail.owners.iter().any(|o| o.pid == pid), "show lists it");

    // The new daemon drives the block.
    set_live_limit_and_see_it_hold(&mut c, &mut p, &ctl, &uuid, 80);
    assert_eq!(p.alloc(16).as_deref(), Some("alloc=0"));

    // Exit still ends the registration at once.
    quit_and_see_the_owner_dropped(&mut p, &mut c, &uuid);
}

#[test]
fn a_shim_process_started_before_the_daemon_registers_once_it_starts() {
    let Some((dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    // No daemon yet: the shim runs standalone on a block the scan cannot find.
    let custom = dir.path().join("early-block");
    let mut p = ShimProcess::start_at(&so, &fake, &prog, &sim.root, &uuid, Some(&custom));
    let pid = p.pid();
    let ctl = ControlMap::open(&custom).unwrap();
    assert_eq!(ctl.block().memory_limit.load(Ordering::Acquire), u64::MAX);

    let d = sim.daemon(&["--backend", "shim"]);
    let mut c = d.client();
    assert!(
        wait_until(Duration::from_secs(3), || c
            .list(false)
            .map(|l| l.iter().any(|v| v.uuid == uuid && v.owners.contains(&pid)))
            .unwrap_or(false)),
        "the daemon started later did not adopt the process; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    let limit = c.show(&uuid.to_string()).unwrap().info.knobs.memory_limit;
    assert!(
        wait_until(Duration::from_secs(3), || ctl
            .block()
            .memory_limit
            .load(Ordering::Acquire)
            == limit),
        "the type's limit reached the block"
    );
    assert_eq!(p.alloc(limit / MIB + 1).as_deref(), Some("alloc=2"));
}

/// A hostile local user's client of the shim socket, in C so that it runs as another uid: it
/// makes a valid-looking control block in a tmpfs file it owns (`FILE`), offers it the
/// protocol-1 way (by path) and the protocol-2 way (its descriptor, unsealed), prints each
/// reply, `ready`, then truncates the file when told `truncate` and holds both connections
/// open until stdin closes.
const HOSTILE_C: &str = r#"
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int conn(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        printf("connect_error\n");
        fflush(stdout);
        exit(2);
    }
    return s;
}
static void reply(int s, const char *tag) {
    char buf[4200];
    size_t n = 0;
    while (n < sizeof buf - 1) {
        ssize_t r = read(s, buf + n, 1);
        if (r <= 0) break;
        if (buf[n++] == '\n') { n--; break; }
    }
    buf[n] = 0;
    printf("%s=%s\n", tag, buf);
    fflush(stdout);
}
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *sock = argv[1], *file = argv[2];
    int fd = open(file, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) { printf("open_error\n"); return 2; }
    unsigned char block[4096];
    memset(block, 0, sizeof block);
    memcpy(block, "GVMSHIM1", 8);
    uint32_t layout = 2, pid = (uint32_t)getpid();
    uint64_t unlimited = ~0ULL;
    memcpy(block + 8, &layout, 4);
    memcpy(block + 12, &pid, 4);
    memcpy(block + 16, &unlimited, 8);
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block) return 2;
    char line[1024];
    int a = conn(sock);
    int len = snprintf(line, sizeof line,
        "{\"version\":1,\"pid\":%u,\"control\":\"%s\",\"gpus\":[],\"vgpu_uuid\":null}\n", pid, file);
    if (write(a, line, len) != len) return 2;
    reply(a, "v1");
    int b = conn(sock);
    len = snprintf(line, sizeof line,
        "{\"version\":2,\"pid\":%u,\"control\":\"%s\",\"gpus\":[],\"vgpu_uuid\":null}\n", pid, file);
    struct iovec iov = { line, (size_t)len };
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(b, &m, 0) != len) return 2;
    reply(b, "v2");
    printf("ready\n");
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin)) {
        if (!strncmp(cmd, "truncate", 8)) {
            printf("truncated=%d\n", ftruncate(fd, 0));
            fflush(stdout);
        }
    }
    return 0;
}
"#;

/// The daemon still runs and answers `show` for `uuid` after at least two verification
/// passes (`--verify-s 1`), in which it reads every owner's block by itself.
fn assert_alive_through_verify_passes(
    d: &mut common::Daemon,
    c: &mut gvm_client::Client,
    uuid: &Uuid,
) {
    if let Err(e) = c.show(&uuid.to_string()) {
        wait_until(Duration::from_secs(1), || d.exited().is_some());
        panic!(
            "show failed ({e}); the daemon: {:?}; log: {}",
            d.exited(),
            std::fs::read_to_string(&d.log).unwrap_or_default()
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        d.exited(),
        None,
        "the daemon died; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    c.show(&uuid.to_string())
        .expect("the daemon answers show after its verify passes");
}

#[test]
fn truncating_every_file_a_shim_process_could_create_in_dev_shm_cannot_crash_the_daemon() {
    let Some((_dir, so, fake, prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let mut d = sim.daemon(&["--backend", "shim", "--verify-s", "1"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(2), || is_managed(
        &mut c, &uuid
    )));
    let mut p = ShimProcess::start(&so, &fake, &prog, &sim.root, &uuid);
    let pid = p.pid();
    assert!(
        wait_until(Duration::from_secs(3), || c
            .show(&uuid.to_string())
            .map(|s| s
                .owners
                .iter()
                .any(|o| o.pid == pid && o.gcgroups.len() == 1))
            .unwrap_or(false)),
        "adopted; log: {}",
        std::fs::read_to_string(&d.log).unwrap_or_default()
    );
    p.send("launch");
    assert_eq!(p.next(5).as_deref(), Some("launched=1"));

    // The attack: shrink every file the user's process could have made under the root's
    // /dev/shm (its control block, were there one, and the GPU's arbitration block).
    let shm = sim.root.join("dev/shm");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&shm).unwrap().flatten() {
        names.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_file() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    assert_alive_through_verify_passes(&mut d, &mut c, &uuid);
    let shown = c.show(&uuid.to_string()).unwrap();
    assert!(shown.owners.iter().any(|o| o.pid == pid), "still its owner");
    assert!(
        !names.contains(&format!("gvm-vgpu-{pid}")),
        "the control block is not a file in /dev/shm: {names:?}"
    );
    // The block is a sealed memfd: not even root can shrink it through /proc.
    let memfd = memfd_of(pid).expect("the shim holds its block as a memfd");
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&memfd)
        .unwrap()
        .set_len(0)
        .unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EPERM),
        "sealed against shrinking"
    );
    // The daemon still drives the process.
    set_live_limit_and_see_it_hold(&mut c, &mut p, &block_of(pid), &uuid, 72);
    // The process itself maps the GPU's arbitration block, truncated above, and may fault on
    // it as it leaves (a separate defect: arbitration blocks are still files in /dev/shm);
    // whatever its end, the daemon drops it and lives.
    p.send("quit");
    let _ = p.child.wait();
    assert!(wait_until(Duration::from_secs(3), || c
        .show(&uuid.to_string())
        .unwrap()
        .owners
        .is_empty()));
    assert_eq!(d.exited(), None, "the daemon lives");
}

#[test]
fn a_hostile_client_handing_over_a_file_it_then_truncates_is_refused_and_the_daemon_lives() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some((dir, _so, _fake, _prog)) = rig() else {
        return;
    };
    let sim = shim_sim();
    let mut d = sim.daemon(&["--backend", "shim", "--verify-s", "1"]);
    let mut c = d.client();
    let uuid = sim.echo_create(&sim.parents()[0], "gvmsim-1");
    assert!(wait_until(Duration::from_secs(2), || is_managed(
        &mut c, &uuid
    )));
    let src = dir.path().join("hostile.c");
    std::fs::write(&src, HOSTILE_C).unwrap();
    let bin = dir.path().join("hostile");
    let st = Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "building the hostile client failed");
    // Another user must reach the program and the socket (the temporary directories are 0700).
    for p in [dir.path(), sim.dir.path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A tmpfs file of the user's own (the real /dev/shm: tmpfs, sticky, world-writable).
    let file = PathBuf::from(format!("/dev/shm/gvm-hostile-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let sock = sim.root.join("run/gvm-vgpu/shim.sock");
    // Another local user, made for this test (and removed after it).
    let user = match gvm_testkit::temp_user::TempUser::create("gvmhostile") {
        Ok(u) => u,
        Err(why) => {
            println!("SKIP: {why}");
            return;
        }
    };
    let mut child = Command::new(&bin)
        .arg(&sock)
        .arg(&file)
        .uid(user.uid)
        .gid(user.gid)
        .env("GVM_VGPU_UUID", uuid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = || {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    };
    let v1 = line();
    let v2 = line();
    assert_eq!(line(), "ready", "{v1} / {v2}");
    // Give the daemon every chance to map what it accepted, then shrink the file under it.
    let owned = wait_until(Duration::from_secs(1), || {
        c.list(false)
            .map(|l| l.iter().any(|v| v.owners.contains(&pid)))
            .unwrap_or(false)
    });
    writeln!(stdin, "truncate").unwrap();
    stdin.flush().unwrap();
    assert_eq!(line(), "truncated=0", "the user can shrink its own file");
    assert_alive_through_verify_passes(&mut d, &mut c, &uuid);
    let _ = std::fs::remove_file(&file);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        v1.contains("\"ok\":false") && v1.contains("\"field\":\"version\""),
        "protocol 1 (a block by path) is refused: {v1}"
    );
    assert!(
        v2.contains("\"ok\":false") && v2.contains("\"field\":\"control\""),
        "an unsealed file's descriptor is refused: {v2}"
    );
    assert!(!owned, "the hostile process never became an owner");
}
