#!/bin/sh
# The GPU checks to re-run after a change to the shim or its registration, in one go (no
# colocation: that is run_gpu.sh / run_shares.sh). Usage: run_checks.sh DIR OUTDIR
# DIR holds libgvm_cuda.so and gvm-vgpud + gvm-vgpu built --no-default-features.
# 1. PyTorch smoke (basic, expandable segments, host swap) without a daemon (standalone line expected);
# 2. shares.py: equal-/fixed-share under gvm-vgpud, the workers registering over its socket;
# 3. plain_pair.py: the same workers with no gvm-vgpu at all (GPU time lost to time-slicing);
# 4. launch overhead (PAIRS pairs) and freeze latency.
set -u
D=$(realpath "$1"); OUT=$2; mkdir -p "$OUT"
HERE=$(dirname "$(realpath "$0")")
SHIM=$D/libgvm_cuda.so
LIMIT=$((8 * 1024 * 1024 * 1024))
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id --format=csv,noheader
cc -O2 -o /tmp/shares_worker "$HERE/shares_worker.c" -ldl || echo "worker build failed"
cc -O2 -o /tmp/gpu_bench "$HERE/gpu_bench.c" -ldl -lpthread || echo "gpu_bench build failed"
for mode in basic expandable swap; do
  echo "== smoke $mode"
  [ "$mode" = expandable ] && export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  [ "$mode" = swap ] && export GVM_HOST_SWAP=1
  GVM_SHIM_CONTROL=/tmp/ctl-$mode GVM_MEMORY_LIMIT=$LIMIT GVM_LIMIT_BYTES=$LIMIT \
    LD_PRELOAD=$SHIM timeout 120 python3 "$HERE/smoke.py" $mode 2>/tmp/smoke-$mode.err >"$OUT/smoke-$mode.json"
  echo "rc=$?"
  python3 -c "import json;d=json.load(open('$OUT/smoke-$mode.json'));print({k:(v['ok'] if isinstance(v,dict) and 'ok' in v else v) for k,v in d.items() if k!='block'})" || tail -5 /tmp/smoke-$mode.err
  grep 'gvm-vgpu:' /tmp/smoke-$mode.err | sort | uniq -c | head -3
  unset PYTORCH_CUDA_ALLOC_CONF GVM_HOST_SWAP
done
echo "== shares (registration over the daemon's socket)"
timeout 200 python3 "$HERE/shares.py" --bin "$D" --shim "$SHIM" --worker /tmp/shares_worker --out "$OUT/shares"
echo "shares rc=$?"
grep -i -E 'regist|arbitration|bus id' "$OUT/shares/logs/gvm-vgpud.log" | head -8
ls /dev/shm | grep gvm-vgpu | head
echo "== plain processes, no gvm-vgpu"
timeout 90 python3 "$HERE/plain_pair.py" --worker /tmp/shares_worker --seconds 6
echo "== launch overhead and freeze latency"
timeout 200 python3 "$HERE/gpu_bench.py" "$SHIM" /tmp/gpu_bench "$OUT" "${PAIRS:-16}"
