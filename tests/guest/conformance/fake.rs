//! An in-memory model of the kernel's mtty parent, to test the executor without a kernel.
//!
//! It follows what a 6.1 kernel was seen to do (see docs/conformance.md); the
//! tests below check that the executor records those answers faithfully.

use super::held::{HeldOutcome, HeldPlan, Seen};
use super::record::{DeviceState, State, TypeState};
use super::run::{Hook, MdevOps, OpError};

const PORTS: u32 = 24;

pub(crate) struct FakeMtty {
    pub registered: bool,
    /// (uuid, type id)
    pub devices: Vec<(String, String)>,
    pub random_counter: u32,
    pub hooks: bool,
}

impl FakeMtty {
    pub(crate) fn new(hooks: bool) -> Self {
        FakeMtty {
            registered: true,
            devices: Vec::new(),
            random_counter: 0,
            hooks,
        }
    }

    fn ports(type_id: &str) -> u32 {
        if type_id == "mtty-2" {
            2
        } else {
            1
        }
    }

    fn used(&self) -> u32 {
        self.devices.iter().map(|(_, t)| Self::ports(t)).sum()
    }

    fn available(&self, type_id: &str) -> u32 {
        (PORTS - self.used()) / Self::ports(type_id)
    }

    fn err(errno: i32) -> OpError {
        OpError {
            errno: Some(errno),
            message: format!("errno {errno}"),
        }
    }

    fn kernel_create(&mut self, type_id: &str, bytes: &[u8]) -> Result<String, OpError> {
        if !self.registered {
            return Err(Self::err(libc::ENOENT));
        }
        if bytes.len() != 36 && bytes.len() != 37 {
            return Err(Self::err(libc::EINVAL));
        }
        let text = std::str::from_utf8(&bytes[..36]).map_err(|_| Self::err(libc::EINVAL))?;
        let uuid = uuid::Uuid::parse_str(text)
            .map_err(|_| Self::err(libc::EINVAL))?
            .to_string();
        if self.devices.iter().any(|(u, _)| *u == uuid) {
            return Err(Self::err(libc::EEXIST));
        }
        if self.available(type_id) == 0 {
            return Err(Self::err(libc::ENOSPC));
        }
        self.devices.push((uuid.clone(), type_id.to_string()));
        Ok(uuid)
    }
}

