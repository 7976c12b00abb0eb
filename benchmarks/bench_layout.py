"""Layout benchmarks: contiguous vs strided vs random reads, row vs column sums.

python -m benchmarks layout [--quick]. All reads are timed in alternating rounds
and reported as nanoseconds per element read, so different patterns compare
directly. The arrays are larger than the last-level cache unless --quick.
"""

from __future__ import annotations

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
from minigpt.layout import (
    column_sums,
    column_sums_via_copy,
    read_contiguous,
    read_random,
    read_strided,
    row_sums,
)

STRIDES = [1, 2, 4, 8, 16, 32, 64]


def caches() -> dict[str, str]:
    """The CPU's cache sizes as Linux reports them ({} elsewhere)."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            found[f"L{level} {kind}"] = (index / "size").read_text().strip()
        except OSError:
            continue
    return found


def access(size: int, count: int, rounds: int) -> dict:
    """ns per element read: the whole array in order, every s-th element, or random."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(size, dtype=np.float32)  # larger than the caches
    index = rng.integers(0, size, size=count)  # anywhere in the whole array
    reads = {"contiguous": size, **{f"stride {s}": size // s for s in STRIDES[1:]},
             "random": count}
    fns = {"contiguous": lambda: read_contiguous(x, size)}
    for s in STRIDES[1:]:  # every pattern spans the whole array, so none fits in cache
        fns[f"stride {s}"] = lambda s=s: read_strided(x, size // s, s)
    fns["random"] = lambda: read_random(x, index)
    seconds = time_alternating(fns, rounds=rounds, min_seconds=0.05)
    ns = {k: v / reads[k] * 1e9 for k, v in seconds.items()}
    return {"array_bytes": x.nbytes, "elements_read": reads, "ns_per_element": ns,
            "random_over_contiguous": ns["random"] / ns["contiguous"]}


def sums(n: int, rounds: int) -> dict:
    """Seconds for row sums, column sums and copy-then-row-sums of an (n, n) array."""
    x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    np.testing.assert_allclose(column_sums(x), x.sum(axis=0), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(column_sums_via_copy(x), x.sum(axis=0), rtol=1e-3,
                               atol=1e-2)
    seconds = time_alternating({"row sums": lambda: row_sums(x),
                                "column sums": lambda: column_sums(x),
                                "copy, then row sums": lambda: column_sums_via_copy(x)},
                               rounds=rounds, min_seconds=0.1)
    return {"n": n, "array_bytes": x.nbytes, "seconds": seconds,
            "column_over_row": seconds["column sums"] / seconds["row sums"],
            "copy_over_row": seconds["copy, then row sums"] / seconds["row sums"]}


def run(quick: bool = False) -> dict:
    size, count, n, rounds = ((1 << 16, 1 << 12, 512, 3) if quick
                              else (1 << 26, 1 << 20, 4096, 9))
    machine = machine_info()
    results = {"caches": caches(), "access": access(size, count, rounds),
               "sums": sums(n, rounds)}
    print(f"  random/contiguous {results['access']['random_over_contiguous']:.1f}x, "
          f"column/row {results['sums']['column_over_row']:.1f}x", flush=True)
    save_results("layout", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """Two SVG charts: ns per element by access pattern, and the three sums."""
    plt = pyplot()
    ns = results["access"]["ns_per_element"]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(list(ns), list(ns.values()), color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.2g}" for v in ns.values()], padding=2, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=max(ns.values()) * 2)  # room for the tallest bar's label
    ax.set_ylabel("ns per element read (log scale)")
    mb = results["access"]["array_bytes"] / 2**20
    ax.set_title(f"Reading float32 values from a {mb:.0f} MiB array, in order, "
                 "with a stride, at random")
    ax.tick_params(axis="x", labelsize=8)
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("layout-access"), format="svg")
    plt.close(fig)

    sec = results["sums"]["seconds"]
    fig, ax = plt.subplots(figsize=(8, 3))
    ms = [v * 1e3 for v in sec.values()][::-1]
    bars = ax.barh(list(sec)[::-1], ms, color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.3g} ms" for v in ms], padding=3)
    n = results["sums"]["n"]
    ax.set_xlabel("milliseconds (lower is better)")
    ax.set_title(f"Summing a {n} x {n} float32 array, row by row or column by column")
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(chart_path("layout-sums"), format="svg")
    plt.close(fig)
