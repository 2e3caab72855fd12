//! Property tests of [`Catalog::parse_str`], which reads a catalog file (`mdev-types/*.toml`):
//! files a package, an operator or a tool that writes them may get wrong.
//!
//! What they prove, for valid files with random values, for mutations of them (a line
//! removed, doubled or cut; a value replaced by a random TOML value, a huge string or random
//! text; an unknown key or table added), for random text and random Unicode, and for huge
//! strings in every place a file carries one (a value, a key, a table name, a comment):
//!
//! * parsing never panics;
//! * a valid file parses, to the values it holds;
//! * every refusal is an [`Error::Invalid`] with a location in the file (a 1-based line
//!   within the text and a column), and its message (`file:line:column: field: what`) is
//!   non-empty and shorter than 1 KiB: a value of the file is quoted as an excerpt, never
//!   whole.

use std::path::Path;

use gvm_catalog::{Binding, ByteSize, Catalog, Error, MAX_PRIORITY};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Every refusal's message (with the file name `t.toml`) is shorter than this.
const MAX_MESSAGE: usize = 1024;

/// A one-model file with one `[[type]]` of this body (as the unit tests' `file_with`).
fn file_with(type_body: &str) -> String {
    format!("[gpu]\nmodel = \"M\"\nframebuffer = \"8GiB\"\n\n[[type]]\n{type_body}")
}

/// A valid type body.
const BODY: &str = "name = \"a\"\nmdev_type = \"x-1\"\nmemory_limit = \"1GiB\"\npriority = 8\nmax_instances = 4\nhost_swap = false\n";

/// Parse `text`; check a refusal; returns whether it parsed.
fn check(text: &str) -> Result<bool, TestCaseError> {
    match Catalog::parse_str(Path::new("t.toml"), text) {
        Ok(_) => Ok(true),
        Err(e) => {
            let message = e.to_string();
            let Some((file, line, column, _field)) = e.location() else {
                return Err(TestCaseError::fail(format!("no location: {message}")));
            };
            let invalid = matches!(e, Error::Invalid { .. });
            prop_assert!(invalid, "{message:.300}");
            prop_assert_eq!(file, Path::new("t.toml"));
            prop_assert!(
                line >= 1 && line <= text.lines().count() + 1,
                "line {line}: {message:.300}"
            );
            prop_assert!(column >= 1, "column {column}");
            prop_assert!(
                message.starts_with(&format!("t.toml:{line}:{column}: ")),
                "{message:.300}"
            );
            let what = message.splitn(4, ": ").last().unwrap_or_default();
            prop_assert!(!what.trim().is_empty(), "no text: {message:.300}");
            prop_assert!(
                message.len() < MAX_MESSAGE,
                "a {}-byte file got a {}-byte message: {:.300}…",
                text.len(),
                message.len(),
                message
            );
            Ok(false)
        }
    }
}

/// `pattern` repeated to about `len` bytes.
fn repeated(pattern: &str, len: usize) -> String {
    pattern.repeat(len / pattern.len().max(1) + 1)
}

/// A valid file, and what its single type must parse to.
#[derive(Debug, Clone)]
struct Valid {
    text: String,
    name: String,
    mdev_type: String,
    memory_gib: u64,
    priority: u8,
    max_instances: u32,
    host_swap: bool,
}

fn valid() -> impl Strategy<Value = Valid> {
    (
        "[a-zA-Z0-9_.-]{1,64}",
        "[a-zA-Z0-9_.:-][a-zA-Z0-9_.: -]{0,40}",
        1u64..=8,
        0..=MAX_PRIORITY,
        1u32..=64,
        any::<bool>(),
        proptest::option::of("[^\"\\\\\\p{Cc}]{0,40}"),
    )
        .prop_map(
            |(name, mdev_type, memory_gib, priority, max_instances, host_swap, description)| {
                let mut body = format!(
                    "name = \"{name}\"\nmdev_type = \"{mdev_type}\"\nmemory_limit = \"{memory_gib}GiB\"\n\
                     priority = {priority}\nmax_instances = {max_instances}\nhost_swap = {host_swap}\n"
                );
                if let Some(d) = description {
                    body.push_str(&format!("description = \"{d}\"\n"));
                }
                Valid {
                    text: file_with(&body),
                    name,
                    mdev_type,
                    memory_gib,
                    priority,
                    max_instances,
                    host_swap,
                }
            },
        )
}

/// A TOML value as text, often of the wrong type or out of range.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?[0-9]{19,40}",
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,25}(\\.[0-9]{0,25})? ?[A-Za-z]{0,4}".prop_map(|s| format!("\"{s}\"")),
        "'[^'\\n]{0,20}'",
        "\\PC{0,12}",
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(", "))),
            proptest::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

