//! libvirt lifecycle: which domain holds which vGPU, and a paused domain's vGPUs frozen.
//!
//! A vGPU does its work in the host processes that own it (see [`crate::owners`]); when libvirt
//! *pauses* the domain holding it (`virsh suspend`, an I/O error, a save or migration), the
//! guest's vCPUs stop but GPU work already queued would go on using the GPU. The daemon
//! therefore follows libvirt's domain lifecycle events ([`gvm_libvirt::watch`]) and:
//!
//! - keeps a *domain → vGPU map* ([`Domains`]) from the watch's `Connected` snapshot and each
//!   event's vGPU list (mdev `<hostdev>`s and gvm `<metadata>` bindings), so that
//!   `set/freeze/thaw/show <domain-name>` resolve the domain's vGPUs (the pid-file reader of
//!   [`crate::owners::Resolver`] stays the fallback when libvirt is not watched);
//! - *suspended* → freezes the domain's vGPUs with a pause freeze
//!   ([`crate::model::LiveState::paused`]), distinct from the operator's `freeze`;
//!   *resumed* (or started) → clears only the pause freeze, so a user freeze survives;
//! - *stopped / crashed / shutdown* → forgets the domain, drops its QEMU owner pids (they are
//!   gone) and clears its pause freezes;
//! - after every (re)connection, *resyncs* from the snapshot: vGPUs of paused domains are
//!   frozen, every other pause freeze is cleared. Events libvirt never delivered while
//!   libvirtd was restarting are repaired that way.
//!
//! The rule in one line: *a managed vGPU carries a pause freeze exactly when an active domain
//! that libvirt reports paused is bound to it* ([`Domains::pause_wanted`]). [`Daemon::sync_pauses`]
//! enforces it after each event and once a second (a vGPU adopted after its domain paused).
//!
//! For troubleshooting, the current picture is written as JSON to
//! `/run/gvm-vgpu/libvirt.json` under the state root after every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use gvm_libvirt::{DomainState, EventKind, WatchEvent};

/// The running libvirt event watch (nothing in builds without the `libvirt` feature).
#[cfg(feature = "libvirt")]
type WatchHandle = gvm_libvirt::WatchHandle;
#[cfg(not(feature = "libvirt"))]
type WatchHandle = ();
use gvm_proto::OwnerRule;
use serde::Serialize;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::daemon::Daemon;

/// Where the libvirt state is written for troubleshooting, under the state root.
pub const STATUS_FILE: &str = "/run/gvm-vgpu/libvirt.json";

/// How often pause freezes are re-checked besides events.
#[cfg(feature = "libvirt")]
const SYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// An active (running or paused) domain as the watch last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveDomain {
    /// libvirt reports the domain paused.
    pub paused: bool,
    /// The vGPUs it holds (hostdevs) or is bound to (gvm metadata).
    pub vgpus: Vec<Uuid>,
}

/// What one watch event changed, for the log and the caller's follow-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// (Re)connected: the map was rebuilt from the snapshot.
    Connected {
        /// Active domains now.
        active: usize,
        /// Of those, paused.
        paused: usize,
    },
    /// The connection was lost; the map is kept (stale) until the next snapshot.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A domain started or was resumed: its pause freezes go.
    Running {
        /// Domain name.
        domain: String,
        /// Its vGPUs.
        vgpus: Vec<Uuid>,
    },
    /// A domain was paused: its vGPUs get a pause freeze.
    Paused {
        /// Domain name.
        domain: String,
        /// Its vGPUs.
        vgpus: Vec<Uuid>,
    },
    /// A domain ended (stopped, crashed, shut down, undefined): binding dropped.
    Ended {
        /// Domain name.
        domain: String,
        /// The event.
        kind: EventKind,
        /// libvirt's detail code.
        detail: i32,
        /// The vGPUs it was bound to.
        vgpus: Vec<Uuid>,
    },
    /// Nothing the daemon acts on (defined, guest PM suspend, …).
    Ignored,
}

/// The daemon's libvirt picture: connection, active domains and their vGPUs.
#[derive(Debug, Clone, Default)]
pub struct Domains {
    uri: Option<String>,
    status_file: Option<PathBuf>,
    connected: bool,
    /// A `Connected` snapshot has been applied: the map can be trusted for resyncs.
    synced: bool,
    last_disconnect: Option<String>,
    events: u64,
    active: BTreeMap<String, ActiveDomain>,
}

