"""RoPE and LLaMA benchmarks (chapter 22): rotation cost, GQA's cache and decode speed.

python -m benchmarks rope [--quick]. Writes benchmarks/results/rope.json and two
charts: how RoPE's angles turn and what that does to attention scores against
distance (rope-angles), and the KV cache size and decode time of one
LLaMA-shaped model as the number of key/value heads shrinks (rope-gqa).
Variants are timed in alternating rounds with one BLAS thread; figures are medians.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.info import machine_info
from minigpt.llama import LlamaConfig, LlamaModel
from minigpt.rope import rope_angles, rope_half, rope_interleaved

# GPT-2 small's size in LLaMA's shape: 12 blocks of width 768, 12 query heads
SHAPE = dict(vocab_size=32000, n_ctx=1024, n_embd=768, n_layer=12, n_head=12,
             head_dim=64, n_hidden=2048)
# published shapes, to compute (not measure) what GQA saves at full context
PUBLISHED = {
    "TinyLlama-1.1B": dict(n_layer=22, n_head=32, n_kv_head=4, head_dim=64,
                           n_ctx=2048),
    "Llama-2-7B": dict(n_layer=32, n_head=32, n_kv_head=32, head_dim=128,
                       n_ctx=4096),
    "Llama-3-8B": dict(n_layer=32, n_head=32, n_kv_head=8, head_dim=128,
                       n_ctx=8192),
}


def random_llama(config: LlamaConfig, seed: int = 0) -> LlamaModel:
    """Random float32 weights of the config's shapes (speed ignores the values)."""
    rng = np.random.default_rng(seed)
    C, F, V = config.n_embd, config.n_hidden, config.vocab_size
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim

    def w(a: int, b: int) -> np.ndarray:
        return rng.standard_normal((a, b), dtype=np.float32) * a**-0.5

    layer = lambda: {  # noqa: E731
        "input_layernorm": {"g": np.ones(C, np.float32)},
        "post_attention_layernorm": {"g": np.ones(C, np.float32)},
        "self_attn": {"q_proj": w(C, q), "k_proj": w(C, kv), "v_proj": w(C, kv),
                      "o_proj": w(q, C)},
        "mlp": {"gate_proj": w(C, F), "up_proj": w(C, F), "down_proj": w(F, C)}}
    embed = rng.standard_normal((V, C), dtype=np.float32) * 0.02
    params = {"embed_tokens": embed, "layers": [layer() for _ in range(config.n_layer)],
              "norm": {"g": np.ones(C, np.float32)}, "lm_head": w(C, V)}
    return LlamaModel(config, params)


def cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, n_ctx: int,
                **_: object) -> int:
    """Keys and values, float32, for a full context."""
    return 2 * n_layer * n_kv_head * n_ctx * head_dim * 4


def gqa_figures(kv_heads: list[int], context: int, rounds: int) -> dict:
    """Decode one token after `context` cached ones, for each n_kv_head."""
    steps, sizes, read = {}, {}, {}
    for n_kv in kv_heads:
        model = random_llama(LlamaConfig(**SHAPE, n_kv_head=n_kv))
        cache = model.empty_cache()
        model.forward_cached(np.arange(context) % 1000, cache)  # prefill once
        # bytes one step must read: every weight but the embedding (one row of
        # it), and the cached keys and values of `context` positions
        weights = sum(a.nbytes for a in leaves(model.params)) - \
            model.params["embed_tokens"].nbytes
        read[n_kv] = weights + cache.k[:, :, :context].nbytes * 2

        def step(model=model, cache=cache) -> np.ndarray:
            cache.length = context  # overwrite the same row every time
            return model.forward_cached(np.array([7]), cache)

        steps[f"{n_kv} kv heads"] = step
        sizes[n_kv] = cache.k.nbytes + cache.v.nbytes
    seconds = time_alternating(steps, rounds=rounds, min_seconds=0.2)
    return {"context": context, "shape": SHAPE,
            "rows": [{"n_kv_head": n, "cache_bytes": sizes[n], "bytes_read": read[n],
                      "decode_seconds": seconds[f"{n} kv heads"],
                      "gb_per_s": read[n] / seconds[f"{n} kv heads"] / 1e9}
                     for n in kv_heads]}


def leaves(tree: dict | list) -> list[np.ndarray]:
    """Every array in a nested dict/list of parameters."""
    items = tree.values() if isinstance(tree, dict) else tree
    out = []
    for x in items:
        out += [x] if isinstance(x, np.ndarray) else leaves(x)
    return out


