#!/bin/sh
# The GPU run of this session in one go. Usage: run_shares.sh DIR OUTDIR [COLOCATE CONFIGS]
# DIR holds gvm-vgpud and gvm-vgpu (built --no-default-features) and libgvm_cuda.so.
# 1. shares.py: equal-share / fixed-share with 2 and 4 busy processes under gvm-vgpud.
# 2. colocate.py: the colocation benchmark again with tuned parameters (if time is left).
set -u
D=$(realpath "$1"); OUT=$2; CONFIGS=${3:-exclusive_high,exclusive_batch,gvm_priority,gvm_priority:depth=1}
mkdir -p "$OUT"
HERE=$(dirname "$(realpath "$0")")
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cc -O2 -o /tmp/shares_worker "$HERE/shares_worker.c" -ldl || { echo "worker build failed"; exit 1; }
echo "== shares"
timeout "${SHARES_TIMEOUT:-200}" python3 "$HERE/shares.py" --bin "$D" --shim "$D/libgvm_cuda.so" \
  --worker /tmp/shares_worker --out "$OUT/shares"
echo "shares rc=$?"
cp /tmp/gvm-shares-root/etc/gvm-vgpu/policy.json "$OUT/shares/" 2>/dev/null
echo "== colocation ($CONFIGS)"
timeout "${COLO_TIMEOUT:-300}" python3 "$HERE/colocate.py" --shim "$D/libgvm_cuda.so" \
  --out "$OUT/colocate" --requests "${REQUESTS:-150}" --rate "${RATE:-2.5}" --new-tokens 3 \
  --batch-seconds 10 --configs "$CONFIGS"
echo "colocate rc=$?"
