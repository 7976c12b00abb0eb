"""Shared benchmark helpers: interleaved timing, results with their machine, charts."""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from minigpt.info import machine_info

# $MINIGPT_RESULTS names another results folder, for writing here and for reading
# by the build, which binds the pages' figures: one definition serves both.
from tools.figures import RESULTS_ENV, results_dir

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "docs" / "assets" / "charts"
# False for `python -m benchmarks --quick`: a smoke run must never overwrite the
# full-size results and charts that the pages quote.
WRITE = True


def settle(seconds: float = 0.2) -> None:
    """Let the BLAS library's idle threads fall asleep before the next variant is
    timed: OpenBLAS's keep spinning for about 0.1 s after a call (measured: a
    two-thread Numba kernel timed sooner ran 1.7 times slower), and a thread pool
    started meanwhile would share the cores with them."""
    time.sleep(seconds)


def float32_as_cli(model, rows, threads: int) -> tuple[object, int]:
    """The float32 model and BLAS threads `generate --threads N` runs: BLAS alone
    at one thread, else chapter 23's threaded model `rows` (None: BLAS alone)."""
    if threads > 1 and rows is not None:
        return rows, 1  # the row kernel takes the threads, BLAS keeps one
    return model, threads


def calls_for(fn: Callable[[], object], min_seconds: float) -> int:
    """How many calls of fn take at least min_seconds (at least one)."""
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    return max(1, int(min_seconds / max(once, 1e-9)))


def time_alternating(
    fns: dict[str, Callable[[], object]], rounds: int = 7, min_seconds: float = 0.05
) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds.

    The machine is shared and noisy, so the variants take turns: round r times
    a, b, c, ... in order, and a disturbance hits them all alike.
    """
    counts = {name: calls_for(fn, min_seconds) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = counts[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def save_results(topic: str, results: dict, command: str = "make bench") -> Path:
    """Write results as benchmarks/results/<topic>.json, with the machine and date.

    A quick run writes to a temporary folder unless $MINIGPT_RESULTS names one.
    """
    if os.environ.get(RESULTS_ENV) or WRITE:
        folder = results_dir()
    else:
        folder = Path(tempfile.gettempdir()) / "minigpt-quick"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{topic}.json"
    record = {
        "topic": topic,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(),
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def load_results(topic: str) -> dict:
    """Read benchmarks/results/<topic>.json as written by save_results."""
    return json.loads((results_dir() / f"{topic}.json").read_text(encoding="utf-8"))


def chart_path(name: str) -> Path:
    """docs/assets/charts/<name>.svg (a temporary folder in a quick run)."""
    folder = CHARTS if WRITE else Path(tempfile.gettempdir()) / "minigpt-quick"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.svg"


def pyplot():
    """matplotlib's pyplot, drawing off screen, with SVG ids stable across runs.

    A fixed hash salt makes a re-drawn chart differ from the committed one only
    where the figures differ, so a diff shows real changes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "minigpt"
    return plt


def machine_caption(machine: dict) -> str:
    """One line naming the machine, for chart footers."""
    return (f"{machine['cpu']}, {machine['cores']} cores, NumPy {machine['numpy']}, "
            f"{machine['blas']}")
