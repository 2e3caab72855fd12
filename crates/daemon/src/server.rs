//! Transports: the API Unix socket, the metrics endpoint, the rescan loop.
//!
//! The socket speaks newline-delimited JSON (`gvm-proto`), one request per line,
//! lines bounded to [`gvm_proto::MAX_LINE_BYTES`]. Each connection's peer is
//! checked with `SO_PEERCRED`: root (or the daemon's own user) may do everything,
//! members of `--group` may read and retune, anyone else is refused with a
//! `permission_denied` answer. All calls run on a blocking thread under one lock,
//! so concurrent CLI calls are serialized and never interleave host writes.
//!
//! Limits (docs/daemon.md, "Limits"): the socket keeps at most
//! [`ApiLimits::max_connections`] connections open, at most [`API_MAX_PER_UID`] of one
//! user other than root and the daemon's own, the last [`API_ADMIN_RESERVE`] for those
//! two; a connection beyond them gets one `busy` line (code `conflict`, id 0) and is
//! closed before it costs a task. A connection that sends nothing for
//! [`ApiLimits::idle`] is closed, and so is one whose request line is not complete
//! [`API_REQUEST_TIMEOUT`] after its first byte. Failed accepts pause accepting
//! ([`crate::accept::AcceptBackoff`]) instead of spinning, and every kind of event
//! (failed accept, refusal, timeout, rescan error) is logged at most once per
//! [`crate::accept::LOG_INTERVAL`] with the number held back. The metrics endpoint has
//! the same backoff and a cap of [`METRICS_MAX_CONNECTIONS`].

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use gvm_proto::{ApiError, ErrorCode, Request, Response, MAX_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::UCred;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::accept::{is_exhaustion, AcceptBackoff, Admission, Caps, Refusal, Ticket, LOG_INTERVAL};
use crate::daemon::Daemon;
use crate::log_limit::EventLog;

/// Default of `--api-max-connections`: API connections open at once, all callers
/// together. A CLI call holds one for its duration; the requests themselves run one
/// at a time, so more buys nothing but file descriptors (each also costs about 10 KiB).
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 256;
/// The last slots of the API's connections, kept for root and the daemon's own user:
/// an admin can always connect, whatever other users hold.
pub const API_ADMIN_RESERVE: usize = 8;
/// API connections one user other than root and the daemon's own may hold at once.
pub const API_MAX_PER_UID: usize = 32;
/// Default of `--api-idle-s`: an API connection that sends nothing this long is closed
/// (time spent on the daemon's answer does not count).
pub const DEFAULT_API_IDLE: Duration = Duration::from_secs(60);
/// How long a request line may take, from its first byte to its newline (the CLI
/// sends each line in one write): a line still partial then is answered
/// `invalid_argument` and the connection closed.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics connections open at once; more are answered `503` and closed.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// How long a metrics client has to send its request, and to read the answer.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// The API socket's connection limits an operator may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections open at once, all callers together (`--api-max-connections`);
    /// more than [`API_ADMIN_RESERVE`].
    pub max_connections: usize,
    /// A connection silent this long is closed (`--api-idle-s`).
    pub idle: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            idle: DEFAULT_API_IDLE,
        }
    }
}

impl ApiLimits {
    /// The caps these limits give the API socket.
    pub fn caps(&self) -> Caps {
        Caps {
            max: self.max_connections.max(API_ADMIN_RESERVE + 1),
            per_uid: API_MAX_PER_UID,
            admin_reserve: API_ADMIN_RESERVE,
        }
    }
}

/// The kinds of event logged at most once per [`LOG_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The API socket's accept failed.
    AcceptFailed,
    /// An API connection was turned away by the caps.
    Refused,
    /// An API connection was closed for being idle.
    Idle,
    /// An API connection's request line did not complete in time.
    PartialLine,
    /// The metrics endpoint's accept failed.
    MetricsAcceptFailed,
    /// A metrics connection was turned away by the cap.
    MetricsRefused,
    /// A rescan tick reported errors.
    RescanFailed,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::AcceptFailed => "failed API accepts",
            Event::Refused => "refused API connections",
            Event::Idle => "idle API connections closed",
            Event::PartialLine => "partial API request lines dropped",
            Event::MetricsAcceptFailed => "failed metrics accepts",
            Event::MetricsRefused => "refused metrics connections",
            Event::RescanFailed => "rescans with errors",
        }
    }
}

