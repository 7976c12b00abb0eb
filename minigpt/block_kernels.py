"""Four-bit kernels: GGUF's block formats multiplied as they are stored.

A `BlockMatrix` keeps a GGUF tensor of Q4_K, Q5_K, Q6_K, Q5_0 or Q4_0 as its bytes,
one row of blocks per output (a view of the mapped file), and stands in for the
float32 array as chapter 29's `QuantMatrix` does. A token, or a few (up to
`kernels.FEW` rows of `x`), runs machine code of our own, token by token. For
the K formats the token is rounded to Q8_K (int8, one float32 scale per 256, and
the sums of each 16: `q8_k`, and `q8_k_code` in machine code), so a super-block's
small integers, unpacked from their nibbles (and high bits) in registers, are
summed against it in integers, each sub-block times its own scale (vpmaddubsw,
then vpmaddwd), and meet a float only once per 256 weights. Q4_0 and Q5_0 use
chapter 30's Q8_0 token, a scale per 32. A token so reads about 4.5 bits a
weight of Q4_K. A longer prompt decodes a tile
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
from minigpt.gguf_q8_0 import as_q8_0, load_gguf_q8_0
from minigpt.kernels import FEW, TILE, rounded
from minigpt.kquants import GGML_TYPES
from minigpt.kvcache import CachedGPT
from minigpt.llama import LlamaModel
from minigpt.machine_code import (
    PREFETCH,
    address,
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
from minigpt.machine_crew import share_rows
from minigpt.quantize import quantize_groups
from minigpt.rope import interleaved_to_half
from minigpt.threads import blas, split_rows, token_rows

__all__ = ["BLOCKS", "KINDS", "BlockMatrix", "activations", "block_code",
           "block_matmul", "block_matrix", "load_gguf_blocks", "q8_k",
           "q8_k_code"]


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
        few_tokens(x2, w, code[w.kind], out)
    else:
        split_rows(tiles(x2, w, out), len(w.raw))
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]


def few_tokens(x: np.ndarray, w: BlockMatrix, kernel, out: np.ndarray) -> None:
    """x @ w by our machine code, a token at a time, each shared out over our
    threads (chapter 32's crew). x: (T, K) -> out: (T, N)"""
    xq, xd, xs = activations(w.kind, x)
    raw = np.asarray(w.raw)  # a memory map is an ndarray subclass: the plain view
    for t in range(len(x)):
        start, step = kernel(raw, xq[t], xd[t], xs[t], out[t])
        share_rows(kernel.fn, start, step, 6, len(raw), raw.nbytes)  # N: the 7th


ROUNDERS: dict = {}  # "Q8_K" -> a function giving machine code for q8_k, or None


def q8_k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x in int8 with a float32 scale per 256 (max |x| / 127), and the sums of
    each 16 int8. x: (T, K) -> (T, K) int8, (T, K/256) float32, (T, K/16) int16"""
    xq, xd = quantize_groups(x, 256, np.float32)
    return xq, xd, xq.reshape(len(x), -1, 16).sum(axis=2, dtype=np.int16)


def activations(kind: str, x: np.ndarray) -> tuple:
    """Tokens as `kind`'s kernel reads them: numbers, a scale per block, and
    sums of each 16 (K formats) or 32 numbers. x: (T, K) -> 3 arrays of T rows"""
    if kind.endswith("K"):  # by machine code where exercise 5 built some
        return (ROUNDERS.get("Q8_K", lambda: None)() or q8_k)(x)
    xq, xd = rounded(x, machine_code())  # Q8_0 in int8, as chapter 30 rounds a token
    return xq, xd, xq.reshape(len(x), -1, 32).sum(2, dtype=np.int16)


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


def madd_bytes(builder, q, x, value: int, scales):
    """8 int32, each the sum of 4 products of q (32 bytes, 0..63) and
    x[value:value + 32] (int8), times `scales` (16 int16): x86's vpmaddubsw
    adds products in pairs, vpmaddwd multiplies the pairs and adds again."""
    v32, v16 = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 16)
    fn = declare(builder.module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v32, v32])
    pairs = builder.call(fn, [q, vector_at(builder, x, value, 32, 8)])  # exact
    return madd_words(builder, pairs, scales)


def madd_words(builder, a, b):
    """8 int32: a and b (16 int16 each) multiplied, neighbours added (vpmaddwd)."""
    fn = declare(builder.module, "llvm.x86.avx2.pmadd.wd",
                 ir.VectorType(ir.IntType(32), 8), [a.type, a.type])
    return builder.call(fn, [a, b])


def picked(builder, words, mask):
    """16 int16 lanes, each a lane of `words` (16 int16) chosen by `mask`, 32
    bytes of byte positions within each 128-bit half (x86's vpshufb)."""
    v32 = ir.VectorType(ir.IntType(8), 32)
    fn = declare(builder.module, "llvm.x86.avx2.pshuf.b", v32, [v32, v32])
    return builder.bitcast(builder.call(fn, [builder.bitcast(words, v32), mask]),
                           words.type)


def byte_shift(builder, v, n: int, k, mask: str):
    """Each byte of v (32 bytes) shifted right by n, then ANDed with k[mask]."""
    v16 = ir.VectorType(ir.IntType(16), 16)
    if n:  # x86 shifts 16-bit lanes; the mask drops what crosses from the next byte
        v = builder.bitcast(builder.lshr(builder.bitcast(v, v16), v16([n] * 16)),
                            v.type)
    return builder.and_(v, builder.bitcast(k[mask], v.type))
# --8<-- [end:block-ir-helpers]


# --8<-- [start:q4-k-block]
def bytes8(builder, low, high, bits: int):
    """Two int32 of 4 bytes each -> their 8 bytes as 8 lanes of `bits` bits."""
    i32 = ir.IntType(32)
    two = ir.Constant(ir.VectorType(i32, 2), ir.Undefined)
    two = builder.insert_element(builder.insert_element(two, low, i32(0)), high,
                                 i32(1))
    eight = builder.bitcast(two, ir.VectorType(ir.IntType(8), 8))
    return builder.zext(eight, ir.VectorType(ir.IntType(bits), 8))


def k_scales_ir(builder, b):
    """Q4_K's and Q5_K's bytes 4-15 -> the 6-bit scales sc_0..7 twice over
    in 16 int16 lanes (for vpshufb), and the mins m_0..7 in 8 int32 lanes."""
    a, m4, c = (builder.extract_element(vector_at(builder, b, at, 1, 32),
                                        ir.IntType(32)(0)) for at in (4, 8, 12))
    i32, low, and_, or_ = a.type, builder.lshr, builder.and_, builder.or_
    # four 6-bit fields at a time: scales 0-3 in a, mins 0-3 in m4; 4-7 are 4 bits
    # of c and the top 2 bits of a (scales) or m4 (mins)
    top = [builder.shl(and_(low(v, i32(6)), i32(0x03030303)), i32(4)) for v in (a, m4)]
    sc = bytes8(builder, and_(a, i32(0x3F3F3F3F)),
                or_(and_(c, i32(0x0F0F0F0F)), top[0]), 16)
    m = bytes8(builder, and_(m4, i32(0x3F3F3F3F)),
               or_(and_(low(c, i32(4)), i32(0x0F0F0F0F)), top[1]), 32)
    twice = ir.Constant(ir.VectorType(i32, 16), list(range(8)) * 2)
    return builder.shuffle_vector(sc, sc, twice), m


def k_terms(builder, b, xd, xs, dot, m, k):
    """A Q4_K or Q5_K super-block's [(integer dot, d * xd), (minus the integer
    sum of m_j times the token's sum over sub-block j, dmin * xd)]."""
    sums = madd_words(builder, vector_at(builder, xs, 0, 16, 16), k["1"])  # per 32
    d, dmin, x = half_at(builder, b, 0), half_at(builder, b, 2), builder.load(xd)
    # minus in integers: a float negation would need a constant (a sign mask)
    return [(dot, builder.fmul(d, x)),
            (builder.neg(builder.mul(m, sums)), builder.fmul(dmin, x))]


def q4_k_block(builder, b, x, xd, xs, k):
    """One Q4_K super-block (144 bytes) against 256 int8 activations: pairs of
    (8 int32 lanes, the float scale they share)."""
    sc, m = k_scales_ir(builder, b)
    dot = None
    for j in range(8):  # sub-blocks 2p and 2p+1: the low, high nibbles of 32 bytes
        q = vector_at(builder, b, 16 + 32 * (j // 2), 32, 8)
        q = byte_shift(builder, q, 4 * (j % 2), k, "15")
        term = madd_bytes(builder, q, x, 32 * j, picked(builder, sc, k[f"pick {j}"]))
        dot = term if dot is None else builder.add(dot, term)  # exact, in int32
    return k_terms(builder, b, xd, xs, dot, m, k)
# --8<-- [end:q4-k-block]


# --8<-- [start:block-rows-ir]
BLOCKS = {"Q4_K": q4_k_block}  # kind -> its block's IR; more are added below
# per kind: the token's numbers, and how many int16 sums a block has
ACTIVATIONS = {k: (np.int8, 16) for k in KINDS} | {"Q4_0": (np.int8, 1),
                                                   "Q5_0": (np.int8, 1)}
# the constants the blocks need, passed in memory: a vector or float constant in
# the code would be loaded from a data section, which elf_text refuses
PICK = [[514 * j + 256] * 16 for j in range(8)]  # bytes 2j, 2j + 1: lane j, everywhere
PICK6 = [[1028 * s + 256] * 8 + [1028 * s + 770] * 8 for s in range(4)]  # 2s; 2s + 1
BITS = np.array([[j // 8 for j in range(32)], [1 << j % 8 for j in range(32)]],
                np.uint8).view(np.int16).tolist()  # Q5_0's: bit j's byte; bit j
CONSTANTS = np.array([0x0F0F, 0x0303, 1, 0x1010] + sum(PICK + PICK6 + BITS, []),
                     np.int16)


def constants(builder, table) -> dict:
    """In 16 int16 lanes: 15 and 3 in each byte; 1; 16 in each byte. In 32 bytes:
    vpshufb's positions for each sub-block's scale, and Q5_0's bits."""
    i16, i64, v32 = ir.IntType(16), ir.IntType(64), ir.VectorType(ir.IntType(8), 32)

    def at(i: int, t=i16):  # a number, or a vector, from table[i] on
        return builder.load(builder.bitcast(builder.gep(table, [i64(i)]),
                                            t.as_pointer()), align=2)
    names = [f"pick {j}" for j in range(8)] + [f"pick6 {s}" for s in range(4)] + [
        "byte of bit j", "bit j"]
    k = {name: at(4 + 16 * i, v32) for i, name in enumerate(names)}
    return k | {name: splat(builder, at(i), 16) for i, name in enumerate(
        ("15", "3", "1", "16 bytes"))}


def block_rows_ir(module, kind: str):
    """void minigpt_<kind>_rows(w, x, xd, xs, table, out, N, B): out[n] = row n
    of W (B blocks each) times the token x (xd, xs: as `activations` gives them)."""
    i8, i16, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(64), ir.FloatType()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        i8.as_pointer(), i8.as_pointer(), f32.as_pointer(), *[i16.as_pointer()] * 2,
        f32.as_pointer(), i64, i64]), f"minigpt_{kind.lower()}_rows")
    w, x, xd, xs, table, out, N, B = fn.args
    for a in fn.args[:6]:  # no two arrays overlap: the constants load once
        a.add_attribute("noalias")
    builder = ir.IRBuilder(fn.append_basic_block())
    k, size = constants(builder, table), GGML_TYPES[KINDS[kind]].size
    # B > 0 (BlockKernel refuses K = 0): else LLVM would make the rows of no
    # blocks a call of the C library's memset
    with builder.if_then(builder.icmp_signed(">", B, i64(0))), \
            counted(builder, N) as n:
        row = builder.gep(w, [builder.mul(n, builder.mul(B, i64(size)))])
        builder.store(row_dot_ir(builder, kind, row, x, xd, xs, k, B),
                      builder.gep(out, [n]))
    builder.ret_void()
    return fn


def row_dot_ir(builder, kind: str, row, x, xd, xs, k, B):
    """B blocks of `row` times x, in IR at the builder. -> a float32 value"""
    i64, v8f32 = ir.IntType(64), ir.VectorType(ir.FloatType(), 8)
    t, (xt, per) = GGML_TYPES[KINDS[kind]], ACTIVATIONS[kind]
    fma = declare(builder.module, "llvm.fma.v8f32", v8f32, [v8f32] * 3)  # a * b + c
    with builder.goto_entry_block():  # where LLVM keeps it in a register
        acc = builder.alloca(v8f32)  # 8 partial sums, added up at the end
    builder.store(v8f32(None), acc)
    with counted(builder, B) as blk:
        b = builder.gep(row, [builder.mul(blk, i64(t.size))])
        for line in range(0, t.size, 64):  # each cache line of the block, ahead
            prefetch(builder, builder.gep(b, [i64(PREFETCH + line)]))
        xb = builder.gep(x, [builder.mul(blk, i64(t.block * np.dtype(xt).itemsize))])
        sb = builder.bitcast(builder.gep(xs, [builder.mul(blk, i64(per))]), x.type)
        total = builder.load(acc)  # each pair: to float once a block, times its scale
        for dot, s in BLOCKS[kind](builder, b, xb, builder.gep(xd, [blk]), sb, k):
            total = builder.call(fma, [builder.sitofp(dot, v8f32), splat(builder, s, 8),
                                       total])
        builder.store(total, acc)
    return lane_sum(builder, builder.load(acc))
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
        xq: (K,), xd, xs: (G,), out: (N,) float32 -> the function's arguments
        for rows 0:N, and what one row more adds to each (for share_rows)"""
        t, (xt, per) = GGML_TYPES[KINDS[self.kind]], ACTIVATIONS[self.kind]
        N, K = len(raw), len(xq)
        want = [(raw, np.uint8, (N, K // t.block * t.size)), (out, np.float32, (N,)),
                (xq, xt, (K,)), (xd, np.float32, (K // t.block,)),
                (xs, np.int16, (K // t.block * per,))]
        # the machine code trusts its pointers: a wrong array would crash Python
        if not K or K % t.block or not all(a.dtype == d and a.shape == s and
                                  a.flags.c_contiguous for a, d, s in want):
            raise ValueError(f"{self.kind} machine code: arrays of the wrong dtype, "
                             f"shape or layout for N={N}, K={K}")
        at = [address(a) for a in (raw, xq, xd, xs, CONSTANTS, out)]
        start = [*at, N, K // t.block, 0]  # rows 0:N
        step = [raw.shape[1], 0, 0, 0, 0, 4, 0, 0, 0]  # a row on
        return start, step



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


# --8<-- [start:q8-k-rounding-ir]
def q8_k_ir(module):
    """void minigpt_q8_k(x, xq, xd, xs, G, top, half): q8_k of G groups of 256
    float32, top = 127.0 and half = 0.5 (float constants would sit in a data
    section) -> xq: G*256 int16 (int8 would need a mask from a data section),
    xd: G float32, xs: G*16 int16"""
    f32, i16, i64 = ir.FloatType(), ir.IntType(16), ir.IntType(64)
    vf, vi = ir.VectorType(f32, 256), ir.VectorType(i16, 256)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        f32.as_pointer(), i16.as_pointer(), f32.as_pointer(), i16.as_pointer(), i64,
        f32, f32]), "minigpt_q8_k")
    x, xq, xd, xs, G, top, half = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    call = {n.split(".")[-2]: functools.partial(b.call, declare(
        module, f"llvm.{n}", r, a)) for n, r, a in (
        ("vector.reduce.fmax.v256f32", f32, [vf]), ("maxnum.f32", f32, [f32] * 2),
        ("vector.reduce.fmin.v256f32", f32, [vf]), ("trunc.v256f32", vf, [vf]),
        ("vector.reduce.add.v16i16", i16, [ir.VectorType(i16, 16)]))}
    with counted(b, G) as g:
        at = b.mul(g, i64(256))
        v = b.load(b.bitcast(b.gep(x, [at]), vf.as_pointer()), align=4)
        amax = call["maxnum"]([call["fmax"]([v]), b.fsub(
            f32(0.0), call["fmin"]([v]))])  # max |x|, as max(largest, -smallest)
        d = b.fdiv(amax, top)  # as q8_k divides: max |x| / 127, then 1 / d
        inverse = b.select(b.fcmp_ordered(">", d, f32(0.0)),
                           b.fdiv(b.fadd(half, half), d), f32(0.0))
        scaled = b.fmul(v, splat(b, inverse, 256))
        whole = call["trunc"]([scaled])  # then a step away from zero
        rest = b.fsub(scaled, whole)  # where what is left is at least a half
        # the masks as -1 where true (sext): a 1 would be a constant in memory
        up = b.sext(b.fcmp_ordered(">=", rest, splat(b, half, 256)), vi)
        down = b.sext(b.fcmp_ordered("<=", rest, splat(
            b, b.fsub(f32(0.0), half), 256)), vi)
        q = b.sub(b.add(b.fptosi(whole, vi), down), up)
        b.store(q, b.bitcast(b.gep(xq, [at]), vi.as_pointer()), align=2)
        b.store(d, b.gep(xd, [g]))
    with counted(b, b.mul(G, i64(16))) as t:  # then the sums of each 16
        part = b.load(b.bitcast(b.gep(xq, [b.mul(t, i64(16))]), ir.VectorType(
            i16, 16).as_pointer()), align=2)
        b.store(call["add"]([part]), b.gep(xs, [t]))
    b.ret_void()
    return fn


@dataclass(frozen=True)
class Rounding:
    """q8_k_ir's function called through ctypes: q8_k in machine code."""

    code: object
    fn: object

    def __call__(self, x: np.ndarray) -> tuple:
        """x: (T, K) float32, finite, contiguous -> q8_k(x)'s three arrays"""
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] % 256 or \
                not x.flags.c_contiguous:
            raise ValueError(f"Q8_K rounding: x must be contiguous float32 rows "
                             f"of a multiple of 256 numbers, got {x.dtype} {x.shape}")
        xq = np.empty(x.shape, np.int16)
        xd = np.empty((len(x), x.shape[1] // 256), np.float32)
        xs = np.empty((len(x), x.shape[1] // 16), np.int16)
        self.fn(*(address(a) for a in (x, xq, xd, xs)), xd.size, 127.0, 0.5)
        return xq.astype(np.int8), xd, xs


@functools.cache
def q8_k_code():
    """q8_k_ir's function compiled and wrapped, or None without machine code."""
    if not block_code():
        return None
    module = ir.Module("minigpt_q8_k")
    name = q8_k_ir(module).name
    try:
        code, starts = elf_text(in_child(compile_object, str(module)), [name])
        memory, base = executable(code)
    except (OSError, ValueError, RuntimeError):
        return None  # q8_k, in NumPy, rounds the same
    p, i, f = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    return Rounding(memory, ctypes.CFUNCTYPE(None, p, p, p, p, i, f, f)(
        base + starts[name]))
ROUNDERS["Q8_K"] = q8_k_code
# --8<-- [end:q8-k-rounding-ir]


# --8<-- [start:q6-k-block]
def q6_k_block(builder, b, x, xd, xs, k):
    """One Q6_K super-block (210 bytes) against 256 int8 activations: 16
    sub-blocks of 16, w = d * sc * (q - 32) with int8 scales sc."""
    v16i16, dot = ir.VectorType(ir.IntType(16), 16), None
    twice = [ir.Constant(ir.VectorType(ir.IntType(32), 16), list(range(h, h + 8)) * 2)
             for h in (0, 8)]  # the scales of sub-blocks 0-7, then of 8-15, twice
    sc = builder.sext(vector_at(builder, b, 192, 16, 8), v16i16)
    for g in range(8):  # groups of 32 values: half h of the block, quarter s
        h, s = g // 4, g % 4
        nib = byte_shift(builder, vector_at(builder, b, 64 * h + 32 * (s % 2), 32, 8),
                         4 * (s // 2), k, "15")  # the low 4 bits
        # the high 2 bits, at bits 2s and 2s+1, moved to bits 4 and 5 by one shift
        # (by at most 4: no bit of the neighbouring byte reaches them) and kept
        top = builder.bitcast(vector_at(builder, b, 128 + 32 * h, 32, 8), v16i16)
        top = builder.shl(top, v16i16([4 - 2 * s] * 16)) if s < 3 else \
            builder.lshr(top, v16i16([2] * 16))
        top = builder.and_(builder.bitcast(top, nib.type), builder.bitcast(
            builder.shl(k["3"], v16i16([4] * 16)), nib.type))  # 0x30 a byte
        # sub-block 2g's scale in the low 16 bytes, 2g + 1's in the high 16
        scales = picked(builder, builder.shuffle_vector(sc, sc, twice[h]),
                        k[f"pick6 {s}"])
        term = madd_bytes(builder, builder.or_(nib, top), x, 32 * g, scales)
        dot = term if dot is None else builder.add(dot, term)
    # (q - 32) . x = q . x - 32 * sum(x), per sub-block times its scale
    minus = madd_words(builder, sc, vector_at(builder, xs, 0, 16, 16))
    dot = builder.sub(dot, builder.shl(minus, minus.type([5] * 8)))
    return [(dot, builder.fmul(half_at(builder, b, 208), builder.load(xd)))]
BLOCKS["Q6_K"] = q6_k_block
# --8<-- [end:q6-k-block]


# --8<-- [start:q5-k-block]
def q5_k_block(builder, b, x, xd, xs, k):
    """One Q5_K super-block (176 bytes): Q4_K's first 16 bytes, 32 bytes whose bit
    j is the fifth bit of sub-block j's values, then Q4_K's nibbles."""
    (sc, m), dot = k_scales_ir(builder, b), None
    fifth = vector_at(builder, b, 16, 32, 8)
    for j in range(8):
        q = vector_at(builder, b, 48 + 32 * (j // 2), 32, 8)
        q = byte_shift(builder, q, 4 * (j % 2), k, "15")
        # bit j of each byte moved to bit 4 and kept: a shift of 16-bit lanes
        # by at most 4 brings no bit of the neighbouring byte to bit 4
        v16 = builder.bitcast(fifth, k["1"].type)
        v16 = builder.shl(v16, v16.type([4 - j] * 16)) if j < 4 else \
            builder.lshr(v16, v16.type([j - 4] * 16))
        top = builder.and_(builder.bitcast(v16, q.type),
                           builder.bitcast(k["16 bytes"], q.type))
        term = madd_bytes(builder, builder.or_(q, top), x, 32 * j,
                          picked(builder, sc, k[f"pick {j}"]))
        dot = term if dot is None else builder.add(dot, term)
    return k_terms(builder, b, xd, xs, dot, m, k)  # as Q4_K's


BLOCKS["Q5_K"] = q5_k_block
# --8<-- [end:q5-k-block]


# --8<-- [start:q5-0-q4-0-block]
def nibbles32(builder, b, offset: int, k):
    """16 bytes at `offset` -> their 32 nibbles as bytes: the low ones, then the
    high ones (ggml's order: value j and value j + 16 share byte j)."""
    def lanes(*at):  # a shuffle's lane numbers
        return ir.Constant(ir.VectorType(ir.IntType(32), 32), [*at[0], *at[1]])
    v = vector_at(builder, b, offset, 16, 8)  # not 32: the last block ends the rows
    v = builder.shuffle_vector(v, v, lanes(range(16), range(16)))  # twice
    low, high = (byte_shift(builder, v, n, k, "15") for n in (0, 4))
    return builder.shuffle_vector(low, high, lanes(range(16), range(48, 64)))


def fifth_bits(builder, b, k):
    """Q5_0's 32 fifth bits (4 bytes at 2) as 32 bytes: 16 where set, else 0."""
    v32 = ir.VectorType(ir.IntType(8), 32)
    bits = builder.extract_element(vector_at(builder, b, 2, 1, 32), ir.IntType(32)(0))
    shuffle = declare(builder.module, "llvm.x86.avx2.pshuf.b", v32, [v32, v32])
    spread = builder.call(shuffle, [builder.bitcast(splat(builder, bits, 8), v32),
                                    k["byte of bit j"]])  # byte j: bit j's byte
    on = builder.icmp_unsigned("!=", builder.and_(spread, k["bit j"]), v32(None))
    return builder.and_(builder.sext(on, v32), builder.bitcast(k["16 bytes"], v32))


def minus_sum(builder, dot, xs, shift: int):
    """dot (8 int32) less (1 << shift) times the token's sum xs[0], in lane 0."""
    i32 = ir.IntType(32)
    total = builder.sext(builder.load(builder.bitcast(xs, ir.IntType(16).as_pointer())),
                         i32)
    return builder.sub(dot, builder.insert_element(dot.type(None), builder.shl(
        total, i32(shift)), i32(0)))


def q5_0_block(builder, b, x, xd, xs, k):
    """One Q5_0 block (22 bytes) against 32 int8 activations: value = nibble +
    16 * fifth bit - 16, the -16 taken as -16 * sum(x) once, in integers."""
    q = builder.or_(nibbles32(builder, b, 6, k), fifth_bits(builder, b, k))  # 0..31
    dot = madd_bytes(builder, q, x, 0, k["1"])  # unsigned bytes times signed
    return [(minus_sum(builder, dot, xs, 4),
             builder.fmul(half_at(builder, b, 0), builder.load(xd)))]


def q4_0_block(builder, b, x, xd, xs, k):
    """One Q4_0 block (18 bytes) against 32 int8 activations: value = nibble - 8,
    the -8 as -8 * sum(x)."""
    dot = madd_bytes(builder, nibbles32(builder, b, 2, k), x, 0, k["1"])
    return [(minus_sum(builder, dot, xs, 3),
             builder.fmul(half_at(builder, b, 0), builder.load(xd)))]


BLOCKS |= {"Q5_0": q5_0_block, "Q4_0": q4_0_block}
# --8<-- [end:q5-0-q4-0-block]


# --8<-- [start:load-gguf-blocks]
def block_matrix(gguf: GGUFFile, name: str, heads: int | None = None):
    """A matrix of the file: a BlockMatrix of its bytes if its format is one
    of KINDS, a QuantMatrix if Q8_0, else float32 as load_gguf reads it;
    heads: LLaMA's q or k."""
    info = gguf.tensors[name]
    kind = GGML_TYPES[info.kind].name
    if kind == "Q8_0" and len(info.shape) == 2:  # kept as stored, not widened
        return as_q8_0(gguf, name, heads)
    packed = kind in KINDS and len(info.shape) == 2
    x = gguf.data[info.offset:info.offset + info.nbytes].reshape(
        info.shape[0], -1) if packed else read_tensor(gguf, name)
    if heads:  # Meta's interleaved rows back to rotate-half's, blocks and all
        x = interleaved_to_half(x, heads)
    return BlockMatrix(kind, x) if packed else x


def load_gguf_blocks(path: str | Path) -> LlamaModel | CachedGPT:
    """A model from a .gguf file, its matrices in the formats of KINDS packed,
    Q8_0 ones as chapter 33 keeps them, others as load_gguf reads them."""
    return load_gguf_q8_0(path, matrix=block_matrix)
# --8<-- [end:load-gguf-blocks]
