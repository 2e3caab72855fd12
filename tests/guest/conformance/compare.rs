//! Lining up the records of two targets and listing every difference.

use std::fmt;

use super::record::StepRecord;

/// One field of one step that differs between the two targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The step's position.
    pub step: usize,
    /// The step's name.
    pub name: String,
    /// Which field differs (`ok`, `errno`, `state.devices`, `missing`, ...).
    pub field: String,
    /// The reference's value (the kernel's).
    pub reference: String,
    /// The candidate's value (the simulated host's).
    pub candidate: String,
}

/// The outcome of comparing two runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Steps run by both with identical results.
    pub matched: Vec<String>,
    /// Steps skipped by one side (not compared), with the reason.
    pub skipped: Vec<(String, String)>,
    /// Every difference found.
    pub differences: Vec<Difference>,
}

impl Comparison {
    /// Whether nothing differed.
    pub fn is_match(&self) -> bool {
        self.differences.is_empty()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} step(s) matched, {} skipped, {} difference(s)",
            self.matched.len(),
            self.skipped.len(),
            self.differences.len()
        )?;
        for (name, why) in &self.skipped {
            writeln!(f, "  skipped {name}: {why}")?;
        }
        for d in &self.differences {
            writeln!(f, "  step {} {} — {}:", d.step, d.name, d.field)?;
            writeln!(f, "    kernel: {}", d.reference)?;
            writeln!(f, "    sim:    {}", d.candidate)?;
        }
        Ok(())
    }
}

fn show<T: fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

/// Compare `candidate` with `reference` step by step (matched by position and name).
///
/// Compared: the operation and input (a sanity check that both ran the same
/// script), success, errno, the step's result, the state afterwards (parents, types
/// with `available_instances`, devices) and the errno of reading it. Error messages
/// are not compared. A step skipped by either side is listed, not compared, and so
/// is every step after it (their state depends on what the skipped step would have
/// done): the scenario keeps its optional steps (the parent unload/reload) last.
pub fn compare(reference: &[StepRecord], candidate: &[StepRecord]) -> Comparison {
    let mut out = Comparison::default();
    let mut after_skip: Option<String> = None;
    let n = reference.len().max(candidate.len());
    for i in 0..n {
        let (r, c) = match (reference.get(i), candidate.get(i)) {
            (Some(r), Some(c)) => (r, c),
            (r, c) => {
                let Some(one) = r.or(c) else { continue };
                out.differences.push(Difference {
                    step: i,
                    name: one.name.clone(),
                    field: "missing".into(),
                    reference: if r.is_some() {
                        "ran".into()
                    } else {
                        "absent".into()
                    },
                    candidate: if c.is_some() {
                        "ran".into()
                    } else {
                        "absent".into()
                    },
                });
                continue;
            }
        };
        if let Some(why) = r.skipped.as_ref().or(c.skipped.as_ref()) {
            out.skipped.push((r.name.clone(), why.clone()));
            after_skip.get_or_insert_with(|| r.name.clone());
            continue;
        }
        if let Some(first) = &after_skip {
            // The state now depends on what the skipped step would have done.
            out.skipped.push((
                r.name.clone(),
                format!("runs after the skipped step {first}"),
            ));
            continue;
        }
        let mut diffs = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                diffs.push(Difference {
                    step: i,
                    name: r.name.clone(),
                    field: name.into(),
                    reference: a,
                    candidate: b,
                });
            }
        };
        field("name", r.name.clone(), c.name.clone());
        field("op", r.op.clone(), c.op.clone());
        field("input", r.input.clone(), c.input.clone());
        field("ok", show(&r.ok), show(&c.ok));
        field("errno", errno_text(r.errno), errno_text(c.errno));
        field("result", show(&r.result), show(&c.result));
        field(
            "state_error",
            errno_text(r.state_error),
            errno_text(c.state_error),
        );
        field("during", show(&r.during), show(&c.during));
        let (rs, cs) = (
            r.state.clone().unwrap_or_default(),
            c.state.clone().unwrap_or_default(),
        );
        field("state.parents", show(&rs.parents), show(&cs.parents));
        field(
            "state.available_instances",
            rs.types
                .iter()
                .map(|t| format!("{}/{}={}", t.parent, t.type_id, t.available_instances))
                .collect::<Vec<_>>()
                .join(" "),
            cs.types
                .iter()
                .map(|t| format!("{}/{}={}", t.parent, t.type_id, t.available_instances))
                .collect::<Vec<_>>()
                .join(" "),
        );
        field(
            "state.devices",
            rs.devices
                .iter()
                .map(|d| format!("{} {}/{}", d.uuid, d.parent, d.type_id))
                .collect::<Vec<_>>()
                .join(", "),
            cs.devices
                .iter()
                .map(|d| format!("{} {}/{}", d.uuid, d.parent, d.type_id))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if diffs.is_empty() {
            out.matched.push(r.name.clone());
        } else {
            out.differences.extend(diffs);
        }
    }
    out
}

