"""Rotary positional embeddings against Hugging Face's LLaMA and Meta's complex form.

Rotate-half is compared with `transformers`' own `LlamaRotaryEmbedding` and
`apply_rotary_pos_emb`; interleaved pairs with Meta's formulation, where each pair
is a complex number multiplied by exp(i * m * freq), computed here in complex128
from frequencies written out independently. Tolerances: float32 rounding of
values of order 1 (a few 1e-7), so 1e-6 absolute; against transformers 1e-5,
because it rounds each angle m * freq to float32 (an error up to m * 6e-8 rad,
times |x| <= 5) where we round only the final cos and sin.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.rope import (
    half_order,
    interleaved_to_half,
    rope_angles,
    rope_frequencies,
    rope_half,
    rope_interleaved,
)
from tests.reference import require

SHAPES = [(1, 1, 2), (2, 5, 8), (4, 17, 64), (3, 9, 6)]  # (heads, T, head_dim)


def random(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def meta_reference(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Meta's formulation: pairs as complex numbers, times exp(i * angle)."""
    d = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, d, 2) / d)
    z = x[..., 0::2].astype(np.float64) + 1j * x[..., 1::2]
    z = z * np.exp(1j * positions[:, None] * freqs)  # [T, d/2] broadcasts over heads
    out = np.empty(x.shape, np.float64)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_interleaved_equals_complex_multiplication(shape, theta):
    x = random(shape)
    positions = np.arange(3, 3 + shape[1])  # an offset, as after a cache
    ours = rope_interleaved(x, *rope_angles(positions, shape[-1], theta))
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, meta_reference(x, positions, theta), atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("theta", [10000.0, 1234.5])
def test_half_equals_transformers(shape, theta):
    torch = require("torch")
    transformers = require("transformers")
    from transformers.models.llama import modeling_llama as ml

    H, T, d = shape
    config = transformers.LlamaConfig(hidden_size=H * d, num_attention_heads=H,
                                      head_dim=d, rope_theta=theta)
    q, k = random(shape, 1), random(shape, 2)
    positions = np.arange(5, 5 + T)
    cos, sin = ml.LlamaRotaryEmbedding(config)(torch.from_numpy(q)[None],
                                               torch.from_numpy(positions)[None])
    ref_q, ref_k = ml.apply_rotary_pos_emb(torch.from_numpy(q)[None],
                                           torch.from_numpy(k)[None], cos, sin)
    angles = rope_angles(positions, d, theta)
    np.testing.assert_allclose(rope_half(q, *angles), ref_q[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(rope_half(k, *angles), ref_k[0].numpy(), atol=1e-5)


def test_frequencies_follow_the_paper():
    """theta_j = base^(-2j/d): 1 for the first pair, base^(-(d-2)/d) for the last."""
    f = rope_frequencies(8, theta=10000.0)
    np.testing.assert_allclose(f, [1.0, 0.1, 0.01, 0.001], rtol=1e-12)


@pytest.mark.parametrize("rope", [rope_half, rope_interleaved])
def test_rotation_keeps_lengths_and_position_zero(rope):
    x = random((3, 6, 16))
    y = rope(x, *rope_angles(np.arange(6), 16))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1),
                               np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # angle 0: no rotation


@pytest.mark.parametrize("rope", [rope_half, rope_interleaved])
def test_scores_depend_only_on_relative_position(rope):
    """q at m and k at n score the same as q at m + s and k at n + s."""
    q, k = random(32, 3), random(32, 4)

    def score(m: int, n: int) -> float:
        cos, sin = rope_angles(np.array([m, n]), 32)
        rq = rope(q[None], cos[:1], sin[:1])[0]
        rk = rope(k[None], cos[1:], sin[1:])[0]
        return float(rq @ rk)

    base = score(7, 3)
    for shift in (1, 10, 100):
        assert score(7 + shift, 3 + shift) == pytest.approx(base, abs=1e-4)
    assert abs(score(7, 3) - score(3, 7)) > 1e-3  # but the offset's sign matters


@pytest.mark.parametrize("n_head, d", [(1, 2), (3, 8), (4, 64)])
def test_conventions_agree_after_permuting_weights(n_head, d):
    """Scores with Meta's weights + interleaved = scores with permuted + half."""
    C, T = 24, 11
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, C), dtype=np.float32)
    wq, wk = (rng.standard_normal((n_head * d, C), dtype=np.float32) for _ in "qk")
    angles = rope_angles(np.arange(T), d)

    def scores(wq, wk, rope):
        q = (x @ wq.T).reshape(T, n_head, d).transpose(1, 0, 2)  # [n_head, T, d]
        k = (x @ wk.T).reshape(T, n_head, d).transpose(1, 0, 2)
        return rope(q, *angles) @ rope(k, *angles).swapaxes(1, 2)

    meta = scores(wq, wk, rope_interleaved)
    hf = scores(interleaved_to_half(wq, n_head), interleaved_to_half(wk, n_head),
                rope_half)
    np.testing.assert_allclose(hf, meta, rtol=1e-5, atol=1e-4)
    # without the permutation, the two conventions disagree (unless d == 2)
    if d > 2:
        assert not np.allclose(scores(wq, wk, rope_half), meta, atol=1e-2)


def test_half_order_examples():
    np.testing.assert_array_equal(half_order(6), [0, 2, 4, 1, 3, 5])
    w = np.arange(8.0)[:, None]  # two heads of four rows
    np.testing.assert_array_equal(interleaved_to_half(w, 2)[:, 0],
                                  [0, 2, 1, 3, 4, 6, 5, 7])


def test_offset_positions_match_a_slice_of_the_full_sequence():
    """RoPE with a cache: new tokens at positions start.. = rows start.. of all."""
    x = random((2, 12, 8))
    full = rope_half(x, *rope_angles(np.arange(12), 8))
    tail = rope_half(x[:, 9:], *rope_angles(np.arange(9, 12), 8))
    np.testing.assert_array_equal(tail, full[:, 9:])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="theta must be greater than 1"):
        rope_frequencies(8, theta=1.0)
    cos, sin = rope_angles(np.arange(4), 8)
    with pytest.raises(ValueError, match=r"cos, sin of shape \(5, 4\)"):
        rope_half(random((2, 5, 8)), cos, sin)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        interleaved_to_half(random((16, 4)), 3)


def test_linear_scaling_divides_positions():
    """factor f: position m turns as far as m / f did (position interpolation)."""
    positions = np.arange(0, 4096, 7)
    cos, sin = rope_angles(positions, 64, 10000.0, factor=4.0)
    freqs = 10000.0 ** (-np.arange(0, 64, 2) / 64)  # written out, not imported
    angles = np.outer(positions / 4.0, freqs)
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)
    plain = rope_angles(positions[positions % 4 == 0] // 4, 64)
    scaled = rope_angles(positions[positions % 4 == 0], 64, factor=4.0)
    np.testing.assert_allclose(scaled, plain, atol=1e-6)
