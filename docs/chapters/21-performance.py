# ---
# jupyter:
#   render_macros: true
# ---

# %% [markdown]
# # 21. Profiling and performance
#
# Our engine is correct: chapter 20's KV cache gives the same tokens as
# transformers, only much sooner. This chapter asks a different question: how fast
# *could* it be, and how close are we? Guessing is a poor way to answer either.
# We will measure where one generated token spends its time, work out from first
# principles the fastest any engine could decode on this machine, and see which
# habits keep the engine near that limit: compute only the logits you need, never
# sort what you only need the top of, stay in float32, never copy the weights,
# choose the number of threads by measuring, and start quickly.
#
# This page is a notebook, run every time the site is built. The small
# measurements in its code cells ran on the machine that built the page, maybe
# yours. The figures quoted in the text come from `make bench` (the benchmarks
# `decode`, `sampling`, `threads`, `startup` and `peers`) and are read from
# `benchmarks/results/`, with the machine they were measured on:
#
# {{ measured("decode", "sampling", "threads", "startup", "peers") }}
#
# The code of this chapter lives in `minigpt/bench.py`, and the threads of our own
# that it adds to the engine in `minigpt/threads.py`; the rest of the engine's code
# is the one of chapters 17 to 20. The cells below print the source of each function
# from the package itself, so what you read is what runs.

# %%
import cProfile
import inspect
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from IPython.display import HTML, SVG, display
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from threadpoolctl import threadpool_info

import minigpt
from minigpt import bench
from minigpt.info import describe
from minigpt.layers import layer_norm
from minigpt.weights import GPTConfig

# Jupyter starts a notebook in its own folder (docs/chapters); the build and the
# tests start it in the repository root. Find the root either way: above the
# working folder, or above the minigpt package this notebook imports.
HERE, PACKAGE = Path.cwd().resolve(), Path(minigpt.__file__).resolve().parent
ROOT = next(p for p in (HERE, *HERE.parents, PACKAGE.parent)
            if (p / "benchmarks" / "results").is_dir())
RESULTS, CHARTS = ROOT / "benchmarks" / "results", ROOT / "docs" / "assets" / "charts"


def show(*objects) -> None:
    """Show the source of functions or classes from the package, highlighted."""
    code = "\n\n".join(inspect.getsource(o).rstrip() for o in objects)
    display(HTML(highlight(code, PythonLexer(), HtmlFormatter(wrapcode=True))))


def results(topic: str) -> dict:
    """The "results" object of benchmarks/results/<topic>.json."""
    return json.loads((RESULTS / f"{topic}.json").read_text())["results"]


print(describe())

# %% [markdown]
# ## A model of GPT-2's size
#
# Speed depends on the shapes, not on the values of the weights, so we make a
# model with GPT-2 124M's shape and random weights, and save it in the
# safetensors format of chapter 16. Then `minigpt.load_model` reads it the way it
# reads the real GPT-2: memory-mapped. That matters later, when we count memory.

# %%
show(bench.save_random_gpt2, bench.param_arrays, bench.weight_bytes)

# %%
workdir = tempfile.TemporaryDirectory()
config = GPTConfig()  # the defaults are GPT-2 124M's shape
folder = bench.save_random_gpt2(Path(workdir.name) / "gpt2-shape", config)
model = minigpt.load_model(folder)
weights = bench.weight_bytes(model.params)
print(f"{weights / 4:,.0f} parameters, {weights / 1e6:.0f} MB of float32")

# %% [markdown]
# ## Where does one token's time go?
#
# A profiler tells us where a program spends its time. Python ships one,
# `cProfile`, which counts every function call. Let us run it over a few decode
# steps of chapter 20's `forward_cached`, after a 16-token prompt, on one BLAS
# thread (more on threads below). `strip_dirs` keeps file names short.

# %%
rng = np.random.default_rng(0)
prompt = rng.integers(0, config.vocab_size, 16)
cache = model.empty_cache()
model.forward_cached(prompt, cache)
with bench.blas_threads(1), cProfile.Profile() as profiler:
    for token in range(8):
        model.forward_cached(np.array([token]), cache, last_only=True)
stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
_ = stats.print_stats(6)  # the six functions with the most time of their own

# %% [markdown]
# `cProfile` sees Python functions, and here most of the time sits inside a few
# NumPy calls (`matmul` hides in `linear` and in the forward's own line for the
# output head). To ask in our own words, the stages of a transformer, we write a
# tiny timer: a context manager that adds the seconds spent inside each `with`
# block to a named total. `profile_token` runs one step of the engine's own code
# with its three biggest functions wrapped in that timer (the forward calls them
# by name, so wrapping them for one step is enough); what is left of the step is
# the embedding and the output head.

# %%
show(bench.StageTimer, bench.profile_token)

# %%
timer = bench.StageTimer()
with bench.blas_threads(1):
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
with bench.blas_threads(1):
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
display(SVG(filename=CHARTS / "bandwidth-ladder.svg"))

# %% [markdown]
# ## Near the roofline: the habits the engine keeps
#
# A decode step must stream half a gigabyte of weights; everything else it does
# is overhead on top of that stream. These are the habits that keep the overhead
# small. Each is in the engine itself, so the path a user runs
# (`minigpt.generate` and `python -m minigpt generate`) is the fast one.
#
# **1. Compute only the logits you need.** The output head is the largest single
# matrix: 50,257 × 768, a third of all the weights. In the prefill, every prompt
# position could get a row of logits, but only the last one predicts the next
# token. For a 512-token prompt that is $2 \cdot 512 \cdot 768 \cdot 50257
# \approx 40$ billion operations spent on numbers nobody reads, about half as
# much again as the whole stack of blocks. So `generate` asks chapter 20's
# `forward_cached` for `last_only=True`, and the final norm and the head run on
# one row. In the benchmark, a 64-token prefill took
# {{ num(v("decode", "prefill_head.every_row_ms"), ".0f") }} ms with logits for
# every row and {{ num(v("decode", "prefill_head.last_row_ms"), ".0f") }} ms with the
# last row only. Here is the same measurement, now, on this page's model:

# %%
ids64 = rng.integers(0, config.vocab_size, 64)
with bench.blas_threads(1):
    turns = bench.time_in_turns({
        "every row": lambda: model.forward_cached(ids64, model.empty_cache()),
        "last row": lambda: model.forward_cached(ids64, model.empty_cache(),
                                                 last_only=True)}, rounds=3)
for name, seconds in turns.items():
    print(f"64-token prefill, logits for the {name:<9}: {seconds * 1e3:6.1f} ms")

# %% [markdown]
# **2. Never sort what you only need the top of.** Sampling with top-k and top-p
# (chapter 18) looks like it needs the 50,257 logits in order. It does not:
# top-k needs only the tokens near the top, which `near_the_top` finds by
# comparing every logit with a threshold below the maximum (one linear pass per
# try), and top-p needs only the few tokens that can reach probability $p$, which
# `candidates` finds the same way; only those few are then sorted. On this
# machine one such pass beat NumPy's own partial sorts (`np.partition`,
# `np.argpartition`) several times over. Everything stays in float32. One call of
# `sample`
# with temperature 0.8, top-k 40 and top-p 0.95 takes
# {{ num(v("sampling", "sample_call_us.top-k 40, top-p 0.95"), ".0f") }} µs, against
# {{ num(v("sampling", "sample_call_us.greedy"), ".0f") }} µs for greedy's argmax:
# next to a decode step of tens of milliseconds, that predicts
# {{ fig("sampling", "sampled_vs_greedy_from_call_times", ".0%") }} of greedy's
# speed. Whole generations with those knobs, each round's pair run back to back,
# came out at {{ fig("sampling", "sampled_vs_greedy", ".0%") }} of greedy's speed
# (the median of the rounds' ratios; on a machine this busy, single rounds
# scatter widely around it).
#
# **3. Float32 everywhere.** A float64 array is twice the bytes, so twice the
# time for anything bandwidth-bound, and NumPy creates one silently whenever a
# float32 array meets a float64 *array* or NumPy float64 scalar. A plain Python
# float is "weak" and keeps float32 (NumPy 2's promotion rules), but
# `np.sqrt(2 / np.pi)` returns a NumPy float64, which is not:

