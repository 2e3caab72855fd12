//! gvm-sched (placeholder, being written).
