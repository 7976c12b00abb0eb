"""Tests for minigpt.quantize: error bounds, kernel vs NumPy, models, checkpoints, CLI.

The bound every test leans on: with a scale d per group and q = round(x / d),
|x - q * d| = d * |x / d - round(x / d)| <= d / 2, and max|x| / d = 127: never
clipped. Q8_0 stores d as float16 (a relative change of at most 2**-11), which
moves q * d by at most 127 * d * 2**-11 more. The fast paths (machine code, BLAS
on tiles, any number of threads) are checked against the NumPy reference, and
the Q8_0 rounding against gguf-py bit for bit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
import minigpt.bench
from minigpt import DEMO_MODEL
from minigpt.__main__ import main
from minigpt.generation import generate
from minigpt.kernels import quantized_matmul, reference_matmul
from minigpt.machine_code import machine_code
from minigpt.models import load_model
from minigpt.quantize import (
    QuantMatrix,
    dequantize,
    load_quantized,
    quantize_checkpoint,
    quantize_groups,
    quantize_matrix,
    quantize_model,
    round_away,
    saved_scheme,
)
from minigpt.threads import RowMatrix, set_kernel_threads
from minigpt.weights import WeightsError
from tests.reference import require

SCHEMES = ["q8_0", "int8"]
ROOT = Path(__file__).resolve().parents[1]
CODE = machine_code()
needs_code = pytest.mark.skipif(not CODE, reason="machine code needs Linux on x86 "
                                "with AVX2, and llvmlite")


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("group, scale_dtype", [(32, np.float16), (96, np.float32)])
def test_rounding_error_is_at_most_half_a_scale(group, scale_dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 192)).astype(np.float32)
    x[3, 5] = 40.0  # an outlier: its own group's scale grows, the others do not
    q, d = quantize_groups(x, group, scale_dtype)
    assert q.dtype == np.int8 and d.dtype == np.float32
    assert d.shape == (7, 192 // group)
    assert np.abs(q).max() <= 127
    err = np.abs(x - dequantize(q, d)).reshape(7, -1, group)
    # d / 2; q was rounded with the float32 scale and is stored with the float16
    # one (ggml's reference does the same), which moves q * d by at most
    # 127 * d * 2**-11; plus float32 rounding (a few ulp of |x|)
    slack = 127 * 2.0**-11 if scale_dtype == np.float16 else 0
    bound = d[..., None] * (0.5 + slack) + 4 * np.finfo(np.float32).eps * np.abs(
        x).max()
    assert (err <= bound).all()
    # the largest magnitude of each group lands on +-127 (its scale is exact there)
    assert (np.abs(q).reshape(7, -1, group).max(axis=-1) == 127).all()
    # the scales are what the file stores: float16 values for q8_0
    assert np.array_equal(d, d.astype(scale_dtype).astype(np.float32))


def test_groups_keep_an_outlier_local():
    x = np.full((1, 64), 0.01, np.float32)
    x[0, 0] = 10.0  # in group 0 only
    q, d = quantize_groups(x, 32)
    back = dequantize(q, d)
    assert np.allclose(back[0, 32:], 0.01, rtol=1e-2)  # group 1 is untouched
    assert np.all(back[0, 1:32] == 0)  # 0.01 < d/2 in the outlier's group
    q_row, d_row = quantize_groups(x, 64, np.float32)  # one scale for the row
    assert np.all(dequantize(q_row, d_row)[0, 1:] == 0)  # every small value lost


def test_a_matrix_that_does_not_split_into_groups_stays_float():
    model = load_model(DEMO_MODEL)
    params = {**model.params, "blocks": [dict(model.params["blocks"][0])]}
    odd = np.ones((40, 8), np.float32)  # x @ w with K = 40: rows of 40 numbers
    params["blocks"][0]["mlp"] = {"c_fc": {"w": odd, "b": np.zeros(8, np.float32)}}
    quantized = quantize_model(type(model)(model.config, params), "q8_0")
    w = quantized.params["blocks"][0]["mlp"]["c_fc"]["w"]
    assert isinstance(w, RowMatrix) and w.shape == (40, 8)
    np.testing.assert_array_equal(w.rows, odd.T)
    assert isinstance(quantized.params["blocks"][0]["attn"]["c_attn"]["w"], QuantMatrix)
    with pytest.raises(ValueError, match="not a multiple of the group size 32"):
        quantize_matrix(odd.T, "q8_0")  # asked for directly: refused, named
    # int8 has one scale per row: any width quantises, and its product works
    w8 = quantize_matrix(odd.T, "int8").T
    x = np.arange(40, dtype=np.float32)[None] / 40
    np.testing.assert_allclose(x @ w8, x @ odd, rtol=1e-6)


def test_zero_groups_and_bad_inputs():
    q, d = quantize_groups(np.zeros((2, 32), np.float32), 32)
    assert not q.any() and not d.any()
    with pytest.raises(ValueError, match="not a multiple of the group size 32"):
        quantize_groups(np.ones((2, 40), np.float32), 32)
    with pytest.raises(ValueError, match="not finite"):
        quantize_groups(np.full((1, 32), np.inf, np.float32), 32)
    with pytest.raises(ValueError, match="unknown scheme 'q4'"):
        quantize_matrix(np.ones((2, 32), np.float32), "q4")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("rows, K", [(68, 96), (71, 768), (300, 64)])
def test_every_fast_path_equals_the_reference(threads, scheme, T, rows, K):
    rng = np.random.default_rng(1)
    w = quantize_matrix(rng.standard_normal((rows, K)).astype(np.float32), scheme).T
    x = rng.standard_normal((T, K)).astype(np.float32)
    set_kernel_threads(threads)
    try:
        fast = quantized_matmul(x, w)  # machine code for T = 1, BLAS tiles for 5
    finally:
        set_kernel_threads(1)
    slow = reference_matmul(x, w)
    # the same products, summed in another order: float32 rounding only
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * np.abs(slow).max())


def gguf_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gguf-py's Q8_0 blocks of x, split into int8 numbers and float32 scales."""
    gguf = require("gguf")
    blocks = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    blocks = blocks.reshape(*x.shape[:-1], -1, 34)  # 2 bytes of scale, 32 numbers
    d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:].copy().view(np.int8).reshape(x.shape)
    return q, d