impl Domains {
    /// Apply one watch event to the map (pure) and say what changed.
    pub fn apply(&mut self, event: &WatchEvent) -> Transition {
        self.events += 1;
        match event {
            WatchEvent::Connected { domains } => {
                self.connected = true;
                self.synced = true;
                self.active = domains
                    .iter()
                    .filter(|b| b.state.is_active())
                    .map(|b| {
                        let d = ActiveDomain {
                            paused: b.state == DomainState::Paused,
                            vgpus: b.vgpus(),
                        };
                        (b.domain.clone(), d)
                    })
                    .collect();
                Transition::Connected {
                    active: self.active.len(),
                    paused: self.active.values().filter(|d| d.paused).count(),
                }
            }
            WatchEvent::Disconnected { reason } => {
                self.connected = false;
                self.last_disconnect = Some(reason.clone());
                Transition::Disconnected {
                    reason: reason.clone(),
                }
            }
            WatchEvent::Domain(ev) => {
                let domain = ev.domain.clone();
                let vgpus = ev.vgpus.clone();
                let mut set = |paused: bool| {
                    self.active.insert(
                        domain.clone(),
                        ActiveDomain {
                            paused,
                            vgpus: vgpus.clone(),
                        },
                    );
                };
                match ev.kind {
                    EventKind::Started | EventKind::Resumed => {
                        set(false);
                        Transition::Running { domain, vgpus }
                    }
                    EventKind::Suspended => {
                        set(true);
                        Transition::Paused { domain, vgpus }
                    }
                    EventKind::Stopped
                    | EventKind::Crashed
                    | EventKind::Shutdown
                    | EventKind::Undefined => {
                        let known = self.active.remove(&domain).map(|d| d.vgpus);
                        let mut all = known.unwrap_or_default();
                        for u in vgpus {
                            if !all.contains(&u) {
                                all.push(u);
                            }
                        }
                        Transition::Ended {
                            domain,
                            kind: ev.kind,
                            detail: ev.detail,
                            vgpus: all,
                        }
                    }
                    EventKind::Defined | EventKind::PmSuspended | EventKind::Other(_) => {
                        Transition::Ignored
                    }
                }
            }
        }
    }

    /// Whether `uuid` should carry a pause freeze: an active domain bound to it is paused.
    pub fn pause_wanted(&self, uuid: &Uuid) -> bool {
        self.active
            .values()
            .any(|d| d.paused && d.vgpus.contains(uuid))
    }

    /// The pause flags to change, given each managed vGPU's current flag. Empty until the
    /// first snapshot when libvirt is watched (the map is not known yet); without libvirt every
    /// leftover pause freeze (from an earlier run) is cleared.
    pub fn pause_changes(
        &self,
        current: impl IntoIterator<Item = (Uuid, bool)>,
    ) -> Vec<(Uuid, bool)> {
        if self.uri.is_some() && !self.synced {
            return Vec::new();
        }
        current
            .into_iter()
            .filter_map(|(u, now)| {
                let want = self.pause_wanted(&u);
                (want != now).then_some((u, want))
            })
            .collect()
    }

    /// The vGPUs of the active domain `name`, if libvirt reported one.
    pub fn vgpus_of(&self, name: &str) -> Option<&[Uuid]> {
        self.active.get(name).map(|d| d.vgpus.as_slice())
    }

    /// The active domain bound to `uuid` (the first by name when several claim it).
    pub fn domain_of(&self, uuid: &Uuid) -> Option<&str> {
        self.active
            .iter()
            .find(|(_, d)| d.vgpus.contains(uuid))
            .map(|(n, _)| n.as_str())
    }

    /// Active domains by name.
    pub fn active(&self) -> &BTreeMap<String, ActiveDomain> {
        &self.active
    }

    /// The watched URI, if any.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// Whether the watch is connected now.
    pub fn connected(&self) -> bool {
        self.connected
    }
}

/// libvirtd's (or virtqemud's) socket paths; one existing means libvirt runs on the host.
pub const LIBVIRT_SOCKETS: [&str; 2] = ["/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"];

/// Which libvirt URI the daemon follows: `--libvirt URI` when given; none with
/// `--no-libvirt`; otherwise, on a real host (root `/`) whose libvirt socket exists,
/// [`gvm_libvirt::uri::DEFAULT_URI`]; on a test root only when asked.
pub fn choose_uri(
    flag: Option<&str>,
    disabled: bool,
    real_host: bool,
    socket_exists: bool,
) -> Option<String> {
    if disabled {
        return None;
    }
    if let Some(uri) = flag.filter(|u| !u.is_empty()) {
        return Some(uri.to_string());
    }
    (real_host && socket_exists).then(|| gvm_libvirt::uri::DEFAULT_URI.to_string())
}

/// [`choose_uri`] for `host`, looking for libvirt's socket through the root.
pub fn uri_for_host(
    host: &gvm_host_root::HostRoot,
    flag: Option<&str>,
    disabled: bool,
) -> Option<String> {
    let socket = LIBVIRT_SOCKETS.iter().any(|s| host.path(s).exists());
    choose_uri(flag, disabled, host.is_real_host(), socket)
}

