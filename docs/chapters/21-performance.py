# %% [markdown]
# # 21. Profiling and performance
#
# Our engine is correct: chapter 20's KV cache gives the same tokens as
# transformers, only much sooner. This chapter asks a different question: how fast
# *could* it be, and how close are we? Guessing is a poor way to answer either.
# We will measure where one generated token spends its time, work out from first
# principles the fastest any engine could decode on this machine, and then tune
# the decode loop until it runs close to that limit. Along the way we meet the
# habits that matter in every numerical program: control the threads, allocate
# once, stay in float32, never copy the weights, and shape the biggest matrix
# product so it does only the work that is needed.
#
# This page is a notebook, run every time the site is built. The small
# measurements on it ran on the machine that built the page, maybe yours. The
# full-size comparison with PyTorch comes from `python -m benchmarks decode`
# (part of `make bench`) and is read from `benchmarks/results/decode.json`.
#
# The plan of the page:
#
# 1. **Profile** one generated token: which stages take the time?
# 2. **Roofline:** bytes per token and the machine's bandwidth give a ceiling.
# 3. **Lean decoder:** buffers, float32, memory-mapped weights, the output head.
# 4. **Check** that it gives the same tokens, then **measure** it against
#    PyTorch and against the ceiling.
#
# The code of this chapter lives in `minigpt/bench.py`. The cells below print the
# source of each function from the package itself, so what you read is what runs.

# %%
import cProfile
import inspect
import json
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from IPython.display import SVG, Markdown, display
from threadpoolctl import threadpool_info, threadpool_limits

from minigpt import bench
from minigpt.generate import generate
from minigpt.info import describe
from minigpt.kvcache import KVCache, forward_cached
from minigpt.model import load_model
from minigpt.weights import GPTConfig


def show(*objects) -> None:
    """Print the source of functions or classes from the package, highlighted."""
    code = "\n\n".join(inspect.getsource(o).rstrip() for o in objects)
    display(Markdown(f"```python\n{code}\n```"))


print(describe())

# %% [markdown]
# ## A model of GPT-2's size
#
# Speed depends on the shapes, not on the values of the weights, so we make a
# model with GPT-2 124M's shape and random weights, and save it in the
# safetensors format of chapter 16. Then `load_model` reads it the way it reads
# the real GPT-2: memory-mapped. That matters later, when we count memory.

# %%
show(bench.save_random_gpt2)

# %%
workdir = tempfile.TemporaryDirectory()
config = GPTConfig()  # the defaults are GPT-2 124M's shape
folder = bench.save_random_gpt2(Path(workdir.name) / "gpt2-shape", config)
model = load_model(folder)
weights = bench.weight_bytes(model.params)
print(f"{weights / 4:,.0f} parameters, {weights / 1e6:.0f} MB of float32")

# %% [markdown]
# ## Where does one token's time go?
#
# A profiler tells us where a program spends its time. Python ships one,
# `cProfile`, which counts every function call. Let us run it over a few decode
# steps of chapter 20's `forward_cached`, after a 16-token prompt.

# %%
rng = np.random.default_rng(0)
prompt = rng.integers(0, config.vocab_size, 16)
cache = KVCache.empty(config)
forward_cached(model, prompt, cache)
with threadpool_limits(1), cProfile.Profile() as profiler:
    for token in range(8):
        forward_cached(model, np.array([token]), cache)
stats = pstats.Stats(profiler).sort_stats("tottime")
_ = stats.print_stats(6)  # the six functions with the most time of their own

# %% [markdown]
# `cProfile` sees Python functions, and here most of the time sits inside a few
# NumPy calls (`matmul` hides in `linear` and in `forward_cached`'s own line for
# the output head). To ask in our own words, the stages of a transformer, we
# write a tiny timer: a context manager that adds the seconds spent inside each
# `with` block to a named total.

# %%
show(bench.StageTimer, bench.profile_token)

# %%
timer = bench.StageTimer()
with threadpool_limits(1):
    for token in range(16):
        bench.profile_token(model, token, cache, timer)
