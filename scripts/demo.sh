#!/usr/bin/env bash
# The main job on the simulated host: start gvm-vgpu-sim (a FUSE sysfs + GVM debugfs), create vGPUs
# of several types through the CLI and by hand, start owner processes, show the vGPUs and their
# GVM gcgroup knobs, then clean everything up. Needs root and /dev/fuse (Debian: fuse3 is optional).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root (the simulated host mounts a FUSE filesystem)" >&2
    exit 1
fi
if [ ! -e /dev/fuse ]; then
    echo "demo: /dev/fuse is missing: load the fuse module (modprobe fuse)" >&2
    exit 1
fi

bash scripts/install-deps.sh demo
echo "== building gvm-vgpu, gvm-vgpu-sim and gvm-vgpud"
cargo build --quiet -p gvm-vgpu-cli -p gvm-vgpu-sim $(test -d crates/daemon && echo -p gvm-vgpud)
bin="$repo/target/debug"

root="$(mktemp -d /tmp/gvm-vgpu-demo.XXXXXX)"
sim_pid=""
daemon_pid=""
cleanup() {
    set +e
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null; wait "$daemon_pid" 2>/dev/null; fi
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null; wait "$sim_pid" 2>/dev/null; fi
    if grep -q " $root/sys " /proc/self/mountinfo 2>/dev/null; then umount -l "$root/sys"; fi
    rm -rf "$root/etc" "$root/run"
    rmdir "$root/sys" "$root" 2>/dev/null
}
trap cleanup EXIT

export GVM_VGPU_ROOT="$root"
export GVM_VGPU_CATALOG="$repo/mdev-types"

echo "== starting the simulated host at $root (2 GPUs)"
"$bin/gvm-vgpu-sim" --root "$root" --gpus 2 --foreground &
sim_pid=$!
for _ in $(seq 100); do
    [ -e "$root/sys/kernel/debug/gvm-sim/owners" ] && break
    sleep 0.1
done
[ -d "$root/sys/class/mdev_bus" ] || { echo "demo: the simulated host did not come up" >&2; exit 1; }

if [ -x "$bin/gvm-vgpud" ]; then
    echo "== starting gvm-vgpud (adopts every vGPU and applies its type's limits)"
    "$bin/gvm-vgpud" --root "$root" 2> "$root/gvm-vgpud.log" &
    daemon_pid=$!
    for _ in $(seq 50); do
        [ -S "$root/run/gvm-vgpu/api.sock" ] && break
        sleep 0.1
    done
fi

run() { echo; echo "\$ gvm-vgpu $*"; "$bin/gvm-vgpu" "$@"; }

run parents
run types --parent 0000:3b:00.0
run create --type sim-4c --uuid 11111111-2222-4333-8444-555555555555
run create --type sim-20c
parent_types="$root/sys/class/mdev_bus/0000:3c:00.0/mdev_supported_types"
manual="$(cat /proc/sys/kernel/random/uuid)"
echo; echo "\$ echo $manual > .../0000:3c:00.0/mdev_supported_types/gvmsim-2/create   # by hand, like an operator"
echo "$manual" > "$parent_types/gvmsim-2/create"
run list

echo; echo "== starting owner processes (stand-ins for QEMU) for two vGPUs"
echo "spawn 11111111-2222-4333-8444-555555555555 memory=6442450944" > "$root/sys/kernel/debug/gvm-sim/control"
echo "spawn $manual memory=2147483648" > "$root/sys/kernel/debug/gvm-sim/control"
sleep 1.5
run show 11111111-2222-4333-8444-555555555555
run show "$manual"
if [ -n "$daemon_pid" ]; then
    echo; echo "== retuning live through gvm-vgpud"
    run set 11111111-2222-4333-8444-555555555555 --memory-limit 6GiB --priority 2 --live
    run freeze "$manual"
    sleep 0.5
    run show "$manual"
    run thaw "$manual"
    run define --type sim-40c --parent 0000:3b:00.0 --uuid 22222222-3333-4444-8555-666666666666 --autostart
    run start 22222222-3333-4444-8555-666666666666
    run list --defined
    run stop 22222222-3333-4444-8555-666666666666
    run undefine 22222222-3333-4444-8555-666666666666
fi
run xml 11111111-2222-4333-8444-555555555555 --with-agent
run qemu-args "$manual"
run --json list > /dev/null && echo "(list --json works too)"

if [ -n "$daemon_pid" ]; then
    echo; echo "== what gvm-vgpud did (its log)"
    sed 's/^[0-9TZ:.-]* *//' "$root/gvm-vgpud.log"
fi

echo; echo "== cleaning up"
# A vGPU a VM holds open cannot be removed (the CLI refuses and says why): shut the stand-in
# VMs down first, as an operator would shut down the guests.
while read -r pid _; do
    echo "kill $pid" > "$root/sys/kernel/debug/gvm-sim/control"
done < "$root/sys/kernel/debug/gvm-sim/owners"
sleep 0.5
for uuid in $(ls "$root/sys/bus/mdev/devices"); do
    "$bin/gvm-vgpu" remove "$uuid"
done
run list
