"""Malformed checkpoint files: one line naming the file and the field, no traceback.

Each case breaks one file of a working checkpoint (a GPT-2 folder with vocab.json
and merges.txt, or a LLaMA folder with tokenizer.json) the way a hand edit or a
truncated download would. The Python API must raise a ValueError subclass whose
message names the file and the field; `python -m minigpt generate` must print one
line and exit 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import minigpt
from minigpt.__main__ import main
from tests.llama_layouts import write_llama
from tests.test_cli import write_checkpoint


def edit_json(path: Path, change) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw)
    path.write_text(json.dumps(raw), encoding="utf-8")


def set_field(key, value):
    return lambda raw: raw.__setitem__(key, value)


def gpt2(folder: Path) -> Path:
    return write_checkpoint(folder)


def llama(folder: Path) -> Path:
    return write_llama(folder, "byte-level", chat=True)


CASES = {  # name: (checkpoint, file, how to break it, words the message must hold)
    "tokenizer.json is {}": (llama, "tokenizer.json", "{}", ["model"]),
    "tokenizer.json is not JSON": (llama, "tokenizer.json", '{"model": ',
                                   ["not UTF-8 JSON"]),
    "tokenizer.json model is a list": (
        llama, "tokenizer.json", lambda raw: raw.__setitem__("model", [1]), ["model"]),
    "tokenizer.json vocab ids are text": (
        llama, "tokenizer.json",
        lambda raw: raw["model"].__setitem__("vocab", {"a": "0"}), ["model.vocab"]),
    "tokenizer.json bad merge": (
        llama, "tokenizer.json",
        lambda raw: raw["model"]["merges"].insert(3, "no-space"), ["model.merges[3]"]),
    "tokenizer.json bad added token": (
        llama, "tokenizer.json",
        lambda raw: raw["added_tokens"].append({"content": 5}), ["added_tokens"]),
    "tokenizer.json post_processor without single": (
        llama, "tokenizer.json", set_field("post_processor",
                                           {"type": "TemplateProcessing"}),
        ["'single'"]),
    "tokenizer_config.json is not JSON": (llama, "tokenizer_config.json", "{,",
                                          ["not UTF-8 JSON"]),
    "vocab.json is not JSON": (gpt2, "vocab.json", '{"a": 1', ["not UTF-8 JSON"]),
    "vocab.json is a list": (gpt2, "vocab.json", "[1, 2]", ["token -> id"]),
    "merges.txt has three tokens": (gpt2, "merges.txt", "#version: 0.2\nĠ t h\n",
                                    ["line 2"]),
    "merges.txt names unknown tokens": (gpt2, "merges.txt", "#version: 0.2\nqq zz\n",
                                        ["line 2"]),
    "num_hidden_layers is text": (llama, "config.json",
                                  set_field("num_hidden_layers", "4"),
                                  ["num_hidden_layers", "integer"]),
    "rope_scaling is a list": (llama, "config.json", set_field("rope_scaling", [1]),
                               ["rope_scaling", "object"]),
    "tie_word_embeddings is text": (llama, "config.json",
                                    set_field("tie_word_embeddings", "false"),
                                    ["tie_word_embeddings"]),
    "n_layer is text": (gpt2, "config.json", set_field("n_layer", "4"),
                        ["n_layer", "integer"]),
    "model_type is a list": (llama, "config.json", set_field("model_type", ["llama"]),
                             ["model_type", "not supported"]),
    "n_head is zero": (gpt2, "config.json", set_field("n_head", 0), ["n_head"]),
    "layer_norm_epsilon is text": (gpt2, "config.json",
                                   set_field("layer_norm_epsilon", "1e-5"),
                                   ["layer_norm_epsilon", "number"]),
    "scale_attn_weights is false": (gpt2, "config.json",
                                    set_field("scale_attn_weights", False),
                                    ["scale_attn_weights"]),
    "add_cross_attention is true": (gpt2, "config.json",
                                    set_field("add_cross_attention", True),
                                    ["add_cross_attention"]),
}


def broken(tmp_path: Path, name: str) -> tuple[Path, str, list[str]]:
    make, file, change, words = CASES[name]
    folder = make(tmp_path / "model")
    if isinstance(change, str):
        (folder / file).write_text(change, encoding="utf-8")
    else:
        edit_json(folder / file, change)
    return folder, file, words


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_api_names_the_file_and_the_field(tmp_path, name):
    folder, file, words = broken(tmp_path, name)
    with pytest.raises(ValueError) as exc:
        minigpt.load_model(folder)
        minigpt.load_tokenizer(folder)
    assert type(exc.value) is not ValueError  # a subclass the caller can catch
    message = str(exc.value)
    assert str(folder / file) in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys, name):
    folder, file, words = broken(tmp_path, name)
    assert main(["generate", "hi", "--model", str(folder),
                 "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert file in err and all(word in err for word in words), err


@pytest.mark.parametrize("make, key", [(gpt2, "n_layer"), (llama, "num_hidden_layers")])
def test_a_billion_layers_are_refused_at_once(tmp_path, make, key):
    """A table of 10**9 blocks would take minutes to build: count the tensors first."""
    folder = make(tmp_path / "model")
    edit_json(folder / "config.json", set_field(key, 10**9))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="1000000000 layers, but only"):
        minigpt.load_model(folder)
    if make is gpt2:  # the quantised loader counts too
        from minigpt.quantize import load_quantized, quantize_checkpoint

        edit_json(folder / "config.json", set_field(key, 2))
        out = quantize_checkpoint(folder, tmp_path / "q")
        edit_json(out / "config.json", set_field(key, 10**9))
        with pytest.raises(ValueError, match="1000000000 layers, but only"):
            load_quantized(out)
    assert time.perf_counter() - start < 10


def test_a_gguf_of_a_billion_blocks_is_refused_at_once(tmp_path):
    from tests.gguf_files import tiny_gpt2_gguf

    path = tiny_gpt2_gguf(tmp_path / "m.gguf", block_count=10**9)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="1000000000 layers, but only"):
        minigpt.load_model(path)
    assert time.perf_counter() - start < 2
