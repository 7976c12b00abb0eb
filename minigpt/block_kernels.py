"""Four-bit kernels: GGUF's block formats multiplied as they are stored.

A `BlockMatrix` keeps a GGUF tensor of Q4_K, Q5_K, Q6_K, Q5_0 or Q4_0 as its bytes,
one row of blocks per output (a view of the mapped file), and stands in for the
float32 array as chapter 29's `QuantMatrix` does. A token, or a few (up to
`kernels.FEW` rows of `x`), runs machine code of our own, token by token: the
activations are rounded to Q8_0 as chapter 30 rounds them, each block's small
integers are unpacked from their nibbles (and high bits) in registers and summed
against them in integers, then scaled by the block's scales and the activations'
ones; a token so reads about 4.5 bits a weight. A longer prompt decodes a tile
of rows at a time into float32 for BLAS. `load_gguf_blocks` reads a GGUF model
with these matrices packed and every other tensor as float32, as chapter 33's
`load_gguf` does, through `load_gguf_q8_0`'s tables of names; `load_model` reads a
.gguf file with it.

Leaves out on purpose: the other formats (decoded to float32 at load),
integer kernels for a prompt, and processors without AVX2 (the tile path runs).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minigpt.gguf import GGUFFile, read_tensor
from minigpt.gguf_q8_0 import load_gguf_q8_0
from minigpt.kernels import FEW, TILE, rounded
from minigpt.kquants import GGML_TYPES
from minigpt.kvcache import CachedGPT
from minigpt.llama import LlamaModel
from minigpt.machine_code import (
    PREFETCH,
    compile_object,
    counted,
    declare,
    elf_text,
    executable,
    in_child,
    ir,
    lane_sum,
    machine_code,
    prefetch,
    splat,
    this_processor,
)
from minigpt.rope import interleaved_to_half
from minigpt.threads import blas, split_rows, token_rows

__all__ = ["BLOCKS", "KINDS", "BlockMatrix", "activations", "block_code",
           "block_matmul", "block_matrix", "load_gguf_blocks"]


# --8<-- [start:block-matrix]
KINDS = {"Q4_0": 2, "Q5_0": 6, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}  # ggml's ids


@dataclass(frozen=True)
class BlockMatrix:
    """A matrix kept in a GGUF block format, as stored; it stands in for the array."""

    kind: str  # "Q4_K", "Q5_K", "Q6_K", "Q5_0" or "Q4_0"
    raw: np.ndarray  # [R, blocks per row * bytes per block] uint8: row r's blocks
    transposed: bool = False  # True: stands for the [K, R] matrix, a weight

    __array_ufunc__ = None  # NumPy then hands `x @ W` to W.__rmatmul__
    ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        t = GGML_TYPES[KINDS[self.kind]]
        rows = (len(self.raw), self.raw.shape[1] // t.size * t.block)  # [R, K]
        return rows[::-1] if self.transposed else rows

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes  # what a product has to read

    @property
    def T(self) -> BlockMatrix:  # noqa: N802 (NumPy's name)
        return replace(self, transposed=not self.transposed)  # no copy

    def __getitem__(self, rows) -> np.ndarray:
        """Some rows as float32, as a table is read (embeddings). -> (..., K)"""
        if self.transposed:
            raise TypeError("index a BlockMatrix by rows, not through .T")
        return decoded(self.kind, self.raw[rows])

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        """x @ W. x: (..., K), W: (K, N) -> (..., N)"""
        return block_matmul(x, self)


def decoded(kind: str, raw: np.ndarray) -> np.ndarray:
    """Rows of blocks -> float32 rows, by chapter 34's decoders. (..., B) -> (..., K)"""
    t = GGML_TYPES[KINDS[kind]]
    values = t.decode(np.asarray(raw).reshape(-1, t.size))  # [blocks, block]
    return values.reshape(*raw.shape[:-1], raw.shape[-1] // t.size * t.block)
# --8<-- [end:block-matrix]


# --8<-- [start:block-matmul]
def block_matmul(x: np.ndarray, w: BlockMatrix) -> np.ndarray:
    """x @ w: our machine code for a token or a few, else BLAS on decoded tiles,
    split by rows over the threads. x: (..., K), w: (K, N) -> (..., N)"""
    x2 = token_rows(x, w)  # [T, K], shapes checked and every value finite
    code = block_code()
    out = np.empty((len(x2), len(w.raw)), np.float32)  # [T, N]
    if len(x2) <= FEW and w.kind in code:
        split_rows(few_tokens(x2, w, code[w.kind], out), len(w.raw))
    else:
        split_rows(tiles(x2, w, out), len(w.raw))
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]


