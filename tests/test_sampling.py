"""Sampling: each knob against an independent reference, and the draws statistically.

The filtered distributions are compared with PyTorch softmax and transformers'
own logits processors (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper) on random logits without ties, to 1e-6 (float32 both sides),
and top-p's choice among tied tokens is compared with TopPLogitsWarper's.
Draws are checked with a chi-square goodness-of-fit test at a fixed seed: with
N = 10,000 draws the statistic must stay under the 99.9% quantile of the
chi-square distribution, taken from standard tables for the degrees of freedom
used here. A wrong distribution (say, temperature ignored) fails by far.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.sampling import (
    check_knobs,
    greedy,
    min_p_logits,
    next_token_probs,
    penalize_repeats,
    sample,
    top_k_logits,
    top_p_logits,
)
from tests.reference import require

# chi-square 99.9% quantiles, from tables, by degrees of freedom
CHI2_999 = {3: 16.266, 4: 18.467, 5: 20.515, 7: 24.322, 9: 27.877}


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic over the tokens with probability > 0, and its dof."""
    assert counts[probs == 0].sum() == 0, "drew a token of probability 0"
    n, keep = counts.sum(), probs > 0
    expected = n * probs[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum()), keep.sum() - 1


def draw_counts(logits, n=10_000, seed=0, **knobs) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = [sample(logits, rng=rng, **knobs) for _ in range(n)]
    return np.bincount(draws, minlength=len(logits))


LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5, -0.3, 0.8, 0.1, -2.0])


def torch_probs(logits, temperature=1.0, top_k=None, top_p=None,
                min_p=None) -> np.ndarray:
    """The same distribution built by transformers' logits processors."""
    torch = require("torch")
    tf = require("transformers")
    scores = torch.tensor(logits, dtype=torch.float32)[None]
    ids = torch.zeros((1, 1), dtype=torch.long)
    warpers = [tf.TemperatureLogitsWarper(temperature)]
    if top_k is not None:
        warpers.append(tf.TopKLogitsWarper(top_k))
    if top_p is not None:
        warpers.append(tf.TopPLogitsWarper(top_p))
    if min_p is not None:
        warpers.append(tf.MinPLogitsWarper(min_p))
    for warp in warpers:
        scores = warp(ids, scores)
    return torch.softmax(scores, dim=-1)[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("knobs", [
    dict(temperature=1.0), dict(temperature=0.5), dict(temperature=2.0),
    dict(top_k=3), dict(top_k=7, temperature=0.7), dict(top_p=0.5),
    dict(top_p=0.9, temperature=1.3), dict(top_k=5, top_p=0.6),
    dict(min_p=0.1), dict(min_p=0.3, temperature=0.6), dict(min_p=0.05, top_k=20),
    dict(min_p=0.2, top_p=0.8, temperature=1.4), dict(min_p=1.0), dict(min_p=0.0),
], ids=str)
def test_distribution_equals_transformers(knobs):
    logits = np.random.default_rng(3).standard_normal(50) * 2
    ours = next_token_probs(logits, **{"temperature": 1.0, **knobs})
    ref = torch_probs(logits, **knobs)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("knobs", [
    dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.7),
    dict(temperature=1.0, top_k=4), dict(temperature=1.2, top_p=0.8),
    dict(temperature=0.9, top_k=6, top_p=0.95),
], ids=str)
def test_draws_follow_the_distribution(knobs):
    counts = draw_counts(LOGITS, **knobs)
    # the intended distribution, computed here by hand from its definition
    z = LOGITS / knobs["temperature"]
    order = np.argsort(-z)
    keep = np.zeros(len(z), bool)
    keep[order[: knobs.get("top_k", len(z))]] = True
    p = np.where(keep, np.exp(z - z.max()), 0)
    p /= p.sum()
    if "top_p" in knobs:  # smallest top set whose mass reaches top_p
        ranked = np.sort(p)[::-1]
        n_keep = int(np.searchsorted(np.cumsum(ranked), knobs["top_p"]) + 1)
        p = np.where(np.isin(np.arange(len(p)), np.argsort(-p)[:n_keep]), p, 0)
        p /= p.sum()
    stat, dof = chi_square(counts, p)
    assert stat < CHI2_999[dof], (stat, dof, counts)


