"""Memory bandwidth: how fast this machine streams float32 data, by working-set size.

python -m benchmarks bandwidth [--quick]. Two kernels over arrays from 256 KB to
256 MB: a read (a BLAS matrix-vector product, the operation decoding runs on
every weight matrix) and a copy (read + write, as in the STREAM benchmark). Small
arrays stay in the CPU's caches and stream fast; arrays larger than the last
cache level stream at the speed of main memory, the figure the roofline of
chapter 21 uses. The sizes take turns in every round; figures are medians of
rounds, each round the mean of enough calls to last 50 ms. Then the 256 MB
figure with 1 thread and with every core, alternately.

Writes benchmarks/results/bandwidth.json and docs/assets/charts/bandwidth-ladder.svg.
"""

from __future__ import annotations

import os

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.bench import measure_bandwidth
from minigpt.info import machine_info

ROW = 1024  # floats per row of the read kernel's matrix


def kernels(nbytes: int) -> dict[str, tuple[callable, int]]:
    """name -> (function over an array of nbytes, bytes it moves per call)."""
    n = max(ROW, nbytes // 4 // ROW * ROW)
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(a)
    x = np.ones(ROW, np.float32)
    return {"read": (lambda: a.reshape(-1, ROW) @ x, a.nbytes),
            "copy": (lambda: np.copyto(dst, a), 2 * a.nbytes)}


def ladder(sizes: list[int], rounds: int) -> dict[str, list[float]]:
    """GB/s of each kernel at each working-set size, sizes timed in turn."""
    out: dict[str, list[float]] = {"read": [], "copy": []}
    for kind in out:
        fns, moved = {}, {}
        for size in sizes:
            fn, nbytes = kernels(size)[kind]
            fns[size], moved[size] = fn, nbytes
        seconds = time_alternating(fns, rounds=rounds, min_seconds=0.05)
        out[kind] = [moved[s] / seconds[s] / 1e9 for s in sizes]
    return out


def run(quick: bool = False) -> dict:
    sizes = [2**k for k in range(18, 25 if quick else 29)]  # 256 KB .. 256 MB
    rounds = 3 if quick else 5
    with threadpool_limits(1):
        rates = ladder(sizes, rounds)
    cores = os.cpu_count() or 1
    by_threads: dict[str, dict[str, list[float]]] = {}
    for _ in range(1 if quick else 3):  # thread counts alternate
        for n in sorted({1, cores}):
            with threadpool_limits(n):
                for kind, gbs in measure_bandwidth(64 if quick else 256).items():
                    by_threads.setdefault(str(n), {}).setdefault(kind, []).append(gbs)
    results = {
        "sizes_bytes": sizes, "threads_ladder": 1, "rounds": rounds,
        "read_gb_s": rates["read"], "copy_gb_s": rates["copy"],
        "main_memory": {n: {k: float(np.median(v)) for k, v in d.items()}
                        for n, d in by_threads.items()},
    }
    save_results("bandwidth", results, command="python -m benchmarks bandwidth")
    draw(results, machine_info())
    return results


def draw(r: dict, machine: dict) -> None:
    """The ladder: GB/s against working-set size, caches marked by the drops."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sizes = np.array(r["sizes_bytes"]) / 2**20
    ax.plot(sizes, r["read_gb_s"], marker="o", label="read (matrix @ vector)")
    ax.plot(sizes, r["copy_gb_s"], marker="s", label="copy (bytes read + written)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("working set (MB)")
    ax.set_ylabel("GB/s (median, 1 thread)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Memory bandwidth by working-set size")
    fig.text(0.01, 0.01, f"{machine_caption(machine)}; python -m benchmarks bandwidth",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("bandwidth-ladder"), format="svg", metadata={"Date": None})
    plt.close(fig)
