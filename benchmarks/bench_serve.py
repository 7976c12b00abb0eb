"""Many requests at once: the batched step, and the server under 1 to 16 clients.

python -m benchmarks serve [--quick]. GPT-2 124M's shape with random weights
(`minigpt.bench.save_random_gpt2`, loaded by `minigpt.load_model`), on one BLAS
thread. Token ids stand in for text (a random model's text means nothing): the
prompts are lists of ids, and the tokenizer writes each id as " <id>".

Measured:
- the batched decode step (`minigpt.batch.batch_forward`, B sequences of one new
  token after a 64-token cache each): seconds per step and tokens per second for
  B = 1 .. 16, the steps taking turns; beside it the memory bandwidth and the
  float32 matrix-product peak of this machine, for the roofline against B;
- the server (`minigpt.server` on a loopback port, in this process, the engine on
  its own thread), with the clients in a child process so that they do not share
  its interpreter lock: N clients (1, 2, 4, 8, 16) each stream `ROUNDS` requests
  one after another through the official `openai` client, every request a 64-token
  prompt and up to 64 new tokens, greedy; per request the time to first token
  (TTFT) and the times between tokens (TBT), and the aggregate new tokens per
  second of the whole run (prefills included); and the aggregate decode rate
  while streaming, N clients / the median TBT, against one client's;
- llama.cpp's `llama-server` (built by the peers benchmark, `bench_peers`) under
  the same clients, the two servers taking turns at each client count: a GGUF F32
  file of the same shape (random weights, converted by llama.cpp's own converter),
  one thread, as many slots as our batch has sequences, continuous batching. Every
  request asks to ignore the end-of-text token (our random model has none), and
  each must stream exactly the asked number of tokens, counted by the server's own
  `usage`, or the run stops. Skipped, with the reason recorded, in a --quick run
  or where llama-server cannot be built or run.
Writes benchmarks/results/serve.json and the charts batch-step and serve-load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import bench_peers
from benchmarks.bench_peers import Skip
from benchmarks.common import ROOT, chart_path, machine_caption, pyplot, save_results
from minigpt.batch import batch_forward
from minigpt.bench import (
    blas_threads,
    measure_bandwidth,
    save_random_gpt2,
    weight_bytes,
)
from minigpt.info import machine_info
from minigpt.kernels import kernel_model
from minigpt.models import load_model
from minigpt.paged import pool_for
from minigpt.scheduler import Scheduler
from minigpt.server import Engine, create_app, start_server
from minigpt.weights import GPTConfig

PROMPT, NEW, ROUNDS = 64, 64, 3
CLIENTS = [1, 2, 4, 8, 16]
BATCHES = [1, 2, 4, 8, 16]


class IdTokenizer:
    """Writes token i as " i": enough text for a random model's stream."""

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return "".join(f" {i}" for i in ids).encode()


def step_rates(models: dict, batches: list[int], position: int, rounds: int) -> dict:
    """Median seconds of one decode step of B sequences at `position`, for each
    model, the models and the batch sizes taking turns."""
    rng = np.random.default_rng(1)
    caches = {}
    for name, model in models.items():  # every cache holds `position` tokens
        for b in batches:
            caches[name, b] = [model.empty_cache(position + 1) for _ in range(b)]
            batch_forward(model, [rng.integers(0, 50257, position) for _ in range(b)],
                          caches[name, b])
    times = {key: [] for key in caches}
    for _ in range(rounds):
        for (name, b), cs in caches.items():
            for c in cs:
                c.length = position  # the same step again, over the same cache
            start = time.perf_counter()
            batch_forward(models[name], [np.array([7]) for _ in range(b)], cs)
            times[name, b].append(time.perf_counter() - start)
    out = {}
    for name in models:
        seconds = {str(b): statistics.median(times[name, b]) for b in batches}
        out[name] = {"seconds": seconds,
                     "tokens_per_second": {b: int(b) / s for b, s in seconds.items()}}
    return out


def peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 GFLOPS of an n x n product: the machine's compute ceiling here."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = min(timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def request_gflop(config: GPTConfig, prompt: int, new: int) -> dict:
    """GFLOP of one request on GPT-2: two per weight a token meets (the blocks'
    12 C^2 each layer), attention's two products over the positions before it,
    and the tied head (V x C) for each token sampled. -> prompt, whole request"""
    C, L, V = config.n_embd, config.n_layer, config.vocab_size

    def tokens(first: int, last: int) -> float:  # positions first..last-1 fed
        seen = sum(p + 1 for p in range(first, last))  # keys each one attends to
        return 2 * L * (12 * C * C * (last - first) + 2 * C * seen)
    head = 2 * V * C
    prompt_flop = tokens(0, prompt) + head  # to the first token's logits
    # each later token is fed once, and its logits give the next one
    whole = prompt_flop + tokens(prompt, prompt + new - 1) + (new - 1) * head
    return {"prompt": prompt_flop / 1e9, "request": whole / 1e9}


