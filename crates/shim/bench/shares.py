"""Shares on a real GPU: gvm-vgpud's equal-share and fixed-share policies driving processes
under libgvm_cuda.so, measured over 1 s windows.

    python3 shares.py --bin DIR --shim libgvm_cuda.so --out OUTDIR [--seconds 8]
        [--kernel-us 1000] [--scenarios be2,eq2,eq4,fixed2,fixed4]

DIR holds `gvm-vgpud`, `gvm-vgpu` and `shares_worker` (bench/shares_worker.c, built with
`cc -O2 -o shares_worker shares_worker.c -ldl`).

The GPU machine has no mdev devices, so the daemon runs over a host root (--root) holding a
*fake sysfs*: plain files and relative symlinks shaped like the kernel's (the same shape as
crates/mdev's test fixture), one GPU parent `0000:3b:00.0` with the simulated host's kernel
types `gvmsim-3` (catalog type sim-20c: priority 8, 1/4 share) and `gvmsim-4` (sim-40c:
priority 6, 1/2 share), and live devices of them. The daemon only reads sysfs to list
devices; nothing else is faked. The busy processes run under LD_PRELOAD=libgvm_cuda.so with
GVM_VGPU_ROOT=<root> (their control blocks go to <root>/dev/shm) and GVM_VGPU_UUID=<a vGPU>,
so the daemon's shim backend adopts them by the environment rule, exactly as on a real host.

Each worker launches one fixed-work kernel and synchronises, in a loop, stamping each
iteration's end. A process's achieved share in a window = its iterations in the window x the
mean iteration time measured when it ran alone (the "exclusive" run) / the window. Writes
OUTDIR/shares.json and OUTDIR/shares.png and prints one table per scenario.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PARENT = "0000:3b:00.0"
DEV_DIR = "devices/pci0000:3b/0000:3b:00.0"
TYPES = {"gvmsim-3": "SIM-80GB-20C", "gvmsim-4": "SIM-80GB-40C"}
# label -> (uuid, kernel type)
VGPUS = {
    "E": ("00000000-0000-4000-8000-0000000000e1", "gvmsim-4"),
    "A": ("00000000-0000-4000-8000-0000000000a1", "gvmsim-3"),
    "B": ("00000000-0000-4000-8000-0000000000b1", "gvmsim-3"),
    "C": ("00000000-0000-4000-8000-0000000000c1", "gvmsim-3"),
    "D": ("00000000-0000-4000-8000-0000000000d1", "gvmsim-3"),
}
# name -> (policy, members, share overrides, targets (None: no target))
SCENARIOS = {
    "be2": ("best-effort", ["E", "A"], {}, None),
    "eq2": ("equal-share", ["E", "A"], {}, {"E": 0.5, "A": 0.5}),
    "eq4": ("equal-share", ["E", "A", "B", "C"], {}, {k: 0.25 for k in "EABC"}),
    "fixed2": ("fixed-share", ["E", "A"], {}, {"E": 0.5, "A": 0.25}),
    "fixed4": ("fixed-share", ["E", "A", "B", "C"], {"B": 0.125, "C": 0.125},
               {"E": 0.5, "A": 0.25, "B": 0.125, "C": 0.125}),
}


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def fake_sysfs(root):
    """The kernel's mdev sysfs shape with plain files and relative links."""
    sys_ = os.path.join(root, "sys")
    dev = os.path.join(sys_, DEV_DIR)
    for tid, kname in TYPES.items():
        t = os.path.join(dev, "mdev_supported_types", tid)
        os.makedirs(os.path.join(t, "devices"))
        for f, v in (("name", kname), ("device_api", "vfio-pci"), ("available_instances", "0"),
                     ("create", "")):
            with open(os.path.join(t, f), "w") as fh:
                fh.write(v + "\n" if v else "")
    os.makedirs(os.path.join(sys_, "class/mdev_bus"))
    os.symlink(os.path.join("../..", DEV_DIR), os.path.join(sys_, "class/mdev_bus", PARENT))
    bus = os.path.join(sys_, "bus/mdev/devices")
    os.makedirs(bus)
    for uuid, tid in VGPUS.values():
        d = os.path.join(dev, uuid)
        os.makedirs(d)
        open(os.path.join(d, "remove"), "w").close()
        os.symlink(os.path.join("../mdev_supported_types", tid), os.path.join(d, "mdev_type"))
        os.symlink(os.path.join("../../..", uuid),
                   os.path.join(dev, "mdev_supported_types", tid, "devices", uuid))
        os.symlink(os.path.join("../../..", DEV_DIR, uuid), os.path.join(bus, uuid))
    for d in ("dev/shm", "etc", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)


