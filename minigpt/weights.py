"""Model weights on disk: a safetensors reader from scratch, and GPT-2's name table.

Implements the safetensors format (an 8-byte little-endian header length, a JSON
header, then raw little-endian data), memory-mapped with `np.memmap` so that F32
tensors are never copied, every byte of the header validated before any data is
touched. Then maps Hugging Face GPT-2 tensor names to the engine's nested dict and
reads `config.json` into a frozen dataclass. Follows the safetensors specification
(github.com/huggingface/safetensors) and Hugging Face's GPT-2 checkpoints. A small
writer (`write_safetensors`) saves the quantised checkpoints of a later chapter.

Leaves out on purpose: sharded checkpoints (`model.safetensors.index.json`), the
8-bit float dtypes, and big-endian machines.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# --8<-- [start:weights-error]
class WeightsError(ValueError):
    """A malformed checkpoint; the message names the file, tensor and problem."""
# --8<-- [end:weights-error]


# --8<-- [start:safetensors-dtypes]
# safetensors dtype -> the NumPy dtype stored on disk (always little-endian)
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",  # BF16: raw bits
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
MAX_HEADER = 100_000_000  # the limit the safetensors library itself sets


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift its 16 bits up. (...) -> (...)"""
    return (bits.astype(np.uint32) << 16).view(np.float32)
# --8<-- [end:safetensors-dtypes]


# --8<-- [start:read-header]
def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file, and where its data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8:
            raise WeightsError(f"{path}: {size} bytes, too short for a header length")
        n = int.from_bytes(f.read(8), "little")  # u64, little-endian
        if n > min(size - 8, MAX_HEADER):  # checked before reading: no huge alloc
            raise WeightsError(f"{path}: header length {n} does not fit in the "
                               f"file's {size - 8} bytes (or the {MAX_HEADER} limit)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsError(f"{path}: header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header is a JSON {type(header).__name__}, "
                           f"not an object")
    return header, 8 + n


def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object hook that refuses a key given twice (json keeps the last)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"duplicate keys {twice}")
    return dict(pairs)
# --8<-- [end:read-header]


# --8<-- [start:check-entry]
def check_entry(entry: object, data_size: int) -> tuple[str, list, int, int]:
    """One header entry -> (dtype, shape, begin, end), or ValueError saying why."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError("entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(is_int(o) for o in offsets)):
        raise ValueError(f"data_offsets {offsets!r} is not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise ValueError(f"data_offsets {offsets} outside the {data_size} data bytes")
    needed = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
    if end - begin != needed:
        raise ValueError(f"{dtype} {shape} needs {needed} bytes, offsets give "
                         f"{end - begin}")
    return dtype, shape, begin, end


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true is not 1
# --8<-- [end:check-entry]


# --8<-- [start:read-safetensors]
def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file; F32 ones are read-only views of the file."""
    path = Path(path)
    header, start = read_header(path)
    check_metadata(path, header.pop("__metadata__", {}))  # strings, not a tensor
    data_size = path.stat().st_size - start
    entries = {}
    for name, entry in header.items():
        try:
            entries[name] = check_entry(entry, data_size)
        except ValueError as exc:
            raise WeightsError(f"{path}: tensor {name!r}: {exc}") from None
    check_layout(path, entries, data_size)
    # an empty mapping is an error for mmap, so only map when there is data
    data = (np.memmap(path, np.uint8, mode="r", offset=start) if data_size
            else np.zeros(0, np.uint8))
    return {name: to_array(data[begin:end], dtype, shape)
            for name, (dtype, shape, begin, end) in entries.items()}


def to_array(raw: np.ndarray, dtype: str, shape: list[int]) -> np.ndarray:
    """Bytes -> an array of the given shape; F16 and BF16 become float32."""
    x = raw.view(DTYPES[dtype]).reshape(shape)  # a view: nothing copied yet
    if dtype == "BF16":
        return bf16_to_f32(x)
    return x.astype(np.float32) if dtype == "F16" else x
# --8<-- [end:read-safetensors]


# --8<-- [start:check-layout]
def check_layout(path: Path, entries: dict[str, tuple], data_size: int) -> None:
    """The tensors tile the data exactly: no shared byte, no hole, nothing after."""
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    at, previous = 0, None  # where the next tensor must begin, and who ended there
    for begin, end, name in spans:
        if begin < at:
            raise WeightsError(f"{path}: tensor {name!r}: its data overlaps "
                               f"tensor {previous!r} (bytes {begin} < {at})")
        if begin > at:
            raise WeightsError(f"{path}: tensor {name!r}: bytes {at}..{begin} "
                               f"before it belong to no tensor (a hole)")
        at, previous = end, name
    if at != data_size:
        raise WeightsError(f"{path}: {data_size - at} bytes after the last "
                           f"tensor {previous!r} belong to no tensor")