type Log = Arc<EventLog<Event>>;

/// Write "N more suppressed" for every kind whose lines were held back.
fn flush_log(log: &EventLog<Event>) {
    for (event, n) in log.flush() {
        match event {
            Event::Idle | Event::PartialLine | Event::RescanFailed => {
                debug!("{}: {n} more suppressed", event.name())
            }
            _ => warn!("{}: {n} more suppressed", event.name()),
        }
    }
}

/// How the daemon serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// API socket path.
    pub socket: PathBuf,
    /// Group whose members may read and retune.
    pub group: Option<u32>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// Fast rescan period (a config reload may change it).
    pub rescan: RescanPeriod,
    /// Listen to kernel uevents (real hosts only).
    pub uevents: bool,
    /// The API socket's connection limits.
    pub api: ApiLimits,
    /// Where the catalog is read again on `SIGHUP` (`None`: `SIGHUP` is logged and ignored).
    pub catalog: Option<crate::catalog::CatalogSource>,
    /// What `SIGHUP` reads again before the catalog: the daemon's settings (config file).
    pub settings: Option<Arc<Mutex<dyn ReloadSettings>>>,
}

/// The daemon's settings, read again on `SIGHUP` before the catalog (the config file:
/// `crate::config`, which implements it; this module does not depend on it).
pub trait ReloadSettings: Send + std::fmt::Debug {
    /// Read the settings again and apply what a running daemon can change (a bad file
    /// changes nothing, and says why in the log). Returns where the catalog is read from
    /// now.
    fn reload(&mut self, daemon: &Mutex<Daemon>) -> crate::catalog::CatalogSource;
}

/// The fast rescan period, shared with the rescan loop so that a reload can change it.
#[derive(Debug, Clone)]
pub struct RescanPeriod(Arc<std::sync::atomic::AtomicU64>);

impl RescanPeriod {
    /// A period of `d` (in whole milliseconds).
    pub fn new(d: Duration) -> RescanPeriod {
        RescanPeriod(Arc::new(std::sync::atomic::AtomicU64::new(
            d.as_millis() as u64
        )))
    }