# %%
show(bench.float64_arrays)

# %%
x = np.ones(3, np.float32)
print((x * 0.5).dtype, (x * np.sqrt(2 / np.pi)).dtype,
      (x * np.float32(np.sqrt(2 / np.pi))).dtype)
print("parameters that are not float32:", bench.float64_arrays(model.params))

# %% [markdown]
# **4. Never copy the weights.** `load_model` memory-maps the file: each
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
# What about the many small arrays a step allocates, one for every `a + b`? NumPy
# functions accept `out=` to write into an array allocated once, and an earlier
# version of this chapter's code had a decode step written entirely that way. It
# measured only a few percent faster than chapter 20's plain code: a step spends
# its time streaming weights through BLAS, and the allocator is fast. A third copy
# of the GPT-2 block was not worth a few percent, so the engine keeps the readable
# one; exercise 3 below lets you write such a step and measure it yourself.
#
# ## BLAS threads
#
# NumPy hands every matrix product to a BLAS library (OpenBLAS here), which
# starts its own threads, one per core by default. `threadpoolctl` shows and
# limits them from Python; `minigpt.bench.blas_threads` wraps it in a `with`
# block, and the command line's `--threads N` uses it.

# %%
show(bench.blas_threads)

# %%
for pool in threadpool_info():
    print(pool["internal_api"], pool["version"], "threads:", pool["num_threads"])

# %% [markdown]
# More threads are not always faster. A thread that finishes its share of a
# product waits for the others at the end of it. Decoding does some seventy
# products per token, most well under a millisecond long, so if another program
# holds one of the cores, every product waits for a thread that is not running, and
# the whole step crawls. `python -m benchmarks threads` times one decode step of
# GPT-2 124M's shape with one and two BLAS threads, taking turns, twice: on the
# machine as it was found, and with one busy process per core added.
#
# | machine | 1 thread | 2 threads | 2 threads / 1 thread |
# |---|---|---|---|
# | as found (load average {{ fig("threads", "as_found.load_average_1min", ".1f") }}) | {{ fig("threads", "as_found.step_ms.1", ".1f") }} ms | {{ fig("threads", "as_found.step_ms.2", ".1f") }} ms | {{ fig("threads", "as_found.two_vs_one", ".2f") }} |
# | {{ v("threads", "busy_processes") }} busy processes added | {{ fig("threads", "loaded.step_ms.1", ".1f") }} ms | {{ fig("threads", "loaded.step_ms.2", ".1f") }} ms | {{ fig("threads", "loaded.two_vs_one", ".2f") }} |
#
# The machine these figures come from is shared with other work, so even "as
# found" may not be quiet; the load average (runnable processes, averaged over a
# minute, on {{ v("threads", "cores") }} cores) says how busy it was. Two threads
# can pull more bandwidth than one when both cores are free: as found, they made a
# step {{ num(1 / v("threads", "as_found.two_vs_one"), ".2f") }} times as fast.
# With the cores taken by other programs, the same second thread made the step
# {{ fig("threads", "loaded.two_vs_one", ".2f") }} times as slow, because every
# product waits for a thread that is not running. A program cannot know which
# machine it will meet, and a slow-down is the worse surprise. **The command
# line therefore runs one BLAS thread by default** (`--threads 1`); `--threads 2`
# (or `0`, the library's own choice) is there for a machine you know to be idle,
# and `python -m benchmarks threads` measures which is faster on yours. In Python,
# `with minigpt.blas_threads(1): tokens = list(minigpt.generate(model, ids, 50))`
# does the same; the generator must be consumed inside the `with` block, since
# that is where the work happens.

# %%
display(SVG(filename=CHARTS / "decode-threads-load.svg"))

