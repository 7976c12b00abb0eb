"""The tokenizer inside a GGUF file, as the tokenizer.json pipeline that describes it.

A GGUF file carries its tokenizer in the metadata: `tokenizer.ggml.tokens` (every
piece, by id), `token_type` (normal, unknown, control, user-defined, unused,
byte), and either `scores` (`tokenizer.ggml.model` = "llama": SentencePiece, which
merges the adjacent pair whose joined piece scores highest) or `merges`
("gpt2": byte-level BPE, merges by rank). The byte-level pre-tokenizer's regex
is not in the file: `tokenizer.ggml.pre` names it, and `PRE_TOKENIZERS` holds the
regex of each name we know, written as tokenizer.json writes it. Both kinds are
then built as the `tokenizer.json` that would describe them and handed to
`minigpt.tokenizer_json.JsonBPE`, so encoding and decoding are the tokenizer.json
reader's code.
BOS/EOS, `add_bos_token` and the chat template come from the metadata too.

Follows llama.cpp's GGUF tokenizer keys; the tests compare with sentencepiece
and the `tokenizers` library on tokenizers trained in the tests.

Leaves out on purpose: the "bert", "t5" and "rwkv" tokenizer models, pre names
beyond those in `PRE_TOKENIZERS` (refused by name), and EOS added after a text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minigpt.gguf import GGUFError, GGUFFile, read_gguf
from minigpt.gguf_models import meta
from minigpt.tokenizer_json import AddedToken, JsonBPE, split_added

__all__ = ["PRE_TOKENIZERS", "chat_config", "gguf_chat_config", "load_gguf_tokenizer",
           "read_gguf_chat_config"]


# --8<-- [start:gguf-pre-tokenizers]
def split_then_bytes(regex: str) -> dict:
    """A tokenizer.json pre-tokenizer: split by regex, then GPT-2's byte alphabet."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}


# Llama 3 and Qwen2 differ only in how many digits a number piece may hold
WORDS = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_BYTES = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
# tokenizer.ggml.pre -> how its text is cut into words before BPE
PRE_TOKENIZERS = {
    "gpt-2": GPT2_BYTES,
    "llama-bpe": split_then_bytes(WORDS % "{1,3}"),
    "qwen2": split_then_bytes(WORDS % ""),
    "smollm": {"type": "Sequence", "pretokenizers": [  # every digit alone first
        {"type": "Split", "pattern": {"Regex": r"\p{N}"}, "behavior": "Isolated"},
        GPT2_BYTES]},
}
# --8<-- [end:gguf-pre-tokenizers]


# --8<-- [start:gguf-vocab]
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4  # tokenizer.ggml.token_type


def gguf_vocab(gguf: GGUFFile) -> tuple[list[str], list[int]]:
    """The pieces by id and their types, checked to be as many."""
    tokens = meta(gguf, "tokenizer.ggml.tokens", list)
    types = meta(gguf, "tokenizer.ggml.token_type", np.ndarray, [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.token_type: {len(types)} "
                        f"types for {len(tokens)} tokens")
    return tokens, [int(t) for t in types]


def special_id(gguf: GGUFFile, name: str, tokens: list[str]) -> int | None:
    """tokenizer.ggml.<name>_token_id, checked to be a token."""
    i = meta(gguf, f"tokenizer.ggml.{name}_token_id", int, None)
    if i is not None and not 0 <= i < len(tokens):
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.{name}_token_id: {i} is not "
                        f"one of the {len(tokens)} tokens")
    return i


def added_tokens(tokens: list[str], types: list[int]) -> list[dict]:
    """Control and user-defined tokens, cut out of the text before BPE."""
    return [{"id": i, "content": t, "special": kind != USER_DEFINED}
            for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
            if kind in (UNKNOWN, CONTROL, USER_DEFINED)]
# --8<-- [end:gguf-vocab]


# --8<-- [start:gguf-spm]
class SentencePiece(JsonBPE):
    """SentencePiece's BPE: each piece of text between special tokens gets its ▁s
    first (user-defined pieces are then found in it), and merges rank by the
    score of the piece they make."""

    def __init__(self, spec: dict, config: dict, ranks: dict, prefix: bool):
        super().__init__(spec, config)
        self.ranks, self.prefix = ranks, prefix  # (id, id) -> (-score, joined id)

    def encode(self, text: str, allowed_special: str | set = (),
               add_special_tokens: bool = True) -> list[int]:
        """Text -> ids: allowed special tokens cut out, then each piece of text
        between them gets spaces to ▁ and a ▁ in front (as llama.cpp does), and
        goes through JsonBPE's encode."""
        cut = [t for t in self.added if t.special and (
            allowed_special == "all" or t.content in allowed_special)]
        ids = []
        for part in split_added(text, cut):
            ids += [part.id] if isinstance(part, AddedToken) else super().encode(
                ("▁" if self.prefix else "") + part.replace(" ", "▁"), (), False)
        return self.bos + ids + self.eos if add_special_tokens else ids


