//! The hard fallback for what a guest may ignore: a freeze the VM's guest agent does not
//! acknowledge within a deadline (or a VM without a protocol-2 agent) pauses the VM itself,
//! and the thaw resumes it.
//!
//! * A `freeze` (or `set`) answers only once the guest acknowledged the new state, or the
//!   deadline ([`DEFAULT_ACK_DEADLINE`], `gvm-vgpud --guest-ack-ms`) passed. A freeze that
//!   is not acknowledged as complete (every process held, nothing in flight) by then pauses
//!   the VM ([`PauseRoute`]): a libvirt domain through libvirt's suspend (`virDomainSuspend`,
//!   as `virsh suspend`), when the daemon follows libvirt and the vGPU belongs to a domain;
//!   otherwise a plain QEMU through its QMP socket (`stop`; the socket is
//!   `<state>/run/gvm-vgpu/qmp/<uuid>.sock`, wired by `gvm-vgpu qemu-args --qmp-socket`).
//!   libvirt comes first because libvirt owns its domains' QMP monitor: a `stop` behind its
//!   back would leave `virsh domstate` saying "running".
//! * Each pause is recorded, before it is tried, as a mark file
//!   `<state>/run/gvm-vgpu/paused/<uuid>` naming its route (the run directory survives a
//!   daemon restart, not a reboot, as a paused QEMU does). A thaw after a restart still
//!   resumes the VM the same way, and a restarted daemon resumes a VM it paused whose vGPU is
//!   no longer meant to be frozen. The mark comes first so that a pause whose answer was lost
//!   (libvirtd slow past [`PAUSE_TIMEOUT`]) is still undone at thaw.
//! * A VM the operator paused is never resumed by the daemon: a libvirt domain found paused
//!   already is left without a mark ([`Settled::AlreadyPaused`]).
//!
//! The wait happens on the request's blocking thread while the daemon's state is locked; the
//! channel tasks that receive acknowledgements take only their channel's lock, so the wait
//! cannot deadlock, and it is bounded by the deadline. A pause or resume is bounded by
//! [`PAUSE_TIMEOUT`]: libvirt's calls have no timeout of their own, so they run on a thread of
//! their own and a libvirtd that does not answer in time is reported, not waited for.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gvm_host_root::HostRoot;
use tracing::{info, warn};
use uuid::Uuid;

use crate::agent_ingest::GuestTable;

/// How long a guest has to acknowledge a new state before the fallback acts.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_millis(100);
/// How long one pause or resume (a QMP exchange, a libvirt call) may take.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a VM is paused and resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseRoute {
    /// libvirt's suspend and resume of the domain `domain` at `uri`.
    Libvirt {
        /// The libvirt URI the daemon follows.
        uri: String,
        /// The domain's name.
        domain: String,
    },
    /// `stop` and `cont` on the VM's QMP socket.
    Qmp(PathBuf),
}

impl PauseRoute {
    /// The mark file's text: `libvirt\n<uri>\n<domain>\n` or `qmp\n<socket>\n`.
    pub fn to_mark(&self) -> String {
        match self {
            PauseRoute::Libvirt { uri, domain } => format!("libvirt\n{uri}\n{domain}\n"),
            PauseRoute::Qmp(p) => format!("qmp\n{}\n", p.display()),
        }
    }

    /// Read a mark's text back. An empty mark (written before routes were recorded) is the
    /// QMP socket `default_qmp`; anything unreadable is `None`.
    pub fn from_mark(text: &str, default_qmp: &Path) -> Option<PauseRoute> {
        let mut lines = text.lines();
        match lines.next() {
            None | Some("") => Some(PauseRoute::Qmp(default_qmp.to_path_buf())),
            Some("qmp") => Some(PauseRoute::Qmp(
                lines
                    .next()
                    .filter(|l| !l.is_empty())
                    .map_or_else(|| default_qmp.to_path_buf(), PathBuf::from),
            )),
            Some("libvirt") => {
                let uri = lines.next().filter(|l| !l.is_empty())?;
                let domain = lines.next().filter(|l| !l.is_empty())?;
                Some(PauseRoute::Libvirt {
                    uri: uri.to_string(),
                    domain: domain.to_string(),
                })
            }
            Some(_) => None,
        }
    }

