"""Threads for decoding: BLAS at 1 or 2, and our own threads at 2, as found and busy.

python -m benchmarks threads [--quick]. A model of GPT-2 124M's shape with random
weights (memory-mapped, as `minigpt.load_model` reads any checkpoint). One decode
step is the engine's own `forward_cached` of one token after an 80-token prompt,
repeated at the same position. The two thread counts take turns in every round
(threadpoolctl, through `minigpt.bench.blas_threads`), and each round's figure is
the median of several steps. Measured twice: on the machine as found, and while
one busy process per core (plain Python loops, started here) competes for the
CPU, as other programs do on a shared machine. The load average of the minute
before each condition is recorded with it.

The third variant is chapter 23's `minigpt.threads.threaded_model`, whose
products are split by rows over two plain Python threads, each calling BLAS held
to one thread. Then what the command line runs, `minigpt.kernels.kernel_model`
(our machine code for one token, chapter 37) at one and two of our threads, and
the same for Q8_0 (`--quantize q8_0`). The command line's default (`--threads`,
minigpt/__main__.py DEFAULT_THREADS) is chosen from these figures; chapters 21 and
23 show them. Writes benchmarks/results/threads.json and the chart
decode-threads-load.
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
from minigpt.kernels import kernel_model
from minigpt.models import load_model
from minigpt.quantize import quantize_model
from minigpt.threads import set_kernel_threads, threaded_model
from minigpt.weights import GPTConfig

POSITION = 80
COUNTS = (1, 2)
ROWS = "rows_2"  # our own 2 threads, BLAS on 1 inside each
LABELS = {"1": "1 BLAS thread", "2": "2 BLAS threads", ROWS: "our 2 threads",
          "kernel_1": "our kernel, 1 thread", "kernel_2": "our kernel, 2 threads",
          "q8_0_1": "q8_0, 1 thread", "q8_0_2": "q8_0, our 2 threads"}


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


def measure(model, rows, fast, q8, rounds: int, steps: int) -> dict:
    """Median step of each variant: the float model on BLAS threads, the threaded
    model (rows), the kernel model (fast: what the command line runs) and the
    quantised one (q8) on our threads, BLAS on one."""
    cache = model.empty_cache()
    model.forward_cached(np.arange(POSITION), cache, last_only=True)
    # name -> (model, BLAS threads, our threads)
    variants = {str(n): (model, n, 1) for n in COUNTS}
    variants |= {ROWS: (rows, 1, 2), "kernel_1": (fast, 1, 1), "kernel_2": (fast, 1, 2),
                 "q8_0_1": (q8, 1, 1), "q8_0_2": (q8, 1, 2)}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    alone: dict[str, list[float]] = {name: [] for name in variants}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for _ in range(rounds):
        for name, (m, blas, ours) in variants.items():  # the variants take turns
            set_kernel_threads(ours)
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
        rows, q8 = threaded_model(model), quantize_model(model, "q8_0")
        fast = kernel_model(model)
        as_found = measure(model, rows, fast, q8, rounds, steps)
        with busy_cores(cores):
            loaded = measure(model, rows, fast, q8, rounds, steps)
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
        # < 1: our two threads are faster than two BLAS threads, than one
        results[name]["rows_vs_blas_2"] = ms[ROWS] / ms["2"]
        results[name]["rows_vs_one"] = ms[ROWS] / ms["1"]
        # what --threads 2 gives over --threads 1 (> 1: faster), float and Q8_0
        results[name]["speedup_threads_2"] = {
            "float32": ms["kernel_1"] / ms["kernel_2"],
            "q8_0": ms["q8_0_1"] / ms["q8_0_2"]}
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
