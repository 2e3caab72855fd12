//! The daemon's config file, `/etc/gvm-vgpu/gvm-vgpud.toml`: every command-line setting in a
//! file, the command line over it, and `SIGHUP` reading it again.
//!
//! The file's keys are the long flags' names without the dashes in front (`guest-ack-ms = 250`
//! for `--guest-ack-ms 250`; the repeatable `--catalog` and `--owner-uid` take a list). Each
//! value goes through the same parser as the flag ([`crate::cli::Args`]), so the file accepts
//! exactly what the command line does. What wins, per setting: the command line, then the
//! flag's environment variable, then the file, then the built-in default ([`merged`]).
//! `--root`, `--state-root` and `--config` say where the file is and are command line only.
//!
//! On `SIGHUP` the [`Reloader`] reads the file again, whole, before the catalog: a file that
//! does not parse changes nothing; otherwise the settings the daemon can change while running
//! ([`Setting::live`]: periods, the guest acknowledgement deadline, the users that may claim
//! vGPUs, the log filter, the catalog directories) take effect, and every other changed one is
//! logged as needing a restart and keeps its value ([`changes`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Parser};
use gvm_host_root::HostRoot;
use serde::Deserialize;
use tracing::{info, warn};

use crate::cli::Args;
use crate::daemon::{Daemon, Timing};

/// Where the config file is, under the state root, unless `--config` names another.
pub const CONFIG_FILE: &str = "/etc/gvm-vgpu/gvm-vgpud.toml";

/// The config file could not be used; each message names the file and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or `--config` named it) but cannot be read.
    #[error("cannot read the config file {}: check --config and the file's permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (the message has line and
    /// column).
    #[error("{}: {message}\nfix the key named here (the keys are gvm-vgpud's long flags, see `gvm-vgpud --help` and docs/daemon.md, \"Config file\")", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// TOML's or serde's message.
        message: String,
    },
    /// A value the flag of the same name does not take.
    #[error("{}: `{key}`: {reason}: give a value that `gvm-vgpud --{key}` takes", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The flag parser's reason.
        reason: String,
    },
    /// A key that only the command line can set.
    #[error("{}: `{key}` says where this file is, so it can only be given on the command line: remove it from the file", path.display())]
    CommandLineOnly {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
    /// Two settings that exclude each other.
    #[error("{}: {reason}: keep one of the two keys", path.display())]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The flag parser's reason.
        reason: String,
    },
}

/// A uid, gid, user or group name, as the file may give it (`1001` or `"alice"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum IdSpec {
    Number(u32),
    Name(String),
}

impl IdSpec {
    fn arg(&self) -> String {
        match self {
            IdSpec::Number(n) => n.to_string(),
            IdSpec::Name(s) => s.clone(),
        }
    }
}

/// The file's keys, as written (each one a flag of [`Args`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    socket: Option<PathBuf>,
    group: Option<IdSpec>,
    metrics: Option<String>,
    catalog: Option<Vec<PathBuf>>,
    rescan_ms: Option<u64>,
    slow_rescan_ms: Option<u64>,
    verify_s: Option<u64>,
    backend: Option<String>,
    shim_socket: Option<String>,
    no_uevents: Option<bool>,
    libvirt: Option<String>,
    no_libvirt: Option<bool>,
    agent_limits: Option<String>,
    guest_ack_ms: Option<u64>,
    owner_uid: Option<Vec<IdSpec>>,
    api_idle_s: Option<u64>,
    api_max_connections: Option<u64>,
    log_level: Option<String>,
    nvml_library: Option<PathBuf>,
}