def hard_cases(rng: np.random.Generator, rows: int, K: int) -> np.ndarray:
    """Random numbers, plus the cases where rounding decides: halves, zeros, ties."""
    x = (rng.standard_normal((rows, K)) * rng.uniform(0.01, 10, (rows, 1))).astype(
        np.float32)
    x[0, :32] = 0  # a group of zeros
    x[1, :32] = np.arange(-16, 16) / 2 * 127 / 8  # exact halves of a step
    x[2, :32] = np.linspace(-1, 1, 32, dtype=np.float32)
    x[3, 5] = 1e4  # an outlier
    return x


@pytest.mark.reference
def test_q8_0_is_ggml_reference_bit_for_bit():
    rng = np.random.default_rng(7)
    x = hard_cases(rng, 64, 256)
    q, d = quantize_groups(x, 32)
    want_q, want_d = gguf_q8_0(x)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(d, want_d)
    assert not q[0, :32].any() and d[0, 0] == 0


@needs_code
@pytest.mark.reference
def test_the_machine_code_rounds_activations_as_ggml():
    rng = np.random.default_rng(8)
    x = hard_cases(rng, 6, 768)
    xq, xd = CODE["q8_0 rounding"](x)
    want_q, want_d = gguf_q8_0(x)
    assert xq.dtype == np.int8 and xd.dtype == np.float32
    np.testing.assert_array_equal(xq, want_q)
    np.testing.assert_array_equal(xd, want_d)