    /// Where `show` and the log say the VM is held.
    pub fn describe(&self) -> String {
        match self {
            PauseRoute::Libvirt { uri, domain } => {
                format!("libvirt domain '{domain}' suspended (at {uri})")
            }
            PauseRoute::Qmp(p) => format!("VM paused through QMP ({})", p.display()),
        }
    }

    /// Pause (`running` false) or resume the VM; `Ok(false)` when a libvirt domain was found
    /// in the wanted state already (paused by someone else, or resumed by someone else).
    fn set_running(&self, running: bool) -> Result<bool, PauseError> {
        match self {
            PauseRoute::Qmp(sock) => crate::qmp::set_running(sock, running, PAUSE_TIMEOUT)
                .map(|()| true)
                .map_err(|e| PauseError::Refused(gvm_error_chain::error_chain(&e))),
            PauseRoute::Libvirt { uri, domain } => {
                let (uri, domain) = (uri.clone(), domain.clone());
                bounded(move || libvirt_set_running(&uri, &domain, running))
            }
        }
    }
}

/// Why a pause or resume did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PauseError {
    /// It was refused or could not be tried: the VM's state is unchanged.
    Refused(String),
    /// No answer in time: the call may still complete.
    NoAnswer(String),
}

impl std::fmt::Display for PauseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseError::Refused(e) | PauseError::NoAnswer(e) => f.write_str(e),
        }
    }
}

/// libvirt's suspend or resume of `domain`, after a look at its state: `Ok(false)` when it
/// is in the wanted state already.
#[cfg(feature = "libvirt")]
fn libvirt_set_running(uri: &str, domain: &str, running: bool) -> Result<bool, PauseError> {
    use gvm_libvirt::DomainState;
    let chain = |e: gvm_libvirt::Error| PauseError::Refused(gvm_error_chain::error_chain(&e));
    let conn = gvm_libvirt::Connection::open(uri).map_err(chain)?;
    let state = conn.state(domain).map_err(chain)?;
    match (state, running) {
        (DomainState::Paused, false) | (DomainState::Running, true) => Ok(false),
        (DomainState::Running, false) => conn.suspend(domain).map(|()| true).map_err(chain),
        (DomainState::Paused, true) => conn.resume(domain).map(|()| true).map_err(chain),
        (other, _) => Err(PauseError::Refused(format!(
            "libvirt domain '{domain}' is {other}, neither running nor paused"
        ))),
    }
}

/// A daemon built without libvirt (a static build) never follows a libvirt URI, so no route
/// leads here; say so rather than pretend.
#[cfg(not(feature = "libvirt"))]
fn libvirt_set_running(_uri: &str, domain: &str, _running: bool) -> Result<bool, PauseError> {
    Err(PauseError::Refused(format!(
        "this gvm-vgpud was built without libvirt: it cannot suspend domain '{domain}'"
    )))
}

/// Run `f` on a thread of its own and wait at most [`PAUSE_TIMEOUT`] for its answer.
fn bounded(
    f: impl FnOnce() -> Result<bool, PauseError> + Send + 'static,
) -> Result<bool, PauseError> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("gvm-pause".into())
        .spawn(move || {
            // The receiver may have given up; the answer is then only logged by no one.
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Err(PauseError::Refused(format!(
            "cannot start the thread that pauses the VM: {e}"
        )));
    }
    rx.recv_timeout(PAUSE_TIMEOUT).unwrap_or_else(|_| {
        Err(PauseError::NoAnswer(format!(
            "libvirtd did not answer within {PAUSE_TIMEOUT:?} (the call may still complete; \
             the pause stays recorded so that a thaw resumes the domain)"
        )))
    })
}