def test_a_wrong_distribution_is_caught():
    """The chi-square check has teeth: T=1 draws do not pass for T=0.6."""
    counts = draw_counts(LOGITS, temperature=1.0)
    p = np.exp(LOGITS / 0.6 - (LOGITS / 0.6).max())
    stat, dof = chi_square(counts, p / p.sum())
    assert stat > 3 * CHI2_999[dof]


def test_same_seed_same_tokens_other_seed_other_tokens():
    def run(seed):
        rng = np.random.default_rng(seed)
        return [sample(LOGITS, temperature=1.0, rng=rng) for _ in range(50)]
    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize("knobs", [dict(temperature=0.0), dict(top_k=1),
                                   dict(top_p=1e-9), dict(temperature=0.0, top_p=0.5),
                                   dict(top_k=1, temperature=5.0)], ids=str)
def test_greedy_limits(knobs):
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).standard_normal(100)
    picks = {sample(logits, rng=rng, **{"temperature": 1.0, **knobs})
             for _ in range(200)}
    assert picks == {int(np.argmax(logits))}


def test_ties_are_deterministic_lowest_id_wins():
    logits = np.array([0.0, 3.0, 1.0, 3.0, 3.0])
    assert greedy(logits) == 1
    assert sample(logits, temperature=0.0) == 1
    assert sample(logits, top_k=1, rng=np.random.default_rng(5)) == 1
    kept = np.isfinite(top_k_logits(logits, 2))
    assert kept.tolist() == [False, True, False, True, False]  # ids 1 and 3
    # top_p ranks tied tokens as transformers does: the higher ids stay
    probs = next_token_probs(logits, top_p=0.34)
    assert (probs > 0).tolist() == [False, False, False, True, True]
    np.testing.assert_allclose(probs[[3, 4]], 0.5)


@pytest.mark.reference
@pytest.mark.parametrize("n, p", [(10, 0.9), (10, 0.8), (10, 0.5), (10, 0.05),
                                  (4, 0.75), (3, 0.5), (7, 1.0)])
def test_top_p_keeps_the_tokens_transformers_keeps_on_ties(n, p):
    torch = require("torch")
    tf = require("transformers")
    logits = np.zeros(n + 3, np.float32)
    logits[n:] = [-5, -6, 1e-3 - 9]  # n tied favourites, then a tail
    ref = tf.TopPLogitsWarper(p)(None, torch.tensor(logits)[None].clone())[0]
    want = np.flatnonzero(np.isfinite(ref.numpy())).tolist()
    assert np.flatnonzero(np.isfinite(top_p_logits(logits, p))).tolist() == want


