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


def cache_kib(found: dict[str, str]) -> dict[str, int]:
    """{"L1d": 48, "L2": 1024, "L3": 32768} from caches(): sizes in KiB, by level."""
    names = {"L1 Data": "L1d", "L2 Unified": "L2", "L3 Unified": "L3"}
    units = {"K": 1, "M": 1024}
    return {names[k]: int(v[:-1]) * units[v[-1]] for k, v in found.items()
            if k in names and v[-1:] in units}


def in_cache(size: int, rounds: int) -> dict[str, float]:
    """ns per element for the same reads on an array that stays in the L2 cache."""
    x = np.random.default_rng(2).standard_normal(size, dtype=np.float32)
    fns = {"contiguous": lambda: read_contiguous(x, size)}
    for s in STRIDES[1:5]:  # up to stride 16: still thousands of elements to read
        fns[f"stride {s}"] = lambda s=s: read_strided(x, size // s, s)
    seconds = time_alternating(fns, rounds=rounds, min_seconds=0.05)
    reads = {"contiguous": size, **{f"stride {s}": size // s for s in STRIDES[1:5]}}
    return {k: v / reads[k] * 1e9 for k, v in seconds.items()}


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
    results = {"caches": caches(), "cache_kib": cache_kib(caches()),
               "access": access(size, count, rounds),
               "in_cache": {"array_bytes": 4 * (1 << 17),  # 512 KiB: inside L2
                            "ns_per_element": in_cache(1 << 17, rounds)},
               "sums": sums(n, rounds)}
    print(f"  random/contiguous {results['access']['random_over_contiguous']:.1f}x, "
          f"column/row {results['sums']['column_over_row']:.1f}x", flush=True)
    save_results("layout", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """Two SVG charts: ns per element by access pattern, and the three sums."""
    plt = pyplot()
    with plt.rc_context({"font.size": 12}):  # narrow and large: readable on a phone
        draw_access(plt, results, machine)
        draw_sums(plt, results, machine)


def draw_access(plt, results: dict, machine: dict) -> None:
    ns = results["access"]["ns_per_element"]
    labels = [k.replace("stride ", "s") for k in ns]  # "stride 16" -> "s16"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    bars = ax.bar(labels, list(ns.values()), color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.2g}" for v in ns.values()], padding=2, fontsize=10)
    ax.set_yscale("log")
    ax.set_ylim(top=max(ns.values()) * 2)  # room for the tallest bar's label
    ax.set_ylabel("ns per element (log)")
    ax.set_xlabel("contiguous, stride s, random")
    mb = results["access"]["array_bytes"] / 2**20
    ax.set_title(f"Reading float32 from a {mb:.0f} MiB array")
    ax.tick_params(axis="x", labelsize=10)
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=8, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("layout-access"), format="svg")
    plt.close(fig)


def draw_sums(plt, results: dict, machine: dict) -> None:
    sec = results["sums"]["seconds"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ms = [v * 1e3 for v in sec.values()][::-1]
    names = [k.replace("copy, then row sums", "copy + rows") for k in sec][::-1]
    bars = ax.barh(names, ms, color="#3f51b5")
    ax.bar_label(bars, labels=[f"{v:.3g} ms" for v in ms], padding=3)
    ax.set_xlim(right=max(ms) * 1.35)  # room for the longest bar's label
    n = results["sums"]["n"]
    ax.set_xlabel("milliseconds (lower is better)")
    ax.set_title(f"Summing a {n} x {n} float32 array")
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=8, color="gray")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(chart_path("layout-sums"), format="svg")
    plt.close(fig)
