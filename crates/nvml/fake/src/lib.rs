//! A stand-in for `libnvidia-ml.so.1`, built for gvm-nvml's tests.
//!
//! It exports only the NVML calls gvm-nvml makes (nvml-wrapper-sys resolves every symbol when
//! the library is opened but keeps a missing one as an error until it is called, so a library
//! without the rest still loads). It is an honest fake:
//!
//! - its structs are `nvml-wrapper-sys`'s bindings, their sizes checked at compile time against
//!   `nvml.h` (`layout`), and the version word of a versioned struct is checked on every call
//!   (`NVML_ERROR_ARGUMENT_VERSION_MISMATCH`);
//! - every refusal returns the code NVML's reference documents for it, with the reference
//!   quoted beside it (`calls`): the vGPU scheduler and heterogeneous mode are
//!   `NVML_ERROR_NOT_SUPPORTED` on a GPU without NVIDIA's vGPU manager, setting the scheduler
//!   is `NVML_ERROR_NOT_SUPPORTED` while any vGPU instance exists, setting heterogeneous mode is
//!   `NVML_ERROR_IN_USE` then;
//! - its host is a JSON file (`state`) that it reads on every call and writes back after a
//!   successful set, so a test sets up a host by writing the file and sees what was set by
//!   reading it back.
//!
//! Modules:
//! - `calls`: what each call does, on plain values, with the reference's codes;
//! - `layout`: the struct sizes and version words;
//! - `state`: the JSON host;
//! - `sys`: the exported C symbols and all of the `unsafe`.
#![deny(missing_docs)]

pub mod calls;
pub mod layout;
pub mod state;
mod sys;

pub use sys::{STATE_ENV, STATE_FILE};