def compute_limits(flop: dict, gflops: float, clients: int, new: int,
                   one: float) -> dict:
    """What arithmetic alone allows at `gflops`: the last of `clients` prompts
    that arrive together gets its first token after all of them are computed;
    and new tokens/s can be no more than a request's new tokens per its
    arithmetic, against one client's measured rate `one`."""
    most = new / (flop["request"] / gflops)
    return {"prompt_gflop": flop["prompt"], "request_gflop": flop["request"],
            "clients": clients, "ttft_s": clients * flop["prompt"] / gflops,
            "tokens_per_second": most, "speedup": most / one}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def one_request(client, prompt: list[int], new: int) -> dict:
    """Stream one completion: time to first token and between tokens, in seconds,
    and the new tokens the server says it made (a chunk may hold several: a
    server holds back the bytes of a character cut between two tokens)."""
    start = time.perf_counter()
    stamps, tokens = [], None
    for chunk in client.completions.create(
            model="random", prompt=prompt, max_tokens=new, temperature=0,
            stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True}):  # llama-server's; ours has no eos
        if chunk.choices and chunk.choices[0].text:
            stamps.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": stamps[0] - start, "tbt": np.diff(stamps).tolist(),
            "tokens": tokens, "chunks": len(stamps)}


def check_counts(runs: list[dict], new: int) -> None:
    """Every request made exactly `new` tokens, or the rates would not compare."""
    wrong = sorted({str(r["tokens"]) for r in runs if r["tokens"] != new})
    if wrong:
        raise RuntimeError(f"requests streamed {', '.join(wrong)} tokens, not {new}")


def load_run(url: str, clients: int, rounds: int, new: int) -> dict:
    """`clients` clients, each sending `rounds` requests one after another."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    rng = np.random.default_rng(clients)
    prompts = [[rng.integers(0, 50257, PROMPT).tolist() for _ in range(rounds)]
               for _ in range(clients)]

    def one_client(i: int) -> list[dict]:
        return [one_request(client, p, new) for p in prompts[i]]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = [r for rs in pool.map(one_client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    check_counts(runs, new)
    ttft = [r["ttft"] for r in runs]
    tbt = [t for r in runs for t in r["tbt"]]
    return {"tokens_per_second": sum(r["tokens"] for r in runs) / wall,
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "tbt_p50": percentile(tbt, 50), "tbt_p95": percentile(tbt, 95),
            "requests": len(runs), "seconds": wall,
            "chunks": sum(r["chunks"] for r in runs)}


def load_in_child(url: str, clients: int, rounds: int, new: int) -> dict:
    """load_run in a process of its own, so that the clients' Python work does
    not compete with the server's for this process's interpreter lock."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_serve", "--clients",
                          url, str(clients), str(rounds), str(new)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"the clients at {url} failed: "
                           f"{out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout)


