"""Hugging Face's `tokenizer.json` read from scratch: the BPE tokenizers of open models.

A `tokenizer.json` describes a pipeline of five steps, each named by its "type":
added tokens are cut out of the text first, the rest is normalised (e.g. spaces
to `▁`), pre-tokenised into words (a regex, `ByteLevel`, `Metaspace`, digits), each
word is split into BPE tokens by the model (merges by rank, unknown characters to
`<0xNN>` byte tokens), and a post-processor adds BOS. Decoding runs a chain of
decoders back to text. Both families of BPE tokenizers that current open models
ship are here: byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen2) and
SentencePiece-style BPE (Llama 2, TinyLlama, Mistral). The tests compare the ids
with the `tokenizers` library's on tokenizers trained in the tests.

Leaves out on purpose: the Unigram, WordPiece and WordLevel models (refused by
name, as is every step type not listed in `NORMALIZERS`, `PRE_TOKENIZERS`,
`PROCESSORS` and `DECODERS`), offsets, padding, truncation, pairs of sequences,
BPE dropout, and added tokens' `single_word` option. Invalid UTF-8 in decoded byte
tokens becomes one U+FFFD per bad sequence (the library writes one per byte).
"""

from __future__ import annotations

import functools
import heapq
import re
import unicodedata
from dataclasses import dataclass
from dataclasses import replace as replace_field
from itertools import pairwise
from pathlib import Path

from minigpt.tokenizer import (
    SPACE,
    ByteBPE,
    TokenizerFileError,
    bytes_to_unicode,
    category_ranges,
    char_class,
    gpt2_pattern,
    letters_and_numbers,
)
from minigpt.tokenizer import load_tokenizer as load_gpt2_files
from minigpt.weights import read_json

__all__ = ["AddedToken", "JsonBPE", "TokenizerJsonError", "added_token", "bpe_word",
           "decode_chain", "load_tokenizer_json", "normalize", "pre_tokenize",
           "split_added", "split_pieces", "translate_regex"]

NORMALIZERS = ("Sequence", "Prepend", "Replace", "NFC", "NFD", "NFKC", "NFKD",
               "Lowercase", "Strip")
PRE_TOKENIZERS = ("Sequence", "ByteLevel", "Split", "Metaspace", "Digits")
PROCESSORS = ("Sequence", "TemplateProcessing", "ByteLevel")
DECODERS = ("Sequence", "ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse",
            "Strip")


# --8<-- [start:translate-regex]
class TokenizerJsonError(TokenizerFileError):
    """A tokenizer.json this reader cannot follow, with the reason."""


@functools.cache
def unicode_class(name: str) -> str:
    """The inside of a `re` class for \\p{name}: "L" takes Lu, Ll, Lt, Lm, Lo."""
    if name == "s":
        return SPACE  # Unicode White_Space, which is Oniguruma's \s
    if name in ("L", "N"):  # the common two ship precomputed (chapter 15)
        letters, numbers = letters_and_numbers()
        return char_class(letters if name == "L" else numbers)
    ranges = category_ranges(name) if len(name) <= 2 else []  # a walk, once each
    if not ranges:
        raise TokenizerJsonError(f"regex: unknown Unicode class \\p{{{name}}}")
    return char_class(ranges)


def translate_regex(pattern: str) -> re.Pattern:
    """A tokenizer.json regex (\\p{L}, \\p{N}, \\s, (?i:...)) compiled for `re`."""
    out, inside = [], False
    for token in re.findall(r"\\[pP]\{\w+\}|\\.|\[\^?|\]|.", pattern, re.DOTALL):
        if token[:2] in ("\\p", "\\P", "\\s", "\\S"):
            body = unicode_class(token[3:-1] if token[1] in "pP" else "s")
            negated = token[1] in "PS"
            if negated and inside:  # [^...] of a negation: not needed by any model
                raise TokenizerJsonError(f"regex {pattern!r}: {token} inside [...]")
            out.append(body if inside else f"[{'^' * negated}{body}]")
        else:
            inside = token.startswith("[") or (inside and token != "]")
            out.append(token)
    return re.compile("".join(out))
