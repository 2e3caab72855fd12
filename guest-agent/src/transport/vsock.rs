//! vsock: a stream socket to the host (CID 2) on a chosen port.
//!
//! The alternative to virtio-serial when the VM has a vsock device: the agent
//! connects to `cid:port` (CID 2 is the host). A fresh connection is a fresh
//! stream, so after a reconnect nothing of an earlier partial line is resent.

use super::LineWriter;
use crate::error::{AgentError, Result};
use std::time::Duration;

/// The host's context id.
pub const HOST_CID: u32 = 2;

/// Connect to `cid:port`, waiting at most `timeout`.
pub fn connect(cid: u32, port: u32, timeout: Duration) -> Result<LineWriter> {
    let open_err = |source| AgentError::Open {
        what: format!("vsock {cid}:{port}"),
        source,
    };
    let file = crate::sys::vsock_connect(cid, port, timeout).map_err(open_err)?;
    LineWriter::new(file).map_err(open_err)
}
