"""The 4-bit fast path: GGUF block formats multiplied packed (block_kernels.py).

Every product is checked against values computed apart from the kernel: the
weights decoded by gguf-py's `dequantize` (or kquants' decoders, which match it
bit for bit) and multiplied by NumPy in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigpt.block_kernels import (
    KINDS,
    BlockMatrix,
    block_code,
    block_matmul,
    load_gguf_blocks,
    q8_k,
    q8_k_code,
)
from minigpt.gguf_models import load_gguf
from minigpt.kquants import GGML_TYPES, quantize_q4_0, quantize_q4_k
from minigpt.quantize import QuantMatrix, dequantize, quantize_groups
from minigpt.threads import set_kernel_threads
from tests.reference import require

SCALE_AT = {"Q4_0": 0, "Q5_0": 0, "Q4_K": 0, "Q6_K": 208}  # the f16 d's byte


def random_blocks(kind: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """(rows, cols) weights in `kind`, as raw rows of blocks."""
    rng = np.random.default_rng(seed)
    t = GGML_TYPES[KINDS[kind]]
    if kind == "Q4_K":  # quantised from normal numbers (dmin and d in range)
        raw = quantize_q4_k(rng.standard_normal((rows, cols)).astype(np.float32))
    elif kind == "Q4_0":
        raw = quantize_q4_0(rng.standard_normal((rows, cols)).astype(np.float32))
    else:  # every bit pattern of values and sub-scales, sane float16 scales
        raw = rng.integers(0, 256, (rows * cols // t.block, t.size), np.uint8)
        for at in (0, 2) if kind == "Q5_K" else (SCALE_AT[kind],):  # d, dmin
            d = (rng.random(len(raw)) * 0.02 + 0.001).astype(np.float16)
            raw[:, at:at + 2] = d.view(np.uint8).reshape(-1, 2)
    return np.ascontiguousarray(raw).reshape(rows, -1)


def decoded64(kind: str, raw: np.ndarray) -> np.ndarray:
    """The weights as gguf-py decodes them, in float64. -> (rows, cols)"""
    gguf = require("gguf")
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind])
    return w.reshape(len(raw), -1).astype(np.float64)


def close(got: np.ndarray, want: np.ndarray, w: np.ndarray, x: np.ndarray,
          tol: float = 1e-5) -> None:
    """got == want up to tol of the sizes being summed: |w| @ |x| per output."""
    scale = np.abs(x.astype(np.float64)) @ np.abs(w).T
    assert np.all(np.abs(got - want) <= tol * scale + 1e-12), \
        np.max(np.abs(got - want) / scale)


needs_code = pytest.mark.skipif(not block_code(), reason="no machine code here")


def rounded_tokens(kind: str, x: np.ndarray) -> np.ndarray:
    """x as the kernel of `kind` rounds it, back in float64: Q8_K (one scale per
    256) for the K formats, Q8_0 (one per 32) for the others. x: (T, K)"""
    if kind.endswith("K"):
        xq, xd, _ = q8_k(x)
        return dequantize(xq, xd).astype(np.float64)
    return dequantize(*quantize_groups(x, 32)).astype(np.float64)


def test_q8_k_rounds_each_256_by_its_largest_value():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    x[1, :256] = 0  # a group of zeros: scale 0, numbers 0
    xq, xd, sums = q8_k(x)
    assert xq.dtype == np.int8 and xd.dtype == np.float32 and sums.dtype == np.int16
    assert xq.shape == (3, 512) and xd.shape == (3, 2) and sums.shape == (3, 32)
    g = x.reshape(3, 2, 256).astype(np.float64)
    np.testing.assert_array_equal(xd, (np.abs(g).max(axis=2) / 127).astype(np.float32))
    assert np.abs(xq).max() == 127 and not xq[1, :256].any()
    # each number within half a step of the value it stands for
    err = np.abs(xq.reshape(3, 2, 256) * xd[..., None].astype(np.float64) - g)
    assert np.all(err <= xd[..., None] * (0.5 + 1e-6))
    np.testing.assert_array_equal(sums, xq.reshape(3, 32, 16).sum(axis=2))


@needs_code
def test_q8_k_machine_code_rounds_bit_for_bit_as_numpy():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    x[1, :256] = 0
    x[2, :256] = np.arange(256, dtype=np.float32) - 127  # halves after scaling
    x[2, 256:512] = (np.arange(256, dtype=np.float32) - 128) * 0.5
    x[3] *= np.float32(1e-30)  # tiny scales, still finite
    got, want = q8_k_code()(x), q8_k(x)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="256"):
        q8_k_code()(x[:, :128].copy())


@needs_code
@pytest.mark.reference
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_token_is_rounded_activations_times_decoded_weights(kind):
    raw = random_blocks(kind, 96, 512)
    x = np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)
    w = decoded64(kind, raw)
    want = rounded_tokens(kind, x) @ w.T
    got = x @ BlockMatrix(kind, raw).T
    close(got, want, w, x)
    # and it differs from the unrounded product: the rounding is really there
    assert not np.allclose(got, x.astype(np.float64) @ w.T, rtol=1e-6, atol=0)


@pytest.mark.reference
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_prompt_tiles_are_decoded_weights_times_x(kind):
    raw = random_blocks(kind, 300, 256, seed=2)  # more rows than a tile
    x = np.random.default_rng(3).standard_normal((2, 12, 256)).astype(np.float32)
    w = decoded64(kind, raw)
    got = x @ BlockMatrix(kind, raw).T  # more token rows than FEW
    assert got.shape == (2, 12, 300)
    close(got.reshape(24, -1), x.reshape(24, -1).astype(np.float64) @ w.T, w,
          x.reshape(24, -1))


@pytest.mark.reference
def test_without_machine_code_one_token_takes_the_tiles(monkeypatch):
    import minigpt.block_kernels as bk

    monkeypatch.setattr(bk, "block_code", lambda: {})
    raw = random_blocks("Q4_K", 64, 256)
    x = np.random.default_rng(4).standard_normal((1, 256)).astype(np.float32)
    w = decoded64("Q4_K", raw)
    close(block_matmul(x, BlockMatrix("Q4_K", raw).T), x.astype(np.float64) @ w.T,
          w, x)


@needs_code
@pytest.mark.reference
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K", "Q5_0"])
def test_a_few_tokens_take_the_machine_code_token_by_token(kind):
    raw = random_blocks(kind, 200, 512, seed=9)
    x = np.random.default_rng(10).standard_normal((5, 512)).astype(np.float32)
    w = decoded64(kind, raw)
    want = rounded_tokens(kind, x) @ w.T
    close(x @ BlockMatrix(kind, raw).T, want, w, x)  # rounded: the machine code


@needs_code
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K"])
def test_two_threads_give_the_same_bits(kind):
    raw = random_blocks(kind, 1024, 768)
    m = BlockMatrix(kind, raw).T
    x = np.random.default_rng(5).standard_normal((3, 768)).astype(np.float32)
    try:
        set_kernel_threads(1)
        one = x @ m
        set_kernel_threads(2)
        two = x @ m
    finally:
        set_kernel_threads(1)
    np.testing.assert_array_equal(one, two)


def test_bad_input_is_refused():
    m = BlockMatrix("Q4_K", random_blocks("Q4_K", 8, 256))
    x = np.ones((1, 256), np.float32)
    x[0, 3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        x @ m.T
    with pytest.raises(ValueError, match="shape"):
        np.ones((1, 512), np.float32) @ m.T
    with pytest.raises(ValueError, match="use W.T"):
        np.ones((1, 8), np.float32) @ m
    with pytest.raises(TypeError):
        m.T[0]


def test_rows_and_stand_in_protocol():
    raw = random_blocks("Q6_K", 10, 512)
    m = BlockMatrix("Q6_K", raw)
    assert m.shape == (10, 512) and m.T.shape == (512, 10)
    assert m.nbytes == 10 * 2 * 210 and m.T.raw is raw  # .T copies nothing
    rows = m[np.array([[3, 1]])]
    assert rows.shape == (1, 2, 512)
    from minigpt.kquants import dequantize as decode

    np.testing.assert_array_equal(rows[0, 1], decode(raw[1], 14, (512,)))


def write_q4_gpt2(path, rng) -> None:
    """A 2-layer GPT-2, 256 wide: Q4_K matrices, a Q6_K embedding, as
    llama.cpp's Q4_K_M mix would hold them."""
    gguf = require("gguf")
    from minigpt.tokenizer import bytes_to_unicode

    V, C, T = 258, 256, 32
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_tokenizer_model("gpt2")  # bytes, and one merge: enough to generate
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([*bytes_to_unicode().values(), "<|endoftext|>", "hi"])
    w.add_token_types([1] * 256 + [3, 1])
    w.add_token_merges(["h i"])
    w.add_uint32("tokenizer.ggml.eos_token_id", 256)
    for key, value in (("context_length", T), ("embedding_length", C),
                       ("block_count", 2), ("feed_forward_length", 4 * C),
                       ("attention.head_count", 4)):
        w.add_uint32(f"gpt2.{key}", value)
    w.add_float32("gpt2.attention.layer_norm_epsilon", 1e-5)
    shapes = {"token_embd.weight": (V, C), "position_embd.weight": (T, C),
              "output_norm.weight": (C,), "output_norm.bias": (C,)}
    for i in range(2):
        shapes |= {f"blk.{i}.{k}": s for k, s in {
            "attn_norm.weight": (C,), "attn_norm.bias": (C,),
            "attn_qkv.weight": (3 * C, C), "attn_qkv.bias": (3 * C,),
            "attn_output.weight": (C, C), "attn_output.bias": (C,),
            "ffn_norm.weight": (C,), "ffn_norm.bias": (C,),
            "ffn_up.weight": (4 * C, C), "ffn_up.bias": (4 * C,),
            "ffn_down.weight": (C, 4 * C), "ffn_down.bias": (C,)}.items()}
    for name, shape in shapes.items():
        x = rng.normal(0, 0.1, shape).astype(np.float32)
        if name.endswith("norm.weight"):
            x += 1
        if name == "token_embd.weight":  # Q6_K: random bits, small scales
            raw = random_blocks("Q6_K", V, C)
            raw[:, 208::210] = 0  # d's low byte: d = 2 ** -12 or so
            raw[:, 209::210] = 0x0C
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.Q6_K)
        elif len(shape) == 2 and name != "position_embd.weight":
            w.add_tensor(name, quantize_q4_k(x).reshape(shape[0], -1),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_K)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.reference
