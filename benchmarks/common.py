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


# The load average when the current benchmark started (`python -m benchmarks`
# calls start_run before each one); save_results adds the load at its end.
_load_before: list[float] | None = None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def start_run() -> None:
    """Note the load average as a benchmark starts, for its results file."""
    global _load_before
    _load_before = load_average()


def save_results(topic: str, results: dict, command: str = "make bench") -> Path:
    """Write results as benchmarks/results/<topic>.json, with the machine and date.

    The record also holds the load average before and after the run: a figure
    measured while other work shared the cores is slower than the code, and the
    page that quotes it says so (tools/figures.py, `measured`).
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
        "load": {"before": _load_before, "after": load_average(),
                 "cores": os.cpu_count()},
        "results": results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def load_results(topic: str) -> dict:
    """Read benchmarks/results/<topic>.json as written by save_results."""
    return json.loads((results_dir() / f"{topic}.json").read_text(encoding="utf-8"))


def replot(module, topic: str) -> bool:
    """Draw a benchmark's charts again from its stored results; False if it has none.

    A module's `draw(results, machine)` (or `redraw(record)` where the stored
    results need reshaping first) draws from the results file alone.
    """
    path = results_dir() / f"{topic}.json"
    if not path.is_file():
        return False
    record = json.loads(path.read_text(encoding="utf-8"))
    if hasattr(module, "redraw"):
        module.redraw(record)
        return True
    draw = getattr(module, "draw", None) or getattr(module, "plot", None)
    if draw is None:
        return False
    import inspect

    required = [p for p in inspect.signature(draw).parameters.values()
                if p.default is inspect.Parameter.empty]
    if len(required) == 1:
        draw(record["results"])
    else:
        draw(record["results"], record["machine"])
    return True


def chart_path(name: str) -> Path:
    """docs/assets/charts/<name>.svg (a temporary folder in a quick run)."""
    folder = CHARTS if WRITE else Path(tempfile.gettempdir()) / "minigpt-quick"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.svg"


# Charts are read on phones: a 390 px screen gives them a column of about 358 CSS
# px, and every text of a chart must be at least 9 px there. A chart is at most
# CHART_WIDTH_IN wide (it then shrinks less), and at save time any text smaller
# than what that needs is enlarged (ReadableFigure.savefig).
PHONE_COLUMN_PX = 350  # 358 on Material's layout; a little spare
MIN_TEXT_PX = 9.2
CHART_WIDTH_IN = 5.2
CHART_STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
               "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
               "svg.hashsalt": "minigpt", "svg.fonttype": "path"}


def min_text_pt(width_in: float) -> float:
    """The smallest font (points) readable on a phone in a chart this wide."""
    return MIN_TEXT_PX * width_in * 72 / PHONE_COLUMN_PX


def readable(fig) -> None:
    """Narrow a figure to CHART_WIDTH_IN and enlarge its too-small text."""
    from matplotlib.text import Text

    for t in fig.texts:
        t.set_wrap(True)  # a long footer breaks into lines instead of widening
    width, height = fig.get_size_inches()
    height *= stack_columns(fig)
    if width > CHART_WIDTH_IN:
        # keep the height (a little more for the larger text): taller, not smaller
        height *= 1 + 0.3 * (1 - CHART_WIDTH_IN / width)
    fig.set_size_inches(min(width, CHART_WIDTH_IN), height)
    for ax in fig.axes:
        legend_above(ax)
    for _ in range(3):
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        floor = min_text_pt(box.width + 0.1)  # savefig pads 0.05 in on each side
        small = [t for t in fig.findobj(Text)
                 if t.get_visible() and t.get_text() and t.get_fontsize() < floor]
        for t in small:
            t.set_fontsize(floor)
        relayout(fig)
        if not small:
            break


def relayout(fig) -> None:
    """Titles above the legends, then the axes fitted above any footer."""
    import warnings

    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if ax.get_title() and legend is not None and getattr(legend, "above", False):
            box = legend.get_window_extent(renderer)
            ax.set_title(ax.get_title(), y=1.03 + box.height / ax.bbox.height,
                         fontsize=ax.title.get_fontsize())  # y= ends auto-placing
    engine = fig.get_layout_engine()
    if engine is None or type(engine).__name__ == "TightLayoutEngine":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig.tight_layout(rect=caption_rect(fig))


def stack_columns(fig) -> int:
    """Put side-by-side panels one above the other; return how many there were."""
    axes = [ax for ax in fig.axes if ax.get_subplotspec() is not None]
    grids = {id(ax.get_subplotspec().get_gridspec()) for ax in axes}
    if len(grids) != 1 or len(axes) != len(fig.axes):
        return 1
    rows, cols = axes[0].get_subplotspec().get_gridspec().get_geometry()
    if rows != 1 or cols < 2:
        return 1
    column = fig.add_gridspec(cols, 1)
    for ax in axes:
        ax.set_subplotspec(column[ax.get_subplotspec().colspan.start])
    return cols


def legend_above(ax) -> None:
    """Move a legend drawn inside the plot to above it, where it hides no data."""
    legend = ax.get_legend()
    if legend is None or legend.get_bbox_to_anchor() is not ax.bbox and \
            legend.get_bbox_to_anchor().bounds != ax.bbox.bounds:
        return  # the chart placed it outside on purpose
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    moved = ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1.01),
                      ncol=2 if len(labels) > 1 else 1, frameon=False,
                      borderaxespad=0, fontsize=legend.get_texts()[0].get_fontsize())
    moved.above = True  # relayout puts the title above it


def caption_rect(fig) -> tuple[float, float, float, float]:
    """The part of the figure left to the axes above a caption at its foot."""
    renderer = fig.canvas.get_renderer()
    top = 0.0
    for t in fig.texts:
        box = t.get_window_extent(renderer)
        if box.y0 < 0.2 * fig.bbox.height:  # a footer (machine, source)
            top = max(top, box.y1 / fig.bbox.height)
    return (0, top + 0.01 if top else 0, 1, 1)


def pyplot():
    """matplotlib's pyplot, drawing off screen, with SVG ids stable across runs,
    whose figures are readable on a phone when saved (see `readable`).

    A fixed hash salt makes a re-drawn chart differ from the committed one only
    where the figures differ, so a diff shows real changes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    plt.rcParams.update(CHART_STYLE)

    class ReadableFigure(Figure):
        """A figure that makes its text readable on a phone before it is saved."""

        def savefig(self, fname, *args, **kwargs):
            readable(self)
            kwargs.setdefault("bbox_inches", "tight")
            kwargs.setdefault("pad_inches", 0.05)
            kwargs.setdefault("metadata", {"Date": None})
            return super().savefig(fname, *args, **kwargs)

    class Pyplot:
        """pyplot, with ReadableFigure as the class of the figures it makes."""

        def __getattr__(self, name):
            return getattr(plt, name)

        def subplots(self, *args, **kwargs):
            kwargs.setdefault("FigureClass", ReadableFigure)
            return plt.subplots(*args, **kwargs)

        def figure(self, *args, **kwargs):
            kwargs.setdefault("FigureClass", ReadableFigure)
            return plt.figure(*args, **kwargs)

    return Pyplot()


def machine_caption(machine: dict) -> str:
    """One line naming the machine, for chart footers."""
    return (f"{machine['cpu']}, {machine['cores']} cores, NumPy {machine['numpy']}, "
            f"{machine['blas']}")
