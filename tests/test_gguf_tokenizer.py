"""Tokenizers read from GGUF metadata ≡ sentencepiece and the `tokenizers` library."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from minigpt.gguf import GGUFError
from minigpt.gguf_tokenizer import load_gguf_tokenizer, read_gguf_chat_config
from tests.reference import missing, require
from tests.test_tokenizer_json import CORPUS, TEXTS, byte_level_tokenizer

PRE_NAMES = {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2",
             "smollm2": "smollm"}
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}"


def write_vocab(path, kind: str, tokens: list[str], types: list[int], more=None):
    """A GGUF file holding only a tokenizer, as llama.cpp's converter writes one."""
    gguf = require("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(kind)
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, value in (more or {}).items():
        adder = {str: w.add_string, bool: w.add_bool, int: w.add_uint32,
                 list: w.add_array}[type(value)]
        adder(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def byte_level_gguf(path, kind: str, tok) -> None:
    """A tokenizers BPE -> GGUF: tokens by id, merges, types, the pre name."""
    spec = json.loads(tok.to_str())
    added = {t["id"]: t for t in spec["added_tokens"]}
    pieces = {i: p for p, i in spec["model"]["vocab"].items()}
    pieces.update({i: t["content"] for i, t in added.items()})
    tokens = [pieces[i] for i in range(len(pieces))]
    types = [(3 if added[i]["special"] else 4) if i in added else 1
             for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in spec["model"]["merges"]]
    more = {"tokenizer.ggml.pre": PRE_NAMES[kind], "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.chat_template": TEMPLATE,
            "tokenizer.ggml.add_bos_token": kind == "llama3"}
    if kind == "llama3":
        more["tokenizer.ggml.bos_token_id"] = 0
    write_vocab(path, "gpt2", tokens, types, more)


@pytest.mark.reference
@pytest.mark.parametrize("kind", list(PRE_NAMES))
def test_byte_level_ids_equal_the_library(tmp_path, kind):
    ref = byte_level_tokenizer(kind)
    ref.normalizer = None  # llama.cpp applies no Unicode normalisation
    byte_level_gguf(tmp_path / "t.gguf", kind, ref)
    ours = load_gguf_tokenizer(tmp_path / "t.gguf")
    for specials_as_text in (False, True):
        ref.encode_special_tokens = specials_as_text
        for text in TEXTS:
            want = ref.encode(text).ids
            got = ours.encode(text, allowed_special=() if specials_as_text else "all")
            assert got == want, (kind, text[:40])
            assert ours.decode(want) == ref.decode(want)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    spm = require("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS[:100_000] + "\ncafé naïve 東京 12345\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=600,
        model_type="bpe", byte_fallback=True, split_digits=True,
        character_coverage=0.9995, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        user_defined_symbols=["<tag>"], minloglevel=2)
    return spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))


def spm_gguf(path, sp) -> None:
    """SentencePiece -> GGUF: pieces, scores and types, as llama.cpp stores them."""
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
             6 if sp.is_byte(i) else 5 if sp.is_unused(i) else
             4 if tokens[i] == "<tag>" else 1 for i in range(n)]
    write_vocab(path, "llama", tokens, types, {
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id()})


@pytest.mark.reference
def test_sentencepiece_ids_equal_the_library(tmp_path, sentencepiece_model):
    sp = sentencepiece_model
    spm_gguf(tmp_path / "sp.gguf", sp)
    ours = load_gguf_tokenizer(tmp_path / "sp.gguf")
    for text in TEXTS + ["<tag> x<tag>y", "Ünïcödé ⅷ \x00 \x7f"]:
        want = sp.encode(text)
        assert ours.encode(text, add_special_tokens=False) == want, text[:40]
        assert ours.encode(text) == [sp.bos_id(), *want]  # add_bos by default
        assert ours.decode(want) == sp.decode(want), text[:40]
    # special tokens allowed: cut out first, and each piece of text between them
    # gets its own ▁ in front, as llama.cpp does: the library on each piece
    bos, eos = sp.id_to_piece(sp.bos_id()), sp.id_to_piece(sp.eos_id())
    for parts in ([eos], [bos, "hi"], ["a b", eos, "c d", bos, bos, " e"]):
        want = [x for p in parts for x in (
            [sp.piece_to_id(p)] if p in (bos, eos) else sp.encode(p))]
        got = ours.encode("".join(parts), allowed_special="all",
                          add_special_tokens=False)
        assert got == want, parts


