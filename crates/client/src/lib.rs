//! gvm-client (being written).
