//! `gvm-vgpu` against a real `gvm-vgpud` on an empty host root, with the test playing QEMU
//! for the guest-agent channels (it binds `<root>/run/gvm-vgpu/agent/<uuid>.sock`; the
//! daemon connects to it) and, where it matters, an unprivileged operator.
//!
//! Asserted:
//! - a guest's bidi and zero-width characters reach the terminal escaped, never raw, and
//!   `--json` as the guest's exact string;
//! - a problem of an earlier agent connection is not shown once a new connection reports
//!   cleanly;
//! - an over-long argument is refused by the client naming the protocol's limit, not
//!   reported as a protocol mix-up;
//! - a socket the user may not open is reported as permission denied, not as a daemon
//!   that is not running.
//!
//! The daemon needs no simulated host. The permission test needs root (to run the CLI as
//! `nobody`) and prints `SKIP: <reason>` without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gvm_client::Client;
use gvm_testkit::{skip, workspace_bin};
use serde_json::Value;
use uuid::Uuid;

const CLI_BIN: &str = env!("CARGO_BIN_EXE_gvm-vgpu");

/// Environment a developer's shell may set that would point the programs elsewhere.
const ENV: [&str; 6] = [
    "GVM_VGPU_ROOT",
    "GVM_VGPU_CATALOG",
    "GVM_VGPUD_STATE_ROOT",
    "GVM_VGPUD_AGENT_LIMITS",
    "GVM_VGPUD_BACKEND",
    "RUST_LOG",
];

fn cli_command(root: &Path, args: &[&str]) -> Command {
    cli_command_of(Path::new(CLI_BIN), root, args)
}

/// [`cli_command`] running the CLI binary at `bin`.
fn cli_command_of(bin: &Path, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--root").arg(root).args(args);
    for v in ENV {
        c.env_remove(v);
    }
    c
}

