//! Requests: an `id`, a `method` name and its `params`.
//!
//! On the wire a request is `{"id":N,"method":"name","params":{...}}`; `params` may
//! be omitted for methods without parameters. [`Request::parse_line`] decodes a
//! line and, when it cannot, still recovers the `id` so the error answer can be
//! matched to the request. [`Call::validate`] checks every range that needs no host
//! state (priority 0..=16, share in (0, 1], non-empty names, ...). A field a
//! request does not define is refused, at every level (`deny_unknown_fields`): a
//! misspelt `autostrat` is an error naming it, not a silent default.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{clip_middle, excerpt, MAX_MESSAGE_BYTES};
use crate::{ApiError, MAX_LINE_BYTES, MAX_PRIORITY};

/// Which vGPU a request is about: a UUID, or a libvirt domain name holding exactly
/// the vGPUs to act on (every vGPU of the domain for `set`/`freeze`/`thaw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// A vGPU UUID or a domain name.
    pub target: String,
}

/// `list` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only vGPUs with a persistent definition (`list --defined`).
    pub defined: bool,
}

/// `define`: store a persistent vGPU definition (like `mdevctl define`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefineParams {
    /// UUID to define; the daemon picks a random one when absent.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Parent device name as in `/sys/class/mdev_bus` (e.g. `0000:01:00.0`).
    pub parent: String,
    /// Catalog type name (`sim-4c`) or kernel mdev type id (`gvmsim-1`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Create the device when the daemon starts and when the parent registers.
    #[serde(default)]
    pub autostart: bool,
    /// Knob overrides stored with the definition.
    #[serde(default, deserialize_with = "strict_overrides")]
    pub overrides: crate::Overrides,
    /// Uids (besides the daemon's) whose processes may claim the vGPU through their own
    /// environment or cgroup; at most [`MAX_OWNER_UIDS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_uids: Vec<u32>,
    /// Accept a memory limit above the framebuffer of the type's GPU model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Most uids one definition may allow to claim it.
pub const MAX_OWNER_UIDS: usize = 64;

/// [`crate::Overrides`] as a request gives them: an unknown knob is refused. Stored
/// definitions keep the lenient type, so a file a newer daemon wrote still loads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictOverrides {
    #[serde(default)]
    memory_limit: Option<u64>,
    #[serde(default)]
    priority: Option<u8>,
    #[serde(default)]
    share: Option<f64>,
}

fn strict_overrides<'de, D: serde::Deserializer<'de>>(d: D) -> Result<crate::Overrides, D::Error> {
    let o = StrictOverrides::deserialize(d)?;
    Ok(crate::Overrides {
        memory_limit: o.memory_limit,
        priority: o.priority,
        share: o.share,
    })
}

/// Most definitions one `define_batch` call may carry (its line stays far under
/// [`MAX_LINE_BYTES`]); clients send longer lists in parts ([`BatchPart`]).
pub const MAX_BATCH: usize = 256;

/// Most definitions one list sent in parts may hold (the daemon holds the parts in
/// memory until the last).
pub const MAX_BATCH_LIST: usize = 16_384;

/// `define_batch`: store many definitions with one group commit and optionally
/// start them. Every item is checked before anything is written: one bad item fails
/// the whole call and nothing is stored. A list longer than [`MAX_BATCH`] is sent as
/// several calls with a [`BatchPart`] each; it is stored whole, by the last, or not
/// at all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefineBatchParams {
    /// The definitions, at most [`MAX_BATCH`]. Give UUIDs so that a retried call
    /// after a lost answer is refused as a duplicate instead of defining twice.
    pub items: Vec<DefineParams>,
    /// Create each vGPU once every definition is stored (read from the last part).
    #[serde(default)]
    pub start: bool,
    /// Where this call sits in a longer list; absent for a list of one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<BatchPart>,
}

/// One call of a `define_batch` list sent in parts (protocol 2). The daemon checks
/// each part's items as it comes and holds them; the part without `more` checks the
/// whole list again and stores it with one group commit. Any error drops the list,
/// and so does a pause of 60 s between parts (the client is taken for dead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPart {
    /// Chosen by the client (random), the same in every part of one list.
    pub batch: Uuid,
    /// Index in the whole list of this part's first item: parts come in order, and
    /// errors name items by their index in the list.
    pub offset: usize,
    /// More parts follow: check and hold these items, store nothing yet.
    #[serde(default)]
    pub more: bool,
}

