"""Tests for minigpt.attention, against PyTorch's SDPA and transformers' GPT2Attention.

Tolerance: 1e-5 relative and absolute, in float32. Attention is two matmuls of
length d and S around a softmax; each output sums S products of weights <= 1
with values of size ~1, rounded in a different order than PyTorch's kernels, so
differences are a few ulp times sqrt(S + d), far below 1e-5 for these sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.attention import attention, causal_mask, merge_heads, mha, split_heads
from tests.reference import require

TOL = {"rtol": 1e-5, "atol": 1e-5}


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# (heads, T, head size): one head, odd head sizes, a sequence of 1
HEAD_SHAPES = [(1, 1, 4), (1, 6, 3), (2, 5, 7), (4, 9, 16), (3, 1, 5), (12, 11, 64)]


@pytest.mark.reference
@pytest.mark.parametrize("H,T,d", HEAD_SHAPES)
def test_causal_attention_matches_sdpa(H, T, d):
    torch = require("torch")
    rng = np.random.default_rng(H * 1000 + T * 10 + d)
    q, k, v = (randn(rng, H, T, d) for _ in range(3))
    got = attention(q, k, v, causal_mask(T))
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True).numpy()
    assert got.shape == (H, T, d) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, **TOL)
    # one head at a time, 2-D in, 2-D out, gives the same
    np.testing.assert_allclose(attention(q[0], k[0], v[0], causal_mask(T)), got[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("T,S,d,dv", [(1, 1, 2, 2), (3, 8, 5, 4), (7, 2, 16, 9)])
def test_unmasked_and_boolean_masked_attention_match_sdpa(T, S, d, dv):
    torch = require("torch")
    rng = np.random.default_rng(T + S + d)
    q, k, v = randn(rng, T, d), randn(rng, S, d), randn(rng, S, dv)
    mask = rng.random((T, S)) < 0.6
    mask[:, 0] = True  # every row keeps at least one key
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    np.testing.assert_allclose(attention(q, k, v), sdpa(tq, tk, tv).numpy(), **TOL)
    want = sdpa(tq, tk, tv, attn_mask=torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(attention(q, k, v, mask), want, **TOL)


@pytest.mark.reference
def test_causal_mask_matches_torch_tril_and_keeps_every_row():
    torch = require("torch")
    for T in (1, 2, 7):
        m = causal_mask(T)
        assert m.dtype == np.bool_
        np.testing.assert_array_equal(m, torch.tril(torch.ones(T, T)).bool().numpy())
        assert m.any(axis=-1).all()  # the diagonal: every token sees itself
    with pytest.raises(ValueError, match="T must be at least 1"):
        causal_mask(0)


def test_causal_attention_ignores_the_future():
    # changing a later token's key and value must not change earlier outputs
    rng = np.random.default_rng(5)
    q, k, v = randn(rng, 6, 4), randn(rng, 6, 4), randn(rng, 6, 4)
    out = attention(q, k, v, causal_mask(6))
    k[4:], v[4:] = 100.0, -100.0
    out2 = attention(q, k, v, causal_mask(6))
    np.testing.assert_array_equal(out[:4], out2[:4])
    assert not np.allclose(out[4:], out2[4:])


def test_attention_with_huge_scores_stays_finite():
    q = np.full((3, 2), 300.0, np.float32)
    k = np.array([[300.0, 300.0], [-300.0, 300.0], [300.0, -300.0]], np.float32)
    v = np.eye(3, 2, dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):
        out = attention(q, k, v, causal_mask(3))
    np.testing.assert_allclose(out, np.tile([1.0, 0.0], (3, 1)), atol=1e-6)


def test_mask_problems_raise_precise_errors():
    q = k = v = np.ones((3, 2), np.float32)
    empty_row = causal_mask(3)
    empty_row[1] = False
    with pytest.raises(ValueError, match=r"mask row \(1,\) allows no key"):
        attention(q, k, v, empty_row)
    with pytest.raises(TypeError, match="mask must be boolean"):
        attention(q, k, v, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 2\) does not fit"):
        attention(q, k, v, causal_mask(2))
    with pytest.raises(ValueError, match="must share the last axis d"):
        attention(q, np.ones((3, 5), np.float32), v)
    with pytest.raises(ValueError, match="same number of positions S"):
        attention(q, k, np.ones((4, 2), np.float32))


def test_split_and_merge_heads_are_inverse_views():
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    h = split_heads(x, 3)
    assert h.shape == (3, 4, 2)
    np.testing.assert_array_equal(h[1], x[:, 2:4])  # head 1 owns channels 2..3
    np.testing.assert_array_equal(merge_heads(h), x)


def gpt2_attention(torch, C: int, n_head: int, seed: int):
    """transformers' GPT2Attention (eager), random weights, and them in our layout."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=C, n_head=n_head, attn_implementation="eager")
    module = GPT2Attention(config, layer_idx=0).eval()
    for p in module.parameters():
        # std 1/sqrt(C) keeps q, k, v of size ~1, as in a trained model; far
        # larger weights make softmax a near-argmax whose float32 rounding
        # (of scores ~100) no longer shows what we test
        torch.nn.init.normal_(p, std=C**-0.5)
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    ours = {"c_attn": {"w": sd["c_attn.weight"], "b": sd["c_attn.bias"]},
            "c_proj": {"w": sd["c_proj.weight"], "b": sd["c_proj.bias"]}}
    return module, ours


