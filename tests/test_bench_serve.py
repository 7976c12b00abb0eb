"""The serve benchmark's comparison with llama.cpp's llama-server.

The pure pieces (the command line, the turns, the ratios, the skip record) run
anywhere. One live test starts the real llama-server on a tiny GGUF file, where
the peers benchmark has built it; it never runs in CI (.ci/run does not build
llama.cpp: that takes ten minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess

import pytest

from benchmarks import bench_peers, bench_serve
from benchmarks.bench_peers import Skip
from tests.reference import require

LLAMA_SERVER = (bench_peers.CACHE / f"build-{bench_peers.LLAMA_CPP_PYTHON}" / "bin"
                / "llama-server")


def options(command: list[str]) -> dict[str, str | None]:
    """--flag value pairs of a command line (None for a flag without a value)."""
    out, args = {}, command[1:]
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[i + 1] if i + 1 < len(args) else "--"
            out[arg] = None if following.startswith("--") else following
    return out


def test_llama_server_runs_on_loopback_on_one_thread_with_a_slot_per_client():
    from pathlib import Path

    command = bench_serve.llama_server_command(Path("/x/llama-server"),
                                               Path("/y/m.gguf"), 4321, 16, 128)
    got = options(command)
    assert command[0] == "/x/llama-server"
    assert got["--model"] == "/y/m.gguf"
    assert (got["--host"], got["--port"]) == ("127.0.0.1", "4321")
    assert got["--threads"] == got["--threads-batch"] == "1"
    assert got["--parallel"] == "16"
    # each slot gets ctx-size / slots tokens (no unified cache), whole 256s
    per_slot = int(got["--ctx-size"]) / 16
    assert per_slot >= 128 and per_slot % 256 == 0
    assert got["--n-gpu-layers"] == "0"
    for flag in ("--no-kv-unified", "--cont-batching", "--offline", "--no-webui"):
        assert flag in got and got[flag] is None
    assert got["--alias"] == "random"  # the name one_request asks for
    longer = options(bench_serve.llama_server_command(Path("b"), Path("m"), 1, 4, 300))
    assert int(longer["--ctx-size"]) == 4 * 512


def load(tokens_per_second: float, ttft_p95: float) -> dict:
    return {"tokens_per_second": tokens_per_second, "ttft_p95": ttft_p95}


def test_the_ratios_are_ours_over_llama_servers_at_each_client_count():
    ours = {"1": load(10.0, 0.5), "8": load(60.0, 2.0)}
    theirs = {"command": "llama-server ...",
              "load": {"1": load(20.0, 0.25), "8": load(120.0, 1.0)}}
    got = bench_serve.versus_llama(ours, theirs, "abc1234")
    assert got["llama_server"]["commit"] == "abc1234"
    assert got["llama_server"]["load"] == theirs["load"]
    assert got["llama_server"]["command"] == "llama-server ..."
    assert got["llama_server"]["speedup"] == {"1": 1.0, "8": 6.0}
    assert got["vs_llama_server"] == {"1": 0.5, "8": 0.5}
    assert got["vs_llama_server_ttft_p95"] == {"1": 2.0, "8": 2.0}


def test_a_skipped_llama_server_is_recorded_with_its_reason_alone():
    ours = {"1": load(10.0, 0.5)}
    assert bench_serve.versus_llama(ours, {"skipped": "needs cmake"}, "") == {
        "llama_server": {"skipped": "needs cmake"}}


class FakeProcess:
    def __init__(self) -> None:
        self.code = None

    def poll(self):
        return self.code


def fake_turns(monkeypatch, fail_at: int | None = None) -> list:
    """take_turns against no server: every client run is a record of its call."""
    calls, process = [], FakeProcess()

    def fake_load(url, clients, rounds, new):
        calls.append((url, clients))
        if url == "llama" and clients == fail_at:
            process.code = -9  # it died under the load
            raise RuntimeError("connection refused")
        return {"tokens_per_second": float(clients), "url": url}

    @contextlib.contextmanager
    def fake_server(binary, gguf, slots, tokens):
        calls.append(("start", slots, tokens))
        yield process, "llama", [str(binary), "--model", str(gguf), "--parallel", "4"]

    monkeypatch.setattr(bench_serve, "load_in_child", fake_load)
    monkeypatch.setattr(bench_serve, "llama_server", fake_server)
    monkeypatch.setattr(bench_serve, "llama_server_files",
                        lambda: (bench_peers.CACHE / "llama-server",
                                 bench_peers.CACHE / "m.gguf"))
    return calls


def test_the_two_servers_take_turns_at_each_client_count(monkeypatch):
    calls = fake_turns(monkeypatch)
    ours, theirs = bench_serve.take_turns("ours", [1, 2, 4], 3, 8, llama=True)
    assert calls == [("start", 4, bench_serve.PROMPT + 8), ("ours", 1), ("llama", 1),
                     ("ours", 2), ("llama", 2), ("ours", 4), ("llama", 4)]
    assert list(ours) == list(theirs["load"]) == ["1", "2", "4"]
    assert theirs["load"]["2"]["url"] == "llama"
    assert theirs["command"] == "llama-server --model m.gguf --parallel 4"


def test_without_llama_server_ours_still_runs_and_the_reason_is_kept(monkeypatch,
                                                                     capsys):
    calls = fake_turns(monkeypatch)

    def cannot():
        raise Skip("needs cmake, a C++ compiler")

    monkeypatch.setattr(bench_serve, "llama_server_files", cannot)
    ours, theirs = bench_serve.take_turns("ours", [1, 2, 4], 3, 8, llama=True)
    assert theirs == {"skipped": "needs cmake, a C++ compiler"}
    assert calls == [("ours", 1), ("ours", 2), ("ours", 4)] and list(ours) == [
        "1", "2", "4"]
    assert "llama-server skipped: needs cmake" in capsys.readouterr().out
    _, quick = bench_serve.take_turns("ours", [1], 1, 8, llama=False)
    assert "quick" in quick["skipped"]


def test_a_llama_server_that_dies_is_skipped_but_a_wrong_answer_is_not(monkeypatch):
    calls = fake_turns(monkeypatch, fail_at=2)
    ours, theirs = bench_serve.take_turns("ours", [1, 2, 4], 3, 8, llama=True)
    assert theirs["skipped"].startswith("llama-server stopped at 2 clients")
    assert list(ours) == ["1", "2", "4"] and calls[-1] == ("ours", 4)

    def wrong(url, clients, rounds, new):  # it runs, and streamed too few tokens
        if url == "llama":
            raise RuntimeError("requests streamed 7 tokens, not 8")
        return {}

    fake_turns(monkeypatch)
    monkeypatch.setattr(bench_serve, "load_in_child", wrong)
    with pytest.raises(RuntimeError, match="7 tokens, not 8"):
        bench_serve.take_turns("ours", [1], 1, 8, llama=True)


def test_a_request_with_the_wrong_number_of_tokens_stops_the_run():
    runs = [{"tokens": 8}, {"tokens": 8}]
    bench_serve.check_counts(runs, 8)
    with pytest.raises(RuntimeError, match="5, None tokens, not 8"):
        bench_serve.check_counts([*runs, {"tokens": None}, {"tokens": 5}], 8)


@pytest.mark.reference
@pytest.mark.skipif(os.environ.get("CI") == "true",
                    reason="CI does not build llama.cpp (ten minutes)")
@pytest.mark.skipif(not LLAMA_SERVER.exists(),
                    reason="llama-server is built by `python -m benchmarks peers`")
def test_llama_server_streams_exactly_the_asked_tokens(tmp_path):
    """A tiny GPT-2 (random weights) converted by llama.cpp's converter, served by
    the real llama-server, through the official openai client."""
    torch = require("torch")
    transformers = require("transformers")
    require("openai")
    vocab = bench_peers.ROOT / "data" / "gpt2"
    if not (vocab / "encoder.json").exists():
        pytest.skip(f"the GPT-2 vocabulary is missing from {vocab}")
    help_text = subprocess.run([str(LLAMA_SERVER), "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    command = bench_serve.llama_server_command(LLAMA_SERVER, tmp_path, 1, 2, 72)
    for flag in options(command):  # every flag we pass is one this version has
        assert re.search(re.escape(flag) + r"(?![\w-])", help_text), flag

    folder = tmp_path / "tiny"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=256)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw.setdefault("n_ctx", raw["n_positions"])
    (folder / "config.json").write_text(json.dumps(raw))
    shutil.copy(vocab / "encoder.json", folder / "vocab.json")
    shutil.copy(vocab / "vocab.bpe", folder / "merges.txt")
    gguf = bench_peers.convert(bench_peers.fetch_sources(), folder, "f32", tmp_path)

    import openai

    with bench_serve.llama_server(LLAMA_SERVER, gguf, 2, 72) as (process, url, _):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        one = bench_serve.one_request(client, list(range(300, 364)), 8)
        assert one["tokens"] == 8  # ignore_eos: never shorter
        assert 1 <= one["chunks"] <= 8 and len(one["tbt"]) == one["chunks"] - 1
        assert one["ttft"] > 0
        run = bench_serve.load_run(url, 2, 1, 5)  # two clients at once
        assert run["requests"] == 2 and run["chunks"] <= 10
        assert run["tokens_per_second"] * run["seconds"] == pytest.approx(10)
    assert process.poll() is not None  # stopped when the block ended


class Counted:
    """A weight that counts the operations of every product through it."""

    def __init__(self, rows, flop: list[int], transposed: bool = False):
        self.rows, self.flop, self.transposed = rows, flop, transposed

    __array_ufunc__ = None  # NumPy hands x @ W to __rmatmul__
    ndim = 2

    @property
    def shape(self):
        return self.rows.shape[::-1] if self.transposed else self.rows.shape

    @property
    def T(self):  # noqa: N802 (NumPy's name)
        return Counted(self.rows, self.flop, not self.transposed)

    def __getitem__(self, ids):
        return self.rows[ids]

    def __rmatmul__(self, x):
        w = self.rows.T if self.transposed else self.rows
        self.flop[0] += 2 * x.reshape(-1, x.shape[-1]).shape[0] * w.size
        return x @ w


def test_a_requests_arithmetic_is_what_a_forward_pass_multiplies(tmp_path,
                                                                   monkeypatch):
    """request_gflop against the products a real prompt and its new tokens make,
    counted as they run: the weights', and attention's for the query-key pairs
    its mask allows (the least any engine computes)."""
    import numpy as np

    import minigpt.kvcache as kvcache
    from minigpt.bench import save_random_gpt2
    from minigpt.models import load_model
    from minigpt.threads import map_matrices
    from minigpt.weights import GPTConfig

    config = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_ctx=32)
    model = load_model(save_random_gpt2(tmp_path / "m", config))
    flop = [0]
    model = type(model)(model.config, map_matrices(model.params,
                                                   lambda r: Counted(r, flop)))
    real = kvcache.attention

    def attention(q, k, v, mask):  # scores q k^T, then weights times v
        pairs = q.shape[1] * k.shape[1] if mask is None else mask.sum()  # allowed
        flop[0] += 2 * 2 * q.shape[0] * int(pairs) * q.shape[2]
        return real(q, k, v, mask)
    monkeypatch.setattr(kvcache, "attention", attention)
    prompt, new = 5, 4
    cache = model.empty_cache()
    model.forward_cached(np.arange(prompt), cache, last_only=True)
    at_first = flop[0]
    for token in range(new - 1):  # the last new token is never fed back
        model.forward_cached(np.array([token]), cache, last_only=True)
    got = bench_serve.request_gflop(config, prompt, new)
    assert got["prompt"] * 1e9 == pytest.approx(at_first, rel=1e-12)
    assert got["request"] * 1e9 == pytest.approx(flop[0], rel=1e-12)


def test_the_limits_divide_the_arithmetic_by_the_peak():
    limits = bench_serve.compute_limits({"prompt": 2.0, "request": 10.0}, 100.0,
                                        8, 64, 20.0)
    assert limits["ttft_s"] == pytest.approx(8 * 2.0 / 100.0)
    assert limits["tokens_per_second"] == pytest.approx(64 / 0.1)
    assert limits["speedup"] == pytest.approx(640 / 20.0)
