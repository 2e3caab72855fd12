//! gvm-vgpu-agent (placeholder).
fn main() {}
