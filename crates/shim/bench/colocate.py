"""Colocation benchmark: a latency-sensitive, high-priority inference loop beside a
low-priority training job on one GPU, in several configurations, in ONE invocation.

    python3 colocate.py --shim libgvm_cuda.so --out OUTDIR [--requests 300] [--rate R]
        [--new-tokens 8] [--configs exclusive_high,exclusive_batch,nocontrol,mps,gvm_priority,gvm_freeze]
    python3 colocate.py rebuild RAWDIR CONFIGS OUTDIR   # results again from a run's raw files
    python3 colocate.py replot colocate.json out.png

Server ("high"), `--server graph` (default): graph_llama.py, a Llama-architecture model of the
Llama 3.2 3B shape with random weights whose prefill (one graph per `--bucket` of prompt
length) and decode steps are CUDA-graph replays, so the server is bound by the GPU, not by
Python; `--server hf`: transformers' LlamaForCausalLM (1.1B shape), eager, as in the earlier
runs. Requests arrive at a fixed-seed Poisson rate with fixed-seed prompt lengths in
[--prompt-min, --prompt-max], each generating `--new-tokens` tokens greedily with a KV cache.
TTFT is measured from the request's arrival (queueing included) to its first token on the
host, "service TTFT" from the request's start; inter-token latency (ITL) between consecutive
tokens. Batch ("low"): a training loop (4 residual MLP blocks 4096->16384->4096, bf16, AdamW,
4096 tokens per step) reporting steps/s over the server's measuring window (alone: over its
own loop, not its process's exit).

Batch (`--batch-kind`): mlp (above), conv (torchvision ResNet-50, 64 images a step) or unet
(a small diffusion-style UNet whose convolutions run milliseconds each).

Configurations: sigstop (the server SIGSTOPs the batch process before each request and
SIGCONTs it after: the baseline a user could script; GPU work already queued still runs),
exclusive_high, exclusive_batch, nocontrol (both, default time-slicing), mps
(both under nvidia-cuda-mps-control), gvm_priority (both under the shim; server priority 0,
batch priority 8: the batch is held while the server has GPU work, its queue bounded; shim
parameters as `gvm_priority:depth=1:budget=500:linger=US:maxhold=MS`), gvm_freeze (both under
the shim without arbitration; the server freezes the batch through its control block for the
whole of each request, as SIGSTOP would; `gvm_freeze:lead=MS` freezes it MS before each
arrival, which only a benchmark that knows its arrivals can do: a diagnostic of how much of
the server's slowdown is the GPU's power and thermal state rather than scheduling), vm_priority
(each job behind its own guest agent under `vm_rig.sh`, the VM-level hold relayed by gvm-vgpud:
issue 16's benchmark 2; the server's VM at priority 2, the batch's at 8). Writes OUTDIR/colocate.json (arguments, results,
ratios to the exclusive runs), OUTDIR/colocate.png and OUTDIR/raw.tgz (raw results and logs),
and prints a table with ratios to exclusive.
"""
import argparse
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FROZEN = 60


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------------- workers
def hf_server(a):
    """transformers' LlamaForCausalLM (1.1B shape), eager, KV cache: the server of the earlier
    runs. Returns request(prompt_len) -> (t_start, t_first, token times)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=5632, vocab_size=32000,
                      max_position_embeddings=4096)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()

    def request(prompt_len, before_start):
        ids = torch.randint(0, cfg.vocab_size, (1, prompt_len), device="cuda")
        before_start()
        start = now()
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            stamps = [now()]
            pkv = out.past_key_values
            for _ in range(a.new_tokens - 1):
                out = model(input_ids=tok, past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
                stamps.append(now())
        return start, stamps, {}

    return request, {"server": "hf", "parameters": sum(p.numel() for p in model.parameters())}


def graph_server(a):
    """graph_llama.Server: every request is one prefill graph replay and one decode replay per
    further token (GPU-bound). Returns request(prompt_len) and a description."""
    import torch
    import graph_llama

    shape = graph_llama.SHAPES[a.model]
    cuda = a.device == "cuda"
    srv = graph_llama.Server(shape, a.prompt_min, a.prompt_max, a.bucket, a.new_tokens,
                             device=a.device, use_graphs=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ok, detail = srv.check([a.prompt_min, a.prompt_max])
    if not ok:
        raise SystemExit(f"graph replay and eager code disagree: {detail}")

    # GPU time of each prefill, from an event recorded in front of its graph to one behind
    # it: with the TTFT, it separates waiting for the GPU (other work draining, a context
    # switch) from the prefill itself running slower (clocks, preemption, caches).
    events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) \
        if cuda else None

    def request(prompt_len, before_start):
        b = srv.stage(prompt_len)
        before_start()
        start = now()
        if events:
            events[0].record()
        srv.prefill(b)
        if events:
            events[1].record()
        sync()
        stamps = [now()]
        extra = {"prefill_gpu": events[0].elapsed_time(events[1]) / 1e3} if events else {}
        for _ in range(a.new_tokens - 1):
            srv.decode()
            sync()
            stamps.append(now())
        return start, stamps, extra

    return request, {"server": "graph", "model": a.model, "parameters": shape.parameters(),
                     "buckets": srv.buckets, "check": dict(detail, graphs_equal_eager=ok)}


def serve(a):
    import numpy as np

    request, info = (graph_server if a.server == "graph" else hf_server)(a)
    freeze = None
    if a.freeze_ctl:
        import ctypes
        fd = os.open(a.freeze_ctl, os.O_RDWR)
        freeze = mmap.mmap(fd, 4096)
        libc = ctypes.CDLL(None, use_errno=True)
        word = ctypes.addressof(ctypes.c_char.from_buffer(freeze, FROZEN))

    def set_frozen(v):
        struct.pack_into("<I", freeze, FROZEN, v)
        if not v:  # wake held launches at once (FUTEX_WAKE on the shared word)
            libc.syscall(202, ctypes.c_void_p(word), 1, 0x7FFFFFFF)

    stop_pid = a.sigstop_pid

    def before():
        if freeze:
            set_frozen(1)
        if stop_pid:
            os.kill(stop_pid, signal.SIGSTOP)

    def one(prompt_len, arrival):
        start, stamps, extra = request(prompt_len, before)
        if freeze is not None:
            set_frozen(0)
        if stop_pid:
            os.kill(stop_pid, signal.SIGCONT)
        itl = [b - c for c, b in zip(stamps, stamps[1:])]
        return {"ttft": stamps[0] - arrival, "ttft_service": stamps[0] - start,
                "service": stamps[-1] - start, "itl": itl, "prompt": prompt_len, **extra}

    rng = np.random.RandomState(a.seed)
    lens = rng.randint(a.prompt_min, a.prompt_max + 1, size=a.requests)
    # Warm-up (kernels loaded, allocator and clocks settled): each prompt bucket of the graph
    # server twice, or the first 32 distinct prompt lengths of the eager one twice.
    warm = info.get("buckets") or sorted(set(int(n) for n in lens))[:32]
    for n in warm * 2:
        one(n, now())
    t = [one(int(n), now())["service"] for n in lens[:5]]
    service = sum(t) / len(t)
    rate = a.rate if a.rate > 0 else a.duty / service
    gaps = rng.exponential(1.0 / rate, size=a.requests)
    print(json.dumps({"ready": True, "service_s": service, "rate": rate, **info}), flush=True)
    if a.go_file:
        while not os.path.exists(a.go_file):
            time.sleep(0.01)
    t0 = now()
    arrivals = t0 + np.cumsum(gaps)
    res = []
    lead = a.freeze_lead / 1e3 if freeze is not None else 0.0
    for i in range(a.requests):
        if lead > 0:
            while now() < arrivals[i] - lead:
                time.sleep(min(0.0005, max(0.0, arrivals[i] - lead - now())))
            set_frozen(1)
        while now() < arrivals[i]:
            time.sleep(min(0.0005, max(0.0, arrivals[i] - now())))
        res.append(one(int(lens[i]), float(arrivals[i])))
    t1 = now()
    with open(a.result, "w") as f:
        json.dump({"t0": t0, "t1": t1, "rate": rate, "service_s": service, "requests": res}, f)


def batch_conv(torch):
    """torchvision ResNet-50, random weights, bf16, SGD, 64 images of 224x224 a step."""
    import torchvision
    m = torchvision.models.resnet50().cuda().to(torch.bfloat16).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(64, 3, 224, 224, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (64,), device="cuda")

    def step():
        loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def batch_unet(torch):
    """A small diffusion-style UNet (two down/up levels, 256-512 channels at 128x128, bf16):
    each denoising training step is a few long convolution kernels (milliseconds each)."""
    nn = torch.nn

    def blk(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(32, o), nn.SiLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(32, o), nn.SiLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Conv2d(4, 256, 3, padding=1)
            self.d1, self.d2, self.mid = blk(256, 256), blk(256, 512), blk(512, 512)
            self.u2, self.u1 = blk(1024, 256), blk(512, 256)
            self.out = nn.Conv2d(256, 4, 3, padding=1)

        def forward(self, x):
            h0 = self.d1(self.inp(x))
            h1 = self.d2(nn.functional.avg_pool2d(h0, 2))
            m = self.mid(nn.functional.avg_pool2d(h1, 2))
            u = self.u2(torch.cat([nn.functional.interpolate(m, scale_factor=2), h1], 1))
            u = self.u1(torch.cat([nn.functional.interpolate(u, scale_factor=2), h0], 1))
            return self.out(u)

    net = UNet().cuda().to(torch.bfloat16).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(8, 4, 128, 128, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    noise = torch.randn_like(x)

    def step():
        loss = torch.nn.functional.mse_loss(net(x + noise).float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def batch(a):
    import torch

    torch.manual_seed(1)
    if a.batch_kind == "idle":
        # A peer that joins the arbitration (one launch under the shim) and then launches
        # nothing: what the server pays for arbitrating with a peer that never competes.
        torch.ones(1, device="cuda").add_(1).item()
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        t_start = now()
        end = t_start + a.seconds
        while now() < end and not (a.stop_file and os.path.exists(a.stop_file)):
            time.sleep(0.05)
        with open(a.result, "w") as f:
            json.dump({"t_start": t_start, "stamps": [now()]}, f)
        return
    if a.batch_kind != "mlp":
        step = (batch_conv if a.batch_kind == "conv" else batch_unet)(torch)
        for _ in range(5):
            step().item()
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        stamps = []
        t_start = now()
        end = t_start + a.seconds
        while now() < end and not (a.stop_file and os.path.exists(a.stop_file)):
            step().item()
            stamps.append(now())
        with open(a.result, "w") as f:
            json.dump({"t_start": t_start, "stamps": stamps}, f)
        return
    d, h = 4096, 16384
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, h), torch.nn.GELU(),
                                torch.nn.Linear(h, d)) for _ in range(4))
        x = torch.randn(4096, d)
        y = torch.randn(4096, d)
    opt = torch.optim.AdamW(blocks.parameters(), lr=1e-4)

    def step():
        z = x
        for b in blocks:
            z = z + b(z)
        loss = torch.nn.functional.mse_loss(z, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(5):
        step().item()
    print(json.dumps({"ready": True}), flush=True)
    stamps = []
    t_start = now()
    end = t_start + a.seconds
    while now() < end and not (a.stop_file and os.path.exists(a.stop_file)):
        step().item()
        stamps.append(now())
    with open(a.result, "w") as f:
        json.dump({"t_start": t_start, "stamps": stamps}, f)


# ----------------------------------------------------------------------------- orchestrator
def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def read_block(path):
    try:
        with open(path, "rb") as f:
            d = f.read(256)
    except OSError:
        return None
    names = ["kernel", "kernel_ptsz", "kernel_ex", "kernel_ex_ptsz", "cooperative", "graph"]
    return {"submitted": struct.unpack_from("<Q", d, 40)[0],
            "launches": dict(zip(names, struct.unpack_from("<6Q", d, 144))),
            "arb_waits": struct.unpack_from("<Q", d, 192)[0],
            "arb_wait_s": struct.unpack_from("<Q", d, 200)[0] / 1e9,
            "arb_timeouts": struct.unpack_from("<Q", d, 208)[0],
            "queue_waits": struct.unpack_from("<Q", d, 216)[0],
            "arb_state": struct.unpack_from("<I", d, 132)[0]}


SMI_FIELDS = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"


def start_smi(tag):
    """Sample the GPU's SM clock, power and clock-event reasons every 200 ms while a
    configuration is measured (a prefill is compute-bound: its time follows the clock).
    None when nvidia-smi is not there."""
    path = f"/tmp/colo-{tag}-smi.log"
    try:
        return subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}",
                                 "--format=csv,noheader,nounits", "-lms", "200"],
                                stdout=open(path, "w"), stderr=subprocess.STDOUT), path
    except OSError:
        return None, path


def stop_smi(proc, path):
    """Stop the sampler; the samples' summary (empty when there were none)."""
    if proc is None:
        return {}
    proc.terminate()
    proc.wait(timeout=10)
    sm, power, temp, capped = [], [], [], 0
    for line in open(path):
        f = [x.strip() for x in line.split(",")]
        try:
            sm.append(float(f[0]))
            power.append(float(f[1]))
            temp.append(float(f[2]))
            capped += int(f[3], 16) & 0x4 != 0  # SW power cap
        except (ValueError, IndexError):
            continue
    if not sm:
        return {}
    return {"sm_mhz_mean": sum(sm) / len(sm), "sm_mhz_min": min(sm),
            "power_w_mean": sum(power) / len(power), "temp_c_max": max(temp),
            "power_capped_frac": capped / len(sm), "samples": len(sm)}