    /// The period now.
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// From the next rescan on, wait `d`.
    pub fn set(&self, d: Duration) {
        self.0
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

type Shared = Arc<Mutex<Daemon>>;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// root or the daemon's own user: everything.
    Admin,
    /// A member of `--group`: reads and retunes.
    Group,
    /// Anyone else.
    Refused,
}

/// Classify a peer by uid, and by groups (primary + supplementary).
pub fn classify(uid: u32, own_uid: u32, groups: &[u32], group: Option<u32>) -> Caller {
    if uid == 0 || uid == own_uid {
        Caller::Admin
    } else if group.is_some_and(|g| groups.contains(&g)) {
        Caller::Group
    } else {
        Caller::Refused
    }
}

/// Supplementary groups of a process from `/proc/<pid>/status` (`Groups:` line).
pub fn parse_status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn run_locked<T>(d: &Shared, f: impl FnOnce(&mut Daemon) -> T) -> T {
    let mut guard = match d.lock() {
        Ok(g) => g,
        // A panicking handler must not take the daemon down with it.
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut guard)
}

/// Serve until SIGTERM/SIGINT; reload the catalog on SIGHUP.
pub async fn serve(daemon: Daemon, opts: ServeOptions) -> anyhow::Result<()> {
    // First of all: SIGHUP's default action would end the daemon.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let host = daemon.host().clone();
    let listener = bind_socket(&opts.socket, opts.group)?;
    info!(socket = %opts.socket.display(), "API listening");
    let shared: Shared = Arc::new(Mutex::new(daemon));
    let wake = Arc::new(Notify::new());

    // First reconciliation before answering anything: re-adopt, re-apply, report.
    let started = Instant::now();
    let d = shared.clone();
    let report =
        tokio::task::spawn_blocking(move || run_locked(&d, |d| d.tick(Instant::now(), true)))
            .await
            .context("initial reconciliation panicked")?;
    info!(
        adopted = report.adopted.len(),
        unmanaged = report.unmanaged.len(),
        autostarted = report.autostarted.len(),
        writes = report.writes,
        drift = report.drift.len(),
        errors = report.errors.len(),
        ms = started.elapsed().as_millis() as u64,
        "initial reconciliation done"
    );
    for e in &report.errors {
        warn!("{e}");
    }

    if opts.uevents && host.is_real_host() {
        crate::uevent::spawn_listener(wake.clone());
    }
    let log: Log = Arc::new(EventLog::new(LOG_INTERVAL));
    if let Some(addr) = opts.metrics {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        info!(addr = %l.local_addr().unwrap_or(addr), "metrics listening");
        tokio::spawn(metrics_loop(l, shared.clone(), log.clone()));
    }
    tokio::spawn(rescan_loop(
        shared.clone(),
        wake,
        opts.rescan.clone(),
        log.clone(),
    ));
    // Domain lifecycle events (paused domains frozen); stops when `serve` returns.
    let _libvirt = crate::libvirt_watch::spawn_watch(&shared);
    tokio::spawn(scheduler_loop(shared.clone()));
    tokio::spawn(reload_loop(
        shared.clone(),
        hangup,
        opts.catalog.clone(),
        opts.settings.clone(),
    ));

    let own_uid = current_uid();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let admission = Admission::new(opts.api.caps());
    let mut backoff = AcceptBackoff::default();
    // Accepting pauses until then after a failed accept.
    let mut paused: Option<tokio::time::Instant> = None;
    let mut flush = tokio::time::interval(LOG_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // The socket listens, the first reconciliation is done and every loop runs: tell systemd
    // (`Type=notify`), so what is ordered after the unit finds the API answering.
    notify_systemd(crate::notify::READY);
    loop {
        tokio::select! {
            r = listener.accept(), if paused.is_none() => match r {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    let conn = Conn { shared: shared.clone(), own_uid, group: opts.group,
                                      idle: opts.api.idle, log: log.clone() };
                    admit(stream, &admission, conn);
                }
                Err(e) => {
                    let wait = backoff.failed();
                    paused = Some(tokio::time::Instant::now() + wait);
                    if let Some(more) = log.allow(Event::AcceptFailed) {
                        warn!("accept on {} failed: {e}{}; pausing accepts for {wait:?}{more}",
                              opts.socket.display(), exhaustion_hint(&e));
                    }
                }
            },
            _ = sleep_until(paused), if paused.is_some() => paused = None,
            _ = flush.tick() => flush_log(&log),
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = &mut ctrl_c => { info!("SIGINT: shutting down"); break; }
        }
    }
    notify_systemd(crate::notify::STOPPING);
    // Wait for a request in progress to finish before leaving.
    let d = shared.clone();
    let _ = tokio::task::spawn_blocking(move || run_locked(&d, |_| ())).await;
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
}

/// Read the settings, then the catalog again on every SIGHUP, one reload at a time (signals
/// that come during one make one more). The files are read and checked outside the daemon's
/// lock; only the swap takes it, so requests see the old catalog or the new one.
async fn reload_loop(
    shared: Shared,
    mut hangup: tokio::signal::unix::Signal,
    mut source: Option<crate::catalog::CatalogSource>,
    settings: Option<Arc<Mutex<dyn ReloadSettings>>>,
) {
    while hangup.recv().await.is_some() {
        notify_systemd(&crate::notify::reloading_message());
        if let Some(settings) = settings.clone() {
            let d = shared.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut s = settings.lock().unwrap_or_else(|p| p.into_inner());
                s.reload(&d)
            })
            .await;
            match read {
                Ok(dirs) => source = Some(dirs),
                Err(_) => warn!("SIGHUP: the config reload panicked; the settings in use stay"),
            }
        }
        let Some(source) = source.clone() else {
            warn!("SIGHUP: this daemon was started without a catalog to read again");
            notify_systemd(crate::notify::READY);
            continue;
        };
        let d = shared.clone();
        let done = tokio::task::spawn_blocking(move || reload_catalog(&d, &source)).await;
        if done.is_err() {
            warn!("SIGHUP: the catalog reload panicked; the catalog in use stays");
        }
        // Done, whether the new catalog was taken or refused: `systemctl reload` returns.
        notify_systemd(crate::notify::READY);
    }
}

