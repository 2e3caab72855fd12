//! Tests of parsing, validation, catalog-wide checks and lookup.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use crate::parse::pos_at;
use crate::*;

/// A one-model file whose single `[[type]]` table starts on line 5 and whose body starts on line 6.
fn file_with(type_body: &str) -> String {
    format!("[gpu]\nmodel = \"M\"\nframebuffer = \"8GiB\"\n\n[[type]]\n{type_body}")
}

/// The body of a valid type, lines 6..=11: name, mdev_type, memory_limit, priority, max_instances,
/// host_swap.
const BODY: &str = "name = \"a\"\nmdev_type = \"x-1\"\nmemory_limit = \"1GiB\"\npriority = 8\nmax_instances = 4\nhost_swap = false\n";

/// Parse `text` as `t.toml`, expecting an error; returns (line, column, field, message).
fn fail(text: &str) -> (usize, usize, String, String) {
    let e = Catalog::parse_str(Path::new("t.toml"), text).unwrap_err();
    let (file, line, column, field) = e.location().unwrap_or_else(|| panic!("no location in {e}"));
    assert_eq!(file, Path::new("t.toml"));
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("t.toml:{line}:{column}: ")),
        "{message}"
    );
    (line, column, field.to_string(), message)
}

fn assert_fails(text: &str, line: usize, column: usize, field: &str, needle: &str) {
    let (l, c, f, m) = fail(text);
    assert_eq!((l, c, f.as_str()), (line, column, field), "{m}");
    assert!(
        m.contains(needle),
        "message {m:?} should contain {needle:?}"
    );
}

#[test]
fn the_base_file_is_valid() {
    let m = Catalog::parse_str(Path::new("t.toml"), &file_with(BODY)).unwrap();
    assert_eq!(m.model, "M");
    assert_eq!(m.framebuffer, Some(ByteSize::gib(8)));
    assert!(!m.example);
    assert_eq!(m.source, PathBuf::from("t.toml"));
    let t = &m.types[0];
    assert_eq!(t.binding, Binding::TypeId("x-1".into()));
    assert_eq!(
        (t.priority, t.max_instances, t.host_swap, t.share),
        (8, 4, false, None)
    );
    assert_eq!(t.model, "M");
    assert!((t.effective_share() - 0.25).abs() < 1e-12);
}

#[test]
fn positions_count_characters_from_one() {
    assert_eq!(
        pos_at("ab\ncé x", 7),
        crate::parse::Pos { line: 2, column: 4 }
    );
    assert_eq!(pos_at("", 0), crate::parse::Pos { line: 1, column: 1 });
}

#[test]
fn syntax_errors_have_a_position_and_field() {
    let text = file_with(&BODY.replace("priority = 8", "priority = "));
    assert_fails(&text, 9, 12, "type[0].priority", "invalid");
}

#[test]
fn out_of_range_and_mistyped_values() {
    assert_fails(
        &file_with(&BODY.replace("priority = 8", "priority = 17")),
        9,
        12,
        "type[0].priority",
        "0..=16",
    );
    assert_fails(
        &file_with(&BODY.replace("priority = 8", "priority = -1")),
        9,
        12,
        "type[0].priority",
        "0..=16",
    );
    assert_fails(
        &file_with(&BODY.replace("priority = 8", "priority = \"high\"")),
        9,
        12,
        "type[0].priority",
        "string",
    );
    assert_fails(
        &file_with(&BODY.replace("max_instances = 4", "max_instances = 0")),
        10,
        17,
        "type[0].max_instances",
        "out of range",
    );
    assert_fails(
        &file_with(&BODY.replace("host_swap = false", "host_swap = \"no\"")),
        11,
        13,
        "type[0].host_swap",
        "true or false",
    );
}

