//! libvirt lifecycle: which domain holds which vGPU, and a paused domain's vGPUs frozen.
//!
//! A vGPU does its work in the host processes that own it (see [`crate::owners`]); when libvirt
//! *pauses* the domain holding it (`virsh suspend`, an I/O error, a save or migration), the
//! guest's vCPUs stop but GPU work already queued would go on using the GPU. The daemon
//! therefore follows libvirt's domain lifecycle events ([`gvm_libvirt::watch()`]) and:
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
//! that libvirt reports paused is bound to it* ([`Domains::pause_wanted`]). [`crate::daemon::Daemon::sync_pauses`]
//! enforces it after each event and once a second (a vGPU adopted after its domain paused).
//!
//! On a real host the daemon follows `qemu:///system` unless told otherwise ([`choose_uri`]),
//! whether libvirtd runs at the start or not: the watch retries with a growing pause, the log
//! says once that it waits and once that it connected, and the same holds after libvirtd
//! restarts. A host without libvirt's client library (`libvirt0`) is not followed at all
//! ([`uri_for_host`] says so once at start): nothing there could ever answer.
//!
//! For troubleshooting, the current picture is written as JSON to
//! `/run/gvm-vgpu/libvirt.json` under the state root after every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use gvm_libvirt::{DomainState, EventKind, WatchEvent};

use gvm_proto::OwnerRule;
use serde::Serialize;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::model::{Desired, Observed, TypeSpec};
use crate::owners::Resolver;
use crate::store::Store;

/// Where the libvirt state is written for troubleshooting, under the state root.
pub const STATUS_FILE: &str = "/run/gvm-vgpu/libvirt.json";

/// How often pause freezes are re-checked besides events.
#[cfg(feature = "libvirt")]
pub(crate) const SYNC_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// The current wait for libvirtd (or the loss of it) has been logged: one line per
    /// outage, not one per retry.
    waiting_logged: bool,
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

/// Which libvirt URI the daemon follows: `--libvirt URI` when given; none with
/// `--no-libvirt`; otherwise, on a real host (root `/`) and in a build that can follow libvirt
/// (`can_follow`), [`gvm_libvirt::uri::DEFAULT_URI`], whether libvirtd runs yet or not: the
/// watch waits for it and follows it from whenever it answers ([`crate::libvirt_watch`]). On
/// a test root only when asked.
pub fn choose_uri(
    flag: Option<&str>,
    disabled: bool,
    real_host: bool,
    can_follow: bool,
) -> Option<String> {
    if disabled {
        return None;
    }
    if let Some(uri) = flag.filter(|u| !u.is_empty()) {
        return Some(uri.to_string());
    }
    (real_host && can_follow).then(|| gvm_libvirt::uri::DEFAULT_URI.to_string())
}

