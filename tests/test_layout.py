"""Tests for minigpt.layout: each access pattern sums what NumPy says it should.

The sums are of float32 values accumulated by NumPy in different orders, so we
compare with rtol 1e-5 against float64 references (an ulp-level difference per
add, over at most a few thousand adds).
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.layout import (
    column_sums,
    column_sums_via_copy,
    floats_per_cache_line,
    read_contiguous,
    read_random,
    read_strided,
    row_sums,
)


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal(4096).astype(np.float32)


def test_reads_sum_the_right_elements(x):
    x64 = x.astype(np.float64)
    assert read_contiguous(x, 100) == pytest.approx(x64[:100].sum(), rel=1e-5, abs=1e-5)
    assert read_strided(x, 100, 16) == pytest.approx(x64[::16][:100].sum(), rel=1e-5,
                                                     abs=1e-5)
    index = np.random.default_rng(1).integers(0, x.size, 300)
    assert read_random(x, index) == pytest.approx(sum(x64[i] for i in index),
                                                  rel=1e-5, abs=1e-5)


def test_strided_read_that_runs_off_the_end_is_refused(x):
    with pytest.raises(ValueError, match="need 4112 elements, the array has 4096"):
        read_strided(x, 257, 16)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 17)])
def test_row_and_column_sums_match_numpy(shape):
    m = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(row_sums(m), m.astype(np.float64).sum(axis=1),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(column_sums(m), m.astype(np.float64).sum(axis=0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(column_sums_via_copy(m), column_sums(m),
                               rtol=1e-5, atol=1e-5)


def test_cache_line_holds_16_float32():
    assert floats_per_cache_line(np.float32) == 16
    assert floats_per_cache_line(np.float64) == 8
