"""Tests for minigpt.tensor: every operation agrees with NumPy run live.

Hypothesis draws random shapes, then random views of them (slices with steps,
including negative ones, transposes, broadcasts), so strides and offsets of
every kind reach the operations. Tolerances: +, -, *, / on float32 inputs are
computed exactly rounded in float64 and rounded once more to float32, which gives
the float32 result bit for bit, so we compare those exactly. exp/log/tanh go
through math (float64) vs NumPy's float32 routines: a few ulp, so rtol 1e-6.
Sums use math.fsum vs NumPy's pairwise float32 sum: rtol 1e-5 plus an absolute
floor for sums that cancel to near zero.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.tensor import Tensor, broadcast_shapes, row_major_strides

FAST = settings(max_examples=60, deadline=None)
shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def make(shape: tuple[int, ...], seed: int) -> tuple[Tensor, np.ndarray]:
    """A Tensor and the NumPy array with the same float32 values."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return Tensor.from_numpy(x), x


@st.composite
def views(draw):
    """A (Tensor, ndarray) pair viewed through random slices and a permutation."""
    t, x = make(draw(shapes), draw(st.integers(0, 2**16)))
    key = []
    for n in x.shape:
        start = draw(st.integers(0, n - 1))
        stop = draw(st.integers(start + 1, n))  # at least one element survives
        step = draw(st.sampled_from([1, 2, -1, -2]))
        backwards = slice(stop - 1, start - 1 if start else None, step)
        key.append(slice(start, stop, step) if step > 0 else backwards)
    key = tuple(key)
    t, x = t[key], x[key]
    axes = draw(st.permutations(range(x.ndim)))
    return t.permute(*axes), x.transpose(axes)


def same(t: Tensor, x: np.ndarray) -> None:
    assert t.shape == x.shape
    np.testing.assert_array_equal(t.numpy(), x)


# --- layout -----------------------------------------------------------------

