"""Profiling and speed: stage timers, memory bandwidth, the roofline, BLAS threads.

Implements what chapter 21 measures and teaches beyond the engine itself: a
small per-stage timer for one generated token of the engine's own code; the
machine's memory bandwidth, measured with the same kind of BLAS matrix-vector
product that decoding runs; the roofline arithmetic (a token must read every
weight once, so bandwidth / bytes per token is a ceiling on tokens per second),
with a race that times decode steps and a memory stream in turns; and control of
the BLAS library's threads through threadpoolctl. It follows the roofline model
of Williams, Waterman and Patterson (2009).

What chapter 21 found to be faster is in the engine, not here: the prefill
computes the output head for its last position only (`last_only` in
`minigpt.kvcache`), sampling never sorts the whole vocabulary, and the command
line runs one BLAS thread unless told otherwise.

Leaves out on purpose: threads of our own and quantised weights (each has its own
chapter in the Going-further track), and hand-fused kernels (the BLAS library does
the heavy lifting).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt import kvcache
from minigpt.kvcache import CachedGPT
from minigpt.weights import GPTConfig, gpt2_names

__all__ = [
    "StageTimer", "blas_threads", "bytes_per_token", "decode_ceiling",
    "float64_arrays", "forward_flops", "measure_bandwidth", "param_arrays",
    "peak_rss_bytes", "profile_token", "race_to_roofline", "save_random_gpt2",
    "time_in_turns", "weight_bytes",
]


# --8<-- [start:stage-timer]
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
# --8<-- [end:stage-timer]


# --8<-- [start:profile-token]
# the functions one step of the engine spends its time in -> the stage they are
STAGES = {"layer_norm": "layer norms", "mha_cached": "attention (qkv, scores, proj)",
          "ffn": "feed-forward (MLP)"}


def profile_token(model: CachedGPT, token: int, cache: kvcache.KVCache,
                  timer: StageTimer) -> np.ndarray:
    """One decode step of the engine's own code, its stages timed. -> logits (V,)"""
    original = {name: getattr(kvcache, name) for name in STAGES}

    def timed(name: str) -> Callable:
        def run(*args: object, **kwargs: object) -> np.ndarray:
            with timer(STAGES[name]):
                return original[name](*args, **kwargs)
        return run

    before = sum(timer.seconds.values())
    start = time.perf_counter()
    try:  # the engine's forward calls these by name: wrap them for one step
        for name in STAGES:
            setattr(kvcache, name, timed(name))
        logits = model.forward_cached(np.array([token]), cache, last_only=True)
    finally:
        for name, fn in original.items():
            setattr(kvcache, name, fn)
    inside = sum(timer.seconds.values()) - before  # the three stages' share
    timer.seconds["embedding + output head"] += time.perf_counter() - start - inside
    timer.calls["embedding + output head"] += 1
    return logits[0]
# --8<-- [end:profile-token]


# --8<-- [start:measure-bandwidth]
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
# --8<-- [end:measure-bandwidth]


# --8<-- [start:race-to-roofline]
def race_to_roofline(model: CachedGPT, position: int = 80, rounds: int = 15) -> dict:
    """Decode steps and a memory stream, timed in turns: how near the roofline?

    The machine's load changes from second to second, so the bandwidth that sets
    the ceiling is measured in the same rounds as the steps it is compared with.
    """
    cfg = model.config
    cache = model.empty_cache()
    model.forward_cached(np.zeros(position, np.int64), cache, last_only=True)
    a = np.ones((2**16, 1024), np.float32)  # 256 MB, every page written
    ones = np.ones(1024, np.float32)

    def step() -> None:
        cache.length = position  # the same step again: overwrite row `position`
        model.forward_cached(np.array([1]), cache, last_only=True)

    median = time_in_turns({"stream": lambda: a @ ones, "minigpt": step}, rounds)
    gb_s = a.nbytes / median.pop("stream") / 1e9
    read = bytes_per_token(cfg, weight_bytes(model.params), position)
    return {"position": position, "rounds": rounds, "bandwidth_gb_s": gb_s,
            "ceiling_tok_s": decode_ceiling(read, gb_s),
            "tok_s": {name: 1 / t for name, t in median.items()}}
# --8<-- [end:race-to-roofline]


# --8<-- [start:time-in-turns]
def time_in_turns(fns: dict[str, Callable[[], object]],
                  rounds: int) -> dict[str, float]:
    """Median seconds of each function, the functions taking turns every round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}
# --8<-- [end:time-in-turns]


# --8<-- [start:blas-threads]
@contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with n BLAS threads (None: leave the library's own choice).

    Example: with blas_threads(1): tokens = list(generate(model, ids, 50))
    """
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits  # imported when first needed

    with threadpool_limits(limits=n, user_api="blas"):
        yield
# --8<-- [end:blas-threads]


# --8<-- [start:param-arrays]
def param_arrays(params: dict | list) -> Iterator[np.ndarray]:
    """Every array in a nested params dict (or an object standing in for one)."""
    items = params.values() if isinstance(params, dict) else params
    for x in items:
        if isinstance(x, dict | list):
            yield from param_arrays(x)
        else:
            yield x


def weight_bytes(params: dict) -> int:
    """Bytes of all parameters: what one decode step must read from memory."""
    return sum(x.nbytes for x in param_arrays(params))
# --8<-- [end:param-arrays]


# --8<-- [start:float64-arrays]
def float64_arrays(params: dict) -> list[tuple[int, ...]]:
    """Shapes of parameters that are not float32 (each would double its traffic)."""
    return [x.shape for x in param_arrays(params) if x.dtype != np.float32]
# --8<-- [end:float64-arrays]


# --8<-- [start:bytes-per-token]
def bytes_per_token(config: GPTConfig, weights: int, position: int) -> int:
    """Bytes read to decode the token at `position`: weights plus cached K and V."""
    kv = 2 * config.n_layer * position * config.n_embd * 4  # float32 keys, values
    # wpe: only one row is read per token, not the whole table
    wpe_unread = (config.n_ctx - 1) * config.n_embd * 4
    return weights - wpe_unread + kv


def decode_ceiling(bytes_per_step: int, gb_per_s: float) -> float:
    """The roofline for decoding: tokens/s if only moving memory took time."""
    return gb_per_s * 1e9 / bytes_per_step
# --8<-- [end:bytes-per-token]


# --8<-- [start:forward-flops]
def forward_flops(config: GPTConfig, n_params: int, tokens: int) -> int:
    """Matmul FLOPs of a pass over `tokens` tokens that scores only the last one.

    2 FLOPs (multiply, add) per block weight per token, the output head once; the
    position table is a lookup, and attention's own products are left out.
    """
    head = config.vocab_size * config.n_embd
    blocks = n_params - head - config.n_ctx * config.n_embd  # with the norms
    return 2 * (blocks * tokens + head)
# --8<-- [end:forward-flops]


# --8<-- [start:peak-rss]
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
# --8<-- [end:peak-rss]


# --8<-- [start:save-random-gpt2]
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
# --8<-- [end:save-random-gpt2]