def test_round_away_sends_halves_away_from_zero():
    v = np.array([-2.5, -1.5, -0.5, -0.49999997, 0.0, 0.5, 1.5, 2.5, 2.4999998],
                 np.float32)
    assert round_away(v).tolist() == [-3, -2, -1, 0, 0, 1, 2, 3, 2]
    assert np.rint(v).tolist() != round_away(v).tolist()  # NumPy's rint: to even


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_activations_raise_on_every_path(threads, scheme, T, bad):
    rng = np.random.default_rng(9)
    w = quantize_matrix(rng.standard_normal((64, 96)).astype(np.float32), scheme).T
    x = rng.standard_normal((T, 96)).astype(np.float32)
    x[-1, 40] = bad
    set_kernel_threads(threads)
    try:
        with pytest.raises(ValueError, match="not finite"):
            _ = x @ w
        with pytest.raises(ValueError, match="not finite"):  # float rows too
            _ = x @ RowMatrix(np.ones((64, 96), np.float32)).T
    finally:
        set_kernel_threads(1)


@needs_code
def test_an_activation_too_large_for_a_float16_scale_raises():
    w = quantize_matrix(np.ones((64, 96), np.float32), "q8_0").T
    x = np.ones((1, 96), np.float32)
    x[0, 3] = 1e7  # 1e7 / 127 is beyond float16's 65504
    with pytest.raises(ValueError, match="too large"):
        _ = x @ w


@pytest.mark.parametrize("scheme", SCHEMES)
def test_products_are_close_to_float32(scheme):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((96, 64)).astype(np.float32) * 0.02  # a weight: x @ a
    x = rng.standard_normal((3, 96)).astype(np.float32)
    w = quantize_matrix(a.T, scheme).T
    got = x @ w  # NumPy hands the product to QuantMatrix.__rmatmul__
    assert got.shape == (3, 64) and got.dtype == np.float32
    # each weight is off by at most d/2, so each output by sum_k |x_k| * d_k / 2
    if scheme == "int8":  # float32 activations: only the weights are rounded
        np.testing.assert_allclose(got, x @ dequantize(w.q, w.d).T, rtol=1e-4,
                                   atol=1e-5)
    assert rel_error(got, x @ a) < 0.02


def test_quant_matrix_stands_in_for_an_array():
    rng = np.random.default_rng(3)
    table = rng.standard_normal((10, 64)).astype(np.float32)
    w = quantize_matrix(table, "q8_0")
    assert w.shape == (10, 64) and w.T.shape == (64, 10) and w.ndim == 2
    assert w.nbytes == 10 * 64 + 10 * 2 * 4  # int8 data + float32 scales in memory
    np.testing.assert_array_equal(w[[3, 1]], dequantize(w.q[[3, 1]], w.d[[3, 1]]))
    assert w[2:4].shape == (2, 64) and w[5].shape == (64,)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    assert rel_error(x @ w.T, x @ table.T) < 0.02  # the tied head: x @ wte.T
    with pytest.raises(ValueError, match="a table: use W.T"):
        _ = x[:, :10] @ w
    with pytest.raises(TypeError, match="by rows"):
        _ = w.T[0]


def demo_ids(n: int = 100) -> np.ndarray:
    return np.arange(n) * 7 % 1000


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_demo_model_runs_unchanged(scheme):
    model = load_model(DEMO_MODEL)
    quantized = quantize_model(model, scheme)
    assert type(quantized) is type(model)
    assert isinstance(quantized.params["wte"], QuantMatrix)
    assert isinstance(quantized.params["blocks"][0]["mlp"]["c_fc"]["w"], QuantMatrix)
    assert quantized.params["blocks"][0]["ln_1"]["g"] is model.params["blocks"][0][
        "ln_1"]["g"]  # vectors stay float32
    ids = demo_ids()
    full = quantized.forward(ids)
    assert rel_error(full, model.forward(ids)) < 0.03
    cache = quantized.empty_cache()  # the cache path agrees with the full pass
    first = quantized.forward_cached(ids[:60], cache)
    rest = quantized.forward_cached(ids[60:], cache)
    np.testing.assert_allclose(np.concatenate([first, rest]), full, atol=1e-3)
    tokens = list(generate(quantized, [1, 2, 3], 10, temperature=0.8, seed=0))
    assert len(tokens) == 10


