"""A Llama-architecture decoder served with CUDA graphs: the colocation benchmark's GPU-bound
inference server.

Why not transformers' eager loop: on the GPU machine it costs ~3 ms of Python per layer, so a
1.1B model's prefill of 1,024 tokens took 58 ms of which the GPU was busy ~5 ms. Such a server is
bound by its CPU, and its latency swings with host noise by more than the 5 % the colocation
target asks to resolve. Production servers (vLLM, TensorRT-LLM, SGLang) replay CUDA graphs for
the same reason. Here every request is one graph replay for the prefill (one graph per prompt
length bucket; prompts are padded up to the bucket, as servers pad to their captured sizes) and
one replay per generated token, so its time is the GPU's time.

The model is the Llama architecture written out in plain PyTorch: token embedding, per layer
RMSNorm -> fused QKV projection -> rotary position embedding -> grouped-query causal attention
(K/V written to a static cache) -> output projection -> residual, RMSNorm -> SwiGLU MLP (fused
gate/up) -> residual; final RMSNorm and a tied LM head on the last prompt position only.
Weights are random (normal, std 0.02, as transformers initialises them); no weights can be
downloaded on the GPU machine and the benchmark measures time, not text.

`Server.check()` replays the graphs and runs the same computation eagerly on the same inputs:
the generated tokens must be identical, so the graphs are known to compute the model.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    eps: float = 1e-5

    @property
    def head_dim(self):
        return self.hidden // self.heads

    def parameters(self):
        hd = self.head_dim
        attn = self.hidden * (self.heads + 2 * self.kv_heads) * hd + self.heads * hd * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return self.vocab * self.hidden + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden


SHAPES = {
    # Llama 3.2 3B: 3.2 B parameters (tied embeddings).
    "3b": Shape(hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vocab=128256),
    # TinyLlama 1.1B, the shape of the earlier (transformers, eager) runs.
    "1b": Shape(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, vocab=32000,
                rope_theta=10000.0),
    # A few-layer model for checking the code on a CPU.
    "tiny": Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256),
}


def rms_norm(x, weight, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Llama:
    """Weights, rotary tables and the static K/V cache of one sequence."""

    def __init__(self, shape, max_len, device, dtype=torch.bfloat16, seed=0):
        s = self.s = shape
        self.max_len = max_len
        g = torch.Generator(device=device).manual_seed(seed)

        def w(*size):
            return torch.empty(*size, device=device, dtype=dtype).normal_(0.0, 0.02, generator=g)

        hd = s.head_dim
        self.embed = w(s.vocab, s.hidden)
        self.layers = [dict(ln1=torch.ones(s.hidden, device=device, dtype=dtype),
                            wqkv=w(s.hidden, (s.heads + 2 * s.kv_heads) * hd),
                            wo=w(s.heads * hd, s.hidden),
                            ln2=torch.ones(s.hidden, device=device, dtype=dtype),
                            wgu=w(s.hidden, 2 * s.intermediate),
                            wdown=w(s.intermediate, s.hidden))
                       for _ in range(s.layers)]
        self.norm = torch.ones(s.hidden, device=device, dtype=dtype)
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(max_len, device=device, dtype=torch.float32), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.cos, self.sin = ang.cos().to(dtype), ang.sin().to(dtype)
        self.k_cache = torch.zeros(s.layers, 1, s.kv_heads, max_len, hd, device=device, dtype=dtype)
        self.v_cache = torch.zeros_like(self.k_cache)
        self.key_positions = torch.arange(max_len, device=device)
        # The last step's logits (static, so checks can compare them between runs).
        self.logits = torch.zeros(1, s.vocab, device=device, dtype=dtype)

    def _qkv(self, layer, x, positions):
        s, hd, t = self.s, self.s.head_dim, x.shape[1]
        h = rms_norm(x, layer["ln1"], s.eps)
        q, k, v = (h @ layer["wqkv"]).split([s.heads * hd, s.kv_heads * hd, s.kv_heads * hd], -1)
        q = q.view(1, t, s.heads, hd).transpose(1, 2)
        k = k.view(1, t, s.kv_heads, hd).transpose(1, 2)
        v = v.view(1, t, s.kv_heads, hd).transpose(1, 2)
        cos, sin = self.cos[positions], self.sin[positions]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def _mlp(self, layer, x):
        g, u = (rms_norm(x, layer["ln2"], self.s.eps) @ layer["wgu"]).chunk(2, dim=-1)
        return x + (F.silu(g) * u) @ layer["wdown"]

    def _next_token(self, x):
        self.logits.copy_((rms_norm(x, self.norm, self.s.eps) @ self.embed.t()).view(1, -1))
        return self.logits.argmax(-1).view(1, 1)

    def prefill(self, tokens, last_index, out_token):
        """Tokens [1, T] at positions 0..T-1 (T fixed: the bucket); fills the cache's first T
        positions and writes the token after position `last_index` ([1] long) to `out_token`."""
        s, t = self.s, tokens.shape[1]
        group = s.heads // s.kv_heads
        positions = self.key_positions[:t]
        x = F.embedding(tokens, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, positions)
            self.k_cache[i, :, :, :t].copy_(k)
            self.v_cache[i, :, :, :t].copy_(v)
            a = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1),
                                               v.repeat_interleave(group, 1), is_causal=True)
            x = x + a.transpose(1, 2).reshape(1, t, -1) @ layer["wo"]
            x = self._mlp(layer, x)
        out_token.copy_(self._next_token(x.index_select(1, last_index)))

    def decode(self, token, position):
        """One token ([1, 1]) at `position` ([1] long): attends to cache positions <= position,
        writes the next token back into `token` and advances `position` by one."""
        s, hd = self.s, self.s.head_dim
        group = s.heads // s.kv_heads
        visible = (self.key_positions <= position).view(1, 1, 1, -1)
        x = F.embedding(token, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(layer, x, position)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.index_copy_(2, position, k)
            vc.index_copy_(2, position, v)
            qg = q.reshape(1, s.kv_heads, group, hd)
            scores = (qg @ kc.transpose(-1, -2)).float() * (1.0 / math.sqrt(hd))
            p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).to(x.dtype)
            x = x + (p @ vc).reshape(1, 1, -1) @ layer["wo"]
            x = self._mlp(layer, x)
        token.copy_(self._next_token(x))
        position.add_(1)


class Server:
    """Prompt buckets with one captured prefill graph each, and one captured decode graph."""

    def __init__(self, shape, prompt_min, prompt_max, bucket, new_tokens, device="cuda",
                 use_graphs=True, seed=0):
        self.buckets = list(range(_round_up(prompt_min, bucket), _round_up(prompt_max, bucket) + 1,
                                  bucket))
        self.bucket = bucket
        self.new_tokens = new_tokens
        self.model = Llama(shape, self.buckets[-1] + new_tokens, device, seed=seed)
        self.vocab = shape.vocab
        self.tokens = {b: torch.zeros(1, b, dtype=torch.long, device=device) for b in self.buckets}
        self.last_index = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.graphs = self.decode_graph = None
        if use_graphs:
            self._capture()

    def bucket_of(self, prompt_len):
        for b in self.buckets:
            if prompt_len <= b:
                return b
        raise ValueError(f"prompt of {prompt_len} tokens is longer than the largest bucket")

    def _capture(self):
        m = self.model
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture (kernels loaded, workspaces sized)
            for b in self.buckets:
                m.prefill(self.tokens[b], self.last_index, self.token)
            self.position.fill_(self.buckets[0])
            m.decode(self.token, self.position)
        torch.cuda.current_stream().wait_stream(side)
        self.graphs = {}
        for b in self.buckets:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                m.prefill(self.tokens[b], self.last_index, self.token)
            self.graphs[b] = g
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            m.decode(self.token, self.position)
        self.decode_graph = g
        torch.cuda.synchronize()

    def stage(self, prompt_len, generator=None):
        """Put a random prompt of `prompt_len` tokens in its bucket's input (the host-side part
        of a request: tokenising and copying the prompt in). Returns the bucket."""
        b = self.bucket_of(prompt_len)
        ids = self.tokens[b]
        ids.zero_()
        ids[:, :prompt_len].random_(0, self.vocab, generator=generator)
        self.last_index.fill_(prompt_len - 1)
        self.position.fill_(prompt_len)
        return b

    def prefill(self, b):
        if self.graphs is not None:
            self.graphs[b].replay()
        else:
            self.model.prefill(self.tokens[b], self.last_index, self.token)

    def decode(self):
        if self.decode_graph is not None:
            self.decode_graph.replay()
        else:
            self.model.decode(self.token, self.position)

    def generate(self, prompt_len, seed):
        """Tokens and per-step logits of one request, its prompt drawn from `seed` (checks)."""
        dev = self.token.device
        g = torch.Generator(device=dev).manual_seed(seed)
        b = self.stage(prompt_len, g)
        self.prefill(b)
        tokens, logits = [int(self.token.item())], [self.model.logits.clone()]
        for _ in range(self.new_tokens - 1):
            self.decode()
            tokens.append(int(self.token.item()))
            logits.append(self.model.logits.clone())
        return tokens, torch.cat(logits)

    def check(self, prompt_lens, seed=7):
        """Replayed graphs and the eager code compute the same logits (bit for bit: the same
        kernels on the same inputs) and tokens for the same prompts. Returns (ok, detail)."""
        got = [self.generate(n, seed + i) for i, n in enumerate(prompt_lens)]
        graphs = (self.graphs, self.decode_graph)
        self.graphs = self.decode_graph = None
        try:
            want = [self.generate(n, seed + i) for i, n in enumerate(prompt_lens)]
        finally:
            self.graphs, self.decode_graph = graphs
        worst = max(float((a[1].float() - b[1].float()).abs().max()) for a, b in zip(got, want))
        same_tokens = all(a[0] == b[0] for a, b in zip(got, want))
        return same_tokens and worst == 0.0, {"max_logit_difference": worst,
                                              "tokens": [a[0] for a in got]}


def _round_up(n, k):
    return (n + k - 1) // k * k


def self_test(device="cpu"):
    """The cache is right: a padded prefill followed by teacher-forced decode steps gives the
    logits a full recomputation of the growing sequence gives (float32, tiny shape). Returns
    the largest difference; raises if it is not small or if context did not matter at all."""
    s = SHAPES["tiny"]
    cached = Llama(s, 64, device, dtype=torch.float32, seed=3)
    fresh = Llama(s, 64, device, dtype=torch.float32, seed=3)
    g = torch.Generator(device="cpu").manual_seed(1)

    def recompute(seq):
        fresh.prefill(torch.tensor([seq], device=device), torch.tensor([len(seq) - 1], device=device),
                      torch.zeros(1, 1, dtype=torch.long, device=device))
        return fresh.logits.clone()

    worst = 0.0
    for n in (1, 5, 13, 16):
        seq = torch.randint(0, s.vocab, (n,), generator=g).tolist()
        tokens = torch.full((1, 16), 7, dtype=torch.long, device=device)  # padding: any token
        tokens[0, :n] = torch.tensor(seq)
        token = torch.zeros(1, 1, dtype=torch.long, device=device)
        cached.prefill(tokens, torch.tensor([n - 1], device=device), token)
        diffs = [(cached.logits - recompute(seq)).abs().max()]
        position = torch.tensor([n], device=device)
        for t in torch.randint(0, s.vocab, (5,), generator=g).tolist():
            token.fill_(t)
            seq.append(t)
            cached.decode(token, position)
            diffs.append((cached.logits - recompute(seq)).abs().max())
        worst = max(worst, max(float(d) for d in diffs))
    context = float((recompute([1, 2, 3]) - recompute([5, 9, 3])).abs().max())
    if worst > 1e-4 or context < 1e-2:
        raise AssertionError(f"KV cache check failed: worst difference {worst}, context {context}")
    return worst


def time_graphs(model="3b", prompt_min=2048, prompt_max=4096, bucket=256, reps=10):
    """GPU time of each prefill graph and of one decode step (CUDA events, mean of `reps`
    replays after one), with the achieved TFLOP/s of the prefill's matrix products."""
    shape = SHAPES[model]
    srv = Server(shape, prompt_min, prompt_max, bucket, 2)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn):
        fn()
        begin.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / reps

    dense = shape.parameters() - shape.vocab * shape.hidden  # LM head: last position only
    out = {"model": model, "parameters": shape.parameters(), "prefill_ms": {}, "prefill_tflops": {}}
    for b in srv.buckets:
        srv.stage(b)
        ms = timed(lambda: srv.prefill(b))
        out["prefill_ms"][b] = round(ms, 3)
        out["prefill_tflops"][b] = round(2 * dense * b / ms / 1e9, 1)
    srv.stage(srv.buckets[-1] - 1)
    out["decode_ms"] = round(timed(lambda: (srv.position.fill_(srv.buckets[-1]), srv.decode())), 3)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(f"graph_llama self-test: cached decode matches recomputation within {self_test():.1e}")
    if sys.argv[1:2] == ["time"]:
        args = [sys.argv[2]] + [int(x) for x in sys.argv[3:6]] if len(sys.argv) > 2 else []
        print(json.dumps(time_graphs(*args)))
