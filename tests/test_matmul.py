"""Tests for minigpt.matmul: every kernel equals np.matmul, on awkward shapes too.

Tolerance: each output is a sum of K float32 products. The kernels add them in
different orders (ijk one by one; the register kernel in 16-wide vector lanes;
BLAS in its own blocks), and every order rounds differently. The error of a
float32 sum grows at most like K * eps * sum(|a_ik * b_kj|); for terms of random
sign it grows like sqrt(K) * eps relative to the result (|result| ~ sqrt(K) for the
standard-normal inputs here). We allow rtol 1e-5 and an absolute floor of
1e-5 * sqrt(K): chapter 5 measures the RMS error of one-at-a-time float32 sums at
K = 300 about 30 times below that floor, and the shapes here have K <= 300.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest

from minigpt.matmul import (
    KERNELS,
    batched_matmul,
    compiled,
    gflops,
    matmul_fast,
    matmul_flops,
    matmul_naive,
    matmul_numpy,
    vector_instructions,
)

SHAPES = [(1, 1, 1), (3, 5, 2), (7, 13, 9), (64, 48, 40), (33, 300, 65), (8, 1, 8)]


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(got, a, b):
    k = a.shape[-1]
    assert got.shape == np.matmul(a, b).shape
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_pure_python_triple_loop(m, k, n):
    a, b = rand((m, k), 0), rand((k, n), 1)
    got = np.array(matmul_naive(a.tolist(), b.tolist()), dtype=np.float32)
    check(got, a, b)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_numpy_outer_products(m, k, n):
    a, b = rand((m, k), 2), rand((k, n), 3)
    check(matmul_numpy(a, b), a, b)


@pytest.mark.parametrize("name", ["ijk", "ikj", "tiled", "blocked"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_compiled_kernels(name, m, k, n):
    pytest.importorskip("numba", reason="the compiled kernels need numba")
    a, b = rand((m, k), 4), rand((k, n), 5)
    # small tiles, so that the tile loops and their ragged edges run
    extra = {"kc": 16, "nc": 8} if name in ("tiled", "blocked") else {}
    check(compiled(name)(a, b, **extra), a, b)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_register_kernel_pads_any_shape(m, k, n):
    pytest.importorskip("numba", reason="the compiled kernels need numba")
    a, b = rand((m, k), 6), rand((k, n), 7)
    got = matmul_fast(a, b)
    assert got.dtype == np.float32
    check(got, a, b)


def test_register_kernel_with_small_tiles():
    pytest.importorskip("numba", reason="the compiled kernels need numba")
    a, b = rand((12, 70), 8), rand((70, 10), 9)
    check(compiled("register")(a, b, kc=16, nc=4), a, b)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the instruction names checked are x86-64's")
def test_vectorisation_as_the_chapter_claims():
    """The assembly facts the pages rely on: FMA only with fastmath and row views."""
    pytest.importorskip("numba", reason="the compiled kernels need numba")
    a, b = rand((8, 8), 0), rand((8, 8), 1)
    counts = {}
    for name, kernel in KERNELS.items():
        kernel(a, b)  # compile for float32 2-D arrays
        counts[name] = vector_instructions(kernel)
    assert counts["ikj"]["mul"] > 0 and counts["ikj"]["fma"] == 0
    assert counts["tiled"]["fma"] == 0 and counts["tiled"]["mul"] == 0
    assert counts["blocked"]["fma"] > 0
    assert counts["register"]["fma"] > 0


@pytest.mark.parametrize("a_shape, b_shape", [
    ((4, 3, 5), (4, 5, 2)),        # (B, M, K) @ (B, K, N)
    ((2, 3, 4, 5), (5, 6)),        # a plain matrix broadcast over the batch
    ((2, 1, 3, 4), (5, 4, 3)),     # (2, 1) and (5,) batch dims -> (2, 5)
    ((1, 7, 8), (3, 8, 1)),
])
@pytest.mark.parametrize("inner", ["numpy", "fast"])
def test_batched_matmul_broadcasts_like_numpy(a_shape, b_shape, inner):
    if inner == "fast":
        pytest.importorskip("numba", reason="the compiled kernels need numba")
    a, b = rand(a_shape, 10), rand(b_shape, 11)
    fn = np.matmul if inner == "numpy" else matmul_fast
    check(batched_matmul(a, b, matmul=fn), a, b)


def test_flop_count():
    assert matmul_flops(2, 3, 4) == 48
    assert gflops(1000, 1000, 1000, 2.0) == pytest.approx(1.0)


def test_bad_shapes_raise():
    a, b = rand((3, 4), 0), rand((5, 2), 1)
    with pytest.raises(ValueError, match=r"inner dimensions differ.*4 != 5"):
        matmul_numpy(a, b)
    with pytest.raises(ValueError, match="2-D"):
        matmul_numpy(a[0], b)
    with pytest.raises(ValueError, match="inner dimensions differ"):
        batched_matmul(rand((2, 3, 4), 0), rand((2, 5, 2), 1))
    with pytest.raises(ValueError, match="at least 2-D"):
        batched_matmul(rand((4,), 0), rand((4, 2), 1))
    with pytest.raises(ValueError, match="do not broadcast|shape mismatch"):
        batched_matmul(rand((2, 3, 4), 0), rand((3, 4, 2), 1))
    with pytest.raises(ValueError, match="every row of a needs 2"):
        matmul_naive([[1.0, 2.0], [3.0]], [[1.0], [2.0]])
    with pytest.raises(KeyError, match="no kernel"):
        compiled("nope")


def test_without_numba_the_compiled_kernels_say_so(monkeypatch):
    import minigpt.matmul as mm

    monkeypatch.setattr(mm, "njit", None)
    assert mm.compile_kernels() == {}
    with pytest.raises(ImportError, match="need numba"):
        mm.compiled("ikj")


def test_the_ladder_and_headline_are_rows_of_the_sweep():
    """Chapter 6's charts and prose quote one measurement per size, never two."""
    path = Path(__file__).resolve().parent.parent / "benchmarks/results/matmul.json"
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    for part in ("ladder", "headline"):
        row = results["sweep"][str(results[part]["n"])]
        for name, value in results[part]["gflops"].items():
            assert value == row[name], f"{part} {name} differs from the sweep"
