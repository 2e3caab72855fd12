//! Property tests of [`Request::parse_line`], the decoder gvm-vgpud runs on every line a
//! client writes to its API socket (`server.rs` reads at most [`MAX_LINE_BYTES`] + 1 bytes,
//! checks UTF-8, trims the line end and calls it).
//!
//! What they prove, for arbitrary bytes (up to and beyond the line limit), for JSON-shaped
//! lines (valid method names with random params, wrong types, huge numbers, deep nesting,
//! unknown fields) and for mutations of valid requests:
//!
//! * decoding never panics;
//! * a refusal is an `invalid_argument` error whose message is non-empty and shorter than
//!   [`MAX_MESSAGE`] bytes whatever the input's size: a hostile line is never echoed back
//!   whole (a 64 KiB method name or target comes back as a short excerpt);
//! * a refused line that is a JSON object with a numeric `id` is answered with that id;
//! * whatever decodes passes [`Call::validate`], and every valid request round-trips:
//!   `parse_line(to_line(r)) == r`.

use gvm_proto::{
    ApiError, BatchPart, Call, CreateParams, DefineBatchParams, DefineParams, ErrorCode,
    ImportParams, ListParams, Overrides, PolicyParams, Request, SetMode, SetParams, StatsParams,
    Target, MAX_LINE_BYTES, MAX_PRIORITY,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};
use uuid::Uuid;

/// Every refusal's message is shorter than this, whatever the line's length.
const MAX_MESSAGE: usize = 1024;

/// Every method name the API knows.
const METHODS: [&str; 18] = [
    "ping",
    "list",
    "show",
    "define",
    "define_batch",
    "undefine",
    "start",
    "stop",
    "create",
    "set",
    "freeze",
    "thaw",
    "import_mdevctl",
    "policy_get",
    "policy_set",
    "stats",
    "guest_stats",
    "reconcile",
];

/// Every params field name some method knows, so random params often hit a real one.
const FIELDS: [&str; 22] = [
    "target",
    "defined",
    "uuid",
    "parent",
    "type",
    "autostart",
    "overrides",
    "items",
    "start",
    "part",
    "batch",
    "offset",
    "more",
    "define",
    "memory_limit",
    "priority",
    "share",
    "clear",
    "mode",
    "dry_run",
    "policy",
    "gpu",
];

/// Decode `line` and check what came back; returns the refusal, if any.
fn check(line: &str) -> Result<Option<(u64, ApiError)>, TestCaseError> {
    match Request::parse_line(line) {
        Ok(req) => {
            prop_assert!(req.call.validate().is_ok(), "accepted but invalid: {line}");
            let again = req
                .to_line()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Request::parse_line(&again).ok(), Some(req), "{}", again);
            Ok(None)
        }
        Err((id, e)) => {
            prop_assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
            prop_assert!(
                !e.message.trim().is_empty(),
                "empty message for {line:.200}"
            );
            prop_assert!(
                e.message.len() < MAX_MESSAGE,
                "a {}-byte line got a {}-byte message: {:.300}…",
                line.len(),
                e.message.len(),
                e.message
            );
            Ok(Some((id, e)))
        }
    }
}

/// A name every check accepts (no '/', no control character, not `.` or `..`).
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_.:-]{0,30}"
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn share() -> impl Strategy<Value = f64> {
    (0.0f64..=1.0).prop_filter("share is in (0, 1]", |s| *s > 0.0)
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        proptest::option::of(1..=u64::MAX),
        proptest::option::of(0..=MAX_PRIORITY),
        proptest::option::of(share()),
    )
        .prop_map(|(memory_limit, priority, share)| Overrides {
            memory_limit,
            priority,
            share,
        })
}

fn define() -> impl Strategy<Value = DefineParams> {
    (
        proptest::option::of(uuid()),
        name(),
        name(),
        any::<bool>(),
        overrides(),
    )
        .prop_map(
            |(uuid, parent, type_name, autostart, overrides)| DefineParams {
                uuid,
                parent,
                type_name,
                autostart,
                force: false,
                overrides,
                owner_uids: Vec::new(),
            },
        )
}

