"""GGUF files written by llama.cpp's own converter (convert_hf_to_gguf.py) from
transformers checkpoints of every supported architecture ≡ transformers.

The converter is the one vendored in the llama.cpp sources that the peers
benchmark unpacks (or $MINIGPT_LLAMA_CPP, a llama.cpp checkout); the tests skip
without it. It converts a folder's tokenizer too, and recognises a byte-level
tokenizer's pre-tokenizer by hashing its output, so the tokenizers here are the
real GPT-2 and Qwen2 vocabularies, rebuilt from llama.cpp's own vocabulary
files, and LLaMA gets a SentencePiece model trained here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import main
from tests.reference import missing, require
from tests.test_tokenizer_json import CORPUS

# each type's bound on the logits, relative to the float32 model's range
BOUNDS = {"f32": 2e-5, "f16": 5e-3, "q8_0": 3e-2}
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
          "<|im_start|>assistant\n{% endif %}")


def llama_cpp() -> Path:
    """A llama.cpp source tree with convert_hf_to_gguf.py, or skip."""
    if os.environ.get("MINIGPT_LLAMA_CPP"):
        found = [Path(os.environ["MINIGPT_LLAMA_CPP"])]
    else:
        peers = Path(__file__).resolve().parent.parent / ".cache" / "peers"
        found = sorted(peers.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not found or not (found[-1] / "convert_hf_to_gguf.py").is_file():
        missing("llama.cpp's converter is unpacked by `python -m benchmarks "
                "peers` (or set MINIGPT_LLAMA_CPP to a llama.cpp checkout)")
    return found[-1]


def convert(source: Path, folder: Path, outtype: str) -> Path:
    """folder -> folder/model-<outtype>.gguf by llama.cpp's converter."""
    out = folder / f"model-{outtype}.gguf"
    done = subprocess.run(
        [sys.executable, str(source / "convert_hf_to_gguf.py"), str(folder),
         "--outtype", outtype, "--outfile", str(out)],
        env=dict(os.environ, PYTHONPATH=str(source / "gguf-py")),
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def vocab_of(source: Path, name: str) -> tuple[list[str], list[int], list[str]]:
    """Tokens, types and merges of llama.cpp's models/ggml-vocab-<name>.gguf."""
    gguf = require("gguf")
    reader = gguf.GGUFReader(source / "models" / f"ggml-vocab-{name}.gguf")
    return tuple(reader.fields[f"tokenizer.ggml.{k}"].contents()
                 for k in ("tokens", "token_type", "merges"))


def gpt2_tokenizer(source: Path, folder: Path) -> int:
    tokens, _, merges = vocab_of(source, "gpt-2")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in
                                                   enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(tokens)


def qwen2_tokenizer(source: Path, folder: Path) -> int:
    """Qwen2's tokenizer.json, rebuilt from its tokens, types and merges."""
    tokens, types, merges = vocab_of(source, "qwen2")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == 3]
    vocab = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True))
             if k == 1}
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}
    spec = {"version": "1.0", "added_tokens": added, "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX},
                 "behavior": "Isolated", "invert": False}, level]},
            "post_processor": level, "decoder": level,
            "model": {"type": "BPE", "vocab": vocab, "merges": merges,
                      "byte_fallback": False, "ignore_merges": False}}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
         "bos_token": None, "chat_template": CHATML}))
    return len(tokens)


def llama_tokenizer(folder: Path) -> int:
    spm = require("sentencepiece")
    (folder / "corpus.txt").write_text(CORPUS[:50_000], encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
        vocab_size=512, model_type="bpe", byte_fallback=True, minloglevel=2)
    (folder / "corpus.txt").unlink()
    return 512


def checkpoint(source: Path, folder: Path, arch: str):
    """A random transformers model of arch with a real tokenizer, saved."""
    torch = require("torch")
    transformers = require("transformers")
    folder.mkdir()
    vocab = {"gpt2": lambda: gpt2_tokenizer(source, folder),
             "qwen2": lambda: qwen2_tokenizer(source, folder),
             "qwen3": lambda: qwen2_tokenizer(source, folder),
             "llama": lambda: llama_tokenizer(folder)}[arch]()
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=64)
    kinds = {"gpt2": ("GPT2Config", "GPT2LMHeadModel",
                      dict(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4,
                           n_positions=64)),
             "llama": ("LlamaConfig", "LlamaForCausalLM", shape),
             "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
                       {**shape, "tie_word_embeddings": True}),
             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**shape, "head_dim": 32})}
    config_name, model_name, kwargs = kinds[arch]
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(
        getattr(transformers, config_name)(**kwargs)).eval()
    with torch.no_grad():  # norm gains and biases away from 1 and 0
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    if arch == "gpt2":  # the converter reads n_ctx, which transformers 5 omits
        raw = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**raw, "n_ctx": 64}))
    return model


@pytest.mark.reference
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "qwen3"])
def test_converted_files_equal_transformers(tmp_path, arch, capsys):
    torch = require("torch")
    source = llama_cpp()
    ref = checkpoint(source, tmp_path / arch, arch)
    text = "Hello world, this is a test of GGUF files: 12345 ROMEO."
    for outtype, bound in BOUNDS.items():
        if outtype == "f16" and arch != "llama":
            continue  # converting is slow; F16's reading is the same for all
        path = convert(source, tmp_path / arch, outtype)
        tok = minigpt.load_tokenizer(path)
        ids = np.array(tok.encode(text, add_special_tokens=False))
        with torch.no_grad():
            want = ref(torch.from_numpy(ids)[None]).logits[0].numpy()
        got = minigpt.load_model(path).forward(ids)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel < bound, f"{outtype}: relative error {rel:.2e}"
    assert tok.decode(list(ids)) == text
    assert main(["generate", "Hello", "--model", str(path), "--max-new-tokens", "5",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("Hello")