@pytest.mark.parametrize("shape", [
    dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64),
    dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
         tie_word_embeddings=True),
    # llama2.c's stories260K: an FFN width of 172 does not split into groups of 32
    dict(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64),
], ids=["untied-gqa", "tied", "llama2c-ffn-172"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama_models_quantize_and_round_trip(tmp_path, shape, scheme):
    from tests.test_llama import reference_model

    reference_model(tmp_path / "float", **shape)
    model = load_model(tmp_path / "float")
    quantized = quantize_model(model, scheme)
    ids = np.arange(20) % shape["vocab_size"]
    logits = quantized.forward(ids)
    assert rel_error(logits, model.forward(ids)) < 0.03
    if shape.get("tie_word_embeddings"):  # the head is the table, seen through .T
        assert quantized.params["lm_head"].q is quantized.params["embed_tokens"].q
    quantize_checkpoint(tmp_path / "float", tmp_path / "q", scheme)
    loaded = load_quantized(tmp_path / "q")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.forward(ids), logits)
    down = loaded.params["layers"][0]["mlp"]["down_proj"]
    assert isinstance(down, RowMatrix if shape["intermediate_size"] % 32 and
                      scheme == "q8_0" else QuantMatrix)
    tokens = list(generate(loaded, [1, 2, 3], 5, temperature=0))
    assert tokens == list(generate(quantized, [1, 2, 3], 5, temperature=0))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_checkpoint_round_trip_is_exact_and_mapped(tmp_path, scheme):
    out = quantize_checkpoint(DEMO_MODEL, tmp_path / "q", scheme)
    assert saved_scheme(out) == scheme and saved_scheme(DEMO_MODEL) is None
    assert (out / "vocab.json").read_bytes() == (DEMO_MODEL / "vocab.json").read_bytes()
    model = quantize_model(load_model(DEMO_MODEL), scheme)
    loaded = load_quantized(out)
    for where in (("wte",), ("blocks", 2, "mlp", "c_proj", "w")):
        a, b = model.params, loaded.params
        for key in where:
            a, b = a[key], b[key]
        assert a.transposed == b.transposed and a.scheme == b.scheme
        np.testing.assert_array_equal(a.q, b.q)
        np.testing.assert_array_equal(a.d, b.d)
        assert isinstance(b.q, np.memmap)  # read in place from the file
    # the same weights, the same kernels: the same logits
    np.testing.assert_array_equal(loaded.forward(demo_ids()), model.forward(demo_ids()))
    # about a quarter of float32's bytes: int8 data, scales, float32 vectors
    n_params = sum(x.size for x in minigpt.bench.param_arrays(
        load_model(DEMO_MODEL).params))
    assert (out / "model.safetensors").stat().st_size < 0.3 * 4 * n_params


@pytest.mark.parametrize("scheme, group, dtype", [("q8_0", 32, "float16"),
                                                  ("int8", 192, "float32")])
def test_the_file_reads_with_the_safetensors_library(tmp_path, scheme, group, dtype):
    st = require("safetensors.numpy")
    out = quantize_checkpoint(DEMO_MODEL, tmp_path / "q", scheme)
    tensors = st.load_file(str(out / "model.safetensors"))
    data = tensors[f"h.0.attn.c_attn.weight.{scheme}.data"]
    scale = tensors[f"h.0.attn.c_attn.weight.{scheme}.scale"]
    assert data.dtype == np.int8 and data.shape == (576, 192)  # [out, in] rows
    assert scale.dtype == np.dtype(dtype) and scale.shape == (576, 192 // group)
    assert tensors["h.0.ln_1.weight"].dtype == np.float32
    weight = load_model(DEMO_MODEL).params["blocks"][0]["attn"]["c_attn"]["w"]
    back = dequantize(data, scale.astype(np.float32)).T  # [in, out], GPT-2's layout
    assert rel_error(back, weight) < 0.03


def test_bad_quantized_checkpoints_are_named(tmp_path):
    with pytest.raises(WeightsError, match="not a quantised checkpoint"):
        load_quantized(DEMO_MODEL)
    out = quantize_checkpoint(DEMO_MODEL, tmp_path / "q", "q8_0")
    raw = json.loads((out / "config.json").read_text())
    raw["n_embd"] = 96  # the tensors no longer fit the config
    raw["n_head"] = 4
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="shape"):
        load_quantized(out)
    with pytest.raises(ValueError, match="must differ"):
        quantize_checkpoint(out, out)


