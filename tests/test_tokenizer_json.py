"""tokenizer.json read from scratch, against the `tokenizers` library on the same file.

Every tokenizer here is trained in the test, never downloaded: byte-level BPE in
the layouts of GPT-2, Llama 3 (a Split regex with case-insensitive contractions,
ignore_merges, BOS from a TemplateProcessing), SmolLM2 (single digits) and Qwen2
(NFC, one digit per token), trained with `tokenizers`; and SentencePiece BPE with
byte fallback, trained with `sentencepiece` and converted by transformers'
LlamaTokenizerFast (a Metaspace pre-tokenizer, "first" and "always"), rewritten
into Llama 2's older layout (Prepend + Replace normalizer, BOS template), without
byte fallback, and with added tokens that strip whitespace. Each is encoded by
both over Unicode, whitespace runs, digits, emoji, special tokens and a page of
Tiny Shakespeare, with special tokens allowed and not, and decoded by both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minigpt.tokenizer_json import (
    JsonBPE,
    TokenizerJsonError,
    bpe_word,
    load_tokenizer_json,
    split_pieces,
    translate_regex,
)
from tests.reference import require

ROOT = Path(__file__).resolve().parent.parent
CORPUS = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
PAGE = CORPUS[5000:8000]  # a page of the play, newlines and all
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "Hello, world!",
    "Café crème brûlée, naïve Zoë, Ångström, ﬁ ligature",
    "e\u0301 (e + combining acute) vs \u00e9",
    "東京タワーと中文字符, 한국어 텍스트",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🇫🇷",
    "a  b   c    d\t\te\n\n\nf \n g\r\n h   ",
    "\u00a0nbsp\u3000ideographic\u2028line\u200bzero-width",
    "I'm you're he'll she'd we've they're it's DON'T I'M O'Neil",
    "1234567890 3.14159 1,000,000 ١٢٣ ½ Ⅻ 2nd",
    "a" * 300 + " " + "!" * 200 + " " + "😀" * 50,
    " leading space and trailing space ",
    "<|endoftext|> is text <|im_start|>user\nhi<|im_end|>",
    "<s>Hello</s> <s> x",
    "say hello world  <tag>  <|im_end|>  next\n<|im_end|>x",
    "", " ", "\n", "   ",
    PAGE,
]
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = ["gpt2", "llama3", "smollm2", "qwen2"]
SENTENCEPIECE = ["metaspace-first", "metaspace-always", "llama2", "no-fallback",
                 "added-tokens"]


def byte_level_tokenizer(kind: str):
    """A byte-level BPE trained by `tokenizers` in the layout of a model family."""
    tk = require("tokenizers")
    pre, norm = tk.pre_tokenizers, tk.normalizers
    tok = tk.Tokenizer(tk.models.BPE(ignore_merges=kind == "llama3"))
    regex = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}") if kind == "qwen2" \
        else LLAMA3_REGEX
    split = pre.Split(tk.Regex(regex), "isolated")
    tok.pre_tokenizer = {
        "gpt2": pre.ByteLevel(add_prefix_space=False),
        "llama3": pre.Sequence([split, pre.ByteLevel(add_prefix_space=False,
                                                     use_regex=False)]),
        "smollm2": pre.Sequence([pre.Digits(individual_digits=True),
                                 pre.ByteLevel(add_prefix_space=False)]),
        "qwen2": pre.Sequence([split, pre.ByteLevel(add_prefix_space=False,
                                                    use_regex=False)]),
    }[kind]
    if kind == "qwen2":
        tok.normalizer = norm.NFC()
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIALS,
                                     initial_alphabet=pre.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator([CORPUS[:100_000], "".join(TEXTS)], trainer)
    if kind == "llama3":
        tok.post_processor = tk.processors.Sequence([
            tk.processors.ByteLevel(trim_offsets=False),
            tk.processors.TemplateProcessing(single="<|endoftext|> $A",
                                             special_tokens=[("<|endoftext|>", 0)])])
    tok.add_tokens(["hello world", "<tag>"])  # added, not special
    return tok


@pytest.fixture(scope="module")
def sentencepiece_json(tmp_path_factory) -> dict[str, str]:
    """A SentencePiece BPE (byte fallback) converted by transformers, per legacy."""
    spm = require("sentencepiece")
    transformers = require("transformers")
    require("google.protobuf")  # transformers reads the .model file with it
    folder = tmp_path_factory.mktemp("sentencepiece")
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS[:100_000] + "\ncafé naïve 東京 12345\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=600,
        model_type="bpe", byte_fallback=True, split_digits=True,
        character_coverage=0.9995, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        minloglevel=2)
    out = {}
    for legacy in (False, True):
        tok = transformers.LlamaTokenizerFast.from_pretrained(folder, legacy=legacy)
        out["metaspace-always" if legacy else "metaspace-first"] = \
            tok.backend_tokenizer.to_str()
    return out


def sentencepiece_tokenizer(kind: str, converted: dict[str, str]):
    """The converted tokenizer, or a variant of it in another model's layout."""
    tk = require("tokenizers")
    if kind in converted:
        return tk.Tokenizer.from_str(converted[kind])
    spec = json.loads(converted["metaspace-first"])
    # Llama 2 / TinyLlama: spaces to ▁ in the normalizer, no pre-tokenizer, BOS
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    spec["model"]["unk_token"] = "<unk>"
    spec["model"]["byte_fallback"] = kind != "no-fallback"
    tok = tk.Tokenizer.from_str(json.dumps(spec))
    if kind == "added-tokens":
        tok.add_special_tokens([tk.AddedToken("<|im_end|>", lstrip=True, rstrip=True,
                                              normalized=False)])
        tok.add_tokens([tk.AddedToken("hello world", normalized=True),
                        tk.AddedToken("<tag>", lstrip=True, normalized=False)])
    return tok


