//! What libvirt says about domains, as plain data: lifecycle events, states, and which
//! domain is bound to which vGPU. Always compiled (no libvirt linkage), so consumers such as
//! gvm-vgpud can keep their domain logic and tests in builds without the `connect` feature.

use std::fmt;

use uuid::Uuid;

use crate::domain_xml::DomainInfo;

/// A lifecycle event type (`virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A definition was added or changed.
    Defined,
    /// The definition was removed.
    Undefined,
    /// The domain started (booted, restored, migrated in).
    Started,
    /// The domain was paused (`virsh suspend`, I/O error, migration, save).
    Suspended,
    /// The domain was resumed.
    Resumed,
    /// The domain stopped (shutdown, destroyed, crashed, saved, failed); see the detail.
    Stopped,
    /// The guest is shutting down.
    Shutdown,
    /// The guest suspended itself (ACPI S3/S4).
    PmSuspended,
    /// The guest crashed (panic device); QEMU may still run.
    Crashed,
    /// A newer event type.
    Other(i32),
}

impl EventKind {
    /// From libvirt's `virDomainEventType`.
    pub fn from_raw(event: i32) -> EventKind {
        match event {
            0 => EventKind::Defined,
            1 => EventKind::Undefined,
            2 => EventKind::Started,
            3 => EventKind::Suspended,
            4 => EventKind::Resumed,
            5 => EventKind::Stopped,
            6 => EventKind::Shutdown,
            7 => EventKind::PmSuspended,
            8 => EventKind::Crashed,
            n => EventKind::Other(n),
        }
    }

    /// Whether the domain's QEMU process is gone afterwards (its vGPU owners are gone).
    pub fn ends_domain(self) -> bool {
        matches!(self, EventKind::Stopped | EventKind::Undefined)
    }
}

/// One domain lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// Domain name.
    pub domain: String,
    /// Domain UUID.
    pub uuid: Option<Uuid>,
    /// What happened.
    pub kind: EventKind,
    /// libvirt's detail code for the kind (e.g. Stopped: 0 shutdown, 1 destroyed, 2 crashed).
    pub detail: i32,
    /// The vGPUs the domain holds or is bound to (hostdevs and gvm metadata).
    pub vgpus: Vec<Uuid>,
}

/// What the consumer of `watch` (feature `connect`) is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// (Re)connected: the current state of every domain, to resync from.
    Connected {
        /// Every domain with its state and vGPUs.
        domains: Vec<DomainBinding>,
    },
    /// A domain lifecycle event.
    Domain(DomainEvent),
    /// The connection was lost; the watch is retrying.
    Disconnected {
        /// Why (libvirt's close reason, or the connect error).
        reason: String,
    },
}

/// A domain's state as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running (or blocked on a resource).
    Running,
    /// Paused (`virsh suspend`).
    Paused,
    /// Shutting down.
    ShuttingDown,
    /// Not running.
    ShutOff,
    /// Crashed.
    Crashed,
    /// Suspended by guest power management.
    PmSuspended,
    /// Anything else (`VIR_DOMAIN_NOSTATE` or a newer value).
    Other(i32),
}

impl DomainState {
    /// From libvirt's `virDomainState`.
    pub fn from_raw(state: u32) -> DomainState {
        match state {
            // virDomainState: NOSTATE 0, RUNNING 1, BLOCKED 2, PAUSED 3, SHUTDOWN 4,
            // SHUTOFF 5, CRASHED 6, PMSUSPENDED 7 (a stable part of libvirt's ABI).
            1 | 2 => DomainState::Running,
            3 => DomainState::Paused,
            4 => DomainState::ShuttingDown,
            5 => DomainState::ShutOff,
            6 => DomainState::Crashed,
            7 => DomainState::PmSuspended,
            other => DomainState::Other(i32::try_from(other).unwrap_or(-1)),
        }
    }

    /// Whether a QEMU process exists for the domain.
    pub fn is_active(self) -> bool {
        !matches!(self, DomainState::ShutOff | DomainState::Crashed)
    }
}

impl fmt::Display for DomainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainState::Running => write!(f, "running"),
            DomainState::Paused => write!(f, "paused"),
            DomainState::ShuttingDown => write!(f, "shutting down"),
            DomainState::ShutOff => write!(f, "shut off"),
            DomainState::Crashed => write!(f, "crashed"),
            DomainState::PmSuspended => write!(f, "pm-suspended"),
            DomainState::Other(n) => write!(f, "state {n}"),
        }
    }
}

/// One domain and the vGPUs bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainBinding {
    /// The domain's name.
    pub domain: String,
    /// Its state when read.
    pub state: DomainState,
    /// What its XML says (live XML while active, else the persistent definition).
    pub info: DomainInfo,
}

impl DomainBinding {
    /// The vGPUs the domain holds (hostdevs) or is bound to (metadata).
    pub fn vgpus(&self) -> Vec<Uuid> {
        self.info.vgpus()
    }
}