# %% [markdown]
# ## Threads of our own
#
# Where does the time of a step go? The same benchmark also times the step's
# matrix-vector products alone, in the same rounds: the 48 weights of the blocks
# and the output head,
# {{ num(v("threads", "product_bytes") / 1e6, ".0f") }} MB of float32. On the
# machine as found:
#
# | | whole step | products alone | the rest | products read |
# |---|---|---|---|---|
# | 1 BLAS thread | {{ fig("threads", "as_found.step_ms.1", ".1f") }} ms | {{ fig("threads", "as_found.products_ms.1", ".1f") }} ms | {{ num(v("threads", "as_found.step_ms.1") - v("threads", "as_found.products_ms.1"), ".1f") }} ms | {{ num(v("threads", "product_bytes") / v("threads", "as_found.products_ms.1") / 1e6, ".1f") }} GB/s |
# | 2 BLAS threads | {{ fig("threads", "as_found.step_ms.2", ".1f") }} ms | {{ fig("threads", "as_found.products_ms.2", ".1f") }} ms | {{ num(v("threads", "as_found.step_ms.2") - v("threads", "as_found.products_ms.2"), ".1f") }} ms | {{ num(v("threads", "product_bytes") / v("threads", "as_found.products_ms.2") / 1e6, ".1f") }} GB/s |
# | row kernel, 2 threads | {{ fig("threads", "as_found.step_ms.rows_2", ".1f") }} ms | {{ fig("threads", "as_found.products_ms.rows_2", ".1f") }} ms | {{ num(v("threads", "as_found.step_ms.rows_2") - v("threads", "as_found.products_ms.rows_2"), ".1f") }} ms | {{ num(v("threads", "product_bytes") / v("threads", "as_found.products_ms.rows_2") / 1e6, ".1f") }} GB/s |
#
# The products are nearly the whole step. What is left (layer norms, attention
# over the cache, GELU, and the Python that calls some seventy NumPy functions)
# runs on one core whatever the thread count, so a second thread can only shorten
# the products. Two BLAS threads do: OpenBLAS splits each product between them,
# and each of the seventy or so products a token makes ends with one thread
# waiting for the other. How much better can a kernel do that splits a product
# exactly the way decoding needs, and nothing else?
#
# Decoding needs something simple. For one token, `x @ W` is a dot product of `x`
# with every column of `W`, and the columns are independent: give each core its
# share and they never need to talk until the product is done. The dot products
# are easiest to stream when each one reads contiguous memory, so the kernel
# stores a weight as `[out, in]` (PyTorch's `nn.Linear` layout, and LLaMA's
# checkpoints), one row per output:

# %%
from minigpt import threads

show(threads.dot_rows)

# %% [markdown]
# `prange` (Numba's parallel `range`) hands the blocks of rows to the threads; no
# two threads write the same output. A block is four rows: each number of `x` is
# loaded once and used four times, and the four sums are independent, so the
# processor can run their multiply-adds side by side. With `fastmath`, the compiler
# turns the loop over `k` into packed instructions that do 8 or 16 multiply-adds at
# once, by the width of the machine's vector registers (chapter 6 counted them). The rows left over after the last full block take a
# plain loop.
#
# A weight that holds its rows this way has to stand in for the array the forward
# code of chapters 17 to 22 expects. That code touches a weight in only three ways:
# `x @ w` for a linear layer, `x @ wte.T` for the tied output head, and `wte[ids]`
# for the embeddings. `RowMatrix` answers all three. `__array_ufunc__ = None` tells
# NumPy to step aside in `x @ W`, so that Python calls `W.__rmatmul__(x)`; `.T`
# flips a flag and copies nothing, which is what the tied head needs.

# %%
show(threads.compile_dot_rows, threads.RowMatrix, threads.token_rows,
     threads.rows_matmul)

# %% [markdown]
# `compile_dot_rows` imports Numba only when a kernel is first needed, and
# `functools.cache` keeps what it returns: importing Numba and its compiler, LLVM,
# adds tens of MB to a process, which a run on one thread never needs (chapter 23
# counts them). Until then the module's `prange` is plain `range`, so the listing
# runs as plain Python too; `global prange` puts Numba's in its place before Numba
# reads the loop.
# `token_rows` checks that `x @ W` makes sense and flattens any leading axes of
# `x` into rows; chapter 23's quantised matrices use it too. A prompt has many
# rows, and there BLAS's matrix-matrix product is the right tool, so
# `rows_matmul` sends only single tokens to the kernel. Converting a model
# means walking its nested dict of parameters: tables read by row are their own
# rows already; every other matrix is a weight used as `x @ w`, whose rows are the
# columns of `w`. GPT-2 stores its weights `[in, out]`, so `threaded_model` copies
# them once into rows, at load time; LLaMA's are rows already and are used in
# place. The copy costs memory, as much again as the block weights:
# {{ num(v("threads", "copied_bytes") / 1e6, ".0f") }} MB for GPT-2 124M. Chapter 23 walks the same dict to quantise a model, with the
# same function.

