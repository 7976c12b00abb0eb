"""The KV cache: keep every layer's keys and values, so a new token costs one row.

Follows the incremental decoding of GPT-2's own sampling code (its `past` tensor)
and of Hugging Face's `past_key_values`, written here as one pre-allocated pair of
float32 arrays per model instead of a tensor grown by concatenation at every
step. `forward_cached` runs a chunk of new tokens (the whole prompt in the
prefill, then one token per decode step) through the same layers as
`gpt2_forward`, attending to everything the cache already holds.

Chapter 12's `mha` and chapter 14's `transformer_block` stay as they are: the
cached versions sit beside them here, and the tests prove the logits agree.

Left out on purpose: batches, paged or quantised caches, and evicting entries
from a full cache (generate() decides what to do when the window is full).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minigpt.attention import attention, merge_heads, split_heads
from minigpt.layers import ffn, layer_norm, linear
from minigpt.model import GPT, check_ids
from minigpt.weights import GPTConfig

__all__ = ["KVCache", "block_cached", "forward_cached", "mha_cached"]


# --8<-- [start:kv-cache]
@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for every layer and head."""

    k: np.ndarray  # [n_layer, n_head, n_ctx, head_dim], rows 0..length-1 in use
    v: np.ndarray  # [n_layer, n_head, n_ctx, head_dim]
    length: int = 0  # how many positions are filled

    @classmethod
    def empty(cls, config: GPTConfig) -> KVCache:
        """Allocate once, for the longest sequence the model can read."""
        shape = (config.n_layer, config.n_head, config.n_ctx,
                 config.n_embd // config.n_head)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def reset(self) -> None:
        """Forget every token; the arrays are kept and overwritten later."""
        self.length = 0
# --8<-- [end:kv-cache]


# --8<-- [start:mha-cached]
def mha_cached(x: np.ndarray, c_attn: dict, c_proj: dict, n_head: int,
               cache: KVCache, layer: int) -> np.ndarray:
    """mha for T new tokens after cache.length cached ones. x: (T, C) -> (T, C)"""
    T, start = len(x), cache.length
    qkv = linear(x, **c_attn)  # [T, C] -> [T, 3C]
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    # write the new keys and values into their rows: no new array, no copy of old
    cache.k[layer, :, start:start + T] = k  # [n_head, T, hs]
    cache.v[layer, :, start:start + T] = v
    keys = cache.k[layer, :, :start + T]  # a view: [n_head, start + T, hs]
    values = cache.v[layer, :, :start + T]
    # new token t sits at position start + t and may see keys 0..start + t;
    # one token sees every cached key, so it needs no mask at all
    mask = None if T == 1 else np.tri(T, start + T, k=start, dtype=bool)
    out = attention(q, keys, values, mask)  # [n_head, T, hs]
    return linear(merge_heads(out), **c_proj)  # [T, C] -> [T, C]
# --8<-- [end:mha-cached]


# --8<-- [start:block-cached]
def block_cached(x: np.ndarray, ln_1: dict, attn: dict, ln_2: dict, mlp: dict,
                 n_head: int, eps: float, cache: KVCache, layer: int) -> np.ndarray:
    """transformer_block, attending to the cache. x: (T, C) -> (T, C)"""
    h = layer_norm(x, **ln_1, eps=eps)
    x = x + mha_cached(h, **attn, n_head=n_head, cache=cache, layer=layer)
    return x + ffn(layer_norm(x, **ln_2, eps=eps), **mlp)  # [T, C]
# --8<-- [end:block-cached]


# --8<-- [start:forward-cached]
def forward_cached(model: GPT, ids: np.ndarray, cache: KVCache) -> np.ndarray:
    """Logits of new tokens that follow the cached ones. ids: (T,) -> (T, V)"""
    ids = check_ids(ids, model.config)
    start, end = cache.length, cache.length + len(ids)
    if end > model.config.n_ctx:
        raise ValueError(f"the cache holds {start} tokens; {len(ids)} more would "
                         f"pass the context of n_ctx={model.config.n_ctx}")
    p, cfg = model.params, model.config
    # the new tokens sit at positions start..end-1
    x = p["wte"][ids] + p["wpe"][start:end]  # [T] -> [T, C]
    for layer, block in enumerate(p["blocks"]):
        x = block_cached(x, **block, n_head=cfg.n_head,
                         eps=cfg.layer_norm_epsilon, cache=cache, layer=layer)
    cache.length = end  # every layer has written rows start..end-1
    x = layer_norm(x, **p["ln_f"], eps=cfg.layer_norm_epsilon)
    return x @ p["wte"].T  # [T, C] @ [C, V] -> [T, V]
# --8<-- [end:forward-cached]
