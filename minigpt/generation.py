"""Autoregressive generation: predict a token, append it, repeat; and stream the text.

Follows the sampling loop of GPT-2's released code and Hugging Face's
`generate()`: greedy decoding here gives the same tokens as
`GPT2LMHeadModel.generate(do_sample=False)`, which the tests check. The loop asks
a model for no more than the small interface `LanguageModel` below, which GPT-2
(`minigpt.kvcache.CachedGPT`) and LLaMA (`minigpt.llama.LlamaModel`) both offer.
With `use_cache=True` it runs the prompt once (prefill, in pieces of PREFILL
tokens) and then one token per step through the model's KV cache, computing the
output head for the last position only; with `use_cache=False` it runs chapter
17's `forward` over the whole window at every step. Both give the same tokens.

The context window: the model reads at most n_ctx tokens. A prompt longer than
that keeps its last n_ctx tokens. While generating, when the text would become
longer than the window, the window drops its older half and keeps the newest
n_ctx // 2 tokens (at least one), the cache is rebuilt from them, and generation
goes on; llama.cpp's "context shift" works the same way.

Generation ends after max_new_tokens, or at a stop id: by default the
checkpoint's end-of-text ids (`config.eos_token_ids`). `stop_text` ends streamed
text before a stop string.

The module is `minigpt.generation`, so that `minigpt.generate` can be the function
itself (`minigpt/__init__.py` exports it): `from minigpt.generation import
generate` and `minigpt.generate(model, ids, n)` both work, with one meaning each.

Left out on purpose: batches, beam search, and keeping a fixed prefix such as a
system prompt when the window slides.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from minigpt.model import check_ids
from minigpt.sampling import check_knobs, penalize_repeats, sample

__all__ = ["LanguageModel", "ModelConfig", "Tokenizer", "generate", "stop_ids",
           "stop_text", "stream_text", "window_start"]


# --8<-- [start:language-model]
class ModelConfig(Protocol):
    """What generate() reads from a model's config."""

    n_ctx: int                      # the longest sequence the model can read
    vocab_size: int                 # ids run from 0 to vocab_size - 1
    eos_token_ids: tuple[int, ...]  # ids that end a text (may be empty)


