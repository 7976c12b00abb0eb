"""Write the demo models as GGUF files, as llama.cpp's converter would lay them out.

The engine only reads GGUF; the book, the benchmarks and the tests need files to
read without llama.cpp or gguf-py, so this small writer makes them: version 3,
32-byte alignment, metadata of strings, bools, u32, f32 and arrays, and tensors in
F32, F16, Q8_0, Q4_0, Q5_0 or Q4_K (quantised by minigpt.kquants). It converts a
GPT-2 folder (tokenizer: vocab.json + merges.txt, "gpt-2" pre-tokenizer) and a
LLaMA folder (q/k rows permuted to Meta's interleaved order, as the converter
does; no tokenizer: the folder's own tokenizer.json is used beside it).

Usage: python -m tools.gguf_export FOLDER OUT.gguf [TYPE]
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

from minigpt.kquants import (
    GGML_TYPES,
    quantize_q4_0,
    quantize_q4_k,
    quantize_q8_0,
)
from minigpt.weights import read_json, read_safetensors

TYPE_IDS = {t.name: kind for kind, t in GGML_TYPES.items()}
QUANTISE = {"F32": lambda x: np.ascontiguousarray(x, "<f4").view(np.uint8).ravel(),
            "F16": lambda x: np.ascontiguousarray(x, "<f2").view(np.uint8).ravel(),
            "Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_K": quantize_q4_k}


def pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def pack_value(value) -> bytes:
    """A metadata value with its type id: str 8, bool 7, u32 4, f32 6, array 9."""
    if isinstance(value, str):
        return struct.pack("<I", 8) + pack_string(value)
    if isinstance(value, bool):
        return struct.pack("<IB", 7, value)
    if isinstance(value, int):
        return struct.pack("<II", 4, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    items = list(value)
    if items and isinstance(items[0], str):
        return struct.pack("<IIQ", 9, 8, len(items)) + b"".join(map(pack_string, items))
    kind, fmt = (5, "<i4") if all(isinstance(v, int) for v in items) else (6, "<f4")
    return struct.pack("<IIQ", 9, kind, len(items)) + np.asarray(items, fmt).tobytes()


def write_gguf(path: Path, metadata: dict, tensors: dict[str, tuple[str, np.ndarray]],
               align: int = 32) -> Path:
    """tensors: name -> (type name, float32 array in NumPy order)."""
    head = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    head += [pack_string(k) + pack_value(v) for k, v in metadata.items()]
    blobs, offset = [], 0
    for name, (kind, x) in tensors.items():
        raw = QUANTISE[kind](np.asarray(x, np.float32))
        head.append(pack_string(name) + struct.pack("<I", x.ndim)
                    + struct.pack(f"<{x.ndim}Q", *x.shape[::-1])
                    + struct.pack("<IQ", TYPE_IDS[kind], offset))
        pad = -len(raw) % align
        blobs.append(raw.tobytes() + bytes(pad))
        offset += len(raw) + pad
    header = b"".join(head)
    Path(path).write_bytes(header + bytes(-len(header) % align) + b"".join(blobs))
    return Path(path)


def pick_type(name: str, x: np.ndarray, kind: str) -> str:
    """Matrices in kind where their rows allow it (else Q8_0, else F32)."""
    if x.ndim != 2 or kind in ("F32", "F16"):
        return "F32" if x.ndim != 2 else kind
    for choice in (kind, "Q8_0"):
        if x.shape[1] % GGML_TYPES[TYPE_IDS[choice]].block == 0:
            return choice
    return "F32"


def gpt2_file(folder: Path) -> tuple[dict, dict]:
    """A GPT-2 folder's metadata (tokenizer included) and GGUF-named tensors."""
    raw = read_json(folder / "config.json")
    meta = {"general.architecture": "gpt2", "general.alignment": 32,
            "gpt2.context_length": raw["n_positions"],
            "gpt2.embedding_length": raw["n_embd"], "gpt2.block_count": raw["n_layer"],
            "gpt2.feed_forward_length": 4 * raw["n_embd"],
            "gpt2.attention.head_count": raw["n_head"],
            "gpt2.attention.layer_norm_epsilon": float(raw["layer_norm_epsilon"])}
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [line for line in (folder / "merges.txt").read_text(
        encoding="utf-8").splitlines() if line and not line.startswith("#version")]
    tokens = sorted(vocab, key=vocab.get)
    meta.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                 "tokenizer.ggml.tokens": tokens,
                 "tokenizer.ggml.token_type": [1] * len(tokens),
                 "tokenizer.ggml.merges": merges,
                 "tokenizer.ggml.eos_token_id": raw["eos_token_id"]})
    names = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm",
             "ln_1": "attn_norm", "attn.c_attn": "attn_qkv",
             "attn.c_proj": "attn_output", "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up",
             "mlp.c_proj": "ffn_down"}
    tensors = {}
    for name, x in read_safetensors(folder / "model.safetensors").items():
        stem, suffix = name.removeprefix("transformer.").rsplit(".", 1)
        if stem.startswith("h."):
            _, i, part = stem.split(".", 2)
            x = x.T if x.ndim == 2 else x  # Conv1D [in, out] -> [out, in]
            tensors[f"blk.{i}.{names[part]}.{suffix}"] = np.asarray(x, np.float32)
        elif stem in names:
            tensors[f"{names[stem]}.{suffix}"] = np.asarray(x, np.float32)
    return meta, tensors