fn target() -> impl Strategy<Value = Target> {
    name().prop_map(|target| Target { target })
}

/// Every valid call, each variant with values in range.
fn call() -> impl Strategy<Value = Call> {
    let batch = (
        proptest::collection::vec(define(), 1..4),
        any::<bool>(),
        proptest::option::of((uuid(), 0usize..1000, any::<bool>())),
    )
        .prop_map(|(mut items, start, part)| {
            // Distinct UUIDs: a batch naming one twice is refused.
            for (i, d) in items.iter_mut().enumerate() {
                if d.uuid.is_some() {
                    d.uuid = Some(Uuid::from_u128(i as u128 + 1));
                }
            }
            Call::DefineBatch(DefineBatchParams {
                items,
                start,
                part: part.map(|(batch, offset, more)| BatchPart {
                    batch,
                    offset,
                    more,
                }),
            })
        });
    let set = (
        name(),
        overrides(),
        any::<bool>(),
        prop_oneof![
            Just(SetMode::Both),
            Just(SetMode::Live),
            Just(SetMode::Persistent)
        ],
    )
        .prop_map(|(target, o, clear, mode)| {
            Call::Set(SetParams {
                target,
                memory_limit: o.memory_limit,
                priority: o.priority,
                share: o.share,
                // A set with nothing to change is refused: clear then.
                clear: clear || o.is_empty(),
                mode,
                force: clear,
            })
        });
    let policy = (
        prop_oneof![
            Just("best-effort"),
            Just("equal-share"),
            Just("fixed-share")
        ],
        proptest::option::of(name()),
        proptest::option::of(1..=u64::MAX),
        proptest::option::of(1..=u64::MAX),
    )
        .prop_map(|(policy, gpu, timeslice_us, window_ms)| {
            Call::PolicySet(PolicyParams {
                policy: policy.into(),
                gpu,
                timeslice_us,
                window_ms,
            })
        });
    let create = (
        proptest::option::of(uuid()),
        name(),
        name(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(uuid, parent, type_name, define, autostart)| {
            Call::Create(CreateParams {
                uuid,
                parent,
                type_name,
                define,
                autostart: autostart && define,
            })
        });
    prop_oneof![
        Just(Call::Ping),
        Just(Call::PolicyGet),
        Just(Call::Reconcile),
        any::<bool>().prop_map(|defined| Call::List(ListParams { defined })),
        (any::<bool>(), any::<bool>()).prop_map(|(dry_run, remove_source)| {
            Call::ImportMdevctl(ImportParams {
                dry_run,
                remove_source,
            })
        }),
        target().prop_map(Call::Show),
        target().prop_map(Call::Undefine),
        target().prop_map(Call::Start),
        target().prop_map(Call::Stop),
        target().prop_map(Call::Freeze),
        target().prop_map(Call::Thaw),
        proptest::option::of(name()).prop_map(|target| Call::Stats(StatsParams { target })),
        proptest::option::of(name()).prop_map(|target| Call::GuestStats(StatsParams { target })),
        define().prop_map(Call::Define),
        batch,
        set,
        policy,
        create,
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), call()).prop_map(|(id, call)| Request::new(id, call))
}

/// A JSON number as text, often one no Rust integer or float type holds.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        "-?[1-9][0-9]{19,60}",
        "-?[0-9]\\.[0-9]{1,5}[eE][+-]?[0-9]{3,6}",
        Just("-0".to_string()),
        Just("1e309".to_string()),
        Just("18446744073709551616".to_string()),
    ]
}

fn json_string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}".prop_map(|s| Value::String(s).to_string()),
        prop::sample::select(&METHODS[..]).prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(&FIELDS[..]).prop_map(|s| format!("\"{s}\"")),
        Just("\"best-effort\"".to_string()),
        Just("\"5b4f1d7c-0000-4000-8000-000000000001\"".to_string()),
        Just("\"\\u0000\\ud800\"".to_string()),
        Just("\"..\"".to_string()),
        Just("\"a/b\"".to_string()),
    ]
}

