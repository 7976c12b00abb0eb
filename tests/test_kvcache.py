"""The KV cache: cached logits equal chapter 17's forward, and the cache is reused.

Tolerance: cached and uncached logits agree to 1e-5 relative to the largest
logit. Both compute in float32; the cached path multiplies one row at a time
where forward multiplies whole matrices, so only the summation order differs.
"""

from __future__ import annotations

import numpy as np
import pytest

import minigpt
from minigpt.attention import mha
from minigpt.generation import generate
from minigpt.kvcache import KVCache, mha_cached
from tests.reference import require
from tests.test_generate import hf_model, random_model

RTOL = 1e-5


def close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= RTOL * np.abs(b).max()


@pytest.mark.parametrize("chunks", [[1] * 16, [16], [5, 1, 1, 9], [3, 4, 9]],
                         ids=str)
def test_cached_logits_equal_forward(chunks):
    """Prefill a chunk, then more chunks: every row equals forward on the prefix."""
    model = random_model(n_ctx=16)
    ids = np.random.default_rng(0).integers(0, 64, 16)
    full = model.forward(ids)
    cache, start, rows = model.empty_cache(), 0, []
    for n in chunks:
        rows.append(model.forward_cached(ids[start:start + n], cache))
        start += n
        assert cache.length == start
    close(np.concatenate(rows), full)


def test_mha_cached_equals_mha():
    model = random_model(n_ctx=16, n_embd=32, n_head=4)
    attn = model.params["blocks"][0]["attn"]
    x = np.random.default_rng(1).standard_normal((10, 32)).astype(np.float32)
    cache = model.empty_cache()
    a = mha_cached(x[:6], **attn, n_head=4, cache=cache, layer=0)
    cache.length = 6  # the forward does this after the last layer
    b = mha_cached(x[6:], **attn, n_head=4, cache=cache, layer=0)
    close(np.concatenate([a, b]), mha(x, **attn, n_head=4))


