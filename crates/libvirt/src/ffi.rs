//! The only unsafe code of the crate: libvirt's event loop and the event callbacks, which the
//! `virt` crate does not wrap.
//!
//! libvirt delivers domain events and connection-close notices by calling C function pointers
//! from inside its *event loop*. A client must register an event loop implementation before it
//! opens the connection that should receive events, and then keep running it. This module
//! registers libvirt's default implementation once per process and runs it forever on one
//! background thread ([`ensure_event_loop`]). The callbacks do nothing but copy what they were
//! given into a [`Raw`] message on a channel: no user code ever runs inside libvirt's loop, so a
//! consumer may block or call libvirt again without deadlocking it.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::mpsc::Sender;
use std::sync::OnceLock;
use std::time::Duration;

use uuid::Uuid;
use virt::connect::Connect;

use crate::error::LibvirtError;

/// What a callback saw, tagged with the generation of the connection it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Raw {
    /// A `VIR_DOMAIN_EVENT_ID_LIFECYCLE` event.
    Lifecycle {
        /// Connection generation.
        generation: u64,
        /// Domain name.
        name: String,
        /// Domain UUID.
        uuid: Option<Uuid>,
        /// `virDomainEventType`.
        event: i32,
        /// The event's detail (e.g. `VIR_DOMAIN_EVENT_STOPPED_DESTROYED`).
        detail: i32,
    },
    /// The connection closed (`virConnectCloseReason`).
    Closed {
        /// Connection generation.
        generation: u64,
        /// The reason code.
        reason: i32,
    },
    /// Not from libvirt: the watch's owner asks it to stop.
    Stop,
}

/// What a callback holds: where to send, and which connection it belongs to.
struct Sink {
    generation: u64,
    tx: Sender<Raw>,
}

/// The result of registering the default event loop (once per process).
static EVENT_LOOP: OnceLock<Result<(), LibvirtError>> = OnceLock::new();

/// Register libvirt's default event loop and run it on a detached thread, once per process.
/// Must happen before opening a connection that should deliver events.
pub(crate) fn ensure_event_loop() -> Result<(), LibvirtError> {
    EVENT_LOOP
        .get_or_init(|| {
            virt::event::event_register_default_impl().map_err(LibvirtError::from)?;
            std::thread::Builder::new()
                .name("libvirt-event-loop".into())
                .spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        // Only fails on a broken poll(); avoid spinning.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(drop)
                .map_err(|e| LibvirtError {
                    code: -1,
                    message: format!("cannot spawn the libvirt event loop thread: {e}"),
                })
        })
        .clone()
}

/// Stop libvirt from printing every error to standard error (its default): this crate returns
/// them, with context, as [`crate::Error`]. Process-wide, done once; the errors themselves are
/// still recorded per thread for `virGetLastError`.
pub(crate) fn quiet_default_errors() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that ignores its arguments; no user data is passed.
        unsafe { virt_sys::virSetErrorFunc(std::ptr::null_mut(), Some(ignore_error)) };
    });
}

unsafe extern "C" fn ignore_error(_user: *mut c_void, _error: virt_sys::virErrorPtr) {}

/// Callback registrations on one connection; give them back with [`deregister`].
#[derive(Debug)]
pub(crate) struct Registration {
    lifecycle_id: c_int,
}

