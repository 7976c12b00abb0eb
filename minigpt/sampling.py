"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p.

Temperature follows Ackley, Hinton and Sejnowski (1985) as used in GPT-2's
sampling script; top-k follows Fan, Lewis and Dauphin (2018); nucleus sampling
follows Holtzman et al. (2019) and keeps exactly the tokens that transformers'
`TopPLogitsWarper` keeps, ties included; min-p (Nguyen et al., 2024) and the
repetition penalty (Keskar et al., 2019) follow transformers' `MinPLogitsWarper`
and `RepetitionPenaltyLogitsProcessor`. The knobs compose in transformers' order:
the penalty changes the raw logits, temperature reshapes them, top-k, top-p and
then min-p cut the tail, and one uniform number from a seeded
`np.random.Generator` picks a token from what is left, so a seed gives the same
choice every time.

The sampler works on one vector of V logits at a time, in float32 like the model
that made them, and never sorts all V of them: top-k and top-p first pick the few
tokens that can matter by comparing against a threshold (a linear pass, which we
measured several times faster than NumPy's partial sorts, `np.partition` and
`np.argpartition`, on 50,257 logits), then sort only those. Logits that scaling
turns into NaN or +inf (a temperature of 1e-310, say) are refused, never sampled
from.

Ties: greedy and top-k keep the lower token id among equal scores (greedy picks
the first maximum; top-k keeps exactly k tokens). Top-p follows transformers,
which ranks equal tokens by id the other way: at the boundary the higher ids stay.

Left out on purpose: frequency and presence penalties, typical and eta
sampling, beam search, and batches.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_knobs", "greedy", "min_p_logits", "next_token_probs",
           "penalize_repeats", "sample", "temperature_logits", "top_k_logits",
           "top_p_logits"]