def spawn(role, args, env, tag, out):
    cmd = [sys.executable, os.path.abspath(__file__), role] + args
    log = open(f"/tmp/colo-{tag}-{role}.log", "w")
    # COLO_CPUS_SERVE / COLO_CPUS_BATCH ("2-5"): pin each role to its own cores, so a
    # launch-bound server's speed does not depend on where the scheduler put it.
    cpus = os.environ.get(f"COLO_CPUS_{role.upper()}")
    pin = None
    if cpus:
        lo_c, _, hi_c = cpus.partition("-")
        mask = set(range(int(lo_c), int(hi_c or lo_c) + 1))
        pin = lambda: os.sched_setaffinity(0, mask)  # noqa: E731
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                         preexec_fn=pin)
    p.args_log = log.name
    return p


def wait_ready(p, what, timeout=240):
    t = now()
    while now() - t < timeout:
        line = p.stdout.readline()
        if not line:
            p.wait()
            tail = open(p.args_log).read()[-2000:] if hasattr(p, "args_log") else ""
            raise SystemExit(f"{what} exited before it was ready (rc {p.poll()}): {tail}")
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("ready"):
            return j
    raise SystemExit(f"{what} not ready in {timeout} s")


def parse_config(spec):
    """`gvm_priority:depth=4:linger=500` -> ("gvm_priority", {"depth": 4, "linger": 500}):
    a configuration with tuned shim parameters for the batch (depth = GVM_QUEUE_DEPTH,
    budget = GVM_QUEUE_BUDGET_US, maxhold = GVM_ARB_MAX_HOLD_MS, gate = GVM_GPU_GATE) or the
    server (linger = GVM_ARB_LINGER_US)."""
    base, *kvs = spec.split(":")
    params = {}
    for kv in kvs:
        k, v = kv.split("=")
        if k not in ("depth", "linger", "maxhold", "budget", "gate", "lead"):
            raise SystemExit(f"unknown parameter {k!r} in {spec!r}")
        params[k] = int(v)
    return base, params


