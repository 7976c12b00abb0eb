"""Tests for minigpt.block against Hugging Face transformers' GPT2Block, run live.

Tolerance: 2e-5 relative and absolute, in float32. A block chains two layer
norms, four matmuls (reductions of length C and 4C), a softmax and GELU; each
step rounds in a different order than PyTorch, and the errors add along the
residual stream. With weights of std 1/sqrt(C) outputs are of size ~1-10 and the
differences we measured are 0.7e-6 to 4.3e-6, so 2e-5 leaves headroom without
hiding a real mistake (the wrong GELU or eps moves outputs by more; see below).
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.block import transformer_block
from minigpt.layers import gelu, gelu_tanh
from tests.reference import require

TOL = {"rtol": 2e-5, "atol": 2e-5}


def gpt2_block(torch, C: int, n_head: int, seed: int, eps: float = 1e-5):
    """A transformers GPT2Block with random weights, and its weights as our dicts."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=C, n_head=n_head, layer_norm_epsilon=eps,
                        attn_implementation="eager")
    block = GPT2Block(config, layer_idx=0).eval()
    for name, p in block.named_parameters():
        if name.startswith("ln_") and name.endswith(".weight"):
            torch.nn.init.normal_(p, mean=1.0, std=0.2)  # gains near 1
        else:
            torch.nn.init.normal_(p, std=C**-0.5)
    return block, to_params(block.state_dict())


def to_params(state_dict) -> dict:
    """GPT2Block's flat state_dict -> the nested dicts transformer_block takes."""
    sd = {k: v.numpy() for k, v in state_dict.items()}

    def lin(prefix: str) -> dict:
        return {"w": sd[f"{prefix}.weight"], "b": sd[f"{prefix}.bias"]}

    def ln(prefix: str) -> dict:
        return {"g": sd[f"{prefix}.weight"], "b": sd[f"{prefix}.bias"]}

    return {"ln_1": ln("ln_1"), "ln_2": ln("ln_2"),
            "attn": {"c_attn": lin("attn.c_attn"), "c_proj": lin("attn.c_proj")},
            "mlp": {"c_fc": lin("mlp.c_fc"), "c_proj": lin("mlp.c_proj")}}


def run_reference(torch, block, x):
    T = x.shape[0]
    # eager attention takes the causal mask from the caller: additive, 4-D
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        return block(x[None], attention_mask=causal)[0].numpy()


# (n_embd, n_head, T): one head, odd head sizes (5 and 3), T = 1, GPT-2-like
SHAPES = [(8, 1, 4), (15, 3, 6), (12, 4, 1), (9, 3, 5), (64, 4, 12), (128, 2, 9)]


@pytest.mark.reference
@pytest.mark.parametrize("C,n_head,T", SHAPES)
def test_block_matches_transformers_gpt2_block(C, n_head, T):
    torch = require("torch")
    require("transformers")
    block, params = gpt2_block(torch, C, n_head, seed=C * 31 + n_head * 7 + T)
    x = torch.randn(T, C)
    want = run_reference(torch, block, x)
    got = transformer_block(x.numpy(), **params, n_head=n_head)
    assert got.shape == (T, C) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.reference
def test_block_passes_layer_norm_eps_through():
    torch = require("torch")
    require("transformers")
    block, params = gpt2_block(torch, 16, 2, seed=3, eps=1e-1)
    x = 0.1 * torch.randn(5, 16)  # small activations, so eps matters
    want = run_reference(torch, block, x)
    got = transformer_block(x.numpy(), **params, n_head=2, eps=1e-1)
    np.testing.assert_allclose(got, want, **TOL)
    assert np.abs(transformer_block(x.numpy(), **params, n_head=2) - want).max() > 1e-3


def test_block_with_zero_sublayers_is_the_identity():
    # the residual stream: if both sub-layers output 0, x passes through unchanged
    C = 6
    zeros = {"w": np.zeros((C, 3 * C), np.float32), "b": np.zeros(3 * C, np.float32)}
    proj = {"w": np.zeros((C, C), np.float32), "b": np.zeros(C, np.float32)}
    fc = {"w": np.ones((C, 4 * C), np.float32), "b": np.ones(4 * C, np.float32)}
    out = {"w": np.zeros((4 * C, C), np.float32), "b": np.zeros(C, np.float32)}
    ln = {"g": np.ones(C, np.float32), "b": np.zeros(C, np.float32)}
    x = np.random.default_rng(0).standard_normal((4, C)).astype(np.float32)
    y = transformer_block(x, ln_1=ln, attn={"c_attn": zeros, "c_proj": proj},
                          ln_2=ln, mlp={"c_fc": fc, "c_proj": out}, n_head=2)
    np.testing.assert_array_equal(y, x)


@pytest.mark.reference
def test_reference_tolerance_would_catch_the_wrong_gelu(monkeypatch):
    # guard on the tolerance itself: the exact GELU is a real, detectable mistake
    torch = require("torch")
    require("transformers")
    block, params = gpt2_block(torch, 32, 4, seed=11)
    x = torch.randn(7, 32)
    want = run_reference(torch, block, x)
    h = x.numpy() @ params["mlp"]["c_fc"]["w"]
    assert np.abs(gelu(h) - gelu_tanh(h)).max() > 1e-5
    # ffn looks gelu_tanh up in its module at call time, so this swaps it
    monkeypatch.setattr("minigpt.layers.gelu_tanh", gelu)
    wrong = transformer_block(x.numpy(), **params, n_head=4)
    assert not np.allclose(wrong, want, **TOL)
