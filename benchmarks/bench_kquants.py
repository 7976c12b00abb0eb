"""What each GGUF block format costs in accuracy (chapter 34): perplexity.

python -m benchmarks kquants [--quick]. Writes benchmarks/results/kquants.json:
for the two demo models (GPT-2 and LLaMA architecture, both trained on Tiny
Shakespeare's first 90%) and a LLaMA of llama2.c's stories15M shape trained
on the same split, the perplexity on the held-out last 10% with every matrix
stored as F32, Q8_0, Q4_0 or Q4_K (quantised and decoded by minigpt.kquants), and
each format's bits per weight. The models are 192 and 288 wide, not multiples
of Q4_K's 256, so for Q4_K each row is padded with zeros to whole super-blocks (a
GGUF file could not hold that; the format's accuracy is what is measured).

The stories-sized model is not shipped: the first run trains it into
.cache/stories15m with tools/train_demo.py (PyTorch; about 35 minutes on two
cores), later runs reuse it. Deterministic past that: no timing, no randomness.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.common import save_results
from minigpt import DEMO_LLAMA, DEMO_MODEL
from minigpt.kquants import (
    GGML_TYPES,
    dequantize,
    quantize_q4_0,
    quantize_q4_k,
    quantize_q8_0,
)
from minigpt.models import load_model, load_tokenizer
from minigpt.threads import map_matrices

ROOT = Path(__file__).resolve().parent.parent
QUANTISERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_K": quantize_q4_k}
KINDS = {t.name: kind for kind, t in GGML_TYPES.items()}
# llama2.c's stories15M shape (288 wide, 6 layers of 6 heads, SwiGLU 768) with
# the demo's 1,024-token vocabulary, trained for 1,000 steps of 16 x 256 tokens
STORIES = ROOT / ".cache" / "stories15m"
STORIES_TRAINING = ("--arch", "llama", "--n-embd", "288", "--n-layer", "6",
                    "--n-head", "6", "--n-kv-head", "6", "--n-hidden", "768",
                    "--n-ctx", "256", "--batch", "16", "--steps", "1000",
                    "--warmup", "50", "--lr", "2e-3", "--threads", "2")


def round_trip(rows: np.ndarray, name: str) -> np.ndarray:
    """rows (R, K) stored as a block format and read back, as float32."""
    if name == "F32":
        return np.asarray(rows, np.float32)
    block = GGML_TYPES[KINDS[name]].block
    R, K = rows.shape
    padded = np.zeros((R, -(-K // block) * block), np.float32)
    padded[:, :K] = rows
    back = dequantize(QUANTISERS[name](padded), KINDS[name], padded.shape)
    return back[:, :K]


def perplexity(model, ids: np.ndarray, n_ctx: int) -> float:
    """exp(mean negative log-likelihood) over windows of n_ctx + 1 tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, n_ctx):
        window = ids[start:start + n_ctx + 1]
        if len(window) < 2:
            break
        logits = model.forward(window[:-1]).astype(np.float64)  # [T, V]
        top = logits.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        total += float((logz - logits[np.arange(len(logits)), window[1:]]).sum())
        count += len(logits)
    return math.exp(total / count)


def stories_model() -> Path:
    """The stories-sized model's folder, trained on first use."""
    if not (STORIES / "model.safetensors").exists():
        print(f"training the stories-sized model into {STORIES} (about 35 "
              f"minutes on two cores)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "tools" / "train_demo.py"),
                        *STORIES_TRAINING, "--out", str(STORIES)], check=True)
    return STORIES


def run(quick: bool = False) -> dict:
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9):]  # the split the demo models trained on
    results: dict = {"models": {}, "bits_per_weight": {
        name: 8 * GGML_TYPES[KINDS[name]].size / GGML_TYPES[KINDS[name]].block
        for name in ("F32", "Q8_0", "Q4_0", "Q4_K")}}
    for folder in (DEMO_MODEL, DEMO_LLAMA) + (() if quick else (stories_model(),)):
        model, tok = load_model(folder), load_tokenizer(folder)
        ids = np.array(tok.encode(held_out[: 600 if quick else 30000]))
        row = {"tokens": int(len(ids))}
        for name in ("F32", "Q8_0", "Q4_0", "Q4_K"):
            params = map_matrices(model.params, lambda r, n=name: round_trip(r, n))
            row[name] = perplexity(replace(model, params=params), ids,
                                   model.config.n_ctx)
        for name in ("Q8_0", "Q4_0", "Q4_K"):
            row[f"{name}_increase"] = row[name] / row["F32"] - 1
        if folder == STORIES:  # how it was made, from its training log
            log = json.loads((folder / "training_log.json").read_text())
            row |= {"parameters": log["n_params"], "steps": log["steps"][-1],
                    "training_minutes": log["train_minutes"],
                    "val_loss": log["final_val_loss"]}
        results["models"][folder.name] = row
        print(folder.name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    save_results("kquants", results, command="python -m benchmarks kquants")
    return results
