"""GPT-2 124M decoding against transformers on PyTorch, and the memory roofline.

python -m benchmarks decode [--quick]. Random weights of GPT-2 124M's shape
(`GPT2LMHeadModel(GPT2Config())` after `torch.manual_seed(0)`), saved with
safetensors to a temporary folder, copied once in 64 MB pieces (as a
downloader writes a file; see copy_in_large_pieces) and loaded by
`minigpt.load_model`, so our weights are memory-mapped from the same bytes.
Greedy decoding (through `minigpt.generate`, the path users run) of a
16-token prompt + 128 new tokens; the engines take turns in every round, with
the same number of threads (torch.set_num_threads and threadpoolctl for NumPy's
BLAS), and every engine's tokens are checked equal to transformers' own.

Measured: decode tokens/s (steps after the first token), per-token latency at
each position, prefill throughput against prompt length, 1 vs 2 threads, the
roofline race (single decode steps and a memory stream timed in turns, which
sets the bandwidth ceiling; once more on the file as transformers wrote it),
and peak resident memory of a process that only generates (a subprocess, no
torch).
Writes benchmarks/results/decode.json and the charts decode-speed,
decode-latency, decode-prefill, decode-threads and roofline-gpt2.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import ROOT, chart_path, machine_caption, pyplot, save_results
from minigpt.bench import (
    bytes_per_token,
    float64_arrays,
    forward_flops,
    measure_bandwidth,
    race_to_roofline,
    time_in_turns,
    weight_bytes,
)
from minigpt.generation import generate
from minigpt.info import machine_info
from minigpt.kvcache import CachedGPT as GPT
from minigpt.models import load_model
from minigpt.weights import GPTConfig

PROMPT, NEW = 16, 128
# The main comparison runs on one thread: the machine is shared, and a BLAS or
# torch thread that waits for a busy core stalls every step (see decode-threads).
MAIN_THREADS = 1


def save_reference(folder: Path, seed: int = 0):
    """GPT-2 124M's shape with random weights, saved as safetensors; the torch model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def copy_in_large_pieces(src: Path, dst: Path, piece: int = 64 * 2**20) -> Path:
    """Copy a checkpoint folder, writing each file in 64 MB pieces.

    How a file enters the page cache decides its page size: written in large
    pieces, Linux can keep it in 2 MB "large folios" and map them with one TLB
    entry each; written in small pieces it sits in 4 KB pages, and a decoder
    reading it through a memory map pays for many more TLB misses.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        with open(path, "rb") as fin, open(dst / path.name, "wb") as fout:
            while chunk := fin.read(piece):
                fout.write(chunk)
    return dst


def timed_tokens(tokens: Iterator[int]) -> tuple[list[int], list[float]]:
    """Drain a token iterator; each token's time since the start, in seconds."""
    start, out, stamps = time.perf_counter(), [], []
    for t in tokens:
        out.append(int(t))
        stamps.append(time.perf_counter() - start)
    return out, stamps


