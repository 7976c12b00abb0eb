"""Batched decoding: one forward step over many sequences, each weight read once.

Follows the "ragged" batches of serving engines (vLLM, nano-vllm): the new tokens
of B sequences of different lengths are stacked into one [N, C] matrix, so every
weight product `x @ W` of a step runs once for all N rows, and only attention, the
one part that mixes a sequence's own tokens, runs per sequence, each against its
own KV cache. A sequence may bring one token (a decode step) or a chunk of its
prompt (a prefill), in the same step. GPT-2 (`minigpt.kvcache`) and LLaMA
(`minigpt.llama`) both get a batched forward built from their own layers, and a
quantised model's `QuantMatrix` weights go through the same `x @ W`.

Every cache passed in offers chapter 20's `KVCache` interface (`length`,
`check_room`, `store`, `mask`): a contiguous cache or a paged one.

Leaves out on purpose: padding (sequences are stacked, never padded to one
length), attention kernels over several sequences at once, and sampling, which
stays one row at a time.
"""

from __future__ import annotations

import numpy as np

from minigpt.attention import attention, merge_heads, split_heads
from minigpt.layers import ffn, layer_norm, linear
from minigpt.llama import LlamaModel, grouped_attention, project_qkv, rms_norm, swiglu
from minigpt.model import check_ids
from minigpt.rope import rope_angles, rope_half

__all__ = ["batch_forward", "gpt2_batch_forward", "llama_batch_forward", "stack"]


# --8<-- [start:stack-chunks]
def stack(model, chunks: list, caches: list) -> tuple[np.ndarray, ...]:
    """One row per new token. -> ids (N,), positions (N,), splits (B-1,), last (B,)"""
    cfg = model.config
    chunks = [check_ids(c, cfg.n_ctx, cfg.vocab_size) for c in chunks]
    for chunk, cache in zip(chunks, caches, strict=True):
        cache.check_room(len(chunk))  # refused before any cache is written
    sizes = [len(c) for c in chunks]
    positions = np.concatenate([np.arange(cache.length, cache.length + n)
                                for cache, n in zip(caches, sizes, strict=True)])
    ends = np.cumsum(sizes)  # sequence b owns rows ends[b-1] .. ends[b]-1
    return np.concatenate(chunks), positions, ends[:-1], ends - 1
# --8<-- [end:stack-chunks]


# --8<-- [start:gpt2-batch]
def gpt2_batch_attention(x: np.ndarray, c_attn: dict, c_proj: dict, n_head: int,
                         caches: list, layer: int, splits: np.ndarray) -> np.ndarray:
    """mha_cached over stacked sequences. x: (N, C) -> (N, C)"""
    qkv = linear(x, **c_attn)  # [N, C] -> [N, 3C]: the weights read once for N rows
    out = []
    for part, cache in zip(np.split(qkv, splits), caches, strict=True):  # [T_b, 3C]
        q, k, v = (split_heads(a, n_head) for a in np.split(part, 3, axis=-1))
        keys, values = cache.store(layer, k, v)  # this sequence's own cache
        out.append(merge_heads(attention(q, keys, values, cache.mask(len(part)))))
    return linear(np.concatenate(out), **c_proj)  # [N, C] -> [N, C]


def gpt2_batch_forward(model, chunks: list, caches: list) -> np.ndarray:
    """Next-token logits of B sequences, each after its chunk. -> (B, V)"""
    p, cfg = model.params, model.config
    eps = cfg.layer_norm_epsilon
    ids, positions, splits, last = stack(model, chunks, caches)
    x = p["wte"][ids] + p["wpe"][positions]  # [N] -> [N, C]
    for layer, b in enumerate(p["blocks"]):
        h = layer_norm(x, **b["ln_1"], eps=eps)
        x = x + gpt2_batch_attention(h, **b["attn"], n_head=cfg.n_head,
                                     caches=caches, layer=layer, splits=splits)
        x = x + ffn(layer_norm(x, **b["ln_2"], eps=eps), **b["mlp"])
    for chunk, cache in zip(chunks, caches, strict=True):
        cache.length += len(chunk)  # every layer has written its rows
    x = layer_norm(x[last], **p["ln_f"], eps=eps)  # [N, C] -> [B, C]: last rows
    return x @ p["wte"].T  # [B, C] @ [C, V] -> [B, V]
# --8<-- [end:gpt2-batch]


# --8<-- [start:llama-batch]
def llama_batch_attention(x: np.ndarray, q_proj, k_proj, v_proj, o_proj,
                          config, rope: tuple, caches: list, layer: int,
                          splits: np.ndarray, **extra) -> np.ndarray:
    """llama_attention over stacked sequences (extra: Qwen's biases or q/k
    norms, as project_qkv takes them). x: (N, C) -> (N, C)"""
    q, k, v = project_qkv(x, q_proj, k_proj, v_proj, config, **extra)  # [H, N, d]
    # each row turns by its own position, so RoPE runs on all N rows at once
    q, k = rope_half(q, *rope), rope_half(k, *rope)
    out = []
    for qb, kb, vb, cache in zip(np.split(q, splits, axis=1), np.split(k, splits, 1),
                                 np.split(v, splits, axis=1), caches, strict=True):
        keys, values = cache.store(layer, kb, vb)
        out.append(merge_heads(grouped_attention(qb, keys, values,
                                                 cache.mask(qb.shape[1]))))
    return np.concatenate(out) @ o_proj  # [N, H * d] -> [N, C]


def llama_batch_forward(model, chunks: list, caches: list) -> np.ndarray:
    """Next-token logits of B sequences, each after its chunk. -> (B, V)"""
    p, cfg = model.params, model.config
    ids, positions, splits, last = stack(model, chunks, caches)
    rope = rope_angles(positions, cfg.head_dim, cfg.rope_theta,
                       np.asarray(cfg.rope_divisors or cfg.rope_factor))  # as solo
    x = p["embed_tokens"][ids]  # [N] -> [N, C]
    for layer, b in enumerate(p["layers"]):
        h = rms_norm(x, **b["input_layernorm"], eps=cfg.rms_norm_eps)
        x = x + llama_batch_attention(h, **b["self_attn"], config=cfg, rope=rope,
                                      caches=caches, layer=layer, splits=splits)
        h = rms_norm(x, **b["post_attention_layernorm"], eps=cfg.rms_norm_eps)
        x = x + swiglu(h, **b["mlp"])
    for chunk, cache in zip(chunks, caches, strict=True):
        cache.length += len(chunk)
    x = rms_norm(x[last], **p["norm"], eps=cfg.rms_norm_eps)  # [B, C]
    return x @ p["lm_head"]  # [B, C] @ [C, V] -> [B, V]


def batch_forward(model, chunks: list, caches: list) -> np.ndarray:
    """The batched forward of the model's architecture. -> (B, V)"""
    forward = llama_batch_forward if isinstance(model, LlamaModel) else \
        gpt2_batch_forward
    return forward(model, chunks, caches)
# --8<-- [end:llama-batch]
