"""Layer benchmarks (chapters 8-14): GELU accuracy and cost, softmax, layer norm
against one NumPy pass, c_attn as one product or 36, and the parts of a block.

python -m benchmarks layers [--quick]. Writes benchmarks/results/layers.json and
three charts: the GELU curves and their difference (layers-gelu), an attention
heat map with and without the causal mask (attention-weights), and where the
time of one GPT-2-small block goes as the sequence grows (layers-block-time).
Competing variants are timed in alternating rounds; figures are medians.
"""

from __future__ import annotations

import math

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import (
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.attention import (
    attention,
    attention_weights,
    causal_mask,
    merge_heads,
    split_heads,
)
from minigpt.block import transformer_block
from minigpt.info import machine_info
from minigpt.layers import (
    erfc,
    ffn,
    gelu,
    gelu_tanh,
    layer_norm,
    linear,
    log_softmax,
    relu,
    softmax,
    softmax_naive,
)

# The small example drawn as a heat map (chapter 11 prints the same numbers).
WORDS = ["The", "cat", "sat", "on", "the", "mat"]


def heatmap_example() -> tuple[np.ndarray, np.ndarray]:
    """Attention weights of a 6-token toy example, without and with the causal mask."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8)).astype(np.float32)  # 6 tokens, 8 features
    w_q, w_k = (0.4 * rng.standard_normal((8, 8)).astype(np.float32)
                for _ in range(2))
    q, k = x @ w_q, x @ w_k
    return attention_weights(q, k), attention_weights(q, k, causal_mask(6))


def gelu_figures(n: int, rounds: int) -> dict:
    """Max differences between the GELUs and ReLU; erfc accuracy; cost per element."""
    x = np.linspace(-6, 6, 120_001, dtype=np.float32)
    d_tanh = np.abs(gelu(x) - gelu_tanh(x))
    d_relu = np.abs(gelu(x) - relu(x))
    grid = np.linspace(-10, 10, 200_001, dtype=np.float32)
    truth = np.array([math.erfc(float(v)) for v in grid])  # float64, libm
    erfc_err = np.abs(erfc(grid) - truth)
    big = rng_values(n)
    vec_erfc = np.vectorize(math.erfc, otypes=[np.float32])
    seconds = time_alternating({
        "relu": lambda: relu(big), "gelu_tanh": lambda: gelu_tanh(big),
        "gelu_tanh with x**3": lambda: gelu_tanh_power(big),
        "x**3": lambda: big**3, "x * x * x": lambda: big * big * big,
        "gelu (our erfc)": lambda: gelu(big), "erfc (ours)": lambda: erfc(big),
        "erfc (np.vectorize(math.erfc))": lambda: vec_erfc(big)},
        rounds=rounds, min_seconds=0.05)
    return {
        "range": [-6, 6],
        "max_abs_gelu_minus_tanh": float(d_tanh.max()),
        "argmax_gelu_minus_tanh": float(abs(x[d_tanh.argmax()])),
        "max_abs_gelu_minus_relu": float(d_relu.max()),
        "erfc_max_abs_error_on_-10_10": float(erfc_err.max()),
        "elements": n, "ns_per_element": {k: v / n * 1e9 for k, v in seconds.items()},
        "vectorize_over_ours": seconds["erfc (np.vectorize(math.erfc))"]
        / seconds["erfc (ours)"],
        "power_over_multiply": seconds["x**3"] / seconds["x * x * x"],
        "tanh_power_over_exact": seconds["gelu_tanh with x**3"]
        / seconds["gelu (our erfc)"],
        "tanh_over_exact": seconds["gelu_tanh"] / seconds["gelu (our erfc)"],
    }


def gelu_tanh_power(x: np.ndarray) -> np.ndarray:
    """gelu_tanh written with x**3, the slow spelling chapter 8 warns about."""
    k = math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x**3)))


def layer_norm_figures(T: int, C: int, rounds: int) -> dict:
    """Layer norm on a (T, C) block that fits in cache, against one NumPy pass."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, C), dtype=np.float32)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    seconds = time_alternating({"layer_norm": lambda: layer_norm(x, g, b),
                                "one pass (x + 1)": lambda: x + 1.0},
                               rounds=rounds, min_seconds=0.05)
    moved = 2 * x.nbytes  # read x once, write y once: the least any version moves
    return {"shape": [T, C], "bytes": x.nbytes, "seconds": seconds,
            "passes": seconds["layer_norm"] / seconds["one pass (x + 1)"],
            "layer_norm_gb_s": moved / seconds["layer_norm"] / 1e9,
            "one_pass_gb_s": moved / seconds["one pass (x + 1)"] / 1e9}


