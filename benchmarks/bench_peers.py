"""minigpt against llama.cpp, the C++ engine a CPU user would pick, in one run.

python -m benchmarks peers [--quick]. llama.cpp's sources come from the
llama-cpp-python source distribution on PyPI (it vendors llama.cpp with its
`convert_hf_to_gguf.py` and `gguf-py`), pinned by version and SHA-256 and
fetched by pip. `llama-bench`, `llama-quantize` and `llama-server` (which the
serve benchmark runs) are built with CMake once, into the git-ignored folder
.cache/peers/ (about 10 minutes on 2 cores); later runs reuse them.

Three checkpoints with random weights: GPT-2 124M's shape (transformers'
`GPT2LMHeadModel(GPT2Config())` after `torch.manual_seed(0)`), the one the
decode benchmark uses, SmolLM2 135M's and TinyLlama 1.1B's shapes
(`LlamaForCausalLM`; the demo LLaMA's tokenizer files, which the converter pads to
the vocabulary), each converted to GGUF F32 and Q8_0 by the vendored converter.
GPT-2 and SmolLM2 are also made Q4_K_M by llama.cpp's `llama-quantize`, and that
one file is what both engines run (minigpt through `minigpt.load_model`, its blocks
multiplied as stored). Two measures, at 1 and at 2 threads, the
engines taking turns in every round: decode, 128 tokens from an empty context
(llama-bench's tg128; for minigpt, one prompt token then 128 steps), and prefill,
a 512-token prompt to the first new token (llama-bench's pp512; for minigpt, the
time until `generate` yields its first token). minigpt runs as
`generate --threads N [--quantize q8_0]` sets it up. Beside them, the peak
resident memory of a fresh process decoding the q8_0 checkpoint. The medians and
their ratios are saved to benchmarks/results/peers.json with llama.cpp's commit
(GPT-2's at the top level, as before, TinyLlama's and SmolLM2's under their
names), and GPT-2's
decode figures are drawn as docs/assets/charts/peers-decode.svg.

Skipped, with the reason printed, in a --quick run, and where CMake, a C++
compiler, PyTorch or transformers is missing, or pip cannot reach the package
index.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ROOT,
    chart_path,
    machine_caption,
    pyplot,
    save_results,
    settle,
)

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CACHE = ROOT / ".cache" / "peers"
NEW_TOKENS = 128
PROMPT_TOKENS = 512
THREADS = (1, 2)
# TinyLlama-1.1B's shape (its config.json), random weights
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                 num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False)
# alternating rounds per model: TinyLlama's 4.4 GB of float32 take minutes a round
ROUNDS = {"gpt2-124m": 3, "smollm2-135m": 3, "tinyllama-1.1b": 1}
# result keys (no dots, so a page can name them) -> chart labels
LABELS = {"llamacpp_f32": "llama.cpp F32", "llamacpp_q8_0": "llama.cpp Q8_0",
          "llamacpp_q4_k_m": "llama.cpp Q4_K_M",
          "minigpt_float32": "minigpt float32", "minigpt_q8_0": "minigpt q8_0",
          "minigpt_q4_k_m": "minigpt Q4_K_M"}
# SmolLM2-135M's shape (its config.json), random weights: 576 wide, so llama.cpp's
# Q4_K_M holds mostly Q5_0 (rows that are not a multiple of 256)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True)
FOUR_BIT = ("gpt2-124m", "smollm2-135m")  # the models also timed in Q4_K_M


class Skip(Exception):
    """The peer benchmark cannot run here; the message says why."""


def missing_tools() -> list[str]:
    """What this benchmark needs that the machine lacks."""
    missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler")
    for module in ("torch", "transformers"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return missing


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def fetch_sources() -> Path:
    """llama.cpp's source tree from the pinned llama-cpp-python sdist."""
    source = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if (source / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return source / "vendor" / "llama.cpp"
    CACHE.mkdir(parents=True, exist_ok=True)
    requirement = CACHE / "requirement.txt"
    requirement.write_text(
        f"llama-cpp-python=={LLAMA_CPP_PYTHON} --hash=sha256:{SDIST_SHA256}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "--require-hashes", "-r", str(requirement), "-d", str(CACHE)],
        capture_output=True, text=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if result.returncode != 0 or not sdist.exists():
        raise Skip(f"pip could not fetch llama-cpp-python {LLAMA_CPP_PYTHON}: "
                   f"{result.stderr.strip().splitlines()[-1:]}")
    if sha256(sdist) != SDIST_SHA256:  # pip checked it; check what is on disk too
        sdist.unlink()
        raise Skip(f"{sdist.name} does not have the pinned SHA-256")
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE, filter="data")
    return source / "vendor" / "llama.cpp"


def llama_cpp_commit() -> str:
    """The llama.cpp commit the sdist vendors, from its changelog's newest entry."""
    changelog = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "CHANGELOG.md"
    match = re.search(r"llama\.cpp@([0-9a-f]{7,40})", changelog.read_text("utf-8"))
    return match.group(1) if match else "unknown"


TOOLS = ("llama-bench", "llama-quantize", "llama-server")


def build_llama_cpp(source: Path, targets: tuple[str, ...] = TOOLS) -> Path:
    """Build llama.cpp's tools once (native CPU flags, no network code: no curl,
    no OpenSSL, no web page fetched for the server); the folder holding them."""
    build = CACHE / f"build-{LLAMA_CPP_PYTHON}"
    if all((build / "bin" / target).exists() for target in targets):
        return build / "bin"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
             "-DBUILD_SHARED_LIBS=OFF"]
    print(f"[peers] building {', '.join(targets)} (once; about 10 minutes on 2 "
          "cores)", flush=True)
    for command in (["cmake", "-S", str(source), "-B", str(build), *flags],
                    ["cmake", "--build", str(build), "--target", *targets,
                     "-j", str(os.cpu_count() or 1)]):
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return build / "bin"


