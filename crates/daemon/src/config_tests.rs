use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use super::*;

const FILE: &str = "/etc/gvm-vgpu/gvm-vgpud.toml";

fn defaults() -> Args {
    Args::try_parse_from(["gvm-vgpud"]).unwrap()
}

fn file(text: &str) -> Result<Args, ConfigError> {
    parse(Path::new(FILE), text)
}

/// The command line `argv` as main reads it: its settings and the ids it gave.
fn command_line(argv: &[&str]) -> (Args, BTreeSet<String>) {
    let m = Args::command()
        .try_get_matches_from(std::iter::once("gvm-vgpud").chain(argv.iter().copied()))
        .unwrap();
    (Args::from_arg_matches(&m).unwrap(), explicit_ids(&m))
}

#[test]
fn an_empty_file_is_the_defaults() {
    assert_eq!(file("").unwrap(), defaults());
    assert_eq!(file("# only comments\n\n").unwrap(), defaults());
}

#[test]
fn the_files_values_are_read_as_the_flags_would_be() {
    let a = file(
        "guest-ack-ms = 250\nrescan-ms = 50\ncatalog = [\"/a\", \"/b\"]\n\
         owner-uid = [\"alice\", 1001]\nno-uevents = true\nbackend = \"shim\"\n\
         metrics = \"127.0.0.1:9477\"\ngroup = 44\nlog-level = \"debug\"\n\
         nvml-library = \"/opt/nvml/libnvidia-ml.so.1\"\n",
    )
    .unwrap();
    assert_eq!(a.guest_ack_ms, 250);
    assert_eq!(a.rescan_ms, 50);
    assert_eq!(a.catalogs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    assert_eq!(a.owner_uids, vec!["alice".to_string(), "1001".to_string()]);
    assert!(a.no_uevents);
    assert_eq!(a.backend, crate::backends::BackendKind::Shim);
    assert_eq!(a.metrics, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(a.group.as_deref(), Some("44"));
    assert_eq!(a.log_level, "debug");
    assert_eq!(
        a.nvml_library,
        Some(PathBuf::from("/opt/nvml/libnvidia-ml.so.1"))
    );
    // What the file leaves out keeps its default.
    assert_eq!(a.slow_rescan_ms, defaults().slow_rescan_ms);
}

#[test]
fn an_unknown_key_names_the_file_the_key_and_the_known_ones() {
    let e = file("guest-ack-ms = 250\nguest-ack = 3\n").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(msg.starts_with(FILE), "{msg}");
    assert!(msg.contains("unknown field `guest-ack`"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert!(
        msg.contains("`guest-ack-ms`"),
        "the known keys are listed: {msg}"
    );
    // snake_case is not the file's spelling.
    let e = file("guest_ack_ms = 250\n").unwrap_err();
    assert!(
        e.to_string().contains("unknown field `guest_ack_ms`"),
        "{e}"
    );
}

#[test]
fn a_bad_value_is_refused_under_its_key_with_the_flags_reason() {
    let e = file("rescan-ms = 50\nguest-ack-ms = 0\n").unwrap_err();
    match &e {
        ConfigError::Value { key, reason, .. } => {
            assert_eq!(key, "guest-ack-ms");
            assert!(reason.contains("60000"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("gvm-vgpud --guest-ack-ms"), "{e}");
    for (text, key) in [
        ("backend = \"cuda\"", "backend"),
        ("api-max-connections = 3", "api-max-connections"),
        ("metrics = \"localhost\"", "metrics"),
    ] {
        match file(text) {
            Err(ConfigError::Value { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{text}: {other:?}"),
        }
    }
    // A value of the wrong type: serde names the key's line.
    let e = file("rescan-ms = \"fast\"\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn where_the_file_is_cannot_be_set_in_it() {
    for key in ["root", "state-root", "config"] {
        match file(&format!("{key} = \"/x\"\n")) {
            Err(ConfigError::CommandLineOnly { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn settings_that_exclude_each_other_are_refused_together() {
    let e = file("libvirt = \"qemu:///system\"\nno-libvirt = true\n").unwrap_err();
    assert!(matches!(e, ConfigError::Conflict { .. }), "{e:?}");
    assert!(e.to_string().contains("--no-libvirt"), "{e}");
}

#[test]
fn the_command_line_overrides_the_file_setting_by_setting() {
    let from_file = file("guest-ack-ms = 250\nrescan-ms = 50\nno-libvirt = true\n").unwrap();
    let (cmdline, explicit) =
        command_line(&["--guest-ack-ms", "300", "--libvirt", "test:///default"]);
    let a = merged(&cmdline, &explicit, &from_file);
    assert_eq!(a.guest_ack_ms, 300);
    assert_eq!(a.rescan_ms, 50);
    assert_eq!(
        (a.libvirt.as_deref(), a.no_libvirt),
        (Some("test:///default"), false)
    );
    // A flag left at its default does not hide the file's value.
    let (cmdline, explicit) = command_line(&[]);
    let a = merged(&cmdline, &explicit, &from_file);
    assert_eq!((a.guest_ack_ms, a.rescan_ms, a.no_libvirt), (250, 50, true));
    // Where the file is comes from the command line only.
    let (cmdline, explicit) = command_line(&["--root", "/srv/host"]);
    assert_eq!(
        merged(&cmdline, &explicit, &from_file).root,
        PathBuf::from("/srv/host")
    );
}

#[test]
fn changes_say_which_settings_a_running_daemon_takes() {
    let old = defaults();
    let new = file(
        "guest-ack-ms = 250\nsocket = \"/run/other.sock\"\nverify-s = 5\nlog-level = \"warn\"\n",
    )
    .unwrap();
    let c = changes(&old, &new);
    assert_eq!(
        c,
        vec![
            Setting {
                key: "socket",
                live: false
            },
            Setting {
                key: "verify-s",
                live: true
            },
            Setting {
                key: "guest-ack-ms",
                live: true
            },
            Setting {
                key: "log-level",
                live: true
            },
        ]
    );
    let applied = live_part(&old, &new);
    assert_eq!(applied.socket, None, "the socket needs a restart");
    assert_eq!((applied.guest_ack_ms, applied.verify_s), (250, 5));
    assert_eq!(
        changes(&applied, &new),
        vec![Setting {
            key: "socket",
            live: false
        }]
    );
    assert!(changes(&new, &new).is_empty());
}

#[test]
fn a_missing_default_file_is_the_defaults_but_a_named_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = HostRoot::new(dir.path());
    let default = ConfigFile::new(None, &state);
    assert_eq!(
        default.path(),
        dir.path().join("etc/gvm-vgpu/gvm-vgpud.toml")
    );
    assert_eq!(default.read().unwrap(), defaults());
    let named = ConfigFile::new(Some(&dir.path().join("nope.toml")), &state);
    let e = named.read().unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.toml"), "{e}");
    std::fs::write(dir.path().join("nope.toml"), "verify-s = 7\n").unwrap();
    assert_eq!(named.read().unwrap().verify_s, 7);
}
