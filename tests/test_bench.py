"""Profiling helpers, the roofline arithmetic, and the lean decoder of chapter 21.

The lean decoder must give exactly the tokens of transformers' greedy generate
and of chapter 19's generate(), and logits equal to chapter 20's forward_cached:
speed is worth nothing if the answer changes. The reference model is a small
random GPT2LMHeadModel saved with safetensors and loaded by minigpt.load_model
(memory-mapped, like the benchmark). Hugging Face's initialisation (std 0.02)
gives near-uniform logits, where greedy choices hinge on rounding, so weights
are redrawn with std 1 and layer norms get noise of std 0.1: the top two logits
are then far apart compared with float32 differences between the engines.
No test here times anything; speed targets live in benchmarks/bench_decode.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.bench_bandwidth import kernels
from benchmarks.bench_decode import copy_in_large_pieces, merge_races, targets
from minigpt.attention import attention
from minigpt.bench import (
    DecodeBuffers,
    StageTimer,
    attend_chunk,
    bytes_per_token,
    decode_ceiling,
    decode_step,
    float64_arrays,
    forward_flops,
    gelu_tanh_inplace,
    generate_fast,
    layer_norm_into,
    linear_into,
    measure_bandwidth,
    peak_rss_bytes,
    prefill,
    profile_token,
    race_to_roofline,
    save_random_gpt2,
    weight_bytes,
)
from minigpt.generate import generate
from minigpt.kvcache import KVCache, forward_cached
from minigpt.layers import gelu_tanh, layer_norm, linear
from minigpt.model import load_model
from minigpt.weights import GPTConfig
from tests.reference import require

SHAPE = dict(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(transformers model, minigpt model loaded from the same safetensors file)."""
    torch = require("torch")
    transformers = require("transformers")
    folder = tmp_path_factory.mktemp("gpt2-small")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**SHAPE, bos_token_id=None, eos_token_id=None)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 1.0)
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, load_model(folder)


def hf_greedy(ref, prompt: list[int], n: int) -> list[int]:
    torch = require("torch")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.reference
@pytest.mark.parametrize("prompt_len, new", [(1, 20), (5, 30), (16, 48)])
def test_lean_decoder_gives_transformers_greedy_tokens(saved, prompt_len, new):
    ref, model = saved
    prompt = np.random.default_rng(prompt_len).integers(0, 97, prompt_len).tolist()
    want = hf_greedy(ref, prompt, new)
    assert len(set(want)) > 3, "the reference text is degenerate: a weak test"
    assert list(generate_fast(model, prompt, new)) == want
    assert list(generate(model, prompt, new)) == want