/// Register the lifecycle and close callbacks on `conn`, and turn on keepalive
/// (`interval` seconds, `count` unanswered probes before the connection is declared dead).
pub(crate) fn register(
    conn: &Connect,
    generation: u64,
    tx: &Sender<Raw>,
    keepalive: (i32, u32),
) -> Result<Registration, LibvirtError> {
    let ptr = conn.as_ptr();
    let close_sink = Box::into_raw(Box::new(Sink {
        generation,
        tx: tx.clone(),
    }));
    // SAFETY: `ptr` is a live connection owned by `conn`. `close_sink` is a valid heap pointer
    // whose ownership passes to libvirt, which calls `free_sink` on it exactly once (when the
    // callback is unregistered or the connection freed); `on_close` only reads it.
    let rc = unsafe {
        virt_sys::virConnectRegisterCloseCallback(
            ptr,
            Some(on_close),
            close_sink.cast::<c_void>(),
            Some(free_sink),
        )
    };
    if rc < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership: free it here, once.
        drop(unsafe { Box::from_raw(close_sink) });
        return Err(virt::error::Error::last_error().into());
    }
    let life_sink = Box::into_raw(Box::new(Sink {
        generation,
        tx: tx.clone(),
    }));
    // libvirt declares every event callback with the generic type and casts it back by event
    // id (its VIR_DOMAIN_EVENT_CALLBACK macro); do the same.
    let lifecycle: unsafe extern "C" fn(
        virt_sys::virConnectPtr,
        virt_sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int = on_lifecycle;
    // SAFETY: both are `extern "C"` function pointers; libvirt calls this one with the
    // lifecycle signature because it is registered for VIR_DOMAIN_EVENT_ID_LIFECYCLE.
    let generic: unsafe extern "C" fn(
        virt_sys::virConnectPtr,
        virt_sys::virDomainPtr,
        *mut c_void,
    ) = unsafe { std::mem::transmute(lifecycle) };
    // SAFETY: as for the close callback: `life_sink` passes to libvirt, freed by `free_sink`.
    let id = unsafe {
        virt_sys::virConnectDomainEventRegisterAny(
            ptr,
            std::ptr::null_mut(),
            virt_sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(generic),
            life_sink.cast::<c_void>(),
            Some(free_sink),
        )
    };
    if id < 0 {
        let err = virt::error::Error::last_error().into();
        // SAFETY: registration failed: we still own `life_sink`.
        drop(unsafe { Box::from_raw(life_sink) });
        // SAFETY: `ptr` is live; unregistering our own close callback frees its sink.
        unsafe { virt_sys::virConnectUnregisterCloseCallback(ptr, Some(on_close)) };
        return Err(err);
    }
    // SAFETY: `ptr` is live. Keepalive only fails on drivers without it (e.g. test:///),
    // where the close callback still reports EOF: ignore the result.
    unsafe { virt_sys::virConnectSetKeepAlive(ptr, keepalive.0, keepalive.1) };
    Ok(Registration { lifecycle_id: id })
}

/// Undo [`register`]. Failures (a dead connection) are ignored: freeing the connection
/// releases the callbacks anyway.
pub(crate) fn deregister(conn: &Connect, reg: Registration) {
    let ptr = conn.as_ptr();
    // SAFETY: `ptr` is live; the id and function pointer are the ones registered on it.
    unsafe {
        virt_sys::virConnectDomainEventDeregisterAny(ptr, reg.lifecycle_id);
        virt_sys::virConnectUnregisterCloseCallback(ptr, Some(on_close));
    }
}

/// Whether libvirt still considers the connection alive.
pub(crate) fn is_alive(conn: &Connect) -> bool {
    // SAFETY: `conn` owns a live connection pointer.
    unsafe { virt_sys::virConnectIsAlive(conn.as_ptr()) == 1 }
}

/// Free a [`Sink`] handed to libvirt.
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: every opaque registered with this free function came from
        // `Box::into_raw(Box<Sink>)`, and libvirt calls it once.
        drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
    }
}

unsafe extern "C" fn on_close(_conn: virt_sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the live `Sink` registered with this callback (freed only after
    // unregistering, which cannot run concurrently with a callback in libvirt's loop).
    let Some(sink) = (unsafe { opaque.cast::<Sink>().as_ref() }) else {
        return;
    };
    // The receiver may be gone (watch stopped): nothing to do then.
    let _ = sink.tx.send(Raw::Closed {
        generation: sink.generation,
        reason,
    });
}

unsafe extern "C" fn on_lifecycle(
    _conn: virt_sys::virConnectPtr,
    dom: virt_sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: as in `on_close`.
    let Some(sink) = (unsafe { opaque.cast::<Sink>().as_ref() }) else {
        return 0;
    };
    // SAFETY: `dom` is valid for the duration of the callback; the name belongs to it and is
    // copied before returning.
    let name = unsafe {
        let p: *const c_char = virt_sys::virDomainGetName(dom);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let mut buf = [0 as c_char; virt_sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `buf` has VIR_UUID_STRING_BUFLEN bytes, which is what libvirt writes (with NUL).
    let uuid = unsafe {
        if virt_sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr())
                .to_str()
                .ok()
                .and_then(|s| Uuid::try_parse(s).ok())
        } else {
            None
        }
    };
    let _ = sink.tx.send(Raw::Lifecycle {
        generation: sink.generation,
        name,
        uuid,
        event,
        detail,
    });
    0
}
