#!/usr/bin/env bash
# Runs the daemon's scale benchmark (crates/daemon/examples/bench_adopt.rs) for two checkouts in
# turn (A, B, A, B, ...), so that both see the same machine state, and prints one table row per
# run plus the median of each. Use it to show that a change keeps the targets in docs/daemon.md.
#
#   scripts/bench-compare.sh DIR_A DIR_B [ROUNDS] [-- bench_adopt args]
#
# Each DIR is a checkout whose release binaries are built:
#   cargo build --release -p gvm-vgpu-sim -p gvm-vgpud --bins --examples
# Defaults: 3 rounds of `bench_adopt 1000 16 4`. Needs root and /dev/fuse, as the benchmark does.
set -euo pipefail
a="${1:?usage: $0 DIR_A DIR_B [ROUNDS] [-- args]}"
b="${2:?usage: $0 DIR_A DIR_B [ROUNDS] [-- args]}"
rounds="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(1000 16 4)
for d in "$a" "$b"; do
    [ -x "$d/target/release/examples/bench_adopt" ] || {
        echo "bench-compare: $d/target/release/examples/bench_adopt is missing: build it there with" \
             "cargo build --release -p gvm-vgpu-sim -p gvm-vgpud --bins --examples" >&2
        exit 1
    }
done
out="$(mktemp -d /tmp/bench-compare.XXXXXX)"
printf '%-6s %-5s %12s %12s %8s %10s %10s\n' run which "tuned (s)" "cpu (%)" "rss MiB" "p50 (ms)" "p99 (ms)"
row() { # which log
    local tuned cpu rss p50 p99
    tuned=$(sed -n 's/.*tuned after \([0-9.]*\)\(m\?s\).*/\1 \2/p' "$2" | awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')
    cpu=$(sed -n 's/.*: \([0-9.]*\)% of one core.*/\1/p' "$2")
    rss=$(sed -n 's/.*RSS \([0-9]*\) MiB.*/\1/p' "$2")
    p50=$(sed -n 's/.*p50 \([0-9.]*\)\(m\?s\) .*/\1 \2/p' "$2" | awk '{ print ($2 == "s") ? $1 * 1000 : $1 }')
    p99=$(sed -n 's/.*p99 \([0-9.]*\)\(m\?s\)$/\1 \2/p' "$2" | awk '{ print ($2 == "s") ? $1 * 1000 : $1 }')
    printf '%-6s %-5s %12s %12s %8s %10s %10s\n' "$3" "$1" "$tuned" "$cpu" "$rss" "$p50" "$p99" | tee -a "$out/rows"
}
for r in $(seq "$rounds"); do
    for which in A B; do
        dir=$a; [ "$which" = B ] && dir=$b
        log="$out/$which-$r.log"
        "$dir/target/release/examples/bench_adopt" "${args[@]}" > "$log" 2>&1 || { echo "run $r $which failed: $log" >&2; tail -5 "$log" >&2; exit 1; }
        row "$which" "$log" "$r"
    done
done
echo
for which in A B; do
    awk -v w="$which" 'BEGIN { n = 0 } $2 == w { t[n] = $3; c[n] = $4; q[n] = $7; n++ }
        function med(a, n,   i, j, x) { for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x } return a[int(n / 2)] }
        END { printf "median %s: tuned %s s, cpu %s %%, p99 %s ms (%d runs)\n", w, med(t, n), med(c, n), med(q, n), n }' "$out/rows"
done
echo "logs: $out"
