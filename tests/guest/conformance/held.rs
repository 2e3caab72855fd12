//! `remove` of a device that someone holds open: the timed part of the held-device steps.
//!
//! A *holder* keeps the device busy (on a kernel: the device fd of
//! `VFIO_GROUP_GET_DEVICE_FD`, see [`super::sys::VfioHold`]; on the simulated host: an
//! owner process started through its control file). [`run_held_remove`] then writes to
//! the device's `remove` attribute from a second thread and records, against a plan of
//! fixed delays, whether the write blocks, what sysfs shows meanwhile, whether a signal
//! ends the write, and how soon after the holder lets go it returns, and with what.
//!
//! Only coarse facts go into the compared record ([`HeldOutcome::summary`]: blocked or
//! not, returned within [`RETURN_SLACK`] of the release, the write's result); the exact
//! times go into [`HeldOutcome::detail`], which is printed, never compared.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::record::State;
use super::run::OpError;
use super::sys;

/// A write that returns within this long of the release counts as "returned on release".
pub const RETURN_SLACK: Duration = Duration::from_millis(1000);
/// How long to wait for the write after the release before giving up on it.
const GIVE_UP: Duration = Duration::from_secs(5);

/// When (after the write starts) to look, signal and release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldPlan {
    /// Look at sysfs and the client's listing this long after the write started.
    pub observe_after_ms: u64,
    /// Send `SIGUSR1` (a no-op handler, no `SA_RESTART`) to the writing thread then.
    pub signal_after_ms: Option<u64>,
    /// Let the holder go then.
    pub release_after_ms: u64,
}

impl HeldPlan {
    /// Printable, part of the step's input.
    pub fn input(&self) -> String {
        let signal = self
            .signal_after_ms
            .map_or(String::new(), |s| format!(" signal@{s}ms"));
        format!(
            "observe@{}ms{signal} release@{}ms",
            self.observe_after_ms, self.release_after_ms
        )
    }
}

/// What sysfs showed while the write was (or was not) blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `name=present|absent` (or another short word) per path looked at, in order.
    pub facts: Vec<(String, String)>,
    /// The client's view of the host.
    pub state: Option<State>,
    /// The errno of reading it, if that failed.
    pub state_error: Option<i32>,
}

/// Something holding a device open.
pub trait Holder {
    /// Let go of the device (close its fd, end the owner process).
    fn release(&mut self) -> Result<(), OpError>;
}

/// What happened to one `remove` write on a held device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOutcome {
    /// The write's result: bytes written, or the errno.
    pub write: Result<usize, Option<i32>>,
    /// Whether the write was still blocked when the holder was released.
    pub blocked_until_release: bool,
    /// Whether it was still blocked just after the signal (`None`: no signal sent).
    pub blocked_after_signal: Option<bool>,
    /// Whether it returned within [`RETURN_SLACK`] of the release (`None`: never, within `GIVE_UP`).
    pub returned_on_release: Option<bool>,
    /// What was seen while it was blocked.
    pub seen: Seen,
    /// Timings and messages, informative only.
    pub detail: String,
}

impl HeldOutcome {
    /// The compared summary: every fact but the exact times.
    pub fn summary(&self) -> String {
        let write = match &self.write {
            Ok(n) => format!("wrote {n}"),
            Err(e) => format!(
                "failed errno={}",
                e.map_or("none".into(), |e| e.to_string())
            ),
        };
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut s = format!(
            "blocked-until-release={} {write} returned-on-release={}",
            yn(self.blocked_until_release),
            self.returned_on_release.map_or("never", yn)
        );
        if let Some(b) = self.blocked_after_signal {
            s.push_str(&format!(" blocked-after-signal={}", yn(b)));
        }
        s.push_str(" | during:");
        for (k, v) in &self.seen.facts {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }
}

/// The sysfs paths the held steps look at, for device `uuid` of `type_id` on `parent`.
pub fn sysfs_facts(root: &Path, parent: &str, type_id: &str, uuid: &str) -> Vec<(String, String)> {
    let sys = root.join("sys");
    let parent_dir = sys.join("class/mdev_bus").join(parent);
    let dev = parent_dir.join(uuid);
    let exists = |p: PathBuf| {
        if std::fs::symlink_metadata(&p).is_ok() {
            "present".to_string()
        } else {
            "absent".to_string()
        }
    };
    vec![
        (
            "bus-link".into(),
            exists(sys.join("bus/mdev/devices").join(uuid)),
        ),
        ("device-dir".into(), exists(dev.clone())),
        ("remove-attr".into(), exists(dev.join("remove"))),
        ("mdev_type-link".into(), exists(dev.join("mdev_type"))),
        ("iommu_group-link".into(), exists(dev.join("iommu_group"))),
        (
            "type-devices-link".into(),
            exists(
                parent_dir
                    .join("mdev_supported_types")
                    .join(type_id)
                    .join("devices")
                    .join(uuid),
            ),
        ),
    ]
}

/// A second `remove` write while the first is blocked: `ok` or the errno.
fn second_remove(path: &Path) -> String {
    match OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write(b"1\n"))
    {
        Ok(n) => format!("wrote-{n}"),
        Err(e) => e
            .raw_os_error()
            .map_or_else(|| "error".into(), |e| format!("errno-{e}")),
    }
}