#[test]
fn share_must_be_a_fraction_that_does_not_oversubscribe() {
    assert_fails(
        &file_with(&format!("{BODY}share = 0\n")),
        12,
        9,
        "type[0].share",
        "(0, 1]",
    );
    assert_fails(
        &file_with(&format!("{BODY}share = 1.5\n")),
        12,
        9,
        "type[0].share",
        "(0, 1]",
    );
    assert_fails(
        &file_with(&format!("{BODY}share = 0.3\n")),
        12,
        9,
        "type[0].share",
        "whole GPU",
    );
    // exactly 1/max_instances is fine, and an integer 1 is a number
    let ok = Catalog::parse_str(
        Path::new("t.toml"),
        &file_with(&format!("{BODY}share = 0.25\n")),
    )
    .unwrap();
    assert_eq!(ok.types[0].share, Some(0.25));
    let one = file_with(&format!(
        "{}share = 1\n",
        BODY.replace("max_instances = 4", "max_instances = 1")
    ));
    assert_eq!(
        Catalog::parse_str(Path::new("t.toml"), &one).unwrap().types[0].share,
        Some(1.0)
    );
}

#[test]
fn memory_limit_must_be_positive_and_fit_the_framebuffer() {
    let with = |v: &str| {
        file_with(&BODY.replace("memory_limit = \"1GiB\"", &format!("memory_limit = {v}")))
    };
    assert_fails(
        &with("\"9GiB\""),
        8,
        16,
        "type[0].memory_limit",
        "framebuffer of 8GiB",
    );
    assert_fails(&with("\"0\""), 8, 16, "type[0].memory_limit", "more than 0");
    assert_fails(&with("\"1 XB\""), 8, 16, "type[0].memory_limit", "GiB");
    assert_fails(
        &with("\"unlimited\""),
        8,
        16,
        "type[0].memory_limit",
        "'unlimited'",
    );
    assert_fails(&with("true"), 8, 16, "type[0].memory_limit", "boolean");
    let exact = Catalog::parse_str(Path::new("t.toml"), &with("\"8GiB\"")).unwrap();
    assert_eq!(exact.types[0].memory_limit, ByteSize::gib(8));
    let fb0 = file_with(BODY).replace("framebuffer = \"8GiB\"", "framebuffer = \"0\"");
    assert_fails(&fb0, 3, 15, "gpu.framebuffer", "cannot be 0");
}

#[test]
fn exactly_one_binding() {
    assert_fails(
        &file_with(&format!("{BODY}mdev_name = \"N\"\n")),
        12,
        13,
        "type[0].mdev_name",
        "exactly one",
    );
    let none = file_with(&BODY.replace("mdev_type = \"x-1\"\n", ""));
    assert_fails(&none, 5, 1, "type[0].mdev_type", "no binding");
    let by_name = file_with(&BODY.replace("mdev_type = \"x-1\"", "mdev_name = \"NVIDIA X\""));
    let m = Catalog::parse_str(Path::new("t.toml"), &by_name).unwrap();
    assert_eq!(m.types[0].binding, Binding::TypeName("NVIDIA X".into()));
}

#[test]
fn missing_unknown_and_empty_fields() {
    assert_fails(
        &file_with(&BODY.replace("host_swap = false\n", "")),
        5,
        1,
        "type[0].host_swap",
        "missing field",
    );
    assert_fails(
        &file_with(&format!("{BODY}colour = \"red\"\n")),
        12,
        1,
        "type[0].colour",
        "unknown field",
    );
    assert_fails(
        &file_with(BODY).replace("model = \"M\"", "model = \"\""),
        2,
        9,
        "gpu.model",
        "empty",
    );
    assert_fails(
        &file_with(BODY).replace("model = \"M\"\n", ""),
        1,
        1,
        "gpu.model",
        "missing field",
    );
    assert_fails(&format!("[[type]]\n{BODY}"), 1, 1, "gpu", "[gpu]");
    assert_fails(
        &format!("{}\n[extra]\nx = 1\n", file_with(BODY)),
        13,
        2,
        "extra",
        "unknown field",
    );
    assert_fails(
        &file_with(&BODY.replace("name = \"a\"", "name = \"a b\"")),
        6,
        8,
        "type[0].name",
        "letters",
    );
}

