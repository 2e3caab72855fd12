//! Cross-crate end-to-end tests for gvm-vgpu.
//!
//! The unit tests of each crate check it against fixtures and the simulated host.
//! This package checks the pieces against the real thing: [`guest`] boots Debian's
//! kernel under QEMU's TCG emulation with the kernel's own mdev framework and its
//! `mtty` sample parent driver, runs the project's binaries inside, and reads their
//! results back from the serial console. [`guest::conformance`] is the scripted mdev
//! scenario that is run there and against the simulated host, step by step, so any
//! difference between the two is a test failure.

pub mod guest;
