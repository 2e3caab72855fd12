//! gvm-mdev (placeholder, being written).
