"""Quantisation: accuracy and decode speed of q8_0 and int8 against float32.

python -m benchmarks quant [--quick]. Accuracy: perplexity on the last tenth of
Tiny Shakespeare (the demo models' held-out text, non-overlapping windows of
n_ctx tokens) for float32 and each scheme, with how often the argmax agrees;
greedy agreement over 200 generated tokens; and the relative logit error on a
model of GPT-2 124M's shape with random weights (std 0.02, as GPT-2 starts).
Speed: that model saved as float32 and as each scheme (quantize_checkpoint),
every variant loaded memory-mapped and decoding greedily through generate(), in
short alternating rounds (the machine is shared), medians, at 1 and 2 threads,
with the memory bandwidth measured in every round to set each ceiling. Memory:
peak RSS of a fresh process that loads and generates. Writes
benchmarks/results/quant.json and the charts quant-speed and quant-roofline.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import minigpt
from benchmarks.bench_threads import products, products_ms
from benchmarks.common import (
    ROOT,
    chart_path,
    float32_as_cli,
    machine_caption,
    pyplot,
    save_results,
    settle,
)
from minigpt.bench import measure_bandwidth, save_random_gpt2
from minigpt.generation import generate
from minigpt.info import machine_info
from minigpt.machine_code import compile_object, kernels_ir, machine_code
from minigpt.models import load_model, load_tokenizer
from minigpt.quantize import (
    QuantMatrix,
    load_quantized,
    quantize_checkpoint,
    quantize_model,
)
from minigpt.threads import set_kernel_threads, threaded_model
from minigpt.weights import GPTConfig

SCHEMES = ("q8_0", "int8")
PROMPT = 16


def softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per position. logits: (T, V), targets: (T,) -> (T,)"""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(targets)), targets]


def held_out_ids(folder: Path) -> np.ndarray:
    """The last tenth of Tiny Shakespeare, in the model's own tokens."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return np.array(load_tokenizer(folder).encode(text[int(len(text) * 0.9):]))


def perplexities(folder: Path, windows: int | None) -> dict:
    """Perplexity and argmax agreement of float32 and each scheme on held-out text."""
    model = load_model(folder)
    variants = {"float32": model, **{s: quantize_model(model, s) for s in SCHEMES}}
    ids, n = held_out_ids(folder), model.config.n_ctx
    count = min(windows or 10**9, (len(ids) - 1) // n)
    nll = {k: [] for k in variants}
    same = {k: 0 for k in variants}
    for w in range(count):  # non-overlapping windows, as in training's evaluation
        x, y = ids[w * n:(w + 1) * n], ids[w * n + 1:(w + 1) * n + 1]
        ref = None
        for name, m in variants.items():
            logits = m.forward(x)
            ref = logits.argmax(-1) if ref is None else ref
            nll[name].append(softmax_nll(logits, y))
            same[name] += int((logits.argmax(-1) == ref).sum())
    out = {"windows": count, "tokens": count * n}
    for name in variants:
        ppl = float(np.exp(np.concatenate(nll[name]).mean()))
        out[name] = {"perplexity": ppl, "argmax_agreement": same[name] / (count * n)}
    for s in SCHEMES:
        out[s]["perplexity_change"] = out[s]["perplexity"] / out["float32"][
            "perplexity"] - 1
    return out


def greedy_agreement(folder: Path, new: int) -> dict:
    """Greedy tokens of each scheme against float32's: the same prefix, and in all."""
    model = load_model(folder)
    prompt = load_tokenizer(folder).encode("ROMEO:")
    want = list(generate(model, prompt, new))
    out = {"new_tokens": new, "float32_tokens": len(want)}
    for s in SCHEMES:  # a text may end early, at an end-of-text token
        got = list(generate(quantize_model(model, s), prompt, new))
        pairs = list(zip(got, want, strict=False))
        prefix = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
        out[s] = {"same_prefix": prefix, "tokens": len(got),
                  "same_positions": sum(a == b for a, b in pairs)}
    return out