def test_a_q4_k_m_gguf_loads_packed_and_matches_float32(tmp_path):
    path = tmp_path / "q4.gguf"
    write_q4_gpt2(path, np.random.default_rng(6))
    packed, floats = load_gguf_blocks(path), load_gguf(path)
    blocks = packed.params["blocks"][0]
    assert isinstance(packed.params["wte"], BlockMatrix)
    assert packed.params["wte"].kind == "Q6_K"
    assert isinstance(blocks["mlp"]["c_fc"]["w"], BlockMatrix)
    assert isinstance(packed.params["wpe"], np.ndarray)  # F32 stays float32
    ids = np.random.default_rng(0).integers(0, 258, 20)  # more than FEW
    want = floats.forward(ids).astype(np.float64)  # every tensor decoded
    got = packed.forward(ids)  # a prompt: tiles, the same float32 weights
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    for n in (1, 5):  # a token or a few: Q8_K activations, machine code
        err = np.abs(packed.forward(ids[:n]) - want[:n]).max()
        assert 0 < err < 3e-2 * np.abs(want[:n]).max()


@pytest.mark.reference
def test_cli_generates_from_a_q4_k_m_gguf(tmp_path, capsys):
    from minigpt.__main__ import main

    path = tmp_path / "q4.gguf"
    write_q4_gpt2(path, np.random.default_rng(7))
    try:
        for threads in ("1", "2"):
            assert main(["generate", "hi", "--model", str(path), "--threads",
                         threads, "--max-new-tokens", "4", "--temperature", "0"]) == 0
            assert capsys.readouterr().out.startswith("hi")
    finally:
        set_kernel_threads(1)


