"""Read a gvm-vgpu shim control block (layout 1, see crates/shim/src/control.rs)."""
import os
import struct

FIELDS = {  # name: (offset, struct format)
    "magic": (0, "<Q"), "version": (8, "<I"), "pid": (12, "<I"),
    "memory_limit": (16, "<Q"), "memory_current": (24, "<Q"), "swap_current": (32, "<Q"),
    "submitted": (40, "<Q"), "ended": (48, "<Q"), "priority": (56, "<I"), "frozen": (60, "<I"),
    "hold": (64, "<I"), "host_swap": (68, "<I"), "waiting": (72, "<I"), "flags": (76, "<I"),
}


def read(path=None):
    path = path or os.environ.get("GVM_SHIM_CONTROL") or f"/dev/shm/gvm-vgpu-{os.getpid()}"
    with open(path, "rb") as f:
        data = f.read(256)
    return {k: struct.unpack_from(fmt, data, off)[0] for k, (off, fmt) in FIELDS.items()}
