"""The benchmark code runs: `python -m benchmarks --quick` on small sizes.

Speed targets are not asserted here (timings are for `make bench`); this only
keeps the code behind every figure in the book from rotting, and checks that a
quick run leaves the committed full-size results and charts untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.reference import require

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = [*(ROOT / "benchmarks" / "results").glob("*.json"),
           *(ROOT / "docs" / "assets" / "charts").glob("*.svg")]


def test_every_benchmark_runs_quick_and_writes_nothing():
    require("torch")  # the decode benchmark races transformers
    require("numba")  # the matmul ladder compiles its kernels
    before = {p: p.stat().st_mtime_ns for p in OUTPUTS}
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = {line.split()[1].rstrip(":") for line in result.stdout.splitlines()
           if line.startswith("[bench] ")}
    expected = {p.stem.removeprefix("bench_")
                for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert ran == expected
    changed = [p.name for p in OUTPUTS if p.stat().st_mtime_ns != before[p]]
    assert not changed, f"a quick run overwrote committed results: {changed}"
