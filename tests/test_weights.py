"""The safetensors reader, the GPT-2 name table and config.json.

Files are written by the `safetensors` library (the reference writer) and read by
ours; malformed files are made by hand, then by hypothesis, and every one must
raise WeightsError naming the file and the problem, never anything else.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt.weights import (
    GPTConfig,
    WeightsError,
    bf16_to_f32,
    gpt2_names,
    gpt2_params,
    read_config,
    read_safetensors,
)
from tests.reference import require

NUMPY_DTYPES = [np.float64, np.float32, np.int64, np.int32, np.int16, np.int8,
                np.uint64, np.uint32, np.uint16, np.uint8, np.bool_]


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None,
             text: bytes | None = None) -> Path:
    """A safetensors file from parts, right or wrong: header, data, length."""
    body = text if text is not None else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


@pytest.mark.reference
@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_dtypes_equal_the_reference(tmp_path, dtype):
    st_numpy = require("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {"a": (rng.standard_normal((3, 5)) * 50).astype(dtype),
               "scalar": np.array(7, dtype=dtype),
               "empty": np.zeros((0, 4), dtype=dtype)}
    st_numpy.save_file(tensors, tmp_path / "t.safetensors")
    ours = read_safetensors(tmp_path / "t.safetensors")
    ref = st_numpy.load_file(tmp_path / "t.safetensors")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert ours[name].dtype == ref[name].dtype
        np.testing.assert_array_equal(ours[name], ref[name])


@pytest.mark.reference
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_floats_become_float32_exactly(tmp_path, dtype):
    torch = require("torch")
    st_torch = require("safetensors.torch")
    x = (torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * 100)
    x = torch.cat([x, torch.tensor([[0.0, -0.0, float("inf"), float("-inf"), 1e-8,
                                     65504.0]])]).to(getattr(torch, dtype))
    st_torch.save_file({"x": x}, tmp_path / "h.safetensors")
    ours = read_safetensors(tmp_path / "h.safetensors")["x"]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, x.float().numpy())  # widening is exact


def test_bf16_bits_by_hand():
    # 0x3F80 is 1.0, 0xC000 is -2.0, 0x7F80 is +inf in bfloat16
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x0000], dtype=np.uint16)
    np.testing.assert_array_equal(bf16_to_f32(bits), [1.0, -2.0, np.inf, 0.0])


def test_float32_is_memory_mapped_not_copied(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = {"__metadata__": {"format": "np"},
              "x": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    path = raw_file(tmp_path / "m.safetensors", header, x.tobytes())
    got = read_safetensors(path)["x"]
    assert not got.flags.writeable and not got.flags.owndata
    np.testing.assert_array_equal(got, x)
    # change the file underneath: a mapped view sees it, a copy would not
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 4)
        f.write(np.float32(-1).tobytes())
    assert got[2, 3] == -1


def test_empty_file_of_tensors(tmp_path):
    assert read_safetensors(raw_file(tmp_path / "e.safetensors", {})) == {}


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BAD_HEADERS = [  # (what is wrong, header, data, message fragment)
    ("list header", [1, 2], b"", "JSON list, not an object"),
    ("unknown dtype", {"t": {**F32_2, "dtype": "F8_E4M3"}}, b"\0" * 8,
     "unsupported dtype 'F8_E4M3'"),
    ("dtype not a string", {"t": {**F32_2, "dtype": 4}}, b"\0" * 8, "dtype 4"),
    ("negative dim", {"t": {**F32_2, "shape": [-2]}}, b"\0" * 8, "non-negative"),
    ("float dim", {"t": {**F32_2, "shape": [2.0]}}, b"\0" * 8, "non-negative"),
    ("bool dim", {"t": {**F32_2, "shape": [True, 2]}}, b"\0" * 8, "non-negative"),
    ("shape not a list", {"t": {**F32_2, "shape": 2}}, b"\0" * 8, "shape 2"),
    ("offsets past the end", {"t": {**F32_2, "data_offsets": [0, 8]}}, b"\0" * 4,
     "outside the 4 data bytes"),
    ("offsets reversed", {"t": {**F32_2, "data_offsets": [8, 0]}}, b"\0" * 8,
     "outside"),
    ("negative offset", {"t": {**F32_2, "data_offsets": [-8, 0]}}, b"\0" * 8,
     "outside"),
    ("three offsets", {"t": {**F32_2, "data_offsets": [0, 4, 8]}}, b"\0" * 8,
     "not two integers"),
    ("size mismatch", {"t": {**F32_2, "shape": [3]}}, b"\0" * 8,
     "needs 12 bytes, offsets give 8"),
    ("huge shape", {"t": {**F32_2, "shape": [2**40, 2**40]}}, b"\0" * 8,
     "needs"),
    ("missing field", {"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8,
     "exactly dtype, shape and data_offsets"),
    ("extra field", {"t": {**F32_2, "extra": 1}}, b"\0" * 8, "exactly"),
    ("entry not an object", {"t": "F32"}, b"", "exactly"),
    ("overlap", {"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12,
     "overlaps tensor 'a'"),
    ("metadata not an object", {"__metadata__": [1]}, b"", "__metadata__"),
    ("hole between tensors", {"a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}},
     b"\0" * 20, "bytes 8..12 before it belong to no tensor"),
    ("hole at the start", {"t": {**F32_2, "data_offsets": [4, 12]}}, b"\0" * 12,
     "bytes 0..4 before it"),
    ("bytes after the last tensor", {"t": F32_2}, b"\0" * 12,
     "4 bytes after the last tensor 't'"),
    ("metadata value not a string", {"__metadata__": {"format": 1}}, b"",
     "__metadata__['format'] is a JSON int, not a string"),
]

# files the reference library refuses too (checked live in the test below)
STRICT = ["hole between tensors", "hole at the start", "bytes after the last tensor",
          "metadata value not a string"]


@pytest.mark.reference
@pytest.mark.parametrize("what", STRICT)
def test_the_reference_refuses_what_we_refuse(tmp_path, what):
    st_numpy = require("safetensors.numpy")
    _, header, data, _ = next(b for b in BAD_HEADERS if b[0] == what)
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(Exception):  # noqa: B017 (each library has its own type)
        st_numpy.load_file(path)
    with pytest.raises(WeightsError):
        read_safetensors(path)


@pytest.mark.parametrize("what, header, data, fragment", BAD_HEADERS,
                         ids=[b[0] for b in BAD_HEADERS])
def test_malformed_header_is_a_clear_error(tmp_path, what, header, data, fragment):
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(WeightsError, match="bad.safetensors") as info:
        read_safetensors(path)
    assert fragment in str(info.value)
    if isinstance(header, dict) and len(header) == 1 and "__metadata__" not in header:
        assert "tensor 't'" in str(info.value)  # names the tensor


@pytest.mark.parametrize("body, fragment", [
    (b"\xff\xfe{}", "not UTF-8 JSON"),
    (b'{"t": ', "not UTF-8 JSON"),
    (b'{"a": 1, "a": 2}', "duplicate keys ['a']"),
])
def test_header_that_is_not_json(tmp_path, body, fragment):
    path = raw_file(tmp_path / "j.safetensors", None, text=body)
    with pytest.raises(WeightsError, match="j.safetensors") as info:
        read_safetensors(path)
    assert fragment in str(info.value)


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 10**9, 3])
def test_header_length_beyond_the_file_is_refused_without_allocating(tmp_path,
                                                                     length):
    path = raw_file(tmp_path / "big.safetensors", None, length=length, text=b"{}")
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=f"header length {length} does not"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # refused from the 8 bytes, before reading any more


def test_file_shorter_than_the_length_field(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(WeightsError, match="short.safetensors: 2 bytes, too short"):
        read_safetensors(path)


def valid_file_bytes() -> bytes:
    header = {"__metadata__": {"k": "v"},
              "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "h": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]},
              "i": {"dtype": "I64", "shape": [1], "data_offsets": [28, 36]}}
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + bytes(range(36))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_corrupted_files_never_crash(tmp_path, data):
    raw = bytearray(valid_file_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(raw))
    try:
        tensors = read_safetensors(path)
    except WeightsError as exc:
        assert "fuzz.safetensors" in str(exc)
    else:  # whatever was accepted must be self-consistent
        for x in tensors.values():
            assert isinstance(x, np.ndarray)


ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "U64", "BOOL", "X", 3]),
    "shape": st.lists(st.integers(-2, 2**63), max_size=3) | st.integers(),
    "data_offsets": st.lists(st.integers(-5, 2**64), min_size=0, max_size=3),
})


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(max_size=5), ENTRY, max_size=4),
       st.binary(max_size=64))
def test_fuzz_random_headers_never_crash(tmp_path, header, data):
    path = raw_file(tmp_path / "fuzzh.safetensors", header, data)
    try:
        tensors = read_safetensors(path)
    except WeightsError as exc:
        assert "fuzzh.safetensors" in str(exc)
    else:
        for name, x in tensors.items():
            assert list(x.shape) == header[name]["shape"]


# ---- the GPT-2 name table and config.json


def tiny_config(**changes) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=11, n_ctx=7, n_embd=8, n_layer=2,
                               n_head=2), **changes})


def fake_checkpoint(config: GPTConfig, prefix: str = "transformer.") -> dict:
    rng = np.random.default_rng(0)
    return {prefix + name: rng.standard_normal(shape).astype(np.float32)
            for name, (_, shape) in gpt2_names(config).items()}


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_gpt2_params_nested_like_the_engine_wants(prefix):
    config = tiny_config()
    tensors = fake_checkpoint(config, prefix)
    params = gpt2_params(tensors, config)
    assert sorted(params) == ["blocks", "ln_f", "wpe", "wte"]
    assert len(params["blocks"]) == 2
    block = params["blocks"][1]
    assert sorted(block) == ["attn", "ln_1", "ln_2", "mlp"]
    assert params["blocks"][1]["attn"]["c_attn"]["w"].shape == (8, 24)
    assert params["blocks"][1]["mlp"]["c_proj"]["w"].shape == (32, 8)
    assert params["blocks"][0]["ln_2"]["g"] is tensors[prefix + "h.0.ln_2.weight"]
    assert params["ln_f"]["b"] is tensors[prefix + "ln_f.bias"]  # float32: no copy


def test_missing_extra_and_misshapen_tensors_are_named():
    config = tiny_config()
    tensors = fake_checkpoint(config)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(WeightsError, match=r"'h.1.mlp.c_fc.bias': missing"):
        gpt2_params(tensors, config, "ckpt")
    tensors = {**fake_checkpoint(config), "transformer.h.2.ln_1.weight": np.ones(8)}
    with pytest.raises(WeightsError, match=r"'h.2.ln_1.weight': not a GPT-2"):
        gpt2_params(tensors, config, "ckpt")
    tensors = fake_checkpoint(config)
    tensors["transformer.wpe.weight"] = np.ones((9, 8), np.float32)
    with pytest.raises(WeightsError, match=r"'wpe.weight': shape \[9, 8\], expected "
                                           r"\[7, 8\]"):
        gpt2_params(tensors, config, "ckpt")


def test_tied_head_and_mask_buffers():
    config = tiny_config()
    tensors = fake_checkpoint(config)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].copy()
    tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 7, 7)))
    tensors["transformer.h.0.attn.masked_bias"] = np.array(-1e4)
    assert len(gpt2_params(tensors, config)["blocks"]) == 2
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    with pytest.raises(WeightsError, match="only a tied output head"):
        gpt2_params(tensors, config)
    both = {**fake_checkpoint(config), "wte.weight": np.zeros((11, 8), np.float32)}
    with pytest.raises(WeightsError, match="'wte.weight': given twice"):
        gpt2_params(both, config)


@pytest.mark.reference
def test_config_from_transformers_json(tmp_path):
    transformers = require("transformers")
    ref = transformers.GPT2Config(vocab_size=99, n_positions=33, n_embd=12,
                                  n_layer=3, n_head=4, layer_norm_epsilon=1e-4)
    ref.save_pretrained(tmp_path)
    config = read_config(tmp_path / "config.json")
    assert config == GPTConfig(vocab_size=99, n_ctx=33, n_embd=12, n_layer=3,
                               n_head=4, layer_norm_epsilon=1e-4,
                               eos_token_ids=(ref.eos_token_id,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 4  # type: ignore[misc]


@pytest.mark.parametrize("text, fragment", [
    ("{", "not UTF-8 JSON"), ("[1]", "a JSON list, not an object"),
])
def test_config_that_is_not_a_json_object(tmp_path, text, fragment):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(WeightsError, match=fragment):
        read_config(tmp_path / "config.json")


@pytest.mark.parametrize("change, fragment", [
    ({"activation_function": "relu"}, "activation_function is 'relu'"),
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings is False"),
    ({"n_inner": 100}, "n_inner 100 is not 4 * n_embd"),
    ({"n_head": 5}, "n_embd 8 is not a multiple of n_head 5"),
    ({"n_layer": None}, "required field 'n_layer' is missing"),
])
def test_unsupported_configs_are_refused(tmp_path, change, fragment):
    raw = {"model_type": "gpt2", "vocab_size": 11, "n_positions": 7, "n_embd": 8,
           "n_layer": 2, "n_head": 2, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="config.json") as info:
        read_config(path)
    assert fragment in str(info.value)


@pytest.mark.parametrize("config, generation, want", [
    ({"eos_token_id": 50256}, None, (50256,)),
    ({"eos_token_id": [2, 7]}, None, (2, 7)),
    ({"eos_token_id": None}, None, ()),
    ({}, None, ()),
    ({"eos_token_id": 1}, {"eos_token_id": [3, 4]}, (3, 4)),  # generation wins
    ({"eos_token_id": 1}, {"do_sample": True}, (1,)),
])
def test_end_of_text_ids_from_config_and_generation_config(tmp_path, config,
                                                           generation, want):
    raw = {"vocab_size": 99, "n_embd": 8, "n_layer": 1, "n_head": 2, **config}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    assert read_config(tmp_path / "config.json").eos_token_ids == want


def test_an_end_of_text_id_that_is_not_an_id_is_refused(tmp_path):
    raw = {"vocab_size": 99, "n_embd": 8, "n_layer": 1, "n_head": 2,
           "eos_token_id": "</s>"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="eos_token_id '</s>'"):
        read_config(tmp_path / "config.json")
