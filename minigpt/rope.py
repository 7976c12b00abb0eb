"""Rotary positional embeddings (RoPE): a token's position as a rotation of q and k.

Implements RoPE as introduced in RoFormer (Su et al., 2021) and used by LLaMA:
the features of a query or key vector are taken in pairs, and pair j of the
vector at position m is rotated by the angle m * theta**(-2j / d). Two pairing
conventions exist and both are here: interleaved pairs (0, 1), (2, 3), ... as in
Meta's original LLaMA code, and the "rotate-half" pairs (i, i + d/2) of Hugging
Face's `LlamaForCausalLM`. They differ only by a permutation of the rows of the
query and key projections, which `interleaved_to_half` applies.

Linear scaling (positions divided by a factor, for a context stretched by that
factor) and Llama 3's (each pair's frequency divided by its own factor) are here;
leaves out on purpose the other scaled variants for longer contexts (NTK, YaRN)
and partial rotation (rotating only some of a head's features, as GPT-NeoX and
Phi do).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_angles", "half_order", "interleaved_to_half", "rope_angles",
           "llama3_divisors", "rope_frequencies", "rope_half", "rope_interleaved"]


# --8<-- [start:rope-frequencies]
def rope_frequencies(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """Radians per position of each feature pair. -> (head_dim // 2,) float64"""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"rope: head_dim must be even and at least 2 (features "
                         f"are rotated in pairs), got {head_dim}")
    if theta <= 1:
        raise ValueError(f"rope: theta must be greater than 1, got {theta}")
    # pair 0 turns 1 radian per position, the last pair about 1/theta
    return theta ** (-np.arange(0, head_dim, 2) / head_dim)


def rope_angles(positions: np.ndarray, head_dim: int, theta: float = 10000.0,
                factor: float | np.ndarray = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every (position, pair) angle. positions: (T,) -> 2 x (T, d/2)

    factor > 1 is linear scaling ("position interpolation"): position m turns as
    far as m / factor did, so a model stretched to factor times its trained
    context sees only angles it was trained on. An array of d/2 factors
    scales each pair on its own (Llama 3's scaling).
    """
    freqs = rope_frequencies(head_dim, theta) / factor
    # angles in float64: position * frequency, rounded to float32 once at the end
    angles = np.outer(np.asarray(positions, dtype=np.float64), freqs)  # [T, d/2]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
# --8<-- [end:rope-frequencies]


# --8<-- [start:rope-check-angles]
def check_angles(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """Raise unless cos and sin are (T, d/2) for an x of shape (..., T, d)."""
    want = (*x.shape[-2:-1], x.shape[-1] // 2)
    if x.shape[-1] % 2 or cos.shape != want or sin.shape != want:
        raise ValueError(f"rope: x of shape {x.shape} needs an even last axis and "
                         f"cos, sin of shape {want}; got {cos.shape}, {sin.shape}")
# --8<-- [end:rope-check-angles]


# --8<-- [start:rope-interleaved]
def rope_interleaved(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (0, 1), (2, 3), ... (Meta's layout). x: (..., T, d) -> same"""
    check_angles(x, cos, sin)
    a, b = x[..., 0::2], x[..., 1::2]  # first and second member of every pair
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin  # the 2-D rotation of (a, b) by the angle
    out[..., 1::2] = a * sin + b * cos
    return out
# --8<-- [end:rope-interleaved]


# --8<-- [start:rope-half]
def rope_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (i, i + d/2) (Hugging Face's layout). x: (..., T, d) -> same"""
    check_angles(x, cos, sin)
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]  # the pair members are half a vector apart
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
# --8<-- [end:rope-half]


# --8<-- [start:rope-permutation]
def half_order(head_dim: int) -> np.ndarray:
    """The order that turns interleaved pairs into halves: 0, 2, 4, ..., 1, 3, ..."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def interleaved_to_half(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's output rows. w: (n_head * d, C) -> (n_head * d, C)"""
    rows, C = w.shape
    if rows % n_head or (rows // n_head) % 2:
        raise ValueError(f"rope: {rows} rows do not split into {n_head} heads of "
                         f"an even size")
    d = rows // n_head
    heads = w.reshape(n_head, d, C)  # [n_head * d, C] -> [n_head, d, C]
    return heads[:, half_order(d)].reshape(rows, C)  # same order in every head
# --8<-- [end:rope-permutation]


# --8<-- [start:llama3-divisors]
def llama3_divisors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_ctx: int) -> np.ndarray:
    """Llama 3's RoPE scaling: what each pair's frequency is divided by. -> (d/2,)

    Pairs that turn fast (a wavelength under original_ctx / high_freq_factor
    positions) keep their speed, slow ones (over original_ctx / low_freq_factor)
    slow down by factor, and those between blend the two smoothly.
    """
    wavelength = 2 * np.pi / rope_frequencies(head_dim, theta)  # positions per turn
    # 0 for slow pairs, 1 for fast ones, a straight line between
    blend = (original_ctx / wavelength - low_freq_factor) / (high_freq_factor -
                                                             low_freq_factor)
    blend = np.clip(blend, 0.0, 1.0)
    return 1 / ((1 - blend) / factor + blend)  # frequency * (blend of 1/factor, 1)
# --8<-- [end:llama3-divisors]