/// The JSON written to [`STATUS_FILE`].
#[derive(Debug, Serialize)]
struct StatusView<'a> {
    uri: Option<&'a str>,
    connected: bool,
    synced: bool,
    last_disconnect: Option<&'a str>,
    events: u64,
    updated_unix_s: u64,
    domains: &'a BTreeMap<String, ActiveDomain>,
    pause_frozen: Vec<Uuid>,
}

impl Daemon {
    /// Follow libvirt at `uri` (the watch itself starts in [`spawn_watch`]); `status_file`
    /// receives the libvirt picture as JSON after every change.
    pub fn use_libvirt(&mut self, uri: &str, status_file: Option<PathBuf>) {
        self.libvirt.uri = Some(uri.to_string());
        self.libvirt.status_file = status_file;
    }

    /// The daemon's libvirt picture.
    pub fn libvirt(&self) -> &Domains {
        &self.libvirt
    }

    /// Act on one lifecycle event: update the map, log, drop a gone domain's QEMU owners,
    /// and bring pause freezes in line. Returns the errors of knob writes.
    pub fn libvirt_event(&mut self, event: &WatchEvent) -> Vec<String> {
        let t = self.libvirt.apply(event);
        match &t {
            Transition::Connected { active, paused } => {
                info!(
                    active,
                    paused, "libvirt connected: resyncing pause freezes from its domains"
                )
            }
            Transition::Disconnected { reason } => {
                warn!(%reason, "libvirt connection lost: retrying; pause freezes stay until resync")
            }
            Transition::Running { domain, vgpus } => {
                info!(%domain, ?vgpus, "libvirt domain running")
            }
            Transition::Paused { domain, vgpus } => {
                info!(%domain, ?vgpus, "libvirt domain paused: freezing its vGPUs")
            }
            Transition::Ended {
                domain,
                kind,
                detail,
                vgpus,
            } => {
                info!(%domain, ?kind, detail, ?vgpus, "libvirt domain ended: binding dropped");
                self.drop_domain_owners(domain, vgpus);
            }
            Transition::Ignored => debug!(?event, "libvirt event ignored"),
        }
        let errors = self.sync_pauses();
        if t != Transition::Ignored {
            self.write_libvirt_status();
        }
        errors
    }

    /// Give every managed vGPU the pause freeze [`Domains::pause_wanted`] says, storing it
    /// and writing the owners' knobs. Returns the errors.
    pub fn sync_pauses(&mut self) -> Vec<String> {
        let current: Vec<(Uuid, bool)> = self
            .observed
            .devices
            .keys()
            .filter(|u| self.type_of.contains_key(u))
            .map(|u| (*u, self.desired.live.get(u).is_some_and(|l| l.paused)))
            .collect();
        let changes = self.libvirt.pause_changes(current);
        if changes.is_empty() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let mut touched = Vec::new();
        for (uuid, paused) in changes {
            let mut live = self.desired.live.get(&uuid).copied().unwrap_or_default();
            live.paused = paused;
            if let Err(e) = self.store.save_live(&uuid, &live) {
                warn!(%uuid, "cannot store the pause freeze: {e}");
                errors.push(format!("vGPU {uuid}: {e}"));
                continue;
            }
            if live.is_empty() {
                self.desired.live.remove(&uuid);
            } else {
                self.desired.live.insert(uuid, live);
            }
            let domain = self.libvirt.domain_of(&uuid).map(str::to_string);
            if paused {
                info!(%uuid, ?domain, "vGPU frozen: its domain is paused");
            } else {
                info!(%uuid, ?domain, user_freeze = live.frozen, "pause freeze cleared");
            }
            touched.push(uuid);
        }
        errors.extend(self.retune(&touched));
        self.write_libvirt_status();
        errors
    }

    /// The known vGPUs (running or defined) of the active domain `name`, when libvirt
    /// reported it and it has any.
    pub(crate) fn domain_vgpus(&self, name: &str) -> Option<Vec<Uuid>> {
        let uuids: Vec<Uuid> = self
            .libvirt
            .vgpus_of(name)?
            .iter()
            .filter(|u| {
                self.observed.devices.contains_key(u) || self.desired.definitions.contains_key(u)
            })
            .copied()
            .collect();
        (!uuids.is_empty()).then_some(uuids)
    }

    /// The domain holding `uuid`: libvirt's report, else libvirt's run directory.
    pub(crate) fn domain_name_of(&self, uuid: &Uuid) -> Option<String> {
        self.libvirt
            .domain_of(uuid)
            .or_else(|| self.resolver.domain_of(uuid))
            .map(str::to_string)
    }

