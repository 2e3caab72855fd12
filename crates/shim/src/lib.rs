//! libgvm_cuda.so (placeholder).
