"""The KV cache: keep every layer's keys and values, so a new token costs one row.

Follows the incremental decoding of GPT-2's own sampling code (its `past` tensor)
and of Hugging Face's `past_key_values`, written here as one pre-allocated pair of
float32 arrays per model instead of a tensor grown by concatenation at every
step. `gpt2_forward_cached` runs a chunk of new tokens (the whole prompt in the
prefill, then one token per decode step) through the same layers as
`gpt2_forward`, attending to everything the cache already holds, and can stop the
output head at the last position, the only one generation reads. `CachedGPT` is
chapter 17's model with the two methods generate() wants from a cache
(`empty_cache`, `forward_cached`). `KVCache` serves every model of the book: the
LLaMA of chapter 22 stores its fewer key/value heads in it the same way.

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

__all__ = ["CachedGPT", "KVCache", "block_cached", "gpt2_forward_cached",
           "mha_cached"]


# --8<-- [start:kv-cache]
@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, for every layer and head."""

    k: np.ndarray  # [n_layer, n_head, capacity, head_dim], rows 0..length-1 in use
    v: np.ndarray  # [n_layer, n_head, capacity, head_dim]
    length: int = 0  # how many positions are filled

    # "KVCache" in quotes: pasted into a session, the class does not exist yet
    @classmethod
    def empty(cls, n_layer: int, n_head: int, capacity: int,
              head_dim: int) -> "KVCache":  # noqa: UP037
        """Allocate once, for the longest sequence the model will read."""
        shape = (n_layer, n_head, capacity, head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def reset(self) -> None:
        """Forget every token; the arrays are kept and overwritten later."""
        self.length = 0

    def check_room(self, T: int) -> None:
        """Refuse T more tokens if they do not fit after the cached ones."""
        capacity = self.k.shape[2]
        if self.length + T > capacity:
            raise ValueError(f"the cache holds {self.length} of {capacity} "
                             f"positions; {T} more do not fit")

    def store(self, layer: int, k: np.ndarray,
              v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write T new keys and values after the cached ones; return all of them.

        k, v: (n_head, T, head_dim) -> keys, values: (n_head, length + T, head_dim)
        """
        start, end = self.length, self.length + k.shape[1]
        self.k[layer, :, start:end] = k  # into their rows: no copy of the old ones
        self.v[layer, :, start:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]  # views

    def mask(self, T: int) -> np.ndarray | None:
        """Which keys each of T new tokens may see. -> (T, length + T), or None"""
        # new token t sits at position length + t and may see keys 0..length + t;
        # one token sees every key, so it needs no mask at all
        return None if T == 1 else np.tri(T, self.length + T, k=self.length,
                                          dtype=bool)
# --8<-- [end:kv-cache]


# --8<-- [start:mha-cached]
def mha_cached(x: np.ndarray, c_attn: dict, c_proj: dict, n_head: int,
               cache: KVCache, layer: int) -> np.ndarray:
    """mha for T new tokens after cache.length cached ones. x: (T, C) -> (T, C)"""
    qkv = linear(x, **c_attn)  # [T, C] -> [T, 3C]
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    keys, values = cache.store(layer, k, v)  # [n_head, length + T, hs]
    out = attention(q, keys, values, cache.mask(len(x)))  # [n_head, T, hs]
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
def gpt2_forward_cached(ids: np.ndarray, cache: KVCache, wte: np.ndarray,
                        wpe: np.ndarray, blocks: list[dict], ln_f: dict,
                        n_head: int, eps: float = 1e-5,
                        last_only: bool = False) -> np.ndarray:
    """Logits of new tokens that follow the cached ones. ids: (T,) -> (T, V)"""
    start, end = cache.length, cache.length + len(ids)
    x = wte[ids] + wpe[start:end]  # the new tokens sit at positions start..end-1
    for layer, block in enumerate(blocks):
        x = block_cached(x, **block, n_head=n_head, eps=eps, cache=cache,
                         layer=layer)
    cache.length = end  # every layer has written rows start..end-1
    if last_only:  # only the last position predicts the next token
        x = x[-1:]  # [T, C] -> [1, C]: the head below costs 1/T as much
    x = layer_norm(x, **ln_f, eps=eps)
    return x @ wte.T  # [T, C] @ [C, V] -> [T, V]
# --8<-- [end:forward-cached]


# --8<-- [start:cached-gpt]
@dataclass(frozen=True)
class CachedGPT(GPT):
    """Chapter 17's GPT plus a KV cache: the model generate() expects."""

    def empty_cache(self, capacity: int | None = None) -> KVCache:
        """A cache for capacity positions (None: the longest the model can read)."""
        cfg = self.config
        if capacity is not None and not 1 <= capacity <= cfg.n_ctx:
            raise ValueError(f"capacity {capacity}: the model has positions for "
                             f"1 to n_ctx={cfg.n_ctx} tokens")
        return KVCache.empty(cfg.n_layer, cfg.n_head, capacity or cfg.n_ctx,
                             cfg.n_embd // cfg.n_head)

    def forward_cached(self, ids: np.ndarray, cache: KVCache,
                       last_only: bool = False) -> np.ndarray:
        """Logits of new tokens after those in the cache. ids: (T,) -> (T, V)"""
        ids = check_ids(ids, self.config.n_ctx, self.config.vocab_size)
        cache.check_room(len(ids))
        if cache.length + len(ids) > self.config.n_ctx:  # wpe has no row for them
            raise ValueError(f"positions {cache.length} to {cache.length + len(ids)}"
                             f" go past n_ctx={self.config.n_ctx}")
        return gpt2_forward_cached(ids, cache, **self.params,
                                   n_head=self.config.n_head,
                                   eps=self.config.layer_norm_epsilon,
                                   last_only=last_only)
# --8<-- [end:cached-gpt]
