//! What one step of the scenario observed, as one JSON line.

use serde::{Deserialize, Serialize};

/// One live device as the client listed it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceState {
    /// Its UUID (or a `generated-N` placeholder for one the scenario did not choose).
    pub uuid: String,
    /// Its parent.
    pub parent: String,
    /// Its type id.
    pub type_id: String,
}

/// One type of a parent and its free instances.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TypeState {
    /// The parent.
    pub parent: String,
    /// The type id.
    pub type_id: String,
    /// `available_instances`.
    pub available_instances: u32,
}

/// The state of the host after a step: registered parents, types, devices (all sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Registered parent names.
    pub parents: Vec<String>,
    /// Every type of every parent.
    pub types: Vec<TypeState>,
    /// Every live device.
    pub devices: Vec<DeviceState>,
}

impl State {
    /// Sort every list so that two states compare regardless of listing order.
    pub fn normalized(mut self) -> Self {
        self.parents.sort();
        self.types.sort();
        self.devices.sort();
        self
    }
}

/// The record of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the scenario, from 0.
    pub step: usize,
    /// The step's name (stable across targets).
    pub name: String,
    /// The operation (`create`, `create_raw`, `remove_raw`, ...).
    pub op: String,
    /// What was written or asked, printable.
    pub input: String,
    /// Whether it succeeded; `None` when the step was skipped on this target.
    pub ok: Option<bool>,
    /// The errno of a failure, when the failure carried one.
    pub errno: Option<i32>,
    /// A step's result beyond success (a created UUID, a count).
    pub result: Option<String>,
    /// The error message (informative only; never compared).
    pub error: Option<String>,
    /// Why the step was skipped, when it was.
    pub skipped: Option<String>,
    /// The state after the step; `None` if it could not be read (see `error`).
    pub state: Option<State>,
    /// Error reading the state, if any (compared: both targets should list alike).
    pub state_error: Option<i32>,
    /// The state seen *during* the step, while a held device's `remove` write was blocked.
    #[serde(default)]
    pub during: Option<State>,
    /// Timings and other informative notes (never compared).
    #[serde(default)]
    pub detail: Option<String>,
}

impl StepRecord {
    /// Parse the JSON lines a runner printed, ignoring blank lines.
    pub fn parse_lines<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<StepRecord>, serde_json::Error> {
        lines
            .into_iter()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(serde_json::from_str)
            .collect()
    }
}
