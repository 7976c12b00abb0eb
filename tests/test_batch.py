"""Batched decoding: B sequences in one step give each one's solo logits and tokens.

Tolerance: 1e-5 relative to the largest logit (float32). The batched step
multiplies an [N, C] matrix where the solo pass multiplies [T, C], so only the
order of additions inside BLAS may differ; quantised products are row by row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import minigpt
from minigpt.batch import batch_forward, stack
from minigpt.generation import generate
from minigpt.models import load_model
from minigpt.quantize import quantize_model

RTOL = 1e-5


def close(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> None:
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rtol * np.abs(b).max()


@pytest.fixture(scope="module", params=["gpt2", "llama", "gpt2-q8_0", "llama-int8"])
def model(request):
    arch, _, scheme = request.param.partition("-")
    m = load_model(minigpt.DEMO_MODEL if arch == "gpt2" else minigpt.DEMO_LLAMA)
    return quantize_model(m, scheme) if scheme else m


def test_a_ragged_batch_equals_each_sequence_alone(model, request):
    """Prompts of 1 to 12 tokens prefill together, then decode together; alone, each
    runs the same calls as generate: its prompt, then one token at a time. Q8_0
    rounds activations, and up to FEW rows run integer dot products where more rows
    run BLAS on the same rounded numbers: a different order of float additions
    before a rounding can move a value by a whole step (1/127 of its group's
    largest, near 0.8%), so there the bound is 1% and the greedy tokens must agree."""
    rtol = 1e-2 if request.node.callspec.id.endswith("q8_0") else RTOL
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, n) for n in (3, 12, 1, 7)]
    caches = [model.empty_cache(32) for _ in prompts]
    alone = [model.empty_cache(32) for _ in prompts]
    chunks = prompts
    for _ in range(5):  # a prefill, then decode steps: every sequence its own length
        logits = batch_forward(model, chunks, caches)
        want = [model.forward_cached(c, a, last_only=True)[-1]
                for c, a in zip(chunks, alone, strict=True)]
        close(logits, np.stack(want), rtol)
        assert (logits.argmax(-1) == np.stack(want).argmax(-1)).all()
        chunks = [np.array([t]) for t in logits.argmax(axis=-1)]
    assert [c.length for c in caches] == [a.length for a in alone] == [7, 16, 5, 11]


@pytest.mark.parametrize("path", [minigpt.DEMO_MODEL, minigpt.DEMO_LLAMA],
                         ids=["gpt2", "llama"])
def test_a_prefill_batch_equals_the_uncached_forward(path):
    """Float models only: quantised activations are rounded, so a different order
    of float additions before a rounding can move a result by a whole step."""
    model = load_model(path)
    prompts = [np.arange(n) * 5 % 1000 for n in (2, 9)]
    logits = batch_forward(model, prompts, [model.empty_cache(9) for _ in prompts])
    close(logits, np.stack([model.forward(p)[-1] for p in prompts]))


def family_variant(model, family: str):
    """The demo LLaMA as a Qwen2 (q, k, v biases), a Qwen3 (q and k norms) or a
    Llama 3 (RoPE divisors), the new weights random: what each family adds."""
    rng = np.random.default_rng(3)
    cfg = model.config
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim

    def vector(n: int, centre: float = 0.0) -> np.ndarray:
        return (centre + rng.normal(0, 0.5, n)).astype(np.float32)
    adds = {"qwen2": lambda: {"q_bias": vector(q), "k_bias": vector(kv),
                              "v_bias": vector(kv)},
            "qwen3": lambda: {"q_norm": {"g": vector(cfg.head_dim, 1.0)},
                              "k_norm": {"g": vector(cfg.head_dim, 1.0)}},
            "llama3": dict}[family]
    changes = {"qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True},
               "llama3": {"rope_divisors": tuple(rng.uniform(1, 8, cfg.head_dim // 2))}}
    layers = [{**b, "self_attn": {**b["self_attn"], **adds()}}
              for b in model.params["layers"]]
    return type(model)(replace(cfg, **changes[family]),
                       {**model.params, "layers": layers})


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama3"])
def test_the_llama_family_batches_as_each_runs_alone(family):
    """Qwen's biases and norms and Llama 3's RoPE reach the batched step too:
    each sequence's logits as its solo forward gives them (which the reference
    tests hold to transformers), at a prefill and at a decode step."""
    plain = load_model(minigpt.DEMO_LLAMA)
    model = family_variant(plain, family)
    prompts = [np.arange(n) * 7 % 1000 for n in (4, 9)]
    caches = [model.empty_cache(16) for _ in prompts]
    alone = [model.empty_cache(16) for _ in prompts]
    chunks = prompts
    for _ in range(2):  # the prompts, then one token each
        logits = batch_forward(model, chunks, caches)
        want = np.stack([model.forward_cached(c, a, last_only=True)[-1]
                         for c, a in zip(chunks, alone, strict=True)])
        close(logits, want)
        chunks = [np.array([t]) for t in want.argmax(axis=-1)]
    # the variant differs from the plain model by far more than the tolerance, so
    # a batched step that dropped what the family adds would fail above
    base = plain.forward(prompts[1])
    moved = np.abs(model.forward(prompts[1]) - base).max()
    assert moved > 100 * RTOL * np.abs(base).max()


def test_batched_greedy_tokens_equal_generate(model):
    prompts = [[5, 6, 7], [100, 3], [9] * 10]
    want = [list(generate(model, p, 8)) for p in prompts]
    caches = [model.empty_cache(32) for _ in prompts]
    chunks, got = [np.array(p) for p in prompts], [[] for _ in prompts]
    for _ in range(8):
        tokens = batch_forward(model, chunks, caches).argmax(axis=-1)
        for out, t in zip(got, tokens, strict=True):
            out.append(int(t))
        chunks = [np.array([t]) for t in tokens]
    eos = set(model.config.eos_token_ids)
    for w, g in zip(want, got, strict=True):  # generate stops at an end-of-text id
        cut = next((i for i, t in enumerate(g) if t in eos), len(g))
        assert g[:cut] == w


def test_stack_lays_the_rows_out_in_order():
    model = load_model(minigpt.DEMO_MODEL)
    caches = [model.empty_cache(16) for _ in range(3)]
    caches[0].length, caches[2].length = 4, 9
    ids, positions, splits, last = stack(
        model, [np.array([1, 2]), np.array([3]), np.array([4, 5, 6])], caches)
    assert ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert positions.tolist() == [4, 5, 0, 9, 10, 11]
    assert splits.tolist() == [2, 3] and last.tolist() == [1, 2, 5]


def test_a_chunk_that_does_not_fit_is_refused_before_any_write():
    model = load_model(minigpt.DEMO_MODEL)
    caches = [model.empty_cache(4), model.empty_cache(2)]
    with pytest.raises(ValueError, match="do not fit"):
        batch_forward(model, [np.array([1, 2]), np.array([1, 2, 3])], caches)
    assert [c.length for c in caches] == [0, 0]
    assert not caches[0].k.any()
