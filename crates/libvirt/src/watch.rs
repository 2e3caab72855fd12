//! Following libvirt's domain lifecycle events, across libvirtd restarts.
//!
//! libvirt announces every domain state change (defined, started, suspended, resumed, stopped,
//! crashed, …) as a *lifecycle event*. [`watch`] opens its own connection, subscribes, and calls
//! the consumer with a [`WatchEvent`] for each one, together with the vGPUs the domain holds or
//! is bound to (read from its XML; for a domain that is gone, the last known list).
//!
//! When libvirtd goes away (restart, crash) the connection's close callback or keepalive notices
//! within about `keepalive_interval × (keepalive_count + 1)` seconds; the watch reports
//! [`WatchEvent::Disconnected`], retries after [`WatchOptions::retry`], doubling the pause up
//! to [`WatchOptions::retry_max`] while libvirtd stays away (a watch started before libvirtd
//! waits for it the same way), and after reconnecting
//! reports [`WatchEvent::Connected`] with the full current state of every domain. Events that
//! happened while disconnected are not replayed by libvirt: a consumer *resyncs* from the
//! `Connected` snapshot (e.g. freezes the vGPUs of domains now paused, thaws the others).
//!
//! Threading: libvirt's event loop runs on one process-wide background thread (started on first
//! use, never stopped); each watch has one more thread on which `on_event` is called, one event
//! at a time, in order. `on_event` never runs inside libvirt's loop, so it may block or call
//! libvirt. Dropping the [`WatchHandle`] (or [`WatchHandle::stop`]) deregisters, closes the
//! connection and joins the thread.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

use crate::connection::{binding_of, Connection};
use crate::error::{Error, Result};
use crate::events::{DomainEvent, EventKind, WatchEvent};
use crate::sys::{self, Raw};

/// Tuning of [`watch_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Seconds between keepalive probes.
    pub keepalive_interval: i32,
    /// Unanswered probes before the connection is declared dead.
    pub keepalive_count: u32,
    /// Pause before the first reconnect attempt; it doubles after each failed one.
    pub retry: Duration,
    /// The longest pause between reconnect attempts.
    pub retry_max: Duration,
    /// How often the connection is checked for liveness besides the callbacks.
    pub poll: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            keepalive_interval: 2,
            keepalive_count: 2,
            retry: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            poll: Duration::from_millis(500),
        }
    }
}

/// A running watch; dropping it stops the watch.
#[derive(Debug)]
pub struct WatchHandle {
    tx: Sender<Raw>,
    thread: Option<JoinHandle<()>>,
}

