"""GGUF, llama.cpp's one-file model format, read from scratch and checked strictly.

A GGUF file is a little-endian header (magic "GGUF", version, tensor count,
metadata count), then metadata as typed key-value pairs (numbers, strings and
arrays of them: the architecture, its sizes, the whole tokenizer), then one info
record per tensor (name, dims fastest-first, type, offset), then the tensor data,
aligned to `general.alignment`. `read_gguf` memory-maps the file and checks every
count, length and offset against the file's size before it trusts it, so a
damaged file ends in a `GGUFError` naming the file and the field, never in a
crash or a huge allocation. Follows the GGUF specification in llama.cpp's
`docs/gguf.md` (versions 2 and 3); the tests compare with gguf-py's writer.

Leaves out on purpose: writing files, version 1 (32-bit counts), big-endian
files, arrays of arrays, and tensor types other than those of `minigpt.kquants`.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigpt.kquants import GGML_TYPES, dequantize

__all__ = ["GGUFError", "GGUFFile", "TensorInfo", "read_gguf", "read_tensor"]


# --8<-- [start:gguf-cursor]
class GGUFError(ValueError):
    """A GGUF file this reader refuses; the message names the file and field."""


# metadata value type -> NumPy dtype (8 is a string, 9 an array)
VALUE_TYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4",
               6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY, BOOL = 8, 9, 7


class Cursor:
    """Reads a file front to back; every read is checked against its end first."""

    def __init__(self, data: mmap.mmap, path: Path):
        self.data, self.path, self.at = data, path, 0

    def fail(self, field: str, problem: str) -> GGUFError:
        """The error to raise, naming the file and the field."""
        return GGUFError(f"{self.path}: {field}: {problem}")

    def take(self, n: int, field: str) -> bytes:
        """The next n bytes."""
        if n > len(self.data) - self.at:
            raise self.fail(field, f"needs {n} bytes at offset {self.at}, but the "
                                   f"file ends at {len(self.data)}")
        self.at += n
        return self.data[self.at - n:self.at]

    def array(self, dtype: str, count: int, field: str) -> np.ndarray:
        """count numbers in one go (a vocabulary's scores: 150,000 floats)."""
        raw = self.take(count * np.dtype(dtype).itemsize, field)
        return np.frombuffer(raw, dtype=dtype)

    def number(self, dtype: str, field: str) -> int | float:
        """One number of the given dtype, as a Python int or float."""
        return self.array(dtype, 1, field)[0].item()

    def string(self, field: str) -> str:
        """A u64 length, then that many bytes of UTF-8."""
        n = int.from_bytes(self.take(8, field), "little")  # no NumPy: called 100,000s
        raw = self.take(n, field)                          # of times for a vocabulary
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(field, "a string that is not UTF-8") from None
# --8<-- [end:gguf-cursor]


# --8<-- [start:gguf-value]
def read_value(cur: Cursor, kind: int, field: str) -> object:
    """One metadata value of the given type: a number, a string or an array."""
    if kind == STRING:
        return cur.string(field)
    if kind == ARRAY:
        item, count = cur.number("<u4", field), cur.number("<u8", field)
        if item == STRING:
            if count > (len(cur.data) - cur.at) // 8:  # each needs 8 length bytes
                raise cur.fail(field, f"{count} strings cannot fit in the file")
            return [cur.string(f"{field}[{i}]") for i in range(count)]
        if item not in VALUE_TYPES:
            raise cur.fail(field, f"arrays of value type {item} are not supported")
        values = cur.array(VALUE_TYPES[item], count, field)
        return values.astype(bool) if item == BOOL else values
    if kind not in VALUE_TYPES:
        raise cur.fail(field, f"unknown value type {kind}")
    value = cur.number(VALUE_TYPES[kind], field)
    if kind == BOOL and value > 1:
        raise cur.fail(field, f"a bool must be 0 or 1, got {value}")
    return bool(value) if kind == BOOL else value


def read_metadata(cur: Cursor, count: int) -> dict[str, object]:
    """count key-value pairs: a key, a u32 value type, the value."""
    metadata: dict[str, object] = {}
    for i in range(count):
        key = cur.string(f"metadata key {i}")
        if key in metadata:
            raise cur.fail(key, "given twice")
        metadata[key] = read_value(cur, cur.number("<u4", key), key)
    return metadata
# --8<-- [end:gguf-value]


# --8<-- [start:gguf-tensor-info]
@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in the data section, and how to read it."""

    shape: tuple[int, ...]  # NumPy order: GGUF's dims (fastest first) reversed
    kind: int               # ggml type id, a key of GGML_TYPES
    offset: int             # from the start of the data section
    nbytes: int


def read_tensor_info(cur: Cursor) -> tuple[str, TensorInfo]:
    """A name, up to 4 dims (fastest first), a ggml type and an offset."""
    name = cur.string("tensor name")
    n_dims = cur.number("<u4", name)
    if not 1 <= n_dims <= 4:
        raise cur.fail(name, f"{n_dims} dimensions (ggml has 1 to 4)")
    dims = cur.array("<u8", n_dims, name).tolist()
    kind, offset = cur.number("<u4", name), cur.number("<u8", name)
    if kind not in GGML_TYPES:
        raise cur.fail(name, f"tensor type {kind} is not supported (known: "
                             f"{', '.join(t.name for t in GGML_TYPES.values())})")
    t = GGML_TYPES[kind]
    if min(dims) < 1 or math.prod(dims) > 2**48 or dims[0] % t.block:
        raise cur.fail(name, f"dims {dims} are not positive, too large, or not "
                             f"whole {t.name} blocks of {t.block}")
    nbytes = math.prod(dims) // t.block * t.size
    return name, TensorInfo(tuple(dims[::-1]), kind, offset, nbytes)
# --8<-- [end:gguf-tensor-info]


# --8<-- [start:read-gguf]
@dataclass(frozen=True)
class GGUFFile:
    """A checked GGUF file: its metadata, its tensors' infos, its mapped data."""

    path: Path
    metadata: dict[str, object]
    tensors: dict[str, TensorInfo]
    data: np.ndarray  # the data section, uint8, memory-mapped (read-only)


def read_gguf(path: str | Path) -> GGUFFile:
    """Open a .gguf file: header, metadata, tensor infos, then the data's place."""
    path = Path(path)
    with open(path, "rb") as f:
        if path.stat().st_size < 24:
            raise GGUFError(f"{path}: {path.stat().st_size} bytes, too short for "
                            f"a GGUF header")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = Cursor(data, path)
    if cur.take(4, "magic") != b"GGUF":
        raise cur.fail("magic", "not a GGUF file (it does not start with 'GGUF')")
    version = cur.number("<u4", "version")
    if version not in (2, 3):
        raise cur.fail("version", f"{version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.number("<u8", "tensor count"), cur.number("<u8", "kv count")
    room = len(data) - cur.at  # a key-value takes 12 bytes at least, an info 24
    if n_kv > room // 12 or n_tensors > room // 24:
        raise cur.fail("header", f"{n_tensors} tensors and {n_kv} metadata pairs "
                                 f"cannot fit in {room} bytes")
    metadata = read_metadata(cur, n_kv)
    tensors: dict[str, TensorInfo] = {}
    for _ in range(n_tensors):
        name, info = read_tensor_info(cur)
        if name in tensors:
            raise cur.fail(name, "a second tensor of this name")
        tensors[name] = info
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align < 1 or align & (align - 1):
        raise cur.fail("general.alignment", f"{align!r} is not a power of two")
    start = -(-cur.at // align) * align  # the data begins at the next multiple
    check_tensors(cur, tensors, len(data) - start, align)
    mapped = np.frombuffer(data, np.uint8, offset=min(start, len(data)))
    return GGUFFile(path, metadata, tensors, mapped)
# --8<-- [end:read-gguf]


# --8<-- [start:check-tensors]
def check_tensors(cur: Cursor, tensors: dict[str, TensorInfo], size: int,
                  align: int) -> None:
    """Every tensor aligned and inside the data section, and no two overlap."""
    end, previous = 0, None
    for _, name in sorted((info.offset, name) for name, info in tensors.items()):
        t = tensors[name]
        if t.offset % align:
            raise cur.fail(name, f"offset {t.offset} is not a multiple of {align}")
        if t.offset + t.nbytes > size:
            raise cur.fail(name, f"bytes {t.offset}..{t.offset + t.nbytes} run past "
                                 f"the {max(size, 0)} bytes of data")
        if t.offset < end:
            raise cur.fail(name, f"its data overlaps tensor {previous!r}")
        end, previous = t.offset + t.nbytes, name


def read_tensor(gguf: GGUFFile, name: str) -> np.ndarray:
    """A tensor as float32 of its NumPy shape (F32: a view of the file)."""
    info = gguf.tensors[name]
    raw = gguf.data[info.offset:info.offset + info.nbytes]
    return dequantize(raw, info.kind, info.shape)
# --8<-- [end:check-tensors]