per_token = sum(timer.seconds.values()) / 16
print(f"one token: {per_token * 1e3:.1f} ms")
for stage, share in timer.shares().items():
    print(f"  {stage:<30} {share:6.1%}")

# %% [markdown]
# Three stages take nearly all the time: the feed-forward network, attention and
# the output head. Each is dominated by matrix-vector products: the token is one
# row of 768 numbers, and it meets every weight matrix of the model exactly once.
# Layer norms, the softmax over a few dozen cached positions and the embedding
# lookup are small change. So the question becomes: how fast can a CPU multiply a
# vector by half a gigabyte of matrices?
#
# ## The roofline
#
# A matrix-vector product with a weight matrix of $n$ float32 numbers does $2n$
# floating-point operations (a multiply and an add per weight) and must read $4n$
# bytes. That is half an operation per byte. A modern core can do tens of
# billions of operations per second but can only pull a few billion bytes per
# second out of main memory. So for decoding, the arithmetic is nearly free and
# **the speed of memory sets the limit**. The *roofline model* (Williams,
# Waterman and Patterson, 2009) draws exactly this: attainable speed is the
# smaller of the compute peak and bandwidth times arithmetic intensity.
#
# For one decoded token, every parameter is read once (GPT-2's position table is
# the exception: only one row of it), plus the cached keys and values of the
# earlier positions:
#
# $$
# \text{bytes per token} \approx 4 \cdot \text{parameters}
#     + 2 \cdot 4 \cdot n_\text{layer} \cdot t \cdot C,
# \qquad
# \text{tokens/s} \le \frac{\text{bandwidth}}{\text{bytes per token}}.
# $$
#
# For GPT-2 124M that is about 0.5 GB per token: at, say, 15 GB/s, about 30 tokens per
# second is the ceiling, for *any* engine that keeps the weights in float32.

# %%
show(bench.bytes_per_token, bench.decode_ceiling)

# %% [markdown]
# We need the machine's memory bandwidth. `measure_bandwidth` streams an array
# much larger than the CPU's caches three ways: a BLAS matrix-vector product
# (exactly what decoding does), a plain sum, and a copy (which reads and writes
# every byte). It keeps the best of a few runs: the least disturbed one, and the
# most generous ceiling for us to be measured against.

# %%
show(bench.measure_bandwidth)

# %%
with threadpool_limits(1):
    rates = bench.measure_bandwidth(megabytes=128, repeats=3)
for kind, gbs in rates.items():
    print(f"{kind:<24} {gbs:5.1f} GB/s")
bandwidth = max(rates.values())
read = bench.bytes_per_token(config, weights, position=80)
ceiling = bench.decode_ceiling(read, bandwidth)
print(f"{read / 1e6:.0f} MB per token at position 80 -> ceiling "
      f"{ceiling:.1f} tokens/s on this machine")

# %% [markdown]
# Why must the array be large? Caches. The same kind of read runs several times
# faster when the array fits in the CPU's caches, as the ladder below shows (from
# `python -m benchmarks bandwidth`). A GPT-2 layer's biggest matrix, 9 MB, would
# fit in a typical last-level cache, but a token reads all 48 of them and
# the 154 MB embedding table, so nothing is still there when the next token
# starts: decoding streams from main memory.

# %%
display(SVG(filename="docs/assets/charts/bandwidth-ladder.svg"))

# %% [markdown]
# ## A lean decoder
#
# Chapter 20's `forward_cached` handles a chunk of any length $T$ and builds new
# arrays at every step. For the decode step, where $T = 1$, we write a version that
# does the same maths with four habits. Chapter 20's code stays as it is (earlier
# pages stay true); the tests prove the two agree.
#
# **1. Allocate once, write with `out=`.** Every NumPy operation like `a + b`
# allocates a fresh array for its result. One step of GPT-2 makes a few hundred of
# them. Most NumPy functions accept an `out=` argument that writes into an
# existing array instead, so we allocate every intermediate once, in a small
# dataclass, and reuse it for every token.

