"""Tokenizers: from characters to GPT-2's byte-level BPE, written from scratch.

Implements a character tokenizer, a byte-level BPE trainer (count pairs, merge,
repeat), and GPT-2's tokenizer: the byte-to-unicode alphabet, GPT-2's
pre-tokenisation pattern and merges loaded from `encoder.json` + `vocab.bpe`
(OpenAI's names) or `vocab.json` + `merges.txt` (Hugging Face's names). It follows
GPT-2's `encoder.py` (Radford et al., 2019) and matches tiktoken's `gpt2` encoding
token for token.

Special tokens (`<|endoftext|>`) become their single id only where the caller
allows them (`encode(text, allowed_special={"<|endoftext|>"})`, as in tiktoken);
elsewhere they are ordinary text. The Unicode letter and number classes ship
precomputed in `unicode_classes.json`, for a fast start.

Leaves out on purpose: raising on special tokens found in text (tiktoken's
default; here they are simply read as text unless allowed), any third-party regex
module (the letter and number classes are built from `unicodedata`, so characters
newer than Python's Unicode tables may split differently), and speed tricks beyond
a per-chunk cache: `bpe` rescans its chunk after every merge, so a chunk of n bytes
costs O(n^2), which only matters for pathological input such as thousands of
random letters with no space.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path


# --8<-- [start:char-tokenizer]
class CharTokenizer:
    """One token per distinct character of a training text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.ids = {ch: i for i, ch in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - self.ids.keys()
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {sorted(unknown)!r}")
        return [self.ids[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)
# --8<-- [end:char-tokenizer]


# --8<-- [start:bpe-merge]
def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in ids, left to right, by new_id."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
# --8<-- [end:bpe-merge]


# --8<-- [start:bytes-to-unicode]
@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's alphabet: each of the 256 bytes as one printable character.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space,
    ...) are moved to code points 256 and up, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return dict(sorted(table.items()))
# --8<-- [end:bytes-to-unicode]


# --8<-- [start:unicode-classes]
def category_ranges(prefix: str) -> list[tuple[int, int]]:
    """Runs of code points whose Unicode category starts with prefix ("L", "Lu")."""
    ranges, start = [], None
    for cp in range(0x110000):
        inside = unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    return ranges


def char_class(ranges: list[tuple[int, int]]) -> str:
    """The inside of a regex [...] class matching exactly these code points."""
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                   for a, b in ranges)
# --8<-- [end:unicode-classes]


# category_ranges walks 1.1 million code points, most of a second: too slow to
# make a user wait for at every start. The result ships with the package, with
# the Unicode version it was computed from, and is recomputed only if the running
# Python knows another version.
CLASSES_FILE = Path(__file__).with_name("unicode_classes.json")


# --8<-- [start:unicode-table]
@functools.cache
def letters_and_numbers() -> tuple[list, list]:
    """The ranges of \\p{L} and \\p{N} for this Python's Unicode version."""
    try:
        table = json.loads(CLASSES_FILE.read_text(encoding="utf-8"))
        if table["unicode"] == unicodedata.unidata_version:
            return table["L"], table["N"]
    except (OSError, ValueError, KeyError):
        pass  # no table, or a broken one: compute
    return category_ranges("L"), category_ranges("N")


def save_unicode_table(path: Path = CLASSES_FILE) -> None:
    """Write the table that letters_and_numbers reads (run once per Unicode)."""
    table = {"unicode": unicodedata.unidata_version,
             "L": category_ranges("L"), "N": category_ranges("N")}
    path.write_text(json.dumps(table, separators=(",", ":")), encoding="utf-8")
# --8<-- [end:unicode-table]


# --8<-- [start:gpt2-pattern]
# Unicode's White_Space property (Python's \s also matches \x1c-\x1f).
SPACE = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.cache
def gpt2_pattern() -> re.Pattern:
    """GPT-2's pre-tokenisation regex, with \\p{L} and \\p{N} spelled out for `re`."""
    letter, number = (char_class(r) for r in letters_and_numbers())
    return re.compile(
        r"'s|'t|'re|'ve|'m|'ll|'d"        # common English contractions
        rf"| ?[{letter}]+"                  # a word, with its leading space
        rf"| ?[{number}]+"                  # a run of numbers (digits, ½, Ⅻ, ...)
        rf"| ?[^{SPACE}{letter}{number}]+"  # punctuation and symbols
        rf"|[{SPACE}]+(?![^{SPACE}])"       # spaces, leaving one for the next word
        rf"|[{SPACE}]+"                     # trailing spaces
    )
