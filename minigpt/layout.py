"""Memory layout made visible: the same sums, read in different orders.

Implements the small functions that chapter "Memory layout matters" times: reading
an array contiguously, with a stride, or at random positions, and summing the rows
or the columns of a row-major matrix. They follow the usual picture of a memory
hierarchy in which the CPU fetches 64-byte cache lines, not single numbers.

Left out on purpose: prefetch hints, huge pages and NUMA. The functions use plain
NumPy so that what changes between them is the order of memory accesses alone.
"""

from __future__ import annotations

import numpy as np

# --8<-- [start:cache-line]
CACHE_LINE_BYTES = 64  # x86-64 and most ARM cores move memory in 64-byte lines


def floats_per_cache_line(dtype: np.dtype | type = np.float32) -> int:
    """How many values of `dtype` share one cache line."""
    return CACHE_LINE_BYTES // np.dtype(dtype).itemsize
# --8<-- [end:cache-line]


# --8<-- [start:access-patterns]
def read_contiguous(x: np.ndarray, count: int) -> float:
    """Sum the first `count` floats of a 1-D array: neighbours in memory."""
    return float(x[:count].sum())


def read_strided(x: np.ndarray, count: int, stride: int) -> float:
    """Sum `count` floats taken every `stride` elements (a view, no copy)."""
    if count * stride > x.size:
        raise ValueError(f"{count} reads with stride {stride} need {count * stride} "
                         f"elements, the array has {x.size}")
    return float(x[: count * stride : stride].sum())


def read_random(x: np.ndarray, index: np.ndarray) -> float:
    """Sum the floats at the positions in `index`, in that order (a gather)."""
    return float(x[index].sum())
# --8<-- [end:access-patterns]


# --8<-- [start:row-column-sums]
def row_sums(x: np.ndarray) -> np.ndarray:
    """Sum each row, one row at a time. x: (R, C) -> (R,)"""
    out = np.empty(x.shape[0], dtype=np.float32)
    for i in range(x.shape[0]):
        out[i] = x[i, :].sum()  # a row is contiguous: whole cache lines used
    return out


def column_sums(x: np.ndarray) -> np.ndarray:
    """Sum each column, one column at a time. x: (R, C) -> (C,)"""
    out = np.empty(x.shape[1], dtype=np.float32)
    for j in range(x.shape[1]):
        out[j] = x[:, j].sum()  # a column jumps C floats: one useful float per line
    return out
# --8<-- [end:row-column-sums]


# --8<-- [start:column-sums-copy]
def column_sums_via_copy(x: np.ndarray) -> np.ndarray:
    """Copy the transpose into row-major order once, then sum rows. x: (R, C) -> (C,)"""
    return row_sums(np.ascontiguousarray(x.T))  # [R, C] -> [C, R], contiguous
# --8<-- [end:column-sums-copy]