@FAST
@given(shapes)
def test_row_major_strides_match_numpy(shape):
    itemsize = np.dtype(np.float32).itemsize
    want = tuple(s // itemsize for s in np.zeros(shape, np.float32).strides)
    assert row_major_strides(shape) == want


@FAST
@given(views())
def test_views_match_numpy_and_share_storage(pair):
    t, x = pair
    same(t, x)
    base_len = len(t.storage)
    # our strides (elements) times 4 bytes are NumPy's, on axes of size > 1
    for n, s, sb in zip(t.shape, t.strides, x.strides, strict=True):
        if n > 1:
            assert s * 4 == sb
    assert t.is_contiguous() == (x.flags.c_contiguous or x.size == 0)
    assert len(t.storage) == base_len  # a view never copies


@FAST
@given(views(), st.data())
def test_int_and_slice_indexing_match_numpy(pair, data):
    t, x = pair
    if x.size == 0:
        return
    index = tuple(data.draw(st.integers(-n, n - 1)) for n in x.shape)
    assert t[index] == x[index]
    first = data.draw(st.integers(0, x.shape[0] - 1))
    sub = t[first]
    if x.ndim == 1:
        assert sub == x[first]
    else:
        same(sub, x[first])


@FAST
@given(views())
def test_reshape_is_a_view_exactly_when_contiguous(pair):
    t, x = pair
    r = t.reshape(-1)
    same(r, x.reshape(-1))
    assert (r.storage is t.storage) == t.is_contiguous()


@FAST
@given(views())
def test_contiguous_copies_only_when_needed(pair):
    t, x = pair
    c = t.contiguous()
    same(c, x)
    assert c.is_contiguous()
    assert (c is t) == t.is_contiguous()


@FAST
@given(views())
def test_transpose_and_T_match_numpy(pair):
    t, x = pair
    same(t.T, x.T)
    if x.ndim >= 2:
        same(t.transpose(0, x.ndim - 1), np.swapaxes(x, 0, x.ndim - 1))


def test_reshape_splits_and_merges_axes():
    t, x = make((2, 3, 4), 0)
    same(t.reshape(6, 4), x.reshape(6, 4))
    same(t.reshape((4, -1)), x.reshape(4, -1))
    same(t.permute(2, 0, 1).reshape(4, 6), x.transpose(2, 0, 1).reshape(4, 6))


# --- element-wise, broadcasting, reductions -----------------------------------

@st.composite
def broadcast_pairs(draw):
    """Two shapes that broadcast: the second drops leading axes and sets some to 1."""
    shape = draw(shapes)
    drop = draw(st.integers(0, len(shape)))
    other = tuple(1 if draw(st.booleans()) else n for n in shape[drop:])
    return (shape, other) if draw(st.booleans()) else (other, shape)


@FAST
@given(broadcast_pairs(), st.sampled_from(["+", "-", "*", "/"]), st.integers(0, 99))
def test_binary_ops_broadcast_like_numpy(pair, op, seed):
    (ta, a), (tb, b) = make(pair[0], seed), make(pair[1], seed + 1)
    ops = {"+": lambda u, v: u + v, "-": lambda u, v: u - v,
           "*": lambda u, v: u * v, "/": lambda u, v: u / v}
    assert broadcast_shapes(a.shape, b.shape) == np.broadcast_shapes(a.shape, b.shape)
    same(ops[op](ta, tb), ops[op](a, b))


@FAST
@given(views(), st.floats(-3, 3, width=32).filter(lambda v: abs(v) > 1e-3))
def test_scalar_ops_on_both_sides(pair, s):
    t, x = pair
    s32 = np.float32(s)
    same(t + s, x + s32)
    same(s - t, s32 - x)
    same(t * s, x * s32)
    same(s / t, s32 / x)  # one operation each: exact after rounding to float32
    same(-t, -x)


@FAST
@given(views())
def test_unary_ops_match_numpy(pair):
    t, x = pair
    np.testing.assert_allclose(t.exp().numpy(), np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(t.tanh().numpy(), np.tanh(x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose((t * t + 1.0).log().numpy(), np.log(x * x + 1),
                               rtol=1e-6, atol=1e-7)


@FAST
@given(views(), st.data())
def test_reductions_match_numpy(pair, data):
    t, x = pair
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    keep = data.draw(st.booleans())
    got, want = t.sum(axis, keepdims=keep), x.sum(axis, keepdims=keep)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    same(t.max(axis, keepdims=keep), x.max(axis, keepdims=keep))
    assert math.isclose(t.sum(), float(x.sum(dtype=np.float64)), rel_tol=1e-6,
                        abs_tol=1e-6)
    assert t.max() == x.max()


def test_broadcast_to_uses_zero_strides():
    t = Tensor([1.0, 2.0, 3.0], (3,))
    b = t.broadcast_to((4, 3))
    assert b.strides == (0, 1) and b.storage is t.storage
    assert b.tolist() == [[1.0, 2.0, 3.0]] * 4


# --- bad input ----------------------------------------------------------------

def test_bad_input_raises_precise_errors():
    t, _ = make((2, 3), 0)
    with pytest.raises(IndexError, match="out of range for axis 1"):
        t[0, 3]
    with pytest.raises(IndexError, match="3 indices for a 2-d tensor"):
        t[0, 0, 0]
    with pytest.raises(TypeError, match="ints or slices"):
        t[0.5]
    with pytest.raises(ValueError, match="cannot reshape"):
        t.reshape(4, 2)
    with pytest.raises(ValueError, match="only one size"):
        t.reshape(-1, -1)
    with pytest.raises(ValueError, match="do not broadcast"):
        t + Tensor.from_numpy(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="permute needs"):
        t.permute(0, 0)
    with pytest.raises(ValueError, match="axis 2 out of range"):
        t.sum(axis=2)
    with pytest.raises(ValueError, match="reach outside"):
        Tensor([0.0, 1.0], (3,))
