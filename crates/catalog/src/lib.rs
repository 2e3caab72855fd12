//! gvm-catalog (placeholder, being written).
