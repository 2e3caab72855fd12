#!/bin/sh
# Install libgvm_cuda.so in a guest and list it in /etc/ld.so.preload, so that every
# dynamically linked process (CUDA programs among them) loads the interposer.
# Usage: install-preload.sh PATH/TO/libgvm_cuda.so [ROOT]   (ROOT defaults to /)
# Idempotent: the entry is added once; the file's other entries are kept.
set -eu
lib=${1:?usage: install-preload.sh PATH/TO/libgvm_cuda.so [ROOT]}
root=${2:-/}
entry=/usr/lib/gvm-vgpu/libgvm_cuda.so
[ -f "$lib" ] || { echo "install-preload: $lib is not a file: build crates/shim first" >&2; exit 2; }
install -D -m 0644 "$lib" "$root$entry"
touch "$root/etc/ld.so.preload"
grep -qxF "$entry" "$root/etc/ld.so.preload" || printf '%s\n' "$entry" >> "$root/etc/ld.so.preload"
echo "install-preload: $root$entry listed in $root/etc/ld.so.preload"