# --8<-- [end:translate-regex]


# --8<-- [start:normalize]
def normalize(text: str, spec: dict | None) -> str:
    """Apply a normalizer (spaces to ▁, a ▁ in front, Unicode forms, ...) to text."""
    kind = spec["type"] if spec else None
    if kind is None or not text:
        return text  # the library leaves an empty piece empty: no ▁ in front
    if kind == "Sequence":
        for step in spec["normalizers"]:
            text = normalize(text, step)
        return text
    if kind == "Prepend":
        return spec["prepend"] + text
    if kind == "Replace":
        return replace(text, spec["pattern"], spec["content"])
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return unicodedata.normalize(kind, text)
    if kind == "Lowercase":
        return text.lower()
    if kind == "Strip":
        text = text.lstrip() if spec.get("strip_left") else text
        return text.rstrip() if spec.get("strip_right") else text
    raise TokenizerJsonError(f"normalizer {kind!r} is not supported")


def replace(text: str, pattern: dict, content: str) -> str:
    """Replace a {"String": ...} or {"Regex": ...} pattern by content."""
    if "String" in pattern:
        return text.replace(pattern["String"], content)
    return translate_regex(pattern["Regex"]).sub(content.replace("\\", "\\\\"), text)
# --8<-- [end:normalize]


# --8<-- [start:split-pieces]
def split_pieces(text: str, pattern: re.Pattern, behavior: str,
                 invert: bool = False) -> list[str]:
    """Cut text at the pattern's matches; behavior says where a match goes."""
    parts, pos = [], 0  # (piece, is it a match?), in order
    for m in pattern.finditer(text):
        if m.end() > m.start():
            parts += [(text[pos:m.start()], False)] * (m.start() > pos)
            parts.append((m.group(), True))
            pos = m.end()
    parts += [(text[pos:], False)] * (pos < len(text))
    parts = [(piece, is_match != invert) for piece, is_match in parts]
    if behavior == "Removed":
        return [piece for piece, is_match in parts if not is_match]
    if behavior == "MergedWithNext":  # the same walk as MergedWithPrevious, backwards
        return [p[::-1] for p in merge_matches([(p[::-1], m) for p, m in parts[::-1]],
                                               "MergedWithPrevious")][::-1]
    return merge_matches(parts, behavior)


def merge_matches(parts: list[tuple[str, bool]], behavior: str) -> list[str]:
    """Isolated: every part alone; Contiguous: runs of matches joined;
    MergedWithPrevious: a match joins the non-match before it."""
    out, last_match = [], False
    for piece, is_match in parts:
        if out and is_match and behavior == "MergedWithPrevious" and not last_match:
            out[-1] += piece
        elif out and is_match and behavior == "Contiguous" and last_match:
            out[-1] += piece
        elif behavior in ("Isolated", "Contiguous", "MergedWithPrevious"):
            out.append(piece)
        else:
            raise TokenizerJsonError(f"split behavior {behavior!r} is not supported")
        last_match = is_match
    return out
# --8<-- [end:split-pieces]


# --8<-- [start:pre-tokenize]
def pre_tokenize(words: list[tuple[str, bool]], spec: dict | None
                 ) -> list[tuple[str, bool]]:
    """Split (word, starts the text?) pairs into smaller words, as spec says."""
    kind = spec["type"] if spec else None
    if kind == "Sequence":
        for step in spec["pretokenizers"]:
            words = pre_tokenize(words, step)
        return words
    out = []
    for word, first in words:
        pieces = pre_tokenize_one(word, first, spec) if kind else [word]
        out += [(piece, first and i == 0) for i, piece in enumerate(pieces)]
    return out


