//! Property tests of [`parse_request`], the check gvm-vgpud (and the guest agent) runs on the
//! one line any local process may write to the shim socket before anything is mapped.
//!
//! What they prove, for arbitrary bytes (up to and past [`MAX_LINE`]), for valid requests in
//! every shape the protocol allows (pids, absolute control paths, up to [`MAX_GPUS`] GPUs with
//! bus ids in 4- and 8-digit domain forms and either case, a UUID or none), for the same
//! with an unknown extra field (refused, naming it) and for mutations of them (a field replaced by random JSON, removed, or made huge):
//!
//! * parsing never panics;
//! * a valid request parses, to its pid, its GPUs with bus ids normalised, and its UUID in
//!   lower case;
//! * a refusal names a field of the request (`request`, `version`, `pid`, `control`, `gpus`,
//!   `gpus[N].ordinal`, `gpus[N].pci_bus_id`, `vgpu_uuid`) and says what is wrong in a
//!   non-empty message under 1 KiB, however long the strings of the (at most
//!   [`MAX_LINE`]-byte) line: the parser quotes a peer's value as an excerpt
//!   (`handover::QUOTE_BYTES`), never whole.
//!
//! The protocol version written is the one this build speaks ([`PROTOCOL_VERSION`]), so the
//! tests follow a version change.

use std::collections::BTreeSet;

use gvm_shim_abi::register::{MAX_GPUS, PROTOCOL_VERSION};
use gvm_shim_host::handover::{parse_request, Refusal, MAX_LINE};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

/// A refusal's message is shorter than this, whatever the request holds.
const MAX_MESSAGE: usize = 1024;

/// Whether `field` is one a refusal may name.
fn known_field(field: &str) -> bool {
    if ["request", "version", "pid", "control", "gpus", "vgpu_uuid"].contains(&field) {
        return true;
    }
    let Some(rest) = field.strip_prefix("gpus[") else {
        return false;
    };
    let Some((index, member)) = rest.split_once("].") else {
        return false;
    };
    index.parse::<usize>().is_ok_and(|i| i < MAX_GPUS)
        && (member == "ordinal" || member == "pci_bus_id")
}

/// Check a refusal of `line`.
fn check_refusal(line: &[u8], r: &Refusal) -> Result<(), TestCaseError> {
    prop_assert!(!r.field.is_empty(), "no field named: {r}");
    prop_assert!(known_field(&r.field), "unknown field named: {r}");
    prop_assert!(
        !r.message.trim().is_empty(),
        "empty message for field {}",
        r.field
    );
    prop_assert!(
        r.message.len() < MAX_MESSAGE,
        "a {}-byte line got a {}-byte message (bound {MAX_MESSAGE}): {:.300}",
        line.len(),
        r.message.len(),
        r.message
    );
    Ok(())
}

/// Parse `line`: refusals are checked; returns whether it parsed.
fn check(line: &[u8]) -> Result<bool, TestCaseError> {
    match parse_request(line) {
        Ok(_) => Ok(true),
        Err(r) => check_refusal(line, &r).map(|()| false),
    }
}

/// A GPU of a valid request: ordinal, (domain, bus, device, function), spelling.
#[derive(Debug, Clone)]
struct Gpu {
    ordinal: u32,
    address: (u16, u8, u8, u8),
    long_domain: bool,
    upper: bool,
}

impl Gpu {
    fn written(&self) -> String {
        let (d, b, s, f) = self.address;
        let text = if self.long_domain {
            format!("0000{d:04x}:{b:02x}:{s:02x}.{f:x}")
        } else {
            format!("{d:04x}:{b:02x}:{s:02x}.{f:x}")
        };
        if self.upper {
            text.to_ascii_uppercase()
        } else {
            text
        }
    }

    fn normalised(&self) -> String {
        let (d, b, s, f) = self.address;
        format!("{d:04x}:{b:02x}:{s:02x}.{f:x}")
    }
}