fn cli(root: &Path, args: &[&str]) -> Output {
    cli_command(root, args).output().expect("run gvm-vgpu")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A `gvm-vgpud --root ROOT` on a fresh temporary root; dropping it stops the daemon.
struct Daemon {
    _dir: tempfile::TempDir,
    root: PathBuf,
    child: Child,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("host");
        std::fs::create_dir_all(root.join("run/gvm-vgpu/agent")).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut cmd = Command::new(workspace_bin("gvm-vgpud", "gvm-vgpud"));
        cmd.arg("--root")
            .arg(&root)
            .args(["--no-libvirt", "--no-uevents"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for v in ENV {
            cmd.env_remove(v);
        }
        let child = cmd.spawn().expect("start gvm-vgpud");
        let d = Daemon {
            _dir: dir,
            root,
            child,
        };
        let sock = d.socket();
        assert!(
            wait_until(Duration::from_secs(10), || Client::connect(&sock)
                .and_then(|mut c| c.ping())
                .is_ok()),
            "gvm-vgpud did not answer on {}",
            sock.display()
        );
        d
    }

    fn socket(&self) -> PathBuf {
        self.root.join("run/gvm-vgpu/api.sock")
    }

    /// Play QEMU for vGPU `uuid`'s agent channel: listen where the daemon looks.
    fn agent_channel(&self, uuid: &Uuid) -> UnixListener {
        UnixListener::bind(self.root.join(format!("run/gvm-vgpu/agent/{uuid}.sock"))).unwrap()
    }

    /// The channel of `uuid` once `ready` holds for it (panics after 10 s).
    fn guest_info(&self, uuid: &Uuid, ready: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(Duration::from_secs(10), || {
            let o = cli(&self.root, &["--json", "stats", &uuid.to_string()]);
            if let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) {
                last = v["channels"][0].clone();
            }
            ready(&last)
        });
        assert!(ok, "the channel never got there: {last:#}");
        last
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hello(os: &str, gpu: &str) -> String {
    serde_json::json!({
        "type": "hello", "v": 1, "agent": "0.1.0", "os": os, "kernel": "6.1",
        "collector": "proc", "gpus": [{"index": 0, "name": gpu}],
    })
    .to_string()
}

fn report(seq: u64, name: &str, cmdline: &str) -> String {
    serde_json::json!({
        "type": "report", "v": 1, "seq": seq, "ts_ms": seq, "gpus": [],
        "processes": [{"pid": 4242, "name": name, "cmdline": cmdline, "gpu": 0}],
    })
    .to_string()
}

fn send(s: &mut UnixStream, lines: &[String]) {
    for l in lines {
        writeln!(s, "{l}").unwrap();
    }
}

/// Characters that reorder or hide text; the daemon accepts them (they are not controls).
const SNEAKY: [char; 12] = [
    '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200B}', '\u{200C}', '\u{200D}',
    '\u{200E}', '\u{200F}', '\u{2028}', '\u{FEFF}',
];

#[test]
fn stats_text_escapes_a_guests_bidi_and_zero_width_characters_and_json_keeps_them() {
    let d = Daemon::start();
    let uuid = Uuid::new_v4();
    let listener = d.agent_channel(&uuid);
    let name = "evil\u{202E}gpj.exe";
    let sneaky: String = SNEAKY.iter().collect();
    let cmdline = format!("train{sneaky}.py");
    let os = "Debian\u{2029}12\u{2066}";
    let gpu = "G\u{200B}PU\u{FEFF}";
    let (mut s, _) = listener.accept().unwrap();
    send(&mut s, &[hello(os, gpu), report(1, name, &cmdline)]);
    let json = d.guest_info(&uuid, |i| !i["stats"]["last_report"].is_null());
    // JSON is the guest's exact string: serde escapes controls, not bidi or zero-width.
    assert_eq!(json["stats"]["last_report"]["processes"][0]["name"], name);
    assert_eq!(
        json["stats"]["last_report"]["processes"][0]["cmdline"],
        cmdline
    );
    assert_eq!(json["stats"]["hello"]["os"], os);

    let o = cli(&d.root, &["stats", &uuid.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let raw: Vec<char> = text
        .chars()
        .filter(|c| SNEAKY.contains(c) || *c == '\u{2029}')
        .collect();
    assert!(raw.is_empty(), "printed raw: {raw:?}\n{text}");
    assert!(text.contains("evil\\u{202e}gpj.exe"), "{text}");
    assert!(
        text.contains("train\\u{202e}\\u{2066}\\u{2067}\\u{2068}\\u{2069}\\u{200b}\\u{200c}\\u{200d}\\u{200e}\\u{200f}\\u{2028}\\u{feff}.py"),
        "{text}"
    );
    assert!(
        text.contains("on Debian\\u{2029}12\\u{2066} (kernel 6.1)"),
        "{text}"
    );
    assert!(text.contains("G\\u{200b}PU\\u{feff}"), "{text}");
}

#[test]
fn stats_drops_the_problem_of_an_earlier_connection_once_a_new_one_reports_cleanly() {
    let d = Daemon::start();
    let uuid = Uuid::new_v4();
    let listener = d.agent_channel(&uuid);

    // First connection: one broken line among good ones.
    let (mut s, _) = listener.accept().unwrap();
    send(
        &mut s,
        &[
            hello("Test", "G"),
            "{not json".to_string(),
            report(1, "first", ""),
        ],
    );
    let first = d.guest_info(&uuid, |i| {
        i["violations"] == 1 && i["stats"]["last_report"]["seq"] == 1
    });
    assert!(first["last_problem"].is_string(), "{first:#}");
    let text = stdout(&cli(&d.root, &["stats", &uuid.to_string()]));
    assert!(
        text.contains("problem:"),
        "the problem of this connection is shown:\n{text}"
    );

    // The guest reconnects (QEMU restarted the VM) and behaves.
    drop(s);
    let (mut s, _) = listener.accept().unwrap();
    send(&mut s, &[hello("Test", "G"), report(1, "second", "")]);
    let second = d.guest_info(&uuid, |i| {
        i["connections"] == 2 && i["stats"]["last_report"]["processes"][0]["name"] == "second"
    });
    assert!(
        second["last_problem"].is_null(),
        "stale problem kept: {second:#}"
    );
    assert_eq!(second["violations"], 1, "the counters keep the history");
    let text = stdout(&cli(&d.root, &["stats", &uuid.to_string()]));
    assert!(
        !text.contains("problem:"),
        "a stale problem is shown:\n{text}"
    );
    assert!(text.contains("1 violations"), "{text}");

    // A problem on the current connection is shown again.
    send(&mut s, &["{still not json".to_string()]);
    d.guest_info(&uuid, |i| {
        i["violations"] == 2 && i["last_problem"].is_string()
    });
}

#[test]
fn show_with_a_100000_character_argument_names_the_request_limit_not_a_protocol_mix_up() {
    let d = Daemon::start();
    let long = "a".repeat(100_000);
    let o = cli(&d.root, &["show", &long]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("answer for request"), "{err}");
    assert!(err.contains("65536-byte limit"), "{err}");
    assert!(
        err.len() < 1000,
        "the argument is not echoed: {} bytes",
        err.len()
    );
    // The daemon was never sent the request and still answers.
    let o = cli(&d.root, &["--json", "list", "--defined"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn an_unprivileged_user_is_told_permission_denied_not_that_the_daemon_is_not_running() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            "an_unprivileged_user_is_told_permission_denied",
            Some("needs root to run the CLI as nobody".into()),
        );
        return;
    }
    let d = Daemon::start();
    // Let `nobody` reach the socket (mode 0600, root's): the temporary directory is 0700.
    let mut dir = d.root.clone();
    while let Some(parent) = dir.parent() {
        if dir == std::env::temp_dir() || parent == Path::new("/") {
            break;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir = parent.to_path_buf();
    }
    let sock = d.socket();
    // `nobody` may not reach the build's binary (a checkout under /root, mode 0700).
    let bin = gvm_testkit::runnable_by_others(Path::new(CLI_BIN));
    let uuid = Uuid::new_v4().to_string();
    for args in [
        vec!["show", uuid.as_str()],
        vec!["list", "--defined"],
        vec!["stats"],
        vec!["status"],
        vec!["set", uuid.as_str(), "--priority", "3"],
    ] {
        let o = {
            use std::os::unix::process::CommandExt;
            cli_command_of(&bin, &d.root, &args)
                .uid(65534)
                .gid(65534)
                .output()
                .expect("run gvm-vgpu as nobody")
        };
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "permission denied on {}: run as root or as a member of the daemon's --group",
                sock.display()
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("not running"), "{args:?}: {err}");
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
}

/// The one JSON object a `--json` command printed on stdout (panics if it is not exactly one).
fn one_json_object(o: &Output) -> Value {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    });
    assert!(v.is_object(), "{v}");
    v
}

#[test]
fn every_failing_command_under_json_prints_one_error_object_and_exits_as_in_text_mode() {
    let d = Daemon::start();
    let unknown = Uuid::new_v4().to_string();
    let no_daemon = tempfile::tempdir().unwrap();
    let cases: Vec<(&Path, Vec<&str>, &str)> = vec![
        // The daemon refuses: its code comes along.
        (&d.root, vec!["show", &unknown], "no vGPU"),
        (&d.root, vec!["set", &unknown, "--priority", "3"], "no vGPU"),
        (&d.root, vec!["undefine", &unknown], "has no definition"),
        (&d.root, vec!["freeze", "no-such-domain"], "no-such-domain"),
        // The CLI refuses before asking.
        (&d.root, vec!["set", &unknown], "nothing to set"),
        // No daemon serves the root.
        (
            no_daemon.path(),
            vec!["list", "--defined"],
            "gvm-vgpud is not running",
        ),
        (no_daemon.path(), vec!["status"], "gvm-vgpud is not running"),
        (
            no_daemon.path(),
            vec!["policy", "show"],
            "gvm-vgpud is not running",
        ),
        (
            no_daemon.path(),
            vec!["top", "--once"],
            "gvm-vgpud is not running",
        ),
        // No host under the root.
        (no_daemon.path(), vec!["parents"], "has no sys/ tree"),
    ];
    for (root, args, want) in cases {
        let text = cli(root, &args);
        let mut all = vec!["--json"];
        all.extend_from_slice(&args);
        let o = cli(root, &all);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert_eq!(o.status.code(), text.status.code(), "{args:?}");
        assert!(
            text.stdout.is_empty(),
            "{args:?}: text mode prints errors on stderr only"
        );
        let v = one_json_object(&o);
        assert_eq!(v["schema"], gvm_proto::JSON_SCHEMA, "{args:?}: {v}");
        let error = &v["error"];
        let message = error["message"].as_str().unwrap_or_default();
        let causes: Vec<&str> = error["causes"]
            .as_array()
            .unwrap_or_else(|| panic!("{args:?}: no causes array: {v}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        // The object says what the text line says, split at its causes.
        let line = std::iter::once(message)
            .chain(causes.iter().copied())
            .collect::<Vec<_>>()
            .join(": ");
        assert!(line.contains(want), "{args:?}: {v}");
        assert!(
            stderr(&text).contains(&format!("gvm-vgpu: error: {line}")),
            "{args:?}: {line} vs {}",
            stderr(&text)
        );
        assert!(error.get("hint").is_some(), "{args:?}: {v}");
    }

    // The daemon's code, and a hint where the error knows its fix.
    let v = one_json_object(&cli(&d.root, &["--json", "show", &unknown]));
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    let v = one_json_object(&cli(no_daemon.path(), &["--json", "status"]));
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("systemctl start gvm-vgpud"),
        "{v}"
    );

    // A usage error: clap's exit status 2, and the same object.
    let o = cli(&d.root, &["--json", "set", &unknown, "--priority", "99"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v = one_json_object(&o);
    assert_eq!(v["schema"], gvm_proto::JSON_SCHEMA);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("99"),
        "{v}"
    );
    // Help is not a failure.
    let o = cli(&d.root, &["--json", "list", "--help"]);
    assert!(o.status.success());
    assert!(serde_json::from_slice::<Value>(&o.stdout).is_err());
}