# %%
show(bench.DecodeBuffers, bench.layer_norm_into, bench.linear_into)

# %% [markdown]
# **2. Float32 everywhere.** A float64 array is twice the bytes, so twice the
# time for anything bandwidth-bound, and NumPy creates one silently whenever a
# float32 array meets a float64 *array* or NumPy float64 scalar. A plain Python
# float is "weak" and keeps float32 (NumPy 2's promotion rules), but
# `np.sqrt(2 / np.pi)` returns a NumPy float64, which is not:

# %%
x = np.ones(3, np.float32)
print((x * 0.5).dtype, (x * np.sqrt(2 / np.pi)).dtype,
      (x * np.float32(np.sqrt(2 / np.pi))).dtype)
print("parameters that are not float32:", bench.float64_arrays(model.params))

# %% [markdown]
# That is why the in-place GELU below wraps its constant in `np.float32`. It also
# keeps only one temporary array, where the plain formula makes several.

# %%
show(bench.gelu_tanh_inplace, bench.attend_one)

# %% [markdown]
# **3. Never copy the weights.** `load_model` memory-maps the file: each
# parameter is a read-only NumPy view of the file's bytes, and the operating
# system pages them in when the decoder first touches them. Nothing is copied, so
# the weights count once in the process's memory, and a second process that loads
# the same file shares the same pages.

# %%
wte = model.params["wte"]
print("owns its data:", wte.flags.owndata, "| writeable:", wte.flags.writeable)
base = wte
while not isinstance(base, np.memmap):  # follow the chain of views to the file
    base = base.base
print("a view of a memory map of", Path(base.filename).name)

# %% [markdown]
# **4. Shape the output head.** The output head is the largest single matrix:
# 50,257 × 768, a third of all the weights. In the decode step we write it as
# `wte @ h`, a $[V, C] \times [C]$ product that reads each row of `wte` once, in
# memory order, into a pre-allocated logits vector. In the prefill, chapter 20
# computes logits for *every* prompt position, though only the last one predicts
# the next token. For a 512-token prompt that is $2 \cdot 512 \cdot 768 \cdot
# 50257 \approx 40$ billion operations spent on numbers nobody reads, about
# half as much again as the whole stack of blocks. `prefill` scores only the last
# row. Its attention is leaner too: it scales the queries ($T \cdot 64$ numbers
# per head) instead of the scores ($T \cdot S$), adds a mask of $0$ and
# $-\infty$ instead of selecting with `np.where`, and takes the softmax in place.

# %%
show(bench.decode_step, bench.attend_chunk, bench.block_chunk, bench.prefill,
     bench.generate_fast)

# %% [markdown]
# Here is what the output head's shape is worth in the prefill, measured now
# (one thread, a 128-token prompt):

# %%
h = rng.standard_normal((128, config.n_embd), dtype=np.float32)
with threadpool_limits(1):
    start = time.perf_counter()
    every_row = h @ wte.T  # [T, C] @ [C, V] -> [T, V]
    all_rows = time.perf_counter() - start
    start = time.perf_counter()
    last_row = wte @ h[-1]  # [V, C] @ [C] -> [V]
    one_row = time.perf_counter() - start
print(f"logits for all 128 rows: {all_rows * 1e3:.0f} ms, for the last row: "
      f"{one_row * 1e3:.0f} ms; same last row: "
      f"{np.allclose(every_row[-1], last_row, rtol=1e-4, atol=1e-4)}")

# %% [markdown]
# ## BLAS threads
#
# NumPy hands every matrix product to a BLAS library (OpenBLAS here), which
# starts its own threads, one per core by default. PyTorch does the same with
# its own pool. `threadpoolctl` shows and limits NumPy's pools from Python, and
# `torch.set_num_threads` limits PyTorch's, so both engines can be compared with
# the same number of threads.

# %%
for pool in threadpool_info():
    print(pool["internal_api"], pool["version"], "threads:", pool["num_threads"])