class Bench:
    def __init__(self, a):
        self.a = a
        self.root = a.root
        self.bin = os.path.abspath(a.bin)
        self.logs = os.path.join(a.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.daemon = None

    def cli(self, *args):
        cmd = [os.path.join(self.bin, "gvm-vgpu"), "--root", self.root, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {r.stdout}{r.stderr}")
        return r.stdout

    def start_daemon(self):
        log = open(os.path.join(self.logs, "gvm-vgpud.log"), "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        env.pop("LD_PRELOAD", None)
        self.daemon = subprocess.Popen(
            [os.path.join(self.bin, "gvm-vgpud"), "--root", self.root, "--backend", "shim",
             "--no-uevents", "--no-libvirt", "--rescan-ms", "100"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        sock = os.path.join(self.root, "run/gvm-vgpu/api.sock")
        t = now()
        while not os.path.exists(sock):
            if self.daemon.poll() is not None or now() - t > 30:
                raise SystemExit("gvm-vgpud did not start: see logs/gvm-vgpud.log")
            time.sleep(0.05)
        time.sleep(0.3)

    def env(self, label):
        e = dict(os.environ, LD_PRELOAD=os.path.abspath(self.a.shim), GVM_VGPU_ROOT=self.root,
                 GVM_VGPU_UUID=VGPUS[label][0])
        for k in ("GVM_SHIM_CONTROL", "GVM_SHIM_ARBITER", "GVM_PRIORITY", "GVM_ARBITRATE",
                  "GVM_QUEUE_ALWAYS", "GVM_MEMORY_LIMIT"):
            e.pop(k, None)
        return e

    def worker(self, label, args, tag):
        err = open(os.path.join(self.logs, f"{tag}-{label}.err"), "w")
        return subprocess.Popen([self.a.worker or os.path.join(self.bin, "shares_worker"), *args],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env=self.env(label))

    def fail(self, tag, label, what):
        """Stop with the worker's own stderr in the message (the logs may not come back)."""
        try:
            err = open(os.path.join(self.logs, f"{tag}-{label}.err")).read()[-2000:]
        except OSError:
            err = "(no stderr file)"
        raise SystemExit(f"{tag}: worker {label} {what}; its stderr:\n{err}")

    def calibrate(self):
        p = self.worker("A", ["calibrate", str(self.a.kernel_us)], "calibrate")
        out, _ = p.communicate(timeout=120)
        fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        if p.returncode != 0 or "loops" not in fields:
            self.fail("calibrate", "A", f"failed (rc {p.returncode}, stdout {out!r})")
        loops = int(fields["loops"])
        excl = self.run_group("exclusive", ["A"], loops, self.a.excl_seconds)
        ends = excl["A"]
        iter_s = (ends[-1] - ends[0]) / (len(ends) - 1)
        return {"loops": loops, "calibrate_iter_us": float(fields["iter_us"]),
                "exclusive_iter_us": iter_s * 1e6, "exclusive_iterations": len(ends)}

    def run_group(self, tag, labels, loops, secs, during=None):
        go = os.path.join(self.a.out, f"{tag}.go")
        if os.path.exists(go):
            os.unlink(go)
        outs = {lb: os.path.join(self.logs, f"{tag}-{lb}.ends") for lb in labels}
        procs = {lb: self.worker(lb, ["run", str(loops), str(secs), outs[lb], go], tag)
                 for lb in labels}
        for lb, p in procs.items():
            line = p.stdout.readline().strip()
            if line != "ready":
                p.wait(timeout=30)
                self.fail(tag, lb, f"not ready (rc {p.returncode}, said {line!r})")
        time.sleep(self.a.adopt_seconds)  # one rescan adopts them; the policy's first writes
        open(go, "w").close()
        t_go = now()
        extra = during(t_go) if during else None
        for lb, p in procs.items():
            p.communicate(timeout=secs + 60)
            if p.returncode != 0:
                self.fail(tag, lb, f"failed (rc {p.returncode})")
        ends = {lb: [int(x) / 1e9 for x in open(outs[lb])] for lb in labels}
        ends["_go"] = t_go
        if extra is not None:
            ends["_during"] = extra
        return ends

    def scenario(self, name, iter_s, loops):
        policy, members, overrides, targets = SCENARIOS[name]
        self.cli("policy", "set", policy)
        for lb in members:
            share = overrides.get(lb)
            if share is not None:
                self.cli("set", VGPUS[lb][0], "--share", str(share))

        def during(t_go):
            time.sleep(self.a.seconds / 2)
            return json.loads(self.cli("--json", "policy", "show"))["policy"]

        ends = self.run_group(name, members, loops, self.a.seconds, during)
        status = ends.pop("_during", None)
        t_go = ends.pop("_go")
        return analyse(name, policy, members, targets, ends, t_go, iter_s, self.a, status)

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()


def windows(ends_by, t0, t1, width):
    """Iteration counts per label in [t0 + k*width, t0 + (k+1)*width) while inside [t0, t1]."""
    n = int((t1 - t0) // width)
    out = {}
    for lb, ends in ends_by.items():
        counts = [0] * n
        for t in ends:
            k = int((t - t0) // width)
            if 0 <= k < n:
                counts[k] += 1
        out[lb] = counts
    return out


def analyse(name, policy, members, targets, ends, t_go, iter_s, a, status):
    t0 = t_go + a.settle_seconds
    t1 = min(e[-1] for e in ends.values())
    counts = windows(ends, t0, t1, 1.0)
    shares = {lb: [c * iter_s for c in counts[lb]] for lb in members}
    res = {"scenario": name, "policy": policy, "members": members, "targets": targets,
           "uuids": {lb: VGPUS[lb][0] for lb in members},
           "types": {lb: VGPUS[lb][1] for lb in members},
           "windows": len(next(iter(counts.values()))), "shares": shares,
           "mean": {lb: sum(s) / len(s) if s else float("nan") for lb, s in shares.items()}}
    if targets:
        dev = [abs(s - targets[lb]) for lb in members for s in shares[lb]]
        res["max_abs_dev_points"] = 100 * max(dev) if dev else float("nan")
        res["pass_5_points"] = bool(dev) and max(dev) <= 0.05
    if status:
        for g in status.get("gpus", []):
            res.setdefault("daemon", {})[str(g["gpu"])] = {
                "counters": g.get("counters"),
                "vgpus": {v["uuid"]: {"target": v.get("target"), "achieved": v.get("achieved")}
                          for v in g.get("vgpus", [])}}
    return res


def table(r):
    print(f"== {r['scenario']} ({r['policy']}, {r['windows']} windows of 1 s)")
    for lb in r["members"]:
        s = r["shares"][lb]
        tgt = r["targets"][lb] if r["targets"] else None
        row = " ".join(f"{100 * x:5.1f}" for x in s)
        t = f"{100 * tgt:5.1f}" if tgt is not None else "    -"
        print(f"  {lb} {VGPUS[lb][1]:9} target {t}  mean {100 * r['mean'][lb]:5.1f}  "
              f"min {100 * min(s):5.1f} max {100 * max(s):5.1f}  | {row}")
    if r["targets"]:
        print(f"  max |achieved - target| = {r['max_abs_dev_points']:.1f} points -> "
              f"{'PASS' if r['pass_5_points'] else 'MISS'} (+-5)")
    sums = [sum(r["shares"][lb][k] for lb in r["members"]) for k in range(r["windows"])]
    if sums:
        print(f"  GPU used (sum of shares) per window: {min(sums) * 100:.1f}..{max(sums) * 100:.1f} %")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scen = [r for r in results if r["windows"]]
    fig, axes = plt.subplots(1, len(scen), figsize=(4 * len(scen), 3.5), sharey=True)
    if len(scen) == 1:
        axes = [axes]
    for ax, r in zip(axes, scen):
        for lb in r["members"]:
            line, = ax.plot(range(1, r["windows"] + 1), [100 * s for s in r["shares"][lb]],
                            marker="o", label=f"{lb} ({VGPUS[lb][1]})")
            if r["targets"]:
                ax.axhline(100 * r["targets"][lb], color=line.get_color(), ls="--", lw=0.8)
        ax.set_title(f"{r['scenario']}: {r['policy']}")
        ax.set_xlabel("1 s window")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("GPU time share (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--worker", help="shares_worker binary (default: DIR/shares_worker)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", default="/tmp/gvm-shares-root")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--excl-seconds", type=float, default=3)
    ap.add_argument("--settle-seconds", type=float, default=1)
    ap.add_argument("--adopt-seconds", type=float, default=1)
    ap.add_argument("--kernel-us", type=int, default=1000)
    ap.add_argument("--scenarios", default="be2,eq2,eq4,fixed2,fixed4")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    a.root = os.path.abspath(a.root)
    if os.path.exists(a.root):
        shutil.rmtree(a.root)
    fake_sysfs(a.root)
    b = Bench(a)
    results = []
    doc = {"args": vars(a)}
    try:
        b.start_daemon()
        cal = b.calibrate()
        doc["calibration"] = cal
        print(f"calibration: loops={cal['loops']}, exclusive iteration "
              f"{cal['exclusive_iter_us']:.1f} us ({cal['exclusive_iterations']} iterations)",
              flush=True)
        iter_s = cal["exclusive_iter_us"] / 1e6
        for name in a.scenarios.split(","):
            r = b.scenario(name, iter_s, cal["loops"])
            results.append(r)
            table(r)
            sys.stdout.flush()
            doc["results"] = results
            json.dump(doc, open(os.path.join(a.out, "shares.json"), "w"), indent=1)
        b.cli("policy", "set", "best-effort")
    finally:
        b.stop()
    try:
        plot(results, os.path.join(a.out, "shares.png"))
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the picture
        print(f"plot failed: {e}")


if __name__ == "__main__":
    main()