# --8<-- [end:gpt2-pattern]


# --8<-- [start:valid-unicode]
def valid_unicode(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8) by U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
# --8<-- [end:valid-unicode]


# --8<-- [start:bpe-count-pairs]
def count_pairs(words: list[list[int]], counts: list[int]) -> tuple[dict, dict]:
    """Pair -> occurrences (each word weighted by its count), pair -> words with it."""
    pairs: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for i, (word, n) in enumerate(zip(words, counts, strict=True)):
        update_pairs(pairs, where, word, n, i)
    return pairs, where


def update_pairs(pairs: dict, where: dict, word: list[int], n: int, i: int) -> None:
    """Add n (or remove, n < 0) occurrences of word i's adjacent pairs."""
    for pair in pairwise(word):
        pairs[pair] = pairs.get(pair, 0) + n
        if pairs[pair] == 0:
            del pairs[pair]  # gone everywhere: it must not win a later round
        elif n > 0:
            where.setdefault(pair, set()).add(i)
# --8<-- [end:bpe-count-pairs]


# --8<-- [start:bpe-train]
def train_bpe(text: str, vocab_size: int) -> tuple[dict[int, bytes], list]:
    """Learn vocab_size - 256 merges from text: count pairs, merge, repeat."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256, got {vocab_size}")
    chunks = Counter(gpt2_pattern().findall(valid_unicode(text)))
    words = [list(c.encode("utf-8")) for c in chunks]  # ids 0-255 are the bytes
    counts = list(chunks.values())
    pairs, where = count_pairs(words, counts)
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for new_id in range(256, vocab_size):
        if not pairs:
            break  # every chunk is already a single token
        # the most frequent pair; ties go to the smallest pair of ids
        best = min(pairs, key=lambda p: (-pairs[p], p))
        for i in where.pop(best):  # only the words that contain it change
            update_pairs(pairs, where, words[i], -counts[i], i)
            words[i] = merge(words[i], best, new_id)
            update_pairs(pairs, where, words[i], +counts[i], i)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merges.append((vocab[best[0]], vocab[best[1]]))
    return vocab, merges
# --8<-- [end:bpe-train]


# --8<-- [start:bpe-encode-chunk]
def bpe(ids: list[int], ranks: dict[tuple[int, int], tuple[int, int]]) -> list[int]:
    """Keep merging the adjacent pair that was learned first (lowest rank)."""
    while len(ids) > 1:
        known = [p for p in pairwise(ids) if p in ranks]
        if not known:
            break  # no pair left that training ever merged
        best = min(known, key=lambda p: ranks[p][0])
        ids = merge(ids, best, ranks[best][1])
    return ids
# --8<-- [end:bpe-encode-chunk]


# --8<-- [start:byte-bpe]
class ByteBPE:
    """Byte-level BPE: GPT-2's pattern splits the text, then bpe() merges each chunk.

    Example:
        >>> tok = ByteBPE(*train_bpe("aaab aaab", vocab_size=258))
        >>> tok.decode(tok.encode("aaab"))
        'aaab'
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                 special: dict[str, int] | None = None):
        self.vocab, self.merges = vocab, merges         # id -> bytes; in rank order
        self.special = special or {}                    # "<|endoftext|>" -> id
        ids = {b: i for i, b in vocab.items()}          # bytes -> id
        self.byte_ids = [ids[bytes([b])] for b in range(256)]
        self.ranks = {(ids[a], ids[b]): (rank, ids[a + b])  # (id, id) -> (rank, id)
                      for rank, (a, b) in enumerate(merges)}
        self.cache: dict[str, list[int]] = {}           # chunk -> ids, seen before

    def encode(self, text: str, allowed_special: Iterable[str] = ()) -> list[int]:
        """Text -> token ids; the special tokens in allowed_special become one id.

        Anywhere else "<|endoftext|>" is ordinary text (as in tiktoken), so a
        prompt can never end a document by accident. "all" allows every one.
        """
        allowed = self.special if allowed_special == "all" else allowed_special
        unknown = set(allowed) - self.special.keys()
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
        if not allowed:
            return self.encode_ordinary(text)
        by_length = sorted(allowed, key=len, reverse=True)  # longest match first
        parts = re.split(f"({'|'.join(map(re.escape, by_length))})", text)
        out: list[int] = []
        for i, part in enumerate(parts):  # the odd parts are special tokens
            out.extend([self.special[part]] if i % 2 else self.encode_ordinary(part))
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> token ids, special tokens read as plain text."""
        out: list[int] = []
        for chunk in gpt2_pattern().findall(valid_unicode(text)):
            if chunk not in self.cache:
                ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
                self.cache[chunk] = bpe(ids, self.ranks)
            out.extend(self.cache[chunk])
        return out

    def decode_bytes(self, ids: list[int]) -> bytes:
        """Token ids -> raw bytes, which may end inside a UTF-8 character."""
        unknown = [i for i in ids if i not in self.vocab]
        if unknown:
            raise ValueError(f"token ids not in the vocabulary of "
                             f"{len(self.vocab)}: {unknown[:5]}")
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, folder: str | Path) -> None:
        """Write vocab.json + merges.txt, which load_tokenizer reads back."""
        save_gpt2_files(self.vocab, self.merges, Path(folder))
# --8<-- [end:byte-bpe]


# --8<-- [start:bpe-save]
def save_gpt2_files(vocab: dict[int, bytes], merges: list, folder: Path) -> None:
    """vocab.json + merges.txt in GPT-2's format: bytes shown in its alphabet."""
    show = bytes_to_unicode()
    def as_text(token: bytes) -> str:
        return "".join(show[b] for b in token)
    folder.mkdir(parents=True, exist_ok=True)
    table = {as_text(tok): i for i, tok in sorted(vocab.items())}
    lines = [f"{as_text(a)} {as_text(b)}" for a, b in merges]
    (folder / "vocab.json").write_text(json.dumps(table, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n",
                                       encoding="utf-8")
# --8<-- [end:bpe-save]


# --8<-- [start:load-tokenizer]
FILE_NAMES = [("encoder.json", "vocab.bpe"),   # OpenAI's release
              ("vocab.json", "merges.txt")]    # Hugging Face's copy


def load_tokenizer(path: str | Path) -> ByteBPE:
    """A GPT-2-format tokenizer from a folder (or a file inside it)."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    for vocab_name, merges_name in FILE_NAMES:
        if (folder / vocab_name).is_file() and (folder / merges_name).is_file():
            break
    else:
        raise FileNotFoundError(f"{folder}: no encoder.json + vocab.bpe "
                                f"or vocab.json + merges.txt")
    from_char = {c: b for b, c in bytes_to_unicode().items()}
    def to_bytes(token: str) -> bytes:
        if all(c in from_char for c in token):
            return bytes(from_char[c] for c in token)
        return token.encode("utf-8")  # a special token outside the alphabet
    table = read_vocab(folder / vocab_name)
    vocab = {i: to_bytes(tok) for tok, i in table.items()}
    merges = read_merges(folder / merges_name, to_bytes, set(vocab.values()))
    # a token that is neither a byte nor made by a merge is special: <|endoftext|>
    made = {a + b for a, b in merges}
    special = {tok: i for tok, i in table.items()
               if len(vocab[i]) > 1 and vocab[i] not in made}
    return ByteBPE(vocab, merges, special)
# --8<-- [end:load-tokenizer]


# --8<-- [start:read-gpt2-files]
class TokenizerFileError(ValueError):
    """A vocabulary or merges file that cannot be read, naming the file and why."""


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.json: every token and its id, each id once."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise TokenizerFileError(f"{path}: not UTF-8 JSON: {exc}") from None
    if not isinstance(table, dict) or not all(
            type(i) is int and i >= 0 for i in table.values()):
        raise TokenizerFileError(f"{path}: must be an object of token -> id "
                                 f"(an integer >= 0)")
    if len(set(table.values())) < len(table):
        raise TokenizerFileError(f"{path}: two tokens share an id")
    return table


def read_merges(path: Path, to_bytes, known: set[bytes]) -> list[tuple]:
    """merges.txt: one merge a line, two tokens whose join is in the vocabulary."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except ValueError as exc:
        raise TokenizerFileError(f"{path}: not UTF-8 text: {exc}") from None
    merges = []
    for n, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        pair = tuple(to_bytes(t) for t in line.split(" "))
        if len(pair) != 2 or not {*pair, pair[0] + pair[-1]} <= known:
            raise TokenizerFileError(f"{path}: line {n}: {line!r} is not two "
                                     f"tokens of the vocabulary, one space apart")
        merges.append(pair)
    return merges
# --8<-- [end:read-gpt2-files]