def build_llama_bench(source: Path) -> Path:
    """llama-bench's path, built with the other tools (which lie beside it)."""
    return build_llama_cpp(source) / "llama-bench"


def save_checkpoint(folder: Path) -> None:
    """Random GPT-2 124M in transformers' layout, with the vocabulary files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).eval().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])  # transformers 5 omits it
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    vocab = ROOT / "data" / "gpt2"
    if not (vocab / "encoder.json").exists():
        raise Skip(f"the GPT-2 vocabulary is missing from {vocab}: run make install")
    shutil.copy(vocab / "encoder.json", folder / "vocab.json")
    shutil.copy(vocab / "vocab.bpe", folder / "merges.txt")


def save_tinyllama(folder: Path, shape: dict | None = None) -> None:
    """Random weights of TinyLlama 1.1B's shape (or another), the demo tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from minigpt import DEMO_LLAMA

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(shape or TINYLLAMA))).eval()
    model.save_pretrained(folder)
    del model
    shutil.copy(Path(DEMO_LLAMA) / "tokenizer_config.json", folder)
    # the demo tokenizer, its vocabulary padded to the shape's size: llama.cpp
    # refuses an embedding with more rows than the tokenizer has tokens
    tokenizer = json.loads((Path(DEMO_LLAMA) / "tokenizer.json").read_text("utf-8"))
    vocab = tokenizer["model"]["vocab"]
    size = (shape or TINYLLAMA)["vocab_size"]
    vocab.update({f"<unused_{i}>": i for i in range(len(vocab), size)})
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")


def quantize_q4_k_m(binary: Path, f32: Path) -> Path:
    """llama.cpp's Q4_K_M of an F32 GGUF, by its own llama-quantize."""
    target = f32.with_name(f32.name.replace("-f32", "-q4_k_m"))
    if not target.exists():
        subprocess.run([str(binary.with_name("llama-quantize")), str(f32), str(target),
                        "Q4_K_M"], check=True, capture_output=True)
    return target


def convert(source: Path, checkpoint: Path, kind: str, out: Path) -> Path:
    """The checkpoint as GGUF (kind f32 or q8_0), by llama.cpp's own converter."""
    target = out / f"{checkpoint.name}-{kind}.gguf"
    if not target.exists():
        env = dict(os.environ, PYTHONPATH=str(source / "gguf-py"))
        subprocess.run([sys.executable, str(source / "convert_hf_to_gguf.py"),
                        str(checkpoint), "--outtype", kind, "--outfile", str(target)],
                       check=True, env=env, capture_output=True)
    return target


