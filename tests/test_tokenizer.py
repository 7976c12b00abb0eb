"""Tokenizers: the character tokenizer, BPE training, and GPT-2's BPE against tiktoken.

References run live: tiktoken's `gpt2` encoding built from the local GPT-2 files,
Hugging Face `tokenizers` reading our saved vocab.json + merges.txt, and a naive
BPE trainer written here (recount everything every round) for the fast one.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.tokenizer import (
    ByteBPE,
    CharTokenizer,
    bytes_to_unicode,
    gpt2_pattern,
    load_tokenizer,
    merge,
    train_bpe,
)
from tests.reference import require, require_file

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "data" / "tinyshakespeare.txt"
GPT2_DIR = ROOT / "data" / "gpt2"
HOW = "the GPT-2 vocabulary; make install, or python tools/fetch_assets.py"
GPT2_PAT = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
            r"""|\s+(?!\S)|\s+""")

HARD_TEXTS = [
    "Hello, world!",
    "Café crème brûlée, naïve Zoë, Ångström, ﬁ ligature",       # accents, ligature
    "e\u0301 (e + combining acute) vs \u00e9",                    # combining mark
    "東京タワーと中文字符, 한국어 텍스트",                          # CJK, Hangul
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇫🇷",               # ZWJ, modifiers
    "a  b   c    d\t\te\n\n\nf \n g\r\n h   ",                     # whitespace runs
    "\u00a0nbsp\u3000ideographic\u2028line\u200bzero-width",       # odd spaces
    "I'm you're he'll she'd we've they're it's DON'T I'M O'Neil",  # contractions
    "1234567890 3.14159 1,000,000 ١٢٣ ½ Ⅻ 2nd",                    # digits, numerals
    "a" * 300 + " " + "!" * 200 + " " + "😀" * 50,                  # long repeats
    " leading space and trailing space ",
    "<|endoftext|> is ordinary text here",
    "",
]


def test_bytes_to_unicode_matches_transformers():
    convert = require("transformers.convert_slow_tokenizer")
    table = bytes_to_unicode()
    assert table == convert.bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert all(not ch.isspace() and ch.isprintable() for ch in table.values())


def test_char_tokenizer_round_trip_and_unknown():
    tok = CharTokenizer("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.decode(tok.encode("low hello")) == "low hello"
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("zebra")


def test_merge_replaces_left_to_right():
    assert merge([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge([5, 5, 5], (5, 5), 7) == [7, 5]  # overlapping: leftmost first
    assert merge([1], (1, 2), 9) == [1]


def naive_train(text: str, vocab_size: int) -> list[tuple[bytes, bytes]]:
    """The textbook loop: recount every pair of every chunk in every round."""
    chunks = Counter(gpt2_pattern().findall(text))
    words = {tuple(c.encode()): n for c, n in chunks.items()}
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for new_id in range(256, vocab_size):
        counts: Counter = Counter()
        for w, n in words.items():
            for p in pairwise(w):
                counts[p] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        words = {tuple(merge(list(w), best, new_id)): n for w, n in words.items()}
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append((vocab[best[0]], vocab[best[1]]))
    return merges


def test_fast_training_equals_naive_training():
    text = CORPUS.read_text(encoding="utf-8")[:20_000]
    vocab, merges = train_bpe(text, 330)
    assert merges == naive_train(text, 330)
    assert len(vocab) == 330


def test_training_stops_when_nothing_is_left_to_merge():
    vocab, merges = train_bpe("ab ab", 1000)  # chunks "ab" and " ab"
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 256 + 2
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe("x", 100)


@pytest.fixture(scope="module")
def shakespeare_bpe() -> ByteBPE:
    return ByteBPE(*train_bpe(CORPUS.read_text(encoding="utf-8"), 512))


def test_trained_bpe_round_trips_and_compresses(shakespeare_bpe):
    text = CORPUS.read_text(encoding="utf-8")[:50_000]
    ids = shakespeare_bpe.encode(text)
    assert shakespeare_bpe.decode(ids) == text
    assert max(ids) < 512 and len(shakespeare_bpe.vocab) == 512
    assert len(ids) < 0.6 * len(text.encode())  # 512 tokens beat raw bytes


def test_trained_bpe_matches_tiktoken_with_its_merges(shakespeare_bpe):
    tiktoken = require("tiktoken")
    ranks = {tok: i for i, tok in shakespeare_bpe.vocab.items()}  # id = rank here
    ref = tiktoken.Encoding("shakespeare", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                            special_tokens={})
    for text in [CORPUS.read_text(encoding="utf-8")[-30_000:], *HARD_TEXTS]:
        assert shakespeare_bpe.encode(text) == ref.encode_ordinary(text)


def test_saved_bpe_loads_back_and_in_hugging_face(shakespeare_bpe, tmp_path):
    tokenizers = require("tokenizers")
    shakespeare_bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    hf = tokenizers.ByteLevelBPETokenizer(str(tmp_path / "vocab.json"),
                                          str(tmp_path / "merges.txt"))
    for text in [CORPUS.read_text(encoding="utf-8")[:20_000], *HARD_TEXTS]:
        ids = shakespeare_bpe.encode(text)
        assert loaded.encode(text) == ids
        assert hf.encode(text).ids == ids
        assert loaded.decode(ids) == text
    assert loaded.vocab == shakespeare_bpe.vocab


@pytest.fixture(scope="module")
def gpt2_files() -> Path:
    require_file(GPT2_DIR / "encoder.json", HOW)
    require_file(GPT2_DIR / "vocab.bpe", HOW)
    return GPT2_DIR


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files):
    tiktoken = require("tiktoken")
    load = require("tiktoken.load")
    ranks = load.data_gym_to_mergeable_bpe_ranks(str(gpt2_files / "vocab.bpe"),
                                                 str(gpt2_files / "encoder.json"))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> ByteBPE:
    return load_tokenizer(gpt2_files)


@pytest.mark.reference
@pytest.mark.parametrize("text", HARD_TEXTS, ids=range(len(HARD_TEXTS)))
def test_gpt2_encoding_equals_tiktoken(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


@pytest.mark.reference
def test_gpt2_on_all_of_tiny_shakespeare(gpt2, tiktoken_gpt2):
    text = CORPUS.read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text


@pytest.mark.reference
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=60))
def test_gpt2_random_text_equals_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.reference
def test_gpt2_lone_surrogate_is_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "a\ud800b"
    assert gpt2.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(gpt2.encode(text)) == "a\ufffdb"


@pytest.mark.reference
def test_partial_utf8_decodes_safely(gpt2, tiktoken_gpt2):
    text = "👩‍👩‍👧 東京"
    ids = gpt2.encode(text)
    for cut in range(len(ids) + 1):
        part = ids[:cut]
        raw = tiktoken_gpt2.decode_bytes(part)
        assert gpt2.decode_bytes(part) == raw
        assert gpt2.decode(part) == raw.decode("utf-8", errors="replace")
    # a lone continuation byte and a cut 4-byte emoji never raise
    emoji = gpt2.encode("😀")
    assert gpt2.decode(emoji[:1]).endswith("\ufffd")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gpt2.decode([50257])


@pytest.mark.reference
def test_gpt2_special_token_decodes(gpt2):
    assert gpt2.decode([50256]) == "<|endoftext|>"
    assert 50256 not in gpt2.encode("<|endoftext|>")  # ordinary text, as documented


@pytest.mark.reference
@pytest.mark.parametrize("text", ["a<|endoftext|>b", "<|endoftext|>", "x <|endoftext|>"
                                  "<|endoftext|> y", "no special here"])
def test_special_tokens_only_when_allowed_as_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.special == {"<|endoftext|>": 50256}
    allowed = {"<|endoftext|>"}
    assert gpt2.encode(text, allowed_special=allowed) == tiktoken_gpt2.encode(
        text, allowed_special=allowed)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(
        text, allowed_special="all")
    assert 50256 not in gpt2.encode(text)  # never by accident
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2.encode(text, allowed_special={"<|im_start|>"})


def test_the_shipped_unicode_table_is_what_python_computes(monkeypatch):
    """The table that spares the start-up its second equals the computation."""
    import minigpt.tokenizer as tok
    table = json.loads(tok.CLASSES_FILE.read_text(encoding="utf-8"))
    if table["unicode"] != unicodedata.unidata_version:
        pytest.skip(f"table made for Unicode {table['unicode']}, this Python "
                    f"has {unicodedata.unidata_version}: it is recomputed")
    assert [tuple(r) for r in table["L"]] == tok.category_ranges("L")
    assert [tuple(r) for r in table["N"]] == tok.category_ranges("N")
    tok.letters_and_numbers.cache_clear()
    monkeypatch.setattr(tok, "category_ranges", None)  # not called: the table is
    assert tok.letters_and_numbers() == (table["L"], table["N"])
    tok.letters_and_numbers.cache_clear()


def test_a_missing_unicode_table_is_recomputed(monkeypatch, tmp_path):
    import minigpt.tokenizer as tok
    monkeypatch.setattr(tok, "CLASSES_FILE", tmp_path / "none.json")
    tok.letters_and_numbers.cache_clear()
    try:
        letters, numbers = tok.letters_and_numbers()
        assert (0x41, 0x5A) in letters and (0x30, 0x39) in numbers
    finally:
        tok.letters_and_numbers.cache_clear()


def test_hugging_face_file_names_load_the_same(gpt2_files, gpt2, tmp_path):
    shutil.copy(gpt2_files / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(gpt2_files / "vocab.bpe", tmp_path / "merges.txt")
    hf_named = load_tokenizer(tmp_path / "vocab.json")  # a file inside works too
    text = " ".join(HARD_TEXTS)
    assert hf_named.encode(text) == gpt2.encode(text)
    assert hf_named.vocab == gpt2.vocab


def test_load_tokenizer_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        load_tokenizer(tmp_path)