/// Where a vGPU's VM can be reached, for choosing its [`PauseRoute`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VmRef<'a> {
    /// The libvirt domain holding the vGPU, when known.
    pub domain: Option<&'a str>,
    /// The libvirt URI the daemon follows, when it does.
    pub libvirt_uri: Option<&'a str>,
}

/// What holds a VM after a `freeze`, or what a `thaw` or `set` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The guest acknowledged the state (for a freeze: every process held).
    Guest,
    /// The VM was paused this way.
    Paused(PauseRoute),
    /// The VM an earlier freeze paused was resumed this way.
    Resumed(PauseRoute),
    /// The libvirt domain was paused already, not by this daemon: it is held, and the thaw
    /// will not resume it.
    AlreadyPaused(PauseRoute),
    /// No acknowledgement in time and no way to pause the VM: the state is not enforced.
    Unenforced(String),
    /// The vGPU has no protocol-2 guest and no way to pause its VM: nothing more to do.
    NoGuest,
}

/// The fallback's state: where QMP sockets and pause marks are, the deadline, and the VMs
/// it paused with how.
#[derive(Debug)]
pub struct GuestFallback {
    qmp_dir: PathBuf,
    marks_dir: PathBuf,
    deadline: Duration,
    paused: BTreeMap<Uuid, PauseRoute>,
}

impl GuestFallback {
    /// The fallback of the daemon whose state root is `state`, with the pause marks an
    /// earlier run left.
    pub fn new(state: &HostRoot) -> GuestFallback {
        let run = state.run_dir();
        let qmp_dir = run.join("qmp");
        let marks_dir = run.join("paused");
        let mut paused = BTreeMap::new();
        for e in fs::read_dir(&marks_dir).into_iter().flatten().flatten() {
            let Ok(uuid) = Uuid::try_parse(&e.file_name().to_string_lossy()) else {
                continue;
            };
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let default_qmp = qmp_dir.join(format!("{uuid}.sock"));
            match PauseRoute::from_mark(&text, &default_qmp) {
                Some(route) => {
                    paused.insert(uuid, route);
                }
                None => warn!(%uuid, "ignoring the unreadable pause mark {}", e.path().display()),
            }
        }
        GuestFallback {
            qmp_dir,
            marks_dir,
            deadline: DEFAULT_ACK_DEADLINE,
            paused,
        }
    }

    /// Give guests `d` to acknowledge.
    pub fn set_deadline(&mut self, d: Duration) {
        self.deadline = d;
    }

    /// Whether this daemon holds `uuid`'s VM paused.
    pub fn is_paused(&self, uuid: &Uuid) -> bool {
        self.paused.contains_key(uuid)
    }

    /// Whether this daemon holds any VM paused.
    pub fn any_paused(&self) -> bool {
        !self.paused.is_empty()
    }

    /// The QMP socket of `uuid`'s VM, if it exists.
    pub fn qmp_socket(&self, uuid: &Uuid) -> Option<PathBuf> {
        let p = self.qmp_dir.join(format!("{uuid}.sock"));
        p.exists().then_some(p)
    }

    /// How `uuid`'s VM would be paused now: libvirt's suspend for a libvirt domain the
    /// daemon follows, else the VM's QMP socket, else nothing.
    pub fn route_for(&self, uuid: &Uuid, vm: VmRef<'_>) -> Option<PauseRoute> {
        if let (Some(uri), Some(domain)) = (vm.libvirt_uri, vm.domain) {
            return Some(PauseRoute::Libvirt {
                uri: uri.to_string(),
                domain: domain.to_string(),
            });
        }
        self.qmp_socket(uuid).map(PauseRoute::Qmp)
    }

    /// What `show` says holds the VM, when the fallback does.
    pub fn mechanism(&self, uuid: &Uuid) -> Option<String> {
        self.paused.get(uuid).map(|route| {
            format!(
                "{} because the guest did not acknowledge the freeze",
                route.describe()
            )
        })
    }

    fn mark_path(&self, uuid: &Uuid) -> PathBuf {
        self.marks_dir.join(uuid.to_string())
    }