def few_tokens(x: np.ndarray, w: BlockMatrix, kernel, out: np.ndarray):
    """work(a, b): rows a:b of x @ w by our machine code, token after token: a
    thread's rows stay in its cache for the next. x: (T, K) -> out: (T, N)"""
    xq, xd = rounded(x, machine_code())  # Q8_0, as chapter 30 rounds a token
    raw = np.asarray(w.raw)  # a memory map is an ndarray subclass: the plain view
    works = [kernel(raw, *activations(w.kind, xq[t], xd[t]), out[t])
             for t in range(len(x))]
    return lambda a, b: [work(a, b) for work in works]


ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # sub-blocks as Q6_K's kernel sums them


def activations(kind: str, xq: np.ndarray, xd: np.ndarray) -> tuple:
    """A token in Q8_0 as `kind`'s kernel reads it: its numbers (int16, or int8
    for the K formats), and per group of 32 (of 16 for Q6_K, in ORDER) the
    scale and xd * the group's sum (Q6_K: the plain sum). xq: (K,), xd: (K/32,)"""
    if kind == "Q6_K":
        sums = xq.reshape(-1, 16).sum(axis=1, dtype=np.int32)  # [K / 16]
        at = (np.arange(len(sums) // 8)[:, None] * 8 + ORDER).ravel()
        return xq.astype(np.int8), np.repeat(xd, 2)[at], sums[at]
    sums = xd * xq.reshape(-1, 32).sum(axis=1).astype(np.float32)
    return xq.astype(np.int8 if kind.endswith("K") else np.int16), xd, sums


def tiles(x: np.ndarray, w: BlockMatrix, out: np.ndarray):
    """work(a, b): rows a:b of x @ w, a tile of rows decoded at a time into
    float32 for BLAS. x: (T, K) float32 -> out: (T, N)"""
    def work(a: int, b: int) -> None:
        for r in range(a, b, TILE):
            s = min(r + TILE, b)
            blas(decoded(w.kind, w.raw[r:s]), x, out[:, r:s])
    return work
# --8<-- [end:block-matmul]


# --8<-- [start:block-ir-helpers]
def vector_at(builder, base, offset, lanes: int, bits: int):
    """lanes integers of `bits` bits, loaded from byte `offset` of `base` (i8*)."""
    v = ir.VectorType(ir.IntType(bits), lanes)
    at = builder.gep(base, [ir.IntType(64)(offset)]) if offset else base
    return builder.load(builder.bitcast(at, v.as_pointer()), align=1)


def half_at(builder, base, offset: int):
    """The float16 at byte `offset` of `base`, as a float32."""
    v = vector_at(builder, base, offset, 1, 16)
    h = builder.bitcast(builder.extract_element(v, ir.IntType(32)(0)), ir.HalfType())
    return builder.fpext(h, ir.FloatType())


def madd_bytes(builder, q, x, value: int, k):
    """8 int32, each the sum of 4 products of q (32 bytes, 0..63) and
    x[value:value + 32] (int8): x86's vpmaddubsw, then vpmaddwd with ones."""
    v32, v16 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16)
    fn = declare(builder.module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v32, v32])
    xv = builder.load(builder.bitcast(builder.gep(x, [ir.IntType(64)(value)]),
                                      v32.as_pointer()), align=1)
    pairs = builder.call(fn, [q, xv])  # 16 int16: at most 2 * 63 * 127, exact
    wd = declare(builder.module, "llvm.x86.avx2.pmadd.wd",
                 ir.VectorType(ir.IntType(32), 8), [v16, v16])
    return builder.call(wd, [pairs, k["1"]])