def assert_same_as_library(ref, config: dict | None = None) -> None:
    """Ids and decoded text equal the library's, specials allowed or not."""
    ours = JsonBPE(json.loads(ref.to_str()), config)
    for specials_as_text in (False, True):
        ref.encode_special_tokens = specials_as_text
        allowed = () if specials_as_text else "all"
        for text in TEXTS:
            want = ref.encode(text).ids
            assert ours.encode(text, allowed_special=allowed) == want, repr(text)
            assert ours.decode(want) == ref.decode(want), repr(text)
            if ref.decode(ref.encode(text, add_special_tokens=False).ids) == text:
                assert ours.decode(ours.encode(text, add_special_tokens=False)) == text


@pytest.mark.reference
@pytest.mark.parametrize("kind", BYTE_LEVEL)
def test_byte_level_ids_equal_the_library(kind):
    assert_same_as_library(byte_level_tokenizer(kind))


@pytest.mark.reference
@pytest.mark.parametrize("kind", SENTENCEPIECE)
def test_sentencepiece_ids_equal_the_library(kind, sentencepiece_json):
    assert_same_as_library(sentencepiece_tokenizer(kind, sentencepiece_json))


@pytest.mark.reference
def test_sentencepiece_round_trips_and_falls_back_to_bytes(sentencepiece_json):
    tok = JsonBPE(json.loads(sentencepiece_json["metaspace-first"]))
    ids = tok.encode("東京 🦙!")
    pieces = [tok.pieces[i] for i in ids]
    assert "<0xF0>" in pieces  # the llama emoji is not in the vocabulary: 4 bytes
    for text in TEXTS:  # a leading space is dropped as the library drops it
        assert tok.decode(tok.encode(text)) == text.removeprefix(" "), repr(text)


@pytest.mark.reference
def test_merges_as_strings_read_like_pairs():
    ref = byte_level_tokenizer("gpt2")
    spec = json.loads(ref.to_str())
    assert isinstance(spec["model"]["merges"][0], list)  # what the library writes
    strings = dict(spec, model=dict(spec["model"], merges=[
        " ".join(pair) for pair in spec["model"]["merges"]]))  # older files
    assert JsonBPE(strings).encode(PAGE) == JsonBPE(spec).encode(PAGE)


@pytest.mark.reference
@pytest.mark.parametrize("add_bos", [True, False, None])
def test_bos_follows_the_post_processor_as_transformers_does(tmp_path, add_bos,
                                                             sentencepiece_json):
    """transformers 5 keeps the template's BOS whatever add_bos_token says."""
    transformers = require("transformers")
    sentencepiece_tokenizer("llama2", sentencepiece_json).save(
        str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": add_bos}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_tokenizer_json(tmp_path)
    for text in ("Hello world", PAGE[:200]):
        assert ours.encode(text) == ref(text).input_ids
        assert ours.encode(text)[0] == 1


@pytest.mark.reference
def test_add_bos_token_adds_a_bos_the_template_lacks(tmp_path, sentencepiece_json):
    """A template without BOS and add_bos_token: true (older transformers' rule)."""
    tk = require("tokenizers")
    tk.Tokenizer.from_str(sentencepiece_json["metaspace-first"]).save(
        str(tmp_path / "tokenizer.json"))
    plain = load_tokenizer_json(tmp_path).encode("Hello world")
    assert plain[0] != 1
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "add_bos_token": True}))
    assert load_tokenizer_json(tmp_path).encode("Hello world") == [1, *plain]
    assert load_tokenizer_json(tmp_path).encode("Hello world",
                                                add_special_tokens=False) == plain