# %% [markdown]
# More threads are not always faster. A thread that finishes its share of a
# product waits for the others at the end of it. Decoding does some seventy
# products per token, most well under a millisecond long, so if another program holds
# one of the cores, every product waits for a thread that is not running, and the
# whole step crawls. On a quiet machine a second thread can pull more bandwidth;
# on a busy one it can cost more than it gives. The benchmark measures both; the
# chart below shows what it found on the machine that ran `make bench`.

# %%
display(SVG(filename="docs/assets/charts/decode-threads.svg"))

# %% [markdown]
# ## Check: the same tokens
#
# A faster engine that says something else is a different engine. The tests in
# `tests/test_bench.py` compare `generate_fast` with transformers' greedy
# `generate` on random models, with chapter 19's `generate`, and the logits of
# each decode step with `forward_cached`. The benchmark checks it again at full
# size, on all 128 tokens. Here, on this page's model:

# %%
with threadpool_limits(1):
    lean = list(bench.generate_fast(model, prompt, 24))
    plain = list(generate(model, prompt, 24))
print("identical tokens:", lean == plain, "|", lean[:8])

# %% [markdown]
# ## Measure: against the ceiling, here and now
#
# How near the roofline is a decode step? Comparing a decode speed measured at
# one moment with a bandwidth measured at another is unreliable on a shared
# machine, where the load changes from second to second. So `race_to_roofline`
# times single decode steps and a memory stream *in turns*, many rounds, and
# compares their medians: both see the same machine.

# %%
show(bench.race_to_roofline)

# %%
with threadpool_limits(1):
    race = bench.race_to_roofline(model, position=80, rounds=15)
print(f"bandwidth {race['bandwidth_gb_s']:.1f} GB/s -> ceiling "
      f"{race['ceiling_tok_s']:.1f} tokens/s at position 80")
for name, rate in race["tok_s"].items():
    print(f"{name:<16} {rate:5.1f} tokens/s = {rate / race['ceiling_tok_s']:4.0%} "
          f"of the ceiling")

# %% [markdown]
# On a busy machine a figure can come out above 100%: the load changed between
# the stream and the steps more than the rounds could average away. The full-size
# benchmark runs many more rounds, spread over several minutes.

# %% [markdown]
# ### The 4 KB page trap
#
# If your figure above is lower than the full-size one below, one reason can be
# a surprise: *how the weight file got into memory*. The CPU translates every
# address through a small cache of page mappings, the TLB. A big NumPy array is
# backed by 2 MB "huge pages", so one TLB entry covers 2 MB of it, and the memory
# stream of the race runs on such an array. A memory-mapped file lives in the
# operating system's file cache instead, and there the page size depends on the
# kernel and on how the file was written: in large pieces, Linux can keep it in
# large blocks that it maps 2 MB at a time; in small pieces it may sit in 4 KB
# pages, and streaming through those costs many more TLB misses. While writing
# this chapter we saw a 124M model's output head stream noticeably slower from a
# file written tensor by tensor than from a copy written in large pieces, on the
# same machine. So the benchmark copies the weight file once in 64 MB pieces, as a
# downloader writes a file, decodes from the copy, and runs the race on both
# files in every round, so that the difference, if your kernel makes one, shows:

# %%
record = json.loads(Path("benchmarks/results/decode.json").read_text())
r, machine = record["results"], record["machine"]
print("median over rounds of the lean decoder's step speed / that round's ceiling:")
for label, key in (("copied in 64 MB pieces", "roofline_race"),
                   ("as transformers saved it", "roofline_race_file_as_saved")):
    race = r[key]
    print(f"  {label:<25} {race['fraction']['minigpt (lean)']:4.0%} "
          f"(bandwidth {race['bandwidth_gb_s']:.1f} GB/s, {race['rounds']} rounds)")

