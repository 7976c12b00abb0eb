"""Matmul benchmarks: the GFLOPS ladder on one core, and a sweep over n.

python -m benchmarks matmul [--quick]. Every compiled kernel and BLAS run on one
thread (threadpoolctl pins BLAS), and the variants of one size are timed in
alternating rounds, so their ratios hold even when the shared machine is busy.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.info import machine_info
from minigpt.matmul import compiled, gflops, matmul_fast, matmul_naive, matmul_numpy

LADDER = ["python", "ijk", "ikj", "tiled", "blocked", "register", "numpy", "blas"]


def variants(names: list[str]) -> dict:
    """name -> function of (a, b), compiled kernels warmed up."""
    table = {"python": lambda a, b: matmul_naive(a.tolist(), b.tolist()),
             "numpy": matmul_numpy, "blas": np.matmul,
             "register": matmul_fast}
    for kernel in ["ijk", "ikj", "tiled", "blocked"]:
        table[kernel] = compiled(kernel)
    return {name: table[name] for name in names}


def measure(n: int, names: list[str], rounds: int) -> dict[str, float]:
    """GFLOPS of each variant at size n (square matrices), checked first."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    fns = variants(names)
    expected = a @ b
    for name, fn in fns.items():  # correctness before speed (and compile time out)
        got = np.asarray(fn(a, b), dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.sqrt(n),
                                   err_msg=f"{name} at n = {n}")
    seconds = time_alternating({k: (lambda f=f: f(a, b)) for k, f in fns.items()},
                               rounds=rounds, min_seconds=0.02)
    return {name: gflops(n, n, n, s) for name, s in seconds.items()}


def plan(quick: bool) -> dict:
    """Which variants run at which n (slow variants only at small n)."""
    if quick:
        return {"ladder_n": 128, "python_n": 32, "sizes": [64, 128],
                "headline_n": 256}
    return {"ladder_n": 512, "python_n": 128,
            "sizes": [128, 256, 512, 1024, 2048, 4096], "headline_n": 2048}


def sweep_names(n: int) -> list[str]:
    """Variants fast enough to run at n in a few seconds."""
    names = ["ikj", "blocked", "register", "blas"]
    if n <= 2048:
        names.insert(3, "numpy")  # K rank-1 updates: about 45 s per call at n = 4096
    if n <= 1024:
        names = ["ijk", "tiled", *names]
    return names


def run(quick: bool = False) -> dict:
    from threadpoolctl import threadpool_limits

    p = plan(quick)
    with threadpool_limits(limits=1, user_api="blas"):
        machine = machine_info()
        python = measure(p["python_n"], ["python", "ijk", "blas"], rounds=3)
        ladder = measure(p["ladder_n"], LADDER[1:], rounds=5)
        sweep = {}
        for n in p["sizes"]:
            start = time.perf_counter()
            sweep[n] = measure(n, sweep_names(n), rounds=3 if n >= 2048 else 5)
            print(f"  n={n}: " + ", ".join(f"{k} {v:.1f}" for k, v in sweep[n].items())
                  + f" GFLOPS ({time.perf_counter() - start:.0f} s)", flush=True)
        head = measure(p["headline_n"], ["ikj", "blocked", "register", "blas"],
                       rounds=7)
    results = {
        "unit": "GFLOPS, float32, one core",
        "blas_threads_during_run": machine["blas_threads"],  # pinned to 1 above
        "python": {"n": p["python_n"], "gflops": python},
        "ladder": {"n": p["ladder_n"], "gflops": ladder},
        "sweep": {str(n): v for n, v in sweep.items()},
        "headline": {"n": p["headline_n"], "gflops": head,
                     "register_over_ikj": head["register"] / head["ikj"],
                     "register_over_blas": head["register"] / head["blas"],
                     "blocked_over_ikj": head["blocked"] / head["ikj"]},
    }
    save_results("matmul", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """Two SVG charts: the ladder (bars, log scale) and GFLOPS against n."""
    plt = pyplot()
    lad, py = results["ladder"], results["python"]
    names = ["python", *lad["gflops"]]
    values = [py["gflops"]["python"], *lad["gflops"].values()]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    bars = ax.barh(names[::-1], values[::-1], color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values[::-1]], padding=3)
    ax.set_xscale("log")
    ax.set_xlabel(f"GFLOPS (log scale), n = {lad['n']} (pure Python at n = {py['n']})")
    ax.set_title("Matrix multiplication on one core, float32")
    fig.text(0.01, 0.01, machine_caption(machine) + "; every variant on 1 thread",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("matmul-ladder"), format="svg")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    sizes = [int(n) for n in results["sweep"]]
    for name in ["ijk", "ikj", "tiled", "blocked", "register", "numpy", "blas"]:
        pts = [(n, results["sweep"][str(n)][name]) for n in sizes
               if name in results["sweep"][str(n)]]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("n (square matrices n x n)", labelpad=1)
    ax.set_ylabel("GFLOPS (log scale)")
    ax.set_title("Where each kernel falls off: GFLOPS against n, one core")
    ax.legend(ncol=7, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.text(0.01, 0.01, machine_caption(machine) + "; every variant on 1 thread",
             fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("matmul-sweep"), format="svg")
    plt.close(fig)
