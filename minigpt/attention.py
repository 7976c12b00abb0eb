"""Scaled dot-product attention, the causal mask, and GPT-2's multi-head attention.

Follows "Attention Is All You Need" (Vaswani et al., 2017) for the scaled
dot-product, and GPT-2's layout for multi-head attention: one matmul `c_attn`
makes queries, keys and values together, heads are split by reshape/transpose,
merged back, and mixed by `c_proj`. Weights are arguments, named as in GPT-2.

Masks are boolean: True means "may attend". Every query row must allow at least
one key, or softmax would divide 0 by 0; `attention` raises instead.

Left out on purpose: dropout and training, batches of sequences (one sequence
of T tokens at a time), and the KV cache (chapter 20 adds it beside this code).
"""

from __future__ import annotations

import math

import numpy as np

from minigpt.layers import linear, softmax


# --8<-- [start:causal-mask]
def causal_mask(T: int) -> np.ndarray:
    """Lower-triangular boolean mask: query t may see keys 0..t. -> (T, T)"""
    if T < 1:
        raise ValueError(f"causal_mask: T must be at least 1, got {T}")
    return np.tril(np.ones((T, T), dtype=bool))
# --8<-- [end:causal-mask]


# --8<-- [start:check-mask]
def check_mask(mask: np.ndarray, scores: np.ndarray) -> None:
    """Raise unless mask is boolean, broadcastable to scores, no row empty."""
    if mask.dtype != np.bool_:
        raise TypeError(f"attention: mask must be boolean (True = may attend), "
                        f"got dtype {mask.dtype}")
    try:
        full = np.broadcast_to(mask, scores.shape)
    except ValueError:
        raise ValueError(f"attention: mask of shape {mask.shape} does not fit "
                         f"scores of shape {scores.shape}") from None
    empty = ~full.any(axis=-1)
    if empty.any():
        row = tuple(int(i) for i in np.argwhere(empty)[0])
        raise ValueError(f"attention: mask row {row} allows no key; every query "
                         f"must attend to at least one position")
# --8<-- [end:check-mask]


# --8<-- [start:attention-weights]
def attention_weights(
    q: np.ndarray, k: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """softmax(q k^T / sqrt d), each row sums to 1. q: (T, d), k: (S, d) -> (T, S)"""
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q {q.shape} and k {k.shape} must share "
                         f"the last axis d")
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])  # [T, d] -> [T, S]
    if mask is not None:
        check_mask(mask, scores)
        scores = np.where(mask, scores, -np.inf)  # exp(-inf) = 0: no weight
    return softmax(scores, axis=-1)
# --8<-- [end:attention-weights]


# --8<-- [start:attention]
def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Scaled dot-product attention. q: (T, d), k, v: (S, d) -> (T, d); or batched"""
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must have "
                         f"the same number of positions S")
    return attention_weights(q, k, mask) @ v  # [T, S] @ [S, d] -> [T, d]
# --8<-- [end:attention]


# --8<-- [start:split-heads]
def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """Cut the channels into n_head groups. x: (T, C) -> (n_head, T, C // n_head)"""
    T, C = x.shape
    return x.reshape(T, n_head, C // n_head).transpose(1, 0, 2)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """Undo split_heads. x: (n_head, T, hs) -> (T, n_head * hs)"""
    n_head, T, hs = x.shape
    return x.transpose(1, 0, 2).reshape(T, n_head * hs)
# --8<-- [end:split-heads]


# --8<-- [start:mha]
def mha(x: np.ndarray, c_attn: dict, c_proj: dict, n_head: int) -> np.ndarray:
    """Causal multi-head self-attention, GPT-2 layout. x: (T, C) -> (T, C)"""
    if x.ndim != 2:
        raise ValueError(f"mha: x must be (T, C), got shape {x.shape}")
    T, C = x.shape
    if n_head < 1 or C % n_head:
        raise ValueError(f"mha: n_head={n_head} must divide n_embd={C}")
    qkv = linear(x, **c_attn)  # [T, C] -> [T, 3C]
    q, k, v = np.split(qkv, 3, axis=-1)  # 3 x [T, C]
    q, k, v = (split_heads(a, n_head) for a in (q, k, v))  # [n_head, T, hs]
    out = attention(q, k, v, causal_mask(T))  # [n_head, T, hs], heads batched
    return linear(merge_heads(out), **c_proj)  # [T, C] -> [T, C]
# --8<-- [end:mha]
