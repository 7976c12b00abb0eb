"""The kernel layer: one fast path for each quantised product, beside its reference.

Implements `x @ W` for a quantised weight (a `QuantMatrix`, Q8_0 or int8), in two
shapes. One token (a matrix-vector product, every decode step) runs our own
machine code (`machine_code.py`): the activations are rounded to Q8_0 and each
group of 32 is summed in integers. A prompt (a matrix-matrix product) is many
multiply-adds per weight, so there the weights are dequantised a tile of rows at
a time into a small float32 buffer that BLAS multiplies: the same speed as float32
for a fraction of its memory. Both are split by rows over the threads of
`threads.py`; both compute what `reference_matmul`, plain NumPy, computes, which
the tests check. Without machine code (not Linux on x86-64 with AVX2, or no
llvmlite), one token takes the tile path too.

Leaves out on purpose: kernels for other processors, and integer matrix-matrix
kernels (BLAS on dequantised tiles is already as fast as float32).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minigpt.machine_code import machine_code
from minigpt.quantize import dequantize, quantize_groups
from minigpt.threads import blas, split_rows, token_rows

__all__ = ["TILE", "one_token", "quantized_matmul", "reference_matmul",
           "rounded", "tiles"]


# --8<-- [start:reference-matmul]
def reference_matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w for a QuantMatrix w, in plain NumPy: what every fast path computes.
    x: (T, K) float32, w: (K, N) -> (T, N)"""
    if w.scheme == "q8_0":  # the activations are rounded to Q8_0 as well
        x = dequantize(*quantize_groups(x, 32))
    return x @ dequantize(w.q, w.d).T
# --8<-- [end:reference-matmul]


# --8<-- [start:quantized-matmul]
def quantized_matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w for a QuantMatrix: our machine code for one token, BLAS on
    dequantised tiles for a prompt, split by rows over the threads.
    x: (..., K), w: (K, N) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K], shapes checked and every value finite
    code = machine_code()
    out = np.empty((len(x2), w.q.shape[0]), np.float32)  # [T, N]
    if len(x2) == 1 and w.scheme in code and x2.shape[1] % 32 == 0:
        split_rows(one_token(x2, w, code, out), w.q.shape[0])
    else:
        split_rows(tiles(x2, w, out), w.q.shape[0])
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]


def rounded(x: np.ndarray, code: dict) -> tuple[np.ndarray, np.ndarray]:
    """x's Q8_0 numbers and scales, by our machine code where there is some.
    x: (T, K) float32 -> (T, K) int16 or int8, (T, K/32) float32"""
    if "q8_0 rounding" not in code or x.shape[1] % 32:
        return quantize_groups(x, 32)
    xq, xd = code["q8_0 rounding"](x)
    if not np.isfinite(xd).all():  # quantize_groups says why
        quantize_groups(x, 32)
    return xq, xd


def one_token(x: np.ndarray, w, code: dict, out: np.ndarray) -> Callable:
    """work(a, b): rows a:b of x @ w by our machine code. x: (1, K) -> out: (1, N)"""
    q = np.asarray(w.q)  # a memory map is an ndarray subclass: the plain view
    xq, xd = rounded(x, code) if w.scheme == "q8_0" else (x, None)

    def work(a: int, b: int) -> None:  # a call releases the GIL
        code[w.scheme](xq, xd, q[a:b], w.d[a:b], out[:, a:b])
    return work


TILE = 256  # rows dequantised at a time: 256 x 768 float32 is 768 KB, near cache


def tiles(x: np.ndarray, w, out: np.ndarray) -> Callable:
    """work(a, b): rows a:b of x @ w, a tile of dequantised rows at a time
    multiplied by BLAS. x: (T, K) float32 -> out: (T, N)"""
    if w.scheme == "q8_0":  # the activations rounded as the reference rounds them
        x = dequantize(*rounded(x, machine_code()))

    def work(a: int, b: int) -> None:
        for r in range(a, b, TILE):
            s = min(r + TILE, b)
            blas(dequantize(w.q[r:s], w.d[r:s]), x, out[:, r:s])
    return work
# --8<-- [end:quantized-matmul]
