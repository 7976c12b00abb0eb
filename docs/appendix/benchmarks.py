# ---
# jupyter:
#   render_macros: true
# ---

# %% [markdown]
# # Appendix: Benchmarks
#
# This page is a notebook that is executed every time the site is built, so what it
# shows is this build's machine and this build's code. Full-size runs come from
# `make bench`, which writes JSON files to `benchmarks/results/` (each with the
# machine that produced it) and the charts that the chapters show. This page draws
# those results and adds a small live measurement of its own.

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import SVG, display
from matplotlib_inline.backend_inline import set_matplotlib_formats

from minigpt.info import describe

# Charts as SVG, 5 inches wide with 10-point text at least: readable on a phone.
# display(fig) shows a figure whatever matplotlib's backend (the site's build
# runs with MPLBACKEND=Agg, where plt.show() shows nothing).
set_matplotlib_formats("svg")
plt.rcParams.update({"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
                     "xtick.labelsize": 10, "ytick.labelsize": 10,
                     "legend.fontsize": 10})

print(describe())

# %% [markdown]
# ## A live measurement: BLAS matrix multiplication
#
# A square matrix product of size $n$ does $2n^3$ floating-point operations (one
# multiply and one add per term). Dividing by the time gives GFLOPS, billions of
# operations per second. Small products cannot keep the CPU busy; large ones can.
# The median of several runs is shown, because this machine is shared.

