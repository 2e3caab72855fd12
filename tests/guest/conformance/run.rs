//! Executing the scenario against one target and recording each step.

use std::collections::BTreeMap;

use super::held::{HeldOutcome, HeldPlan};
use super::record::{State, StepRecord};
use super::scenario::{fill_uuid, Op, Step};

/// A failed operation: its errno (if it carried one) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// The errno the kernel or client reported, if any.
    pub errno: Option<i32>,
    /// The full error message.
    pub message: String,
}

/// A target-specific action: unloading or loading the parent's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Unregister the parent (`rmmod mtty` on a kernel).
    Unload,
    /// Register it again (`insmod mtty.ko`).
    Load,
}

impl Hook {
    /// `unload` or `load`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Unload => "unload",
            Hook::Load => "load",
        }
    }
}

/// The operations the scenario needs from an mdev client.
pub trait MdevOps {
    /// Every registered parent, type and device.
    fn state(&mut self) -> Result<State, OpError>;
    /// Create a device through the client's checked path; returns its UUID (lower case).
    fn create(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: Option<&str>,
    ) -> Result<String, OpError>;
    /// Write bytes to a type's `create` attribute.
    fn create_raw(&mut self, parent: &str, type_id: &str, bytes: &[u8]) -> Result<(), OpError>;
    /// Remove a device through the client's checked path.
    fn remove(&mut self, uuid: &str) -> Result<(), OpError>;
    /// Write bytes to a device's `remove` attribute.
    fn remove_raw(&mut self, dir: &str, bytes: &[u8]) -> Result<(), OpError>;
    /// Hold `uuid` (of `type_id` on `parent`) open, write `1` to its `remove` from a second
    /// thread and follow `plan` ([`super::held::run_held_remove`]).
    fn remove_held(
        &mut self,
        parent: &str,
        type_id: &str,
        uuid: &str,
        plan: &HeldPlan,
    ) -> Result<HeldOutcome, OpError>;
    /// Run a hook; `None` when this target has none configured (the step is skipped).
    fn hook(&mut self, hook: Hook) -> Option<Result<(), OpError>>;
}

/// Run every step against `ops`, handing each record to `sink` as soon as it is made.
pub fn execute(
    ops: &mut dyn MdevOps,
    parent: &str,
    steps: &[Step],
    sink: &mut dyn FnMut(&StepRecord),
) -> Vec<StepRecord> {
    let mut names = Placeholders::default();
    let mut last_generated: Option<String> = None;
    let mut records = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let mut rec = StepRecord {
            step: i,
            name: step.name.to_string(),
            op: step.op.name().to_string(),
            input: step.op.input(),
            ok: None,
            errno: None,
            result: None,
            error: None,
            skipped: None,
            state: None,
            state_error: None,
            during: None,
            detail: None,
        };
        let outcome: Option<Result<Option<String>, OpError>> = match &step.op {
            Op::Observe => Some(Ok(None)),
            Op::Create { type_id, uuid } => {
                Some(ops.create(parent, type_id, uuid.as_deref()).map(|u| {
                    if uuid.is_none() {
                        last_generated = Some(u.clone());
                    }
                    Some(names.name(&u, uuid.is_none()))
                }))
            }
            Op::CreateRaw { type_id, bytes } => {
                Some(ops.create_raw(parent, type_id, bytes).map(|()| None))
            }
            Op::Fill { type_id, tag, max } => Some(fill(ops, parent, type_id, *tag, *max)),
            Op::Remove { uuid } => Some(ops.remove(uuid).map(|()| None)),
            Op::RemoveGenerated => Some(match last_generated.take() {
                Some(u) => ops.remove(&u).map(|()| None),
                None => Err(OpError {
                    errno: None,
                    message: "no device was created with a random UUID before this step".into(),
                }),
            }),
            Op::RemoveRaw { dir, bytes } => Some(ops.remove_raw(dir, bytes).map(|()| None)),
            Op::RemoveHeld {
                type_id,
                uuid,
                plan,
            } => Some(match ops.remove_held(parent, type_id, uuid, plan) {
                Ok(h) => {
                    rec.during = h.seen.state.clone().map(|s| names.apply(s).normalized());
                    rec.detail = Some(h.detail.clone());
                    let summary = h.summary();
                    match h.write {
                        Ok(_) => Ok(Some(summary)),
                        Err(errno) => Err(OpError {
                            errno,
                            message: summary,
                        }),
                    }
                }
                Err(e) => Err(e),
            }),
            Op::Hook(h) => ops.hook(*h).map(|r| r.map(|()| None)),
        };
        match outcome {
            None => rec.skipped = Some(format!("no {} hook on this target", step.op.name())),
            Some(Ok(result)) => {
                rec.ok = Some(true);
                rec.result = result;
            }
            Some(Err(e)) => {
                rec.ok = Some(false);
                rec.errno = e.errno;
                rec.error = Some(e.message);
            }
        }
        match ops.state() {
            Ok(s) => rec.state = Some(names.apply(s).normalized()),
            Err(e) => {
                rec.state_error = e.errno;
                let msg = rec.error.take().map_or(String::new(), |m| m + "; ");
                rec.error = Some(format!("{msg}reading the state: {}", e.message));
            }
        }
        sink(&rec);
        records.push(rec);
    }
    records
}

/// Create devices with [`fill_uuid`]s until the client refuses; the result is
/// `created=N`, the error that ended it is the step's error. Hitting `max` is a success.
fn fill(
    ops: &mut dyn MdevOps,
    parent: &str,
    type_id: &str,
    tag: u16,
    max: u32,
) -> Result<Option<String>, OpError> {
    for n in 0..max {
        if let Err(e) = ops.create(parent, type_id, Some(&fill_uuid(tag, n))) {
            return Err(OpError {
                errno: e.errno,
                message: format!("created={n}, then: {}", e.message),
            });
        }
    }
    Ok(Some(format!("created={max}")))
}

/// Stable names for UUIDs the scenario did not choose.
#[derive(Debug, Default)]
struct Placeholders {
    map: BTreeMap<String, String>,
}

impl Placeholders {
    /// The recorded name of a created UUID: a placeholder when it was random.
    fn name(&mut self, uuid: &str, random: bool) -> String {
        if random {
            let next = format!("generated-{}", self.map.len() + 1);
            self.map.entry(uuid.to_string()).or_insert(next).clone()
        } else {
            uuid.to_string()
        }
    }

    fn apply(&self, mut s: State) -> State {
        for d in &mut s.devices {
            if let Some(p) = self.map.get(&d.uuid) {
                d.uuid = p.clone();
            }
        }
        s
    }
}
