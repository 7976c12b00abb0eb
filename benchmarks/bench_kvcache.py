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
    chart_path,
    load_results,
    machine_caption,
    pyplot,
    save_results,
    time_alternating,
)
from minigpt.generation import generate
from minigpt.kvcache import CachedGPT as GPT
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
        cache = model.empty_cache()
        # the tokens before position p
        model.forward_cached(ids[: p - 1], cache, last_only=True)
        def cached(p=p, cache=cache):
            cache.length = p - 1  # forget the step's own token: repeatable
            return model.forward_cached(ids[p - 1:p], cache, last_only=True)
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
        cache = model.empty_cache()
        for start in range(0, p - 1, 256):  # prefill in chunks: bounded memory
            chunk = ids[start:min(start + 256, p - 1)]
            model.forward_cached(chunk, cache, last_only=True)
        def step(p=p, cache=cache):
            cache.length = p - 1
            return model.forward_cached(ids[p - 1:p], cache, last_only=True)
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
    path = save_results("kvcache", results, command="python -m benchmarks kvcache")
    machine = load_results("kvcache")["machine"]
    plot(results, machine)
    print(f"[kvcache] saved {path}")
    return results


if __name__ == "__main__":
    run()
