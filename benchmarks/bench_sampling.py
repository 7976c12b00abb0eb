"""Sampling's cost inside decoding: top-k 40 + top-p 0.95 against greedy.

python -m benchmarks sampling [--quick]. A model of GPT-2 124M's shape with random
weights (`minigpt.bench.save_random_gpt2`, memory-mapped like a real checkpoint),
one BLAS thread. Whole generations through `minigpt.generate` (a 16-token prompt,
then N new tokens) take turns: greedy, and temperature 0.8 with top-k 40 and
top-p 0.95. The decode speed is the median over rounds of tokens per second after
the first token, and the ratio of the two is the median of each round's ratio (the
two generations of a round ran back to back, under the same load). Separately,
one call of `sample` on 50,257 logits is timed for each setting, in interleaved
rounds (benchmarks.common.time_alternating).

Writes benchmarks/results/sampling.json.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import save_results, time_alternating
from minigpt.bench import blas_threads, save_random_gpt2
from minigpt.generation import generate
from minigpt.models import load_model
from minigpt.sampling import sample
from minigpt.weights import GPTConfig

KNOBS = {"greedy": dict(temperature=0.0),
         "top-k 40, top-p 0.95": dict(temperature=0.8, top_k=40, top_p=0.95)}


def decode_rate(model, prompt: list[int], new: int, knobs: dict) -> float:
    """Tokens per second after the first token, for one generation."""
    stamps = []
    for _ in generate(model, prompt, new, seed=0, stop=(), **knobs):
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run(quick: bool = False) -> dict:
    new, rounds = (8, 2) if quick else (16, 25)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 50257, 16).tolist()
    logits = (rng.standard_normal(50257) * 3).astype(np.float32)  # peaked, like a LM
    with tempfile.TemporaryDirectory() as tmp, blas_threads(1):
        model = load_model(save_random_gpt2(Path(tmp) / "gpt2", GPTConfig()))
        rates: dict[str, list[float]] = {name: [] for name in KNOBS}
        for _ in range(rounds):  # the settings take turns in every round
            for name, knobs in KNOBS.items():
                rates[name].append(decode_rate(model, prompt, new, knobs))
        calls = time_alternating(
            {name: (lambda k=knobs: sample(logits, rng=np.random.default_rng(0), **k))
             for name, knobs in KNOBS.items()}, rounds=5 if quick else 9)
    tok_s = {name: statistics.median(r) for name, r in rates.items()}
    sampled, greedy = rates["top-k 40, top-p 0.95"], rates["greedy"]
    extra = calls["top-k 40, top-p 0.95"] - calls["greedy"]  # seconds per token
    results = {
        "shape": "GPT-2 124M (random weights)", "threads": 1, "prompt_tokens": 16,
        "new_tokens": new, "rounds": rounds,
        "decode_tok_s": tok_s, "decode_tok_s_runs": rates,
        # paired: each round's two generations ran back to back, on the same load
        "sampled_vs_greedy": statistics.median(
            s / g for s, g in zip(sampled, greedy, strict=True)),
        "sample_call_us": {name: t * 1e6 for name, t in calls.items()},
        # the same ratio from the parts: a greedy step, plus what sampling adds
        "sampled_vs_greedy_from_call_times": 1 / (1 + extra * tok_s["greedy"]),
    }
    save_results("sampling", results, command="python -m benchmarks sampling")
    print(f"sampled / greedy decode speed: {results['sampled_vs_greedy']:.3f}")
    return results
