"""Every supported model type in one table: model_type -> how to load it.

A checkpoint folder in Hugging Face's layout names its architecture in
`config.json` (`"model_type": "gpt2"`, `"llama"`, ...). `load_model` and
`load_tokenizer` read that name and call the loaders registered for it, so the
command line and `minigpt.load_model` open any supported checkpoint, and a new
model type is one more line in `LOADERS` (or one `register` call), with no change
to the models or to generate(). Every loader returns a model with the interface
of `minigpt.generation.LanguageModel`. A loader may also give its config reader, its
name table, the model's class and its weights' layout on disk: quantised loading
(`minigpt.quantize`) reads the same table, so a model type registered here loads
quantised too.

Leaves out on purpose: remote code, and guessing a model type from tensor names
when config.json does not give one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from minigpt.generation import LanguageModel, Tokenizer
from minigpt.kvcache import CachedGPT
from minigpt.llama import LlamaModel, llama_names, load_llama, read_llama_config
from minigpt.model import load_gpt2
from minigpt.tokenizer_json import load_tokenizer_json
from minigpt.weights import WeightsError, gpt2_names, read_config

__all__ = ["LOADERS", "Loader", "load_model", "load_tokenizer", "register",
           "registered"]


# --8<-- [start:loader-table]
class Loader(NamedTuple):
    """How to open one model type: its model and its tokenizer, from a folder."""

    model: Callable[[Path], LanguageModel]
    tokenizer: Callable[[Path], Tokenizer]
    # for quantised checkpoints: config.json -> config, config -> name table
    # (Hugging Face name -> (where in params, shape)), (config, params) -> model
    config: Callable[[Path], object] | None = None
    names: Callable[[object], dict] | None = None
    build: Callable[[object, dict], LanguageModel] | None = None
    rows_on_disk: bool = False  # weights stored [out, in] (nn.Linear), not [in, out]


def load_cached_gpt2(folder: Path) -> CachedGPT:
    """Chapter 17's GPT-2 with chapter 20's cache: what generate() wants."""
    gpt = load_gpt2(folder)
    return CachedGPT(gpt.config, gpt.params)


# config.json's model_type -> its loaders
LOADERS: dict[str, Loader] = {
    "gpt2": Loader(load_cached_gpt2, load_tokenizer_json, read_config, gpt2_names,
                   CachedGPT),  # GPT-2's Conv1D stores weights [in, out]
    "llama": Loader(load_llama, load_tokenizer_json, read_llama_config, llama_names,
                    LlamaModel, rows_on_disk=True),
}


def register(model_type: str, loader: Loader) -> None:
    """Teach load_model and load_tokenizer one more model type."""
    LOADERS[model_type] = loader
# --8<-- [end:loader-table]


# --8<-- [start:registered-loader]
def registered(model_type: str) -> Loader:
    """The loaders of a model type, or an error naming the ones there are."""
    if model_type not in LOADERS:
        raise WeightsError(f"model_type {model_type!r} is not supported "
                           f"(known: {', '.join(sorted(LOADERS))})")
    return LOADERS[model_type]
# --8<-- [end:registered-loader]


# --8<-- [start:load-any-model]
def load_model(path: str | Path) -> LanguageModel:
    """Any supported model from a folder holding config.json and model.safetensors."""
    folder = Path(path)
    if is_gguf(folder):  # or one .gguf file that holds it all (chapter 33)
        return gguf_loader().model(folder)
    # the weights are one file, or shards listed in an index (chapter 26)
    weights = ("model.safetensors", "model.safetensors.index.json")
    for names in (("config.json",), weights):
        if not any((folder / name).is_file() for name in names):
            raise WeightsError(f"{folder}: no {names[0]} (a checkpoint folder has "
                               f"config.json and model.safetensors)")
    if saved_scheme(folder):  # int8 weights, which the quantised loader reads
        raise WeightsError(f"{folder} holds {saved_scheme(folder)} weights: open it "
                           f"with minigpt.quantize.load_quantized")
    return loader_for(folder).model(folder)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder (or of a file inside it)."""
    folder = Path(path)
    if is_gguf(folder):  # a .gguf file: the tokenizer is in its metadata
        return gguf_loader().tokenizer(folder)
    folder = folder if folder.is_dir() else folder.parent
    return loader_for(folder).tokenizer(folder)


def loader_for(folder: Path) -> Loader:
    """The loaders for config.json's model_type (no config.json: GPT-2's files)."""
    if not (folder / "config.json").is_file():
        return LOADERS["gpt2"]  # a bare vocabulary folder, as in chapter 15
    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        kind = kind.get("model_type", "gpt2") if isinstance(kind, dict) else None
    except ValueError:  # not JSON: the model's own loader says what is wrong
        kind = "gpt2"
    if not isinstance(kind, str) or kind not in LOADERS:
        raise WeightsError(f"{folder / 'config.json'}: model_type {kind!r} is not "
                           f"supported (known: {', '.join(sorted(LOADERS))})")
    return LOADERS[kind]


def saved_scheme(path: str | Path) -> str | None:
    """The scheme a checkpoint folder was quantised with; None if it holds floats."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        return (raw.get("quantization_config") or {}).get("scheme")
    except (OSError, ValueError, AttributeError):
        return None  # the model's own loader will say what is wrong
# --8<-- [end:load-any-model]


# --8<-- [start:gguf-and-family-loaders]
# Qwen2 and Qwen3 are LLaMA-style models with a few additions (chapter 35)
for _family in ("qwen2", "qwen3"):
    register(_family, LOADERS["llama"])


def is_gguf(path: Path) -> bool:
    """A .gguf file: llama.cpp's format, model and tokenizer in one (chapter 33)."""
    return path.suffix == ".gguf" and path.is_file()


def gguf_loader() -> Loader:
    """The loaders of a .gguf file, imported only when one is opened: chapter
    33's tables of names, 4-bit and Q8_0 matrices kept as stored (chapter 36)."""
    from minigpt.block_kernels import load_gguf_blocks
    from minigpt.gguf_tokenizer import load_gguf_tokenizer

    return Loader(load_gguf_blocks, load_gguf_tokenizer)
# --8<-- [end:gguf-and-family-loaders]