def byte_shift(builder, v, n: int, k, mask: str):
    """Each byte of v (32 bytes) shifted right by n, then ANDed with k[mask]."""
    v16 = ir.VectorType(ir.IntType(16), 16)
    if n:  # x86 shifts 16-bit lanes; the mask drops what crosses from the next byte
        v = builder.bitcast(builder.lshr(builder.bitcast(v, v16), v16([n] * 16)),
                            v.type)
    return builder.and_(v, builder.bitcast(k[mask], v.type))
# --8<-- [end:block-ir-helpers]


# --8<-- [start:q4-k-block]
def sums8(builder, dots: list):
    """8 vectors of 8 int32 -> one whose lane j is the sum of dots[j]'s lanes."""
    v8i32 = dots[0].type
    hadd = declare(builder.module, "llvm.x86.avx2.phadd.d", v8i32, [v8i32] * 2)
    pairs = [builder.call(hadd, dots[i:i + 2]) for i in range(0, 8, 2)]
    quads = [builder.call(hadd, pairs[i:i + 2]) for i in (0, 2)]
    # each 128-bit half of quads[0] holds a part of the sums of dots 0-3: add them
    i32 = ir.IntType(32)
    first, second = (builder.shuffle_vector(*quads, ir.Constant(
        ir.VectorType(i32, 8), [s + i for i in (0, 1, 2, 3, 8, 9, 10, 11)]))
        for s in (0, 4))
    return builder.add(first, second)


def bytes8(builder, low, high):
    """Two int32 of 4 bytes each -> their 8 bytes as 8 int32 lanes."""
    i32 = ir.IntType(32)
    two = ir.Constant(ir.VectorType(i32, 2), ir.Undefined)
    two = builder.insert_element(builder.insert_element(two, low, i32(0)), high,
                                 i32(1))
    eight = builder.bitcast(two, ir.VectorType(ir.IntType(8), 8))
    return builder.zext(eight, ir.VectorType(i32, 8))


def k_scales_ir(builder, b, xd, xs):
    """Q4_K's and Q5_K's first 16 bytes -> 8 lanes of d * sc_j * xd_j (scales)
    and 8 of dmin * m_j * xs_j (mins), float32."""
    d, dmin = half_at(builder, b, 0), half_at(builder, b, 2)
    a, m4, c = (builder.extract_element(vector_at(builder, b, at, 1, 32),
                                        ir.IntType(32)(0)) for at in (4, 8, 12))
    i32, low, and_, or_ = a.type, builder.lshr, builder.and_, builder.or_
    # four 6-bit fields at a time: scales 0-3 in a, mins 0-3 in m4; 4-7 are 4 bits
    # of c and the top 2 bits of a (scales) or m4 (mins)
    top = [builder.shl(and_(low(v, i32(6)), i32(0x03030303)), i32(4)) for v in (a, m4)]
    sc = bytes8(builder, and_(a, i32(0x3F3F3F3F)),
                or_(and_(c, i32(0x0F0F0F0F)), top[0]))
    m = bytes8(builder, and_(m4, i32(0x3F3F3F3F)),
               or_(and_(low(c, i32(4)), i32(0x0F0F0F0F)), top[1]))
    v8f32 = ir.VectorType(ir.FloatType(), 8)
    fm, xdv, xsv = builder.fmul, *(builder.load(builder.bitcast(
        p, v8f32.as_pointer()), align=4) for p in (xd, xs))
    return (fm(fm(builder.uitofp(sc, v8f32), xdv), splat(builder, d, 8)),
            fm(fm(builder.uitofp(m, v8f32), xsv), splat(builder, dmin, 8)))


