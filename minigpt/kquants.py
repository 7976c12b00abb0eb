"""GGML's tensor types: F32, F16, BF16 and the block formats, decoded in NumPy.

A quantised GGUF tensor is a row of blocks. Each block holds a fixed number of
values (32, or 256 for the "K" formats) as small integers plus one or more
scales, and decodes on its own. Implements the decoders of the formats that
llama.cpp's Q4_K_M, Q8_0 and float files hold: Q8_0, Q4_0, Q5_0 (32 values per
block) and Q4_K, Q5_K, Q6_K (256 values in a super-block of 8 or 16 sub-blocks
with 6- or 8-bit sub-scales), each vectorised over all blocks of a tensor. The
byte layouts follow ggml's `ggml-common.h` as documented by llama.cpp's gguf-py
package, whose `dequantize` the tests match bit for bit. Quantisers for Q8_0 and
Q4_0 (bit-identical to ggml's reference ones) and a plain min-max Q4_K
quantiser are here too, for measuring what each format costs.

Leaves out on purpose: the other formats (Q2_K, Q3_K, the IQ and ternary ones),
ggml's search for better Q4_K scales, and any compiled kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["GGML_TYPES", "GGMLType", "dequantize", "nibbles", "quantize_q4_0",
           "quantize_q4_k", "quantize_q8_0"]


# --8<-- [start:float-types]
def half(raw: np.ndarray) -> np.ndarray:
    """Two bytes per block -> that block's float16 scale. (n, 2) -> (n, 1) float32"""
    return raw.view(np.float16).astype(np.float32)


def f32(raw: np.ndarray) -> np.ndarray:
    """float32 as stored: a view, nothing copied. (n, 4) -> (n, 1)"""
    return raw.view(np.float32)


def f16(raw: np.ndarray) -> np.ndarray:
    """float16 widened to float32. (n, 2) -> (n, 1)"""
    return half(raw)


def bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift its bits up. (n, 2) -> (n, 1)"""
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
# --8<-- [end:float-types]


# --8<-- [start:q8-0-q4-0]
def q8_0(raw: np.ndarray) -> np.ndarray:
    """d (f16), then 32 int8 values: x = d * q. (n, 34) -> (n, 32)"""
    return half(raw[:, :2]) * raw[:, 2:].view(np.int8)


def nibbles(q: np.ndarray, run: int) -> np.ndarray:
    """Bytes -> 4-bit numbers: each run of bytes gives its low nibbles, then its
    high ones. (n, m) uint8 -> (n, 2m)"""
    q = q.reshape(len(q), -1, 1, run)  # [n, m] -> [n, m / run, 1, run]
    return np.concatenate([q & 15, q >> 4], axis=2).reshape(len(q), -1)


def q4_0(raw: np.ndarray) -> np.ndarray:
    """d, then 16 bytes of 4-bit q: x = d * (q - 8). (n, 18) -> (n, 32)"""
    q = nibbles(raw[:, 2:], 16).astype(np.int8) - 8  # 0..15 -> -8..7
    return half(raw[:, :2]) * q.astype(np.float32)


def q5_0(raw: np.ndarray) -> np.ndarray:
    """d, 32 fifth bits, 16 bytes of low nibbles: x = d * (q - 16).
    (n, 22) -> (n, 32)"""
    high = np.unpackbits(raw[:, 2:6], axis=1, bitorder="little")  # bit j: value j
    q = (nibbles(raw[:, 6:], 16) | high << 4).astype(np.int8) - 16
    return half(raw[:, :2]) * q.astype(np.float32)
# --8<-- [end:q8-0-q4-0]


# --8<-- [start:k-scales]
def k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins. (n, 12) -> 2 x (n, 8)"""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    # sub-blocks 0-3: the low 6 bits of a (scales) and b (mins); sub-blocks 4-7:
    # 4 bits from c, and 2 more from the top of a (scales) or b (mins)
    scales = np.concatenate([a & 63, (c & 15) | (a >> 6) << 4], axis=1)
    mins = np.concatenate([b & 63, (c >> 4) | (b >> 6) << 4], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def q4_k(raw: np.ndarray) -> np.ndarray:
    """d, dmin, 8 sub-scales and mins, 256 nibbles: x = d*sc*q - dmin*m.
    (n, 144) -> (n, 256)"""
    n = len(raw)
    sc, m = k_scales(raw[:, 4:16])
    scale = (half(raw[:, 0:2]) * sc)[:, :, None]  # [n, 8, 1]: one per 32 values
    low = (half(raw[:, 2:4]) * m)[:, :, None]
    q = nibbles(raw[:, 16:], 32).reshape(n, 8, 32).astype(np.float32)
    return (scale * q - low).reshape(n, 256)


def q5_k(raw: np.ndarray) -> np.ndarray:
    """Q4_K's fields, plus a fifth bit per value. (n, 176) -> (n, 256)"""
    n = len(raw)
    sc, m = k_scales(raw[:, 4:16])
    scale = (half(raw[:, 0:2]) * sc)[:, :, None]
    low = (half(raw[:, 2:4]) * m)[:, :, None]
    # byte i of the 32 high-bit bytes holds value i of every sub-block, bit j: j
    high = raw[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[:, None] & 1
    q = (nibbles(raw[:, 48:], 32).reshape(n, 8, 32) | high << 4).astype(np.float32)
    return (scale * q - low).reshape(n, 256)


def q6_k(raw: np.ndarray) -> np.ndarray:
    """128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d:
    x = d * sc * (q - 32) per 16 values. (n, 210) -> (n, 256)"""
    n = len(raw)
    low = nibbles(raw[:, :128], 64)  # [n, 256]: 64 bytes give 128 values
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (raw[:, 128:192].reshape(n, 2, 1, 32) >> shifts & 3).reshape(n, 256)
    q = ((low | high << 4).astype(np.int8) - 32).astype(np.float32)
    scale = half(raw[:, 208:210]) * raw[:, 192:208].view(np.int8)  # [n, 16]
    return (scale[:, :, None] * q.reshape(n, 16, 16)).reshape(n, 256)
# --8<-- [end:k-scales]


# --8<-- [start:ggml-types]
class GGMLType(NamedTuple):
    """A tensor type: its name, values per block, bytes per block, its decoder."""

    name: str
    block: int
    size: int
    decode: Callable[[np.ndarray], np.ndarray]  # (n, size) uint8 -> (n, block)


# ggml's type ids, as a GGUF tensor info names them
GGML_TYPES = {0: GGMLType("F32", 1, 4, f32), 1: GGMLType("F16", 1, 2, f16),
              30: GGMLType("BF16", 1, 2, bf16), 8: GGMLType("Q8_0", 32, 34, q8_0),
              2: GGMLType("Q4_0", 32, 18, q4_0), 6: GGMLType("Q5_0", 32, 22, q5_0),
              12: GGMLType("Q4_K", 256, 144, q4_k),
              13: GGMLType("Q5_K", 256, 176, q5_k),
              14: GGMLType("Q6_K", 256, 210, q6_k)}


def dequantize(raw: np.ndarray, kind: int, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's bytes -> float32 of its shape, a million values at a time."""
    t = GGML_TYPES[kind]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, t.size)  # [n, size]
    if t.name == "F32":
        return t.decode(blocks).reshape(shape)  # a view of the file: nothing to do
    out = np.empty((len(blocks), t.block), np.float32)
    step = max(1, 2**20 // t.block)  # blocks per chunk: the temporaries stay small
    for i in range(0, len(blocks), step):
        out[i:i + step] = t.decode(blocks[i:i + step])
    return out.reshape(shape)
# --8<-- [end:ggml-types]


# --8<-- [start:quantize-blocks]
def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 -> Q8_0 bytes, as ggml's reference quantiser. (..., K) -> (K/32*34,)"""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.divide(1, d, out=np.zeros_like(d), where=d > 0)  # 1/d, 0 for all-0
    q = np.abs(x * inv)
    q = np.floor(q) + (q - np.floor(q) >= 0.5)  # C's roundf: ties away from zero
    return pack(d, (np.sign(x) * q).astype(np.int8))


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float32 -> Q4_0 bytes, as ggml's reference quantiser."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)
    d = peak / np.float32(-8)  # the largest value maps to -8 exactly
    inv = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    q = np.trunc(x * inv + np.float32(8.5)).clip(0, 15).astype(np.uint8)
    return pack(d, q[:, :16] | q[:, 16:] << 4)  # value j and j + 16 share a byte


def pack(d: np.ndarray, q: np.ndarray, *more: np.ndarray) -> np.ndarray:
    """Blocks of [float16 d, then the given byte fields] as one flat uint8 array."""
    fields = [d.astype(np.float16).view(np.uint8), q.view(np.uint8), *more]
    return np.concatenate([f.reshape(len(q), -1) for f in fields], axis=1).ravel()
# --8<-- [end:quantize-blocks]


# --8<-- [start:quantize-q4-k]
def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 -> Q4_K bytes, each sub-block's range from its min and max."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 8, 32)  # [n, 8 sub-blocks, 32]
    lo = np.minimum(x.min(axis=2), 0)  # [n, 8]: keep 0 inside the range
    step, floor = (x.max(axis=2) - lo) / 15, -lo  # x ~ step * q - floor
    # one float16 d (dmin) per super-block; a 6-bit multiple of it per sub-block
    d = (step.max(axis=1, keepdims=True) / 63).astype(np.float16).astype(np.float32)
    dmin = (floor.max(axis=1, keepdims=True) / 63).astype(np.float16)
    dmin = dmin.astype(np.float32)
    sc = np.rint(np.divide(step, d, out=np.zeros_like(step), where=d > 0))
    m = np.rint(np.divide(floor, dmin, out=np.zeros_like(floor), where=dmin > 0))
    sc, m = sc.clip(0, 63).astype(np.uint8), m.clip(0, 63).astype(np.uint8)
    scale = (d * sc)[:, :, None]
    q = np.divide(x + (dmin * m)[:, :, None], scale, out=np.zeros_like(x),
                  where=scale > 0)
    q = np.rint(q).clip(0, 15).astype(np.uint8).reshape(len(x), 4, 2, 32)
    packed = q[:, :, 0] | q[:, :, 1] << 4  # sub-blocks 2j and 2j+1 share 32 bytes
    scales = np.concatenate([sc[:, :4] | (sc[:, 4:] >> 4) << 6,
                             m[:, :4] | (m[:, 4:] >> 4) << 6,
                             (sc[:, 4:] & 15) | (m[:, 4:] & 15) << 4], axis=1)
    return pack(d, dmin.astype(np.float16).view(np.uint8), scales, packed)
# --8<-- [end:quantize-q4-k]