#[test]
fn over_long_names_and_bindings_are_refused_naming_the_limit() {
    let long = "n".repeat(10_000);
    let (_, _, field, m) = fail(&file_with(
        &BODY.replace("name = \"a\"", &format!("name = \"{long}\"")),
    ));
    assert_eq!(field, "type[0].name");
    assert!(m.contains("at most 64") && m.len() < 300, "{m}");
    let (_, _, field, m) = fail(&file_with(
        &BODY.replace("mdev_type = \"x-1\"", &format!("mdev_type = \"{long}\"")),
    ));
    assert_eq!(field, "type[0].mdev_type");
    assert!(m.contains("at most 255"), "{m}");
    let (_, _, field, _) =
        fail(&file_with(BODY).replace("model = \"M\"", &format!("model = \"{long}\"")));
    assert_eq!(field, "gpu.model");
    let ok = "n".repeat(64);
    assert!(Catalog::parse_str(
        Path::new("t.toml"),
        &file_with(&BODY.replace("name = \"a\"", &format!("name = \"{ok}\"")))
    )
    .is_ok());
}

#[test]
fn duplicates_within_a_file_name_the_second() {
    let second = BODY.replace("x-1", "x-2");
    let (l, c, f, m) = fail(&file_with(&format!("{BODY}\n[[type]]\n{second}")));
    assert_eq!((l, c, f.as_str()), (14, 8, "type[1].name"));
    assert!(m.contains("line 6"), "{m}");
    let same_binding = BODY.replace("name = \"a\"", "name = \"b\"");
    let (l, c, f, m) = fail(&file_with(&format!("{BODY}\n[[type]]\n{same_binding}")));
    assert_eq!((l, c, f.as_str()), (15, 13, "type[1].mdev_type"));
    assert!(m.contains("type id x-1") && m.contains("line 7"), "{m}");
}

fn model_file(model: &str, body: &str) -> String {
    format!("[gpu]\nmodel = \"{model}\"\nframebuffer = \"8GiB\"\n\n[[type]]\n{body}")
}

#[test]
fn duplicates_across_the_catalog_name_the_second_file() {
    let a = model_file("A", BODY);
    let b = model_file("B", &BODY.replace("x-1", "x-2"));
    let e = Catalog::from_texts([
        (Path::new("a.toml"), a.as_str()),
        (Path::new("b.toml"), b.as_str()),
    ])
    .unwrap_err();
    let (file, line, column, field) = e.location().unwrap();
    assert_eq!(
        (file, line, column, field),
        (Path::new("b.toml"), 6, 8, "type[0].name")
    );
    assert!(e.to_string().contains("a.toml:6"), "{e}");

    let b = model_file("B", &BODY.replace("name = \"a\"", "name = \"b\""));
    let e = Catalog::from_texts([
        (Path::new("a.toml"), a.as_str()),
        (Path::new("b.toml"), b.as_str()),
    ])
    .unwrap_err();
    let (file, line, column, field) = e.location().unwrap();
    assert_eq!(
        (file, line, column, field),
        (Path::new("b.toml"), 7, 13, "type[0].mdev_type")
    );
    assert!(e.to_string().contains("model 'A'"), "{e}");

    let b = model_file(
        "A",
        &BODY
            .replace("name = \"a\"", "name = \"b\"")
            .replace("x-1", "x-2"),
    );
    let e = Catalog::from_texts([
        (Path::new("a.toml"), a.as_str()),
        (Path::new("b.toml"), b.as_str()),
    ])
    .unwrap_err();
    let (file, line, column, field) = e.location().unwrap();
    assert_eq!(
        (file, line, column, field),
        (Path::new("b.toml"), 2, 9, "gpu.model")
    );
}

