"""Matmul benchmarks: the GFLOPS ladder on one core, a sweep over n, batches.

python -m benchmarks matmul [--quick]. Every compiled kernel and BLAS run on one
thread (threadpoolctl pins BLAS), and the variants of one size are timed in
alternating rounds, so their ratios hold even when the shared machine is busy.
The ladder and the headline are rows of the sweep, not separate runs, so a chart
and the text never quote two measurements of the same thing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.info import machine_info
from minigpt.matmul import (
    batched_matmul,
    compiled,
    gflops,
    matmul_fast,
    matmul_ijk,
    matmul_naive,
    matmul_numpy,
)

LADDER = ["python", "ijk", "ikj", "tiled", "blocked", "register", "numpy", "blas"]


def variants(names: list[str]) -> dict:
    """name -> function of (a, b), compiled kernels warmed up."""
    table = {"python": lambda a, b: matmul_naive(a.tolist(), b.tolist()),
             "numpy": matmul_numpy, "blas": np.matmul,
             "register": matmul_fast}
    for kernel in ["ijk", "ikj", "tiled", "blocked"]:
        table[kernel] = compiled(kernel)
    if "ijk bt fastmath" in names:  # the ijk loop reading a contiguous B^T: these
        from numba import njit  # get an F-order b, copied once by `measure`, untimed

        table["ijk bt strict"] = table["ijk"]
        table["ijk bt fastmath"] = njit(fastmath=True)(matmul_ijk)
    return {name: table[name] for name in names}


def measure(n: int, names: list[str], rounds: int) -> dict[str, float]:
    """GFLOPS of each variant at size n (square matrices), checked first."""
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    fns = variants(names)
    bt = np.asfortranarray(b)  # the column-major copy, made here so it is not timed
    right = {name: bt if " bt " in name else b for name in fns}
    expected = a @ b
    for name, fn in fns.items():  # correctness before speed (and compile time out)
        got = np.asarray(fn(a, right[name]), dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.sqrt(n),
                                   err_msg=f"{name} at n = {n}")
    seconds = time_alternating(
        {k: (lambda f=f, r=right[k]: f(a, r)) for k, f in fns.items()},
        rounds=rounds, min_seconds=0.02)
    return {name: gflops(n, n, n, s) for name, s in seconds.items()}


def plan(quick: bool) -> dict:
    """Which variants run at which n (slow variants only at small n)."""
    if quick:
        return {"ladder_n": 128, "python_n": 32, "sizes": [64, 128],
                "headline_n": 128}
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


def peak() -> dict:
    """The core's float32 ceiling from its vector width and clock (Linux only).

    Two FMA instructions per cycle, each on `lanes` floats and counted as two
    operations: an upper bound (some cores split a 512-bit instruction in two).
    """
    flags, mhz = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "cpu MHz" and mhz is None:
                mhz = float(value)
    except OSError:
        return {}
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = (mhz or 0.0) / 1e3
    return {"lanes": lanes, "ghz": ghz, "fma_per_cycle": 2,
            "gflops": 2 * 2 * lanes * ghz}


def batches(quick: bool) -> dict:
    """Chapter 7's three claims: small products, the Python batch loop, stacking."""
    rng = np.random.default_rng(7)
    randn = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    out = {}
    # 1. one 2-D product, small against large: GFLOPS of np.matmul
    sizes = [16, 64] if quick else [16, 64, 512]
    mats = {n: (randn(n, n), randn(n, n)) for n in sizes}
    sec = time_alternating({str(n): (lambda a=a, b=b: a @ b) for n, (a, b) in
                            mats.items()}, rounds=5, min_seconds=0.05)
    out["single_gflops"] = {k: gflops(int(k), int(k), int(k), s)
                            for k, s in sec.items()}
    # 2. our Python loop over the batch against np.matmul's loop in C
    shapes = {"tiny": (256, 4), "head": (12, 64)} if quick else \
        {"tiny": (4096, 4), "head": (12, 64), "large": (4, 512)}
    out["loop_over_numpy"] = {}
    for name, (batch, n) in shapes.items():
        a, b = randn(batch, n, n), randn(batch, n, n)
        sec = time_alternating({"ours": lambda a=a, b=b: batched_matmul(a, b),
                                "numpy": lambda a=a, b=b: a @ b},
                               rounds=5, min_seconds=0.05)
        out["loop_over_numpy"][name] = {"batch": batch, "n": n,
                                        "ratio": sec["ours"] / sec["numpy"]}
    # 3. a weight for every sequence: loop, np.matmul on 3-D x, one stacked product
    b, t, c = (4, 16, 64) if quick else (8, 64, 768)
    x, w = randn(b, t, c), randn(c, c)
    sec = time_alternating({"loop": lambda: batched_matmul(x, w),
                            "numpy_3d": lambda: x @ w,
                            "stacked": lambda: (x.reshape(-1, c) @ w).reshape(b, t, c)},
                           rounds=5, min_seconds=0.05)
    out["weight"] = {"b": b, "t": t, "c": c,
                     "gflops": {k: gflops(b * t, c, c, s) for k, s in sec.items()}}
    return out