fn gpus() -> impl Strategy<Value = Vec<Gpu>> {
    let gpu = (
        any::<u32>(),
        (any::<u16>(), any::<u8>(), 0u8..0x20, 0u8..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(ordinal, address, long_domain, upper)| Gpu {
            ordinal,
            address,
            long_domain,
            upper,
        });
    proptest::collection::vec(gpu, 0..=MAX_GPUS + 8).prop_map(|list| {
        // Ordinals and addresses are unique in a valid request: keep the first of each.
        let (mut ordinals, mut addresses) = (BTreeSet::new(), BTreeSet::new());
        list.into_iter()
            .filter(|g| ordinals.insert(g.ordinal) && addresses.insert(g.address))
            .take(MAX_GPUS)
            .collect()
    })
}

/// A valid request: its JSON, and the parts a parse must give back.
#[derive(Debug, Clone)]
struct Valid {
    json: Value,
    pid: u32,
    gpus: Vec<Gpu>,
    uuid: Option<u128>,
}

fn valid() -> impl Strategy<Value = Valid> {
    (
        1..=u32::MAX,
        "(/[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,20}){1,5}",
        gpus(),
        proptest::option::of((any::<u128>(), any::<bool>())),
    )
        .prop_map(|(pid, control, gpus, uuid)| {
            let list: Vec<Value> = gpus
                .iter()
                .map(|g| json!({"ordinal": g.ordinal, "pci_bus_id": g.written()}))
                .collect();
            let mut json = json!({
                "version": PROTOCOL_VERSION,
                "pid": pid,
                "control": control,
                "gpus": list,
            });
            if let Some((u, upper)) = uuid {
                let text = uuid::Uuid::from_u128(u).to_string();
                json["vgpu_uuid"] = json!(if upper {
                    text.to_ascii_uppercase()
                } else {
                    text
                });
            }
            Valid {
                json,
                pid,
                gpus,
                uuid: uuid.map(|(u, _)| u),
            }
        })
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
        Just(json!("0000:3b:00.0")),
        Just(json!("/dev/shm/../x")),
        Just(json!("5b4f1d7c-0000-4000-8000-000000000001")),
        Just(json!(0)),
        Just(json!(u64::from(u32::MAX) + 1)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Where in a request a mutation lands.
const SLOTS: [&str; 9] = [
    "version",
    "pid",
    "control",
    "gpus",
    "vgpu_uuid",
    "gpus.0",
    "gpus.0.ordinal",
    "gpus.0.pci_bus_id",
    "gpus.1.pci_bus_id",
];

fn slot<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut cur = v;
    for step in path.split('.') {
        cur = match step.parse::<usize>() {
            Ok(i) => cur.get_mut(i)?,
            Err(_) => cur.get_mut(step)?,
        };
    }
    Some(cur)
}

#[derive(Debug, Clone)]
enum Change {
    Replace(Value),
    Remove,
    Huge(String, usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => any_json().prop_map(Change::Replace),
        1 => Just(Change::Remove),
        1 => ("\\PC{1,4}", 100usize..MAX_LINE).prop_map(|(p, n)| Change::Huge(p, n)),
    ]
}

fn apply(mut v: Value, at: &str, c: &Change) -> Value {
    match c {
        Change::Replace(x) => {
            if let Some(s) = slot(&mut v, at) {
                *s = x.clone();
            } else if let Some(o) = v.as_object_mut() {
                o.insert(at.to_string(), x.clone());
            }
        }
        Change::Remove => match at.rsplit_once('.') {
            None => {
                if let Some(o) = v.as_object_mut() {
                    o.remove(at);
                }
            }
            Some((parent, key)) => {
                if let Some(Value::Object(o)) = slot(&mut v, parent) {
                    o.remove(key);
                }
            }
        },
        Change::Huge(pattern, len) => {
            let mut s = pattern.repeat(len / pattern.len().max(1) + 1);
            let mut cut = (*len).min(s.len());
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            // An absolute path, so `control` fails on its length rather than its form.
            let s = format!("/{s}");
            if let Some(x) = slot(&mut v, at) {
                *x = Value::String(s);
            }
        }
    }
    v
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

    /// A field the protocol does not have (a typo, or another release's) is refused by name.
    #[test]
    fn unknown_fields_are_refused_by_name(v in valid(), k in "[a-z_]{1,10}", x in any::<i64>()) {
        const KNOWN: [&str; 6] = ["version", "pid", "control", "gpus", "vgpu_uuid", "arbiter"];
        prop_assume!(!KNOWN.contains(&k.as_str()));
        let mut json = v.json;
        json[&k] = json!(x);
        let line = json.to_string().into_bytes();
        prop_assume!(line.len() < MAX_LINE);
        let r = parse_request(&line).expect_err("an unknown field");
        prop_assert_eq!(&r.field, "request");
        prop_assert!(r.message.contains(&format!("{k:?}")), "{}", r.message);
    }

    /// Every valid request parses to what it said, normalised; with a trailing newline too.
    #[test]
    fn valid_requests_parse(v in valid(), newline in any::<bool>()) {
        let mut line = v.json.to_string().into_bytes();
        prop_assume!(line.len() < MAX_LINE);
        if newline {
            line.push(b'\n');
        }
        let p = parse_request(&line).map_err(|r| TestCaseError::fail(format!("{r}: {}", v.json)))?;
        prop_assert_eq!(p.pid, v.pid);
        let got: Vec<(u32, String)> = p.gpus.iter().map(|g| (g.ordinal, g.pci_bus_id.clone())).collect();
        let want: Vec<(u32, String)> = v.gpus.iter().map(|g| (g.ordinal, g.normalised())).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(p.vgpu_uuid, v.uuid.map(|u| uuid::Uuid::from_u128(u).to_string()));
    }

    /// Arbitrary bytes: refused, naming `request` or a field, with a short message.
    #[test]
    fn arbitrary_bytes_are_refused_clearly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes)?;
    }

    /// Arbitrary JSON objects with the request's field names: refused clearly or valid.
    #[test]
    fn random_objects_are_refused_clearly(
        members in proptest::collection::btree_map(
            prop::sample::select(&["version", "pid", "control", "gpus", "vgpu_uuid", "x"][..]),
            any_json(),
            0..6,
        ),
        version in proptest::option::of(prop_oneof![Just(PROTOCOL_VERSION), 0..4u32]),
    ) {
        let mut o: serde_json::Map<String, Value> =
            members.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Some(v) = version {
            o.insert("version".into(), json!(v));
        }
        check(Value::Object(o).to_string().as_bytes())?;
    }

    /// One field of a valid request replaced by random JSON, removed or made huge: refused
    /// naming a field (the one changed, unless an earlier check already fails), or valid.
    #[test]
    fn mutated_requests_are_refused_clearly(
        v in valid(),
        at in prop::sample::select(&SLOTS[..]),
        c in change(),
    ) {
        let line = apply(v.json, at, &c).to_string().into_bytes();
        check(&line)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Lines around and past the limit, of repeated random bytes: refused as `request` past
    /// the limit, clearly either way.
    #[test]
    fn long_lines_are_refused_clearly(
        pattern in proptest::collection::vec(any::<u8>(), 1..16),
        len in (MAX_LINE - 64)..(MAX_LINE * 4),
    ) {
        let line: Vec<u8> = pattern.iter().copied().cycle().take(len).collect();
        match parse_request(&line) {
            Ok(_) => prop_assert!(false, "a {len}-byte line of {pattern:?} parsed"),
            Err(r) => {
                check_refusal(&line, &r)?;
                if len > MAX_LINE {
                    prop_assert_eq!(r.field.as_str(), "request");
                }
            }
        }
    }
}
