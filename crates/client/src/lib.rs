//! A small synchronous client of the gvm-vgpud API.
//!
//! `gvm-vgpud` serves newline-delimited JSON on a Unix socket (see `gvm-proto`);
//! this crate connects, sends one request per call and decodes the typed answer.
//! It never prints: every failure is an [`Error`]. [`Error::NotRunning`] (nothing
//! listens) is the only one that means "the daemon is not running"; a socket this user
//! may not open is [`Error::Permission`], and a caller that falls back to reading the
//! host directly must do so on `NotRunning` alone.
//!
//! A request whose line would exceed [`MAX_LINE_BYTES`] is refused before anything is
//! sent ([`Error::RequestTooLong`]): the daemon would answer it with an error it cannot
//! tie to the request (id 0) and close the connection. An error answer with id 0 (the
//! daemon could not read the request's id) is reported as that error, not as a
//! mismatched answer.
//!
//! ```no_run
//! use gvm_client::Client;
//! use gvm_host_root::HostRoot;
//!
//! let mut c = Client::connect_host(&HostRoot::default())?;
//! for v in c.list(false)? {
//!     println!("{} {} {:?}", v.uuid, v.mdev_type, v.owners);
//! }
//! c.set_priority("vm1", 2)?;
//! c.freeze("vm1")?;
//! # Ok::<(), gvm_client::Error>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gvm_host_root::HostRoot;
use gvm_proto::{
    ApiError, Call, CreateParams, DefineParams, Definition, ErrorCode, ImportParams, ImportReport,
    ListParams, PolicyParams, Pong, ReconcileReport, Request, Response, SetParams, StatsParams,
    Target, VgpuDetail, VgpuInfo, MAX_LINE_BYTES,
};
use serde::de::DeserializeOwned;

pub use gvm_proto;
pub use gvm_proto::{Overrides, SetMode};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket (absent, or connection refused).
    #[error(
        "gvm-vgpud is not running (no daemon listening on {path}): start it with \
         `systemctl start gvm-vgpud`, or `gvm-vgpud --root DIR` for a simulated host"
    )]
    NotRunning {
        /// Socket path tried.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The socket exists but this user may not connect to it.
    #[error("permission denied on {path}: run as root or as a member of the daemon's --group")]
    Permission {
        /// Socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed mid-call (the daemon died or timed out).
    #[error("lost the connection to gvm-vgpud at {path} during '{method}'")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Method being called.
        method: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request would be a line longer than the daemon reads; nothing was sent.
    #[error(
        "the '{method}' request is {bytes} bytes long, over the {max}-byte limit of a \
         gvm-vgpud request line (MAX_LINE_BYTES): shorten its arguments"
    )]
    RequestTooLong {
        /// Method being called.
        method: &'static str,
        /// Length of the encoded request line, newline included.
        bytes: usize,
        /// [`MAX_LINE_BYTES`].
        max: usize,
    },
    /// The daemon answered with something that is not a response to this request.
    #[error("gvm-vgpud at {path} sent an unreadable answer to '{method}': {detail}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// Method being called.
        method: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The daemon refused or failed the request: shown as the daemon's message alone (it
    /// names the object and the fix); the method and code stay available to callers.
    #[error("{}", error.message)]
    Api {
        /// Method called.
        method: &'static str,
        /// The daemon's error (code + message).
        error: ApiError,
    },
}

impl Error {
    /// The daemon's error code, when the daemon answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, Error>;

/// A connection to gvm-vgpud. Calls are sequential; open several clients for
/// concurrency (the daemon serializes mutating calls itself).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

/// Default per-call timeout (a `set` on many owners completes well within it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// The socket path of the daemon serving `host` (`/run/gvm-vgpu/api.sock` under its root).
    pub fn default_socket(host: &HostRoot) -> PathBuf {
        host.path(gvm_proto::DEFAULT_SOCKET)
    }

    /// Connect to the daemon serving `host`.
    pub fn connect_host(host: &HostRoot) -> Result<Client> {
        Client::connect(Client::default_socket(host))
    }

