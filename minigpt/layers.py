"""The layers a transformer block is made of: linear, GELU, layer norm, softmax, MLP.

Each layer is a plain function of float32 arrays, and its weights are arguments,
named and laid out like GPT-2's checkpoint: a linear layer is `w: (C_in, C_out)`
and `b: (C_out,)` (GPT-2's "Conv1D" layout, so y = x @ w + b), a layer norm is
`g` (gain) and `b` (bias). The maths follows the GPT-2 paper and Hugging Face's
`GPT2Block`, which the tests compare against.

Left out on purpose: training (no gradients, no dropout), other dtypes than
float32, and fused or in-place variants; chapter 21 comes back for speed.
NumPy has no erf, and we do not pull in SciPy for one function, so `erfc` below
is a published rational-Chebyshev approximation (Numerical Recipes, `erfcc`).
"""

from __future__ import annotations

import math

import numpy as np


# --8<-- [start:linear]
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine map, GPT-2 layout. x: (..., C_in), w: (C_in, C_out) -> (..., C_out)"""
    if w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} features (shape {x.shape}) but w has "
            f"shape {w.shape}; expected w of shape ({x.shape[-1]}, C_out)"
        )
    if b.shape != (w.shape[1],):
        raise ValueError(f"linear: b must have shape ({w.shape[1]},), got {b.shape}")
    return x @ w + b  # [..., C_in] @ [C_in, C_out] -> [..., C_out]
# --8<-- [end:linear]


# --8<-- [start:relu]
def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0), element-wise. x: (...) -> (...)"""
    return np.maximum(x, 0)
# --8<-- [end:relu]


# --8<-- [start:erfc]
def erfc(x: np.ndarray) -> np.ndarray:
    """1 - erf(x), accurate to a few float32 ulp. x: (...) -> (...)"""
    z = np.abs(x)
    t = 1 / (1 + 0.5 * z)
    # poly(t) is fitted to log(erfc(z) / t) + z*z (Numerical Recipes, erfcc)
    poly = 0.17087277
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807,
              -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223):
        poly = c + t * poly
    r = t * np.exp(-z * z + poly)  # erfc(|x|), never cancels
    return np.where(x >= 0, r, 2 - r)  # erfc(-z) = 2 - erfc(z)
# --8<-- [end:erfc]


# --8<-- [start:gelu-exact]
def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, exact form x * Phi(x) with the normal CDF via erfc. x: (...) -> (...)"""
    # Phi(x) = 0.5 * (1 + erf(x / sqrt 2)) = 0.5 * erfc(-x / sqrt 2); erfc keeps
    # the tiny values for negative x that 1 + erf(...) would round away.
    return 0.5 * x * erfc(-x / math.sqrt(2))
# --8<-- [end:gelu-exact]


# --8<-- [start:gelu-tanh]
def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (GPT-2's "gelu_new"). x: (...) -> (...)"""
    k = math.sqrt(2 / math.pi)  # a Python float, so float32 stays float32
    cube = x * x * x  # not x**3: NumPy's float32 power is far slower
    return 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * cube)))
# --8<-- [end:gelu-tanh]


# --8<-- [start:layer-norm]
def layer_norm(
    x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """Normalise each row to mean 0, variance 1, then scale and shift. (..., C)"""
    for name, p in (("g", g), ("b", b)):
        if p.shape != x.shape[-1:]:
            raise ValueError(f"layer_norm: {name} must have shape ({x.shape[-1]},) "
                             f"to match x of shape {x.shape}, got {p.shape}")
    mean = x.mean(axis=-1, keepdims=True)  # [..., C] -> [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as in PyTorch
    return g * (x - mean) / np.sqrt(var + eps) + b  # eps: no 0/0 on constant rows
# --8<-- [end:layer-norm]


# --8<-- [start:softmax-naive]
def softmax_naive(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The textbook formula, exp(x) / sum exp(x): overflows for x > 88. (..., V)"""
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)
# --8<-- [end:softmax-naive]


# --8<-- [start:softmax-stable]
def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, shifted by the max so exp never overflows. (..., V)"""
    shifted = x - x.max(axis=axis, keepdims=True)  # largest entry becomes 0
    e = np.exp(shifted)  # every value in (0, 1], the sum is at least 1
    return e / e.sum(axis=axis, keepdims=True)
# --8<-- [end:softmax-stable]


# --8<-- [start:log-softmax]
def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) without taking the log of an underflowed 0. (..., V)"""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
# --8<-- [end:log-softmax]


# --8<-- [start:ffn]
def ffn(x: np.ndarray, c_fc: dict, c_proj: dict) -> np.ndarray:
    """GPT-2's MLP: expand 4x, GELU (tanh form), project back. x: (T, C) -> (T, C)"""
    h = gelu_tanh(linear(x, **c_fc))  # [T, C] -> [T, 4C]
    return linear(h, **c_proj)  # [T, 4C] -> [T, C]
# --8<-- [end:ffn]
