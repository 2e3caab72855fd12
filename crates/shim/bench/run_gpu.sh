#!/bin/sh
# All GPU checks of libgvm_cuda.so in one go. Usage: run_gpu.sh SHIM.so OUTDIR [COLOCATE ARGS...]
# smoke (PyTorch: limit, OOM, mem_get_info, kernel counts, graphs, expandable segments),
# launch overhead + freeze latency (gpu_bench.c), then the colocation benchmark.
set -u
SHIM=$(realpath "$1"); OUT=$2; shift 2; mkdir -p "$OUT"
HERE=$(dirname "$(realpath "$0")")
LIMIT=$((8 * 1024 * 1024 * 1024))
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
cc -O2 -o /tmp/gpu_bench "$HERE/gpu_bench.c" -ldl -lpthread || echo "gpu_bench build failed"
echo "== true under the shim"; LD_PRELOAD=$SHIM /bin/true && echo "true: rc=0"
echo "== smoke basic"
GVM_SHIM_CONTROL=/tmp/ctl-basic GVM_MEMORY_LIMIT=$LIMIT GVM_LIMIT_BYTES=$LIMIT GVM_SHIM_DEBUG=1 \
  LD_PRELOAD=$SHIM timeout 120 python3 "$HERE/smoke.py" basic 2>/tmp/smoke-basic.err >"$OUT/smoke-basic.json"; echo "rc=$?"
python3 -c "import json;d=json.load(open('$OUT/smoke-basic.json'));print({k:(v['ok'] if isinstance(v,dict) and 'ok' in v else v) for k,v in d.items() if k!='block'});print(d.get('block'))" || cat "$OUT/smoke-basic.json"
grep -v -e 'dlsym(' -e 'cuGetProcAddress(' /tmp/smoke-basic.err | tail -4
echo "-- launch entry points handed out:"
grep -o 'cuGetProcAddress(cu[A-Za-z]*Launch[A-Za-z_]*, [0-9]*, [0-9]*) -> [A-Za-z0-9]* [a-z]*' /tmp/smoke-basic.err | sort | uniq -c
echo "== smoke expandable"
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True GVM_SHIM_CONTROL=/tmp/ctl-exp GVM_MEMORY_LIMIT=$LIMIT \
  GVM_LIMIT_BYTES=$LIMIT LD_PRELOAD=$SHIM timeout 120 python3 "$HERE/smoke.py" expandable 2>/tmp/smoke-exp.err >"$OUT/smoke-exp.json"; echo "rc=$?"
python3 -c "import json;d=json.load(open('$OUT/smoke-exp.json'));print({k:(v['ok'] if isinstance(v,dict) and 'ok' in v else v) for k,v in d.items() if k!='block'})" || tail -3 /tmp/smoke-exp.err
echo "== launch overhead and freeze latency"
timeout 200 python3 "$HERE/gpu_bench.py" "$SHIM" /tmp/gpu_bench "$OUT" "${PAIRS:-10}"
echo "== colocation"
timeout "${COLO_TIMEOUT:-330}" python3 "$HERE/colocate.py" --shim "$SHIM" --out "$OUT" "$@"
echo "colocate rc=$?"