type WriteResult = Result<usize, Option<i32>>;

/// Write `bytes` to `remove_path` from a new thread while `holder` holds the device,
/// following `plan`; `look` reads sysfs and the client's state while the write is blocked.
pub fn run_held_remove(
    remove_path: &Path,
    bytes: &[u8],
    holder: &mut dyn Holder,
    plan: &HeldPlan,
    look: &mut dyn FnMut() -> Seen,
) -> Result<HeldOutcome, OpError> {
    if plan.signal_after_ms.is_some() {
        sys::catch_sigusr1().map_err(|e| OpError {
            errno: e.raw_os_error(),
            message: format!("installing a SIGUSR1 handler: {e}"),
        })?;
    }
    let tid = Arc::new(AtomicI32::new(0));
    let (tx, rx) = mpsc::channel::<(WriteResult, Instant)>();
    let start = Instant::now();
    {
        let (path, bytes, tid) = (remove_path.to_path_buf(), bytes.to_vec(), tid.clone());
        std::thread::Builder::new()
            .name("held-remove".into())
            .spawn(move || {
                tid.store(sys::gettid(), Ordering::SeqCst);
                let r = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|mut f| f.write(&bytes))
                    .map_err(|e| e.raw_os_error());
                let _ = tx.send((r, Instant::now()));
            })
            .map_err(|e| OpError {
                errno: e.raw_os_error(),
                message: format!("starting the remove thread: {e}"),
            })?;
    }
    let at = |ms: u64| start + Duration::from_millis(ms);
    let sleep_until = |t: Instant| {
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    };
    let mut detail = Vec::new();
    let mut done: Option<(WriteResult, Instant)> = None;
    let poll = |done: &mut Option<(WriteResult, Instant)>| {
        if done.is_none() {
            *done = rx.try_recv().ok();
        }
        done.is_none()
    };

    sleep_until(at(plan.observe_after_ms));
    let mut seen = Seen::default();
    if poll(&mut done) {
        seen = look();
        seen.facts
            .push(("second-remove".into(), second_remove(remove_path)));
    } else {
        detail.push("the write returned before the first look".to_string());
    }
    let mut blocked_after_signal = None;
    if let Some(s) = plan.signal_after_ms {
        sleep_until(at(s));
        let t = tid.load(Ordering::SeqCst);
        if poll(&mut done) && t > 0 {
            if let Err(e) = sys::signal_thread(t) {
                detail.push(format!("tgkill({t}, SIGUSR1): {e}"));
            }
            std::thread::sleep(Duration::from_millis(300));
            blocked_after_signal = Some(poll(&mut done));
        } else {
            blocked_after_signal = Some(false);
        }
    }
    sleep_until(at(plan.release_after_ms));
    let blocked_until_release = poll(&mut done);
    let released = Instant::now();
    holder.release()?;
    if done.is_none() {
        done = rx.recv_timeout(GIVE_UP).ok();
    }
    let (write, returned_on_release) = match done {
        Some((r, when)) => {
            let after = when.saturating_duration_since(released);
            detail.push(format!(
                "write returned {} ms after it started, {} ms after the release",
                when.duration_since(start).as_millis(),
                after.as_millis()
            ));
            let on_release = blocked_until_release.then_some(after <= RETURN_SLACK);
            (r, on_release.or(Some(false)))
        }
        None => {
            detail.push(format!(
                "write still blocked {} s after the release (thread left behind)",
                GIVE_UP.as_secs()
            ));
            (Err(None), None)
        }
    };
    Ok(HeldOutcome {
        write,
        blocked_until_release,
        blocked_after_signal,
        returned_on_release,
        seen,
        detail: detail.join("; "),
    })
}
