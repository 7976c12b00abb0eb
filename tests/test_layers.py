"""Tests for minigpt.layers, against PyTorch and transformers run live.

Tolerances, for float32 (machine epsilon 1.2e-7):
- element-wise functions (GELU, softmax, ReLU): a few ulp, because each output
  is a handful of float32 operations; we allow atol/rtol of 1e-6 .. 2e-6.
- anything with a reduction or matmul of length K (linear, layer norm, MLP) sums
  K rounded products in an order that differs between NumPy's BLAS and PyTorch,
  so the error grows like sqrt(K) ulp of the largest term; 1e-5 relative with
  a matching absolute floor covers K up to a few hundred with room to spare.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.layers import (
    erfc,
    ffn,
    gelu,
    gelu_tanh,
    layer_norm,
    linear,
    log_softmax,
    relu,
    softmax,
    softmax_naive,
)
from tests.reference import require

SHAPES = [(1, 1), (1, 7), (5, 3), (4, 16), (2, 3, 33)]


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# --- linear ---------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("c_out", [1, 5, 64])
def test_linear_matches_torch(shape, c_out):
    torch = require("torch")
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, *shape), randn(rng, shape[-1], c_out), randn(rng, c_out)
    got = linear(x, w, b)
    # torch stores weights as (out, in); GPT-2's Conv1D layout is the transpose
    want = torch.nn.functional.linear(
        torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(b))
    assert got.dtype == np.float32
    assert got.shape == (*shape[:-1], c_out)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_rejects_mismatched_shapes():
    x, w, b = np.ones((2, 3), np.float32), np.ones((4, 5), np.float32), np.ones(5)
    with pytest.raises(ValueError, match=r"x has 3 features.*w has shape \(4, 5\)"):
        linear(x, w, b)
    with pytest.raises(ValueError, match=r"b must have shape \(5,\).*got \(4,\)"):
        linear(x, np.ones((3, 5), np.float32), np.ones(4, np.float32))


# --- GELU and ReLU ----------------------------------------------------------

def grid() -> np.ndarray:
    """Dense float32 points over the range activations reach, plus the edges."""
    x = np.linspace(-12, 12, 48_001, dtype=np.float32)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4, -1e4], np.float32)
    return np.concatenate([x, edges])


@pytest.mark.reference
def test_erfc_matches_torch_to_float32_precision():
    torch = require("torch")
    x = grid()
    want = torch.special.erfc(torch.from_numpy(x).double()).numpy()  # float64 truth
    got = erfc(x)
    assert got.dtype == np.float32
    # Relative error: the approximation is good to 1.2e-7; float32 rounding of
    # z*z inside exp(-z*z) costs up to |z|^2 * 6e-8 relative, 1e-5 at |z| = 12.
    big = want > 1e-35  # below that float32 flushes to 0 anyway
    np.testing.assert_allclose(got[big], want[big], rtol=1e-5)
    # Absolute: erfc is at most 2, and evaluating the polynomial in float32
    # costs a few ulp of that (ulp of 1.0 is 1.2e-7); we measured 4.4e-7.
    np.testing.assert_allclose(got, want, atol=6e-7)


@pytest.mark.reference
def test_erf_is_odd_through_erfc():
    torch = require("torch")
    x = np.linspace(-4, 4, 801, dtype=np.float32)
    want = torch.special.erf(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(1 - erfc(x), want, atol=3e-7)


@pytest.mark.reference
@pytest.mark.parametrize("approximate,ours", [("none", gelu), ("tanh", gelu_tanh)])
def test_gelu_matches_torch(approximate, ours):
    torch = require("torch")
    x = grid()
    t = torch.from_numpy(x)
    want64 = torch.nn.functional.gelu(t.double(), approximate=approximate).numpy()
    want32 = torch.nn.functional.gelu(t, approximate=approximate).numpy()
    got = ours(x)
    assert got.dtype == np.float32
    assert np.isfinite(got).all()
    # Against float64 truth: a few ulp of |x| (|x| <= 12 -> 2e-6 absolute),
    # and of the result itself where it is not tiny.
    small = np.abs(x) <= 12
    np.testing.assert_allclose(got[small], want64[small], rtol=1e-6, atol=2e-6)
    # Against torch's own float32 kernel, at the extremes too (|x| = 1e4).
    np.testing.assert_allclose(got, want32, rtol=2e-6, atol=2e-6)


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu_keeps_shape_and_relu_matches_torch(shape):
    torch = require("torch")
    x = randn(np.random.default_rng(1), *shape, scale=3.0)
    assert gelu(x).shape == gelu_tanh(x).shape == shape
    np.testing.assert_array_equal(relu(x), torch.relu(torch.from_numpy(x)).numpy())


def test_gelu_forms_differ_by_a_small_measured_amount():
    x = np.linspace(-6, 6, 12_001, dtype=np.float32)
    diff = np.abs(gelu(x) - gelu_tanh(x)).max()
    # The two forms are different functions: visibly apart, but below 1e-3.
    assert 1e-4 < diff < 1e-3


# --- layer norm ---------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layer_norm_matches_torch(shape, eps):
    torch = require("torch")
    rng = np.random.default_rng(2)
    x = randn(rng, *shape, scale=4.0) + 3.0
    g, b = randn(rng, shape[-1]), randn(rng, shape[-1])
    got = layer_norm(x, g, b, eps=eps)
    want = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (shape[-1],), torch.from_numpy(g), torch.from_numpy(b),
        eps=eps).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_layer_norm_of_a_constant_row_is_the_bias():
    # variance 0: without eps this is 0 / 0 = NaN; with eps, (x - mean) = 0 exactly
    x = np.full((3, 8), 7.25, np.float32)
    g = np.arange(8, dtype=np.float32)
    b = np.linspace(-1, 1, 8, dtype=np.float32)
    got = layer_norm(x, g, b)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, np.broadcast_to(b, x.shape))


def test_layer_norm_rejects_wrong_gain_shape():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"layer_norm: g must have shape \(4,\)"):
        layer_norm(x, np.ones(3, np.float32), np.zeros(4, np.float32))


# --- softmax ---------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_and_log_softmax_match_torch(shape, axis):
    torch = require("torch")
    x = randn(np.random.default_rng(3), *shape, scale=5.0)
    t = torch.from_numpy(x)
    got, got_log = softmax(x, axis=axis), log_softmax(x, axis=axis)
    assert got.dtype == got_log.dtype == np.float32
    np.testing.assert_allclose(got, torch.softmax(t, dim=axis).numpy(),
                               rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got_log, torch.log_softmax(t, dim=axis).numpy(),
                               rtol=2e-6, atol=2e-6)


@pytest.mark.reference
def test_softmax_of_huge_logits_does_not_overflow():
    torch = require("torch")
    x = np.array([[1e4, 1e4 - 1, 1e4 - 3, -1e4], [1e4, 1e4, 1e4, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        got, got_log = softmax(x), log_softmax(x)
    assert np.isfinite(got).all() and np.isfinite(got_log).all()
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-6)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(got, torch.softmax(t, -1).numpy(), atol=1e-7)
    np.testing.assert_allclose(got_log, torch.log_softmax(t, -1).numpy(), atol=1e-5)


def test_naive_softmax_really_overflows():
    # the failure chapter 10 shows: exp(1e4) is inf in float32, inf / inf is NaN
    x = np.array([1e4, 1e4 - 1], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.isnan(softmax_naive(x)).all()
    np.testing.assert_allclose(softmax_naive(x - x.max()), softmax(x), rtol=1e-6)


def test_softmax_gives_masked_entries_exactly_zero():
    x = np.array([2.0, -np.inf, 0.5, -np.inf], np.float32)
    got = softmax(x)
    assert got[1] == got[3] == 0.0
    assert log_softmax(x)[1] == -np.inf
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=20),
       st.floats(-1e3, 1e3, width=32))
def test_softmax_ignores_a_constant_shift(values, shift):
    x = np.array(values, np.float32)
    np.testing.assert_allclose(softmax(x + np.float32(shift)), softmax(x),
                               rtol=1e-3, atol=1e-6)  # shift rounds x by 6e-5
    np.testing.assert_allclose(np.exp(log_softmax(x)), softmax(x), rtol=1e-5,
                               atol=1e-7)


# --- the feed-forward network -------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("T,C", [(1, 4), (5, 7), (9, 32)])
def test_ffn_matches_transformers_gpt2_mlp(T, C):
    torch = require("torch")
    require("transformers")
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    torch.manual_seed(T * 100 + C)
    config = GPT2Config(n_embd=C, n_head=1, activation_function="gelu_new")
    mlp = GPT2MLP(4 * C, config).eval()
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.5)  # big enough to use GELU's curve
    x = torch.randn(T, C)
    with torch.no_grad():
        want = mlp(x).numpy()
    sd = {k: v.numpy() for k, v in mlp.state_dict().items()}
    got = ffn(x.numpy(),
              c_fc={"w": sd["c_fc.weight"], "b": sd["c_fc.bias"]},
              c_proj={"w": sd["c_proj.weight"], "b": sd["c_proj.bias"]})
    assert got.shape == (T, C) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ffn_uses_tanh_gelu_not_exact():
    # the two GELUs differ by < 1e-3; a 4x-wide layer must still tell them apart
    rng = np.random.default_rng(4)
    C = 8
    c_fc = {"w": np.eye(C, 4 * C, dtype=np.float32), "b": np.zeros(4 * C, np.float32)}
    c_proj = {"w": np.eye(4 * C, C, dtype=np.float32), "b": np.zeros(C, np.float32)}
    x = randn(rng, 3, C, scale=2.0)
    np.testing.assert_allclose(ffn(x, c_fc, c_proj), gelu_tanh(x), rtol=1e-6)
    assert np.abs(ffn(x, c_fc, c_proj) - gelu(x)).max() > 1e-5
    assert math.isclose(float(gelu_tanh(np.float32(1.0))), 0.8411920, rel_tol=1e-6)


def test_layer_norm_equals_the_saved_pytorch_output_even_where_eps_matters():
    """Without PyTorch: data/references/layer_norm.npz, written by PyTorch, has
    ordinary rows and quiet ones (variance down to 1e-7, below eps = 1e-5), where
    eps outside the square root, or no eps, gives a visibly different result."""
    with np.load("data/references/layer_norm.npz", allow_pickle=False) as saved:
        eps = float(saved["eps"])
        for x, out in (("x", "out"), ("x_quiet", "out_quiet")):
            got = layer_norm(saved[x], saved["g"], saved["b"], eps=eps)
            np.testing.assert_allclose(got, saved[out], rtol=1e-4, atol=1e-4)
        x, g, b = saved["x_quiet"], saved["g"], saved["b"]
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        wrong = g * (x - mean) / (np.sqrt(var) + eps) + b  # eps outside the root
        assert np.abs(wrong - saved["out_quiet"]).max() > 0.1
