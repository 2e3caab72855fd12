#!/usr/bin/env bash
# The README's test command: install what the tests need (scripts/install-deps.sh test), run the
# whole workspace's tests, and print one summary line ("tests: N passed, N failed, N skipped").
# Tests that need something this machine lacks (a GPU, the kernel packages for the real-kernel
# guest) print `SKIP: <reason>` and pass. Extra arguments go to `cargo test`. A failing test
# binary does not stop the others (--no-fail-fast): the summary counts every test.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh test || exit 1

log="$(mktemp /tmp/gvm-vgpu-test.XXXXXX.log)"
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