def qkv_figures(T: int, rounds: int, C: int = 768, n_head: int = 12) -> dict:
    """c_attn as one (C, 3C) product, or as 3 * n_head products of (C, C/n_head)."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((C, 3 * C), dtype=np.float32) * C**-0.5
    b = np.zeros(3 * C, np.float32)
    hs = C // n_head
    parts = [(np.ascontiguousarray(w[:, i * hs:(i + 1) * hs]), b[i * hs:(i + 1) * hs])
             for i in range(3 * n_head)]
    x = rng.standard_normal((T, C), dtype=np.float32)
    seconds = time_alternating({
        "one product": lambda: linear(x, w, b),
        f"{3 * n_head} products": lambda: [linear(x, wi, bi) for wi, bi in parts]},
        rounds=rounds, min_seconds=0.05)
    return {"T": T, "seconds": seconds,
            "small_over_one": seconds[f"{3 * n_head} products"]
            / seconds["one product"]}


def rng_values(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(n, dtype=np.float32) * 3


def softmax_figures(rows: int, vocab: int, rounds: int) -> dict:
    """Cost of stability: naive vs stable softmax on a (rows, vocab) block of logits."""
    x = np.random.default_rng(2).standard_normal((rows, vocab), dtype=np.float32)
    seconds = time_alternating({"naive": lambda: softmax_naive(x),
                                "stable": lambda: softmax(x),
                                "log_softmax": lambda: log_softmax(x)},
                               rounds=rounds, min_seconds=0.1)
    return {"shape": [rows, vocab], "seconds": seconds,
            "stable_over_naive": seconds["stable"] / seconds["naive"]}


def gpt2_small_block(C: int = 768, seed: int = 3) -> dict:
    """Random weights with GPT-2 small's shapes (speed does not care about values)."""
    rng = np.random.default_rng(seed)

    def lin(a: int, b: int) -> dict:
        return {"w": (rng.standard_normal((a, b), dtype=np.float32) * a**-0.5),
                "b": np.zeros(b, np.float32)}

    ln = {"g": np.ones(C, np.float32), "b": np.zeros(C, np.float32)}
    return {"ln_1": ln, "ln_2": dict(ln),
            "attn": {"c_attn": lin(C, 3 * C), "c_proj": lin(C, C)},
            "mlp": {"c_fc": lin(C, 4 * C), "c_proj": lin(4 * C, C)}}


def block_parts(T: int, rounds: int, n_head: int = 12, C: int = 768) -> dict:
    """Median seconds of each part of one block at sequence length T."""
    p = gpt2_small_block(C)
    x = np.random.default_rng(4).standard_normal((T, C), dtype=np.float32)
    qkv = linear(x, **p["attn"]["c_attn"])
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
    merged = merge_heads(attention(q, k, v, causal_mask(T)))

    h = linear(x, **p["mlp"]["c_fc"])  # the MLP's hidden layer, [T, 4C]

    def core() -> np.ndarray:  # what mha does between its two linears
        qs, ks, vs = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))
        return merge_heads(attention(qs, ks, vs, causal_mask(T)))

    seconds = time_alternating({
        "layer norms (2)": lambda: (layer_norm(x, **p["ln_1"]),
                                    layer_norm(x, **p["ln_2"])),
        "c_attn": lambda: linear(x, **p["attn"]["c_attn"]),
        "attention core": core,
        "c_proj": lambda: linear(merged, **p["attn"]["c_proj"]),
        "MLP": lambda: ffn(x, **p["mlp"]),
        "whole block": lambda: transformer_block(x, **p, n_head=n_head),
        "GELU inside the MLP": lambda: gelu_tanh(h)},
        rounds=rounds, min_seconds=0.05)
    parts = ["layer norms (2)", "c_attn", "attention core", "c_proj", "MLP"]
    total = sum(seconds[part] for part in parts)
    return {"T": T, "seconds": seconds,
            "share": {part: seconds[part] / total for part in parts},
            "parts_over_whole": total / seconds["whole block"],
            "gelu_share_of_mlp": seconds["GELU inside the MLP"] / seconds["MLP"],
            "mlp_gflops": 16 * T * C * C / seconds["MLP"] / 1e9}


