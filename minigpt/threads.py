"""Threads of our own: a decode step's matrix-vector products, split by rows.

Implements what chapter 21 found the BLAS library does not do well with two
threads: a one-token product `x @ W` is a dot product of `x` with every row of
`W` stored as `[out, in]`, and the rows are shared out over the cores by a
Numba kernel (`prange`), four rows at a time so that each number of `x` is
loaded once for four rows. A `RowMatrix` stands in for a weight array, as
chapter 23's quantised matrices do: `x @ W` runs the kernel for one token and
the BLAS library for a prompt, `W.T` serves a tied output head and `W[ids]` the
embeddings, so the forward code of GPT-2 and LLaMA runs unchanged.
`threaded_model` converts a loaded model; GPT-2's weights, stored `[in, out]`,
are copied once into rows. Without Numba, the BLAS library does every product.

Leaves out on purpose: a prefill kernel of our own (BLAS's matrix products are
good at many rows), pinning threads to cores, and splitting work across layers.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

# plain Python's range until compile_dot_rows imports Numba's parallel one: Numba
# and its compiler add some 70 MB to a process, which a one-thread run never needs
prange = range
KERNEL_THREADS = 1  # what set_kernel_threads last asked for

__all__ = ["RowMatrix", "compile_dot_rows", "dot_rows", "kernel_threads",
           "map_matrices", "rows_matmul", "set_kernel_threads", "share_threads",
           "threaded_model", "token_rows"]


def dot_rows(x: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out = a @ x, four rows at a time. x: (K,), a: (N, K) -> out: (N,)"""
    N, K = a.shape
    for b in prange(N // 4):  # threads share out the blocks: no shared writes
        n = 4 * b
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(K):  # x[k] is loaded once and used for four rows
            xk = x[k]
            s0 += a[n, k] * xk
            s1 += a[n + 1, k] * xk
            s2 += a[n + 2, k] * xk
            s3 += a[n + 3, k] * xk
        out[n], out[n + 1], out[n + 2], out[n + 3] = s0, s1, s2, s3
    for n in range(N - N % 4, N):  # the last rows, when N is not a multiple of 4
        s0 = np.float32(0.0)
        for k in range(K):
            s0 += a[n, k] * x[k]
        out[n] = s0


@functools.cache
def compile_dot_rows(cache: bool = True) -> Callable | None:
    """dot_rows compiled for all cores on first use (None without numba)."""
    global prange  # the name dot_rows's loop looks up when Numba compiles it
    try:
        from numba import njit, prange
    except ImportError:  # the BLAS library then does every product
        return None
    share_threads()  # Numba's pool starts with every core
    # fastmath lets LLVM reorder each sum into packed lanes (chapter 6)
    return njit(parallel=True, fastmath=True, cache=cache)(dot_rows)


@dataclass(frozen=True)
class RowMatrix:
    """A float32 matrix kept as contiguous rows; it stands in for the array."""

    rows: np.ndarray  # [R, K] float32, C-contiguous: one row per output
    transposed: bool = False  # True: stands for the [K, R] matrix, a weight

    __array_ufunc__ = None  # NumPy then hands `x @ W` to W.__rmatmul__
    ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[::-1] if self.transposed else self.rows.shape

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    @property
    def T(self) -> RowMatrix:  # noqa: N802 (NumPy's name)
        return replace(self, transposed=not self.transposed)  # no copy

    def __getitem__(self, rows) -> np.ndarray:
        """Some rows, as a table is read (embeddings). -> (..., K)"""
        if self.transposed:
            raise TypeError("index a RowMatrix by rows, not through .T")
        return self.rows[rows]

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        """x @ W. x: (..., K), W: (K, N) -> (..., N)"""
        return rows_matmul(x, self)


def token_rows(x: np.ndarray, w) -> np.ndarray:
    """x as float32 rows for x @ w, a stand-in weight, once the shapes are checked.
    x: (..., K), w: (K, N) -> (T, K)"""
    if not w.transposed or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x @ W: x has shape {x.shape}, W {w.shape}"
                         + ("" if w.transposed else " (a table: use W.T)"))
    return np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)


def rows_matmul(x: np.ndarray, w: RowMatrix) -> np.ndarray:
    """x @ w: the kernel for one token, BLAS for more. x: (..., K) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K]
    kernel = compile_dot_rows()
    if len(x2) > 1 or kernel is None:  # a prompt: BLAS is good at many rows
        return (x2 @ w.rows.T).reshape(*x.shape[:-1], -1)
    out = np.empty(w.rows.shape[0], np.float32)
    kernel(x2[0], w.rows, out)
    return out.reshape(*x.shape[:-1], -1)  # [N] -> [..., N]


TABLES = ("wte", "wpe", "embed_tokens")  # read by row (a token, a position)


def map_matrices(params: dict, make: Callable) -> dict:
    """params with each matrix made a stand-in by make(rows): (R, K) -> object.

    Tables are made from their rows, weights `x @ w` from w.T (one row per
    output) and then seen through .T; a head tied to a table (sharing its
    memory) becomes that table's .T. Vectors (biases, norm gains) are kept.
    """
    tables = {k: make(params[k]) for k in TABLES if k in params}

    def convert(x, where: str):
        if isinstance(x, dict):
            return {k: tables[k] if k in tables else convert(v, f"{where}.{k}")
                    for k, v in x.items()}
        if isinstance(x, list):
            return [convert(v, f"{where}.{i}") for i, v in enumerate(x)]
        if x.ndim != 2:
            return x  # few bytes: kept as they are
        for name, table in tables.items():
            if np.may_share_memory(x, params[name]):
                return table.T
        try:
            return make(x.T).T  # rows along K, the input
        except ValueError as exc:
            raise ValueError(f"{where} {list(x.shape)}: {exc}") from None
    return convert(params, "params")


def threaded_model(model):
    """The same model with every matrix a RowMatrix; its forward code is unchanged."""
    def as_rows(a: np.ndarray) -> RowMatrix:
        # a copy only where the rows are not contiguous already (GPT-2's [in, out])
        return RowMatrix(np.ascontiguousarray(a, dtype=np.float32))
    return replace(model, params=map_matrices(model.params, as_rows))


def set_kernel_threads(n: int | None) -> None:
    """Threads for our kernels (None: every core)."""
    global KERNEL_THREADS
    cores = os.cpu_count() or 1
    KERNEL_THREADS = min(n, cores) if n else cores
    share_threads()


def kernel_threads() -> int:
    """How many threads our kernels are to use (1 until set_kernel_threads)."""
    return KERNEL_THREADS


def share_threads() -> None:
    """Numba's pool, if Numba is loaded, held to kernel_threads()."""
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(KERNEL_THREADS, numba.config.NUMBA_NUM_THREADS))