    fn drop_mark(&mut self, uuid: &Uuid) {
        self.paused.remove(uuid);
        let mark = self.mark_path(uuid);
        if let Err(e) = fs::remove_file(&mark) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(%uuid, "cannot remove the pause mark {}: {e}", mark.display());
            }
        }
    }

    /// Pause `uuid`'s VM through `route`, the mark written first; `Ok(false)` when a libvirt
    /// domain was paused already (no mark is kept: the daemon did not pause it).
    fn pause(&mut self, uuid: &Uuid, route: &PauseRoute) -> Result<bool, PauseError> {
        let mark = self.mark_path(uuid);
        if let Err(e) =
            fs::create_dir_all(&self.marks_dir).and_then(|()| fs::write(&mark, route.to_mark()))
        {
            warn!(%uuid, "cannot record the pause in {}: {e}; a thaw after a daemon restart will not resume the VM", mark.display());
        }
        self.paused.insert(*uuid, route.clone());
        match route.set_running(false) {
            Ok(true) => Ok(true),
            Ok(false) => {
                self.drop_mark(uuid);
                Ok(false)
            }
            Err(e @ PauseError::NoAnswer(_)) => Err(e),
            Err(e) => {
                self.drop_mark(uuid);
                Err(e)
            }
        }
    }

    /// Resume `uuid`'s VM if this daemon paused it; the route used, or why it failed (the
    /// mark then stays, so a later thaw tries again).
    fn resume(&mut self, uuid: &Uuid) -> Option<Result<PauseRoute, PauseError>> {
        let route = self.paused.get(uuid)?.clone();
        Some(match route.set_running(true) {
            Ok(_) => {
                self.drop_mark(uuid);
                Ok(route)
            }
            Err(e) => Err(e),
        })
    }

    /// After a freeze (`frozen`) or thaw of `uuid` (whose VM is reached through `vm`) was
    /// published to its channel: wait for the guest, and pause or resume the VM where the
    /// guest cannot be relied on.
    pub fn settle(
        &mut self,
        guests: &GuestTable,
        uuid: &Uuid,
        vm: VmRef<'_>,
        frozen: bool,
    ) -> Settled {
        if !frozen {
            let resumed = match self.resume(uuid) {
                None => None,
                Some(Ok(route)) => {
                    info!(%uuid, "thaw: {} resumed", route.describe());
                    Some(route)
                }
                Some(Err(e)) => {
                    warn!(%uuid, "cannot resume the VM paused at freeze: {e}");
                    return Settled::Unenforced(format!("the VM stays paused: {e}"));
                }
            };
            let acked = guests.wait_acked(uuid, vm.domain, false, Instant::now() + self.deadline);
            return match (resumed, acked) {
                (Some(route), _) => Settled::Resumed(route),
                (None, Some(true)) => Settled::Guest,
                (None, Some(false)) => Settled::Unenforced(format!(
                    "the guest did not acknowledge the thaw within {:?}",
                    self.deadline
                )),
                (None, None) => Settled::NoGuest,
            };
        }
        let acked = guests.wait_acked(uuid, vm.domain, true, Instant::now() + self.deadline);
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
        if let Some(route) = self.paused.get(uuid) {
            return Settled::Paused(route.clone());
        }
        let Some(route) = self.route_for(uuid, vm) else {
            return match acked {
                None => Settled::NoGuest,
                Some(_) => {
                    warn!(%uuid, "{why}, and the VM has no libvirt domain or QMP socket to pause it through: the freeze is not enforced");
                    Settled::Unenforced(why)
                }
            };
        };
        self.pause_for(uuid, &route, &why)
    }

    fn pause_for(&mut self, uuid: &Uuid, route: &PauseRoute, why: &str) -> Settled {
        match self.pause(uuid, route) {
            Ok(true) => {
                warn!(%uuid, "{why}: {}", route.describe());
                Settled::Paused(route.clone())
            }
            Ok(false) => {
                info!(%uuid, "{why}, and the VM was paused already (not by gvm-vgpud): it is held, and a thaw will not resume it");
                Settled::AlreadyPaused(route.clone())
            }
            Err(e) => {
                warn!(%uuid, "{why}, and pausing the VM failed: {e}");
                Settled::Unenforced(format!("{why}; pausing it failed: {e}"))
            }
        }
    }

    /// Pause `uuid`'s VM now because its guest does not keep a freeze it acknowledged (its
    /// counters still rise). Once: a VM already paused is left as it is.
    pub fn pause_liar(&mut self, uuid: &Uuid, vm: VmRef<'_>) -> Settled {
        if let Some(route) = self.paused.get(uuid) {
            return Settled::Paused(route.clone());
        }
        let why = "the guest acknowledged the freeze but its kernel counts still rise";
        match self.route_for(uuid, vm) {
            Some(route) => self.pause_for(uuid, &route, why),
            None => {
                warn!(%uuid, "{why}, and the VM has no libvirt domain or QMP socket to pause it through");
                Settled::Unenforced(format!("{why}; no way to pause the VM"))
            }
        }
    }

    /// At start: resume every VM this daemon paused whose vGPU is not meant to be frozen
    /// any more (`frozen(uuid)`).
    pub fn converge(&mut self, frozen: impl Fn(&Uuid) -> bool) {
        let marked: Vec<Uuid> = self.paused.keys().copied().collect();
        for u in marked {
            if frozen(&u) {
                continue;
            }
            match self.resume(&u) {
                Some(Ok(route)) => {
                    info!(uuid = %u, "resumed a VM an earlier run paused ({}): it is no longer frozen", route.describe())
                }
                Some(Err(e)) => {
                    warn!(uuid = %u, "cannot resume the VM an earlier run paused: {e}")
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_back_the_route_they_were_written_for() {
        let qmp = Path::new("/run/gvm-vgpu/qmp/x.sock");
        for route in [
            PauseRoute::Qmp(PathBuf::from("/tmp/a b/q.sock")),
            PauseRoute::Libvirt {
                uri: "qemu:///system".into(),
                domain: "web 1".into(),
            },
        ] {
            assert_eq!(PauseRoute::from_mark(&route.to_mark(), qmp), Some(route));
        }
    }

    #[test]
    fn an_empty_mark_from_an_older_daemon_is_the_qmp_socket() {
        let qmp = Path::new("/run/gvm-vgpu/qmp/x.sock");
        assert_eq!(
            PauseRoute::from_mark("", qmp),
            Some(PauseRoute::Qmp(qmp.to_path_buf()))
        );
    }

    #[test]
    fn a_mark_that_cannot_be_read_is_refused() {
        let qmp = Path::new("/q.sock");
        assert_eq!(
            PauseRoute::from_mark("libvirt\nqemu:///system\n", qmp),
            None
        );
        assert_eq!(PauseRoute::from_mark("xen\n", qmp), None);
    }

    #[test]
    fn a_libvirt_domain_is_paused_through_libvirt_even_with_a_qmp_socket() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        let f = GuestFallback::new(&host);
        let u = Uuid::from_u128(7);
        fs::create_dir_all(&f.qmp_dir).unwrap();
        fs::write(f.qmp_dir.join(format!("{u}.sock")), b"").unwrap();
        let libvirt = VmRef {
            domain: Some("vm1"),
            libvirt_uri: Some("qemu:///system"),
        };
        assert!(matches!(
            f.route_for(&u, libvirt),
            Some(PauseRoute::Libvirt { domain, .. }) if domain == "vm1"
        ));
        // Not following libvirt: the domain name alone does not say how to reach it.
        let unfollowed = VmRef {
            domain: Some("vm1"),
            libvirt_uri: None,
        };
        assert!(matches!(
            f.route_for(&u, unfollowed),
            Some(PauseRoute::Qmp(_))
        ));
        assert_eq!(f.route_for(&Uuid::from_u128(8), unfollowed), None);
    }
}
