"""Time per generated token with and without the KV cache, and GPT-2 124M decode speed.

Models have random weights built in NumPy (speed does not depend on the values):
a small GPT-2 (n_embd 256, 4 layers, 4 heads, a 1,024-token vocabulary like the
demo model's, n_ctx 1024) and GPT-2 124M's shape (n_embd 768, 12 layers, 12
heads, vocabulary 50,257, n_ctx 1024).

- per-token time at each position: one uncached step is `model.forward` over
  every token so far (what `generate(use_cache=False)` does); one cached step is
  `forward_cached` of one token after a cache holding the rest. The two take
  turns in `time_alternating`.
- end to end: generating up to 512 tokens in all (a 16-token prompt, 496 new,
  greedy), with and without the cache, each run timed whole, one after the other
  (once: the uncached run alone takes minutes).
- GPT-2 124M: one cached decode step at a few positions, timed alternately.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import (
    ROOT,
    chart_path,
    load_results,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.generate import generate
from minigpt.kvcache import KVCache, forward_cached
from minigpt.model import GPT
from minigpt.sampling import next_token_probs
from minigpt.weights import GPTConfig

SMALL = GPTConfig(vocab_size=1024, n_ctx=1024, n_embd=256, n_layer=4, n_head=4)
GPT2 = GPTConfig()  # GPT-2 124M: the defaults are its shape


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """A GPT of the given shape with float32 random weights (std 0.02)."""
    rng = np.random.default_rng(seed)
    C = config.n_embd
    def r(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02)
    def lin(i, o):
        return {"w": r(i, o), "b": r(o)}
    def norm():
        return {"g": np.ones(C, np.float32), "b": np.zeros(C, np.float32)}
    blocks = [{"ln_1": norm(), "attn": {"c_attn": lin(C, 3 * C), "c_proj": lin(C, C)},
               "ln_2": norm(), "mlp": {"c_fc": lin(C, 4 * C), "c_proj": lin(4 * C, C)}}
              for _ in range(config.n_layer)]
    params = {"wte": r(config.vocab_size, C), "wpe": r(config.n_ctx, C),
              "blocks": blocks, "ln_f": norm()}
    return GPT(config, params)


def step_times(model: GPT, positions: list[int], rounds: int) -> dict:
    """Median seconds for the token at each position, cached and uncached.

    Every (position, variant) pair takes its turn in the same interleaved rounds,
    so a burst of load from other programs hits all of them alike.
    """
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size,
                                            max(positions))
    fns = {}
    for p in positions:
        cache = KVCache.empty(model.config)
        forward_cached(model, ids[: p - 1], cache)  # tokens before position p
        def cached(p=p, cache=cache):
            cache.length = p - 1  # forget the step's own token: repeatable
            return forward_cached(model, ids[p - 1:p], cache)
        def uncached(p=p):
            return model.forward(ids[:p])[-1]
        fns[f"cached {p}"], fns[f"uncached {p}"] = cached, uncached
    t = time_alternating(fns, rounds=rounds, min_seconds=0.02)
    return {"position": positions,
            "cached": [t[f"cached {p}"] for p in positions],
            "uncached": [t[f"uncached {p}"] for p in positions]}


def end_to_end(model: GPT, total: int, rounds: int) -> dict:
    """Seconds to generate up to `total` tokens from a 16-token prompt."""
    prompt = list(range(16))
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            n = len(list(generate(model, prompt, total - len(prompt),
                                  use_cache=name == "cached")))
            times[name].append(time.perf_counter() - start)
    assert n == total - len(prompt)
    med = {name: float(np.median(t)) for name, t in times.items()}
    return {"total_tokens": total, "new_tokens": n, "seconds": med,
            "speedup": med["uncached"] / med["cached"]}


def gpt2_decode(positions: list[int], rounds: int) -> dict:
    """GPT-2 124M (random weights): one cached decode step at each position."""
    model = random_gpt(GPT2)
    ids = np.random.default_rng(2).integers(0, GPT2.vocab_size, max(positions))
    fns = {}
    for p in positions:
        cache = KVCache.empty(GPT2)
        for start in range(0, p - 1, 256):  # prefill in chunks: bounded memory
            forward_cached(model, ids[start:min(start + 256, p - 1)], cache)
        def step(p=p, cache=cache):
            cache.length = p - 1
            return forward_cached(model, ids[p - 1:p], cache)
        fns[p] = step
    t = time_alternating(fns, rounds=rounds, min_seconds=0.2)
    out = {"position": positions, "seconds_per_token": [t[p] for p in positions]}
    out["tokens_per_second"] = [1 / s for s in out["seconds_per_token"]]
    out["parameters"] = int(sum(a.size for a in _arrays(model.params)))
    return out


def _arrays(tree):
    if isinstance(tree, np.ndarray):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _arrays(v)
    else:
        for v in tree:
            yield from _arrays(v)


def plot(results: dict, machine: dict) -> None:
    plt = pyplot()
    steps = results["small_steps"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ms = {k: [1e3 * s for s in steps[k]] for k in ("cached", "uncached")}
    ax.plot(steps["position"], ms["uncached"], "o-", label="without cache (forward)")
    ax.plot(steps["position"], ms["cached"], "s-", label="with KV cache")
    ax.set_yscale("log")
    ax.set_xlabel("position of the generated token")
    ax.set_ylabel("milliseconds per token (log scale)")
    ax.set_title("Small GPT-2 (n_embd 256, 4 layers): time per generated token")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("kvcache-per-token"), format="svg", metadata={"Date": None})
    plt.close(fig)


def next_char_counts(context: str = "th") -> dict[str, int]:
    """How often each character follows `context` in Tiny Shakespeare."""
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    counts: dict[str, int] = {}
    start = text.find(context)
    while start != -1:
        nxt = text[start + len(context): start + len(context) + 1]
        counts[nxt] = counts.get(nxt, 0) + 1
        start = text.find(context, start + 1)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def sampling_example() -> dict:
    """One real distribution and what each knob makes of it."""
    counts = next_char_counts("th")
    logits = np.log(np.array(list(counts.values()), dtype=np.float64))
    knobs = {"as counted (T = 1)": {}, "temperature 0.5": {"temperature": 0.5},
             "temperature 2": {"temperature": 2.0}, "top-k 3": {"top_k": 3},
             "top-p 0.9": {"top_p": 0.9}}
    return {"context": "th", "chars": list(counts), "counts": list(counts.values()),
            "probs": {name: next_token_probs(logits, **{"temperature": 1.0, **kw})
                      .tolist() for name, kw in knobs.items()}}


def plot_sampling(example: dict, shown: int = 12) -> None:
    plt = pyplot()
    labels = [repr(c)[1:-1] if c.strip() else repr(c) for c in example["chars"]]
    names = list(example["probs"])
    fig, axes = plt.subplots(1, len(names), figsize=(12, 3.2), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        probs = example["probs"][name][:shown]
        ax.bar(range(len(probs)), probs, color="#3f51b5")
        ax.set_xticks(range(len(probs)), labels[:shown], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("probability")
    fig.suptitle(f"Next character after {example['context']!r} in Tiny Shakespeare "
                 f"({sum(example['counts'])} occurrences), reshaped by each knob",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(chart_path("sampling-knobs"), format="svg", metadata={"Date": None})
    plt.close(fig)


def run(quick: bool = False) -> dict:
    small = random_gpt(SMALL)
    positions = [16, 64, 128] if quick else [16, 64, 128, 256, 512, 768, 1024]
    results = {
        "small_config": SMALL.__dict__,
        "small_steps": step_times(small, positions, rounds=3 if quick else 5),
        "small_end_to_end": end_to_end(small, 64 if quick else 512, rounds=1),
        "gpt2_config": GPT2.__dict__,
        "gpt2_decode": gpt2_decode([16, 128] if quick else [16, 256, 512, 1024],
                                   rounds=3 if quick else 7),
    }
    steps = results["small_steps"]
    results["small_step_speedup"] = [
        u / c for u, c in zip(steps["uncached"], steps["cached"], strict=True)]
    results["sampling"] = sampling_example()
    path = save_results("kvcache", results, command="python -m benchmarks kvcache")
    machine = load_results("kvcache")["machine"]
    plot(results, machine)
    plot_sampling(results["sampling"])
    print(f"[kvcache] saved {path}")
    return results


if __name__ == "__main__":
    run()