/// Tell systemd `message` when it asked to be told (`$NOTIFY_SOCKET`); a failure is logged,
/// never fatal.
fn notify_systemd(message: &str) {
    if let Err(e) = crate::notify::notify(message) {
        warn!("{e}");
    }
}

fn reload_catalog(shared: &Shared, source: &crate::catalog::CatalogSource) {
    info!("SIGHUP: reading the vGPU type catalog again");
    let loaded = source.load();
    let at = std::time::SystemTime::now();
    match loaded {
        Ok(catalog) => {
            let files = crate::catalog::files_of(&catalog);
            let types = Box::new(crate::ports::CatalogTypes::new(catalog));
            let n = files.len();
            let swap = run_locked(shared, |d| d.replace_catalog(types, files, at));
            info!(
                files = n,
                changed = swap.changed.len(),
                unmanaged_now = swap.unmanaged.len(),
                errors = swap.errors.len(),
                "catalog reloaded"
            );
            for e in &swap.errors {
                warn!("catalog reload: {e}");
            }
        }
        Err(e) => {
            let chain = gvm_error_chain::error_chain(&e);
            warn!("catalog reload refused, the catalog in use stays: {chain}");
            run_locked(shared, |d| d.catalog_reload_failed(chain, at));
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn exhaustion_hint(e: &std::io::Error) -> &'static str {
    if is_exhaustion(e) {
        " (out of file descriptors or buffers)"
    } else {
        ""
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn bind_socket(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another gvm-vgpud is already serving {}: stop it first (one daemon per host)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    Ok(l)
}

async fn rescan_loop(shared: Shared, wake: Arc<Notify>, period: RescanPeriod, log: Log) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period.get()) => {}
            _ = wake.notified() => { debug!("uevent: rescanning now"); }
        }
        let d = shared.clone();
        let r =
            tokio::task::spawn_blocking(move || run_locked(&d, |d| d.tick(Instant::now(), false)))
                .await;
        // The same failure comes back every tick (a missing directory, no descriptors
        // left): one line per interval says them all.
        if let Ok(report) = r {
            if !report.errors.is_empty() {
                if let Some(more) = log.allow(Event::RescanFailed) {
                    debug!("rescan: {}{more}", report.errors.join("; "));
                }
            }
        }
    }
}

/// What an API connection needs besides its stream.
struct Conn {
    shared: Shared,
    own_uid: u32,
    group: Option<u32>,
    idle: Duration,
    log: Log,
}

/// Keep an accepted API connection (a task of its own) or turn it away at once: one
/// `busy` line, written without waiting (a new socket's buffer has room for it), then
/// closed. Who the peer is comes from `SO_PEERCRED` alone.
fn admit(stream: UnixStream, admission: &Admission, conn: Conn) {
    let cred = stream.peer_cred().ok();
    let uid = cred.map(|c| c.uid());
    let admin = uid.is_some_and(|u| u == 0 || u == conn.own_uid);
    match admission.admit(uid, admin) {
        Ok(ticket) => {
            tokio::spawn(connection(stream, cred, ticket, conn));
        }
        Err(why) => {
            if let Some(more) = conn.log.allow(Event::Refused) {
                warn!(
                    held = admission.held(),
                    "API connection refused: {why}{more}"
                );
            }
            let _ = stream.try_write(&busy_line(&why));
        }
    }
}

/// The line a refused API client reads before the socket closes.
fn busy_line(why: &Refusal) -> Vec<u8> {
    let resp = Response::err(
        0,
        ApiError::new(
            ErrorCode::Conflict,
            format!("busy: {why}; close idle connections or try again later"),
        ),
    );
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    out
}

