//! gvm-proto (being written).
