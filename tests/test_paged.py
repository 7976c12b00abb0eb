"""The paged KV cache: the same logits as the contiguous cache, blocks reused."""

from __future__ import annotations

import numpy as np
import pytest

import minigpt
from minigpt.batch import batch_forward
from minigpt.models import load_model
from minigpt.paged import BlockPool, PagedCache, PoolExhausted, pool_for


@pytest.fixture(scope="module", params=[minigpt.DEMO_MODEL, minigpt.DEMO_LLAMA],
                ids=["gpt2", "llama"])
def model(request):
    return load_model(request.param)


def test_paged_logits_equal_the_contiguous_cache(model):
    pool = pool_for(model, 32, block_size=4)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 1024, n) for n in (5, 1, 11)]
    paged = [PagedCache(pool) for _ in prompts]
    flat = [model.empty_cache(40) for _ in prompts]
    chunks = prompts
    for _ in range(6):  # a prefill, then decode steps that cross block edges
        a, b = batch_forward(model, chunks, paged), batch_forward(model, chunks, flat)
        np.testing.assert_array_equal(a, b)
        chunks = [np.array([t]) for t in a.argmax(-1)]
    # a GPT-2's own cached forward on a paged cache: the interface is KVCache's
    one = PagedCache(pool)
    got = model.forward_cached(prompts[2], one)
    np.testing.assert_allclose(got, model.forward(prompts[2]), rtol=0, atol=1e-4)


def test_blocks_follow_the_tokens_and_come_back(model):
    pool = pool_for(model, 8, block_size=4)
    a, b = PagedCache(pool), PagedCache(pool)
    batch_forward(model, [np.arange(5), np.arange(2)], [a, b])
    assert a.table == [0, 1] and b.table == [2]  # 5 tokens: 2 blocks, 2 tokens: 1
    assert len(pool.free) == 5  # memory in use follows the tokens in flight
    keys = pool.k[0, a.table].reshape(-1, *pool.k.shape[3:])[:5]
    want = model.empty_cache(8)
    model.forward_cached(np.arange(5), want)
    np.testing.assert_allclose(keys.transpose(1, 0, 2), want.k[0, :, :5], atol=1e-6)
    a.release()
    assert a.table == [] and a.length == 0 and len(pool.free) == 7
    c = PagedCache(pool)
    batch_forward(model, [np.arange(3)], [c])
    assert c.table == [0]  # a freed block is handed out again


def test_an_exhausted_pool_refuses_clearly(model):
    pool = pool_for(model, 2, block_size=4)
    cache = PagedCache(pool)
    with pytest.raises(PoolExhausted, match="2 free blocks of 2; 3 more"):
        batch_forward(model, [np.arange(9)], [cache])
    assert cache.length == 0


def test_block_pool_bookkeeping():
    pool = BlockPool.empty(1, 4, 16, 2, 8)
    assert pool.blocks_for(0) == 0 and pool.blocks_for(16) == 1
    assert pool.blocks_for(17) == 2
    taken = pool.take(3)
    assert taken == [0, 1, 2]
    pool.give_back(taken)
    assert sorted(pool.free) == [0, 1, 2, 3] and pool.take(1) == [0]