/// An errno with its symbolic name, for diffs: `Some(17) EEXIST`.
pub fn errno_text(errno: Option<i32>) -> String {
    let Some(e) = errno else { return "none".into() };
    let name = match e {
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::ENOSPC => "ENOSPC",
        libc::EUSERS => "EUSERS",
        libc::ENODEV => "ENODEV",
        libc::ENOENT => "ENOENT",
        libc::EBUSY => "EBUSY",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EIO => "EIO",
        _ => "",
    };
    format!("{e} {name}").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::conformance::{DeviceState, State};

    fn rec(step: usize, name: &str, ok: bool, errno: Option<i32>, devices: &[&str]) -> StepRecord {
        StepRecord {
            step,
            name: name.into(),
            op: "create".into(),
            input: "x".into(),
            ok: Some(ok),
            errno,
            result: None,
            error: Some(format!("message {step}")),
            skipped: None,
            state: Some(State {
                parents: vec!["mtty".into()],
                types: vec![],
                devices: devices
                    .iter()
                    .map(|u| DeviceState {
                        uuid: (*u).into(),
                        parent: "mtty".into(),
                        type_id: "mtty-1".into(),
                    })
                    .collect(),
            }),
            state_error: None,
            during: None,
            detail: None,
        }
    }

    #[test]
    fn identical_runs_match_even_with_different_messages() {
        let a = vec![
            rec(0, "create", true, None, &["u1"]),
            rec(1, "dup", false, Some(libc::EEXIST), &["u1"]),
        ];
        let mut b = a.clone();
        b[1].error = Some("worded differently".into());
        let c = compare(&a, &b);
        assert!(c.is_match(), "{c}");
        assert_eq!(c.matched, ["create", "dup"]);
    }

    #[test]
    fn a_different_errno_and_state_are_reported_with_names() {
        let a = vec![rec(0, "dup", false, Some(libc::EEXIST), &["u1"])];
        let b = vec![rec(0, "dup", false, Some(libc::EINVAL), &["u1", "u2"])];
        let c = compare(&a, &b);
        let fields: Vec<_> = c.differences.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["errno", "state.devices"]);
        let text = c.to_string();
        assert!(text.contains("kernel: 17 EEXIST"), "{text}");
        assert!(text.contains("sim:    22 EINVAL"), "{text}");
    }

    #[test]
    fn skipped_steps_and_those_after_are_listed_not_compared_and_missing_steps_differ() {
        let a = vec![
            rec(0, "create", true, None, &["u"]),
            rec(1, "unload", true, None, &[]),
            rec(2, "after", true, None, &[]),
        ];
        let mut b = vec![
            rec(0, "create", true, None, &["u"]),
            rec(1, "unload", false, Some(1), &["x"]),
            rec(2, "after", false, Some(2), &["x"]),
        ];
        b[1].skipped = Some("no unload hook".into());
        let c = compare(&a, &b);
        assert!(c.is_match(), "{c}");
        assert_eq!(c.matched, ["create"]);
        let skipped: Vec<_> = c.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["unload", "after"]);
        let c = compare(&a, &a[..2]);
        assert_eq!(c.differences.len(), 1);
        assert_eq!(c.differences[0].field, "missing");
    }
}