def pre_tokenize_one(word: str, first: bool, spec: dict) -> list[str]:
    """One pre-tokenizer on one word."""
    kind = spec["type"]
    if kind == "Split":
        pattern = spec["pattern"]
        regex = translate_regex(pattern["Regex"]) if "Regex" in pattern else \
            re.compile(re.escape(pattern["String"]))
        return split_pieces(word, regex, spec["behavior"], spec.get("invert", False))
    if kind == "Digits":
        how = "Isolated" if spec.get("individual_digits") else "Contiguous"
        return split_pieces(word, re.compile("[0-9]"), how)
    if kind == "ByteLevel":
        return byte_level(word, spec.get("add_prefix_space", True),
                          spec.get("use_regex", True))
    if kind == "Metaspace":
        return metaspace(word, first, spec)
    raise TokenizerJsonError(f"pre-tokenizer {kind!r} is not supported")


def byte_level(word: str, add_prefix_space: bool, use_regex: bool) -> list[str]:
    """GPT-2's split, then every byte as one printable character (chapter 15)."""
    if add_prefix_space and not word.startswith(" "):
        word = " " + word
    show = bytes_to_unicode()
    pieces = gpt2_pattern().findall(word) if use_regex else [word]
    return ["".join(show[b] for b in piece.encode("utf-8")) for piece in pieces]


def metaspace(word: str, first: bool, spec: dict) -> list[str]:
    """Spaces to ▁, a ▁ in front (always, or at the start of the text), then split."""
    mark = spec.get("replacement", "▁")
    word = word.replace(" ", mark)
    scheme = spec.get("prepend_scheme", "always" if spec.get("add_prefix_space",
                                                             True) else "never")
    if (scheme == "always" or (scheme == "first" and first)) and \
            not word.startswith(mark):
        word = mark + word
    if not spec.get("split", True):
        return [word]
    return split_pieces(word, re.compile(re.escape(mark)), "MergedWithNext")
# --8<-- [end:pre-tokenize]


# --8<-- [start:bpe-word]
def bpe_word(word: str, model: JsonBPE) -> list[int]:
    """One word -> ids: characters (or their bytes), merged lowest rank first."""
    if model.ignore_merges and word in model.ids:
        return [model.ids[word]]  # a whole word in the vocabulary wins outright
    ids = [x for ch in word for x in model.symbol_ids(ch)]
    if model.fuse_unk:  # runs of unknown characters become one <unk>
        ids = [x for i, x in enumerate(ids)
               if not (x == model.unk and i > 0 and ids[i - 1] == model.unk)]
    nxt = list(range(1, len(ids) + 1))  # a linked list: merged symbols drop out
    prev = list(range(-1, len(ids) - 1))
    heap = [(model.ranks[p][0], i) for i, p in enumerate(pairwise(ids))
            if p in model.ranks]
    heapq.heapify(heap)  # (rank, position): the lowest rank, then the leftmost
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if ids[i] is None or j >= len(ids) or \
                model.ranks.get((ids[i], ids[j]), (-1,))[0] != rank:
            continue  # stale: one of its two symbols was merged away already
        ids[i], ids[j] = model.ranks[ids[i], ids[j]][1], None
        nxt[i] = nxt[j]
        if nxt[i] < len(ids):
            prev[nxt[i]] = i
        for a in (prev[i], i):  # the two new neighbour pairs may merge next
            if a >= 0 and nxt[a] < len(ids) and (ids[a], ids[nxt[a]]) in model.ranks:
                heapq.heappush(heap, (model.ranks[ids[a], ids[nxt[a]]][0], a))
    return [x for x in ids if x is not None]
# --8<-- [end:bpe-word]


# --8<-- [start:added-tokens]
@dataclass(frozen=True)
class AddedToken:
    """A token matched in the text before anything else, e.g. <s> or <|im_end|>."""

    content: str
    id: int
    special: bool = False     # control token: matched only when allowed, not decoded
    lstrip: bool = False      # swallows the whitespace on its left
    rstrip: bool = False      # swallows the whitespace on its right
    normalized: bool = False  # matched in the normalised text, not the raw text


