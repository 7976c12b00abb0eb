"""The LLaMA-style model against Hugging Face's LlamaForCausalLM.

Reference models are built from LlamaConfig objects with random weights (no
download), saved with save_pretrained as safetensors, loaded by minigpt, and
compared. Logits: relative error max |ours - ref| / max |ref| below 1e-5; both
sides compute in float32 and differ in summation order and in how RoPE's angles
are rounded. Greedy generation: the same token ids, with and without the cache;
weights are drawn with a large std so the top two logits are never near a tie,
and the test checks that margin before comparing tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import minigpt
from minigpt.generation import generate
from minigpt.llama import (
    LlamaConfig,
    LlamaModel,
    grouped_attention,
    load_llama,
    rms_norm,
    swiglu,
)
from minigpt.weights import WeightsError
from tests.reference import require

SHAPES = [  # LlamaConfig keyword arguments: small, but each exercises something
    dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16),
    dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
         num_attention_heads=8, num_key_value_heads=2,  # GQA: groups of 4
         max_position_embeddings=64, rope_theta=500000.0),
    dict(vocab_size=257, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
         num_attention_heads=6, num_key_value_heads=1,  # multi-query attention
         max_position_embeddings=40, tie_word_embeddings=True, rms_norm_eps=1e-5),
    dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=2, head_dim=12,  # 4*12 != 32
         max_position_embeddings=48, rope_theta=1000.0),
]


def shape_id(s: dict) -> str:
    tied = "-tied" if s.get("tie_word_embeddings") else ""
    return f"H{s['num_attention_heads']}-KV{s['num_key_value_heads']}{tied}"


def reference_model(tmp_path, seed: int = 0, std: float = 0.02, **shape):
    """A random LlamaForCausalLM saved as a checkpoint folder, and the model."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**shape, initializer_range=std,
                                      bos_token_id=None, eos_token_id=None,
                                      pad_token_id=None)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norm gains away from 1, so a misplaced gain shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def reference_logits(model, ids: np.ndarray) -> np.ndarray:
    torch = require("torch")
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_logits_equal_transformers(tmp_path, shape):
    ref_model = reference_model(tmp_path, std=0.1, **shape)
    model = load_llama(tmp_path)
    c = model.config
    assert (c.n_head, c.n_kv_head, c.n_ctx) == (
        shape["num_attention_heads"], shape["num_key_value_heads"],
        shape["max_position_embeddings"])
    assert c.rope_theta == shape.get("rope_theta", 10000.0)
    assert c.tie_word_embeddings == shape.get("tie_word_embeddings", False)
    rng = np.random.default_rng(1)
    for T in (1, 7, c.n_ctx):  # one token, a few, the full context
        ids = rng.integers(0, c.vocab_size, T)
        ours = model.forward(ids)
        assert ours.dtype == np.float32 and ours.shape == (T, c.vocab_size)
        rel = rel_error(ours, reference_logits(ref_model, ids))
        assert rel < 1e-5, f"relative error {rel:.2e} at T={T}"


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=shape_id)
def test_cached_steps_equal_the_full_forward(tmp_path, shape):
    """Prefill 5 tokens, then decode one at a time: the same logits as one pass."""
    reference_model(tmp_path, std=0.1, **shape)
    model = load_llama(tmp_path)
    ids = np.random.default_rng(2).integers(0, model.config.vocab_size, 20)
    full = model.forward(ids)
    cache = model.empty_cache()
    steps = [model.forward_cached(ids[:5], cache)]
    steps += [model.forward_cached(ids[t:t + 1], cache) for t in range(5, 20)]
    assert cache.length == 20
    # the same sums in another order (one row vs many): float32 rounding only
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=1e-5, atol=1e-5)