#[test]
fn resolve_prefers_a_type_id_binding_over_a_name_binding() {
    let by_name = model_file(
        "A",
        &BODY.replace("mdev_type = \"x-1\"", "mdev_name = \"Kernel X\""),
    );
    let by_id = model_file(
        "B",
        &BODY
            .replace("name = \"a\"", "name = \"b\"")
            .replace("x-1", "v-1"),
    );
    // the name-bound model comes first, so a first-match lookup would pick it
    let c = Catalog::from_texts([
        (Path::new("a.toml"), by_name.as_str()),
        (Path::new("b.toml"), by_id.as_str()),
    ])
    .unwrap();
    assert_eq!(
        c.resolve("v-1", Some("Kernel X")).map(|t| t.name.as_str()),
        Some("b")
    );
    assert_eq!(
        c.resolve("v-2", Some("Kernel X\n"))
            .map(|t| t.name.as_str()),
        Some("a")
    );
    assert_eq!(c.resolve("v-2", None).map(|t| t.name.as_str()), None);
    assert_eq!(
        c.resolve("v-2", Some("Other")).map(|t| t.name.as_str()),
        None
    );
}

#[test]
fn vf_types_bind_by_name_only() {
    let by_name = model_file(
        "A",
        &BODY.replace("mdev_type = \"x-1\"", "mdev_name = \"NVIDIA X-20C\""),
    );
    // An id binding that happens to equal a VF's numeric type ID must not bind the VF.
    let by_id = model_file(
        "B",
        &BODY
            .replace("name = \"a\"", "name = \"b\"")
            .replace("x-1", "1047"),
    );
    let c = Catalog::from_texts([
        (Path::new("a.toml"), by_name.as_str()),
        (Path::new("b.toml"), by_id.as_str()),
    ])
    .unwrap();
    assert_eq!(
        c.resolve_vf("NVIDIA X-20C").map(|t| t.name.as_str()),
        Some("a")
    );
    assert_eq!(c.resolve_vf("1047").map(|t| t.name.as_str()), None);
    assert_eq!(c.resolve_vf("NVIDIA X-40C").map(|t| t.name.as_str()), None);
    // The shipped NVIDIA example binds the simulated host's VF type names.
    let shipped = Catalog::builtin().unwrap();
    assert_eq!(
        shipped
            .resolve_vf("NVIDIA H100-20C")
            .map(|t| t.name.as_str()),
        Some("H100-20C")
    );
}

#[test]
fn unknown_type_names_get_a_suggestion() {
    let c = Catalog::builtin().unwrap();
    assert_eq!(
        c.type_by_name("sim-20c").unwrap().memory_limit,
        ByteSize::gib(20)
    );
    let suggestion = |n: &str| match c.type_by_name(n) {
        Err(Error::UnknownType { name, suggestion }) => {
            assert_eq!(name, n);
            suggestion
        }
        other => panic!("expected UnknownType, got {other:?}"),
    };
    assert_eq!(suggestion("SIM-4C").as_deref(), Some("sim-4c"));
    assert_eq!(suggestion("sim-4").as_deref(), Some("sim-4c"));
    assert_eq!(suggestion("h100-20").as_deref(), Some("H100-20C"));
    assert_eq!(suggestion("quantum-gpu"), None);
    let msg = c.type_by_name("sim-80").unwrap_err().to_string();
    assert!(msg.contains("Did you mean 'sim-80c'?"), "{msg}");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn later_directories_override_earlier_models() {
    let shipped = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    write(shipped.path(), "m.toml", &model_file("M", BODY));
    write(
        shipped.path(),
        "n.toml",
        &model_file("N", &BODY.replace("\"a\"", "\"n\"").replace("x-1", "n-1")),
    );
    write(shipped.path(), "README.md", "not a catalog file");
    write(
        local.path(),
        "mine.toml",
        &model_file("M", &BODY.replace("priority = 8", "priority = 2")),
    );
    let missing = local.path().join("does-not-exist");
    let c = Catalog::load_dirs(&[
        shipped.path().to_path_buf(),
        missing,
        local.path().to_path_buf(),
    ])
    .unwrap();
    assert_eq!(c.models().len(), 2);
    let m = c.model("M").unwrap();
    assert_eq!(m.source, local.path().join("mine.toml"));
    assert_eq!(c.type_by_name("a").unwrap().priority, 2);
    assert_eq!(c.type_by_name("n").unwrap().model, "N");
    assert_eq!(c.types().count(), 2);

    // the same model twice in one directory is an error, not an override
    write(local.path(), "again.toml", &model_file("M", BODY));
    let e = Catalog::load_dirs(&[local.path().to_path_buf()]).unwrap_err();
    assert_eq!(e.location().map(|l| l.3), Some("gpu.model"));
}

#[test]
fn an_overriding_file_without_types_hides_the_model() {
    let shipped = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    write(shipped.path(), "m.toml", &model_file("M", BODY));
    write(local.path(), "m.toml", "[gpu]\nmodel = \"M\"\n");
    let c =
        Catalog::load_dirs(&[shipped.path().to_path_buf(), local.path().to_path_buf()]).unwrap();
    assert_eq!(c.types().count(), 0);
}

#[test]
fn broken_files_in_a_directory_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.toml",
        &file_with(&BODY.replace("priority = 8", "priority = 99")),
    );
    let e = Catalog::load_dirs(&[dir.path().to_path_buf()]).unwrap_err();
    let (file, line, column, field) = e.location().unwrap();
    assert_eq!(
        (file, line, column, field),
        (
            dir.path().join("bad.toml").as_path(),
            9,
            12,
            "type[0].priority"
        )
    );
}