def q4_k_block(builder, b, x, xd, xs, k):
    """One Q4_K super-block (144 bytes) against 256 int8 activations: [(lane j:
    the integer dot of sub-block j, lane j: its scale)], and what to subtract."""
    dots = []
    for j in range(8):  # sub-blocks 2p and 2p+1: the low, high nibbles of 32 bytes
        q = vector_at(builder, b, 16 + 32 * (j // 2), 32, 8)
        dots.append(madd_bytes(builder, byte_shift(builder, q, 4 * (j % 2), k, "15"),
                               x, 32 * j, k))
    scales, mins = k_scales_ir(builder, b, xd, xs)
    return [(sums8(builder, dots), scales)], mins
# --8<-- [end:q4-k-block]


# --8<-- [start:block-rows-ir]
BLOCKS = {"Q4_K": q4_k_block}  # kind -> its block's IR; more are added below
# bytes per activation (int16 or int8), and xd and xs numbers per block
ACTIVATIONS = {"Q4_0": (2, 1), "Q5_0": (2, 1), "Q4_K": (1, 8), "Q5_K": (1, 8),
               "Q6_K": (1, 16)}
# the constants the blocks need, passed in memory: a vector or float constant in
# the code would be loaded from a data section, which elf_text refuses
CONSTANTS = np.array([1 << j for j in range(15)] + [-32768, 0x0F0F, 0x0303, 1, 16, 8]
                     + [24] * 4 + [16] * 4 + [0x0101], np.int16)


def constants(builder, table) -> dict:
    """In 16 int16 lanes: 1 << j in lane j; 15, 3 and 1 in each byte; 1; 16.
    Shifts for Q6_K's scales in 8 int32 lanes; 16.0, 8.0 as float32."""
    i16, i64 = ir.IntType(16), ir.IntType(64)
    k = {"lanes": builder.load(builder.bitcast(table, ir.VectorType(
        i16, 16).as_pointer()), align=2)}
    at = {name: builder.load(builder.gep(table, [i64(16 + i)]))
          for i, name in enumerate(("15", "3", "1", "16", "8"))}
    at["bit"] = builder.load(builder.gep(table, [i64(29)]))  # 1 in each byte
    k |= {n: splat(builder, at[n], 16) for n in ("15", "3", "1", "16", "bit")}
    shifts = builder.load(builder.bitcast(builder.gep(table, [i64(21)]),
                                          ir.VectorType(i16, 8).as_pointer()), align=2)
    k["even odd"] = builder.sext(shifts, ir.VectorType(ir.IntType(32), 8))
    return k | {f"{n}.0": builder.sitofp(at[n], ir.FloatType()) for n in ("16", "8")}


def block_rows_ir(module, kind: str):
    """void minigpt_<kind>_rows(w, x, xd, xs, table, out, N, B): out[n] = row n
    of W (B blocks each) times the token x (xd, xs: as `activations` gives them)."""
    i8, i16, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(64), ir.FloatType()
    args = [i8.as_pointer(), i8.as_pointer(), f32.as_pointer(), f32.as_pointer(),
            i16.as_pointer()]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        *args, f32.as_pointer(), i64, i64]), f"minigpt_{kind.lower()}_rows")
    w, x, xd, xs, table, out, N, B = fn.args
    # one row's dot product, a function of its own: within one loop, LLVM would
    # turn the rows of no blocks (B = 0) into a call of the C library's memset
    dot = ir.Function(module, ir.FunctionType(f32, [*args, i64]),
                      f"minigpt_{kind.lower()}_dot")
    dot.linkage = "internal"  # called only from this module: no symbol to look up
    dot.attributes.add("noinline")
    builder = ir.IRBuilder(fn.append_basic_block())
    with counted(builder, N) as n:
        row = builder.gep(w, [builder.mul(n, builder.mul(
            B, i64(GGML_TYPES[KINDS[kind]].size)))])
        builder.store(builder.call(dot, [row, x, xd, xs, table, B]),
                      builder.gep(out, [n]))
    builder.ret_void()
    row_dot_ir(dot, kind)
    return fn