# %%
show(threads.map_matrices, threads.threaded_model, threads.set_kernel_threads,
     threads.kernel_threads, threads.share_threads)

# %% [markdown]
# `set_kernel_threads` only records the number while Numba is not loaded;
# `share_threads` hands it to Numba's pool, whenever the pool exists.

# %% [markdown]
# The threaded model is the same class with other parameters, so `generate()`
# takes it as it is, and must give the same tokens:

# %%
demo = minigpt.load_model(minigpt.DEMO_MODEL)
fast = threads.threaded_model(demo)
prompt = minigpt.load_tokenizer(minigpt.DEMO_MODEL).encode("ROMEO:")
with bench.blas_threads(1):
    ours = list(minigpt.generate(fast, prompt, 20))
    plain = list(minigpt.generate(demo, prompt, 20))
kernel = "compiled" if threads.compile_dot_rows() else "none (no numba)"
print("kernel:", kernel, "| same tokens:", ours == plain)

# %% [markdown]
# The last row of the table above is this kernel, on two Numba threads with BLAS
# held to one (two pools of spinning threads on two cores would fight over them).
# The benchmark also waits a moment before timing each variant: after a call,
# OpenBLAS's threads keep spinning for a while, and a two-thread kernel timed in
# that window shares its cores with them.
# Its products read
# {{ num(v("threads", "product_bytes") / v("threads", "as_found.products_ms.rows_2") / 1e6, ".1f") }}
# GB/s against
# {{ num(v("threads", "product_bytes") / v("threads", "as_found.products_ms.2") / 1e6, ".1f") }}
# for two BLAS threads, and a whole step took
# {{ fig("threads", "as_found.rows_vs_blas_2", ".2f") }} times as long. With
# both cores busy with other work, it took
# {{ fig("threads", "loaded.rows_vs_blas_2", ".2f") }} times as long as two BLAS
# threads, but {{ fig("threads", "loaded.rows_vs_one", ".2f") }} times as long
# as one: any even split of a product waits for its slowest thread, and on a busy
# machine that thread is often not running, so the loaded figures swing from run
# to run. **So `--threads 2` runs this kernel, and the default stays one thread of
# plain BLAS**, which needs no Numba, starts sooner, and has no thread to wait for.

# %% [markdown]
# ## Start-up
#
# A user of the command line waits for the process to start, import NumPy, load
# the model and the tokenizer, and run the prefill before the first word appears.
# The biggest item used to be GPT-2's pre-tokenizer: its `\p{L}` and `\p{N}`
# classes were built by asking `unicodedata` about all 1.1 million code points,
# {{ fig("startup", "unicode_classes.computed_s", ".2f") }} s on the benchmark
# machine. They now ship with the package as a small table (chapter 15), read in
# {{ num(v("startup", "unicode_classes.from_table_s") * 1e3, ".1f") }} ms. On the
# demo model, `python -m minigpt generate` shows its first generated text
# {{ fig("startup", "first_token_s", ".2f") }} s after it was started (the median of
# {{ v("startup", "runs") }} runs, measured by `python -m benchmarks startup` on the
# same shared machine). Here is what one process pays for each step, now:

# %%



code = """
import time; t0 = time.perf_counter()
import minigpt; from minigpt.generate import generate
t1 = time.perf_counter()
m, tok = minigpt.load_model(minigpt.DEMO_MODEL), minigpt.load_tokenizer(minigpt.DEMO_MODEL)
t2 = time.perf_counter(); ids = tok.encode("ROMEO:"); t3 = time.perf_counter()
next(generate(m, ids, 1)); t4 = time.perf_counter()
print(f"imports {t1 - t0:.3f} s, model and tokenizer {t2 - t1:.3f} s, "
      f"encode {t3 - t2:.3f} s, prefill and first token {t4 - t3:.3f} s")
"""
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     cwd=ROOT, check=True).stdout)

