"""Profiling and speed: stage timers, memory bandwidth, the roofline, a lean decoder.

Implements what chapter 21 measures and teaches: a small per-stage timer for one
generated token; the machine's memory bandwidth, measured with the same kind of
BLAS matrix-vector product that decoding runs; the roofline arithmetic (a token
must read every weight once, so bandwidth / bytes per token is a ceiling on
tokens per second); and a greedy decoder tuned for that ceiling: buffers
allocated once and filled with `out=`, float32 everywhere, the memory-mapped
weights read in place, an output head that scores only the position it needs,
and a prefill whose attention scales, masks and normalises in place. It follows
the roofline model of Williams, Waterman and Patterson (2009), and shares the
cache of `minigpt.kvcache`.

Leaves out on purpose: sampling other than greedy (the fast path is what the
benchmarks time; `minigpt.generate` stays the general loop), sliding the window
past n_ctx (the fast path raises instead), quantised weights and threads of our
own (the BLAS library brings its threads).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt.attention import merge_heads, split_heads
from minigpt.kvcache import KVCache, forward_cached, mha_cached
from minigpt.layers import ffn, layer_norm, linear
from minigpt.model import GPT, check_ids
from minigpt.weights import GPTConfig, gpt2_names

__all__ = [
    "DecodeBuffers", "StageTimer", "attend_chunk", "attend_one", "block_chunk",
    "bytes_per_token", "decode_ceiling", "decode_step", "float64_arrays",
    "forward_flops", "gelu_tanh_inplace", "generate_fast", "layer_norm_into",
    "linear_into",
    "measure_bandwidth", "param_arrays", "peak_rss_bytes", "prefill",
    "profile_token", "race_to_roofline", "save_random_gpt2", "weight_bytes",
]


@dataclass
class StageTimer:
    """Seconds and calls per named stage: `with timer("attention"): ...`."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1

    def shares(self) -> dict[str, float]:
        """Each stage's fraction of the total time, largest first."""
        total = sum(self.seconds.values()) or 1.0
        order = sorted(self.seconds, key=self.seconds.get, reverse=True)
        return {stage: self.seconds[stage] / total for stage in order}


def profile_token(model: GPT, token: int, cache: KVCache,
                  timer: StageTimer) -> np.ndarray:
    """One decode step of chapter 20's code, each stage timed. -> logits (V,)"""
    p, cfg = model.params, model.config
    eps, pos = cfg.layer_norm_epsilon, cache.length
    with timer("embedding"):
        x = p["wte"][[token]] + p["wpe"][pos:pos + 1]  # [1, C]
    for layer, blk in enumerate(p["blocks"]):
        with timer("layer norms"):
            h = layer_norm(x, **blk["ln_1"], eps=eps)
        with timer("attention (qkv, scores, proj)"):
            x = x + mha_cached(h, **blk["attn"], n_head=cfg.n_head, cache=cache,
                               layer=layer)  # writes row pos of this layer
        with timer("layer norms"):
            h = layer_norm(x, **blk["ln_2"], eps=eps)
        with timer("feed-forward (MLP)"):
            x = x + ffn(h, **blk["mlp"])
    cache.length = pos + 1
    with timer("layer norms"):
        x = layer_norm(x, **p["ln_f"], eps=eps)
    with timer("output head (logits)"):
        return (x @ p["wte"].T)[0]  # [1, C] @ [C, V] -> [V]


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> dict[str, float]:
    """Best GB/s of three ways to stream `megabytes` of float32 through the CPU."""
    n = megabytes * 2**20 // 4
    rng = np.random.default_rng(0)
    a = rng.standard_normal(n, dtype=np.float32)  # touched: no page faults later
    dst = np.empty_like(a)
    ones = np.ones(1024, np.float32)
    kernels = {  # name -> (function, bytes it moves)
        "read (matrix @ vector)": (lambda: a.reshape(-1, 1024) @ ones, a.nbytes),
        "read (sum)": (lambda: a.sum(), a.nbytes),
        "copy (read + write)": (lambda: np.copyto(dst, a), 2 * a.nbytes),
    }
    best = {}
    for name, (fn, nbytes) in kernels.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best[name] = nbytes / min(times) / 1e9  # the least disturbed run
    return best


