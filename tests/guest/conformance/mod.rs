//! The mdev conformance scenario: one script, run against a real kernel and the simulated host.
//!
//! The simulated host (`gvm-vgpu-sim --model mtty`) claims to answer the mdev sysfs
//! ABI as the kernel does. This module makes that claim checkable. A fixed list of
//! [`Step`]s ([`mtty_scenario`]) — create, duplicates in the same and another type
//! and in upper case, malformed writes, 36/37/38-byte UUIDs, exhausting a pool two
//! types share, `remove` with `0`/`1`/garbage, unloading the parent with live
//! devices and loading it again — is executed by [`execute`] through any
//! [`MdevOps`] (the `gvm-mdev-conformance` binary implements it with the project's
//! `gvm-mdev` client). Each step yields a [`StepRecord`]: the outcome, the errno, and
//! the observed state (devices and `available_instances` per type) afterwards.
//! [`compare`] lines up the records of two targets and lists every difference.
//!
//! The held-device steps ([`held`]) remove a device that a holder keeps open (a VFIO
//! device fd on a kernel, an owner process on the simulated host) and record whether the
//! `remove` write blocks, what sysfs shows meanwhile and when and how it returns.
//!
//! Devices whose UUID the scenario did not choose (created with a random UUID) are
//! recorded under stable placeholder names (`generated-1`), so that runs compare.

mod compare;
pub mod held;
mod record;
mod run;
mod scenario;
pub mod sys;

#[cfg(test)]
mod fake;

pub use compare::{compare, Comparison, Difference};
pub use record::{DeviceState, State, StepRecord, TypeState};
pub use run::{execute, Hook, MdevOps, OpError};
pub use scenario::{fill_uuid, fixed_uuid, mtty_scenario, Op, Step};
