"""GGUF models with every matrix in Q8_0, the file's Q8_0 blocks taken as they are.

Chapter 29's `QuantMatrix` keeps a matrix as int8 rows in groups of 32 with one
scale per group: GGUF's Q8_0 layout, with the scales set apart. So a Q8_0 tensor
of a GGUF file becomes a `QuantMatrix` by separating each 34-byte block into its
float16 scale and its 32 int8 values, with no float32 copy of the matrix in
between; the model then reads a quarter of float32's bytes per token, through
chapter 30's kernels. Matrices of other types are decoded and quantised to Q8_0
by chapter 29's `quantize_matrix`; vectors (norms, biases) stay float32. Uses
only `QuantMatrix`, its `.T` and `quantize_matrix` from `minigpt.quantize`. The
loader takes the function that reads a matrix as an argument, so that
`block_kernels` can keep 4-bit blocks packed with the same name tables.

Leaves out on purpose: keeping 4-bit matrices in 4 bits (they become Q8_0, 8.5
bits a weight), and the NumPy fallback's speed (without compiled kernels a
quantised model is slower than a float32 one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from minigpt.gguf import GGUFError, GGUFFile, read_gguf, read_tensor
from minigpt.gguf_models import (
    GPT2_BLOCK,
    GPT2_NAMES,
    LLAMA_BLOCK,
    LLAMA_NAMES,
    gpt2_config,
    hf_names,
    llama_config,
    load_gguf,
    meta,
)
from minigpt.kvcache import CachedGPT
from minigpt.llama import LLAMA_FAMILY, LlamaModel, llama_names
from minigpt.quantize import QuantMatrix, quantize_matrix
from minigpt.rope import interleaved_to_half
from minigpt.threads import TABLES
from minigpt.weights import check_layers, gpt2_names, put

__all__ = ["as_q8_0", "load_gguf_q8_0", "q8_0_matrix", "q8_0_params"]

# --8<-- [start:gguf-q8-0-matrix]
Q8_0 = 8  # ggml's type id


def q8_0_matrix(gguf: GGUFFile, name: str) -> QuantMatrix:
    """A Q8_0 tensor as stored: its int8 values, its scales apart. -> (R, K)"""
    info = gguf.tensors[name]
    rows, cols = info.shape
    blocks = gguf.data[info.offset:info.offset + info.nbytes]
    blocks = blocks.reshape(rows, cols // 32, 34)  # 2 bytes of scale, 32 of values
    d = blocks[..., :2].copy().view(np.float16)[..., 0]  # [R, K / 32]
    q = blocks[..., 2:].copy().view(np.int8).reshape(rows, cols)  # [R, K]
    return QuantMatrix("q8_0", q, d.astype(np.float32))


def as_q8_0(gguf: GGUFFile, name: str, heads: int | None = None) -> QuantMatrix:
    """Any matrix of the file in Q8_0; heads: LLaMA's q or k, rows reordered."""
    if gguf.tensors[name].kind == Q8_0:
        m = q8_0_matrix(gguf, name)
    else:  # another type: decoded, then quantised as chapter 29 does
        m = quantize_matrix(np.ascontiguousarray(read_tensor(gguf, name)), "q8_0")
    if heads:  # a row keeps its own scales, so both move together
        m = QuantMatrix("q8_0", interleaved_to_half(m.q, heads),
                        interleaved_to_half(m.d, heads))
    return m
# --8<-- [end:gguf-q8-0-matrix]


# --8<-- [start:gguf-q8-0-params]
def q8_0_params(gguf: GGUFFile, names: dict, table: dict, params: dict,
                heads: dict, out_in: bool, matrix: Callable = as_q8_0) -> dict:
    """Our params from the file: matrices by `matrix` (in Q8_0), vectors float32,
    shapes checked. out_in: the name table gives weights [out, in] (LLaMA) or
    [in, out] (GPT-2)."""
    table = dict(table)  # ours to empty: what is left at the end is missing
    for hf, name in names.items():
        if hf not in table:
            raise GGUFError(f"{gguf.path}: tensor {name!r}: not a parameter")
        where, shape = table.pop(hf)
        weight = len(shape) == 2 and where[0] not in TABLES
        x = matrix(gguf, name, heads.get(hf)) if len(shape) == 2 else \
            read_tensor(gguf, name)
        want = shape[::-1] if weight and not out_in else shape  # rows are outputs
        if tuple(x.shape) != tuple(want):
            raise GGUFError(f"{gguf.path}: tensor {name!r}: shape {list(x.shape)}, "
                            f"expected {list(want)} from the metadata")
        put(params, where, x.T if weight else x)  # a weight multiplies as x @ w
    if table:
        raise GGUFError(f"{gguf.path}: tensor for {next(iter(table))!r}: missing")
    return params
# --8<-- [end:gguf-q8-0-params]


# --8<-- [start:load-gguf-q8-0]
def load_gguf_q8_0(path: str | Path, matrix: Callable = as_q8_0
                   ) -> LlamaModel | CachedGPT:
    """A model from a .gguf file with every matrix in Q8_0 (Q8_0 ones as stored),
    or as another `matrix(gguf, name, heads)` reads it."""
    gguf = read_gguf(path)
    arch = meta(gguf, "general.architecture", str)
    if arch not in ("gpt2", *LLAMA_FAMILY) or "token_embd.weight" not in gguf.tensors:
        return load_gguf(path)  # which says what is wrong
    check_layers(meta(gguf, f"{arch}.block_count"), gguf.tensors, str(gguf.path))
    if arch == "gpt2":
        config = gpt2_config(gguf)
        names = hf_names(gguf, GPT2_NAMES, GPT2_BLOCK, "h")
        names.pop("lm_head.weight", None)  # GPT-2's head is the embedding
        params = q8_0_params(gguf, names, gpt2_names(config),
                             {"blocks": [{} for _ in range(config.n_layer)]}, {},
                             out_in=False, matrix=matrix)
        return CachedGPT(config, params)
    config = llama_config(gguf, arch)
    heads = {f"layers.{i}.self_attn.{p}_proj.weight": n for i in
             range(config.n_layer) for p, n in (("q", config.n_head),
                                                ("k", config.n_kv_head))}
    params = q8_0_params(gguf, hf_names(gguf, LLAMA_NAMES, LLAMA_BLOCK, "layers"),
                         llama_names(config),
                         {"layers": [{} for _ in range(config.n_layer)]},
                         heads if arch == "llama" else {}, out_in=True,
                         matrix=matrix)
    if config.tie_word_embeddings:
        params["lm_head"] = params["embed_tokens"].T  # the table, as a head
    return LlamaModel(config, params)
# --8<-- [end:load-gguf-q8-0]