def added_token(entry: dict, normalizer: dict | None) -> AddedToken:
    """An added_tokens entry; a normalized one is matched (and decoded) as the
    normaliser writes it: "hello world" may be "▁hello▁world"."""
    if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)
            and type(entry.get("id")) is int):
        raise TokenizerJsonError(f"added_tokens: {entry!r} needs a string content "
                                 f"and an integer id")
    token = AddedToken(**{k: entry[k] for k in AddedToken.__annotations__
                          if k in entry})
    if token.normalized:
        token = replace_field(token, content=normalize(token.content, normalizer))
    return token


def split_added(text: str, tokens: list[AddedToken]) -> list[str | AddedToken]:
    """Cut the tokens out of text: plain pieces and AddedTokens, in order."""
    if not tokens or not text:
        return [text] if text else []
    by_content = {t.content: t for t in tokens}
    # longest first: at one position the longest token wins, as in the library
    alternatives = sorted(by_content, key=len, reverse=True)
    out: list[str | AddedToken] = []
    pos = 0
    for m in re.finditer("|".join(map(re.escape, alternatives)), text):
        token, start, end = by_content[m.group()], m.start(), m.end()
        if start < pos:
            continue  # this match began inside whitespace a token swallowed
        while token.lstrip and start > pos and text[start - 1].isspace():
            start -= 1
        while token.rstrip and end < len(text) and text[end].isspace():
            end += 1
        out += [text[pos:start]] * (start > pos) + [token]
        pos = end
    return out + [text[pos:]] * (pos < len(text))
# --8<-- [end:added-tokens]