def ours_greedy_cached(model: LlamaModel, prompt: np.ndarray, n: int) -> list[int]:
    """Greedy decoding through forward_cached (prefill, then one token a step)."""
    cache = model.empty_cache()
    logits = model.forward_cached(prompt, cache)
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[-1].argmax()))
        logits = model.forward_cached(np.array(out[-1:]), cache)
    return out


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=shape_id)
def test_greedy_generation_equals_transformers(tmp_path, shape):
    torch = require("torch")
    ref_model = reference_model(tmp_path, std=0.5, **shape)
    model = load_llama(tmp_path)
    prompt = np.random.default_rng(3).integers(0, model.config.vocab_size, 6)
    n = 24
    with torch.no_grad():
        ref = ref_model.generate(torch.from_numpy(prompt)[None],
                                 attention_mask=torch.ones(1, len(prompt),
                                                           dtype=torch.long),
                                 max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False)[0, len(prompt):].tolist()
    # no near-ties on the reference path, or a token could flip on rounding alone
    logits = model.forward(np.concatenate([prompt, ref[:-1]]))[len(prompt) - 1:]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-3
    uncached = list(generate(model, prompt, n, use_cache=False))
    assert uncached == ref
    assert ours_greedy_cached(model, prompt, n) == ref


@pytest.mark.reference
def test_generate_with_cache_uses_the_llama_cache(tmp_path):
    reference_model(tmp_path, std=0.5, **SHAPES[1])
    model = load_llama(tmp_path)
    prompt = [5, 17, 99]
    assert (list(generate(model, prompt, 30, use_cache=True))
            == list(generate(model, prompt, 30, use_cache=False)))


@pytest.mark.reference
def test_load_model_reads_llama_checkpoints(tmp_path):
    reference_model(tmp_path, **SHAPES[0])
    model = minigpt.load_model(tmp_path)
    assert isinstance(model, LlamaModel)
    ids = np.arange(10)
    np.testing.assert_array_equal(model.forward(ids), load_llama(tmp_path).forward(ids))


@pytest.mark.reference
def test_rms_norm_and_swiglu_equal_transformers():
    torch = require("torch")
    transformers = require("transformers")
    from transformers.models.llama import modeling_llama as ml

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=40,
                                      num_attention_heads=2)
    norm, mlp = ml.LlamaRMSNorm(16, eps=1e-5), ml.LlamaMLP(config)
    with torch.no_grad():
        norm.weight.normal_()
    x = np.random.default_rng(4).standard_normal((5, 16), dtype=np.float32) * 3
    with torch.no_grad():
        ref_norm = norm(torch.from_numpy(x)).numpy()
        ref_mlp = mlp(torch.from_numpy(x)).numpy()
    g = norm.weight.detach().numpy()
    np.testing.assert_allclose(rms_norm(x, g, eps=1e-5), ref_norm, rtol=1e-5,
                               atol=1e-6)
    w = {n: getattr(mlp, n).weight.detach().numpy().T
         for n in ("gate_proj", "up_proj", "down_proj")}
    np.testing.assert_allclose(swiglu(x, **w), ref_mlp, rtol=1e-5, atol=1e-6)


def test_grouped_attention_equals_repeated_heads():
    """GQA = ordinary attention after repeating each kv head for its group."""
    from minigpt.attention import attention, causal_mask

    rng = np.random.default_rng(5)
    q = rng.standard_normal((6, 4, 8), dtype=np.float32)  # 6 query heads
    k, v = (rng.standard_normal((2, 4, 8), dtype=np.float32) for _ in "kv")
    repeated = attention(q, np.repeat(k, 3, axis=0), np.repeat(v, 3, axis=0),
                         causal_mask(4))
    np.testing.assert_allclose(grouped_attention(q, k, v, causal_mask(4)),
                               repeated, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="6 query heads do not split"):
        grouped_attention(q, k[:1].repeat(4, axis=0), v[:1].repeat(4, axis=0), None)


def test_cache_is_smaller_with_fewer_kv_heads():
    base = dict(vocab_size=10, n_ctx=32, n_embd=64, n_layer=2, n_head=8, head_dim=8,
                n_hidden=16)
    mha = LlamaModel(LlamaConfig(**base, n_kv_head=8), {}).empty_cache()
    gqa = LlamaModel(LlamaConfig(**base, n_kv_head=2), {}).empty_cache()
    assert mha.k.shape == (2, 8, 32, 8) and gqa.k.shape == (2, 2, 32, 8)
    assert mha.k.nbytes == 4 * gqa.k.nbytes and gqa.k.dtype == np.float32