impl FileSettings {
    /// Each key given, with the command-line arguments that say the same.
    fn as_flags(&self) -> Vec<(&'static str, Vec<String>)> {
        fn one(key: &'static str, value: impl ToString) -> (&'static str, Vec<String>) {
            (key, vec![format!("--{key}={}", value.to_string())])
        }
        fn path(p: &Path) -> String {
            p.display().to_string()
        }
        let mut out = Vec::new();
        if let Some(v) = &self.socket {
            out.push(one("socket", path(v)));
        }
        if let Some(v) = &self.group {
            out.push(one("group", v.arg()));
        }
        if let Some(v) = &self.metrics {
            out.push(one("metrics", v));
        }
        if let Some(v) = &self.catalog {
            let args = v.iter().map(|p| format!("--catalog={}", path(p)));
            out.push(("catalog", args.collect()));
        }
        for (key, v) in [
            ("rescan-ms", self.rescan_ms),
            ("slow-rescan-ms", self.slow_rescan_ms),
            ("verify-s", self.verify_s),
            ("guest-ack-ms", self.guest_ack_ms),
            ("api-idle-s", self.api_idle_s),
            ("api-max-connections", self.api_max_connections),
        ] {
            if let Some(v) = v {
                out.push(one(key, v));
            }
        }
        for (key, v) in [
            ("backend", &self.backend),
            ("shim-socket", &self.shim_socket),
            ("libvirt", &self.libvirt),
            ("agent-limits", &self.agent_limits),
            ("log-level", &self.log_level),
        ] {
            if let Some(v) = v {
                out.push(one(key, v));
            }
        }
        for (key, v) in [
            ("no-uevents", self.no_uevents),
            ("no-libvirt", self.no_libvirt),
        ] {
            if let Some(v) = v {
                out.push((key, if v { vec![format!("--{key}")] } else { vec![] }));
            }
        }
        if let Some(v) = &self.nvml_library {
            out.push(one("nvml-library", path(v)));
        }
        if let Some(v) = &self.owner_uid {
            let args = v.iter().map(|u| format!("--owner-uid={}", u.arg()));
            out.push(("owner-uid", args.collect()));
        }
        out
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The settings of the config file text `text` (read from `path`, for messages), over the
/// built-in defaults. Pure but for the environment variables of [`Args`]' flags, which the
/// caller gives precedence anyway ([`merged`]).
pub fn parse(path: &Path, text: &str) -> Result<Args, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    };
    let table: toml::Table = toml::from_str(text).map_err(syntax)?;
    for key in ["root", "state-root", "config"] {
        if table.contains_key(key) {
            return Err(ConfigError::CommandLineOnly {
                path: path.to_path_buf(),
                key,
            });
        }
    }
    // From the text again, not the table: serde's messages then carry the line and column.
    let file: FileSettings = toml::from_str(text).map_err(syntax)?;
    let flags = file.as_flags();
    // Each key alone first, so that a bad value is reported under its own key.
    for (key, args) in &flags {
        if let Err(e) =
            Args::try_parse_from(std::iter::once("gvm-vgpud".to_string()).chain(args.clone()))
        {
            return Err(ConfigError::Value {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason: clap_reason(&e),
            });
        }
    }
    let all = flags.into_iter().flat_map(|(_, args)| args);
    Args::try_parse_from(std::iter::once("gvm-vgpud".to_string()).chain(all)).map_err(|e| {
        ConfigError::Conflict {
            path: path.to_path_buf(),
            reason: clap_reason(&e),
        }
    })
}

/// The ids (field names of [`Args`]) that the command line or an environment variable gave.
pub fn explicit_ids(matches: &ArgMatches) -> BTreeSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.to_string())
        .collect()
}

/// The settings in effect: each one `explicit` names from `cmdline`, the others from `file`
/// (the file's value, or the default where it has none). `--root`, `--state-root` and
/// `--config` always come from `cmdline`; `--libvirt` and `--no-libvirt` go together (one
/// given on the command line overrides both of the file's).
pub fn merged(cmdline: &Args, explicit: &BTreeSet<String>, file: &Args) -> Args {
    let mut out = file.clone();
    out.root.clone_from(&cmdline.root);
    out.state_root.clone_from(&cmdline.state_root);
    out.config.clone_from(&cmdline.config);
    macro_rules! from_cmdline {
        ($($field:ident),* $(,)?) => {
            $(if explicit.contains(stringify!($field)) {
                out.$field = cmdline.$field.clone();
            })*
        };
    }
    from_cmdline!(
        socket,
        group,
        metrics,
        catalogs,
        rescan_ms,
        slow_rescan_ms,
        verify_s,
        backend,
        shim_socket,
        no_uevents,
        agent_limits,
        guest_ack_ms,
        owner_uids,
        api_idle_s,
        api_max_connections,
        log_level,
        nvml_library,
    );
    if explicit.contains("libvirt") || explicit.contains("no_libvirt") {
        out.libvirt.clone_from(&cmdline.libvirt);
        out.no_libvirt = cmdline.no_libvirt;
    }
    out
}

/// One setting that differs between two [`Args`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Its key in the file (the flag's name).
    pub key: &'static str,
    /// Whether a running daemon takes the new value (else: on the next start).
    pub live: bool,
}

