"""A decode step of a Q4_K_M GGUF model, packed, against Q8_0 and float32 (chapter 36).

python -m benchmarks q4 [--quick]. A model of GPT-2 124M's shape with random weights
is written as a GGUF file in the mix llama.cpp's Q4_K_M gives GPT-2 (llama.cpp's
llama-quant.cpp): the token embedding, which is also the output head, in Q6_K; the fused
attn_qkv in Q5_K; ffn_down in Q6_K in the layers where llama.cpp uses more bits (the
first and last eighth, and every third between) and Q4_K in the others; attn_output
and ffn_up in Q4_K; position embeddings, norms and biases F32. The blocks are random
bytes with small float16 scales, so that building the file takes seconds (the values
do not change the time). Three models are read from it: `load_gguf_blocks` (the
4-bit matrices packed, chapter 36's kernels), `load_gguf` (every tensor decoded to
float32) and that float32 model through `quantize_model(..., "q8_0")` (chapter 30's
kernels). One decode step is `forward_cached` of one token after an 80-token prompt,
repeated at the same position; the variants take turns in every round, at one and at
two of our threads (BLAS at one thread), and each figure is a median. The step's
matrix-vector products are also timed alone (`products_ms`). Writes
benchmarks/results/q4.json.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_threads import POSITION, products, products_ms, step_ms
from benchmarks.common import save_results, settle
from minigpt.block_kernels import block_code, load_gguf_blocks
from minigpt.gguf_models import load_gguf
from minigpt.kquants import GGML_TYPES
from minigpt.quantize import quantize_model
from minigpt.threads import set_kernel_threads
from minigpt.weights import GPTConfig

# bytes per block, and where its float16 scales are with the value given them
SIZES = {"Q4_K": (144, [(0, 2.0**-12), (2, 2.0**-14)]),
         "Q5_K": (176, [(0, 2.0**-13), (2, 2.0**-14)]),
         "Q6_K": (210, [(208, 2.0**-13)])}


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the layers whose ffn_down Q4_K_M keeps in Q6_K."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def random_blocks(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    """Random bytes of `kind` whose float16 scales keep the values small."""
    size, scales = SIZES[kind]
    raw = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
    for at, value in scales:
        raw[:, at:at + 2] = np.array([value], np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_q4_k_m(path: Path, c: GPTConfig, seed: int = 0) -> Path:
    """A GPT-2 of this shape as a GGUF file in Q4_K_M's mix of formats."""
    import gguf

    rng, C = np.random.default_rng(seed), c.n_embd
    w = gguf.GGUFWriter(str(path), "gpt2")
    for key, value in (("context_length", c.n_ctx), ("embedding_length", C),
                       ("block_count", c.n_layer), ("feed_forward_length", 4 * C),
                       ("attention.head_count", c.n_head)):
        w.add_uint32(f"gpt2.{key}", value)
    w.add_float32("gpt2.attention.layer_norm_epsilon", c.layer_norm_epsilon)
    kinds = {k: gguf.GGMLQuantizationType[k] for k in SIZES}
    w.add_tensor("token_embd.weight", random_blocks("Q6_K", c.vocab_size, C, rng),
                 raw_dtype=kinds["Q6_K"])
    w.add_tensor("position_embd.weight",
                 rng.normal(0, 0.01, (c.n_ctx, C)).astype(np.float32))
    for name in ("output_norm", *(f"blk.{i}.{n}" for i in range(c.n_layer)
                                  for n in ("attn_norm", "ffn_norm"))):
        w.add_tensor(f"{name}.weight", np.ones(C, np.float32))
        w.add_tensor(f"{name}.bias", np.zeros(C, np.float32))
    for i in range(c.n_layer):
        down = "Q6_K" if more_bits(i, c.n_layer) else "Q4_K"
        for name, rows, cols, kind in (
                ("attn_qkv", 3 * C, C, "Q5_K"), ("attn_output", C, C, "Q4_K"),
                ("ffn_up", 4 * C, C, "Q4_K"), ("ffn_down", C, 4 * C, down)):
            w.add_tensor(f"blk.{i}.{name}.weight", random_blocks(
                kind, rows, cols, rng), raw_dtype=kinds[kind])
            w.add_tensor(f"blk.{i}.{name}.bias", np.zeros(rows, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def run(quick: bool = False) -> dict:
    rounds, steps = (2, 2) if quick else (9, 7)
    config = GPTConfig(vocab_size=1000, n_ctx=128, n_embd=256, n_layer=2,
                       n_head=4) if quick else GPTConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_q4_k_m(Path(tmp) / "q4_k_m.gguf", config)
        f32 = load_gguf(path)
        models = {"q4_k_m": load_gguf_blocks(path), "q8_0": quantize_model(f32, "q8_0"),
                  "f32": f32}
        caches = {}
        for name, m in models.items():
            caches[name] = m.empty_cache()
            m.forward_cached(np.arange(POSITION), caches[name], last_only=True)
        runs = {f"{n}_{t}": [] for n in models for t in (1, 2) if n != "f32" or t == 1}
        alone = {key: [] for key in runs}
        for _ in range(rounds):
            for key in runs:  # the variants take turns
                name, threads = key.rsplit("_", 1)
                set_kernel_threads(int(threads))
                settle()
                runs[key].append(step_ms(models[name], caches[name], 1, steps))
                alone[key].append(products_ms(models[name], 1, steps))
        set_kernel_threads(1)
        step = {k: statistics.median(v) for k, v in runs.items()}
        only = {k: statistics.median(v) for k, v in alone.items()}
        results = {"shape": "GPT-2 124M (random weights)" if not quick else "quick",
                   "position": POSITION, "machine_code": bool(block_code()),
                   "step_ms": step, "step_ms_rounds": runs, "products_ms": only,
                   "bytes": {n: sum(w.nbytes for w in products(m.params))
                             for n, m in models.items()},
                   "bits_per_weight": {k: 8 * GGML_TYPES[t].size / GGML_TYPES[t].block
                                       for k, t in (("Q4_K", 12), ("Q5_K", 13),
                                                    ("Q6_K", 14), ("Q8_0", 8))},
                   "speedup_vs_q8_0": {t: step[f"q8_0_{t}"] / step[f"q4_k_m_{t}"]
                                       for t in (1, 2)},
                   "products_speedup_vs_q8_0": {
                       t: only[f"q8_0_{t}"] / only[f"q4_k_m_{t}"] for t in (1, 2)},
                   "speedup_vs_f32": step["f32_1"] / step["q4_k_m_1"]}
    save_results("q4", results, command="python -m benchmarks q4")
    return results
