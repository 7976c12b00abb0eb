"""Generation: greedy tokens equal transformers' generate(), the window, stop, streams.

Reference models are random GPT2LMHeadModels (no download). Hugging Face's
initialisation (std 0.02) makes the logits nearly uniform, so greedy choices
would hinge on float rounding, and a tied embedding that dominates the residual
stream makes greedy decoding repeat one token. So every weight matrix and
embedding is redrawn with std 1 and the layer norms get noise of std 0.1: the
top two logits are then at least ~0.01 apart on these runs, a thousand times the
float32 differences between the two engines, and the text varies.
"""

from __future__ import annotations

import numpy as np
import pytest

import minigpt
from minigpt.generation import generate, stop_text, stream_text, window_start
from minigpt.kvcache import CachedGPT
from minigpt.tokenizer import ByteBPE, train_bpe
from minigpt.weights import GPTConfig
from tests.reference import require


def hf_model(folder, seed: int = 0, **shape):
    """A random GPT2LMHeadModel with decisive logits, saved to folder."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**shape, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 1.0)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_greedy(model, prompt: list[int], n: int, use_cache: bool = True) -> list[int]:
    torch = require("torch")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0, use_cache=use_cache)
    return out[0, len(prompt):].tolist()


def random_model(seed: int = 0, vocab_size: int = 64, n_ctx: int = 16,
                 n_embd: int = 32, n_layer: int = 2, n_head: int = 4,
                 eos_token_ids: tuple[int, ...] = ()) -> CachedGPT:
    """A random minigpt model built directly in NumPy (no files)."""
    rng = np.random.default_rng(seed)
    C = n_embd
    def r(*shape, std=0.3):
        return (rng.standard_normal(shape) * std).astype(np.float32)
    def lin(i, o):
        return {"w": r(i, o), "b": r(o, std=0.1)}
    def norm():
        return {"g": 1 + r(C, std=0.1), "b": r(C, std=0.1)}
    blocks = [{"ln_1": norm(), "attn": {"c_attn": lin(C, 3 * C), "c_proj": lin(C, C)},
               "ln_2": norm(), "mlp": {"c_fc": lin(C, 4 * C), "c_proj": lin(4 * C, C)}}
              for _ in range(n_layer)]
    params = {"wte": r(vocab_size, C), "wpe": r(n_ctx, C), "blocks": blocks,
              "ln_f": norm()}
    return CachedGPT(GPTConfig(vocab_size=vocab_size, n_ctx=n_ctx, n_embd=C,
                               n_layer=n_layer, n_head=n_head,
                               eos_token_ids=eos_token_ids), params)


SHAPES = [
    dict(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4),
    dict(vocab_size=1000, n_positions=48, n_embd=48, n_layer=3, n_head=3),
]


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}")
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_equals_transformers(tmp_path, shape, seed):
    ref = hf_model(tmp_path, seed=seed, **shape)
    model = minigpt.load_model(tmp_path)
    prompt = np.random.default_rng(seed).integers(0, shape["vocab_size"], 5).tolist()
    n = shape["n_positions"] - len(prompt)  # up to the full context window
    expected = hf_greedy(ref, prompt, n)
    assert len(set(expected)) > 5  # not one token repeated: the test can tell apart
    for use_cache in (True, False):
        ours = list(minigpt.generate(model, prompt, n, use_cache=use_cache))
        assert ours == expected, f"use_cache={use_cache}"


def test_same_seed_same_tokens():
    model = random_model()
    def run(seed, **kw):
        return list(generate(model, [1, 2, 3], 12, temperature=1.0, seed=seed, **kw))
    assert run(5) == run(5) == run(5, use_cache=False)
    assert run(5) != run(6)


def test_sampled_tokens_cached_equal_uncached():
    model = random_model(seed=3)
    for knobs in (dict(temperature=0.8), dict(temperature=1.2, top_k=10),
                  dict(temperature=1.0, top_p=0.9)):
        a = list(generate(model, [5], 40, seed=11, use_cache=True, **knobs))
        b = list(generate(model, [5], 40, seed=11, use_cache=False, **knobs))
        assert a == b and len(a) == 40  # 40 > n_ctx = 16: the window slides


def test_window_start_slides_by_half():
    assert window_start(16, 0, 16) == 0  # full but fits
    assert window_start(17, 0, 16) == 9  # overflow: keep the newest 8
    assert window_start(20, 9, 16) == 9  # 11 tokens since 9: fits again
    assert window_start(26, 9, 16) == 18
    assert window_start(5, 0, 1) == 4  # n_ctx 1 keeps one token
    assert window_start(100, 0, 16) == 92  # a long prompt: the newest 8


class SpyModel:
    """Wraps a model and records the length of every forward call."""

    def __init__(self, model: CachedGPT):
        self.config, self.params, self.model = model.config, model.params, model
        self.lengths: list[int] = []

    def forward(self, ids):
        self.lengths.append(len(ids))
        return self.model.forward(ids)


def test_uncached_window_lengths():
    spy = SpyModel(random_model(n_ctx=8))
    out = list(generate(spy, [1, 2, 3, 4, 5, 6], 10, use_cache=False))
    assert len(out) == 10
    # 6, 7, 8 fit; at 9 tokens the window keeps the newest 4, then grows to 8
    assert spy.lengths == [6, 7, 8, 4, 5, 6, 7, 8, 4, 5]


class OwnCacheModel(SpyModel):
    """A model that brings its own cache and cached forward (as LLaMA's does)."""

    def empty_cache(self, capacity=None):
        self.lengths.append(("empty_cache", capacity))
        return self.model.empty_cache(capacity)

    def forward_cached(self, ids, cache, last_only=False):
        self.lengths.append(("cached", len(ids)))
        return self.model.forward_cached(ids, cache, last_only)


def test_a_model_with_its_own_cache_is_used_through_it():
    model = random_model(n_ctx=8)
    own = OwnCacheModel(model)
    out = list(generate(own, [1, 2, 3], 7))
    assert out == list(generate(model, [1, 2, 3], 7))
    # 3 + 7 tokens overflow n_ctx = 8, so the cache is the whole window long
    assert own.lengths == [("empty_cache", 8), ("cached", 3), *[("cached", 1)] * 5,
                           ("empty_cache", 8), ("cached", 4)]  # at 9 it slid to 4


def test_the_cache_is_as_long_as_this_call_can_reach():
    own = OwnCacheModel(random_model(n_ctx=32))
    out = list(generate(own, [1, 2, 3], 5))
    assert own.lengths[0] == ("empty_cache", 3 + 5)  # not n_ctx = 32
    assert out == list(generate(random_model(n_ctx=32), [1, 2, 3], 5, use_cache=False))


def test_long_prompt_keeps_its_last_n_ctx_tokens():
    model = random_model(n_ctx=8)
    prompt = list(range(20))
    a = list(generate(model, prompt, 3, use_cache=True))
    b = list(generate(model, prompt[-8:], 3, use_cache=False))
    assert a == b


def test_one_token_over_the_window_drops_one_token_not_half():
    spy = SpyModel(random_model(n_ctx=8))
    list(generate(spy, list(range(9)), 3, use_cache=False))
    # the prompt keeps its last 8; sliding by half starts only while generating
    assert spy.lengths == [8, 4, 5]
    own = OwnCacheModel(random_model(n_ctx=8))
    list(generate(own, list(range(9)), 2))
    assert own.lengths[:2] == [("empty_cache", 8), ("cached", 8)]


def test_stop_token_ends_generation_and_is_not_yielded():
    model = random_model()
    free = list(generate(model, [1, 2], 10))
    stop_at = free[4]
    first = free.index(stop_at)
    assert list(generate(model, [1, 2], 10, stop=stop_at)) == free[:first]
    assert list(generate(model, [1, 2], 10, stop=[999, stop_at])) == free[:first]


def test_stop_accepts_any_integer_numpy_included():
    model = random_model()
    free = list(generate(model, [1, 2], 10))
    first = free.index(free[4])
    for stop in (np.int64(free[4]), np.uint16(free[4]), (np.int32(free[4]),),
                 np.array([free[4], 999])):
        assert list(generate(model, [1, 2], 10, stop=stop)) == free[:first], stop
    assert 0 not in free  # so stop=0 below is no stop at all
    assert list(generate(model, [1, 2], 10, stop=np.int64(0))) == free
    model0 = random_model(seed=4)
    free0 = list(generate(model0, [1], 30, temperature=3.0, seed=0))
    if 0 in free0:  # 0 is falsy; it must still stop
        cut = free0.index(0)
        assert list(generate(model0, [1], 30, temperature=3.0, seed=0,
                             stop=np.int64(0))) == free0[:cut]
    for bad in (2.0, True, "a", [1, None]):
        with pytest.raises(TypeError, match="stop must be a token id"):
            generate(model, [1], 3, stop=bad)


def test_generation_ends_at_the_models_end_of_text_id():
    plain = random_model()
    free = list(generate(plain, [1, 2], 10))
    eos = random_model(eos_token_ids=(free[4],))
    first = free.index(free[4])
    assert list(generate(eos, [1, 2], 10)) == free[:first]
    assert list(generate(eos, [1, 2], 10, stop=())) == free  # stop=() never stops


def test_stop_text_ends_before_the_stop_string():
    def run(text, stops, size=1):
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        return "".join(stop_text(pieces, stops))
    assert run("one\n\ntwo", ["\n\n"]) == "one"
    assert run("one\n\ntwo", ["\n\n"], size=4) == "one"
    assert run("abcSTOPdef", ["STOP", "cS"]) == "ab"  # whichever comes first
    assert run("no stop here", ["STOP"]) == "no stop here"
    assert run("STOP", ["STOP"]) == ""
    assert run("abc", []) == "abc"
    # pieces are shown as soon as they cannot be the start of a stop string
    shown = list(stop_text(iter(["ab", "cd", "ST", "OP", "x"]), ["STOP"]))
    assert shown == ["a", "bc", "d"]


def test_minigpt_generate_is_the_function_and_the_module_is_ordinary():
    import importlib
    import types

    g = importlib.import_module("minigpt.generation")
    assert type(g) is types.ModuleType  # no class swapped in
    assert not callable(g) and hasattr(g, "stream_text")
    # one meaning per name: the function, before and after the module is imported
    assert minigpt.generate is g.generate is generate
    exec("from minigpt import generate as f; import minigpt.generation", ns := {})
    assert ns["f"] is generate and minigpt.generate is generate
    model = random_model()
    assert list(minigpt.generate(model, [1, 2], 4)) == list(g.generate(model, [1, 2],
                                                                         4))


def test_generate_is_lazy_and_yields_ints():
    model = random_model()
    spy = SpyModel(model)
    it = generate(spy, [1], 5, use_cache=False)
    assert spy.lengths == []  # nothing computed before the first next()
    first = next(it)
    assert type(first) is int and spy.lengths == [1]
    assert list(generate(model, [1], 0)) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[64]), "out of range"),
    (dict(prompt_ids=[-1]), "out of range"),
    (dict(prompt_ids=[1.5]), "integers"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=2.0), "top_p"),
])
def test_bad_arguments_raise_at_the_call(kwargs, message):
    args = {"model": random_model(), "prompt_ids": [1], "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(**args)  # raised at once, not at the first next()


def test_stream_text_never_splits_a_character():
    # a tokenizer whose tokens are single bytes: every multi-byte character
    # arrives in pieces, the hardest case for streaming
    vocab, merges = train_bpe("x", vocab_size=256)
    tok = ByteBPE(vocab, merges)
    text = "héllo, 世界 🙂!"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    pieces = list(stream_text(tok, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces  # the four bytes were held back, then shown whole
    # a naive decoder, one token at a time, would have shown broken characters
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)


def test_stream_text_flushes_an_unfinished_character():
    vocab, merges = train_bpe("x", vocab_size=256)
    tok = ByteBPE(vocab, merges)
    ids = tok.encode("a世")[:-1]  # "a" and two of the three bytes of 世
    assert list(stream_text(tok, ids)) == ["a", "\ufffd"]


def test_generate_asks_models_only_for_the_protocol():
    """One interface: no hasattr, no isinstance on model classes in the loop."""
    import ast
    import importlib
    import inspect

    g = importlib.import_module("minigpt.generation")
    source = inspect.getsource(g)
    assert "hasattr" not in source and "isinstance(model" not in source
    imported = {n.module for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ImportFrom)}
    assert not imported & {"minigpt.kvcache", "minigpt.llama"}, imported