/// The settings whose value differs from `old` to `new`, in the file's key order.
pub fn changes(old: &Args, new: &Args) -> Vec<Setting> {
    let mut out = Vec::new();
    macro_rules! compare {
        ($($field:ident => $key:literal, $live:literal;)*) => {
            $(if old.$field != new.$field {
                out.push(Setting { key: $key, live: $live });
            })*
        };
    }
    compare!(
        root => "root", false;
        state_root => "state-root", false;
        socket => "socket", false;
        group => "group", false;
        metrics => "metrics", false;
        catalogs => "catalog", true;
        rescan_ms => "rescan-ms", true;
        slow_rescan_ms => "slow-rescan-ms", true;
        verify_s => "verify-s", true;
        backend => "backend", false;
        shim_socket => "shim-socket", false;
        no_uevents => "no-uevents", false;
        libvirt => "libvirt", false;
        no_libvirt => "no-libvirt", false;
        agent_limits => "agent-limits", false;
        guest_ack_ms => "guest-ack-ms", true;
        owner_uids => "owner-uid", true;
        api_idle_s => "api-idle-s", false;
        api_max_connections => "api-max-connections", false;
        log_level => "log-level", true;
        nvml_library => "nvml-library", false;
    );
    out
}

/// `new` with every setting a running daemon cannot change put back to its value in `old`.
fn live_part(old: &Args, new: &Args) -> Args {
    let mut out = old.clone();
    out.catalogs.clone_from(&new.catalogs);
    out.rescan_ms = new.rescan_ms;
    out.slow_rescan_ms = new.slow_rescan_ms;
    out.verify_s = new.verify_s;
    out.guest_ack_ms = new.guest_ack_ms;
    out.owner_uids.clone_from(&new.owner_uids);
    out.log_level.clone_from(&new.log_level);
    out
}

/// Where the config file is and whether it must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    path: PathBuf,
    /// Named by `--config`: a missing file is an error, not the defaults.
    required: bool,
}

impl ConfigFile {
    /// `--config PATH` when given, else [`CONFIG_FILE`] under the state root `state`.
    pub fn new(flag: Option<&Path>, state: &HostRoot) -> ConfigFile {
        match flag {
            Some(p) => ConfigFile {
                path: p.to_path_buf(),
                required: true,
            },
            None => ConfigFile {
                path: state.path(CONFIG_FILE),
                required: false,
            },
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's settings over the defaults; the defaults alone when the default file does
    /// not exist.
    pub fn read(&self) -> Result<Args, ConfigError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        parse(&self.path, &text)
    }

    /// Whether the file exists now.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }
}

/// A uid for `spec` (a number, or a user of the host's `/etc/passwd`), for `owner-uid`.
pub fn user_id(host: &HostRoot, spec: &str) -> anyhow::Result<u32> {
    use anyhow::Context;
    if let Ok(uid) = spec.parse() {
        return Ok(uid);
    }
    let path = host.path("/etc/passwd");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} to look up owner-uid {spec}", path.display()))?;
    crate::owners::id_in_db(&text, spec).with_context(|| {
        format!(
            "owner-uid {spec}: no such user in {}: give a uid or a user name",
            path.display()
        )
    })
}

/// The users of `owner-uid` beside the defaults, looked up on `host`.
pub fn claim_policy(
    host: &HostRoot,
    specs: &[String],
) -> anyhow::Result<crate::owners::ClaimPolicy> {
    let uids = specs
        .iter()
        .map(|u| user_id(host, u))
        .collect::<anyhow::Result<Vec<u32>>>()?;
    Ok(crate::owners::ClaimPolicy::default_for(host, crate::owners::own_uid()).with(uids))
}

/// The rescan loop's timing of `args`.
pub fn timing(args: &Args) -> Timing {
    Timing {
        slow_rescan: Duration::from_millis(args.slow_rescan_ms.max(10)),
        verify: Duration::from_secs(args.verify_s.max(1)),
    }
}

/// The fast rescan period of `args`.
pub fn rescan_period(args: &Args) -> Duration {
    Duration::from_millis(args.rescan_ms.max(10))
}

/// The catalog directories of `args` on `host`: `catalog`'s, then the host's own.
pub fn catalog_source(args: &Args, host: &HostRoot) -> crate::catalog::CatalogSource {
    let mut dirs = args.catalogs.clone();
    dirs.extend(gvm_catalog::Catalog::default_dirs(host));
    crate::catalog::CatalogSource::new(dirs)
}

/// Changes the log filter of the running daemon (the tracing subscriber's reload handle).
pub type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Reads the config file again on `SIGHUP` and applies what a running daemon can change.
#[derive(Debug)]
pub struct Reloader {
    file: ConfigFile,
    host: HostRoot,
    cmdline: Args,
    explicit: BTreeSet<String>,
    current: Args,
    rescan: crate::server::RescanPeriod,
    log: Option<LogFilter>,
    /// What `ping` reports of the file and its last reload.
    status: gvm_proto::ConfigStatus,
}

