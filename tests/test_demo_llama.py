"""The bundled LLaMA demo: its files, its tokens, and the words it writes.

The golden ids were written once from Hugging Face's LlamaForCausalLM on the shipped
files (greedy decoding, 40 tokens from "ROMEO:" after the tokenizer's BOS), and the
reference test recomputes them from transformers live, so the pinned list is never
our own output. The real-word test runs the command line's sampling defaults
through tools/real_words.py and requires 85% of the words to be words of Tiny
Shakespeare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt.__main__ import main
from minigpt.llama import LlamaModel
from minigpt.tokenizer_json import JsonBPE
from minigpt.weights import read_header
from tests.reference import require

DEMO = minigpt.DEMO_LLAMA
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:"
GOLDEN = [393, 333, 344, 812, 263, 13, 394, 358, 427, 907, 325, 323, 419, 341, 337,
          263, 365, 358, 546, 325, 853, 871, 299, 13, 466, 648, 325, 335, 547, 320,
          364, 333, 344, 812, 364, 333, 344, 812, 263, 13]


def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    """The plainest greedy loop: the whole forward pass, argmax, append."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(np.array(ids))[-1])))
    return ids


def test_demo_files_are_a_small_fp16_llama_checkpoint():
    names = {p.name for p in DEMO.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "MODEL_CARD.md",
            "evaluation.json", "training_log.json"} <= names
    assert sum(p.stat().st_size for p in DEMO.iterdir()) <= 5_000_000
    header, _ = read_header(DEMO / "model.safetensors")
    header.pop("__metadata__", None)
    assert {entry["dtype"] for entry in header.values()} == {"F16"}
    config = json.loads((DEMO / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA


def test_demo_loads_through_the_public_api():
    model, tok = minigpt.load_model(DEMO), minigpt.load_tokenizer(DEMO)
    assert isinstance(model, LlamaModel) and isinstance(tok, JsonBPE)
    assert model.config.vocab_size == tok.vocab_size
    assert model.config.eos_token_ids == (2,)
    ids = tok.encode(PROMPT)
    assert ids[0] == 1  # <s>
    assert tok.decode(ids) == PROMPT


def test_greedy_tokens_are_pinned():
    model, tok = minigpt.load_model(DEMO), minigpt.load_tokenizer(DEMO)
    prompt = tok.encode(PROMPT)
    assert greedy_ids(model, prompt, len(GOLDEN))[len(prompt):] == GOLDEN
    cached = list(minigpt.generate(model, prompt, len(GOLDEN)))
    assert cached == GOLDEN


@pytest.mark.reference
def test_transformers_reads_the_demo_and_decodes_the_same_tokens():
    torch = require("torch")
    transformers = require("transformers")
    ref = transformers.LlamaForCausalLM.from_pretrained(DEMO, dtype=torch.float32)
    ref_tok = require("tokenizers").Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    prompt = ref_tok.encode(PROMPT).ids
    assert prompt == minigpt.load_tokenizer(DEMO).encode(PROMPT)
    with torch.no_grad():
        out = ref.eval().generate(torch.tensor([prompt]), do_sample=False,
                                  attention_mask=torch.ones(1, len(prompt),
                                                            dtype=torch.long),
                                  max_new_tokens=len(GOLDEN),
                                  min_new_tokens=len(GOLDEN))[0, len(prompt):]
        ids = np.array(prompt + GOLDEN)
        logits = ref(torch.from_numpy(ids)[None]).logits[0].numpy()
    assert out.tolist() == GOLDEN
    ours = minigpt.load_model(DEMO).forward(ids)
    assert np.abs(ours - logits).max() / np.abs(logits).max() < 1e-5


def test_the_command_line_writes_mostly_real_words(capsys):
    sys.path.insert(0, str(ROOT))
    from tools.real_words import measure

    result = measure(model_dir=DEMO)
    assert result["words"] > 100
    assert result["real_word_rate"] >= 0.85, result["not_in_corpus"]
    stored = json.loads((DEMO / "evaluation.json").read_text())
    assert stored["real_word_rate"] == result["real_word_rate"]  # the card's figure
    assert main(["generate", PROMPT, "--model", str(DEMO), "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT)
