"""Tests for minigpt.quantize: error bounds, kernel vs NumPy, models, checkpoints, CLI.

The bound every test leans on: with a scale d per group and q = round(x / d),
|x - q * d| = d * |x / d - round(x / d)| <= d / 2, as long as |x / d| <= 127.5
(no clipping). d = max|x| / 127 rounded to float16 (q8_0) moves d by at most a
relative 2**-11, so max|x| / d <= 127 * (1 + 2**-11) < 127.5: never clipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
import minigpt.bench
from minigpt import DEMO_MODEL
from minigpt.__main__ import main
from minigpt.generation import generate
from minigpt.models import load_model
from minigpt.quantize import (
    NO_NUMBA,
    QuantMatrix,
    compile_kernels,
    dequantize,
    kernels_ir,
    load_quantized,
    machine_code,
    matmul_kernel,
    matmul_numpy,
    quantize_checkpoint,
    quantize_groups,
    quantize_matrix,
    quantize_model,
    saved_scheme,
)
from minigpt.weights import WeightsError
from tests.reference import require

SCHEMES = ["q8_0", "int8"]
ROOT = Path(__file__).resolve().parents[1]
KERNELS = compile_kernels()
needs_numba = pytest.mark.skipif(not KERNELS, reason="numba is not installed")
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
    # d / 2, plus float32 rounding of x / d and of q * d (a few ulp of |x|)
    bound = d[..., None] / 2 + 4 * np.finfo(np.float32).eps * np.abs(x).max()
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


def test_a_matrix_that_does_not_split_into_groups_is_named():
    model = load_model(DEMO_MODEL)
    params = {**model.params, "blocks": [dict(model.params["blocks"][0])]}
    params["blocks"][0]["mlp"] = {"c_fc": {"w": np.ones((40, 8), np.float32),
                                           "b": np.zeros(8, np.float32)}}
    with pytest.raises(ValueError, match=r"params.blocks.0.mlp.c_fc.w \[40, 8\]"):
        quantize_model(type(model)(model.config, params), "q8_0")


def test_zero_groups_and_bad_inputs():
    q, d = quantize_groups(np.zeros((2, 32), np.float32), 32)
    assert not q.any() and not d.any()
    with pytest.raises(ValueError, match="not a multiple of the group size 32"):
        quantize_groups(np.ones((2, 40), np.float32), 32)
    with pytest.raises(ValueError, match="not finite"):
        quantize_groups(np.full((1, 32), np.inf, np.float32), 32)
    with pytest.raises(ValueError, match="unknown scheme 'q4'"):
        quantize_matrix(np.ones((2, 32), np.float32), "q4")


@pytest.mark.parametrize("kernels", ["numba", "machine code"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("rows", [68, 70, 71])  # whole blocks of 4, and leftovers
def test_kernel_and_numpy_fallback_agree(kernels, scheme, T, rows):
    kernels = {"numba": KERNELS, "machine code": CODE}[kernels]
    if not kernels:
        pytest.skip("numba is not installed, or there is no machine code here")
    rng = np.random.default_rng(1)
    w = quantize_matrix(rng.standard_normal((rows, 96)).astype(np.float32), scheme).T
    x = rng.standard_normal((T, 96)).astype(np.float32)
    fast, slow = matmul_kernel(x, w, kernels), matmul_numpy(x, w)
    # the same products, summed in another order: float32 rounding only
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * np.abs(slow).max())


needs_integer = pytest.mark.skipif("q8_0 integer" not in KERNELS,
                                  reason="numba or AVX2 is missing")


@needs_integer
@pytest.mark.parametrize("T, rows, K", [(1, 68, 96), (1, 71, 768), (5, 70, 3072)])
def test_the_integer_kernel_equals_the_portable_one(T, rows, K):
    rng = np.random.default_rng(3)
    q, d = quantize_groups(rng.standard_normal((rows, K)).astype(np.float32), 32)
    xq, xd = quantize_groups(rng.standard_normal((T, K)).astype(np.float32), 32)
    exact, portable = np.empty((T, rows), np.float32), np.empty((T, rows), np.float32)
    KERNELS["q8_0 integer"](xq.astype(np.int16), xd, q, d, exact)
    KERNELS["q8_0"](dequantize(xq, xd), q, d, portable)
    # the same sums of the same products: the integer dots are exact, so only the
    # float32 order of the group terms differs
    np.testing.assert_allclose(exact, portable, rtol=1e-5,
                               atol=1e-5 * np.abs(portable).max())
    one_group = np.empty((T, rows), np.float32)  # scales of 1: the integers alone
    KERNELS["q8_0 integer"](xq[:, :32].astype(np.int16), np.ones((T, 1), np.float32),
                            np.ascontiguousarray(q[:, :32]), np.ones((rows, 1),
                                                                     np.float32),
                            one_group)
    want = xq[:, :32].astype(np.int64) @ q[:, :32].astype(np.int64).T
    assert (one_group == want).all()


@needs_integer
def test_the_integer_kernel_is_compiled_to_integer_multiply_adds():
    from numba import njit

    from minigpt.quantize import q8_0_rows_int
    kernel = njit(parallel=True)(q8_0_rows_int)  # afresh: cached code has no assembly
    q = np.ones((8, 64), np.int8)
    out = np.empty((1, 8), np.float32)
    kernel(np.ones((1, 64), np.int16), np.ones((1, 2), np.float32), q,
           np.ones((8, 2), np.float32), out)
    assert (out == 64).all()
    assert "vpmaddwd" in "\n".join(kernel.inspect_asm().values())


@needs_code
@pytest.mark.parametrize("T, rows, K", [(1, 68, 96), (1, 71, 768), (5, 70, 3072)])
def test_machine_code_equals_numpy_and_sums_groups_exactly(T, rows, K):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((rows, K)).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    q, d = quantize_groups(a, 32)
    xq, xd = quantize_groups(x, 32)
    got = np.empty((T, rows), np.float32)
    CODE["q8_0 integer"](xq.astype(np.int16), xd, q, d, got)
    want = dequantize(xq, xd) @ dequantize(q, d).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    one_group = np.empty((T, rows), np.float32)  # scales of 1: the integers alone
    CODE["q8_0 integer"](xq[:, :32].astype(np.int16), np.ones((T, 1), np.float32),
                         np.ascontiguousarray(q[:, :32]),
                         np.ones((rows, 1), np.float32), one_group)
    want = xq[:, :32].astype(np.int64) @ q[:, :32].astype(np.int64).T
    assert (one_group == want).all()
    qi, di = quantize_groups(a, K, np.float32)  # int8: one scale per row
    got = np.empty((T, rows), np.float32)
    CODE["int8"](x, qi, di, got)
    want = x @ dequantize(qi, di).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_code
@pytest.mark.parametrize("T, K", [(1, 768), (3, 3072), (2, 64)])
def test_machine_code_rounds_activations_exactly_as_numpy(T, K):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, K)).astype(np.float32) * 3
    x[0, :32] = 0  # a group of zeros: scale 0, numbers 0
    x[-1, 40] = -1000.0  # an outlier sets its own group's scale
    x[-1, 33] = 0.5 * x[-1, 40] / 127  # about half a step: where rounding decides
    xq, xd = CODE["q8_0 rounding"](x)
    q, d = quantize_groups(x, 32)
    assert xq.dtype == np.int16 and xd.dtype == np.float32
    np.testing.assert_array_equal(xq, q)  # the same float16 scales, the same rint
    np.testing.assert_array_equal(xd, d)
    for bad in (x.astype(np.float64), x[:, :40], x[:, ::2], x[0]):
        with pytest.raises(ValueError, match="contiguous float32 rows"):
            CODE["q8_0 rounding"](bad)


@needs_code
def test_machine_code_refuses_arrays_it_would_misread():
    q, d = np.ones((8, 64), np.int8), np.ones((8, 2), np.float32)
    xq, xd = np.ones((1, 64), np.int16), np.ones((1, 2), np.float32)
    out = np.empty((1, 8), np.float32)
    kernel = CODE["q8_0 integer"]
    kernel(xq, xd, q, d, out)
    assert (out == 64).all()
    bad = [(xq.astype(np.int32), xd, q, d, out),  # wrong dtype
           (xq, xd, q[:, :32], d, out),  # rows of another length
           (xq, xd, np.asfortranarray(q), d, out),  # not row after row in memory
           (xq, xd, q, d, np.empty((1, 7), np.float32)),  # an output too short
           (xq, xd, q, np.ones((8, 1), np.float32), out),  # too few scales
           (np.ones((1, 40), np.int16), np.ones((1, 1), np.float32),
            np.ones((8, 40), np.int8), np.ones((8, 1), np.float32), out)]  # K % 32
    for arrays in bad:
        with pytest.raises(ValueError, match="wrong dtype, shape or layout"):
            kernel(*arrays)
    with pytest.raises(ValueError, match="wrong dtype"):
        CODE["int8"](np.ones((1, 64), np.float64), q, d[:, :1], out)


@needs_code
def test_machine_code_is_compiled_once_then_mapped_from_the_cache(monkeypatch,
                                                                  tmp_path):
    import hashlib

    import minigpt.quantize as quantize

    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path))
    compiles = []
    real = quantize.in_child
    monkeypatch.setattr(quantize, "in_child",
                        lambda *args: compiles.append(1) or real(*args))
    quantize.machine_code.cache_clear()
    try:
        first = quantize.machine_code()
        files = sorted(p.name for p in tmp_path.iterdir())
        assert [f.rsplit(".", 1)[1] for f in files] == ["bin", "json"]
        code = (tmp_path / files[0]).read_bytes()
        index = json.loads((tmp_path / files[1]).read_text())
        assert index["sha256"] == hashlib.sha256(code).hexdigest()
        assert set(index["starts"]) == {"minigpt_q8_0_rows", "minigpt_int8_rows",
                                        "minigpt_q8_0_quantize"}
        quantize.machine_code.cache_clear()
        again = quantize.machine_code()  # from the cache: no compiler, same code
        assert again["int8"].code[:] == first["int8"].code[:] == code
        assert len(compiles) == 1
        # damaged code is never run: its hash no longer matches, so it is rebuilt
        (tmp_path / files[0]).write_bytes(b"\xcc" * len(code))
        quantize.machine_code.cache_clear()
        mended = quantize.machine_code()
        assert len(compiles) == 2 and mended["int8"].code[:] == code
        x = np.ones((1, 32), np.float32)
        xq, xd = mended["q8_0 rounding"](x)
        assert (xq == 127).all() and np.allclose(xd, 1 / 127, rtol=1e-3)
    finally:
        quantize.machine_code.cache_clear()


@needs_code
def test_a_compile_error_in_the_child_reaches_the_parent():
    from minigpt.quantize import in_child

    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        in_child(lambda text: bytes(1 // len(text)), "")
    assert in_child(lambda text: text.encode() * 2, "ab") == b"abab"


@needs_code
def test_code_that_needs_relocating_is_refused():
    from llvmlite import ir

    from minigpt.quantize import compile_object, elf_text

    module = ir.Module("outside")
    f32 = ir.FloatType()
    sqrt = ir.Function(module, ir.FunctionType(f32, [f32]), "sqrtf")  # libc's
    fn = ir.Function(module, ir.FunctionType(f32, [f32]), "root")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(builder.call(sqrt, [fn.args[0]]))
    obj = compile_object(str(module))
    with pytest.raises(ValueError, match="needs relocating"):
        elf_text(obj, ["root"])
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        elf_text(b"MZ" + obj[2:], ["root"])
    code, starts = elf_text(compile_object(kernels_ir()), ["minigpt_int8_rows"])
    assert 0 <= starts["minigpt_int8_rows"] < len(code)
    with pytest.raises(ValueError, match="no function nothing"):
        elf_text(compile_object(kernels_ir()), ["nothing"])


@needs_code
def test_machine_code_holds_integer_and_fused_multiply_adds():
    from minigpt.quantize import compile_object

    asm = compile_object(kernels_ir(), assembly=True).decode()
    assert "vpmaddwd" in asm and "vfmadd" in asm and "prefetcht0" in asm


@needs_code
def test_one_thread_of_quantised_decoding_loads_neither_numba_nor_llvm(tmp_path):
    script = (
        "import sys\n"
        "from minigpt.quantize import load_quantized\n"
        "from minigpt.generation import generate\n"
        f"model = load_quantized({str(tmp_path / 'q')!r})\n"
        "tokens = list(generate(model, [1, 2, 3], 4))\n"
        "loaded = [m for m in ('numba', 'llvmlite.binding') if m in sys.modules]\n"
        "print(len(tokens), loaded)\n")
    quantize_checkpoint(DEMO_MODEL, tmp_path / "q", "q8_0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "4 []"


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
], ids=["untied-gqa", "tied"])
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
    assert rel_error(loaded.forward(ids), logits) < 5e-3  # see the test below


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
    # the same weights; Numba compiles the kernel apart for read-only (mapped)
    # arrays, and a different order of float32 sums may tip an activation's
    # rounding now and then, so the logits agree closely rather than bit for bit
    assert rel_error(loaded.forward(demo_ids()), model.forward(demo_ids())) < 5e-3
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
    with pytest.raises(WeightsError, match="not a quantised GPT-2 or LLaMA"):
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


def test_without_numba_the_numpy_path_runs_with_a_message(monkeypatch):
    import minigpt.quantize as quantize

    model = load_model(DEMO_MODEL)
    want = quantize_model(model, "q8_0").forward(demo_ids(20))
    monkeypatch.setattr(quantize, "compile_kernels", lambda: {})
    monkeypatch.setattr(quantize, "machine_code", lambda: {})
    with pytest.warns(UserWarning, match="numba is not installed"):
        slow = quantize.quantize_model(model, "q8_0")
    assert "pip install numba" in NO_NUMBA
    # the sums run in another order, so now and then an activation rounds the
    # other way at a .5 boundary, and the layers above carry that on: well under
    # the 1-3% that quantisation itself moves the logits (test above)
    assert rel_error(slow.forward(demo_ids(20)), want) < 5e-3


def test_cli_quantize_then_generate(tmp_path, capsys):
    assert main(["quantize", str(DEMO_MODEL), str(tmp_path / "q")]) == 0
    assert "saved q8_0" in capsys.readouterr().out
    argv = ["generate", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0"]
    assert main([*argv, "--model", str(tmp_path / "q")]) == 0
    from_file = capsys.readouterr().out
    assert main([*argv, "--model", str(DEMO_MODEL), "--quantize", "q8_0"]) == 0
    assert capsys.readouterr().out == from_file  # the same weights, the same text
    assert from_file.startswith("ROMEO:") and len(from_file) > len("ROMEO:\n")


def one_line_error(capsys, argv: list[str], usage: bool = False) -> str:
    """Exit 2 and the error line (argparse prints its usage lines above it)."""
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(lines) and (usage or len(lines) == 1)
    return lines[-1]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert "no such directory" in one_line_error(
        capsys, ["quantize", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert "invalid choice: 'q4'" in one_line_error(
        capsys, ["quantize", str(DEMO_MODEL), str(tmp_path / "o"), "--scheme", "q4"],
        usage=True)
    assert "invalid choice" in one_line_error(
        capsys, ["generate", "hi", "--quantize", "fp8"], usage=True)
    main(["quantize", str(DEMO_MODEL), str(tmp_path / "q")])
    capsys.readouterr()
    assert "holds q8_0 weights already" in one_line_error(
        capsys, ["generate", "hi", "--model", str(tmp_path / "q"),
                 "--quantize", "int8"])


def test_exported():
    assert minigpt.quantize_model is quantize_model
