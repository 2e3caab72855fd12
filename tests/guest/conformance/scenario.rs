//! The scripted steps, as data.
//!
//! Written for a parent with (at least) two types that share one pool of
//! resources, like the kernel's `mtty` sample (`mtty-1` takes one of 24 ports,
//! `mtty-2` two). The steps only name the two types; the answers expected are
//! never written here: they are whatever the kernel says.

use super::held::HeldPlan;

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Only record the state.
    Observe,
    /// `MdevHost::create` with this UUID text (parsed, so upper case is allowed), or a random one.
    Create {
        /// The type id.
        type_id: String,
        /// The UUID as text; `None` lets the client pick one.
        uuid: Option<String>,
    },
    /// Write these bytes to the type's `create` attribute, unchecked.
    CreateRaw {
        /// The type id.
        type_id: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// `MdevHost::create` with [`fill_uuid`]s until it fails (at most `max` devices).
    Fill {
        /// The type id.
        type_id: String,
        /// A tag that keeps the UUIDs of different fills apart.
        tag: u16,
        /// Upper bound on the devices created.
        max: u32,
    },
    /// `MdevHost::remove`.
    Remove {
        /// The UUID.
        uuid: String,
    },
    /// Remove the device the last `Create` with no UUID made.
    RemoveGenerated,
    /// Write these bytes to `/sys/bus/mdev/devices/<dir>/remove`, unchecked.
    RemoveRaw {
        /// The device directory name.
        dir: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Hold the device open, write `1` to its `remove` from another thread, follow the plan.
    RemoveHeld {
        /// Its type id (for the `devices/` link looked at).
        type_id: String,
        /// The UUID.
        uuid: String,
        /// When to look, signal and release.
        plan: super::held::HeldPlan,
    },
    /// Run the target's hook (unload or load the parent's driver).
    Hook(super::Hook),
}

impl Op {
    /// The operation's short name, as recorded.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Observe => "observe",
            Op::Create { .. } => "create",
            Op::CreateRaw { .. } => "create_raw",
            Op::Fill { .. } => "fill",
            Op::Remove { .. } => "remove",
            Op::RemoveGenerated => "remove_generated",
            Op::RemoveRaw { .. } => "remove_raw",
            Op::RemoveHeld { .. } => "remove_held",
            Op::Hook(h) => h.name(),
        }
    }

    /// The input, printable (bytes as an escaped string).
    pub fn input(&self) -> String {
        match self {
            Op::Observe | Op::RemoveGenerated | Op::Hook(_) => String::new(),
            Op::Create { type_id, uuid } => {
                format!("{type_id} {}", uuid.as_deref().unwrap_or("<random>"))
            }
            Op::CreateRaw { type_id, bytes } => format!("{type_id} {}", escaped(bytes)),
            Op::Fill { type_id, tag, max } => format!("{type_id} tag={tag} max={max}"),
            Op::Remove { uuid } => uuid.clone(),
            Op::RemoveRaw { dir, bytes } => format!("{dir} {}", escaped(bytes)),
            Op::RemoveHeld {
                type_id,
                uuid,
                plan,
            } => format!("{type_id} {uuid} {}", plan.input()),
        }
    }
}

/// One named step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Stable name, e.g. `duplicate-other-type`.
    pub name: &'static str,
    /// What it does.
    pub op: Op,
}