# %% [markdown]
# ## Check: the same tokens
#
# A faster engine that says something else is a different engine. The tests in
# `tests/test_generate.py` compare `generate` with transformers' greedy
# `generate` on random models, with and without the cache; `tests/test_kvcache.py`
# checks that the last-row logits of the prefill equal the last row of the full
# ones; the benchmark checks the tokens again at full size, on all 128 of them.
# Here, on this page's model:

# %%
with bench.blas_threads(1):
    cached = list(minigpt.generate(model, prompt, 12, stop=()))
    plain = list(minigpt.generate(model, prompt, 12, stop=(), use_cache=False))
print("identical tokens:", cached == plain, "|", cached[:8])

# %% [markdown]
# ## Measure: against the ceiling, here and now
#
# How near the roofline is a decode step? Comparing a decode speed measured at
# one moment with a bandwidth measured at another is unreliable on a shared
# machine, where the load changes from second to second. So `race_to_roofline`
# times single decode steps and a memory stream *in turns*, many rounds, and
# compares their medians: both see the same machine.

# %%
show(bench.race_to_roofline, bench.time_in_turns)

# %%
with bench.blas_threads(1):
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
record = json.loads((RESULTS / "decode.json").read_text())
r, machine = record["results"], record["machine"]
print("median over rounds of the engine's step speed / that round's ceiling:")
for label, key in (("copied in 64 MB pieces", "roofline_race"),
                   ("as transformers saved it", "roofline_race_file_as_saved")):
    race = r[key]
    print(f"  {label:<25} {race['fraction']['minigpt']:4.0%} "
          f"(bandwidth {race['bandwidth_gb_s']:.1f} GB/s, {race['rounds']} rounds)")

# %% [markdown]
# ## Measure: against PyTorch, full size
#
# `python -m benchmarks decode` runs the comparison the chapter set out to make:
# GPT-2 124M's shape with random weights, saved once with safetensors so that
# both engines read the same numbers, greedy decoding of a 16-token prompt plus
# 128 new tokens, transformers on PyTorch and `minigpt.generate` taking turns in
# every round, on one thread each. The ceiling comes from the race above (the
# file copied in large pieces), run on the same model in the same process. Every
# engine's tokens are checked equal to transformers'. In that run, transformers
# decoded {{ fig("decode", "decode.transformers.decode_tok_s", ".1f") }} tokens/s
# and minigpt {{ fig("decode", "decode.minigpt.decode_tok_s", ".1f") }}
# ({{ num(v("decode", "decode.minigpt.decode_tok_s") / v("decode",
# "decode.transformers.decode_tok_s"), ".2f") }} times as fast), against a ceiling of
# {{ fig("decode", "ceiling_tok_s", ".0f") }} tokens/s. The figures below are read
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

# %%
display(SVG(filename=CHARTS / "decode-speed.svg"))

# %% [markdown]
# The latency of each token against its position shows why the cache matters and
# why decoding is flat afterwards: the weights cost the same at every position,
# and the cached keys and values a token reads grow by only 74 KB per position.

# %%
display(SVG(filename=CHARTS / "decode-latency.svg"))

# %% [markdown]
# The prefill is a different animal: a 512-token prompt does 512 times the
# arithmetic per byte of weights, so it runs into the compute roof, where BLAS
# (ours and PyTorch's) does the heavy lifting and the engines are close.

# %%
display(SVG(filename=CHARTS / "decode-prefill.svg"))

# %% [markdown]
# On the roofline chart, decoding sits on the sloped memory roof at half an
# operation per byte, and prefills of longer prompts climb towards the flat
# compute roof. A point's operations are counted by `forward_flops`: two per
# block weight per token, and the output head once, since only the last row of
# the prefill is scored.

# %%
show(bench.forward_flops)

# %%
display(SVG(filename=CHARTS / "roofline-gpt2.svg"))

