#!/bin/sh
# Run the GPU checks of libgvm_cuda.so. Usage: run_gpu.sh PATH/TO/libgvm_cuda.so [OUTDIR]
set -u
SHIM=$(realpath "$1"); OUT=${2:-/tmp/gvm-shim-bench}; mkdir -p "$OUT"
HERE=$(dirname "$(realpath "$0")")
LIMIT=$((8 * 1024 * 1024 * 1024))
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== true under the shim"; LD_PRELOAD=$SHIM /bin/true && echo "true: rc=0"
echo "== smoke basic"
GVM_SHIM_CONTROL=$OUT/ctl-basic GVM_MEMORY_LIMIT=$LIMIT GVM_LIMIT_BYTES=$LIMIT GVM_SHIM_DEBUG=${DEBUG:-0} \
  LD_PRELOAD=$SHIM python3 "$HERE/smoke.py" basic 2>"$OUT/smoke-basic.err"; echo "rc=$?"
grep -v -e 'dlsym(' -e 'cuGetProcAddress(' "$OUT/smoke-basic.err" | tail -5
echo "-- entry points handed out as wrappers / left unwrapped (GVM_SHIM_DEBUG=1):"
grep -o 'cuGetProcAddress([A-Za-z_0-9]*, [0-9]*, [0-9]*) -> [A-Za-z0-9]* [a-z]*' "$OUT/smoke-basic.err" | sort | uniq -c
grep -o 'dlsym([A-Za-z_0-9]*) -> .*' "$OUT/smoke-basic.err" | sort | uniq -c
echo "== smoke expandable"
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True GVM_SHIM_CONTROL=$OUT/ctl-exp GVM_MEMORY_LIMIT=$LIMIT \
  GVM_LIMIT_BYTES=$LIMIT LD_PRELOAD=$SHIM python3 "$HERE/smoke.py" expandable 2>"$OUT/smoke-exp.err"; echo "rc=$?"
tail -3 "$OUT/smoke-exp.err"
echo "== launch overhead"
python3 "$HERE/launch_overhead.py" "$SHIM" "${PAIRS:-8}"
