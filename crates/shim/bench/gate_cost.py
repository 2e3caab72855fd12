#!/usr/bin/env python3
"""What yielding costs a low-priority job while the more important process is idle.

Runs colocate.py's batch job (a training loop of 4 residual MLP blocks, AdamW, bf16) for
--seconds in each mode and reports its steps/s:

  plain      no shim
  alone      under the shim, alone on the GPU (no arbitration work at all)
  gate       under the shim at priority 8, with an idle priority-0 shim process registered on
             the same GPU: the batch yields, with the GPU-side gate (a stream wait per launch)
  count      the same with GVM_GPU_GATE=0: the CPU-side count bound (GVM_QUEUE_DEPTH=2)

The idle peer launches one kernel, then sleeps: it stays registered but is never busy, so any
loss in `gate` or `count` is the price of being ready to yield, not of yielding.

Usage: gate_cost.py --shim libgvm_cuda.so [--seconds 10] [--out DIR]; writes DIR/gate_cost.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from colocate import read_block  # noqa: E402  (the control block's counters)

PEER = """
import time, torch
x = torch.ones(1, device="cuda") + 1
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(3600)
"""


def run_batch(env, seconds, tag):
    result = f"/tmp/gate-cost-{tag}.json"
    if os.path.exists(result):
        os.unlink(result)
    p = subprocess.run([sys.executable, os.path.join(HERE, "colocate.py"), "batch", "--seconds",
                        str(seconds), "--result", result], env=env, capture_output=True,
                       text=True, timeout=seconds + 300)
    if p.returncode != 0:
        raise SystemExit(f"{tag}: batch failed (rc {p.returncode}): {p.stderr[-2000:]}")
    with open(result) as f:
        r = json.load(f)
    steps = r["stamps"]
    out = {"steps": len(steps), "steps_per_s": len(steps) / (steps[-1] - r["t_start"]),
           "log": p.stderr.strip().splitlines()[-3:]}
    if env.get("GVM_SHIM_CONTROL"):
        out["block"] = read_block(env["GVM_SHIM_CONTROL"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shim", required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--out", default="/tmp/gate-cost")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    shim = os.path.abspath(a.shim)
    base = dict(os.environ, PYTHONUNBUFFERED="1")
    base.pop("LD_PRELOAD", None)
    arb = "/dev/shm/gate-cost.arb"

    def shim_env(prio, tag, **kw):
        ctl = f"/tmp/gate-cost-{tag}.ctl"
        if os.path.exists(ctl):
            os.unlink(ctl)
        e = dict(base, LD_PRELOAD=shim, GVM_PRIORITY=str(prio), GVM_SHIM_ARBITER=arb,
                 GVM_SHIM_SOCKET="off", GVM_SHIM_CONTROL=ctl)
        e.update(kw)
        return e

    results = {}
    if os.path.exists(arb):
        os.unlink(arb)
    results["plain"] = run_batch(base, a.seconds, "plain")
    results["alone"] = run_batch(shim_env(8, "alone"), a.seconds, "alone")
    peer = subprocess.Popen([sys.executable, "-c", PEER], env=shim_env(0, "peer"),
                            stdout=subprocess.PIPE, text=True)
    try:
        if peer.stdout.readline().strip() != "ready":
            raise SystemExit("the idle peer did not start")
        time.sleep(0.5)  # its busy flag clears ~2 ms after its kernel
        results["gate"] = run_batch(shim_env(8, "gate"), a.seconds, "gate")
        results["count"] = run_batch(shim_env(8, "count", GVM_GPU_GATE="0"), a.seconds, "count")
    finally:
        peer.kill()
        peer.wait()
    plain = results["plain"]["steps_per_s"]
    print(f"{'mode':8} {'steps/s':>8} {'vs plain':>9}")
    for k, r in results.items():
        r["vs_plain"] = r["steps_per_s"] / plain
        b = r.get("block") or {}
        print(f"{k:8} {r['steps_per_s']:8.2f} {100 * r['vs_plain']:8.1f}%  "
              f"arb_state={b.get('arb_state', '-')} queue_waits={b.get('queue_waits', '-')} "
              f"arb_waits={b.get('arb_waits', '-')}")
    with open(os.path.join(a.out, "gate_cost.json"), "w") as f:
        json.dump({"args": vars(a), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