@pytest.mark.parametrize("scheme", ["q8_0", "int8"])
def test_a_missing_or_non_finite_scale_is_named(tmp_path, scheme):
    from minigpt.weights import read_safetensors, write_safetensors

    out = quantize_checkpoint(DEMO_MODEL, tmp_path / "q", scheme)
    tensors = {k: np.array(v) for k, v in read_safetensors(out / "model.safetensors")
               .items()}
    scale = f"wte.weight.{scheme}.scale"
    for broken, match in (({k: v for k, v in tensors.items() if k != scale},
                           "'wte.weight': .* data without its scale tensor"),
                          ({**tensors, scale: np.full_like(tensors[scale], np.nan)},
                           "'wte.weight': a scale is not finite")):
        write_safetensors(out / "model.safetensors", broken,
                          {"format": "pt", "quantization": scheme})
        with pytest.raises(WeightsError, match=match):
            load_quantized(out)
    raw = json.loads((out / "config.json").read_text())
    raw["quantization_config"]["scheme"] = [scheme]  # no scheme: a list
    (out / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="names scheme"):
        load_quantized(out)


def test_without_machine_code_the_tiles_run_one_token_too(monkeypatch):
    import minigpt.kernels as kernels

    model = load_model(DEMO_MODEL)
    want = quantize_model(model, "q8_0").forward(demo_ids(20))
    monkeypatch.setattr(kernels, "machine_code", lambda: {})
    slow = quantize_model(model, "q8_0")
    assert rel_error(slow.forward(demo_ids(20)), want) < 1e-5
    cache = slow.empty_cache()  # one token at a time: BLAS on dequantised tiles
    steps = [slow.forward_cached(demo_ids(20)[i:i + 1], cache) for i in range(20)]
    # a different order of float32 sums tips an activation's rounding now and
    # then, and the layers above carry it on: well under what quantising moves
    assert rel_error(np.concatenate(steps), want) < 5e-3


def test_cli_quantize_then_generate(tmp_path, capsys):
    assert main(["quantize", str(DEMO_MODEL), str(tmp_path / "q")]) == 0
    assert "saved q8_0" in capsys.readouterr().out
    argv = ["generate", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0"]
    assert main([*argv, "--model", str(tmp_path / "q")]) == 0
    from_file = capsys.readouterr().out
    assert main([*argv, "--model", str(DEMO_MODEL), "--quantize", "q8_0"]) == 0
    assert capsys.readouterr().out == from_file  # the same weights, the same text
    assert from_file.startswith("ROMEO:") and len(from_file) > len("ROMEO:\n")


def one_line_error(capsys, argv: list[str]) -> str:
    """Exit 2 and the one line of the error, argparse's refusals included."""
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(lines) and len(lines) == 1, lines
    return lines[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert "no such directory" in one_line_error(
        capsys, ["quantize", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert "invalid choice: 'q4'" in one_line_error(
        capsys, ["quantize", str(DEMO_MODEL), str(tmp_path / "o"), "--scheme", "q4"])
    assert "invalid choice" in one_line_error(
        capsys, ["generate", "hi", "--quantize", "fp8"])
    assert "argument --seed: must be >= 0, got -1" in one_line_error(
        capsys, ["generate", "hi", "--seed", "-1"])
    assert "argument --port: must be 0 to 65535, got 70000" in one_line_error(
        capsys, ["serve", "--port", "70000"])
    assert "arguments are required" in one_line_error(capsys, ["quantize"])
    main(["quantize", str(DEMO_MODEL), str(tmp_path / "q")])
    capsys.readouterr()
    assert "holds q8_0 weights already" in one_line_error(
        capsys, ["generate", "hi", "--model", str(tmp_path / "q"),
                 "--quantize", "int8"])


def test_exported():
    assert minigpt.quantize_model is quantize_model