def summarize(high, low):
    """Metrics of one configuration from the raw results: the server's (`high`: arrival window
    and per-request times) and the batch job's (`low`: its loop's start and step end times),
    either may be None. The batch's steps/s are counted over the server's window; alone, over
    its own loop (from its start to its last step: the process's exit is not batch time)."""
    res = {}
    if high is not None:
        t0, t1 = high["t0"], high["t1"]
        reqs = high["requests"]
        ttft = [r["ttft"] * 1e3 for r in reqs]
        itl = [x * 1e3 for r in reqs for x in r["itl"]]
        busy = sum(r["service"] for r in reqs)
        res.update(requests=len(reqs), rate=high["rate"], window_s=t1 - t0,
                   ttft_p50=pct(ttft, 50), ttft_p99=pct(ttft, 99),
                   ttft_service_p50=pct([r["ttft_service"] * 1e3 for r in reqs], 50),
                   ttft_service_p99=pct([r["ttft_service"] * 1e3 for r in reqs], 99),
                   itl_p50=pct(itl, 50), itl_p99=pct(itl, 99),
                   high_duty=busy / (t1 - t0), ttft_ms=ttft)
        if all("prefill_gpu" in r for r in reqs):
            gpu = [r["prefill_gpu"] * 1e3 for r in reqs]
            # What the TTFT spent outside the prefill's own GPU time (launch, waiting for
            # the GPU, the host's wake-up), per request.
            wait = [(r["ttft_service"] - r["prefill_gpu"]) * 1e3 for r in reqs]
            res.update(prefill_gpu_p50=pct(gpu, 50), prefill_gpu_p99=pct(gpu, 99),
                       ttft_outside_gpu_p50=pct(wait, 50), ttft_outside_gpu_p99=pct(wait, 99))
    elif "t_start" in low:
        t0, t1 = low["t_start"], low["stamps"][-1]
    else:  # raw files of runs before t_start was recorded: the steps' own span
        t0, t1 = low["stamps"][0], low["stamps"][-1]
        low = dict(low, stamps=low["stamps"][1:])
    if low is not None:
        inwin = [s for s in low["stamps"] if t0 <= s <= t1]
        res["batch_steps_per_s"] = len(inwin) / (t1 - t0) if t1 > t0 else float("nan")
    return res