impl WatchHandle {
    /// Stop watching and wait for the watch thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Raw::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// [`watch_with`] with default options.
pub fn watch(uri: &str, on_event: impl FnMut(WatchEvent) + Send + 'static) -> Result<WatchHandle> {
    watch_with(uri, WatchOptions::default(), on_event)
}

/// Follow the lifecycle events of every domain at `uri`, calling `on_event` on the watch's
/// own thread. Returns at once; the first connection is made on that thread (an unreachable
/// libvirtd is reported as [`WatchEvent::Disconnected`] and retried, not returned as an error).
/// A host without libvirt's client library is returned as [`Error::LibraryMissing`] at once:
/// no retry would find it.
pub fn watch_with(
    uri: &str,
    options: WatchOptions,
    on_event: impl FnMut(WatchEvent) + Send + 'static,
) -> Result<WatchHandle> {
    sys::ensure_event_loop(sys::api()?).map_err(|source| Error::Libvirt {
        op: "start its event loop".into(),
        uri: uri.to_string(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    let uri = uri.to_string();
    let thread_tx = tx.clone();
    let thread = std::thread::Builder::new()
        .name("gvm-libvirt-watch".into())
        .spawn(move || Watcher::new(uri, options, thread_tx, rx, on_event).run())
        .map_err(Error::Thread)?;
    Ok(WatchHandle {
        tx,
        thread: Some(thread),
    })
}

/// How one connection ended.
enum End {
    Stop,
    Lost(String),
}

/// The watch thread's state.
struct Watcher<F> {
    uri: String,
    options: WatchOptions,
    tx: Sender<Raw>,
    rx: Receiver<Raw>,
    on_event: F,
    generation: u64,
    /// Last known vGPUs per domain, for domains whose XML is gone.
    known: BTreeMap<String, Vec<Uuid>>,
}

impl<F: FnMut(WatchEvent)> Watcher<F> {
    fn new(
        uri: String,
        options: WatchOptions,
        tx: Sender<Raw>,
        rx: Receiver<Raw>,
        on_event: F,
    ) -> Self {
        Watcher {
            uri,
            options,
            tx,
            rx,
            on_event,
            generation: 0,
            known: BTreeMap::new(),
        }
    }

    fn run(mut self) {
        // The last failure reported, so that a libvirtd that stays down is reported once.
        let mut reported: Option<String> = None;
        let mut pause = self.options.retry;
        loop {
            self.generation += 1;
            let end = match self.connect() {
                Ok((conn, reg)) => {
                    reported = None;
                    pause = self.options.retry;
                    let end = self.follow(&conn);
                    conn.handle().deregister(reg);
                    end
                }
                Err(e) => End::Lost(crate::report(&e)),
            };
            match end {
                End::Stop => return,
                End::Lost(reason) => {
                    if reported.as_deref() != Some(reason.as_str()) {
                        (self.on_event)(WatchEvent::Disconnected {
                            reason: reason.clone(),
                        });
                        reported = Some(reason);
                    }
                }
            }
            if self.wait_for_stop(pause) {
                return;
            }
            pause = next_pause(pause, self.options.retry_max);
        }
    }

    fn connect(&mut self) -> Result<(Connection, sys::Registration)> {
        let conn = Connection::open(&self.uri)?;
        let reg = conn
            .handle()
            .register(
                self.generation,
                &self.tx,
                (
                    self.options.keepalive_interval,
                    self.options.keepalive_count,
                ),
            )
            .map_err(|source| Error::Libvirt {
                op: "register for domain events".into(),
                uri: self.uri.clone(),
                source,
            })?;
        match conn.bindings() {
            Ok(domains) => {
                self.known = domains
                    .iter()
                    .map(|b| (b.domain.clone(), b.vgpus()))
                    .collect();
                (self.on_event)(WatchEvent::Connected { domains });
                Ok((conn, reg))
            }
            Err(e) => {
                conn.handle().deregister(reg);
                Err(e)
            }
        }
    }

    /// Deliver events from one connection until it is lost or the watch is stopped.
    fn follow(&mut self, conn: &Connection) -> End {
        loop {
            match self.rx.recv_timeout(self.options.poll) {
                Ok(Raw::Stop) | Err(RecvTimeoutError::Disconnected) => return End::Stop,
                Ok(Raw::Closed { generation, reason }) if generation == self.generation => {
                    return End::Lost(close_reason(reason).to_string());
                }
                Ok(Raw::Lifecycle {
                    generation,
                    name,
                    uuid,
                    event,
                    detail,
                }) if generation == self.generation => {
                    let kind = EventKind::from_raw(event);
                    let vgpus = self.vgpus_for(conn, &name, kind);
                    (self.on_event)(WatchEvent::Domain(DomainEvent {
                        domain: name,
                        uuid,
                        kind,
                        detail,
                        vgpus,
                    }));
                }
                // From a previous connection: stale.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if !conn.handle().is_alive() {
                        return End::Lost("libvirt connection is no longer alive".into());
                    }
                }
            }
        }
    }

    /// The domain's vGPUs now; for a domain that ended or is gone, the last known list.
    fn vgpus_for(&mut self, conn: &Connection, name: &str, kind: EventKind) -> Vec<Uuid> {
        let read = conn.domain(name).and_then(|d| binding_of(&d)).ok();
        let known = self.known.get(name).cloned().unwrap_or_default();
        let vgpus = match (read, kind.ends_domain()) {
            (Some(b), false) => b.vgpus(),
            // Ended: the live XML (and metadata written only live) is gone; merge.
            (Some(b), true) => {
                let mut v = known;
                for u in b.vgpus() {
                    if !v.contains(&u) {
                        v.push(u);
                    }
                }
                v
            }
            (None, _) => known,
        };
        if kind == EventKind::Undefined {
            self.known.remove(name);
        } else {
            self.known.insert(name.to_string(), vgpus.clone());
        }
        vgpus
    }

    /// Sleep up to `d`; true when asked to stop meanwhile.
    fn wait_for_stop(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok(Raw::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
    }
}

/// The pause after one more failed reconnect: twice `pause`, at most `max`.
fn next_pause(pause: Duration, max: Duration) -> Duration {
    pause.saturating_mul(2).min(max)
}

/// libvirt's `virConnectCloseReason` in words.
pub fn close_reason(reason: i32) -> &'static str {
    match reason {
        0 => "libvirt connection closed: I/O error",
        1 => "libvirt connection closed: end of file (libvirtd went away)",
        2 => "libvirt connection closed: keepalive timeout",
        3 => "libvirt connection closed by the client",
        _ => "libvirt connection closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_map_from_libvirt_numbers() {
        assert_eq!(EventKind::from_raw(3), EventKind::Suspended);
        assert_eq!(EventKind::from_raw(4), EventKind::Resumed);
        assert_eq!(EventKind::from_raw(5), EventKind::Stopped);
        assert_eq!(EventKind::from_raw(8), EventKind::Crashed);
        assert_eq!(EventKind::from_raw(42), EventKind::Other(42));
        assert!(EventKind::Stopped.ends_domain());
        assert!(!EventKind::Suspended.ends_domain());
    }

    #[test]
    fn reconnect_pauses_double_up_to_the_cap() {
        let o = WatchOptions::default();
        let mut p = o.retry;
        let mut seen = vec![p];
        for _ in 0..6 {
            p = next_pause(p, o.retry_max);
            seen.push(p);
        }
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn close_reasons_are_explained() {
        assert!(close_reason(1).contains("libvirtd went away"));
        assert!(close_reason(2).contains("keepalive"));
        assert_eq!(close_reason(77), "libvirt connection closed");
    }
}
