"""Quantisation: int8 weights and float scales, so a token reads a quarter of the bytes.

Implements two symmetric schemes. `q8_0` follows llama.cpp's `block_q8_0`: every
32 consecutive numbers of a row share one float16 scale `d` and are stored as
int8 `q` with x ~ q * d; the activations are rounded the same way at every
step. On x86 with AVX2 the kernel sums each group's products in integers with
`vpmaddwd`, written in LLVM IR through a Numba intrinsic; elsewhere a portable
loop multiplies the int8 weights, widened to float32, by the rounded activations.
For one thread, on Linux x86 with AVX2, the same IR is compiled once in a child
process into machine code, kept in a cache file, then mapped executable and called
through ctypes, so that the process that generates holds no compiler (Numba and
LLVM cost it tens of MB); more threads use Numba's kernels and thread pool.
`int8` keeps one float32 scale per output row and multiplies int8 weights by
float32 activations. A `QuantMatrix` stands in for a weight array, as chapter
21's `RowMatrix` does: `x @ W` runs a Numba kernel that splits the output rows
over threads (`prange`), four at a time; `W.T` and `W[ids]` serve the tied
output head and the embeddings, so the forward code of GPT-2 and LLaMA runs
unchanged.
Quantised checkpoints are safetensors files of I8 data and scale tensors, read
memory-mapped. Without Numba the same products run in plain NumPy, slowly.

Leaves out on purpose: 4-bit and k-quant formats, zero points (asymmetric
schemes), calibration (GPTQ, AWQ), a quantised KV cache, and a prefill kernel of
its own (a prompt runs through the same row kernels, one token row at a time),
threads for our own machine code, and a linker (code that needs relocating is
refused, and Numba's kernels run instead).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import mmap
import os
import platform
import shutil
import struct
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minigpt.kvcache import CachedGPT
from minigpt.llama import LlamaModel, llama_names, read_llama_config
from minigpt.model import GPT
from minigpt.models import saved_scheme
from minigpt.threads import (
    TABLES,
    kernel_threads,
    map_matrices,
    share_threads,
    token_rows,
)
from minigpt.weights import (
    WeightsError,
    gpt2_names,
    put,
    read_config,
    read_json,
    read_safetensors,
)

try:  # LLVM's IR as Python objects: plain Python, it loads no compiler
    from llvmlite import ir
except ImportError:  # no llvmlite (it comes with numba): the NumPy path still works
    ir = None
# plain Python's range and no row_dot until compile_kernels imports Numba's
prange, row_dot = range, None

__all__ = ["QuantMatrix", "compile_kernels", "dequantize", "load_quantized",
           "machine_code", "matmul_kernel", "matmul_numpy", "quantize_checkpoint",
           "quantize_groups", "quantize_matrix", "quantize_model", "save_quantized",
           "saved_scheme"]

# --8<-- [start:quantize-groups]
def quantize_groups(x: np.ndarray, group: int, scale_dtype: type = np.float16
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per `group` numbers along the last axis.
    x: (..., K) -> q: (..., K) int8, d: (..., K // group) float32"""
    K = x.shape[-1]
    if K % group:
        raise ValueError(f"the last axis has {K} numbers, not a multiple of the "
                         f"group size {group}")
    g = np.asarray(x, np.float32).reshape(*x.shape[:-1], K // group, group)
    amax = np.abs(g).max(axis=-1)  # [..., G]: the largest magnitude sets the scale
    # the scale as stored (llama.cpp: float16), so that q * d uses exactly it
    d = (amax / 127).astype(scale_dtype).astype(np.float32)  # [..., G]
    if not np.isfinite(d).all():
        raise ValueError(f"a value is not finite or too large for a "
                         f"{scale_dtype.__name__} scale (max {np.nanmax(amax):.3g})")
    # x / d lies in [-127, 127]; a group of zeros has d = 0 and gets q = 0
    scaled = np.divide(g, d[..., None], out=np.zeros_like(g), where=d[..., None] > 0)
    q = np.rint(scaled).clip(-127, 127).astype(np.int8)  # round to nearest
    return q.reshape(x.shape), d


def dequantize(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q times its group's scale. q: (..., K) int8, d: (..., G) -> (..., K) float32"""
    groups = q.reshape(*q.shape[:-1], d.shape[-1], -1).astype(np.float32)
    return (groups * d[..., None]).reshape(q.shape)  # [..., G, K // G] -> [..., K]
# --8<-- [end:quantize-groups]


# --8<-- [start:quant-matrix]
SCHEMES = {"q8_0": (32, np.float16), "int8": (None, np.float32)}  # group, scale


@dataclass(frozen=True)
class QuantMatrix:
    """A float32 matrix kept as int8 rows and scales; it stands in for the array."""

    scheme: str  # "q8_0": a float16 scale per 32 numbers of a row; "int8": one per row
    q: np.ndarray  # [R, K] int8, row r holds q[r] * d[r] (groups along K)
    d: np.ndarray  # [R, K // 32] (q8_0) or [R, 1] (int8) float32 scales
    transposed: bool = False  # True: stands for the [K, R] matrix, a weight for x @ W

    __array_ufunc__ = None  # NumPy then hands `x @ W` to W.__rmatmul__
    ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[::-1] if self.transposed else self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.d.nbytes  # what a product has to read

    @property
    def T(self) -> QuantMatrix:  # noqa: N802 (NumPy's name)
        return replace(self, transposed=not self.transposed)  # no copy

    def __getitem__(self, rows) -> np.ndarray:
        """Some rows as float32, as a table is read (embeddings). -> (..., K)"""
        if self.transposed:
            raise TypeError("index a QuantMatrix by rows, not through .T")
        return dequantize(self.q[rows], self.d[rows])

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        """x @ W. x: (..., K), W: (K, N) -> (..., N)"""
        return quantized_matmul(x, self)
# --8<-- [end:quant-matrix]


# --8<-- [start:quantize-matrix]
def quantize_matrix(a: np.ndarray, scheme: str) -> QuantMatrix:
    """A 2-D float array as a QuantMatrix, in groups along its rows."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    if a.ndim != 2:
        raise ValueError(f"quantize_matrix needs a 2-D array, got shape {a.shape}")
    group, scale_dtype = SCHEMES[scheme]
    q, d = quantize_groups(a, group or a.shape[1], scale_dtype)  # int8: the whole row
    return QuantMatrix(scheme, np.ascontiguousarray(q), np.ascontiguousarray(d))
# --8<-- [end:quantize-matrix]


# --8<-- [start:q8-0-kernel]
def q8_0_rows(xf: np.ndarray, q: np.ndarray, d: np.ndarray, out: np.ndarray) -> None:
    """out = x @ W.T, W in Q8_0, four rows at a time. xf: (T, K) float32 (x's own
    Q8_0 values), q: (N, K) int8, d: (N, K/32) -> out: (T, N)"""
    N, K = q.shape
    for b in prange(N // 4):  # threads share out blocks of rows: no shared writes
        n = 4 * b
        for t in range(xf.shape[0]):
            # 32 running sums per row, one per place in a group
            l0, l1 = np.zeros(32, np.float32), np.zeros(32, np.float32)
            l2, l3 = np.zeros(32, np.float32), np.zeros(32, np.float32)
            for g in range(K // 32):
                s0, s1, s2, s3 = d[n, g], d[n + 1, g], d[n + 2, g], d[n + 3, g]
                for i in range(32):  # one x, loaded once, for four rows
                    k, xk = 32 * g + i, xf[t, 32 * g + i]
                    l0[i] += s0 * (np.float32(q[n, k]) * xk)
                    l1[i] += s1 * (np.float32(q[n + 1, k]) * xk)
                    l2[i] += s2 * (np.float32(q[n + 2, k]) * xk)
                    l3[i] += s3 * (np.float32(q[n + 3, k]) * xk)
            out[t, n], out[t, n + 1] = l0.sum(), l1.sum()
            out[t, n + 2], out[t, n + 3] = l2.sum(), l3.sum()
    for n in range(N - N % 4, N):  # the last rows, when N is not a multiple of 4
        for t in range(xf.shape[0]):
            acc = np.float32(0.0)
            for k in range(K):
                acc += d[n, k // 32] * (np.float32(q[n, k]) * xf[t, k])
            out[t, n] = acc
# --8<-- [end:q8-0-kernel]


# --8<-- [start:int8-kernel]
def int8_rows(x: np.ndarray, q: np.ndarray, d: np.ndarray, out: np.ndarray) -> None:
    """out = x @ W.T, W int8 with one scale per row, four rows at a time.
    x: (T, K) float32, q: (N, K) int8, d: (N, 1) -> out: (T, N)"""
    N, K = q.shape
    for b in prange(N // 4):
        n = 4 * b
        for t in range(x.shape[0]):
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for k in range(K):  # int8 -> float32, then multiply-add
                xk = x[t, k]
                s0 += np.float32(q[n, k]) * xk
                s1 += np.float32(q[n + 1, k]) * xk
                s2 += np.float32(q[n + 2, k]) * xk
                s3 += np.float32(q[n + 3, k]) * xk
            # each row's one scale, applied once
            out[t, n], out[t, n + 1] = s0 * d[n, 0], s1 * d[n + 1, 0]
            out[t, n + 2], out[t, n + 3] = s2 * d[n + 2, 0], s3 * d[n + 3, 0]
    for n in range(N - N % 4, N):  # the last rows, when N is not a multiple of 4
        for t in range(x.shape[0]):
            acc = np.float32(0.0)
            for k in range(K):
                acc += np.float32(q[n, k]) * x[t, k]
            out[t, n] = acc * d[n, 0]
# --8<-- [end:int8-kernel]


# --8<-- [start:llvm-ir-loop]
@contextmanager
def counted(builder: ir.IRBuilder, n: ir.Value) -> Iterator[ir.Value]:
    """`for i in range(n)` in LLVM IR: the with-block's code is the loop body."""
    before = builder.block
    test, body, after = (builder.append_basic_block(s)
                         for s in ("test", "body", "after"))
    builder.branch(test)
    builder.position_at_end(test)
    i = builder.phi(n.type)  # i is 0 coming from before, i + 1 from the body
    i.add_incoming(n.type(0), before)
    builder.cbranch(builder.icmp_signed("<", i, n), body, after)
    builder.position_at_end(body)
    yield i
    i.add_incoming(builder.add(i, n.type(1)), builder.block)
    builder.branch(test)
    builder.position_at_end(after)


def declare(module: ir.Module, name: str, result: ir.Type, args: list) -> ir.Function:
    """The module's function `name`, declared if the module has none yet."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(
        module, ir.FunctionType(result, args), name)


def splat(builder: ir.IRBuilder, value: ir.Value, lanes: int) -> ir.Value:
    """A vector with `value` in every one of its `lanes`."""
    vector, i32 = ir.VectorType(value.type, lanes), ir.IntType(32)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, i32(0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def prefetch(builder: ir.IRBuilder, address: ir.Value) -> None:
    """Ask the processor to start loading `address` (an i8*) into its caches."""
    i32 = ir.IntType(32)
    fn = declare(builder.module, "llvm.prefetch.p0i8", ir.VoidType(),
                 [address.type, i32, i32, i32])
    builder.call(fn, [address, i32(0), i32(3), i32(1)])  # read, keep, data


def lane_sum(builder: ir.IRBuilder, vector: ir.Value) -> ir.Value:
    """The sum of a vector's lanes, in order, once per row."""
    total = builder.extract_element(vector, ir.IntType(32)(0))
    for i in range(1, vector.type.count):
        total = builder.fadd(total, builder.extract_element(vector, ir.IntType(32)(i)))
    return total
# --8<-- [end:llvm-ir-loop]


# --8<-- [start:q8-0-integer-dot]
# how far ahead of the group being multiplied to ask for weights: one core's
# hardware prefetcher alone left this kernel well below its memory bandwidth
PREFETCH = 8192  # bytes, about ten GPT-2 rows ahead: measured, not derived


# the annotations in quotes: without llvmlite, a session that pastes this still runs
def row_dot_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """An LLVM function: sum over g of s[g] * t[g] * (w[32g:32g+32] . x[32g:32g+32]).
    w: G*32 int8, s: G float32, x: G*32 int16, t: G float32, G -> float32"""
    i8, i16, i32, i64, f32 = (ir.IntType(8), ir.IntType(16), ir.IntType(32),
                              ir.IntType(64), ir.FloatType())
    v16i8, v16i16 = ir.VectorType(i8, 16), ir.VectorType(i16, 16)
    v8i32, v8f32 = ir.VectorType(i32, 8), ir.VectorType(f32, 8)
    fn = declare(module, "minigpt_q8_0_row_dot", f32, [
        i8.as_pointer(), f32.as_pointer(), i16.as_pointer(), f32.as_pointer(), i64])
    if not fn.is_declaration:
        return fn  # built already, for another kernel of this module
    fn.linkage = "internal"  # called only from this module: no symbol to look up
    fn.attributes.add("noinline")  # one row per call: no loop may be reordered
    w, s, x, t, G = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    # 16 int16 pairs multiplied and added in pairs: 8 int32 (x86's vpmaddwd)
    madd = declare(module, "llvm.x86.avx2.pmadd.wd", v8i32, [v16i16, v16i16])
    acc = builder.alloca(v8f32)
    builder.store(ir.Constant(v8f32, None), acc)  # zeros
    with counted(builder, G) as g:
        start = builder.mul(g, i64(32))  # the group's first number
        prefetch(builder, builder.gep(w, [builder.add(start, i64(PREFETCH))]))
        dots = None
        for half in (0, 16):  # a group of 32 is two vectors of 16
            at = builder.add(start, i64(half))
            wv = builder.load(builder.bitcast(builder.gep(w, [at]),
                                              v16i8.as_pointer()), align=1)
            xv = builder.load(builder.bitcast(builder.gep(x, [at]),
                                              v16i16.as_pointer()), align=2)
            pair = builder.call(madd, [builder.sext(wv, v16i16), xv])
            dots = pair if dots is None else builder.add(dots, pair)  # exact
        scale = builder.fmul(builder.load(builder.gep(s, [g])),
                             builder.load(builder.gep(t, [g])))
        term = builder.fmul(builder.sitofp(dots, v8f32), splat(builder, scale, 8))
        builder.store(builder.fadd(builder.load(acc), term), acc)
    builder.ret(lane_sum(builder, builder.load(acc)))
    return fn


def q8_0_row_dot(typingctx, q, d, n, xq, xd, t):
    """Numba's typing and call of row_dot_ir: row n of W times row t of x, both
    Q8_0. q: (N, K) int8, d: (N, K/32), xq: (T, K) int16, xd: (T, K/32) -> float32"""
    from numba import types  # only Numba calls this, while it compiles

    want = ((q, types.int8), (d, types.float32), (xq, types.int16), (xd, types.float32))
    if not all(isinstance(a, types.Array) and a.layout == "C" and a.ndim == 2
               and a.dtype == dtype for a, dtype in want):
        return None  # no match: the code walks raw pointers of these types

    def codegen(context, builder, sig, args):
        q, d, xq, xd = (context.make_array(sig.args[i])(context, builder, args[i])
                        for i in (0, 1, 3, 4))
        K = builder.extract_value(q.shape, 1)
        G = builder.udiv(K, K.type(32))
        n, t = args[2], args[5]
        return builder.call(row_dot_ir(builder.module), [
            builder.gep(q.data, [builder.mul(n, K)]),  # &q[n, 0]
            builder.gep(d.data, [builder.mul(n, G)]),  # &d[n, 0]
            builder.gep(xq.data, [builder.mul(t, K)]),  # &xq[t, 0]
            builder.gep(xd.data, [builder.mul(t, G)]), G])  # &xd[t, 0]
    return types.float32(q, d, n, xq, xd, t), codegen


def q8_0_rows_int(xq: np.ndarray, xd: np.ndarray, q: np.ndarray, d: np.ndarray,
                  out: np.ndarray) -> None:
    """out = x @ W.T, integer dot products. xq: (T, K) int16, xd: (T, K/32),
    q: (N, K) int8, d: (N, K/32) -> out: (T, N)"""
    for n in prange(q.shape[0]):
        for t in range(xq.shape[0]):
            out[t, n] = row_dot(q, d, n, xq, xd, t)
# --8<-- [end:q8-0-integer-dot]


# --8<-- [start:compile-quant-kernels]
NO_NUMBA = ("numba is not installed: quantised matrix products run in plain NumPy, "
            "several times slower than float32 (pip install numba)")


@functools.cache
def compile_kernels() -> dict:
    """The row kernels, compiled by Numba for all cores (empty without numba)."""
    global prange, row_dot  # the names the kernels look up as Numba compiles them
    try:
        from llvmlite.binding import get_host_cpu_features
        from numba import njit, prange
        from numba.extending import intrinsic
    except ImportError:
        return {}
    share_threads()  # chapter 21: as many threads as set_kernel_threads asked for
    # parallel: prange splits the rows over threads; fastmath: packed, reordered
    # sums; cache: compiled once, then loaded from __pycache__ by later runs, for
    # code in a file (code typed into a session has no file to cache beside)
    cache = q8_0_rows.__code__.co_filename.endswith(".py")
    jit = njit(parallel=True, fastmath=True, cache=cache)
    kernels = {"q8_0": jit(q8_0_rows), "int8": jit(int8_rows)}
    if get_host_cpu_features().get("avx2"):  # x86 with AVX2: integer Q8_0 sums
        row_dot = intrinsic(q8_0_row_dot)
        kernels["q8_0 integer"] = jit(q8_0_rows_int)
    return kernels
# --8<-- [end:compile-quant-kernels]


# --8<-- [start:int8-row-dot]
def int8_row_dot_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """An LLVM function: s * (w . x), 32 numbers a step. w: K int8, s: float32,
    x: K float32, K (a multiple of 32) -> float32"""
    i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()
    v16i8, v16f32 = ir.VectorType(i8, 16), ir.VectorType(f32, 16)
    fn = declare(module, "minigpt_int8_row_dot", f32,
                 [i8.as_pointer(), f32, f32.as_pointer(), i64])
    if not fn.is_declaration:
        return fn
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    w, s, x, K = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    fma = declare(module, "llvm.fma.v16f32", v16f32, [v16f32] * 3)  # a * b + c
    sums = [builder.alloca(v16f32) for _ in range(2)]  # two chains of adds
    for acc in sums:
        builder.store(ir.Constant(v16f32, None), acc)
    with counted(builder, builder.udiv(K, i64(32))) as step:
        start = builder.mul(step, i64(32))
        prefetch(builder, builder.gep(w, [builder.add(start, i64(PREFETCH))]))
        for half, acc in zip((0, 16), sums, strict=True):
            at = builder.add(start, i64(half))
            wv = builder.load(builder.bitcast(builder.gep(w, [at]),
                                              v16i8.as_pointer()), align=1)
            xv = builder.load(builder.bitcast(builder.gep(x, [at]),
                                              v16f32.as_pointer()), align=4)
            # int8 -> float32 in the register, then one fused multiply-add
            builder.store(builder.call(fma, [builder.sitofp(wv, v16f32), xv,
                                             builder.load(acc)]), acc)
    total = builder.fadd(builder.load(sums[0]), builder.load(sums[1]))
    builder.ret(builder.fmul(s, lane_sum(builder, total)))
    return fn
# --8<-- [end:int8-row-dot]


# --8<-- [start:rows-ir]
def rows_ir(module: "ir.Module", scheme: str) -> "ir.Function":  # noqa: UP037
    """void minigpt_<scheme>_rows(x, xd, q, d, out, N, K, T): out[t, n] = row n of
    W times row t of x, for t < T and n < N. The arguments are pointers to
    Numba's kernels' arrays, in their order, then the sizes."""
    i8, i16, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(64), ir.FloatType()
    ptr, fp = i8.as_pointer(), f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ptr, fp, ptr, fp, fp, i64, i64, i64]), f"minigpt_{scheme}_rows")
    x, xd, q, d, out, N, K, T = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    G = builder.udiv(K, i64(32))
    with counted(builder, N) as n, counted(builder, T) as t:  # a row, every token
        w = builder.gep(q, [builder.mul(n, K)])  # &q[n, 0]
        if scheme == "q8_0":  # x: int16 Q8_0 numbers, xd: their scales
            xt = builder.gep(builder.bitcast(x, i16.as_pointer()), [builder.mul(t, K)])
            dot = builder.call(row_dot_ir(module), [
                w, builder.gep(d, [builder.mul(n, G)]), xt,
                builder.gep(xd, [builder.mul(t, G)]), G])
        else:  # int8: x in float32, one scale per row
            xt = builder.gep(builder.bitcast(x, fp), [builder.mul(t, K)])
            dot = builder.call(int8_row_dot_ir(module), [
                w, builder.load(builder.gep(d, [n])), xt, K])
        builder.store(dot, builder.gep(out, [builder.add(builder.mul(t, N), n)]))
    builder.ret_void()
    return fn
