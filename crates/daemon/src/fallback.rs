//! The hard fallback for what a guest may ignore: a freeze the VM's guest agent does not
//! acknowledge within a deadline (or a VM without a protocol-2 agent) pauses the VM itself,
//! and the thaw resumes it.
//!
//! * A `freeze` (or `set`) answers only once the guest acknowledged the new state, or the
//!   deadline ([`DEFAULT_ACK_DEADLINE`], `gvm-vgpud --guest-ack-ms`) passed. A freeze that
//!   is not acknowledged as complete (every process held, nothing in flight) by then pauses
//!   the VM through its QMP socket (`stop`; the socket is
//!   `<state>/run/gvm-vgpu/qmp/<uuid>.sock`, wired by `gvm-vgpu qemu-args --qmp-socket`).
//! * Each pause is recorded as a mark file `<state>/run/gvm-vgpu/paused/<uuid>` (the run
//!   directory survives a daemon restart, not a reboot, as a paused QEMU does), so a thaw
//!   after a restart still resumes the VM, and a restarted daemon resumes a VM it paused
//!   whose vGPU is no longer meant to be frozen. A VM the operator paused is never resumed
//!   by the daemon: there is no mark for it.
//! * Pausing libvirt domains (`virsh suspend`) is not done here yet.
//!
//! The wait happens on the request's blocking thread while the daemon's state is locked; the
//! channel tasks that receive acknowledgements take only their channel's lock, so the wait
//! cannot deadlock, and it is bounded by the deadline.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;
use tracing::{info, warn};
use uuid::Uuid;

use crate::agent_ingest::GuestTable;

/// How long a guest has to acknowledge a new state before the fallback acts.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_millis(100);
/// How long one QMP exchange may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(2);

/// What holds a VM after a `freeze`, or what a `thaw` or `set` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The guest acknowledged the state (for a freeze: every process held).
    Guest,
    /// The VM was paused through its QMP socket.
    PausedQmp,
    /// The VM paused by an earlier freeze was resumed through its QMP socket.
    ResumedQmp,
    /// No acknowledgement in time and no way to pause the VM: the state is not enforced.
    Unenforced(String),
    /// The vGPU has no protocol-2 guest and no QMP socket: nothing more to do.
    NoGuest,
}

/// The fallback's state: where QMP sockets and pause marks are, and the deadline.
#[derive(Debug)]
pub struct GuestFallback {
    qmp_dir: PathBuf,
    marks_dir: PathBuf,
    deadline: Duration,
    paused: BTreeSet<Uuid>,
}