@pytest.mark.reference
def test_chat_template_and_refusals(tmp_path):
    byte_level_gguf(tmp_path / "t.gguf", "gpt2", byte_level_tokenizer("gpt2"))
    config = read_gguf_chat_config(tmp_path / "t.gguf")
    assert config["chat_template"] == TEMPLATE
    assert config["eos_token"] == "<|im_end|>"
    tokens, types = ["a", "b"], [1, 1]
    bad = write_vocab(tmp_path / "pre.gguf", "gpt2", tokens, types,
                      {"tokenizer.ggml.pre": "deepseek-llm",
                       "tokenizer.ggml.merges": ["a b"]})
    with pytest.raises(GGUFError, match="tokenizer.ggml.pre: 'deepseek-llm'"):
        load_gguf_tokenizer(bad)
    with pytest.raises(GGUFError, match="no tokenizer.chat_template"):
        read_gguf_chat_config(bad)
    bad = write_vocab(tmp_path / "model.gguf", "bert", tokens, types)
    with pytest.raises(GGUFError, match="tokenizer.ggml.model: 'bert'"):
        load_gguf_tokenizer(bad)
    bad = write_vocab(tmp_path / "types.gguf", "llama", tokens, [1],
                      {"tokenizer.ggml.scores": [0.0, 0.0]})
    with pytest.raises(GGUFError, match="1 types for 2 tokens"):
        load_gguf_tokenizer(bad)
    bad = write_vocab(tmp_path / "merge.gguf", "gpt2", tokens, types,
                      {"tokenizer.ggml.merges": ["a c"],
                       "tokenizer.ggml.pre": "gpt-2"})
    with pytest.raises(GGUFError, match="tokenizer.ggml.merges"):
        load_gguf_tokenizer(bad)
    bad = write_vocab(tmp_path / "merge1.gguf", "gpt2", tokens, types,
                      {"tokenizer.ggml.merges": ["ab"], "tokenizer.ggml.pre": "gpt-2"})
    with pytest.raises(GGUFError, match="tokenizer.ggml.merges"):
        load_gguf_tokenizer(bad)
    assert np.all(np.array(types) == 1)


def llama_cpp_models() -> Path | None:
    """llama.cpp's models/ folder: $MINIGPT_LLAMA_CPP_MODELS, or the copy that the
    peers benchmark unpacks into .cache/peers/ (absent until it has run)."""
    if os.environ.get("MINIGPT_LLAMA_CPP_MODELS"):
        return Path(os.environ["MINIGPT_LLAMA_CPP_MODELS"])
    root = Path(__file__).resolve().parent.parent / ".cache" / "peers"
    found = sorted(root.glob("llama_cpp_python-*/vendor/llama.cpp/models"))
    return found[-1] if found else None


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2", "llama-spm",
                                  "phi-3"])
def test_llama_cpp_vocab_files_give_llama_cpp_ids(name):
    """llama.cpp's own vocabulary files and the ids its tokenizer test expects
    (models/ggml-vocab-*.gguf, .inp and .out; specials read as text)."""
    folder = llama_cpp_models()
    if folder is None or not (folder / f"ggml-vocab-{name}.gguf").is_file():
        missing("llama.cpp's vocabulary files are unpacked by "
                "`python -m benchmarks peers` (or set MINIGPT_LLAMA_CPP_MODELS)")
    path = folder / f"ggml-vocab-{name}.gguf"
    texts = path.with_suffix(".gguf.inp").read_text(encoding="utf-8").split(
        "\n__ggml_vocab_test__\n")
    wants = path.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    tok = load_gguf_tokenizer(path)
    assert len(texts) > 40
    for text, want in zip(texts, wants, strict=False):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == [int(i) for i in want.split()], text[:40]
        assert tok.decode(ids) == text


def test_a_missing_pre_name_is_refused(tmp_path):
    require("gguf")
    bad = write_vocab(tmp_path / "old.gguf", "gpt2", ["a", "b"], [1, 1],
                      {"tokenizer.ggml.merges": ["a b"]})
    with pytest.raises(GGUFError, match="tokenizer.ggml.pre: missing"):
        load_gguf_tokenizer(bad)