# --8<-- [end:rows-ir]


# --8<-- [start:quantize-ir]
def quantize_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """void minigpt_q8_0_quantize(x, xq, xd, G, top): G groups of 32 float32 rounded
    as quantize_groups(x, 32, np.float16) rounds them, the numbers widened to int16.
    x: G*32 float32, top: 127.0 -> xq: G*32 int16, xd: G float32"""
    f32, i16, i64 = ir.FloatType(), ir.IntType(16), ir.IntType(64)
    v32f32, v32i16 = ir.VectorType(f32, 32), ir.VectorType(i16, 32)
    # top is an argument, not a constant: x86 loads float constants from a data
    # section beside the code, and elf_text refuses code that refers outside itself
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        f32.as_pointer(), i16.as_pointer(), f32.as_pointer(), i64, f32]),
        "minigpt_q8_0_quantize")
    x, xq, xd, G, top = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    most = declare(module, "llvm.vector.reduce.fmax.v32f32", f32, [v32f32])
    least = declare(module, "llvm.vector.reduce.fmin.v32f32", f32, [v32f32])
    larger = declare(module, "llvm.maxnum.f32", f32, [f32, f32])
    rint = declare(module, "llvm.rint.v32f32", v32f32, [v32f32])  # to nearest, even
    zeros = ir.Constant(v32f32, None)
    with counted(builder, G) as g:
        at = builder.mul(g, i64(32))
        v = builder.load(builder.bitcast(builder.gep(x, [at]), v32f32.as_pointer()),
                         align=4)
        # max |x| as max(largest, -smallest): fabs would need a constant bit mask
        amax = builder.call(larger, [builder.call(most, [v]), builder.fsub(
            f32(0.0), builder.call(least, [v]))])
        # the scale as stored: amax / 127 rounded to float16 and back (F16C)
        d = builder.fpext(builder.fptrunc(builder.fdiv(amax, top), ir.HalfType()), f32)
        builder.store(d, builder.gep(xd, [g]))
        ds = splat(builder, d, 32)
        # x / d in [-127, 127]; a group of zeros has d = 0 and gets q = 0
        scaled = builder.select(builder.fcmp_ordered(">", ds, zeros),
                                builder.fdiv(v, ds), zeros)
        q = builder.fptosi(builder.call(rint, [scaled]), v32i16)
        out = builder.bitcast(builder.gep(xq, [at]), v32i16.as_pointer())
        builder.store(q, out, align=2)
    builder.ret_void()
    return fn
