"""GPU smoke test of libgvm_cuda.so under PyTorch. Run under LD_PRELOAD with
GVM_SHIM_CONTROL and GVM_MEMORY_LIMIT set (see run_gpu.sh). Mode `basic` (default),
`expandable` (run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True) or `swap` (run with
GVM_HOST_SWAP=1). Prints JSON."""
import json
import os
import sys

import torch

import ctlblock

GIB = 1 << 30
mode = sys.argv[1] if len(sys.argv) > 1 else "basic"
limit = int(os.environ["GVM_LIMIT_BYTES"])
res = {"mode": mode, "limit": limit}
ok = True


def check(name, cond, detail=None):
    global ok
    res[name] = {"ok": bool(cond), "detail": detail}
    ok = ok and bool(cond)


free, total = torch.cuda.mem_get_info()
check("mem_get_info_total_is_limit", total == limit, [free, total])

if mode == "basic":
    a = torch.empty(limit // 2, dtype=torch.uint8, device="cuda")
    blk = ctlblock.read()
    check("memory_current_tracks", blk["memory_current"] >= limit // 2, blk["memory_current"])
    try:
        b = torch.empty(limit, dtype=torch.uint8, device="cuda")
        check("alloc_past_limit_ooms", False, "allocation succeeded")
    except torch.OutOfMemoryError as e:
        check("alloc_past_limit_ooms", True, str(e).splitlines()[0][:200])
    del a
    torch.cuda.empty_cache()

    # Kernel counts: elementwise ops and cuBLAS matmuls.
    x = torch.randn(1024, 1024, device="cuda")
    torch.cuda.synchronize()
    before = ctlblock.read()
    for _ in range(100):
        x = x * 1.0001
    for _ in range(10):
        y = x @ x
    torch.cuda.synchronize()
    after = ctlblock.read()
    sub = after["submitted"] - before["submitted"]
    check("kernels_counted", 110 <= sub <= 400, {"submitted_delta": sub,
          "ended": after["ended"], "submitted": after["submitted"]})
    check("ended_caught_up_after_sync", after["ended"] == after["submitted"],
          [after["ended"], after["submitted"]])

    # A CUDA graph replays correctly and its launches are seen.
    s = torch.randn(4096, device="cuda")
    out = torch.empty_like(s)
    g = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            out.copy_(s * 2 + 1)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(g):
        out.copy_(s * 2 + 1)
    b0 = ctlblock.read()["submitted"]
    for i in range(10):
        s.fill_(float(i))
        g.replay()
    torch.cuda.synchronize()
    b1 = ctlblock.read()["submitted"]
    check("graph_correct", torch.allclose(out, torch.full_like(s, 9 * 2 + 1)), float(out[0]))
    check("graph_launches_counted", b1 - b0 >= 10, b1 - b0)
elif mode == "swap":
    # Run with GVM_HOST_SWAP=1: past the limit an allocation lands in managed memory that
    # prefers the host, counted in swap_current (not memory_current), and still works.
    a = torch.ones(limit // 2, dtype=torch.uint8, device="cuda")
    before = ctlblock.read()
    try:
        b = torch.ones(limit, dtype=torch.uint8, device="cuda")
        spilled = None
    except torch.OutOfMemoryError as e:
        b, spilled = None, str(e).splitlines()[0][:200]
    blk = ctlblock.read()
    check("over_limit_spills_instead_of_oom", b is not None, spilled)
    check("swap_current_grows", blk["swap_current"] >= before["swap_current"] + limit,
          [before["swap_current"], blk["swap_current"]])
    check("memory_current_stays_under_limit", blk["memory_current"] <= limit, blk["memory_current"])
    if b is not None:
        b.mul_(3)
        check("swapped_tensor_usable", int(b[: 1 << 20].sum()) == 3 * (1 << 20)
              and int(b[-(1 << 20):].sum()) == 3 * (1 << 20), None)
        del b
        torch.cuda.empty_cache()
        after = ctlblock.read()
        check("swap_released_on_free", after["swap_current"] < blk["swap_current"],
              [blk["swap_current"], after["swap_current"]])
    del a
else:
    # Expandable segments map cuMemCreate'd physical chunks: they must be counted and capped.
    held = []
    oom = None
    try:
        for _ in range(4 * (limit // GIB) + 8):
            held.append(torch.empty(GIB // 4, dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError as e:
        oom = str(e).splitlines()[0][:200]
    blk = ctlblock.read()
    got = len(held) * (GIB // 4)
    check("expandable_oom_at_limit", oom is not None and got <= limit, {"allocated": got, "oom": oom})
    check("expandable_counted", blk["memory_current"] >= got and blk["memory_current"] <= limit,
          blk["memory_current"])
    t = held[0][:1024].float().sum() if held else None
    check("expandable_usable", t is not None and float(t) == float(t), None)

res["ok"] = ok
res["block"] = ctlblock.read()
print(json.dumps(res, indent=1))
sys.exit(0 if ok else 1)
