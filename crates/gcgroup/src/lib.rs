//! gvm-gcgroup (placeholder, being written).