/// `create`: create a live vGPU now; with `define` also store a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// UUID to create; random when absent.
    #[serde(default)]
    pub uuid: Option<Uuid>,
    /// Parent device name.
    pub parent: String,
    /// Catalog type name or kernel mdev type id.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Also persist a definition (autostart off unless `autostart`).
    #[serde(default)]
    pub define: bool,
    /// Autostart flag of the stored definition (only with `define`).
    #[serde(default)]
    pub autostart: bool,
}

/// Where a `set` takes effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetMode {
    /// Running owners now and the stored definition, if there is one (default).
    #[default]
    Both,
    /// Running owners only, until the vGPU is removed (`--live`).
    Live,
    /// The stored definition only (`--persistent`); applies at the next start.
    Persistent,
}

/// `set`: retune a vGPU's knobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct SetParams {
    /// UUID or domain name.
    pub target: String,
    /// New memory limit in bytes ([`crate::UNLIMITED`] for none).
    pub memory_limit: Option<u64>,
    /// New compute priority 0..=16 (lower = more GPU time).
    pub priority: Option<u8>,
    /// New fixed share of the GPU, in (0, 1].
    pub share: Option<f64>,
    /// Drop the overrides of this scope first, so unset knobs fall back to the type.
    pub clear: bool,
    /// Where the change takes effect.
    pub mode: SetMode,
    /// Accept a memory limit above the framebuffer of the type's GPU model.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `import_mdevctl`: adopt mdevctl's persistent definitions from `/etc/mdevctl.d`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// Report what would be imported without writing anything.
    pub dry_run: bool,
    /// Once a definition is stored (now, or by an earlier import with the same parent and
    /// type), delete mdevctl's own definition file of it, so that only gvm-vgpu defines it.
    pub remove_source: bool,
}

/// `policy_set`: choose the scheduling policy by name, for one GPU or all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyParams {
    /// `best-effort`, `equal-share` or `fixed-share`.
    pub policy: String,
    /// The GPU: its position in PCI order (`1`) or its PCI address (`0000:3c:00.0`, any
    /// case, also the 8-digit domain form); every GPU (and the default for GPUs seen
    /// later) when absent or `all`.
    #[serde(default)]
    pub gpu: Option<String>,
    /// Time slice in µs; the 2 ms / 1 ms default when absent.
    #[serde(default)]
    pub timeslice_us: Option<u64>,
    /// Averaging window in ms; 1000 when absent.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// `stats`: per-vGPU totals, for one target or all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// UUID or domain; all vGPUs when absent.
    pub target: Option<String>,
}

/// A method with its parameters. The result type of each is documented on the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Call {
    /// Liveness and version → [`crate::Pong`].
    Ping,
    /// Every vGPU (live or defined) → `Vec<`[`crate::VgpuInfo`]`>`.
    List(ListParams),
    /// One vGPU with knob sources and owners → [`crate::VgpuDetail`].
    Show(Target),
    /// Persist a definition → [`crate::Definition`].
    Define(DefineParams),
    /// Persist many definitions at once, optionally starting them →
    /// [`crate::BatchReport`] (empty for a part of a list that is not its last).
    DefineBatch(DefineBatchParams),
    /// Remove a definition (the live device stays) → [`crate::Definition`] removed.
    Undefine(Target),
    /// Create the defined device now → [`crate::VgpuInfo`].
    Start(Target),
    /// Remove the live device (the definition stays) → [`crate::VgpuInfo`].
    Stop(Target),
    /// Create a vGPU now, optionally defining it → [`crate::VgpuInfo`].
    Create(CreateParams),
    /// Retune knobs → `Vec<`[`crate::VgpuDetail`]`>` (every vGPU the target named).
    Set(SetParams),
    /// Freeze every owner's GPU work → `Vec<`[`crate::VgpuInfo`]`>`.
    Freeze(Target),
    /// Resume every owner's GPU work → `Vec<`[`crate::VgpuInfo`]`>`.
    Thaw(Target),
    /// Adopt `/etc/mdevctl.d` definitions → [`crate::ImportReport`].
    ImportMdevctl(ImportParams),
    /// The scheduler of every GPU → [`crate::SchedStatus`].
    PolicyGet,
    /// Choose a GPU's (or every GPU's) policy live → [`crate::SchedStatus`].
    PolicySet(PolicyParams),
    /// Per-vGPU totals → `Vec<`[`crate::VgpuInfo`]`>` with fresh totals.
    Stats(StatsParams),
    /// Guest-agent channels with their guests' GPU processes →
    /// `Vec<`[`crate::GuestAgentInfo`]`>` (for one vGPU or domain, or all).
    GuestStats(StatsParams),
    /// Rescan the host now and report what was corrected → [`crate::ReconcileReport`].
    Reconcile,
}