/// [`choose_uri`] for `host` and this build, if this process can load libvirt's client
/// library. On a host without it (no `libvirt0`: a plain-QEMU host) the daemon runs as with
/// `--no-libvirt`, and says so once, here: as a warning when `--libvirt URI` asked for it, as
/// information when the URI was only the real host's default.
pub fn uri_for_host(
    host: &gvm_host_root::HostRoot,
    flag: Option<&str>,
    disabled: bool,
) -> Option<String> {
    let uri = choose_uri(
        flag,
        disabled,
        host.is_real_host(),
        cfg!(feature = "libvirt"),
    )?;
    #[cfg(feature = "libvirt")]
    if let Err(e) = gvm_libvirt::load_library() {
        let why = gvm_libvirt::report(&e);
        if flag.is_some_and(|f| !f.is_empty()) {
            warn!(%uri, "not following libvirt, as with --no-libvirt: {why}");
        } else {
            info!(%uri, "not following libvirt, as with --no-libvirt: {why}");
        }
        return None;
    }
    Some(uri)
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

impl Domains {
    /// Follow libvirt at `uri` (the watch itself starts in
    /// [`crate::libvirt_watch::spawn_watch`]); `status_file` receives the libvirt picture as
    /// JSON after every change.
    pub fn follow(&mut self, uri: &str, status_file: Option<PathBuf>) {
        self.uri = Some(uri.to_string());
        self.status_file = status_file;
    }

    /// Act on one lifecycle event: update the map, log, and drop a gone domain's QEMU owners
    /// from `observed` (re-reading libvirt's run directory through `resolver`). The caller
    /// then brings pause freezes in line ([`Domains::pause_changes_for`]).
    pub fn on_event(
        &mut self,
        event: &WatchEvent,
        observed: &mut Observed,
        resolver: &mut Resolver,
    ) -> Transition {
        let t = self.apply(event);
        match &t {
            Transition::Connected { active, paused } => {
                self.waiting_logged = false;
                info!(
                    uri = self.uri.as_deref().unwrap_or_default(),
                    active,
                    paused,
                    "libvirt connected: following its domains, resyncing pause freezes"
                )
            }
            Transition::Disconnected { reason } => {
                let uri = self.uri.as_deref().unwrap_or_default();
                if self.waiting_logged {
                    // Still down, for another reason (not running, then starting up).
                    debug!(uri, %reason, "libvirt still not answering")
                } else if !self.synced {
                    info!(uri, %reason, "waiting for libvirtd: its domains are followed once it answers")
                } else {
                    warn!(uri, %reason, "libvirt connection lost: retrying; pause freezes stay until resync")
                }
                self.waiting_logged = true;
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
                drop_domain_owners(domain, vgpus, observed, resolver);
            }
            Transition::Ignored => debug!(?event, "libvirt event ignored"),
        }
        t
    }

    /// The pause freezes to change: every managed vGPU (in `observed` with a type in
    /// `type_of`) whose stored pause flag in `desired` differs from what
    /// [`Domains::pause_wanted`] says.
    pub fn pause_changes_for(
        &self,
        observed: &Observed,
        type_of: &BTreeMap<Uuid, TypeSpec>,
        desired: &Desired,
    ) -> Vec<(Uuid, bool)> {
        let current: Vec<(Uuid, bool)> = observed
            .devices
            .keys()
            .filter(|u| type_of.contains_key(u))
            .map(|u| (*u, desired.live.get(u).is_some_and(|l| l.paused)))
            .collect();
        self.pause_changes(current)
    }

    /// Store each pause freeze of `changes` in `desired` and the `store`. Returns the vGPUs
    /// whose knobs must now be written, and the errors.
    pub fn store_pauses(
        &self,
        changes: Vec<(Uuid, bool)>,
        desired: &mut Desired,
        store: &Store,
    ) -> (Vec<Uuid>, Vec<String>) {
        let mut errors = Vec::new();
        let mut touched = Vec::new();
        for (uuid, paused) in changes {
            let mut live = desired.live.get(&uuid).copied().unwrap_or_default();
            live.paused = paused;
            if let Err(e) = store.save_live(&uuid, &live) {
                warn!(%uuid, "cannot store the pause freeze: {e}");
                errors.push(format!("vGPU {uuid}: {e}"));
                continue;
            }
            if live.is_empty() {
                desired.live.remove(&uuid);
            } else {
                desired.live.insert(uuid, live);
            }
            let domain = self.domain_of(&uuid).map(str::to_string);
            if paused {
                info!(%uuid, ?domain, "vGPU frozen: its domain is paused");
            } else {
                info!(%uuid, ?domain, user_freeze = live.frozen, "pause freeze cleared");
            }
            touched.push(uuid);
        }
        (touched, errors)
    }

    /// The known vGPUs (running in `observed` or defined in `desired`) of the active domain
    /// `name`, when libvirt reported it and it has any.
    pub fn known_vgpus_of(
        &self,
        name: &str,
        observed: &Observed,
        desired: &Desired,
    ) -> Option<Vec<Uuid>> {
        let uuids: Vec<Uuid> = self
            .vgpus_of(name)?
            .iter()
            .filter(|u| observed.devices.contains_key(u) || desired.definitions.contains_key(u))
            .copied()
            .collect();
        (!uuids.is_empty()).then_some(uuids)
    }

    /// Write the libvirt picture, with the pause freezes in `desired`, to the status file.
    pub fn write_status(&self, desired: &Desired) {
        let Some(path) = &self.status_file else {
            return;
        };
        let view = StatusView {
            uri: self.uri.as_deref(),
            connected: self.connected,
            synced: self.synced,
            last_disconnect: self.last_disconnect.as_deref(),
            events: self.events,
            updated_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            domains: &self.active,
            pause_frozen: desired
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

/// The domain's QEMU is gone: forget its owner pids (libvirt rule) of `vgpus`.
fn drop_domain_owners(
    domain: &str,
    vgpus: &[Uuid],
    observed: &mut Observed,
    resolver: &mut Resolver,
) {
    for uuid in vgpus {
        let Some(owners) = observed.owners.get_mut(uuid) else {
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
            observed.owners.remove(uuid);
        }
        for pid in gone {
            observed.split_owners.remove(&pid);
            for gpu in observed.gpus.remove(&pid).into_iter().flatten() {
                observed.gcgroups.remove(&(pid, gpu));
            }
            info!(%uuid, pid, %domain, "owner dropped: its QEMU ended with the domain");
        }
    }
    // Its pid file and status XML are gone: re-read so no pid resolves to it any more.
    resolver.refresh_libvirt();
}

#[cfg(test)]
#[path = "domains_tests.rs"]
mod tests;