@pytest.mark.reference
def test_cache_contents_equal_transformers_past_key_values(tmp_path):
    torch = require("torch")
    shape = dict(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    ref = hf_model(tmp_path, **shape)
    model = minigpt.load_model(tmp_path)
    ids = np.arange(7) * 11
    cache = model.empty_cache()
    model.forward_cached(ids, cache)
    with torch.no_grad():
        past = ref(torch.from_numpy(ids)[None], use_cache=True).past_key_values
    for layer in range(2):
        k_ref = past.layers[layer].keys[0].numpy()  # [n_head, T, head_dim]
        v_ref = past.layers[layer].values[0].numpy()
        close(cache.k[layer, :, :7], k_ref)
        close(cache.v[layer, :, :7], v_ref)


def test_cache_is_allocated_once_float32():
    model = random_model(n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    cache = model.empty_cache()
    assert cache.k.shape == cache.v.shape == (2, 4, 16, 8)
    assert cache.k.dtype == cache.v.dtype == np.float32
    k, v = cache.k, cache.v
    model.forward_cached(np.array([1, 2, 3]), cache)
    for token in (4, 5, 6):
        logits = model.forward_cached(np.array([token]), cache)
        assert logits.dtype == np.float32 and logits.shape == (1, 64)
    assert cache.k is k and cache.v is v  # written in place, never replaced
    assert cache.length == 6 and np.abs(cache.k[:, :, 6:]).max() == 0
    cache.reset()
    assert cache.length == 0 and cache.k is k


def test_full_cache_refuses_more_tokens():
    model = random_model(n_ctx=8)
    cache = model.empty_cache()
    model.forward_cached(np.arange(8), cache)
    with pytest.raises(ValueError, match="cache holds 8 of 8 positions; 1 more do "):
        model.forward_cached(np.array([1]), cache)
    assert cache.length == 8  # the refused call changed nothing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_and_uncached_generation_give_identical_tokens(seed):
    model = random_model(seed=seed, n_ctx=16)
    for knobs in (dict(), dict(temperature=1.0, top_k=20)):
        a = list(generate(model, [3, 1, 4], 50, seed=seed, use_cache=True, **knobs))
        b = list(generate(model, [3, 1, 4], 50, seed=seed, use_cache=False, **knobs))
        assert a == b and len(a) == 50


def test_the_prefill_computes_the_head_for_the_last_position_only():
    model = random_model(n_ctx=16)
    ids = np.random.default_rng(2).integers(0, 64, 12)
    every = model.forward_cached(ids, model.empty_cache())
    last = model.forward_cached(ids, model.empty_cache(), last_only=True)
    assert every.shape == (12, 64) and last.shape == (1, 64)
    close(last, every[-1:])


class Spy:
    """A model that records each forward_cached call: (tokens, last_only) and
    the logits it returned."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.forward, self.empty_cache = model.forward, model.empty_cache
        self.calls, self.logits = [], []

    def forward_cached(self, ids, cache, last_only=False):
        self.calls.append((len(ids), last_only))
        self.logits.append(self.model.forward_cached(ids, cache, last_only))
        return self.logits[-1]


def test_generate_asks_for_the_last_position_only():
    """generate() reads one row of logits per step, prefill included."""
    model = random_model(n_ctx=16)
    spy = Spy(model)
    want = list(generate(model, [1, 2, 3, 4], 3))
    assert list(generate(spy, [1, 2, 3, 4], 3)) == want
    assert spy.calls == [(4, True), (1, True), (1, True)]


def test_a_long_prompt_is_prefilled_in_pieces(monkeypatch):
    """A prompt longer than PREFILL goes in pieces; the last piece's logits are
    those of the whole prompt in one call, so the tokens do not change."""
    import minigpt.generation as generation

    model = random_model(n_ctx=32)
    prompt = list(range(1, 12))
    spy = Spy(model)
    want = list(generate(model, prompt, 3))
    whole = model.forward_cached(np.array(prompt), model.empty_cache(),
                                 last_only=True)
    monkeypatch.setattr(generation, "PREFILL", 4)
    assert list(generate(spy, prompt, 3)) == want
    assert [n for n, _ in spy.calls] == [4, 4, 3, 1, 1]
    close(spy.logits[2], whole)  # the prompt's last row, after three pieces


def test_one_cache_class_serves_both_models():
    """LLaMA's cache is the same KVCache (GQA: fewer key/value heads)."""
    from minigpt.llama import LlamaConfig, LlamaModel
    config = LlamaConfig(vocab_size=10, n_ctx=8, n_embd=8, n_layer=1, n_head=2,
                         n_kv_head=1, head_dim=4, n_hidden=8)
    cache = LlamaModel(config, {}).empty_cache()
    assert type(cache) is KVCache and cache.k.shape == (1, 1, 8, 4)


def test_the_cache_never_goes_past_the_context_window():
    model = random_model(seed=0)
    n_ctx = model.config.n_ctx
    with pytest.raises(ValueError, match=f"capacity {n_ctx + 1}: .*n_ctx={n_ctx}"):
        model.empty_cache(n_ctx + 1)
    with pytest.raises(ValueError, match="capacity 0"):
        model.empty_cache(0)
    # a cache built by hand with more room still stops at the last position
    cfg = model.config
    cache = KVCache.empty(cfg.n_layer, cfg.n_head, n_ctx + 4, cfg.n_embd // cfg.n_head)
    model.forward_cached(np.zeros(n_ctx, dtype=np.int64), cache)
    with pytest.raises(ValueError, match=f"go past n_ctx={n_ctx}"):
        model.forward_cached(np.array([1]), cache)
    assert cache.length == n_ctx  # refused before anything was written


def test_llama_never_runs_past_its_context_window(tmp_path):
    from tests.llama_layouts import write_llama

    model = minigpt.load_model(write_llama(tmp_path, "byte-level"))
    n_ctx = model.config.n_ctx
    cfg = model.config
    cache = KVCache.empty(cfg.n_layer, cfg.n_kv_head, n_ctx + 4, cfg.head_dim)
    model.forward_cached(np.ones(n_ctx, dtype=np.int64), cache)
    with pytest.raises(ValueError, match=f"go past n_ctx={n_ctx}"):
        model.forward_cached(np.array([1]), cache)
    assert cache.length == n_ctx
