#!/bin/sh
# Issue 16's benchmark 2 rig: two "VMs without the VM" on a GPU host. A simulated host
# (gvm-vgpu-sim, FUSE) with two vGPUs, a gvm-vgpud on it, and for each vGPU a real
# gvm-vgpu-agent serving its channel socket (--serve-unix, in QEMU's place) and its own shim
# socket, as it would inside a guest. VM "hi" gets priority 2, VM "lo" priority 8; the daemon
# holds lo while hi is busy (agent protocol 2 or 3, docs/agent.md). The command given then runs
# with GVM_VM_HI_SOCKET / GVM_VM_LO_SOCKET (the agents' shim sockets) and GVM_VM_HI_ROOT /
# GVM_VM_LO_ROOT set; colocate.py's `vm_priority` configuration puts its server behind hi
# and its batch job behind lo.
# Usage: vm_rig.sh BINDIR COMMAND...   (BINDIR: gvm-vgpu-sim, gvm-vgpud, gvm-vgpu-agent, gvm-vgpu)
set -eu
BIN=$(realpath "$1"); shift
R=$(mktemp -d /tmp/vmrig.XXXXXX)
HOST=$R/host
mkdir -p "$HOST" "$R/hi/run/gvm-vgpu" "$R/lo/run/gvm-vgpu"
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  umount "$HOST/sys" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
"$BIN/gvm-vgpu-sim" --root "$HOST" --gpus 1 --held-remove kill --foreground >"$R/sim.log" 2>&1 &
pids="$pids $!"
i=0
until [ -n "$(ls "$HOST/sys/class/mdev_bus" 2>/dev/null)" ]; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "vm_rig: the simulated host did not come up:"; cat "$R/sim.log"; exit 1; }
  sleep 0.1
done
parent=$(ls "$HOST/sys/class/mdev_bus" | head -1)
# gvmsim-4: 40 GiB each (the type's memory limit is enforced in each "guest").
create() { u=$(cat /proc/sys/kernel/random/uuid); echo "$u" > "$HOST/sys/class/mdev_bus/$parent/mdev_supported_types/gvmsim-4/create"; echo "$u"; }
HI=$(create); LO=$(create)
RUST_LOG=warn "$BIN/gvm-vgpud" --root "$HOST" --guest-ack-ms 2000 >"$R/daemon.log" 2>&1 &
pids="$pids $!"
cli() { "$BIN/gvm-vgpu" --root "$HOST" "$@"; }
i=0
until cli show "$HI" >/dev/null 2>&1 && cli show "$LO" >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 100 ] && { echo "vm_rig: gvm-vgpud did not adopt the vGPUs:"; cat "$R/daemon.log"; exit 1; }
  sleep 0.1
done
cli set --live --priority 2 "$HI" >/dev/null
cli set --live --priority 8 "$LO" >/dev/null
mkdir -p "$HOST/run/gvm-vgpu/agent"
for vm in hi lo; do
  [ $vm = hi ] && u=$HI || u=$LO
  "$BIN/gvm-vgpu-agent" --serve-unix "$HOST/run/gvm-vgpu/agent/$u.sock" --root "$R/$vm" \
    --proc-dir /proc --collector proc --interval 1s >"$R/agent-$vm.log" 2>&1 &
  pids="$pids $!"
done
i=0
until [ -S "$R/hi/run/gvm-vgpu/shim.sock" ] && [ -S "$R/lo/run/gvm-vgpu/shim.sock" ] \
  && cli --json show "$HI" | grep -q '"protocol": *[23]' && cli --json show "$LO" | grep -q '"protocol": *[23]'; do
  i=$((i + 1)); [ $i -gt 200 ] && { echo "vm_rig: the agents did not come up:"; cat "$R"/agent-*.log "$R/daemon.log"; exit 1; }
  sleep 0.1
done
echo "vm_rig: hi $HI (priority 2), lo $LO (priority 8), agents connected"
export GVM_VM_HI_SOCKET="$R/hi/run/gvm-vgpu/shim.sock" GVM_VM_LO_SOCKET="$R/lo/run/gvm-vgpu/shim.sock"
export GVM_VM_HI_ROOT="$R/hi" GVM_VM_LO_ROOT="$R/lo"
rc=0
"$@" || rc=$?
echo "vm_rig: hi guest state:"; cli --json show "$HI" | tr -d '\n' | head -c 1500; echo
echo "vm_rig: lo guest state:"; cli --json show "$LO" | tr -d '\n' | head -c 1500; echo
grep -c WARN "$R/daemon.log" | sed 's/^/vm_rig: daemon warnings: /'
exit $rc
