//! gvm-vgpud core (being written).
