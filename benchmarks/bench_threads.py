"""BLAS threads for decoding: 1 or 2, on the machine as found and with its cores busy.

python -m benchmarks threads [--quick]. A model of GPT-2 124M's shape with random
weights (memory-mapped, as `minigpt.load_model` reads any checkpoint). One decode
step is the engine's own `forward_cached` of one token after an 80-token prompt,
repeated at the same position. The two thread counts take turns in every round
(threadpoolctl, through `minigpt.bench.blas_threads`), and each round's figure is
the median of several steps. Measured twice: on the machine as found, and while
one busy process per core (plain Python loops, started here) competes for the
CPU, as other programs do on a shared machine. The load average of the minute
before each condition is recorded with it.

The command line's default (`--threads`, minigpt/__main__.py DEFAULT_THREADS) is
chosen from these figures; chapter 21 shows them. Writes
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

from benchmarks.common import chart_path, machine_caption, pyplot, save_results
from minigpt.bench import blas_threads, save_random_gpt2
from minigpt.info import machine_info
from minigpt.models import load_model
from minigpt.weights import GPTConfig

POSITION = 80
COUNTS = (1, 2)


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
    with blas_threads(threads):
        for _ in range(steps):
            cache.length = POSITION  # the same step again
            start = time.perf_counter()
            model.forward_cached(np.array([1]), cache, last_only=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(model, rounds: int, steps: int) -> dict:
    cache = model.empty_cache()
    model.forward_cached(np.arange(POSITION), cache, last_only=True)
    runs: dict[str, list[float]] = {str(n): [] for n in COUNTS}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for _ in range(rounds):
        for n in COUNTS:  # the thread counts take turns
            runs[str(n)].append(step_ms(model, cache, n, steps))
    return {"step_ms": {n: statistics.median(r) for n, r in runs.items()},
            "step_ms_rounds": runs, "load_average_1min": load}


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 3) if quick else (9, 7)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(save_random_gpt2(Path(tmp) / "gpt2", GPTConfig()))
        as_found = measure(model, rounds, steps)
        with busy_cores(cores):
            loaded = measure(model, rounds, steps)
    results = {"shape": "GPT-2 124M (random weights)", "position": POSITION,
               "rounds": rounds, "steps_per_round": steps, "cores": cores,
               "busy_processes": cores, "as_found": as_found, "loaded": loaded}
    for name in ("as_found", "loaded"):
        ms = results[name]["step_ms"]
        results[name]["two_vs_one"] = ms["2"] / ms["1"]  # > 1: two threads slower
    save_results("threads", results, command="python -m benchmarks threads")
    draw(results, machine_info())
    print({k: results[k]["step_ms"] for k in ("as_found", "loaded")})
    return results


def draw(r: dict, machine: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    labels = {"as_found": "machine as found", "loaded": f"{r['busy_processes']} busy "
              f"processes added"}
    y = np.arange(len(labels))
    for i, n in enumerate(COUNTS):
        ms = [r[k]["step_ms"][str(n)] for k in labels]
        ax.barh(y + 0.4 * i - 0.2, ms, height=0.4,
                label=f"{n} BLAS thread{'s' if n > 1 else ''}")
        for yy, v in zip(y + 0.4 * i - 0.2, ms, strict=True):
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
