//! Accepting connections without being taken over by them: caps on the connections
//! open at once ([`Admission`]) and a backoff on failed accepts ([`AcceptBackoff`]),
//! shared by the API socket, the metrics endpoint and the shim socket.
//!
//! A listener whose `accept` fails because the process is out of file descriptors
//! (`EMFILE`), the host is (`ENFILE`) or the kernel is out of buffers (`ENOBUFS`,
//! `ENOMEM`) must not try again at once: the connection stays queued, the socket stays
//! readable, and the loop spins at 100 % of a core, logging every failure.
//! [`AcceptBackoff`] pauses accepting instead, [`ACCEPT_BACKOFF_MIN`] doubling up to
//! [`ACCEPT_BACKOFF_MAX`], and starts from the minimum again after an accept succeeds.
//!
//! [`Admission`] decides whether an accepted connection may stay, from the peer's uid
//! alone (what `SO_PEERCRED` says; nothing read from `/proc`), before any task or buffer
//! is spent on it: at most [`Caps::max`] connections of all callers together, at most
//! [`Caps::per_uid`] of one user other than an admin, and the last [`Caps::admin_reserve`]
//! slots for admins only, so that root can connect while other users hold the rest. The
//! per-uid count is [`gvm_shim_host::handover::UidSlots`], the one the shim socket uses.

use std::sync::Arc;
use std::time::Duration;

use gvm_shim_host::handover::{UidSlot, UidSlots};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one log line per kind of listener event (failed accept, refused connection,
/// timeout) per this interval; the next says how many were held back.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);
/// First pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts (the pause doubles from the minimum).
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long to pause accepting after a failure.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            next: ACCEPT_BACKOFF_MIN,
        }
    }
}

impl AcceptBackoff {
    /// An accept failed: the pause before the next one (each failure in a row doubles it).
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    /// An accept succeeded: the next failure pauses for the minimum again.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Whether a failed accept means the process or the host is out of file descriptors
/// or buffers (rather than one peer having gone away before it was accepted).
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Caps on the connections a listener keeps open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// All callers together.
    pub max: usize,
    /// One uid other than an admin's.
    pub per_uid: usize,
    /// Slots out of `max` that only admins may take.
    pub admin_reserve: usize,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer's uid holds its share already.
    #[error("uid {uid} holds {per_uid} connections already, the most one user may")]
    PerUid {
        /// The peer's uid.
        uid: u32,
        /// [`Caps::per_uid`].
        per_uid: usize,
    },
    /// Every slot this peer may take is held.
    #[error("{held} connections are open, the most this listener keeps")]
    Full {
        /// The slots open to this peer, all held.
        held: usize,
    },
}

/// A connection's places under the caps; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    _open: OwnedSemaphorePermit,
    _uid: Option<UidSlot>,
}

/// The connections a listener holds, under its [`Caps`].
///
/// Meant to be asked by the one task that accepts: a check and the taking of a slot are
/// then never interleaved with another's, and slots given back in between only help.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    open: Arc<Semaphore>,
    uids: Arc<UidSlots>,
}

impl Admission {
    /// Nothing held yet.
    pub fn new(caps: Caps) -> Self {
        Admission {
            caps,
            open: Arc::new(Semaphore::new(caps.max)),
            uids: UidSlots::new(caps.per_uid),
        }
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.caps.max.saturating_sub(self.open.available_permits())
    }

    /// A ticket for a peer, or why not. `uid` is the peer's (`None`: unknown, e.g. TCP:
    /// only the total counts); an admin is capped by [`Caps::max`] alone, anyone else
    /// also by [`Caps::per_uid`] and may not take the [`Caps::admin_reserve`].
    pub fn admit(&self, uid: Option<u32>, admin: bool) -> Result<Ticket, Refusal> {
        let uid_slot = match (admin, uid) {
            (false, Some(u)) => Some(self.uids.take(u).ok_or(Refusal::PerUid {
                uid: u,
                per_uid: self.caps.per_uid,
            })?),
            _ => None,
        };
        let reserve = if admin { 0 } else { self.caps.admin_reserve };
        let full = Refusal::Full {
            held: self.caps.max.saturating_sub(reserve),
        };
        if self.open.available_permits() <= reserve {
            return Err(full);
        }
        let open = self.open.clone().try_acquire_owned().map_err(|_| full)?;
        Ok(Ticket {
            _open: open,
            _uid: uid_slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_ceiling_and_restarts_after_a_success() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(waits[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(waits[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(waits[9], ACCEPT_BACKOFF_MAX);
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn exhaustion_errors_are_told_apart() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert!(is_exhaustion(&e(libc::EMFILE)));
        assert!(is_exhaustion(&e(libc::ENFILE)));
        assert!(is_exhaustion(&e(libc::ENOBUFS)));
        assert!(!is_exhaustion(&e(libc::ECONNABORTED)));
    }

    #[test]
    fn users_are_capped_per_uid_and_leave_the_reserve_to_admins() {
        let a = Admission::new(Caps {
            max: 6,
            per_uid: 2,
            admin_reserve: 2,
        });
        let u1: Vec<Ticket> = (0..2)
            .map(|_| a.admit(Some(1000), false).unwrap())
            .collect();
        assert_eq!(
            a.admit(Some(1000), false).unwrap_err(),
            Refusal::PerUid {
                uid: 1000,
                per_uid: 2
            }
        );
        let u2: Vec<Ticket> = (0..2)
            .map(|_| a.admit(Some(1001), false).unwrap())
            .collect();
        // Four held: what is left is the admins' reserve.
        assert_eq!(
            a.admit(Some(1002), false).unwrap_err(),
            Refusal::Full { held: 4 }
        );
        assert_eq!(a.admit(None, false).unwrap_err(), Refusal::Full { held: 4 });
        let root: Vec<Ticket> = (0..2).map(|_| a.admit(Some(0), true).unwrap()).collect();
        assert_eq!(a.held(), 6);
        assert_eq!(
            a.admit(Some(0), true).unwrap_err(),
            Refusal::Full { held: 6 }
        );
        // Slots come back when tickets are dropped, per uid too; the two free now are
        // still the reserve.
        drop(u1);
        assert_eq!(a.held(), 4);
        assert_eq!(
            a.admit(Some(1000), false).unwrap_err(),
            Refusal::Full { held: 4 }
        );
        drop(root);
        let again = a.admit(Some(1000), false).unwrap();
        drop((u2, again));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn an_admin_is_not_capped_per_uid() {
        let a = Admission::new(Caps {
            max: 4,
            per_uid: 1,
            admin_reserve: 1,
        });
        let t: Vec<Ticket> = (0..4).map(|_| a.admit(Some(4242), true).unwrap()).collect();
        assert_eq!(t.len(), 4);
    }
}