# --8<-- [end:quantize-ir]


# --8<-- [start:compile-object]
def compile_object(ir_text: str, assembly: bool = False) -> bytes:
    """LLVM IR as text -> an object file of machine code for this processor
    (or, to read, the same code as assembly text)."""
    import llvmlite.binding as llvm  # LLVM itself: only the process compiling

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=3, reloc="pic", codemodel="small")  # runs wherever it is mapped
    module = llvm.parse_assembly(ir_text)
    module.triple, module.data_layout = machine.triple, str(machine.target_data)
    module.verify()
    # LLVM's standard -O3 passes: registers for the allocas, the loops tidied
    passes = llvm.create_pass_builder(
        machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    if assembly:
        return machine.emit_assembly(module).encode()
    return machine.emit_object(module)


def in_child(fn: Callable[[str], bytes], arg: str) -> bytes:
    """fn(arg) run in a forked copy of this process: what fn loads (LLVM, tens of
    MB) leaves with the child, and only the bytes it returns come back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read)
        try:
            out, status = fn(arg), 0
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            out, status = f"{type(exc).__name__}: {exc}".encode(), 1
        with os.fdopen(write, "wb") as f:
            f.write(out)
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"compiling in a child process failed: "
                           f"{out.decode(errors='replace') or status}")
    return out
# --8<-- [end:compile-object]


# --8<-- [start:elf-text]
SHT_RELA, SHT_REL, SHF_ALLOC = 4, 9, 0x2  # ELF: relocation sections; loaded


def elf_text(obj: bytes, names: list[str]) -> tuple[bytes, dict[str, int]]:
    """The .text bytes of a 64-bit ELF object and where each named function starts
    in them; an error if the code needs relocating (it could not run as it is)."""
    if obj[:4] != b"\x7fELF" or obj[4:6] != b"\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF object")
    (table,) = struct.unpack_from("<Q", obj, 0x28)  # where the section headers are
    size, count, names_at = struct.unpack_from("<HHH", obj, 0x3A)
    # a header: name, type, flags, address, offset, size, link, info, align, entsize
    headers = [struct.unpack_from("<IIQQQQIIQQ", obj, table + i * size)
               for i in range(count)]

    def name(strings: int, at: int) -> str:  # a 0-terminated string of a table
        start = headers[strings][4] + at
        return obj[start:obj.index(b"\0", start)].decode()
    sections = {name(names_at, h[0]): i for i, h in enumerate(headers)}
    text = sections[".text"]
    for i, (at, kind, flags, _, _, length, _, info, _, _) in enumerate(headers):
        if kind in (SHT_RELA, SHT_REL) and info == text:
            raise ValueError("the code needs relocating: it refers outside itself")
        if flags & SHF_ALLOC and length and i != text and \
                not name(names_at, at).startswith(".eh_frame"):
            raise ValueError(f"the code needs section {name(names_at, at)}")
    symbols = headers[sections[".symtab"]]  # 24 bytes each: name, ..., value
    starts = {}
    for at in range(symbols[4], symbols[4] + symbols[5], 24):
        label, _, _, section, value, _ = struct.unpack_from("<IBBHQQ", obj, at)
        if section == text:
            starts[name(symbols[6], label)] = value
    missing = [n for n in names if n not in starts]
    if missing:
        raise ValueError(f"no function {missing[0]} in the object")
    start, length = headers[text][4], headers[text][5]
    return obj[start:start + length], {n: starts[n] for n in names}
# --8<-- [end:elf-text]


# --8<-- [start:machine-code]
@dataclass(frozen=True)
class MachineKernel:
    """A rows_ir function, mapped from a file and called through ctypes with the
    same arrays as Numba's kernel for its scheme."""

    code: mmap.mmap  # the mapped file: it must live as long as the function
    fn: Callable  # void (x, xd, q, d, out, N, K, T)
    scheme: str

    def __call__(self, x, *arrays) -> None:
        """(xq, xd, q, d, out) for q8_0, (x, q, d, out) for int8, as Numba's."""
        xd, q, d, out = arrays if self.scheme == "q8_0" else (None, *arrays)
        (T, K), N = x.shape, q.shape[0]
        G = K // 32 if self.scheme == "q8_0" else 1  # scales per row
        want = [(x, np.int16 if self.scheme == "q8_0" else np.float32, (T, K)),
                (q, np.int8, (N, K)), (d, np.float32, (N, G)),
                (out, np.float32, (T, N))] + ([] if xd is None else
                                              [(xd, np.float32, (T, G))])
        # the machine code trusts its pointers: a wrong array would crash Python
        if K % 32 or not all(a.dtype == t and a.shape == s and a.flags.c_contiguous
                             for a, t, s in want):
            raise ValueError(f"{self.scheme} machine code: arrays of the wrong "
                             f"dtype, shape or layout for T={T}, N={N}, K={K}")
        self.fn(x.ctypes.data, None if xd is None else xd.ctypes.data,
                q.ctypes.data, d.ctypes.data, out.ctypes.data, N, K, T)


@dataclass(frozen=True)
class MachineRounding:
    """quantize_ir's function, mapped and called through ctypes: a token's
    activations in Q8_0, as quantize_groups(x, 32, np.float16) rounds them."""

    code: mmap.mmap
    fn: Callable  # void (x, xq, xd, G, top)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (T, K) float32 -> xq: (T, K) int16, xd: (T, K/32) float32"""
        if (x.dtype != np.float32 or x.ndim != 2 or x.shape[1] % 32
                or not x.flags.c_contiguous):
            raise ValueError(f"q8_0 rounding machine code: x must be contiguous "
                             f"float32 rows of a multiple of 32 numbers, got "
                             f"{x.dtype} {list(x.shape)}")
        xq = np.empty(x.shape, np.int16)
        xd = np.empty((len(x), x.shape[1] // 32), np.float32)
        self.fn(x.ctypes.data, xq.ctypes.data, xd.ctypes.data, xd.size, 127.0)
        return xq, xd


def code_cache() -> Path:
    """Where compiled machine code is kept: $MINIGPT_CACHE, else the user's cache."""
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("MINIGPT_CACHE") or Path(home) / "minigpt")


def this_processor() -> str:
    """The machine's name and feature flags (Linux), which the code is built for."""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith(("model name", "flags"))]
    return platform.machine() + "".join(sorted(set(lines)))


def kernels_ir() -> str:
    """The LLVM IR of a module with one rows_ir function per scheme, as text."""
    module = ir.Module("minigpt_kernels")
    for scheme in SCHEMES:
        rows_ir(module, scheme)
    quantize_ir(module)
    return str(module)


ENTRIES = [f"minigpt_{s}_rows" for s in SCHEMES] + ["minigpt_q8_0_quantize"]


def intact(path: Path, code: bytes) -> dict | None:
    """The index beside cached code, if it describes exactly these bytes."""
    try:
        index = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    same = index.get("sha256") == hashlib.sha256(code).hexdigest()
    return index if same and set(index.get("starts", ())) == set(ENTRIES) else None


def build_machine_code() -> Path:
    """The kernels compiled for this processor into the cache, once: beside the
    code, an index of where each function starts and the code's SHA-256."""
    text = kernels_ir()
    key = hashlib.sha256((text + this_processor()).encode()).hexdigest()[:16]
    path = code_cache() / f"kernels-{key}.bin"
    if path.exists() and intact(path, path.read_bytes()):
        return path
    code, starts = elf_text(in_child(compile_object, text), ENTRIES)
    index = {"sha256": hashlib.sha256(code).hexdigest(), "starts": starts}
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".bin", code), (".json", json.dumps(index).encode())):
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_bytes(data)
        part.replace(path.with_suffix(suffix))  # whole, or not there at all
    return path


