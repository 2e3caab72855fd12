//! Transports: the API Unix socket, the metrics endpoint, the rescan loop.
//!
//! The socket speaks newline-delimited JSON (`gvm-proto`), one request per line,
//! lines bounded to [`gvm_proto::MAX_LINE_BYTES`]. Each connection's peer is
//! checked with `SO_PEERCRED`: root (or the daemon's own user) may do everything,
//! members of `--group` may read and retune, anyone else is refused with a
//! `permission_denied` answer. All calls run on a blocking thread under one lock,
//! so concurrent CLI calls are serialized and never interleave host writes.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use gvm_proto::{ApiError, ErrorCode, Request, Response, MAX_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::daemon::Daemon;

/// How the daemon serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// API socket path.
    pub socket: PathBuf,
    /// Group whose members may read and retune.
    pub group: Option<u32>,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// Fast rescan period.
    pub rescan: Duration,
    /// Listen to kernel uevents (real hosts only).
    pub uevents: bool,
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

/// Serve until SIGTERM/SIGINT.
pub async fn serve(daemon: Daemon, opts: ServeOptions) -> anyhow::Result<()> {
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
    if let Some(addr) = opts.metrics {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        info!(%addr, "metrics listening");
        tokio::spawn(metrics_loop(l, shared.clone()));
    }
    tokio::spawn(rescan_loop(shared.clone(), wake, opts.rescan));
    // Domain lifecycle events (paused domains frozen); stops when `serve` returns.
    let _libvirt = crate::libvirt_watch::spawn_watch(&shared);
    tokio::spawn(scheduler_loop(shared.clone()));

    let own_uid = current_uid();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, shared.clone(), own_uid, opts.group));
                }
                Err(e) => warn!("accept on {}: {e}", opts.socket.display()),
            },
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); break; }
        }
    }
    // Wait for a request in progress to finish before leaving.
    let d = shared.clone();
    let _ = tokio::task::spawn_blocking(move || run_locked(&d, |_| ())).await;
    let _ = std::fs::remove_file(&opts.socket);
    Ok(())
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

async fn rescan_loop(shared: Shared, wake: Arc<Notify>, period: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = wake.notified() => { debug!("uevent: rescanning now"); }
        }
        let d = shared.clone();
        let r =
            tokio::task::spawn_blocking(move || run_locked(&d, |d| d.tick(Instant::now(), false)))
                .await;
        if let Ok(report) = r {
            for e in report.errors {
                debug!("rescan: {e}");
            }
        }
    }
}

fn peer_caller(stream: &UnixStream, own_uid: u32, group: Option<u32>) -> Caller {
    let Ok(cred) = stream.peer_cred() else {
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

async fn connection(stream: UnixStream, shared: Shared, own_uid: u32, group: Option<u32>) {
    let caller = peer_caller(&stream, own_uid, group);
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                debug!("connection read: {e}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let too_long = buf.last() != Some(&b'\n') && n > MAX_LINE_BYTES;
        let resp = if too_long {
            Response::err(
                0,
                ApiError::invalid(format!(
                    "request longer than {MAX_LINE_BYTES} bytes: closing the connection"
                )),
            )
        } else {
            answer(&buf, caller, &shared).await
        };
        let mut out = match serde_json::to_vec(&resp) {
            Ok(v) => v,
            Err(_) => return,
        };
        out.push(b'\n');
        if w.write_all(&out).await.is_err() || too_long {
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

async fn metrics_loop(listener: TcpListener, shared: Shared) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let d = shared.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut head)).await {
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
            let resp = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
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
    fn supplementary_groups_parse_from_status() {
        let s = "Name:\tx\nUid:\t1\t1\t1\t1\nGroups:\t4 24 27 \nVmRSS: 1 kB\n";
        assert_eq!(parse_status_groups(s), vec![4, 24, 27]);
        assert!(parse_status_groups("Name: x\n").is_empty());
    }
}