    /// The domain's QEMU is gone: forget its owner pids (libvirt rule) of `vgpus`.
    fn drop_domain_owners(&mut self, domain: &str, vgpus: &[Uuid]) {
        for uuid in vgpus {
            let Some(owners) = self.observed.owners.get_mut(uuid) else {
                continue;
            };
            let gone: Vec<u32> = owners
                .iter()
                .filter(|(_, rule)| **rule == OwnerRule::Libvirt)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in &gone {
                owners.remove(pid);
            }
            if owners.is_empty() {
                self.observed.owners.remove(uuid);
            }
            for pid in gone {
                self.observed.split_owners.remove(&pid);
                for gpu in self.observed.gpus.remove(&pid).into_iter().flatten() {
                    self.observed.gcgroups.remove(&(pid, gpu));
                }
                info!(%uuid, pid, %domain, "owner dropped: its QEMU ended with the domain");
            }
        }
        // Its pid file and status XML are gone: re-read so no pid resolves to it any more.
        self.resolver.refresh_libvirt();
    }

    fn write_libvirt_status(&self) {
        let Some(path) = &self.libvirt.status_file else {
            return;
        };
        let l = &self.libvirt;
        let view = StatusView {
            uri: l.uri.as_deref(),
            connected: l.connected,
            synced: l.synced,
            last_disconnect: l.last_disconnect.as_deref(),
            events: l.events,
            updated_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            domains: &l.active,
            pause_frozen: self
                .desired
                .live
                .iter()
                .filter(|(_, s)| s.paused)
                .map(|(u, _)| *u)
                .collect(),
        };
        if let Err(e) = crate::store::write_json(path, &view) {
            debug!("cannot write the libvirt status file: {e}");
        }
    }
}

/// The running libvirt watch and the pause re-check thread; dropping it stops both.
#[derive(Debug)]
pub struct LibvirtWatch {
    #[cfg_attr(
        not(feature = "libvirt"),
        expect(dead_code, reason = "no watch without libvirt")
    )]
    watch: Option<WatchHandle>,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Drop for LibvirtWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        #[cfg(feature = "libvirt")]
        if let Some(w) = self.watch.take() {
            w.stop();
        }
        if let Some(t) = self.ticker.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn locked<T>(shared: &Mutex<Daemon>, f: impl FnOnce(&mut Daemon) -> T) -> T {
    let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

/// Start following libvirt for the daemon in `shared`, when [`Daemon::use_libvirt`] named a
/// URI. Without one, leftover pause freezes of an earlier run are cleared and `None` is
/// returned. A watch that cannot start is logged (names then resolve through libvirt's run
/// directory only) and gives `None`.
pub fn spawn_watch(shared: &Arc<Mutex<Daemon>>) -> Option<LibvirtWatch> {
    let uri = locked(shared, |d| d.libvirt.uri.clone());
    let Some(uri) = uri else {
        for e in locked(shared, Daemon::sync_pauses) {
            warn!("{e}");
        }
        return None;
    };
    #[cfg(not(feature = "libvirt"))]
    {
        warn!(
            %uri,
            "this gvm-vgpud was built without libvirt support (cargo feature `libvirt`): \
             domain events are not followed"
        );
        None
    }
    #[cfg(feature = "libvirt")]
    start_watch(shared, &uri)
}

/// Start the libvirt event watch and the pause re-check thread.
#[cfg(feature = "libvirt")]
fn start_watch(shared: &Arc<Mutex<Daemon>>, uri: &str) -> Option<LibvirtWatch> {
    let uri = uri.to_string();
    let d = shared.clone();
    let watch = gvm_libvirt::watch(&uri, move |ev| {
        for e in locked(&d, |d| d.libvirt_event(&ev)) {
            warn!("libvirt event: {e}");
        }
    });
    let watch = match watch {
        Ok(w) => w,
        Err(e) => {
            warn!(
                %uri,
                "cannot follow libvirt's domain events ({}): paused domains will not be frozen",
                gvm_libvirt::report(&e)
            );
            return None;
        }
    };
    info!(%uri, "following libvirt domain lifecycle events");
    let stop = Arc::new(AtomicBool::new(false));
    let (d, flag) = (shared.clone(), stop.clone());
    let ticker = std::thread::Builder::new()
        .name("gvm-vgpud-pauses".into())
        .spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::park_timeout(SYNC_PERIOD);
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                for e in locked(&d, Daemon::sync_pauses) {
                    debug!("pause re-check: {e}");
                }
            }
        });
    let ticker = match ticker {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("cannot start the pause re-check thread ({e}): events still apply");
            None
        }
    };
    Some(LibvirtWatch {
        watch: Some(watch),
        stop,
        ticker,
    })
}

#[cfg(test)]
#[path = "domains_tests.rs"]
mod tests;