/// Bytes as a quoted, escaped string (`"abc\n"`).
pub fn escaped(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// The `n`th UUID the scenario chooses (lower case).
pub fn fixed_uuid(n: u32) -> String {
    format!("c0ffee00-0000-4000-8000-{n:012x}")
}

/// The `n`th UUID of the fill tagged `tag`.
pub fn fill_uuid(tag: u16, n: u32) -> String {
    format!("f1110000-{tag:04x}-4000-8000-{n:012x}")
}

/// The scenario for `parent` with two types sharing a pool (`mtty-1`, `mtty-2` on mtty).
pub fn mtty_scenario(type_a: &str, type_b: &str) -> Vec<Step> {
    let a = || type_a.to_string();
    let b = || type_b.to_string();
    let u = fixed_uuid;
    let raw = |t: String, s: String| Op::CreateRaw {
        type_id: t,
        bytes: s.into_bytes(),
    };
    let mut bad_hex = u(2);
    bad_hex.replace_range(35.., "g");
    vec![
        Step {
            name: "initial",
            op: Op::Observe,
        },
        Step {
            name: "create",
            op: Op::Create {
                type_id: a(),
                uuid: Some(u(1)),
            },
        },
        Step {
            name: "duplicate-same-type",
            op: Op::Create {
                type_id: a(),
                uuid: Some(u(1)),
            },
        },
        Step {
            name: "duplicate-other-type",
            op: Op::Create {
                type_id: b(),
                uuid: Some(u(1)),
            },
        },
        Step {
            name: "duplicate-upper-case",
            op: raw(b(), u(1).to_uppercase() + "\n"),
        },
        Step {
            name: "malformed-text",
            op: raw(a(), "not-a-uuid\n".into()),
        },
        Step {
            name: "malformed-empty",
            op: raw(a(), String::new()),
        },
        Step {
            name: "malformed-35-bytes",
            op: raw(a(), u(2)[..35].to_string()),
        },
        Step {
            name: "malformed-bad-hex",
            op: raw(a(), bad_hex),
        },
        Step {
            name: "uuid-36-bytes",
            op: raw(a(), u(2)),
        },
        Step {
            name: "uuid-37-bytes-newline",
            op: raw(a(), u(3) + "\n"),
        },
        Step {
            name: "uuid-37th-byte-any",
            op: raw(a(), u(4) + "x"),
        },
        Step {
            name: "uuid-38-bytes",
            op: raw(a(), u(5) + "\n\n"),
        },
        Step {
            name: "uuid-upper-case",
            op: raw(b(), u(6).to_uppercase() + "\n"),
        },
        Step {
            name: "create-upper-case-api",
            op: Op::Create {
                type_id: a(),
                uuid: Some(u(7).to_uppercase()),
            },
        },
        Step {
            name: "create-random-uuid",
            op: Op::Create {
                type_id: a(),
                uuid: None,
            },
        },
        Step {
            name: "remove-random-uuid",
            op: Op::RemoveGenerated,
        },
        Step {
            name: "exhaust-type-b",
            op: Op::Fill {
                type_id: b(),
                tag: 1,
                max: 64,
            },
        },
        Step {
            name: "create-raw-in-exhausted-type",
            op: raw(b(), u(8) + "\n"),
        },
        Step {
            name: "exhaust-shared-pool",
            op: Op::Fill {
                type_id: a(),
                tag: 2,
                max: 64,
            },
        },
        Step {
            name: "create-raw-in-exhausted-pool",
            op: raw(a(), u(9) + "\n"),
        },
        Step {
            name: "remove-0",
            op: Op::RemoveRaw {
                dir: u(1),
                bytes: b"0\n".to_vec(),
            },
        },
        Step {
            name: "remove-garbage",
            op: Op::RemoveRaw {
                dir: u(1),
                bytes: b"garbage\n".to_vec(),
            },
        },
        Step {
            name: "remove-1",
            op: Op::RemoveRaw {
                dir: u(1),
                bytes: b"1\n".to_vec(),
            },
        },
        Step {
            name: "remove-api",
            op: Op::Remove { uuid: u(2) },
        },
        Step {
            name: "remove-missing",
            op: Op::Remove { uuid: u(1) },
        },
        Step {
            name: "create-after-free",
            op: raw(b(), u(10) + "\n"),
        },
        // A held device: the write blocks until the holder lets go (looked at after 300 ms,
        // released at 1 s). Devices 3 and 4 are live mtty-1 devices at this point.
        Step {
            name: "remove-held",
            op: Op::RemoveHeld {
                type_id: a(),
                uuid: u(3),
                plan: HeldPlan {
                    observe_after_ms: 300,
                    signal_after_ms: None,
                    release_after_ms: 1000,
                },
            },
        },
        // The same with a signal to the writer at 500 ms, and held past the kernel's
        // 10 s wait slice (vfio_unregister_group_dev waits in 10 s timeouts).
        Step {
            name: "remove-held-signal-long",
            op: Op::RemoveHeld {
                type_id: a(),
                uuid: u(4),
                plan: HeldPlan {
                    observe_after_ms: 300,
                    signal_after_ms: Some(500),
                    release_after_ms: 11_000,
                },
            },
        },
        Step {
            name: "unload-with-live-devices",
            op: Op::Hook(super::Hook::Unload),
        },
        Step {
            name: "create-while-unloaded",
            op: Op::Create {
                type_id: a(),
                uuid: Some(u(11)),
            },
        },
        Step {
            name: "reload",
            op: Op::Hook(super::Hook::Load),
        },
        Step {
            name: "create-after-reload",
            op: Op::Create {
                type_id: b(),
                uuid: Some(u(12)),
            },
        },
        Step {
            name: "cleanup",
            op: Op::Remove { uuid: u(12) },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_well_formed_and_distinct() {
        for s in [fixed_uuid(1), fixed_uuid(0xffff), fill_uuid(2, 63)] {
            assert_eq!(s.len(), 36, "{s}");
            assert!(uuid::Uuid::parse_str(&s).is_ok(), "{s}");
        }
        assert_ne!(fill_uuid(1, 1), fill_uuid(2, 1));
    }

    #[test]
    fn step_names_are_unique_and_inputs_have_the_lengths_they_claim() {
        let steps = mtty_scenario("mtty-1", "mtty-2");
        let mut names: Vec<_> = steps.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        let len_of = |name: &str| {
            steps
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| match &s.op {
                    Op::CreateRaw { bytes, .. } => Some(bytes.len()),
                    _ => None,
                })
        };
        assert_eq!(len_of("uuid-36-bytes"), Some(36));
        assert_eq!(len_of("uuid-37-bytes-newline"), Some(37));
        assert_eq!(len_of("uuid-37th-byte-any"), Some(37));
        assert_eq!(len_of("uuid-38-bytes"), Some(38));
        assert_eq!(len_of("malformed-35-bytes"), Some(35));
    }

    #[test]
    fn inputs_are_printable() {
        let op = Op::CreateRaw {
            type_id: "t".into(),
            bytes: b"ab\n".to_vec(),
        };
        assert_eq!(op.input(), "t \"ab\\n\"");
        assert_eq!(op.name(), "create_raw");
    }
}
