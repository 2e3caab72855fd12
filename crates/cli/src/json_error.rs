//! A failed command under `--json`: one object on stdout, `{"schema": N, "error": {...}}`,
//! so a script reads failures where it reads results.
//!
//! The error object carries what the text line `gvm-vgpu: error: a: b: c` carries, split:
//! `message` is the outermost error (`a`), `causes` the errors under it in order (`b`,
//! `c`, as `gvm_error_chain::error_chain` joins them). `hint` is the fix when an error in
//! the chain knows it as a value of its own (a "did you mean" suggestion for a mistyped
//! parent or type, how to reach gvm-vgpud); most messages name their fix in their text.
//! `code` is gvm-vgpud's stable error code when the daemon refused the request.

use serde::Serialize;

/// The `error` member of a failed command's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    /// The outermost error's message.
    pub message: String,
    /// Each error under it, outermost first.
    pub causes: Vec<String>,
    /// The fix, when an error in the chain carries one apart from its text.
    pub hint: Option<String>,
    /// gvm-vgpud's error code (`not_found`, `conflict`, ...), when the daemon answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<gvm_proto::ErrorCode>,
}

impl ErrorReport {
    /// The report of `err` and its chain.
    pub fn of(err: &anyhow::Error) -> ErrorReport {
        let mut chain = err.chain().map(ToString::to_string);
        ErrorReport {
            message: chain.next().unwrap_or_default(),
            causes: chain.collect(),
            hint: err.chain().find_map(hint_of),
            code: err
                .chain()
                .find_map(|e| e.downcast_ref::<gvm_client::Error>())
                .and_then(gvm_client::Error::code),
        }
    }
}

/// A failure after part of the work was done (`define --from --start` where some vGPUs
/// could not be created): under `--json` what was done goes in the failure object beside
/// `error`, under `key`, so stdout stays one object.
#[derive(Debug)]
pub struct PartlyDone {
    /// The member the done part is printed under (`batch`).
    pub key: &'static str,
    /// What was done, as its own `--json` output would print it.
    pub done: serde_json::Value,
    /// What failed.
    pub message: String,
}

impl std::fmt::Display for PartlyDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PartlyDone {}

/// The whole object printed for a failure: `{"schema": N, "error": {...}}`, plus what was
/// done before it failed, when anything was ([`PartlyDone`]).
#[derive(Debug, Serialize)]
pub struct FailureJson {
    /// [`gvm_proto::JSON_SCHEMA`].
    pub schema: u32,
    /// What failed.
    pub error: ErrorReport,
    /// What was done, under its own key.
    #[serde(flatten)]
    pub done: std::collections::BTreeMap<&'static str, serde_json::Value>,
}

impl FailureJson {
    /// The object for `err`.
    pub fn of(err: &anyhow::Error) -> FailureJson {
        FailureJson {
            schema: gvm_proto::JSON_SCHEMA,
            error: ErrorReport::of(err),
            done: err
                .chain()
                .find_map(|e| e.downcast_ref::<PartlyDone>())
                .map(|p| (p.key, p.done.clone()))
                .into_iter()
                .collect(),
        }
    }
}

/// The fix `e` carries as a value of its own, if it is an error that has one.
fn hint_of(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let did_you_mean = |s: &str| format!("did you mean '{s}'?");
    if let Some(gvm_mdev::Error::ParentNotFound {
        suggestion: Some(s),
        ..
    }) = e.downcast_ref::<gvm_mdev::Error>()
    {
        return Some(did_you_mean(s));
    }
    if let Some(gvm_vgpu_host::Error::UnknownParent {
        suggestion: Some(s),
        ..
    }) = e.downcast_ref::<gvm_vgpu_host::Error>()
    {
        return Some(did_you_mean(s));
    }
    if let Some(gvm_catalog::Error::UnknownType {
        suggestion: Some(s),
        ..
    }) = e.downcast_ref::<gvm_catalog::Error>()
    {
        return Some(did_you_mean(s));
    }
    match e.downcast_ref::<gvm_client::Error>()? {
        gvm_client::Error::NotRunning { .. } => Some(
            "start it with `systemctl start gvm-vgpud`, or `gvm-vgpud --root DIR` for a \
             simulated host"
                .into(),
        ),
        gvm_client::Error::Permission { .. } => {
            Some("run as root or as a member of the daemon's --group".into())
        }
        gvm_client::Error::RequestTooLong { .. } => Some("shorten its arguments".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn message_and_causes_split_the_text_chain_and_a_suggestion_is_the_hint() {
        let parent = gvm_mdev::Error::ParentNotFound {
            name: "0000:3c:00.0".into(),
            suggestion: Some("0000:3b:00.0".into()),
        };
        let err = Err::<(), _>(parent)
            .context("cannot create a vGPU of type sim-4c")
            .unwrap_err();
        let r = ErrorReport::of(&err);
        assert_eq!(r.message, "cannot create a vGPU of type sim-4c");
        assert_eq!(r.causes.len(), 1);
        assert!(r.causes[0].starts_with("mdev parent '0000:3c:00.0' is not registered"));
        assert_eq!(r.hint.as_deref(), Some("did you mean '0000:3b:00.0'?"));
        assert_eq!(
            format!("{}: {}", r.message, r.causes.join(": ")),
            gvm_error_chain::error_chain(err.as_ref())
        );
        assert_eq!(r.code, None);
    }

    #[test]
    fn an_error_without_a_hint_has_none_and_prints_as_schema_and_error() {
        let err = anyhow::anyhow!("nothing to set");
        let v = serde_json::to_value(FailureJson::of(&err)).unwrap_or_default();
        assert_eq!(v["schema"], gvm_proto::JSON_SCHEMA);
        assert_eq!(v["error"]["message"], "nothing to set");
        assert_eq!(v["error"]["causes"], serde_json::json!([]));
        assert!(v["error"]["hint"].is_null());
        assert!(v["error"].get("code").is_none());
    }
}