# %% [markdown]
# ### How close, in numbers
#
# The table holds the full-size run to four marks: faster than transformers,
# near the bandwidth ceiling (measured twice, see below), a long prefill about as
# fast as PyTorch's, and a process no bigger than its weight file. It is
# generated from the JSON; where a mark is missed, it says so, with the gap. The
# memory is measured in a fresh process that only loads and generates, by
# reading the kernel's record of its peak:

# %%
show(bench.peak_rss_bytes)

# %%
cells = []
for name, t in r["targets"].items():
    op = "≤" if name.startswith("peak") else "≥"
    gap = "" if t["met"] else f" (gap {abs(t['measured'] - t['target']):.2f})"
    met = "yes" if t["met"] else "no" + gap
    cells.append(f"<tr><td>{name}</td><td>{op} {t['target']}</td>"
                 f"<td>{t['measured']:.2f}</td><td>{met}</td></tr>")
mem = r["memory"]
display(HTML(
    "<table><tr><th>measure</th><th>wanted</th><th>measured</th><th>met?</th></tr>"
    + "".join(cells) + "</table>"
    f"<p>Peak resident memory while generating: {mem['peak_rss_bytes'] / 1e6:.0f} MB"
    f" for a {mem['weight_file_bytes'] / 1e6:.0f} MB weight file "
    f"({mem['rss_after_load_bytes'] / 1e6:.0f} MB right after loading: the mapped "
    f"weights arrive as they are first read).</p>"))

# %% [markdown]
# The ceiling appears twice, because there are two honest ways to hold a decoder
# against it. *Decode step* is the roofline race: single steps, each timed right
# after a stream of memory, medians of many rounds. *Whole generation* divides the
# median speed of complete 128-token generations by the ceiling that the race
# measured in the same rounds. Both run the same engine; what differs is the
# timing. In the benchmark's rounds, on a machine shared with other work, the
# whole generations usually come out lower: a round's race takes about a second,
# its generations many seconds, and the machine's load can change in between. So
# the table shows both.
#
# The measurements were taken on a machine shared with other work, so absolute
# figures move from run to run: the engines take turns in every round and the
# ratios are what to trust. Run `make bench` on a quiet machine to see your own.

# %% [markdown]
# ## Against llama.cpp
#
# transformers is a fair peer for correctness, but not the engine a CPU user
# would pick: that is llama.cpp, written in C++ with hand-tuned kernels.
# `python -m benchmarks peers` builds its `llama-bench` from the sources that the
# `llama-cpp-python` package vendors (version
# {{ v("peers", "llama_cpp.llama_cpp_python") }}, llama.cpp commit
# `{{ v("peers", "llama_cpp.commit") }}`), converts the same random GPT-2 124M
# checkpoint to llama.cpp's GGUF format with llama.cpp's own converter, and lets
# the two engines take turns generating {{ v("peers", "new_tokens") }} tokens, at
# one and at two threads.
#
# | tokens/s | 1 thread | 2 threads |
# |---|---|---|
# | llama.cpp, float32 | {{ fig("peers", "tok_s.llamacpp_f32.1", ".1f") }} | {{ fig("peers", "tok_s.llamacpp_f32.2", ".1f") }} |
# | minigpt, float32 | {{ fig("peers", "tok_s.minigpt_float32.1", ".1f") }} | {{ fig("peers", "tok_s.minigpt_float32.2", ".1f") }} |
# | minigpt / llama.cpp | {{ fig("peers", "ratios.float32_vs_f32.1", ".2f") }} | {{ fig("peers", "ratios.float32_vs_f32.2", ".2f") }} |
#
# minigpt runs here as the command line runs it: one thread of plain BLAS, and at
# two threads the row kernel of "Threads of our own" above, with BLAS held to one.
#
# On one thread, llama.cpp decoded
# {{ fig("peers", "tok_s.llamacpp_f32.1", ".1f") }} tokens/s from the same
# {{ num(v("decode", "weight_bytes") / 1e6, ".0f") }} MB of weights, which is
# {{ num(v("peers", "tok_s.llamacpp_f32.1") * v("decode", "weight_bytes") / 1e9, ".1f") }}
# GB/s, and our engine
# {{ num(v("peers", "tok_s.minigpt_float32.1") * v("decode", "weight_bytes") / 1e9, ".1f") }}
# GB/s. Both are bound by the same thing, one core reading memory, and the ratio
# in the table says how close a NumPy engine that does little but stream its
# weights through BLAS comes to a C++ one there. On two threads the engines differ in what they split. llama.cpp spreads
# every operation of a token over its threads, norms and attention included, and
# keeps them spinning between operations; going from one thread to two made it
# {{ num(v("peers", "tok_s.llamacpp_f32.2") / v("peers", "tok_s.llamacpp_f32.1"), ".2f") }}
# times as fast. Ours splits the matrix-vector products only: in the threads
# benchmark above, the rest of a step took
# {{ num(v("threads", "as_found.step_ms.rows_2") - v("threads", "as_found.products_ms.rows_2"), ".1f") }}
# ms of
# {{ fig("threads", "as_found.step_ms.rows_2", ".1f") }} ms
# ({{ num(1 - v("threads", "as_found.products_ms.rows_2") / v("threads", "as_found.step_ms.rows_2"), ".0%") }})
# on one core, most of it the Python and NumPy calls around small arrays. Two
# threads made our engine
# {{ num(v("peers", "tok_s.minigpt_float32.2") / v("peers", "tok_s.minigpt_float32.1"), ".2f") }}
# times as fast. Chapter 23 reads fewer bytes and compares the two engines again,
# with 8-bit weights.