def hf_generate(model, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """transformers' greedy generate; its tokens, and when each step's logits came."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    stamps: list[float] = []

    class Clock(LogitsProcessor):  # called once per step, after the forward pass
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0,
                             logits_processor=LogitsProcessorList([Clock()]))
    return out[0, len(prompt):].tolist(), [s - start for s in stamps]


def run_engine(fn: Callable[[], tuple[list[int], list[float]]]) -> dict:
    """One generation: its tokens, time to first token, per-step latencies."""
    tokens, stamps = fn()
    steps = np.diff(stamps)  # seconds of each decode step after the first token
    return {"tokens": tokens, "first": stamps[0], "steps": steps.tolist(),
            "decode_tok_s": len(steps) / float(np.sum(steps))}


def engines(ref, model: GPT, prompt: list[int], new: int) -> dict[str, Callable]:
    return {
        "transformers": lambda: hf_generate(ref, prompt, new),
        "minigpt": lambda: timed_tokens(generate(model, prompt, new, stop=())),
    }


def decode_rounds(ref, model: GPT, prompt: list[int], new: int, rounds: int,
                  threads: list[int], between: Callable[[], object] | None = None
                  ) -> dict[int, tuple[dict, list]]:
    """Every engine once per round and thread count, in turn.

    `between` runs first in every round (by default: the best-of-3 bandwidth), so
    that what it measures sees the same machine load as the engines.
    """
    import torch
    if between is None:
        def between() -> float:
            return max(measure_bandwidth(256, repeats=3).values())
    out: dict[int, tuple[dict, list]] = {n: ({}, []) for n in threads}
    for _ in range(rounds):
        for n in threads:
            runs, measured = out[n]
            torch.set_num_threads(n)
            with threadpool_limits(n):
                measured.append(between())
                for name, fn in engines(ref, model, prompt, new).items():
                    runs.setdefault(name, []).append(run_engine(fn))
    return out


def merge_races(races: list[dict]) -> dict:
    """Medians over rounds of race_to_roofline's figures, and of the fractions."""
    names = list(races[0]["tok_s"])
    return {
        "position": races[0]["position"], "rounds": sum(r["rounds"] for r in races),
        "bandwidth_gb_s": statistics.median(r["bandwidth_gb_s"] for r in races),
        "ceiling_tok_s": statistics.median(r["ceiling_tok_s"] for r in races),
        "tok_s": {n: statistics.median(r["tok_s"][n] for r in races) for n in names},
        "fraction": {n: statistics.median(r["tok_s"][n] / r["ceiling_tok_s"]
                                          for r in races) for n in names},
    }


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Median decode speed per engine; per-position median latency; token checks."""
    want = runs["transformers"][0]["tokens"]
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
            "decode_tok_s_runs": [r["decode_tok_s"] for r in rs],
            "first_token_s": statistics.median(r["first"] for r in rs),
            "step_ms": np.median([r["steps"] for r in rs], axis=0).round(3).tolist(),
            "tokens_equal_transformers": all(r["tokens"] == want for r in rs),
        }
    return out


def uncached(model: GPT, prompt: list[int], new: int, want: list[int]) -> dict:
    """generate(use_cache=False), timed once over fewer tokens: it is that slow."""
    tokens, stamps = timed_tokens(generate(model, prompt, new, use_cache=False,
                                           stop=()))
    steps = np.diff(stamps)
    return {"new_tokens": new, "decode_tok_s": len(steps) / float(np.sum(steps)),
            "tokens_equal_transformers": tokens == want[:new]}


def prefill_rates(ref, model: GPT, lengths: list[int], rounds: int) -> dict:
    """Prompt tokens per second of one prefill, ours vs transformers, alternating."""
    import torch
    rng = np.random.default_rng(1)
    out = {"lengths": lengths, "minigpt": [], "transformers": [], "same_argmax": []}
    for n in lengths:
        ids = rng.integers(0, model.config.vocab_size, n)
        tids = torch.tensor(ids)[None]
        times: dict[str, list[float]] = {"minigpt": [], "transformers": []}
        for _ in range(rounds):
            start = time.perf_counter()
            ours = model.forward_cached(ids, model.empty_cache(), last_only=True)[0]
            times["minigpt"].append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                theirs = ref(tids, use_cache=True, logits_to_keep=1).logits[0, -1]
            times["transformers"].append(time.perf_counter() - start)
        for k, ts in times.items():
            out[k].append(n / statistics.median(ts))
        out["same_argmax"].append(int(np.argmax(ours)) == int(theirs.argmax()))
    return out


def prefill_head(model: GPT, n: int, rounds: int) -> dict:
    """A prefill of n tokens with logits for every row, and for the last only."""
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, n)
    medians = time_in_turns({
        "every_row_ms": lambda: model.forward_cached(ids, model.empty_cache()),
        "last_row_ms": lambda: model.forward_cached(ids, model.empty_cache(),
                                                    last_only=True)}, rounds)
    return {"prompt_tokens": n, "rounds": rounds,
            **{k: t * 1e3 for k, t in medians.items()}}


# VmHWM, the peak resident set of this process image: getrusage's ru_maxrss
# would carry over the parent's peak through fork and exec on Linux
RSS_SCRIPT = """
import sys, numpy as np
from minigpt import generate, load_model
from minigpt.bench import peak_rss_bytes
m = load_model(sys.argv[1])
base = peak_rss_bytes()
ids = list(np.random.default_rng(0).integers(0, m.config.vocab_size, 16))
list(generate(m, ids, int(sys.argv[2]), stop=()))
print(peak_rss_bytes(), base)
"""


def peak_rss(folder: Path, new: int) -> dict:
    """Peak resident memory of a fresh process that loads the model and generates."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(folder), str(new)],
                         env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    file_size = (folder / "model.safetensors").stat().st_size
    peak, after_load = int(out[0]), int(out[1])
    return {"peak_rss_bytes": peak, "rss_after_load_bytes": after_load,
            "weight_file_bytes": file_size, "ratio": peak / file_size}


def peak_gflops(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
    """Best GFLOPS of square float32 products: the compute roof."""
    best = 0.0
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        seconds = min(_timed(lambda: a @ a) for _ in range(repeats))  # noqa: B023
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(quick: bool = False) -> dict:
    new = 16 if quick else NEW
    rounds = 2 if quick else 4
    lengths = [16, 64] if quick else [16, 64, 128, 256, 512]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        ref = save_reference(Path(tmp) / "saved")
        folder = copy_in_large_pieces(Path(tmp) / "saved", Path(tmp) / "copied")
        model = load_model(folder)
        prompt = np.random.default_rng(0).integers(0, 50257, PROMPT).tolist()
        weights = weight_bytes(model.params)
        saved = load_model(Path(tmp) / "saved")  # the file as transformers wrote it
        mid = PROMPT + new // 2  # the average position of a decode step
        race_rounds = 3 if quick else 9

        def races() -> dict:
            return {"copied": race_to_roofline(model, mid, race_rounds),
                    "saved": race_to_roofline(saved, mid, race_rounds)}

        runs, raced = decode_rounds(ref, model, prompt, new, rounds, [MAIN_THREADS],
                                    between=races)[MAIN_THREADS]
        want = runs["transformers"][0]["tokens"]
        # 1 thread against every core: shorter runs, a second thread can be slow
        by_threads = decode_rounds(ref, model, prompt, 8 if quick else 32, 2,
                                   sorted({1, cores}))
        import torch
        torch.set_num_threads(MAIN_THREADS)
        with threadpool_limits(MAIN_THREADS):
            no_cache = uncached(model, prompt, 8 if quick else 32, want)
            pre = prefill_rates(ref, model, lengths, 1 if quick else 3)
            head = prefill_head(model, 64, 3 if quick else 9)
            gflops = peak_gflops()
        rss = peak_rss(folder, new)
    per_token = bytes_per_token(model.config, weights, mid)
    roof = merge_races([r["copied"] for r in raced])
    results = {
        "shape": "GPT-2 124M (random weights)", "prompt_tokens": PROMPT,
        "new_tokens": new, "rounds": rounds, "threads": MAIN_THREADS,
        "weight_bytes": weights, "float64_params": len(float64_arrays(model.params)),
        "bytes_per_token_mid": per_token,
        # the ceiling: bandwidth measured in turns with single decode steps, in
        # every round of the whole generations below
        "bandwidth_gb_s": roof["bandwidth_gb_s"],
        "ceiling_tok_s": roof["ceiling_tok_s"], "roofline_race": roof,
        "roofline_race_file_as_saved": merge_races([r["saved"] for r in raced]),
        "decode": summarise(runs),
        "decode_no_cache": no_cache,
        "by_threads": {str(n): {"new_tokens": 8 if quick else 32,
                                "decode": summarise(r),
                                "bandwidth_gb_s": statistics.median(b)}
                       for n, (r, b) in by_threads.items()},
        "prefill": pre, "prefill_head": head, "peak_gflops": gflops, "memory": rss,
    }
    results["targets"] = targets(results)
    save_results("decode", results, command="python -m benchmarks decode")
    draw(results, machine_info())
    print(json.dumps(results["targets"], indent=2))
    return results


def targets(r: dict) -> dict:
    """Chapter 21's targets, each with the measured value (the ceiling twice)."""
    lean = r["decode"]["minigpt"]["decode_tok_s"]
    torch_rate = r["decode"]["transformers"]["decode_tok_s"]
    i = r["prefill"]["lengths"].index(max(r["prefill"]["lengths"]))
    pre = r["prefill"]["minigpt"][i] / r["prefill"]["transformers"][i]
    rows = {
        "decode vs transformers": (lean / torch_rate, 1.3),
        # single steps timed in turns with the memory stream (the roofline race)
        "decode step vs bandwidth ceiling": (
            r["roofline_race"]["fraction"]["minigpt"], 0.85),
        # whole generations against the race's ceiling from the same rounds
        "whole generation vs bandwidth ceiling": (lean / r["ceiling_tok_s"], 0.85),
        f"prefill {r['prefill']['lengths'][i]} tokens vs transformers": (pre, 0.9),
    }
    out = {k: {"measured": v, "target": t, "met": v >= t}
           for k, (v, t) in rows.items()}
    ratio = r["memory"]["ratio"]
    out["peak RSS / weight file"] = {"measured": ratio, "target": 1.3,
                                     "met": ratio <= 1.3}
    return out


def draw(r: dict, machine: dict) -> None:
    """The five charts, each with the machine in its footer."""
    plt = pyplot()
    meta = {"Date": None}
    caption = f"{machine_caption(machine)}; python -m benchmarks decode"

    def save(fig, name: str) -> None:
        fig.text(0.01, 0.01, caption, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(chart_path(name), format="svg", metadata=meta)
        plt.close(fig)

    # decode speed, with the roofline
    names = list(r["decode"]) + [
        f"minigpt (no cache, {r['decode_no_cache']['new_tokens']} tokens)"]
    rates = [r["decode"][n]["decode_tok_s"] for n in r["decode"]]
    rates.append(r["decode_no_cache"]["decode_tok_s"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.barh(names, rates, color=["#888", "#2b4fa8", "#c9a"])
    ax.axvline(r["ceiling_tok_s"], color="crimson", ls="--",
               label=f"bandwidth ceiling {r['ceiling_tok_s']:.0f} tokens/s")
    for y, v in enumerate(rates):
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_xlabel("decode tokens/s (median)")
    ax.set_title(f"GPT-2 124M shape, greedy, {r['threads']} thread(s)")
    ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    save(fig, "decode-speed")

    # latency against position
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, d in r["decode"].items():
        pos = np.arange(len(d["step_ms"])) + r["prompt_tokens"] + 1
        ax.plot(pos, np.array(d["step_ms"]) * 1e3, label=name, lw=1)
    ax.axhline(1e3 / r["ceiling_tok_s"], color="crimson", ls="--",
               label="bandwidth floor")
    ax.set_xlabel("position of the token")
    ax.set_ylabel("ms per token (median)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    save(fig, "decode-latency")

    # prefill throughput
    pre = r["prefill"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in ("transformers", "minigpt"):
        ax.plot(pre["lengths"], pre[name], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("prompt tokens/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    save(fig, "decode-prefill")

    # one thread vs all
    fig, ax = plt.subplots(figsize=(7, 3.2))
    counts = list(r["by_threads"])
    names = list(r["by_threads"][counts[0]]["decode"])
    y = np.arange(len(names))
    for i, n in enumerate(counts):
        rates = [r["by_threads"][n]["decode"][e]["decode_tok_s"] for e in names]
        ax.barh(y + 0.4 * i - 0.2, rates, height=0.4,
                label=f"{n} thread{'s' if n != '1' else ''}")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"decode tokens/s (median, {r['by_threads'][counts[0]]['new_tokens']}"
                  " new tokens)")
    ax.legend(fontsize=8)
    save(fig, "decode-threads")

    draw_roofline(r, plt, save)


def draw_roofline(r: dict, plt, save) -> None:
    """Attainable GFLOPS against FLOPs per byte, with decode and prefill placed."""
    config, weights = GPTConfig(), r["weight_bytes"]  # GPT-2 124M's shape
    bw, peak = r["bandwidth_gb_s"], r["peak_gflops"]
    ai = np.logspace(-1, 3, 200)  # FLOPs per byte of weights
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ai, np.minimum(peak, bw * ai), color="crimson",
            label=f"roof: {bw:.1f} GB/s, {peak:.0f} GFLOPS")
    # decoding one token: about 2 FLOPs per 4-byte weight
    one = forward_flops(config, weights // 4, 1)
    for name, d in r["decode"].items():
        ax.plot(one / weights, d["decode_tok_s"] * one / 1e9, "o",
                label=f"decode, {name}")
    pre = r["prefill"]
    flops = np.array([forward_flops(config, weights // 4, n) for n in pre["lengths"]])
    for name, marker in (("minigpt", "s"), ("transformers", "^")):
        prompts_per_s = np.array(pre[name]) / np.array(pre["lengths"])
        ax.plot(flops / weights, prompts_per_s * flops / 1e9, marker, ls=":",
                label=f"prefill, {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("matmul FLOPs per byte of weights read")
    ax.set_ylabel("GFLOPS")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, "roofline-gpt2")
