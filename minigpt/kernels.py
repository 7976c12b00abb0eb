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
from dataclasses import dataclass, replace

import numpy as np

from minigpt.machine_code import machine_code
from minigpt.machine_crew import run_rows
from minigpt.quantize import dequantize, quantize_groups
from minigpt.threads import (
    RowMatrix,
    blas,
    map_matrices,
    rows_matmul,
    split_rows,
    token_rows,
)

__all__ = ["FEW", "FLOAT_FEW", "TILE", "KernelMatrix", "few_tokens", "float_matmul",
           "kernel_model", "quantized_matmul", "reference_matmul", "rounded", "tiles"]


# --8<-- [start:reference-matmul]
def reference_matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w for a QuantMatrix w, in plain NumPy: what every fast path computes.
    x: (T, K) float32, w: (K, N) -> (T, N)"""
    if w.scheme == "q8_0":  # the activations are rounded to Q8_0 as well
        x = dequantize(*quantize_groups(x, 32))
    return x @ dequantize(w.q, w.d).T
# --8<-- [end:reference-matmul]


# --8<-- [start:quantized-matmul]
# token rows up to which our machine code beats BLAS (measured): one token while
# decoding, or one from each of a few sequences (chapter 37's batches)
FEW = 16


def quantized_matmul(x: np.ndarray, w) -> np.ndarray:
    """x @ w for a QuantMatrix: our machine code for one token or a few, BLAS
    on dequantised tiles for a prompt, split by rows over the threads.
    x: (..., K), w: (K, N) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K], shapes checked and every value finite
    code = machine_code()
    out = np.empty((len(x2), w.q.shape[0]), np.float32)  # [T, N]
    if len(x2) <= FEW and w.scheme in code and x2.shape[1] % 32 == 0:
        few_tokens(x2, w, code, out)
    else:
        split_rows(tiles(x2, w, out), w.q.shape[0])
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]


def rounded(x: np.ndarray, code: dict) -> tuple[np.ndarray, np.ndarray]:
    """x's Q8_0 numbers and scales, by our machine code where there is some.
    x: (T, K) float32 -> (T, K) int8, (T, K/32) float32"""
    if "q8_0 rounding" not in code or x.shape[1] % 32:
        return quantize_groups(x, 32)
    xq, xd = code["q8_0 rounding"](x)
    if not np.isfinite(xd).all():  # quantize_groups says why
        quantize_groups(x, 32)
    return xq, xd


def few_tokens(x: np.ndarray, w, code: dict, out: np.ndarray) -> None:
    """x @ w by our machine code, which reads each row of w once for every token,
    on the machine-code crew. x: (T, K) -> out: (T, N)"""
    q = np.asarray(w.q)  # a memory map is an ndarray subclass: the plain view
    xq, xd = rounded(x, code) if w.scheme == "q8_0" else (x, None)

    run_rows(code[w.scheme], xq, xd, q, w.d, out)


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


# --8<-- [start:float-matmul]
# token rows up to which our float32 code beat BLAS on one thread (measured in
# chapter 37): past it, a prompt's matrix-matrix product is BLAS's to do
FLOAT_FEW = 128


@dataclass(frozen=True)
class KernelMatrix(RowMatrix):
    """A RowMatrix whose products with a few token rows run our machine code."""

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        """x @ W. x: (..., K), W: (K, N) -> (..., N)"""
        return float_matmul(x, self)


def float_matmul(x: np.ndarray, w: RowMatrix) -> np.ndarray:
    """x @ w: up to FLOAT_FEW token rows by our machine code, which reads each
    weight row once for all of them; more by BLAS. x: (..., K) -> (..., N)"""
    code, (K, N) = machine_code(), w.shape
    if x.size > FLOAT_FEW * K or "f32" not in code or K % 32:
        return rows_matmul(x, w)  # a prompt: BLAS's matrix-matrix kernel
    x2 = token_rows(x, w)  # [T, K], shapes checked and every value finite
    out = np.empty((len(x2), N), np.float32)  # [T, N]

    run_rows(code["f32"], x2, None, w.rows, None, out)  # a call releases the GIL
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]


def kernel_model(model):
    """The same model with every float32 matrix a KernelMatrix (a matrix that
    is already a stand-in, quantised, is kept as it is)."""
    def make(rows):
        if not isinstance(rows, np.ndarray):
            return rows  # make(w.T).T gives w back
        return KernelMatrix(np.ascontiguousarray(rows, np.float32))
    return replace(model, params=map_matrices(model.params, make))
# --8<-- [end:float-matmul]
