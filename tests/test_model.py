"""The full GPT-2 forward pass against Hugging Face's GPT2LMHeadModel.

Reference models are built from GPT2Config objects with random weights (no
download), saved with save_pretrained as safetensors, loaded by minigpt, and their
logits compared. Tolerance: relative error (max |ours - ref| / max |ref|) below
1e-5; both sides compute in float32 and differ only in summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

import minigpt
from minigpt.model import GPT, gpt2_forward
from minigpt.weights import GPTConfig, WeightsError
from tests.reference import require

SHAPES = [  # GPT2Config keyword arguments: small, but each exercises something
    dict(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2),
    dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=3, n_head=4),
    dict(vocab_size=1000, n_positions=40, n_embd=96, n_layer=2, n_head=3,
         layer_norm_epsilon=1e-3),  # odd head count, another epsilon
    dict(vocab_size=257, n_positions=128, n_embd=48, n_layer=4, n_head=12),
]


def reference_model(tmp_path, seed: int = 0, **shape):
    """A random GPT2LMHeadModel saved as a checkpoint folder, and the model."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**shape, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger-than-init values, so LayerNorm params matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def reference_logits(model, ids: np.ndarray) -> np.ndarray:
    torch = require("torch")
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("shape", SHAPES,
                         ids=lambda s: f"L{s['n_layer']}-C{s['n_embd']}")
def test_logits_equal_transformers(tmp_path, shape):
    ref_model = reference_model(tmp_path, **shape)
    model = minigpt.load_model(tmp_path)
    assert model.config == GPTConfig(
        vocab_size=shape["vocab_size"], n_ctx=shape["n_positions"],
        n_embd=shape["n_embd"], n_layer=shape["n_layer"], n_head=shape["n_head"],
        layer_norm_epsilon=shape.get("layer_norm_epsilon", 1e-5), eos_token_ids=(0,))
    rng = np.random.default_rng(1)
    for T in (1, 5, shape["n_positions"]):  # one token, a few, the full context
        ids = rng.integers(0, shape["vocab_size"], T)
        ours = model.forward(ids)
        ref = reference_logits(ref_model, ids)
        assert ours.dtype == np.float32 and ours.shape == (T, shape["vocab_size"])
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, f"relative error {rel:.2e} at T={T}"


@pytest.mark.reference
def test_base_model_checkpoint_without_prefix(tmp_path):
    """GPT2Model saves names without "transformer."; the logits are the same."""
    shape = SHAPES[1]
    ref_model = reference_model(tmp_path / "lm", **shape)
    ref_model.transformer.save_pretrained(tmp_path / "base", safe_serialization=True)
    from minigpt.weights import read_safetensors
    names = read_safetensors(tmp_path / "base" / "model.safetensors")
    assert not any(n.startswith("transformer.") for n in names)
    ids = np.arange(20) % shape["vocab_size"]
    np.testing.assert_array_equal(minigpt.load_model(tmp_path / "base").forward(ids),
                                  minigpt.load_model(tmp_path / "lm").forward(ids))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> GPT:
    path = tmp_path_factory.mktemp("tiny")
    reference_model(path, **SHAPES[0])
    return minigpt.load_model(path)


@pytest.mark.reference
def test_causal_prefix_gives_the_same_logits(tiny_model):
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    full = tiny_model.forward(ids)
    np.testing.assert_allclose(tiny_model.forward(ids[:3]), full[:3], rtol=1e-5,
                               atol=1e-6)  # position 2 never sees positions 3+


@pytest.mark.reference
def test_forward_is_gpt2_forward_on_params(tiny_model):
    ids = np.array([1, 2, 3])
    direct = gpt2_forward(ids, **tiny_model.params, n_head=2)
    np.testing.assert_array_equal(direct, tiny_model.forward(ids))
    assert sorted(tiny_model.params) == ["blocks", "ln_f", "wpe", "wte"]


@pytest.mark.reference
@pytest.mark.parametrize("ids, fragment", [
    ([], "empty"),
    (list(range(17)), "17 tokens is more than the context of n_ctx=16"),
    ([1, 50], r"out of range \[0, 50\): \[50\]"),
    ([-1, 2], r"out of range \[0, 50\): \[-1\]"),
    ([1.0, 2.0], "1-D array of integers"),
    ([[1, 2]], "1-D array of integers"),
])
def test_bad_ids_are_clear_value_errors(tiny_model, ids, fragment):
    with pytest.raises(ValueError, match=fragment):
        tiny_model.forward(np.array(ids))


def test_load_model_names_the_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        minigpt.load_model(tmp_path)


def test_model_py_does_not_import_llama():
    """The loader table lives outside both models: model.py knows only GPT-2."""
    import ast
    from pathlib import Path
    source = Path(minigpt.__file__).with_name("model.py").read_text(encoding="utf-8")
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(ast.parse(source))
                if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names]
    assert not [m for m in imported if m and "llama" in m], imported
    assert "llama" not in source.lower().replace("llama.cpp", "")


def test_check_ids_takes_numbers_not_a_config():
    from minigpt.model import check_ids
    np.testing.assert_array_equal(check_ids(np.array([1, 2]), 4, 3), [1, 2])
    with pytest.raises(ValueError, match="more than the context of n_ctx=1"):
        check_ids(np.array([1, 2]), 1, 3)


def test_the_loader_table_names_an_unknown_model_type(tmp_path):
    import json

    from minigpt.models import LOADERS, Loader, register
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="model_type 'mamba' is not supported "
                                           r"\(known: gpt2, llama"):
        minigpt.load_model(tmp_path)
    try:
        register("mamba", Loader(lambda folder: "a mamba", lambda folder: "its tokens"))
        assert minigpt.load_model(tmp_path) == "a mamba"
        assert minigpt.load_tokenizer(tmp_path) == "its tokens"
    finally:
        LOADERS.pop("mamba", None)


def test_both_models_offer_the_generate_interface():
    """GPT-2 and LLaMA have every member of generate's LanguageModel protocol."""
    from minigpt.generation import LanguageModel, ModelConfig
    from minigpt.kvcache import CachedGPT
    from minigpt.llama import LlamaConfig, LlamaModel
    members = [m for m in vars(LanguageModel) if not m.startswith("_")]
    assert sorted(members) == ["empty_cache", "forward", "forward_cached"]
    for cls in (CachedGPT, LlamaModel):
        assert all(callable(getattr(cls, m)) for m in members), cls
    for config in (GPTConfig(), LlamaConfig()):
        for field in ModelConfig.__annotations__:
            assert hasattr(config, field), (type(config).__name__, field)
