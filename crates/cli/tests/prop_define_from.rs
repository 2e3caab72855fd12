//! Property tests of [`parse_definitions`], the parser of `gvm-vgpu define --from FILE`: a file
//! of definitions that a script, a tool or another person may have written.
//!
//! What they prove, for valid files of 1–20 definitions, for valid files with one item changed
//! (a field replaced by random JSON, removed, misspelt or made huge), for random JSON, random
//! TOML-ish text and random bytes:
//!
//! * parsing never panics;
//! * a valid file parses to exactly the definitions it holds (JSON → definitions → JSON →
//!   definitions is the identity);
//! * a refusal, printed as `gvm-vgpu` prints it (the error chain on one line), is non-empty,
//!   says the file is not a JSON array of definitions (or lists none), names the index of the
//!   item at fault when one item is, and stays under 1 KiB: a value of the file is quoted as
//!   an excerpt, never whole.

use std::path::Path;

use gvm_error_chain::error_chain;
use gvm_proto::{DefineParams, Overrides, MAX_PRIORITY};
use gvm_vgpu_cli::parse_definitions;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};
use uuid::Uuid;

/// Every refusal's line (for the file name `defs.json`) is shorter than this.
const MAX_MESSAGE: usize = 1024;

/// Parse `text`; check a refusal and return its line.
fn check(text: &str) -> Result<Result<Vec<DefineParams>, String>, TestCaseError> {
    match parse_definitions(Path::new("defs.json"), text) {
        Ok(items) => {
            prop_assert!(!items.is_empty());
            Ok(Ok(items))
        }
        Err(e) => {
            let line = error_chain(&*e);
            prop_assert!(
                line.starts_with("defs.json is not a JSON array of definitions")
                    || line == "defs.json lists no definitions",
                "{line:.300}"
            );
            prop_assert!(
                line.len() < MAX_MESSAGE,
                "a {}-byte file got a {}-byte message: {:.300}…",
                text.len(),
                line.len(),
                line
            );
            Ok(Err(line))
        }
    }
}

fn definition() -> impl Strategy<Value = DefineParams> {
    (
        proptest::option::of(any::<u128>().prop_map(Uuid::from_u128)),
        "\\PC{0,24}",
        "\\PC{0,24}",
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(0..=MAX_PRIORITY),
        proptest::option::of(0.0f64..=1.0),
    )
        .prop_map(
            |(uuid, parent, type_name, autostart, memory_limit, priority, share)| DefineParams {
                uuid,
                parent,
                type_name,
                autostart,
                force: false,
                overrides: Overrides {
                    memory_limit,
                    priority,
                    share,
                },
                owner_uids: Vec::new(),
            },
        )
}

/// Random JSON, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        Just(json!("5b4f1d7c-0000-4000-8000-000000000001")),
        Just(json!(256)),
        Just(json!(-1)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    3 => prop::sample::select(
                        &["parent", "type", "uuid", "autostart", "overrides", "memory_limit", "priority", "share"][..]
                    )
                    .prop_map(str::to_string),
                    1 => "[a-z_]{1,10}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One change to one item.
#[derive(Debug, Clone)]
enum Change {
    /// Set (or add) this member to random JSON.
    Set(&'static str, Value),
    /// Remove this member.
    Remove(&'static str),
    /// Set this member to a string of this many bytes.
    Huge(&'static str, usize),
    /// Replace the whole item.
    Item(Value),
}

const MEMBERS: [&str; 9] = [
    "parent",
    "type",
    "uuid",
    "autostart",
    "overrides",
    "autostrat",
    "typo",
    "memory_limit",
    "priority",
];

fn change() -> impl Strategy<Value = Change> {
    let member = prop::sample::select(&MEMBERS[..]);
    prop_oneof![
        3 => (member.clone(), any_json()).prop_map(|(m, v)| Change::Set(m, v)),
        1 => member.clone().prop_map(Change::Remove),
        1 => (member, 1000usize..200_000).prop_map(|(m, n)| Change::Huge(m, n)),
        1 => any_json().prop_map(Change::Item),
    ]
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

    /// A valid file parses to the definitions it holds, compact or pretty-printed.
    #[test]
    fn valid_files_parse_to_their_definitions(
        defs in proptest::collection::vec(definition(), 1..20),
        pretty in any::<bool>(),
    ) {
        let text = if pretty {
            serde_json::to_string_pretty(&defs)
        } else {
            serde_json::to_string(&defs)
        }
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = check(&text)?.map_err(TestCaseError::fail)?;
        prop_assert_eq!(parsed, defs);
    }

    /// One item of a valid file changed: parsed, or refused naming that item's index.
    #[test]
    fn a_bad_item_is_named_by_its_index(
        defs in proptest::collection::vec(definition(), 1..12),
        at in any::<usize>(),
        c in change(),
    ) {
        let mut v = serde_json::to_value(&defs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let k = at % defs.len();
        let item = &mut v[k];
        match c {
            Change::Set(m, x) => item[m] = x,
            Change::Remove(m) => {
                if let Some(o) = item.as_object_mut() {
                    o.remove(m);
                }
            }
            Change::Huge(m, n) => item[m] = Value::String("A".repeat(n)),
            Change::Item(x) => *item = x,
        }
        let text = v.to_string();
        if let Err(line) = check(&text)? {
            prop_assert!(line.contains(&format!(": item {k}: ")), "item {k}: {line:.300}");
        }
    }

    /// Random JSON as a whole file: parsed (an array of valid items) or refused clearly.
    #[test]
    fn random_json_files_are_refused_clearly(v in any_json()) {
        let _ = check(&v.to_string())?;
    }

    /// Random TOML-ish or arbitrary text, and arbitrary bytes as text.
    #[test]
    fn random_text_is_refused_clearly(
        text in prop_oneof![
            "(\\[\\[item\\]\\]\n)?([a-z]{1,8} = (\"[^\"]{0,10}\"|[0-9]{1,5}|true)\n){0,6}",
            "\\PC{0,200}",
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
    ) {
        let _ = check(&text)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// A huge string or key at the top of the file or inside an item: an excerpt at most.
    #[test]
    fn huge_strings_come_back_as_an_excerpt(len in 1000usize..300_000, slot in 0usize..4) {
        let big = Value::String("B".repeat(len)).to_string();
        let text = match slot {
            0 => big,
            1 => format!("[{{\"parent\": {big}, \"type\": 7}}]"),
            2 => format!("[{{\"parent\": \"p\", \"type\": \"t\", {big}: 1}}]"),
            _ => format!("[{{\"parent\": \"p\", \"type\": \"t\", \"uuid\": {big}}}]"),
        };
        prop_assert!(check(&text)?.is_err());
    }
}