impl GuestFallback {
    /// The fallback of the daemon whose state root is `state`, with the pause marks an
    /// earlier run left.
    pub fn new(state: &HostRoot) -> GuestFallback {
        let run = state.run_dir();
        let marks_dir = run.join("paused");
        let paused = fs::read_dir(&marks_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| Uuid::try_parse(&e.file_name().to_string_lossy()).ok())
                    .collect()
            })
            .unwrap_or_default();
        GuestFallback {
            qmp_dir: run.join("qmp"),
            marks_dir,
            deadline: DEFAULT_ACK_DEADLINE,
            paused,
        }
    }

    /// Give guests `d` to acknowledge.
    pub fn set_deadline(&mut self, d: Duration) {
        self.deadline = d;
    }

    /// The VMs this daemon paused (marks).
    pub fn paused(&self) -> &BTreeSet<Uuid> {
        &self.paused
    }

    /// The QMP socket of `uuid`'s VM, if it exists.
    pub fn qmp_socket(&self, uuid: &Uuid) -> Option<PathBuf> {
        let p = self.qmp_dir.join(format!("{uuid}.sock"));
        p.exists().then_some(p)
    }

    /// What `show` says holds the VM, when the fallback does.
    pub fn mechanism(&self, uuid: &Uuid) -> Option<String> {
        self.paused.contains(uuid).then(|| {
            format!(
                "VM paused through QMP ({}) because the guest did not acknowledge the freeze",
                self.qmp_dir.join(format!("{uuid}.sock")).display()
            )
        })
    }

    fn pause(&mut self, uuid: &Uuid, running: bool) -> Result<(), String> {
        let sock = self
            .qmp_socket(uuid)
            .ok_or_else(|| "no QMP socket".to_string())?;
        crate::qmp::set_running(&sock, running, QMP_TIMEOUT).map_err(|e| e.to_string())?;
        let mark = self.marks_dir.join(uuid.to_string());
        if running {
            self.paused.remove(uuid);
            if let Err(e) = fs::remove_file(&mark) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(%uuid, "cannot remove the pause mark {}: {e}", mark.display());
                }
            }
        } else {
            self.paused.insert(*uuid);
            if let Err(e) = fs::create_dir_all(&self.marks_dir).and_then(|()| fs::write(&mark, b""))
            {
                warn!(%uuid, "cannot record the pause in {}: {e}; a thaw after a daemon restart will not resume the VM", mark.display());
            }
        }
        Ok(())
    }

    /// After a freeze (`frozen`) or thaw of `uuid` (held by libvirt domain `domain`, when
    /// known) was published to its channel: wait for the guest, and pause or resume the VM
    /// where the guest cannot be relied on.
    pub fn settle(
        &mut self,
        guests: &GuestTable,
        uuid: &Uuid,
        domain: Option<&str>,
        frozen: bool,
    ) -> Settled {
        if !frozen {
            let resumed = self.paused.contains(uuid);
            if resumed {
                if let Err(e) = self.pause(uuid, true) {
                    warn!(%uuid, "cannot resume the VM paused at freeze: {e}");
                    return Settled::Unenforced(format!("the VM stays paused: {e}"));
                }
                info!(%uuid, "VM resumed through QMP at thaw");
            }
            let acked = guests.wait_acked(uuid, domain, false, Instant::now() + self.deadline);
            return match (resumed, acked) {
                (true, _) => Settled::ResumedQmp,
                (false, Some(true)) => Settled::Guest,
                (false, Some(false)) => Settled::Unenforced(format!(
                    "the guest did not acknowledge the thaw within {:?}",
                    self.deadline
                )),
                (false, None) => Settled::NoGuest,
            };
        }
        let acked = guests.wait_acked(uuid, domain, true, Instant::now() + self.deadline);
        if acked == Some(true) {
            return Settled::Guest;
        }
        let why = match acked {
            Some(_) => format!(
                "the guest did not acknowledge the freeze as complete within {:?}",
                self.deadline
            ),
            None => "the VM has no protocol-2 guest agent".to_string(),
        };
        if self.qmp_socket(uuid).is_none() {
            return match acked {
                None => Settled::NoGuest,
                Some(_) => {
                    warn!(%uuid, "{why}, and the VM has no QMP socket to pause it through: the freeze is not enforced");
                    Settled::Unenforced(why)
                }
            };
        }
        match self.pause(uuid, false) {
            Ok(()) => {
                warn!(%uuid, "{why}: VM paused through QMP");
                Settled::PausedQmp
            }
            Err(e) => {
                warn!(%uuid, "{why}, and pausing the VM failed: {e}");
                Settled::Unenforced(format!("{why}; pausing it failed: {e}"))
            }
        }
    }

    /// Pause `uuid`'s VM now because its guest does not keep a freeze it acknowledged (its
    /// counters still rise). Once: a VM already paused is left as it is.
    pub fn pause_liar(&mut self, uuid: &Uuid) -> Settled {
        if self.paused.contains(uuid) {
            return Settled::PausedQmp;
        }
        match self.pause(uuid, false) {
            Ok(()) => {
                warn!(%uuid, "the guest acknowledged the freeze but its kernel counts still rise: VM paused through QMP");
                Settled::PausedQmp
            }
            Err(e) => {
                warn!(%uuid, "the guest acknowledged the freeze but its kernel counts still rise, and pausing the VM failed: {e}");
                Settled::Unenforced(e)
            }
        }
    }

    /// At start: resume every VM this daemon paused whose vGPU is not meant to be frozen
    /// any more (`frozen(uuid)`).
    pub fn converge(&mut self, frozen: impl Fn(&Uuid) -> bool) {
        let marked: Vec<Uuid> = self.paused.iter().copied().collect();
        for u in marked {
            if frozen(&u) {
                continue;
            }
            match self.pause(&u, true) {
                Ok(()) => {
                    info!(uuid = %u, "resumed a VM an earlier run paused: it is no longer frozen")
                }
                Err(e) => warn!(uuid = %u, "cannot resume the VM an earlier run paused: {e}"),
            }
        }
    }
}
