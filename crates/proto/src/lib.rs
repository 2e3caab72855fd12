//! Wire types of the gvm-vgpud API.
//!
//! The daemon `gvm-vgpud` owns the live state of a host's vGPUs (mediated devices
//! whose types carry GVM memory limits and compute priorities) and serves an API on
//! a Unix socket, by default `/run/gvm-vgpu/api.sock` under the host root. The CLI
//! (`gvm-vgpu`) and any other client talk to it with **newline-delimited JSON**:
//! one request object per line, one response object per line, in order.
//!
//! ```text
//! → {"id":1,"method":"set","params":{"target":"vm1","priority":2}}
//! ← {"id":1,"result":{...}}
//! → {"id":2,"method":"show","params":{"target":"nope"}}
//! ← {"id":2,"error":{"code":"not_found","message":"no vGPU or domain named 'nope' ..."}}
//! ```
//!
//! This crate holds every type that crosses the socket so that the daemon and its
//! clients cannot disagree: [`Request`]/[`Call`] (method + params), [`Response`],
//! [`ApiError`]/[`ErrorCode`], and the result types ([`VgpuInfo`], [`VgpuDetail`],
//! [`Definition`], ...). Parameter validation that needs no host state lives here
//! too ([`Call::validate`]), so a client can reject bad input before sending it.
//!
//! Memory sizes are bytes (`u64`); [`UNLIMITED`] (`u64::MAX`) is the kernel's
//! "no limit" value, exactly as GVM's `memory.limit` file spells it.
//!
//! Modules:
//! - `call`: requests: an `id`, a `method` name and its `params`;
//! - `error`: API errors: a stable machine-readable code plus a message for people;
//! - `guest`: what the daemon knows about the guest agents of running VMs;
//! - `sched`: wire types of the live GPU time-slice scheduler;
//! - `types`: result types: what the daemon knows about each vGPU.

mod call;
mod error;
mod guest;
mod sched;
mod types;

pub use call::{
    BatchPart, Call, CreateParams, DefineBatchParams, DefineParams, ImportParams, ListParams,
    PolicyParams, Request, SetMode, SetParams, StatsParams, Target, MAX_BATCH, MAX_BATCH_LIST,
    MAX_OWNER_UIDS,
};
pub use error::{ApiError, ErrorCode, MAX_MESSAGE_BYTES};
pub use guest::{
    GuestAgentInfo, GuestCounters, GuestHello, GuestReport, GuestStats, ProcessSample,
};
pub use sched::{
    GpuSched, NvidiaChange, NvidiaChangeOutcome, NvidiaSched, NvidiaSchedStatus, PolicyConfig,
    SchedCounters, SchedStatus, SchedVgpu, UnmappedPolicy,
};
pub use types::{
    BatchFailure, BatchReport, CatalogStatus, ConfigReload, ConfigStatus, Definition, Drift,
    GcgroupInfo, GuestEnforcement, GuestProcess, ImportReport, Knobs, MdevctlSource, Overrides,
    OwnerInfo, OwnerRule, Pong, ReconcileReport, RefusedClaim, ReloadFailure, Source, Sources,
    StartMode, Totals, VgpuDetail, VgpuInfo, VgpuKind, VgpuState,
};

use serde::{Deserialize, Serialize};

/// Version of this wire protocol; bumped on incompatible changes and on additions a
/// client must check for before relying on them. 2: `define_batch` lists in parts
/// ([`BatchPart`]), unknown request fields refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// Version of the object shapes `gvm-vgpu --json` prints, the top-level `"schema"` of
/// every object it writes (docs/cli-json.md). Bumped when a field is renamed or removed or
/// changes meaning; new fields do not bump it.
pub const JSON_SCHEMA: u32 = 1;

/// Longest request or response line either side accepts, newline included.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// GVM's "no memory limit" value (`18446744073709551615` in `memory.limit`).
pub const UNLIMITED: u64 = u64::MAX;

/// Highest (weakest) GVM compute priority; lower is more GPU time.
pub const MAX_PRIORITY: u8 = 16;

/// Default socket path relative to the host root.
pub const DEFAULT_SOCKET: &str = "/run/gvm-vgpu/api.sock";

/// One response line: `result` on success, `error` on failure, never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The `id` of the request this answers (0 when the request had none readable).
    pub id: u64,
    /// The method's result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The failure, with a stable code and a message saying what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    /// A success carrying `result` serialized to JSON.
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                id,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(
                id,
                ApiError::new(ErrorCode::Internal, format!("cannot encode result: {e}")),
            ),
        }
    }

    /// A failure.
    pub fn err(id: u64, error: ApiError) -> Response {
        Response {
            id,
            result: None,
            error: Some(error),
        }
    }

    /// The result decoded as `T`, or the error the daemon sent.
    pub fn into_result<T: serde::de::DeserializeOwned>(self) -> Result<T, ApiError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let v = self.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("the daemon's answer does not match this client's protocol: {e}"),
            )
        })
    }
}

/// Render a memory size for people: `unlimited` or bytes with a binary unit.
pub fn format_bytes(bytes: u64) -> String {
    if bytes == UNLIMITED {
        return "unlimited".to_string();
    }
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_round_trips_result_and_error() {
        let r = Response::ok(7, &Pong::default());
        let line = serde_json::to_string(&r).unwrap_or_default();
        assert!(line.contains("\"result\""));
        assert!(!line.contains("\"error\""));
        let back: Response = serde_json::from_str(&line).unwrap_or(Response::err(
            0,
            ApiError::new(ErrorCode::Internal, "decode"),
        ));
        assert_eq!(back.id, 7);
        assert!(back.into_result::<Pong>().is_ok());

        let e = Response::err(3, ApiError::new(ErrorCode::NotFound, "gone"));
        let line = serde_json::to_string(&e).unwrap_or_default();
        assert!(line.contains("\"code\":\"not_found\""), "{line}");
        let back: Response = serde_json::from_str(&line).unwrap_or(Response::ok(0, &()));
        let err = back.into_result::<Pong>().err();
        assert_eq!(err.map(|e| e.code), Some(ErrorCode::NotFound));
    }

    #[test]
    fn bytes_format_with_units() {
        assert_eq!(format_bytes(UNLIMITED), "unlimited");
        assert_eq!(format_bytes(6 << 30), "6G");
        assert_eq!(format_bytes(1536 << 20), "1536M");
        assert_eq!(format_bytes(1000), "1000");
    }
}