# (n_embd, n_head, T): one head, odd head sizes (5, 3), T = 1, GPT-2's head size 64
MHA_SHAPES = [(8, 1, 5), (15, 3, 6), (12, 4, 1), (9, 3, 7), (128, 2, 10)]


@pytest.mark.reference
@pytest.mark.parametrize("C,n_head,T", MHA_SHAPES)
def test_mha_matches_transformers_gpt2_attention(C, n_head, T):
    torch = require("torch")
    require("transformers")
    module, ours = gpt2_attention(torch, C, n_head, seed=C + n_head + T)
    x = torch.randn(T, C)
    # eager attention takes the causal mask from the caller, additive, 4-D
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        want, _ = module(x[None], attention_mask=causal)
    got = mha(x.numpy(), **ours, n_head=n_head)
    assert got.shape == (T, C) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[0].numpy(), **TOL)


def test_mha_rejects_bad_head_counts_and_shapes():
    w = {"w": np.zeros((6, 18), np.float32), "b": np.zeros(18, np.float32)}
    p = {"w": np.zeros((6, 6), np.float32), "b": np.zeros(6, np.float32)}
    x = np.zeros((3, 6), np.float32)
    with pytest.raises(ValueError, match="n_head=4 must divide n_embd=6"):
        mha(x, w, p, n_head=4)
    with pytest.raises(ValueError, match=r"x must be \(T, C\)"):
        mha(x[None], w, p, n_head=2)
    assert mha(x, w, p, n_head=2).shape == (3, 6)


def test_attention_equals_the_saved_pytorch_output():
    """Without PyTorch: data/references/causal_attention.npz holds torch's
    scaled_dot_product_attention, causal and under a boolean mask."""
    with np.load("data/references/causal_attention.npz", allow_pickle=False) as saved:
        q, k, v = saved["q"], saved["k"], saved["v"]
        T = q.shape[1]
        np.testing.assert_allclose(attention(q, k, v, causal_mask(T)),
                                   saved["causal"], **TOL)
        np.testing.assert_allclose(attention(q, k, v, saved["keep"]),
                                   saved["masked"], **TOL)
        # the mask matters: without it the answer is another one
        assert np.abs(attention(q, k, v) - saved["causal"]).max() > 0.01


def test_mha_equals_the_saved_transformers_output():
    """Without PyTorch: data/references/gpt2_attention.npz holds transformers'
    GPT2Attention with seeded weights, its input and its output."""
    with np.load("data/references/gpt2_attention.npz", allow_pickle=False) as saved:
        layers = {name: {"w": saved[f"{name}.weight"], "b": saved[f"{name}.bias"]}
                  for name in ("c_attn", "c_proj")}
        got = mha(saved["x"], **layers, n_head=int(saved["n_head"]))
        np.testing.assert_allclose(got, saved["out"], **TOL)
        # one head of the same width would be wrong: the head count is checked
        one = mha(saved["x"], **layers, n_head=1)
        assert np.abs(one - saved["out"]).max() > 1e-3