# %% [markdown]
# ## Measure: against PyTorch, full size
#
# `python -m benchmarks decode` runs the comparison the chapter set out to make:
# GPT-2 124M's shape with random weights, saved once with safetensors so that
# both engines read the same numbers, greedy decoding of a 16-token prompt plus
# 128 new tokens, transformers on PyTorch and our two decoders taking turns in
# every round, on one thread each. The ceiling comes from the race above (the
# file copied in large pieces), run on the same model in the same process. Every
# engine's tokens are checked equal to transformers'. The figures below are read
# from the JSON it wrote, with the machine it ran on.

# %%
print(f"{record['date']} | {record['command']} | {machine['cpu']}, "
      f"{machine['cores']} cores, NumPy {machine['numpy']}, {machine['blas']}")
print(f"bandwidth {r['bandwidth_gb_s']:.1f} GB/s, {r['bytes_per_token_mid'] / 1e6:.0f} "
      f"MB per token -> ceiling {r['ceiling_tok_s']:.1f} tokens/s")
for name, d in r["decode"].items():
    print(f"{name:<16} {d['decode_tok_s']:5.1f} tokens/s, "
          f"same tokens as transformers: {d['tokens_equal_transformers']}")
nc = r["decode_no_cache"]
print(f"minigpt, no cache: {nc['decode_tok_s']:.1f} tokens/s "
      f"(over {nc['new_tokens']} new tokens)")

# %% [markdown]
# Notice how close chapter 20's cached decoder is to the lean one; in some runs it
# is even ahead. At one token per step both spend nearly all their time streaming
# weights through the same BLAS products, so buffers and `out=` save allocations
# and little time. The habits pay where the work is not a stream of weights:
# the output head of the prefill, the memory the process holds, and keeping
# float64 out.

# %%
display(SVG(filename="docs/assets/charts/decode-speed.svg"))

# %% [markdown]
# The latency of each token against its position shows why the cache matters and
# why decoding is flat afterwards: the weights cost the same at every position,
# and the cached keys and values a token reads grow by only 74 KB per position.

# %%
display(SVG(filename="docs/assets/charts/decode-latency.svg"))

# %% [markdown]
# The prefill is a different animal: a 512-token prompt does 512 times the
# arithmetic per byte of weights, so it runs into the compute roof, where BLAS
# (ours and PyTorch's) does the heavy lifting and the engines are close.

# %%
display(SVG(filename="docs/assets/charts/decode-prefill.svg"))

# %% [markdown]
# On the roofline chart, decoding sits on the sloped memory roof at half an
# operation per byte, and prefills of longer prompts climb towards the flat
# compute roof.

# %%
display(SVG(filename="docs/assets/charts/roofline-gpt2.svg"))

# %% [markdown]
# ### The targets
#
# The chapter set four targets for the full-size run. The table is generated from
# the JSON; where a target is missed, it says so, with the gap.

# %%
rows = ["| target | wanted | measured | met? |", "|---|---|---|---|"]
for name, t in r["targets"].items():
    op = "≤" if name.startswith("peak") else "≥"
    gap = "" if t["met"] else f" (gap {abs(t['measured'] - t['target']):.2f})"
    rows.append(f"| {name} | {op} {t['target']} | {t['measured']:.2f} | "
                f"{'yes' if t['met'] else 'no' + gap} |")
mem = r["memory"]
rows.append("")
rows.append(f"Peak resident memory while generating: {mem['peak_rss_bytes'] / 1e6:.0f}"
            f" MB for a {mem['weight_file_bytes'] / 1e6:.0f} MB weight file "
            f"({mem['rss_after_load_bytes'] / 1e6:.0f} MB right after loading: "
            f"the mapped weights arrive as they are first read).")
display(Markdown("\n".join(rows)))