def llama_tok_s(binary: Path, gguf: Path, threads: int, prompt: int = 0) -> float:
    """llama-bench's tokens per second, one repetition: tg128, or pp<prompt>."""
    result = subprocess.run(
        [str(binary), "-m", str(gguf), "-p", str(prompt),
         "-n", "0" if prompt else str(NEW_TOKENS),
         "-t", str(threads), "-r", "1", "-o", "json"],
        check=True, capture_output=True, text=True)
    return float(json.loads(result.stdout)[0]["avg_ts"])


def minigpt_tok_s(model, threads: int, blas: int, prompt: int = 0) -> float:
    """minigpt.generate's tokens per second: 128 steps from one token, or a
    prompt of `prompt` tokens to the first new one; `threads` for our kernels and
    `blas` for the BLAS library."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from minigpt import generate
    from minigpt.threads import set_kernel_threads

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, prompt or 1)
    with threadpool_limits(limits=blas, user_api="blas"):
        set_kernel_threads(threads)
        start = time.perf_counter()
        if prompt:
            next(iter(generate(model, ids.tolist(), max_new_tokens=1)))
            n = prompt
        else:
            n = sum(1 for _ in generate(model, ids.tolist(), NEW_TOKENS))
        seconds = time.perf_counter() - start
    set_kernel_threads(1)
    return n / seconds


def engines(source: Path, binary: Path, checkpoint: Path, work: Path) -> dict:
    """(name, measure) -> function(threads) -> tok/s, for every engine and format
    compared on one checkpoint; measure is "decode" or "prefill"."""
    from minigpt import load_model
    from minigpt.kernels import kernel_model
    from minigpt.machine_code import machine_code
    from minigpt.quantize import quantize_model

    machine_code()  # compiled once, before any timing
    ggufs = {kind: convert(source, checkpoint, kind, work) for kind in ("f32", "q8_0")}
    q4 = checkpoint.name in FOUR_BIT
    if q4:  # the same file for both engines, in llama.cpp's own 4-bit mix
        ggufs["q4_k_m"] = quantize_q4_k_m(binary, ggufs["f32"])
        four = load_model(ggufs["q4_k_m"])  # its blocks multiplied as stored
    model = load_model(checkpoint)
    # what `python -m minigpt generate --threads t` runs: our kernels on our
    # threads (BLAS, for a prompt, keeps one inside each)
    fast, q8 = kernel_model(model), quantize_model(model, "q8_0")
    found = {}
    for measure, prompt in (("decode", 0), ("prefill", PROMPT_TOKENS)):
        for kind, gguf in ggufs.items():
            found[f"llamacpp_{kind}", measure] = functools.partial(
                lambda t, g, p: llama_tok_s(binary, g, t, p), g=gguf, p=prompt)

        found["minigpt_float32", measure] = functools.partial(
            lambda t, p: minigpt_tok_s(fast, t, 1, p), p=prompt)
        found["minigpt_q8_0", measure] = functools.partial(
            lambda t, p: minigpt_tok_s(q8, t, 1, p), p=prompt)
        if q4:
            found["minigpt_q4_k_m", measure] = functools.partial(
                lambda t, p: minigpt_tok_s(four, t, 1, p), p=prompt)
    return found


def peak_rss_q8_0(checkpoint: Path, work: Path) -> dict:
    """Peak resident memory of a fresh process decoding the q8_0 checkpoint."""
    from benchmarks.bench_quant import peak_rss
    from minigpt.quantize import quantize_checkpoint

    folder = quantize_checkpoint(checkpoint, work / f"{checkpoint.name}-minigpt-q8_0")
    return peak_rss(folder, "q8_0", 16)


def measure(run: dict, rounds: int) -> dict[str, dict[str, dict[int, float]]]:
    """measure -> name -> threads -> median tok/s, engines taking turns."""
    samples: dict = {key: {t: [] for t in THREADS} for key in run}
    for r in range(rounds):
        for threads in THREADS:
            for key, tok_s in run.items():
                settle()  # each from idle thread pools
                samples[key][threads].append(tok_s(threads))
        print(f"[peers] round {r + 1}/{rounds} done", flush=True)
    out: dict = {}
    for (name, kind), by in samples.items():
        out.setdefault(kind, {})[name] = {t: statistics.median(v)
                                          for t, v in by.items()}
    return out


def figures(tok_s: dict, rss: dict) -> dict:
    """One checkpoint's results: decode and prefill tok/s, their ratios, memory."""
    return {"tok_s": as_keys(tok_s["decode"]), "ratios": ratios(tok_s["decode"]),
            "prefill_tok_s": as_keys(tok_s["prefill"]),
            "prefill_ratios": ratios(tok_s["prefill"]), "q8_0_memory": rss}