def run_config(spec, a, base_env, rate):
    out = a.out
    name, params = parse_config(spec)
    tag = tag_of(spec)
    depth = params.get("depth", a.depth)
    env_hi, env_lo = dict(base_env), dict(base_env)
    ctl_hi, ctl_lo = f"/tmp/colo-{tag}-hi.ctl", f"/tmp/colo-{tag}-lo.ctl"
    for p in (ctl_hi, ctl_lo):
        if os.path.exists(p):
            os.unlink(p)
    mps = None
    if name.startswith("gvm"):
        # On tmpfs, as the shim's default (/dev/shm): the GPU-side gate pins this block for
        # the GPU, which the kernel allows for shared memory, not for a disk file's pages.
        arb = f"/dev/shm/colo-{tag}.arb"
        if os.path.exists(arb):
            os.unlink(arb)
        for e, ctl, prio in ((env_hi, ctl_hi, "0"), (env_lo, ctl_lo, "8")):
            e.update(LD_PRELOAD=a.shim, GVM_SHIM_CONTROL=ctl, GVM_SHIM_ARBITER=arb, GVM_PRIORITY=prio)
        if name == "gvm_freeze":
            for e in (env_hi, env_lo):
                e["GVM_ARBITRATE"] = "0"
            env_lo.update(GVM_QUEUE_ALWAYS="1", GVM_QUEUE_DEPTH=str(depth))
        else:
            env_lo["GVM_QUEUE_DEPTH"] = str(depth)
            if "linger" in params:
                env_hi["GVM_ARB_LINGER_US"] = str(params["linger"])
            if "maxhold" in params:
                env_lo["GVM_ARB_MAX_HOLD_MS"] = str(params["maxhold"])
            if "budget" in params:
                env_lo["GVM_QUEUE_BUDGET_US"] = str(params["budget"])
            if "gate" in params:
                env_lo["GVM_GPU_GATE"] = str(params["gate"])
    if name == "vm_priority":
        # Each job behind its own guest agent, as in a VM (vm_rig.sh starts them): the
        # agent's shim socket registers it, the agent applies the host's snapshots (priority,
        # the VM-level hold) and reports busy to gvm-vgpud, which holds the lo VM while the
        # hi VM is busy. No shared arbiter block: the two "VMs" meet only in the daemon.
        for e, vm in ((env_hi, "HI"), (env_lo, "LO")):
            sock, root = os.environ.get(f"GVM_VM_{vm}_SOCKET"), os.environ.get(f"GVM_VM_{vm}_ROOT")
            if not sock or not root:
                raise SystemExit("vm_priority needs GVM_VM_HI_SOCKET etc.: run under vm_rig.sh")
            for k in ("GVM_SHIM_ARBITER", "GVM_SHIM_CONTROL", "GVM_PRIORITY", "GVM_VGPU_UUID"):
                e.pop(k, None)
            e.update(LD_PRELOAD=a.shim, GVM_SHIM_SOCKET=sock, GVM_VGPU_ROOT=root)
        env_lo["GVM_QUEUE_DEPTH"] = str(depth)
    if name == "mps":
        pipe, logd = "/tmp/mps-pipe", "/tmp/mps-log"
        os.makedirs(pipe, exist_ok=True)
        os.makedirs(logd, exist_ok=True)
        for e in (env_hi, env_lo, base_env):
            pass
        menv = dict(base_env, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=logd)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=menv, check=True)
        mps = menv
        for e in (env_hi, env_lo):
            e.update(CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=logd)
    go = f"/tmp/colo-{tag}.go"
    stop = f"/tmp/colo-{tag}.stop"
    for f in (go, stop):
        if os.path.exists(f):
            os.unlink(f)
    res = {"config": spec, "params": params}
    lo = hi = None
    try:
        if name != "exclusive_high":
            secs = a.batch_seconds if name == "exclusive_batch" else 3600
            lo = spawn("batch", ["--seconds", str(secs), "--stop-file", stop,
                                 "--batch-kind", a.batch_kind,
                                 "--result", f"/tmp/colo-{tag}-lo.json"], env_lo, tag, out)
        if name == "exclusive_batch":
            wait_ready(lo, f"{name} batch")
            smi = start_smi(tag)
            lo.wait(timeout=a.batch_seconds + 120)
            res["gpu"] = stop_smi(*smi)
            res.update(summarize(None, json.load(open(f"/tmp/colo-{tag}-lo.json"))))
        else:
            hargs = ["--requests", str(a.requests), "--new-tokens", str(a.new_tokens),
                     "--server", a.server, "--model", a.model, "--prompt-min", str(a.prompt_min),
                     "--prompt-max", str(a.prompt_max), "--bucket", str(a.bucket),
                     "--seed", str(a.seed), "--rate", str(rate), "--duty", str(a.duty),
                     "--go-file", go, "--result", f"/tmp/colo-{tag}-hi.json"]
            if name == "gvm_freeze":
                hargs += ["--freeze-ctl", ctl_lo, "--freeze-lead", str(params.get("lead", 0))]
            if name == "sigstop":
                lo_ready = wait_ready(lo, f"{name} batch")
                hargs += ["--sigstop-pid", str(lo_ready.get("pid", lo.pid))]
            hi = spawn("serve", hargs, env_hi, tag, out)
            # The batch warms up while the server loads and captures its graphs (so the
            # server's calibrated service time, used only when --rate is 0, is pessimistic).
            info = wait_ready(hi, f"{name} server", timeout=600)
            if lo and name != "sigstop":
                wait_ready(lo, f"{name} batch")
            res["calibration"] = info
            smi = start_smi(tag)
            open(go, "w").close()
            hi.wait(timeout=3600)
            res["gpu"] = stop_smi(*smi)
            if hi.returncode != 0:
                raise SystemExit(f"{name}: server failed (rc {hi.returncode}), see its log")
            if lo:
                open(stop, "w").close()
                lo.wait(timeout=120)
            res.update(summarize(json.load(open(f"/tmp/colo-{tag}-hi.json")),
                                 json.load(open(f"/tmp/colo-{tag}-lo.json")) if lo else None))
        if name.startswith("gvm"):
            res["block_high"] = read_block(ctl_hi)
            res["block_low"] = read_block(ctl_lo)
    finally:
        for p in (hi, lo):
            if p and p.poll() is None:
                p.kill()
        if mps:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=mps)
            time.sleep(1)
    return res