def run(quick: bool = False) -> dict:
    from threadpoolctl import threadpool_limits

    p = plan(quick)
    with threadpool_limits(limits=1, user_api="blas"):
        machine = machine_info()
        python = measure(p["python_n"], ["python", "ijk", "ijk bt strict",
                                         "ijk bt fastmath", "blas"], rounds=3)
        sweep = {}
        for n in p["sizes"]:
            start = time.perf_counter()
            sweep[n] = measure(n, sweep_names(n), rounds=3 if n >= 2048 else 5)
            print(f"  n={n}: " + ", ".join(f"{k} {v:.1f}" for k, v in sweep[n].items())
                  + f" GFLOPS ({time.perf_counter() - start:.0f} s)", flush=True)
        batch = batches(quick)
    ladder, head = sweep[p["ladder_n"]], sweep[p["headline_n"]]  # rows of the sweep
    results = {
        "unit": "GFLOPS, float32, one core",
        "blas_threads_during_run": machine["blas_threads"],  # pinned to 1 above
        "peak": peak(),
        "python": {"n": p["python_n"], "gflops": python},
        "ladder": {"n": p["ladder_n"], "gflops": {k: ladder[k] for k in LADDER[1:]}},
        "sweep": {str(n): v for n, v in sweep.items()},
        "headline": {"n": p["headline_n"], "gflops": head,
                     "register_over_ikj": head["register"] / head["ikj"],
                     "register_over_blas": head["register"] / head["blas"],
                     "blocked_over_ikj": head["blocked"] / head["ikj"]},
        "batch": batch,
    }
    save_results("matmul", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """Two SVG charts: the ladder (bars, log scale) and GFLOPS against n.

    Narrow figures with large type, so that they stay readable on a phone.
    """
    plt = pyplot()
    with plt.rc_context({"font.size": 12}):
        draw_ladder(plt, results, machine)
        draw_sweep(plt, results, machine)


def draw_ladder(plt, results: dict, machine: dict) -> None:
    lad, py = results["ladder"], results["python"]
    names = ["python", *lad["gflops"]]
    values = [py["gflops"]["python"], *lad["gflops"].values()]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    bars = ax.barh(names[::-1], values[::-1], color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values[::-1]], padding=3)
    ax.set_xscale("log")
    ax.set_xlim(right=max(values) * 8)  # room for the longest bar's label
    ax.set_xlabel(f"GFLOPS (log), n = {lad['n']}; python at n = {py['n']}")
    ax.set_title("Matmul on one core, float32")
    fig.text(0.01, 0.01, machine_caption(machine) + "; 1 thread", fontsize=8,
             color="gray", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(chart_path("matmul-ladder"), format="svg")
    plt.close(fig)


def draw_sweep(plt, results: dict, machine: dict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    sizes = [int(n) for n in results["sweep"]]
    for name in ["ijk", "ikj", "tiled", "blocked", "register", "numpy", "blas"]:
        pts = [(n, results["sweep"][str(n)][name]) for n in sizes
               if name in results["sweep"][str(n)]]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("n (square n x n matrices)", labelpad=1)
    ax.set_ylabel("GFLOPS (log scale)")
    ax.set_title("GFLOPS against n, one core")
    ax.legend(ncol=4, fontsize=11, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.text(0.01, 0.01, machine_caption(machine) + "; 1 thread", fontsize=8,
             color="gray", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("matmul-sweep"), format="svg")
    plt.close(fig)