def write_config(folder, **changes) -> None:
    raw = json.loads((folder / "config.json").read_text())
    raw.update(changes)
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.mark.reference
@pytest.mark.parametrize("change, message", [
    (dict(hidden_act="gelu"), "hidden_act is 'gelu'"),
    (dict(attention_bias=True), "attention_bias is True"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4}),
     "rope_scaling llama3: 'factor'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_type 'dynamic'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type 'yarn'"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}),
     "rope_type 'longrope'"),
    (dict(rope_scaling={"type": "linear"}), "linear scaling needs a factor >= 1"),
    (dict(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    (dict(model_type="gpt2"), "model_type is 'gpt2'"),
])
def test_unsupported_configs_are_refused(tmp_path, change, message):
    reference_model(tmp_path, **SHAPES[0])
    write_config(tmp_path, **change)
    with pytest.raises(WeightsError, match=message):
        load_llama(tmp_path)


@pytest.mark.reference
def test_bad_checkpoints_are_named(tmp_path):
    reference_model(tmp_path, **SHAPES[0])
    write_config(tmp_path, num_hidden_layers=2)  # the file holds one layer
    with pytest.raises(WeightsError, match=r"'layers.1.*missing \(9 missing in all\)"):
        load_llama(tmp_path)
    write_config(tmp_path, num_hidden_layers=1, intermediate_size=25)
    with pytest.raises(WeightsError, match=r"shape \[(16, 24|24, 16)\], "
                                           r"expected \[(16, 25|25, 16)\]"):
        load_llama(tmp_path)
    write_config(tmp_path, intermediate_size=24)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_llama(tmp_path)


@pytest.mark.reference
def test_weights_are_views_of_the_file(tmp_path):
    """float32 weights are memory-mapped, never copied; transposes are views too."""
    reference_model(tmp_path, **SHAPES[2])  # tied head
    p = load_llama(tmp_path).params
    q = p["layers"][0]["self_attn"]["q_proj"]
    assert isinstance(q.base, np.ndarray) and not q.flags.writeable
    assert np.shares_memory(p["lm_head"], p["embed_tokens"])


@pytest.mark.reference
def test_a_full_cache_and_bad_ids_are_refused(tmp_path):
    reference_model(tmp_path, **SHAPES[0])  # n_ctx = 16
    model = load_llama(tmp_path)
    cache = model.empty_cache()
    model.forward_cached(np.arange(10), cache)
    with pytest.raises(ValueError, match="holds 10 of 16 positions; 7 more"):
        model.forward_cached(np.arange(7), cache)
    assert cache.length == 10  # a refused step leaves the cache as it was
    with pytest.raises(ValueError, match=r"out of range \[0, 50\)"):
        model.forward(np.array([3, 50]))
    with pytest.raises(ValueError, match="more than the context of n_ctx=16"):
        model.forward(np.zeros(17, dtype=np.int64))


# RoPE scaling. Past position 1,024 the reference's angles lose precision: it
# computes position * inv_freq in float32, whose spacing near an angle of 1,100
# radians is 2**-13 (1.2e-4 rad), while minigpt computes angles in float64 and
# rounds cos and sin once. The logits then differ by about 1e-5 relative, so the
# bound here is 1e-4 relative (the plain-RoPE tests above, at short positions,
# use 1e-5).
LONG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1200)
LONG_TOLERANCE = 1e-4


@pytest.mark.reference
@pytest.mark.parametrize("spelling", ["rope_parameters", "rope_scaling-type",
                                      "rope_scaling-rope_type"])