@functools.cache
def machine_code() -> dict:
    """scheme -> MachineKernel, compiled on first use or mapped from the cache;
    empty where there is none (not Linux on x86 with AVX2, or no llvmlite)."""
    if not (sys.platform == "linux" and platform.machine() == "x86_64"
            and ir is not None and " avx2" in this_processor()):
        return {}
    try:
        path = build_machine_code()
        with open(path, "rb") as f:  # read and execute, never write
            code = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        index = intact(path, code)  # the bytes mapped are the bytes checked
        if index is None:
            raise ValueError(f"{path} changed while it was being mapped")
    except (OSError, ValueError, RuntimeError) as exc:
        warnings.warn(f"no machine code of our own ({exc}); Numba's kernels run",
                      stacklevel=2)
        return {}
    base = np.frombuffer(code, np.uint8).ctypes.data  # where the file is mapped
    starts = {name: base + at for name, at in index["starts"].items()}
    p, i = ctypes.c_void_p, ctypes.c_int64
    signature = ctypes.CFUNCTYPE(None, p, p, p, p, p, i, i, i)  # C's calling rules
    named = {"q8_0": "q8_0 integer", "int8": "int8"}  # as Numba's, same arrays
    kernels = {named[s]: MachineKernel(code, signature(starts[f"minigpt_{s}_rows"]), s)
               for s in SCHEMES}
    rounding = ctypes.CFUNCTYPE(None, p, p, p, i, ctypes.c_float)(
        starts["minigpt_q8_0_quantize"])
    return kernels | {"q8_0 rounding": MachineRounding(code, rounding)}