def run(quick: bool = False) -> dict:
    n, rows, rounds = (1 << 14, 4, 3) if quick else (1 << 20, 64, 9)
    lengths = [16, 64] if quick else [16, 64, 256, 1024]
    machine = machine_info()
    without, causal = heatmap_example()
    # One BLAS thread: the machine is shared, and two threads fighting other
    # work for two cores give timings that swing by 5x from round to round.
    with threadpool_limits(limits=1, user_api="blas"):
        timed = {"gelu": gelu_figures(n, rounds),
                 "softmax": softmax_figures(rows, 50257, rounds),
                 "layer_norm": layer_norm_figures(256, 768, rounds),
                 "qkv": [qkv_figures(T, rounds) for T in lengths],
                 "block": [block_parts(T, 2 * rounds) for T in lengths]}
    results = {"blas_threads_used": 1, **timed,
        "heatmap": {"words": WORDS, "no_mask": without.round(4).tolist(),
                    "causal": causal.round(4).tolist()},
    }
    g, s = results["gelu"], results["softmax"]
    print(f"  max |gelu - gelu_tanh| {g['max_abs_gelu_minus_tanh']:.2e}, "
          f"vectorize/ours {g['vectorize_over_ours']:.0f}x, "
          f"x**3 / x*x*x {g['power_over_multiply']:.0f}x, "
          f"stable/naive softmax {s['stable_over_naive']:.2f}x", flush=True)
    save_results("layers", results)  # to a temporary folder in a quick run
    draw(results, machine)
    return results


def draw(results: dict, machine: dict) -> None:
    """The three SVG charts the chapters show, narrow enough for a phone."""
    plt = pyplot()
    plt.rcParams.update({"font.size": 11, "legend.fontsize": 10})
    meta = {"Date": None}
    caption = machine_caption(machine)

    # GELU, tanh-GELU and ReLU, and below, the difference between the two GELUs
    x = np.linspace(-4, 4, 801, dtype=np.float32)
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.5, 6.4))
    a.plot(x, relu(x), label="ReLU", color="#9e9e9e", lw=1.5)
    a.plot(x, gelu(x), label="GELU (erf)", color="#3f51b5", lw=2.5)
    a.plot(x, gelu_tanh(x), label="GELU (tanh)", color="#ff9800", lw=1.2, ls="--")
    a.set_title("Activation functions")
    a.set_xlabel("x")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(x, gelu(x) - gelu_tanh(x), color="#e91e63")
    b.set_title("GELU (erf) minus GELU (tanh)")
    b.set_xlabel("x")
    b.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    b.grid(alpha=0.3)
    fig.text(0.01, 0.005, caption, fontsize=9, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("layers-gelu"), format="svg", metadata=meta)
    plt.close(fig)

    # attention weights, without and (below) with the causal mask
    hm = results["heatmap"]
    fig, axes = plt.subplots(2, 1, figsize=(5.2, 9.6))
    for ax, key, title in zip(axes, ["no_mask", "causal"],
                              ["No mask: every token sees all", "Causal mask"],
                              strict=True):
        w = np.array(hm[key])
        shown = np.ma.masked_where(np.triu(np.ones_like(w), 1).astype(bool)
                                   & (key == "causal"), w)
        cmap = plt.get_cmap("Blues").copy()
        cmap.set_bad("#eeeeee")
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                masked = key == "causal" and j > i
                ax.text(j, i, "x" if masked else f"{w[i, j]:.2f}", ha="center",
                        va="center", fontsize=11,
                        color="#9e9e9e" if masked else
                        ("white" if w[i, j] > 0.6 else "black"))
        ax.set_xticks(range(len(hm["words"])), hm["words"])
        ax.set_yticks(range(len(hm["words"])), hm["words"])
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(chart_path("attention-weights"), format="svg", metadata=meta)
    plt.close(fig)

    # where one GPT-2-small block spends its time
    parts = ["layer norms (2)", "c_attn", "attention core", "c_proj", "MLP"]
    colors = ["#9e9e9e", "#3f51b5", "#e91e63", "#7986cb", "#ff9800"]
    blocks = results["block"]
    labels = [f"T = {r['T']}" for r in blocks]
    fig, ax = plt.subplots(figsize=(5.8, 4.8))
    left = np.zeros(len(blocks))
    for part, color in zip(parts, colors, strict=True):
        share = np.array([r["share"][part] for r in blocks]) * 100
        ax.barh(labels, share, left=left, color=color, label=part)
        left += share
    for i, r in enumerate(blocks):
        ax.text(101, i, f"{r['seconds']['whole block'] * 1e3:.3g} ms", va="center",
                fontsize=10)
    ax.set_xlim(0, 122)
    ax.set_xlabel("share of the block's time (%);\nwhole-block time at right")
    ax.set_title("One GPT-2-small block, float32,\n1 BLAS thread")
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.45, -0.28))
    fig.text(0.01, 0.005, caption, fontsize=9, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("layers-block-time"), format="svg", metadata=meta)
    plt.close(fig)
