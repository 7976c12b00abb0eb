"""Qwen2, Qwen3 and Llama 3's RoPE scaling from safetensors ≡ transformers."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.llama import load_llama
from minigpt.models import load_model
from minigpt.rope import llama3_divisors
from tests.reference import logits_of, rel_error, require

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
          "rope_theta": 500000.0}


def family_model(folder, family: str, seed: int = 0, **changes):
    """A random transformers model of one family, saved as a checkpoint folder."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    kinds = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}
    config_class, model_class = (getattr(transformers, n) for n in kinds[family])
    config = config_class(**{**SMALL, **changes}, initializer_range=0.1,
                          bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = model_class(config).eval()
    with torch.no_grad():  # gains and biases away from 1 and 0: misplaced ones show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.mark.reference
@pytest.mark.parametrize("family, changes", [
    ("qwen2", {}), ("qwen2", {"tie_word_embeddings": True}),
    ("qwen3", {}), ("qwen3", {"head_dim": 12, "tie_word_embeddings": True}),
    ("llama", {"rope_parameters": LLAMA3}),
    ("llama", {"rope_scaling": {k: v for k, v in LLAMA3.items()
                                if k != "rope_theta"}, "rope_theta": 500000.0}),
], ids=["qwen2", "qwen2-tied", "qwen3", "qwen3-head-dim", "llama3-rope",
        "llama3-rope-old-spelling"])
def test_logits_equal_transformers(tmp_path, family, changes):
    ref = family_model(tmp_path, family, **changes)
    model = load_model(tmp_path)
    c = model.config
    assert c.qkv_bias == (family == "qwen2") and c.qk_norm == (family == "qwen3")
    assert bool(c.rope_divisors) == (family == "llama")
    ids = np.random.default_rng(1).integers(0, c.vocab_size, c.n_ctx)
    rel = rel_error(model.forward(ids), logits_of(ref, ids))
    assert rel < 1e-5, f"relative error {rel:.2e}"


@pytest.mark.reference
def test_llama3_scaling_is_really_used(tmp_path):
    ref = family_model(tmp_path, "llama", rope_parameters=LLAMA3)
    ids = np.random.default_rng(2).integers(0, 96, 64)
    model = load_llama(tmp_path)
    plain = type(model)(type(model.config)(**{**model.config.__dict__,
                                              "rope_divisors": ()}), model.params)
    good = rel_error(model.forward(ids), logits_of(ref, ids))
    assert rel_error(plain.forward(ids), logits_of(ref, ids)) > 100 * good


@pytest.mark.reference
def test_llama3_divisors_equal_transformers():
    require("torch")
    transformers = require("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA3)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = SMALL["hidden_size"] // SMALL["num_attention_heads"]
    plain = 500000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    ours = plain / llama3_divisors(head_dim, 500000.0, 8.0, 1.0, 4.0, 16)
    np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=1e-6)