def llama_file(folder: Path) -> tuple[dict, dict]:
    """A LLaMA folder's metadata (no tokenizer) and GGUF-named tensors."""
    raw = read_json(folder / "config.json")
    a, H, KV = "llama.", raw["num_attention_heads"], raw["num_key_value_heads"]
    meta = {"general.architecture": "llama",
            a + "context_length": raw["max_position_embeddings"],
            a + "embedding_length": raw["hidden_size"],
            a + "block_count": raw["num_hidden_layers"],
            a + "feed_forward_length": raw["intermediate_size"],
            a + "attention.head_count": H, a + "attention.head_count_kv": KV,
            a + "attention.key_length": raw.get("head_dim") or
            raw["hidden_size"] // H,
            a + "attention.layer_norm_rms_epsilon": float(raw["rms_norm_eps"]),
            a + "rope.freq_base": float(raw.get("rope_theta", 10000.0)),
            "tokenizer.ggml.eos_token_id": raw["eos_token_id"]}
    names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    tensors = {}
    for name, x in read_safetensors(folder / "model.safetensors").items():
        stem, suffix = name.removeprefix("model.").rsplit(".", 1)
        x = np.asarray(x, np.float32)
        if stem.startswith("layers."):
            _, i, part = stem.split(".", 2)
            if part in ("self_attn.q_proj", "self_attn.k_proj"):  # to Meta's pairs
                heads = H if part.endswith("q_proj") else KV
                d = x.shape[0] // heads
                x = x.reshape(heads, 2, d // 2, -1).swapaxes(1, 2).reshape(x.shape)
            tensors[f"blk.{i}.{names[part]}.{suffix}"] = x
        elif not (stem == "lm_head" and raw.get("tie_word_embeddings")):
            tensors[f"{names[stem]}.{suffix}"] = x
    return meta, tensors


def export_gguf(folder: str | Path, path: str | Path, kind: str = "F32") -> Path:
    """Write a GPT-2 or LLaMA checkpoint folder as a GGUF file of matrices in kind."""
    folder = Path(folder)
    arch = read_json(folder / "config.json").get("model_type", "gpt2")
    meta, tensors = (gpt2_file if arch == "gpt2" else llama_file)(folder)
    typed = {n: (pick_type(n, x, kind), x) for n, x in tensors.items()}
    return write_gguf(Path(path), meta, typed)


if __name__ == "__main__":
    print(export_gguf(sys.argv[1], sys.argv[2], *sys.argv[3:4]))
