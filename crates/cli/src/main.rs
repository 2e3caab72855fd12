//! gvm-vgpu CLI (placeholder).
fn main() {}