# %%
display(SVG(filename=CHARTS / "peers-decode.svg"))

# %% [markdown]
# ## Recap
#
# - Profile before optimising: one decode token is nearly all matrix-vector
#   products, one per weight matrix, plus the output head.
# - Decoding reads every weight once per token, so memory bandwidth, not
#   arithmetic, sets the ceiling: bandwidth / bytes per token.
# - Compute only the logits you need (the last row in the prefill); never sort
#   the whole vocabulary to sample; keep everything float32 (beware NumPy float64
#   scalars); memory-map the weights so they are never copied.
# - Measure threads before trusting them: on a shared machine one BLAS thread
#   decodes fastest, and it is the command line's default.
# - For one token, every product is a dot product per output row: a small kernel
#   that shares out blocks of rows over the cores splits it as decoding wants,
#   and `--threads 2` runs it.
# - Start quickly: ship what is expensive to compute and the same every time.
# - Compare engines with the same thread count, taking turns, medians and ratios.
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
# **3. Build it yourself: a layer norm into a buffer.** Write
# `my_layer_norm_into(x, g, b, eps, out)`: chapter 9's `layer_norm` of one vector
# `x` of shape `(C,)`, written into the preallocated `out` with NumPy's `out=`
# arguments, allocating no array of size $C$ on the way. Check it against
# `minigpt.layers.layer_norm` on the same inputs (`np.testing.assert_allclose`,
# `rtol=1e-5`), then time both on a 768-vector.
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
# **Solution 3.** Subtract the mean into `out`, then scale it in place; the only
# temporaries left are scalars. On a vector this small, both versions spend most
# of their time in Python and NumPy's per-call overhead, which is why the engine
# keeps the readable version.

# %%
def my_layer_norm_into(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float,
                       out: np.ndarray) -> np.ndarray:
    """layer_norm of one vector, written into out. x: (C,) -> (C,)"""
    np.subtract(x, x.mean(), out=out)  # centred
    np.multiply(out, 1 / np.sqrt(np.dot(out, out) / x.size + eps), out=out)
    np.multiply(out, g, out=out)
    return np.add(out, b, out=out)


x, g, b = rng.standard_normal((3, 768), dtype=np.float32)
out = np.empty(768, np.float32)
np.testing.assert_allclose(my_layer_norm_into(x, g, b, 1e-5, out),
                           layer_norm(x, g, b), rtol=1e-5, atol=1e-6)
turns = bench.time_in_turns({"layer_norm": lambda: layer_norm(x, g, b),
                             "into a buffer": lambda: my_layer_norm_into(
                                 x, g, b, 1e-5, out)}, rounds=2000)
print({name: f"{t * 1e6:.1f} µs" for name, t in turns.items()}, out.dtype)

# %%
workdir.cleanup()
