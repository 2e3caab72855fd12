//! The libvirt watch of a running daemon: lifecycle events and a periodic pause re-check
//! applied to the daemon under its lock.
//!
//! The domain map and what an event means are [`crate::domains`]; this module only owns the
//! threads that feed it, so `domains` never needs the daemon type.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

#[cfg(feature = "libvirt")]
use tracing::debug;
use tracing::warn;

/// The running libvirt event watch (nothing in builds without the `libvirt` feature).
#[cfg(feature = "libvirt")]
type WatchHandle = gvm_libvirt::WatchHandle;
#[cfg(not(feature = "libvirt"))]
type WatchHandle = ();

use crate::daemon::Daemon;
#[cfg(feature = "libvirt")]
use crate::domains::SYNC_PERIOD;

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
/// URI: from whenever libvirtd answers (a daemon started before libvirtd waits for it, and
/// one whose libvirtd restarts reconnects). Without one, leftover pause freezes of an earlier run are cleared and `None` is
/// returned. A watch that cannot start is logged (names then resolve through libvirt's run
/// directory only) and gives `None`.
pub fn spawn_watch(shared: &Arc<Mutex<Daemon>>) -> Option<LibvirtWatch> {
    let uri = locked(shared, |d| d.libvirt().uri().map(str::to_string));
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
    // The watch connects on its own thread and keeps trying (with a growing pause) while
    // libvirtd is not there: the domains' log says when it waits and when it connected.
    debug!(%uri, "libvirt watch started");
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