#[test]
fn a_directory_that_is_a_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "plain", "x");
    let e = Catalog::load_dirs(&[dir.path().join("plain")]).unwrap_err();
    assert!(matches!(e, Error::ReadDir { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc_enotdir()));
}

fn libc_enotdir() -> i32 {
    20 // ENOTDIR on Linux
}

#[test]
fn default_dirs_put_the_environment_first() {
    let host = gvm_host_root::HostRoot::new("/tmp/r");
    let dirs = Catalog::dirs_with_env(&host, Some(std::ffi::OsStr::new("/a:/b")));
    assert_eq!(
        dirs,
        vec![
            PathBuf::from("/a"),
            PathBuf::from("/b"),
            PathBuf::from("/tmp/r/usr/share/gvm-vgpu/mdev-types"),
            PathBuf::from("/tmp/r/etc/gvm-vgpu/mdev-types"),
        ]
    );
    assert_eq!(Catalog::dirs_with_env(&host, None).len(), 2);
}

fn repo_catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../mdev-types")
}

#[test]
fn every_shipped_file_parses_and_the_builtin_copy_matches() {
    let dir = repo_catalog_dir();
    let loaded = Catalog::load_dirs(std::slice::from_ref(&dir)).unwrap();
    let mut names: Vec<&str> = loaded.models().iter().map(|m| m.model.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "A100-40GB",
            "A100-80GB",
            "GVM-SIM-80GB",
            "H100-80GB",
            "H200-141GB",
            "L40S",
            "MTTY-SAMPLE"
        ]
    );

    // every file in the directory is compiled in, and the compiled-in copy is the same catalog
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut builtin: Vec<String> = BUILTIN_FILES.iter().map(|(n, _)| n.to_string()).collect();
    builtin.sort();
    assert_eq!(on_disk, builtin);
    let b = Catalog::builtin().unwrap();
    let strip = |c: &Catalog| {
        c.models()
            .iter()
            .map(|m| (m.model.clone(), m.types.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&loaded), strip(&b));

    for m in loaded.models() {
        let nvidia = m
            .types
            .iter()
            .any(|t| matches!(&t.binding, Binding::TypeName(n) if n.starts_with("NVIDIA")));
        assert_eq!(
            m.example, nvidia,
            "{}: NVIDIA bindings must be marked example",
            m.model
        );
        if let Some(fb) = m.framebuffer {
            for t in &m.types {
                assert!(
                    t.memory_limit.0 * u64::from(t.max_instances) <= fb.0,
                    "{} oversubscribes",
                    t.name
                );
            }
        }
    }
}