class LanguageModel(Protocol):
    """What generate() needs from a model: GPT-2 and LLaMA both provide it."""

    config: ModelConfig

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Logits for every position. ids: (T,) -> (T, vocab_size)"""
        ...

    def empty_cache(self, capacity: int | None = None) -> object:
        """A fresh KV cache for capacity positions (None: n_ctx); generate() only
        hands it back."""
        ...

    def forward_cached(self, ids: np.ndarray, cache: object,
                       last_only: bool = False) -> np.ndarray:
        """Logits of new tokens after the cached ones. (T,) -> (T, V), or (1, V)"""
        ...


class Tokenizer(Protocol):
    """What the command line needs from a tokenizer."""

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def decode_bytes(self, ids: list[int]) -> bytes: ...
# --8<-- [end:language-model]


# --8<-- [start:window-start]
def window_start(n_tokens: int, start: int, n_ctx: int) -> int:
    """Where the model's window begins, sliding by half when it overflows."""
    if n_tokens - start <= n_ctx:
        return start  # everything since start still fits
    return n_tokens - max(1, n_ctx // 2)  # keep the newest half
# --8<-- [end:window-start]


# --8<-- [start:generate]
def generate(model: LanguageModel, prompt_ids: Iterable[int], max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float = 1.0, seed: int | None = None,
             use_cache: bool = True, stop: int | Iterable[int] | None = None
             ) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids, one at a time.

    repetition_penalty > 1 makes every token seen so far less likely.
    stop: the ids that end the text (default: the model's end-of-text ids).
    Example:
        >>> ids = list(generate(model, [464, 3290], max_new_tokens=5))
    """
    cfg = model.config
    ids = np.asarray(list(prompt_ids))
    window = check_ids(ids[-cfg.n_ctx:], cfg.n_ctx, cfg.vocab_size)  # the last n_ctx
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    knobs = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    check_knobs(**knobs, repetition_penalty=repetition_penalty)
    stops = stop_ids(stop, cfg.eos_token_ids)
    tokens = window.tolist()
    # the longest window this call can reach: a cache that long and no longer
    longest = min(cfg.n_ctx, len(tokens) + max_new_tokens)
    steps = _cached_steps(model, tokens, longest) if use_cache else \
        _uncached_steps(model, tokens)
    return _loop(steps, tokens, max_new_tokens, stops, repetition_penalty,
                 dict(knobs, rng=np.random.default_rng(seed)))


def _loop(steps: Iterator[np.ndarray], tokens: list[int], max_new_tokens: int,
          stops: frozenset[int], penalty: float, knobs: dict) -> Iterator[int]:
    """Sample from each step's logits; the new token goes into the next step."""
    for _ in range(max_new_tokens):
        logits = penalize_repeats(next(steps), tokens, penalty)  # the last position
        token = sample(logits, **knobs)
        if token in stops:
            return  # a stop token ends the text and is not yielded
        tokens.append(token)  # the steps read this list: they see the new token
        yield token
# --8<-- [end:generate]


# --8<-- [start:stop-ids]
def stop_ids(stop: int | Iterable[int] | None,
             default: tuple[int, ...]) -> frozenset[int]:
    """The ids that end the text: stop (one id or several), or else default."""
    if stop is None:
        return frozenset(default)
    items = [stop] if isinstance(stop, (int, np.integer)) else \
        list(stop) if isinstance(stop, Iterable) else [stop]
    for i in items:  # NumPy's integers count; True, 2.0 and "a" do not
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"stop must be a token id or ids (integers), "
                            f"got {i!r}")
    return frozenset(int(i) for i in items)
# --8<-- [end:stop-ids]


# --8<-- [start:uncached-steps]
def _uncached_steps(model: LanguageModel, tokens: list[int]) -> Iterator[np.ndarray]:
    """Next-token logits, recomputing the whole window every step."""
    start = 0
    while True:
        start = window_start(len(tokens), start, model.config.n_ctx)
        window = np.array(tokens[start:], dtype=np.int64)
        yield model.forward(window)[-1]  # [T, V] -> [V]; T grows every step
# --8<-- [end:uncached-steps]


# --8<-- [start:cached-steps]
# the most tokens one call of the prefill takes (measured on GPT-2 124M's shape:
# a 512-token prompt in pieces of 256 beat one piece and pieces of 128, on one
# thread and two, float32 and Q8_0)
PREFILL = 256


def _cached_steps(model: LanguageModel, tokens: list[int],
                  capacity: int) -> Iterator[np.ndarray]:
    """Next-token logits: prefill the window once, then one new token a step."""
    start, cache = 0, None
    while True:
        new_start = window_start(len(tokens), start, model.config.n_ctx)
        if cache is None or new_start != start:  # first step, or a slide
            start, cache = new_start, model.empty_cache(capacity)
            new = tokens[start:]  # the prefill: the whole window
        else:
            new = tokens[-1:]  # only the token appended since the last step
        for a in range(0, len(new), PREFILL):  # a long prompt in pieces
            logits = model.forward_cached(np.array(new[a:a + PREFILL], np.int64),
                                          cache, last_only=True)
        yield logits[-1]  # [1, V] -> [V]
# --8<-- [end:cached-steps]


# --8<-- [start:stream-text]
def stream_text(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
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


# --8<-- [start:stop-text]
def stop_text(pieces: Iterable[str], stops: Iterable[str]) -> Iterator[str]:
    """The text pieces up to (not including) the first stop string."""
    stops = [s for s in stops if s]
    keep = max((len(s) for s in stops), default=1) - 1  # a stop's start, maybe
    held = ""  # text not shown yet: it might be the start of a stop string
    for piece in pieces:
        held += piece
        found = [held.index(s) for s in stops if s in held]
        if found:
            if min(found):
                yield held[:min(found)]
            return  # the caller stops pulling: no more tokens are computed
        if len(held) > keep:  # once shown, text cannot be taken back
            yield held[:len(held) - keep]
            held = held[len(held) - keep:]
    if held:
        yield held
# --8<-- [end:stop-text]