# --8<-- [end:machine-code]


# --8<-- [start:quantized-matmul]
def pick_kernels() -> dict:
    """Our own machine code for one thread; Numba's kernels for more threads, or
    where there is no machine code; empty where there is neither."""
    code = machine_code() if kernel_threads() == 1 else {}
    return code or compile_kernels() or machine_code()


def matmul_kernel(x: np.ndarray, w: QuantMatrix, kernels: dict) -> np.ndarray:
    """x @ w through a compiled kernel. x: (T, K) float32, w: (K, N) -> (T, N)"""
    out = np.empty((len(x), w.q.shape[0]), np.float32)
    q = np.asarray(w.q)  # a memory map is an ndarray subclass; the kernel wants ndarray
    if w.scheme == "int8":
        kernels["int8"](x, q, w.d, out)
        return out
    # the activations rounded to Q8_0 too, every step: by our machine code or NumPy
    rounding = kernels.get("q8_0 rounding", lambda x: quantize_groups(x, 32))
    xq, xd = rounding(x)
    if "q8_0 integer" in kernels:  # x86 with AVX2: integer dot products
        kernels["q8_0 integer"](xq.astype(np.int16, copy=False), xd, q, w.d, out)
    else:
        kernels["q8_0"](dequantize(xq, xd), q, w.d, out)
    return out