def test_linear_rope_scaling_equals_transformers(tmp_path, spelling):
    scaling = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    ref_model = reference_model(tmp_path, std=0.1, **LONG, rope_parameters=scaling)
    if spelling != "rope_parameters":  # the older spelling of the same thing
        key = spelling.split("-")[1]
        write_config(tmp_path, rope_parameters=None, rope_theta=10000.0,
                     rope_scaling={key: "linear", "factor": 4})
        transformers = require("transformers")
        reread = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
        assert reread.config.rope_parameters["rope_type"] == "linear"
    model = load_llama(tmp_path)
    assert model.config.rope_factor == 4.0
    ids = np.random.default_rng(4).integers(0, 64, 1100)  # positions 0..1099
    ours, ref = model.forward(ids), reference_logits(ref_model, ids)
    rel = rel_error(ours, ref)
    assert rel < LONG_TOLERANCE, f"relative error {rel:.2e}"
    # without the scaling the logits are far off: the factor is really used
    write_config(tmp_path, rope_parameters=None, rope_scaling=None)
    assert rel_error(load_llama(tmp_path).forward(ids), ref) > 100 * rel


@pytest.mark.reference
def test_plain_rope_past_1024_positions(tmp_path):
    ref_model = reference_model(tmp_path, std=0.1, **LONG)
    ids = np.random.default_rng(5).integers(0, 64, 1100)
    rel = rel_error(load_llama(tmp_path).forward(ids), reference_logits(ref_model, ids))
    assert rel < LONG_TOLERANCE, f"relative error {rel:.2e}"


@pytest.mark.reference
def test_sharded_checkpoint_equals_transformers(tmp_path):
    """save_pretrained(max_shard_size=...) writes an index and several shards."""
    torch = require("torch")
    ref_model = reference_model(tmp_path / "one", std=0.1, **SHAPES[1])
    ref_model.to(torch.bfloat16).save_pretrained(tmp_path / "sharded",
                                                 max_shard_size="40KB")
    folder = tmp_path / "sharded"
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (folder / "model.safetensors").exists()
    model = load_llama(folder)
    ids = np.random.default_rng(6).integers(0, 300, 30)
    # transformers reads the shards back as float32: the same bf16-rounded weights
    transformers = require("transformers")
    reread = transformers.LlamaForCausalLM.from_pretrained(folder,
                                                          dtype=torch.float32)
    ref = reference_logits(reread.eval(), ids)
    assert rel_error(model.forward(ids), ref) < 1e-5
    assert isinstance(minigpt.load_model(folder), LlamaModel)  # the loader table
    q = model.params["layers"][0]["self_attn"]["q_proj"]
    assert q.dtype == np.float32  # BF16 on disk, float32 in memory


@pytest.mark.reference
def test_bad_shard_indexes_are_named(tmp_path):
    torch = require("torch")
    ref_model = reference_model(tmp_path / "one", **SHAPES[1])
    folder = tmp_path / "sharded"
    ref_model.to(torch.float16).save_pretrained(folder, max_shard_size="40KB")
    index = folder / "model.safetensors.index.json"
    raw = json.loads(index.read_text())
    name, shard = next(iter(raw["weight_map"].items()))
    other = next(s for s in raw["weight_map"].values() if s != shard)
    index.write_text(json.dumps({**raw, "weight_map": {**raw["weight_map"],
                                                       name: other}}))
    with pytest.raises(WeightsError, match=f"{name!r} is not (listed for this "
                                           f"shard|in its shard)"):
        load_llama(folder)
    index.write_text(json.dumps({**raw, "weight_map": {name: "../x.safetensors"}}))
    with pytest.raises(WeightsError, match="is not a file name"):
        load_llama(folder)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(WeightsError, match="no weight_map"):
        load_llama(folder)
    index.unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_llama(folder)


@pytest.mark.reference
def test_eos_ids_come_from_the_checkpoint(tmp_path):
    reference_model(tmp_path, **SHAPES[0])
    write_config(tmp_path, eos_token_id=[2, 7])
    assert load_llama(tmp_path).config.eos_token_ids == (2, 7)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 5}')
    assert load_llama(tmp_path).config.eos_token_ids == (5,)