@pytest.mark.reference
def test_walks_over_params_pass_a_packed_model_through(tmp_path):
    from minigpt.kernels import kernel_model
    from minigpt.quantize import quantize_model
    from minigpt.threads import threaded_model

    path = tmp_path / "q4.gguf"
    write_q4_gpt2(path, np.random.default_rng(8))
    packed, ids = load_gguf_blocks(path), np.array([1, 2, 3])
    kept = kernel_model(packed)  # stand-ins pass through, nothing decoded
    assert kept.params["wte"] is packed.params["wte"]
    w = kept.params["blocks"][1]["attn"]["c_attn"]["w"]
    assert isinstance(w, BlockMatrix) and w.transposed
    np.testing.assert_array_equal(kept.forward(ids), packed.forward(ids))
    q8 = quantize_model(packed, "q8_0")  # the blocks kept, float matrices in Q8_0
    assert q8.params["wte"] is packed.params["wte"]
    assert isinstance(q8.params["wpe"], QuantMatrix)
    rows = threaded_model(packed)  # the same: blocks kept, nothing decoded
    assert rows.params["wte"] is packed.params["wte"]
    np.testing.assert_array_equal(rows.forward(ids), packed.forward(ids))


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "Q8_0"])
def test_a_llama_gguf_in_32_value_blocks_loads_packed(tmp_path, kind):
    from minigpt import DEMO_LLAMA
    from tools.gguf_export import QUANTISE, export_gguf

    if kind not in QUANTISE:  # the exporter writes Q4_0; Q5_0 from gguf-py
        gguf = require("gguf")
        QUANTISE[kind] = lambda x: gguf.quants.quantize(
            x, gguf.GGMLQuantizationType.Q5_0).ravel()
    try:
        path = export_gguf(DEMO_LLAMA, tmp_path / "demo.gguf", kind)
    finally:
        QUANTISE.pop("Q5_0", None)
    packed, floats = load_gguf_blocks(path), load_gguf(path)
    q = packed.params["layers"][0]["self_attn"]["q_proj"]
    if kind == "Q8_0":  # kept as stored, as chapter 34's loader keeps it
        assert isinstance(q, QuantMatrix) and q.scheme == "q8_0" and q.transposed
    else:
        assert isinstance(q, BlockMatrix) and q.kind == kind and q.transposed
    ids = np.arange(1, 40)
    want = floats.forward(ids)  # q and k rows reordered there after decoding
    # Q8_0 rounds the activations to Q8_0 too, as llama.cpp does; the 4-bit
    # kernels match decoded weights times the token's own rounding closely
    bound = 3e-2 if kind == "Q8_0" else 1e-4
    assert np.abs(packed.forward(ids) - want).max() <= bound * np.abs(want).max()


@pytest.mark.parametrize("cpu", ["haswell", "znver1", "skylake-avx512"])
def test_the_kernels_compile_without_a_data_section_for_avx2_and_avx512(cpu):
    """A constant that LLVM keeps beside the code (a mask, say) makes elf_text
    refuse the whole module, and every format falls back to the tiles: check
    the IR for processors with AVX2 only, not just for this machine's."""
    llvm = pytest.importorskip("llvmlite.binding")
    import platform

    from minigpt import block_kernels as bk
    from minigpt.machine_code import elf_text, ir

    if platform.machine() != "x86_64" or ir is None:
        pytest.skip("x86-64 code only")
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features="", opt=3, reloc="pic", codemodel="small")
    module = ir.Module("check")
    names = [bk.block_rows_ir(module, kind).name for kind in bk.BLOCKS]
    names.append(bk.q8_k_ir(module).name)
    parsed = llvm.parse_assembly(str(module))
    parsed.triple, parsed.data_layout = machine.triple, str(machine.target_data)
    passes = llvm.create_pass_builder(
        machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(parsed, passes)
    code, starts = elf_text(machine.emit_object(parsed), names)  # raises if refused
    assert sorted(starts) == sorted(names) and code
