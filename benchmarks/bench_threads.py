"""Threads for decoding: BLAS at 1 or 2, and our row kernel at 2, as found and busy.

python -m benchmarks threads [--quick]. A model of GPT-2 124M's shape with random
weights (memory-mapped, as `minigpt.load_model` reads any checkpoint). One decode
step is the engine's own `forward_cached` of one token after an 80-token prompt,
repeated at the same position. The two thread counts take turns in every round
(threadpoolctl, through `minigpt.bench.blas_threads`), and each round's figure is
the median of several steps. Measured twice: on the machine as found, and while
one busy process per core (plain Python loops, started here) competes for the
CPU, as other programs do on a shared machine. The load average of the minute
before each condition is recorded with it.

The third variant is what `--threads 2` runs: `minigpt.threads.threaded_model`,
whose one-token products are chapter 21's row kernel on two Numba threads, with
BLAS held to one. The command line's default (`--threads`, minigpt/__main__.py
DEFAULT_THREADS) is chosen from these figures; chapter 21 shows them. Writes
benchmarks/results/threads.json and the chart decode-threads-load.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    settle,
)
from minigpt.bench import blas_threads, save_random_gpt2
from minigpt.info import machine_info
from minigpt.models import load_model
from minigpt.threads import compile_dot_rows, set_kernel_threads, threaded_model
from minigpt.weights import GPTConfig

POSITION = 80
COUNTS = (1, 2)
ROWS = "rows_2"  # our row kernel on 2 threads, BLAS on 1
LABELS = {"1": "1 BLAS thread", "2": "2 BLAS threads", ROWS: "row kernel, 2 threads"}


def spin(stop) -> None:
    """Burn one core until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """n processes that keep n cores busy while the block runs."""
    stop = mp.Event()
    procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them get going
    try:
        yield
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)


def step_ms(model, cache, threads: int, steps: int) -> float:
    """Median milliseconds of one decode step with this many BLAS threads."""
    times = []
    with blas_threads(threads):  # the row kernel runs with threads=1 (BLAS)
        for _ in range(steps):
            cache.length = POSITION  # the same step again
            start = time.perf_counter()
            model.forward_cached(np.array([1]), cache, last_only=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def products(params: dict) -> list:
    """The weights one GPT-2 decode step multiplies by, the output head last."""
    parts = (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))
    return [block[a][b]["w"] for block in params["blocks"] for a, b in parts] + \
        [params["wte"].T]


def products_ms(model, threads: int, steps: int) -> float:
    """Median milliseconds of one step's matrix-vector products alone."""
    weights = products(model.params)
    x = np.random.default_rng(0).standard_normal(max(w.shape[0] for w in weights),
                                                 dtype=np.float32)
    times = []
    with blas_threads(threads):
        for _ in range(steps):
            start = time.perf_counter()
            for w in weights:
                x[None, :w.shape[0]] @ w
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model, rows, rounds: int, steps: int) -> dict:
    """Median step of each variant; rows is the threaded model (None: no numba)."""
    cache = model.empty_cache()
    model.forward_cached(np.arange(POSITION), cache, last_only=True)
    variants = {str(n): (model, n) for n in COUNTS}
    if rows is not None:
        variants[ROWS] = (rows, 1)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    alone: dict[str, list[float]] = {name: [] for name in variants}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    set_kernel_threads(2)
    for _ in range(rounds):
        for name, (m, blas) in variants.items():  # the variants take turns
            settle()  # each from idle thread pools
            runs[name].append(step_ms(m, cache, blas, steps))
            alone[name].append(products_ms(m, blas, steps))
    set_kernel_threads(1)  # the default again
    return {"step_ms": {n: statistics.median(r) for n, r in runs.items()},
            "products_ms": {n: statistics.median(r) for n, r in alone.items()},
            "step_ms_rounds": runs, "load_average_1min": load}


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 3) if quick else (9, 7)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_random_gpt2(Path(tmp) / "gpt2", GPTConfig()))
        rows = threaded_model(model) if compile_dot_rows() else None
        as_found = measure(model, rows, rounds, steps)
        with busy_cores(cores):
            loaded = measure(model, rows, rounds, steps)
    weights = products(model.params)
    results = {"shape": "GPT-2 124M (random weights)", "position": POSITION,
               "product_bytes": sum(w.nbytes for w in weights),
               # what threaded_model copies into rows: every weight but the head
               "copied_bytes": sum(w.nbytes for w in weights[:-1]),
               "rounds": rounds, "steps_per_round": steps, "cores": cores,
               "busy_processes": cores, "as_found": as_found, "loaded": loaded}
    for name in ("as_found", "loaded"):
        ms = results[name]["step_ms"]
        results[name]["two_vs_one"] = ms["2"] / ms["1"]  # > 1: two threads slower
        if ROWS in ms:  # < 1: the row kernel is faster than two BLAS threads
            results[name]["rows_vs_blas_2"] = ms[ROWS] / ms["2"]
            results[name]["rows_vs_one"] = ms[ROWS] / ms["1"]
    save_results("threads", results, command="python -m benchmarks threads")
    draw(results, machine_info())
    print({k: results[k]["step_ms"] for k in ("as_found", "loaded")})
    return results


def draw(r: dict, machine: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = {"as_found": "machine as found", "loaded": f"{r['busy_processes']} busy "
              f"processes added"}
    y = np.arange(len(labels))
    names = list(r["as_found"]["step_ms"])
    h = 0.8 / len(names)
    for i, name in enumerate(names):
        ms = [r[k]["step_ms"][name] for k in labels]
        at = y + h * i - 0.4 + h / 2
        ax.barh(at, ms, height=h, label=LABELS[name])
        for yy, v in zip(at, ms, strict=True):
            ax.text(v, yy, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y, list(labels.values()))
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per decode step (median), GPT-2 124M shape, position "
                  f"{r['position']}")
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, f"{machine_caption(machine)}; python -m benchmarks threads",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(chart_path("decode-threads-load"), format="svg",
                metadata={"Date": None})
    plt.close(fig)