/// Random JSON text, biased towards the API's own field and method names.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        number_text(),
        json_string_text(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(&FIELDS[..]).prop_map(str::to_string),
            1 => "\\PC{0,12}",
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((key, inner), 0..6).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k)))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// `pattern` repeated to `len` bytes (cut on a character boundary).
fn repeated(pattern: &str, len: usize) -> String {
    let mut s = pattern.repeat(len / pattern.len().max(1) + 1);
    let mut cut = len.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// Every string and number inside `v`, addressed by a path of keys and indices.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(Value::String(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(json!(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'v>(v: &'v mut Value, path: &[Value]) -> Option<&'v mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            Value::String(k) => cur.get_mut(k.as_str())?,
            Value::Number(n) => cur.get_mut(usize::try_from(n.as_u64()?).ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One change to a valid request's JSON.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a path with this JSON text.
    Replace(usize, String),
    /// Remove the member at a path.
    Remove(usize),
    /// Add an unknown member to the object at (or around) a path.
    Insert(usize, String, String),
    /// Replace a string at a path with a huge one.
    Huge(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), json_text()).prop_map(|(p, t)| Mutation::Replace(p, t)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), "[a-z_]{1,12}", json_text())
            .prop_map(|(p, k, t)| Mutation::Insert(p, k, t)),
        (any::<usize>(), 1000usize..MAX_LINE_BYTES).prop_map(|(p, n)| Mutation::Huge(p, n)),
    ]
}