fn peer_caller(cred: Option<UCred>, own_uid: u32, group: Option<u32>) -> Caller {
    let Some(cred) = cred else {
        return Caller::Refused;
    };
    let mut groups = vec![cred.gid()];
    if let Some(pid) = cred.pid() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            groups.extend(parse_status_groups(&status));
        }
    }
    classify(cred.uid(), own_uid, &groups, group)
}

/// Answer one API connection's requests until it closes, falls silent for the idle
/// timeout or takes too long over a request line. `_ticket` holds its place under the
/// caps until then.
async fn connection(stream: UnixStream, cred: Option<UCred>, _ticket: Ticket, conn: Conn) {
    let caller = peer_caller(cred, conn.own_uid, conn.group);
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        // Idle until the next request's first byte (or the end).
        match tokio::time::timeout(conn.idle, reader.fill_buf()).await {
            Err(_) => {
                if let Some(more) = conn.log.allow(Event::Idle) {
                    debug!("API connection idle for {:?}: closed{more}", conn.idle);
                }
                return;
            }
            Ok(Err(e)) => {
                debug!("connection read: {e}");
                return;
            }
            Ok(Ok([])) => return,
            Ok(Ok(_)) => {}
        }
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64 + 1);
        let line = limited.read_until(b'\n', &mut buf);
        let (resp, close) = match tokio::time::timeout(API_REQUEST_TIMEOUT, line).await {
            Err(_) => {
                if let Some(more) = conn.log.allow(Event::PartialLine) {
                    debug!(
                        bytes = buf.len(),
                        "API request line not complete after {API_REQUEST_TIMEOUT:?}: dropped{more}"
                    );
                }
                let e = ApiError::invalid(format!(
                    "request line not complete {} s after its first byte: closing the connection",
                    API_REQUEST_TIMEOUT.as_secs()
                ));
                (Response::err(0, e), true)
            }
            Ok(Err(e)) => {
                debug!("connection read: {e}");
                return;
            }
            Ok(Ok(n)) if buf.last() != Some(&b'\n') && n > MAX_LINE_BYTES => {
                let e = ApiError::invalid(format!(
                    "request longer than {MAX_LINE_BYTES} bytes: closing the connection"
                ));
                (Response::err(0, e), true)
            }
            Ok(Ok(_)) => (answer(&buf, caller, &conn.shared).await, false),
        };
        let mut out = match serde_json::to_vec(&resp) {
            Ok(v) => v,
            Err(_) => return,
        };
        out.push(b'\n');
        // A client that does not read its answers is as idle as one that sends nothing.
        let written = tokio::time::timeout(conn.idle, w.write_all(&out)).await;
        if !matches!(written, Ok(Ok(()))) || close {
            return;
        }
    }
}

async fn answer(line: &[u8], caller: Caller, shared: &Shared) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim_end(),
        Err(_) => return Response::err(0, ApiError::invalid("request is not UTF-8 text")),
    };
    let parsed = Request::parse_line(text);
    if caller == Caller::Refused {
        let id = match &parsed {
            Ok(r) => r.id,
            Err((id, _)) => *id,
        };
        return Response::err(
            id,
            ApiError::new(
                ErrorCode::PermissionDenied,
                "only root or members of the daemon's --group may use gvm-vgpud",
            ),
        );
    }
    let req = match parsed {
        Ok(r) => r,
        Err((id, e)) => return Response::err(id, e),
    };
    if caller == Caller::Group && !req.call.allowed_for_group() {
        return Response::err(
            req.id,
            ApiError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "'{}' needs root: group members may only read and retune",
                    req.call.method()
                ),
            ),
        );
    }
    let id = req.id;
    let d = shared.clone();
    match tokio::task::spawn_blocking(move || run_locked(&d, |d| d.handle(req))).await {
        Ok(r) => r,
        Err(e) => Response::err(id, ApiError::internal(format!("handler failed: {e}"))),
    }
}

