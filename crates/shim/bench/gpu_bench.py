"""Launch-overhead and freeze-latency benchmarks of libgvm_cuda.so, driving gpu_bench.c.

Usage: gpu_bench.py SHIM.so GPU_BENCH_BINARY OUTDIR [pairs]
Prints JSON lines and writes OUTDIR/bench.json.

* overhead: `gpu_bench overhead 100000 5` (median ns per empty-kernel launch of 5 runs of
  100k), alternating runs without and with LD_PRELOAD; reports the medians over the pairs.
* freeze: spin kernels of 0.1, 1 and 10 ms back to back under the shim; after 0.6 s this
  script (another process) writes `frozen=1` into the program's control block, waits, thaws.
  Latency = the last kernel end seen after the freeze minus the freeze time (CLOCK_MONOTONIC,
  shared by both processes). Once with the default unbounded queue, once with
  GVM_QUEUE_ALWAYS=1 GVM_QUEUE_DEPTH=1 (at most one launch in flight)."""
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import time

FROZEN = 60  # control block offset of `frozen` (src/control.rs)


def overhead(shim, binary, pairs):
    base, withs = [], []
    for i in range(pairs):
        for use in ([False, True] if i % 2 == 0 else [True, False]):
            env = dict(os.environ)
            env.pop("LD_PRELOAD", None)
            if use:
                env["LD_PRELOAD"] = shim
                env["GVM_SHIM_CONTROL"] = f"/tmp/gvm-ovh-{i}"
            out = subprocess.run([binary, "overhead", "100000", "5"], env=env,
                                 capture_output=True, text=True, check=True)
            (withs if use else base).append(float(out.stdout.strip()))
    mb, mw = statistics.median(base), statistics.median(withs)
    return {"per_launch_ns_without": mb, "per_launch_ns_with": mw, "added_ns": round(mw - mb, 1),
            "runs_without": base, "runs_with": withs}


def freeze_once(shim, binary, outdir, dur_us, bounded):
    ctl = f"/tmp/gvm-freeze-{dur_us}-{int(bounded)}"
    ends_path = os.path.join("/tmp", f"ends-{dur_us}-{int(bounded)}.txt")
    env = dict(os.environ, LD_PRELOAD=shim, GVM_SHIM_CONTROL=ctl)
    if bounded:
        env.update(GVM_QUEUE_ALWAYS="1", GVM_QUEUE_DEPTH="1")
    hold_s = 2.0
    cap = min(150000, int(3_000_000 / dur_us))  # at most ~3 s of queued work to drain
    p = subprocess.Popen([binary, "freeze", str(dur_us), "1.2", ends_path, str(cap)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "running"
    time.sleep(0.6)
    fd = os.open(ctl, os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    struct.pack_into("<I", m, FROZEN, 1)
    time.sleep(hold_s)
    t_thaw = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    struct.pack_into("<I", m, FROZEN, 0)
    out, err = p.communicate(timeout=120)
    m.close()
    os.close(fd)
    ends = [int(x) for x in open(ends_path).read().split()]
    during = [e for e in ends if t0 <= e < t_thaw]
    last = max(during) if during else t0
    lat_ms = (last - t0) / 1e6
    after_thaw = [e for e in ends if e >= t_thaw]
    return {"kernel_ms": dur_us / 1000, "bounded_queue": bounded, "latency_ms": round(lat_ms, 3),
            "latency_in_kernels": round(lat_ms / (dur_us / 1000), 2),
            "kernels_ended_while_frozen": len(during), "kernels_after_thaw": len(after_thaw),
            "still_draining_at_thaw": bool(during) and last > t_thaw - 5_000_000,
            "kernels": len(ends)}


def main():
    shim, binary, outdir = (os.path.abspath(a) for a in sys.argv[1:4])
    pairs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    res = {"overhead": overhead(shim, binary, pairs)} if pairs > 0 else {}
    print(json.dumps({"overhead": res.get("overhead")}), flush=True)
    res["freeze"] = []
    for bounded in ((False, True) if pairs > 0 else (True,)):
        for dur in (100, 1000, 10000):
            r = freeze_once(shim, binary, outdir, dur, bounded)
            res["freeze"].append(r)
            print(json.dumps(r), flush=True)
    with open(os.path.join(outdir, "bench.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
