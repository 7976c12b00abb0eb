"""GGML block decoders and quantisers ≡ llama.cpp's gguf-py, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.kquants import (
    GGML_TYPES,
    dequantize,
    nibbles,
    quantize_q4_0,
    quantize_q4_k,
    quantize_q8_0,
)
from tests.reference import require

NAMES = {t.name: kind for kind, t in GGML_TYPES.items()}


def random_blocks(kind: int, n: int, seed: int) -> np.ndarray:
    """n blocks of random bytes whose float16 scales are finite numbers."""
    t = GGML_TYPES[kind]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, t.size), dtype=np.uint8)
    # the places of the float16 scales: overwrite with sane values
    halves = {"Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2],
              "Q6_K": [208], "F16": [0]}.get(t.name, [])
    for at in halves:
        raw[:, at:at + 2] = rng.normal(0, 0.05, n).astype(np.float16).view(
            np.uint8).reshape(n, 2)
    if t.name == "F32":
        raw = rng.normal(size=n).astype(np.float32).view(np.uint8).reshape(n, 4)
    return raw


@pytest.mark.reference
@pytest.mark.parametrize("name", list(NAMES))
def test_every_decoder_matches_gguf_py_bit_for_bit(name):
    gguf = require("gguf")
    kind = NAMES[name]
    t = GGML_TYPES[kind]
    raw = random_blocks(kind, 64, seed=kind)
    ours = dequantize(raw, kind, (64 * t.block,))
    theirs = gguf.quants.dequantize(raw.reshape(-1), gguf.GGMLQuantizationType(kind))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs.reshape(-1))


@pytest.mark.reference
@pytest.mark.parametrize("name, ours", [("Q8_0", quantize_q8_0),
                                        ("Q4_0", quantize_q4_0)])
def test_quantisers_match_ggml_reference(name, ours):
    gguf = require("gguf")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 256)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block: scale 0
    x[1, :32] = np.arange(32) / 2 - 8  # exact halves: ties
    theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType[name])
    np.testing.assert_array_equal(ours(x), theirs.reshape(-1))


def test_q4_k_round_trip_is_close():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 512)).astype(np.float32)
    back = dequantize(quantize_q4_k(x), NAMES["Q4_K"], x.shape)
    # 16 levels over each sub-block's range: error at most about half a step
    step = (x.reshape(-1, 32).max(1) - np.minimum(x.reshape(-1, 32).min(1), 0)) / 15
    err = np.abs(back - x).reshape(-1, 32).max(1)
    assert np.all(err <= 0.75 * step + 1e-3)
    assert np.abs(back - x).mean() < 0.1


def test_nibbles_order_low_then_high():
    q = np.array([[0x21, 0x43]], dtype=np.uint8)
    assert nibbles(q, 2).tolist() == [[1, 3, 2, 4]]