def race_to_roofline(model: GPT, position: int = 80, rounds: int = 15) -> dict:
    """Decode steps and a memory stream, timed in turns: how near the roofline?

    The machine's load changes from second to second, so the bandwidth that sets
    the ceiling is measured in the same rounds as the steps it is compared with.
    """
    cfg = model.config
    cache, buf = KVCache.empty(cfg), DecodeBuffers.empty(cfg)
    prefill(model, np.zeros(position, np.int64), cache)
    a = np.ones((2**16, 1024), np.float32)  # 256 MB, every page written
    ones = np.ones(1024, np.float32)

    def lean() -> None:
        cache.length = position  # the same step again: overwrite row `position`
        decode_step(model, 1, cache, buf)

    def chapter_20() -> None:
        cache.length = position
        forward_cached(model, np.array([1]), cache)

    fns = {"stream": lambda: a @ ones, "minigpt (lean)": lean,
           "minigpt (cache)": chapter_20}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: float(np.median(t)) for name, t in times.items()}
    gb_s = a.nbytes / median.pop("stream") / 1e9
    read = bytes_per_token(cfg, weight_bytes(model.params), position)
    return {"position": position, "rounds": rounds, "bandwidth_gb_s": gb_s,
            "ceiling_tok_s": decode_ceiling(read, gb_s),
            "tok_s": {name: 1 / t for name, t in median.items()}}


def param_arrays(params: dict | list) -> Iterator[np.ndarray]:
    """Every array in a nested params dict, each once."""
    items = params.values() if isinstance(params, dict) else params
    for x in items:
        if isinstance(x, np.ndarray):
            yield x
        else:
            yield from param_arrays(x)


def weight_bytes(params: dict) -> int:
    """Bytes of all parameters: what one decode step must read from memory."""
    return sum(x.nbytes for x in param_arrays(params))


def float64_arrays(params: dict) -> list[tuple[int, ...]]:
    """Shapes of parameters that are not float32 (each would double its traffic)."""
    return [x.shape for x in param_arrays(params) if x.dtype != np.float32]


def bytes_per_token(config: GPTConfig, weights: int, position: int) -> int:
    """Bytes read to decode the token at `position`: weights plus cached K and V."""
    kv = 2 * config.n_layer * position * config.n_embd * 4  # float32 keys, values
    # wpe: only one row is read per token, not the whole table
    wpe_unread = (config.n_ctx - 1) * config.n_embd * 4
    return weights - wpe_unread + kv


def forward_flops(config: GPTConfig, n_params: int, tokens: int) -> int:
    """Matmul FLOPs of a pass over `tokens` tokens that scores only the last one.

    2 FLOPs (multiply, add) per block weight per token, the output head once; the
    position table is a lookup, and attention's own products are left out.
    """
    head = config.vocab_size * config.n_embd
    blocks = n_params - head - config.n_ctx * config.n_embd  # with the norms
    return 2 * (blocks * tokens + head)