def test_a_temperature_that_overflows_is_refused():
    """1e-310 is 0 in float32: the scaled logits would be +-inf and then NaN."""
    for logits in (np.array([1.0, 2.0, -np.inf]), np.array([-1.0, -2.0])):
        with pytest.raises(ValueError, match="out of float32's range"):
            sample(logits, temperature=1e-310, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
        sample(LOGITS, temperature=float("inf"))


def test_sampling_never_sorts_the_whole_vocabulary(monkeypatch):
    """Top-k is a partial sort and top-p sorts only its candidates.

    The logits are spread like a language model's (a few hundred tokens hold 95%
    of the mass), not flat: on flat logits top-p must look at most of them.
    """
    logits = np.random.default_rng(0).standard_normal(50257).astype(np.float32) * 3
    sorted_sizes = []
    real_sort, real_lexsort = np.argsort, np.lexsort
    def argsort(a, *args, **kwargs):
        sorted_sizes.append(np.size(a))
        return real_sort(a, *args, **kwargs)
    def lexsort(keys, *args, **kwargs):
        sorted_sizes.append(np.size(keys[0]))
        return real_lexsort(keys, *args, **kwargs)
    monkeypatch.setattr(np, "argsort", argsort)
    monkeypatch.setattr(np, "lexsort", lexsort)
    for knobs in (dict(top_k=40), dict(top_p=0.95), dict(top_k=40, top_p=0.95)):
        sample(logits, temperature=0.8, rng=np.random.default_rng(1), **knobs)
    assert max(sorted_sizes, default=0) <= 4096, sorted_sizes


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    for p, n_kept in [(0.5, 1), (0.50001, 2), (0.79, 2), (0.81, 3), (1.0, 4)]:
        assert np.isfinite(top_p_logits(logits, p)).sum() == n_kept, p


def test_neg_inf_logits_are_never_drawn():
    logits = np.array([-np.inf, 0.0, -np.inf, 1.0])
    counts = draw_counts(logits, n=2000, temperature=1.0)
    assert counts[[0, 2]].sum() == 0 and counts[[1, 3]].min() > 0


def test_probs_sum_to_one_and_float32_logits_work():
    logits = np.random.default_rng(0).standard_normal(50257).astype(np.float32)
    probs = next_token_probs(logits, temperature=0.8, top_k=40, top_p=0.9)
    assert probs.dtype == np.float32 and abs(probs.sum() - 1) < 1e-6
    assert 1 <= (probs > 0).sum() <= 40


@pytest.mark.parametrize("knobs, message", [
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(temperature=float("nan")), "temperature must be >= 0"),
    (dict(temperature=float("inf")), "temperature must be >= 0 and finite"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k must be an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"),
    (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
])
def test_bad_knobs_are_refused(knobs, message):
    full = {"temperature": 1.0, "top_k": None, "top_p": None, **knobs}
    with pytest.raises(ValueError, match=message):
        check_knobs(**full)
    with pytest.raises(ValueError, match=message):
        sample(LOGITS, **full)


@pytest.mark.parametrize("logits, message", [
    (np.zeros((2, 3)), "1-D"), (np.array([]), "1-D"),
    (np.array([0.0, np.nan]), "NaN"), (np.array([-np.inf, -np.inf]), "all -inf"),
])
def test_bad_logits_are_refused(logits, message):
    with pytest.raises(ValueError, match=message):
        sample(logits, temperature=1.0)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_top_p_with_thousands_of_live_tokens_equals_a_plain_sort(scale):
    """A GPT-2-sized vocabulary with a flat head: top-p keeps thousands of
    tokens, so the candidate pre-filter must not lose any of them. Many p, so
    that some fall just past each threshold the pre-filter tries."""
    rng = np.random.default_rng(7)
    logits = (scale * rng.standard_normal(50257)).astype(np.float32)
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    ids = np.arange(logits.size)
    order = np.lexsort((-ids, -probs))  # equal tokens: the higher id first, as
    mass = np.cumsum(probs[order])      # transformers ranks them
    sizes = []
    for p in np.linspace(0.2, 0.99, 80):
        kept = np.flatnonzero(np.isfinite(top_p_logits(logits, p)))
        # the plain definition: sort every probability, keep the top until mass p
        n = int(np.searchsorted(mass, p)) + 1
        if min(abs(mass[n - 2:n] - p)) < 2e-6:
            continue  # too close to call in float32
        np.testing.assert_array_equal(kept, np.sort(order[:n]), err_msg=f"p={p}")
        sizes.append(n)
    assert max(sizes) > 2000 and len(sizes) > 40


def penalized_reference(logits, seen, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor on the same logits."""
    torch = require("torch")
    tf = require("transformers")
    scores = torch.tensor(logits, dtype=torch.float32)[None]
    ids = torch.tensor(seen, dtype=torch.long)[None]
    return tf.RepetitionPenaltyLogitsProcessor(penalty)(ids, scores)[0].numpy()


@pytest.mark.reference
@pytest.mark.parametrize("penalty", [1.0, 1.1, 1.5, 0.8])
def test_repetition_penalty_equals_transformers(penalty):
    logits = (3 * np.random.default_rng(4).standard_normal(60)).astype(np.float32)
    seen = [3, 7, 7, 12, 59, 0, 3, 41]  # repeats count once
    ours = penalize_repeats(logits, seen, penalty)
    np.testing.assert_array_equal(ours, penalized_reference(logits, seen, penalty))
    assert logits[3] == np.float32(3 * np.random.default_rng(4).standard_normal(
        60)[3])  # the caller's logits are not changed


def test_repetition_penalty_by_hand():
    logits = np.array([2.0, -2.0, 1.0, 0.0], np.float32)
    got = penalize_repeats(logits, [0, 1, 3], 2.0)
    np.testing.assert_array_equal(got, [1.0, -4.0, 1.0, 0.0])


def test_a_vanishing_repetition_penalty_is_refused_not_sampled():
    logits = np.array([2.0, -2.0, 1.0], np.float32)
    with pytest.raises(ValueError, match="repetition penalty 1e-300 scales"):
        penalize_repeats(logits, [0, 1], 1e-300)
    huge = penalize_repeats(logits, [0, 1], 1e300)  # -inf and 0: still samplable
    np.testing.assert_array_equal(huge, [0.0, -np.inf, 1.0])


def test_min_p_keeps_tokens_by_their_ratio_to_the_best():
    logits = np.log(np.array([0.5, 0.3, 0.1, 0.06, 0.04], np.float32))
    kept = np.isfinite(min_p_logits(logits, 0.15))  # threshold 0.075
    np.testing.assert_array_equal(kept, [True, True, True, False, False])
    kept = np.isfinite(min_p_logits(logits, 0.25))  # threshold 0.125
    np.testing.assert_array_equal(kept, [True, True, False, False, False])
    assert np.isfinite(min_p_logits(logits, 1.0)).sum() == 1


@pytest.mark.reference
def test_generate_with_the_new_knobs_equals_transformers_processors():
    """generate() with repetition_penalty and min_p samples from the
    distribution transformers builds: penalty first, then the warpers."""
    from tests.test_generate import random_model

    torch = require("torch")
    tf = require("transformers")
    model = random_model(seed=2, vocab_size=40, n_ctx=32, n_embd=16)
    prompt = [1, 5, 5, 9]
    from minigpt.generation import generate

    for knobs in (dict(repetition_penalty=1.3), dict(min_p=0.2, temperature=0.9),
                  dict(repetition_penalty=1.2, min_p=0.1, top_k=10,
                       temperature=0.8)):
        tokens = list(generate(model, prompt, 6, seed=0, stop=(), **knobs))
        seq = list(prompt)
        for token in tokens:  # each chosen token was alive in the reference
            logits = model.forward(np.array(seq))[-1]
            scores = torch.tensor(logits)[None]
            ids = torch.tensor(seq)[None]
            if "repetition_penalty" in knobs:
                scores = tf.RepetitionPenaltyLogitsProcessor(
                    knobs["repetition_penalty"])(ids, scores)
            ours = next_token_probs(scores[0].numpy(), knobs.get("temperature", 1.0)
                                    if "temperature" in knobs else 1.0,
                                    knobs.get("top_k"), None, knobs.get("min_p"))
            ref = torch_probs(scores[0].numpy(), knobs.get("temperature", 1.0),
                              knobs.get("top_k"), None, knobs.get("min_p"))
            np.testing.assert_allclose(ours, ref, atol=1e-6)
            assert ref[token] > 0
            seq.append(token)


def test_greedy_with_a_penalty_avoids_the_repeated_token():
    from minigpt.generation import generate
    from tests.test_generate import random_model

    model = random_model(seed=2, vocab_size=40, n_ctx=32, n_embd=16)
    plain = list(generate(model, [1, 5], 10, stop=()))
    hard = list(generate(model, [1, 5], 10, stop=(), repetition_penalty=1e6))
    assert len(set(plain)) < len(plain)  # this model repeats itself greedily
    assert len(set(hard + [1, 5])) == len(hard) + 2  # no token comes back