def row_dot_ir(fn, kind: str) -> None:
    """The body of float dot(row, x, xd, xs, table, B): B blocks times x."""
    i16, i64, f32 = ir.IntType(16), ir.IntType(64), ir.FloatType()
    v8f32 = ir.VectorType(f32, 8)
    row, x, xd, xs, table, B = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    k, t, (size, per) = constants(builder, table), GGML_TYPES[KINDS[kind]], \
        ACTIVATIONS[kind]
    acc = builder.alloca(v8f32)  # 8 partial sums, added up at the end
    builder.store(v8f32(None), acc)
    with counted(builder, B) as blk:
        b = builder.gep(row, [builder.mul(blk, i64(t.size))])
        prefetch(builder, builder.gep(b, [i64(PREFETCH)]))
        xb = builder.gep(x, [builder.mul(blk, i64(t.block * size))])
        xb = builder.bitcast(xb, i16.as_pointer()) if size == 2 else xb
        g = builder.mul(blk, i64(per))
        pairs, minus = BLOCKS[kind](builder, b, xb, builder.gep(xd, [g]),
                                    builder.gep(xs, [g]), k)
        total = builder.load(acc) if minus is None else \
            builder.fsub(builder.load(acc), minus)  # Q4_K's mins, say
        for dot, s in pairs:  # a scalar scale serves every lane
            s = s if s.type == v8f32 else splat(builder, s, 8)
            total = builder.fadd(total, builder.fmul(builder.sitofp(dot, v8f32), s))
        builder.store(total, acc)
    builder.ret(lane_sum(builder, builder.load(acc)))
# --8<-- [end:block-rows-ir]