def main_orchestrate(a):
    os.makedirs(a.out, exist_ok=True)
    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    base_env.pop("LD_PRELOAD", None)
    results = {}
    rate = a.rate
    for name in a.configs.split(","):
        t = now()
        r = run_config(name, a, base_env, rate)
        if rate <= 0 and "rate" in r:
            rate = r["rate"]  # the first server config fixes the arrival rate for the rest
        r["wall_s"] = now() - t
        results[name] = r  # keyed by the full spec (parameters included)
        short = {k: v for k, v in r.items() if k != "ttft_ms"}
        print(json.dumps(short), flush=True)
        json.dump({"args": vars(a), "results": results},
                  open(os.path.join(a.out, "colocate.json"), "w"), indent=1)
    report(results, vars(a), a.out)
    archive_raw(results, a.out)


def ratios(results):
    """Each configuration's ratios to the exclusive baselines of the same run."""
    ex_h, ex_b = results.get("exclusive_high", {}), results.get("exclusive_batch", {})
    rows = []
    for name, r in results.items():
        row = {"config": name}
        for k in ("ttft_p50", "ttft_p99", "ttft_service_p50", "ttft_service_p99", "itl_p50",
                  "itl_p99"):
            if k in r and k in ex_h:
                row[k + "_x"] = r[k] / ex_h[k]
        if "prefill_gpu_p50" in r and "prefill_gpu_p50" in ex_h:
            row["prefill_gpu_p50_x"] = r["prefill_gpu_p50"] / ex_h["prefill_gpu_p50"]
        if len(r.get("ttft_ms", [])) == len(ex_h.get("ttft_ms", [])) > 0:
            # Same seed: the same prompts arriving at the same times. The median of the
            # per-request ratios is robust where the p50 of a few prompt buckets is not.
            row["ttft_paired_p50_x"] = pct([x / e for x, e in zip(r["ttft_ms"], ex_h["ttft_ms"])], 50)
        if "batch_steps_per_s" in r and "batch_steps_per_s" in ex_b:
            row["batch_kept"] = r["batch_steps_per_s"] / ex_b["batch_steps_per_s"]
        rows.append(row)
    return rows