# %%
def gflops(n: int, repeats: int = 5) -> float:
    """Median GFLOPS of an (n, n) @ (n, n) float32 product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(times) / 1e9


sizes = [32, 64, 128, 256, 512]
live = [gflops(n) for n in sizes]
for n, g in zip(sizes, live, strict=True):
    print(f"n = {n:4d}: {g:6.1f} GFLOPS")

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(sizes, live, marker="o")
ax.set_xscale("log", base=2)
ax.set_xlabel("matrix size n")
ax.set_ylabel("GFLOPS (float32)")
ax.set_title("np.matmul at build time")
ax.grid(alpha=0.3)
fig.tight_layout()
display(fig)
plt.close(fig)

# %% [markdown]
# ## Stored results of the benchmarks
#
# Each chapter's benchmark saved its figures with the machine it ran on. The figures
# quoted on this page come from these files:
#
# {{ measured("matmul", "layout", "bandwidth", "decode", "quant") }}
#
# and here is everything on record, by topic.

# %%
results = Path("benchmarks/results")
for path in sorted(results.glob("*.json")):
    record = json.loads(path.read_text())
    machine = record["machine"]
    print(f"{record['topic']:>12}: {record['date']}  {machine['cpu']}, "
          f"{machine['cores']} cores, NumPy {machine['numpy']}, {machine['blas']}")

# %% [markdown]
# ## Matrix multiplication and memory layout (chapters 4 to 6)
#
# The GFLOPS ladder of chapter 6 (naive loops up to BLAS) and the memory-layout
# figures of chapter 4, as `make bench` drew them. At $n$ = {{ fig("matmul",
# "ladder.n") }} on one core, the ladder climbs from {{ fig("matmul",
# "ladder.gflops.ijk", ".2f") }} GFLOPS for the naive ijk loop to {{ fig("matmul",
# "ladder.gflops.register", ".0f") }} GFLOPS for the register-blocked kernel, and
# BLAS reaches {{ fig("matmul", "ladder.gflops.blas", ".0f") }} GFLOPS, {{
# num(v("matmul", "ladder.gflops.blas") / v("matmul", "ladder.gflops.ijk"), ".0f")
# }} times the naive loop. Random reads cost {{ fig("layout",
# "access.random_over_contiguous", ".0f") }} times as much per element as contiguous
# ones, and summing the columns of a row-major matrix takes {{ fig("layout",
# "sums.column_over_row", ".1f") }} times as long as summing its rows.

# %%
charts = Path("docs/assets/charts")
for name in ("matmul-ladder", "matmul-sweep", "layout-access", "layout-sums"):
    if (charts / f"{name}.svg").is_file():
        display(SVG(filename=str(charts / f"{name}.svg")))
    else:
        print(f"{name}.svg: not yet written by make bench")

# %% [markdown]
# ## Memory bandwidth (chapter 21)
#
# How fast this machine streams float32 data, by the size of the array: arrays
# that fit in a cache stream faster than main memory can deliver. The large-array
# figure is the one the roofline uses: from main memory, a matrix @ vector reads
# {{ fig("bandwidth", "main_memory.1.read (matrix @ vector)", ".1f") }} GB/s with
# one thread and {{ fig("bandwidth", "main_memory.2.read (matrix @ vector)", ".1f")
# }} GB/s with two.

# %%
bw = json.loads((results / "bandwidth.json").read_text())["results"]
fig, ax = plt.subplots(figsize=(5, 3.5))
mb = np.array(bw["sizes_bytes"]) / 2**20
ax.plot(mb, bw["read_gb_s"], marker="o", label="read (matrix @ vector)")
ax.plot(mb, bw["copy_gb_s"], marker="s", label="copy (read + write)")
ax.set_xscale("log", base=2)
ax.set_xlabel("working set (MB)")
ax.set_ylabel("GB/s, 1 thread")
ax.set_ylim(bottom=0)
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
display(fig)
plt.close(fig)
for threads, rates in bw["main_memory"].items():
    print(f"{threads} thread(s): " + ", ".join(f"{k} {v:.1f} GB/s"
                                            for k, v in rates.items()))

# %% [markdown]
# ## Decoding GPT-2 124M against transformers (chapter 21)
#
# `python -m benchmarks decode`: GPT-2 124M's shape with random weights, a
# 16-token prompt and 128 new greedy tokens, transformers on PyTorch and minigpt
# taking turns in every round with the same number of threads; the dashed line is
# the memory-bandwidth ceiling measured in the same run. With one thread,
# transformers decodes {{ fig("decode", "decode.transformers.decode_tok_s", ".1f")
# }} tokens/s and minigpt {{ fig("decode", "decode.minigpt.decode_tok_s", ".1f")
# }} tokens/s ({{ num(v("decode", "decode.minigpt.decode_tok_s") / v("decode",
# "decode.transformers.decode_tok_s"), ".2f") }}×), against a ceiling of {{
# fig("decode", "ceiling_tok_s", ".0f") }} tokens/s: the {{ num(v("decode",
# "bytes_per_token_mid") / 1e6, ".0f") }} MB a token reads, at the {{ fig("decode",
# "bandwidth_gb_s", ".1f") }} GB/s measured alongside.

# %%
dec = json.loads((results / "decode.json").read_text())["results"]
names = list(dec["decode"]) + [
    f"minigpt (no cache, {dec['decode_no_cache']['new_tokens']} tokens)"]
rates = [d["decode_tok_s"] for d in dec["decode"].values()]
rates.append(dec["decode_no_cache"]["decode_tok_s"])
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.barh(names, rates, color="#4a6fb8")
ax.axvline(dec["ceiling_tok_s"], color="crimson", ls="--", label="bandwidth ceiling")
ax.invert_yaxis()
ax.set_xlabel(f"decode tokens/s, {dec['threads']} thread(s)")
ax.legend()
fig.tight_layout()
display(fig)
plt.close(fig)
for name, t in dec["targets"].items():
    print(f"{name:<38} measured {t['measured']:.2f}, target {t['target']}: "
          f"{'met' if t['met'] else 'NOT met'}")

# %% [markdown]
# Per-token latency against the token's position, and the prefill: prompt tokens
# per second against the prompt's length.

# %%
fig, (a, b) = plt.subplots(2, 1, figsize=(5, 6.4))
for name, d in dec["decode"].items():
    a.plot(np.arange(len(d["step_ms"])) + dec["prompt_tokens"] + 1,
           np.array(d["step_ms"]) * 1e3, lw=1, label=name)
a.set_xlabel("position")
a.set_ylabel("ms per token")
a.set_ylim(bottom=0)
a.legend()
pre = dec["prefill"]
for name in ("transformers", "minigpt"):
    b.plot(pre["lengths"], pre[name], marker="o", label=name)
b.set_xscale("log", base=2)
b.set_xlabel("prompt length")
b.set_ylabel("prompt tokens/s")
b.set_ylim(bottom=0)
b.legend()
fig.tight_layout()
display(fig)
plt.close(fig)

# %% [markdown]
# One thread against every core (shorter runs), and the roofline: attainable
# GFLOPS against operations per byte of weights, with decoding and the prefills
# placed on it.

# %%
fig, (a, b) = plt.subplots(2, 1, figsize=(5, 6.8))
counts = list(dec["by_threads"])
engines = list(dec["by_threads"][counts[0]]["decode"])
y = np.arange(len(engines))
for i, n in enumerate(counts):
    a.barh(y + 0.4 * i - 0.2, [dec["by_threads"][n]["decode"][e]["decode_tok_s"]
                                for e in engines], height=0.4, label=f"{n} thread(s)")
a.set_yticks(y, engines)
a.invert_yaxis()
a.set_xlabel("decode tokens/s")
a.legend()
from minigpt.bench import forward_flops
from minigpt.weights import GPTConfig

weights = dec["weight_bytes"]
intensity = np.logspace(-1, 3, 100)
b.plot(intensity, np.minimum(dec["peak_gflops"], dec["bandwidth_gb_s"] * intensity),
       color="crimson", label="roof")
one = forward_flops(GPTConfig(), weights // 4, 1)  # GPT-2 124M, one token
for name, d in dec["decode"].items():
    b.plot(one / weights, d["decode_tok_s"] * one / 1e9, "o", label=f"decode, {name}")
flops = np.array([forward_flops(GPTConfig(), weights // 4, n) for n in pre["lengths"]])
for name in ("minigpt", "transformers"):
    per_s = np.array(pre[name]) / np.array(pre["lengths"])  # prompts per second
    b.plot(flops / weights, per_s * flops / 1e9, ":s", label=f"prefill, {name}")
b.set_xscale("log")
b.set_yscale("log")
b.set_xlabel("FLOPs per byte of weights")
b.set_ylabel("GFLOPS")
b.legend()
fig.tight_layout()
display(fig)
plt.close(fig)

# %% [markdown]
# ## A live measurement: the decode ceiling of this machine
#
# The roofline race of chapter 21 on the machine building this page: a small
# GPT-2-shaped model (6 layers, width 512, a vocabulary of 8,192, about 23
# million parameters) with random weights, single decode steps of minigpt's
# decoder timed in turns with a memory stream, one thread.

# %%
import tempfile

from threadpoolctl import threadpool_limits

from minigpt.bench import race_to_roofline, save_random_gpt2
from minigpt.models import load_model
from minigpt.weights import GPTConfig

small = GPTConfig(vocab_size=8192, n_ctx=256, n_embd=512, n_layer=6, n_head=8)
with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
    model = load_model(save_random_gpt2(Path(tmp) / "small", small))
    race = race_to_roofline(model, position=48, rounds=15)
    del model  # unmap the file before its folder goes
print(f"bandwidth {race['bandwidth_gb_s']:.1f} GB/s -> ceiling "
      f"{race['ceiling_tok_s']:.0f} tokens/s")
for name, rate in race["tok_s"].items():
    print(f"{name:<16} {rate:5.0f} tokens/s = {rate / race['ceiling_tok_s']:.0%} "
          f"of the ceiling")

# %% [markdown]
# ## Quantisation (chapter 29)
#
# `python -m benchmarks quant`: the GPT-2 124M-shaped model saved in float32, q8_0
# and int8, each file memory-mapped and decoding greedily through `generate()` in
# alternating rounds at one and two threads; the dashes mark each variant's
# bandwidth ceiling (one thread). At one thread, q8_0 decodes {{ fig("quant",
# "derived.1.q8_0.speedup", ".2f") }}× as fast as float32 and int8 {{ fig("quant",
# "derived.1.int8.speedup", ".2f") }}×; q8_0 moves the demo model's held-out
# perplexity by {{ fig("quant", "demo.perplexity.q8_0.perplexity_change", "+.2%") }}.

# %%
quant = json.loads((results / "quant.json").read_text())["results"]
schemes = list(quant["bytes_per_token"])
y = np.arange(len(schemes))
fig, ax = plt.subplots(figsize=(5, 3.2))
for i, n in enumerate(quant["derived"]):
    ax.barh(y + 0.4 * i - 0.2, [quant["threads"][n]["tok_s"][s] for s in schemes],
            height=0.4, label=f"{n} thread(s)")
for yy, s in zip(y, schemes, strict=True):
    ceiling = quant["derived"]["1"][s]["ceiling_tok_s"]
    ax.plot([ceiling, ceiling], [yy - 0.45, yy + 0.45], color="crimson", ls="--")
ax.set_yticks(y, schemes)
ax.invert_yaxis()
ax.set_xlabel("decode tokens/s, GPT-2 124M shape")
ax.legend()
fig.tight_layout()
display(fig)
plt.close(fig)
for name, t in quant["targets"].items():
    print(f"{name:<38} measured {t['measured']:.3f}, target {t['target']}: "
          f"{'met' if t['met'] else 'NOT met'}")

# %% [markdown]
# The same run's memory: the peak resident memory of a fresh process that loads each
# file and generates, beside the file it maps (one thread, our own machine code, unless
# the label says otherwise).

# %%
memory = quant["memory"]
fig, ax = plt.subplots(figsize=(5, 3.2))
names = list(memory)
y = np.arange(len(names))
ax.barh(y, [memory[k]["peak_rss_bytes"] / 1e6 for k in names], height=0.6,
        label="peak resident memory")
ax.barh(y, [memory[k]["file_bytes"] / 1e6 for k in names], height=0.3,
        label="weight file")
ax.set_yticks(y, names)
ax.invert_yaxis()
ax.set_xlabel("MB, GPT-2 124M shape")
ax.legend()
fig.tight_layout()
display(fig)
plt.close(fig)

# %% [markdown]
# ## Against llama.cpp (chapters 21 and 23)
#
# `python -m benchmarks peers`: llama.cpp's `llama-bench`, built from the sources that
# `llama-cpp-python` {{ v("peers", "llama_cpp.llama_cpp_python") }} vendors (llama.cpp
# commit `{{ v("peers", "llama_cpp.commit") }}`), and minigpt's `generate()` take turns
# generating {{ v("peers", "new_tokens") }} tokens from the same random GPT-2 124M
# checkpoint, at one and two threads (minigpt's float32 at two threads runs chapter
# 21's row kernel, as `--threads 2` does). In float32, minigpt ran at
# {{ fig("peers", "ratios.float32_vs_f32.1", ".2f") }}× llama.cpp's speed on one thread
# and {{ fig("peers", "ratios.float32_vs_f32.2", ".2f") }}× on two; in Q8_0 at
# {{ fig("peers", "ratios.q8_0_vs_q8_0.1", ".2f") }}× and
# {{ fig("peers", "ratios.q8_0_vs_q8_0.2", ".2f") }}×.
#
# {{ measured("peers") }}

# %%
display(SVG(filename=str(charts / "peers-decode.svg")))