/// Apply `m` to `line`'s JSON; the result is always a JSON object with `id` intact.
fn mutate(req: &Request, m: &Mutation) -> Result<String, TestCaseError> {
    let text = req
        .to_line()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut v: Value =
        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut all = Vec::new();
    paths(&v, &mut Vec::new(), &mut all);
    // Never touch the id: the refusal must still carry it.
    all.retain(|p| p.first() != Some(&json!("id")) && !p.is_empty());
    let pick = |i: usize| all.get(i % all.len().max(1)).cloned().unwrap_or_default();
    let placeholder = "__replaced_7f3a__";
    let mut raw: Option<(String, String)> = None;
    match m {
        Mutation::Replace(i, t) => {
            if let Some(slot) = at(&mut v, &pick(*i)) {
                *slot = json!(placeholder);
                raw = Some((format!("\"{placeholder}\""), t.clone()));
            }
        }
        Mutation::Remove(i) => {
            let p = pick(*i);
            if let Some((last, parent)) = p.split_last() {
                match (at(&mut v, parent), last) {
                    (Some(Value::Object(o)), Value::String(k)) => {
                        o.remove(k);
                    }
                    (Some(Value::Array(a)), Value::Number(n)) => {
                        if let Some(i) = n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Mutation::Insert(i, k, t) => {
            let mut p = pick(*i);
            loop {
                match at(&mut v, &p) {
                    Some(Value::Object(o)) => {
                        o.insert(k.clone(), json!(placeholder));
                        raw = Some((format!("\"{placeholder}\""), t.clone()));
                        break;
                    }
                    _ if p.is_empty() => break,
                    _ => {
                        p.pop();
                    }
                }
            }
        }
        Mutation::Huge(i, n) => {
            if let Some(slot) = at(&mut v, &pick(*i)) {
                *slot = Value::String(repeated("x", *n));
            }
        }
    }
    let mut line = v.to_string();
    if let Some((from, to)) = raw {
        line = line.replacen(&from, &to, 1);
    }
    Ok(line)
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

    /// Valid requests survive encoding: decode(encode(r)) == r.
    #[test]
    fn valid_requests_round_trip(req in request()) {
        let line = req.to_line().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(line.len() < MAX_LINE_BYTES);
        let back = Request::parse_line(&line).map_err(|(_, e)| e);
        prop_assert_eq!(back, Ok(req), "{}", line);
    }

    /// Short arbitrary bytes (as the daemon would see them after a lossy look at UTF-8).
    #[test]
    fn arbitrary_bytes_are_refused_clearly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    /// Random JSON lines naming a real method with random params.
    #[test]
    fn json_shaped_lines_are_refused_clearly_or_valid(
        id in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), number_text(), json_text()],
        method in prop_oneof![
            4 => prop::sample::select(&METHODS[..]).prop_map(|m| format!("\"{m}\"")),
            1 => json_text(),
        ],
        params in prop_oneof![3 => json_text(), 1 => Just(String::new())],
        extra in proptest::option::of(("[a-z_]{1,10}", json_text())),
    ) {
        let mut line = format!("{{\"id\":{id},\"method\":{method}");
        if !params.is_empty() {
            line.push_str(&format!(",\"params\":{params}"));
        }
        if let Some((k, v)) = &extra {
            line.push_str(&format!(",\"{k}\":{v}"));
        }
        line.push('}');
        // A second `id` member makes the line's id unreadable.
        let twice = extra.as_ref().is_some_and(|(k, _)| k == "id");
        let numeric_id: Option<u64> = id.parse().ok().filter(|_| !twice);
        if let Some((got, _)) = check(&line)? {
            if let Some(n) = numeric_id {
                prop_assert_eq!(got, n, "{}", line);
            }
        }
    }

    /// A valid request with one field replaced, removed, added or made huge: refused with
    /// the request's id and a short message, or accepted as a valid request.
    #[test]
    fn mutated_requests_keep_their_id_and_a_short_message(req in request(), m in mutation()) {
        let line = mutate(&req, &m)?;
        // (A line over the limit is refused unread, with id 0.)
        if let Some((id, e)) = check(&line)?.filter(|_| line.len() <= MAX_LINE_BYTES) {
            prop_assert_eq!(id, req.id, "{} → {}", line.chars().take(300).collect::<String>(), e.message);
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// Long lines, up to and past the 64 KiB limit, of repeated random text: never
    /// echoed whole.
    #[test]
    fn long_lines_are_refused_with_a_short_message(
        pattern in "\\PC{1,16}",
        len in (MAX_LINE_BYTES - 1024)..(MAX_LINE_BYTES + 4096),
    ) {
        check(&repeated(&pattern, len))?;
    }

    /// A 1–64 KiB string in every place a request carries one: the method, the id, a
    /// target, a parent, a policy, an unknown field's name.
    #[test]
    fn huge_strings_anywhere_come_back_as_an_excerpt(
        fill in "[a-zA-Z0-9/\\\\ é\u{202e}]{1,8}",
        len in 1000usize..(MAX_LINE_BYTES - 200),
        slot in 0usize..7,
    ) {
        let big = Value::String(repeated(&fill, len)).to_string();
        let line = match slot {
            0 => format!("{{\"id\":3,\"method\":{big}}}"),
            1 => format!("{{\"id\":{big},\"method\":\"ping\"}}"),
            2 => format!("{{\"id\":3,\"method\":\"show\",\"params\":{{\"target\":{big}}}}}"),
            3 => format!("{{\"id\":3,\"method\":\"define\",\"params\":{{\"parent\":{big},\"type\":\"t\"}}}}"),
            4 => format!("{{\"id\":3,\"method\":\"policy_set\",\"params\":{{\"policy\":{big}}}}}"),
            5 => format!("{{\"id\":3,\"method\":\"list\",\"params\":{{{big}:1}}}}"),
            _ => format!("{{\"id\":3,{big}:1,\"method\":\"ping\"}}"),
        };
        // (An escaped fill can push the line past the limit: refused for its length then.)
        let refused = check(&line)?;
        prop_assert!(refused.is_some(), "accepted {:.200}", line);
    }

    /// Deep nesting (past serde_json's recursion limit) in params, in the id and bare:
    /// refused, no stack overflow.
    #[test]
    fn deep_nesting_is_refused(depth in 100usize..20_000, open in prop_oneof![Just("["), Just("{\"a\":")]) {
        let close = if open == "[" { "]" } else { "}" };
        let nest = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        for line in [
            format!("{{\"id\":1,\"method\":\"define\",\"params\":{nest}}}"),
            format!("{{\"id\":{nest},\"method\":\"ping\"}}"),
            nest.clone(),
        ] {
            if line.len() <= MAX_LINE_BYTES {
                prop_assert!(check(&line)?.is_some());
            } else {
                check(&line)?;
            }
        }
    }
}