def report(results, args, out):
    """Print the table, write OUT/colocate.json (args, results, ratios) and OUT/colocate.png."""
    rows = ratios(results)
    print(f"{'config':16} {'TTFT p50':>9} {'p99':>9} {'ITL p50':>8} {'p99':>8} {'batch/s':>8} "
          f"{'TTFTx50':>8} {'TTFTx99':>8} {'ITLx50':>7} {'ITLx99':>7} {'batch%':>7} {'duty%':>6}"
          f" {'pGPU50':>7} {'wait50':>7} {'SM MHz':>6} {'pairedx':>7}")
    for row in rows:
        r = results[row["config"]]
        f = lambda k, s="{:9.1f}": s.format(r[k]) if k in r else " " * len(s.format(0.0))
        g = lambda k, s="{:8.2f}": s.format(row[k]) if k in row else " " * len(s.format(0.0))
        print(f"{row['config']:16} {f('ttft_p50')} {f('ttft_p99')} {f('itl_p50', '{:8.2f}')} "
              f"{f('itl_p99', '{:8.2f}')} {f('batch_steps_per_s', '{:8.2f}')} {g('ttft_p50_x')} "
              f"{g('ttft_p99_x')} {g('itl_p50_x', '{:7.2f}')} {g('itl_p99_x', '{:7.2f}')} "
              + (f"{100 * row['batch_kept']:7.1f}" if "batch_kept" in row else " " * 7)
              + (f" {100 * r['high_duty']:6.1f}" if "high_duty" in r else " " * 7)
              + (f" {r['prefill_gpu_p50']:7.1f} {r['ttft_outside_gpu_p50']:7.2f}"
                 if "prefill_gpu_p50" in r else " " * 16)
              + (f" {r['gpu']['sm_mhz_mean']:6.0f}" if r.get("gpu") else " " * 7)
              + (f" {row['ttft_paired_p50_x']:7.3f}" if "ttft_paired_p50_x" in row else ""))
    json.dump({"args": args, "results": results, "ratios": rows},
              open(os.path.join(out, "colocate.json"), "w"), indent=1)
    try:
        plot(results, rows, os.path.join(out, "colocate.png"))
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the picture
        print(f"plot failed: {e}")