async fn metrics_loop(listener: TcpListener, shared: Shared, log: Log) {
    let admission = Admission::new(Caps {
        max: METRICS_MAX_CONNECTIONS,
        per_uid: METRICS_MAX_CONNECTIONS,
        admin_reserve: 0,
    });
    let mut backoff = AcceptBackoff::default();
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                let wait = backoff.failed();
                if let Some(more) = log.allow(Event::MetricsAcceptFailed) {
                    warn!(
                        "metrics accept failed: {e}{}; pausing accepts for {wait:?}{more}",
                        exhaustion_hint(&e)
                    );
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.succeeded();
        match admission.admit(None, false) {
            Ok(ticket) => {
                tokio::spawn(metrics_connection(s, shared.clone(), ticket));
            }
            Err(why) => {
                if let Some(more) = log.allow(Event::MetricsRefused) {
                    warn!("metrics connection refused: {why}{more}");
                }
                let body = "too many metrics connections open; try again later\n";
                let _ = s.try_write(http_response("503 Service Unavailable", body).as_bytes());
            }
        }
    }
}

fn http_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn metrics_connection(mut s: tokio::net::TcpStream, d: Shared, _ticket: Ticket) {
    let mut head = [0u8; 2048];
    let n = match tokio::time::timeout(METRICS_TIMEOUT, s.read(&mut head)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let ok = head[..n].starts_with(b"GET ");
    let body = if ok {
        tokio::task::spawn_blocking(move || run_locked(&d, |d| d.metrics()))
            .await
            .unwrap_or_default()
    } else {
        "only GET is served\n".to_string()
    };
    let status = if ok {
        "200 OK"
    } else {
        "405 Method Not Allowed"
    };
    let resp = http_response(status, &body);
    let _ = tokio::time::timeout(METRICS_TIMEOUT, s.write_all(resp.as_bytes())).await;
}

/// Ticks every GPU's engine every [`crate::scheduler::TICK`] until the runtime stops.
pub async fn scheduler_loop(shared: Arc<Mutex<Daemon>>) {
    let busy = match shared.lock() {
        Ok(g) => g.scheduler_busy_flag(),
        Err(poisoned) => poisoned.into_inner().scheduler_busy_flag(),
    };
    let mut every = tokio::time::interval(crate::scheduler::TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if !busy.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        let d = shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut guard = match d.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            guard.sched_tick(Instant::now());
        })
        .await;
        if r.is_err() {
            warn!("a scheduler tick panicked; continuing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_classified_by_uid_and_group() {
        assert_eq!(classify(0, 1000, &[], None), Caller::Admin);
        assert_eq!(classify(1000, 1000, &[], None), Caller::Admin);
        assert_eq!(classify(1001, 1000, &[50, 7], Some(7)), Caller::Group);
        assert_eq!(classify(1001, 1000, &[50], Some(7)), Caller::Refused);
        assert_eq!(classify(1001, 0, &[7], None), Caller::Refused);
    }

    #[test]
    fn a_refused_client_reads_one_busy_line_with_id_0() {
        let line = busy_line(&Refusal::PerUid {
            uid: 1000,
            per_uid: API_MAX_PER_UID,
        });
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let r: Response = serde_json::from_slice(&line).unwrap_or(Response::ok(1, &()));
        let e = r.error.unwrap_or(ApiError::internal("no error"));
        assert_eq!((r.id, e.code), (0, ErrorCode::Conflict));
        assert!(
            e.message.starts_with("busy: uid 1000 holds"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_api_caps_keep_room_beyond_the_admin_reserve() {
        let caps = ApiLimits::default().caps();
        assert_eq!(caps.max, DEFAULT_API_MAX_CONNECTIONS);
        assert_eq!(caps.per_uid, API_MAX_PER_UID);
        let tiny = ApiLimits {
            max_connections: 1,
            ..ApiLimits::default()
        };
        assert_eq!(tiny.caps().max, API_ADMIN_RESERVE + 1);
    }

    #[test]
    fn supplementary_groups_parse_from_status() {
        let s = "Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nVmRSS: 1 kB\n";
        assert_eq!(parse_status_groups(s), vec![4, 24, 27]);
        assert!(parse_status_groups("Name: x\n").is_empty());
    }
}