# --8<-- [start:block-code]
@dataclass(frozen=True)
class BlockKernel:
    """A block_rows_ir function called through ctypes: out = W x for one token."""

    code: object  # the memory holding the code: it must live as long as fn
    fn: object  # void (w, x, xd, xs, table, out, N, B); a call releases the GIL
    kind: str

    def __call__(self, raw, xq, xd, xs, out):
        """raw: (N, B * size) uint8, and the token as `activations` gives it:
        xq: (K,), xd, xs: (G,) -> work(a, b): rows a:b into out (N,) float32"""
        t, (size, per) = GGML_TYPES[KINDS[self.kind]], ACTIVATIONS[self.kind]
        N, K = len(raw), len(xq)
        want = [(raw, np.uint8, (N, K // t.block * t.size)), (out, np.float32, (N,)),
                (xq, np.int16 if size == 2 else np.int8, (K,)),
                (xd, np.float32, (K // t.block * per,)),
                (xs, np.int32 if self.kind == "Q6_K" else np.float32, xd.shape)]
        # the machine code trusts its pointers: a wrong array would crash Python
        if K % t.block or not all(a.dtype == d and a.shape == s and
                                  a.flags.c_contiguous for a, d, s in want):
            raise ValueError(f"{self.kind} machine code: arrays of the wrong dtype, "
                             f"shape or layout for N={N}, K={K}")
        arrays = (raw, xq, xd, xs, CONSTANTS, out)  # alive as long as work is
        at = [a.ctypes.data for a in arrays]  # the addresses, once per token

        def work(a: int, b: int) -> None:  # a call releases the GIL
            self.fn(at[0] + a * arrays[0].shape[1], *at[1:5], at[5] + 4 * a, b - a,
                    K // t.block)
        return work


@functools.cache
def block_code() -> dict:
    """kind -> BlockKernel for each kind of BLOCKS, compiled on first use; {}
    where there is no machine code (not Linux on x86-64 with AVX2, no llvmlite)."""
    if not (sys.platform == "linux" and platform.machine() == "x86_64"
            and ir is not None and " avx2" in this_processor()):
        return {}
    module = ir.Module("minigpt_block_kernels")
    names = {kind: block_rows_ir(module, kind).name for kind in BLOCKS}
    try:
        code, starts = elf_text(in_child(compile_object, str(module)),
                                list(names.values()))
        memory, base = executable(code)
    except (OSError, ValueError, RuntimeError) as exc:
        warnings.warn(f"no block machine code ({exc}); BLAS on decoded tiles runs",
                      stacklevel=2)
        return {}
    p, i = ctypes.c_void_p, ctypes.c_int64
    rows = ctypes.CFUNCTYPE(None, p, p, p, p, p, p, i, i)  # C's calling rules
    return {kind: BlockKernel(memory, rows(base + starts[name]), kind)
            for kind, name in names.items()}
# --8<-- [end:block-code]


# --8<-- [start:q6-k-block]
def q6_k_block(builder, b, x, xd, xs, k):
    """One Q6_K super-block (210 bytes) against 256 int8 activations. Lanes in
    the order 0, 2, 4, 6, 1, 3, 5, 7 of each 8 sub-blocks of 16 (the order x86's
    horizontal adds leave); xd and xs come in that order: per sub-block, its
    activations' scale and their sum."""
    d, dots, i32 = half_at(builder, b, 208), [], ir.IntType(32)
    for g in range(8):  # groups of 32 values: half h of the block, quarter s
        h, s = g // 4, g % 4
        nib = byte_shift(builder, vector_at(builder, b, 64 * h + 32 * (s % 2), 32, 8),
                         4 * (s // 2), k, "15")  # the low 4 bits
        top = byte_shift(builder, vector_at(builder, b, 128 + 32 * h, 32, 8),
                         2 * s, k, "3")  # the high 2 bits, at bits 2s and 2s+1
        top = builder.bitcast(builder.shl(builder.bitcast(top, k["1"].type),
                                          k["1"].type([4] * 16)), top.type)
        dots.append(madd_bytes(builder, builder.or_(nib, top), x, 32 * g, k))
    v4i32, v8i32 = ir.VectorType(i32, 4), ir.VectorType(i32, 8)
    v8f32 = ir.VectorType(ir.FloatType(), 8)
    xs = builder.bitcast(xs, v8i32.as_pointer())
    xd = builder.bitcast(xd, v8f32.as_pointer())
    pairs = []
    for half in (0, 1):  # sub-blocks 0-7, then 8-15
        hadd = declare(builder.module, "llvm.x86.avx2.phadd.d", v8i32, [v8i32] * 2)
        p = [builder.call(hadd, dots[i:i + 2]) for i in (4 * half, 4 * half + 2)]
        sums = builder.call(hadd, p)  # sub-blocks 0, 2, 4, 6, 1, 3, 5, 7 (+8 half)
        # the int8 sub-scales, even ones then odd ones: the same order
        sc = builder.sext(vector_at(builder, b, 192 + 8 * half, 4, 16), v4i32)
        sc = builder.shuffle_vector(sc, sc, v8i32([0, 1, 2, 3] * 2))  # twice
        # byte 0 of each (the even sub-block) shifted up by 24, byte 1 by 16:
        # by amounts in memory, as a constant vector would be in a data section
        sc = builder.ashr(builder.shl(sc, k["even odd"]), v8i32([24] * 8))
        # (q - 32) . x = q . x - 32 * sum(x): |sums| < 2**18, times sc < 2**25
        at = [i32(half)]
        minus = builder.shl(builder.load(builder.gep(xs, at), align=4), v8i32([5] * 8))
        dot = builder.mul(builder.sub(sums, minus), sc)
        pairs.append((dot, builder.fmul(builder.load(builder.gep(xd, at), align=4),
                                        splat(builder, d, 8))))
    return pairs, None
BLOCKS["Q6_K"] = q6_k_block
# --8<-- [end:q6-k-block]


# --8<-- [start:q5-k-block]
def q5_k_block(builder, b, x, xd, xs, k):
    """One Q5_K super-block (176 bytes): Q4_K's first 16 bytes, 32 bytes whose bit
    j is the fifth bit of sub-block j's values, then Q4_K's nibbles."""
    dots, fifth = [], vector_at(builder, b, 16, 32, 8)
    for j in range(8):
        q = vector_at(builder, b, 48 + 32 * (j // 2), 32, 8)
        q = byte_shift(builder, q, 4 * (j % 2), k, "15")
        top = byte_shift(builder, fifth, j, k, "bit")  # 0 or 1 in each byte
        top = builder.bitcast(builder.shl(builder.bitcast(top, k["1"].type),
                                          k["1"].type([4] * 16)), top.type)
        dots.append(madd_bytes(builder, builder.or_(q, top), x, 32 * j, k))
    scales, mins = k_scales_ir(builder, b, xd, xs)  # as Q4_K's
    return [(sums8(builder, dots), scales)], mins


BLOCKS["Q5_K"] = q5_k_block
# --8<-- [end:q5-k-block]


# --8<-- [start:q5-0-q4-0-block]
def wide(builder, base, offset: int):
    """16 bytes at `offset`, zero-extended to 16 int16 lanes."""
    return builder.zext(vector_at(builder, base, offset, 16, 8),
                        ir.VectorType(ir.IntType(16), 16))


def madd(builder, q, x, value: int):
    """8 int32: pairs of q (16 int16) times x[value:value + 16] (int16), added."""
    v16 = ir.VectorType(ir.IntType(16), 16)
    fn = declare(builder.module, "llvm.x86.avx2.pmadd.wd",
                 ir.VectorType(ir.IntType(32), 8), [v16, v16])
    xv = builder.load(builder.bitcast(builder.gep(x, [ir.IntType(64)(value)]),
                                      v16.as_pointer()), align=2)
    return builder.call(fn, [q, xv])


def q5_0_block(builder, b, x, xd, xs, k):
    """One Q5_0 block (22 bytes) against 32 activations: value = nibble +
    16 * fifth bit - 16, the -16 taken as -16 * sum(x) once."""
    d = half_at(builder, b, 0)
    bits = vector_at(builder, b, 2, 1, 32)
    bits = builder.extract_element(bits, ir.IntType(32)(0))  # bit j: value j
    i16, dot = ir.IntType(16), None
    for e in (0, 16):
        nib = wide(builder, b, 6)  # value j < 16: low nibble of byte j, else high
        nib = builder.and_(nib, k["15"]) if e == 0 else \
            builder.lshr(nib, nib.type([4] * 16))
        these = builder.trunc(builder.lshr(bits, bits.type(e)), i16)
        # lane j of `lanes` holds 1 << j: set where value j's fifth bit is
        on = builder.icmp_unsigned("!=", builder.and_(splat(builder, these, 16),
                                                      k["lanes"]), nib.type(None))
        fifth = builder.and_(builder.sext(on, nib.type), k["16"])
        term = madd(builder, builder.or_(nib, fifth), x, e)
        dot = term if dot is None else builder.add(dot, term)
    fm, lane = builder.fmul, ir.IntType(32)(0)  # what to subtract: in one lane
    minus = fm(fm(d, builder.load(xs)), k["16.0"])
    return [(dot, fm(d, builder.load(xd)))], builder.insert_element(
        ir.VectorType(minus.type, 8)(None), minus, lane)


def q4_0_block(builder, b, x, xd, xs, k):
    """One Q4_0 block (18 bytes) against 32 activations: value = nibble - 8."""
    d, dot = half_at(builder, b, 0), None
    for e in (0, 16):
        nib = wide(builder, b, 2)
        nib = builder.and_(nib, k["15"]) if e == 0 else \
            builder.lshr(nib, nib.type([4] * 16))
        term = madd(builder, nib, x, e)
        dot = term if dot is None else builder.add(dot, term)
    fm, lane = builder.fmul, ir.IntType(32)(0)
    minus = fm(fm(d, builder.load(xs)), k["8.0"])
    return [(dot, fm(d, builder.load(xd)))], builder.insert_element(
        ir.VectorType(minus.type, 8)(None), minus, lane)
BLOCKS |= {"Q5_0": q5_0_block, "Q4_0": q4_0_block}
# --8<-- [end:q5-0-q4-0-block]


# --8<-- [start:load-gguf-blocks]
def block_matrix(gguf: GGUFFile, name: str, heads: int | None = None):
    """A matrix of the file: a BlockMatrix of its bytes if its format is one
    of KINDS, else float32 as load_gguf reads it; heads: LLaMA's q or k."""
    info = gguf.tensors[name]
    kind = GGML_TYPES[info.kind].name
    packed = kind in KINDS and len(info.shape) == 2
    x = gguf.data[info.offset:info.offset + info.nbytes].reshape(
        info.shape[0], -1) if packed else read_tensor(gguf, name)
    if heads:  # Meta's interleaved rows back to rotate-half's, blocks and all
        x = interleaved_to_half(x, heads)
    return BlockMatrix(kind, x) if packed else x


def load_gguf_blocks(path: str | Path) -> LlamaModel | CachedGPT:
    """A model from a .gguf file, its matrices in the formats of KINDS packed,
    others as load_gguf reads them."""
    return load_gguf_q8_0(path, matrix=block_matrix)
# --8<-- [end:load-gguf-blocks]