def tag_of(spec):
    """A configuration's name in file names: `gvm_priority:depth=1` -> `gvm_priority-depth1`."""
    return spec.replace(":", "-").replace("=", "")


def raw_files(spec):
    tag = tag_of(spec)
    return f"colo-{tag}-hi.json", f"colo-{tag}-lo.json"


def archive_raw(results, out):
    """OUT/raw.tgz: every configuration's raw results and the workers' logs (one file, so a
    run's output stays a handful of files)."""
    import glob
    import tarfile
    with tarfile.open(os.path.join(out, "raw.tgz"), "w:gz") as t:
        for spec in results:
            tag = tag_of(spec)
            for f in list(raw_files(spec)) + glob.glob(f"/tmp/colo-{tag}-*.log"):
                f = f if f.startswith("/") else os.path.join("/tmp", f)
                if os.path.exists(f):
                    t.add(f, arcname=os.path.basename(f))


def rebuild(raw_dir, configs, out):
    """colocate.json and the plot again from the raw results of a run (the colo-*-hi.json and
    colo-*-lo.json files of raw.tgz, or /tmp on the GPU machine)."""
    results = {}
    for spec in configs.split(","):
        hi, lo = (os.path.join(raw_dir, f) for f in raw_files(spec))
        load = lambda p: json.load(open(p)) if os.path.exists(p) else None
        high, low = (None if spec == "exclusive_batch" else load(hi)), load(lo)
        results[spec] = dict(summarize(high, low), config=spec)
    os.makedirs(out, exist_ok=True)
    report(results, {"rebuilt_from": raw_dir}, out)


