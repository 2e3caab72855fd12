//! Mounting and serving the simulated host.
//!
//! Before mounting, DIR is checked for a stale FUSE mount left by a crashed run
//! (`stat` fails with `ENOTCONN`, or `/proc/self/mountinfo` lists a fuse mount
//! at DIR): that is reported with the fix, or lazily unmounted on request. The
//! mount runs on a background thread; a second thread advances the simulated
//! GPUs every [`TICK`], reaps owner processes that exited and starts the owners
//! that creates queued.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, SessionACL};

use crate::catalog::Model;
use crate::error::SimError;
use crate::fuse::SimFs;
use crate::host::{HeldRemove, OwnerProcs, SimHost};

/// How often the simulated GPUs advance.
pub const TICK: Duration = Duration::from_millis(5);

/// What to serve, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The host root DIR; the FUSE filesystem is mounted on `DIR/sys`, so `DIR/etc` and
    /// `DIR/run` stay ordinary directories for the daemon's state and socket.
    pub root: PathBuf,
    /// The model served.
    pub model: Model,
    /// GPUs of the gvm-sim model.
    pub gpus: u32,
    /// Owners started automatically per created vGPU.
    pub owners_per_vgpu: u32,
    /// SR-IOV GPUs whose VFs carry vGPUs, served under `sys/bus/pci/devices` ([`crate::vf`]).
    pub sriov_gpus: u32,
    /// What `remove` does to a device that owners hold.
    pub held_remove: HeldRemove,
    /// Lazily unmount a stale mount at DIR instead of failing.
    pub force_unmount_stale: bool,
}

/// Undo the octal escapes (`\040` for space) of a mountinfo field.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], oct) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a `/proc/self/mountinfo` text lists a fuse mount at `dir`.
pub fn mountinfo_has_fuse(mountinfo: &str, dir: &Path) -> bool {
    mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        matches!((fields.get(4), fstype), (Some(mp), Some(t))
            if t.starts_with("fuse") && Path::new(&unescape(mp)) == dir)
    })
}

fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    }
}

/// Whether DIR is a FUSE mount already (stale from a crash, or still served).
pub fn is_fuse_mount(dir: &Path) -> bool {
    if let Err(e) = std::fs::metadata(dir) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return true;
        }
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| mountinfo_has_fuse(&m, &absolute(dir)))
        .unwrap_or(false)
}

/// Where the filesystem is mounted: `DIR/sys`.
pub fn mount_point(root: &Path) -> PathBuf {
    absolute(root).join("sys")
}

/// Check that we can mount at DIR/sys: root, /dev/fuse, no stale mount (or unmount it if
/// asked). DIR must exist; DIR/sys is created when missing.
pub fn preflight(opts: &ServeOptions) -> Result<(), SimError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(SimError::NotRoot { uid });
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Err(SimError::NoFuse {
            errno: e.raw_os_error().unwrap_or(libc::ENODEV),
        });
    }
    let root = absolute(&opts.root);
    if !root.is_dir() {
        return Err(SimError::NotADirectory { dir: root });
    }
    let dir = mount_point(&root);
    if is_fuse_mount(&dir) {
        if !opts.force_unmount_stale {
            return Err(SimError::StaleMount { dir });
        }
        nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            SimError::StaleUnmount {
                dir: dir.clone(),
                errno: e as i32,
            }
        })?;
    }
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|_| SimError::NotADirectory { dir: dir.clone() })?;
    }
    Ok(())
}

/// Start the owners that creates queued. With a launcher they start while the host is
/// unlocked (file requests are served meanwhile) and are recorded afterwards.
fn start_queued_owners(host: &Mutex<SimHost>) {
    let lock = || host.lock().unwrap_or_else(|p| p.into_inner());
    let launcher = lock().launcher();
    loop {
        let Some(launcher) = &launcher else {
            while lock().spawn_pending(2) > 0 {}
            return;
        };
        let batch = lock().take_pending(8);
        if batch.is_empty() {
            return;
        }
        let started: Vec<_> = batch.iter().map(|(u, g)| launcher.launch(u, *g)).collect();
        let mut h = lock();
        for ((uuid, group), r) in batch.iter().zip(started) {
            h.register_started(uuid, *group, r);
        }
    }
}

/// A mounted, serving simulated host.
pub struct Server {
    dir: PathBuf,
    session: fuser::BackgroundSession,
    host: Arc<Mutex<SimHost>>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Server {
    /// Mount the host at `opts.root` and start serving (after [`preflight`]).
    pub fn start(opts: &ServeOptions, procs: Box<dyn OwnerProcs>) -> Result<Server, SimError> {
        preflight(opts)?;
        let dir = mount_point(&opts.root);
        let mut sim = SimHost::new(opts.model, opts.gpus, opts.owners_per_vgpu, procs);
        sim.set_held_remove(opts.held_remove);
        sim.set_sriov_gpus(opts.sriov_gpus);
        let host = Arc::new(Mutex::new(sim));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("gvm-vgpu-sim".into()),
            MountOption::Subtype("gvm-vgpu-sim".into()),
        ];
        // Every user may look (sysfs and debugfs are world-readable); what each may open is
        // checked per request against the file's mode (`SimFs::permitted`).
        config.acl = SessionACL::All;
        let session =
            fuser::spawn_mount(SimFs::new(host.clone()), &dir, &config).map_err(|source| {
                SimError::Mount {
                    dir: dir.clone(),
                    source,
                }
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (host, stop) = (host.clone(), stop.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let now = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                    host.lock().unwrap_or_else(|p| p.into_inner()).advance(now);
                    start_queued_owners(&host);
                }
            })
        };
        Ok(Server {
            dir,
            session,
            host,
            stop,
            ticker: Some(ticker),
        })
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kill the owners, stop the clock and unmount.
    pub fn stop(mut self) -> Result<(), SimError> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            // A panicked ticker only means the clock stopped; unmount anyway.
            let _ = t.join();
        }
        self.host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .shutdown();
        let dir = self.dir.clone();
        self.session
            .umount_and_join()
            .map_err(|source| SimError::Unmount { dir, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw\n\
        90 29 0:52 / /tmp/my\\040sim rw,nosuid,nodev - fuse.gvm-vgpu-sim gvm-vgpu-sim rw,user_id=0\n";

    #[test]
    fn finds_fuse_mounts_with_escaped_names_only() {
        assert!(mountinfo_has_fuse(INFO, Path::new("/tmp/my sim")));
        assert!(!mountinfo_has_fuse(INFO, Path::new("/mnt1")));
        assert!(!mountinfo_has_fuse(INFO, Path::new("/tmp/other")));
    }

    #[test]
    fn a_plain_directory_is_not_a_fuse_mount() {
        let Ok(d) = tempfile::tempdir() else {
            println!("SKIP: no temp dir");
            return;
        };
        assert!(!is_fuse_mount(d.path()));
    }
}
