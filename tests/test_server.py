"""The OpenAI-compatible server, through the official `openai` client.

A real uvicorn server on a free loopback port, in a thread of this process,
serves the demo model; every answer is checked against generate() run alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import minigpt
from minigpt.generation import generate
from minigpt.models import load_model, load_tokenizer
from minigpt.paged import pool_for
from minigpt.scheduler import Scheduler
from tests.reference import require

TEMPLATE = ("{% for m in messages %}{% if m.role == 'system' %}"
            "{{ raise_exception('no system messages') }}{% endif %}"
            "{{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo, wherefore", "KING",
           "First Citizen:\nBefore we proceed any further, hear me speak."]


class SlowScheduler(Scheduler):
    """Steps of at least 10 ms, so a long answer is still running when checked."""

    def step(self):
        time.sleep(0.01)
        return super().step()


@pytest.fixture(scope="module")
def served():
    require("openai")
    require("fastapi")
    from minigpt.server import Engine, create_app, start_server

    model, tok = load_model(minigpt.DEMO_MODEL), load_tokenizer(minigpt.DEMO_MODEL)
    engine = Engine(SlowScheduler(model, tok, pool_for(model, 64, 16), max_batch=4,
                                  chunk=16))
    server, thread, url = start_server(create_app(
        engine, tok, "demo", {"chat_template": TEMPLATE}, 4096))
    plain, plain_thread, plain_url = start_server(create_app(engine, tok, "demo"))
    yield model, tok, engine, url, plain_url
    for s, t in ((server, thread), (plain, plain_thread)):
        s.should_exit = True
        t.join(timeout=10)
        assert not t.is_alive()  # stopped cleanly, in time
    engine.stop()
    assert not engine.thread.is_alive()


@pytest.fixture
def client(served):
    import openai

    return openai.OpenAI(base_url=served[3], api_key="none", max_retries=0)


def solo(model, tok, ids: list[int], n: int) -> str:
    return b"".join(tok.decode_bytes([t]) for t in generate(model, ids, n)).decode(
        "utf-8", "replace")


def http(url: str, body: str | None = None) -> tuple[int, dict]:
    """GET (or POST a raw body to) url with the standard library: status, JSON."""
    data = None if body is None else body.encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_idle(engine, seconds: float = 3.0) -> float:
    """Seconds until the engine holds no request (fails after `seconds`)."""
    start = time.perf_counter()
    while (engine.scheduler.running or engine.scheduler.waiting
           or engine.scheduler.promised):
        assert time.perf_counter() - start < seconds, "the engine is still busy"
        time.sleep(0.01)
    return time.perf_counter() - start


def test_models_lists_the_one_model(client):
    assert [m.id for m in client.models.list()] == ["demo"]


def test_concurrent_requests_each_equal_generate_alone(served, client):
    model, tok, engine, *_ = served

    def ask(i: int) -> tuple[str, str, object]:
        prompt, n = PROMPTS[i % 4], 10 + 3 * i
        want = solo(model, tok, tok.encode(prompt), n)
        if i % 2:  # streamed: the pieces joined
            chunks = list(client.completions.create(
                model="demo", prompt=prompt, max_tokens=n, temperature=0,
                stream=True, stream_options={"include_usage": True}))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            return want, text, chunks[-1].usage
        out = client.completions.create(model="demo", prompt=prompt, max_tokens=n,
                                        temperature=0)
        return want, out.choices[0].text, out.usage

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(6)))
    for i, (want, text, usage) in enumerate(results):
        assert text == want
        assert usage.prompt_tokens == len(tok.encode(PROMPTS[i % 4]))
        assert usage.completion_tokens <= 10 + 3 * i
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    wait_idle(engine)


def test_chat_goes_through_the_template(served, client):
    model, tok, *_ = served
    messages = [{"role": "user", "content": "Speak, Romeo."}]
    text = "user: Speak, Romeo.\nassistant:"
    want = solo(model, tok, tok.encode(text, allowed_special="all"), 12)
    out = client.chat.completions.create(model="demo", messages=messages,
                                         max_tokens=12, temperature=0)
    assert out.choices[0].message.content == want
    assert out.choices[0].message.role == "assistant"
    pieces = client.chat.completions.create(model="demo", messages=messages,
                                            max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces) == want
    newer = client.chat.completions.create(model="demo", messages=messages,
                                           max_completion_tokens=12, temperature=0)
    assert newer.choices[0].message.content == want


def test_stop_strings_and_finish_reasons(served, client):
    model, tok, *_ = served
    want = solo(model, tok, tok.encode("ROMEO:"), 30)
    stop = want[12:15]
    out = client.completions.create(model="demo", prompt="ROMEO:", max_tokens=30,
                                    temperature=0, stop=[stop])
    assert out.choices[0].text == want[:want.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    out = client.completions.create(model="demo", prompt="ROMEO:", max_tokens=3,
                                    temperature=0)
    assert out.choices[0].finish_reason == "length"


def test_seeded_sampling_is_reproducible(client):
    def ask(seed):
        return client.completions.create(model="demo", prompt="KING", max_tokens=20,
                                         temperature=1.0, top_p=0.9, seed=seed
                                         ).choices[0].text
    assert ask(7) == ask(7)
    assert len({ask(s) for s in range(4)}) > 1


def test_a_client_that_leaves_frees_its_slot(served, client):
    model, tok, engine, *_ = served
    stream = client.completions.create(model="demo", prompt="ROMEO:", max_tokens=100,
                                       temperature=0, stream=True)
    next(iter(stream))  # the answer has started: 100 steps take over a second
    stream.close()
    assert wait_idle(engine) < 0.8  # cancelled, not run to its end
    assert sorted(engine.scheduler.pool.free) == list(range(64))
    test_concurrent_requests_each_equal_generate_alone(served, client)  # and on


def test_a_waiting_client_that_leaves_frees_its_slot(served):
    """No stream: the handler notices the closed connection while it waits."""
    engine, url = served[2], served[3]
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    body = b'{"prompt": "ROMEO:", "max_tokens": 100, "temperature": 0}'
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        start = time.perf_counter()
        while not engine.scheduler.running:  # it has joined the batch
            assert time.perf_counter() - start < 5
            time.sleep(0.01)
    assert wait_idle(engine) < 1.2  # 100 steps would take over a second


def test_a_request_whose_knobs_fail_mid_answer_fails_alone(served, client):
    """A penalty small enough to overflow passes the checks, then fails on the
    logits: that request gets a 500 naming it; the one beside it is untouched."""
    model, tok, engine, url, _ = served
    bad = ('{"model": "demo", "prompt": "ROMEO: ROMEO: ROMEO:", "max_tokens": 20, '
           '"repetition_penalty": 1e-300, "temperature": 0}')
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(client.completions.create, model="demo", prompt="KING",
                           max_tokens=30, temperature=0)
        code, reply = pool.submit(http, url + "/completions", bad).result()
        text = good.result().choices[0].text
    assert code == 500 and "repetition penalty" in reply["error"]["message"]
    assert text == solo(model, tok, tok.encode("KING"), 30)
    wait_idle(engine)
    assert sorted(engine.scheduler.pool.free) == list(range(64))


def test_chat_prompts_get_no_second_bos():
    from minigpt.server import encode_chat

    tok = load_tokenizer(minigpt.DEMO_LLAMA)
    ids = encode_chat(tok, "<s>user: hi</s>")
    assert ids == tok.encode("<s>user: hi</s>", allowed_special="all",
                             add_special_tokens=False)
    assert ids.count(1) == 1 and ids[0] == 1  # the template's own BOS, once


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "demo", "prompt": "a"', 400, None),  # malformed JSON
    ('{"model": "demo"}', 400, "prompt"),
    ('{"model": "demo", "prompt": "a", "max_tokens": 0}', 400, "max_tokens"),
    ('{"model": "demo", "prompt": "a", "max_tokens": 500}', 400, "max_tokens"),
    ('{"model": "demo", "prompt": "a", "temperature": -1}', 400, "temperature"),
    ('{"model": "demo", "prompt": "a", "temperature": 1e-40}', 400, "temperature"),
    ('{"model": "demo", "prompt": "a", "seed": -1}', 400, "seed"),
    ('{"model": "demo", "prompt": "a", "top_p": 2}', 400, "top_p"),
    ('{"model": "demo", "prompt": "a", "min_p": 1.5}', 400, "min_p"),
    ('{"model": "demo", "prompt": "a", "repetition_penalty": 0}', 400,
     "repetition_penalty"),
    ('{"model": "demo", "prompt": [1, 99999]}', 400, "prompt"),
    ('{"model": "gpt-9", "prompt": "a"}', 404, "model"),
    ('{"model": "demo", "prompt": "a", "n": 2}', 400, "n"),
    ('{"model": "demo", "prompt": "a", "stop": [1]}', 400, "stop"),
    ('[1, 2]', 400, None),
    ('{"model": "demo", "prompt": "%s"}' % ("a" * 5000), 413, None),
])
def test_bad_requests_get_openai_errors(served, body, status, param):
    code, reply = http(served[3] + "/completions", body)
    assert code == status
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


def test_the_client_raises_on_errors(served, client):
    import openai

    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="demo", prompt="a", temperature=-0.5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-9", prompt="a")
    plain = openai.OpenAI(base_url=served[4], api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        plain.chat.completions.create(model="demo",
                                      messages=[{"role": "user", "content": "hi"}])
    assert plain.completions.create(model="demo", prompt="a", max_tokens=2).usage
    with pytest.raises(openai.BadRequestError, match="chat template: no system"):
        client.chat.completions.create(
            model="demo", messages=[{"role": "system", "content": "hi"}])


def test_the_command_line_serves_and_stops_on_ctrl_c():
    require("fastapi")
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving demo on http://127.0.0.1:"), line
        url = line.split()[3]
        assert http(url + "/models")[1]["data"][0]["id"] == "demo"
        code, reply = http(url + "/completions",
                           '{"prompt": "ROMEO:", "max_tokens": 4}')
        assert code == 200 and reply["usage"]["completion_tokens"] <= 4
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode in (0, 130)
    assert "Traceback" not in err, err


def test_serve_without_fastapi_says_so_in_one_line(monkeypatch, capsys):
    import importlib.util

    from minigpt.__main__ import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'minigpt[serve]'" in err


def test_error_bodies_are_json(served):
    code, reply = http(served[3] + "/nowhere")
    assert code == 404 and reply["error"]["message"] == "Not Found"