    /// Connect to the socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref().to_path_buf();
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::Permission { path, source: e })
            }
            Err(e) => return Err(Error::NotRunning { path, source: e }),
        };
        let io = |source| Error::Io {
            path: path.clone(),
            method: "connect",
            source,
        };
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT)).map_err(io)?;
        stream
            .set_write_timeout(Some(DEFAULT_TIMEOUT))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Client {
            path,
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Change the per-call timeout (`None` waits forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            method: "set_timeout",
            source,
        };
        self.writer.set_read_timeout(timeout).map_err(io)?;
        self.writer.set_write_timeout(timeout).map_err(io)
    }

    /// Send any [`Call`] and decode its result as `T` (the typed helpers below use this).
    pub fn call<T: DeserializeOwned>(&mut self, call: Call) -> Result<T> {
        let method = call.method();
        let id = self.next_id;
        self.next_id += 1;
        let req = Request::new(id, call);
        let line = req
            .to_line()
            .map_err(|error| Error::Api { method, error })?;
        // The daemon reads at most MAX_LINE_BYTES, newline included.
        let bytes = line.len() + 1;
        if bytes > MAX_LINE_BYTES {
            return Err(Error::RequestTooLong {
                method,
                bytes,
                max: MAX_LINE_BYTES,
            });
        }
        if let Err(e) = self.send_raw(method, &line) {
            return Err(self.refusal(method, e));
        }
        let resp = self.read_response(method)?;
        // Id 0: the daemon could not read this request's id (too long, not UTF-8, not
        // JSON); calls are sequential, so its error is this call's.
        if resp.id == 0 {
            if let Some(error) = resp.error {
                return Err(Error::Api { method, error });
            }
        }
        if resp.id != id {
            return Err(Error::Protocol {
                path: self.path.clone(),
                method,
                detail: format!("answer for request {} while waiting for {id}", resp.id),
            });
        }
        resp.into_result()
            .map_err(|error| Error::Api { method, error })
    }

    /// Send one raw line (no newline) and return the raw response (tests, debugging).
    pub fn raw(&mut self, line: &str) -> Result<Response> {
        self.send_raw("raw", line)?;
        self.read_response("raw")
    }

    fn send_raw(&mut self, method: &'static str, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.writer.write_all(&buf).map_err(|source| Error::Io {
            path: self.path.clone(),
            method,
            source,
        })
    }

    /// After a failed send: the reason the daemon gave before closing the connection (an
    /// id-0 error, e.g. `busy`), else the send's own error. Read only when the peer has
    /// gone (a broken pipe): then the line, if there is one, is already here.
    fn refusal(&mut self, method: &'static str, sent: Error) -> Error {
        let gone = matches!(&sent, Error::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset));
        if !gone {
            return sent;
        }
        match self.read_response(method) {
            Ok(Response {
                id: 0,
                error: Some(error),
                ..
            }) => Error::Api { method, error },
            _ => sent,
        }
    }

    fn read_response(&mut self, method: &'static str) -> Result<Response> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 * 64)
            .read_line(&mut line)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                method,
                source,
            })?;
        if n == 0 {
            return Err(Error::Io {
                path: self.path.clone(),
                method,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                ),
            });
        }
        serde_json::from_str(line.trim_end()).map_err(|e| Error::Protocol {
            path: self.path.clone(),
            method,
            detail: e.to_string(),
        })
    }

    /// `ping`: version and liveness.
    pub fn ping(&mut self) -> Result<Pong> {
        self.call(Call::Ping)
    }

    /// `list` (`defined`: only vGPUs with a persistent definition).
    pub fn list(&mut self, defined: bool) -> Result<Vec<VgpuInfo>> {
        self.call(Call::List(ListParams { defined }))
    }

    /// `show <uuid|domain>`: effective knobs, their sources, owners.
    pub fn show(&mut self, target: &str) -> Result<VgpuDetail> {
        self.call(Call::Show(target_of(target)))
    }

    /// `define`: persist a definition.
    pub fn define(&mut self, params: DefineParams) -> Result<Definition> {
        self.call(Call::Define(params))
    }

    /// `define --from FILE`: persist many definitions and with `start` create them,
    /// all or nothing whatever their number: up to [`gvm_proto::MAX_BATCH`] in one call,
    /// more in parts ([`gvm_proto::BatchPart`]) that the daemon holds until the last
    /// stores the whole list (protocol 2; an older daemon is refused such a list rather
    /// than have it stored part by part). Items without a UUID get one here, so a list
    /// sent again after a lost answer is refused instead of defining twice. An error
    /// names the item by its index in `items`.
    pub fn define_batch(
        &mut self,
        mut items: Vec<DefineParams>,
        start: bool,
    ) -> Result<gvm_proto::BatchReport> {
        for item in &mut items {
            item.uuid.get_or_insert_with(uuid::Uuid::new_v4);
        }
        let method = "define_batch";
        if items.len() <= gvm_proto::MAX_BATCH {
            return self.call(Call::DefineBatch(gvm_proto::DefineBatchParams {
                items,
                start,
                part: None,
            }));
        }
        if items.len() > gvm_proto::MAX_BATCH_LIST {
            return Err(Error::Api {
                method,
                error: ApiError::invalid(format!(
                    "{} definitions in one list, at most {}: define them in several lists",
                    items.len(),
                    gvm_proto::MAX_BATCH_LIST
                )),
            });
        }
        let pong = self.ping()?;
        if pong.protocol < 2 {
            return Err(Error::Api {
                method,
                error: ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "gvm-vgpud {} (protocol {}) cannot store more than {} definitions \
                         all or nothing: upgrade it, or split the list",
                        pong.version,
                        pong.protocol,
                        gvm_proto::MAX_BATCH
                    ),
                ),
            });
        }
        let batch = uuid::Uuid::new_v4();
        let parts = items.len().div_ceil(gvm_proto::MAX_BATCH);
        let mut report = gvm_proto::BatchReport::default();
        for (k, chunk) in items.chunks(gvm_proto::MAX_BATCH).enumerate() {
            report = self.call(Call::DefineBatch(gvm_proto::DefineBatchParams {
                items: chunk.to_vec(),
                start,
                part: Some(gvm_proto::BatchPart {
                    batch,
                    offset: k * gvm_proto::MAX_BATCH,
                    more: k + 1 < parts,
                }),
            }))?;
        }
        Ok(report)
    }

    /// `undefine <uuid>`: drop the definition (a live device stays).
    pub fn undefine(&mut self, uuid: &str) -> Result<Definition> {
        self.call(Call::Undefine(target_of(uuid)))
    }

    /// `start <uuid>`: create the defined device.
    pub fn start(&mut self, uuid: &str) -> Result<VgpuInfo> {
        self.call(Call::Start(target_of(uuid)))
    }

    /// `stop <uuid>`: remove the live device (a definition stays).
    pub fn stop(&mut self, uuid: &str) -> Result<VgpuInfo> {
        self.call(Call::Stop(target_of(uuid)))
    }

    /// `create`: create a vGPU now (and define it when `params.define`).
    pub fn create(&mut self, params: CreateParams) -> Result<VgpuInfo> {
        self.call(Call::Create(params))
    }

    /// `set`: retune one vGPU or every vGPU of a domain.
    pub fn set(&mut self, params: SetParams) -> Result<Vec<VgpuDetail>> {
        self.call(Call::Set(params))
    }

    /// `set <target> --priority N` (live and persistent).
    pub fn set_priority(&mut self, target: &str, priority: u8) -> Result<Vec<VgpuDetail>> {
        self.set(SetParams {
            target: target.to_string(),
            priority: Some(priority),
            ..SetParams::default()
        })
    }

    /// `freeze <uuid|domain>`.
    pub fn freeze(&mut self, target: &str) -> Result<Vec<VgpuInfo>> {
        self.call(Call::Freeze(target_of(target)))
    }

    /// `thaw <uuid|domain>`.
    pub fn thaw(&mut self, target: &str) -> Result<Vec<VgpuInfo>> {
        self.call(Call::Thaw(target_of(target)))
    }

    /// `import-mdevctl [--dry-run] [--remove-source]`.
    pub fn import_mdevctl(&mut self, params: ImportParams) -> Result<ImportReport> {
        self.call(Call::ImportMdevctl(params))
    }

    /// `policy show` / `top`: every GPU's scheduler, with target and achieved shares.
    pub fn policy(&mut self) -> Result<gvm_proto::SchedStatus> {
        self.call(Call::PolicyGet)
    }

    /// `policy set NAME` on every GPU, with the default slice and window.
    pub fn set_policy(&mut self, policy: &str) -> Result<gvm_proto::SchedStatus> {
        self.set_policy_with(PolicyParams {
            policy: policy.to_string(),
            gpu: None,
            timeslice_us: None,
            window_ms: None,
        })
    }

    /// `policy set NAME [--gpu G] [--timeslice D] [--window D]`: switch live, persisted.
    pub fn set_policy_with(&mut self, params: PolicyParams) -> Result<gvm_proto::SchedStatus> {
        self.call(Call::PolicySet(params))
    }

    /// `stats [target]` / `top`: fresh per-vGPU totals.
    pub fn stats(&mut self, target: Option<&str>) -> Result<Vec<VgpuInfo>> {
        self.call(Call::Stats(StatsParams {
            target: target.map(str::to_string),
        }))
    }

    /// `guest_stats [target]` (`gvm-vgpu stats`): the guest agents' channels and the
    /// processes their guests report, for one vGPU UUID or domain, or all.
    pub fn guest_stats(&mut self, target: Option<&str>) -> Result<Vec<gvm_proto::GuestAgentInfo>> {
        self.call(Call::GuestStats(StatsParams {
            target: target.map(str::to_string),
        }))
    }

    /// `reconcile`: rescan now; what was adopted and corrected.
    pub fn reconcile(&mut self) -> Result<ReconcileReport> {
        self.call(Call::Reconcile)
    }
}