# %% [markdown]
# The ceiling appears twice, because there are two honest ways to hold a decoder
# against it. *Decode step* is the roofline race: single steps, each timed right
# after a stream of memory, medians of many rounds. *Whole generation* divides the
# median speed of complete 128-token generations by the ceiling that the race
# measured in the same rounds. Both run the same `decode_step`; what differs is
# the timing. When we ran the two side by side in a quiet moment they agreed. In
# the benchmark's rounds, on a machine shared with other work, the whole
# generations usually came out lower: a round's race takes about a second, its
# generations many seconds, and the machine's load can change in between. So the
# table shows both.
#
# The measurements were taken on a machine shared with other work, so absolute
# figures move from run to run: the engines take turns in every round and the
# ratios are what to trust. Run `make bench` on a quiet machine to see your own.
#
# ## Recap
#
# - Profile before optimising: one decode token is nearly all matrix-vector
#   products, one per weight matrix, plus the output head.
# - Decoding reads every weight once per token, so memory bandwidth, not
#   arithmetic, sets the ceiling: bandwidth / bytes per token.
# - Allocate once and write with `out=`; keep everything float32 (beware NumPy
#   float64 scalars); memory-map the weights so they are never copied.
# - Compute only the logits you need: the last row in the prefill, `wte @ h` in the
#   decode step.
# - Control BLAS threads (threadpoolctl) and compare engines with the same count,
#   taking turns, medians and ratios.
#
# ## Exercises
#
# **1. A bigger model.** GPT-2 medium has 354,823,168 parameters. What is its
# decode ceiling on this machine in float32, and in bfloat16 (2 bytes per
# weight)? Ignore the cache.
#
# **2. Find the upcast.** The function `scale_rows` below returns float64 for a
# float32 input. Find why and fix it without changing its maths.
#
# **3. Where does the prefill go?** Use `StageTimer` to time the blocks and the
# output head of chapter 20's `forward_cached` for a 64-token prompt, once with
# logits for every row and once for the last row only.
#
# ### Solutions
#
# Try them first; each solution below runs when the page is built.
#
# **Solution 1.** The ceiling scales with bytes per token.

# %%
medium = 354_823_168
for name, size in (("float32", 4), ("bfloat16", 2)):
    print(f"{name}: {bench.decode_ceiling(medium * size, bandwidth):.1f} tokens/s")


# %% [markdown]
# **Solution 2.** `np.linalg.norm` of a float32 array is float32, but
# `np.sqrt(x.shape[-1])` is a NumPy float64 scalar, which is "strong": dividing
# by it promotes the result. Dividing by a Python float (or a float32) keeps it.

# %%
def scale_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to norm sqrt(C). x: (T, C) -> (T, C), but float64!"""
    return x / np.linalg.norm(x, axis=-1, keepdims=True) * np.sqrt(x.shape[-1])


def scale_rows_fixed(x: np.ndarray) -> np.ndarray:
    """Rows scaled to norm sqrt(C), float32 kept. x: (T, C) -> (T, C)"""
    return x / np.linalg.norm(x, axis=-1, keepdims=True) * float(np.sqrt(x.shape[-1]))


x = rng.standard_normal((4, 8), dtype=np.float32)
print(scale_rows(x).dtype, scale_rows_fixed(x).dtype,
      np.allclose(scale_rows(x), scale_rows_fixed(x), rtol=1e-6))

# %% [markdown]
# **Solution 3.** Time the same prompt through a fresh cache twice, then the output
# head alone in both shapes. Most of the difference between the two passes is the
# head; the rest is `prefill`'s leaner attention.

# %%
timer = bench.StageTimer()
ids = rng.integers(0, config.vocab_size, 64)
with threadpool_limits(1):
    for label in ("every row", "last row"):
        cache = KVCache.empty(config)
        with timer(f"blocks + head, {label}"):
            if label == "every row":
                forward_cached(model, ids, cache)
            else:
                bench.prefill(model, ids, cache)
        with timer(f"head alone, {label}"):
            if label == "every row":
                model.params["wte"] @ np.ones((64, config.n_embd), np.float32).T
            else:
                model.params["wte"] @ np.ones(config.n_embd, np.float32)
for stage, seconds in timer.seconds.items():
    print(f"{stage:<28} {seconds * 1e3:7.1f} ms")

# %%
workdir.cleanup()
