"""Threads of our own: every matrix product split by rows over plain Python threads.

Implements what chapter 21 found the BLAS library does not do well with two
threads. A product `x @ W` is the dot products of `x` with every row of `W` stored
as `[out, in]`, and the rows are independent, so a `Crew` of Python threads shares
them out: the rows are cut into a few ranges per thread, each thread takes the
next range as soon as it is free (so a thread that the system holds back leaves
its share to the others) and hands it to a kernel that releases the GIL (NumPy's
BLAS call here; our own machine code for quantised weights in `kernels.py`), so
the threads really run at once. The same split serves
one token (a matrix-vector product) and a whole prompt (a matrix-matrix product,
each thread running BLAS on its rows), so a long prompt uses every thread. A
waiting thread sleeps on a queue: it never spins against BLAS or against other
programs. A `RowMatrix` stands in for a weight array: `x @ W` runs the split,
`W.T` serves a tied output head and `W[ids]` the embeddings, so the forward code of
GPT-2 and LLaMA runs unchanged. `threaded_model` converts a loaded model; GPT-2's
weights, stored `[in, out]`, are copied once into rows.

Leaves out on purpose: pinning threads to cores, splitting work across layers,
and threads for the rest of a step (attention, norms), which is small for one token.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

KERNEL_THREADS = 1  # what set_kernel_threads last asked for

__all__ = ["PIECES", "Crew", "RowMatrix", "as_rows", "blas", "crew",
           "kernel_threads", "map_matrices", "rows_matmul", "set_kernel_threads",
           "shares", "split_rows", "threaded_model", "token_rows"]


# --8<-- [start:crew]
class Crew:
    """n - 1 helper threads that wait on a queue; the caller is the n-th thread."""

    def __init__(self, n: int):
        self.size, self.jobs = n, queue.SimpleQueue()
        for _ in range(n - 1):  # daemons: they end with the program
            threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        """A helper's life: take a job and run it; sleep while there is none."""
        while True:
            self.jobs.get()()  # blocks without using the CPU

    def run(self, work: Callable[[int, int], None],
            pieces: list[tuple[int, int]]) -> None:
        """work(a, b) for every piece, each taken by whichever thread is free
        first; returns when all are done, raising the first error."""
        todo, left, errors = iter(pieces), [len(pieces)], []
        lock, finished = threading.Lock(), threading.Event()

        def take() -> None:  # a list's iterator hands each piece out once
            for a, b in todo:
                try:
                    work(a, b)
                except BaseException as exc:  # noqa: BLE001 (raised by the caller)
                    errors.append(exc)
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        finished.set()
        for _ in range(self.size - 1):
            self.jobs.put(take)
        take()  # the caller works too, and takes what a late helper has not
        finished.wait()
        if errors:
            raise errors[0]
# --8<-- [end:crew]


# --8<-- [start:split-rows]
def shares(n: int, parts: int, align: int = 16, least: int = 64
           ) -> list[tuple[int, int]]:
    """range(n) cut into at most `parts` contiguous ranges of at least `least`
    rows (but one), inner edges on multiples of align."""
    parts = max(1, min(parts, n // least))  # a small product: quicker on one thread
    edges = [min(n, round(n * i / parts / align) * align) for i in range(parts)]
    edges.append(n)
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


@functools.cache
def crew(n: int) -> Crew:
    """The process's crew of n threads, started on first use."""
    return Crew(n)


PIECES = 4  # pieces per thread: a thread the system holds back leaves few rows


def split_rows(work: Callable[[int, int], None], n: int) -> None:
    """work(a, b) over ranges of rows covering range(n), on our threads."""
    threads = kernel_threads()
    pieces = shares(n, threads * PIECES)
    if threads == 1 or len(pieces) == 1:
        work(0, n)  # one thread: no hand-over at all
        return
    crew(threads).run(work, pieces)


def set_kernel_threads(n: int | None) -> None:
    """Threads for our kernels (None: every core). BLAS should then keep one."""
    global KERNEL_THREADS
    cores = os.cpu_count() or 1
    KERNEL_THREADS = min(n, cores) if n else cores


def kernel_threads() -> int:
    """How many threads our kernels are to use (1 until set_kernel_threads)."""
    return KERNEL_THREADS
# --8<-- [end:split-rows]


# --8<-- [start:row-matrix]
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
# --8<-- [end:row-matrix]


# --8<-- [start:rows-matmul]
def token_rows(x: np.ndarray, w) -> np.ndarray:
    """x as finite float32 rows for x @ w, a stand-in weight, shapes checked.
    x: (..., K), w: (K, N) -> (T, K)"""
    if not w.transposed or x.shape[-1] != w.shape[0]:
        raise ValueError(f"x @ W: x has shape {x.shape}, W {w.shape}"
                         + ("" if w.transposed else " (a table: use W.T)"))
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    if not np.isfinite(x2).all():  # a NaN or inf would spread silently
        raise ValueError(f"x @ W: x {list(x.shape)} holds a value that is not finite")
    return x2


def blas(rows: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = x @ rows.T by BLAS: matrix-vector for one token (x: (1, K)), else
    matrix-matrix. rows: (n, K), x: (T, K) -> out: (T, n), a view of columns"""
    if len(x) == 1:
        np.matmul(rows, x[0], out=out[0])
    else:
        np.matmul(x, rows.T, out=out)


def rows_matmul(x: np.ndarray, w: RowMatrix) -> np.ndarray:
    """x @ w, the rows of w shared out over the threads. x: (..., K) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K]
    out = np.empty((len(x2), w.rows.shape[0]), np.float32)  # [T, N]

    def work(a: int, b: int) -> None:  # BLAS on rows a:b; it releases the GIL
        blas(w.rows[a:b], x2, out[:, a:b])  # each thread its own columns
    split_rows(work, w.rows.shape[0])
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]
# --8<-- [end:rows-matmul]


# --8<-- [start:threaded-model]
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


def as_rows(a: np.ndarray) -> RowMatrix:
    """A RowMatrix of a's rows: a copy only where they are not contiguous already
    (a matrix that is a stand-in already, such as a quantised one, is kept)."""
    if not isinstance(a, np.ndarray):
        return a  # map_matrices' make(w.T).T then gives w back
    return RowMatrix(np.ascontiguousarray(a, dtype=np.float32))


def threaded_model(model):
    """The same model with every matrix a RowMatrix; its forward code is unchanged."""
    return replace(model, params=map_matrices(model.params, as_rows))
# --8<-- [end:threaded-model]
