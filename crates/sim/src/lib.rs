//! gvm-vgpu-sim (placeholder).