@pytest.mark.reference
def test_decode_step_logits_equal_forward_cached(saved):
    _, model = saved
    ids = np.array([3, 14, 15, 92, 65])
    ours, theirs = KVCache.empty(model.config), KVCache.empty(model.config)
    buf = DecodeBuffers.empty(model.config)
    prefill(model, ids[:2], ours)
    forward_cached(model, ids[:2], theirs)
    for token in ids[2:]:
        got = decode_step(model, int(token), ours, buf)
        want = forward_cached(model, np.array([token]), theirs)[-1]
        assert got is buf.logits  # written in place, not a new array
        assert got.dtype == np.float32
        # float32 sums in a different order: a few ulp of the logits' size
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert ours.length == theirs.length == 5
    np.testing.assert_allclose(ours.k[:, :, :5], theirs.k[:, :, :5], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.reference
def test_prefill_returns_the_last_rows_logits(saved):
    _, model = saved
    ids = np.array([5, 6, 7, 8, 9, 10])
    got = prefill(model, ids, KVCache.empty(model.config))
    assert got.shape == (97,)
    np.testing.assert_allclose(got, model.forward(ids)[-1], rtol=1e-5, atol=1e-4)


@pytest.mark.reference
def test_profile_token_times_every_stage_and_changes_nothing(saved):
    _, model = saved
    ids = np.array([1, 2, 3])
    a, b = KVCache.empty(model.config), KVCache.empty(model.config)
    forward_cached(model, ids, a)
    forward_cached(model, ids, b)
    timer = StageTimer()
    got = profile_token(model, 4, a, timer)
    want = forward_cached(model, np.array([4]), b)[-1]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert a.length == 4
    assert set(timer.seconds) == {"embedding", "layer norms", "output head (logits)",
                                  "attention (qkv, scores, proj)", "feed-forward (MLP)"}
    assert timer.calls["layer norms"] == 2 * 3 + 1  # two per block, one final
    assert math.isclose(sum(timer.shares().values()), 1.0)


def test_stage_timer_adds_up_per_stage():
    timer = StageTimer()
    for _ in range(3):
        with timer("a"):
            pass
    with pytest.raises(KeyError), timer("b"):
        raise KeyError("a stage that raises is still timed")
    assert timer.calls == {"a": 3, "b": 1}
    assert all(s >= 0 for s in timer.seconds.values())


def test_helpers_into_buffers_equal_the_layers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(64).astype(np.float32)
    g, b = rng.standard_normal((2, 64)).astype(np.float32)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    out = np.empty(64, np.float32)
    assert layer_norm_into(x, g, b, 1e-5, out) is out
    np.testing.assert_allclose(out, layer_norm(x, g, b), rtol=1e-5, atol=1e-6)
    out32 = np.empty(32, np.float32)
    np.testing.assert_allclose(linear_into(x, w, b[:32], out32), linear(x, w, b[:32]),
                               rtol=1e-5, atol=1e-5)
    y = 3 * x
    want = gelu_tanh(y)
    assert gelu_tanh_inplace(y) is y and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_weight_bytes_counts_gpt2_124m_parameters():
    # GPT-2 124M: 124,439,808 parameters (tied head), float32 -> 4 bytes each
    C, V, T, L = 768, 50257, 1024, 12
    per_block = 12 * C * C + 13 * C  # qkv, proj, fc, proj weights; biases; 2 norms
    n = V * C + T * C + L * per_block + 2 * C
    assert n == 124_439_808
    params = {"wte": np.zeros((V, C), np.float32), "wpe": np.zeros((T, C), np.float32),
              "blocks": [{"w": np.zeros(per_block, np.float32)} for _ in range(L)],
              "ln_f": {"g": np.zeros(C, np.float32), "b": np.zeros(C, np.float32)}}
    assert weight_bytes(params) == 4 * n
    assert float64_arrays(params) == []
    params["ln_f"]["g"] = params["ln_f"]["g"].astype(np.float64)
    assert float64_arrays(params) == [(C,)]


def test_forward_flops_counts_each_block_weight_per_token_and_the_head_once():
    config = GPTConfig(vocab_size=10, n_ctx=4, n_embd=2, n_layer=1, n_head=1)
    n = 10 * 2 + 4 * 2 + 30  # wte, wpe, 30 block parameters
    assert forward_flops(config, n, 1) == 2 * (30 + 20)
    assert forward_flops(config, n, 5) == 2 * (30 * 5 + 20)


def test_roofline_arithmetic():
    config = GPTConfig()
    weights = 497_759_232
    # only one row of wpe is read; keys and values of 100 positions are
    read = bytes_per_token(config, weights, 100)
    assert read == weights - 1023 * 768 * 4 + 2 * 12 * 100 * 768 * 4
    assert decode_ceiling(500_000_000, 15.0) == pytest.approx(30.0)


def test_measure_bandwidth_reports_three_positive_rates():
    rates = measure_bandwidth(megabytes=4, repeats=2)
    assert set(rates) == {"read (matrix @ vector)", "read (sum)", "copy (read + write)"}
    assert all(r > 0 for r in rates.values())


def test_bandwidth_kernels_move_the_bytes_they_claim():
    found = kernels(4 * 2**20)
    fn, moved = found["read"]
    assert moved == 4 * 2**20 and fn().shape == (1024,)
    _, copied = found["copy"]
    assert copied == 2 * 4 * 2**20


def test_peak_rss_sees_a_new_touched_array():
    before = peak_rss_bytes()
    big = np.ones(64 * 2**20 // 8)  # 64 MB, every page written
    assert peak_rss_bytes() >= before + 0.9 * big.nbytes or before > 2**31
    assert big[0] == 1.0


def test_lean_decoder_refuses_to_pass_the_context():
    config = GPTConfig(vocab_size=11, n_ctx=8, n_embd=8, n_layer=1, n_head=2)
    model = type("M", (), {"config": config, "params": {}})()
    with pytest.raises(ValueError, match="pass n_ctx=8"):
        next(generate_fast(model, [1, 2, 3, 4, 5], 4))
    cache = KVCache.empty(config)
    cache.length = 8
    with pytest.raises(ValueError, match="cache is full"):
        decode_step(model, 1, cache, DecodeBuffers.empty(config))


def test_targets_report_each_measured_value():
    r = {"decode": {"minigpt (lean)": {"decode_tok_s": 26.0},
                    "transformers": {"decode_tok_s": 20.0}},
         "ceiling_tok_s": 30.0,
         "roofline_race": {"fraction": {"minigpt (lean)": 26.0 / 30.0}},
         "prefill": {"lengths": [16, 512], "minigpt": [100, 90],
                     "transformers": [100, 100]},
         "memory": {"ratio": 1.2}}
    t = targets(r)
    assert t["decode vs transformers"] == {"measured": 1.3, "target": 1.3, "met": True}
    assert t["decode step vs bandwidth ceiling"]["met"] is True  # 26 / 30 = 0.867
    assert t["whole generation vs bandwidth ceiling"]["measured"] == pytest.approx(
        26 / 30)
    assert t["prefill 512 tokens vs transformers"]["measured"] == pytest.approx(0.9)
    assert t["peak RSS / weight file"]["met"] is True
    r["memory"]["ratio"] = 1.31
    assert targets(r)["peak RSS / weight file"]["met"] is False


def test_save_random_gpt2_loads_memory_mapped(tmp_path):
    config = GPTConfig(vocab_size=50, n_ctx=16, n_embd=8, n_layer=2, n_head=2)
    folder = save_random_gpt2(tmp_path / "m", config, std=0.5, seed=1)
    model = load_model(folder)
    assert model.config == config
    n = 50 * 8 + 16 * 8 + 2 * (12 * 8 * 8 + 13 * 8) + 2 * 8
    assert (folder / "model.safetensors").stat().st_size > 4 * n
    assert weight_bytes(model.params) == 4 * n
    wte = model.params["wte"]
    assert not wte.flags.owndata and not wte.flags.writeable  # a view of the file
    assert np.all(model.params["blocks"][1]["ln_2"]["g"] == 1)
    assert 0.3 < wte.std() < 0.7
    # the lean decoder and chapter 19's generate agree on it
    ids = [1, 2, 3]
    assert list(generate_fast(model, ids, 10)) == list(generate(model, ids, 10))


@pytest.mark.parametrize("start, T", [(0, 1), (0, 7), (5, 3), (9, 1)])
def test_attend_chunk_equals_masked_attention(start, T):
    rng = np.random.default_rng(start + T)
    H, hs, S = 3, 8, start + T
    q = rng.standard_normal((H, T, hs)).astype(np.float32)
    k, v = rng.standard_normal((2, H, S, hs)).astype(np.float32)
    mask = np.tri(T, S, k=start, dtype=bool)  # token t at position start + t
    np.testing.assert_allclose(attend_chunk(q, k, v, start),
                               attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_race_to_roofline_reports_a_ceiling_and_both_decoders(tmp_path):
    config = GPTConfig(vocab_size=64, n_ctx=32, n_embd=16, n_layer=2, n_head=2)
    model = load_model(save_random_gpt2(tmp_path / "m", config))
    race = race_to_roofline(model, position=10, rounds=2)
    assert set(race["tok_s"]) == {"minigpt (lean)", "minigpt (cache)"}
    assert race["bandwidth_gb_s"] > 0 and race["ceiling_tok_s"] > 0
    read = bytes_per_token(config, weight_bytes(model.params), 10)
    assert race["ceiling_tok_s"] == pytest.approx(race["bandwidth_gb_s"] * 1e9 / read)


def test_merge_races_takes_medians_of_rounds():
    races = [{"position": 5, "rounds": 3, "bandwidth_gb_s": bw, "ceiling_tok_s": c,
              "tok_s": {"lean": t}} for bw, c, t in [(10, 20, 18), (30, 60, 30),
                                                     (20, 40, 36)]]
    merged = merge_races(races)
    assert merged["rounds"] == 9 and merged["bandwidth_gb_s"] == 20
    assert merged["ceiling_tok_s"] == 40 and merged["tok_s"] == {"lean": 30}
    assert merged["fraction"]["lean"] == pytest.approx(0.9)  # of 0.9, 0.5, 0.9


def test_copy_in_large_pieces_copies_every_byte(tmp_path):
    (tmp_path / "a").mkdir()
    data = np.random.default_rng(0).bytes(3000)
    (tmp_path / "a" / "model.safetensors").write_bytes(data)
    (tmp_path / "a" / "config.json").write_text("{}")
    out = copy_in_large_pieces(tmp_path / "a", tmp_path / "b", piece=1024)
    assert (out / "model.safetensors").read_bytes() == data
    assert (out / "config.json").read_text() == "{}"
