"""Scaled-down checkpoints in the layouts of real LLaMA-family models, written here.

No reference library and no download: random weights saved as safetensors (F32,
F16 or BF16, in one file or in shards with model.safetensors.index.json), config
files as the hub's models write them, and small tokenizer.json files built by
hand in both families: byte-level BPE with ChatML control tokens (SmolLM2) and
SentencePiece-style BPE with byte fallback (TinyLlama), with chat templates in
each model's format.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from minigpt.tokenizer import bytes_to_unicode

CHATML = ("{% for message in messages %}"
          "{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a small helpful model.<|im_end|>\n' }}"
          "{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ZEPHYR = ("{% for message in messages %}\n"
          "{% if message['role'] == 'user' %}\n"
          "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'system' %}\n"
          "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n"
          "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n"
          "{{ '<|assistant|>' }}\n"
          "{% endif %}\n{% endfor %}")


def byte_level_tokenizer() -> tuple[dict, dict]:
    """A GPT-2-style byte-level tokenizer.json with ChatML special tokens."""
    show = bytes_to_unicode()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for b in range(256):
        vocab[show[b]] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("o", "u")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for c, i in list(vocab.items())[:3]]
    spec = {"version": "1.0", "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True,
                               "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                        "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab,
                      "merges": [list(m) for m in merges]}}
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>",
              "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
              "add_prefix_space": False, "model_max_length": 64}
    return spec, config


def sentencepiece_tokenizer() -> tuple[dict, dict]:
    """A Llama-2-style tokenizer.json: ▁ for spaces, byte fallback, BOS template."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁abcdefghijklmnopqrstuvwxyz<|>":
        vocab[ch] = len(vocab)
    merges = ["▁ t", "h e", "▁t he", "e r", "u s", "▁ us", "▁us er", "< |", "| >"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for c, i in list(vocab.items())[:3]]
    spec = {"version": "1.0", "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": None,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1],
                                           "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
              "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "legacy": False, "model_max_length": 64}
    return spec, config


DTYPES = {"F32": "<f4", "F16": "<f2"}


def save_safetensors(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    """safetensors by hand: 8-byte header size, JSON header, raw little-endian data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in tensors.items():
        if dtype == "BF16":  # the top 16 bits of float32, rounded to nearest even
            bits = np.ascontiguousarray(x, "<f4").view("<u4").astype(np.uint64)
            data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(x, DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(x.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def llama_tensors(rng: np.random.Generator, vocab: int, C: int, layers: int,
                  heads: int, kv_heads: int, hidden: int, tied: bool) -> dict:
    """Random LlamaForCausalLM tensors under their Hugging Face names."""
    d = C // heads
    shapes = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (kv_heads * d, C),
              "self_attn.v_proj": (kv_heads * d, C), "self_attn.o_proj": (C, C),
              "mlp.gate_proj": (hidden, C), "mlp.up_proj": (hidden, C),
              "mlp.down_proj": (C, hidden), "input_layernorm": (C,),
              "post_attention_layernorm": (C,)}
    out = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, C))}
    for i in range(layers):
        for name, shape in shapes.items():
            scale = 0.3 if len(shape) == 2 else 0.1
            w = rng.normal(0, scale, shape) + (len(shape) == 1)
            out[f"model.layers.{i}.{name}.weight"] = w
    out["model.norm.weight"] = 1 + rng.normal(0, 0.1, C)
    if not tied:
        out["lm_head.weight"] = rng.normal(0, 0.5, (vocab, C))
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_llama(folder: Path, family: str, chat: bool = False, shards: int = 1,
                dtype: str = "BF16", seed: int = 0) -> Path:
    """A scaled-down LLaMA checkpoint: SmolLM2's layout ("byte-level") or
    TinyLlama's ("sentencepiece"), optionally with a chat template and shards."""
    spec, tok_config = (byte_level_tokenizer() if family == "byte-level"
                        else sentencepiece_tokenizer())
    if chat:
        tok_config["chat_template"] = CHATML if family == "byte-level" else ZEPHYR
    vocab = len(spec["model"]["vocab"])
    tied = family == "byte-level"  # SmolLM2 ties its head, TinyLlama does not
    eos = spec["model"]["vocab"][tok_config["eos_token"]]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "vocab_size": vocab, "hidden_size": 48, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 6,
              "num_key_value_heads": 2, "max_position_embeddings": 64,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
              "hidden_act": "silu", "tie_word_embeddings": tied,
              "bos_token_id": spec["model"]["vocab"][tok_config["bos_token"]],
              "eos_token_id": eos, "torch_dtype": {"BF16": "bfloat16",
                                                   "F16": "float16"}.get(dtype,
                                                                         "float32")}
    tensors = llama_tensors(np.random.default_rng(seed), vocab, 48, 2, 6, 2, 64, tied)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": eos}))
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    write_weights(folder, tensors, shards, dtype)
    return folder


def write_weights(folder: Path, tensors: dict, shards: int, dtype: str) -> None:
    """model.safetensors, or `shards` files and the index naming each tensor's."""
    if shards == 1:
        return save_safetensors(tensors, folder / "model.safetensors", dtype)
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), shards)):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_safetensors({names[i]: tensors[names[i]] for i in part}, folder / file,
                         dtype)
        weight_map.update({names[i]: file for i in part})
    index = {"metadata": {"total_size": sum(t.size * 2 for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