def plot(results, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [n for n in results if "ttft_ms" in results[n]]
    ax1.boxplot([results[n]["ttft_ms"] for n in names], whis=(1, 99), showfliers=False)
    ax1.set_xticks(range(1, len(names) + 1), names)
    for i, n in enumerate(names, 1):
        ax1.plot([i], [results[n]["ttft_p99"]], "rv")
    ax1.set_ylabel("TTFT ms (box: p25-p75, whiskers p1-p99, red: p99)")
    ax1.set_title("High-priority inference TTFT")
    ax1.tick_params(axis="x", rotation=30)
    kept = [(r["config"], 100 * r["batch_kept"]) for r in rows if "batch_kept" in r]
    ax2.bar([k for k, _ in kept], [v for _, v in kept], color="tab:green")
    ax2.axhline(85, color="r", ls="--", label="target 85%")
    ax2.set_ylabel("% of exclusive batch steps/s")
    ax2.set_title("Low-priority training throughput kept")
    ax2.tick_params(axis="x", rotation=30)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replot(path_json, path_png):
    """Redraw the plot from a colocate.json (e.g. on a machine other than the GPU one)."""
    res = json.load(open(path_json))["results"]
    plot(res, ratios(res), path_png)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "replot":
        replot(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 5 and sys.argv[1] == "rebuild":
        rebuild(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("role", nargs="?", default="run", choices=["run", "serve", "batch"])
    ap.add_argument("--shim")
    ap.add_argument("--out", default="/tmp/colocate")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s (0: duty / service time)")
    ap.add_argument("--duty", type=float, default=0.3, help="target fraction of time busy")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--server", default="graph", choices=["graph", "hf"],
                    help="graph: graph_llama with CUDA graphs (GPU-bound); hf: transformers, eager")
    ap.add_argument("--model", default="3b", help="graph server shape: 3b, 1b or tiny")
    ap.add_argument("--prompt-min", type=int, default=2048)
    ap.add_argument("--prompt-max", type=int, default=4096)
    ap.add_argument("--device", default="cuda", help="serve only: cpu runs the graph server's "
                    "code eagerly on the CPU (a check of the script, not a benchmark)")
    ap.add_argument("--bucket", type=int, default=256, help="graph server prompt bucket size")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch-seconds", type=float, default=20)
    ap.add_argument("--configs", default="exclusive_high,exclusive_batch,nocontrol,mps,gvm_priority,gvm_freeze")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--stop-file")
    ap.add_argument("--go-file")
    ap.add_argument("--freeze-ctl")
    ap.add_argument("--freeze-lead", type=float, default=0.0,
                    help="serve: freeze the batch this many ms before each arrival")
    ap.add_argument("--result")
    ap.add_argument("--batch-kind", default="mlp", choices=["mlp", "conv", "unet", "idle"],
                    help="batch job: MLP training, ResNet-50 training, small UNet loop, or "
                    "idle (joins the arbitration, then launches nothing: the shim's cost alone)")
    ap.add_argument("--sigstop-pid", type=int, default=0,
                    help="serve: SIGSTOP this pid during each request, SIGCONT after")
    a = ap.parse_args()
    if a.role == "serve":
        serve(a)
    elif a.role == "batch":
        batch(a)
    else:
        a.shim = os.path.abspath(a.shim)
        main_orchestrate(a)


if __name__ == "__main__":
    main()