def decode_ceiling(bytes_per_step: int, gb_per_s: float) -> float:
    """The roofline for decoding: tokens/s if only moving memory took time."""
    return gb_per_s * 1e9 / bytes_per_step


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux VmHWM; else getrusage)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    import resource  # not on Windows; macOS reports bytes, Linux kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def save_random_gpt2(folder: str | Path, config: GPTConfig, std: float = 0.02,
                     seed: int = 0) -> Path:
    """Write a random GPT-2 of this shape as config.json + model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_positions": config.n_ctx, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head,
        "layer_norm_epsilon": config.layer_norm_epsilon}), encoding="utf-8")
    shapes = {name: shape for name, (_, shape) in gpt2_names(config).items()}
    header, offset = {}, 0
    for name, shape in shapes.items():  # the safetensors layout of chapter 16
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data starts 8-byte aligned
    rng = np.random.default_rng(seed)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in shapes.items():  # one tensor in memory at a time
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                x = np.ones(shape, np.float32)  # gains start at 1
            else:
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            f.write(x.astype("<f4").tobytes())
    return folder


# --- the lean decoder ----------------------------------------------------------

@dataclass
class DecodeBuffers:
    """Every intermediate of one decode step, allocated once and reused."""

    x: np.ndarray       # [C] the residual stream
    h: np.ndarray       # [C] a normalised copy, or a sub-layer's output
    qkv: np.ndarray     # [3C]
    scores: np.ndarray  # [n_head * n_ctx] attention weights, n_head * L used
    att: np.ndarray     # [n_head, 1, head_dim] attention output
    fc: np.ndarray      # [4C] the MLP's hidden layer
    logits: np.ndarray  # [V]

    @classmethod
    def empty(cls, config: GPTConfig) -> DecodeBuffers:
        C, H = config.n_embd, config.n_head
        def f(*shape: int) -> np.ndarray:
            return np.empty(shape, np.float32)
        return cls(f(C), f(C), f(3 * C), f(H * config.n_ctx), f(H, 1, C // H),
                   f(4 * C), f(config.vocab_size))


def layer_norm_into(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
                    out: np.ndarray) -> np.ndarray:
    """layer_norm of one vector, written into out. x: (C,) -> (C,)"""
    # np.add.reduce is x.sum() without the Python wrapper; a float32 scalar
    np.subtract(x, np.add.reduce(x) / x.size, out=out)
    scale = 1 / np.sqrt(np.dot(out, out) / x.size + eps)
    np.multiply(out, scale, out=out)
    np.multiply(out, g, out=out)
    return np.add(out, b, out=out)


def linear_into(x: np.ndarray, w: np.ndarray, b: np.ndarray,
                out: np.ndarray) -> np.ndarray:
    """x @ w + b into out. x: (C_in,), w: (C_in, C_out) -> (C_out,)"""
    np.matmul(x, w, out=out)  # a matrix-vector product: reads w once
    return np.add(out, b, out=out)


def gelu_tanh_inplace(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) overwriting x, no temporaries kept. x: (N,) -> (N,)"""
    inner = x * x  # the one temporary: x^3 needs x kept
    inner *= 0.044715
    inner += 1
    inner *= x
    inner *= np.float32(np.sqrt(2 / np.pi))
    np.tanh(inner, out=inner)
    inner += 1
    x *= inner
    x *= 0.5
    return x


def attend_one(buf: DecodeBuffers, cache: KVCache, layer: int,
               n_head: int) -> np.ndarray:
    """Attention of the newest token to all cached ones. -> att (n_head, 1, hs)"""
    C, L = buf.x.size, cache.length + 1
    hs = C // n_head
    q = buf.qkv[:C].reshape(n_head, hs, 1)
    cache.k[layer, :, L - 1] = buf.qkv[C:2 * C].reshape(n_head, hs)  # row L-1
    cache.v[layer, :, L - 1] = buf.qkv[2 * C:].reshape(n_head, hs)
    # the first n_head * L floats of the buffer, as a contiguous [n_head, L]
    scores = buf.scores[:n_head * L].reshape(n_head, L)
    # [n_head, L, hs] @ [n_head, hs, 1] -> [n_head, L, 1]
    np.matmul(cache.k[layer, :, :L], q, out=scores[:, :, None])
    scores *= np.float32(1 / np.sqrt(hs))
    scores -= np.maximum.reduce(scores, axis=1, keepdims=True)  # softmax, stable
    np.exp(scores, out=scores)
    scores /= np.add.reduce(scores, axis=1, keepdims=True)
    # [n_head, 1, L] @ [n_head, L, hs] -> [n_head, 1, hs]
    return np.matmul(scores[:, None, :], cache.v[layer, :, :L], out=buf.att)


def decode_step(model: GPT, token: int, cache: KVCache,
                buf: DecodeBuffers) -> np.ndarray:
    """Logits after one more token, every array reused. -> buf.logits (V,)"""
    p, cfg = model.params, model.config
    eps, pos = cfg.layer_norm_epsilon, cache.length
    if pos >= cfg.n_ctx:
        raise ValueError(f"the cache is full: n_ctx={cfg.n_ctx} tokens")
    x, h = buf.x, buf.h
    np.add(p["wte"][token], p["wpe"][pos], out=x)  # [C]
    for layer, blk in enumerate(p["blocks"]):
        # attention: normalise, project to q, k, v, attend, project back
        layer_norm_into(x, **blk["ln_1"], eps=eps, out=h)
        linear_into(h, **blk["attn"]["c_attn"], out=buf.qkv)  # [C] -> [3C]
        att = attend_one(buf, cache, layer, cfg.n_head).reshape(-1)  # [C]
        x += linear_into(att, **blk["attn"]["c_proj"], out=h)
        # feed-forward: normalise, expand 4x, GELU, project back
        layer_norm_into(x, **blk["ln_2"], eps=eps, out=h)
        gelu_tanh_inplace(linear_into(h, **blk["mlp"]["c_fc"], out=buf.fc))
        x += linear_into(buf.fc, **blk["mlp"]["c_proj"], out=h)
    cache.length = pos + 1
    layer_norm_into(x, **p["ln_f"], eps=eps, out=h)
    # the output head as [V, C] @ [C]: each row of wte is read once, in order
    return np.matmul(p["wte"], h, out=buf.logits)


