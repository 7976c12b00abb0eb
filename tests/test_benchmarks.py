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


def test_the_peer_benchmark_skips_cleanly_without_a_compiler(monkeypatch, capsys):
    from benchmarks import bench_peers

    monkeypatch.setattr(bench_peers.shutil, "which", lambda name: None)
    assert "cmake" in bench_peers.missing_tools()
    assert "a C++ compiler" in bench_peers.missing_tools()
    before = {p: p.stat().st_mtime_ns for p in OUTPUTS}
    bench_peers.run()
    assert "[peers] skipped: needs cmake, a C++ compiler" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in OUTPUTS} == before


def test_the_peer_ratios_compare_like_with_like():
    from benchmarks.bench_peers import ratios

    tok_s = {"llamacpp_f32": {1: 20.0, 2: 40.0}, "minigpt_float32": {1: 10.0, 2: 30.0},
             "llamacpp_q8_0": {1: 50.0, 2: 80.0}}
    # no minigpt q8_0 measured: that pair is left out, not divided by nothing
    assert ratios(tok_s) == {"float32_vs_f32": {"1": 0.5, "2": 0.75}}