def llama_server_command(binary: Path, gguf: Path, port: int, slots: int,
                         tokens: int) -> list[str]:
    """llama-server on loopback: one thread, `slots` sequences batched together,
    each with room for `tokens` (it gives a slot ctx-size / slots, in 256s)."""
    per_slot = -(-tokens // 256) * 256
    return [str(binary), "--model", str(gguf), "--alias", "random",
            "--host", "127.0.0.1", "--port", str(port),
            "--threads", "1", "--threads-batch", "1", "--parallel", str(slots),
            "--ctx-size", str(slots * per_slot), "--no-kv-unified",
            "--cont-batching", "--n-gpu-layers", "0", "--offline", "--no-webui"]


def llama_server_files() -> tuple[Path, Path]:
    """llama-server and a GGUF F32 GPT-2 124M (random weights), made once into
    the peers benchmark's cache; Skip saying why where they cannot be."""
    missing = bench_peers.missing_tools()
    if missing:
        raise Skip(f"needs {', '.join(missing)}")
    try:
        source = bench_peers.fetch_sources()
        binary = bench_peers.build_llama_cpp(source) / "llama-server"
        gguf = bench_peers.CACHE / "serve" / "gpt2-124m-f32.gguf"
        if not gguf.exists():
            gguf.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                bench_peers.save_checkpoint(Path(tmp) / "gpt2-124m")
                made = bench_peers.convert(source, Path(tmp) / "gpt2-124m", "f32",
                                           Path(tmp))
                part = gguf.with_name(gguf.name + ".part")
                shutil.move(made, part)
                os.replace(part, gguf)  # whole, or not there
    except (subprocess.CalledProcessError, OSError) as exc:
        raise Skip(f"llama.cpp could not be built or converted: {exc}") from None
    return binary, gguf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, log: Path,
               timeout: float = 300) -> None:
    """Until llama-server's /health answers 200; Skip if it exits or is too slow."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Skip(f"llama-server exited with code {process.returncode}: "
                       f"{log_tail(log)}")
        try:
            with opener.open(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening, or 503 loading
            pass
        time.sleep(0.2)
    raise Skip(f"llama-server was not ready within {timeout:.0f} s: {log_tail(log)}")


def log_tail(log: Path) -> str:
    lines = log.read_text("utf-8", errors="replace").strip().splitlines()
    return " | ".join(lines[-3:]) or "(no output)"


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ask a process to end; kill it if it has not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def llama_server(binary: Path, gguf: Path, slots: int, tokens: int):
    """llama-server running, quiet (its log in a temporary file), until the block
    ends -> (process, its /v1 url, the command line)."""
    with tempfile.TemporaryDirectory() as tmp:
        log, port = Path(tmp) / "llama-server.log", free_port()
        command = llama_server_command(binary, gguf, port, slots, tokens)
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(process, f"http://127.0.0.1:{port}", log)
            yield process, f"http://127.0.0.1:{port}/v1", command
        finally:
            stop_process(process)


def take_turns(url: str, clients: list[int], rounds: int, new: int,
               llama: bool) -> tuple[dict, dict]:
    """Our server at each client count, then llama-server at the same, so that
    the machine's drift hits both -> (our loads, llama-server's record)."""
    ours, theirs = {}, {}
    try:
        if not llama:
            raise Skip("a quick run does not start llama-server")
        binary, gguf = llama_server_files()
        with llama_server(binary, gguf, max(clients), PROMPT + new) as (
                process, other, command):
            theirs["command"] = shlex.join(  # without this machine's folders
                Path(a).name if a in (str(binary), str(gguf)) else a for a in command)
            for n in clients:
                ours[str(n)] = load_in_child(url, n, rounds, new)
                try:
                    theirs.setdefault("load", {})[str(n)] = load_in_child(
                        other, n, rounds, new)
                except RuntimeError as exc:
                    if process.poll() is None:
                        raise  # it runs, and answered wrong: that is no skip
                    raise Skip(f"llama-server stopped at {n} clients: {exc}") from None
    except Skip as why:
        print(f"[serve] llama-server skipped: {why}", flush=True)
        theirs = {"skipped": str(why)}
    for n in clients:  # those llama-server did not reach
        if str(n) not in ours:
            ours[str(n)] = load_in_child(url, n, rounds, new)
    return ours, theirs


def versus_llama(ours: dict, theirs: dict, commit: str) -> dict:
    """serve.json's llama-server entries: its record with its speed-ups, and our
    aggregate tokens/s and TTFT p95 over its, at each client count."""
    if "load" not in theirs:
        return {"llama_server": theirs}
    load = theirs["load"]
    one = load[min(load, key=int)]["tokens_per_second"]
    return {
        "llama_server": {
            "commit": commit, "llama_cpp_python": bench_peers.LLAMA_CPP_PYTHON,
            **theirs,
            "speedup": {n: load[n]["tokens_per_second"] / one for n in load}},
        "vs_llama_server": {n: ours[n]["tokens_per_second"]
                            / load[n]["tokens_per_second"] for n in load},
        "vs_llama_server_ttft_p95": {n: ours[n]["ttft_p95"] / load[n]["ttft_p95"]
                                     for n in load}}


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run(quick: bool = False) -> dict:
    clients = [1, 2] if quick else CLIENTS
    batches = [1, 2, 4] if quick else BATCHES
    new, rounds = (8, 1) if quick else (NEW, ROUNDS)
    with tempfile.TemporaryDirectory() as tmp, blas_threads(1):
        plain = load_model(save_random_gpt2(Path(tmp) / "gpt2", GPTConfig()))
        weights = weight_bytes(plain.params)
        model = kernel_model(plain)  # as `serve` runs it: our code for a few rows
        rates = step_rates({"ours": model, "blas": plain}, batches, PROMPT,
                           3 if quick else 9)
        del plain
        bandwidth = max(measure_bandwidth(64 if quick else 256).values())
        gflops = peak_gflops(512 if quick else 1024)
        pool = pool_for(model, max(clients) * model.config.n_ctx // 16, 16)
        engine = Engine(Scheduler(model, IdTokenizer(), pool, max_batch=max(clients)))
        # no end-of-text id: every request runs to its max_tokens, as llama-server's
        if model.config.eos_token_ids:
            raise RuntimeError("the random model must not stop early")
        server, thread, url = start_server(create_app(engine, IdTokenizer(), "random"))
        try:
            load, llama = take_turns(url, clients, rounds, new, llama=not quick)
        finally:
            server.should_exit = True
            thread.join()
            engine.stop()
    one = load[str(clients[0])]["tokens_per_second"]
    results = {
        "shape": "GPT-2 124M (random weights)", "threads": 1,
        "prompt_tokens": PROMPT, "new_tokens": new, "rounds": rounds,
        "weight_bytes": weights, "bandwidth_gb_s": bandwidth, "peak_gflops": gflops,
        "step": rates["ours"], "step_blas": rates["blas"], "load": load,
        "speedup": {n: load[n]["tokens_per_second"] / one for n in load},
        # while streaming, N clients each get a token every TBT: N / TBT tokens/s
        "decode_speedup": {n: int(n) * load[str(clients[0])]["tbt_p50"]
                           / load[n]["tbt_p50"] for n in load},
        **versus_llama(load, llama, "" if "load" not in llama
                       else bench_peers.llama_cpp_commit()),
        # the ceiling the machine's own float32 product puts on the server
        "compute_limits": compute_limits(request_gflop(GPTConfig(), PROMPT, new),
                                         gflops, 8, new, one),
    }
    results["targets"] = targets(results)
    save_results("serve", results, command="python -m benchmarks serve")
    draw(results, machine_info())
    return results


def targets(r: dict) -> dict:
    """The serving targets, each with its measured value (where it was measured)."""
    wanted = {"aggregate_8_clients_vs_1": ("speedup.8", 4.0, ">="),
              "aggregate_16_clients_vs_1": ("speedup.16", 6.0, ">="),
              "decode_8_clients_vs_1": ("decode_speedup.8", 4.0, ">="),
              "decode_16_clients_vs_1": ("decode_speedup.16", 6.0, ">="),
              "ttft_p95_8_clients_s": ("load.8.ttft_p95", 1.0, "<=")}
    out = {}
    for name, (key, target, sense) in wanted.items():
        top, _, rest = key.partition(".")
        node = r[top]
        for part in rest.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            met = node >= target if sense == ">=" else node <= target
            out[name] = {"measured": node, "target": f"{sense} {target}", "met": met}
    return out


def draw(r: dict, machine: dict) -> None:
    """batch-step: tokens/s of one step against B, under its two ceilings;
    serve-load: aggregate tokens/s, then TTFT and TBT, against clients."""
    plt = pyplot()
    b = [int(k) for k in r["step"]["tokens_per_second"]]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    memory = r["bandwidth_gb_s"] * 1e9 / r["weight_bytes"]  # steps/s, reading weights
    compute = r["peak_gflops"] * 1e9 / (2 * r["weight_bytes"] / 4)  # tokens/s
    ax.plot(b, list(r["step"]["tokens_per_second"].values()), "o-",
            label="our kernel")
    ax.plot(b, list(r["step_blas"]["tokens_per_second"].values()), "s-", alpha=0.6,
            label="BLAS only")
    ax.plot(b, [min(memory * x, compute) for x in b], "--", color="gray",
            label="roofline")
    ax.set(xscale="log", yscale="log", xlabel="sequences in the step (B)",
           ylabel="tokens per second", xticks=b, xticklabels=[str(x) for x in b])
    ax.legend(fontsize=8)
    ax.set_title("One batched decode step, GPT-2 124M shape, one thread", fontsize=10)
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("batch-step"), format="svg", metadata={"Date": None})
    plt.close(fig)

    n = [int(k) for k in r["load"]]
    theirs = r.get("llama_server", {}).get("load", {})  # dashed, where measured
    m = [int(k) for k in theirs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6), sharex=True)
    top.plot(n, [r["load"][str(k)]["tokens_per_second"] for k in n], "o-",
             label="minigpt")
    if theirs:
        top.plot(m, [theirs[str(k)]["tokens_per_second"] for k in m], "^--",
                 color="C3", label="llama-server")
        top.legend(fontsize=8)
    top.set(ylabel="new tokens per second, all clients", xscale="log")
    top.set_title("The server under load (64-token prompts, 64 new tokens)",
                  fontsize=10)
    for key, style in (("ttft", "o-"), ("tbt", "s-")):
        for q, alpha in (("p50", 1.0), ("p95", 0.5)):
            bottom.plot(n, [r["load"][str(k)][f"{key}_{q}"] for k in n], style,
                        alpha=alpha, label=f"{key.upper()} {q}")
    if theirs:
        bottom.plot(m, [theirs[str(k)]["ttft_p50"] for k in m], "^--", color="C3",
                    label="llama TTFT p50")
    bottom.set(xscale="log", yscale="log", ylabel="seconds",
               xlabel="concurrent clients", xticks=n, xticklabels=[str(k) for k in n])
    bottom.legend(fontsize=8)
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(chart_path("serve-load"), format="svg", metadata={"Date": None})
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clients"]:  # the child of load_in_child
        url, n, rounds, new = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(load_run(url, n, rounds, new)))
    else:
        run()
