#!/bin/bash
# Issue 18: what the interposer costs an eager (launch-bound) server, and the eager cells.
# Usage: run_eager_cost.sh OUTDIR SHIM [BASELINE_SHIM]
#   1. the shim's cost alone: the eager server beside a peer that joins the arbitration and
#      never launches (--batch-kind idle), against the same server without the shim; once per
#      shim given (BASELINE_SHIM first, e.g. a build of an earlier commit);
#   2. the eager server beside MLP training and beside ResNet-50 training, with the exclusive
#      runs, SIGSTOP and gvm priority interleaved in one invocation each.
# Each role is pinned to its own cores (the eager server is CPU launch-bound: unpinned, the
# exclusive run alone moves by +-20 % between invocations).
set -u
OUT=$1; SHIM=$(realpath "$2"); BASE=${3:+$(realpath "$3")}
HERE=$(dirname "$(realpath "$0")")
export COLO_CPUS_SERVE=${COLO_CPUS_SERVE:-2-5} COLO_CPUS_BATCH=${COLO_CPUS_BATCH:-8-11}
N=${N:-40}; RATE=${RATE:-2}
HF="--server hf --prompt-min 512 --prompt-max 1024 --new-tokens 4"
mkdir -p "$OUT"
i=0
for s in $BASE $SHIM; do
  i=$((i + 1))
  echo "== eager + idle peer, shim $i ($s) $(date -u +%T)"
  # shellcheck disable=SC2086
  timeout 130 python3 "$HERE/colocate.py" --shim "$s" --out "$OUT/hf-idle-$i" --requests "$N" \
    --rate "$RATE" --batch-kind idle --batch-seconds 8 $HF --configs exclusive_high,gvm_priority
done
for b in mlp conv; do
  echo "== eager + $b $(date -u +%T)"
  # shellcheck disable=SC2086
  timeout 200 python3 "$HERE/colocate.py" --shim "$SHIM" --out "$OUT/hf-$b" --requests "$N" \
    --rate "$RATE" --batch-kind $b --batch-seconds 8 $HF \
    --configs exclusive_high,exclusive_batch,sigstop,gvm_priority
done
echo "== end $(date -u +%T)"