def logit_errors(model, n_tokens: int = 64) -> dict:
    """Relative error of each scheme's logits against float32's, one prompt."""
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, n_tokens)
    want = model.forward(ids)
    out = {}
    for s in SCHEMES:
        got = quantize_model(model, s).forward(ids)
        out[s] = {"relative_error": float(np.linalg.norm(got - want)
                                          / np.linalg.norm(want)),
                  "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean())}
    return out


def model_bytes(params, config, position: int) -> int:
    """Bytes one decode step reads: every weight once (wpe: one row), K and V."""
    total = 0
    for x in iter_leaves(params):
        total += x.nbytes
    wpe = params["wpe"]
    total -= wpe.nbytes * (config.n_ctx - 1) // config.n_ctx  # one row is read
    return total + 2 * config.n_layer * position * config.n_embd * 4


def iter_leaves(tree):
    if isinstance(tree, dict):
        tree = tree.values()
    for x in tree:
        if isinstance(x, np.ndarray | QuantMatrix):
            yield x
        else:
            yield from iter_leaves(x)


def timed(model, prompt: list[int], new: int) -> tuple[float, list[int]]:
    """Decode tokens/s (after the first token) of one greedy generation."""
    stamps, tokens = [], []
    for t in generate(model, prompt, new):
        stamps.append(time.perf_counter())
        tokens.append(t)
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens


def speed_rounds(models: dict, new: int, rounds: int, threads: list[int]) -> dict:
    """Every variant once per round and thread count, the bandwidth first.

    Each variant runs as the command line runs it: float32 on one BLAS thread, or
    on more through chapter 23's threads; the quantised kernels take our threads
    and leave BLAS one. Beside each decode, the step's matrix products alone.
    """
    vocab = next(iter(models.values())).config.vocab_size
    prompt = np.random.default_rng(0).integers(0, vocab, PROMPT).tolist()
    rows = threaded_model(models["float32"])
    out = {n: {"bandwidth": [], **{k: [] for k in models}} for n in threads}
    alone = {n: {k: [] for k in models} for n in threads}
    tokens = {}
    for _ in range(rounds):
        for n in threads:
            set_kernel_threads(n)
            with threadpool_limits(n, user_api="blas"):
                out[n]["bandwidth"].append(max(measure_bandwidth(256, 3).values()))
            for name, m in models.items():
                # our threads split every product and leave BLAS one
                m, blas = float32_as_cli(m, rows, n) if name == "float32" else (m, 1)
                settle()  # each from idle thread pools
                with threadpool_limits(blas, user_api="blas"):
                    rate, tokens[name] = timed(m, prompt, new)
                    alone[n][name].append(products_ms(m, blas, 3))
                out[n][name].append(rate)
    set_kernel_threads(1)  # the default again
    return {str(n): {"bandwidth_gb_s": statistics.median(r.pop("bandwidth")),
                     "tok_s": {k: statistics.median(v) for k, v in r.items()},
                     "products_ms": {k: statistics.median(v)
                                     for k, v in alone[n].items()},
                     "tok_s_runs": r}
            for n, r in out.items()} | {"tokens_equal_float32": {
                k: tokens[k] == tokens["float32"] for k in models}}


RSS_SCRIPT = """
import sys
from minigpt.bench import peak_rss_bytes
from minigpt.generation import generate
folder, kind, new = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "float32":  # no LLVM in this process
    from minigpt.models import load_model
    model = load_model(folder)
else:
    if kind == "numpy":  # as if llvmlite were not installed: no machine code
        sys.modules["llvmlite"] = None
    from minigpt.quantize import load_quantized
    from minigpt.threads import set_kernel_threads
    model = load_quantized(folder)
    set_kernel_threads(2 if kind == "2 threads" else 1)
base = peak_rss_bytes()
list(generate(model, list(range(16)), new))
print(peak_rss_bytes(), base)
"""


def peak_rss(folder: Path, kind: str, new: int) -> dict:
    """Peak resident memory of a fresh process that loads and generates."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(folder), kind,
                          str(new)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return {"peak_rss_bytes": int(out[0]), "rss_after_load_bytes": int(out[1]),
            "file_bytes": (folder / "model.safetensors").stat().st_size}


def kernel_code() -> dict:
    """Instructions in our machine code, read as assembly (LLVM prints it)."""
    if not machine_code():
        return {}
    asm = compile_object(kernels_ir(), assembly=True).decode()
    return {"machine code": {k: asm.count(k) for k in (
        "vpdpbusd", "vpmaddubsw", "vpsignb", "vfmadd", "prefetch")}}


def demo_accuracy(windows: int | None, new: int) -> dict:
    out = {"demo": {"perplexity": perplexities(minigpt.DEMO_MODEL, windows),
                    "greedy": greedy_agreement(minigpt.DEMO_MODEL, new)}}
    llama = getattr(minigpt, "DEMO_LLAMA", None)
    if llama is not None and (Path(llama) / "model.safetensors").is_file():
        out["demo_llama"] = {"perplexity": perplexities(Path(llama), windows),
                             "greedy": greedy_agreement(Path(llama), new)}
    else:
        out["demo_llama"] = None  # not shipped yet
    return out


def run(quick: bool = False) -> dict:
    rounds, new = (1, 8) if quick else (5, 32)
    threads = [1, 2]
    results: dict = {"shape": "GPT-2 124M (random weights, std 0.02)",
                     "prompt_tokens": PROMPT, "new_tokens": new, "rounds": rounds}
    results.update(demo_accuracy(4 if quick else None, 20 if quick else 200))
    # quick: a small GPT-2 shape, so that a smoke run takes seconds
    config = GPTConfig(vocab_size=4096, n_ctx=128, n_embd=256, n_layer=2,
                       n_head=4) if quick else GPTConfig()
    if quick:
        results["shape"] = "small GPT-2 shape (quick run)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_gpt2(Path(tmp) / "float32", config)
        model = load_model(folder)
        results["logits"] = logit_errors(model, 16 if quick else 64)
        models = {"float32": model}
        for s in SCHEMES:
            models[s] = load_quantized(quantize_checkpoint(folder, Path(tmp) / s, s))
        mid = PROMPT + new // 2
        results["bytes_per_token"] = {k: model_bytes(m.params, config, mid)
                                      for k, m in models.items()}
        results["product_bytes"] = {k: sum(w.nbytes for w in products(m.params))
                                    for k, m in models.items()}
        results["threads"] = speed_rounds(models, new, rounds, threads)
        results["kernel_instructions"] = kernel_code()
        code = machine_code()
        results["machine_code_bytes"] = len(code["int8"].code) if code else None
        results["memory"] = {k: peak_rss(Path(tmp) / k, k, new) for k in
                             ("float32", *SCHEMES)}
        results["memory"]["q8_0 (NumPy path)"] = peak_rss(Path(tmp) / "q8_0",
                                                          "numpy", 4)
        results["memory"]["q8_0 (2 threads)"] = peak_rss(
            Path(tmp) / "q8_0", "2 threads", new)
        del models, model
    results["targets"] = targets(results)
    save_results("quant", results, command="python -m benchmarks quant")
    draw(results, machine_info())
    print(json.dumps(results["targets"], indent=2))
    return results


def derived(r: dict) -> dict:
    """Speed-ups, fractions of each ceiling and memory ratios, from the medians."""
    out = {}
    for n, t in r["threads"].items():
        if not isinstance(t, dict) or "tok_s" not in t:
            continue
        base = t["tok_s"]["float32"]
        out[n] = {k: {"speedup": v / base,
                      "ceiling_tok_s": t["bandwidth_gb_s"] * 1e9
                      / r["bytes_per_token"][k],
                      "fraction_of_ceiling": v * r["bytes_per_token"][k]
                      / (t["bandwidth_gb_s"] * 1e9)}
                  for k, v in t["tok_s"].items()}
    return out


def targets(r: dict) -> dict:
    r["derived"] = derived(r)
    default = "1"  # the CLI's default --threads
    mem = r["memory"]
    out = {}
    for s in SCHEMES:
        out[f"{s} decode vs float32, {default} thread"] = {
            "measured": r["derived"][default][s]["speedup"], "target": 1.8,
            "met": r["derived"][default][s]["speedup"] >= 1.8}
        ratio = mem[s]["peak_rss_bytes"] / mem["float32"]["peak_rss_bytes"]
        out[f"{s} peak RSS / float32"] = {"measured": ratio, "target": 0.4,
                                          "met": ratio <= 0.4}
    change = r["demo"]["perplexity"]["q8_0"]["perplexity_change"]
    out["q8_0 perplexity change (demo)"] = {"measured": change, "target": 0.01,
                                            "met": change <= 0.01}
    return out


def draw(r: dict, machine: dict) -> None:
    """Decode speed against each ceiling; the roofline with int8's bytes."""
    plt = pyplot()
    caption = f"{machine_caption(machine)}; python -m benchmarks quant"

    def save(fig, name: str) -> None:
        fig.text(0.01, 0.01, caption, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(chart_path(name), format="svg", metadata={"Date": None})
        plt.close(fig)

    names = list(r["bytes_per_token"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    y = np.arange(len(names))
    for i, n in enumerate(r["derived"]):
        rates = [r["threads"][n]["tok_s"][k] for k in names]
        bars = ax.barh(y + 0.4 * i - 0.2, rates, height=0.4,
                       label=f"{n} thread{'s' if n != '1' else ''}")
        for b, v in zip(bars, rates, strict=True):
            ax.text(v, b.get_y() + 0.2, f" {v:.0f}", va="center", fontsize=7)
    for k, yy in zip(names, y, strict=True):  # each scheme's own ceiling, 1 thread
        c = r["derived"]["1"][k]["ceiling_tok_s"]
        ax.plot([c, c], [yy - 0.45, yy + 0.45], color="crimson", ls="--", lw=1)
    ax.plot([], [], color="crimson", ls="--", label="bandwidth ceiling (1 thread)")
    top = max(r["derived"]["1"][k]["ceiling_tok_s"] for k in names)
    ax.set_xlim(0, top * 1.5)  # room for the legend right of the ceilings
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s (median), GPT-2 124M shape, generate()")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, "quant-speed")

    # the roofline: tokens/s against bytes per token, one curve per bandwidth
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bw = r["threads"]["1"]["bandwidth_gb_s"]
    mb = np.linspace(50, 600, 200)
    ax.plot(mb, bw * 1e3 / mb, color="crimson",
            label=f"ceiling: {bw:.1f} GB/s / bytes per token")
    for k in names:
        b = r["bytes_per_token"][k] / 1e6
        ax.plot(b, r["threads"]["1"]["tok_s"][k], "o", label=f"{k}, 1 thread")
        ax.annotate(k, (b, r["threads"]["1"]["tok_s"][k]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("MB read per token")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    save(fig, "quant-roofline")
