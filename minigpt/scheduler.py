"""Continuous batching: admit requests between decode steps, retire finished ones.

Follows the iteration-level scheduling of Orca (Yu et al., 2022) and vLLM, in the
small form of nano-vllm: the batch is re-formed at every step. Between two forward
passes the scheduler admits waiting requests (while there are batch slots and KV
blocks for them), and every running sequence brings its next token; a new prompt
is fed in chunks of at most `chunk` tokens a step ("chunked prefill"), so that the
sequences already decoding keep getting a token every step. One step is one call
of `minigpt.batch.batch_forward` over paged caches (`minigpt.paged`). Each request
samples with its own knobs and its own seeded generator through
`minigpt.sampling.sample`, exactly as `minigpt.generate` does for one prompt, so a
greedy request gives the tokens `generate` gives, whatever else is in the batch.
A sequence ends at its end-of-text ids, at a stop string (its text is held back
while it might be the start of one), after max_tokens, or when cancelled.

Admission promises each sequence the blocks its prompt plus max_tokens can reach,
so a running sequence never waits for memory; blocks are still taken only as the
tokens arrive. A request larger than the whole pool is refused.

Leaves out on purpose: preempting a sequence to make room (vLLM swaps or
recomputes), priorities, and sharing a common prompt prefix between requests.
"""

from __future__ import annotations

import codecs
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from minigpt.batch import batch_forward
from minigpt.model import check_ids
from minigpt.paged import BlockPool, PagedCache
from minigpt.sampling import check_knobs, penalize_repeats, sample

__all__ = ["Event", "Request", "Scheduler", "Sequence", "TextStream"]


# --8<-- [start:request]
@dataclass(frozen=True)
class Request:
    """One prompt to continue, and how."""

    id: str
    prompt: tuple[int, ...]  # token ids
    max_tokens: int  # at most this many new tokens
    temperature: float = 0.0  # 0 is greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0  # > 1: every token seen so far less likely
    seed: int | None = None  # the same seed gives the same text
    stop: tuple[str, ...] = ()  # the text ends before any of these
    stop_ids: frozenset[int] = frozenset()  # none: the model's end-of-text ids


class Event(NamedTuple):
    """What one step produced for one request: new text, and why it ended."""

    id: str
    text: str  # may be "" (a token that ends inside a character or a stop string)
    finish: str | None  # None, or "stop", "length", "cancelled", "error" (text: why)
    tokens: int  # new tokens so far
# --8<-- [end:request]


# --8<-- [start:text-stream]
class TextStream:
    """The text of a growing list of tokens, held back while it may start a stop."""

    def __init__(self, tokenizer, stops: tuple[str, ...]) -> None:
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # decoded, not shown: it might be the start of a stop string

    def push(self, token: int) -> tuple[str, bool]:
        """The text one more token lets us show; True once a stop string appears."""
        self.held += self.decoder.decode(self.tokenizer.decode_bytes([token]))
        found = [self.held.index(s) for s in self.stops if s in self.held]
        if found:
            return self.held[:min(found)], True
        keep = max((len(s) for s in self.stops), default=1) - 1  # a stop's start
        cut = max(len(self.held) - keep, 0)
        text, self.held = self.held[:cut], self.held[cut:]
        return text, False

    def flush(self) -> str:
        """All the text still held: the stream is over."""
        text, self.held = self.held + self.decoder.decode(b"", final=True), ""
        return text
# --8<-- [end:text-stream]


# --8<-- [start:sequence]
@dataclass
class Sequence:
    """A request in the batch: its tokens, its cache and its sampler."""

    request: Request
    cache: PagedCache  # its keys and values, in blocks of the shared pool
    tokens: list[int]  # the prompt, then each new token
    rng: np.random.Generator  # seeded from the request: the same draws as generate
    text: TextStream
    stop_ids: frozenset[int]  # its request's, or else the model's end-of-text ids
# --8<-- [end:sequence]