def rope_cost(rounds: int) -> dict:
    """Both conventions on a decode step's queries and a prefill's, and the angles."""
    rng = np.random.default_rng(1)
    out = {}
    for T in (1, 512):
        x = rng.standard_normal((12, T, 64), dtype=np.float32)
        cos, sin = rope_angles(np.arange(T), 64)
        out[T] = time_alternating({
            "rope_half": lambda x=x, c=cos, s=sin: rope_half(x, c, s),
            "rope_interleaved": lambda x=x, c=cos, s=sin: rope_interleaved(x, c, s),
            "rope_angles": lambda T=T: rope_angles(np.arange(T), 64)},
            rounds=rounds, min_seconds=0.05)
    return out


def score_curve(d: int = 64, distances: int = 256) -> list[float]:
    """Mean score of q with k (q = k, all ones rotated) against their distance."""
    x = np.ones((1, d), np.float32)  # the same vector as query and key
    cos, sin = rope_angles(np.arange(distances), d)
    keys = rope_half(np.repeat(x, distances, 0), cos, sin)  # k at positions 0..
    return (keys @ x[0] / d).tolist()  # q at position 0


def run(quick: bool = False) -> dict:
    kv_heads, context, rounds = ([12, 4], 64, 3) if quick else ([12, 6, 4, 2, 1],
                                                                1000, 15)
    machine = machine_info()
    with threadpool_limits(limits=1, user_api="blas"):
        gqa = gqa_figures(kv_heads, context, rounds)
        cost = rope_cost(rounds)
    published = {name: {"mha_bytes": cache_bytes(**{**s, "n_kv_head": s["n_head"]}),
                        "gqa_bytes": cache_bytes(**s), **s}
                 for name, s in PUBLISHED.items()}
    results = {"blas_threads_used": 1, "gqa": gqa, "rope_seconds": cost,
               "published_cache": published, "score_curve": score_curve()}
    decode = {r["n_kv_head"]: r["decode_seconds"] for r in gqa["rows"]}
    share = cost[1]["rope_half"] * 2 * SHAPE["n_layer"] / decode[kv_heads[0]]
    results["rope_share_of_decode_step"] = share
    print("  decode ms/token by kv heads: "
          + ", ".join(f"{n}: {s * 1e3:.1f}" for n, s in decode.items())
          + f"; RoPE share of a decode step {share:.1%}", flush=True)
    save_results("rope", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """The two SVG charts chapter 22 shows."""
    plt = pyplot()
    meta = {"Date": None}
    caption = machine_caption(machine)

    # how the pairs turn, and the score of a vector with itself against distance
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    positions = np.arange(0, 120)
    cos, _ = rope_angles(positions, 64)
    colors = ["#3f51b5", "#009688", "#ff9800", "#e91e63"]
    for j, color in zip([0, 4, 12, 31], colors, strict=True):
        a.plot(positions, cos[:, j], color=color, lw=1.5, label=f"pair {j}")
    a.set_title("cos(position x frequency), head_dim 64")
    a.set_xlabel("position")
    a.legend(fontsize=8, loc="lower left")
    a.grid(alpha=0.3)
    b.plot(results["score_curve"], color="#3f51b5")
    b.set_title("score of q with the same k, vs distance")
    b.set_xlabel("distance between the two positions")
    b.grid(alpha=0.3)
    fig.text(0.01, 0.01, "computed, not timed", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("rope-angles"), format="svg", metadata=meta)
    plt.close(fig)

    # GQA: cache size and decode time against the number of kv heads
    rows = results["gqa"]["rows"]
    labels = [str(r["n_kv_head"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.bar(labels, [r["cache_bytes"] / 2**20 for r in rows], color="#3f51b5")
    a.set_title("KV cache for 1024 tokens (MiB, float32)")
    a.set_xlabel("key/value heads (12 query heads)")
    b.bar(labels, [r["decode_seconds"] * 1e3 for r in rows], color="#ff9800")
    b.set_title(f"decode one token after {results['gqa']['context']} (ms)")
    b.set_xlabel("key/value heads (12 query heads)")
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y")
    fig.text(0.01, 0.01, caption + ", 1 BLAS thread", fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("rope-gqa"), format="svg", metadata=meta)
    plt.close(fig)
