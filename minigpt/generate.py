"""Autoregressive generation: predict a token, append it, repeat; and stream the text.

Follows the sampling loop of GPT-2's released code and Hugging Face's
`generate()`: greedy decoding here gives the same tokens as
`GPT2LMHeadModel.generate(do_sample=False)`, which the tests check. With
`use_cache=True` the loop runs the prompt once (prefill) and then one token per
step through `minigpt.kvcache`; with `use_cache=False` it runs chapter 17's
`forward` over the whole window at every step. Both give the same tokens.

The context window: the model reads at most n_ctx tokens. When the text would
become longer than that, the window drops its older half and keeps the newest
n_ctx // 2 tokens (at least one), the cache is rebuilt from them, and generation
goes on; llama.cpp's "context shift" works the same way. A prompt longer than
n_ctx is cut the same way before the first step.

Left out on purpose: batches, beam search, stop strings (stop is token ids), and
keeping a fixed prefix such as a system prompt when the window slides.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator

import numpy as np

from minigpt.kvcache import KVCache, forward_cached
from minigpt.model import GPT, check_ids
from minigpt.sampling import check_knobs, sample

__all__ = ["generate", "stream_text", "window_start"]


# --8<-- [start:window-start]
def window_start(n_tokens: int, start: int, n_ctx: int) -> int:
    """Where the model's window begins, sliding by half when it overflows."""
    if n_tokens - start <= n_ctx:
        return start  # everything since start still fits
    return n_tokens - max(1, n_ctx // 2)  # keep the newest half
# --8<-- [end:window-start]


# --8<-- [start:generate]
def generate(model: GPT, prompt_ids: Iterable[int], max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, stop: int | Iterable[int] | None = None
             ) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids, one at a time.

    Example:
        >>> ids = list(generate(model, [464, 3290], max_new_tokens=5))
    """
    ids = np.asarray(list(prompt_ids))
    check_ids(ids[-model.config.n_ctx:], model.config)  # ints, in range, not empty
    tokens = ids.tolist()
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_knobs(temperature, top_k, top_p)
    stops = {stop} if isinstance(stop, int) else set(stop or ())
    next_logits = _cached_steps if use_cache else _uncached_steps
    return _loop(next_logits(model, tokens), tokens, max_new_tokens, stops,
                 dict(temperature=temperature, top_k=top_k, top_p=top_p,
                      rng=np.random.default_rng(seed)))


def _loop(steps: Iterator[np.ndarray], tokens: list[int], max_new_tokens: int,
          stops: set[int], knobs: dict) -> Iterator[int]:
    """Sample from each step's logits; the new token goes into the next step."""
    for _ in range(max_new_tokens):
        token = sample(next(steps), **knobs)  # the logits of the last position
        if token in stops:
            return  # a stop token ends the text and is not yielded
        tokens.append(token)  # the steps read this list: they see the new token
        yield token
# --8<-- [end:generate]


# --8<-- [start:uncached-steps]
def _uncached_steps(model: GPT, tokens: list[int]) -> Iterator[np.ndarray]:
    """Next-token logits, recomputing the whole window every step."""
    start = 0
    while True:
        start = window_start(len(tokens), start, model.config.n_ctx)
        window = np.array(tokens[start:], dtype=np.int64)
        yield model.forward(window)[-1]  # [T, V] -> [V]; T grows every step
# --8<-- [end:uncached-steps]


# --8<-- [start:cached-steps]
def _cached_steps(model: GPT, tokens: list[int]) -> Iterator[np.ndarray]:
    """Next-token logits: prefill the window once, then one new token a step."""
    cache, start = _new_cache(model), 0
    while True:
        new_start = window_start(len(tokens), start, model.config.n_ctx)
        if new_start != start or cache.length == 0:  # first step, or a slide
            start = new_start
            cache.reset()
            logits = _forward_cached(model, np.array(tokens[start:]), cache)
        else:  # only the token appended since the last step is new
            logits = _forward_cached(model, np.array(tokens[-1:]), cache)
        yield logits[-1]  # [V]
# --8<-- [end:cached-steps]


def _new_cache(model: GPT) -> KVCache:
    """The model's own cache if it has one (LLaMA, chapter 22), else GPT-2's."""
    return model.empty_cache() if hasattr(model, "empty_cache") else \
        KVCache.empty(model.config)


def _forward_cached(model: GPT, ids: np.ndarray, cache: KVCache) -> np.ndarray:
    """The model's own cached forward if it has one, else GPT-2's."""
    if hasattr(model, "forward_cached"):
        return model.forward_cached(ids, cache)
    return forward_cached(model, ids, cache)


# --8<-- [start:stream-text]
def stream_text(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text pieces as the ids arrive, never splitting a UTF-8 character."""
    # the incremental decoder keeps the first bytes of an unfinished character
    # until the rest arrives, then returns the whole character
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        text = decoder.decode(tokenizer.decode_bytes([i]))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)  # bytes that never completed: U+FFFD
    if tail:
        yield tail
# --8<-- [end:stream-text]