#[test]
fn the_simulated_host_types_match_the_simulator() {
    let c = Catalog::load_dirs(&[repo_catalog_dir()]).unwrap();
    let expect = [
        ("gvmsim-1", "SIM-80GB-4C", "sim-4c", 4, 16),
        ("gvmsim-2", "SIM-80GB-10C", "sim-10c", 10, 8),
        ("gvmsim-3", "SIM-80GB-20C", "sim-20c", 20, 4),
        ("gvmsim-4", "SIM-80GB-40C", "sim-40c", 40, 2),
        ("gvmsim-5", "SIM-80GB-80C", "sim-80c", 80, 1),
        ("gvmsim-6", "SIM-80GB-1C", "sim-1c", 1, 64),
    ];
    for (id, kernel_name, name, gib, max) in expect {
        let t = c.resolve(id, Some(kernel_name)).unwrap();
        assert_eq!(
            (t.name.as_str(), t.memory_limit, t.max_instances),
            (name, ByteSize::gib(gib), max)
        );
        assert_eq!(t.binding, Binding::TypeId(id.to_string()));
        assert_eq!(t.model, "GVM-SIM-80GB");
        assert_eq!(t.host_swap, name == "sim-10c");
    }
    assert_eq!(c.type_by_name("sim-4c").unwrap().priority, 10);
    assert_eq!(c.type_by_name("sim-80c").unwrap().priority, 4);
    assert_eq!(c.type_by_name("sim-1c").unwrap().priority, 12);
    let one = c.resolve("mtty-1", Some("Single port serial")).unwrap();
    let two = c.resolve("mtty-2", None).unwrap();
    assert_eq!((one.name.as_str(), one.max_instances), ("mtty-1port", 24));
    assert_eq!((two.name.as_str(), two.max_instances), ("mtty-2port", 12));
    let h = c.resolve("nvidia-999", Some("NVIDIA H100-20C")).unwrap();
    assert_eq!(
        (h.name.as_str(), h.memory_limit, h.max_instances),
        ("H100-20C", ByteSize::gib(20), 4)
    );
}

#[test]
fn builtin_is_the_base_layer_and_a_dir_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    // No directories: exactly the built-in catalog.
    let base = Catalog::load_with_builtin(&[]).unwrap();
    assert!(base.type_by_name("sim-4c").is_ok());
    // An operator file for the same model replaces the shipped one.
    std::fs::write(
        dir.path().join("sim.toml"),
        "[gpu]\nmodel = \"GVM-SIM-80GB\"\n\n[[type]]\nname = \"sim-custom\"\nmdev_type = \"gvmsim-1\"\nmemory_limit = \"2GiB\"\npriority = 3\nmax_instances = 16\nhost_swap = false\n",
    )
    .unwrap();
    let layered = Catalog::load_with_builtin(&[dir.path().to_path_buf()]).unwrap();
    assert!(layered.type_by_name("sim-4c").is_err());
    let custom = layered.type_by_name("sim-custom").unwrap();
    assert_eq!(custom.priority, 3);
    assert_eq!(
        layered.resolve("gvmsim-1", None).unwrap().name,
        "sim-custom"
    );
    // Other shipped models are still there.
    assert!(layered.type_by_name("mtty-1port").is_ok());
}

#[test]
fn huge_values_and_keys_are_quoted_as_excerpts() {
    let big = "A".repeat(60_000);
    for text in [
        file_with(&BODY.replace(
            "memory_limit = \"1GiB\"",
            &format!("memory_limit = \"{big}\""),
        )),
        file_with(&BODY.replace("priority = 8", &format!("priority = [\"{big}\"]"))),
        file_with(&format!("{BODY}{big} = 1\n")),
        format!("[gpu]\nmodel = \"M\"\n[{big}]\n"),
    ] {
        let (_, _, field, message) = fail(&text);
        assert!(
            message.len() < 1024,
            "{} bytes: {message:.200}",
            message.len()
        );
        assert!(field.len() < 300, "{field:.200}");
    }
    let (line, _, field, message) = fail(&file_with(&BODY.replace(
        "memory_limit = \"1GiB\"",
        &format!("memory_limit = \"{big}\""),
    )));
    assert_eq!((line, field.as_str()), (8, "type[0].memory_limit"));
    assert!(message.contains("invalid size 'AAAA"), "{message}");
    assert!(message.contains("e.g. 20GiB"), "{message}");
}

#[test]
fn a_lone_carriage_return_is_named() {
    let (line, column, _, message) = fail("\r");
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("carriage return"), "{message}");
}