# --8<-- [start:json-bpe]
class JsonBPE:
    """A BPE tokenizer read from tokenizer.json: encode, decode, decode_bytes."""

    def __init__(self, spec: dict, config: dict | None = None):
        model = check_model(spec.get("model"))
        self.spec, self.config = spec, config or {}
        self.ids: dict[str, int] = model["vocab"]           # piece -> id
        self.added = [added_token(t, spec.get("normalizer"))
                      for t in spec.get("added_tokens", [])]
        self.pieces = {i: p for p, i in self.ids.items()}   # id -> piece
        self.pieces.update({t.id: t.content for t in self.added})
        self.special = {t.id for t in self.added if t.special}
        self.ranks = merge_ranks(model["merges"], self.ids)
        self.ignore_merges = model.get("ignore_merges", False)
        self.byte_fallback = model.get("byte_fallback", False)
        self.unk = self.ids.get(model["unk_token"]) if model.get("unk_token") else None
        self.fuse_unk = model.get("fuse_unk", False)
        self.bos, self.eos = prefix_suffix(spec.get("post_processor"), self.config,
                                           self.ids | {t.content: t.id
                                                       for t in self.added})

    @property
    def vocab_size(self) -> int:
        """The number of ids: the model's pieces and the added tokens."""
        return max(self.pieces) + 1

    def symbol_ids(self, ch: str) -> list[int]:
        """A character's id; if unknown, the ids of its bytes <0xNN>, or <unk>."""
        if ch in self.ids:
            return [self.ids[ch]]
        names = [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
        if self.byte_fallback and all(n in self.ids for n in names):
            return [self.ids[n] for n in names]
        if self.unk is None:
            raise ValueError(f"character {ch!r} is not in the vocabulary and the "
                             f"tokenizer has no byte fallback or unknown token")
        return [self.unk]

    def encode(self, text: str, allowed_special: str | set = (),
               add_special_tokens: bool = True) -> list[int]:
        """Text -> ids. Special tokens in text are single ids only if allowed
        ("all" or a set of them); otherwise they are encoded as plain text."""
        allowed = [t for t in self.added if not t.special or allowed_special == "all"
                   or t.content in allowed_special]
        ids, start = [], True
        for part in split_added(text, [t for t in allowed if not t.normalized]):
            if isinstance(part, AddedToken):
                ids.append(part.id)
            else:
                ids += self.encode_plain(part, allowed, start)
            start = False
        if add_special_tokens:
            ids = self.bos + ids + self.eos
        return ids

    def encode_plain(self, text: str, allowed: list[AddedToken], start: bool
                     ) -> list[int]:
        """Normalise, cut out normalised added tokens, pre-tokenise, BPE."""
        ids = []
        normalized = [t for t in allowed if t.normalized]
        text = normalize(text, self.spec.get("normalizer"))
        for part in split_added(text, normalized):
            if isinstance(part, AddedToken):
                ids.append(part.id)
                continue
            words = pre_tokenize([(part, start)], self.spec.get("pre_tokenizer"))
            ids += [x for word, _ in words for x in bpe_word(word, self)]
            start = False
        return ids

    def tokens(self, ids: list[int]) -> list[str]:
        """Ids -> their pieces, special tokens left out (they are not text)."""
        unknown = [i for i in ids if i not in self.pieces]
        if unknown:
            raise ValueError(f"token ids not in the vocabulary of {self.vocab_size}: "
                             f"{unknown[:5]}")
        return [self.pieces[i] for i in ids if i not in self.special]

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, as the library decodes a whole text (▁ at its start dropped)."""
        pieces = decode_chain(self.tokens(ids), self.spec.get("decoder"), first=True)
        return b"".join(pieces).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Ids that continue a text -> their bytes; a UTF-8 character may be cut."""
        return b"".join(decode_chain(self.tokens(ids), self.spec.get("decoder"),
                                     first=False))
# --8<-- [end:json-bpe]


# --8<-- [start:check-model]
def check_model(model: dict) -> dict:
    """The BPE model's fields; refuse other models and options we do not follow."""
    if not isinstance(model, dict):
        raise TokenizerJsonError(f"model must be a JSON object, got {model!r:.40}")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise TokenizerJsonError(f"model {kind!r} is not supported: minigpt reads "
                                 f"BPE tokenizers only")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerJsonError(f"BPE option {key}={model[key]!r} is not "
                                     f"supported")
    if model.get("dropout"):
        raise TokenizerJsonError("BPE dropout is for training; minigpt refuses it")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise TokenizerJsonError("model.vocab must map pieces to integer ids")
    if not isinstance(model.get("merges"), list):
        raise TokenizerJsonError("model.merges must be a list")
    return model


def merge_ranks(merges: list, ids: dict[str, int]) -> dict:
    """(id, id) -> (rank, id of the merged piece), from "a b" or ["a", "b"]."""
    ranks = {}
    for rank, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(p, str) and p in ids for p in pair)
                and pair[0] + pair[1] in ids):
            raise TokenizerJsonError(f"model.merges[{rank}]: {m!r} is not two "
                                     f"pieces of model.vocab")
        ranks[ids[pair[0]], ids[pair[1]]] = (rank, ids[pair[0] + pair[1]])
    return ranks
# --8<-- [end:check-model]


# --8<-- [start:post-processor]
def prefix_suffix(spec: dict | None, config: dict, ids: dict[str, int]
                  ) -> tuple[list[int], list[int]]:
    """Ids put before and after a text: the post-processor's, plus BOS (EOS) where
    tokenizer_config.json sets add_bos_token (add_eos_token) and it lacks them."""
    before, after = template(spec)
    for key, where, name in (("add_bos_token", before, "bos_token"),
                             ("add_eos_token", after, "eos_token")):
        token = config.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        # true adds a missing one; false removes none (transformers 5 keeps the
        # post-processor's, older versions rebuilt it)
        if config.get(key) is True and token in ids and ids[token] not in where:
            where.insert(0 if where is before else len(where), ids[token])
    return before, after


