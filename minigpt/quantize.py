"""Quantisation: int8 weights and float scales, so a token reads a quarter of the bytes.

Implements two symmetric schemes. `q8_0` follows llama.cpp's `block_q8_0`: every
32 consecutive numbers of a row share one float16 scale `d` and are stored as
int8 `q` with x ~ q * d; the activations are rounded the same way at every
step. On x86 with AVX2 the kernel sums each group's products in integers with
`vpmaddwd`, written in LLVM IR through a Numba intrinsic; elsewhere a portable
loop multiplies the int8 weights, widened to float32, by the rounded activations.
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
its own (a prompt runs through the same row kernels, one token row at a time).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minigpt.kvcache import CachedGPT
from minigpt.llama import LlamaModel, llama_names, read_llama_config
from minigpt.model import GPT
from minigpt.models import saved_scheme
from minigpt.threads import TABLES, map_matrices, set_kernel_threads, token_rows
from minigpt.weights import (
    WeightsError,
    gpt2_names,
    put,
    read_config,
    read_json,
    read_safetensors,
)

try:
    from llvmlite import ir
    from llvmlite.binding import get_host_cpu_features
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # the NumPy path below still works without numba
    njit, prange = None, range

__all__ = ["QuantMatrix", "dequantize", "load_quantized", "matmul_kernel",
           "matmul_numpy", "quantize_checkpoint", "quantize_groups",
           "quantize_matrix", "quantize_model", "save_quantized", "saved_scheme",
           "set_kernel_threads"]

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
    fn = cgutils.get_or_insert_function(module, ir.FunctionType(f32, [
        i8.as_pointer(), f32.as_pointer(), i16.as_pointer(), f32.as_pointer(), i64]),
        "minigpt_q8_0_row_dot")
    if not fn.is_declaration:
        return fn  # built already, for another kernel of this module
    fn.attributes.add("noinline")  # one row per call: no loop may be reordered
    w, s, x, t, G = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    # 16 int16 pairs multiplied and added in pairs: 8 int32 (x86's vpmaddwd)
    madd = cgutils.get_or_insert_function(
        module, ir.FunctionType(v8i32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd")
    acc = cgutils.alloca_once_value(builder, ir.Constant(v8f32, None))  # zeros
    prefetch = cgutils.get_or_insert_function(module, ir.FunctionType(
        ir.VoidType(), [i8.as_pointer(), i32, i32, i32]), "llvm.prefetch.p0i8")
    with cgutils.for_range(builder, G) as loop:
        start = builder.mul(loop.index, i64(32))  # the group's first number
        ahead = builder.gep(w, [builder.add(start, i64(PREFETCH))])
        builder.call(prefetch, [ahead, i32(0), i32(3), i32(1)])  # read, keep, data
        dots = None
        for half in (0, 16):  # a group of 32 is two vectors of 16
            at = builder.add(start, i64(half))
            wv = builder.load(builder.bitcast(builder.gep(w, [at]),
                                              v16i8.as_pointer()), align=1)
            xv = builder.load(builder.bitcast(builder.gep(x, [at]),
                                              v16i16.as_pointer()), align=2)
            pair = builder.call(madd, [builder.sext(wv, v16i16), xv])
            dots = pair if dots is None else builder.add(dots, pair)  # exact
        scale = builder.fmul(builder.load(builder.gep(s, [loop.index])),
                             builder.load(builder.gep(t, [loop.index])))
        splat = builder.shuffle_vector(  # the group's scale in all 8 lanes
            builder.insert_element(ir.Constant(v8f32, ir.Undefined), scale, i32(0)),
            ir.Constant(v8f32, ir.Undefined), ir.Constant(v8i32, [0] * 8))
        term = builder.fmul(builder.sitofp(dots, v8f32), splat)
        builder.store(builder.fadd(builder.load(acc), term), acc)
    lanes = builder.load(acc)
    total = builder.extract_element(lanes, i32(0))
    for i in range(1, 8):  # the 8 lanes' sum, once per row
        total = builder.fadd(total, builder.extract_element(lanes, i32(i)))
    builder.ret(total)
    return fn


def q8_0_row_dot(typingctx, q, d, n, xq, xd, t):
    """Numba's typing and call of row_dot_ir: row n of W times row t of x, both
    Q8_0. q: (N, K) int8, d: (N, K/32), xq: (T, K) int16, xd: (T, K/32) -> float32"""
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


def has_avx2() -> bool:
    """Whether this processor has AVX2, whose vpmaddwd the integer kernel calls."""
    return njit is not None and bool(get_host_cpu_features().get("avx2"))


row_dot = intrinsic(q8_0_row_dot) if has_avx2() else None
# --8<-- [end:q8-0-integer-dot]


# --8<-- [start:compile-quant-kernels]
NO_NUMBA = ("numba is not installed: quantised matrix products run in plain NumPy, "
            "several times slower than float32 (pip install numba)")


def compile_kernels(cache: bool = True) -> dict:
    """The row kernels, compiled for all cores (empty without numba)."""
    if njit is None:
        return {}
    # parallel: prange splits the rows over threads; fastmath: packed, reordered
    # sums; cache: compiled once, then loaded from __pycache__ by later runs
    jit = njit(parallel=True, fastmath=True, cache=cache)
    kernels = {"q8_0": jit(q8_0_rows), "int8": jit(int8_rows)}
    if row_dot is not None:  # x86 with AVX2: Q8_0's dot products in integers
        kernels["q8_0 integer"] = jit(q8_0_rows_int)
    return kernels
# --8<-- [end:compile-quant-kernels]


KERNELS = compile_kernels()


# --8<-- [start:quantized-matmul]
def matmul_kernel(x: np.ndarray, w: QuantMatrix) -> np.ndarray:
    """x @ w through the compiled kernel. x: (T, K) float32, w: (K, N) -> (T, N)"""
    out = np.empty((len(x), w.q.shape[0]), np.float32)
    q = np.asarray(w.q)  # a memory map is an ndarray subclass; the kernel wants ndarray
    if w.scheme == "q8_0":  # the activations rounded to Q8_0 too, every step
        xq, xd = quantize_groups(x, 32, np.float16)
        if "q8_0 integer" in KERNELS:  # x86 with AVX2: integer dot products
            KERNELS["q8_0 integer"](xq.astype(np.int16), xd, q, w.d, out)
        else:
            KERNELS["q8_0"](dequantize(xq, xd), q, w.d, out)
    else:
        KERNELS["int8"](x, q, w.d, out)
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
    out = matmul_kernel(x2, w) if KERNELS else matmul_numpy(x2, w)
    return out.reshape(*x.shape[:-1], -1)  # [T, N] -> [..., N]
# --8<-- [end:quantized-matmul]




# --8<-- [start:quantize-model]
def quantize_model(model: GPT | LlamaModel, scheme: str = "q8_0") -> GPT | LlamaModel:
    """The same model with every matrix quantised; its forward code is unchanged."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    if not KERNELS:
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
    if not KERNELS:
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
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copyfile(f, dst / f.name)
    raw = read_json(src / "config.json")
    raw["quantization_config"] = {"quant_method": "minigpt", "scheme": scheme}
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n", "utf-8")
    save_quantized(model, dst / "model.safetensors")
    return dst
# --8<-- [end:quantize-checkpoint]