# --8<-- [start:scheduler]
class Scheduler:
    """Requests in, events out: one batched forward step per call of step()."""

    def __init__(self, model, tokenizer, pool: BlockPool, max_batch: int = 8,
                 chunk: int = 64) -> None:
        self.model, self.tokenizer, self.pool = model, tokenizer, pool
        self.max_batch, self.chunk = max_batch, chunk  # chunk: prompt tokens a step
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []
        self.promised = 0  # blocks the running sequences may still reach

    def check(self, r: Request) -> None:
        """Refuse a request that could never run (ValueError); reads no state."""
        cfg = self.model.config
        check_ids(np.array(r.prompt, dtype=np.int64), cfg.n_ctx, cfg.vocab_size)
        check_knobs(r.temperature, r.top_k, r.top_p, r.min_p, r.repetition_penalty)
        if r.max_tokens < 1 or len(r.prompt) + r.max_tokens > cfg.n_ctx:
            raise ValueError(f"max_tokens must be 1 to {cfg.n_ctx - len(r.prompt)} "
                             f"(the context minus the prompt), got {r.max_tokens}")
        if self.pool.blocks_for(len(r.prompt) + r.max_tokens) > self.pool.k.shape[1]:
            raise ValueError("the request needs more KV blocks than the pool holds")

    def add(self, r: Request) -> None:
        """Queue a request; it joins the batch at a step with room for it."""
        self.check(r)
        self.waiting.append(r)

    def cancel(self, request_id: str) -> None:
        """Drop a request, waiting or running; a running one frees its blocks."""
        self.waiting = deque(r for r in self.waiting if r.id != request_id)
        for seq in [s for s in self.running if s.request.id == request_id]:
            self.retire(seq, "", "cancelled")
# --8<-- [end:scheduler]

    # --8<-- [start:scheduler-admit]
    def admit(self) -> None:
        """Move waiting requests into the batch while slots and blocks last."""
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            need = self.pool.blocks_for(len(r.prompt) + r.max_tokens)
            if self.promised + need > self.pool.k.shape[1]:
                return  # first come, first served: it waits for blocks to free
            self.running.append(Sequence(
                r, PagedCache(self.pool), list(r.prompt), np.random.default_rng(r.seed),
                TextStream(self.tokenizer, r.stop),
                frozenset(r.stop_ids or self.model.config.eos_token_ids)))
            self.waiting.popleft()  # only now: one that fails to start stays queued
            self.promised += need

    def plan(self) -> list[tuple[Sequence, int]]:
        """How many tokens each sequence feeds this step: one to decode, or a
        chunk of its prompt while the step's prefill budget lasts."""
        work, budget = [], self.chunk
        for seq in self.running:
            todo = len(seq.tokens) - seq.cache.length  # known, not yet cached
            n = 1 if todo == 1 else min(todo, budget)  # a prompt takes from budget
            if n:
                work.append((seq, n))
                budget -= n if todo > 1 else 0
        return work
    # --8<-- [end:scheduler-admit]

    # --8<-- [start:scheduler-step]
    def step(self) -> list[Event]:
        """Admit, run one batched forward pass, sample, retire: the step's events."""
        self.admit()
        work = self.plan()
        if not work:
            return []
        chunks = [np.array(seq.tokens[seq.cache.length:][:n]) for seq, n in work]
        logits = batch_forward(self.model, chunks, [s.cache for s, _ in work])  # [B, V]
        done = [(seq, row) for (seq, _), row in zip(work, logits, strict=True)
                if seq.cache.length == len(seq.tokens)]  # whole prompt read: sample
        return [self.advance(seq, row) for seq, row in done]

    def advance(self, seq: Sequence, logits: np.ndarray) -> Event:
        """Sample the sequence's next token, and end it if it is done."""
        r = seq.request
        try:  # a knob these logits cannot take (temperature 1e-40) ends this one only
            logits = penalize_repeats(logits, seq.tokens, r.repetition_penalty)
            token = sample(logits, r.temperature, r.top_k, r.top_p, seq.rng, r.min_p)
        except ValueError as exc:
            return self.retire(seq, str(exc), "error")
        if token in seq.stop_ids:  # as in generate: not part of the text
            return self.retire(seq, seq.text.flush(), "stop")
        seq.tokens.append(token)
        text, stopped = seq.text.push(token)
        if stopped:
            return self.retire(seq, text, "stop")
        if len(seq.tokens) - len(r.prompt) == r.max_tokens:
            return self.retire(seq, text + seq.text.flush(), "length")
        return Event(r.id, text, None, len(seq.tokens) - len(r.prompt))

    def retire(self, seq: Sequence, text: str, reason: str) -> Event:
        """Take a sequence out of the batch and give its blocks back."""
        seq.cache.release()
        self.running.remove(seq)
        r = seq.request
        self.promised -= self.pool.blocks_for(len(r.prompt) + r.max_tokens)
        return Event(r.id, text, reason, len(seq.tokens) - len(r.prompt))
    # --8<-- [end:scheduler-step]