def template(spec: dict | None) -> tuple[list[int], list[int]]:
    """The special ids of a TemplateProcessing's "single" template around $A."""
    kind = spec["type"] if spec else None
    if kind == "Sequence":
        found = [template(step) for step in spec["processors"]]
        return ([i for b, _ in found for i in b], [i for _, a in found for i in a])
    if kind in (None, "ByteLevel"):
        return [], []  # ByteLevel only moves offsets
    if kind != "TemplateProcessing":
        raise TokenizerJsonError(f"post-processor {kind!r} is not supported")
    before, after, seen = [], [], False
    for item in spec["single"]:
        if "Sequence" in item:
            seen = True
        else:
            name = item["SpecialToken"]["id"]
            (after if seen else before).extend(spec["special_tokens"][name]["ids"])
    return before, after
# --8<-- [end:post-processor]


# --8<-- [start:decode-chain]
def decode_chain(tokens: list[str], spec: dict | None, first: bool) -> list[bytes]:
    """Run the decoders over the pieces. first: they begin the text, so a ▁ put
    in front when encoding is dropped again."""
    kind = spec["type"] if spec else None
    pieces = [t.encode("utf-8") for t in tokens]
    if kind == "Sequence":
        for step in spec["decoders"]:
            pieces = decode_step(pieces, step, first)
        return pieces
    return decode_step(pieces, spec, first) if kind else pieces


def decode_step(pieces: list[bytes], spec: dict, first: bool) -> list[bytes]:
    """One decoder over a list of byte pieces."""
    kind = spec["type"]
    if kind == "Replace":
        old, new = spec["pattern"]["String"].encode(), spec["content"].encode()
        return [p.replace(old, new) for p in pieces]
    if kind == "ByteFallback":  # <0x0A> -> the byte 0x0A
        return [bytes([int(p[3:5], 16)]) if re.fullmatch(rb"<0x[0-9A-F]{2}>", p)
                else p for p in pieces]
    if kind == "Fuse":
        return [b"".join(pieces)]
    if kind == "Strip":
        mark, start, stop = spec["content"].encode(), spec["start"], spec["stop"]
        return [strip(p, mark, start if first else 0, stop) for p in pieces]
    if kind == "Metaspace":
        mark = spec.get("replacement", "▁").encode()
        drop = first and spec.get("prepend_scheme", "always") != "never"
        return [strip(p.replace(mark, b" "), b" ", int(drop and i == 0), 0)
                for i, p in enumerate(pieces)]
    if kind == "ByteLevel":
        return [byte_level_decode(p.decode("utf-8")) for p in pieces]
    raise TokenizerJsonError(f"decoder {kind!r} is not supported")


def strip(piece: bytes, mark: bytes, start: int, stop: int) -> bytes:
    """Remove up to start copies of mark at the front and stop at the back."""
    for _ in range(start):
        piece = piece.removeprefix(mark)
    for _ in range(stop):
        piece = piece.removesuffix(mark)
    return piece


def byte_level_decode(piece: str) -> bytes:
    """GPT-2's printable characters back to bytes; other text (added tokens) as is."""
    back = {c: b for b, c in bytes_to_unicode().items()}
    if all(c in back for c in piece):
        return bytes(back[c] for c in piece)
    return piece.encode("utf-8")
# --8<-- [end:decode-chain]


# --8<-- [start:load-tokenizer-json]
def load_tokenizer_json(path: str | Path) -> JsonBPE | ByteBPE:
    """A folder's tokenizer.json (with tokenizer_config.json if there is one);
    without tokenizer.json, GPT-2's vocab.json + merges.txt (chapter 15)."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    file, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not file.is_file():
        return load_gpt2_files(folder)
    spec = read_json(file)  # a bad file is named: "tokenizer.json: not UTF-8 JSON"
    config = read_json(config_file) if config_file.is_file() else {}
    try:
        return JsonBPE(spec, config)
    except TokenizerJsonError as exc:  # say which file the field is in
        raise TokenizerJsonError(f"{file}: {exc}") from None
    except KeyError as exc:  # a step without a field it needs
        raise TokenizerJsonError(f"{file}: field {exc} is missing") from None
    except (TypeError, AttributeError, IndexError) as exc:
        raise TokenizerJsonError(f"{file}: a field of the wrong type: {exc}") from None
# --8<-- [end:load-tokenizer-json]