def test_the_demo_tokenizer_is_sentencepiece_style():
    import minigpt

    tok = load_tokenizer_json(minigpt.DEMO_LLAMA)
    ids = tok.encode("ROMEO:\nWhat, ho! 🦙")
    assert ids[0] == 1  # <s>, from the post-processor
    pieces = [tok.pieces[i] for i in ids]
    assert "<0x0A>" in pieces and pieces[1].startswith("▁")  # newline: a byte token
    assert tok.decode(ids) == "ROMEO:\nWhat, ho! 🦙"
    # streaming: the bytes of each id continue the text, spaces kept
    assert b"".join(tok.decode_bytes([i]) for i in ids[1:]) == \
        " ROMEO:\nWhat, ho! 🦙".encode()


@pytest.mark.reference
def test_the_demo_tokenizer_equals_the_library():
    import minigpt

    tk = require("tokenizers")
    assert_same_as_library(tk.Tokenizer.from_file(
        str(minigpt.DEMO_LLAMA / "tokenizer.json")))


@pytest.mark.parametrize("model, message", [
    ({"type": "Unigram", "vocab": []}, "model 'Unigram' is not supported"),
    ({"type": "WordPiece", "vocab": {}}, "model 'WordPiece' is not supported"),
    ({"type": "WordLevel", "vocab": {}}, "model 'WordLevel' is not supported"),
    ({"type": "BPE", "vocab": {}, "merges": [], "continuing_subword_prefix": "##"},
     "continuing_subword_prefix='##' is not supported"),
])
def test_other_models_are_refused_by_name(model, message):
    with pytest.raises(TokenizerJsonError, match=message):
        JsonBPE({"model": model})


def test_unsupported_steps_are_refused_by_name():
    base = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    cases = [("normalizer", {"type": "BertNormalizer"}, "normalizer 'BertNormalizer'"),
             ("pre_tokenizer", {"type": "Whitespace"}, "pre-tokenizer 'Whitespace'"),
             ("decoder", {"type": "WordPiece"}, "decoder 'WordPiece'")]
    for key, step, message in cases:
        tok = JsonBPE({**base, key: step})
        with pytest.raises(TokenizerJsonError, match=message):
            tok.decode(tok.encode("a")) if key == "decoder" else tok.encode("a")
    with pytest.raises(TokenizerJsonError, match="post-processor 'BertProcessing'"):
        JsonBPE({**base, "post_processor": {"type": "BertProcessing"}})


def test_split_behaviours():
    comma = translate_regex(",")
    text = "a,b,,c,"
    assert split_pieces(text, comma, "Isolated") == ["a", ",", "b", ",", ",", "c", ","]
    assert split_pieces(text, comma, "Removed") == ["a", "b", "c"]
    assert split_pieces(text, comma, "MergedWithPrevious") == ["a,", "b,", ",", "c,"]
    assert split_pieces(text, comma, "MergedWithNext") == ["a", ",b", ",", ",c", ","]
    assert split_pieces(text, comma, "Contiguous") == ["a", ",", "b", ",,", "c", ","]
    assert split_pieces(text, comma, "Isolated", invert=True) == \
        ["a", ",", "b", ",", ",", "c", ","]


def test_translated_regex_knows_unicode_classes():
    pattern = translate_regex(r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+")
    assert pattern.findall("Zoë 東京 ١٢٣ ½!") == ["Zoë", " ", "東京", " ", "١٢٣", " ",
                                                 "½", "!"]
    with pytest.raises(TokenizerJsonError, match="unknown Unicode class"):
        translate_regex(r"\p{Greek}")


def test_bpe_merges_the_lowest_rank_first_and_leftmost_on_ties():
    spec = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "aa": 2, "ab": 3,
                                               "aab": 4},
                      "merges": ["a a", "a b", "aa b"]}}
    tok = JsonBPE(spec)
    assert bpe_word("aaa", tok) == [2, 0]      # (aa)a, not a(aa)
    assert bpe_word("aab", tok) == [4]         # a a first, then aa b
    assert bpe_word("ab", tok) == [3]


def test_load_tokenizer_picks_tokenizer_json_when_present(tmp_path):
    import minigpt
    from minigpt.tokenizer import ByteBPE, train_bpe

    gpt2 = ByteBPE(*train_bpe("To be, or not to be. " * 10, 270))
    gpt2.save(tmp_path)  # vocab.json + merges.txt
    assert isinstance(minigpt.load_tokenizer(tmp_path), ByteBPE)
    (tmp_path / "tokenizer.json").write_bytes(
        (minigpt.DEMO_LLAMA / "tokenizer.json").read_bytes())
    tok = minigpt.load_tokenizer(tmp_path)
    assert isinstance(tok, JsonBPE) and tok.vocab_size == 1024
    assert isinstance(load_tokenizer_json(tmp_path / "tokenizer.json"), JsonBPE)
