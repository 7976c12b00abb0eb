"""Quantisation: int8 weights and float scales, so a token reads a quarter of the bytes.

Implements two symmetric schemes. `q8_0` is llama.cpp's `block_q8_0`, bit for bit
as ggml's reference `quantize_row_q8_0_ref` rounds it: every 32 consecutive
numbers of a row share one scale d = max|x| / 127 (stored as float16), and are
stored as int8 q = round(x / d), halves rounded away from zero. `int8` keeps one
float32 scale per row. A `QuantMatrix` stands in for a weight array, as chapter
23's `RowMatrix` does: `x @ W` runs the kernel layer (`kernels.py`), `W.T` and
`W[ids]` serve the tied output head and the embeddings, so the forward code of
GPT-2 and LLaMA runs unchanged. A matrix whose rows do not split into groups of
32 stays float32, as llama.cpp keeps such tensors in float. Quantised checkpoints
are safetensors files of I8 data and scale tensors, read memory-mapped, for any
model type registered in `models.py`.

Leaves out on purpose: 4-bit and k-quant formats, zero points (asymmetric
schemes), calibration (GPTQ, AWQ), and a quantised KV cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minigpt.models import loader_for, registered, saved_scheme
from minigpt.threads import TABLES, RowMatrix, as_rows, map_matrices
from minigpt.weights import (
    WeightsError,
    check_layers,
    put,
    read_json,
    read_safetensors,
    write_safetensors,
)

__all__ = ["QuantMatrix", "dequantize", "load_quantized", "quantize_checkpoint",
           "quantize_groups", "quantize_matrix", "quantize_model", "round_away",
           "save_quantized", "saved_scheme"]


# --8<-- [start:quantize-groups]
def round_away(v: np.ndarray) -> np.ndarray:
    """Round to the nearest whole number, halves away from zero (C's roundf;
    NumPy's rint sends halves to the even neighbour)."""
    whole = np.trunc(v)
    rest = v - whole  # exact in floating point: in (-1, 1)
    return whole + (rest >= 0.5) - (rest <= -0.5)


def quantize_groups(x: np.ndarray, group: int, scale_dtype: type = np.float16
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per `group` numbers along the last axis, as ggml's
    reference rounds. x: (..., K) -> q: (..., K) int8, d: (..., K // group) float32"""
    K = x.shape[-1]
    if K % group:
        raise ValueError(f"the last axis has {K} numbers, not a multiple of the "
                         f"group size {group}")
    g = np.asarray(x, np.float32).reshape(*x.shape[:-1], K // group, group)
    if not np.isfinite(g).all():
        raise ValueError("a value to quantise is not finite")
    d = np.abs(g).max(axis=-1) / np.float32(127)  # [..., G], in float32
    # 1 / d, then x * (1 / d): the reference's two roundings; a group of zeros
    # has d = 0 and gets q = 0
    inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d > 0)
    q = round_away(g * inverse[..., None]).astype(np.int8)  # in [-127, 127]
    with np.errstate(over="ignore"):  # too large: refused just below
        stored = d.astype(scale_dtype)  # the scale as stored: llama.cpp's float16
    if not np.isfinite(stored).all():
        raise ValueError(f"a value is too large for a {scale_dtype.__name__} "
                         f"scale (max {np.abs(g).max():.3g})")
    return q.reshape(x.shape), stored.astype(np.float32)


def dequantize(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q times its group's scale. q: (..., K) int8, d: (..., G) -> (..., K) float32"""
    groups = q.reshape(*q.shape[:-1], d.shape[-1], -1).astype(np.float32)
    groups *= d[..., None]  # in place: a second new array costs its page faults
    return groups.reshape(q.shape)  # [..., G, K // G] -> [..., K]
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
        from minigpt.kernels import quantized_matmul  # the layer built on this

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


def quantize_model(model, scheme: str = "q8_0"):
    """The same model with its matrices quantised; its forward code is unchanged.
    Rows that do not split into groups stay float32, as llama.cpp keeps them."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    group = SCHEMES[scheme][0] or 1

    def make(rows: np.ndarray) -> QuantMatrix | RowMatrix:
        if not isinstance(rows, np.ndarray):
            return rows  # a quantised stand-in already: kept as it is stored
        if rows.shape[1] % group:
            return as_rows(rows)
        return quantize_matrix(rows, scheme)
    # chapter 23's walk: tables by their rows, weights by their outputs' rows
    return replace(model, params=map_matrices(model.params, make))
# --8<-- [end:quantize-matrix]


# --8<-- [start:save-quantized]
def get(tree: dict | list, where: tuple):
    """tree[where[0]][where[1]]..., the inverse of weights.put."""
    for key in where:
        tree = tree[key]
    return tree


def save_quantized(model, path: str | Path, model_type: str = "gpt2") -> Path:
    """A quantised model's tensors as safetensors: data and scale beside each other,
    float matrices in the checkpoint's own layout."""
    loader, tensors, scheme = registered(model_type), {}, None
    for name, (where, _shape) in loader.names(model.config).items():
        x = get(model.params, where)
        if isinstance(x, QuantMatrix):  # rows as stored: [out, in] for a weight
            scheme = x.scheme
            tensors[f"{name}.{x.scheme}.data"] = x.q
            tensors[f"{name}.{x.scheme}.scale"] = x.d.astype(SCHEMES[x.scheme][1])
        elif isinstance(x, RowMatrix):  # a weight's rows are [out, in]
            rows_on_disk = loader.rows_on_disk or not x.transposed
            tensors[name] = x.rows if rows_on_disk else x.rows.T
        else:
            tensors[name] = np.asarray(x, np.float32)
    if scheme is None:
        raise ValueError("the model has no quantised matrix: run quantize_model first")
    write_safetensors(Path(path), tensors, {"format": "pt", "quantization": scheme})
    return Path(path)
# --8<-- [end:save-quantized]


# --8<-- [start:load-quantized]
def quantized_params(tensors: dict, table: dict, rows_on_disk: bool,
                     source: str) -> dict:
    """Tensors (data + scale pairs, or float32) into params, every shape checked."""
    blocks = {w[:2] for w, _ in table.values() if len(w) > 1 and isinstance(w[1], int)}
    params: dict = {key: [{} for _ in range(sum(k == key for k, _ in blocks))]
                    for key, _ in blocks}  # the lists of blocks, to be filled in
    for name, (where, shape) in table.items():
        weight = len(shape) == 2 and where[0] not in TABLES
        scheme = next((s for s in SCHEMES if f"{name}.{s}.data" in tensors), None)
        if scheme:  # rows as stored: a weight's rows are its outputs
            scale = tensors.pop(f"{name}.{scheme}.scale", None)
            if scale is None:
                raise WeightsError(f"{source}: tensor {name!r}: {scheme} data "
                                   f"without its scale tensor")
            x = QuantMatrix(scheme, tensors.pop(f"{name}.{scheme}.data"), scale)
            check_quantized(x, source, name)
            rows = x.q.shape
        elif name in tensors:
            x = np.asarray(tensors.pop(name), np.float32)
            rows = x.shape[::-1] if weight and not rows_on_disk else x.shape
            if len(shape) == 2:
                x = as_rows(x.T if weight and not rows_on_disk else x)
        else:
            raise WeightsError(f"{source}: tensor {name!r}: missing")
        want = shape[::-1] if weight and not rows_on_disk else shape  # [out, in]
        if tuple(rows) != tuple(want):
            raise WeightsError(f"{source}: tensor {name!r}: shape {list(rows)}, "
                               f"expected {list(want)} from the config")
        put(params, where, x.T if weight else x)
    if tensors:
        raise WeightsError(f"{source}: tensor {next(iter(tensors))!r}: not a "
                           f"parameter of this model")
    return params


def check_quantized(x: QuantMatrix, source: str, name: str) -> None:
    """int8 data and finite float scales that fit the scheme's group size."""
    group = SCHEMES[x.scheme][0] or x.q.shape[1]
    if (x.q.dtype != np.int8 or x.q.ndim != 2 or x.q.shape[1] % group
            or x.d.shape != (x.q.shape[0], x.q.shape[1] // group)
            or x.d.dtype != np.float32):
        raise WeightsError(f"{source}: tensor {name!r}: {x.scheme} data {x.q.dtype} "
                           f"{list(x.q.shape)} and scale {x.d.dtype} "
                           f"{list(x.d.shape)} do not fit groups of {group}")
    if not np.isfinite(x.d).all():  # one NaN scale would poison every answer
        raise WeightsError(f"{source}: tensor {name!r}: a scale is not finite")


def load_quantized(path: str | Path):
    """A quantised model from a folder written by quantize_checkpoint, memory-mapped."""
    folder = Path(path)
    read_json(folder / "config.json")  # a missing or broken file, named
    scheme, loader = saved_scheme(folder), loader_for(folder)
    if str(scheme) not in SCHEMES or loader.names is None:  # a list is no scheme
        raise WeightsError(f"{folder}: not a quantised checkpoint of a model type "
                           f"with a name table (config.json's quantization_config "
                           f"names scheme {scheme!r})")
    config = loader.config(folder / "config.json")
    source = str(folder / "model.safetensors")
    tensors = read_safetensors(source)  # I8 and F32: views of the mapped file
    check_layers(config.n_layer, tensors, source)
    params = quantized_params(tensors, loader.names(config), loader.rows_on_disk,
                              source)
    if getattr(config, "tie_word_embeddings", False):  # LLaMA only
        params["lm_head"] = params["embed_tokens"].T  # tied: the table, as a head
    return loader.build(config, params)
# --8<-- [end:load-quantized]


# --8<-- [start:quantize-checkpoint]
def quantize_checkpoint(src: str | Path, dst: str | Path, scheme: str = "q8_0",
                        load: Callable | None = None) -> Path:
    """Quantise a checkpoint folder into another: tokenizer files copied as they are."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the output folder must differ from the input")
    raw = read_json(src / "config.json")
    model = quantize_model((load or loader_for(src).model)(src), scheme)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # vocabulary, merges, tokenizer.json, model card...
        # but no float weights: not model.safetensors, its shards or their index
        if f.is_file() and f.name != "config.json" and not \
                f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copyfile(f, dst / f.name)
    raw["quantization_config"] = {"quant_method": "minigpt", "scheme": scheme}
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n", "utf-8")
    save_quantized(model, dst / "model.safetensors", raw.get("model_type", "gpt2"))
    return dst
# --8<-- [end:quantize-checkpoint]