/// Policy names [`Call::PolicySet`] accepts.
pub const POLICIES: [&str; 3] = ["best-effort", "equal-share", "fixed-share"];

impl Call {
    /// The wire name of the method.
    pub fn method(&self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::List(_) => "list",
            Call::Show(_) => "show",
            Call::Define(_) => "define",
            Call::DefineBatch(_) => "define_batch",
            Call::Undefine(_) => "undefine",
            Call::Start(_) => "start",
            Call::Stop(_) => "stop",
            Call::Create(_) => "create",
            Call::Set(_) => "set",
            Call::Freeze(_) => "freeze",
            Call::Thaw(_) => "thaw",
            Call::ImportMdevctl(_) => "import_mdevctl",
            Call::PolicyGet => "policy_get",
            Call::PolicySet(_) => "policy_set",
            Call::Stats(_) => "stats",
            Call::GuestStats(_) => "guest_stats",
            Call::Reconcile => "reconcile",
        }
    }

    /// Whether the method changes host or stored state (such calls are serialized).
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Call::Ping
                | Call::List(_)
                | Call::Show(_)
                | Call::PolicyGet
                | Call::Stats(_)
                | Call::GuestStats(_)
        )
    }

    /// Whether members of the daemon's `--group` may make this call (reads and
    /// retunes); creating, removing and defining devices need root.
    pub fn allowed_for_group(&self) -> bool {
        !matches!(
            self,
            Call::Define(_)
                | Call::DefineBatch(_)
                | Call::Undefine(_)
                | Call::Start(_)
                | Call::Stop(_)
                | Call::Create(_)
                | Call::ImportMdevctl(_)
                | Call::PolicySet(_)
        )
    }

    /// Check every value that can be checked without the host.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self {
            Call::Show(t) | Call::Undefine(t) | Call::Start(t) | Call::Stop(t) => {
                check_target(&t.target)
            }
            Call::Freeze(t) | Call::Thaw(t) => check_target(&t.target),
            Call::Define(d) => check_define(d),
            Call::DefineBatch(b) => {
                if b.items.is_empty() {
                    return Err(ApiError::invalid("define_batch needs at least one item"));
                }
                if b.items.len() > MAX_BATCH {
                    return Err(ApiError::invalid(format!(
                        "define_batch carries {} items, at most {MAX_BATCH}: split the list",
                        b.items.len()
                    )));
                }
                let base = b.part.map_or(0, |p| p.offset);
                if base.saturating_add(b.items.len()) > MAX_BATCH_LIST {
                    return Err(ApiError::invalid(format!(
                        "define_batch lists hold at most {MAX_BATCH_LIST} items: \
                         define the vGPUs in several lists"
                    )));
                }
                let mut seen = std::collections::BTreeSet::new();
                for (n, d) in b.items.iter().enumerate() {
                    let i = base + n;
                    check_define(d).map_err(|e| e.context(&format!("item {i}")))?;
                    if let Some(u) = d.uuid {
                        if !seen.insert(u) {
                            return Err(ApiError::invalid(format!(
                                "item {i}: vGPU {u} appears twice in the batch"
                            )));
                        }
                    }
                }
                Ok(())
            }
            Call::Create(c) => {
                check_name("parent", &c.parent)?;
                check_name("type", &c.type_name)?;
                if c.autostart && !c.define {
                    return Err(ApiError::invalid(
                        "autostart needs define: a transient vGPU has no definition to autostart",
                    ));
                }
                Ok(())
            }
            Call::Set(s) => {
                check_target(&s.target)?;
                let o = crate::Overrides {
                    memory_limit: s.memory_limit,
                    priority: s.priority,
                    share: s.share,
                };
                o.validate()?;
                if o.is_empty() && !s.clear {
                    return Err(ApiError::invalid(
                        "set needs at least one of memory_limit, priority, share (or clear)",
                    ));
                }
                Ok(())
            }
            Call::PolicySet(p) => {
                if let Some(g) = &p.gpu {
                    check_name("gpu", g)?;
                }
                if p.timeslice_us == Some(0) || p.window_ms == Some(0) {
                    return Err(ApiError::invalid(
                        "timeslice and window must be positive durations (e.g. 2ms, 1s)",
                    ));
                }
                if POLICIES.contains(&p.policy.as_str()) {
                    Ok(())
                } else {
                    Err(ApiError::invalid(format!(
                        "unknown policy {}: use one of {}",
                        excerpt(&p.policy),
                        POLICIES.join(", ")
                    )))
                }
            }
            Call::Stats(s) | Call::GuestStats(s) => match &s.target {
                Some(t) => check_target(t),
                None => Ok(()),
            },
            Call::Ping
            | Call::List(_)
            | Call::ImportMdevctl(_)
            | Call::PolicyGet
            | Call::Reconcile => Ok(()),
        }
    }
}