def matmul_numpy(x: np.ndarray, w: QuantMatrix, rows: int = 1024) -> np.ndarray:
    """The kernel's sums in plain NumPy. x: (T, K) float32, w: (K, N) -> (T, N)"""
    if w.scheme == "q8_0":
        x = dequantize(*quantize_groups(x, 32, np.float16))  # what the kernel sees
    out = np.empty((len(x), w.q.shape[0]), np.float32)
    for r in range(0, w.q.shape[0], rows):  # a block of rows at a time: small copies
        out[:, r:r + rows] = x @ dequantize(w.q[r:r + rows], w.d[r:r + rows]).T
    return out


def quantized_matmul(x: np.ndarray, w: QuantMatrix) -> np.ndarray:
    """x @ w for a quantised weight. x: (..., K), w: (K, N) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K], shapes checked as chapter 21's RowMatrix does
    kernels = pick_kernels()
    out = matmul_kernel(x2, w, kernels) if kernels else matmul_numpy(x2, w)
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]
# --8<-- [end:quantized-matmul]




# --8<-- [start:quantize-model]
def quantize_model(model: GPT | LlamaModel, scheme: str = "q8_0") -> GPT | LlamaModel:
    """The same model with every matrix quantised; its forward code is unchanged."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    if not pick_kernels():
        warnings.warn(NO_NUMBA, stacklevel=2)
    # chapter 21's walk: tables by their rows, weights by their outputs' rows
    params = map_matrices(model.params, lambda rows: quantize_matrix(rows, scheme))
    return replace(model, params=params)