impl Reloader {
    /// A reloader for a daemon started with `current` (from `file` and `cmdline`, whose
    /// `explicit` settings keep overriding the file), whose fast rescan runs at `rescan`.
    pub fn new(
        file: ConfigFile,
        host: HostRoot,
        cmdline: Args,
        explicit: BTreeSet<String>,
        current: Args,
        rescan: crate::server::RescanPeriod,
        log: Option<LogFilter>,
    ) -> Reloader {
        let status = gvm_proto::ConfigStatus {
            file: file.path().display().to_string(),
            exists: file.exists(),
            reloads: 0,
            last_reload: None,
        };
        Reloader {
            file,
            host,
            cmdline,
            explicit,
            current,
            rescan,
            log,
            status,
        }
    }

    /// The file and what its last reload did, for `ping` (`Daemon::set_config_status`).
    pub fn status(&self) -> gvm_proto::ConfigStatus {
        self.status.clone()
    }

    /// Read the file again and apply it: everything it changes that can change live, or,
    /// when the file or one of those values is bad, nothing (the error says why).
    fn reload_file(
        &mut self,
        daemon: &Mutex<Daemon>,
    ) -> Result<gvm_proto::ConfigReload, anyhow::Error> {
        let file = self.file.read()?;
        let wanted = merged(&self.cmdline, &self.explicit, &file);
        let changed = changes(&self.current, &wanted);
        let applied = live_part(&self.current, &wanted);
        // Everything that can fail is done before anything changes.
        let claims = changed
            .iter()
            .any(|s| s.key == "owner-uid")
            .then(|| claim_policy(&self.host, &applied.owner_uids))
            .transpose()?;
        let filter = changed
            .iter()
            .any(|s| s.key == "log-level")
            .then(|| tracing_subscriber::EnvFilter::try_new(&applied.log_level))
            .transpose()
            .map_err(|e| anyhow::anyhow!("log-level {}: {e}", applied.log_level))?;

        for s in changed.iter().filter(|s| !s.live) {
            warn!(
                key = s.key,
                file = %self.file.path().display(),
                "config reload: `{}` changed: it needs a restart (systemctl restart gvm-vgpud); the value in use stays",
                s.key
            );
        }
        let live: Vec<&str> = changed.iter().filter(|s| s.live).map(|s| s.key).collect();
        {
            let mut d = daemon.lock().unwrap_or_else(PoisonError::into_inner);
            d.set_guest_ack_deadline(Duration::from_millis(applied.guest_ack_ms));
            d.set_timing(timing(&applied));
            if let Some(claims) = claims {
                d.set_claim_policy(claims);
            }
        }
        self.rescan.set(rescan_period(&applied));
        if let (Some(filter), Some(handle)) = (filter, &self.log) {
            if let Err(e) = handle.reload(filter) {
                warn!("config reload: cannot change the log filter: {e}");
            }
        }
        info!(
            file = %self.file.path().display(),
            applied = ?live,
            guest_ack_ms = applied.guest_ack_ms,
            rescan_ms = applied.rescan_ms,
            slow_rescan_ms = applied.slow_rescan_ms,
            verify_s = applied.verify_s,
            log_level = %applied.log_level,
            "config reloaded"
        );
        self.current = applied;
        Ok(gvm_proto::ConfigReload {
            at: 0,
            applied: live.iter().map(|k| k.to_string()).collect(),
            need_restart: changed
                .iter()
                .filter(|s| !s.live)
                .map(|s| s.key.to_string())
                .collect(),
            error: None,
        })
    }
}

impl crate::server::ReloadSettings for Reloader {
    fn reload(&mut self, daemon: &Mutex<Daemon>) -> crate::catalog::CatalogSource {
        info!(file = %self.file.path().display(), "SIGHUP: reading the config file again");
        let mut done = match self.reload_file(daemon) {
            Ok(done) => {
                self.status.reloads += 1;
                done
            }
            Err(e) => {
                let why = gvm_error_chain::error_chain(e.as_ref());
                warn!("config reload refused, the settings in use stay: {why}");
                gvm_proto::ConfigReload {
                    error: Some(why),
                    ..Default::default()
                }
            }
        };
        done.at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.status.exists = self.file.exists();
        self.status.last_reload = Some(done);
        daemon
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_config_status(self.status.clone());
        catalog_source(&self.current, &self.host)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
