#!/usr/bin/env python3
"""How much GPU time two or four plain CUDA processes lose to each other with no gvm-vgpu at
all (no shim, no daemon): the baseline for the shares benchmark's "GPU used" column.

Each `shares_worker` runs the same fixed-work kernel + synchronise loop as in shares.py. Alone,
one iteration takes ITER_US; with K workers running concurrently the GPU time-slices between
their contexts, and the GPU used = sum of iterations x ITER_US / wall time.

Usage: plain_pair.py --worker /tmp/shares_worker [--seconds 6] [--kernel-us 1000]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def run(worker, loops, secs, k):
    d = tempfile.mkdtemp(prefix="plain-")
    go = os.path.join(d, "go")
    procs, outs = [], []
    for i in range(k):
        out = os.path.join(d, f"w{i}")
        outs.append(out)
        procs.append(subprocess.Popen([worker, "run", str(loops), str(secs), out, go],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        line = p.stdout.readline()
        if "ready" not in line:
            sys.exit(f"worker not ready: {line!r} {p.stderr.read()}")
    open(go, "w").close()
    for p in procs:
        p.wait()
    counts = []
    for out in outs:
        with open(out) as f:
            ts = [int(x) for x in f.read().split()]
        # Skip the first second, as shares.py does.
        t0 = ts[0] + 1_000_000_000 if ts else 0
        counts.append(len([t for t in ts if t >= t0]))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", required=True)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--kernel-us", type=int, default=1000)
    a = ap.parse_args()
    cal = subprocess.run([a.worker, "calibrate", str(a.kernel_us)], capture_output=True,
                         text=True, check=True).stdout
    fields = dict(kv.split("=") for kv in cal.split())
    loops, iter_us = int(fields["loops"]), float(fields["iter_us"])
    print(f"calibration: loops={loops} iter_us={iter_us:.1f}")
    window = a.seconds - 1
    for k in (1, 2, 4):
        counts = run(a.worker, loops, a.seconds, k)
        used = sum(counts) * iter_us / 1e6 / window
        shares = " / ".join(f"{100 * c * iter_us / 1e6 / window:.1f}" for c in counts)
        print(f"{k} plain process(es): GPU used {100 * used:.1f} % (each: {shares} %)")


if __name__ == "__main__":
    main()
