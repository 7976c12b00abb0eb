"""Choosing the next token from logits: greedy, temperature, top-k, nucleus (top-p).

Temperature follows Ackley, Hinton and Sejnowski (1985) as used in GPT-2's
sampling script; top-k follows Fan, Lewis and Dauphin (2018); nucleus sampling
follows Holtzman et al. (2019). The knobs compose in that order: temperature
reshapes the logits, top-k and then top-p cut the tail, and one uniform number
from a seeded `np.random.Generator` picks a token from what is left, so a seed
gives the same choice every time.

The sampler works on one vector of V logits at a time, in float64: it is a tiny
cost next to the forward pass, and a cumulative sum over 50,257 probabilities
keeps its last digits in float64 where float32 would round them away.

Ties are broken the same way everywhere: the lower token id wins (greedy picks
the first maximum; top-k keeps exactly k tokens, the lower ids among equals).

Left out on purpose: repetition penalties, min-p, beam search, and batches.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_knobs", "greedy", "next_token_probs", "sample", "temperature_logits",
           "top_k_logits", "top_p_logits"]


def _check_logits(logits: np.ndarray) -> np.ndarray:
    """A 1-D float64 copy of the logits, refused if empty or NaN."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array (one score per "
                         f"token), got shape {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise ValueError("logits contain NaN or +inf")
    if np.isneginf(logits).all():
        raise ValueError("logits are all -inf: no token can be chosen")
    return logits


def check_knobs(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse settings that mean nothing, naming the knob."""
    if not temperature >= 0:  # also catches NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(
            top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


# --8<-- [start:greedy]
def greedy(logits: np.ndarray) -> int:
    """The most likely token; among equal scores, the lowest id. (V,) -> int"""
    return int(np.argmax(_check_logits(logits)))  # argmax returns the first max
# --8<-- [end:greedy]


# --8<-- [start:temperature]
def temperature_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the logits by the temperature. (V,) -> (V,)"""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), "
                         f"got {temperature}")
    return logits / temperature
# --8<-- [end:temperature]


# --8<-- [start:top-k]
def top_k_logits(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits, set the rest to -inf. (V,) -> (V,)"""
    if not k >= 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if k >= logits.size:
        return logits
    # a stable sort of -logits puts equal scores in id order: ties keep low ids
    keep = np.argsort(-logits, kind="stable")[:k]
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out
# --8<-- [end:top-k]


# --8<-- [start:top-p]
def top_p_logits(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of top tokens whose probability reaches p. (V,) -> (V,)"""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    order = np.argsort(-logits, kind="stable")  # most likely first, ties by id
    probs = np.exp(logits[order] - logits[order[0]])
    probs /= probs.sum()
    before = np.cumsum(probs) - probs  # probability of the tokens ahead of each
    keep = order[before < p]  # the first token always stays (before = 0)
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out
# --8<-- [end:top-p]


# --8<-- [start:next-token-probs]
def next_token_probs(logits: np.ndarray, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None
                     ) -> np.ndarray:
    """The distribution the sampler draws from, after every knob. (V,) -> (V,)"""
    logits = _check_logits(logits)
    if temperature == 0:  # the limit T -> 0: all the mass on the greedy token
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    logits = temperature_logits(logits, temperature)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None:
        logits = top_p_logits(logits, top_p)
    e = np.exp(logits - logits.max())  # -inf becomes exactly 0
    return e / e.sum()
# --8<-- [end:next-token-probs]


# --8<-- [start:sample]
def sample(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, rng: np.random.Generator | None = None
           ) -> int:
    """Draw one token id from the logits, reshaped by the knobs. (V,) -> int"""
    check_knobs(temperature, top_k, top_p)
    if temperature == 0 or top_k == 1:
        return greedy(logits)  # no randomness: the rng is not even touched
    probs = next_token_probs(logits, temperature, top_k, top_p)
    rng = np.random.default_rng() if rng is None else rng
    # inverse CDF: the first token whose cumulative probability exceeds u
    cdf = np.cumsum(probs)
    u = rng.random() * cdf[-1]
    token = int(np.searchsorted(cdf, u, side="right"))
    return min(token, int(np.flatnonzero(probs)[-1]))  # u rounded up to cdf[-1]
# --8<-- [end:sample]