fn check_define(d: &DefineParams) -> Result<(), ApiError> {
    check_name("parent", &d.parent)?;
    check_name("type", &d.type_name)?;
    d.overrides.validate()
}

fn check_target(t: &str) -> Result<(), ApiError> {
    check_name("target", t)
}

fn check_name(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::invalid(format!("{what} must not be empty")));
    }
    if v.len() > 256 || v.contains('/') || v.chars().any(char::is_control) || v == "." || v == ".."
    {
        return Err(ApiError::invalid(format!(
            "{what} {} is not a valid name (no '/', no control characters, at most 256 bytes)",
            excerpt(v)
        )));
    }
    Ok(())
}

impl crate::Overrides {
    /// Range checks: memory limit > 0, priority 0..=16, share in (0, 1].
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.memory_limit == Some(0) {
            return Err(ApiError::invalid(
                "memory_limit 0 would evict everything: give a size in bytes, or unlimited",
            ));
        }
        if let Some(p) = self.priority {
            if p > MAX_PRIORITY {
                return Err(ApiError::invalid(format!(
                    "priority {p} is out of range: use 0 (most GPU time) to {MAX_PRIORITY}"
                )));
            }
        }
        if let Some(s) = self.share {
            if !(s > 0.0 && s <= 1.0) {
                return Err(ApiError::invalid(format!(
                    "share {s} is out of range: use a fraction of the GPU in (0, 1]"
                )));
            }
        }
        Ok(())
    }
}

/// Most bytes of a JSON parser's complaint a refusal quotes (it may quote the value).
const SERDE_MESSAGE_BYTES: usize = 600;

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    /// Caller-chosen id echoed in the response.
    pub id: u64,
    /// Method and params.
    #[serde(flatten)]
    pub call: Call,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(default)]
    id: Option<u64>,
    method: String,
    #[serde(default)]
    params: Option<serde_json::Value>,
}

/// The id of a line whose envelope is refused (an unknown field beside `method`).
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<u64>,
}

impl Request {
    /// A request.
    pub fn new(id: u64, call: Call) -> Request {
        Request { id, call }
    }

    /// Encode as one line (no trailing newline).
    pub fn to_line(&self) -> Result<String, ApiError> {
        serde_json::to_string(self)
            .map_err(|e| ApiError::internal(format!("cannot encode request: {e}")))
    }

    /// Decode and validate one line. On failure returns the request's id when it
    /// could be read (else 0) with an [`crate::ErrorCode::InvalidArgument`] error.
    ///
    /// A refusal's message is at most [`MAX_MESSAGE_BYTES`] long: values from the line are
    /// quoted as excerpts, so a hostile line is never echoed back whole.
    pub fn parse_line(line: &str) -> Result<Request, (u64, ApiError)> {
        Request::parse_unbounded(line).map_err(|(id, e)| {
            let message = clip_middle(&e.message, MAX_MESSAGE_BYTES);
            (id, ApiError::new(e.code, message))
        })
    }

