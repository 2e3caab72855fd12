//! gvm-gpu-model (placeholder).