def attend_chunk(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                 start: int) -> np.ndarray:
    """Causal attention of T new tokens after `start` cached ones, in place.

    q: (H, T, hs), k, v: (H, start + T, hs) -> (H, T, hs)
    """
    T, S = q.shape[1], k.shape[1]
    q = q * np.float32(1 / np.sqrt(q.shape[-1]))  # scale T*hs numbers, not T*S
    scores = q @ k.swapaxes(-1, -2)  # [H, T, hs] @ [H, hs, S] -> [H, T, S]
    # token t (at position start + t) sees keys 0..start + t: add -inf above that
    hidden = ~np.tri(T, S, k=start, dtype=bool)  # [T, S]
    scores += np.where(hidden, np.float32(-np.inf), np.float32(0))
    scores -= scores.max(axis=-1, keepdims=True)  # softmax, in place
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v  # [H, T, S] @ [H, S, hs] -> [H, T, hs]


def block_chunk(x: np.ndarray, ln_1: dict, attn: dict, ln_2: dict, mlp: dict,
                n_head: int, eps: float, cache: KVCache, layer: int) -> np.ndarray:
    """block_cached with attend_chunk for the attention. x: (T, C) -> (T, C)"""
    T, C = x.shape
    start = cache.length
    qkv = linear(layer_norm(x, **ln_1, eps=eps), **attn["c_attn"])  # [T, 3C]
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    cache.k[layer, :, start:start + T] = k  # [n_head, T, hs]
    cache.v[layer, :, start:start + T] = v
    out = attend_chunk(q, cache.k[layer, :, :start + T],
                       cache.v[layer, :, :start + T], start)
    x = x + linear(merge_heads(out), **attn["c_proj"])  # [T, C]
    return x + ffn(layer_norm(x, **ln_2, eps=eps), **mlp)


def prefill(model: GPT, ids: np.ndarray, cache: KVCache) -> np.ndarray:
    """Run the prompt into the cache; logits of its last token only. -> (V,)"""
    ids = check_ids(ids, model.config)
    p, cfg = model.params, model.config
    start, end = cache.length, cache.length + len(ids)
    if end > cfg.n_ctx:
        raise ValueError(f"{end} tokens would pass the context of n_ctx={cfg.n_ctx}")
    x = p["wte"][ids] + p["wpe"][start:end]  # [T] -> [T, C]
    for layer, block in enumerate(p["blocks"]):
        x = block_chunk(x, **block, n_head=cfg.n_head,
                        eps=cfg.layer_norm_epsilon, cache=cache, layer=layer)
    cache.length = end
    # only the last position predicts the next token: [C] instead of [T, C]
    h = layer_norm(x[-1], **p["ln_f"], eps=cfg.layer_norm_epsilon)
    return p["wte"] @ h  # [V, C] @ [C] -> [V]


def generate_fast(model: GPT, prompt_ids: Iterable[int],
                  max_new_tokens: int) -> Iterator[int]:
    """Greedy tokens, as generate(temperature=0.0), through the lean decoder."""
    ids = np.array(list(prompt_ids), dtype=np.int64)
    if len(ids) + max_new_tokens > model.config.n_ctx:
        raise ValueError(f"{len(ids)} prompt + {max_new_tokens} new tokens pass "
                         f"n_ctx={model.config.n_ctx}; the fast path does not slide")
    cache = KVCache.empty(model.config)
    buf = DecodeBuffers.empty(model.config)
    logits = prefill(model, ids, cache)
    for i in range(max_new_tokens):
        token = int(np.argmax(logits))  # greedy: ties go to the lowest id
        yield token
        if i + 1 < max_new_tokens:  # no step for a token nobody will read
            logits = decode_step(model, token, cache, buf)