def spm_spec(gguf: GGUFFile, tokens: list[str], types: list[int]) -> tuple:
    """SentencePiece as tokenizer.json: byte fallback, and a merge for every way
    of cutting a normal piece in two, ranked by the piece's score."""
    scores = meta(gguf, "tokenizer.ggml.scores", np.ndarray)
    if len(scores) != len(tokens):
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.scores: {len(scores)} "
                        f"scores for {len(tokens)} tokens")
    ids = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranks = {(ids[t[:k]], ids[t[k:]]): (-float(scores[i]), i)
             for t, i in ids.items() for k in range(1, len(t))
             if t[:k] in ids and t[k:] in ids}  # the highest score merges first
    prefix = meta(gguf, "tokenizer.ggml.add_space_prefix", bool, True)
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": int(prefix), "stop": 0}]
    spec = {"decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": [], "byte_fallback": True}}
    return spec, ranks, prefix


def bpe_spec(gguf: GGUFFile, tokens: list[str]) -> dict:
    """Byte-level BPE as tokenizer.json: merges, and the pre name's regex."""
    pre = meta(gguf, "tokenizer.ggml.pre", str)  # no guess when it is missing
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.pre: {pre!r} is not supported "
                        f"(known: {', '.join(PRE_TOKENIZERS)})")
    merges = meta(gguf, "tokenizer.ggml.merges", list)
    return {"pre_tokenizer": PRE_TOKENIZERS[pre], "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": merges,  # Llama 3 keeps a known word whole
                      "ignore_merges": pre == "llama-bpe"}}
# --8<-- [end:gguf-spm]


# --8<-- [start:load-gguf-tokenizer]
def gguf_tokenizer(gguf: GGUFFile) -> JsonBPE:
    """The tokenizer of an opened GGUF file."""
    tokens, types = gguf_vocab(gguf)
    kind = meta(gguf, "tokenizer.ggml.model", str)
    if kind == "llama":
        spec, ranks, prefix = spm_spec(gguf, tokens, types)
    elif kind == "gpt2":
        spec = bpe_spec(gguf, tokens)
    else:
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.model: {kind!r} is not "
                        f"supported (known: llama, gpt2)")
    spec["added_tokens"] = added_tokens(tokens, types)
    config = gguf_chat_config(gguf, tokens) | {"add_bos_token": meta(
        gguf, "tokenizer.ggml.add_bos_token", bool, kind == "llama")}
    if kind == "llama":
        return SentencePiece(spec, config, ranks, prefix)
    try:
        return JsonBPE(spec, config)
    except (KeyError, ValueError) as exc:  # a piece not in the vocabulary, or a
        raise GGUFError(f"{gguf.path}: tokenizer.ggml.merges: unknown piece or "
                        f"not two pieces: {exc}") from None  # merge of one piece


def gguf_chat_config(gguf: GGUFFile, tokens: list[str]) -> dict:
    """What tokenizer_config.json would say: BOS, EOS and the chat template."""
    config = {}
    for name in ("bos", "eos"):
        i = special_id(gguf, name, tokens)
        if i is not None:
            config[f"{name}_token"] = tokens[i]
    template = meta(gguf, "tokenizer.chat_template", str, None)
    return config | ({"chat_template": template} if template else {})


def load_gguf_tokenizer(path: str | Path) -> JsonBPE:
    """The tokenizer stored in a .gguf file's metadata."""
    return gguf_tokenizer(read_gguf(path))


def chat_config(path: str | Path) -> dict:
    """The chat settings of a checkpoint folder, or of a .gguf file's metadata."""
    if Path(path).suffix == ".gguf" and Path(path).is_file():
        return read_gguf_chat_config(path)
    from minigpt.chat import read_chat_config

    return read_chat_config(path)


def read_gguf_chat_config(path: str | Path) -> dict:
    """The chat settings of a .gguf file; it must hold a chat template."""
    gguf = read_gguf(path)
    config = gguf_chat_config(gguf, gguf_vocab(gguf)[0])
    if "chat_template" not in config:
        raise GGUFError(f"{path}: no tokenizer.chat_template: this model was not "
                        f"trained to chat; use `generate` instead")
    return config
# --8<-- [end:load-gguf-tokenizer]