fn target_of(t: &str) -> Target {
    Target {
        target: t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_missing_socket_says_the_daemon_is_not_running() {
        let dir = std::env::temp_dir().join(format!("gvm-client-test-{}", std::process::id()));
        let err = Client::connect(dir.join("api.sock")).err();
        assert!(matches!(err, Some(Error::NotRunning { .. })), "{err:?}");
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("not running"), "{msg}");
    }

    #[test]
    fn calls_decode_results_and_errors_from_a_fake_daemon() {
        let dir = std::env::temp_dir().join(format!("gvm-client-fake-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let Ok(listener) = UnixListener::bind(&sock) else {
            println!("SKIP: cannot bind a Unix socket in {}", dir.display());
            return;
        };
        let server = std::thread::spawn(move || -> Option<()> {
            let (s, _) = listener.accept().ok()?;
            let mut r = BufReader::new(s.try_clone().ok()?);
            let mut w = s;
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).ok()?;
                let req = Request::parse_line(line.trim_end()).ok()?;
                let resp = match req.call {
                    Call::Ping => Response::ok(
                        req.id,
                        &Pong {
                            version: "t".into(),
                            protocol: 1,
                            root: "/".into(),
                            vgpus: 3,
                            catalog: None,
                            config: None,
                        },
                    ),
                    _ => Response::err(req.id, ApiError::not_found("no vGPU 'x'")),
                };
                let mut out = serde_json::to_string(&resp).ok()?;
                out.push('\n');
                w.write_all(out.as_bytes()).ok()?;
            }
            Some(())
        });
        let mut c = match Client::connect(&sock) {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        assert_eq!(c.ping().ok().map(|p| p.vgpus), Some(3));
        let err = c.show("x").err();
        assert_eq!(
            err.as_ref().and_then(Error::code),
            Some(ErrorCode::NotFound)
        );
        assert!(server.join().ok().flatten().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fake daemon on a fresh socket: `serve` gets each request line (newline
    /// stripped) and returns the response line to send; it stops at EOF. Returns the
    /// socket and the thread, which yields the lines it read.
    fn fake_daemon(
        name: &str,
        serve: fn(&str) -> String,
    ) -> Option<(PathBuf, std::thread::JoinHandle<Vec<String>>)> {
        let dir = std::env::temp_dir().join(format!("gvm-client-{name}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let Ok(listener) = UnixListener::bind(&sock) else {
            println!("SKIP: cannot bind a Unix socket in {}", dir.display());
            return None;
        };
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let Ok((s, _)) = listener.accept() else {
                return seen;
            };
            let Ok(r) = s.try_clone() else {
                return seen;
            };
            let mut r = BufReader::new(r);
            let mut w = s;
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => return seen,
                    Ok(_) => {}
                }
                let line = line.trim_end().to_string();
                let mut answer = serve(&line);
                answer.push('\n');
                seen.push(line);
                if w.write_all(answer.as_bytes()).is_err() {
                    return seen;
                }
            }
        });
        Some((sock, server))
    }

    fn pong(id: u64) -> String {
        let pong = Pong {
            version: "t".into(),
            protocol: 1,
            root: "/".into(),
            vgpus: 1,
            catalog: None,
            config: None,
        };
        serde_json::to_string(&Response::ok(id, &pong)).unwrap_or_default()
    }

    #[test]
    fn an_over_long_request_is_refused_before_sending_with_an_error_naming_the_limit() {
        let Some((sock, server)) = fake_daemon("long", |line| pong(id_of(line))) else {
            return;
        };
        let mut c = match Client::connect(&sock) {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        let err = c.show(&"a".repeat(100_000)).err();
        assert!(
            matches!(
                err,
                Some(Error::RequestTooLong { method: "show", bytes, max: MAX_LINE_BYTES })
                    if bytes > 100_000
            ),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&MAX_LINE_BYTES.to_string()), "{msg}");
        assert!(!msg.contains("answer for request"), "{msg}");
        // Nothing was sent: the connection is intact and the next call is the first line.
        assert_eq!(c.ping().ok().map(|p| p.vgpus), Some(1));
        drop(c);
        let seen = server.join().unwrap_or_default();
        assert_eq!(
            seen.len(),
            1,
            "{:?}",
            seen.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(seen[0].contains("\"ping\""), "{}", seen[0]);
        // The longest line the daemon reads, MAX_LINE_BYTES with its newline, is sent.
        let Some((sock, server)) = fake_daemon("fits", |line| {
            serde_json::to_string(&Response::err(id_of(line), ApiError::not_found("no vGPU")))
                .unwrap_or_default()
        }) else {
            return;
        };
        let mut c = match Client::connect(&sock) {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        let empty = Request::new(1, Call::Show(target_of("")))
            .to_line()
            .map_or(0, |l| l.len() + 1);
        let err = c.show(&"b".repeat(MAX_LINE_BYTES - empty)).err();
        assert_eq!(
            err.as_ref().and_then(Error::code),
            Some(ErrorCode::NotFound),
            "{err:?}"
        );
        drop(c);
        let seen = server.join().unwrap_or_default();
        assert_eq!(seen.first().map(|l| l.len() + 1), Some(MAX_LINE_BYTES));
    }

    /// The id of a request line, as the daemon reads it (0 when unreadable).
    fn id_of(line: &str) -> u64 {
        match Request::parse_line(line) {
            Ok(r) => r.id,
            Err((id, _)) => id,
        }
    }

    #[test]
    fn an_error_answer_with_id_0_is_reported_as_the_daemons_error_not_a_mix_up() {
        let Some((sock, server)) = fake_daemon("id0", |_| {
            serde_json::to_string(&Response::err(
                0,
                ApiError::invalid("request longer than 65536 bytes: closing the connection"),
            ))
            .unwrap_or_default()
        }) else {
            return;
        };
        let mut c = match Client::connect(&sock) {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        let err = c.show("x").err();
        assert_eq!(
            err.as_ref().and_then(Error::code),
            Some(ErrorCode::InvalidArgument),
            "{err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("longer than 65536 bytes"), "{msg}");
        drop(c);
        assert_eq!(server.join().map(|s| s.len()).unwrap_or(0), 1);
    }

    #[test]
    fn an_answer_for_another_request_is_still_a_protocol_error() {
        let Some((sock, _server)) = fake_daemon("mixup", |_| pong(7)) else {
            return;
        };
        let mut c = match Client::connect(&sock) {
            Ok(c) => c,
            Err(e) => panic!("connect: {e}"),
        };
        let err = c.ping().err();
        assert!(matches!(err, Some(Error::Protocol { .. })), "{err:?}");
    }

    #[test]
    fn a_busy_daemons_id_0_refusal_is_the_calls_error() {
        let dir = std::env::temp_dir().join(format!("gvm-client-busy-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let Ok(listener) = UnixListener::bind(&sock) else {
            println!("SKIP: cannot bind a Unix socket in {}", dir.display());
            return;
        };
        let busy = "{\"id\":0,\"error\":{\"code\":\"conflict\",\"message\":\"busy: full\"}}\n";
        // Refused before the request is sent (the send fails: the daemon has closed) and
        // after it (the answer's id is not the request's): both read as the daemon's error.
        let server = std::thread::spawn(move || -> Option<()> {
            let (mut s, _) = listener.accept().ok()?;
            s.write_all(busy.as_bytes()).ok()?;
            drop(s);
            let (s, _) = listener.accept().ok()?;
            let mut r = BufReader::new(s.try_clone().ok()?);
            r.read_line(&mut String::new()).ok()?;
            let mut w = s;
            w.write_all(busy.as_bytes()).ok()?;
            Some(())
        });
        let check = |r: Result<Pong>| match r {
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Conflict), "{e:?}");
                assert_eq!(e.to_string(), "busy: full");
            }
            Ok(p) => panic!("{p:?}"),
        };
        let mut early = Client::connect(&sock).ok();
        let mut late = Client::connect(&sock).ok();
        std::thread::sleep(Duration::from_millis(100));
        check(
            early
                .as_mut()
                .map_or_else(|| panic!("connect"), |c| c.ping()),
        );
        check(
            late.as_mut()
                .map_or_else(|| panic!("connect"), |c| c.ping()),
        );
        assert!(server.join().ok().flatten().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
