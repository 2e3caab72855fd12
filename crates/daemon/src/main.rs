//! gvm-vgpud (being written).
fn main() {}
