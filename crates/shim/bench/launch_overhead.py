"""Launch overhead of libgvm_cuda.so: an empty kernel launched through the driver API (ctypes,
so every call goes through dlsym'd entry points), in runs alternating with and without the
shim. Prints per-launch medians in microseconds. Usage: launch_overhead.py SHIM.so [pairs]"""
import json
import os
import statistics
import subprocess
import sys

PTX = b""".version 8.0
.target sm_90
.address_size 64
.visible .entry empty() { ret; }
\0"""

CHILD = r"""
import ctypes, time, sys
cu = ctypes.CDLL("libcuda.so.1")
def ck(r, what):
    if r != 0: raise SystemExit(f"{what} failed: {r}")
ck(cu.cuInit(0), "cuInit")
dev = ctypes.c_int(); ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p(); ck(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
ck(cu.cuCtxSetCurrent(ctx), "setcurrent")
mod = ctypes.c_void_p(); ck(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX)), "load")
fn = ctypes.c_void_p(); ck(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"empty"), "getfn")
launch = cu.cuLaunchKernel
launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
sync = cu.cuCtxSynchronize
N = 20000
for _ in range(2000): launch(fn, 1, 1, 1, 1, 1, 1, 0, None, None, None)
sync()
samples = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(N): launch(fn, 1, 1, 1, 1, 1, 1, 0, None, None, None)
    sync()
    samples.append((time.perf_counter() - t) / N * 1e6)
samples.sort()
print(samples[len(samples) // 2])
"""


def one(shim):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if shim:
        env["LD_PRELOAD"] = shim
        env.setdefault("GVM_MEMORY_LIMIT", "unlimited")
    code = f"PTX = {PTX!r}\n" + CHILD
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    shim = os.path.abspath(sys.argv[1])
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    base, withs = [], []
    for i in range(pairs):
        order = [False, True] if i % 2 == 0 else [True, False]
        for use in order:
            (withs if use else base).append(one(shim if use else None))
    mb, mw = statistics.median(base), statistics.median(withs)
    print(json.dumps({"per_launch_us_without": round(mb, 3), "per_launch_us_with": round(mw, 3),
                      "overhead_us": round(mw - mb, 3), "overhead_pct": round(100 * (mw - mb) / mb, 1),
                      "runs_without": [round(x, 3) for x in base], "runs_with": [round(x, 3) for x in withs]}))


if __name__ == "__main__":
    main()