def as_keys(tok_s: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    return {name: {str(t): v for t, v in by.items()} for name, by in tok_s.items()}


def ratios(tok_s: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """minigpt over llama.cpp, float32 against F32 and q8_0 against Q8_0."""
    pairs = {"float32_vs_f32": ("minigpt_float32", "llamacpp_f32"),
             "q8_0_vs_q8_0": ("minigpt_q8_0", "llamacpp_q8_0"),
             "q4_k_m_vs_q4_k_m": ("minigpt_q4_k_m", "llamacpp_q4_k_m"),
             "q4_k_m_vs_own_q8_0": ("minigpt_q4_k_m", "minigpt_q8_0")}
    return {key: {str(t): tok_s[ours][t] / tok_s[theirs][t] for t in THREADS}
            for key, (ours, theirs) in pairs.items()
            if ours in tok_s and theirs in tok_s}


def redraw(record: dict) -> None:
    """Draw the chart again from a stored results file (`--replot`)."""
    tok_s = {name: {int(t): v for t, v in by.items()}
             for name, by in record["results"]["tok_s"].items()}
    draw(tok_s, record["machine"])


def draw(tok_s: dict[str, dict[int, float]], machine: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(tok_s)
    width = 0.8 / len(THREADS)
    for k, threads in enumerate(THREADS):
        values = [tok_s[n][threads] for n in names]
        bars = ax.barh([i + k * width for i in range(len(names))], values, width,
                       label=f"{threads} thread{'s' if threads > 1 else ''}")
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=9)
    ax.set_yticks([i + width / 2 for i in range(len(names))],
                  [LABELS[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(f"decode tokens/s, GPT-2 124M shape, {NEW_TOKENS} tokens "
                  "(higher is better)")
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title("minigpt and llama.cpp, taking turns in one run", fontsize=11)
    fig.text(0.01, 0.01, machine_caption(machine), fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(chart_path("peers-decode"))
    plt.close(fig)


def run(quick: bool = False) -> None:
    if quick:  # a smoke run must not spend ten minutes compiling llama.cpp
        print("[peers] skipped: a quick run does not build or time llama.cpp")
        return
    missing = missing_tools()
    if missing:
        print(f"[peers] skipped: needs {', '.join(missing)}")
        return
    try:
        source = fetch_sources()
        binary = build_llama_bench(source)
        found = {}
        for name, save in (("gpt2-124m", save_checkpoint),
                           ("smollm2-135m", functools.partial(save_tinyllama,
                                                              shape=SMOLLM2)),
                           ("tinyllama-1.1b", save_tinyllama)):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                save(work / name)
                rounds = ROUNDS[name]
                tok_s = measure(engines(source, binary, work / name, work), rounds)
                found[name] = {**figures(tok_s, peak_rss_q8_0(work / name, work)),
                               "rounds": rounds}
    except Skip as why:
        print(f"[peers] skipped: {why}")
        return
    results = {
        "model": "GPT-2 124M shape, random weights",
        "new_tokens": NEW_TOKENS,
        "prompt_tokens": PROMPT_TOKENS,
        "llama_cpp": {"llama_cpp_python": LLAMA_CPP_PYTHON,
                      "commit": llama_cpp_commit(), "sdist_sha256": SDIST_SHA256},
        **found["gpt2-124m"],
        "tinyllama": {"model": "TinyLlama 1.1B shape, random weights",
                      **found["tinyllama-1.1b"]},
        "smollm2": {"model": "SmolLM2 135M shape, random weights",
                    **found["smollm2-135m"]},
    }
    path = save_results("peers", results, command="python -m benchmarks peers")
    decode = {n: {int(t): v for t, v in by.items()}
              for n, by in results["tok_s"].items()}
    draw(decode, json.loads(path.read_text())["machine"])