def check_metadata(path: Path, metadata: object) -> None:
    """__metadata__ maps strings to strings, as the safetensors format says."""
    if not isinstance(metadata, dict):
        raise WeightsError(f"{path}: __metadata__ is not a JSON object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise WeightsError(f"{path}: __metadata__[{key!r}] is a JSON "
                               f"{type(value).__name__}, not a string")
# --8<-- [end:check-layout]


# --8<-- [start:gpt-config]
@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 model, in GPT-2's own terms (as in its config.json)."""

    vocab_size: int = 50257           # number of tokens the model knows
    n_ctx: int = 1024                 # longest input, in tokens ("n_positions")
    n_embd: int = 768                 # width C of the residual stream
    n_layer: int = 12                 # number of transformer blocks
    n_head: int = 12                  # attention heads per block; n_embd % n_head == 0
    layer_norm_epsilon: float = 1e-5  # added to the variance in every layer norm
    eos_token_ids: tuple[int, ...] = ()  # ids that end a text; () if none is named
# --8<-- [end:gpt-config]


# --8<-- [start:read-config]
def read_json(path: str | Path) -> dict:
    """A config.json as a dict, or a WeightsError saying what is wrong with it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are both
        raise WeightsError(f"{path}: not UTF-8 JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: a JSON {type(raw).__name__}, not an object")
    return raw


def read_config(path: str | Path) -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 config.json."""
    raw = read_json(path)
    check_fields(path, raw, ("vocab_size", "n_positions", "n_ctx", "n_embd",
                             "n_layer", "n_head", "n_inner"),
                 ("layer_norm_epsilon",), ("scale_attn_weights",))
    check_supported(path, raw)
    try:
        config = GPTConfig(vocab_size=raw["vocab_size"],
                           n_ctx=raw.get("n_positions", raw.get("n_ctx", 1024)),
                           n_embd=raw["n_embd"], n_layer=raw["n_layer"],
                           n_head=raw["n_head"],
                           layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5),
                           eos_token_ids=read_eos_ids(path, raw))
    except KeyError as exc:
        raise WeightsError(f"{path}: required field {exc} is missing") from None
    if config.n_embd % config.n_head:
        raise WeightsError(f"{path}: n_embd {config.n_embd} is not a multiple "
                           f"of n_head {config.n_head}")
    return config
# --8<-- [end:read-config]