# --8<-- [end:quantize-model]


# --8<-- [start:write-safetensors]
ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int8): "I8"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> None:
    """Write tensors as safetensors, widest dtypes first so every one is aligned."""
    order = sorted(tensors, key=lambda n: -tensors[n].dtype.itemsize)  # stable
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in order:
        x = tensors[name]
        header[name] = {"dtype": ST_DTYPES[x.dtype], "shape": list(x.shape),
                        "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name in order:  # little-endian bytes, one tensor at a time
            f.write(np.ascontiguousarray(tensors[name]).astype(
                tensors[name].dtype.newbyteorder("<")).tobytes())
# --8<-- [end:write-safetensors]


# --8<-- [start:save-quantized]
def name_table(model: GPT | LlamaModel) -> dict:
    """Hugging Face tensor name -> (path in params, shape), for either model."""
    if isinstance(model, LlamaModel):
        return llama_names(model.config)
    return gpt2_names(model.config)


def get(tree: dict | list, where: tuple):
    """tree[where[0]][where[1]]..., the inverse of weights.put."""
    for key in where:
        tree = tree[key]
    return tree


def save_quantized(model: GPT | LlamaModel, path: str | Path) -> Path:
    """A quantised model's tensors as safetensors: data and scale beside each other."""
    tensors, scheme = {}, None
    for name, (where, _) in name_table(model).items():
        x = get(model.params, where)
        if isinstance(x, QuantMatrix):  # rows as stored: [out, in] for a weight
            scheme = x.scheme
            _, scale_dtype = SCHEMES[x.scheme]
            tensors[f"{name}.{x.scheme}.data"] = x.q
            tensors[f"{name}.{x.scheme}.scale"] = x.d.astype(scale_dtype)
        else:
            tensors[name] = np.asarray(x, np.float32)
    if scheme is None:
        raise ValueError("the model has no quantised matrix: run quantize_model first")
    write_safetensors(Path(path), tensors, {"format": "pt", "quantization": scheme})
    return Path(path)
# --8<-- [end:save-quantized]


# --8<-- [start:load-quantized]
# model_type -> (config reader, name table, blocks' key, matrices [out, in] on
# disk?, class): GPT-2's Conv1D stores [in, out], LLaMA's nn.Linear [out, in]
KINDS = {"gpt2": (read_config, gpt2_names, "blocks", False, CachedGPT),
         "llama": (read_llama_config, llama_names, "layers", True, LlamaModel)}


def quantized_params(tensors: dict, table: dict, params: dict, out_in: bool,
                     source: str) -> dict:
    """Tensors (data + scale pairs, or float32) into params, every shape checked."""
    for name, (where, shape) in table.items():
        weight = len(shape) == 2 and where[0] not in TABLES
        want = shape[::-1] if weight and out_in else shape  # in our x @ w layout
        scheme = next((s for s in SCHEMES if f"{name}.{s}.data" in tensors), None)
        if scheme:  # rows as stored: a weight's rows are its outputs, so .T
            x = QuantMatrix(scheme, tensors.pop(f"{name}.{scheme}.data"),
                            tensors.pop(f"{name}.{scheme}.scale"))
            x = x.T if weight else x
            check_quantized(x, source, name)
        elif name in tensors:
            x = np.asarray(tensors.pop(name), np.float32)
        else:
            raise WeightsError(f"{source}: tensor {name!r}: missing")
        if tuple(x.shape) != tuple(want):
            raise WeightsError(f"{source}: tensor {name!r}: shape {list(x.shape)}, "
                               f"expected {list(want)} from the config")
        put(params, where, x)
    if tensors:
        raise WeightsError(f"{source}: tensor {next(iter(tensors))!r}: not a "
                           f"parameter of this model")
    return params


def check_quantized(x: QuantMatrix, source: str, name: str) -> None:
    """int8 data and float scales that fit the scheme's group size."""
    group = SCHEMES[x.scheme][0] or x.q.shape[1]
    if (x.q.dtype != np.int8 or x.q.ndim != 2 or x.q.shape[1] % group
            or x.d.shape != (x.q.shape[0], x.q.shape[1] // group)):
        raise WeightsError(f"{source}: tensor {name!r}: {x.scheme} data {x.q.dtype} "
                           f"{list(x.q.shape)} and scale {list(x.d.shape)} do not "
                           f"fit groups of {group}")


def load_quantized(path: str | Path) -> GPT | LlamaModel:
    """A quantised model from a folder written by quantize_checkpoint, memory-mapped."""
    folder = Path(path)
    raw = read_json(folder / "config.json")
    scheme, kind = saved_scheme(folder), KINDS.get(raw.get("model_type", "gpt2"))
    if scheme not in SCHEMES or kind is None:
        raise WeightsError(f"{folder}: not a quantised GPT-2 or LLaMA checkpoint "
                           f"(config.json names no known quantization_config scheme)")
    read, names, blocks, out_in, cls = kind
    config = read(folder / "config.json")
    source = str(folder / "model.safetensors")
    tensors = read_safetensors(source)  # I8 and F32: views of the mapped file
    params = quantized_params(tensors, names(config),
                              {blocks: [{} for _ in range(config.n_layer)]},
                              out_in, source)
    if getattr(config, "tie_word_embeddings", False):  # LLaMA only
        params["lm_head"] = params["embed_tokens"].T  # tied: the table, as a head
    if not pick_kernels():
        warnings.warn(NO_NUMBA, stacklevel=2)
    return cls(config, params)


# --8<-- [end:load-quantized]


# --8<-- [start:quantize-checkpoint]
def quantize_checkpoint(src: str | Path, dst: str | Path, scheme: str = "q8_0",
                        load: Callable | None = None) -> Path:
    """Quantise a checkpoint folder into another: tokenizer files copied as they are."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the output folder must differ from the input")
    if load is None:
        from minigpt.models import load_model as load
    model = quantize_model(load(src), scheme)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # vocabulary, merges, tokenizer.json, model card...
        # but no float weights: not model.safetensors, its shards or their index
        if f.is_file() and f.name != "config.json" and not \
                f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(f, dst / f.name)
    raw = read_json(src / "config.json")
    raw["quantization_config"] = {"quant_method": "minigpt", "scheme": scheme}
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n", "utf-8")
    save_quantized(model, dst / "model.safetensors")
    return dst
# --8<-- [end:quantize-checkpoint]
