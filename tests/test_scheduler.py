"""Continuous batching: each request's output equals generate() on it alone."""

from __future__ import annotations

import pytest

import minigpt
from minigpt.generation import generate
from minigpt.models import load_model, load_tokenizer
from minigpt.paged import pool_for
from minigpt.scheduler import Request, Scheduler, TextStream

PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo, wherefore", "KING",
           "First Citizen:\nBefore we proceed any further, hear me speak.", "To be"]


@pytest.fixture(scope="module", params=[minigpt.DEMO_MODEL, minigpt.DEMO_LLAMA],
                ids=["gpt2", "llama"])
def loaded(request):
    return load_model(request.param), load_tokenizer(request.param)


def run(scheduler: Scheduler) -> tuple[dict, dict, int]:
    """Step until every request is done: text and last event per request."""
    texts, last, steps = {}, {}, 0
    while scheduler.running or scheduler.waiting:
        for event in scheduler.step():
            texts[event.id] = texts.get(event.id, "") + event.text
            last[event.id] = event
        steps += 1
    return texts, last, steps


def solo_text(tokenizer, ids) -> str:
    return b"".join(tokenizer.decode_bytes([i]) for i in ids).decode("utf-8", "replace")


@pytest.mark.parametrize("max_batch, chunk", [(2, 4), (8, 64), (3, 7)])
def test_greedy_requests_equal_generate_alone(loaded, max_batch, chunk):
    model, tok = loaded
    pool = pool_for(model, 40, block_size=8)
    scheduler = Scheduler(model, tok, pool, max_batch=max_batch, chunk=chunk)
    want = {}
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt)
        scheduler.add(Request(str(i), tuple(ids), max_tokens=12 + 3 * i))
        want[str(i)] = list(generate(model, ids, 12 + 3 * i))
    texts, last, steps = run(scheduler)
    for key, ids in want.items():
        assert texts[key] == solo_text(tok, ids)
        assert last[key].tokens == len(ids)
        assert last[key].finish == ("length" if len(ids) == int(key) * 3 + 12
                                    else "stop")
    assert sorted(pool.free) == list(range(40)) and scheduler.promised == 0
    assert steps < sum(len(w) for w in want.values())  # steps were shared


@pytest.mark.parametrize("knobs", [
    dict(temperature=0.9, top_k=40, top_p=0.95),
    dict(temperature=1.0, min_p=0.1, repetition_penalty=1.3),
    dict(temperature=0.0, repetition_penalty=1.5)])
def test_seeded_sampling_equals_generate(loaded, knobs):
    model, tok = loaded
    scheduler = Scheduler(model, tok, pool_for(model, 32, 8), max_batch=4)
    want = {}
    for seed in range(4):
        ids = tok.encode(PROMPTS[seed])
        scheduler.add(Request(str(seed), tuple(ids), 16, seed=seed, **knobs))
        want[str(seed)] = solo_text(tok, generate(model, ids, 16, seed=seed, **knobs))
    texts, _, _ = run(scheduler)
    assert texts == want


def test_stop_strings_and_stop_ids_end_a_request(loaded):
    model, tok = loaded
    ids = tok.encode("ROMEO:")
    full = solo_text(tok, generate(model, ids, 30))
    stop = full[10:14]
    scheduler = Scheduler(model, tok, pool_for(model, 16, 8))
    scheduler.add(Request("s", tuple(ids), 30, stop=(stop,)))
    first = list(generate(model, ids, 1))[0]
    scheduler.add(Request("e", tuple(ids), 30, stop_ids=frozenset({first})))
    texts, last, _ = run(scheduler)
    assert texts["s"] == full[:full.index(stop)] and last["s"].finish == "stop"
    assert texts["e"] == "" and last["e"].finish == "stop" and last["e"].tokens == 0


def test_requests_wait_for_blocks_and_cancel_frees_them(loaded):
    model, tok = loaded
    pool = pool_for(model, 6, block_size=8)  # room for one 40-token request
    scheduler = Scheduler(model, tok, pool, max_batch=4)
    for name in "ab":
        scheduler.add(Request(name, (1, 2, 3), max_tokens=37))
    scheduler.step()
    assert [s.request.id for s in scheduler.running] == ["a"]
    assert [r.id for r in scheduler.waiting] == ["b"]  # waits: no blocks promised
    scheduler.cancel("a")
    assert len(pool.free) == 6 and scheduler.promised == 0
    scheduler.step()
    assert [s.request.id for s in scheduler.running] == ["b"]
    with pytest.raises(ValueError, match="more KV blocks than the pool holds"):
        Scheduler(model, tok, pool_for(model, 2, 8)).add(Request("c", (1,), 30))


def test_a_request_that_fails_to_start_stays_queued_and_promises_nothing(loaded):
    """A seed NumPy refuses fails in admit: nothing may be half done."""
    model, tok = loaded
    scheduler = Scheduler(model, tok, pool_for(model, 16, 8), max_batch=4)
    scheduler.add(Request("bad", (1, 2, 3), 20, seed=-1))
    with pytest.raises(ValueError, match="non-negative"):
        scheduler.step()
    assert scheduler.promised == 0 and not scheduler.running
    assert [r.id for r in scheduler.waiting] == ["bad"]
    scheduler.cancel("bad")  # what the server's engine does when a step fails
    scheduler.add(Request("good", (1, 2, 3), 5))
    texts, last, _ = run(scheduler)
    assert last["good"].finish == "length" and scheduler.promised == 0
    assert len(scheduler.pool.free) == 16


def test_knobs_that_fail_on_the_logits_end_that_request_only(loaded):
    model, tok = loaded
    ids = tok.encode(PROMPTS[1])
    scheduler = Scheduler(model, tok, pool_for(model, 32, 8), max_batch=4)
    scheduler.add(Request("tiny-t", tuple(ids), 8, temperature=1e-40))
    scheduler.add(Request("good", tuple(ids), 8))
    scheduler.add(Request("tiny-p", tuple(ids), 8, repetition_penalty=1e-300))
    texts, last, _ = run(scheduler)
    assert last["tiny-t"].finish == "error" and "temperature" in texts["tiny-t"]
    assert last["tiny-p"].finish == "error" and "penalty" in texts["tiny-p"]
    assert texts["good"] == solo_text(tok, generate(model, ids, 8))
    assert scheduler.promised == 0 and len(scheduler.pool.free) == 32


@pytest.mark.parametrize("request_, match", [
    (Request("x", (), 5), "empty"), (Request("x", (1,), 0), "max_tokens"),
    (Request("x", (1,) * 100, 29), "max_tokens must be 1 to 28"),
    (Request("x", (5000,), 5), "out of range"),
    (Request("x", (1,), 5, temperature=-1.0), "temperature")])
def test_bad_requests_are_refused(loaded, request_, match):
    model, tok = loaded
    with pytest.raises(ValueError, match=match):
        Scheduler(model, tok, pool_for(model, 64, 8)).add(request_)


def test_text_stream_holds_back_a_possible_stop():
    class Bytes:  # token i is the byte i
        def decode_bytes(self, ids):
            return bytes(ids)

    stream = TextStream(Bytes(), ("END",))
    shown = [stream.push(b) for b in b"abEN"]
    assert shown == [("", False), ("", False), ("a", False), ("b", False)]
    assert stream.push(ord("D")) == ("", True)
    stream = TextStream(Bytes(), ())
    assert [stream.push(b)[0] for b in "é".encode()] == ["", "é"]  # whole characters
