#!/bin/sh
# The workload matrix of issue 18, every cell one colocate.py invocation with its
# configurations interleaved (exclusive server, exclusive batch, SIGSTOP, gvm priority).
# Usage: run_matrix.sh SHIM OUTDIR [REQUESTS] [CELLS]
#   CELLS: space-separated SERVER-BATCH names; default the six tuned cells
#   graph-mlp graph-conv graph-unet hf-mlp hf-conv hf-unet. The held-out decode-heavy chat
#   cells (chat-mlp chat-conv chat-unet: eager server, 32-128-token prompts, 64 generated
#   tokens) run only when named, after the defaults are frozen.
# gvm priority runs in the shim's standalone mode (the processes share one arbiter block
# through GVM_SHIM_ARBITER, priorities 0 and 8), as colocate.py does: NOT through gvm-vgpud.
# Also samples nvidia-smi (SM clock, power, temperature, clock-event reasons) per config.
set -u
SHIM=$(realpath "$1"); OUT=$2; N=${3:-40}
CELLS=${4:-"graph-mlp graph-conv graph-unet hf-mlp hf-conv hf-unet"}
HERE=$(dirname "$(realpath "$0")")
CONFIGS=${CONFIGS:-exclusive_high,exclusive_batch,sigstop,gvm_priority}
RATE=${RATE:-2}
mkdir -p "$OUT"
for cell in $CELLS; do
  srv=${cell%-*}; b=${cell#*-}
  case $srv in
    graph) extra="--server graph --model 1b --prompt-min 512 --prompt-max 1024 --bucket 256 --new-tokens 4" ;;
    hf) extra="--server hf --prompt-min 512 --prompt-max 1024 --new-tokens 4" ;;
    chat) extra="--server hf --prompt-min 32 --prompt-max 128 --new-tokens 64" ;;
    *) echo "unknown server in cell $cell" >&2; exit 2 ;;
  esac
  echo "== cell $cell $(date -u +%H:%M:%S)"
  # shellcheck disable=SC2086
  timeout "${CELL_TIMEOUT:-300}" python3 "$HERE/colocate.py" --shim "$SHIM" --out "$OUT/$cell" \
    --requests "$N" --rate "$RATE" --batch-kind "$b" --batch-seconds "${BATCH_SECONDS:-10}" \
    --configs "$CONFIGS" $extra
  echo "cell $cell rc=$?"
done