# --8<-- [start:check-fields]
def check_fields(path: str | Path, raw: dict, counts: tuple[str, ...],
                 numbers: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> None:
    """Refuse a field of the wrong type, by name: "n_layer": "4" is no count."""
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    for keys, ok, what in ((counts, lambda x: is_int(x) and x > 0, "an integer > 0"),
                           (numbers, number, "a number"),
                           (flags, lambda x: isinstance(x, bool), "true or false")):
        for key in keys:
            if raw.get(key) is not None and not ok(raw[key]):
                raise WeightsError(f"{path}: {key} must be {what}, got {raw[key]!r}")
# --8<-- [end:check-fields]


# --8<-- [start:read-eos-ids]
def read_eos_ids(path: str | Path, raw: dict) -> tuple[int, ...]:
    """The end-of-text ids: generation_config.json's if present, else config.json's."""
    generation = Path(path).with_name("generation_config.json")
    if generation.is_file():
        raw = {**raw, **read_json(generation)}  # the checkpoint's own choice wins
    eos = raw.get("eos_token_id")
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if not all(is_int(i) and i >= 0 for i in ids):
        raise WeightsError(f"{path}: eos_token_id {eos!r} is not an id or a list "
                           f"of ids")
    return tuple(ids)
# --8<-- [end:read-eos-ids]


# --8<-- [start:check-supported]
def check_supported(path: str | Path, raw: dict) -> None:
    """Refuse configs that describe a model this engine would compute wrongly."""
    wanted = {"model_type": "gpt2", "activation_function": "gelu_new",
              "tie_word_embeddings": True, "scale_attn_by_inverse_layer_idx": False,
              "scale_attn_weights": True, "add_cross_attention": False}
    for key, value in wanted.items():
        if raw.get(key, value) != value:
            raise WeightsError(f"{path}: {key} is {raw[key]!r}; minigpt supports "
                               f"only {value!r}")
    if raw.get("n_inner") not in (None, 4 * raw.get("n_embd", 0)):
        raise WeightsError(f"{path}: n_inner {raw['n_inner']} is not 4 * n_embd")
# --8<-- [end:check-supported]


# --8<-- [start:gpt2-name-table]
def gpt2_names(config: GPTConfig) -> dict[str, tuple[tuple[str, ...], tuple]]:
    """Hugging Face name -> (path in our params, expected shape), for every tensor."""
    C, V, T = config.n_embd, config.vocab_size, config.n_ctx
    table = {"wte.weight": (("wte",), (V, C)), "wpe.weight": (("wpe",), (T, C)),
             "ln_f.weight": (("ln_f", "g"), (C,)), "ln_f.bias": (("ln_f", "b"), (C,))}
    # per block; Conv1D stores weights as [in, out], our layout, so none transposes
    block = {"ln_1.weight": ("ln_1", "g", (C,)), "ln_1.bias": ("ln_1", "b", (C,)),
             "attn.c_attn.weight": ("attn", "c_attn", "w", (C, 3 * C)),
             "attn.c_attn.bias": ("attn", "c_attn", "b", (3 * C,)),
             "attn.c_proj.weight": ("attn", "c_proj", "w", (C, C)),
             "attn.c_proj.bias": ("attn", "c_proj", "b", (C,)),
             "ln_2.weight": ("ln_2", "g", (C,)), "ln_2.bias": ("ln_2", "b", (C,)),
             "mlp.c_fc.weight": ("mlp", "c_fc", "w", (C, 4 * C)),
             "mlp.c_fc.bias": ("mlp", "c_fc", "b", (4 * C,)),
             "mlp.c_proj.weight": ("mlp", "c_proj", "w", (4 * C, C)),
             "mlp.c_proj.bias": ("mlp", "c_proj", "b", (C,))}
    for i in range(config.n_layer):
        for name, (*where, shape) in block.items():
            table[f"h.{i}.{name}"] = (("blocks", i, *where), shape)
    return table
# --8<-- [end:gpt2-name-table]


# --8<-- [start:gpt2-params]
def check_layers(n_layer: int, tensors: dict, source: str) -> None:
    """Refuse more blocks than there are tensors, before a table of them is built."""
    if n_layer > len(tensors):  # a config's 10**9 layers would take minutes to list
        raise WeightsError(f"{source}: {n_layer} layers, but only {len(tensors)} "
                           f"tensors: the config does not fit the weights")


def gpt2_params(tensors: dict[str, np.ndarray], config: GPTConfig,
                source: str = "checkpoint") -> dict:
    """Checkpoint tensors -> our nested params, every name and shape checked."""
    check_layers(config.n_layer, tensors, source)
    params: dict = {"blocks": [{} for _ in range(config.n_layer)]}
    return fill_params(strip_names(tensors, source), gpt2_names(config), params,
                       source, kind="GPT-2")


def fill_params(tensors: dict[str, np.ndarray], table: dict, params: dict,
                source: str, kind: str) -> dict:
    """Put each tensor where the name table says, after checking name and shape."""
    table = dict(table)  # ours to empty: what is left at the end is missing
    for name, x in tensors.items():
        if name not in table:
            raise WeightsError(f"{source}: tensor {name!r}: not a {kind} parameter")
        where, shape = table.pop(name)
        if x.shape != shape:
            raise WeightsError(f"{source}: tensor {name!r}: shape {list(x.shape)}, "
                               f"expected {list(shape)} from the config")
        put(params, where, np.asarray(x, dtype=np.float32))  # no copy if float32
    if table:
        raise WeightsError(f"{source}: tensor {next(iter(table))!r}: missing "
                           f"({len(table)} missing in all)")
    return params


def put(tree: dict | list, where: tuple, value: np.ndarray) -> None:
    """tree[where[0]][where[1]]... = value, making dicts on the way."""
    for key in where[:-1]:
        tree = tree[key] if isinstance(tree, list) else tree.setdefault(key, {})
    tree[where[-1]] = value
# --8<-- [end:gpt2-params]


# --8<-- [start:strip-names]
NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias")  # old causal-mask buffers


def strip_names(tensors: dict[str, np.ndarray], source: str) -> dict:
    """Drop the "transformer." prefix, the mask buffers and a tied lm_head."""
    out = {}
    for name, x in tensors.items():
        short = name.removeprefix("transformer.")
        if short.endswith(NOT_WEIGHTS):
            continue  # a constant triangle of ones: we build the mask ourselves
        if short == "lm_head.weight":
            wte = tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
            if wte is None or not np.array_equal(x, wte):
                raise WeightsError(f"{source}: tensor 'lm_head.weight': differs "
                                   f"from wte; only a tied output head is supported")
            continue
        if short in out:
            raise WeightsError(f"{source}: tensor {short!r}: given twice, with "
                               f"and without the 'transformer.' prefix")
        out[short] = x
    return out
# --8<-- [end:strip-names]


# --8<-- [start:write-safetensors]
ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
             np.dtype(np.int8): "I8"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> None:
    """Write tensors as safetensors, widest dtypes first so every one is aligned."""
    order = sorted(tensors, key=lambda n: -tensors[n].dtype.itemsize)  # stable
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in order:
        x = tensors[name]
        header[name] = {"dtype": ST_DTYPES[x.dtype], "shape": list(x.shape),
                        "data_offsets": [offset, offset + x.nbytes]}
        offset += x.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name in order:  # little-endian bytes, one tensor at a time
            f.write(np.ascontiguousarray(tensors[name]).astype(
                tensors[name].dtype.newbyteorder("<")).tobytes())
# --8<-- [end:write-safetensors]
