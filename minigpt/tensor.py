"""A from-scratch tensor: flat storage read through a shape, strides and an offset.

Implements an n-dimensional array of floats in pure Python, the way NumPy and
PyTorch lay theirs out: one flat list of numbers, plus row-major strides (how many
elements to skip to move one step along each axis) and an offset (where element
[0, 0, ...] lives). Indexing with slices, reshape, transpose and permute return
views that share the storage; broadcasting gives an axis a stride of zero. It
follows NumPy's semantics for indexing, broadcasting and reductions, and the
tests check every operation against NumPy.

Left out on purpose: dtypes (values are Python floats), fancy (array) indexing,
assignment into a tensor, and speed. It teaches the layout; NumPy does the work
in the rest of the book.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np


# --8<-- [start:row-major-strides]
def row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Elements to skip per step along each axis. (2, 3, 4) -> (12, 4, 1)"""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
# --8<-- [end:row-major-strides]


# --8<-- [start:broadcast-shapes]
def broadcast_shapes(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """NumPy's broadcasting rule for two shapes, or a ValueError naming both."""
    ndim = max(len(a), len(b))
    a = (1,) * (ndim - len(a)) + tuple(a)  # line the shapes up on the right
    b = (1,) * (ndim - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast: {x} vs {y}")
        out.append(y if x == 1 else x)  # a size-1 axis stretches to the other size
    return tuple(out)
# --8<-- [end:broadcast-shapes]


# --8<-- [start:tensor-class]
Index = int | slice | tuple  # what t[...] accepts: an int, a slice, or a tuple of them


class Tensor:
    """An n-dimensional array of floats over flat storage, with views that share it.

    Example:
        >>> t = Tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], (2, 3))
        >>> t.strides, t[1, 2], t.transpose(0, 1).shape
        ((3, 1), 5.0, (3, 2))
    """
# --8<-- [end:tensor-class]

    # --8<-- [start:tensor-init]
    def __init__(self, storage: list[float], shape: Sequence[int],
                 strides: Sequence[int] | None = None, offset: int = 0) -> None:
        self.storage = storage  # one flat list, shared by every view of it
        self.shape = tuple(int(s) for s in shape)
        self.strides = (row_major_strides(self.shape) if strides is None
                        else tuple(int(s) for s in strides))
        self.offset = offset  # where element [0, 0, ...] lives in storage
        if len(self.strides) != len(self.shape) or any(s < 0 for s in self.shape):
            raise ValueError(f"bad layout: shape {self.shape}, strides {self.strides}")
        if self.size > 0:  # the lowest and highest positions must be in storage
            steps = [(n - 1) * s for n, s in zip(self.shape, self.strides, strict=True)]
            lo = offset + sum(d for d in steps if d < 0)
            hi = offset + sum(d for d in steps if d > 0)
            if lo < 0 or hi >= len(storage):
                raise ValueError(f"shape {self.shape} with strides {self.strides} and "
                                 f"offset {offset} reach outside {len(storage)} values")
    # --8<-- [end:tensor-init]

    # --8<-- [start:tensor-size]
    @property
    def ndim(self) -> int:
        """The number of axes: 2 for a matrix."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements: the product of the shape (1 for shape ())."""
        return math.prod(self.shape)

    def __repr__(self) -> str:
        """The layout, not the values: Tensor(shape=..., strides=..., offset=...)."""
        return (f"Tensor(shape={self.shape}, strides={self.strides}, "
                f"offset={self.offset})")
    # --8<-- [end:tensor-size]

    # --8<-- [start:tensor-position]
    def position(self, index: Sequence[int]) -> int:
        """Where element `index` lives in storage: offset + sum of index * stride."""
        pairs = zip(index, self.strides, strict=True)
        return self.offset + sum(i * s for i, s in pairs)

    def positions(self) -> list[int]:
        """Storage positions of all elements, in row-major (reading) order."""
        every_index = itertools.product(*map(range, self.shape))
        return [self.position(ix) for ix in every_index]
    # --8<-- [end:tensor-position]

    # --8<-- [start:tensor-getitem]
    def __getitem__(self, key: Index) -> Tensor | float:
        """t[1], t[0, 2], t[:, 1:3], t[::-1]: ints drop an axis, slices keep a view."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > self.ndim:
            raise IndexError(f"{len(key)} indices for a {self.ndim}-d tensor")
        offset, shape, strides = self.offset, [], []
        for axis, k in enumerate(key + (slice(None),) * (self.ndim - len(key))):
            size, stride = self.shape[axis], self.strides[axis]
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                offset += start * stride
                shape.append(len(range(start, stop, step)))
                strides.append(stride * step)  # every step-th element: a bigger stride
            elif isinstance(k, int):
                if not -size <= k < size:
                    raise IndexError(f"index {k} is out of range for axis {axis} "
                                     f"of size {size}")
                offset += (k % size) * stride  # the axis disappears
            else:
                raise TypeError(f"indices must be ints or slices, "
                                f"not {type(k).__name__}")
        if not shape:
            return self.storage[offset]  # every axis indexed: a single number
        return Tensor(self.storage, shape, strides, offset)

    def tolist(self) -> list | float:
        """Nested Python lists, like NumPy's tolist(): one index at a time."""
        if self.ndim == 0:
            return self.storage[self.offset]
        return [self[i].tolist() if self.ndim > 1 else self[i]
                for i in range(self.shape[0])]
    # --8<-- [end:tensor-getitem]

    # --8<-- [start:tensor-contiguous]
    def is_contiguous(self) -> bool:
        """True when the elements sit in storage in row-major order, no gaps."""
        expected = row_major_strides(self.shape)
        pairs = zip(self.shape, self.strides, expected, strict=True)
        return all(n <= 1 or s == e for n, s, e in pairs)  # size-1 axes never move

    def contiguous(self) -> Tensor:
        """This tensor if contiguous, else a row-major copy in fresh storage."""
        if self.is_contiguous():
            return self
        return Tensor([self.storage[p] for p in self.positions()], self.shape)
    # --8<-- [end:tensor-contiguous]

    # --8<-- [start:tensor-reshape]
    def reshape(self, *shape: int) -> Tensor:
        """Same elements, new shape (one size may be -1): a view when contiguous."""
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = tuple(shape[0])  # also accept t.reshape((2, 3))
        if shape.count(-1) > 1:
            raise ValueError("only one size in reshape may be -1")
        known = math.prod(s for s in shape if s != -1)
        if -1 in shape:
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape size {self.size} into {shape}")
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} (size {self.size}) "
                             f"into {shape}")
        source = self.contiguous()  # a copy only when the layout needs one
        return Tensor(source.storage, shape, None, source.offset)
    # --8<-- [end:tensor-reshape]

    # --8<-- [start:tensor-permute]
    def permute(self, *axes: int) -> Tensor:
        """Reorder the axes by swapping strides: a view, nothing copied."""
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute needs each axis 0..{self.ndim - 1} once, "
                             f"got {axes}")
        return Tensor(self.storage, [self.shape[a] for a in axes],
                      [self.strides[a] for a in axes], self.offset)

    def transpose(self, a: int = 0, b: int = 1) -> Tensor:
        """Swap two axes (a view). For a matrix, t.transpose() is its transpose."""
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    @property
    def T(self) -> Tensor:
        """All axes reversed, like NumPy's .T (a view)."""
        return self.permute(*reversed(range(self.ndim)))
    # --8<-- [end:tensor-permute]

    # --8<-- [start:tensor-numpy]
    def numpy(self) -> np.ndarray:
        """A float32 NumPy copy, in row-major order."""
        values = [self.storage[p] for p in self.positions()]
        return np.array(values, dtype=np.float32).reshape(self.shape)

    @staticmethod
    def from_numpy(array: np.ndarray) -> Tensor:
        """A contiguous Tensor holding a copy of `array`'s values."""
        array = np.asarray(array)
        return Tensor([float(v) for v in array.ravel()], array.shape)
    # --8<-- [end:tensor-numpy]

    # --8<-- [start:tensor-broadcast]
    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        """A view with `shape`: new and size-1 axes get stride 0, so they repeat."""
        shape = tuple(shape)
        if broadcast_shapes(self.shape, shape) != shape:
            raise ValueError(f"cannot broadcast {self.shape} to {shape}")
        pad = len(shape) - self.ndim
        kept = zip(self.shape, self.strides, strict=True)
        strides = [0] * pad + [0 if n == 1 else s for n, s in kept]
        return Tensor(self.storage, shape, strides, self.offset)
    # --8<-- [end:tensor-broadcast]

    # --8<-- [start:tensor-elementwise]
    def elementwise(self, other: Tensor | float,
                    op: Callable[[float, float], float]) -> Tensor:
        """op applied to matching elements, after broadcasting both to one shape."""
        if not isinstance(other, Tensor):
            other = Tensor([float(other)], ())  # a scalar is a 0-d tensor
        shape = broadcast_shapes(self.shape, other.shape)
        a, b = self.broadcast_to(shape), other.broadcast_to(shape)
        values = [op(a.storage[p], b.storage[q])
                  for p, q in zip(a.positions(), b.positions(), strict=True)]
        return Tensor(values, shape)  # the result is fresh and contiguous

    def __add__(self, other): return self.elementwise(other, operator.add)
    def __sub__(self, other): return self.elementwise(other, operator.sub)
    def __mul__(self, other): return self.elementwise(other, operator.mul)
    def __truediv__(self, other): return self.elementwise(other, operator.truediv)
    def __radd__(self, other): return self.elementwise(other, lambda x, y: y + x)
    def __rsub__(self, other): return self.elementwise(other, lambda x, y: y - x)
    def __rmul__(self, other): return self.elementwise(other, lambda x, y: y * x)
    def __rtruediv__(self, other): return self.elementwise(other, lambda x, y: y / x)
    # --8<-- [end:tensor-elementwise]

    # --8<-- [start:tensor-unary]
    def apply(self, fn: Callable[[float], float]) -> Tensor:
        """fn applied to every element, into a fresh contiguous tensor."""
        return Tensor([fn(self.storage[p]) for p in self.positions()], self.shape)

    def exp(self) -> Tensor: return self.apply(math.exp)
    def log(self) -> Tensor: return self.apply(math.log)
    def tanh(self) -> Tensor: return self.apply(math.tanh)
    def __neg__(self) -> Tensor: return self.apply(operator.neg)
    # --8<-- [end:tensor-unary]

    # --8<-- [start:tensor-reduce]
    def reduce(self, fn: Callable[[list[float]], float], axis: int | None = None,
               keepdims: bool = False) -> Tensor | float:
        """fn over all elements, or along one axis. (A, B, C), axis=1 -> (A, C)"""
        if axis is None:
            return fn([self.storage[p] for p in self.positions()])
        if not -self.ndim <= axis < self.ndim:
            raise ValueError(f"axis {axis} out of range for a {self.ndim}-d tensor")
        axis %= self.ndim
        rest = [a for a in range(self.ndim) if a != axis]
        moved = self.permute(*rest, axis)  # the reduced axis last: a view
        length = self.shape[axis]
        flat = [moved.storage[p] for p in moved.positions()]  # rows of `length`
        values = [fn(flat[i:i + length]) for i in range(0, len(flat), length)]
        shape = [1 if a == axis else n for a, n in enumerate(self.shape)] if keepdims \
            else [self.shape[a] for a in rest]
        return Tensor(values, shape)

    def sum(self, axis: int | None = None, keepdims: bool = False) -> Tensor | float:
        """Sum of all elements, or along `axis` (exactly rounded, by math.fsum)."""
        return self.reduce(math.fsum, axis, keepdims)

    def max(self, axis: int | None = None, keepdims: bool = False) -> Tensor | float:
        """Largest element, or the largest along `axis`."""
        return self.reduce(max, axis, keepdims)
    # --8<-- [end:tensor-reduce]