impl MdevOps for FakeMtty {
    fn state(&mut self) -> Result<State, OpError> {
        if !self.registered {
            return Ok(State {
                devices: Vec::new(),
                ..State::default()
            });
        }
        Ok(State {
            parents: vec!["mtty".into()],
            types: ["mtty-1", "mtty-2"]
                .iter()
                .map(|t| TypeState {
                    parent: "mtty".into(),
                    type_id: (*t).into(),
                    available_instances: self.available(t),
                })
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|(u, t)| DeviceState {
                    uuid: u.clone(),
                    parent: "mtty".into(),
                    type_id: t.clone(),
                })
                .collect(),
        })
    }

    fn create(
        &mut self,
        _parent: &str,
        type_id: &str,
        uuid: Option<&str>,
    ) -> Result<String, OpError> {
        if !self.registered {
            return Err(Self::err(libc::ENOENT));
        }
        if self.available(type_id) == 0 {
            return Err(OpError {
                errno: None,
                message: "no free instance (pre-check)".into(),
            });
        }
        let text = match uuid {
            Some(u) => uuid::Uuid::parse_str(u)
                .map_err(|_| Self::err(libc::EINVAL))?
                .to_string(),
            None => {
                self.random_counter += 1;
                format!("aaaaaaaa-0000-4000-8000-{:012x}", self.random_counter)
            }
        };
        self.kernel_create(type_id, text.as_bytes())
    }

    fn create_raw(&mut self, _parent: &str, type_id: &str, bytes: &[u8]) -> Result<(), OpError> {
        self.kernel_create(type_id, bytes).map(|_| ())
    }

    fn remove(&mut self, uuid: &str) -> Result<(), OpError> {
        self.remove_raw(uuid, b"1\n")
    }

    fn remove_raw(&mut self, dir: &str, bytes: &[u8]) -> Result<(), OpError> {
        let Some(pos) = self.devices.iter().position(|(u, _)| u == dir) else {
            return Err(Self::err(libc::ENOENT));
        };
        let text = String::from_utf8_lossy(bytes);
        let n: u64 = text.trim().parse().map_err(|_| Self::err(libc::EINVAL))?;
        if n != 0 {
            self.devices.remove(pos);
        }
        Ok(())
    }

    fn remove_held(
        &mut self,
        _parent: &str,
        _type_id: &str,
        uuid: &str,
        plan: &HeldPlan,
    ) -> Result<HeldOutcome, OpError> {
        // What the 6.1 kernel did (docs/conformance.md): the write blocks until the
        // holder lets go, the device has left the bus and its type meanwhile but still
        // takes its ports, a second write finds no `remove`, a signal does not end the
        // write, and it then succeeds.
        if !self.devices.iter().any(|(u, _)| u == uuid) {
            return Err(Self::err(libc::ENOENT));
        }
        let during = self.state().map(|mut s| {
            s.devices.retain(|d| d.uuid != uuid);
            s
        })?;
        self.remove_raw(uuid, b"1\n")?;
        let facts = [
            ("bus-link", "absent"),
            ("device-dir", "present"),
            ("remove-attr", "absent"),
            ("mdev_type-link", "absent"),
            ("iommu_group-link", "present"),
            ("type-devices-link", "absent"),
            ("second-remove", "errno-2"),
        ];
        Ok(HeldOutcome {
            write: Ok(2),
            blocked_until_release: true,
            blocked_after_signal: plan.signal_after_ms.map(|_| true),
            returned_on_release: Some(true),
            seen: Seen {
                facts: facts
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                state: Some(during),
                state_error: None,
            },
            detail: String::new(),
        })
    }

    fn hook(&mut self, hook: Hook) -> Option<Result<(), OpError>> {
        if !self.hooks {
            return None;
        }
        match hook {
            Hook::Unload => {
                self.devices.clear();
                self.registered = false;
            }
            Hook::Load => self.registered = true,
        }
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::conformance::{compare, execute, mtty_scenario, StepRecord};

    fn run(hooks: bool) -> Vec<StepRecord> {
        let mut fake = FakeMtty::new(hooks);
        let mut printed = 0;
        let recs = execute(
            &mut fake,
            "mtty",
            &mtty_scenario("mtty-1", "mtty-2"),
            &mut |_| printed += 1,
        );
        assert_eq!(printed, recs.len());
        recs
    }

    fn step<'a>(recs: &'a [StepRecord], name: &str) -> &'a StepRecord {
        match recs.iter().find(|r| r.name == name) {
            Some(r) => r,
            None => panic!("no step {name}"),
        }
    }

    #[test]
    fn the_executor_records_outcomes_errnos_and_state() {
        let recs = run(true);
        assert_eq!(step(&recs, "create").ok, Some(true));
        assert_eq!(
            step(&recs, "duplicate-other-type").errno,
            Some(libc::EEXIST)
        );
        assert_eq!(
            step(&recs, "duplicate-upper-case").errno,
            Some(libc::EEXIST)
        );
        assert_eq!(step(&recs, "uuid-38-bytes").errno, Some(libc::EINVAL));
        assert_eq!(step(&recs, "uuid-37th-byte-any").ok, Some(true));
        let upper = step(&recs, "create-upper-case-api");
        assert_eq!(
            upper.result.as_deref(),
            Some(crate::guest::conformance::fixed_uuid(7).as_str())
        );
        // The random UUID shows up under its placeholder and is gone again after removal.
        let random = step(&recs, "create-random-uuid");
        assert_eq!(random.result.as_deref(), Some("generated-1"));
        let listed = random
            .state
            .as_ref()
            .map(|s| s.devices.iter().any(|d| d.uuid == "generated-1"));
        assert_eq!(listed, Some(true));
        assert_eq!(step(&recs, "remove-random-uuid").ok, Some(true));
        // Filling type B stops at the client's pre-check (no errno); the raw write then gets ENOSPC.
        let fill = step(&recs, "exhaust-type-b");
        assert_eq!((fill.ok, fill.errno), (Some(false), None));
        assert!(
            fill.error.as_deref().unwrap_or("").starts_with("created="),
            "{fill:?}"
        );
        assert_eq!(
            step(&recs, "create-raw-in-exhausted-type").errno,
            Some(libc::ENOSPC)
        );
        assert_eq!(
            step(&recs, "create-raw-in-exhausted-pool").errno,
            Some(libc::ENOSPC)
        );
        let zero = step(&recs, "remove-0");
        let still = zero.state.as_ref().map(|s| {
            s.devices
                .iter()
                .any(|d| d.uuid == crate::guest::conformance::fixed_uuid(1))
        });
        assert_eq!((zero.ok, still), (Some(true), Some(true)));
        assert_eq!(step(&recs, "remove-garbage").errno, Some(libc::EINVAL));
        assert_eq!(step(&recs, "remove-missing").errno, Some(libc::ENOENT));
        let unload = step(&recs, "unload-with-live-devices");
        assert_eq!(unload.state.as_ref().map(|s| s.devices.len()), Some(0));
        assert_eq!(step(&recs, "create-after-reload").ok, Some(true));
        // The held steps: the summary is the result, the state while blocked is kept
        // apart from the state afterwards, the timings are not compared.
        let held = step(&recs, "remove-held");
        assert_eq!(held.ok, Some(true));
        let summary = held.result.as_deref().unwrap_or("");
        assert!(
            summary.starts_with("blocked-until-release=yes wrote 2 returned-on-release=yes"),
            "{summary}"
        );
        assert!(summary.contains("second-remove=errno-2"), "{summary}");
        let uuid = crate::guest::conformance::fixed_uuid(3);
        let listed = |s: &Option<crate::guest::conformance::State>| {
            s.as_ref().map(|s| s.devices.iter().any(|d| d.uuid == uuid))
        };
        assert_eq!(listed(&held.during), Some(false));
        assert_eq!(listed(&held.state), Some(false));
        let long = step(&recs, "remove-held-signal-long");
        assert!(long
            .result
            .as_deref()
            .is_some_and(|r| r.contains("blocked-after-signal=yes")));
    }

    #[test]
    fn a_run_compares_equal_to_itself_and_skips_missing_hooks() {
        let with = run(true);
        assert!(compare(&with, &run(true)).is_match());
        let without = run(false);
        let c = compare(&with, &without);
        let skipped: Vec<_> = c.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            skipped,
            [
                "unload-with-live-devices",
                "create-while-unloaded",
                "reload",
                "create-after-reload",
                "cleanup"
            ]
        );
        assert!(c.is_match(), "{c}");
        // A target that answers one step differently is caught.
        let mut other = run(true);
        other[3].errno = Some(libc::EINVAL);
        let c = compare(&with, &other);
        assert_eq!(c.differences.len(), 1, "{c}");
        assert_eq!(c.differences[0].name, "duplicate-other-type");
    }

    #[test]
    fn records_round_trip_through_json_lines() -> Result<(), serde_json::Error> {
        let recs = run(true);
        let lines: Vec<String> = recs
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let back = StepRecord::parse_lines(lines.iter().map(String::as_str))?;
        assert_eq!(back, recs);
        Ok(())
    }
}
