#!/bin/sh
# Build the Debian packages with cargo-deb: the host package gvm-vgpu (from crates/daemon's
# [package.metadata.deb]) and the guest package gvm-vgpu-agent (guest-agent/Cargo.toml).
# Every binary is built first, then gvm-vgpu-docs writes the man pages and completions to
# packaging/generated/ (ignored by git; outside target/release so that cargo-deb gzips the
# pages as Debian policy wants), where the packages' assets name them; cargo deb only packs
# (and strips the binaries, moving their debug symbols to -dbgsym packages).
# Usage: packaging/build-debs.sh   (the .deb files land in <target>/debian/)
set -eu
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cargo build --release --locked \
    -p gvm-vgpud -p gvm-vgpu-cli -p gvm-libvirt -p gvm-vgpu-sim -p gvm-cuda-shim \
    -p gvm-vgpu-agent -p gvm-vgpu-docs
rm -rf packaging/generated
"$target/release/gvm-vgpu-docs" packaging/generated
cargo deb --no-build -p gvm-vgpud
cargo deb --no-build -p gvm-vgpu-agent
ls -l "$target"/debian/*.deb