    fn parse_unbounded(line: &str) -> Result<Request, (u64, ApiError)> {
        if line.len() > MAX_LINE_BYTES {
            return Err((
                0,
                ApiError::invalid(format!("request longer than {MAX_LINE_BYTES} bytes")),
            ));
        }
        let env: Envelope = serde_json::from_str(line).map_err(|e| {
            let id = serde_json::from_str::<IdOnly>(line)
                .ok()
                .and_then(|i| i.id)
                .unwrap_or(0);
            (
                id,
                ApiError::invalid(format!(
                    "malformed request ({}): send one JSON object per line: \
                     {{\"id\":1,\"method\":\"ping\"}}",
                    clip_middle(&e.to_string(), SERDE_MESSAGE_BYTES)
                )),
            )
        })?;
        let id = env.id.unwrap_or(0);
        let params = match env.params {
            None | Some(serde_json::Value::Null) => serde_json::json!({}),
            Some(p) => p,
        };
        let unit = matches!(env.method.as_str(), "ping" | "policy_get" | "reconcile");
        if unit && params.as_object().is_none_or(|o| !o.is_empty()) {
            return Err((
                id,
                ApiError::invalid(format!(
                    "method '{}' takes no params: omit them",
                    env.method
                )),
            ));
        }
        let tagged = if unit {
            serde_json::json!({ "method": env.method })
        } else {
            serde_json::json!({ "method": env.method, "params": params })
        };
        let call: Call = serde_json::from_value(tagged).map_err(|e| {
            (
                id,
                ApiError::invalid(format!(
                    "bad request for method {}: {}",
                    excerpt(&env.method),
                    clip_middle(&e.to_string(), SERDE_MESSAGE_BYTES)
                )),
            )
        })?;
        call.validate().map_err(|e| (id, e))?;
        Ok(Request { id, call })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn parse(line: &str) -> Result<Request, (u64, ApiError)> {
        Request::parse_line(line)
    }

    #[test]
    fn requests_round_trip_through_a_line() {
        let calls = [
            Call::Ping,
            Call::List(ListParams { defined: true }),
            Call::Set(SetParams {
                target: "vm1".into(),
                priority: Some(2),
                memory_limit: Some(6 << 30),
                mode: SetMode::Live,
                ..SetParams::default()
            }),
            Call::Freeze(Target {
                target: "vm1".into(),
            }),
            Call::Reconcile,
        ];
        for (i, call) in calls.into_iter().enumerate() {
            let req = Request::new(i as u64 + 1, call);
            let line = req.to_line().unwrap_or_default();
            let back = parse(&line).map_err(|(_, e)| e);
            assert_eq!(back, Ok(req), "{line}");
        }
    }

    #[test]
    fn params_may_be_omitted_for_defaults() {
        let r = parse(r#"{"id":4,"method":"list"}"#).map_err(|(_, e)| e);
        assert_eq!(r.map(|r| r.call), Ok(Call::List(ListParams::default())));
        let r = parse(r#"{"id":5,"method":"ping","params":null}"#).map_err(|(_, e)| e);
        assert_eq!(r.map(|r| r.call), Ok(Call::Ping));
    }

    #[test]
    fn malformed_lines_are_invalid_argument_with_the_id_when_known() {
        let (id, e) = parse("not json")
            .err()
            .unwrap_or((99, ApiError::internal("")));
        assert_eq!((id, e.code), (0, ErrorCode::InvalidArgument));
        let (id, e) = parse(r#"{"id":9,"method":"explode"}"#)
            .err()
            .unwrap_or((99, ApiError::internal("")));
        assert_eq!((id, e.code), (9, ErrorCode::InvalidArgument));
        assert!(e.message.contains("explode"), "{}", e.message);
        let (id, e) = parse(r#"{"id":10,"method":"show","params":{"target":5}}"#)
            .err()
            .unwrap_or((99, ApiError::internal("")));
        assert_eq!((id, e.code), (10, ErrorCode::InvalidArgument));
        let long = format!(
            r#"{{"id":1,"method":"ping","x":"{}"}}"#,
            "a".repeat(MAX_LINE_BYTES)
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn a_huge_value_comes_back_as_an_excerpt_not_whole() {
        let big = "A".repeat(60_000);
        for line in [
            format!(r#"{{"id":7,"method":"{big}"}}"#),
            format!(r#"{{"id":7,"method":"show","params":{{"target":"{big}"}}}}"#),
            format!(r#"{{"id":7,"method":"policy_set","params":{{"policy":"{big}"}}}}"#),
            format!(r#"{{"id":"{big}","method":"ping"}}"#),
        ] {
            let (_, e) = parse(&line).err().unwrap_or((0, ApiError::internal("")));
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{}", e.message);
            assert!(e.message.len() <= MAX_MESSAGE_BYTES, "{}", e.message.len());
            assert!(!e.message.contains(&"A".repeat(400)), "{}", e.message);
        }
        // The excerpt keeps what a person needs: the value's start and length, and what
        // the parser expected.
        let (id, e) = parse(&format!(r#"{{"id":7,"method":"{big}"}}"#))
            .err()
            .unwrap_or((0, ApiError::internal("")));
        assert_eq!(id, 7);
        assert!(e.message.contains("(60000 bytes)"), "{}", e.message);
        assert!(
            e.message.contains("expected one of `ping`"),
            "{}",
            e.message
        );
        let (_, e) = parse(&format!(
            r#"{{"id":7,"method":"show","params":{{"target":"{big}"}}}}"#
        ))
        .err()
        .unwrap_or((0, ApiError::internal("")));
        assert!(e.message.starts_with("target 'AAAA"), "{}", e.message);
        assert!(e.message.contains("is not a valid name"), "{}", e.message);
    }

    #[test]
    fn clip_middle_keeps_both_ends_on_character_boundaries() {
        let s = format!("start {} end", "é".repeat(5000));
        let c = clip_middle(&s, 100);
        assert!(c.len() <= 100, "{c}");
        assert!(c.starts_with("start ") && c.ends_with(" end"), "{c}");
        assert!(c.contains("bytes cut]"), "{c}");
        assert_eq!(clip_middle("short", 100), "short");
        for max in 0..40 {
            assert!(clip_middle(&s, max).len() < s.len());
        }
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let bad = [
            r#"{"id":1,"method":"set","params":{"target":"x","priority":17}}"#,
            r#"{"id":1,"method":"set","params":{"target":"x","priority":-1}}"#,
            r#"{"id":1,"method":"set","params":{"target":"x","share":0}}"#,
            r#"{"id":1,"method":"set","params":{"target":"x","share":1.5}}"#,
            r#"{"id":1,"method":"set","params":{"target":"x","memory_limit":0}}"#,
            r#"{"id":1,"method":"set","params":{"target":"x"}}"#,
            r#"{"id":1,"method":"set","params":{"target":"","priority":1}}"#,
            r#"{"id":1,"method":"show","params":{"target":"../etc"}}"#,
            r#"{"id":1,"method":"policy_set","params":{"policy":"fastest"}}"#,
            r#"{"id":1,"method":"create","params":{"parent":"p","type":"t","autostart":true}}"#,
            r#"{"id":1,"method":"define","params":{"parent":"p","type":"t","uuid":"nope"}}"#,
        ];
        for line in bad {
            let e = parse(line).err().map(|(_, e)| e.code);
            assert_eq!(e, Some(ErrorCode::InvalidArgument), "{line}");
        }
        let ok = r#"{"id":1,"method":"set","params":{"target":"x","priority":16,"share":1.0}}"#;
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn unknown_fields_are_refused_naming_the_field_at_every_level() {
        for (line, field) in [
            (
                r#"{"id":2,"method":"define","params":{"parent":"p","type":"t","autostrat":true}}"#,
                "autostrat",
            ),
            (
                r#"{"id":2,"method":"define","params":{"parent":"p","type":"t","overrides":{"priorty":3}}}"#,
                "priorty",
            ),
            (
                r#"{"id":2,"method":"define_batch","params":{"items":[{"parent":"p","type":"t","autostrat":true}]}}"#,
                "autostrat",
            ),
            (
                r#"{"id":2,"method":"define_batch","params":{"items":[{"parent":"p","type":"t"}],"strat":true}}"#,
                "strat",
            ),
            (
                r#"{"id":2,"method":"create","params":{"parent":"p","type":"t","defne":true}}"#,
                "defne",
            ),
            (
                r#"{"id":2,"method":"set","params":{"target":"x","priority":1,"mod":"live"}}"#,
                "mod",
            ),
            (
                r#"{"id":2,"method":"list","params":{"definde":true}}"#,
                "definde",
            ),
            (
                r#"{"id":2,"method":"show","params":{"target":"x","all":1}}"#,
                "all",
            ),
            (
                r#"{"id":2,"method":"freeze","params":{"uuid":"x"}}"#,
                "uuid",
            ),
            (
                r#"{"id":2,"method":"import_mdevctl","params":{"dryrun":true}}"#,
                "dryrun",
            ),
            (
                r#"{"id":2,"method":"policy_set","params":{"policy":"equal-share","gpus":"0"}}"#,
                "gpus",
            ),
            (
                r#"{"id":2,"method":"stats","params":{"targets":"x"}}"#,
                "targets",
            ),
            (
                r#"{"id":2,"method":"list","parms":{"defined":true}}"#,
                "parms",
            ),
        ] {
            let Err((id, e)) = parse(line) else {
                panic!("accepted: {line}");
            };
            assert_eq!((id, e.code), (2, ErrorCode::InvalidArgument), "{line}");
            assert!(
                e.message.contains(&format!("`{field}`")),
                "{line}: {}",
                e.message
            );
        }
        let e = parse(r#"{"id":3,"method":"ping","params":{"x":1}}"#).err();
        assert_eq!(
            e.map(|(id, e)| (id, e.code)),
            Some((3, ErrorCode::InvalidArgument))
        );
        // What clients send stays valid: every field, defaults left out, empty params.
        for line in [
            r#"{"id":1,"method":"define","params":{"uuid":null,"parent":"p","type":"t","autostart":true,"overrides":{"priority":3}}}"#,
            r#"{"id":1,"method":"define","params":{"parent":"p","type":"t"}}"#,
            r#"{"id":1,"method":"ping","params":{}}"#,
            r#"{"id":1,"method":"list","params":{}}"#,
        ] {
            assert!(parse(line).is_ok(), "{line}");
        }
        let batch = Call::DefineBatch(DefineBatchParams {
            items: vec![DefineParams {
                uuid: Some(Uuid::from_u128(1)),
                parent: "p".into(),
                type_name: "t".into(),
                autostart: true,
                force: false,
                overrides: crate::Overrides {
                    memory_limit: Some(1 << 30),
                    priority: Some(2),
                    share: Some(0.5),
                },
                owner_uids: Vec::new(),
            }],
            start: true,
            part: Some(BatchPart {
                batch: Uuid::from_u128(2),
                offset: 256,
                more: true,
            }),
        });
        let req = Request::new(7, batch);
        let line = req.to_line().unwrap_or_default();
        assert_eq!(parse(&line).map_err(|(_, e)| e), Ok(req), "{line}");
    }

    #[test]
    fn a_part_of_a_long_list_names_items_by_their_index_in_the_list() {
        let item = |priority: u8| DefineParams {
            uuid: None,
            parent: "p".into(),
            type_name: "t".into(),
            autostart: false,
            force: false,
            overrides: crate::Overrides {
                priority: Some(priority),
                ..crate::Overrides::default()
            },
            owner_uids: Vec::new(),
        };
        let mut items: Vec<DefineParams> = (0..44).map(|_| item(1)).collect();
        items[43] = item(17);
        let part = |offset: usize| {
            Call::DefineBatch(DefineBatchParams {
                items: items.clone(),
                start: false,
                part: Some(BatchPart {
                    batch: Uuid::from_u128(9),
                    offset,
                    more: false,
                }),
            })
        };
        let e = part(256).validate().err().map(|e| e.message);
        assert!(
            e.as_deref().is_some_and(|m| m.starts_with("item 299: ")),
            "{e:?}"
        );
        let e = part(MAX_BATCH_LIST - 10)
            .validate()
            .err()
            .map(|e| e.message);
        assert!(
            e.as_deref().is_some_and(|m| m.contains("at most 16384")),
            "{e:?}"
        );
        let bad = r#"{"id":2,"method":"define_batch","params":{"items":[{"parent":"p","type":"t"}],
            "part":{"batch":"00000000-0000-0000-0000-000000000009","offset":0,"mor":true}}}"#;
        let e = parse(&bad.replace('\n', "")).err().map(|(_, e)| e.message);
        assert!(e.as_deref().is_some_and(|m| m.contains("`mor`")), "{e:?}");
    }

    #[test]
    fn group_members_may_retune_but_not_create() {
        let set = Call::Set(SetParams::default());
        assert!(set.allowed_for_group() && set.is_mutating());
        let create = Call::Stop(Target { target: "x".into() });
        assert!(!create.allowed_for_group());
        assert!(!Call::Ping.is_mutating());
    }
}