# --8<-- [start:check-knobs]
def check_logits(logits: np.ndarray) -> np.ndarray:
    """The logits as a 1-D float32 array, refused if empty, NaN, +inf or all -inf."""
    logits = np.asarray(logits, dtype=np.float32)  # no copy if already float32
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array (one score per "
                         f"token), got shape {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise ValueError("logits contain NaN or +inf")
    if np.isneginf(logits).all():
        raise ValueError("logits are all -inf: no token can be chosen")
    return logits


def check_knobs(temperature: float, top_k: int | None, top_p: float | None,
                min_p: float | None = None, repetition_penalty: float = 1.0) -> None:
    """Refuse settings that mean nothing, naming the knob."""
    if not 0 <= temperature < math.inf:  # also catches NaN
        raise ValueError(f"temperature must be >= 0 and finite, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(
            top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if not 0 < repetition_penalty < math.inf:
        raise ValueError(f"repetition_penalty must be > 0 and finite, got "
                         f"{repetition_penalty}")
# --8<-- [end:check-knobs]


# --8<-- [start:greedy]
def greedy(logits: np.ndarray) -> int:
    """The most likely token; among equal scores, the lowest id. (V,) -> int"""
    return int(np.argmax(check_logits(logits)))  # argmax returns the first max
# --8<-- [end:greedy]


# --8<-- [start:temperature]
def temperature_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the logits by the temperature. (V,) -> (V,)"""
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), "
                         f"got {temperature}")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = np.divide(logits, temperature, dtype=np.float32)
    # a tiny temperature overflows float32 (-inf - -inf is NaN later): refuse it
    if np.isnan(scaled).any() or np.isposinf(scaled).any() or \
            np.isneginf(scaled).all():
        raise ValueError(f"temperature {temperature} scales the logits out of "
                         f"float32's range; use a larger one, or 0 for greedy")
    return scaled
# --8<-- [end:temperature]


# --8<-- [start:top-k]
def top_k_logits(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits, set the rest to -inf. (V,) -> (V,)"""
    if not k >= 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if k >= logits.size:
        return logits
    top = near_the_top(logits, k)  # a few more than k ids, in no order
    keep = top[np.lexsort((top, -logits[top]))[:k]]  # highest; ties: low ids
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def near_the_top(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of every logit within a band below the maximum that holds >= k of them.

    Each try is one comparison over V logits, far cheaper than sorting them.
    """
    best, lo, hi = logits.max(), 0.0, 1.0  # band widths: too narrow, to try
    while (n := np.count_nonzero(logits >= best - hi)) < k:
        lo, hi = hi, 2 * hi  # hi reaches inf (every logit) if < k are finite
    for _ in range(10):  # narrow the band while it holds far more than k
        if n <= 4 * k:
            break
        mid = (lo + hi) / 2
        inside = np.count_nonzero(logits >= best - mid)
        n, hi, lo = (inside, mid, lo) if inside >= k else (n, hi, mid)
    return np.flatnonzero(logits >= best - hi)
# --8<-- [end:top-k]


# --8<-- [start:top-p]
def top_p_logits(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the most likely tokens until their probability reaches p. (V,) -> (V,)"""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits  # every token stays
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = candidates(probs, p)  # the few tokens that can be kept, unsorted
    # transformers' rule: rank from least to most likely (equal: lower id first),
    # drop a token while the mass at or below it is <= 1 - p
    order = top[np.lexsort((top, probs[top]))]
    below = (1 - probs[top].sum()) + np.cumsum(probs[order])
    keep = order[below > 1 - p]
    keep = keep if keep.size else order[-1:]  # the most likely token always stays
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def candidates(probs: np.ndarray, p: float) -> np.ndarray:
    """Ids of the tokens with probability >= t, for the largest t = max / 4**n
    whose tokens hold mass p: every token top-p can keep is among them."""
    alive = np.flatnonzero(probs)  # after top-k, only k of them
    if alive.size <= 256:
        return alive
    t = probs.max()
    while True:
        t /= 4
        top = np.flatnonzero(probs >= t)
        if t == 0 or probs[top].sum() >= p:
            return top
# --8<-- [end:top-p]


# --8<-- [start:min-p]
def min_p_logits(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep the tokens at least min_p times as likely as the best. (V,) -> (V,)"""
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()  # as transformers: compare probabilities, not logits
    # min_p <= 1, so the most likely token always stays
    keep = probs >= min_p * probs.max()
    return np.where(keep, logits, -np.inf).astype(logits.dtype, copy=False)
# --8<-- [end:min-p]


# --8<-- [start:repetition-penalty]
def penalize_repeats(logits: np.ndarray, seen: list[int],
                     penalty: float) -> np.ndarray:
    """Make every token of seen less likely: shrink a positive logit, grow a
    negative one, both by the factor penalty. (V,) -> (V,)"""
    if penalty == 1 or not seen:
        return logits
    ids = np.unique(np.asarray(seen))  # a token counts once, however often seen
    out = np.array(logits, dtype=np.float32)  # a copy: the caller's stays as is
    old = out[ids]
    with np.errstate(all="ignore"):  # np.where works out both sides for every id
        out[ids] = np.where(old < 0, old * penalty, old / penalty)
    if np.isposinf(out[ids]).any():  # as a tiny temperature, a tiny penalty overflows
        raise ValueError(f"repetition penalty {penalty} scales the logits out of "
                         f"float32's range; use one nearer 1")
    return out
# --8<-- [end:repetition-penalty]


# --8<-- [start:next-token-probs]
def next_token_probs(logits: np.ndarray, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None,
                     min_p: float | None = None) -> np.ndarray:
    """The distribution the sampler draws from, after every knob. (V,) -> (V,)"""
    logits = check_logits(logits)
    if temperature == 0:  # the limit T -> 0: all the mass on the greedy token
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    logits = temperature_logits(logits, temperature)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None:
        logits = top_p_logits(logits, top_p)
    if min_p is not None:  # after top-p, as transformers orders them
        logits = min_p_logits(logits, min_p)
    e = np.exp(logits - logits.max())  # -inf becomes exactly 0
    return e / e.sum()
# --8<-- [end:next-token-probs]


# --8<-- [start:sample]
def sample(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, rng: np.random.Generator | None = None,
           min_p: float | None = None) -> int:
    """Draw one token id from the logits, reshaped by the knobs. (V,) -> int"""
    check_knobs(temperature, top_k, top_p, min_p)
    if temperature == 0 or top_k == 1:
        return greedy(logits)  # no randomness: the rng is not even touched
    probs = next_token_probs(logits, temperature, top_k, top_p, min_p)
    rng = np.random.default_rng() if rng is None else rng
    alive = np.flatnonzero(probs)  # only these can be drawn (top-k: k of them)
    # inverse CDF: the first token whose cumulative probability exceeds u
    cdf = np.cumsum(probs[alive])
    u = rng.random() * cdf[-1]
    i = int(np.searchsorted(cdf, u, side="right"))
    return int(alive[min(i, alive.size - 1)])  # u may round up to cdf[-1]
# --8<-- [end:sample]