/// One change to a file's lines.
#[derive(Debug, Clone)]
enum Mutation {
    /// Remove line N.
    Remove(usize),
    /// Write line N twice.
    Double(usize),
    /// Cut the text at byte N (on a character boundary).
    Cut(usize),
    /// Give the key of line N this value text.
    Value(usize, String),
    /// Insert this line before line N.
    Insert(usize, String),
    /// Give the key of line N a string of this many bytes of this pattern.
    Huge(usize, String, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = prop_oneof![
        ("[a-z_]{1,14}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::sample::select(
            &[
                "name",
                "mdev_type",
                "mdev_name",
                "memory_limit",
                "priority",
                "share",
                "max_instances",
                "host_swap",
                "description",
                "model",
                "framebuffer",
                "example",
            ][..]
        )
        .prop_flat_map(|k| toml_value().prop_map(move |v| format!("{k} = {v}"))),
        Just("[[type]]".to_string()),
        Just("[gpu]".to_string()),
        "\\[[a-z.\\[\\]]{0,12}\\]?",
        "\\PC{0,30}",
        ".{0,30}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Double),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), toml_value()).prop_map(|(i, v)| Mutation::Value(i, v)),
        (any::<usize>(), line).prop_map(|(i, l)| Mutation::Insert(i, l)),
        (
            any::<usize>(),
            "[a-zA-Z0-9 /é\u{202e}]{1,6}",
            100usize..70_000
        )
            .prop_map(|(i, p, n)| Mutation::Huge(i, p, n)),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    let key_of = |l: &str| l.split_once('=').map(|(k, _)| k.trim().to_string());
    match m {
        Mutation::Remove(i) => {
            lines.remove(i % n);
        }
        Mutation::Double(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::Cut(i) => {
            let mut cut = i % (text.len() + 1);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            return text[..cut].to_string();
        }
        Mutation::Value(i, v) => {
            if let Some(k) = key_of(&lines[i % n]) {
                lines[i % n] = format!("{k} = {v}");
            }
        }
        Mutation::Insert(i, l) => lines.insert(i % (n + 1), l.clone()),
        Mutation::Huge(i, p, len) => {
            let big = repeated(p, *len);
            match key_of(&lines[i % n]) {
                Some(k) => lines[i % n] = format!("{k} = {big:?}"),
                None => lines.insert(i % n, format!("{big:?} = 1")),
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs beside them to keep regressions next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Valid files parse to the values they hold.
    #[test]
    fn valid_files_parse(v in valid()) {
        let m = Catalog::parse_str(Path::new("t.toml"), &v.text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", v.text)))?;
        prop_assert_eq!(m.types.len(), 1);
        let t = &m.types[0];
        prop_assert_eq!(&t.name, &v.name);
        prop_assert_eq!(&t.binding, &Binding::TypeId(v.mdev_type.clone()));
        prop_assert_eq!(t.memory_limit, ByteSize::gib(v.memory_gib));
        prop_assert_eq!(
            (t.priority, t.max_instances, t.host_swap),
            (v.priority, v.max_instances, v.host_swap)
        );
    }

    /// A valid file changed once or twice: parsed, or refused at a place with a short message.
    #[test]
    fn mutated_files_are_refused_at_a_place(
        v in valid(),
        first in mutation(),
        second in proptest::option::of(mutation()),
    ) {
        let mut text = mutate(&v.text, &first);
        if let Some(m) = &second {
            text = mutate(&text, m);
        }
        check(&text)?;
    }

    /// Random text, random Unicode (controls and all): refused at a place, short message.
    #[test]
    fn random_text_is_refused_at_a_place(text in prop_oneof!["\\PC{0,200}", ".{0,200}", "(?s:.{0,200})"]) {
        check(&text)?;
    }

    /// Random lines of TOML shape (`key = value`, tables) under a valid head.
    #[test]
    fn random_toml_shaped_files_are_refused_at_a_place(
        lines in proptest::collection::vec(
            prop_oneof![
                ("[a-z_]{1,14}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
                Just("[[type]]".to_string()),
                Just("[gpu]".to_string()),
            ],
            0..20,
        ),
    ) {
        check(&format!("[gpu]\nmodel = \"M\"\n{}\n", lines.join("\n")))?;
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// A huge string (1–64 KiB) as a value, a key, a table name, a binding or a bare line:
    /// refused with an excerpt, never the whole of it.
    #[test]
    fn huge_strings_come_back_as_an_excerpt(
        fill in "[a-zA-Z0-9 /é\u{202e}\\[]{1,6}",
        len in 1000usize..65_536,
        slot in 0usize..8,
    ) {
        let big = repeated(&fill, len);
        let text = match slot {
            0 => format!("[gpu]\nmodel = {big:?}\n"),
            1 => file_with(&BODY.replace("name = \"a\"", &format!("name = {big:?}"))),
            2 => file_with(&BODY.replace("mdev_type = \"x-1\"", &format!("mdev_type = {big:?}"))),
            3 => file_with(&BODY.replace("memory_limit = \"1GiB\"", &format!("memory_limit = {big:?}"))),
            4 => file_with(&format!("{BODY}{big:?} = 1\n")),
            5 => file_with(&BODY.replace("priority = 8", &format!("priority = [{big:?}]"))),
            6 => format!("[gpu]\nmodel = \"M\"\n[{big:?}]\n"),
            _ => format!("[gpu]\nmodel = \"M\"\nx{big}\n"),
        };
        prop_assert!(!check(&text)?, "accepted");
    }
}
